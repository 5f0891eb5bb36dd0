"""The chunk-causal flow-matching objective (SANA-WM stage 1).

Per-frame times are drawn per *chunk* from a mixture of patterns, the way SANA-WM trains
its chunk-causal model:

- ``equal``: one time for every chunk;
- ``increasing``: independent times sorted so later chunks are noisier (diffusion forcing);
- ``independent``: an independent time per chunk;
- ``prefix``: the last chunk noisy, every earlier chunk clean (teacher forcing: exactly the
  context the model sees when it generates, after the clean commit pass).

The first latent frame is given clean with probability ``clean_first_frame`` (image-to-
video); clean frames are excluded from the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from world_model.diffusion.schedule import logit_normal_times

__all__ = ["FlowMatchingConfig", "sample_chunk_times", "flow_matching_loss"]

PATTERNS = ("equal", "increasing", "independent", "prefix")


@dataclass(frozen=True)
class FlowMatchingConfig:
    """Timestep distribution and noise mixture of the training objective."""

    logit_mean: float = 0.0
    """Mean of the logit-normal time distribution."""
    logit_std: float = 1.0
    """Standard deviation of the logit-normal time distribution."""
    shift: float = 3.0
    """Timestep shift applied to sampled times (``s t / (1 + (s - 1) t)``)."""
    clean_first_frame: float = 0.9
    """Probability that the first latent frame is given clean (image-to-video)."""
    pattern_weights: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)
    """Mixture weights of the per-chunk noise patterns (equal, increasing, independent, prefix)."""

    def __post_init__(self) -> None:
        if len(self.pattern_weights) != len(PATTERNS) or min(self.pattern_weights) < 0 or sum(self.pattern_weights) <= 0:
            raise ValueError(f"pattern_weights must be {len(PATTERNS)} non-negative weights for {PATTERNS}, got {self.pattern_weights}")
        if not 0 <= self.clean_first_frame <= 1:
            raise ValueError(f"clean_first_frame must be in [0, 1], got {self.clean_first_frame}")


def sample_chunk_times(cfg: FlowMatchingConfig, batch: int, chunk_lengths: list[int], generator: torch.Generator | None = None):
    """Per-frame times ``(B, T)`` and the pattern index per sample ``(B,)``."""
    n = len(chunk_lengths)
    per_chunk = logit_normal_times((batch, n), generator, cfg.logit_mean, cfg.logit_std, cfg.shift)
    weights = torch.tensor(cfg.pattern_weights, dtype=torch.float32)
    pattern = torch.multinomial(weights, batch, replacement=True, generator=generator)
    equal = per_chunk[:, :1].expand(batch, n)
    increasing = per_chunk.sort(-1).values
    prefix = torch.where(torch.arange(n) == n - 1, per_chunk[:, -1:], torch.zeros(1))
    options = torch.stack([equal, increasing, per_chunk, prefix], 1)  # (B, 4, n)
    chunk_t = options[torch.arange(batch), pattern]  # (B, n)
    lengths = torch.tensor(chunk_lengths)
    t = chunk_t.repeat_interleave(lengths, dim=1)  # (B, T)
    clean_first = torch.rand(batch, generator=generator) < cfg.clean_first_frame
    t[:, 0] = torch.where(clean_first, torch.zeros(()), t[:, 0])
    return t, pattern


def flow_matching_loss(model, latents: torch.Tensor, camera, chunk_lengths: list[int], cfg: FlowMatchingConfig,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Velocity-prediction loss of ``model(x_t, t, camera, chunk_lengths, commit=False)`` on clean
    ``latents (B, T, C, h, w)``; returns the loss and a dict of logs."""
    B = latents.shape[0]
    t, pattern = sample_chunk_times(cfg, B, chunk_lengths, generator)
    t = t.to(latents.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    tb = t[:, :, None, None, None]
    x_t = (1 - tb) * latents + tb * noise
    target = noise - latents
    pred, _ = model(x_t, t, camera, chunk_lengths, commit=False)  # the state after the pass is not used
    weight = (t > 0).float()  # clean frames carry no loss
    per_frame = (pred.float() - target.float()).square().mean((2, 3, 4))  # (B, T)
    loss = (per_frame * weight).sum() / weight.sum().clamp_min(1.0)
    logs = {"loss": float(loss.detach()), "t_mean": float(t[weight > 0].mean()) if weight.any() else 0.0}
    detached = per_frame.detach()
    for i, name in enumerate(PATTERNS):
        sel = pattern == i
        if sel.any():
            w = weight[sel]
            logs[f"loss_{name}"] = float((detached[sel] * w).sum() / w.sum().clamp_min(1.0))
    return loss, logs
