"""A scripted point-goal policy: turn toward the goal, drive forward, detour when stuck.

It reads only the ``goal`` observation (distance and direction in the camera frame), so it
runs unchanged in the reference world and in imagination. When the distance stops
shrinking while it drives forward (an obstacle stopped the camera), it detours: turns
about 70 degrees to one side, drives a few steps, and seeks again, alternating sides on
failures: a crude wall-follower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["GoalSeekingConfig", "GoalSeekingPolicy"]


@dataclass(frozen=True)
class GoalSeekingConfig:
    """Gains and thresholds of the scripted policy (actions are normalised to [-1, 1])."""

    turn_gain: float = 2.0
    """Normalised yaw rate per radian of heading error."""
    forward_speed: float = 1.0
    """Normalised forward speed when facing the goal."""
    slow_radius: float = 1.0
    """Within this distance (m) the forward speed scales down with the distance."""
    max_heading_for_forward: float = math.radians(60)
    """No forward motion while the goal is further off-axis than this."""
    stuck_progress: float = 0.05
    """A forward step that gains less than this (m) counts as stuck."""
    stuck_steps: int = 2
    """Consecutive stuck steps that trigger a detour."""
    detour_turn_steps: int = 4
    """Steps spent turning at full rate at the start of a detour (4 x 0.25 s x 90 deg/s ~ 90 deg)."""
    detour_forward_steps: int = 6
    """Steps spent driving forward after the detour's turn."""
    improvement: float = 0.3
    """A detour counts as helpful once the best distance so far shrinks by this much (m)."""
    vertical_gain: float = 1.5
    """6-DoF mode only: normalised vertical speed per unit of the goal direction's y."""


class GoalSeekingPolicy:
    """``act(obs) -> action`` for the navigation envs; call ``reset()`` at each episode start.

    ``action_mode`` is ``"6dof"`` (``[vx, vy, vz, wx, wy, wz]``) or ``"planar"``
    (``[forward, yaw_rate]``). It keeps a little state (the last distance and the detour
    plan), so use one instance per env.
    """

    def __init__(self, action_mode: str = "6dof", config: GoalSeekingConfig | None = None, seed: int | None = None):
        if action_mode not in ("6dof", "planar"):
            raise ValueError(f"action_mode must be '6dof' or 'planar', got {action_mode!r}")
        self.action_mode = action_mode
        self.cfg = config or GoalSeekingConfig()
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self._last_distance: float | None = None
        self._last_forward = 0.0
        self._stuck = 0
        self._best = math.inf
        self._failed_detours = 0  # detours since the best distance last improved
        self._plan: list[tuple[float, float]] = []  # queued (forward, yaw_rate) steps
        self._side = 1.0 if self.rng.random() < 0.5 else -1.0

    def _start_detour(self) -> None:
        """Turn ~90 degrees to one side and drive; longer each time it fails to help, and
        switching sides every second failure (a crude wall-follower)."""
        cfg = self.cfg
        if self._failed_detours and self._failed_detours % 2 == 0:
            self._side = -self._side
        forward_steps = cfg.detour_forward_steps * (1 + self._failed_detours // 2)
        self._plan = [(0.0, self._side)] * cfg.detour_turn_steps + [(cfg.forward_speed, 0.0)] * forward_steps
        self._failed_detours += 1

    def act(self, obs: dict) -> np.ndarray:
        goal = np.asarray(obs["goal"], dtype=np.float64)
        distance, direction = float(goal[0]), goal[1:]
        heading = math.atan2(direction[0], direction[2])  # > 0: goal to the right
        cfg = self.cfg
        if self._last_distance is not None and self._last_forward > 0.3:
            moved = abs(self._last_distance - distance)
            progress = self._last_distance - distance
            blocked = moved < 0.02 if self._plan else progress < cfg.stuck_progress * self._last_forward
            self._stuck = self._stuck + 1 if blocked else 0
        self._last_distance = distance
        if distance < self._best - cfg.improvement:
            self._best = distance
            self._failed_detours = 0
        if self._stuck >= cfg.stuck_steps:
            self._stuck = 0
            self._start_detour()
        if self._plan:
            forward, yaw_rate = self._plan.pop(0)
            vertical = 0.0
        else:
            yaw_rate = float(np.clip(-cfg.turn_gain * heading, -1, 1))  # planar: + turns left
            aligned = max(0.0, 1.0 - abs(heading) / cfg.max_heading_for_forward)
            forward = cfg.forward_speed * aligned * min(1.0, distance / cfg.slow_radius)
            vertical = float(np.clip(cfg.vertical_gain * direction[1], -1, 1))
        self._last_forward = forward
        if self.action_mode == "planar":
            return np.array([forward, yaw_rate], dtype=np.float32)
        # 6-DoF body twist: forward is +z, turning left is a rotation about -y.
        return np.array([0.0, vertical, forward, 0.0, -yaw_rate, 0.0], dtype=np.float32)

    __call__ = act
