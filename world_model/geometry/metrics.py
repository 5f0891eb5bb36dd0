"""Camera-control metrics (docs/DESIGN.md): RotErr, TransErr and CamMC.

Both trajectories are first expressed relative to their own first frame. Estimated
translations are then aligned in scale to the commanded ones (the least-squares factor
``s = <t_est, t_cmd> / <t_est, t_est>``, one per trajectory), because a camera estimated
from video is known only up to scale. Each metric is a *sum over frames*, as in the
camera-control literature SANA-WM reports against (RotErr in degrees).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from world_model.geometry._arrays import accepts_numpy
from world_model.geometry.se3 import relative_to_first

__all__ = ["CameraErrors", "camera_errors", "rotation_angle_deg"]


class CameraErrors(NamedTuple):
    """Each field has the batch shape of the inputs (``(...)``)."""

    rot_err_deg: torch.Tensor
    """RotErr: sum over frames of the geodesic angle between rotations, degrees."""
    trans_err: torch.Tensor
    """TransErr: sum over frames of translation distances after scale alignment."""
    cam_mc: torch.Tensor
    """CamMC: sum over frames of the Frobenius norm of the ``[R | t]`` difference."""
    scale: torch.Tensor
    """The scale applied to the estimated translations."""


@accepts_numpy
def rotation_angle_deg(R_a: torch.Tensor, R_b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle between rotations ``(..., 3, 3)`` in degrees, ``arccos((tr(A^T B) - 1) / 2)``.

    Evaluated as ``atan2(|vee(M - M^T)| / 2, (tr M - 1) / 2)`` with ``M = A^T B`` (the same
    angle): ``arccos`` near 1 turns rounding noise of ~eps into angles of ~sqrt(eps), e.g.
    ~0.01 degree per frame for identical float32 rotations.
    """
    M = R_a.transpose(-1, -2) @ R_b
    tr = M.diagonal(dim1=-2, dim2=-1).sum(-1)
    skew = torch.stack([M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]], -1)
    return torch.rad2deg(torch.atan2(torch.linalg.vector_norm(skew, dim=-1) / 2, (tr - 1) / 2))


@accepts_numpy
def camera_errors(c2w_est: torch.Tensor, c2w_cmd: torch.Tensor) -> CameraErrors:
    """RotErr, TransErr and CamMC between ``c2w_est (..., F, 4, 4)`` and ``c2w_cmd (..., F, 4, 4)``."""
    if c2w_est.shape != c2w_cmd.shape or c2w_est.shape[-2:] != (4, 4) or c2w_est.ndim < 3:
        raise ValueError(
            f"expected two pose sequences of the same shape (..., F, 4, 4), got "
            f"{tuple(c2w_est.shape)} and {tuple(c2w_cmd.shape)}"
        )
    est = relative_to_first(c2w_est.double())
    cmd = relative_to_first(c2w_cmd.double())
    t_est, t_cmd = est[..., :3, 3], cmd[..., :3, 3]  # (..., F, 3)
    num = (t_est * t_cmd).sum((-1, -2))
    den = (t_est * t_est).sum((-1, -2))
    scale = torch.where(den > 1e-12, num / den.clamp_min(1e-12), torch.ones_like(den))
    t_aligned = t_est * scale[..., None, None]
    rot = rotation_angle_deg(est[..., :3, :3], cmd[..., :3, :3]).sum(-1)
    trans = torch.linalg.vector_norm(t_aligned - t_cmd, dim=-1).sum(-1)
    rt_est = torch.cat([est[..., :3, :3], t_aligned[..., None]], -1)
    rt_cmd = cmd[..., :3, :]
    cam_mc = torch.linalg.matrix_norm(rt_est - rt_cmd).sum(-1)
    return CameraErrors(rot, trans, cam_mc, scale)
