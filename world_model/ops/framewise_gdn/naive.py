"""Literal reference of the chunk-causal frame-wise gated delta rule.

Python loops over batch, head and frame; explicit ``(I - K B K^T)`` matrices; the backward
state of every frame recomputed from zero straight from its definition. Slow and obviously
right: the fast paths (:mod:`.torch_impl`, :mod:`.triton_kernel`) are tested against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from world_model.ops.framewise_gdn.inputs import prepare_inputs
from world_model.ops.framewise_gdn.state import GDNOutput, GDNState


def numerator_update(
    S_prev: torch.Tensor, K: torch.Tensor, V: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """One frame of the numerator recurrence, written as the formula.

    ``S_t = gamma_t * S_{t-1} (I - K_t B_t K_t^T) + V_t B_t K_t^T``
    S_prev: [Dv, Dk]; K: [Dk, S] (one column per token); V: [Dv, S]; beta: [S]; gamma: [].
    """
    identity = torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
    B = torch.diag(beta)
    return gamma * S_prev @ (identity - K @ B @ K.T) + V @ B @ K.T


def normaliser_update(
    z_prev: torch.Tensor, K: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """One frame of the normaliser recurrence, written as the formula.

    ``z_t = gamma_t * (I - K_t B_t K_t^T) z_{t-1} + K_t B_t 1``
    z_prev: [Dk]; K: [Dk, S]; beta: [S]; gamma: [].
    """
    identity = torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
    B = torch.diag(beta)
    ones = torch.ones(K.shape[1], dtype=K.dtype, device=K.device)
    return gamma * (identity - K @ B @ K.T) @ z_prev + K @ B @ ones


def framewise_gdn_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    gamma: torch.Tensor,
    chunk_lengths: Sequence[int],
    *,
    q_den: torch.Tensor | None = None,
    k_den: torch.Tensor | None = None,
    initial_state: GDNState | None = None,
) -> GDNOutput:
    """Chunk-causal frame-wise gated delta rule, reference implementation.

    Shapes: ``q, k, q_den, k_den: [B, T, S, H, Dk]``, ``v: [B, T, S, H, Dv]``,
    ``beta: [B, T, S, H]`` in (0, 1), ``gamma: [B, T, H]`` in (0, 1], ``chunk_lengths``
    positive ints summing to T, ``initial_state.S: [B, H, Dv, Dk]``, ``.z: [B, H, Dk]``.

    Per head and frame, with ``K_t`` the Dk x S matrix of frame t's keys, ``V_t`` Dv x S,
    ``B_t = diag(beta_t)`` (all S tokens of a frame update the state at once):

        S_t = gamma_t * S_{t-1} (I - K_t B_t K_t^T) + V_t B_t K_t^T
        z_t = gamma_t * (I - Kd_t B_t Kd_t^T) z_{t-1} + Kd_t B_t 1        (Kd from k_den)

    Forward states ``S^f_t, z^f_t``: the recurrence from ``initial_state`` over frames
    0..t (inclusive), carried across chunks. Backward states ``S^b_t, z^b_t``: for t in a
    chunk ending at frame e, the same rule applied from zero to frames e, e-1, ..., t+1
    (exclusive; zero for t = e). Per token:

        numerator   = (S^f_t + S^b_t) q_t          -> [B, T, S, H, Dv]
        denominator = (z^f_t + z^b_t) . q_den_t    -> [B, T, S, H]  (None without q_den/k_den)

    ``state`` is the forward state after frame T-1. Computes in float32 (float64 if any
    input is float64); bf16 / fp16 inputs are upcast.
    """
    x = prepare_inputs(q, k, v, beta, gamma, chunk_lengths, q_den, k_den, initial_state)
    B, T, S, H, Dk = x.q.shape
    Dv = x.v.shape[-1]
    chunk_end = x.chunk_end_of_frame()
    numerator = x.q.new_zeros(B, T, S, H, Dv)
    denominator = x.q.new_zeros(B, T, S, H) if x.with_denominator else None
    S_final = torch.zeros_like(x.S0)
    z_final = None if x.z0 is None else torch.zeros_like(x.z0)

    def frame(b: int, t: int, h: int):
        """(K [Dk, S], V [Dv, S], beta [S], gamma [], Kd [Dk, S] | None) of one frame and head."""
        Kd = x.k_den[b, t, :, h].T if x.with_denominator else None
        return x.k[b, t, :, h].T, x.v[b, t, :, h].T, x.beta[b, t, :, h], x.gamma[b, t, h], Kd

    for b in range(B):
        for h in range(H):
            S_fwd, z_fwd = x.S0[b, h], None if x.z0 is None else x.z0[b, h]
            for t in range(T):
                K, V, beta_t, gamma_t, Kd = frame(b, t, h)
                # forward state, inclusive of frame t
                S_fwd = numerator_update(S_fwd, K, V, beta_t, gamma_t)
                # backward state: frames chunk_end[t], ..., t+1, from zero (exclusive of t)
                S_bwd = torch.zeros_like(S_fwd)
                for u in range(chunk_end[t], t, -1):
                    Ku, Vu, beta_u, gamma_u, _ = frame(b, u, h)
                    S_bwd = numerator_update(S_bwd, Ku, Vu, beta_u, gamma_u)
                numerator[b, t, :, h] = (x.q[b, t, :, h] @ (S_fwd + S_bwd).T)  # [S, Dv]

                if x.with_denominator:
                    z_fwd = normaliser_update(z_fwd, Kd, beta_t, gamma_t)
                    z_bwd = torch.zeros_like(z_fwd)
                    for u in range(chunk_end[t], t, -1):
                        _, _, beta_u, gamma_u, Kd_u = frame(b, u, h)
                        z_bwd = normaliser_update(z_bwd, Kd_u, beta_u, gamma_u)
                    denominator[b, t, :, h] = x.q_den[b, t, :, h] @ (z_fwd + z_bwd)  # [S]
            S_final[b, h] = S_fwd
            if z_final is not None:
                z_final[b, h] = z_fwd
    return GDNOutput(numerator=numerator, denominator=denominator, state=GDNState(S=S_final, z=z_final))
