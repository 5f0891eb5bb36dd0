"""Benchmark of streaming generation: time per chunk and peak memory early and late in a
one-minute rollout, beside a same-size all-softmax baseline with an unbounded cache, and
frames/s at batch 1 and 16 in float32 and bf16 autocast.

    python -m world_model.bench_streaming              # the tiny default config, random weights
    python -m world_model.bench_streaming --chunks 240 --batch-sizes 1 16

Timing does not depend on the weights, so the default uses a freshly initialised
backbone (the shipped checkpoint's architecture). The rollout keeps copies of the states
that chunk 2 and the last chunk are generated from; each of the two chunks is then
generated ``--repeats`` times from a fresh copy, the two taking turns, and ms/chunk is the
median (one ~50 ms chunk on a shared 2-core machine is too noisy for a ratio). Peak
memory is the growth of the process's peak resident set (Linux ``VmHWM``, reset before
each measured chunk) while the chunk is generated; the state column is the bytes of the
carried state after it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from world_model.diffusion import sample_chunk, sampling_times
from world_model.model import StreamState, WorldModelBackbone, WorldModelConfig, state_nbytes
from world_model.world_model import has_native_bf16, resolve_precision

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


def _rollout(model: WorldModelBackbone, batch: int, chunks: int, steps: int, bf16: bool,
             keep: frozenset[int] = frozenset()) -> dict[int, StreamState]:
    """Generate ``chunks`` chunks without camera conditioning; return copies of the states
    that the chunks in ``keep`` are generated from."""
    times = sampling_times(steps, 3.0)
    g = torch.Generator().manual_seed(0)
    state = None
    kept = {}
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        for i in range(chunks):
            noise = torch.randn(_chunk_shape(model, batch), generator=g)
            if state is None:  # the first chunk: the clean first frame, committed
                _, state = model(noise, torch.zeros(batch, 1), None, [1], None)
                continue
            if i in keep:
                kept[i] = copy.deepcopy(state)
            _, state = sample_chunk(model, noise, None, state, times)
    return kept


def _chunk_shape(model: WorldModelBackbone, batch: int) -> tuple[int, ...]:
    cfg = model.cfg
    return (batch, 1, cfg.latent_channels, cfg.latent_height, cfg.latent_width)


def _time_chunks(model: WorldModelBackbone, states: dict[int, StreamState], repeats: int,
                 steps: int) -> dict[int, list[tuple[float, float, int]]]:
    """Generate the chunk after each kept state ``repeats`` times, the states taking turns
    (so that a slow spell of a shared machine hits early and late chunks alike), each time
    from a fresh copy; (seconds, peak MiB, state bytes after) per run."""
    times = sampling_times(steps, 3.0)
    g = torch.Generator().manual_seed(1)
    out: dict[int, list[tuple[float, float, int]]] = {i: [] for i in states}
    with torch.no_grad():
        for _ in range(repeats):
            for i, kept in states.items():
                state = copy.deepcopy(kept)
                noise = torch.randn(_chunk_shape(model, 1), generator=g)
                track = _reset_peak()
                before = _rss_kb("VmRSS") if track else None
                t0 = time.perf_counter()
                _, state = sample_chunk(model, noise, None, state, times)
                dt = time.perf_counter() - t0
                peak = (_rss_kb("VmHWM") - before) / 1024 if track and before is not None else float("nan")
                out[i].append((dt, peak, state_nbytes(state)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m world_model.bench_streaming", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=240, help="chunks in the rollout (240 = one minute at 4 chunks/s)")
    p.add_argument("--steps", type=int, default=4, help="sampler steps per chunk")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeats", type=int, default=15,
                   help="times chunk 2 and chunk --chunks are each generated (alternately, from copies of their states)")
    p.add_argument("--throughput-chunks", type=int, default=12, help="chunks timed for frames/s")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a busy 2-core machine more can be 20x slower)")
    args = p.parse_args(argv)
    for name in ("chunks", "steps", "repeats", "throughput_chunks", "threads"):
        if getattr(args, name) < (3 if name == "chunks" else 1):
            p.error(f"--{name.replace('_', '-')} must be at least {3 if name == 'chunks' else 1}, got {getattr(args, name)}")
    if min(args.batch_sizes) < 1:
        p.error(f"--batch-sizes must be at least 1, got {args.batch_sizes}")
    torch.set_num_threads(args.threads)
    auto = resolve_precision("auto")
    print(f"precision='auto' picks {auto} on this machine (bf16 matmul in hardware, AMX or AVX-512 BF16: "
          f"{'yes' if has_native_bf16() else 'no'}); both are timed below")
    torch.manual_seed(0)
    cfg = WorldModelConfig.tiny()
    baseline_cfg = dataclasses.replace(cfg, softmax_every=1, softmax_window_chunks=-1)
    late = args.chunks - 1
    print(f"streaming generation, batch 1, {args.steps} sampler steps + 1 commit pass per chunk, {torch.get_num_threads()} threads")
    print(f"{'model':<34} {'chunk':>6} {'ms/chunk':>9} {'peak MiB':>9} {'state MiB':>10}")
    results = {}
    for name, c in (("hybrid GDN (sink + window cache)", cfg), ("all softmax, unbounded cache", baseline_cfg)):
        model = WorldModelBackbone(c).eval()
        _rollout(model, 1, 6, args.steps, bf16=False)  # warm-up: first-call allocations and kernels
        states = _rollout(model, 1, late + 1, args.steps, bf16=False, keep=frozenset({2, late}))
        timed = _time_chunks(model, states, args.repeats, args.steps)
        rows = {}
        for label, idx in (("2", 2), (str(late + 1), late)):
            ms = 1000 * statistics.median(x[0] for x in timed[idx])
            peak = max(x[1] for x in timed[idx])
            rows[label] = (ms, peak, timed[idx][0][2] / 2**20)
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
            _rollout(model, bs, 3, args.steps, bf16)  # warm-up
            t0 = time.perf_counter()
            _rollout(model, bs, n + 1, args.steps, bf16)
            dt = time.perf_counter() - t0
            mark = "  <- auto" if (auto == "bfloat16") == bf16 else ""
            print(f"{bs:>6} {'bf16' if bf16 else 'float32':>8} {bs * n * cfg.frames_per_latent / dt:>9.1f}{mark}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
