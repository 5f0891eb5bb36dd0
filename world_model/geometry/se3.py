"""Rigid-body poses: the SE(3) exponential map, twist integration, inversion, relative poses.

Conventions (docs/DESIGN.md): poses are camera-to-world 4x4 matrices ``c2w`` (OpenCV camera
frame: x right, y down, z forward); a twist is ``[vx, vy, vz, wx, wy, wz]`` in the body
(camera) frame, linear part first. All functions are batched over leading dimensions and
accept torch tensors or numpy arrays (numpy in, numpy out).
"""

from __future__ import annotations

import torch

from world_model.geometry._arrays import accepts_numpy

__all__ = [
    "hat",
    "exp_so3",
    "exp_se3",
    "integrate_twist",
    "invert_se3",
    "c2w_to_w2c",
    "w2c_to_c2w",
    "relative_to_first",
    "is_rigid",
]


@accepts_numpy
def hat(w: torch.Tensor) -> torch.Tensor:
    """Skew-symmetric matrix: ``w (..., 3) -> W (..., 3, 3)`` with ``W @ x == cross(w, x)``."""
    z = torch.zeros_like(w[..., 0])
    wx, wy, wz = w.unbind(-1)
    return torch.stack(
        [
            torch.stack([z, -wz, wy], -1),
            torch.stack([wz, z, -wx], -1),
            torch.stack([-wy, wx, z], -1),
        ],
        -2,
    )


def _series_coefficients(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A = sin t / t, B = (1 - cos t) / t^2, C = (t - sin t) / t^3, Taylor-expanded near 0."""
    t2 = theta * theta
    small = theta < 1e-3
    safe = torch.where(small, torch.ones_like(theta), theta)
    s2 = safe * safe
    a = torch.where(small, 1 - t2 / 6 + t2 * t2 / 120, torch.sin(safe) / safe)
    # 2 sin^2(t/2) / t^2, not (1 - cos t) / t^2: the latter cancels catastrophically for small t
    # (in float32 it keeps ~1 correct digit just above the series switch).
    b = torch.where(small, 0.5 - t2 / 24 + t2 * t2 / 720, 2 * torch.sin(safe / 2) ** 2 / s2)
    c = torch.where(small, 1 / 6 - t2 / 120 + t2 * t2 / 5040, (safe - torch.sin(safe)) / (s2 * safe))
    return a, b, c


@accepts_numpy
def exp_so3(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation vector ``w (..., 3) -> R (..., 3, 3)``, ``R = I + A W + B W^2``."""
    theta = torch.linalg.vector_norm(w, dim=-1)
    a, b, _ = _series_coefficients(theta)
    W = hat(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(W.shape)
    return eye + a[..., None, None] * W + b[..., None, None] * (W @ W)


@accepts_numpy
def exp_se3(xi: torch.Tensor) -> torch.Tensor:
    """Exact exponential map ``xi = [v, w] (..., 6) -> T (..., 4, 4)``.

    ``T = [[R, V v], [0, 1]]`` with ``R = exp(W)`` and ``V = I + B W + C W^2``; equal to
    ``scipy.linalg.expm`` of the 4x4 twist matrix ``[[W, v], [0, 0]]``.
    """
    if xi.shape[-1] != 6:
        raise ValueError(f"exp_se3 expects twists of shape (..., 6), got {tuple(xi.shape)}")
    v, w = xi[..., :3], xi[..., 3:]
    theta = torch.linalg.vector_norm(w, dim=-1)
    a, b, c = _series_coefficients(theta)
    W = hat(w)
    W2 = W @ W
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand(W.shape)
    R = eye + a[..., None, None] * W + b[..., None, None] * W2
    V = eye + b[..., None, None] * W + c[..., None, None] * W2
    T = torch.zeros(*xi.shape[:-1], 4, 4, dtype=xi.dtype, device=xi.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = (V @ v[..., None])[..., 0]
    T[..., 3, 3] = 1
    return T


@accepts_numpy
def integrate_twist(c2w: torch.Tensor, twist: torch.Tensor, dt: float, n_frames: int) -> torch.Tensor:
    """Zero-order hold: poses after holding a body twist for ``n_frames`` frames of ``dt`` s.

    ``c2w (..., 4, 4)``, ``twist (..., 6)`` in units per second -> ``(..., n_frames, 4, 4)``
    where frame ``i`` (1-based) is ``c2w @ exp(i * dt * twist)``: one pose per raw frame,
    the last one is the pose at the end of the chunk. The input pose itself is not
    included. Exact for a constant twist (no Euler error, whatever ``dt``).
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    steps = torch.arange(1, n_frames + 1, dtype=twist.dtype, device=twist.device) * dt
    deltas = exp_se3(twist[..., None, :] * steps[:, None])  # (..., n, 4, 4)
    return c2w[..., None, :, :] @ deltas


@accepts_numpy
def invert_se3(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms ``T (..., 4, 4)``: ``[[R^T, -R^T t], [0, 1]]``."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    out = torch.zeros_like(T)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1
    return out


c2w_to_w2c = invert_se3
"""``w2c (..., 4, 4)`` from ``c2w (..., 4, 4)``."""
w2c_to_c2w = invert_se3
"""``c2w (..., 4, 4)`` from ``w2c (..., 4, 4)``."""


@accepts_numpy
def relative_to_first(c2w: torch.Tensor) -> torch.Tensor:
    """Poses relative to the first frame: ``c2w (..., F, 4, 4) -> inv(c2w[0]) @ c2w[i]``."""
    return invert_se3(c2w[..., :1, :, :]) @ c2w


@accepts_numpy
def is_rigid(T: torch.Tensor, atol: float = 1e-5) -> torch.Tensor:
    """Whether each ``T (..., 4, 4)`` is a finite proper rigid transform (``R^T R = I``,
    ``det R = +1``, last row ``[0, 0, 0, 1]``), within ``atol``. Returns a bool tensor ``(...)``."""
    if T.shape[-2:] != (4, 4):
        return torch.zeros(T.shape[:-2], dtype=torch.bool)
    R = T[..., :3, :3]
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    last = torch.tensor([0, 0, 0, 1], dtype=T.dtype, device=T.device)
    finite = torch.isfinite(T).all(-1).all(-1)
    ortho = (R.transpose(-1, -2) @ R - eye).abs().amax((-1, -2)) <= atol
    det = (torch.linalg.det(R) - 1).abs() <= atol
    row = (T[..., 3, :] - last).abs().amax(-1) <= atol
    return finite & ortho & det & row
