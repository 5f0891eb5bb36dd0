"""Fused CPU forms of the backbone's glue, each an ``autograd.Function`` with its backward
pass written out: the paths training takes on CPU (docs/RESULTS.md, "Training step").

Autograd's own backward of the reference forms is correct but wasteful on one CPU thread:
every slice of a tensor that is read in the forward pass becomes, in the backward pass, a
zero tensor of the whole input plus a copy, and every small op is its own pass over memory.
The functions here compute the same values (tested against the references, values and
gradients) with in-place accumulation into one buffer per gradient:

- :func:`short_conv_frames_fused`: the causal depthwise convolution over frames
  (reference: :func:`short_conv_frames_reference`);
- :func:`delta_scan_fused`: the forward scan of the frame-wise gated delta rule, its
  states kept for a backward scan written out (reference: the autograd loop of
  :func:`world_model.ops.framewise_gdn.torch_impl.delta_scan`);
- :func:`ranged_attention`: softmax attention of query blocks to their own key ranges (the
  chunk-causal sink + window pattern of a training pass), through PyTorch's CPU flash
  attention kernels, forward and backward, each block's key gradients added in place into
  one buffer (reference: one ``scaled_dot_product_attention`` per block through autograd);
- :func:`group_transform`: UCPE's per-token 4x4 transform of the first half of each head's
  channels with the rotary rotation (or a copy) of the second half, written into one output
  (reference: :func:`group_transform_reference`, slices and a concatenation).

They run on any device and dtype: :mod:`world_model.ops.dispatch` picks the short conv and
the GDN scan's form on CPU (fla and Triton on CUDA), the layers call the other two (ranged
attention takes its reference on CUDA, where PyTorch's own attention kernels serve). Inside ``with reference_ops():`` every one of them (and the GDN scan's choice) runs its
reference instead: the training benchmark times both side by side, and the tests compare a
whole training step's loss and gradients across the two.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import torch
import torch.nn.functional as F

__all__ = [
    "delta_scan_fused",
    "fused_ops_enabled",
    "reference_ops",
    "group_transform",
    "group_transform_reference",
    "ranged_attention",
    "ranged_attention_reference",
    "short_conv_frames_fused",
    "short_conv_frames_reference",
]

_state = threading.local()


def fused_ops_enabled() -> bool:
    """False inside :func:`reference_ops` (in this thread) and while ``torch.compile`` traces
    (a compiled region gets the reference forms, which its compiler fuses itself)."""
    return not torch.compiler.is_compiling() and getattr(_state, "enabled", True)  # no thread-local read in a trace


@contextlib.contextmanager
def reference_ops():
    """Run the reference forms (autograd through the plain ops) instead of the fused ones."""
    previous = getattr(_state, "enabled", True)
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = previous


class _ShortConvFrames(torch.autograd.Function):
    """``y[:, t] = sum_i w[:, i] * xx[:, t + i]`` with ``xx = cat(past, x)`` over frames."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        T, W = x.shape[1], weight.shape[1]
        xx = torch.cat([past, x], dim=1)                         # [B, W-1+T, S, C]
        wt = weight.t().contiguous()                             # [W, C]: each tap's row contiguous
        y = xx[:, W - 1:] * wt[W - 1]
        for i in range(W - 1):
            y.addcmul_(xx[:, i:i + T], wt[i])
        ctx.save_for_backward(xx, wt)
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        xx, wt = ctx.saved_tensors
        W, C = wt.shape
        T = gy.shape[1]
        gy = gy.contiguous()
        g_x = g_w = g_past = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
            g_xx = torch.zeros_like(xx)
            for i in range(W):
                g_xx[:, i:i + T].addcmul_(gy, wt[i])
            g_x, g_past = g_xx[:, W - 1:], g_xx[:, :W - 1]
        if ctx.needs_input_grad[1]:
            g2 = gy.reshape(-1, T * xx.shape[2], C)                # [B, T*S, C]
            g_w = torch.stack([(g2 * xx[:, i:i + T].reshape(g2.shape)).sum((0, 1)) for i in range(W)], 1)
        return g_x, g_w, g_past


def short_conv_frames_fused(x: torch.Tensor, weight: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
    """Causal depthwise convolution over frames: ``x [B, T, S, C]``, ``weight [C, W]``, ``past
    [B, W-1, S, C]`` (the frames before the first, in ``x``'s dtype) -> ``[B, T, S, C]``,
    ``y[:, t] = sum_i weight[:, i] * cat(past, x)[:, t + i]``; the values and gradients of
    :func:`short_conv_frames_reference` (:mod:`world_model.ops.dispatch` checks the
    arguments and carries the cache)."""
    if not fused_ops_enabled():
        return short_conv_frames_reference(x, weight, past)
    return _ShortConvFrames.apply(x, weight.to(x.dtype), past)


def short_conv_frames_reference(x: torch.Tensor, weight: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
    """:func:`short_conv_frames_fused` through autograd: one product and sum per tap."""
    T, W = x.shape[1], weight.shape[1]
    xx = torch.cat([past, x], dim=1)                             # [B, W-1+T, S, C]
    y = xx[:, W - 1:] * weight[:, W - 1]
    for i in range(W - 1):
        y = y + xx[:, i:i + T] * weight[:, i]                    # [B, T, S, C]
    return y


class _DeltaScan(torch.autograd.Function):
    """Forward scan of the delta rule on the transposed state, N independent rows, one frame
    at a time (a frame's operands stay in cache; batching the frames' matmuls measured
    slower): ``a_t = gamma_t h_{t-1}``, ``R_t = V_t - K_t a_t``, ``h_t = a_t + Kb_t^T R_t``,
    ``o_t = Q_t h_t``. Keeps every ``h_t`` and ``R_t`` for the backward scan::

        dh += Q_t^T dO_t;  dQ_t = dO_t h_t^T;  dKb_t = R_t dh^T;  dR = Kb_t dh;  dV_t = dR
        dK_t = -dR a_t^T;  da = dh - K_t^T dR;  dgamma_t = <da, h_{t-1}>;  dh = gamma_t da
    """

    @staticmethod
    def forward(ctx, q, k, kb, v, gamma, h0):
        T = k.shape[1]
        states, residuals, out = [h0], [], []
        h = h0
        for t in range(T):
            a = h * gamma[:, t, None, None]
            r = torch.baddbmm(v[:, t], k[:, t], a, alpha=-1.0)          # [N, S, Dv]
            h = torch.baddbmm(a, kb[:, t].transpose(1, 2), r)           # [N, Dk, Dv]
            out.append(torch.bmm(q[:, t], h))
            states.append(h)
            residuals.append(r)
        ctx.save_for_backward(q, k, kb, gamma)
        ctx.states, ctx.residuals = states, residuals
        return torch.stack(out, 1), h.clone()

    @staticmethod
    def backward(ctx, d_out, d_final):
        q, k, kb, gamma = ctx.saved_tensors
        states, residuals = ctx.states, ctx.residuals
        T = k.shape[1]
        need_q, need_k, need_kb, need_v, need_g, need_h0 = ctx.needs_input_grad
        dq, dk, dkb, dv, dg = [], [], [], [], []
        dh = torch.zeros_like(states[0]) if d_final is None else d_final.clone()
        for t in reversed(range(T)):
            if d_out is not None:
                d_o = d_out[:, t]
                dh = torch.baddbmm(dh, q[:, t].transpose(1, 2), d_o)
                if need_q:
                    dq.append(torch.bmm(d_o, states[t + 1].transpose(1, 2)))
            elif need_q:
                dq.append(torch.zeros_like(q[:, t]))
            if need_kb:
                dkb.append(torch.bmm(residuals[t], dh.transpose(1, 2)))
            d_r = torch.bmm(kb[:, t], dh)
            if need_v:
                dv.append(d_r)
            a = states[t] * gamma[:, t, None, None]
            if need_k:
                dk.append(torch.bmm(d_r, a.transpose(1, 2)).neg_())
            da = torch.baddbmm(dh, k[:, t].transpose(1, 2), d_r, alpha=-1.0)
            if need_g:
                dg.append((da * states[t]).sum((1, 2)))
            dh = da * gamma[:, t, None, None]

        def frames(grads):  # collected last frame first
            return torch.stack(grads[::-1], 1) if grads else None

        return frames(dq), frames(dk), frames(dkb), frames(dv), frames(dg), dh if need_h0 else None


def delta_scan_fused(q, k, k_beta, v, gamma, h0):
    """Forward scan of the frame-wise delta rule over all T frames, carried from ``h0``:
    ``q, k, k_beta [N, T, S, Dk]``, ``v [N, T, S, Dv]`` (an expanded view is fine),
    ``gamma [N, T]``, ``h0 [N, Dk, Dv]`` -> ``(out [N, T, S, Dv] = q_t h_t, h_{T-1} [N, Dk,
    Dv])``, with a backward scan written out (no per-op autograd graph). Runs in the inputs'
    dtype (the caller turns autocast off: the recurrence stays float32 under bfloat16
    autocast, as in the Triton kernel)."""
    return _DeltaScan.apply(q, k, k_beta, v, gamma, h0)


Blocks = tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...]
"""``((q_lo, q_hi, ((k_lo, k_hi), ...)), ...)``: each block's query rows and its key ranges."""


def _gather(x: torch.Tensor, ranges) -> torch.Tensor:
    """Rows ``ranges`` of ``x [B, heads, L, D]`` along L: a view for one range, a copy for more."""
    parts = [x[:, :, lo:hi] for lo, hi in ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 2)


def _flash_ops():
    aten = torch.ops.aten
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu") and hasattr(
            aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        return aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention_for_cpu_backward
    return None


class _RangedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, blocks):
        forward, _ = _flash_ops()
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:3])
        gathered = []  # the blocks whose keys are a concatenation, kept for the backward pass
        for q_lo, q_hi, ranges in blocks:
            keys, values = _gather(k, ranges), _gather(v, ranges)
            o, l = forward(q[:, :, q_lo:q_hi], keys, values)
            out[:, :, q_lo:q_hi] = o
            lse[:, :, q_lo:q_hi] = l
            gathered.append((keys, values) if len(ranges) > 1 else None)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.blocks, ctx.gathered = blocks, gathered
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        _, backward = _flash_ops()
        d_out = d_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for (q_lo, q_hi, ranges), kept in zip(ctx.blocks, ctx.gathered):
            rows = slice(q_lo, q_hi)
            keys, values = kept if kept is not None else (_gather(k, ranges), _gather(v, ranges))
            gq, gk, gv = backward(d_out[:, :, rows], q[:, :, rows], keys, values,
                                  out[:, :, rows], lse[:, :, rows], 0.0, False)
            dq[:, :, rows] = gq
            at = 0
            for lo, hi in ranges:
                dk[:, :, lo:hi] += gk[:, :, at:at + hi - lo]
                dv[:, :, lo:hi] += gv[:, :, at:at + hi - lo]
                at += hi - lo
        return dq, dk, dv, None


def ranged_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """:func:`ranged_attention` as one ``scaled_dot_product_attention`` per block (autograd)."""
    outs = [F.scaled_dot_product_attention(q[:, :, q_lo:q_hi], _gather(k, ranges), _gather(v, ranges))
            for q_lo, q_hi, ranges in blocks]
    return torch.cat(outs, 2)


def ranged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """Softmax attention (scale ``D^-1/2``) of ``q, k, v [B, heads, L, D]`` (contiguous) in
    blocks: the query rows ``q_lo:q_hi`` of each block attend to the keys of its ranges
    (concatenated in order); the blocks' query rows must tile ``0:L`` in order. -> ``[B,
    heads, L, D]``. On CPU through the flash attention kernels, forward and backward (no
    per-block zero tensors in the backward pass); elsewhere, or where those kernels are
    missing, :func:`ranged_attention_reference`. Either runs in the inputs' dtype with
    autocast off (on a CPU without AMX, bfloat16 attention measured slower than float32), so
    that the two agree under autocast too."""
    with torch.autocast(q.device.type, enabled=False):
        if q.is_cuda or _flash_ops() is None or not fused_ops_enabled():
            return ranged_attention_reference(q, k, v, blocks)
        return _RangedAttention.apply(q, k, v, blocks)


_BLOCKS: dict[tuple, tuple] = {}
"""Block-diagonal forms of the camera's 4x4 matrices, per (matrix, groups, dtype): a pass
uses the same two matrices in every block and in the backward pass, so each is built once."""


def _block_diagonal(m: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, 4G, 4G)`` with ``G`` copies of ``m (..., 4, 4)^T`` on the diagonal: a row of 4G
    channels times it is every group of 4 times ``m`` (``m @ group``). Cached while ``m``
    lives unchanged (its object and version counter are checked)."""
    key = (id(m), groups, dtype)
    hit = _BLOCKS.get(key)
    if hit is not None and hit[0]() is m and hit[1] == m._version:
        return hit[2]
    mt = m.to(dtype).transpose(-1, -2)
    blocks = m.new_zeros(*m.shape[:-2], 4 * groups, 4 * groups, dtype=dtype)
    for g in range(groups):
        blocks[..., 4 * g:4 * g + 4, 4 * g:4 * g + 4] = mt
    blocks = blocks.reshape(-1, 4 * groups, 4 * groups)
    for k in [k for k, v in list(_BLOCKS.items()) if v[0]() is None]:
        _BLOCKS.pop(k, None)
    _BLOCKS[key] = (weakref.ref(m), m._version, blocks)
    return blocks


def _rotate(x: torch.Tensor, rotation: torch.Tensor | None, out: torch.Tensor) -> None:
    """``out[..., D/2:]`` = the second half's channel pairs times ``rotation`` (complex), or a copy."""
    d2 = x.shape[-1] // 2
    if rotation is None:
        out[..., d2:] = x[..., d2:]
    else:
        pairs = torch.view_as_complex(x[..., d2:].unflatten(-1, (-1, 2)))
        torch.mul(pairs, rotation, out=torch.view_as_complex(out[..., d2:].unflatten(-1, (-1, 2))))


def _first_half(x: torch.Tensor, blocks: torch.Tensor, out: torch.Tensor) -> None:
    """``out[..., :D/2] = x[..., :D/2] @ blocks`` per token (one batched matmul: 4G-wide rows)."""
    B, T, S, H, D = x.shape
    d2 = D // 2
    out[..., :d2] = torch.bmm(x.view(B * T * S, H, D)[..., :d2], blocks).view(B, T, S, H, d2)


class _GroupTransform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, blocks, rotation):
        out = torch.empty_like(x)
        _first_half(x, blocks, out)
        _rotate(x, rotation, out)
        ctx.save_for_backward(blocks, rotation)
        return out

    @staticmethod
    def backward(ctx, d_out):
        blocks, rotation = ctx.saved_tensors
        d_out = d_out.contiguous()
        dx = torch.empty_like(d_out)
        _first_half(d_out, blocks.transpose(1, 2), dx)
        _rotate(d_out, None if rotation is None else rotation.conj(), dx)
        return dx, None, None


def _rotation(cos_sin, dtype) -> torch.Tensor | None:
    if cos_sin is None:
        return None
    cos, sin = cos_sin
    return torch.complex(cos.to(dtype), sin.to(dtype))


def group_transform(x: torch.Tensor, m: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                    transpose: bool = False) -> torch.Tensor:
    """UCPE's transform of ``x (B, T, S, H, D)`` (D divisible by 8): each group of 4 channels
    of the first half times the token's ``m (B, T, S, 4, 4)`` (``m^T`` with ``transpose``);
    the second half's channel pairs rotated by ``rope = (cos, sin)`` (broadcasting to ``(B,
    T, S, H, D/4)``), or copied when ``rope`` is None. Gradients flow to ``x`` only (the
    camera's matrices and the rotary tables are constants of the pass). Computed in float32
    (float64 for float64; autocast off, the reference too) as one matmul per token against
    ``m``'s block-diagonal form (built once per matrix and pass), returned in ``x``'s dtype."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(x.device.type, enabled=False):
        if not fused_ops_enabled() or m.requires_grad or (rope is not None and any(t.requires_grad for t in rope)):
            out = group_transform_reference(x.to(compute), (m.transpose(-1, -2) if transpose else m).to(compute),
                                            rope)
        else:
            blocks = _block_diagonal(m, x.shape[-1] // 8, compute)
            out = _GroupTransform.apply(x.to(compute).contiguous(), blocks.transpose(1, 2) if transpose else blocks,
                                        _rotation(rope, compute))
    return out.to(x.dtype)


def group_transform_reference(x: torch.Tensor, m: torch.Tensor, rope=None) -> torch.Tensor:
    """:func:`group_transform` through slices, an einsum, the rotation written out and a
    concatenation (autograd everywhere)."""
    d2 = x.shape[-1] // 2
    g = x[..., :d2].unflatten(-1, (-1, 4))                           # (B, T, S, H, G, 4)
    first = torch.einsum("btsij,btshgj->btshgi", m.to(x.dtype), g).flatten(-2)
    second = x[..., d2:]
    if rope is not None:
        cos, sin = (t.to(x.dtype) for t in rope)
        a, b = second[..., 0::2], second[..., 1::2]
        second = torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)
    return torch.cat([first, second], -1)
