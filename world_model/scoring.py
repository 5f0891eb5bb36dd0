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
from world_model.generation import rollout_latents, stream_latents
from world_model.memory import MemoryGuide, SceneMemory
from world_model.model import WorldModelBackbone
from world_model.plots import plot_curves, save_png, video_grid

__all__ = ["BASELINES", "FPS", "METRICS", "PSNR_CAP", "evaluate_reconstruction", "evaluate_rollouts", "frame_metrics",
           "rollout_videos", "save_horizon_plot", "sharpness"]

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


def sharpness(images: Tensor) -> Tensor:
    """Per-image high-frequency energy ``(N,)`` of images ``(N, C, H, W)`` in [-1, 1]: the
    mean square of a 3x3 Laplacian's response (interior pixels, every channel). A blur
    lowers it; :func:`frame_metrics` reports the generated frame's over the reference's."""
    x = images.float()
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device)
    weight = kernel.expand(x.shape[1], 1, 3, 3)
    response = torch.nn.functional.conv2d(x, weight, groups=x.shape[1])  # (N, C, H-2, W-2)
    return response.square().mean(dim=(1, 2, 3))


METRICS = ("psnr", "ssim", "sharpness")
"""Per-frame scores of a generated frame against its reference: PSNR (dB, capped at
:data:`PSNR_CAP`), SSIM, and the sharpness ratio (generated high-frequency energy over the
reference's: 1 keeps the detail, below 1 is blurrier, so a blur cannot pass as fidelity
the way it does under PSNR)."""


def frame_metrics(generated: Tensor, reference: Tensor) -> dict[str, Tensor]:
    """``(B, F)`` of each of :data:`METRICS` for videos ``(B, F, 3, H, W)`` in [-1, 1]."""
    B, F = reference.shape[:2]
    gen, ref = generated.flatten(0, 1), reference.flatten(0, 1)
    return {"psnr": psnr(gen, ref).view(B, F).clamp(max=PSNR_CAP), "ssim": ssim(gen, ref).view(B, F),
            "sharpness": (sharpness(gen) / sharpness(ref).clamp_min(1e-8)).view(B, F)}


BASELINES = ("no_camera", "first_frame")
"""The two baselines every rollout is scored beside: the model with its camera conditioning
off, and the first frame repeated."""


@torch.no_grad()
def rollout_videos(backbone: WorldModelBackbone, ae: Autoencoder, video: Tensor, c2w: Tensor, intrinsics: Tensor,
                   image_hw: tuple[int, int], times: Tensor, generator: torch.Generator,
                   context: int = 1, ceiling: bool = False, depth: Tensor | None = None) -> dict[str, Tensor]:
    """For reference clips ``video (B, F, 3, H, W)`` in [-1, 1] along ``c2w (B, F, 4, 4)``
    with ``intrinsics (B, 3, 3)``: the model's video generated from the first frame, the
    camera-off baseline's and the first frame repeated, and with ``ceiling`` the autoencoder's
    reconstruction of the reference (what the world model can reach at best through this
    autoencoder), each ``(B, F, 3, H, W)`` in [-1, 1]. ``context``: the first ``context`` frames (1 + K m) are
    given clean (a context clip, committed as in :meth:`WorldModel.init_state`); the
    first-frame baseline then repeats the context's last frame. ``depth (B, context, H, W)``:
    the context's z-depth (metres); with it, also ``memory``: the model guided by a
    :class:`~world_model.memory.SceneMemory` of the context (:class:`~world_model.memory.MemoryGuide`),
    on the same noise as ``model``."""
    F = video.shape[1]
    T = 1 + (F - 1) // backbone.cfg.frames_per_latent
    first = ae.encode(video[:, :context])  # (B, 1 + m, C, h, w)
    cam = backbone.camera(c2w, intrinsics, image_hw)
    out = {}
    if depth is not None:
        g = torch.Generator().set_state(generator.get_state())
        pixels = ((video[:, :context].permute(0, 1, 3, 4, 2) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        memories = []
        for b in range(video.shape[0]):
            memories.append(SceneMemory())
            memories[-1].add(pixels[b].numpy(), depth[b, :context].numpy(), c2w[b, :context].double().numpy(),
                             intrinsics[b].double().numpy())
        guide = MemoryGuide(ae, memories, first, video[:, context - 1], c2w.double().numpy(), intrinsics.double().numpy())
        for _ in stream_latents(backbone, first, cam, T, times, g, guide=guide):
            pass
        out["memory"] = guide.video()
    for name, c in (("model", cam), ("no_camera", None)):
        lat, _ = rollout_latents(backbone, first, c, T, times, generator)
        out[name] = ae.decode(lat).clamp(-1, 1)
    out["first_frame"] = torch.cat([video[:, :context], video[:, context - 1 : context].expand(-1, F - context, -1, -1, -1)], 1)
    if ceiling:
        out["reconstruction"] = ae.decode(ae.encode(video)).clamp(-1, 1)
    return out


@torch.no_grad()
def evaluate_rollouts(backbone: WorldModelBackbone, ae: Autoencoder, heldout: Dataset, image_hw: tuple[int, int],
                      sample_steps: int, sample_shift: float, horizons_s: tuple[float, ...], batch_size: int = 4,
                      picture: Path | None = None, seed: int = 0, frames: tuple[int, ...] = (),
                      context: int = 1, ceiling: bool = False, memory: bool = False) -> dict[str, Any]:
    """Scores by raw frame of generated vs reference video for the model, the model without
    camera conditioning and the first frame repeated (with ``ceiling``, also the autoencoder's
    reconstruction, ``reconstruction``: a constant of the held-out set, left out of the
    training stages' periodic evaluation): PSNR means over clips (``curve_<name>``),
    floats at ``horizons_s`` seconds (``psnr_<name>_<h>s``) and the per-clip values behind
    them (``clips_<name>_<h>s``, lists in clip order); the same for SSIM and the sharpness
    ratio (``curve_ssim_<name>``, ``ssim_<name>_<h>s``, ``clips_ssim_<name>_<h>s``, and
    ``sharpness`` likewise). ``frames``: raw frame indices whose per-clip videos are also
    returned under ``videos`` (``{name: (N, len(frames), 3, H, W)}``, for scores that
    compare frames of one clip with each other, such as a revisit). ``picture``: a PNG of
    the reference and generated frames of the first clips (row by row: reference, model,
    and with ``memory`` the guided model).
    ``context``: the clips' first ``context`` frames (1 + K m) are a clean context clip;
    every score then counts from its last frame (frame 0 of the curves, horizons and
    ``frames`` is the context's last frame). ``memory``: also the model guided by a scene
    memory of the context (``memory``; the clips must carry the context's ``depth``)."""
    times = sampling_times(sample_steps, sample_shift)
    names = ("model",) + (("memory",) if memory else ()) + BASELINES + (("reconstruction",) if ceiling else ())
    scores: dict[str, dict[str, list[Tensor]]] = {m: {n: [] for n in names} for m in METRICS}
    kept: dict[str, list[Tensor]] = {n: [] for n in names + ("reference",)}
    pictures: list[np.ndarray] = []
    g = torch.Generator().manual_seed(seed)
    for batch in DataLoader(heldout, batch_size=batch_size):
        video = batch["video"]  # (B, F, 3, H, W) exact renders in [-1, 1]
        if memory and "depth" not in batch:
            raise ValueError("memory=True needs clips with the context's 'depth'")
        videos = rollout_videos(backbone, ae, video, batch["c2w"], batch["intrinsics"][:, 0], image_hw, times, g,
                                context, ceiling, batch["depth"][:, :context] if memory else None)
        videos = {name: v[:, context - 1 :] for name, v in videos.items()}
        video = video[:, context - 1 :]
        F = video.shape[1]
        for name, gen in videos.items():
            for metric, values in frame_metrics(gen, video).items():
                scores[metric][name].append(values)
        if frames:
            for name, gen in {**videos, "reference": video}.items():
                kept[name].append(gen[:, list(frames)])
        if len(pictures) < 4:
            every = max(1, F // 8)
            for b in range(min(video.shape[0], 2)):
                pictures += [_uint8(video[b, ::every]), _uint8(videos["model"][b, ::every])]
                if "memory" in videos:
                    pictures.append(_uint8(videos["memory"][b, ::every]))
    report: dict[str, Any] = {}
    for metric in METRICS:
        prefix = "" if metric == "psnr" else f"{metric}_"
        for name, parts in scores[metric].items():
            per_clip = torch.cat(parts)  # (N, F)
            curve = per_clip.mean(0)  # (F,) mean over clips
            report[f"curve_{prefix}{name}"] = curve.tolist()
            for h in horizons_s:
                i = int(round(h * FPS))
                if i < curve.shape[0]:
                    report[f"{metric}_{name}_{h:g}s"] = float(curve[i])
                    report[f"clips_{prefix}{name}_{h:g}s"] = per_clip[:, i].tolist()
            report[f"{metric}_{name}_mean"] = float(curve[1:].mean())
    if frames:
        report["videos"] = {name: torch.cat(parts) for name, parts in kept.items()}
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
