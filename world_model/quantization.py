"""Low-bit inference of the backbone: NVFP4 (weights and activations) and INT8 weight-only.

The one module of the project that imports ``modelopt`` (lazily, and only for the CUDA
path). What each mode does to the backbone's linear layers:

- ``nvfp4``: NVIDIA's 4-bit float format as ModelOpt defines it. Values are E2M1 (sign,
  2 exponent bits, 1 mantissa bit: 0, 0.5, 1, 1.5, 2, 3, 4, 6), in blocks of 16 along the
  input dimension, each block with an FP8-E4M3 scale, the tensor with one FP32 scale
  (``amax / (6 * 448)``, so that every block scale fits E4M3). Weights are quantized once;
  each layer's input is quantized on the fly (dynamic per-block scales, a per-call tensor
  scale), as ModelOpt's ``NVFP4_DEFAULT_CFG`` does (W4A4).
- ``int8``: weight-only, symmetric per output channel (``amax / 127``, round half to
  even); activations stay float32.

Kept in full precision, as upstream SANA-WM keeps its camera conditioning: the camera
branch's projections (``cam_qkv``, ``cam_out``), the Plücker projection, and the layers
outside the blocks (patch embedding, timestep MLPs, final projection); the GDN recurrence,
norms, softmax, the depthwise and temporal convolutions and the autoencoder are untouched.

On CPU this is an **emulation of the arithmetic** (fake quantization: quantize, dequantize,
compute in float32), for measuring what the format does to fidelity. It is not a speed-up
here: every quantized layer does a little more work than a float32 one. On CUDA,
:func:`quantize_backbone` with ``backend="modelopt"`` hands the same layer selection to
ModelOpt's ``mtq.quantize`` (its NVFP4 / INT8 kernels and fake-quant; not exercised on CPU).

The emulation is checked against exactly computed vectors, against ModelOpt's own
``NVFP4QTensor`` quantize / dequantize (which runs on CPU) and against ModelOpt's CPU
fake-quant for INT8 (``tests/test_quantization.py``).
"""

from __future__ import annotations

import copy
import fnmatch

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["E2M1_VALUES", "LOW_BIT", "NVFP4_BLOCK", "QuantizedLinear", "int8_fake_quant", "nvfp4_fake_quant",
           "quantize_backbone", "round_to_e2m1"]

LOW_BIT = ("nvfp4", "int8")
"""The low-bit modes (also :data:`world_model.world_model.PRECISIONS`)."""

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
"""The non-negative values of FP4 E2M1."""
_E2M1_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
"""Midpoints between consecutive E2M1 values."""
_ROUND_UP_AT = (0.75, 1.75, 3.5)
"""Midpoints whose upper neighbour has the even mantissa: a tie there rounds up."""
E2M1_MAX = 6.0
E4M3_MAX = 448.0
NVFP4_BLOCK = 16
"""Values per NVFP4 block (one FP8 scale each)."""

KEEP_FULL_PRECISION = ("embed", "t_embed.*", "t_block.*", "final", "*.cam_qkv", "*.cam_out", "*.plucker")
"""Linear layers (module-name patterns) that low-bit modes leave in float32."""


def round_to_e2m1(y: torch.Tensor) -> torch.Tensor:
    """Round float ``y`` to the nearest E2M1 value, ties to the even mantissa (0.25 -> 0,
    0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4), magnitudes above 6
    saturated to 6, the sign kept. Returns float32."""
    y = y.float()
    mag = y.abs()
    bounds = torch.tensor(_E2M1_BOUNDS, device=y.device)
    index = torch.searchsorted(bounds, mag.contiguous())  # ties land below the midpoint
    ties_up = torch.zeros_like(mag, dtype=torch.bool)
    for b in _ROUND_UP_AT:
        ties_up |= mag == b
    values = torch.tensor(E2M1_VALUES, device=y.device)
    return values[index + ties_up.long()] * torch.where(y < 0, -1.0, 1.0)


def nvfp4_fake_quant(x: torch.Tensor, block: int = NVFP4_BLOCK) -> torch.Tensor:
    """``x`` quantized to NVFP4 and back (in ``x``'s dtype): blocks of ``block`` values along
    the last dimension (which it must divide), each scaled by an FP8-E4M3 block scale times
    one FP32 tensor scale, the values rounded to E2M1. Follows ModelOpt's ``NVFP4QTensor``:
    tensor scale ``amax / (6 * 448)``; block scale ``block_amax / (6 * tensor_scale)``, 1 for
    an all-zero block, clamped to [2^-9, 448] and cast to E4M3. An all-zero tensor stays zero."""
    if x.shape[-1] % block:
        raise ValueError(f"the last dimension ({x.shape[-1]}) must be a multiple of the NVFP4 block ({block})")
    xf = x.float()
    amax = xf.abs().amax()
    if amax == 0:
        return torch.zeros_like(x)
    tensor_scale = amax / (E2M1_MAX * E4M3_MAX)
    blocks = xf.unflatten(-1, (-1, block))
    block_scale = blocks.abs().amax(-1, keepdim=True) / (E2M1_MAX * tensor_scale)
    block_scale = torch.where(block_scale == 0, 1.0, block_scale)
    block_scale = block_scale.clamp(2.0**-9, E4M3_MAX).to(torch.float8_e4m3fn).float()
    scale = block_scale * tensor_scale
    return (round_to_e2m1(blocks / scale) * scale).flatten(-2).to(x.dtype)


def int8_fake_quant(w: torch.Tensor) -> torch.Tensor:
    """``w (out, in)`` quantized to symmetric INT8 per output channel and back: scale
    ``amax / 127`` per row, values rounded half to even and clamped to [-127, 127]; an
    all-zero row stays zero. As ModelOpt's ``TensorQuantizer(num_bits=8, axis=0)``."""
    wf = w.float()
    scale = wf.abs().amax(-1, keepdim=True) / 127.0
    safe = torch.where(scale == 0, 1.0, scale)
    return (torch.round(wf / safe).clamp(-127, 127) * scale).to(w.dtype)


class QuantizedLinear(nn.Module):
    """A linear layer computing with low-bit weights (and, for NVFP4, low-bit inputs),
    emulated: the weight is stored already quantized-and-dequantized; the input of an
    ``nvfp4`` layer is quantized on every call."""

    def __init__(self, linear: nn.Linear, mode: str):
        super().__init__()
        if mode not in LOW_BIT:
            raise ValueError(f"mode must be one of {LOW_BIT}, got {mode!r}")
        if mode == "nvfp4" and linear.in_features % NVFP4_BLOCK:
            raise ValueError(f"NVFP4 needs in_features divisible by {NVFP4_BLOCK}, got {linear.in_features}")
        self.mode = mode
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            w = linear.weight.detach().float()
            self.weight = nn.Parameter(nvfp4_fake_quant(w) if mode == "nvfp4" else int8_fake_quant(w), requires_grad=False)
            self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone(),
                                                                      requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nvfp4":
            x = nvfp4_fake_quant(x)
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"


def _quantized_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)
            and not any(fnmatch.fnmatchcase(name, p) for p in KEEP_FULL_PRECISION)]


def quantize_backbone(backbone: nn.Module, mode: str, backend: str = "emulation") -> nn.Module:
    """A copy of ``backbone`` whose linear layers (all but :data:`KEEP_FULL_PRECISION`) run
    in ``mode`` (``nvfp4`` or ``int8``); the original is not modified.

    ``backend="emulation"`` (any device): :class:`QuantizedLinear` layers. ``"modelopt"``
    (CUDA): ModelOpt's ``mtq.quantize`` over the same layers, with the weight (and, for
    NVFP4, input) quantizer settings of its ``NVFP4_DEFAULT_CFG`` / ``INT8_DEFAULT_CFG``
    and no calibration data (weight scales from the weights, NVFP4 block scales dynamic);
    raises ``RuntimeError`` where ModelOpt or CUDA is missing. Not run on CPU: no test here
    covers it, and no GPU figure is claimed for it."""
    if mode not in LOW_BIT:
        raise ValueError(f"mode must be one of {LOW_BIT}, got {mode!r}")
    if backend not in ("emulation", "modelopt"):
        raise ValueError(f"backend must be 'emulation' or 'modelopt', got {backend!r}")
    model = copy.deepcopy(backbone).eval()
    names = _quantized_names(model)
    if backend == "modelopt":
        return _modelopt_quantize(model, mode, names)
    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, QuantizedLinear(getattr(owner, leaf), mode))
    return model


def _modelopt_quantize(model: nn.Module, mode: str, names: list[str]) -> nn.Module:  # pragma: no cover - CUDA only
    """ModelOpt's quantization of ``names`` (CUDA): its own kernels and fake-quant."""
    if not torch.cuda.is_available() or next(model.parameters()).device.type != "cuda":
        raise RuntimeError("the modelopt backend needs the backbone on a CUDA device; use backend='emulation' on CPU")
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as err:
        raise RuntimeError(f"nvidia-modelopt is not importable ({err}); install the 'gpu' extra") from None
    base = mtq.NVFP4_DEFAULT_CFG if mode == "nvfp4" else mtq.INT8_DEFAULT_CFG
    entries = {e["quantizer_name"]: e for e in base["quant_cfg"]}
    quant_cfg = [{"quantizer_name": "*", "enable": False}]  # nothing but the layers named below
    for name in names:
        quant_cfg.append({"quantizer_name": f"{name}.weight_quantizer", "cfg": copy.deepcopy(entries["*weight_quantizer"]["cfg"])})
        if mode == "nvfp4":  # W4A4; int8 stays weight-only
            quant_cfg.append({"quantizer_name": f"{name}.input_quantizer", "cfg": copy.deepcopy(entries["*input_quantizer"]["cfg"])})
    return mtq.quantize(model, {**copy.deepcopy(base), "quant_cfg": quant_cfg}, forward_loop=None)
