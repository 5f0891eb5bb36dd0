"""Chunk-causal frame-wise gated delta rule: the recurrence of SANA-WM's Gated DeltaNet blocks.

Per head, per frame t (all S tokens of a frame update the state at once):

    S_t = gamma_t * S_{t-1} (I - K_t B_t K_t^T) + V_t B_t K_t^T
    z_t = gamma_t * (I - Kd_t B_t Kd_t^T) z_{t-1} + Kd_t B_t 1
    numerator   = (S^f_t + S^b_t) q_t,   denominator = (z^f_t + z^b_t) . q_den_t

with a forward scan over all frames and an exclusive backward scan restarting in every chunk.

- :func:`framewise_gdn_naive` (``naive.py``): the literal float32 reference;
- :func:`framewise_gdn_torch` (``torch_impl.py``): the batched PyTorch form (CPU path);
- ``triton_kernel.py``: the Triton kernel (CUDA path). It imports triton, so it is not
  imported here; :mod:`world_model.ops.dispatch` loads it lazily and picks the path.
"""

from world_model.ops.framewise_gdn.naive import framewise_gdn_naive
from world_model.ops.framewise_gdn.state import GDNOutput, GDNState
from world_model.ops.framewise_gdn.torch_impl import framewise_gdn_torch

__all__ = ["GDNOutput", "GDNState", "framewise_gdn_naive", "framewise_gdn_torch"]
