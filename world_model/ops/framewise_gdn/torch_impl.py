"""Batched PyTorch form of the chunk-causal frame-wise gated delta rule (the CPU path).

Same result as :func:`.naive.framewise_gdn_naive`, computed so that PyTorch does the work:

- vectorised over batch and heads (batched matmuls over N = B * H rows), the state kept
  transposed as ``h = S^T: [N, Dk, Dv]`` so that a frame's read-out is ``q_t @ h``;
- no Dk x Dk identity: ``h_t = gamma_t h_{t-1} + (B_t K_t)^T (V_t - K_t gamma_t h_{t-1})``
  with ``K_t: [S, Dk]`` (one row per token), the transpose of
  ``S_t = gamma_t S_{t-1} (I - K_t B_t K_t^T) + V_t B_t K_t^T``; two ``baddbmm`` per frame;
- one forward scan over all T frames, the output read on the fly per frame: by default
  :func:`~world_model.ops.fused.delta_scan_fused` (its backward scan written out; each
  frame's states kept), with ``fused=False`` :func:`delta_scan` through autograd (the
  frames taken with ``unbind``: one view per frame, whose backward is one ``stack``);
- the normaliser is its own scan of the same recurrence with ``V = 1`` (one column: the
  state is ``z``), so the numerator's rows are not copied into a wider batch;
- the backward scans of all chunks at once: chunks sorted by length, loop over the position
  counted back from each chunk's end (at most max(chunk_lengths) - 1 steps, not T), the
  chunks that have run out dropped from the batch;
- the autograd form stores no per-frame state and writes nothing in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from world_model.ops.framewise_gdn.inputs import prepare_inputs
from world_model.ops.framewise_gdn.state import GDNOutput, GDNState
from world_model.ops.fused import delta_scan_fused, fused_ops_enabled


def frame_update(
    h: torch.Tensor, K: torch.Tensor, K_beta: torch.Tensor, V: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """One frame of the delta rule on the transposed state, for N independent (batch, head) rows.

    ``h_t = gamma_t h_{t-1} + (B_t K_t)^T (V_t - K_t gamma_t h_{t-1})``
    h: [N, Dk, Dv]; K: [N, S, Dk]; K_beta = beta * K: [N, S, Dk]; V: [N, S, Dv] (or an
    expanded view of ones); gamma: [N].
    """
    h = h * gamma[:, None, None]                                 # [N, Dk, Dv]
    residual = torch.baddbmm(V, K, h, alpha=-1.0)                # V - K h: [N, S, Dv]
    return torch.baddbmm(h, K_beta.transpose(1, 2), residual)    # [N, Dk, Dv]


def delta_scan(
    q: torch.Tensor, k: torch.Tensor, k_beta: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor, h0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward scan over all T frames, inclusive, carried from ``h0``, through autograd (the
    reference of :func:`~world_model.ops.fused.delta_scan_fused`): q, k, k_beta [N, T, S, Dk],
    v [N, T, S, Dv], gamma [N, T], h0 [N, Dk, Dv] -> (out [N, T, S, Dv], h_{T-1})."""
    h = h0
    forward_out = []
    for q_t, k_t, kb_t, v_t, g_t in zip(q.unbind(1), k.unbind(1), k_beta.unbind(1), v.unbind(1), gamma.unbind(1)):
        h = frame_update(h, k_t, kb_t, v_t, g_t)
        forward_out.append(torch.bmm(q_t, h))                    # [N, S, Dv]
    return torch.stack(forward_out, dim=1), h


def _chunk_causal_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    gamma: torch.Tensor,
    h0: torch.Tensor,
    chunk_lengths: tuple[int, ...],
    fused: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + exclusive per-chunk backward scan; N = B * H rows, frames second.

    q, k: [N, T, S, Dk]; v: [N, T, S, Dv] (may be an expanded view); beta: [N, T, S];
    gamma: [N, T]; h0: [N, Dk, Dv].
    Returns (out [N, T, S, Dv] = q_t (h^f_t + h^b_t), h^f_{T-1} [N, Dk, Dv]).
    """
    N, T, S, Dk = k.shape
    Dv = v.shape[-1]
    k_beta = k * beta[..., None]                                 # [N, T, S, Dk]

    # (1) forward scan over all frames, inclusive, carried across chunks
    out, h_final = (delta_scan_fused if fused else delta_scan)(q, k, k_beta, v, gamma, h0)  # [N, T, S, Dv]
    if max(chunk_lengths) == 1:
        return out, h_final                                      # every backward state is zero

    # (2) backward scans of all chunks in parallel. Chunks sorted longest first, so the
    # chunks still running at step j are a prefix. Step j applies frame (end - j) to the
    # chunk's backward state, which then is the (exclusive) state of frame (end - j - 1).
    ends, t = [], 0
    for length in chunk_lengths:
        t += length
        ends.append(t - 1)
    order = sorted(range(len(chunk_lengths)), key=lambda c: -chunk_lengths[c])
    lengths = [chunk_lengths[c] for c in order]
    ends_sorted = torch.tensor([ends[c] for c in order], device=q.device)

    def at_frames(x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return x[:, frames].flatten(0, 1)                        # [N, T, ...] -> [N * len(frames), ...]

    h = h0.new_zeros(N * len(order), Dk, Dv)                     # [N * C, Dk, Dv], chunk-minor
    backward_out, backward_frames = [], []
    for j in range(lengths[0] - 1):
        running = sum(1 for length in lengths if length >= j + 2)
        h = h.view(N, -1, Dk, Dv)[:, :running].reshape(N * running, Dk, Dv)
        src = ends_sorted[:running] - j                          # frames applied at this step
        dst = src - 1                                            # frames read out at this step
        h = frame_update(h, at_frames(k, src), at_frames(k_beta, src), at_frames(v, src), at_frames(gamma, src))
        backward_out.append(torch.bmm(at_frames(q, dst), h).view(N, running, S, Dv))
        backward_frames.append(dst)
    out = out.index_add(1, torch.cat(backward_frames), torch.cat(backward_out, dim=1))
    return out, h_final


def framewise_gdn_torch(
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
    fused: bool | None = None,
) -> GDNOutput:
    """Chunk-causal frame-wise gated delta rule, batched PyTorch form.

    Shapes: ``q, k, q_den, k_den: [B, T, S, H, Dk]``, ``v: [B, T, S, H, Dv]``,
    ``beta: [B, T, S, H]`` in (0, 1), ``gamma: [B, T, H]`` in (0, 1], ``chunk_lengths``
    positive ints summing to T, ``initial_state.S: [B, H, Dv, Dk]``, ``.z: [B, H, Dk]``.

        S_t = gamma_t * S_{t-1} (I - K_t B_t K_t^T) + V_t B_t K_t^T
        z_t = gamma_t * (I - Kd_t B_t Kd_t^T) z_{t-1} + Kd_t B_t 1        (Kd from k_den)
        numerator   = (S^f_t + S^b_t) q_t          -> [B, T, S, H, Dv]
        denominator = (z^f_t + z^b_t) . q_den_t    -> [B, T, S, H]

    with S^f the forward (inclusive, from ``initial_state``, across chunks) and S^b the
    backward (exclusive, from zero at each chunk's end) state; see
    :func:`~world_model.ops.framewise_gdn.naive.framewise_gdn_naive` for the full statement.
    Returns float32 (float64 if any input is float64) and the forward state after frame T-1;
    the recurrence runs in that dtype with autocast off.
    ``fused=True``: the forward scan through :func:`~world_model.ops.fused.delta_scan_fused`
    (its backward written out); ``False``: through autograd (:func:`delta_scan`, the
    reference); ``None`` (default): fused except inside :func:`~world_model.ops.fused.reference_ops`.
    """
    x = prepare_inputs(q, k, v, beta, gamma, chunk_lengths, q_den, k_den, initial_state)
    fused = fused_ops_enabled() if fused is None else fused

    B, T, S, H, Dk = x.q.shape
    Dv = x.v.shape[-1]

    def rows(t: torch.Tensor) -> torch.Tensor:
        """[B, T, S, H, ...] -> [B * H, T, S, ...]: one row per (batch, head)."""
        return t.movedim(3, 1).flatten(0, 1)

    beta_r = rows(x.beta)                                        # [N, T, S]
    gamma_r = x.gamma.movedim(2, 1).flatten(0, 1)                # [N, T]
    q_r, k_r, v_r = rows(x.q), rows(x.k), rows(x.v)
    h0 = x.S0.transpose(-1, -2).flatten(0, 1)                    # [N, Dk, Dv]
    N = B * H
    no_autocast = torch.autocast(q_r.device.type, enabled=False)  # the recurrence in the compute dtype, always
    with no_autocast:
        out, h_final = _chunk_causal_scan(q_r, k_r, v_r, beta_r, gamma_r, h0, x.chunk_lengths, fused)
    numerator = out.reshape(B, H, T, S, Dv).movedim(1, 3).contiguous()      # [B, T, S, H, Dv]
    state_S = h_final.view(B, H, Dk, Dv).transpose(-1, -2).contiguous()    # [B, H, Dv, Dk]

    denominator, state_z = None, None
    if x.with_denominator:  # the normaliser: the same recurrence with V = 1 (one column)
        ones = v_r.new_ones(()).expand(N, T, S, 1)
        with no_autocast:
            out, h_final = _chunk_causal_scan(rows(x.q_den), rows(x.k_den), ones, beta_r, gamma_r,
                                              x.z0.reshape(N, Dk, 1), x.chunk_lengths, fused)
        denominator = out[..., 0].reshape(B, H, T, S).movedim(1, 3).contiguous()  # [B, T, S, H]
        state_z = h_final[..., 0].reshape(B, H, Dk)                                # [B, H, Dk]
    return GDNOutput(numerator=numerator, denominator=denominator, state=GDNState(S=state_S, z=state_z))
