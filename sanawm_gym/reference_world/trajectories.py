"""Camera trajectories in the reference world, made of the env's own actions.

A trajectory is a sequence of normalised 6-D body actions ``[vx, vy, vz, wx, wy, wz]`` in
[-1, 1], one per env step, each held for the step's ``K`` raw frames and stepped with
:func:`sanawm_gym.kinematics.move_chunk` exactly as the env steps them, so the world model
trains on the env's motion distribution. Poses are OpenCV camera-to-world, world +z up.

Behaviours, drawn per segment of a few steps from :class:`BehaviourMix`:

- ``walk``: forward (horizontally) with a gentle, slowly oscillating turn;
- ``turn``: turn in place;
- ``strafe``: sideways, with a little forward motion;
- ``look_around``: yaw and pitch oscillations while creeping forward;
- ``change_height``: climb or sink to a new height inside ``height_range``;
- ``out_and_back``: come to rest, move for a few steps, then apply exactly the inverse
  actions in reverse order. Since each frame is ``c2w @ exp(i dt xi)``, the return leg
  retraces the outward frames in reverse and ends on the pose it left from (up to
  rounding, ~1e-15): the frames around the turn are a palindrome (:class:`Revisit`);
- ``hold``: come to rest (the braking tail) and stay still, so that a model trained on
  these clips sees a scene that does not move when the camera does not (weight 0 by
  default: the default mix, and every set drawn with it, are what they were);
- ``avoid``: not drawn, entered when a step is refused (below): come to rest and turn
  toward the most open heading.

Every behaviour is a command (horizontal speeds, a world yaw rate, a target pitch and
height) turned into a body action with proportional feedback that keeps the camera level
(pitch bounded, roll near zero) and at its target height. World directions are expressed
in the body frame, so climbing is mostly ``-vy`` (the OpenCV y axis points down) and a
world yaw is mostly ``-wy``, mixed with the other components as the camera pitches.
Actions are smoothed between steps: each step
moves a fraction ``smoothing`` of the way to the behaviour's target and at most
``max_action_change`` per component, so there are no jumps.

Safety is by construction. A candidate action is accepted only if its ``K`` frames *and*
the braking tail after it (ramping every component to zero at ``max_action_change`` per
step) keep the camera inside the bounds: clearance to every obstacle, ground and ceiling
at least ``camera_radius + margin``, height in ``height_range``, pitch and roll bounded.
Otherwise the next step of the braking tail accepted before is taken instead, which was
checked together with that earlier step. So a safe continuation always exists, and with
``margin`` larger than half a frame's displacement no ``move_chunk`` sweep can touch an
obstacle between two checked frames (the signed distance is 1-Lipschitz). The same bound
spares most distance queries: frames closer to the camera than its known clearance minus
``camera_radius + margin`` need none. The finished trajectory is swept once more exactly
as ``move_chunk(..., scene)`` sweeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from world_model.geometry import exp_se3, pose_from_yaw_pitch
from sanawm_gym.kinematics import MotionConfig, action_to_twist, move_chunk, planar_to_body
from sanawm_gym.reference_world.collision import obstacle_sweep, segment_collision, signed_distance
from sanawm_gym.reference_world.scene import Scene

__all__ = [
    "BEHAVIOURS",
    "drive_trajectory",
    "driving_actions",
    "BehaviourMix",
    "Revisit",
    "Trajectory",
    "TrajectoryConfig",
    "generate_trajectory",
    "sample_start_pose",
]

BEHAVIOURS = ("walk", "turn", "strafe", "look_around", "change_height", "out_and_back", "hold", "avoid")
"""Every behaviour name a trajectory step can carry; ``avoid`` is entered, never drawn."""
_DRAWN = BEHAVIOURS[:-1]  # hold last among them: its weight 0 leaves the other draws as they were
_SWEEP_FRAMES = 32  # frames per collision query in the final check
_MOTIONS = BEHAVIOURS[:5]  # what the outward leg of an out-and-back does


@dataclass(frozen=True)
class BehaviourMix:
    """Relative weights with which each segment's behaviour is drawn (need not sum to 1)."""

    walk: float = 0.3
    """Forward with gentle turns."""
    turn: float = 0.12
    """Turn in place."""
    strafe: float = 0.12
    """Sideways."""
    look_around: float = 0.14
    """Yaw and pitch oscillations."""
    change_height: float = 0.12
    """Climb or sink to a new height."""
    out_and_back: float = 0.12
    """A few steps out, then exactly back (revisits)."""
    hold: float = 0.0
    """Come to rest and stay still (0 by default, so that the default draws are unchanged)."""

    def __post_init__(self) -> None:
        weights = self.weights()
        if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(f"behaviour weights must be finite, >= 0 and not all zero, got {self}")

    def weights(self, names: tuple[str, ...] = _DRAWN) -> np.ndarray:
        """The weights of ``names`` as an array, in that order."""
        return np.array([getattr(self, n) for n in names], dtype=np.float64)


@dataclass(frozen=True)
class TrajectoryConfig:
    """How trajectories are drawn. Speeds and rates are in normalised action units (1 is
    the env's maximum speed); ranges are ``(lo, hi)``, sampled uniformly per segment."""

    mix: BehaviourMix = BehaviourMix()
    """Behaviour mixture weights."""
    segment_steps: tuple[int, int] = (3, 8)
    """Steps per behaviour segment (inclusive range)."""
    out_steps: tuple[int, int] = (3, 8)
    """Steps of the outward leg of an out-and-back before it ramps down (inclusive range)."""
    height_range: tuple[float, float] = (0.4, 2.2)
    """Camera heights allowed at every frame (metres above the ground)."""
    start_height_range: tuple[float, float] = (0.9, 1.7)
    """Heights at which trajectories start; inside ``height_range``."""
    max_pitch_deg: float = 25.0
    """Bound on |pitch| (forward axis above or below the horizon) at every frame."""
    max_roll_deg: float = 8.0
    """Bound on |roll| (tilt of the image's x axis out of the horizontal) at every frame."""
    start_pitch_deg: float = 8.0
    """Bound on |pitch| of the start pose (drawn uniformly)."""
    wander_pitch_deg: float = 8.0
    """Bound on the target pitch of the behaviours other than ``look_around``."""
    margin: float = 0.2
    """Clearance kept beyond the camera's radius from obstacles, ground and ceiling (metres);
    must exceed half a frame's largest displacement."""
    smoothing: float = 0.5
    """Fraction of the way from the previous action to the behaviour's target per step."""
    max_action_change: float = 0.25
    """Largest change of any action component between consecutive steps."""
    walk_speed: tuple[float, float] = (0.4, 1.0)
    """Forward speed of ``walk``."""
    strafe_speed: tuple[float, float] = (0.3, 0.8)
    """Sideways speed of ``strafe``."""
    turn_rate: tuple[float, float] = (0.4, 1.0)
    """Yaw rate of ``turn`` and ``avoid``, and the yaw amplitude of ``look_around``."""
    climb_speed: tuple[float, float] = (0.3, 0.7)
    """Vertical speed limit of ``change_height`` (other behaviours hold their height)."""
    gentle_turn: float = 0.3
    """Largest yaw-rate amplitude of ``walk`` and ``strafe``."""
    oscillation_steps: tuple[float, float] = (4.0, 12.0)
    """Period (steps) of the yaw and pitch oscillations."""
    feedback_gain: float = 2.0
    """Proportional gain (1/s) steering pitch and roll to their targets and the height to
    the behaviour's target height."""
    probe_headings: int = 16
    """Headings probed by ``avoid`` when it looks for open space."""
    probe_distance: float = 2.5
    """How far (metres) ``avoid`` probes along each heading."""
    avoid_tolerance_deg: float = 20.0
    """``avoid`` ends once the heading is this close to the most open one."""
    max_avoid_steps: int = 12
    """``avoid`` ends after this many steps at most."""

    def __post_init__(self) -> None:
        ranges = {
            "segment_steps": self.segment_steps,
            "out_steps": self.out_steps,
            "height_range": self.height_range,
            "start_height_range": self.start_height_range,
            "walk_speed": self.walk_speed,
            "strafe_speed": self.strafe_speed,
            "turn_rate": self.turn_rate,
            "climb_speed": self.climb_speed,
            "oscillation_steps": self.oscillation_steps,
        }
        for name, (lo, hi) in ranges.items():
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must satisfy 0 < lo <= hi, got {(lo, hi)}")
        for name in ("walk_speed", "strafe_speed", "turn_rate", "climb_speed"):
            if getattr(self, name)[1] > 1:
                raise ValueError(f"{name} is in normalised action units, must be <= 1, got {getattr(self, name)}")
        lo, hi = self.height_range
        if not lo <= self.start_height_range[0] <= self.start_height_range[1] <= hi:
            raise ValueError(f"start_height_range {self.start_height_range} must lie inside "
                             f"height_range {self.height_range}")
        if not 0 < self.max_pitch_deg < 80 or not 0 < self.max_roll_deg < 80:
            raise ValueError(f"max_pitch_deg and max_roll_deg must be in (0, 80), "
                             f"got {self.max_pitch_deg}, {self.max_roll_deg}")
        if not 0 <= self.start_pitch_deg <= self.max_pitch_deg or not 0 <= self.wander_pitch_deg <= self.max_pitch_deg:
            raise ValueError(f"start_pitch_deg and wander_pitch_deg must be in [0, max_pitch_deg={self.max_pitch_deg}], "
                             f"got {self.start_pitch_deg}, {self.wander_pitch_deg}")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if not 0 < self.max_action_change <= 2:
            raise ValueError(f"max_action_change must be in (0, 2], got {self.max_action_change}")
        if self.margin <= 0 or self.gentle_turn < 0 or self.feedback_gain <= 0 or self.probe_distance <= 0:
            raise ValueError("margin, feedback_gain and probe_distance must be positive and gentle_turn >= 0, got "
                             f"{self.margin}, {self.feedback_gain}, {self.probe_distance}, {self.gentle_turn}")
        if self.probe_headings < 4 or self.max_avoid_steps < 1 or not 0 < self.avoid_tolerance_deg < 180:
            raise ValueError("probe_headings must be >= 4, max_avoid_steps >= 1 and avoid_tolerance_deg in (0, 180), got "
                             f"{self.probe_headings}, {self.max_avoid_steps}, {self.avoid_tolerance_deg}")


class Revisit(NamedTuple):
    """An out-and-back: steps ``start_step .. start_step + 2 * num_steps - 1``, whose return
    leg ``actions[start + n + j] == -actions[start + n - 1 - j]`` undoes the outward leg.
    The frames around ``turn_frame`` mirror each other:
    ``c2w[turn_frame - m] == c2w[turn_frame + m]`` for ``0 <= m <= num_frames``."""

    start_step: int
    num_steps: int
    """Steps of the outward leg (the return leg has as many)."""
    turn_frame: int
    """Index into ``Trajectory.c2w`` of the pose where the camera turns back."""
    num_frames: int
    """``num_steps * K``."""


class Trajectory(NamedTuple):
    """A camera trajectory: the actions, the poses they produce, and what made each step."""

    actions: np.ndarray
    """``(num_steps, 6)`` float32 normalised body actions in [-1, 1]."""
    c2w: np.ndarray
    """``(1 + num_steps * K, 4, 4)`` float64: the start pose, then the ``K`` frames of each
    step (frame ``1 + s * K + k`` is frame ``k`` of step ``s``)."""
    behaviours: tuple[str, ...]
    """``(num_steps,)`` the behaviour that produced each step (see :data:`BEHAVIOURS`)."""
    revisits: tuple[Revisit, ...]
    """Every out-and-back, in order."""


class _Command(NamedTuple):
    """What a behaviour wants during one step, before feedback and smoothing."""

    forward: float
    """Horizontal speed along the camera's heading (normalised)."""
    right: float
    """Horizontal speed to the camera's right (normalised)."""
    yaw_rate: float
    """World yaw rate (normalised), positive turns left (counter-clockwise from above)."""
    pitch: float
    """Target pitch (radians, positive looks up)."""
    height: float
    """Target height (metres)."""
    climb: float
    """Largest vertical speed (normalised) used to reach ``height``."""


Behaviour = Callable[[int], _Command]
"""A segment's command as a function of the step index inside the segment."""


# ----------------------------------------------------------------------------- behaviours
def _oscillation(rng: np.random.Generator, cfg: TrajectoryConfig, amplitude: float) -> Callable[[int], float]:
    period = rng.uniform(*cfg.oscillation_steps)
    phase = rng.uniform(0, 2 * math.pi)
    return lambda j: amplitude * math.sin(2 * math.pi * j / period + phase)


def _wander_pitch(rng: np.random.Generator, cfg: TrajectoryConfig) -> float:
    return math.radians(rng.uniform(-cfg.wander_pitch_deg, cfg.wander_pitch_deg))


def _walk(rng: np.random.Generator, cfg: TrajectoryConfig, height: float) -> Behaviour:
    speed = rng.uniform(*cfg.walk_speed)
    yaw = _oscillation(rng, cfg, rng.uniform(-cfg.gentle_turn, cfg.gentle_turn))
    pitch = _wander_pitch(rng, cfg)
    return lambda j: _Command(speed, 0.0, yaw(j), pitch, height, cfg.climb_speed[0])


def _turn(rng: np.random.Generator, cfg: TrajectoryConfig, height: float) -> Behaviour:
    rate = rng.uniform(*cfg.turn_rate) * rng.choice((-1.0, 1.0))
    pitch = _wander_pitch(rng, cfg)
    return lambda j: _Command(0.0, 0.0, rate, pitch, height, cfg.climb_speed[0])


def _strafe(rng: np.random.Generator, cfg: TrajectoryConfig, height: float) -> Behaviour:
    right = rng.uniform(*cfg.strafe_speed) * rng.choice((-1.0, 1.0))
    forward = rng.uniform(-0.25, 0.5) * cfg.strafe_speed[0]  # a little forward or backward drift
    yaw = _oscillation(rng, cfg, rng.uniform(-cfg.gentle_turn, cfg.gentle_turn))
    pitch = _wander_pitch(rng, cfg)
    return lambda j: _Command(forward, right, yaw(j), pitch, height, cfg.climb_speed[0])


def _look_around(rng: np.random.Generator, cfg: TrajectoryConfig, height: float) -> Behaviour:
    forward = rng.uniform(0.0, 0.5) * cfg.walk_speed[0]  # creep, at most half the slowest walk
    yaw = _oscillation(rng, cfg, rng.uniform(*cfg.turn_rate))
    pitch = _oscillation(rng, cfg, math.radians(rng.uniform(0.5, 0.8) * cfg.max_pitch_deg))
    return lambda j: _Command(forward, 0.0, yaw(j), pitch(j), height, cfg.climb_speed[0])


def _change_height(rng: np.random.Generator, cfg: TrajectoryConfig, height: float) -> Behaviour:
    lo, hi = cfg.height_range
    inset = 0.1 * (hi - lo)  # targets keep off the bounds, so feedback overshoot stays inside
    target = rng.uniform(lo + inset, hi - inset)
    climb = rng.uniform(*cfg.climb_speed)
    forward = rng.uniform(0.0, 0.5) * cfg.walk_speed[0]
    pitch = _wander_pitch(rng, cfg)
    return lambda j: _Command(forward, 0.0, 0.0, pitch, target, climb)


_BEHAVIOUR_MAKERS = {
    "walk": _walk,
    "turn": _turn,
    "strafe": _strafe,
    "look_around": _look_around,
    "change_height": _change_height,
}


# ------------------------------------------------------------------------------- the walker
class _Walker:
    """Steps one trajectory: holds the pose and the last action, checks candidates, records."""

    def __init__(self, scene: Scene, c2w: np.ndarray, num_steps: int, rng: np.random.Generator,
                 cfg: TrajectoryConfig, motion: MotionConfig) -> None:
        self.scene, self.rng, self.cfg, self.motion = scene, rng, cfg, motion
        self.num_steps = num_steps
        self.pose = np.asarray(c2w, dtype=np.float64)
        self.action = np.zeros(6, dtype=np.float32)  # at rest before the first step
        self.actions: list[np.ndarray] = []
        self.frames: list[np.ndarray] = [self.pose[None]]
        self.labels: list[str] = []
        self.revisits: list[Revisit] = []
        self.clearance = motion.camera_radius + cfg.margin
        self.sin_pitch = math.sin(math.radians(cfg.max_pitch_deg))
        self.sin_roll = math.sin(math.radians(cfg.max_roll_deg))
        self.frame_times = np.arange(1, motion.frames_per_step + 1) * motion.dt  # (K,)
        self.free = float(signed_distance(scene, self.pose[:3, 3]))  # lower bound of the distance at the pose

    # -- bookkeeping
    @property
    def remaining(self) -> int:
        return self.num_steps - len(self.actions)

    def take(self, action: np.ndarray, label: str) -> None:
        """Step ``action`` with ``move_chunk``, as the env does. Collisions cannot happen
        (see the module docstring); :func:`generate_trajectory` verifies it at the end."""
        chunk = move_chunk(self.pose, action_to_twist(action, self.motion), self.motion)
        self.free -= float(np.linalg.norm(chunk.poses[:, :3, 3] - self.pose[:3, 3], axis=-1).max())
        self.pose = chunk.poses[-1]
        self.action = action
        self.actions.append(action)
        self.frames.append(chunk.poses)
        self.labels.append(label)

    # -- smoothing and braking
    def smooth(self, target: np.ndarray) -> np.ndarray:
        """One low-passed, rate-limited step from the last action toward ``target``."""
        limit = self.cfg.max_action_change
        delta = np.clip(self.cfg.smoothing * (target - self.action), -limit, limit)
        return np.clip(self.action + delta, -1.0, 1.0).astype(np.float32)

    def brake_from(self, action: np.ndarray) -> np.ndarray:
        """The next braking action: every component one rate-limited step toward zero."""
        step = self.cfg.max_action_change
        return (action - np.clip(action, -step, step)).astype(np.float32)

    def brake(self) -> np.ndarray:
        return self.brake_from(self.action)

    def braking_tail(self, action: np.ndarray) -> list[np.ndarray]:
        tail = []
        while np.any(action != 0):
            action = self.brake_from(action)
            tail.append(action)
        return tail

    # -- checks
    def rollout(self, actions: list[np.ndarray]) -> np.ndarray:
        """Frames ``(len * K, 4, 4)`` of ``actions`` stepped from the current pose (pure
        integration; equal to ``move_chunk`` up to rounding)."""
        twists = action_to_twist(np.stack(actions), self.motion)  # (n, 6)
        deltas = exp_se3(twists[:, None, :] * self.frame_times[None, :, None])  # (n, K, 4, 4)
        pose, out = self.pose, []
        for d in deltas:
            frames = pose @ d  # (K, 4, 4)
            out.append(frames)
            pose = frames[-1]
        return np.concatenate(out)

    def admissible(self, frames: np.ndarray) -> bool:
        """Whether every frame ``(N, 4, 4)`` keeps the height, pitch, roll and clearance bounds.

        The signed distance is 1-Lipschitz: frames within ``free - clearance`` of the current
        position are clear without a query. A query also refreshes ``free``."""
        lo, hi = self.cfg.height_range
        z = frames[:, 2, 3]
        if z.min() < lo or z.max() > hi:
            return False
        if np.abs(frames[:, 2, 2]).max() > self.sin_pitch or np.abs(frames[:, 2, 0]).max() > self.sin_roll:
            return False
        reach = float(np.linalg.norm(frames[:, :3, 3] - self.pose[:3, 3], axis=-1).max())
        if self.free - reach >= self.clearance:
            return True
        points = np.concatenate([self.pose[None, :3, 3], frames[:, :3, 3]])
        distance = signed_distance(self.scene, points)
        self.free = float(distance[0])
        return bool(distance[1:].min() >= self.clearance)

    def safe(self, action: np.ndarray) -> bool:
        """Whether ``action`` and the braking tail after it stay admissible."""
        return self.admissible(self.rollout([action] + self.braking_tail(action)))

    # -- commands to actions
    def command_to_action(self, cmd: _Command) -> np.ndarray:
        """A behaviour's command -> normalised body action ``(6,)`` with attitude and height
        feedback: heading-relative horizontal motion, yaw about world +z, pitch toward the
        target, roll toward zero, height toward the target."""
        m, gain = self.motion, self.cfg.feedback_gain
        R = self.pose[:3, :3]
        up = R[2]  # world +z in body coordinates
        heading = math.atan2(R[1, 2], R[0, 2])
        forward = np.array([math.cos(heading), math.sin(heading), 0.0])
        right = np.array([math.sin(heading), -math.cos(heading), 0.0])  # forward x up
        climb = float(np.clip(gain * (cmd.height - self.pose[2, 3]) / m.max_linear_speed, -cmd.climb, cmd.climb))
        linear = R.T @ (cmd.forward * forward + cmd.right * right) + climb * up
        pitch = math.asin(float(np.clip(R[2, 2], -1, 1)))
        roll = math.asin(float(np.clip(R[2, 0], -1, 1)))
        angular = up * cmd.yaw_rate * m.max_angular_speed
        angular = angular + np.array([gain * (cmd.pitch - pitch), 0.0, gain * roll])  # +wx pitches up, +wz rolls back
        action = np.concatenate([linear, angular / m.max_angular_speed])
        return np.clip(action, -1.0, 1.0)

    def heading(self) -> float:
        return math.atan2(self.pose[1, 2], self.pose[0, 2])

    def open_heading(self) -> float:
        """The heading (radians) with the longest free straight run at the current height;
        ties go to the one closest to the current heading."""
        cfg = self.cfg
        angles = self.heading() + np.arange(cfg.probe_headings) * (2 * math.pi / cfg.probe_headings)
        spacing = self.motion.max_linear_speed * self.motion.step_seconds
        dists = np.arange(1, int(math.ceil(cfg.probe_distance / spacing)) + 1) * spacing  # (D,)
        dirs = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], -1)  # (A, 3)
        points = self.pose[:3, 3] + dirs[:, None, :] * dists[None, :, None]  # (A, D, 3)
        blocked = signed_distance(self.scene, points) < self.clearance  # (A, D)
        free = np.where(blocked.any(1), blocked.argmax(1), len(dists))  # free samples per heading
        turn = np.abs(np.angle(np.exp(1j * (angles - self.heading()))))
        best = np.lexsort((turn, -free))[0]
        return float(angles[best])


# ----------------------------------------------------------------------------- the segments
def _run_behaviour(w: _Walker, name: str, steps: int) -> bool:
    """Up to ``steps`` steps of behaviour ``name``; False if a step was refused (braked)."""
    make = _BEHAVIOUR_MAKERS[name]
    command = make(w.rng, w.cfg, float(w.pose[2, 3]))
    for j in range(steps):
        if w.remaining == 0:
            break
        candidate = w.smooth(w.command_to_action(command(j)))
        if not w.safe(candidate):
            return False
        w.take(candidate, name)
    return True


def _avoid(w: _Walker) -> None:
    """Brake (the refused step's verified fallback), then turn in place toward open space."""
    w.take(w.brake(), "avoid")
    target = w.open_heading()
    height = float(np.clip(w.pose[2, 3], *w.cfg.height_range))
    tolerance = math.radians(w.cfg.avoid_tolerance_deg)
    rate = w.cfg.turn_rate[1]
    for _ in range(w.cfg.max_avoid_steps):
        error = float(np.angle(np.exp(1j * (target - w.heading()))))
        if w.remaining == 0 or abs(error) < tolerance:
            break
        yaw = float(np.clip(error / (w.motion.max_angular_speed * w.motion.step_seconds), -rate, rate))
        candidate = w.smooth(w.command_to_action(_Command(0.0, 0.0, yaw, 0.0, height, w.cfg.climb_speed[0])))
        w.take(candidate if w.safe(candidate) else w.brake(), "avoid")


def _out_and_back(w: _Walker) -> None:
    """Come to rest, go out for a few steps, ramp down, then retrace exactly."""
    label = "out_and_back"
    while np.any(w.action != 0) and w.remaining > 0:  # settle: the braking tail, already checked
        w.take(w.brake(), label)
    budget = w.remaining // 2  # the outward leg and the return leg must both fit
    weights = w.cfg.mix.weights(_MOTIONS)
    weights = weights if weights.sum() > 0 else np.ones_like(weights)  # a mix of out-and-backs only
    name = _MOTIONS[w.rng.choice(len(_MOTIONS), p=_normalised(weights))]
    command = _BEHAVIOUR_MAKERS[name](w.rng, w.cfg, float(w.pose[2, 3]))
    n_out = int(w.rng.integers(w.cfg.out_steps[0], w.cfg.out_steps[1] + 1))
    half = w.cfg.max_action_change / 2
    start, out = len(w.actions), []
    for j in range(n_out):
        candidate = w.smooth(w.command_to_action(command(j)))
        # The turn needs |last outward action| <= half, so that negating it is a legal change:
        # count the braking steps needed to get there.
        ramp_len = 0
        if np.abs(candidate).max() > half:
            ramp = w.braking_tail(candidate)
            ramp_len = next(i + 1 for i, a in enumerate(ramp) if np.abs(a).max() <= half)
        if len(out) + 1 + ramp_len > budget or not w.safe(candidate):
            break
        w.take(candidate, label)
        out.append(candidate)
    while out and np.abs(w.action).max() > half and len(out) < budget:  # ramp down along the checked tail
        w.take(w.brake(), label)
        out.append(w.action)
    if not out:
        if w.remaining > 0:
            _avoid(w)
        return
    turn_frame = len(w.actions) * w.motion.frames_per_step  # the frame of the current pose
    for action in reversed(out):
        w.take(-action, label)
    n = len(out)
    w.revisits.append(Revisit(start, n, turn_frame, n * w.motion.frames_per_step))


def _hold(w: _Walker, steps: int) -> None:
    """Come to rest along the braking tail (checked with the step before it), then stay
    still: a zero action moves nothing, so it is always admissible."""
    label = "hold"
    while np.any(w.action != 0) and w.remaining > 0:
        w.take(w.brake(), label)
    for _ in range(steps):
        if w.remaining == 0:
            break
        w.take(np.zeros(6, dtype=np.float32), label)


def _normalised(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum()


# --------------------------------------------------------------------------------- public API
def _check_margin(cfg: TrajectoryConfig, motion: MotionConfig) -> None:
    # Largest distance between consecutive frames: all three linear components at 1.
    half_frame = math.sqrt(3) * motion.max_linear_speed * motion.dt / 2
    if cfg.margin <= half_frame:
        raise ValueError(f"TrajectoryConfig.margin={cfg.margin} must exceed half a frame's largest displacement "
                         f"({half_frame:.3f} m for this MotionConfig)")


def _check_no_collision(scene: Scene, c2w: np.ndarray, cfg: TrajectoryConfig, motion: MotionConfig) -> None:
    """The sweep of ``move_chunk(..., scene)`` between all consecutive frames ``c2w (N, 4, 4)``,
    a few frames per query (small queries stay on torch's single-threaded path, which is
    much faster on a busy CPU). Raises if any touches: unreachable by construction."""
    starts, ends = c2w[:-1, :3, 3], c2w[1:, :3, 3]
    for i in range(0, len(starts), _SWEEP_FRAMES):
        hits = segment_collision(scene, starts[i : i + _SWEEP_FRAMES], ends[i : i + _SWEEP_FRAMES], motion.camera_radius)
        if hits.collided.any():
            step = (i + int(np.argmax(hits.collided))) // motion.frames_per_step
            raise RuntimeError(f"trajectory step {step} collided despite the look-ahead (scene seed {scene.seed}); "
                               f"increase TrajectoryConfig.margin (now {cfg.margin})")


def sample_start_pose(scene: Scene, rng: np.random.Generator, cfg: TrajectoryConfig | None = None,
                      motion: MotionConfig | None = None, max_tries: int = 4096) -> np.ndarray:
    """A start pose ``c2w (4, 4)`` float64: a free position (signed distance at least
    ``camera_radius + margin``) at a height in ``start_height_range``, a uniform heading and
    a small pitch (``|pitch| <= start_pitch_deg``), no roll.

    Candidates are drawn in batches; raises ``ValueError`` if none of ``max_tries`` is free.
    """
    cfg = cfg or TrajectoryConfig()
    motion = motion or MotionConfig()
    clearance = motion.camera_radius + cfg.margin
    extent = scene.arena_half - clearance
    if extent <= 0:
        raise ValueError(f"arena half-size {scene.arena_half} leaves no room for clearance {clearance}")
    batch = 64
    for _ in range(max(1, max_tries // batch)):
        xy = rng.uniform(-extent, extent, (batch, 2))
        z = rng.uniform(*cfg.start_height_range, (batch, 1))
        points = np.concatenate([xy, z], 1)
        free = signed_distance(scene, points) >= clearance
        if free.any():
            position = points[int(np.argmax(free))]
            yaw = rng.uniform(-math.pi, math.pi)
            pitch = math.radians(rng.uniform(-cfg.start_pitch_deg, cfg.start_pitch_deg))
            return pose_from_yaw_pitch(position, yaw, pitch)
    raise ValueError(f"no free start position in {max_tries} tries (scene seed {scene.seed}, clearance {clearance} m, "
                     f"start heights {cfg.start_height_range})")


def generate_trajectory(
    scene: Scene,
    num_steps: int,
    rng: np.random.Generator,
    cfg: TrajectoryConfig | None = None,
    motion: MotionConfig | None = None,
    start: np.ndarray | None = None,
) -> Trajectory:
    """Draw a smooth, collision-free trajectory of ``num_steps`` env steps in ``scene``.

    Every random draw comes from ``rng`` (same generator state, same trajectory). ``start``
    (``c2w (4, 4)``) defaults to :func:`sample_start_pose`; a given start must satisfy the
    bounds (clearance, height, pitch, roll) itself. ``c2w`` is the start pose followed by
    the ``move_chunk`` frames of each action, none of which collided (a ``RuntimeError``
    says otherwise, which the look-ahead makes unreachable).
    """
    cfg = cfg or TrajectoryConfig()
    motion = motion or MotionConfig()
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    _check_margin(cfg, motion)
    start = sample_start_pose(scene, rng, cfg, motion) if start is None else np.asarray(start, dtype=np.float64)
    if start.shape != (4, 4):
        raise ValueError(f"start must be a c2w of shape (4, 4), got {start.shape}")
    w = _Walker(scene, start, num_steps, rng, cfg, motion)
    if not w.admissible(w.pose[None]):
        raise ValueError(f"start pose at {start[:3, 3]} is outside the trajectory bounds (clearance, height, pitch, roll)")
    weights = cfg.mix.weights()
    out_and_back = _DRAWN.index("out_and_back")
    while w.remaining > 0:
        p = weights.copy()
        if w.remaining < 4:  # too short for an outward leg, a turn and a return
            p[out_and_back] = 0
        if p.sum() == 0:
            p[_DRAWN.index("turn")] = 1
        name = _DRAWN[w.rng.choice(len(_DRAWN), p=_normalised(p))]
        if name == "out_and_back":
            _out_and_back(w)
            continue
        steps = int(w.rng.integers(cfg.segment_steps[0], cfg.segment_steps[1] + 1))
        if name == "hold":
            _hold(w, steps)
            continue
        if not _run_behaviour(w, name, steps):
            _avoid(w)
    actions = np.stack(w.actions).astype(np.float32) if w.actions else np.zeros((0, 6), np.float32)
    c2w = np.concatenate(w.frames)
    _check_no_collision(scene, c2w, cfg, motion)
    return Trajectory(actions, c2w, tuple(w.labels), tuple(w.revisits))



# ------------------------------------------------------------------------- driving episodes
def driving_actions(index: int, steps: int, seed: int) -> np.ndarray:
    """Planar actions ``(steps, 2)`` ``[forward, yaw_rate]`` of driving episode ``index``:
    even episodes drive forward at full speed with a constant turn in [-0.15, 0.15] (into
    walls and objects), odd ones are smooth random (forward in [0, 1], turn rate in [-1, 1],
    Ornstein-Uhlenbeck with about 1 s of memory). Drawn from ``(seed, index, 2)``."""
    rng = np.random.default_rng([seed, index, 2])
    if index % 2 == 0:
        return np.tile([1.0, rng.uniform(-0.15, 0.15)], (steps, 1))
    out, x = np.zeros((steps, 2)), np.array([0.6, 0.0])
    theta, sigma = 0.25, np.array([0.25, 0.5])  # per 0.25 s step: about 1 s of memory
    for t in range(steps):
        x = x + theta * (np.array([0.6, 0.0]) - x) + sigma * rng.standard_normal(2)
        out[t] = np.clip(x, [0.0, -1.0], [1.0, 1.0])
    return out


def drive_trajectory(scene: Scene, start: np.ndarray, actions: np.ndarray, motion: MotionConfig | None = None,
                     rng: np.random.Generator | None = None) -> tuple[Trajectory, np.ndarray]:
    """Drive planar ``actions (S, 2)`` from ``start (4, 4)`` as ``SanaWM/ReferenceNav-v0``
    would: each step through :func:`move_chunk` with the scene's exact geometry, so the camera
    stops at walls and objects (it does not avoid them). With ``rng``, a bump-and-turn
    driver: two steps after a collision it turns in place (full rate, a random side) for 2-6
    steps, then goes on with ``actions``. Returns the trajectory (behaviour ``"drive"``; its
    actions are the ones taken) and which steps collided ``(S,)``."""
    motion = motion or MotionConfig()
    sweep = obstacle_sweep(scene)
    body = planar_to_body(np.asarray(actions, dtype=np.float64))
    poses, collided, pose = [np.asarray(start, dtype=np.float64)[None]], [], np.asarray(start, dtype=np.float64)
    turning, side = 0, 1.0
    for t in range(len(body)):
        if rng is not None and turning == 0 and len(collided) >= 2 and collided[-1] and collided[-2]:
            turning, side = int(rng.integers(2, 7)), float(rng.choice([-1.0, 1.0]))
        if turning:
            body[t] = planar_to_body(np.array([0.0, side]))
            turning -= 1
        step = move_chunk(pose, action_to_twist(body[t], motion), motion, sweep)
        poses.append(step.poses)
        collided.append(step.collided)
        pose = step.poses[-1]
    return (Trajectory(body.astype(np.float32), np.concatenate(poses), ("drive",) * len(body), ()),
            np.array(collided, bool))
