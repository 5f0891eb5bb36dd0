"""Flow-matching time schedules: pure functions.

Flow matching here: ``x_t = (1 - t) x_0 + t eps``, the network predicts the velocity
``v = eps - x_0``; ``t = 0`` is clean, ``t = 1`` pure noise.
"""

from __future__ import annotations

import torch

__all__ = ["shift_time", "logit_normal_times", "sampling_times"]


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift (SD3 / SANA): ``s t / (1 + (s - 1) t)``; ``s > 1`` spends more time at high noise."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def logit_normal_times(shape, generator: torch.Generator | None, mean: float = 0.0, std: float = 1.0,
                       shift: float = 1.0, device=None) -> torch.Tensor:
    """Training times: ``sigmoid(N(mean, std))``, then shifted."""
    u = torch.randn(shape, generator=generator, device=device) * std + mean
    return shift_time(torch.sigmoid(u), shift)


def sampling_times(steps: int, shift: float = 1.0, final: float = 0.0) -> torch.Tensor:
    """``steps + 1`` decreasing times from 1 to ``final``: a uniform grid, then shifted."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_time(torch.linspace(1.0, final, steps + 1), shift)
