"""A top-down map of a scene (free space, obstacles, path, goal) for videos and viewers."""

from __future__ import annotations

import numpy as np

from sanawm_gym.reference_world.collision import signed_distance
from sanawm_gym.reference_world.scene import Scene

__all__ = ["TopDownMap"]


class TopDownMap:
    """Rasterises the scene's obstacles once; draws paths and goals on copies.

    Obstacles that reach the camera's ``height`` are dark; lower ones (that a flying
    camera could pass over) are lighter.

    Pixel ``(row, col)`` looks down on world ``x`` to the right and ``y`` up.
    """

    def __init__(self, scene: Scene, height: float, size: int = 256):
        self.size = size
        self.half = scene.arena_half + 0.3
        axis = (np.arange(size) + 0.5) / size * 2 * self.half - self.half
        xx, yy = np.meshgrid(axis, axis[::-1])  # row 0 is +y
        def sdf_at(z: float) -> np.ndarray:
            return signed_distance(scene, np.stack([xx, yy, np.full_like(xx, z)], -1))

        at_camera = sdf_at(height)
        below = np.minimum.reduce([sdf_at(z) for z in np.linspace(0.05, height, 6)])
        img = np.full((size, size, 3), 235, np.uint8)
        img[below < 0.0] = (150, 150, 165)
        img[(at_camera >= 0.0) & (at_camera < 0.2)] = (190, 190, 200)  # within a camera radius
        img[at_camera < 0.0] = (70, 70, 80)
        self.base = img

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        """World ``(..., 2)`` -> continuous image coordinates ``(..., 2)`` as (x = col, y = row),
        pixel ``(row, col)`` covering ``[col, col + 1] x [row, row + 1]`` (not clipped)."""
        xy = np.asarray(xy)
        col = (xy[..., 0] + self.half) / (2 * self.half) * self.size
        row = (self.half - xy[..., 1]) / (2 * self.half) * self.size
        return np.stack([col, row], -1)

    def to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """World ``(..., 2)`` -> integer pixel ``(..., 2)`` as (row, col)."""
        return np.clip(self.to_image(xy)[..., ::-1].astype(int), 0, self.size - 1)

    def draw(self, path_xy: np.ndarray, goal_xy: np.ndarray, heading: float | None = None) -> np.ndarray:
        """The map with ``path_xy (T, 2)`` in blue, the goal as a green disc, the camera in red."""
        img = self.base.copy()
        rr, cc = np.mgrid[-4:5, -4:5]
        disc = rr**2 + cc**2 <= 16
        g = self.to_pixel(np.asarray(goal_xy))
        img[np.clip(g[0] + rr[disc], 0, self.size - 1), np.clip(g[1] + cc[disc], 0, self.size - 1)] = (40, 170, 60)
        if len(path_xy):
            dense = np.concatenate(
                [np.linspace(a, b, 8, endpoint=False) for a, b in zip(path_xy[:-1], path_xy[1:])] + [path_xy[-1:]]
            )
            p = self.to_pixel(dense)
            img[p[:, 0], p[:, 1]] = (40, 90, 220)
            c = p[-1]
            small = rr**2 + cc**2 <= 6
            img[np.clip(c[0] + rr[small], 0, self.size - 1), np.clip(c[1] + cc[small], 0, self.size - 1)] = (220, 50, 40)
            if heading is not None:
                tip = path_xy[-1] + np.linspace(0, 0.8, 12)[:, None] * np.array([np.cos(heading), np.sin(heading)])
                t = self.to_pixel(tip)
                img[t[:, 0], t[:, 1]] = (220, 50, 40)
        return img
