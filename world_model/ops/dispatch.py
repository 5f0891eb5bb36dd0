"""The one place that picks between the PyTorch ops and the fla / Triton kernels.

Every op here has the same signature on every path; the PyTorch form is the reference and
the path used on CPU. On CUDA tensors:

- :func:`framewise_gdn` runs the Triton kernel of
  :mod:`world_model.ops.framewise_gdn.triton_kernel` when it supports the sizes and no
  gradient is needed (the kernel has no backward), the batched PyTorch form otherwise;
- :func:`short_conv_frames` runs flash-linear-attention's ``causal_conv1d`` kernel;
- :func:`rms_norm` runs flash-linear-attention's fused RMSNorm.

``triton`` and ``fla`` are imported lazily, the first time a CUDA tensor asks for them, and
a failed import (not installed, no driver, version skew) falls back to PyTorch with one
warning. Importing this module, or :mod:`world_model.ops`, never imports either. Apart from
the kernel module itself, no other module of the project imports ``triton`` or ``fla``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from world_model.ops.framewise_gdn import GDNOutput, GDNState, framewise_gdn_torch
from world_model.ops.fused import fused_ops_enabled, short_conv_frames_fused, short_conv_frames_reference

__all__ = [
    "framewise_gdn",
    "rms_norm",
    "rms_norm_torch",
    "short_conv_frames",
    "short_conv_frames_torch",
]


# ----------------------------------------------------------------------------------------
# Lazy, guarded imports of the kernels
# ----------------------------------------------------------------------------------------


def _warn_fallback(what: str, err: BaseException) -> None:
    warnings.warn(f"{what} unavailable ({type(err).__name__}: {err}); using the PyTorch path", RuntimeWarning,
                  stacklevel=4)


@functools.cache
def _triton_gdn() -> ModuleType | None:
    """The Triton kernel module, or None if triton cannot be imported here."""
    try:
        from world_model.ops.framewise_gdn import triton_kernel
    except Exception as err:  # ImportError, or triton failing to find a backend
        _warn_fallback("Triton framewise_gdn kernel", err)
        return None
    return triton_kernel


@functools.cache
def _fla_ops() -> dict[str, Any] | None:
    """fla's ``causal_conv1d`` and ``rms_norm`` functions, or None if fla cannot be imported."""
    try:
        from fla.modules.causal_conv1d import causal_conv1d
        from fla.modules.norm.layernorm import rms_norm as fla_rms_norm
    except Exception as err:  # ImportError, or fla failing to initialise its backends
        _warn_fallback("flash-linear-attention", err)
        return None
    return {"causal_conv1d": causal_conv1d, "rms_norm": fla_rms_norm}


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------------------
# Frame-wise gated delta rule
# ----------------------------------------------------------------------------------------


def framewise_gdn(
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
    """Chunk-causal frame-wise gated delta rule on the best path for these tensors.

    ``q, k, q_den, k_den: [B, T, S, H, Dk]``, ``v: [B, T, S, H, Dv]``, ``beta: [B, T, S, H]``,
    ``gamma: [B, T, H]``, ``chunk_lengths`` summing to T, ``initial_state.S: [B, H, Dv, Dk]``,
    ``.z: [B, H, Dk]``:

        S_t = gamma_t * S_{t-1} (I - K_t B_t K_t^T) + V_t B_t K_t^T
        z_t = gamma_t * (I - Kd_t B_t Kd_t^T) z_{t-1} + Kd_t B_t 1
        numerator   = (S^f_t + S^b_t) q_t          -> [B, T, S, H, Dv]  float32
        denominator = (z^f_t + z^b_t) . q_den_t    -> [B, T, S, H]      float32 (or None)

    (forward scan inclusive and carried across chunks; backward scan exclusive, from zero at
    each chunk's end; see :func:`~world_model.ops.framewise_gdn.framewise_gdn_naive`).
    The Triton kernel on CUDA when Dk <= 128, nothing is float64 and no gradient is needed;
    :func:`~world_model.ops.framewise_gdn.framewise_gdn_torch` otherwise.
    """
    use_kernel = (
        q.is_cuda
        and not _needs_grad(q, k, v, beta, gamma, q_den, k_den,
                            *(() if initial_state is None else (initial_state.S, initial_state.z)))
        and not any(t is not None and t.dtype == torch.float64 for t in (q, k, v, beta, gamma, q_den, k_den))
        and q.dim() == 5 and v.dim() == 5
    )
    if use_kernel:
        kernel = _triton_gdn()
        if kernel is not None and kernel.is_supported(q.shape[2], q.shape[4], v.shape[4], torch.float32):
            return kernel.framewise_gdn_triton(
                q, k, v, beta, gamma, chunk_lengths, q_den=q_den, k_den=k_den, initial_state=initial_state
            )
    return framewise_gdn_torch(q, k, v, beta, gamma, chunk_lengths, q_den=q_den, k_den=k_den,
                               initial_state=initial_state)


# ----------------------------------------------------------------------------------------
# Causal short convolution over frames
# ----------------------------------------------------------------------------------------


def _check_short_conv(x: torch.Tensor, weight: torch.Tensor, cache: torch.Tensor | None) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be [B, T, S, C], got shape {tuple(x.shape)}")
    B, _, S, C = x.shape
    if weight.dim() != 2 or weight.shape[0] != C or weight.shape[1] < 1:
        raise ValueError(f"weight must be [C, W] = [{C}, W >= 1], got shape {tuple(weight.shape)}")
    W = weight.shape[1]
    if cache is not None and cache.shape != (B, W - 1, S, C):
        raise ValueError(f"cache must be [B, W-1, S, C] = {(B, W - 1, S, C)}, got {tuple(cache.shape)}")


def _next_cache(x: torch.Tensor, cache: torch.Tensor | None, width: int) -> torch.Tensor:
    """The last W-1 input frames, older ones from ``cache``: [B, W-1, S, C]."""
    B, T, S, C = x.shape
    if cache is None:
        cache = x.new_zeros(B, width - 1, S, C)
    if T >= width - 1:
        return x[:, T - (width - 1):].clone()
    return torch.cat([cache.to(x.dtype), x], dim=1)[:, T:]


def short_conv_frames_torch(
    x: torch.Tensor, weight: torch.Tensor, cache: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise convolution over frames, PyTorch reference.

    ``y[:, t, s, c] = sum_{i < W} weight[c, i] * x[:, t - (W-1) + i, s, c]``, with frames before
    the first taken from ``cache`` (zeros if None). ``weight[:, W-1]`` multiplies the current
    frame, so ``weight = [0, ..., 0, 1]`` is the identity.
    x: [B, T, S, C]; weight: [C, W]; cache: [B, W-1, S, C] (the last W-1 input frames of the
    previous call). Returns ``(y [B, T, S, C] in x.dtype, new_cache [B, W-1, S, C])``, so a
    chunk-by-chunk call carrying the cache equals one call over the whole sequence.
    """
    return _short_conv(x, weight, cache, short_conv_frames_reference)


def _short_conv(x, weight, cache, conv) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks, the frames before the first (``cache`` or zeros) and the next cache around
    ``conv(x, weight, past)`` computed in float32 (float64 for float64)."""
    _check_short_conv(x, weight, cache)
    B, T, S, C = x.shape
    W = weight.shape[1]
    compute = torch.promote_types(x.dtype, torch.float32)
    past = x.new_zeros(B, W - 1, S, C, dtype=compute) if cache is None else cache.to(compute)
    y = conv(x.to(compute), weight.to(compute), past)
    return y.to(x.dtype), _next_cache(x, cache, W)


def short_conv_frames(
    x: torch.Tensor, weight: torch.Tensor, cache: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise convolution over frames (kernel W, 4 in the model), streaming.

    Same contract as :func:`short_conv_frames_torch` (x: [B, T, S, C], weight: [C, W],
    cache: [B, W-1, S, C]; returns ``(y [B, T, S, C], new_cache [B, W-1, S, C])``). On CUDA
    it runs fla's ``causal_conv1d`` on x seen as ``[B*S, T, C]`` (one sequence per token
    position), the cache passed as fla's ``[B*S, C, W]`` initial state; elsewhere the
    fused form :func:`~world_model.ops.fused.short_conv_frames_fused` (hand-written backward).
    """
    if not x.is_cuda:
        return _short_conv(x, weight, cache, short_conv_frames_fused)
    _check_short_conv(x, weight, cache)
    fla = _fla_ops()
    if fla is None:
        return _short_conv(x, weight, cache, short_conv_frames_fused)
    B, T, S, C = x.shape
    W = weight.shape[1]
    seqs = x.permute(0, 2, 1, 3).reshape(B * S, T, C)           # [B*S, T, C]
    initial = None
    if cache is not None:
        # fla's state [N, C, W] holds the last inputs oldest first in columns 1..W-1
        # (column 0 is never read by the forward kernel)
        past = cache.to(x.dtype).permute(0, 2, 3, 1).reshape(B * S, C, W - 1)
        initial = torch.cat([past.new_zeros(B * S, C, 1), past], dim=2)    # [B*S, C, W]
    y, _ = fla["causal_conv1d"](x=seqs, weight=weight.contiguous(), initial_state=initial,
                                output_final_state=False, activation=None)
    y = y.reshape(B, S, T, C).permute(0, 2, 1, 3)                # [B, T, S, C]
    return y, _next_cache(x, cache, W)


# ----------------------------------------------------------------------------------------
# RMSNorm
# ----------------------------------------------------------------------------------------


def _check_rms_norm(x: torch.Tensor, weight: torch.Tensor | None) -> None:
    if weight is not None and weight.shape != x.shape[-1:]:
        raise ValueError(f"weight must be [C] = [{x.shape[-1]}] for x of shape {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim, PyTorch reference: ``x / sqrt(mean(x^2) + eps) * weight``.

    x: [..., C]; weight: [C] or None. Computed in float32 (float64 for float64), returned in x.dtype.
    """
    _check_rms_norm(x, weight)
    compute = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(compute)
    y = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(compute)
    return y.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim: ``x / sqrt(mean(x^2) + eps) * weight`` (x: [..., C], weight: [C]).

    fla's fused Triton RMSNorm on CUDA (float16 / bfloat16 / float32); on CPU for float32 /
    float64 PyTorch's fused ``F.rms_norm`` (the same values; outside
    :func:`~world_model.ops.fused.reference_ops`), :func:`rms_norm_torch` otherwise. Returned in x.dtype.
    """
    if not x.is_cuda or x.dtype == torch.float64:
        if x.dtype in (torch.float32, torch.float64) and fused_ops_enabled():
            _check_rms_norm(x, weight)
            return F.rms_norm(x, x.shape[-1:], weight if weight is None else weight.to(x.dtype), eps)  # one kernel each way
        return rms_norm_torch(x, weight, eps)
    _check_rms_norm(x, weight)
    fla = _fla_ops()
    if fla is None:
        return rms_norm_torch(x, weight, eps)
    return fla["rms_norm"](x, weight, None, eps=eps)
