"""The depth head: exact-scale z-depth decoded from the same latent frame as the colour.

The world model generates one latent frame per chunk of ``K`` raw frames; the autoencoder's
decoder turns it into colour, this head into the ``K`` frames' depth maps. It reads the
(normalised) latent the backbone generates, so a generated chunk has a depth as soon as it
has pixels, and what imagination believes about geometry can be checked against the
reference world's exact depth (and used for collisions: ``sanawm_gym.depth_collision``).

    latent (N, L, h, w) --conv, ResBlocks at h x w--> x2, x2 (nearest + conv, ResBlock)
        --> log-depth (N, K, 4h, 4w) --bilinear x2--> (N, K, 8h, 8w) --clamp, exp--> metres

It is trained on the frozen encoder's latents of posed clips rendered with depth, and on
latents the world model generated along the same camera paths (``python -m world_model.train
--stage depth``), so that it reads both the clean and the imagined distribution. For latent
frame 0 (the first frame alone) every one of the ``K`` maps is that frame's. Sky (no hit)
is ``max_depth``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from world_model.autoencoder.model import ResBlock

__all__ = ["DepthHead", "DepthHeadConfig", "depth_log_l1"]


@dataclass(frozen=True)
class DepthHeadConfig:
    """The depth head's architecture and range."""

    latent_channels: int = 128
    """L: channels of the latent frames it reads (the autoencoder's)."""
    frames_per_latent: int = 4
    """K: depth maps per latent frame (the autoencoder's temporal stride)."""
    width: int = 96
    """Channels at the latent resolution."""
    blocks: int = 2
    """ResBlocks at the latent resolution."""
    up_widths: tuple[int, ...] = (64, 32)
    """Channels after each x2 upsampling (two: the maps are made at a quarter of the image's
    resolution, then bilinearly upsampled to it, which costs a quarter of the compute)."""
    image_stride: int = 8
    """Pixels per latent cell (the autoencoder's spatial stride): the output's resolution."""
    min_depth: float = 0.05
    """Nearest depth it predicts (metres)."""
    max_depth: float = 24.0
    """Farthest depth it predicts (metres); rays that meet nothing (sky) are trained to it."""

    def __post_init__(self) -> None:
        for name in ("latent_channels", "frames_per_latent", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.blocks < 0 or not self.up_widths or min(self.up_widths) < 1:
            raise ValueError(f"blocks must be >= 0 and up_widths positive and non-empty, got {self.blocks}, "
                             f"{self.up_widths}")
        if self.image_stride < 2 ** len(self.up_widths) or self.image_stride % 2 ** len(self.up_widths):
            raise ValueError(f"image_stride ({self.image_stride}) must be a multiple of 2 ** len(up_widths) "
                             f"({2 ** len(self.up_widths)})")
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DepthHeadConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DepthHeadConfig field(s) {unknown}")
        data = dict(data)
        if "up_widths" in data:
            data["up_widths"] = tuple(data["up_widths"])
        return cls(**data)


class DepthHead(nn.Module):
    """Latent frames -> the depth of their ``K`` raw frames. See the module docstring."""

    def __init__(self, config: DepthHeadConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.stem = nn.Conv2d(cfg.latent_channels, cfg.width, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(cfg.width) for _ in range(cfg.blocks)])
        ups, c = [], cfg.width
        for w in cfg.up_widths:
            ups.append(nn.ModuleList([nn.Conv2d(c, w, 3, padding=1), ResBlock(w)]))
            c = w
        self.ups = nn.ModuleList(ups)
        self.out = nn.Conv2d(c, cfg.frames_per_latent, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # starts at a constant depth, the geometric middle of the range
        nn.init.constant_(self.out.bias, 0.5 * (math.log(cfg.min_depth) + math.log(cfg.max_depth)))

    def log_depth(self, z: Tensor) -> Tensor:
        """``(N, L, h, w)`` latents -> unclamped log-depth ``(N, K, s h, s w)``, ``s`` the
        ``image_stride`` (what is trained)."""
        x = self.blocks(self.stem(z))
        for conv, block in self.ups:
            x = block(conv(F.interpolate(F.silu(x), scale_factor=2.0, mode="nearest")))
        x = self.out(F.silu(x))
        rest = self.config.image_stride // 2 ** len(self.ups)
        return x if rest == 1 else F.interpolate(x, scale_factor=float(rest), mode="bilinear", align_corners=False)

    def forward(self, latents: Tensor) -> Tensor:
        """``(B, T, L, h, w)`` latent frames -> depth in metres ``(B, T, K, s h, s w)``."""
        cfg = self.config
        if latents.ndim != 5 or latents.shape[2] != cfg.latent_channels:
            raise ValueError(f"latents must be (B, T, {cfg.latent_channels}, h, w), got {tuple(latents.shape)}")
        B, T = latents.shape[:2]
        log_d = self.log_depth(latents.flatten(0, 1).float())
        log_d = log_d.clamp(math.log(cfg.min_depth), math.log(cfg.max_depth))
        return log_d.exp().unflatten(0, (B, T))


def depth_log_l1(log_pred: Tensor, target: Tensor, min_depth: float, max_depth: float, near_weight: float = 0.0,
                 near: float = 2.0) -> Tensor:
    """Weighted mean ``|log_pred - log(clamp(target))|`` over finite-or-sky pixels: the target
    (metres, ``inf`` for sky, NaN to ignore) clamped to ``[min_depth, max_depth]``. Per-pixel
    log error weighs a 10 cm miss at 0.5 m like a 2 m miss at 10 m; ``near_weight`` adds
    that much weight to pixels nearer than ``near`` metres (rare in the data, and the ones
    collisions are decided on)."""
    valid = ~torch.isnan(target)
    clean = target.nan_to_num(nan=1.0)
    t = clean.clamp(min_depth, max_depth).log()
    err = (log_pred.float() - t).abs()
    w = valid * (1.0 + near_weight * (clean < near))
    return (err * w).sum() / w.sum().clamp_min(1)
