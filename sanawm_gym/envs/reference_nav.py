"""Point-goal navigation in the exactly rendered reference world."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from world_model.geometry import intrinsics_from_fov, pose_from_yaw_pitch
from sanawm_gym.kinematics import MotionConfig, action_to_twist, move_chunk
from sanawm_gym.envs.actions import make_action_space, to_body_action
from sanawm_gym.envs.checks import check_options, check_pose
from sanawm_gym.envs.snapshots import ReferenceSnapshot, read_snapshot, write_snapshot
from sanawm_gym.reference_world import SceneConfig, generate_scene, render
from sanawm_gym.reference_world.collision import obstacle_sweep
from sanawm_gym.tasks import (
    GOAL_OBS_HIGH,
    GOAL_OBS_LOW,
    PointGoalConfig,
    check_goal_placement,
    check_start_placement,
    goal_observation,
    sample_goal,
    score_step,
)

__all__ = ["ReferenceNavEnv"]

_RESET_OPTIONS = ("scene_seed", "pose", "goal")


class ReferenceNavEnv(gym.Env):
    """Point-goal navigation of a flying or ground camera in a procedural reference world.

    ## Description
    A camera moves through a procedural scene (an arena or rooms with textured walls and a
    dozen kinds of objects) and must reach a goal point. Each step holds the action for one
    chunk of K raw frames (K = 4 at 16 fps: 0.25 s), integrated per frame with the exact
    SE(3) exponential; the frames are rendered exactly by a ray caster. This is the ground
    truth the world-model env (``SanaWM/Nav-v0``) imitates, with the same spaces and task.

    ## Action Space
    ``Box(-1, 1, (6,), float32)``: a body twist ``[vx, vy, vz, wx, wy, wz]`` in the camera
    frame (x right, y down, z forward), scaled by ``max_linear_speed`` (1 m/s) and
    ``max_angular_speed`` (pi/2 rad/s). With ``action_mode="planar"`` (id
    ``SanaWM/ReferenceNavPlanar-v0``): ``Box(-1, 1, (2,))`` ``[forward, yaw_rate]``, positive
    yaw turning left. Out-of-range components are clipped to [-1, 1] and
    ``info["action_clipped"]`` is set; a non-finite value, a wrong shape or a non-numeric
    dtype raises ``ValueError``.

    ## Observation Space
    ``Dict``:

    | key    | space                                   | meaning                                   |
    |--------|-----------------------------------------|-------------------------------------------|
    | `rgb`  | ``Box(0, 255, (H, W, 3), uint8)``       | the view at the chunk's last frame        |
    | `goal` | ``Box([0,-1,-1,-1], [50,1,1,1], float32)`` | distance to the goal (m) and its unit direction in the camera frame |

    ## Rewards
    Per step: ``progress_weight * (previous distance - distance)`` minus ``step_cost``
    (0.01), minus ``collision_penalty`` (0.25) when an obstacle stopped the motion, plus
    ``success_bonus`` (10) on reaching the goal. Distances are Euclidean, camera centre to goal.

    ## Starting State
    A scene drawn from the reset seed (or ``scene_seed``), a start and a goal 2.5-8 m apart
    in the same connected free space, at a height of 0.8-1.6 m, with a random heading.

    ## Episode End
    Terminated when the camera is within ``goal_radius`` (0.5 m) of the goal. Truncated by
    the ``TimeLimit`` wrapper after ``max_episode_steps`` (200 steps = 50 s) when made with
    ``gym.make``. Collisions do not end the episode: the translation stops at the last free
    frame and the rotation continues.

    ## Arguments
    ``gym.make("SanaWM/ReferenceNav-v0", render_mode=None, height=64, width=64,
    fov_deg=90.0, action_mode="6dof", scene_seed=None, scene_config=None, motion=None,
    task=None, render_height=None, render_width=None)``. ``scene_seed`` fixes the scene for
    every episode; ``render_height/width`` set the size of ``render()`` frames (default: the
    observation size). Reset options: ``scene_seed`` (int), ``pose`` (4x4 rigid c2w with
    ``camera_radius`` of free space), ``goal`` (3 floats in free space, farther than
    ``goal_radius`` from the start); any other key, or a goal inside an obstacle or at the
    camera, raises ``ValueError``. ``reset(seed=s)`` gives the same scene, start pose and
    goal as ``SanaWM/Nav-v0`` reset with ``s``.

    ## Snapshots
    ``get_state()`` / ``set_state(snapshot)`` (a ``ReferenceSnapshot``: scene seed, pose,
    goal, counters, random generator) and ``save_state(path)`` / ``load_state(path)``
    (safetensors + JSON, no pickle), as in ``SanaWM/Nav-v0``, so planners treat both worlds
    alike.

    ``info`` holds ``pose`` (4x4 c2w, float64), ``chunk_poses`` (K x 4 x 4), ``goal``,
    ``distance``, ``collided``, ``success``, ``path_length``, ``action_clipped``,
    ``geodesic_distance`` (free-space shortest path at reset) and ``scene_seed``.

    ## Version History
    * v0: initial release.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        render_mode: str | None = None,
        height: int = 64,
        width: int = 64,
        fov_deg: float = 90.0,
        action_mode: str = "6dof",
        scene_seed: int | None = None,
        scene_config: SceneConfig | None = None,
        motion: MotionConfig | None = None,
        task: PointGoalConfig | None = None,
        render_height: int | None = None,
        render_width: int | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        render_height = height if render_height is None else render_height
        render_width = width if render_width is None else render_width
        for name, value in (("height", height), ("width", width), ("render_height", render_height),
                            ("render_width", render_width)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 8 <= value <= 1024:
                raise ValueError(f"{name} must be an integer in [8, 1024], got {value!r}")
        if isinstance(fov_deg, bool) or not isinstance(fov_deg, numbers.Real) or not 0 < fov_deg < 180:
            raise ValueError(f"fov_deg must be a number in (0, 180) degrees, got {fov_deg!r}")
        if scene_seed is not None and (isinstance(scene_seed, bool) or not isinstance(scene_seed, (int, np.integer))
                                       or scene_seed < 0):
            raise ValueError(f"scene_seed must be None or a non-negative integer, got {scene_seed!r}")
        for name, value, kind in (("scene_config", scene_config, SceneConfig), ("motion", motion, MotionConfig),
                                  ("task", task, PointGoalConfig)):
            if value is not None and not isinstance(value, kind):
                raise ValueError(f"{name} must be a {kind.__name__} or None, got {type(value).__name__}")
        self.render_mode = render_mode
        self.height, self.width = int(height), int(width)
        self.render_height = int(render_height)
        self.render_width = int(render_width)
        self.action_mode = action_mode
        self.fixed_scene_seed = scene_seed
        self.scene_config = scene_config or SceneConfig()
        self.motion = motion or MotionConfig()
        self.task = task or PointGoalConfig()
        self.intrinsics = intrinsics_from_fov(fov_deg, self.height, self.width).numpy()
        self.render_intrinsics = intrinsics_from_fov(fov_deg, self.render_height, self.render_width).numpy()
        self.action_space = make_action_space(action_mode)
        self.observation_space = spaces.Dict(
            {
                "rgb": spaces.Box(0, 255, (self.height, self.width, 3), np.uint8),
                "goal": spaces.Box(GOAL_OBS_LOW, GOAL_OBS_HIGH, dtype=np.float32),
            }
        )
        self.scene = None
        self._scene_seed: int | None = None
        self._frame: np.ndarray | None = None

    # ---------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = check_options(options, _RESET_OPTIONS)
        scene_seed = options.get("scene_seed", self.fixed_scene_seed)
        if scene_seed is None:
            scene_seed = int(self.np_random.integers(2**31 - 1))
        if isinstance(scene_seed, bool) or not isinstance(scene_seed, (int, np.integer)) or scene_seed < 0:
            raise ValueError(f"scene_seed must be a non-negative integer, got {scene_seed!r}")
        self._use_scene(int(scene_seed))
        sample = sample_goal(self.scene, self.np_random, self.task, self.motion.camera_radius)
        self.pose = pose_from_yaw_pitch(sample.start, sample.yaw, 0.0)
        self.goal = sample.goal
        self.geodesic_distance = sample.geodesic_distance
        if "pose" in options:
            self.pose = check_start_placement(check_pose(options["pose"]), self.scene, self.motion.camera_radius)
            self.geodesic_distance = float("nan")
        if "goal" in options:
            self.goal = check_goal_placement(options["goal"], self.pose[:3, 3], self.scene, self.task,
                                             self.motion.camera_radius)
            self.geodesic_distance = float("nan")
        self.distance = float(np.linalg.norm(self.goal - self.pose[:3, 3]))
        self.path_length = 0.0
        self.chunk_poses = np.repeat(self.pose[None], self.motion.frames_per_step, 0)  # (K, 4, 4) as after a step
        self._render_obs()
        info = self._info(collided=False, success=False, clipped=False)
        return self._obs(), info

    def step(self, action):
        if self.scene is None:
            raise RuntimeError("call reset() before step()")
        body, clipped = to_body_action(action, self.action_mode)
        motion = move_chunk(self.pose, action_to_twist(body, self.motion), self.motion, self._sweep)
        self.chunk_poses = motion.poses
        self.pose = motion.poses[-1]
        self.path_length += motion.distance
        outcome = score_step(self.task, self.distance, self.pose[:3, 3], self.goal, motion.collided)
        self.distance = outcome.distance
        self._render_obs()
        info = self._info(motion.collided, outcome.success, clipped)
        return self._obs(), outcome.reward, outcome.success, False, info

    def render(self):
        if self.render_mode != "rgb_array" or self.scene is None:
            return None
        if (self.render_height, self.render_width) == (self.height, self.width):
            return self._frame.copy()
        return render(self.scene, self.pose, self.render_intrinsics, self.render_height, self.render_width).rgb

    # ---------------------------------------------------------------------------- helpers
    def _render_obs(self) -> None:
        self._frame = render(self.scene, self.pose, self.intrinsics, self.height, self.width).rgb

    def _obs(self) -> dict[str, np.ndarray]:
        return {"rgb": self._frame.copy(), "goal": goal_observation(self.pose, self.goal)}

    def _info(self, collided: bool, success: bool, clipped: bool) -> dict[str, Any]:
        return {
            "pose": self.pose.copy(),
            "chunk_poses": self.chunk_poses.copy(),
            "goal": self.goal.copy(),
            "distance": self.distance,
            "collided": collided,
            "success": success,
            "path_length": self.path_length,
            "action_clipped": clipped,
            "geodesic_distance": self.geodesic_distance,
            "scene_seed": self._scene_seed,
        }

    def _use_scene(self, scene_seed: int) -> None:
        if self.scene is None or self._scene_seed != scene_seed:
            self.scene = generate_scene(scene_seed, self.scene_config)
            self._sweep = obstacle_sweep(self.scene)
            self._scene_seed = scene_seed

    # -------------------------------------------------------------------------- snapshots
    def get_state(self) -> ReferenceSnapshot:
        """A snapshot of the episode: scene seed, pose, goal, counters, random generator."""
        if self.scene is None:
            raise RuntimeError("call reset() before get_state()")
        return ReferenceSnapshot(self._scene_seed, self.pose.copy(), self.chunk_poses.copy(), self.goal.copy(),
                                 float(self.distance), float(self.path_length), float(self.geodesic_distance),
                                 self.np_random.bit_generator.state)

    def set_state(self, snapshot: ReferenceSnapshot) -> None:
        """Restore a snapshot of this env or another ``ReferenceNav`` env with the same
        scene config and resolution; the env's generator continues from the snapshot's."""
        if not isinstance(snapshot, ReferenceSnapshot):
            raise ValueError(f"set_state expects a ReferenceSnapshot from get_state() or load_state(), got "
                             f"{type(snapshot).__name__}")
        K = self.motion.frames_per_step
        pose, chunk, goal = (np.asarray(x, dtype=np.float64) for x in (snapshot.pose, snapshot.chunk_poses, snapshot.goal))
        if pose.shape != (4, 4) or chunk.shape != (K, 4, 4) or goal.shape != (3,):
            raise ValueError(f"snapshot pose / chunk_poses / goal must be (4, 4) / ({K}, 4, 4) / (3,), got "
                             f"{pose.shape} / {chunk.shape} / {goal.shape}")
        if not (np.isfinite(pose).all() and np.isfinite(chunk).all() and np.isfinite(goal).all()):
            raise ValueError("snapshot pose, chunk_poses and goal must be finite")
        check_pose(pose)
        if isinstance(snapshot.scene_seed, bool) or not isinstance(snapshot.scene_seed, (int, np.integer)) \
                or snapshot.scene_seed < 0:
            raise ValueError(f"snapshot scene_seed must be a non-negative integer, got {snapshot.scene_seed!r}")
        self._use_scene(int(snapshot.scene_seed))
        self.pose, self.chunk_poses, self.goal = pose.copy(), chunk.copy(), goal.copy()
        self.distance, self.path_length = float(snapshot.distance), float(snapshot.path_length)
        self.geodesic_distance = float(snapshot.geodesic_distance)
        rng = np.random.default_rng()
        rng.bit_generator.state = snapshot.np_random_state
        self._np_random = rng
        self._render_obs()

    def save_state(self, path: str | Path) -> Path:
        """Write :meth:`get_state` to ``<path>.json`` + ``<path>.safetensors`` (atomically)."""
        return write_snapshot(path, self.get_state(), "SanaWM/ReferenceNav-v0")

    def load_state(self, path: str | Path) -> None:
        """:meth:`set_state` from a file written by :meth:`save_state`."""
        self.set_state(read_snapshot(path, ReferenceSnapshot))
