"""Reconstruction losses and image metrics of the autoencoder (no pretrained networks).

Images are float ``(N, C, H, W)``; the losses take them in the model's [-1, 1], the
metrics (:func:`psnr`, :func:`ssim`) map them to [0, 1] first so that the figures read as
usual (PSNR in dB for a peak of 1; SSIM with Wang et al.'s constants, an 11-tap Gaussian
window of sigma 1.5, valid positions only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossWeights", "gradient_l1", "psnr", "reconstruction_loss", "ssim"]

SSIM_WINDOW = 11
"""Taps of the Gaussian window of :func:`ssim`."""
SSIM_SIGMA = 1.5
"""Its standard deviation in pixels."""
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms; a zero weight skips the term (and its log)."""

    l1: float = 1.0
    """Mean absolute error in [-1, 1]."""
    l2: float = 0.0
    """Mean squared error in [-1, 1]."""
    ssim: float = 0.2
    """``1 - SSIM`` (computed in [0, 1])."""
    gradient: float = 0.5
    """L1 between horizontal and vertical finite differences (sharp edges)."""
    latent_l2: float = 1e-4
    """Mean square of the raw latents: keeps their scale bounded."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value >= 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {value}")
        if not self.l1 + self.l2 + self.ssim + self.gradient > 0:
            raise ValueError(f"at least one of the weights l1, l2, ssim, gradient must be > 0, got {self}")


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM ``(N,)`` of images ``(N, C, H, W)`` in [-1, 1], mean over channels and
    valid window positions; computed in float32 (autocast off: the variances are differences
    of nearly equal moments, which bfloat16 would turn negative). Needs ``H, W >= 11``."""
    with torch.autocast(x.device.type, enabled=False):
        return _ssim(x, y)


def _ssim(x: Tensor, y: Tensor) -> Tensor:
    x = (x.float() + 1) / 2
    y = (y.float() + 1) / 2
    N, C, H, W = x.shape
    if H < SSIM_WINDOW or W < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {H}x{W}")
    g = _gaussian_window(x.dtype, x.device)
    gh = g.view(1, 1, 1, -1).expand(C, 1, 1, -1)
    gv = g.view(1, 1, -1, 1).expand(C, 1, -1, 1)

    def blur(t: Tensor) -> Tensor:  # separable Gaussian, valid: (N, C, H-10, W-10)
        return F.conv2d(F.conv2d(t, gh, groups=C), gv, groups=C)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + SSIM_C1) * (2 * sxy + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (sxx + syy + SSIM_C2))
    return s.mean(dim=(1, 2, 3))


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR ``(N,)`` in dB of images in [-1, 1] (peak 1 after mapping to [0, 1])."""
    mse = ((x.float() - y.float()) / 2).square().mean(dim=tuple(range(1, x.ndim)))
    return -10 * torch.log10(mse.clamp_min(1e-12))


def gradient_l1(x: Tensor, y: Tensor) -> Tensor:
    """L1 between the finite differences of ``x`` and ``y`` along width and height."""
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def reconstruction_loss(recon: Tensor, target: Tensor, raw_latents: Tensor,
                        weights: LossWeights) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the terms of :class:`LossWeights` for frames ``(..., C, H, W)``.

    Returns ``(loss, logs)``; logs hold every active term unweighted (detached) and the
    PSNR of the batch."""
    recon = recon.float().flatten(0, -4)  # (N, C, H, W)
    target = target.float().flatten(0, -4)  # (N, C, H, W)
    terms: dict[str, Tensor] = {}
    if weights.l1:
        terms["l1"] = (recon - target).abs().mean()
    if weights.l2:
        terms["l2"] = (recon - target).square().mean()
    if weights.ssim:
        terms["ssim"] = 1 - ssim(recon, target).mean()
    if weights.gradient:
        terms["gradient"] = gradient_l1(recon, target)
    if weights.latent_l2:
        terms["latent_l2"] = raw_latents.float().square().mean()
    loss = sum(getattr(weights, name) * value for name, value in terms.items())
    logs = {name: value.detach() for name, value in terms.items()}
    logs["psnr"] = psnr(recon.detach(), target).mean()
    return loss, logs
