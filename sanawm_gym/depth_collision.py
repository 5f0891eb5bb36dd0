"""Collisions in imagination, predicted from depth: the geometry known at reset and the
world model's generated depth.

Imagination has no scene to test against, but each generated chunk has a depth (the depth
head of the autoencoder, :mod:`world_model.autoencoder.depth`). Unprojected at the chunk's
own camera poses, the depth maps give a point cloud of the surfaces the model believes are
in view. To these the env adds a :class:`SurfaceMemory` of the surfaces known at reset (the
exact render's depth of the frames a seeded episode starts from), kept for the episode. The
next chunk's motion is swept with the reference world's own rule against both (the camera
is a sphere of ``camera_radius``; :func:`sanawm_gym.kinematics.move_chunk` stops the
translation at the first frame whose motion would touch, the rotation goes on), with
"touch" meaning that a remembered surface point, or at least ``min_points`` of the last
chunk's (one per 5 cm voxel), comes within the radius of the frame's straight path
(:func:`surface_sweep`). It is a prediction: it knows what the start showed and what the
last chunk shows (not what lay outside both), and the last chunk only as well as the model
imagines it. ``sanawm-gym fidelity --collisions`` measures it against the reference
world's exact geometry.
"""

from __future__ import annotations

import numpy as np

from sanawm_gym.kinematics import Sweep
from world_model.geometry import unproject_depth

__all__ = ["SurfaceMemory", "depth_points", "points_sweep", "surface_reach", "surface_sweep"]


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
    world = unproject_depth(depth, c2w, np.asarray(intrinsics, dtype=np.float64), stride)
    z = depth[:, ::stride, ::stride]  # (K, h, w)
    keep = np.isfinite(z) & (z < max_depth) & (z > 0)
    return world[keep]


def points_sweep(points: np.ndarray, min_points: int = 1, known: np.ndarray | None = None) -> Sweep:
    """A :data:`~sanawm_gym.kinematics.Sweep` against a point cloud ``(N, 3)``: a sphere of
    ``radius`` moving from each start to its end touches when at least ``min_points`` points
    lie within ``radius`` of the segment, or any one of the ``known`` points ``(M, 3)``
    (surfaces known for certain, such as the exact depth seen at reset)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    sure = np.zeros((0, 3)) if known is None else np.asarray(known, dtype=np.float64).reshape(-1, 3)
    if min_points < 1:
        raise ValueError(f"min_points must be >= 1, got {min_points}")

    def near(cloud: np.ndarray, a: np.ndarray, ab: np.ndarray, radius: float) -> np.ndarray:
        """``(K,)`` how many points of ``cloud`` lie within ``radius`` of each segment."""
        if not len(cloud):
            return np.zeros(len(a), np.int64)
        t = np.einsum("knc,kc->kn", cloud[None] - a[:, None], ab) / np.maximum((ab * ab).sum(-1), 1e-12)[:, None]
        closest = a[:, None] + np.clip(t, 0.0, 1.0)[..., None] * ab[:, None]  # (K, N, 3)
        return (((cloud[None] - closest) ** 2).sum(-1) < radius * radius).sum(-1)

    def sweep(starts: np.ndarray, ends: np.ndarray, radius: float) -> np.ndarray:
        a, b = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)  # (K, 3)
        return (near(pts, a, b - a, radius) >= min_points) | (near(sure, a, b - a, radius) > 0)

    return sweep


_BITS = 21
_OFFSET = 1 << (_BITS - 1)
_MASK = (1 << _BITS) - 1


class SurfaceMemory:
    """Surfaces known in world coordinates, kept for the episode: one surface point per voxel
    (``voxel`` metres a side) that depth maps put a point in (the latest point seen there, so
    that nothing is moved to a voxel's centre), at most ``capacity`` of them (the earliest
    added go first, an eighth at a time), so the memory stays fixed in size.

    The env fills it at reset with the depth of the frames it starts from (the exact render's
    for a seeded scene: the first frame, and the look-around context when there is one), and
    sweeps each step's motion against it together with the last chunk's generated depth. A
    chunk's depth shows only what is in view *now*, and only as well as the model imagines it
    now, which degrades within seconds; the geometry known at reset does not degrade, so a
    wall seen at the start is still there when the camera reaches it. (Remembering the
    generated depth too was measured and rejected: it adds more false walls than it finds
    real ones; docs/RESULTS.md.)"""

    def __init__(self, voxel: float = 0.05, capacity: int = 1 << 16):
        if not voxel > 0:
            raise ValueError(f"voxel must be positive, got {voxel}")
        if capacity < 8:
            raise ValueError(f"capacity must be >= 8, got {capacity}")
        self.voxel, self.capacity = float(voxel), int(capacity)
        self.clear()

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.added.nbytes + self.points.nbytes

    def clear(self) -> None:
        self.keys = np.zeros(0, np.int64)
        """``(M,)`` sorted packed voxel coordinates (21 bits each of x, y, z)."""
        self.added = np.zeros(0, np.int64)
        """``(M,)`` the :meth:`add` call (counted from 1) that last saw each voxel."""
        self.points = np.zeros((0, 3))
        """``(M, 3)`` float64: the surface point kept for each voxel (world, metres)."""

    def _keys(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Packed voxel keys of ``points (N, 3)`` and which points have one (those out of the
        ±52 km the keys address have none)."""
        ijk = np.floor(points / self.voxel).astype(np.int64) + _OFFSET
        ok = ((ijk >= 0) & (ijk <= _MASK)).all(-1)
        ijk = ijk[ok]
        return (ijk[:, 0] << (2 * _BITS)) | (ijk[:, 1] << _BITS) | ijk[:, 2], ok

    def add(self, points: np.ndarray) -> None:
        """Remember the surface points ``(N, 3)`` (world, metres; non-finite ones are left out)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        points = points[np.isfinite(points).all(-1)]
        keys, ok = self._keys(points)
        points = points[ok]
        last = len(keys) - 1 - np.unique(keys[::-1], return_index=True)[1]  # each voxel's last point
        new, pts = keys[last], points[last]  # sorted by key
        serial = int(self.added.max(initial=0)) + 1
        at = np.searchsorted(self.keys, new)
        known = at < len(self.keys)
        known[known] = self.keys[at[known]] == new[known]
        self.added[at[known]] = serial
        self.points[at[known]] = pts[known]
        if not known.all():  # insert at the sorted positions: the keys stay sorted
            fresh = ~known
            self.keys = np.insert(self.keys, at[fresh], new[fresh])
            self.added = np.insert(self.added, at[fresh], serial)
            self.points = np.insert(self.points, at[fresh], pts[fresh], axis=0)
        if len(self.keys) > self.capacity:  # forget the earliest added, an eighth of the capacity at a time
            n = self.capacity - self.capacity // 8
            keep = np.sort(np.argsort(-self.added, kind="stable")[:n])
            self.keys, self.added, self.points = self.keys[keep], self.added[keep], self.points[keep]

    def near_split(self, centre: np.ndarray, radius: float,
                   extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The remembered points ``(M, 3)`` within ``radius`` of ``centre (3,)``, and those of
        ``extra`` (points ``(N, 3)``, for example the last chunk's) within it, one per voxel,
        in voxels the memory does not hold. Only the slab of keys whose x is in reach is
        looked at (the keys sort by x first)."""
        c = np.asarray(centre, dtype=np.float64)
        lo, hi = np.floor((c[0] + np.array([-radius, radius])) / self.voxel).astype(np.int64) + _OFFSET
        a, b = np.searchsorted(self.keys, [max(lo, 0) << (2 * _BITS), (min(hi, _MASK) + 1) << (2 * _BITS)])
        pts = self.points[a:b]
        pts = pts[((pts - c) ** 2).sum(-1) <= radius * radius]
        if extra is None or not len(extra):
            return pts, np.zeros((0, 3))
        extra = np.asarray(extra, dtype=np.float64).reshape(-1, 3)
        extra = extra[((extra - c) ** 2).sum(-1) <= radius * radius]
        keys, ok = self._keys(extra)
        extra = extra[ok]
        first = np.unique(keys, return_index=True)[1]
        keys, extra = keys[first], extra[first]
        at = np.clip(np.searchsorted(self.keys, keys), 0, max(len(self.keys) - 1, 0))
        held = self.keys[at] == keys if len(self.keys) else np.zeros(len(keys), bool)
        return pts, extra[~held]

    def state(self) -> np.ndarray:
        """``(M, 3)`` float64: the remembered points (a copy, for a snapshot; :meth:`restore`
        rebuilds the memory from them)."""
        return self.points.copy()

    def restore(self, points: np.ndarray) -> None:
        """Set the memory to a :meth:`state`; ``ValueError`` when it is not one."""
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] != 3 or len(points) > self.capacity or points.dtype != np.float64 or \
                not np.isfinite(points).all():
            raise ValueError(f"a surface memory is (M, 3) finite float64 points with M <= {self.capacity}, got "
                             f"{points.dtype} {points.shape}")
        self.clear()
        self.add(points)
        if len(self) != len(points):
            raise ValueError(f"a surface memory holds one point per {self.voxel:g} m voxel; {len(points)} points "
                             f"fill {len(self)}")


def surface_reach(motion) -> float:
    """How far from the camera's position a surface can matter for one step of ``motion``
    (a :class:`~sanawm_gym.kinematics.MotionConfig`): the camera radius plus the longest
    translation of a step (full speed on all three axes)."""
    return motion.camera_radius + np.sqrt(3.0) * motion.max_linear_speed * motion.step_seconds


def surface_sweep(memory: SurfaceMemory, depth: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray,
                  centre: np.ndarray, reach: float, min_points: int, max_depth: float = np.inf) -> Sweep:
    """The :data:`~sanawm_gym.kinematics.Sweep` the env moves a step with: against the
    surfaces of ``memory`` and of the last chunk's depth ``(K, H, W)`` at ``c2w (K, 4, 4)``
    (every second pixel, sky left out), those within ``reach`` of ``centre`` (see
    :func:`surface_reach`), one point per 5 cm voxel. One remembered point touches (the
    memory holds what the episode's start showed); of the last chunk's, in voxels the memory
    does not hold, it takes ``min_points``."""
    known, fresh = memory.near_split(centre, reach, depth_points(depth, c2w, intrinsics, 2, max_depth))
    return points_sweep(fresh, min_points, known)
