"""Collision queries against a scene: signed distance, and a moving sphere along segments.

The camera is a sphere of radius ``r``. The free space is the part of the arena where the
signed distance to every obstacle (boxes, cylinders, spheres, walls), to the ground
(``z = 0``) and to the invisible ceiling (``z = wall_height``) is at least ``r``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from world_model.geometry._arrays import accepts_numpy
from sanawm_gym.reference_world.scene import Scene

__all__ = ["SegmentHit", "obstacle_sweep", "signed_distance", "segment_collision"]


def _sdf_f32(scene: Scene, p: torch.Tensor) -> torch.Tensor:
    """``p (N, 3)`` float32 -> distance ``(N,)`` to the nearest surface (negative inside)."""
    centre = (scene.box_lo + scene.box_hi) / 2
    half = (scene.box_hi - scene.box_lo) / 2
    q = (p[:, None] - centre[None]).abs() - half[None]  # (N, B, 3)
    d_box = torch.linalg.vector_norm(q.clamp_min(0), dim=-1) + q.amax(-1).clamp_max(0)
    cyl = scene.cylinders
    radial = torch.hypot(p[:, None, 0] - cyl[None, :, 0], p[:, None, 1] - cyl[None, :, 1]) - cyl[None, :, 2]
    vertical = torch.maximum(cyl[None, :, 3] - p[:, None, 2], p[:, None, 2] - cyl[None, :, 4])
    w = torch.stack([radial, vertical], -1)
    d_cyl = torch.linalg.vector_norm(w.clamp_min(0), dim=-1) + w.amax(-1).clamp_max(0)
    d_sph = torch.linalg.vector_norm(p[:, None] - scene.spheres[None, :, :3], dim=-1) - scene.spheres[None, :, 3]
    d_planes = torch.minimum(p[:, 2], scene.wall_height - p[:, 2])
    return torch.minimum(torch.cat([d_box, d_cyl, d_sph], 1).amin(1), d_planes)


@accepts_numpy
def signed_distance(scene: Scene, points: torch.Tensor) -> torch.Tensor:
    """Distance from ``points (..., 3)`` to the nearest obstacle, ground or ceiling ``(...)``
    (negative inside an obstacle), in the points' dtype."""
    flat = points.reshape(-1, 3).float()
    return _sdf_f32(scene, flat).reshape(points.shape[:-1]).to(points.dtype)


class SegmentHit(NamedTuple):
    collided: torch.Tensor
    """``(...)`` bool: the sphere touches an obstacle somewhere along the segment."""
    free_fraction: torch.Tensor
    """``(...)`` in [0, 1]: how far along the segment the sphere can go before touching
    (1 when it does not collide; resolved to the sample spacing)."""


@accepts_numpy
def segment_collision(scene: Scene, start: torch.Tensor, end: torch.Tensor, radius: float, spacing: float | None = None) -> SegmentHit:
    """Sweep a sphere of ``radius`` from ``start (..., 3)`` to ``end (..., 3)``.

    The segment is sampled every ``spacing`` metres (default ``radius / 4``, so a contact
    is never missed by more than that) and each sample is tested with the signed distance.
    A start that already touches counts as a collision with ``free_fraction = 0``.
    """
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    spacing = spacing or radius / 4
    shape = start.shape[:-1]
    a = start.reshape(-1, 3).float()
    b = end.reshape(-1, 3).float()
    length = torch.linalg.vector_norm(b - a, dim=-1)
    n = max(2, int(math.ceil(float(length.max()) / spacing)) + 1) if a.shape[0] else 2
    s = torch.linspace(0, 1, n)
    pts = a[:, None] + (b - a)[:, None] * s[None, :, None]  # (N, n, 3)
    touching = _sdf_f32(scene, pts.reshape(-1, 3)).reshape(-1, n) < radius
    collided = touching.any(-1)
    first = torch.where(collided, touching.float().argmax(-1), torch.full_like(length, n, dtype=torch.int64))
    free = ((first - 1).clamp_min(0).float() / (n - 1)).where(collided, torch.ones_like(length))
    return SegmentHit(collided.reshape(shape), free.reshape(shape).to(start.dtype))


def obstacle_sweep(scene: Scene):
    """The scene's exact geometry as a :data:`sanawm_gym.kinematics.Sweep` for
    :func:`~sanawm_gym.kinematics.move_chunk`: ``sweep(starts (K, 3), ends (K, 3), radius)
    -> (K,) bool``."""

    def sweep(starts, ends, radius: float):
        return segment_collision(scene, starts, ends, radius).collided

    return sweep
