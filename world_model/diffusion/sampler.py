"""Few-step Euler sampling of one chunk from the carried state, and the clean commit pass.

The sampling loop:

1. start from fresh noise for the chunk's latent frames;
2. for each pair of times ``(t, t_next)``: predict the velocity with the state of the past
   chunks as context (read only) and step ``x += (t_next - t) v``;
3. run one clean pass (``t = 0``) of the sampled chunk to write it into the state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from world_model.model.state import StreamState

__all__ = ["sample_chunk", "commit_chunk"]


@torch.no_grad()
def commit_chunk(model, latents: torch.Tensor, camera, state: StreamState | None, compiled: bool = False) -> StreamState:
    """Write clean ``latents (B, n, C, h, w)`` into the state: one pass at ``t = 0``
    (``compiled``: see the backbone's ``forward``)."""
    B, n = latents.shape[:2]
    t = torch.zeros(B, n, device=latents.device)
    _, new_state = model(latents, t, camera, [n], state, compiled=compiled)
    return new_state


@torch.no_grad()
def sample_chunk(model, noise: torch.Tensor, camera, state: StreamState, times: torch.Tensor,
                 compiled: bool = False, guide: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, StreamState]:
    """Sample a chunk from ``noise (B, n, C, h, w)`` along decreasing ``times`` (1 -> 0) and
    commit it; returns the clean latents and the new state (``compiled``: see the
    backbone's ``forward``). ``guide``: maps the sampled latents to those committed (and
    returned) instead, for example :func:`world_model.memory.guide_chunk`'s composite."""
    x = noise
    B, n = noise.shape[:2]
    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
        v, _ = model(x, torch.full((B, n), t, device=x.device), camera, [n], state, commit=False, compiled=compiled)
        x = x + (t_next - t) * v
    if guide is not None:
        x = guide(x)
    return x, commit_chunk(model, x, camera, state, compiled)
