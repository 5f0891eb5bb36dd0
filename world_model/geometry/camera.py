"""Pinhole cameras (OpenCV convention): intrinsics, per-pixel rays and Plücker ray maps.

Pixel ``(u, v)`` has its centre at integer coordinates; ``u`` runs along the width (x,
right), ``v`` along the height (y, down); the camera looks along +z. ``K`` is the 3x3
matrix ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` in pixels of the image it belongs to.
Functions are batched over leading dimensions and accept torch or numpy (numpy in, numpy
out).
"""

from __future__ import annotations

import math

import torch

from world_model.geometry._arrays import accepts_numpy

__all__ = ["intrinsics_from_fov", "look_at", "pixel_rays", "plucker_map", "pose_from_yaw_pitch", "scale_intrinsics",
           "unproject_depth"]


def intrinsics_from_fov(
    fov_x_deg: float,
    height: int,
    width: int,
    fov_y_deg: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``K (3, 3)`` for a horizontal field of view (degrees) and an image of ``height x width``.

    Square pixels unless ``fov_y_deg`` is given; the principal point is the image centre
    ``((W - 1) / 2, (H - 1) / 2)``.
    """
    if not 0 < fov_x_deg < 180:
        raise ValueError(f"fov_x_deg must be in (0, 180), got {fov_x_deg}")
    if fov_y_deg is not None and not 0 < fov_y_deg < 180:
        raise ValueError(f"fov_y_deg must be in (0, 180), got {fov_y_deg}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    fx = (width / 2) / math.tan(math.radians(fov_x_deg) / 2)
    fy = fx if fov_y_deg is None else (height / 2) / math.tan(math.radians(fov_y_deg) / 2)
    return torch.tensor(
        [[fx, 0.0, (width - 1) / 2], [0.0, fy, (height - 1) / 2], [0.0, 0.0, 1.0]], dtype=dtype
    )


@accepts_numpy
def scale_intrinsics(K: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    """Intrinsics ``K (..., 3, 3)`` of an image of ``from_hw`` resized to ``to_hw``.

    The focal lengths scale with the size; the principal point scales about pixel edges
    (``c' = (c + 0.5) s - 0.5``) so that the same ray passes through the same image point.
    For the latent grid of an autoencoder with spatial stride ``r`` use ``to_hw = (H/r, W/r)``.
    """
    sy = to_hw[0] / from_hw[0]
    sx = to_hw[1] / from_hw[1]
    out = K.clone()
    out[..., 0, 0] = K[..., 0, 0] * sx
    out[..., 0, 1] = K[..., 0, 1] * sx
    out[..., 1, 1] = K[..., 1, 1] * sy
    out[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return out


@accepts_numpy
def pixel_rays(c2w: torch.Tensor, K: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through every pixel centre.

    ``c2w (..., 4, 4)`` and ``K (..., 3, 3)`` (broadcast against each other) ->
    ``origins (..., H, W, 3)`` and unit ``directions (..., H, W, 3)``, in ``c2w``'s dtype.
    """
    K = K.to(c2w.dtype)
    v, u = torch.meshgrid(
        torch.arange(height, dtype=c2w.dtype, device=c2w.device),
        torch.arange(width, dtype=c2w.dtype, device=c2w.device),
        indexing="ij",
    )
    pix = torch.stack([u, v, torch.ones_like(u)], -1)  # (H, W, 3)
    k_inv = torch.linalg.inv(K)  # (..., 3, 3)
    R = c2w[..., :3, :3]
    m = R @ k_inv  # (..., 3, 3): pixel -> world direction
    dirs = torch.einsum("...ij,hwj->...hwi", m, pix)  # (..., H, W, 3)
    dirs = dirs / torch.linalg.vector_norm(dirs, dim=-1, keepdim=True)
    origins = c2w[..., None, None, :3, 3].expand(dirs.shape)
    return origins, dirs


@accepts_numpy
def unproject_depth(depth: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """World points of z-depth maps: ``depth (F, H, W)`` taken at ``c2w (F, 4, 4)`` with
    ``K (3, 3)`` (pixel centres at integer coordinates), every ``stride``-th pixel in each
    direction -> ``(F, ceil(H / stride), ceil(W / stride), 3)`` in float64 (a non-finite
    depth gives a non-finite point)."""
    c2w, K = c2w.double(), K.double()
    z = depth.double()[:, ::stride, ::stride]
    H, W = depth.shape[-2:]
    v, u = torch.meshgrid(torch.arange(0, H, stride, dtype=torch.float64),
                          torch.arange(0, W, stride, dtype=torch.float64), indexing="ij")
    rays = torch.stack([u, v, torch.ones_like(u)], -1) @ torch.linalg.inv(K).T  # (h, w, 3), z = 1
    return torch.einsum("fij,fhwj->fhwi", c2w[:, :3, :3], rays[None] * z[..., None]) + c2w[:, None, None, :3, 3]


@accepts_numpy
def plucker_map(c2w: torch.Tensor, K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker ray map ``[d, o x d]`` per pixel: ``(..., 4, 4), (..., 3, 3) -> (..., H, W, 6)``.

    ``d`` is the unit world direction of the pixel's ray and ``o`` the camera centre, so
    the moment ``o x d`` is the same for any point chosen on the ray. Channels are last;
    the model permutes to channels-first.
    """
    origins, dirs = pixel_rays(c2w, K, height, width)
    return torch.cat([dirs, torch.linalg.cross(origins, dirs, dim=-1)], -1)


@accepts_numpy
def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """OpenCV ``c2w (..., 4, 4)`` of a camera at ``eye (..., 3)`` looking at ``target (..., 3)``.

    ``up`` (default world +z) fixes the roll: the image's "down" (camera +y) points along
    ``-up`` as far as possible. The view direction must not be parallel to ``up``.
    """
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device)
    z = target - eye
    z = z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    x = torch.linalg.cross(z, up.expand_as(z), dim=-1)  # right = forward x up
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if bool((norm < 1e-9).any()):
        raise ValueError("look_at: the view direction is parallel to `up`")
    x = x / norm
    y = torch.linalg.cross(z, x, dim=-1)  # down
    T = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    T[..., :3, 0], T[..., :3, 1], T[..., :3, 2], T[..., :3, 3] = x, y, z, eye
    T[..., 3, 3] = 1
    return T


@accepts_numpy
def pose_from_yaw_pitch(position: torch.Tensor, yaw: torch.Tensor, pitch: torch.Tensor | float = 0.0) -> torch.Tensor:
    """OpenCV ``c2w (..., 4, 4)`` at ``position (..., 3)``, looking along heading ``yaw``
    (radians from world +x towards +y) tilted up by ``pitch`` (radians, |pitch| < pi/2), no roll."""
    yaw = torch.as_tensor(yaw, dtype=position.dtype)
    pitch = torch.as_tensor(pitch, dtype=position.dtype)
    forward = torch.stack(
        [torch.cos(pitch) * torch.cos(yaw), torch.cos(pitch) * torch.sin(yaw), torch.sin(pitch).expand_as(yaw)], -1
    )
    return look_at(position, position + forward)
