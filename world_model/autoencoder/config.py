"""The autoencoder's configuration: one frozen dataclass, stored as ``config.json`` beside
the weights (see :mod:`world_model.checkpoint`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["AutoencoderConfig"]


@dataclass(frozen=True)
class AutoencoderConfig:
    """A causal video autoencoder: ``1 + K n`` frames of ``H x W`` -> ``1 + n`` latent frames
    of ``H / s x W / s`` (``K = temporal_stride``, ``s = spatial_stride = 4 * patch_size``).

    Four resolution levels: two per-frame levels (``H / p`` and ``H / 2p``), then the ``K``
    frames of a group are stacked and two latent-rate levels (``H / 2p`` and ``H / 4p``) mix
    each group with the previous one through causal residual blocks.
    """

    in_channels: int = 3
    """Image channels (RGB)."""
    latent_channels: int = 128
    """L: channels of a latent frame (128, the shipped autoencoder's)."""
    temporal_stride: int = 4
    """K: raw frames per latent frame (the first latent frame holds the first frame alone)."""
    patch_size: int = 2
    """Pixel (un)shuffle factor at the input and output; the spatial stride is 4x this."""
    frame_widths: tuple[int, int] = (32, 64)
    """Channels of the two per-frame levels (at ``H / p`` and ``H / 2p``)."""
    latent_widths: tuple[int, int] = (128, 256)
    """Channels of the two latent-rate levels (at ``H / 2p`` and ``H / 4p``)."""
    encoder_blocks: tuple[int, int, int, int] = (1, 1, 1, 1)
    """Residual blocks of the encoder per level, finest first (levels 3 and 4 are causal)."""
    decoder_blocks: tuple[int, int, int, int] = (1, 2, 1, 2)
    """Residual blocks of the decoder per level, finest first (levels 3 and 4 are causal)."""
    decoder_width_multiplier: int = 1
    """The decoder's two per-frame levels have ``frame_widths`` times this many channels.
    Our choice: these levels synthesise every frame's detail (K frames per latent frame)
    while the encoder's only have to summarise it, so a wider decoder is where extra
    reconstruction quality is cheapest; it also lets a decoder be retrained for a frozen
    encoder (see the autoencoder stage's ``decoder_only``)."""
    shortcuts: bool = True
    """Non-parametric residual shortcuts around every change of shape, as in DC-AE (Chen et
    al. 2024, "Deep Compression Autoencoder"): space-to-channel then channel averaging
    around the encoder's down-sampling, group merge and output; channel repetition then
    channel-to-space around the decoder's input, group split and up-sampling. They carry
    the signal past the resampling convs so that the convs learn a residual; applied only
    where the channel counts divide (see :func:`world_model.autoencoder.model.shortcut`).
    Our choice: SANA-WM's LTX autoencoder is not described beyond its strides and channels."""
    latent_mean: tuple[float, ...] | None = None
    """Per-channel mean of the raw latents over the training data (set after training);
    ``encode`` subtracts it. None: zeros."""
    latent_std: tuple[float, ...] | None = None
    """Standard deviation of the raw latents per channel (set after training; the same value
    in every channel when the autoencoder stage's ``latent_scale`` is ``shared``); ``encode``
    divides by it so that latents have about unit variance. None: ones."""

    def __post_init__(self) -> None:
        for name in ("in_channels", "latent_channels", "temporal_stride", "patch_size", "decoder_width_multiplier"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, n in (("frame_widths", 2), ("latent_widths", 2), ("encoder_blocks", 4), ("decoder_blocks", 4)):
            value = tuple(getattr(self, name))
            object.__setattr__(self, name, value)  # JSON gives lists; keep the config hashable
            if len(value) != n:
                raise ValueError(f"{name} must have {n} entries, got {value}")
            low = 0 if name.endswith("blocks") else 1
            if any(int(v) != v or v < low for v in value):
                raise ValueError(f"{name} entries must be integers >= {low}, got {value}")
        for name in ("latent_mean", "latent_std"):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(float(v) for v in value)
            object.__setattr__(self, name, value)
            if len(value) != self.latent_channels:
                raise ValueError(f"{name} must have latent_channels={self.latent_channels} entries, got {len(value)}")
        if self.latent_std is not None and min(self.latent_std) <= 0:
            raise ValueError(f"latent_std entries must be > 0, got min {min(self.latent_std)}")

    @property
    def decoder_frame_widths(self) -> tuple[int, int]:
        """Channels of the decoder's two per-frame levels."""
        return tuple(w * self.decoder_width_multiplier for w in self.frame_widths)

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent cell along each axis (8 by default)."""
        return 4 * self.patch_size

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(1 + n, L, H / s, W / s)`` of a clip of ``frames = 1 + K n`` frames."""
        return (1 + (frames - 1) // self.temporal_stride, self.latent_channels,
                height // self.spatial_stride, width // self.spatial_stride)

    def to_json(self) -> dict[str, Any]:
        """The config as JSON data (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AutoencoderConfig":
        """Inverse of :meth:`to_json`; raises ``ValueError`` naming unknown fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AutoencoderConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
