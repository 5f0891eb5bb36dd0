"""From agent actions to camera poses: action scaling, the planar mode, and one chunk of motion.

One env step holds a body-frame twist constant for ``frames_per_step`` raw frames at
``fps`` and integrates it per frame with the exact SE(3) exponential (docs/DESIGN.md). The camera
is a sphere that cannot pass through obstacles: when a frame's motion would touch one, the
translation stops at the last free frame and the rotation continues (a robot pushed against
a wall can still turn). What counts as an obstacle is a *sweep* function passed in by the
caller (the reference world passes its exact geometry,
:func:`sanawm_gym.reference_world.collision.obstacle_sweep`); without one the motion is pure
integration. This module knows no scene, so the reference world can import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from world_model.geometry import exp_se3, integrate_twist

__all__ = ["MotionConfig", "ChunkMotion", "Sweep", "action_to_twist", "look_around", "move_chunk", "planar_to_body"]

Sweep = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
"""``sweep(starts (K, 3), ends (K, 3), radius) -> (K,) bool``: whether a sphere of ``radius``
moving in a straight line from each start to its end touches an obstacle."""


@dataclass(frozen=True)
class MotionConfig:
    """Timing and speed limits shared by the envs and the trajectory generator."""

    fps: float = 16.0
    """Raw video frames per second."""
    frames_per_step: int = 4
    """K: raw frames per env step (the autoencoder's temporal stride: one latent frame)."""
    max_linear_speed: float = 1.0
    """Metres per second for a linear action component of 1."""
    max_angular_speed: float = math.pi / 2
    """Radians per second for an angular action component of 1."""
    camera_radius: float = 0.2
    """Radius of the camera's collision sphere (metres)."""

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.max_linear_speed <= 0 or self.max_angular_speed <= 0 or self.camera_radius <= 0:
            raise ValueError(f"fps, speeds and camera_radius must be positive: {self}")
        if self.frames_per_step < 1:
            raise ValueError(f"frames_per_step must be >= 1, got {self.frames_per_step}")

    @property
    def dt(self) -> float:
        """Seconds per raw frame."""
        return 1.0 / self.fps

    @property
    def step_seconds(self) -> float:
        """Seconds per env step."""
        return self.frames_per_step / self.fps


def action_to_twist(action: np.ndarray, cfg: MotionConfig) -> np.ndarray:
    """Normalised 6-D action ``(..., 6)`` in [-1, 1] -> body twist in m/s and rad/s ``(..., 6)``."""
    action = np.asarray(action, dtype=np.float64)
    scale = np.array([cfg.max_linear_speed] * 3 + [cfg.max_angular_speed] * 3)
    return action * scale


def planar_to_body(action: np.ndarray) -> np.ndarray:
    """Planar action ``[forward, yaw_rate] (..., 2)`` -> normalised 6-D body action ``(..., 6)``.

    Forward is the camera's +z; a positive yaw rate turns left (heading increases, counter-
    clockwise seen from above), which for a level camera (OpenCV, y down) is a rotation
    about the camera's -y axis.
    """
    action = np.asarray(action, dtype=np.float64)
    out = np.zeros(action.shape[:-1] + (6,))
    out[..., 2] = action[..., 0]
    out[..., 4] = -action[..., 1]
    return out


class ChunkMotion(NamedTuple):
    poses: np.ndarray
    """``(K, 4, 4)`` float64 c2w at each raw frame of the chunk; the last is the new pose."""
    collided: bool
    """Whether the translation was stopped by an obstacle during the chunk."""
    distance: float
    """Metres travelled by the camera centre during the chunk."""


def move_chunk(c2w: np.ndarray, twist: np.ndarray, cfg: MotionConfig, sweep: Sweep | None = None) -> ChunkMotion:
    """Hold ``twist (6,)`` (SI units, body frame) for one chunk from ``c2w (4, 4)``.

    Without a ``sweep`` this is pure integration. With one, each frame's motion of the
    camera sphere (``cfg.camera_radius``) is swept; from the first frame that would touch,
    the translation stops and only the rotational part of the twist goes on.
    """
    poses = integrate_twist(c2w, twist, cfg.dt, cfg.frames_per_step)  # (K, 4, 4)
    collided = False
    if sweep is not None:
        starts = np.concatenate([c2w[None, :3, 3], poses[:-1, :3, 3]])
        hits = np.asarray(sweep(starts, poses[:, :3, 3], cfg.camera_radius), dtype=bool)  # (K,)
        if hits.any():
            collided = True
            j = int(np.argmax(hits))
            anchor = c2w if j == 0 else poses[j - 1]
            spin = np.concatenate([np.zeros(3), twist[3:]])
            steps = np.arange(1, cfg.frames_per_step - j + 1)[:, None] * cfg.dt
            poses = poses.copy()
            poses[j:] = anchor @ exp_se3(spin[None] * steps)
    path = np.concatenate([c2w[None, :3, 3], poses[:, :3, 3]])
    distance = float(np.linalg.norm(np.diff(path, axis=0), axis=-1).sum())
    return ChunkMotion(poses, collided, distance)


def look_around(pose: np.ndarray, seconds: float, fps: float = 16.0, frames_per_step: int = 4) -> np.ndarray:
    """``(1 + K m, 4, 4)`` poses (K = ``frames_per_step``, ``fps`` frames per second) of a
    look around that ends at ``pose``: a turn in place to the right at pi/2 rad/s (the env's
    top yaw rate), from the heading ``seconds * pi/2`` to the left of the pose's (4 s: a
    full turn), rounded to whole steps. ``seconds`` 0: the pose alone. What a seeded
    ``Nav-v0`` reset shows the model first (``NavConfig.context_seconds``)."""
    steps = int(round(seconds * fps / frames_per_step)) * frames_per_step
    if steps == 0:
        return pose[None]
    right = np.array([0, 0, 0, 0, math.pi / 2, 0])  # +wy turns an OpenCV camera right
    start = pose @ np.asarray(exp_se3(-right * steps / fps))
    poses = np.concatenate([start[None], np.asarray(integrate_twist(start, right, 1.0 / fps, steps))])
    poses[-1] = pose
    return poses
