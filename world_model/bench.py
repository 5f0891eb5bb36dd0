"""Benchmark of streaming generation: time per chunk and peak memory early and late in a
one-minute rollout, beside a same-size all-softmax baseline with an unbounded cache, and
frames/s at batch 1 and 16 in float32 and bf16 autocast.

    python -m world_model.bench              # the tiny default config, random weights
    python -m world_model.bench --chunks 240 --batch-sizes 1 16

Timing does not depend on the weights, so the default uses a freshly initialised
backbone (the shipped checkpoint's architecture). Peak memory is the growth of the
process's peak resident set (Linux ``VmHWM``, reset before each measured chunk) while
the chunk is generated, plus the bytes of the carried state.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from pathlib import Path

import torch

from world_model.diffusion import sample_chunk, sampling_times
from world_model.model import WorldModelBackbone, WorldModelConfig, state_nbytes

__all__ = ["main"]


def _rss_kb(field: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rollout(model: WorldModelBackbone, batch: int, chunks: int, measure: set[int], steps: int, bf16: bool) -> dict[int, tuple[float, float, int]]:
    """Generate ``chunks`` chunks without camera conditioning; for chunk indices in ``measure``
    return (seconds, peak MiB above the resident set before it, state bytes)."""
    cfg = model.cfg
    times = sampling_times(steps, 3.0)
    g = torch.Generator().manual_seed(0)
    shape = (batch, 1, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    state = None
    out = {}
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        for i in range(chunks):
            noise = torch.randn(shape, generator=g)
            if state is None:  # the first chunk: the clean first frame, committed
                _, state = model(noise, torch.zeros(batch, 1), None, [1], None)
                continue
            track = i in measure and _reset_peak()
            before = _rss_kb("VmRSS") if track else None
            t0 = time.perf_counter()
            _, state = sample_chunk(model, noise, None, state, times)
            dt = time.perf_counter() - t0
            if i in measure:
                peak = (_rss_kb("VmHWM") - before) / 1024 if track and before is not None else float("nan")
                out[i] = (dt, peak, state_nbytes(state))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m world_model.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=240, help="chunks in the rollout (240 = one minute at 4 chunks/s)")
    p.add_argument("--steps", type=int, default=4, help="sampler steps per chunk")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--throughput-chunks", type=int, default=12, help="chunks timed for frames/s")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = WorldModelConfig.tiny()
    baseline_cfg = dataclasses.replace(cfg, softmax_every=1, softmax_window_chunks=-1)
    late = args.chunks - 1
    measure = {2, 3, 4, late - 2, late - 1, late}
    print(f"streaming generation, batch 1, {args.steps} sampler steps + 1 commit pass per chunk, {torch.get_num_threads()} threads")
    print(f"{'model':<34} {'chunk':>6} {'ms/chunk':>9} {'peak MiB':>9} {'state MiB':>10}")
    results = {}
    for name, c in (("hybrid GDN (sink + window cache)", cfg), ("all softmax, unbounded cache", baseline_cfg)):
        model = WorldModelBackbone(c).eval()
        _rollout(model, 1, 6, set(), args.steps, bf16=False)  # warm-up: first-call allocations and kernels
        r = _rollout(model, 1, args.chunks, measure, args.steps, bf16=False)
        early = [r[i] for i in (2, 3, 4)]
        final = [r[i] for i in (late - 2, late - 1, late)]
        rows = {}
        for label, group, idx in (("2", early, 2), (str(late + 1), final, late)):
            ms = 1000 * sum(x[0] for x in group) / len(group)
            peak = max(x[1] for x in group)
            rows[label] = (ms, peak, r[idx][2] / 2**20)
            print(f"{name:<34} {label:>6} {ms:>9.1f} {peak:>9.1f} {rows[label][2]:>10.2f}")
        results[name] = rows
    print("ratios, chunk {0} / chunk 2 (time, state):".format(late + 1))
    for name, rows in results.items():
        a, b = rows["2"], rows[str(late + 1)]
        print(f"  {name:<34} time x{b[0] / a[0]:.2f}   state x{b[2] / a[2]:.2f}")
    h = results["hybrid GDN (sink + window cache)"][str(late + 1)]
    s = results["all softmax, unbounded cache"][str(late + 1)]
    print(f"  baseline / hybrid at chunk {late + 1}: time x{s[0] / h[0]:.2f}   state x{s[2] / h[2]:.2f}")

    print(f"\nthroughput of the hybrid model ({args.throughput_chunks} chunks after the first, raw frames = 4 per chunk)")
    print(f"{'batch':>6} {'dtype':>8} {'frames/s':>9}")
    model = WorldModelBackbone(cfg).eval()
    for bs in args.batch_sizes:
        for bf16 in (False, True):
            n = args.throughput_chunks
            _rollout(model, bs, 3, set(), args.steps, bf16)  # warm-up
            t0 = time.perf_counter()
            _rollout(model, bs, n + 1, set(), args.steps, bf16)
            dt = time.perf_counter() - t0
            print(f"{bs:>6} {'bf16' if bf16 else 'float32':>8} {bs * n * cfg.frames_per_latent / dt:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
