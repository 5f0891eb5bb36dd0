"""Argument checks shared by every implementation of the frame-wise gated delta rule.

All implementations (naive, batched PyTorch, Triton) take the same arguments in the same
order and go through :func:`prepare_inputs`, so they accept and reject exactly the same
calls, with the same ``ValueError`` messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import torch

from world_model.ops.framewise_gdn.state import GDNState


@dataclass(frozen=True)
class GDNInputs:
    """Checked inputs, upcast to the compute dtype (float32, or float64 if any input is).

    q, k:   [B, T, S, H, Dk]
    v:      [B, T, S, H, Dv]
    beta:   [B, T, S, H]
    gamma:  [B, T, H]
    q_den, k_den: [B, T, S, H, Dk] | None  (both or neither)
    S0:     [B, H, Dv, Dk]  initial numerator state (zeros if none was given)
    z0:     [B, H, Dk] | None  initial normaliser state (zeros if none was given;
            ``None`` exactly when no denominator is computed)
    chunk_lengths: positive ints summing to T
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    beta: torch.Tensor
    gamma: torch.Tensor
    q_den: torch.Tensor | None
    k_den: torch.Tensor | None
    S0: torch.Tensor
    z0: torch.Tensor | None
    chunk_lengths: tuple[int, ...]

    @property
    def with_denominator(self) -> bool:
        return self.q_den is not None

    @property
    def chunk_ends(self) -> tuple[int, ...]:
        """Index of the last frame of each chunk."""
        ends, t = [], 0
        for length in self.chunk_lengths:
            t += length
            ends.append(t - 1)
        return tuple(ends)

    def chunk_end_of_frame(self) -> tuple[int, ...]:
        """For every frame t, the last frame of the chunk that holds t (length T)."""
        out: list[int] = []
        for end, length in zip(self.chunk_ends, self.chunk_lengths):
            out.extend([end] * length)
        return tuple(out)


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def check_chunk_lengths(chunk_lengths: Sequence[int], num_frames: int) -> tuple[int, ...]:
    """``chunk_lengths`` as a tuple of positive ints summing to ``num_frames`` (else ValueError)."""
    try:
        lengths = list(chunk_lengths)
    except TypeError:
        raise ValueError(f"chunk_lengths must be a sequence of positive ints, got {chunk_lengths!r}") from None
    if not lengths:
        raise ValueError(f"chunk_lengths must not be empty (T = {num_frames})")
    for i, length in enumerate(lengths):
        if isinstance(length, bool) or not isinstance(length, Integral):
            raise ValueError(f"chunk_lengths[{i}] = {length!r} is not an int (chunk_lengths = {lengths})")
        if length <= 0:
            raise ValueError(f"chunk_lengths[{i}] = {length} is not positive (chunk_lengths = {lengths})")
    lengths = [int(length) for length in lengths]
    if sum(lengths) != num_frames:
        raise ValueError(f"chunk_lengths {lengths} sum to {sum(lengths)}, but the inputs have T = {num_frames} frames")
    return tuple(lengths)


def prepare_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    gamma: torch.Tensor,
    chunk_lengths: Sequence[int],
    q_den: torch.Tensor | None = None,
    k_den: torch.Tensor | None = None,
    initial_state: GDNState | None = None,
) -> GDNInputs:
    """Check shapes, devices, dtypes and ``chunk_lengths``; upcast; fill in default states."""
    named = {"q": q, "k": k, "v": v, "beta": beta, "gamma": gamma}
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if q.dim() != 5:
        raise ValueError(f"q must be [B, T, S, H, Dk], got shape {_shape(q)}")
    B, T, S, H, Dk = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [B, T, S, H, Dk] = {_shape(q)}, got {_shape(k)}")
    if v.dim() != 5 or v.shape[:4] != q.shape[:4]:
        raise ValueError(f"v must be [B, T, S, H, Dv] = [{B}, {T}, {S}, {H}, Dv], got shape {_shape(v)}")
    Dv = v.shape[4]
    if beta.shape != (B, T, S, H):
        raise ValueError(f"beta must be [B, T, S, H] = {(B, T, S, H)}, got {_shape(beta)}")
    if gamma.shape != (B, T, H):
        raise ValueError(f"gamma must be [B, T, H] = {(B, T, H)}, got {_shape(gamma)}")
    if min(B, T, S, H, Dk, Dv) == 0:
        raise ValueError(f"empty inputs: q {_shape(q)}, v {_shape(v)}")
    if (q_den is None) != (k_den is None):
        raise ValueError(
            "q_den and k_den go together (both or neither), got "
            f"q_den={'None' if q_den is None else _shape(q_den)}, k_den={'None' if k_den is None else _shape(k_den)}"
        )
    if q_den is not None:
        named.update(q_den=q_den, k_den=k_den)
        for name in ("q_den", "k_den"):
            if named[name].shape != q.shape:
                raise ValueError(
                    f"{name} must have q's shape [B, T, S, H, Dk] = {_shape(q)}, got {_shape(named[name])}"
                )
    if initial_state is not None:
        if not isinstance(initial_state, GDNState):
            raise ValueError(f"initial_state must be a GDNState, got {type(initial_state).__name__}")
        if initial_state.S.shape != (B, H, Dv, Dk):
            raise ValueError(
                f"initial_state.S must be [B, H, Dv, Dk] = {(B, H, Dv, Dk)}, got {_shape(initial_state.S)}"
            )
        named["initial_state.S"] = initial_state.S
        if initial_state.z is not None:
            if initial_state.z.shape != (B, H, Dk):
                raise ValueError(f"initial_state.z must be [B, H, Dk] = {(B, H, Dk)}, got {_shape(initial_state.z)}")
            named["initial_state.z"] = initial_state.z

    devices = {name: x.device for name, x in named.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all inputs must be on one device, got {devices}")
    for name, x in named.items():
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    lengths = check_chunk_lengths(chunk_lengths, T)

    # float32 compute (bf16 / fp16 upcast); float64 kept for gradient checks
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in named.values()) else torch.float32

    def up(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.to(dtype)

    if initial_state is None:
        S0 = q.new_zeros(B, H, Dv, Dk, dtype=dtype)
        z0 = None
    else:
        S0, z0 = up(initial_state.S), up(initial_state.z)
    if q_den is None:
        z0 = None
    elif z0 is None:
        z0 = q.new_zeros(B, H, Dk, dtype=dtype)
    return GDNInputs(
        q=up(q), k=up(k), v=up(v), beta=up(beta), gamma=up(gamma),
        q_den=up(q_den), k_den=up(k_den), S0=S0, z0=z0, chunk_lengths=lengths,
    )
