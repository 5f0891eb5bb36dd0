"""The one streaming generation loop: the first frame, then chunk after chunk.

Every generator of video in the project runs it: :meth:`WorldModel.generate_video
<world_model.world_model.WorldModel.generate_video>` (decoding each chunk as it comes),
the held-out scores of :mod:`world_model.scoring` and the training stages' periodic
evaluation. One env step (:meth:`WorldModel.step <world_model.world_model.WorldModel.step>`)
is one turn of this loop on a carried state: :func:`~world_model.diffusion.sample_chunk`
on fresh noise, which also commits the chunk into the state.
"""

from __future__ import annotations

from typing import Iterator

import torch

from world_model.diffusion import commit_chunk, sample_chunk
from world_model.model import CameraInputs, StreamState

__all__ = ["rollout_latents", "slice_camera", "stream_latents"]


def slice_camera(camera: CameraInputs | None, start: int, stop: int) -> CameraInputs | None:
    """The conditioning of latent frames ``[start, stop)``."""
    return None if camera is None else CameraInputs(*(x[:, start:stop] for x in camera))


@torch.no_grad()
def stream_latents(backbone, first_latent: torch.Tensor, camera: CameraInputs | None, num_frames: int,
                   times: torch.Tensor, generator: torch.Generator | None = None,
                   compiled: bool = False) -> Iterator[tuple[torch.Tensor, StreamState]]:
    """Yield ``(latents (B, n, C, h, w), state)`` chunk by chunk for ``num_frames`` latent
    frames: first the clean first latent frame ``(B, 1, C, h, w)`` committed into a fresh
    state, then each later chunk (lengths from the backbone config) sampled along ``times``
    from fresh noise drawn from ``generator`` and committed. ``camera``: the whole video's
    conditioning (``None``: the camera branches off, the baseline)."""
    cfg = backbone.cfg
    if cfg.first_chunk_frames != 1:
        raise ValueError("generation starts from one clean frame: the backbone needs first_chunk_frames=1")
    state = commit_chunk(backbone, first_latent, slice_camera(camera, 0, 1), None, compiled)
    yield first_latent, state
    start = 1
    for n in cfg.chunk_lengths(num_frames)[1:]:
        shape = (first_latent.shape[0], n) + tuple(first_latent.shape[2:])
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(first_latent.device)
        x, state = sample_chunk(backbone, noise, slice_camera(camera, start, start + n), state, times, compiled)
        yield x, state
        start += n


@torch.no_grad()
def rollout_latents(backbone, first_latent: torch.Tensor, camera: CameraInputs | None, num_frames: int,
                    times: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, StreamState]:
    """All of :func:`stream_latents` at once: ``(B, T, C, h, w)`` latents and the final state."""
    chunks, state = [], None
    for x, state in stream_latents(backbone, first_latent, camera, num_frames, times, generator):
        chunks.append(x)
    return torch.cat(chunks, 1), state
