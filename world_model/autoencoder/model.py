"""A small causal video autoencoder in the spirit of the LTX video VAE that SANA-WM uses.

Time: the first frame is encoded alone, then every ``K`` frames form one latent frame, so a
clip of ``1 + K n`` frames has ``1 + n`` latent frames. Space: stride ``s = 4 p`` (8).

    frames (B, 1+Kn, 3, H, W)
      -> per frame: pixel-unshuffle p, stem, ResBlocks, down x2, ResBlocks     (level 1, 2)
      -> groups: frame 0 repeated K times, then frames 1..K, K+1..2K, ... stacked on channels
      -> per latent frame: CausalResBlocks, down x2, CausalResBlocks, conv     (level 3, 4)
    raw latents (B, 1+n, L, H/s, W/s) -> (z - mean) / std = latents

and the decoder mirrors it, keeping only the last of the ``K`` frames it makes for latent
frame 0. Per-frame layers never mix frames; a :class:`CausalResBlock` mixes latent frame
``t`` with ``t - 1`` only (frame ``-1`` is frame ``0`` repeated). Hence latent ``j``
depends on frames of groups ``<= j`` only and decoded group ``j`` on latents ``<= j``.

Streaming: :meth:`Autoencoder.encode_step` / :meth:`Autoencoder.decode_step` take whole
groups / latent frames and a :class:`StreamCache` (each causal block's last input) and
return the new cache; chaining them equals the full-sequence :meth:`encode` / :meth:`decode`
up to float rounding of batched convolutions.

The deterministic latents are normalised with per-channel statistics stored in the config
(``latent_mean`` / ``latent_std``, measured after training), so that a diffusion model sees
about unit-variance latents.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from world_model.autoencoder.config import AutoencoderConfig
from world_model.compiling import CompiledMethods

__all__ = ["Autoencoder", "CausalResBlock", "Reconstruction", "ResBlock", "StreamCache"]


# ---------------------------------------------------------------------------- blocks
class ResBlock(nn.Module):
    """``x + conv(silu(conv(silu(x))))`` on single frames ``(N, C, h, w)``; the second conv
    starts at zero, so every block starts as the identity (no normalisation layers)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class CausalResBlock(nn.Module):
    """A :class:`ResBlock` over latent frames whose first conv also sees the previous one:

        y_t = x_t + conv2(silu(conv1(silu x_t) + past(silu x_{t-1})))

    with ``past`` a 1x1 conv and ``x_{-1}`` the cached last frame of the previous call, or
    ``x_0`` itself at the start of a sequence.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.past = nn.Conv2d(channels, channels, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, previous: Tensor | None) -> tuple[Tensor, Tensor]:
        """``x (B, T, C, h, w)``, ``previous (B, C, h, w)`` or None -> ``(y, x[:, -1])``."""
        B, T = x.shape[:2]
        first = x[:, :1] if previous is None else previous[:, None]
        past = torch.cat([first, x[:, :-1]], dim=1)  # (B, T, C, h, w): x shifted one frame later
        h = self.conv1(F.silu(x.flatten(0, 1))) + self.past(F.silu(past.flatten(0, 1)))  # (B*T, C, h, w)
        h = self.conv2(F.silu(h)).unflatten(0, (B, T))  # (B, T, C, h, w)
        return x + h, x[:, -1]


def shortcut(x: Tensor, channels: int, scale: int = 1) -> Tensor | None:
    """The non-parametric DC-AE shortcut of ``x (N, C, h, w)`` to ``(N, channels, h s', w s')``.

    ``scale = 1``: no resampling. ``scale = 2``: space-to-channel (``h / 2``, ``4 C``
    channels). ``scale = -2``: channel-to-space (``2 h``, ``C / 4`` channels, after the
    repetition). Channels then go from ``C'`` to ``channels`` by averaging groups of
    ``C' / channels`` adjacent channels, or by repeating each ``channels / C'`` times.
    Returns None where the counts do not divide (the layer then has no shortcut).
    """
    c = x.shape[1] * (4 if scale == 2 else 1)
    if scale == 2:
        x = F.pixel_unshuffle(x, 2)  # (N, 4C, h/2, w/2)
    if scale == -2:  # repeat up to 4 * channels, then channel-to-space
        if (4 * channels) % c:
            return None
        return F.pixel_shuffle(x.repeat_interleave(4 * channels // c, dim=1), 2)  # (N, channels, 2h, 2w)
    if c % channels == 0:
        return x.unflatten(1, (channels, c // channels)).mean(dim=2)  # (N, channels, h', w')
    if channels % c == 0:
        return x.repeat_interleave(channels // c, dim=1)
    return None


class _Resample(nn.Module):
    """A conv that changes the shape (``scale`` as in :func:`shortcut`: 1 keeps it, 2 halves
    the resolution with a stride-2 conv, -2 doubles it with nearest-neighbour x2 then a
    3x3 conv), plus the :func:`shortcut` of its input when ``residual`` (and the counts
    divide). ``pre_activation``: the conv sees ``silu(x)``, the shortcut still ``x``."""

    def __init__(self, c_in: int, c_out: int, scale: int, kernel: int = 3, residual: bool = True,
                 pre_activation: bool = False) -> None:
        super().__init__()
        self.scale, self.residual, self.pre_activation = scale, residual, pre_activation
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=2 if scale == 2 else 1, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        inp = F.silu(x) if self.pre_activation else x
        inp = F.interpolate(inp, scale_factor=2.0, mode="nearest") if self.scale == -2 else inp
        y = self.conv(inp)  # (N, c_out, h', w')
        skip = shortcut(x, self.conv.out_channels, self.scale) if self.residual else None
        return y if skip is None else y + skip


# ---------------------------------------------------------------------------- state
@dataclass(frozen=True)
class StreamCache:
    """What streaming encode / decode carry from one call to the next."""

    previous: tuple[Tensor, ...]
    """Last input frame ``(B, C, h, w)`` of every causal block, in order of application."""
    latent_frames: int
    """Latent frames processed so far (0 before the first call)."""


class Reconstruction(NamedTuple):
    """Output of :meth:`Autoencoder.forward`."""

    video: Tensor
    """``(B, 1+Kn, C, H, W)`` decoded frames (not clamped)."""
    latents: Tensor
    """``(B, 1+n, L, H/s, W/s)`` normalised latents."""
    raw_latents: Tensor
    """The same before normalisation (what a latent penalty acts on)."""


# ---------------------------------------------------------------------------- halves
class Encoder(nn.Module):
    """Frames -> raw latents (before the statistics normalisation)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        c1, c2 = cfg.frame_widths
        c3, c4 = cfg.latent_widths
        b1, b2, b3, b4 = cfg.encoder_blocks
        self.cfg = cfg
        self.stem = nn.Conv2d(cfg.in_channels * cfg.patch_size**2, c1, 3, padding=1)
        self.level1 = nn.Sequential(*(ResBlock(c1) for _ in range(b1)))
        r = cfg.shortcuts
        self.down1 = _Resample(c1, c2, 2, residual=r)
        self.level2 = nn.Sequential(*(ResBlock(c2) for _ in range(b2)))
        self.merge = _Resample(cfg.temporal_stride * c2, c3, 1, kernel=1, residual=r)
        self.level3 = nn.ModuleList(CausalResBlock(c3) for _ in range(b3))
        self.down2 = _Resample(c3, c4, 2, residual=r)
        self.level4 = nn.ModuleList(CausalResBlock(c4) for _ in range(b4))
        self.out = _Resample(c4, cfg.latent_channels, 1, residual=r, pre_activation=True)

    @property
    def causal_blocks(self) -> int:
        return len(self.level3) + len(self.level4)

    def forward(self, frames: Tensor, cache: StreamCache | None) -> tuple[Tensor, StreamCache]:
        """``frames (B, F, C, H, W)``: ``1 + K m`` frames at the start (cache None), else
        ``K m``. Returns raw latents ``(B, T, L, H/s, W/s)`` (``T = 1 + m`` or ``m``)."""
        K, p = self.cfg.temporal_stride, self.cfg.patch_size
        B, Fr = frames.shape[:2]
        x = F.pixel_unshuffle(frames.flatten(0, 1), p)  # (B*F, C p^2, H/p, W/p)
        x = self.level1(self.stem(x))  # (B*F, c1, H/p, W/p)
        x = self.level2(self.down1(x))  # (B*F, c2, H/2p, W/2p)
        x = x.unflatten(0, (B, Fr))  # (B, F, c2, h, w)
        if cache is None:  # the first frame alone is group 0: repeat it K times
            x = torch.cat([x[:, :1].expand(-1, K, -1, -1, -1), x[:, 1:]], dim=1)  # (B, K(1+m), c2, h, w)
        T = x.shape[1] // K
        x = x.reshape(B * T, K * x.shape[2], *x.shape[3:])  # (B*T, K c2, h, w): a group's frames on channels
        x = self.merge(x).unflatten(0, (B, T))  # (B, T, c3, h, w)
        previous = [None] * self.causal_blocks if cache is None else list(cache.previous)
        new: list[Tensor] = []
        for block in self.level3:
            x, last = block(x, previous[len(new)])
            new.append(last)
        x = self.down2(x.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, c4, h/2, w/2)
        for block in self.level4:
            x, last = block(x, previous[len(new)])
            new.append(last)
        z = self.out(x.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, L, H/s, W/s)
        done = 0 if cache is None else cache.latent_frames
        return z, StreamCache(tuple(new), done + T)


class Decoder(nn.Module):
    """Raw latents -> frames."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        c1, c2 = cfg.decoder_frame_widths
        c3, c4 = cfg.latent_widths
        b1, b2, b3, b4 = cfg.decoder_blocks
        self.cfg = cfg
        r = cfg.shortcuts
        self.inp = _Resample(cfg.latent_channels, c4, 1, residual=r)
        self.level4 = nn.ModuleList(CausalResBlock(c4) for _ in range(b4))
        self.up2 = _Resample(c4, c3, -2, residual=r)
        self.level3 = nn.ModuleList(CausalResBlock(c3) for _ in range(b3))
        self.split = _Resample(c3, cfg.temporal_stride * c2, 1, kernel=1, residual=r, pre_activation=True)
        self.level2 = nn.Sequential(*(ResBlock(c2) for _ in range(b2)))
        self.up1 = _Resample(c2, c1, -2, residual=r)
        self.level1 = nn.Sequential(*(ResBlock(c1) for _ in range(b1)))
        self.out = nn.Conv2d(c1, cfg.in_channels * cfg.patch_size**2, 3, padding=1)

    @property
    def causal_blocks(self) -> int:
        return len(self.level3) + len(self.level4)

    def forward(self, z: Tensor, cache: StreamCache | None) -> tuple[Tensor, StreamCache]:
        """``z (B, T, L, h, w)`` raw latents -> frames ``(B, F, C, H, W)``: ``F = 1 + K (T-1)``
        at the start of a sequence (cache None), else ``K T``."""
        K, p = self.cfg.temporal_stride, self.cfg.patch_size
        B, T = z.shape[:2]
        x = self.inp(z.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, c4, h, w)
        previous = [None] * self.causal_blocks if cache is None else list(cache.previous)
        new: list[Tensor] = []
        for block in self.level4:
            x, last = block(x, previous[len(new)])
            new.append(last)
        x = self.up2(x.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, c3, 2h, 2w)
        for block in self.level3:
            x, last = block(x, previous[len(new)])
            new.append(last)
        x = self.split(x.flatten(0, 1))  # (B*T, K c2, 2h, 2w)
        x = x.reshape(B, T * K, x.shape[1] // K, *x.shape[2:])  # (B, T K, c2, 2h, 2w): one group -> K frames
        if cache is None:  # latent frame 0 holds the first frame alone: keep the last of its K
            x = x[:, K - 1:]  # (B, 1 + K (T-1), c2, 2h, 2w)
        Fr = x.shape[1]
        x = self.level2(x.flatten(0, 1))  # (B*F, c2, H/2p, W/2p)
        x = self.level1(self.up1(x))  # (B*F, c1, H/p, W/p)
        x = F.pixel_shuffle(self.out(F.silu(x)), p)  # (B*F, C, H, W)
        done = 0 if cache is None else cache.latent_frames
        return x.unflatten(0, (B, Fr)), StreamCache(tuple(new), done + T)


# ---------------------------------------------------------------------------- model
class Autoencoder(CompiledMethods, nn.Module):
    """The causal video autoencoder. See the module docstring.

    - :meth:`encode` ``(B, 1+Kn, C, H, W)`` in [-1, 1] -> latents ``(B, 1+n, L, H/s, W/s)``
    - :meth:`decode` latents -> frames ``(B, 1+Kn, C, H, W)`` (not clamped)
    - :meth:`encode_step` / :meth:`decode_step`: the same, streamed with a :class:`StreamCache`
    - :meth:`forward` ``video`` -> :class:`Reconstruction`
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        L = config.latent_channels
        mean = torch.zeros(L) if config.latent_mean is None else torch.tensor(config.latent_mean)
        std = torch.ones(L) if config.latent_std is None else torch.tensor(config.latent_std)
        # Not in the state dict: the config is where the statistics live.
        self.register_buffer("latent_mean", mean.view(L, 1, 1), persistent=False)
        self.register_buffer("latent_std", std.view(L, 1, 1), persistent=False)

    # -- statistics
    def set_latent_stats(self, mean: Tensor | list[float], std: Tensor | list[float]) -> None:
        """Store per-channel latent statistics (in the config and the buffers)."""
        mean = [float(v) for v in torch.as_tensor(mean).flatten()]
        std = [float(v) for v in torch.as_tensor(std).flatten()]
        self.config = dataclasses.replace(self.config, latent_mean=tuple(mean), latent_std=tuple(std))
        L = self.config.latent_channels
        self.latent_mean.copy_(torch.tensor(mean).view(L, 1, 1))
        self.latent_std.copy_(torch.tensor(std).view(L, 1, 1))

    def normalize(self, raw: Tensor) -> Tensor:
        """Raw latents -> latents with about zero mean and unit variance per channel."""
        return (raw - self.latent_mean) / self.latent_std

    def denormalize(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`."""
        return z * self.latent_std + self.latent_mean

    # -- checks
    def _check_frames(self, video: Tensor, start: bool, what: str) -> None:
        cfg, K, s = self.config, self.config.temporal_stride, self.config.spatial_stride
        if video.ndim != 5:
            raise ValueError(f"{what} must be (B, frames, {cfg.in_channels}, H, W), got shape {tuple(video.shape)}")
        Fr, C, H, W = video.shape[1:]
        if C != cfg.in_channels:
            raise ValueError(f"{what} must have {cfg.in_channels} channels on dim 2, got {C} (shape {tuple(video.shape)})")
        if start and (Fr - 1) % K:
            raise ValueError(f"{what} must have 1 + {K}n frames (1, {1 + K}, {1 + 2 * K}, ...), got {Fr}")
        if not start and (Fr < K or Fr % K):
            raise ValueError(f"{what} after the first call must have {K}m frames ({K}, {2 * K}, ...), got {Fr}")
        if H < s or W < s or H % s or W % s:
            raise ValueError(f"{what} height and width must be multiples of {s} (the spatial stride), got {H}x{W}")

    def _check_latents(self, z: Tensor) -> None:
        L = self.config.latent_channels
        if z.ndim != 5 or z.shape[1] < 1 or z.shape[2] != L:
            raise ValueError(f"latents must be (B, T >= 1, {L}, h, w), got shape {tuple(z.shape)}")

    # -- full sequences
    def encode(self, video: Tensor) -> Tensor:
        """``(B, 1+Kn, C, H, W)`` -> normalised latents ``(B, 1+n, L, H/s, W/s)``."""
        self._check_frames(video, start=True, what="video")
        return self.normalize(self.encoder(video, None)[0])

    def decode(self, z: Tensor) -> Tensor:
        """Normalised latents ``(B, 1+n, L, h, w)`` -> frames ``(B, 1+Kn, C, h s, w s)``."""
        self._check_latents(z)
        return self.decoder(self.denormalize(z), None)[0]

    def forward(self, video: Tensor) -> Reconstruction:
        self._check_frames(video, start=True, what="video")
        raw = self.encoder(video, None)[0]
        return Reconstruction(self.decoder(raw, None)[0], self.normalize(raw), raw)

    # -- streaming
    def encode_step(self, frames: Tensor, cache: StreamCache | None = None) -> tuple[Tensor, StreamCache]:
        """Encode the next groups: ``1 + Km`` frames on the first call (``cache=None``), then
        ``Km`` frames per call. Returns ``(latents (B, 1+m or m, L, h, w), cache)``."""
        self._check_frames(frames, start=cache is None, what="frames")
        raw, cache = self.encoder(frames, cache)
        return self.normalize(raw), cache

    def decode_step(self, z: Tensor, cache: StreamCache | None = None,
                    compiled: bool = False) -> tuple[Tensor, StreamCache]:
        """Decode the next ``T`` latent frames (``T = 1`` for one env step): returns
        ``(frames, cache)`` with ``1 + K (T-1)`` frames on the first call, ``K T`` after.
        ``compiled=True``: through ``torch.compile`` (built on first use per input shape and
        precision; equal to eager up to float rounding)."""
        self._check_latents(z)
        if not compiled or cache is None:
            return self.decoder(self.denormalize(z), cache)
        frames, previous = self.compiled("_decode_next")(z, cache.previous)
        return frames, StreamCache(previous, cache.latent_frames + z.shape[1])

    def _decode_next(self, z: Tensor, previous: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The decoder after its first call, on the cache's tensors only: the frame count
        does not change the frames, and leaving it out keeps it from being baked into
        (and rebuilding) the compiled graph at every step."""
        frames, cache = self.decoder(self.denormalize(z), StreamCache(previous, 0))
        return frames, cache.previous

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
