"""Collisions in imagination, predicted from the world model's generated depth.

Imagination has no scene to test against, but each generated chunk has a depth (the depth
head of the autoencoder, :mod:`world_model.autoencoder.depth`). Unprojected at the chunk's
own camera poses, the depth maps give a point cloud of the surfaces the model believes are
in view; the next chunk's motion is then swept with the reference world's own rule (the
camera is a sphere of ``camera_radius``; :func:`sanawm_gym.kinematics.move_chunk` stops the
translation at the first frame whose motion would touch, the rotation goes on), with
"touch" meaning that at least ``min_points`` of the points come within the radius of the
frame's straight path. It is a prediction: it sees only what the last chunk showed (the
camera's field of view, not behind or beside it) and only as well as the model imagines
it. ``sanawm-gym collisions`` measures it against the reference world's exact geometry.
"""

from __future__ import annotations

import numpy as np

from sanawm_gym.kinematics import Sweep

__all__ = ["depth_points", "points_sweep"]


def depth_points(depth: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray, stride: int = 2,
                 max_depth: float = np.inf) -> np.ndarray:
    """World points ``(N, 3)`` float64 of z-depth maps ``depth (K, H, W)`` (or ``(H, W)``)
    taken at ``c2w (K, 4, 4)`` (or ``(4, 4)``) with ``intrinsics (3, 3)`` (pixel centres at
    integer coordinates, as the reference world's renderer), every ``stride``-th pixel in
    each direction. Pixels at or beyond ``max_depth`` (sky) and non-finite ones are left out."""
    depth = np.asarray(depth, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    if depth.ndim == 2:
        depth, c2w = depth[None], c2w[None]
    if depth.ndim != 3 or c2w.shape != (depth.shape[0], 4, 4):
        raise ValueError(f"depth must be (K, H, W) with c2w (K, 4, 4), got {depth.shape} and {c2w.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    H, W = depth.shape[1:]
    v, u = np.meshgrid(np.arange(0, H, stride, dtype=np.float64), np.arange(0, W, stride, dtype=np.float64),
                       indexing="ij")
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(np.asarray(intrinsics, dtype=np.float64)).T  # z = 1
    z = depth[:, ::stride, ::stride]  # (K, h, w)
    cam = rays[None] * z[..., None]  # (K, h, w, 3)
    world = np.einsum("kij,khwj->khwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]
    keep = np.isfinite(z) & (z < max_depth) & (z > 0)
    return world[keep]


def points_sweep(points: np.ndarray, min_points: int = 1) -> Sweep:
    """A :data:`~sanawm_gym.kinematics.Sweep` against a point cloud ``(N, 3)``: a sphere of
    ``radius`` moving from each start to its end touches when at least ``min_points`` points
    lie within ``radius`` of the segment."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if min_points < 1:
        raise ValueError(f"min_points must be >= 1, got {min_points}")

    def sweep(starts: np.ndarray, ends: np.ndarray, radius: float) -> np.ndarray:
        a, b = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)  # (K, 3)
        if not len(pts):
            return np.zeros(len(a), bool)
        ab = b - a
        t = np.einsum("knc,kc->kn", pts[None] - a[:, None], ab) / np.maximum((ab * ab).sum(-1), 1e-12)[:, None]
        closest = a[:, None] + np.clip(t, 0.0, 1.0)[..., None] * ab[:, None]  # (K, N, 3)
        near = ((pts[None] - closest) ** 2).sum(-1) < radius * radius
        return near.sum(-1) >= min_points

    return sweep
