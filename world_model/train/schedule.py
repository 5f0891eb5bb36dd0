"""Schedules as small pure functions of the step."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ema_decay_at", "lr_at", "step_seed"]


def lr_at(step: int, peak: float, warmup: int, total: int, final_fraction: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up from ``peak / warmup``
    to ``peak`` over ``warmup`` steps, then a cosine down to ``final_fraction * peak`` at
    ``total - 1``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(total - 1 - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    final = final_fraction * peak
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay after optimizer step ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``,
    so that the average forgets its random start quickly."""
    return min(decay, (1 + step) / (10 + step))


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the random draws of ``step`` on process ``rank``: a run resumed at any step
    draws what the uninterrupted run drew."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> np.uint64(1))
