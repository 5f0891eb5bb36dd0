"""Configuration of the world-model backbone: a miniature SANA-WM.

``WorldModelConfig.tiny()`` is the CPU default that ships inside the package;
``WorldModelConfig.sana_wm()`` has the released model's sizes (depth 20, width 2240, 20
heads of 112, 128 latent channels, 22 x 40 latent tokens) and is meant to be instantiated
on the ``meta`` device to count parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["CAMERA_FORMS", "WorldModelConfig"]

CAMERA_FORMS = ("shared", "upstream")
"""The normalisations of the GDN camera branch (see ``WorldModelConfig.camera_form``)."""


@dataclass(frozen=True)
class WorldModelConfig:
    """Every size and cache bound of the backbone; nothing in the generation loop is hard-coded."""

    latent_channels: int = 128
    """Channels of the autoencoder's latents (128, as in SANA-WM's LTX-2 autoencoder and the
    shipped one)."""
    latent_height: int = 8
    """Latent grid height (image height / spatial stride 8)."""
    latent_width: int = 8
    """Latent grid width."""
    frames_per_latent: int = 4
    """K: raw frames per latent frame (the autoencoder's temporal stride; 8 in SANA-WM)."""
    depth: int = 8
    """Number of transformer blocks."""
    width: int = 128
    """Hidden size C of every token."""
    num_heads: int = 4
    """Attention heads; head dim = width / num_heads."""
    softmax_every: int = 4
    """Every n-th block (indices n-1, 2n-1, ...) is softmax attention, the others frame-wise
    Gated DeltaNet (SANA-WM: blocks 3, 7, 11, 15, 19 of 20)."""
    mlp_ratio: float = 2.5
    """Hidden size of the GLU-MBConv feed-forward, as a multiple of width."""
    short_conv_kernel: int = 4
    """Kernel (in frames) of the causal short convolution on the GDN keys."""
    temporal_conv_kernel: int = 3
    """Kernel (in frames) of the causal, zero-initialised temporal conv in the feed-forward."""
    chunk_frames: int = 1
    """Latent frames per generated chunk after the first (SANA-WM trains with 3; the env
    wants 1 so that control stays responsive)."""
    first_chunk_frames: int = 1
    """Latent frames of the first chunk (the clean conditioning frame plus any extra;
    SANA-WM: 1 + 3)."""
    softmax_window_chunks: int = 8
    """Recent chunks the softmax blocks keep in their cache, beside the sink (first chunk);
    -1: keep every chunk (an unbounded, growing cache: the benchmark's baseline)."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies (time, height, width)."""
    pose_scale: float = 4.0
    """Metres per unit of translation in the relative-pose (UCPE) transforms."""
    gdn_eps: float = 1e-6
    """Added to the GDN denominator."""
    norm_eps: float = 1e-6
    """Epsilon of RMSNorm and LayerNorm."""
    camera_branches: bool = True
    """Build the UCPE and Plücker camera branches (off: an unconditioned video model)."""
    camera_form: str = "shared"
    """How the GDN blocks' UCPE camera branch is normalised. ``shared``: its numerator is
    divided by the main branch's denominator (what the shipped model trained with).
    ``upstream``: upstream SANA-WM's form: numerator only; the camera q / k / v rescaled
    after the UCPE transform back to their RMS before it (per frame and head); beta
    discounted per token by what remains of the key's norm inflation. Compared on one budget
    (the teacher with its six GDN camera branches retrained from zero for 450 steps, one run
    per form; docs/RESULTS.md), the fidelity suite prefers neither: within 0.04 dB on motion
    up to 5 s, upstream +0.4 dB at 10 s, -0.8 dB on the revisit. ``shared`` stays the
    default (the shipped models' form)."""

    def __post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ValueError(f"width ({self.width}) must be divisible by num_heads ({self.num_heads})")
        if self.head_dim % 8:
            raise ValueError(f"head dim width/num_heads = {self.head_dim} must be a multiple of 8 (rotary and UCPE groups of 4)")
        for name in ("latent_channels", "latent_height", "latent_width", "frames_per_latent", "depth", "chunk_frames",
                     "first_chunk_frames", "softmax_every", "short_conv_kernel", "temporal_conv_kernel"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.camera_form not in CAMERA_FORMS:
            raise ValueError(f"camera_form must be one of {CAMERA_FORMS}, got {self.camera_form!r}")
        if self.softmax_window_chunks < -1:
            raise ValueError(f"softmax_window_chunks must be >= 0, or -1 for unbounded, got {self.softmax_window_chunks}")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def tokens_per_frame(self) -> int:
        return self.latent_height * self.latent_width

    @property
    def hidden_dim(self) -> int:
        """Feed-forward hidden size (after the GLU)."""
        return int(round(self.width * self.mlp_ratio / 8)) * 8

    def is_softmax_block(self, index: int) -> bool:
        return (index + 1) % self.softmax_every == 0

    def chunk_lengths(self, num_frames: int, first: int | None = None) -> list[int]:
        """Chunk lengths (latent frames) of a sequence: ``first_chunk_frames``, then
        ``chunk_frames`` each, the last one possibly shorter."""
        first = self.first_chunk_frames if first is None else first
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        out = [min(first, num_frames)]
        while sum(out) < num_frames:
            out.append(min(self.chunk_frames, num_frames - sum(out)))
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WorldModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown WorldModelConfig fields {unknown}")
        return cls(**data)

    @classmethod
    def tiny(cls) -> "WorldModelConfig":
        """The CPU default: 8 blocks (3 and 7 softmax), width 128, 4 heads of 32, 8x8 latents."""
        return cls()

    @classmethod
    def sana_wm(cls) -> "WorldModelConfig":
        """The released SANA-WM's sizes (for parameter counts on the ``meta`` device)."""
        return cls(latent_channels=128, latent_height=22, latent_width=40, frames_per_latent=8, depth=20, width=2240,
                   num_heads=20, chunk_frames=3, first_chunk_frames=4)
