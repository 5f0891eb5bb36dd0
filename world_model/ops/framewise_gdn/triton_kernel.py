"""Triton kernel for the chunk-causal frame-wise gated delta rule (the CUDA path).

This module imports ``triton`` at the top, so only :mod:`world_model.ops.dispatch` imports
it, lazily, on CUDA (and the interpreter tests, which set ``TRITON_INTERPRET=1`` first: it
runs on CPU tensors there).

One kernel, :func:`_framewise_delta_scan_kernel`, runs one scan direction. A program owns
one (batch row, head, Dv tile) and keeps the transposed state ``h = S^T: [Dk, BV]`` on chip
while it loops over frames. Per frame it loads, tile by tile over the S tokens,
``K_t [BS, Dk]``, ``V_t [BS, BV]``, ``beta_t [BS]`` (and ``q_t [BS, Dk]`` for the read-out):

    h_t = gamma_t h_{t-1} + sum over token tiles of K^T (beta * (V - K gamma_t h_{t-1}))
    out = q_t h_t                                    (forward: inclusive of frame t)
    out += q_t h                                     (backward: before frame t is applied,
                                                      h reset to 0 at each chunk end)

The state's Dv columns evolve independently (row v of ``S_t`` only reads row v of
``S_{t-1}``), so tiling Dv over programs is exact. The denominator is the same scan with
``V = 1`` (Dv = 1) and ``k_den`` / ``q_den``. Every dot product runs in IEEE float32 (no
TF32), to match the float32 reference.

Limits: Dk <= 128 (the key dimension of the state is held whole on chip); S and Dv are any
size (S is looped over in tiles, Dv tiled across programs); blocks are padded to powers of
two of at least 16 (what ``tl.dot`` needs on GPUs) with masked loads. No autograd: the
dispatcher uses this path only when no gradient is needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from world_model.ops.framewise_gdn.inputs import prepare_inputs
from world_model.ops.framewise_gdn.state import GDNOutput, GDNState

MAX_KEY_DIM = 128  # Dk held whole on chip: a [Dk, BV] float32 state per program


@triton.jit
def _read_out(
    q, o, b_h, bt, i_h,
    o_s, o_k, o_v, m_k, m_v,
    S: tl.constexpr, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BS: tl.constexpr,
    ACCUMULATE: tl.constexpr,
):
    """o[token, v] (+)= q[token, :] @ h[:, v] for every token of frame ``bt`` (tiles of BS)."""
    for s0 in range(0, S, BS):
        o_ss = s0 + o_s
        m_s = o_ss < S
        row = (bt * S + o_ss) * H + i_h                                   # [BS] (b, t, s, h) row
        b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_s[:, None] & m_k[None, :], other=0.0)
        b_o = tl.dot(b_q, b_h, input_precision="ieee")                    # [BS, BV]
        p_o = o + row[:, None] * V + o_v[None, :]
        m_o = m_s[:, None] & m_v[None, :]
        if ACCUMULATE:
            b_o += tl.load(p_o, mask=m_o, other=0.0)
        tl.store(p_o, b_o, mask=m_o)


@triton.jit
def _framewise_delta_scan_kernel(
    q,            # [B, T, S, H, K] float32, contiguous
    k,            # [B, T, S, H, K]
    v,            # [B, T, S, H, V]
    beta,         # [B, T, S, H]
    gamma,        # [B, T, H]
    chunk_end,    # [T] int32: 1 on the last frame of each chunk (REVERSE only)
    h0,           # [B, H, V, K] initial state (USE_INITIAL_STATE only)
    o,            # [B, T, S, H, V] output
    ht,           # [B, H, V, K] final state (STORE_FINAL_STATE only)
    T,
    S: tl.constexpr, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    REVERSE: tl.constexpr, USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr,
    ACCUMULATE: tl.constexpr,
):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_s = tl.arange(0, BS)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    # state element (v, k) of S lives at ((b * H + h) * V + v) * K + k; on chip as h[k, v]
    p_state = i_bh.to(tl.int64) * V * K + o_v[None, :] * K + o_k[:, None]   # [BK, BV]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h = tl.load(h0 + p_state, mask=m_h, other=0.0)

    for i_t in range(T):
        if REVERSE:
            t = T - 1 - i_t
        else:
            t = i_t
        bt = i_b.to(tl.int64) * T + t
        if REVERSE:
            # exclusive backward scan: restart at the chunk's end, read out before frame t
            b_h = tl.where(tl.load(chunk_end + t) != 0, 0.0, b_h)
            _read_out(q, o, b_h, bt, i_h, o_s, o_k, o_v, m_k, m_v, S, H, K, V, BS, ACCUMULATE)

        # h_t = gamma_t h + sum_tiles K^T (beta * (V - K gamma_t h)), every tile from the old h
        b_hg = b_h * tl.load(gamma + bt * H + i_h)
        b_dh = tl.zeros([BK, BV], dtype=tl.float32)
        for s0 in range(0, S, BS):
            o_ss = s0 + o_s
            m_s = o_ss < S
            row = (bt * S + o_ss) * H + i_h                               # [BS]
            b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_s[:, None] & m_k[None, :], other=0.0)
            b_vv = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_s[:, None] & m_v[None, :], other=0.0)
            b_beta = tl.load(beta + row, mask=m_s, other=0.0)
            b_u = (b_vv - tl.dot(b_k, b_hg, input_precision="ieee")) * b_beta[:, None]   # [BS, BV]
            b_dh += tl.dot(tl.trans(b_k), b_u, input_precision="ieee")                  # [BK, BV]
        b_h = b_hg + b_dh

        if not REVERSE:
            _read_out(q, o, b_h, bt, i_h, o_s, o_k, o_v, m_k, m_v, S, H, K, V, BS, ACCUMULATE)

    if STORE_FINAL_STATE:
        tl.store(ht + p_state, b_h, mask=m_h)


def check_supported(tokens: int, key_dim: int, value_dim: int, dtype: torch.dtype) -> None:
    """Raise ValueError unless the kernel handles these sizes and this compute dtype."""
    if key_dim > MAX_KEY_DIM:
        raise ValueError(
            f"the Triton framewise_gdn kernel holds Dk whole on chip: Dk = {key_dim} > {MAX_KEY_DIM} "
            f"(S = {tokens}, Dv = {value_dim}); use framewise_gdn_torch"
        )
    if dtype != torch.float32:
        raise ValueError(f"the Triton framewise_gdn kernel computes in float32, got {dtype}; use framewise_gdn_torch")


def is_supported(tokens: int, key_dim: int, value_dim: int, dtype: torch.dtype) -> bool:
    """Whether :func:`check_supported` passes."""
    try:
        check_supported(tokens, key_dim, value_dim, dtype)
    except ValueError:
        return False
    return True


def _block_sizes(tokens: int, key_dim: int, value_dim: int) -> tuple[int, int, int, int]:
    """(BS, BK, BV, num_warps): powers of two >= 16; smaller S / Dv tiles when Dk is large."""
    BK = max(16, triton.next_power_of_2(key_dim))
    cap = 32 if BK > 64 else 64
    BS = max(16, min(cap, triton.next_power_of_2(tokens)))
    BV = max(16, min(cap, triton.next_power_of_2(value_dim)))
    num_warps = 4 if BK * BV <= 64 * 64 else 8
    return BS, BK, BV, num_warps


def _scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    gamma: torch.Tensor,
    chunk_end: torch.Tensor,
    h0: torch.Tensor,
    with_backward: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward then backward launch; q, k: [B, T, S, H, K], v: [B, T, S, H, V], h0: [B, H, V, K].

    Returns (out [B, T, S, H, V], final forward state [B, H, V, K]).
    """
    B, T, S, H, K = q.shape
    V = v.shape[-1]
    BS, BK, BV, num_warps = _block_sizes(S, K, V)
    out = torch.empty(B, T, S, H, V, device=q.device, dtype=torch.float32)
    h_final = torch.empty(B, H, V, K, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(V, BV), B * H)
    common = dict(T=T, S=S, H=H, K=K, V=V, BS=BS, BK=BK, BV=BV, num_warps=num_warps)
    # (1) forward scan, inclusive, from the initial state, across chunks
    _framewise_delta_scan_kernel[grid](
        q, k, v, beta, gamma, chunk_end, h0, out, h_final,
        REVERSE=False, USE_INITIAL_STATE=True, STORE_FINAL_STATE=True, ACCUMULATE=False, **common,
    )
    # (2) backward scan, exclusive, restarting at every chunk end, added onto the output
    if with_backward:
        _framewise_delta_scan_kernel[grid](
            q, k, v, beta, gamma, chunk_end, h0, out, h_final,
            REVERSE=True, USE_INITIAL_STATE=False, STORE_FINAL_STATE=False, ACCUMULATE=True, **common,
        )
    return out, h_final


def framewise_gdn_triton(
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
    """Chunk-causal frame-wise gated delta rule on the Triton kernel (forward only, no autograd).

    Same arguments, formula and result as
    :func:`~world_model.ops.framewise_gdn.naive.framewise_gdn_naive`:
    ``q, k, q_den, k_den: [B, T, S, H, Dk]``, ``v: [B, T, S, H, Dv]``, ``beta: [B, T, S, H]``,
    ``gamma: [B, T, H]``;

        S_t = gamma_t * S_{t-1} (I - K_t B_t K_t^T) + V_t B_t K_t^T
        z_t = gamma_t * (I - Kd_t B_t Kd_t^T) z_{t-1} + Kd_t B_t 1
        numerator = (S^f_t + S^b_t) q_t  [B, T, S, H, Dv],  denominator = (z^f_t + z^b_t) . q_den_t  [B, T, S, H]

    Needs CUDA tensors (or ``TRITON_INTERPRET=1`` for CPU tensors), Dk <= 128 and no
    float64 input; raises ValueError otherwise.
    """
    x = prepare_inputs(q, k, v, beta, gamma, chunk_lengths, q_den, k_den, initial_state)
    B, T, S, H, Dk = x.q.shape
    Dv = x.v.shape[-1]
    check_supported(S, Dk, Dv, x.q.dtype)
    if not x.q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"the Triton framewise_gdn kernel needs CUDA tensors (or TRITON_INTERPRET=1), got {x.q.device}"
        )

    chunk_end = torch.zeros(T, dtype=torch.int32)
    chunk_end[list(x.chunk_ends)] = 1
    chunk_end = chunk_end.to(x.q.device)
    with_backward = max(x.chunk_lengths) > 1           # else every backward state is zero

    def c(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous()

    beta_c, gamma_c = c(x.beta), c(x.gamma)
    numerator, S_final = _scan(c(x.q), c(x.k), c(x.v), beta_c, gamma_c, chunk_end, c(x.S0), with_backward)
    denominator, z_final = None, None
    if x.with_denominator:
        ones = x.q.new_ones(B, T, S, H, 1)               # V = 1: z is a state with Dv = 1
        den, z_state = _scan(
            c(x.q_den), c(x.k_den), ones, beta_c, gamma_c, chunk_end, c(x.z0[:, :, None, :]), with_backward
        )
        denominator, z_final = den[..., 0], z_state[:, :, 0, :]
    return GDNOutput(numerator=numerator, denominator=denominator, state=GDNState(S=S_final, z=z_final))
