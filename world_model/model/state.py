"""The streaming state of the backbone: explicit tensors, passed in and returned.

Everything a chunk needs from the past lives here, and every tensor is allocated at its
final size by :func:`init_state`: the frame-wise GDN state ``S`` (and normaliser ``z``) of
each linear block, the short-conv and temporal-conv caches (the last few frames), and for
each softmax block a key/value cache with a *sink* (the first chunk) plus a ring of the
``softmax_window_chunks`` most recent chunks. Its size in bytes is therefore the same
after one chunk and after an hour.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from world_model.model.config import WorldModelConfig

__all__ = ["GDNBlockState", "SoftmaxBlockState", "StreamState", "check_chunk_sizes", "init_state", "state_nbytes"]


@dataclass
class GDNBlockState:
    S: torch.Tensor  # (B, H, D, D) float32 main-branch state
    z: torch.Tensor  # (B, H, D) float32 normaliser
    S_cam: torch.Tensor  # (B, H, D, D) float32 camera-branch (UCPE) state
    k_conv: torch.Tensor  # (B, short_conv_kernel - 1, S, 2C) last key frames before the short conv (main | camera; C without camera)
    ffn_conv: torch.Tensor  # (B, temporal_conv_kernel - 1, S, hidden) last feed-forward frames


@dataclass
class SoftmaxBlockState:
    k: torch.Tensor  # (B, L, S, 2H, D) cached keys (main heads | camera heads, transformed; H without camera), L = sink + window
    v: torch.Tensor  # (B, L, S, 2H, D)
    valid: torch.Tensor  # (B, L) bool: which slots hold a frame
    ffn_conv: torch.Tensor  # (B, temporal_conv_kernel - 1, S, hidden)


@dataclass
class StreamState:
    blocks: list
    """One :class:`GDNBlockState` or :class:`SoftmaxBlockState` per block."""
    frame_index: torch.Tensor
    """(B,) int64: latent frames committed so far by each row (the time position of its next frame)."""
    chunk_index: torch.Tensor
    """(B,) int64: chunks committed so far by each row (chunk 0 goes to the sink)."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor view (for snapshots and size accounting)."""
        out = {"frame_index": self.frame_index, "chunk_index": self.chunk_index}
        for i, block in enumerate(self.blocks):
            for f in dataclasses.fields(block):
                out[f"blocks.{i}.{f.name}"] = getattr(block, f.name)
        return out

    def map(self, fn) -> "StreamState":
        """A new state with ``fn(tensor)`` applied to every tensor (all have the batch first)."""
        blocks = [type(b)(**{f.name: fn(getattr(b, f.name)) for f in dataclasses.fields(b)}) for b in self.blocks]
        return StreamState(blocks, fn(self.frame_index), fn(self.chunk_index))

    def zip_map(self, other: "StreamState", fn) -> "StreamState":
        """A new state with ``fn(mine, theirs)`` applied to every pair of tensors of the same name."""
        blocks = [type(a)(**{f.name: fn(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)})
                  for a, b in zip(self.blocks, other.blocks)]
        return StreamState(blocks, fn(self.frame_index, other.frame_index), fn(self.chunk_index, other.chunk_index))

    def clone(self) -> "StreamState":
        return self.map(torch.clone)

    def select(self, index: torch.Tensor) -> "StreamState":
        """Rows ``index (k,)`` as a new ``k``-row state (copies)."""
        return self.map(lambda t: t.index_select(0, index))

    def with_rows(self, index: torch.Tensor, rows: "StreamState") -> "StreamState":
        """This state with rows ``index (k,)`` replaced by the ``k`` rows of ``rows`` (same
        configuration): how a batched env resets some of its envs. Out of place."""
        flat, new = self.tensors(), rows.tensors()
        if flat.keys() != new.keys() or any(flat[k].shape[1:] != new[k].shape[1:] for k in flat):
            raise ValueError("with_rows needs two states of the same configuration")
        if rows.batch_size != index.numel():
            raise ValueError(f"with_rows: {index.numel()} row indices for a state of {rows.batch_size} rows")
        return self.zip_map(rows, lambda a, b: a.index_copy(0, index, b.to(a.dtype)))

    def from_tensors(self, tensors: dict[str, torch.Tensor]) -> "StreamState":
        """A state shaped like this one (same block kinds) holding ``tensors`` (the names of
        :meth:`tensors`; the caller checks shapes and dtypes)."""
        blocks = [type(b)(**{f.name: tensors[f"blocks.{i}.{f.name}"] for f in dataclasses.fields(b)})
                  for i, b in enumerate(self.blocks)]
        return StreamState(blocks, tensors["frame_index"], tensors["chunk_index"])

    @property
    def batch_size(self) -> int:
        return self.frame_index.shape[0]


def cache_slots(cfg: WorldModelConfig) -> int:
    """Frames a softmax cache holds: the sink chunk plus the window of recent chunks (0 for
    an unbounded cache, which starts empty and grows)."""
    if cfg.softmax_window_chunks < 0:
        return 0
    return cfg.first_chunk_frames + cfg.softmax_window_chunks * cfg.chunk_frames


def check_chunk_sizes(cfg: WorldModelConfig, chunk_index: torch.Tensor, chunk_lengths: list[int]) -> None:
    """Raise if a chunk would not fit the bounded softmax cache: a row's first chunk (its
    ``chunk_index`` is 0) goes to the sink of ``first_chunk_frames`` slots, every later one
    to a ring slot of ``chunk_frames``. An unbounded cache (window -1) takes any size."""
    if cfg.softmax_window_chunks < 0 or not any(cfg.is_softmax_block(i) for i in range(cfg.depth)):
        return
    first = chunk_index == 0
    n = chunk_lengths[0]
    if n > cfg.first_chunk_frames and bool(first.any()):
        raise ValueError(f"first chunk has {n} frames; the cache's sink holds first_chunk_frames={cfg.first_chunk_frames}")
    later = [n] if not bool(first.all()) else []
    for n in later + list(chunk_lengths[1:]):
        if n > cfg.chunk_frames:
            raise ValueError(f"chunk of {n} frames; chunks after the first hold at most chunk_frames={cfg.chunk_frames}")


def init_state(cfg: WorldModelConfig, batch_size: int, device=None) -> StreamState:
    """An empty state (nothing committed yet) with every tensor at its final size."""
    B, S, H, D, C = batch_size, cfg.tokens_per_frame, cfg.num_heads, cfg.head_dim, cfg.width
    f32 = dict(dtype=torch.float32, device=device)
    nb = 2 if cfg.camera_branches else 1  # main branch, plus the camera branch's own keys
    blocks: list = []
    for i in range(cfg.depth):
        ffn = torch.zeros(B, cfg.temporal_conv_kernel - 1, S, cfg.hidden_dim, **f32)
        if cfg.is_softmax_block(i):
            L = cache_slots(cfg)
            blocks.append(SoftmaxBlockState(torch.zeros(B, L, S, nb * H, D, **f32), torch.zeros(B, L, S, nb * H, D, **f32),
                                            torch.zeros(B, L, dtype=torch.bool, device=device), ffn))
        else:
            blocks.append(GDNBlockState(torch.zeros(B, H, D, D, **f32), torch.zeros(B, H, D, **f32),
                                        torch.zeros(B, H, D, D, **f32),
                                        torch.zeros(B, cfg.short_conv_kernel - 1, S, nb * C, **f32), ffn))
    zero = torch.zeros(B, dtype=torch.int64, device=device)
    return StreamState(blocks, zero.clone(), zero.clone())


def state_nbytes(state: StreamState) -> int:
    """Bytes held by the state's tensors."""
    return sum(t.numel() * t.element_size() for t in state.tensors().values())
