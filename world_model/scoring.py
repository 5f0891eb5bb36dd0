"""Held-out scores of the world model against exact reference renders.

Each held-out clip is generated from its first frame along its true camera path (streaming,
few-step sampling, the state carried across chunks) and compared frame by frame with the
reference render, beside two baselines on the same clips: the first frame repeated, and the
same model with its camera conditioning off. Used by the teacher stage's periodic
evaluation and by ``sanawm-gym fidelity`` for the shipped checkpoint's report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from world_model.autoencoder import Autoencoder
from world_model.autoencoder.losses import psnr, ssim
from world_model.diffusion import sampling_times
from world_model.generation import rollout_latents
from world_model.model import WorldModelBackbone
from world_model.plots import plot_curves, save_png, video_grid

__all__ = ["FPS", "PSNR_CAP", "evaluate_reconstruction", "evaluate_rollouts", "save_horizon_plot"]

FPS = 16.0
"""Raw frames per second of the reference videos."""
PSNR_CAP = 20 * float(np.log10(255.0))
"""48.13 dB: per-frame PSNR is capped at "equal up to one 8-bit level" before averaging, so
that a frame identical to the reference (the first-frame baseline on a trajectory that
returns to its start) does not dominate a mean with a near-infinite value."""
def _uint8(video: Tensor) -> np.ndarray:
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def evaluate_reconstruction(ae: Autoencoder, heldout: Dataset, batch_size: int = 4, picture: Path | None = None,
                            picture_clips: int = 4) -> dict[str, float]:
    """The autoencoder alone: PSNR and SSIM of its reconstructions of the held-out clips
    (float32 on the autoencoder's device, clamped to [-1, 1], per frame, then averaged), the
    first frame's PSNR and the worst clip's. ``picture``: a PNG of the first
    ``picture_clips`` clips, originals above reconstructions, every K-th frame."""
    device = next(ae.parameters()).device
    psnrs, ssims, rows = [], [], []
    every = ae.config.temporal_stride
    for batch in DataLoader(heldout, batch_size=batch_size):
        video = batch["video"].to(device)  # (B, T, 3, H, W)
        rec = ae.decode(ae.encode(video)).clamp(-1, 1)  # (B, T, 3, H, W)
        psnrs.append(psnr(rec.flatten(0, 1), video.flatten(0, 1)).view(video.shape[:2]).cpu())  # (B, T)
        ssims.append(ssim(rec.flatten(0, 1), video.flatten(0, 1)).view(video.shape[:2]).cpu())  # (B, T)
        for b in range(video.shape[0]):
            if len(rows) < 2 * picture_clips:
                rows += [_uint8(video[b, ::every]), _uint8(rec[b, ::every])]
    p, s = torch.cat(psnrs), torch.cat(ssims)  # (N, T)
    if picture is not None:
        save_png(video_grid(rows), picture)
    return {"psnr": float(p.mean()), "ssim": float(s.mean()), "psnr_first_frame": float(p[:, 0].mean()),
            "psnr_worst_clip": float(p.mean(1).min())}


@torch.no_grad()
def evaluate_rollouts(backbone: WorldModelBackbone, ae: Autoencoder, heldout: Dataset, image_hw: tuple[int, int],
                      sample_steps: int, sample_shift: float, horizons_s: tuple[float, ...], batch_size: int = 4,
                      picture: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """PSNR by raw frame of generated vs reference video for the model, the model without
    camera conditioning and the first frame repeated (means over clips, ``curve_*``), floats
    at ``horizons_s`` seconds (``psnr_<name>_<h>s``) and the per-clip values behind them
    (``clips_<name>_<h>s``, lists in clip order). ``picture``: a PNG of the reference (odd
    rows) and generated (even rows) frames of the first clips."""
    m = backbone.cfg
    times = sampling_times(sample_steps, sample_shift)
    curves: dict[str, list[Tensor]] = {"model": [], "no_camera": [], "first_frame": []}
    pictures: list[np.ndarray] = []
    g = torch.Generator().manual_seed(seed)
    for batch in DataLoader(heldout, batch_size=batch_size):
        video = batch["video"]  # (B, F, 3, H, W) exact renders in [-1, 1]
        B, F = video.shape[:2]
        T = 1 + (F - 1) // m.frames_per_latent
        first = ae.encode(video[:, :1])  # (B, 1, C, h, w)
        cam = backbone.camera(batch["c2w"], batch["intrinsics"][:, 0], image_hw)
        for name, c in (("model", cam), ("no_camera", None)):
            lat, _ = rollout_latents(backbone, first, c, T, times, g)
            gen = ae.decode(lat).clamp(-1, 1)  # (B, F, 3, H, W)
            curves[name].append(psnr(gen.flatten(0, 1), video.flatten(0, 1)).view(B, F).clamp(max=PSNR_CAP))
            if name == "model" and len(pictures) < 4:
                every = max(1, F // 8)
                for b in range(min(B, 2)):
                    pictures += [_uint8(video[b, ::every]), _uint8(gen[b, ::every])]
        rep = video[:, :1].expand_as(video)
        curves["first_frame"].append(psnr(rep.flatten(0, 1), video.flatten(0, 1)).view(B, F).clamp(max=PSNR_CAP))
    fps = FPS
    report: dict[str, Any] = {}
    for name, parts in curves.items():
        per_clip = torch.cat(parts)  # (N, F)
        curve = per_clip.mean(0)  # (F,) mean over clips
        report[f"curve_{name}"] = curve.tolist()
        for h in horizons_s:
            i = int(round(h * fps))
            if i < curve.shape[0]:
                report[f"psnr_{name}_{h:g}s"] = float(curve[i])
                report[f"clips_{name}_{h:g}s"] = per_clip[:, i].tolist()
        report[f"psnr_{name}_mean"] = float(curve[1:].mean())
    if picture is not None and pictures:
        save_png(video_grid(pictures), picture)
    return report


def save_horizon_plot(report: dict[str, Any], path: Path) -> None:
    """PSNR (dB) against seconds after the first frame, the model and the two baselines on
    one plot (frame 0, the given frame, is left out)."""
    names = {"model": "world model", "no_camera": "camera off", "first_frame": "first frame repeated"}
    series = {label: report[f"curve_{n}"][1:] for n, label in names.items() if report.get(f"curve_{n}")}
    if not series:
        return
    length = len(next(iter(series.values())))
    xs = [(i + 1) / FPS for i in range(length)]
    plot_curves(xs, series, "PSNR vs the exact reference render (dB)", "seconds after the first frame", path)
