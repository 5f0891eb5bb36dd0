"""Micro-benchmark: the frame-wise gated delta rule, literal reference vs batched PyTorch form.

    python -m world_model.ops.bench_gdn                 # default sizes, CPU
    python -m world_model.ops.bench_gdn --repeats 20 --threads 2

Prints one row per size: the time of one call of each (median over repeats; the reference
runs fewer times, it is slow), their ratio, and the largest relative difference of the
numerators. Inputs are random with unit-norm keys scaled by S^-1/2, as the layer makes them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from world_model.ops.framewise_gdn import GDNOutput, framewise_gdn_naive, framewise_gdn_torch

# (name, B, T, S, H, D, chunk_lengths)
SIZES: list[tuple[str, int, int, int, int, int, list[int]]] = [
    ("causal [1]*21", 1, 21, 64, 4, 32, [1] * 21),
    ("env [1,4,4,4,4,4]", 1, 21, 64, 4, 32, [1, 4, 4, 4, 4, 4]),
    ("train [4,3,3,...]", 1, 22, 64, 4, 32, [4, 3, 3, 3, 3, 3, 3]),
    ("batch 4, [1,4,...]", 4, 21, 64, 4, 32, [1, 4, 4, 4, 4, 4]),
]


def make_inputs(B: int, T: int, S: int, H: int, D: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def keys() -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(B, T, S, H, D, generator=g), dim=-1) / S**0.5

    return dict(
        q=torch.randn(B, T, S, H, D, generator=g), k=keys(), v=torch.randn(B, T, S, H, D, generator=g),
        beta=torch.rand(B, T, S, H, generator=g), gamma=0.9 + 0.1 * torch.rand(B, T, H, generator=g),
        q_den=torch.rand(B, T, S, H, D, generator=g), k_den=keys().abs(),
    )


def time_call(fn: Callable[[], GDNOutput], repeats: int) -> tuple[float, GDNOutput]:
    """Median seconds of one call, after one warm-up call."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls of the batched form per size")
    parser.add_argument("--naive-repeats", type=int, default=3, help="timed calls of the reference per size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (the per-frame matmuls are small: 1 is steadiest)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU; "
          f"numerator + denominator")
    header = f"{'size':<20} {'B':>2} {'T':>3} {'S':>3} {'H':>2} {'D':>3}  {'naive ms':>9} {'torch ms':>9} " \
             f"{'speed-up':>8} {'max rel diff':>12}"
    print(header)
    print("-" * len(header))
    with torch.inference_mode():
        for name, B, T, S, H, D, chunks in SIZES:
            x = make_inputs(B, T, S, H, D)

            def run(fn: Callable[..., GDNOutput]) -> Callable[[], GDNOutput]:
                return lambda: fn(x["q"], x["k"], x["v"], x["beta"], x["gamma"], chunks,
                                  q_den=x["q_den"], k_den=x["k_den"])

            t_naive, ref = time_call(run(framewise_gdn_naive), args.naive_repeats)
            t_torch, out = time_call(run(framewise_gdn_torch), args.repeats)
            diff = ((out.numerator - ref.numerator).abs().max() / ref.numerator.abs().max()).item()
            print(f"{name:<20} {B:>2} {T:>3} {S:>3} {H:>2} {D:>3}  {1e3 * t_naive:>9.1f} {1e3 * t_torch:>9.2f} "
                  f"{t_naive / t_torch:>7.1f}x {diff:>12.1e}")


if __name__ == "__main__":
    main()
