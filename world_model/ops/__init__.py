"""Ops: pure functions with no parameters (layers own parameters; models assemble layers).

- :mod:`world_model.ops.framewise_gdn`: the chunk-causal frame-wise gated delta rule: its
  float32 reference ``framewise_gdn_naive``, the batched PyTorch form ``framewise_gdn_torch``
  (the CPU path), the ``GDNState`` / ``GDNOutput`` dataclasses, and a Triton kernel;
- :mod:`world_model.ops.dispatch`: the one module that picks the fla / Triton kernels on
  CUDA and the PyTorch forms elsewhere. Layers call its ops::

      from world_model.ops.dispatch import framewise_gdn, rms_norm, short_conv_frames

``world_model.ops.framewise_gdn`` is the subpackage; the dispatched op of the same name is
``world_model.ops.dispatch.framewise_gdn`` (not re-exported here, so that the name keeps
meaning one thing). Importing this package imports neither ``triton`` nor ``fla``.
"""

from world_model.ops import dispatch, framewise_gdn
from world_model.ops.dispatch import rms_norm, rms_norm_torch, short_conv_frames, short_conv_frames_torch
from world_model.ops.framewise_gdn import GDNOutput, GDNState, framewise_gdn_naive, framewise_gdn_torch

__all__ = [
    "GDNOutput",
    "GDNState",
    "dispatch",
    "framewise_gdn",
    "framewise_gdn_naive",
    "framewise_gdn_torch",
    "rms_norm",
    "rms_norm_torch",
    "short_conv_frames",
    "short_conv_frames_torch",
]
