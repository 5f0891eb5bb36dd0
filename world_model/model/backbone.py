"""The backbone: a chunk-causal hybrid DiT over latent video (a miniature SANA-WM).

``latents (B, T, C_lat, h, w)`` with per-frame flow-matching times ``timesteps (B, T)``
(0 = clean, 1 = noise) -> velocity ``(B, T, C_lat, h, w)``. A full pass over a sequence
(training) and chunk-by-chunk streaming with the carried :class:`StreamState`
(generation) compute the same function: see ``tests/test_backbone.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from world_model.compiling import CompiledMethods
from world_model.model.camera import CameraInputs, camera_inputs
from world_model.model.config import WorldModelConfig
from world_model.model.layers import Block, RotaryTables
from world_model.model.rope import rope_angles, token_positions
from world_model.model.state import StreamState, check_chunk_sizes, init_state

__all__ = ["WorldModelBackbone", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of flow times ``t (...)`` in [0, 1] (scaled by 1000) -> ``(..., dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * 1000.0 * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class WorldModelBackbone(CompiledMethods, nn.Module):
    """Patch embed (1x1) -> ``depth`` blocks (frame-wise GDN, softmax every ``softmax_every``)
    -> adaLN final layer (zero-initialised) -> velocity."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.width
        self.embed = nn.Linear(cfg.latent_channels, C)
        self.t_embed = nn.Sequential(nn.Linear(256, C), nn.SiLU(), nn.Linear(C, C))
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.final_table = nn.Parameter(torch.randn(2, C) / math.sqrt(C))
        self.final = nn.Linear(C, cfg.latent_channels)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)

    def init_state(self, batch_size: int, device=None) -> StreamState:
        return init_state(self.cfg, batch_size, device)

    def camera(self, c2w: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int],
               reference: torch.Tensor | None = None, starts_video: bool = True) -> CameraInputs:
        """The camera conditioning of raw-frame poses ``c2w (B, F, 4, 4)`` with
        ``intrinsics (B, 3, 3)`` of ``image_hw`` frames, for this backbone's latent grid,
        frames per latent frame and pose scale (see :func:`camera_inputs` for ``reference``
        and ``starts_video``). The one place that turns poses into conditioning: training,
        scoring and the inference API all call it."""
        cfg = self.cfg
        return camera_inputs(c2w, intrinsics, image_hw, (cfg.latent_height, cfg.latent_width), cfg.frames_per_latent,
                             cfg.pose_scale, reference=reference, starts_video=starts_video)

    def _rope(self, num_frames: int, frame_offset: torch.Tensor) -> RotaryTables:
        """Rotary tables ``(B, T, S, 1, d/2)`` for each row's frames (rows may be at different times)."""
        cfg = self.cfg
        pos = token_positions(num_frames, cfg.latent_height, cfg.latent_width, 0, frame_offset.device)  # (T, S, 3)
        pos = pos[None].repeat(frame_offset.shape[0], 1, 1, 1)  # (B, T, S, 3)
        pos[..., 0] += frame_offset[:, None, None].float()
        full = rope_angles(pos, cfg.head_dim, cfg.rope_theta)
        half = rope_angles(pos, cfg.head_dim // 2, cfg.rope_theta)
        return RotaryTables(tuple(a[..., None, :] for a in full), tuple(a[..., None, :] for a in half))

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        camera: CameraInputs | None,
        chunk_lengths: list[int] | None = None,
        state: StreamState | None = None,
        commit: bool = True,
        compiled: bool = False,
    ) -> tuple[torch.Tensor, StreamState | None]:
        """Velocity for ``latents (B, T, C_lat, h, w)`` and the state after these frames.

        ``chunk_lengths`` cut the T frames into chunks (default: the config's schedule,
        continuing from ``state``); ``state`` holds everything before (default: empty; the
        softmax blocks then read the pass's own keys instead of writing and reading a cache,
        the same function with fewer copies: training's path).
        The returned state is what a caller carries to the next chunk after a clean
        "commit" pass; after a denoising pass it is simply dropped, and ``commit=False``
        says so: the state is then not assembled (None is returned in its place), which
        spares the softmax blocks a copy of their caches.

        ``compiled=True`` runs the computation through ``torch.compile`` (inductor; built on
        the first call for each batch size and pass kind, then reused): the same function,
        about 1.5-2x faster on CPU, equal to the eager pass up to float rounding. The input
        checks above stay eager, so bad input gets the same errors either way.
        """
        cfg = self.cfg
        B, T, Cl, h, w = latents.shape
        if (Cl, h, w) != (cfg.latent_channels, cfg.latent_height, cfg.latent_width):
            raise ValueError(f"latents must be (B, T, {cfg.latent_channels}, {cfg.latent_height}, {cfg.latent_width}), "
                             f"got {tuple(latents.shape)}")
        if timesteps.shape != (B, T):
            raise ValueError(f"timesteps must be (B, T) = {(B, T)}, got {tuple(timesteps.shape)}")
        fresh = state is None  # a pass that starts the video: the softmax blocks read keys from the pass itself
        state = state if state is not None else self.init_state(B, latents.device)
        if state.batch_size != B:
            raise ValueError(f"state has batch size {state.batch_size}, latents {B}")
        if chunk_lengths is None:
            starting = state.chunk_index == 0
            if bool(starting.all()):
                chunk_lengths = cfg.chunk_lengths(T)
            elif bool((~starting).all()) or T == 1:
                chunk_lengths = cfg.chunk_lengths(T, first=min(T, cfg.chunk_frames) if not bool(starting.any()) else 1)
            else:
                raise ValueError("rows of the state are at different chunk positions: pass chunk_lengths explicitly")
        if sum(chunk_lengths) != T or min(chunk_lengths) < 1:
            raise ValueError(f"chunk_lengths {list(chunk_lengths)} must be positive and sum to T={T}")
        check_chunk_sizes(cfg, state.chunk_index, chunk_lengths)
        compute = self.compiled("_compute") if compiled else self._compute
        return compute(latents, timesteps, camera, list(chunk_lengths), state, commit, fresh)

    def _compute(self, latents, timesteps, camera, chunk_lengths, state, commit, fresh=False):
        """The forward computation on checked inputs (no data-dependent Python branches)."""
        cfg = self.cfg
        B, T, Cl, h, w = latents.shape
        x = self.embed(latents.permute(0, 1, 3, 4, 2).reshape(B, T, h * w, Cl))  # (B, T, S, C)
        t_emb = self.t_embed(timestep_embedding(timesteps, 256))  # (B, T, C)
        t_mod = self.t_block(t_emb).unflatten(-1, (6, cfg.width))  # (B, T, 6, C)
        rope = self._rope(T, state.frame_index)
        blocks = []
        for block, block_state in zip(self.blocks, state.blocks):
            x, new = block(x, t_mod, chunk_lengths, rope, camera, block_state, state.chunk_index, commit, fresh)
            blocks.append(new)
        shift, scale = (self.final_table[None, None] + t_emb[:, :, None]).unbind(2)  # (B, T, C) each
        x = F.layer_norm(x, (cfg.width,), eps=cfg.norm_eps) * (1 + scale[:, :, None]) + shift[:, :, None]
        v = self.final(x).reshape(B, T, h, w, Cl).permute(0, 1, 4, 2, 3)  # (B, T, C_lat, h, w)
        if not commit:
            return v, None
        return v, StreamState(blocks, state.frame_index + T, state.chunk_index + len(chunk_lengths))
