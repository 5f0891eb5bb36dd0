"""Training-step benchmark of the chunk-causal teacher: samples/s and achieved GFLOP/s
against the matmul peak measured in the same run, eager vs ``torch.compile``, float32 vs
bfloat16 autocast, side by side.

    python -m world_model.train.bench                                   # shipped architecture, batch 4 x 16 latent frames
    python -m world_model.train.bench --compile off on --precision float32 bfloat16 --threads 2
    python -m world_model.train.bench --precision float32 bfloat16 --ops fused reference

One step is what the training loop does: the flow-matching loss of a batch of latent
clips (random latents and smooth random camera paths: timing does not depend on the
data), its backward pass and an AdamW update. FLOPs per step are 3x the forward pass's
as ``torch.utils.flop_counter`` counts them (matmuls and convolutions); achieved
GFLOP/s is that over the median step time; the peak is the median rate of a square float32
(and, where timed, bfloat16) matmul of ``--peak-size`` in this process, with the same
threads. ``precision auto`` is what training would pick: bfloat16 only where the CPU has
bf16 matmul in hardware (AMX or AVX-512 BF16), else float32. Each mode reports the losses of its first
step, which compiled and eager runs (and the two ``--ops``) must share to float tolerance.
The modes take turns step by step (median over ``--steps`` turns), so that the ratios hold
on a noisy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from world_model.diffusion import FlowMatchingConfig, flow_matching_loss
from world_model.geometry import exp_se3, intrinsics_from_fov
from world_model.model import WorldModelBackbone, WorldModelConfig
from world_model.ops.fused import reference_ops
from world_model.world_model import has_native_bf16, resolve_precision

__all__ = ["main", "make_batch", "matmul_peak", "step_flops", "train_step"]


def matmul_peak(dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of a ``size x size`` matmul in ``dtype`` (median of ``repeats``)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


def make_batch(cfg: WorldModelConfig, batch: int, latent_frames: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random latents ``(B, T, C, h, w)`` and smooth random camera paths ``(B, 1 + K (T-1), 4, 4)``."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, latent_frames, cfg.latent_channels, cfg.latent_height, cfg.latent_width, generator=g)
    raw = 1 + cfg.frames_per_latent * (latent_frames - 1)
    twist = (torch.rand(batch, 1, 6, generator=g) * 2 - 1).double() * torch.tensor([0.5, 0.1, 1.0, 0.1, 0.8, 0.1]).double()
    steps = torch.arange(raw, dtype=torch.float64)[None, :, None] / 16.0
    c2w = torch.as_tensor(exp_se3((twist * steps).numpy())).float()  # (B, F, 4, 4)
    hw = (8 * cfg.latent_height, 8 * cfg.latent_width)
    K = intrinsics_from_fov(90.0, *hw).float()[None].expand(batch, 3, 3)
    return {"latents": latents, "c2w": c2w, "intrinsics": K}


class _Objective(torch.nn.Module):
    """The teacher's loss (as ``TeacherObjective``) with the noise drawn from a seed, so
    that two modes see the same draws. ``compiled_backbone``: the backbone's passes run
    through its ``torch.compile``d computation (as inference's ``compile=True``), the loss's
    glue (time and noise draws, camera maths) eagerly."""

    def __init__(self, backbone: WorldModelBackbone, flow: FlowMatchingConfig, compiled_backbone: bool = False):
        super().__init__()
        self.backbone, self.flow, self.compiled_backbone = backbone, flow, compiled_backbone

    def _model(self, *args, **kwargs):
        return self.backbone(*args, **kwargs, compiled=self.compiled_backbone)

    def forward(self, latents, c2w, intrinsics, seed: int):
        cfg = self.backbone.cfg
        cam = self.backbone.camera(c2w, intrinsics, (8 * cfg.latent_height, 8 * cfg.latent_width))
        g = torch.Generator().manual_seed(seed)
        loss, _ = flow_matching_loss(self._model, latents, cam, cfg.chunk_lengths(latents.shape[1]), self.flow, g)
        return loss


def _ops(ops: str) -> contextlib.AbstractContextManager:
    return reference_ops() if ops == "reference" else contextlib.nullcontext()


def train_step(objective, optimizer, batch: dict[str, torch.Tensor], precision: str, seed: int) -> float:
    """One optimisation step; returns the loss."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else contextlib.nullcontext()
    with ctx:
        loss = objective(batch["latents"], batch["c2w"], batch["intrinsics"], seed)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def step_flops(backbone: WorldModelBackbone, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of one training step: the forward pass's matmuls and convolutions counted by
    torch's flop counter, times 3 (the backward pass taken as twice the forward, the usual
    convention). The counter's own count of the backward pass is not used: for the grouped
    (depthwise) convolutions it reports about 600x their forward FLOPs (242 of 300 GFLOP
    counted for the shipped architecture at batch 4 x 16), which would inflate the share of
    the peak."""
    objective = _Objective(copy.deepcopy(backbone), FlowMatchingConfig())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        objective(batch["latents"], batch["c2w"], batch["intrinsics"], 0)
    return 3 * counter.get_total_flops()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m world_model.train.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=4, help="clips per step")
    p.add_argument("--latent-frames", type=int, default=16, help="latent frames per clip")
    p.add_argument("--steps", type=int, default=5, help="timed steps per mode (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode (compiled: the build)")
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on", "backbone"],
                   help="eager (off), torch.compile of the whole loss (on), or of the backbone's passes only (backbone)")
    p.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "float32", "bfloat16"],
                   help="precisions side by side (auto: bfloat16 only with bf16 matmul in hardware: AMX or AVX-512 BF16)")
    p.add_argument("--ops", nargs="+", default=["fused"], choices=["fused", "reference"],
                   help="the fused CPU forms of the glue (world_model.ops.fused, the default) or their "
                        "autograd references, side by side")
    p.add_argument("--threads", type=int, default=1, help="torch threads (training runs one per process)")
    p.add_argument("--peak-size", type=int, default=1024, help="side of the square matmul that measures the peak")
    p.add_argument("--tiny", action="store_true", help="a very small backbone (for smoke tests)")
    args = p.parse_args(argv)
    for name in ("batch_size", "latent_frames", "steps", "threads", "peak_size"):
        if getattr(args, name) < 1:
            p.error(f"argument --{name.replace('_', '-')}: must be an integer >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"argument --warmup: must be an integer >= 0, got {args.warmup}")
    torch.set_num_threads(args.threads)
    cfg = WorldModelConfig(latent_channels=8, latent_height=4, latent_width=4, depth=2, width=32, num_heads=2,
                           softmax_every=2) if args.tiny else WorldModelConfig.tiny()
    torch.manual_seed(0)
    backbone = WorldModelBackbone(cfg)
    batch = make_batch(cfg, args.batch_size, args.latent_frames)
    flops = step_flops(backbone, batch)
    precisions = list(dict.fromkeys(resolve_precision(x) if x == "auto" else x for x in args.precision))
    peaks = {x: matmul_peak(torch.float32 if x == "float32" else torch.bfloat16, args.peak_size) for x in precisions}
    print(f"teacher training step: batch {args.batch_size} x {args.latent_frames} latent frames, "
          f"{sum(t.numel() for t in backbone.parameters()):,} parameters, {flops / 1e9:.2f} GFLOP per step "
          f"(3x the counted forward), {torch.get_num_threads()} threads; precision 'auto' is {resolve_precision('auto')} "
          f"here (bf16 matmul in hardware, AMX or AVX-512 BF16: {'yes' if has_native_bf16() else 'no'})")
    print("matmul peak here: " + ", ".join(f"{x} {v:.1f} GFLOP/s" for x, v in peaks.items()))
    print(f"{'precision':>9} {'compile':>8} {'ops':>9} {'s/step':>8} {'samples/s':>10} {'GFLOP/s':>8} {'% peak':>7} "
          f"{'x base':>7} {'first loss':>11}")
    modes = [(mode, precision, ops) for mode in args.compile for precision in precisions for ops in args.ops]
    runs = []
    for mode, precision, ops in modes:
        model = copy.deepcopy(backbone).train()
        objective = _Objective(model, FlowMatchingConfig(), compiled_backbone=mode == "backbone")
        run = torch.compile(objective) if mode == "on" else objective
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the training loop
        with _ops(ops):
            first = train_step(run, optimizer, batch, precision, seed=0)
            for i in range(args.warmup):
                train_step(run, optimizer, batch, precision, seed=1 + i)
        runs.append((run, optimizer, first, []))
    for i in range(args.steps):  # the modes take turns, so that a busy spell slows them alike
        for (mode, precision, ops), (run, optimizer, _, times) in zip(modes, runs):
            with _ops(ops):
                t0 = time.perf_counter()
                train_step(run, optimizer, batch, precision, seed=100 + i)
                times.append(time.perf_counter() - t0)
    base = None
    for (mode, precision, ops), (_, _, first, times) in zip(modes, runs):
        sec = statistics.median(times)
        rate = flops / sec / 1e9
        base = base or args.batch_size / sec
        print(f"{precision:>9} {mode:>8} {ops:>9} {sec:>8.3f} {args.batch_size / sec:>10.2f} "
              f"{rate:>8.1f} {100 * rate / peaks[precision]:>6.1f}% {args.batch_size / sec / base:>6.2f}x "
              f"{first:>11.6f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
