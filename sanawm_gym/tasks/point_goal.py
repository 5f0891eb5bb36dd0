"""Point-goal navigation: goal sampling, the goal observation, reward and success.

Shared by every navigation env (reference world and world model), so a policy sees the same
task in both. Distances are Euclidean between the camera centre and the goal point, on the
integrated pose; in the reference world the start is also linked to the goal through free
space on a grid (``reachable_goal``), which gives the geodesic distance for SPL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from sanawm_gym.reference_world.collision import signed_distance

__all__ = [
    "GOAL_OBS_HIGH",
    "GOAL_OBS_LOW",
    "GoalSample",
    "PointGoalConfig",
    "StepOutcome",
    "arena_bounds",
    "check_goal_placement",
    "check_start_placement",
    "goal_observation",
    "sample_goal",
    "score_step",
]

GOAL_OBS_LOW = np.array([0.0, -1.0, -1.0, -1.0], dtype=np.float32)
GOAL_OBS_HIGH = np.array([50.0, 1.0, 1.0, 1.0], dtype=np.float32)
"""Bounds of the goal observation ``[distance (m, clipped to 50), unit direction in the
camera frame (x right, y down, z forward)]``."""


@dataclass(frozen=True)
class PointGoalConfig:
    """The point-goal task. Rewards are per env step."""

    goal_radius: float = 0.5
    """Success when the camera centre is within this distance of the goal (metres)."""
    goal_distance: tuple[float, float] = (2.5, 8.0)
    """Range of the straight-line start-goal distance when goals are drawn."""
    start_height: tuple[float, float] = (0.8, 1.6)
    """Range of the camera height at the start; the goal is drawn at the same height."""
    goal_clearance: float = 0.45
    """Minimum distance from the start and the goal to any obstacle (metres)."""
    progress_weight: float = 1.0
    """Reward per metre of decrease of the distance to the goal."""
    success_bonus: float = 10.0
    """Reward on reaching the goal (the episode then terminates)."""
    collision_penalty: float = 0.25
    """Subtracted on every step in which an obstacle stopped the motion."""
    step_cost: float = 0.01
    """Subtracted on every step."""
    grid_resolution: float = 0.1
    """Cell size (metres) of the free-space grid used for reachability and geodesic distance."""

    def __post_init__(self) -> None:
        if self.goal_radius <= 0:
            raise ValueError(f"goal_radius must be positive, got {self.goal_radius}")
        lo, hi = self.goal_distance
        if not 0 < lo <= hi:
            raise ValueError(f"goal_distance must satisfy 0 < lo <= hi, got {self.goal_distance}")
        if not 0 < self.start_height[0] <= self.start_height[1]:
            raise ValueError(f"start_height must satisfy 0 < lo <= hi, got {self.start_height}")


def goal_observation(c2w: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """``[distance, direction (3)]`` of ``goal (..., 3)`` seen from camera ``c2w (..., 4, 4)``:
    float32 ``(..., 4)``, the direction a unit vector in the camera frame (zero at the goal)."""
    rel = goal - c2w[..., :3, 3]
    local = np.einsum("...ji,...j->...i", c2w[..., :3, :3], rel)  # R^T rel
    dist = np.linalg.norm(local, axis=-1, keepdims=True)
    direction = np.where(dist > 1e-9, local / np.maximum(dist, 1e-9), 0.0)
    out = np.concatenate([np.minimum(dist, GOAL_OBS_HIGH[0]), direction], -1)
    return out.astype(np.float32)


class StepOutcome(NamedTuple):
    reward: float
    distance: float
    success: bool


def score_step(cfg: PointGoalConfig, prev_distance: float, position: np.ndarray, goal: np.ndarray, collided: bool) -> StepOutcome:
    """Reward for one step: progress toward the goal, success bonus, collision penalty, step cost."""
    distance = float(np.linalg.norm(goal - position))
    success = distance <= cfg.goal_radius
    reward = cfg.progress_weight * (prev_distance - distance) - cfg.step_cost
    reward += cfg.success_bonus * success - cfg.collision_penalty * collided
    return StepOutcome(float(reward), distance, bool(success))


class GoalSample(NamedTuple):
    start: np.ndarray
    """``(3,)`` camera centre at the start."""
    yaw: float
    """Heading at the start (radians from +x towards +y)."""
    goal: np.ndarray
    """``(3,)`` goal point."""
    geodesic_distance: float
    """Shortest free-space path length from start to goal on the grid (metres)."""


def _free_grid(scene, height: float, clearance: float, res: float) -> tuple[np.ndarray, np.ndarray]:
    half = scene.arena_half
    axis = np.arange(-half + res / 2, half, res)
    xx, yy = np.meshgrid(axis, axis, indexing="ij")
    pts = np.stack([xx, yy, np.full_like(xx, height)], -1)
    free = signed_distance(scene, pts) >= clearance
    return axis, free


def _geodesic(free: np.ndarray, src: tuple[int, int], res: float) -> np.ndarray:
    """Dijkstra over 8-connected free cells from ``src``; ``inf`` where unreachable."""
    n0, n1 = free.shape
    idx = np.arange(free.size).reshape(free.shape)
    rows, cols, weights = [], [], []
    for di, dj in ((0, 1), (1, 0), (1, 1), (1, -1)):
        j0, j1 = max(0, -dj), n1 - max(0, dj)  # cell (i, j) pairs with (i + di, j + dj)
        a, b = (slice(0, n0 - di), slice(j0, j1)), (slice(di, n0), slice(j0 + dj, j1 + dj))
        ok = free[a] & free[b]
        rows.append(idx[a][ok])
        cols.append(idx[b][ok])
        weights.append(np.full(int(ok.sum()), res * np.hypot(di, dj)))
    r, c, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    graph = coo_matrix((w, (r, c)), shape=(free.size, free.size)).tocsr()
    dist = dijkstra(graph, directed=False, indices=int(idx[src]))
    return dist.reshape(free.shape)


def sample_goal(scene, rng: np.random.Generator, cfg: PointGoalConfig, camera_radius: float) -> GoalSample:
    """Draw a start and a goal in the same connected piece of free space of ``scene``."""
    height = float(rng.uniform(*cfg.start_height))
    clearance = max(cfg.goal_clearance, camera_radius)
    axis, free = _free_grid(scene, height, clearance, cfg.grid_resolution)
    # Paths may pass closer to obstacles than starts and goals: the camera radius suffices.
    _, passable = _free_grid(scene, height, camera_radius + 0.02, cfg.grid_resolution)
    labels, _ = ndimage.label(passable)
    cells = np.argwhere(free)
    if len(cells) == 0:
        raise RuntimeError(f"scene {scene.seed} has no free space at height {height:.2f}")
    lo, hi = cfg.goal_distance
    for _ in range(50):
        i, j = cells[rng.integers(len(cells))]
        start = np.array([axis[i], axis[j], height])
        dx = axis[cells[:, 0]] - start[0]
        dy = axis[cells[:, 1]] - start[1]
        d = np.hypot(dx, dy)
        ok = (d >= lo) & (d <= hi) & (labels[cells[:, 0], cells[:, 1]] == labels[i, j])
        if not ok.any():
            continue
        gi, gj = cells[rng.choice(np.flatnonzero(ok))]
        goal = np.array([axis[gi], axis[gj], height])
        geo = _geodesic(passable, (i, j), cfg.grid_resolution)[gi, gj]
        yaw = float(rng.uniform(-np.pi, np.pi))
        return GoalSample(start, yaw, goal, float(geo))
    raise RuntimeError(f"could not place a start and goal {lo}-{hi} m apart in scene {scene.seed}")


def arena_bounds(scene, camera_radius: float) -> np.ndarray:
    """``(2, 3)`` low / high corners of the box the camera centre can occupy in ``scene``:
    inside the arena walls, above the ground and below the invisible ceiling at
    ``wall_height``, each by ``camera_radius`` (where the reference world's collision sphere
    stops it). The world-model env ends an episode that leaves it."""
    a, h, r = scene.arena_half, scene.wall_height, camera_radius
    return np.array([[-a + r, -a + r, r], [a - r, a - r, h - r]])


def check_start_placement(pose: np.ndarray, scene, camera_radius: float) -> np.ndarray:
    """``pose`` if its camera centre has ``camera_radius`` of free space in ``scene``, else
    ``ValueError`` saying how close it is to an obstacle."""
    clearance = float(signed_distance(scene, pose[:3, 3]))
    if clearance < camera_radius:
        raise ValueError(
            f"reset option 'pose' puts the camera {clearance:.3f} m from an obstacle; it needs at least "
            f"camera_radius={camera_radius} m of free space (arena |x|, |y| < {scene.arena_half:.2f}, "
            f"0 < z < {scene.wall_height})")
    return pose


def check_goal_placement(goal, start: np.ndarray, scene, cfg: PointGoalConfig, camera_radius: float) -> np.ndarray:
    """The goal as ``(3,)`` float64 after checking that it is finite, farther than
    ``goal_radius`` from the ``start`` position (else the episode would end at once) and,
    in a ``scene``, reachable by the camera (``camera_radius`` of free space, inside the
    arena); else ``ValueError`` naming the problem."""
    arr = np.asarray(goal, dtype=np.float64) if not isinstance(goal, str) else np.array([])
    if arr.shape != (3,) or not np.isfinite(arr).all():
        raise ValueError(f"reset option 'goal' must be 3 finite floats (x, y, z in metres), got {goal!r}")
    gap = float(np.linalg.norm(arr - start))
    if gap <= cfg.goal_radius:
        raise ValueError(f"reset option 'goal' is {gap:.3f} m from the camera, within goal_radius={cfg.goal_radius} m: "
                         "the episode would end at once; put it farther away")
    if scene is not None:
        box = arena_bounds(scene, camera_radius)
        if ((arr < box[0]) | (arr > box[1])).any():
            raise ValueError(f"reset option 'goal' {arr.round(3).tolist()} is outside the arena: the camera can reach "
                             f"{box[0].round(3).tolist()} .. {box[1].round(3).tolist()} (|x|, |y| < arena_half - "
                             f"camera_radius, camera_radius < z < wall_height - camera_radius)")
        clearance = float(signed_distance(scene, arr))
        if clearance < camera_radius:
            where = "inside an obstacle" if clearance < 0 else f"{clearance:.3f} m from an obstacle"
            raise ValueError(f"reset option 'goal' {arr.round(3).tolist()} is {where}; the "
                             f"camera could not reach it: it needs camera_radius={camera_radius} m of free space "
                             f"(arena |x|, |y| < {scene.arena_half:.2f}, 0 < z < {scene.wall_height})")
    return arr
