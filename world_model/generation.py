"""The one streaming generation loop: the first frame, then chunk after chunk.

Every generator of video in the project runs it: :meth:`WorldModel.generate_video
<world_model.world_model.WorldModel.generate_video>` (decoding each chunk as it comes),
the held-out scores of :mod:`world_model.scoring` and the training stages' periodic
evaluation. One env step (:meth:`WorldModel.step <world_model.world_model.WorldModel.step>`)
is one turn of this loop on a carried state: :func:`~world_model.diffusion.sample_chunk`
on fresh noise, which also commits the chunk into the state.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import torch

from world_model.diffusion import commit_chunk, sample_chunk
from world_model.model import CameraInputs, StreamState

__all__ = ["rollout_latents", "slice_camera", "stream_latents"]


def slice_camera(camera: CameraInputs | None, start: int, stop: int) -> CameraInputs | None:
    """The conditioning of latent frames ``[start, stop)``."""
    return None if camera is None else CameraInputs(*(x[:, start:stop] for x in camera))


@torch.no_grad()
def stream_latents(backbone, first_latent: torch.Tensor, camera: CameraInputs | None, num_frames: int,
                   times: torch.Tensor | None, generator: torch.Generator | None = None,
                   compiled: bool = False, guide: Callable[[torch.Tensor, int], torch.Tensor] | None = None
                   ) -> Iterator[tuple[torch.Tensor, StreamState]]:
    """Yield ``(latents (B, n, C, h, w), state)`` chunk by chunk for ``num_frames`` latent
    frames. First the clean context ``first_latent (B, n0, C, h, w)`` (one frame, or a
    context clip) committed into a fresh state chunk by chunk, as generated chunks are, and
    yielded once whole; then each later chunk (lengths from the backbone config) sampled
    along ``times`` from fresh noise drawn from ``generator`` and committed. ``camera``: the
    whole video's conditioning (``None``: the camera branches off, the baseline). The state
    has the same size whatever the context's length (the softmax blocks keep the first
    chunk as their sink and a window of the latest). ``guide(x, start)``: maps each sampled
    chunk (its first latent frame's index ``start``) to the latents committed and yielded
    instead (:class:`world_model.memory.MemoryGuide`)."""
    cfg = backbone.cfg
    if cfg.first_chunk_frames != 1:
        raise ValueError("generation starts from one clean frame: the backbone needs first_chunk_frames=1")
    chunks = cfg.chunk_lengths(num_frames)
    n0 = first_latent.shape[1]
    state, start, i = None, 0, 0
    while start < n0:
        n = chunks[i]
        if start + n > n0:
            raise ValueError(f"a context of {n0} latent frames does not end on a chunk boundary (chunks {chunks[:i + 1]})")
        state = commit_chunk(backbone, first_latent[:, start:start + n], slice_camera(camera, start, start + n), state,
                             compiled)
        start, i = start + n, i + 1
    yield first_latent, state
    for n in chunks[i:]:
        shape = (first_latent.shape[0], n) + tuple(first_latent.shape[2:])
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(first_latent.device)
        x, state = sample_chunk(backbone, noise, slice_camera(camera, start, start + n), state, times, compiled,
                                None if guide is None else functools.partial(guide, start=start))
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
