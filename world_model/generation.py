"""Streaming generation in latent space: the first frame, then chunk after chunk.

Used by the inference API (:mod:`world_model.world_model`) and by the teacher stage's
held-out evaluation, so that both generate exactly the same way.
"""

from __future__ import annotations

import torch

from world_model.diffusion import commit_chunk, sample_chunk
from world_model.model import CameraInputs, StreamState

__all__ = ["rollout_latents", "slice_camera"]


def slice_camera(camera: CameraInputs | None, start: int, stop: int) -> CameraInputs | None:
    """The conditioning of latent frames ``[start, stop)``."""
    return None if camera is None else CameraInputs(*(x[:, start:stop] for x in camera))


@torch.no_grad()
def rollout_latents(backbone, first_latent: torch.Tensor, camera: CameraInputs | None, num_frames: int,
                    times: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, StreamState]:
    """Generate ``num_frames`` latent frames ``(B, T, C, h, w)`` from the clean first
    latent frame ``(B, 1, C, h, w)`` and the whole video's ``camera`` conditioning
    (``None``: the camera branches off, the baseline). Chunks follow the backbone config;
    each is sampled along ``times`` from fresh noise and committed into the state."""
    cfg = backbone.cfg
    if cfg.first_chunk_frames != 1:
        raise ValueError("rollout_latents starts from one clean frame: the backbone needs first_chunk_frames=1")
    state = commit_chunk(backbone, first_latent, slice_camera(camera, 0, 1), None)
    out, start = [first_latent], 1
    for n in cfg.chunk_lengths(num_frames)[1:]:
        shape = (first_latent.shape[0], n) + tuple(first_latent.shape[2:])
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(first_latent.device)
        x, state = sample_chunk(backbone, noise, slice_camera(camera, start, start + n), state, times)
        out.append(x)
        start += n
    return torch.cat(out, 1), state
