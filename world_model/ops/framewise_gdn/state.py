"""The data that the frame-wise gated delta rule carries and returns.

``GDNState`` is the recurrent state of one Gated DeltaNet layer: what a streaming caller
keeps between chunks. Its size is ``B * H * Dv * Dk (+ B * H * Dk)`` floats, independent of
how many frames have been seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GDNState:
    """Recurrent state of the frame-wise gated delta rule, per batch row and head.

    S: [B, H, Dv, Dk]  numerator state; a token's read-out is ``S @ q`` ([Dv]).
    z: [B, H, Dk] | None  normaliser state; a token's denominator is ``z . q_den``.
       ``None`` when the layer computes no denominator.
    """

    S: torch.Tensor
    z: torch.Tensor | None = None

    @classmethod
    def zeros(
        cls,
        batch: int,
        heads: int,
        key_dim: int,
        value_dim: int,
        *,
        with_normaliser: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> GDNState:
        """The empty state: ``S = 0 [B, H, Dv, Dk]``, ``z = 0 [B, H, Dk]`` (or ``None``)."""
        S = torch.zeros(batch, heads, value_dim, key_dim, device=device, dtype=dtype)
        z = torch.zeros(batch, heads, key_dim, device=device, dtype=dtype) if with_normaliser else None
        return cls(S=S, z=z)

    def detach(self) -> GDNState:
        """The same state cut from the autograd graph (for truncated backprop through time)."""
        return GDNState(S=self.S.detach(), z=None if self.z is None else self.z.detach())

    def to(self, *args, **kwargs) -> GDNState:
        """``Tensor.to`` applied to every tensor of the state."""
        return GDNState(S=self.S.to(*args, **kwargs), z=None if self.z is None else self.z.to(*args, **kwargs))


@dataclass(frozen=True)
class GDNOutput:
    """What the frame-wise gated delta rule returns.

    numerator:   [B, T, S, H, Dv]  float32, ``(S^f_t + S^b_t) q_t`` per token
    denominator: [B, T, S, H] | None  float32, ``(z^f_t + z^b_t) . q_den_t`` per token (the
                 layer adds eps and divides); ``None`` when no ``q_den`` / ``k_den`` were given
    state:       the forward state after the last frame: the streaming state for the next chunk
                 (``state.z`` is None when no denominator was computed, even if the initial
                 state had one)
    """

    numerator: torch.Tensor
    denominator: torch.Tensor | None
    state: GDNState
