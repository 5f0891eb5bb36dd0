"""Point-goal navigation in imagination: the world model is the simulator.

One batched core (:class:`NavCore`) steps N episodes with one model forward per chunk; the
single env (:class:`WorldModelNavEnv`, ``SanaWM/Nav-v0``) is the core with N = 1 and the
native vector env (:class:`WorldModelNavVectorEnv`, ``gym.make_vec(...,
vectorization_mode="vector_entry_point")``) the core with N rows and Gymnasium's
next-step autoreset. Both take one :class:`NavConfig`. The simulator state is the model's
recurrent state (fixed size), so ``get_state`` / ``set_state`` snapshot and restore an
episode cheaply, and ``save_state`` / ``load_state`` write and read it as files.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector.utils import batch_space

from sanawm_gym.depth_collision import SurfaceMemory, depth_points, surface_reach, surface_sweep
from sanawm_gym.envs.actions import ACTION_MODES, make_action_space, to_body_action
from sanawm_gym.envs.checks import check_image, check_options, check_pose
from sanawm_gym.envs.snapshots import NavSnapshot, read_snapshot, write_snapshot
from sanawm_gym.kinematics import MotionConfig, action_to_twist, look_around, move_chunk
from sanawm_gym.reference_world import SceneConfig, generate_scene, render
from sanawm_gym.tasks import (
    GOAL_OBS_HIGH,
    GOAL_OBS_LOW,
    PointGoalConfig,
    arena_bounds,
    check_goal_placement,
    check_start_placement,
    goal_observation,
    sample_goal,
    score_step,
)
from world_model import WorldModel
from world_model.geometry import integrate_twist, intrinsics_from_fov, pose_from_yaw_pitch
from world_model.memory import SceneMemory
from world_model.world_model import PRECISIONS, packaged_model, resolve_precision

__all__ = ["NavConfig", "NavCore", "NavSnapshot", "WorldModelNavEnv", "WorldModelNavVectorEnv", "inference_threads",
           "load_world_model"]

RESET_OPTIONS = ("scene_seed", "image", "context", "pose", "goal", "bounds")
OBS_MODES = ("frame", "chunk")
_MODEL_CACHE: dict[str, Any] = {}


def load_world_model(model=None) -> WorldModel:
    """``model``: a ``WorldModel``, a checkpoint folder, the name of a packaged checkpoint
    (``"default"``, ``"teacher"``: :data:`~world_model.world_model.PACKAGED_MODELS`), or None
    for the default (each loaded once per process and shared by every env)."""
    if isinstance(model, WorldModel):
        return model
    named = packaged_model(model)
    key = f"packaged:{named}" if named is not None else str(Path(model).resolve())
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = WorldModel.from_pretrained(model)
    return _MODEL_CACHE[key]


def inference_threads(num_envs: int, threads: int | None = None) -> int:
    """Torch threads for stepping ``num_envs`` envs: ``threads`` if given, else 1 below 16
    envs and every CPU this process may use from 16 on. Measured on a busy 2-core machine
    (shipped model, float32, one step): 1 env 143 ms on 1 thread vs 2777 ms on 2 (the
    threads wait for a core that another process holds), 16 envs 1286 ms vs 932 ms."""
    if threads is not None:
        return threads
    if num_envs < 16:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class NavConfig:
    """Everything about a world-model navigation env but the model itself. Every field is
    also a keyword of ``gym.make("SanaWM/Nav-v0", ...)`` and ``gym.make_vec``."""

    action_mode: str = "6dof"
    """``"6dof"``: body twist ``[vx, vy, vz, wx, wy, wz]``; ``"planar"``: ``[forward, yaw_rate]``."""
    obs_mode: str = "frame"
    """``"frame"``: ``rgb`` is the chunk's last frame ``(H, W, 3)``; ``"chunk"``: all K ``(K, H, W, 3)``."""
    fov_deg: float = 90.0
    """Horizontal field of view of the camera, degrees in (0, 180)."""
    scene_config: SceneConfig = field(default_factory=SceneConfig)
    """Procedural scenes of seeded episodes (the reference world's)."""
    motion: MotionConfig = field(default_factory=MotionConfig)
    """Frame rate, frames per step, speed limits, camera radius."""
    task: PointGoalConfig = field(default_factory=PointGoalConfig)
    """Goal sampling, success radius, rewards."""
    reference_frames: bool = False
    """Add ``info["reference_rgb"]``, the exact render of the same pose (seeded scenes only)."""
    timing_info: bool = False
    """Add ``info["generation_time_s"]`` (off by default: a wall-clock time makes two
    identically seeded runs' infos differ, which ``check_env`` rejects)."""
    precision: str = "auto"
    """``"auto"`` (bfloat16 where the device has bf16 matmul in hardware: AMX or AVX-512 BF16; else float32),
    ``"float32"``, ``"bfloat16"``, or a low-bit backbone: ``"nvfp4"`` (4-bit weights and
    activations) or ``"int8"`` (8-bit weights), camera conditioning and autoencoder in
    float32. On CPU the low-bit modes emulate the format's arithmetic (a fidelity
    measurement, not a speed-up; :mod:`world_model.quantization`)."""
    compile: bool = False
    """Run the model's passes through ``torch.compile`` (first step per batch size builds it)."""
    threads: int | None = None
    """Torch threads (process-wide, set when the env is built); ``None``: 1 below 16 envs,
    all the process's CPUs from 16 (see :func:`inference_threads`)."""
    context_seconds: float = 4.0
    """A seeded reset first shows the model a look around of this length, rendered by the
    reference world and ending at the start pose (:func:`~sanawm_gym.kinematics.look_around`;
    4 s, the default: a full turn), committed into the state as clean context; 0: the first
    frame alone. Chosen by measurement (docs/RESULTS.md): a full turn is neutral for the
    imagined frames (-0.3 to +0.1 dB on the fidelity suite's still and revisit sets) and its
    exact depth is what lets predicted collisions find the walls (held-out recall 0.91
    against 0.79 without)."""
    depth: bool = False
    """Add the ``depth`` observation: float32 z-depth in metres, ``(H, W)`` (``(K, H, W)`` in
    chunk mode), of each generated chunk as the model's depth head predicts it (the exact
    render's after a seeded reset, as for ``rgb``); sky is the head's ``max_depth``."""
    collisions: bool | None = None
    """Predict collisions in imagination (:mod:`sanawm_gym.depth_collision`): the reference
    world's camera-sphere rule against the surfaces known at reset (the exact depth of the
    frames a seeded episode starts from, its look-around context included, kept for the
    episode) and those the last generated chunk's depth shows; translation stops,
    ``info["collided"]`` is set and the collision penalty applies. ``None`` (the default):
    on where the model has a depth head (the packaged ones have); ``True`` needs one. On 48
    held-out driving episodes with the default 4 s look-around, the packaged model's
    predictions reach a recall of 0.91 and a precision of 0.92 (without the look-around
    0.79 / 0.88; from the last chunk's depth alone 0.29 / 0.77; docs/RESULTS.md)."""
    scene_memory: bool | None = None
    """Hold what the episode was shown: the frames a reset starts from (the look-around
    context, or a user's image / clip) are kept with their depth (the exact render's for a
    seeded scene, else the depth head's) as coloured surface points
    (:class:`~world_model.memory.SceneMemory`), and every generated chunk is composited with
    what they show from its poses, then committed in place of the raw sample
    (:func:`~world_model.memory.guide_chunk`): a place seen at the start keeps its objects
    and texture when the camera stands still or returns, and the model fills in only what
    was never seen. ``None`` (the default): on where the model has a depth head (the
    packaged ones have); ``True`` needs one. On the fidelity suite (held out) it takes the
    still camera from 22.8 to 32.3 dB at 2 s, the revisit from 21.5 to 26.0 dB and motion
    after the look-around from 22.6 / 18.8 to 28.0 / 26.0 dB at 2 / 10 s, as sharp as the
    reference; it costs a third of the frames per second at one env (43 -> 28, still real
    time; docs/RESULTS.md). It holds what the start showed, not what the model imagines
    beyond it."""
    collision_points: int = 1
    """Surface points (one per 5 cm voxel, from depth pixels sampled every second pixel)
    that must come within the camera radius of a frame's path for a predicted collision
    (1: any; chosen on training seeds, confirmed held out: docs/RESULTS.md)."""

    def __post_init__(self) -> None:
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {sorted(ACTION_MODES)}, got {self.action_mode!r}")
        if self.obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {self.obs_mode!r}")
        if isinstance(self.fov_deg, bool) or not isinstance(self.fov_deg, numbers.Real) or not 0 < self.fov_deg < 180:
            raise ValueError(f"fov_deg must be a number in (0, 180) degrees, got {self.fov_deg!r}")
        for name, kind in (("scene_config", SceneConfig), ("motion", MotionConfig), ("task", PointGoalConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if isinstance(self.collision_points, bool) or not isinstance(self.collision_points, numbers.Integral) or \
                self.collision_points < 1:
            raise ValueError(f"collision_points must be an integer >= 1, got {self.collision_points!r}")
        for name in ("reference_frames", "timing_info", "compile", "depth"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("collisions", "scene_memory"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True, False or None (on where the model has a depth head), got "
                                 f"{getattr(self, name)!r}")
        if isinstance(self.context_seconds, bool) or not isinstance(self.context_seconds, numbers.Real) or \
                not 0 <= self.context_seconds <= 30:
            raise ValueError(f"context_seconds must be a number in [0, 30], got {self.context_seconds!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, numbers.Integral)
                                         or self.threads < 1):
            raise ValueError(f"threads must be None or an integer >= 1, got {self.threads!r}")

    @classmethod
    def make(cls, config: "NavConfig | None" = None, **overrides) -> "NavConfig":
        """``config`` (default: the defaults) with ``overrides`` (field names) replaced."""
        if config is not None and not isinstance(config, cls):
            raise ValueError(f"config must be a NavConfig, got {type(config).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown argument(s) {unknown} for SanaWM/Nav-v0; accepted: model, render_mode, config, "
                            f"{', '.join(sorted(names))}")
        return dataclasses.replace(config or cls(), **overrides)


def _count(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class NavCore:
    """N point-goal episodes in imagination, stepped together.

    Rows have their own numpy generator (scenes, goals) and torch generator (model noise),
    so a row evolves the same whether it runs alone or in a batch (its frames up to one grey
    level: a batched matmul may sum in another order, as with another thread count).
    """

    def __init__(self, num_envs: int, config: NavConfig, model=None):
        self.num_envs = _count("num_envs", num_envs)
        self.config = cfg = config
        torch.set_num_threads(inference_threads(self.num_envs, cfg.threads))
        self.model = load_world_model(model)
        self.precision = resolve_precision(cfg.precision)
        self.compile = cfg.compile
        self.action_mode, self.obs_mode = cfg.action_mode, cfg.obs_mode
        self.motion, self.scene_config, self.task = cfg.motion, cfg.scene_config, cfg.task
        if self.motion.frames_per_step != self.model.config.frames_per_latent:
            raise ValueError(f"motion.frames_per_step={self.motion.frames_per_step} must equal the model's "
                             f"frames_per_latent={self.model.config.frames_per_latent}")
        self.reference_frames, self.timing_info = cfg.reference_frames, cfg.timing_info
        self.last_generation_time_s = 0.0
        self.height, self.width = self.model.image_hw
        self.intrinsics = intrinsics_from_fov(cfg.fov_deg, self.height, self.width).numpy()
        self.action_space = make_action_space(cfg.action_mode)
        frame = (self.height, self.width, 3)
        rgb_shape = frame if cfg.obs_mode == "frame" else (self.motion.frames_per_step, *frame)
        has_depth = self.model.has_depth
        if (cfg.depth or cfg.collisions or cfg.scene_memory) and not has_depth:
            raise ValueError("depth=True, collisions=True and scene_memory=True need a world model with a depth head (a "
                             "depth/ folder in its checkpoint; the packaged models have one)")
        self.depth_obs = cfg.depth
        self.collisions = has_depth if cfg.collisions is None else cfg.collisions
        """Whether collisions are predicted (``NavConfig.collisions`` resolved for this model)."""
        self.max_depth = float(self.model.depth_head.config.max_depth) if has_depth else np.inf
        spaces_ = {
            "rgb": spaces.Box(0, 255, rgb_shape, np.uint8),
            "goal": spaces.Box(GOAL_OBS_LOW, GOAL_OBS_HIGH, dtype=np.float32),
        }
        if cfg.depth:
            spaces_["depth"] = spaces.Box(0.0, self.max_depth, rgb_shape[:-1], np.float32)
        self.observation_space = spaces.Dict(spaces_)
        N, K = self.num_envs, self.motion.frames_per_step
        self.pose = np.tile(np.eye(4), (N, 1, 1))
        self.chunk_poses = np.tile(np.eye(4), (N, K, 1, 1))
        self.goal = np.zeros((N, 3))
        self.bounds = np.full((N, 2, 3), np.nan)
        self.distance = np.zeros(N)
        self.path_length = np.zeros(N)
        self.steps = np.zeros(N, dtype=np.int64)
        self.geodesic = np.full(N, np.nan)
        self.scene_seed: list[int | None] = [None] * N
        self.scenes: list = [None] * N
        self.rngs: list[np.random.Generator | None] = [None] * N
        self.torch_gens = [torch.Generator() for _ in range(N)]
        self.frames = np.zeros((N, K, *frame), np.uint8)
        self.scene_memory = has_depth if cfg.scene_memory is None else cfg.scene_memory
        """Whether the scene memory guides the chunks (``NavConfig.scene_memory`` resolved for this model)."""
        self.needs_depth = cfg.depth or self.collisions or self.scene_memory
        self.memories = [SceneMemory() for _ in range(N)]
        """Per row (with ``scene_memory``), what the episode's reset showed, as coloured surface points."""
        self.depth = np.full((N, K, self.height, self.width), self.max_depth if has_depth else 0.0, np.float32)
        """``(N, K, H, W)`` the last chunk's depth (metres), when the env uses depth."""
        self.surfaces = [SurfaceMemory() for _ in range(N)]
        """Per row, the surfaces known at reset (with ``collisions``): the depth of the frames the
        episode started from, kept for the episode (:class:`~sanawm_gym.depth_collision.SurfaceMemory`)."""
        self.collided = np.zeros(N, bool)
        self.state = None

    # ---------------------------------------------------------------------------- reset
    def reset_rows(self, rows: list[int], rngs: list[np.random.Generator], options: list[dict | None]) -> None:
        """Start new episodes in ``rows``, each drawing from its ``rng`` (kept as the row's):
        first the scene and the start / goal pair, in the order ``SanaWM/ReferenceNav-v0``
        draws them (so both worlds reset with one seed give the same episode), then the
        seed of the row's model noise."""
        clips, clip_poses, exact = [], [], []
        K = self.motion.frames_per_step
        for r, rng, opts in zip(rows, rngs, options):
            opts = check_options(opts, RESET_OPTIONS)
            self.rngs[r] = rng
            clip, c2w, goal, bounds, depth = self._start(r, rng, opts)  # (1 + K n, H, W, 3), (1 + K n, 4, 4)
            exact.append(depth)
            self.collided[r] = False
            self.torch_gens[r].manual_seed(int(rng.integers(2**63 - 1)))
            pose = c2w[-1]
            self.pose[r], self.goal[r], self.bounds[r] = pose, goal, bounds
            self.chunk_poses[r] = c2w[-K:] if len(c2w) >= K else pose
            self.distance[r] = float(np.linalg.norm(goal - pose[:3, 3]))
            self.path_length[r], self.steps[r] = 0.0, 0
            # The observation at reset is the true last frame (in chunk mode, the clip's last K).
            self.frames[r] = clip[-K:] if len(clip) >= K else clip[-1:]
            clips.append(clip)
            clip_poses.append(c2w)
        if self.state is None and len(rows) != self.num_envs:
            raise RuntimeError("the first reset must reset every row")
        Ks = np.repeat(self.intrinsics[None], len(rows), 0)
        # Depth at reset: the exact render's for a seeded scene (as the rgb is), else the depth head's.
        predict = self.needs_depth and any(d is None for d in exact)
        if all(len(c) == 1 for c in clips):  # one batched encode of the first frames
            out = self.model.reset_rows(self.state, torch.as_tensor(rows, dtype=torch.long),
                                        np.stack([c[0] for c in clips]), np.stack([c[0] for c in clip_poses]),
                                        Ks, self.precision, depth=predict)
            self.state = out[1]
            for i, r in enumerate(rows):
                self._set_reset_depth(r, exact[i], out[2][i : i + 1] if predict else None, clip_poses[i], clips[i])
            return
        for i, (r, clip, c2w) in enumerate(zip(rows, clips, clip_poses)):  # context clips, of any lengths
            frames = clip[None] if len(clip) > 1 else clip
            poses = c2w[None] if len(clip) > 1 else c2w
            out = self.model.init_state(frames, poses, Ks[i : i + 1], self.precision, depth=predict)
            row_state = out[1]
            if self.state is None:  # the first reset: every row starts as a copy, then gets its own
                self.state = row_state.select([0] * self.num_envs)
            else:
                self.state = self.state.with_rows([r], row_state)
            self._set_reset_depth(r, exact[i], out[2][0] if predict else None, clip_poses[i], clip)

    def _set_reset_depth(self, r: int, exact: np.ndarray | None, predicted: np.ndarray | None,
                         c2w: np.ndarray, clip: np.ndarray) -> None:
        """Row ``r``'s depth after a reset: the last K frames of ``exact`` (the render's) or of
        ``predicted`` (the head's), the first frame repeated when there are fewer; with
        ``collisions``, all of the frames' surfaces (taken at ``c2w (1 + K n, 4, 4)``) become
        the row's surface memory; with ``scene_memory``, the frames ``clip (1 + K n, H, W, 3)``
        with that depth become its scene memory."""
        if not self.needs_depth:
            return
        d = exact if exact is not None else predicted
        d = np.minimum(np.nan_to_num(d, posinf=self.max_depth), self.max_depth)
        K = self.motion.frames_per_step
        self.depth[r] = d[-K:] if len(d) >= K else np.repeat(d[-1:], K, 0)
        if self.collisions:
            self.surfaces[r].clear()
            self.surfaces[r].add(depth_points(d, c2w, self.intrinsics, 2, self.max_depth))
        if self.scene_memory:
            self.memories[r].clear()
            self.memories[r].add(clip, d, c2w, self.intrinsics, self.max_depth)

    def _start(self, r: int, rng: np.random.Generator, opts: dict) -> tuple[np.ndarray, ...]:
        """``(clip (1 + K n, H, W, 3), its poses (1 + K n, 4, 4), goal, bounds, depth)`` of a
        new episode (``depth``: the render's ``(1 + K n, H, W)`` for a seeded scene, else
        None); the clip's last frame and pose are the start."""
        radius = self.motion.camera_radius
        if "image" in opts or "context" in opts:
            if "image" in opts and "context" in opts:
                raise ValueError("reset options 'image' and 'context' exclude each other (a context clip ends with the "
                                 "first frame)")
            if "scene_seed" in opts:
                raise ValueError("reset options 'image' / 'context' and 'scene_seed' exclude each other")
            if "context" in opts:
                if "pose" in opts:
                    raise ValueError("reset option 'pose' does not go with 'context': the clip's last pose is the start")
                clip, c2w = self._check_context(opts["context"])
            else:
                pose = check_pose(opts["pose"]) if "pose" in opts else pose_from_yaw_pitch(np.array([0.0, 0.0, 1.2]),
                                                                                           0.0, 0.0)
                clip, c2w = check_image(opts["image"], self.height, self.width)[None], pose[None]
            pose = c2w[-1]
            goal = opts["goal"] if "goal" in opts else pose[:3, 3] + 4.0 * pose[:3, 2]
            goal = check_goal_placement(goal, pose[:3, 3], None, self.task, radius)
            bounds = _check_bounds(opts.get("bounds"), pose[:3, 3])
            self.scenes[r], self.scene_seed[r], self.geodesic[r] = None, None, np.nan
            return clip, c2w, goal, bounds, None
        if "bounds" in opts:
            raise ValueError("reset option 'bounds' goes with 'image' or 'context' (a seeded scene's bounds are its arena)")
        seed = opts.get("scene_seed")
        if seed is None:
            seed = int(rng.integers(2**31 - 1))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"scene_seed must be a non-negative integer, got {seed!r}")
        if self.scene_seed[r] != int(seed) or self.scenes[r] is None:
            self.scenes[r] = generate_scene(int(seed), self.scene_config)
        self.scene_seed[r] = int(seed)
        scene = self.scenes[r]
        sample = sample_goal(scene, rng, self.task, radius)
        pose = pose_from_yaw_pitch(sample.start, sample.yaw, 0.0)
        goal, self.geodesic[r] = sample.goal, sample.geodesic_distance
        if "pose" in opts:
            pose, self.geodesic[r] = check_start_placement(check_pose(opts["pose"]), scene, radius), np.nan
        if "goal" in opts:
            goal, self.geodesic[r] = check_goal_placement(opts["goal"], pose[:3, 3], scene, self.task, radius), np.nan
        c2w = look_around(pose, self.config.context_seconds, self.motion.fps, self.motion.frames_per_step)
        out = render(scene, c2w, self.intrinsics, self.height, self.width)
        return np.asarray(out.rgb), c2w, goal, arena_bounds(scene, radius), np.asarray(out.depth)

    def _check_context(self, context) -> tuple[np.ndarray, np.ndarray]:
        """Reset option ``context``: ``{"frames": uint8 (1 + K n, H, W, 3), "c2w": (1 + K n, 4, 4)}``."""
        K = self.motion.frames_per_step
        if not isinstance(context, dict) or set(context) != {"frames", "c2w"}:
            raise ValueError(f"reset option 'context' must be a dict {{'frames': uint8 (1 + {K} n, {self.height}, "
                             f"{self.width}, 3), 'c2w': (1 + {K} n, 4, 4)}}, got {type(context).__name__}")
        frames = np.asarray(context["frames"])
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) or \
                (frames.shape[0] - 1) % K:
            raise ValueError(f"reset option 'context': frames must be uint8 (1 + {K} n, {self.height}, {self.width}, 3), "
                             f"got {frames.dtype} {frames.shape}")
        c2w = np.asarray(context["c2w"], dtype=np.float64)
        if c2w.shape != (frames.shape[0], 4, 4):
            raise ValueError(f"reset option 'context': c2w must be ({frames.shape[0]}, 4, 4), one pose per frame, "
                             f"got {c2w.shape}")
        return frames, np.stack([check_pose(p) for p in c2w])

    # ----------------------------------------------------------------------------- step
    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Step every row (``active`` False: the row is stepped with a zero action and its
        noise is not drawn: the caller is about to reset it). Returns per-row arrays."""
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        N = self.num_envs
        active = np.ones(N, bool) if active is None else active
        body, clipped = np.zeros((N, 6)), np.zeros(N, bool)
        for r in range(N):
            if active[r]:
                body[r], clipped[r] = to_body_action(actions[r], self.action_mode)
        twist = action_to_twist(body, self.motion)
        chunk = integrate_twist(self.pose, twist, self.motion.dt, self.motion.frames_per_step)  # (N, K, 4, 4)
        collided = np.zeros(N, bool)
        if self.collisions:  # the reference world's rule, against what reset showed and the last chunk shows
            reach = surface_reach(self.motion)
            for r in np.flatnonzero(active & (np.abs(body[:, :3]).sum(1) > 0)):
                sweep = surface_sweep(self.surfaces[r], self.depth[r], self.chunk_poses[r], self.intrinsics,
                                      self.pose[r, :3, 3], reach, self.config.collision_points, self.max_depth)
                motion = move_chunk(self.pose[r], twist[r], self.motion, sweep)
                chunk[r], collided[r] = motion.poses, motion.collided
        noise = torch.cat([torch.randn(self.model.noise_shape(1), generator=g) if a else torch.zeros(self.model.noise_shape(1))
                           for g, a in zip(self.torch_gens, active)])
        t0 = time.perf_counter()
        out = self.model.step(self.state, chunk, noise=noise, precision=self.precision, compile=self.compile,
                              depth=self.needs_depth, memory=self.memories if self.scene_memory else None,
                              previous=self.frames[:, -1])
        frames, self.state = out[0], out[1]
        if self.needs_depth:
            self.depth = out[2]
        seconds = time.perf_counter() - t0
        self.last_generation_time_s = seconds
        prev = self.distance.copy()
        moved = np.linalg.norm(np.diff(np.concatenate([self.pose[:, None, :3, 3], chunk[:, :, :3, 3]], 1), axis=1), axis=-1).sum(1)
        self.pose, self.chunk_poses, self.frames = chunk[:, -1], chunk, frames
        self.path_length += moved
        self.steps += 1
        centres = chunk[:, :, :3, 3]  # (N, K, 3)
        with np.errstate(invalid="ignore"):  # NaN bounds (none set) compare False
            outside = ((centres < self.bounds[:, None, 0]) | (centres > self.bounds[:, None, 1])).any((1, 2))
        reward, success = np.zeros(N), np.zeros(N, bool)
        self.collided = collided
        for r in range(N):
            out = score_step(self.task, prev[r], self.pose[r, :3, 3], self.goal[r], collided=bool(collided[r]))
            reward[r], self.distance[r], success[r] = out.reward, out.distance, out.success
        outside &= ~success  # the reference world's camera would have stopped at the bound, at the goal
        reward -= self.task.collision_penalty * outside
        return {"reward": reward, "success": success, "out_of_bounds": outside & active, "clipped": clipped,
                "collided": collided, "seconds": np.full(N, seconds / N)}

    # -------------------------------------------------------------------------- outputs
    def observation(self, r: int) -> dict[str, np.ndarray]:
        rgb = self.frames[r, -1] if self.obs_mode == "frame" else self.frames[r]
        obs = {"rgb": rgb.copy(), "goal": goal_observation(self.pose[r], self.goal[r])}
        if self.depth_obs:
            obs["depth"] = (self.depth[r, -1] if self.obs_mode == "frame" else self.depth[r]).copy()
        return obs

    def info(self, r: int, success: bool = False, clipped: bool = False, seconds: float = 0.0,
             out_of_bounds: bool = False) -> dict[str, Any]:
        info = {
            "pose": self.pose[r].copy(),
            "chunk_poses": self.chunk_poses[r].copy(),
            "goal": self.goal[r].copy(),
            "distance": float(self.distance[r]),
            "collided": bool(self.collided[r]),
            "out_of_bounds": bool(out_of_bounds),
            "success": bool(success),
            "path_length": float(self.path_length[r]),
            "action_clipped": bool(clipped),
            "geodesic_distance": float(self.geodesic[r]),
            "scene_seed": self.scene_seed[r],
        }
        if self.timing_info:
            info["generation_time_s"] = float(seconds)
        if self.reference_frames and self.scenes[r] is not None:
            info["reference_rgb"] = render(self.scenes[r], self.pose[r], self.intrinsics, self.height, self.width).rgb
        return info

    # ------------------------------------------------------------------------ snapshots
    def get_row(self, r: int) -> NavSnapshot:
        if self.state is None:
            raise RuntimeError("call reset() before get_state()")
        return NavSnapshot(self.state.select([r]), self.pose[r].copy(), self.chunk_poses[r].copy(), self.goal[r].copy(),
                           self.bounds[r].copy(), float(self.distance[r]), float(self.path_length[r]),
                           float(self.geodesic[r]), int(self.steps[r]), self.scene_seed[r],
                           self.rngs[r].bit_generator.state, self.torch_gens[r].get_state(), self.frames[r].copy(),
                           self.depth[r].copy() if self.needs_depth else None,
                           self.surfaces[r].state() if self.collisions else None,
                           self.memories[r].state() if self.scene_memory else None)

    def set_row(self, r: int, snap: NavSnapshot) -> None:
        if not isinstance(snap, NavSnapshot):
            raise ValueError(f"set_state expects a NavSnapshot from get_state() or load_state(), got {type(snap).__name__}")
        if self.state is None:
            raise RuntimeError("call reset() once before set_state() (it allocates the model state)")
        self._check_snapshot(snap)
        self.state = self.state.with_rows([r], snap.world)
        self.pose[r], self.chunk_poses[r], self.goal[r], self.bounds[r] = snap.pose, snap.chunk_poses, snap.goal, snap.bounds
        self.frames[r] = snap.frames
        self.collided[r] = False
        if self.needs_depth:  # a snapshot of an env without depth: nothing known in view until the next step
            self.depth[r] = snap.depth if snap.depth is not None else self.max_depth
        if self.collisions:  # ... and no surfaces known from the reset
            self.surfaces[r].clear()
            if snap.surface is not None:
                self.surfaces[r].restore(snap.surface)
        if self.scene_memory:  # a snapshot without one: nothing held, the model alone
            self.memories[r].clear()
            if snap.scene_memory is not None:
                self.memories[r].restore(snap.scene_memory)
        self.distance[r], self.path_length[r], self.steps[r] = snap.distance, snap.path_length, snap.steps
        self.geodesic[r] = snap.geodesic_distance
        if snap.scene_seed is not None and (snap.scene_seed != self.scene_seed[r] or self.scenes[r] is None):
            self.scenes[r] = generate_scene(snap.scene_seed, self.scene_config)
        elif snap.scene_seed is None:
            self.scenes[r] = None
        self.scene_seed[r] = snap.scene_seed
        if self.rngs[r] is None:
            self.rngs[r] = np.random.default_rng()
        self.rngs[r].bit_generator.state = snap.np_random_state
        self.torch_gens[r].set_state(snap.torch_generator_state)

    def _check_snapshot(self, snap: NavSnapshot) -> None:
        """Raise ``ValueError`` naming what does not fit this env (the model state is checked
        by :meth:`WorldState.check_like <world_model.WorldState.check_like>`)."""
        if snap.world.batch_size != 1:
            raise ValueError(f"a snapshot holds one row of model state, this one holds {snap.world.batch_size}")
        self.state.check_like(snap.world, rows_must_match=False)
        K = self.motion.frames_per_step
        if snap.frames.shape != (K, self.height, self.width, 3) or snap.frames.dtype != np.uint8:
            raise ValueError(f"snapshot frames are {snap.frames.dtype} {snap.frames.shape}, this env's are uint8 "
                             f"{(K, self.height, self.width, 3)} (another resolution or frames per step)")
        if not np.allclose(snap.world.intrinsics[0].numpy(), self.intrinsics):
            raise ValueError("the snapshot's intrinsics differ from this env's (another fov_deg or resolution): "
                             f"{snap.world.intrinsics[0].numpy().round(3).tolist()} vs {self.intrinsics.round(3).tolist()}")
        for name in ("pose", "chunk_poses", "goal"):
            if not np.isfinite(getattr(snap, name)).all():
                raise ValueError(f"snapshot {name} holds non-finite values")
        if snap.depth is not None and (snap.depth.shape != (K, self.height, self.width) or
                                       not np.isfinite(snap.depth).all() or (snap.depth < 0).any()):
            raise ValueError(f"snapshot depth must be finite non-negative float32 {(K, self.height, self.width)}, got "
                             f"{snap.depth.dtype} {snap.depth.shape}")
        if snap.surface is not None:
            SurfaceMemory().restore(snap.surface)  # raises ValueError naming the problem
        if snap.scene_memory is not None:
            SceneMemory().restore(snap.scene_memory)  # likewise
        if snap.pose.shape != (4, 4) or snap.chunk_poses.shape != (K, 4, 4) or snap.goal.shape != (3,):
            raise ValueError("snapshot pose / chunk_poses / goal have the wrong shapes: "
                             f"{snap.pose.shape}, {snap.chunk_poses.shape}, {snap.goal.shape}")

    def save_row(self, r: int, path: str | Path, env_id: str) -> Path:
        return write_snapshot(path, self.get_row(r), env_id)

    def load_row(self, r: int, path: str | Path) -> None:
        if self.state is None:
            raise RuntimeError("call reset() once before load_state() (it allocates the model state)")
        self.set_row(r, read_snapshot(path, NavSnapshot, like=self.state))


def _check_bounds(bounds, start: np.ndarray) -> np.ndarray:
    """Reset option ``bounds``: ``{"low": (x, y, z), "high": (x, y, z)}`` around the start,
    or None (unbounded) -> ``(2, 3)`` (NaN where unbounded)."""
    if bounds is None:
        return np.full((2, 3), np.nan)
    if not isinstance(bounds, dict) or set(bounds) != {"low", "high"}:
        raise ValueError(f"reset option 'bounds' must be a dict {{'low': (x, y, z), 'high': (x, y, z)}} in metres, "
                         f"got {bounds!r}")
    box = np.array([np.asarray(bounds["low"], dtype=np.float64), np.asarray(bounds["high"], dtype=np.float64)])
    if box.shape != (2, 3) or not np.isfinite(box).all() or not (box[0] < box[1]).all():
        raise ValueError(f"reset option 'bounds' needs finite low < high per axis, got {bounds!r}")
    if ((start < box[0]) | (start > box[1])).any():
        raise ValueError(f"reset option 'bounds' must contain the start position {start.round(3).tolist()}, got {bounds!r}")
    return box


_DOC_SECTIONS = """
    ## Action Space
    As ``SanaWM/ReferenceNav-v0``: ``Box(-1, 1, (6,))`` body twist ``[vx, vy, vz, wx, wy,
    wz]`` (OpenCV camera frame), or ``Box(-1, 1, (2,))`` ``[forward, yaw_rate]`` with
    ``action_mode="planar"`` (``SanaWM/NavPlanar-v0``). Out-of-range values are clipped
    (``info["action_clipped"]``); non-finite values, wrong shapes or dtypes raise ``ValueError``.

    ## Observation Space
    ``Dict``: ``rgb`` ``Box(0, 255, (H, W, 3), uint8)``, the last generated frame of the
    chunk (``obs_mode="chunk"``: all K frames, ``(K, H, W, 3)``); ``goal``
    ``Box([0,-1,-1,-1], [50,1,1,1], float32)``, distance to the goal and its direction in
    the camera frame. H x W is the model's frame size (64 x 64 for the shipped model).
    With ``depth=True`` also ``depth`` ``Box(0, max_depth, (H, W), float32)`` (chunk mode:
    ``(K, H, W)``): z-depth in metres of the generated chunk, **a prediction** of the
    model's depth head from the same latent as the colour (the exact render's after a
    seeded reset); sky reads ``max_depth`` (24 m for the packaged head).

    ## Rewards
    As the reference env: progress toward the goal, minus a step cost, plus a success bonus,
    minus ``collision_penalty`` on a collision. **Collisions are predicted** (``collisions``,
    on by default where the model has a depth head): the reference world's rule (the camera
    is a sphere of ``camera_radius``; the translation stops at the first frame whose motion
    would touch, the rotation goes on) against the surfaces the episode knows: those its
    start showed (for a seeded scene the exact depth of the first frame and of the
    look-around context; for a user's image or clip the depth head's reading of it), kept
    for the episode, and those the model's depth head reads in the last generated chunk. So
    walls and objects seen at the start or in view stop the camera; what neither showed is
    not known, and what only imagination shows is only as right as the imagined depth
    (measured recall and precision: docs/RESULTS.md). Distances are Euclidean on the pose, not geodesic in the imagined
    scene. Leaving the task's bounds (see Episode End) costs ``collision_penalty`` and ends
    the episode.

    ## Starting State
    ``reset(seed=...)`` draws a scene and a start/goal pair exactly as
    ``SanaWM/ReferenceNav-v0`` reset with the same seed does (same scene, start pose and
    goal), renders the first frame with the reference world and encodes it into a fresh
    model state; the first observation is that exact frame. Options: ``scene_seed``;
    ``pose`` (4x4 rigid c2w with ``camera_radius`` of free space), ``goal`` (3 floats in
    free space, farther than ``goal_radius`` from the start; else ``ValueError``).
    ``reset(options={"image": uint8 (H, W, 3), "pose": 4x4, "goal": (3,), "bounds":
    {"low": (x, y, z), "high": (x, y, z)}})`` starts from a user's image instead (no
    resize: the image must have the model's size; default pose a level camera at 1.2 m,
    default goal 4 m ahead, default bounds none); ``{"context": {"frames": uint8 (1 + 4 n,
    H, W, 3), "c2w": (1 + 4 n, 4, 4)}}`` from a user's posed clip, committed into the state
    as clean frames (the start is its last frame and pose). With ``context_seconds`` > 0 a
    seeded reset shows the model a look around of that length first (rendered by the
    reference world, ending at the start pose). The model state has the same size with or
    without a context.

    ## Episode End
    Terminated within ``goal_radius`` (0.5 m) of the goal, or when the camera leaves the
    task's bounds (``info["out_of_bounds"]``): for a seeded scene the box the reference
    world's camera sphere can occupy (inside the arena walls, above the ground, below the
    invisible ceiling at ``wall_height``, each by ``camera_radius``); for a user image the
    ``bounds`` reset option, if given. Truncated after 200 steps (``max_episode_steps``).

    ## Determinism
    All randomness, the model's noise included, comes from the env's seeded generators:
    two envs reset with the same seed and stepped with the same actions return identical
    observations on the same machine with the same torch thread count, precision and
    ``compile`` setting (the registration says ``nondeterministic=False``). Across thread
    counts float32 frames may differ by one grey level (matmul sums in another order); GPU
    kernels may differ in the last bits.
"""

_ARGUMENTS = """
    ## Arguments
    One frozen :class:`NavConfig` (``config=``) and/or its fields as keywords:
    ``action_mode``, ``obs_mode``, ``fov_deg``, ``scene_config``, ``motion``, ``task``,
    ``reference_frames``, ``timing_info``, ``context_seconds``, ``depth``, ``collisions``,
    ``collision_points``, ``precision`` (``"auto"``: bfloat16 only where the
    CPU or GPU has bf16 matmul in hardware: AMX or AVX-512 BF16; else float32), ``compile``, ``threads`` (torch
    threads, process-wide; default 1 below 16 envs); plus ``model`` (a ``WorldModel``, a
    checkpoint folder, a packaged model's name such as ``"teacher"``, or None for the
    package's default) and ``render_mode``. The env's
    resolved precision is ``env.unwrapped.core.precision``.

    ``info``: ``pose``, ``chunk_poses``, ``goal``, ``distance``, ``success``,
    ``out_of_bounds``, ``path_length``, ``action_clipped``, ``geodesic_distance``,
    ``scene_seed``, ``collided`` (predicted where ``collisions`` is on, see Rewards; else
    always False), and with the options above
    ``reference_rgb`` / ``generation_time_s``.

    ## Snapshots
    ``get_state()`` / ``set_state(snapshot)`` (a :class:`NavSnapshot`: the model's one-row
    state, pose, goal, counters, random generators, the last chunk's depth where the env
    uses it and, with collisions, the surfaces known at reset; its size does not grow with
    the episode) and ``save_state(path)`` / ``load_state(path)`` (safetensors + JSON, no
    pickle; bit-exact across processes). ``set_state`` checks what it restores: shapes and
    dtypes of the model state (a float32 snapshot restores into a bfloat16 env and back,
    the tensors converted), finite values, the intrinsics and frame size; else ``ValueError``.
"""


class WorldModelNavEnv(gym.Env):
    __doc__ = """Point-goal navigation in imagination (``SanaWM/Nav-v0``).

    ## Description
    The simulator is the world model: each step integrates the action into K = 4 camera
    poses (0.25 s at 16 fps), generates the next chunk of video conditioned on them from
    the model's recurrent state, and returns its last frame.
""" + _DOC_SECTIONS + _ARGUMENTS + """
    ## Version History
    * v0: initial release.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, config: NavConfig | None = None, *, model=None, render_mode: str | None = None, **overrides):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.config = NavConfig.make(config, **overrides)
        self.core = NavCore(1, self.config, model)
        self.action_space = self.core.action_space
        self.observation_space = self.core.observation_space

    @property
    def intrinsics(self) -> np.ndarray:
        return self.core.intrinsics

    @property
    def scene(self):
        return self.core.scenes[0]

    @property
    def last_generation_time_s(self) -> float:
        return self.core.last_generation_time_s

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.core.reset_rows([0], [self.np_random], [options])
        return self.core.observation(0), self.core.info(0)

    def step(self, action):
        out = self.core.step([action])
        success, outside = bool(out["success"][0]), bool(out["out_of_bounds"][0])
        info = self.core.info(0, success, bool(out["clipped"][0]), float(out["seconds"][0]), outside)
        return self.core.observation(0), float(out["reward"][0]), success or outside, False, info

    def render(self):
        if self.render_mode != "rgb_array" or self.core.state is None:
            return None
        return self.core.frames[0, -1].copy()

    def get_state(self) -> NavSnapshot:
        """A snapshot of everything the simulation depends on (see :class:`NavSnapshot`)."""
        return self.core.get_row(0)

    def set_state(self, snapshot: NavSnapshot) -> None:
        """Restore a snapshot from this env or another one built with the same model; the
        env's generator continues from the snapshot's. Checked: see Snapshots above."""
        self.core.set_row(0, snapshot)
        self._np_random = self.core.rngs[0]

    def save_state(self, path: str | Path) -> Path:
        """Write :meth:`get_state` to ``<path>.json`` + ``<path>.safetensors`` (atomically);
        returns the JSON's path."""
        return self.core.save_row(0, path, "SanaWM/Nav-v0")

    def load_state(self, path: str | Path) -> None:
        """:meth:`set_state` from a file written by :meth:`save_state` (any process)."""
        self.core.load_row(0, path)
        self._np_random = self.core.rngs[0]


class WorldModelNavVectorEnv(gym.vector.VectorEnv):
    __doc__ = """``num_envs`` navigation episodes in imagination with one model forward per step.

    ``gym.make_vec("SanaWM/Nav-v0", num_envs=N, vectorization_mode="vector_entry_point")``.
    Autoreset is Gymnasium's next-step mode by default: the step after a row terminates or
    truncates resets that row only (its action is ignored, reward 0) and returns its first
    observation. ``autoreset_mode=gym.vector.AutoresetMode.SAME_STEP`` resets finished
    rows within the step instead, returning their last observation and info in
    ``info["final_obs"]`` / ``info["final_info"]`` (what Stable-Baselines3 expects, see
    :class:`sanawm_gym.envs.sb3.SB3VecEnv`). ``reset(seed=s)`` seeds row i with
    ``s + i``; row i then evolves exactly like a ``SanaWM/Nav-v0`` env reset with seed ``s + i``.
""" + _DOC_SECTIONS + _ARGUMENTS

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4, "autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, config: NavConfig | None = None, *, model=None,
                 render_mode: str | None = None, max_episode_steps: int | None = None,
                 autoreset_mode: gym.vector.AutoresetMode | str = gym.vector.AutoresetMode.NEXT_STEP, **overrides):
        modes = (gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP)
        try:
            autoreset_mode = gym.vector.AutoresetMode(autoreset_mode)
        except ValueError:
            autoreset_mode = None
        if autoreset_mode not in modes:
            raise ValueError(f"autoreset_mode must be one of {[m.value for m in modes]}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if max_episode_steps is not None:
            max_episode_steps = _count("max_episode_steps", max_episode_steps)
        self.metadata = {**self.metadata, "autoreset_mode": autoreset_mode}
        self.config = NavConfig.make(config, **overrides)
        self.core = NavCore(num_envs, self.config, model)
        self.num_envs = self.core.num_envs
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.single_action_space = self.core.action_space
        self.single_observation_space = self.core.observation_space
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._autoreset = np.zeros(self.num_envs, bool)
        self._rngs = [seeding.np_random()[0] for _ in range(self.num_envs)]

    def _batch(self, obs: list[dict], infos: list[dict]) -> tuple[dict, dict]:
        batched = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
        info: dict[str, Any] = {}
        for i, item in enumerate(infos):
            info = self._add_info(info, item, i)
        return batched, info

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        seeds = [None if seed is None else seed + i for i in range(self.num_envs)] if not isinstance(seed, list) else seed
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset(seed=list) needs {self.num_envs} seeds, got {len(seeds)}")
        for i, s in enumerate(seeds):
            if s is not None or self._rngs[i] is None:
                self._rngs[i] = seeding.np_random(s)[0]
        self.core.reset_rows(list(range(self.num_envs)), self._rngs, [options] * self.num_envs)
        self._autoreset[:] = False
        obs = [self.core.observation(i) for i in range(self.num_envs)]
        return self._batch(obs, [self.core.info(i) for i in range(self.num_envs)])

    def step(self, actions):
        actions = np.asarray(actions)
        if actions.shape[0] != self.num_envs:
            raise ValueError(f"actions must have a leading dimension of num_envs={self.num_envs}, got {actions.shape}")
        resetting = self._autoreset.copy()
        out = self.core.step(actions, active=~resetting)
        if resetting.any():
            rows = list(np.flatnonzero(resetting))
            self.core.reset_rows(rows, [self._rngs[r] for r in rows], [None] * len(rows))
        terminated = (out["success"] | out["out_of_bounds"]) & ~resetting
        truncated = np.zeros(self.num_envs, bool)
        if self.max_episode_steps is not None:
            truncated = (self.core.steps >= self.max_episode_steps) & ~terminated & ~resetting
        reward = np.where(resetting, 0.0, out["reward"])
        infos = [self.core.info(i) if resetting[i] else
                 self.core.info(i, bool(out["success"][i]), bool(out["clipped"][i]), float(out["seconds"][i]),
                                bool(out["out_of_bounds"][i]))
                 for i in range(self.num_envs)]
        done = terminated | truncated
        obs_rows = [self.core.observation(i) for i in range(self.num_envs)]
        if self.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP:
            self._autoreset = done
            obs, info = self._batch(obs_rows, infos)
            return obs, reward, terminated, truncated, info
        # Same-step autoreset: finished rows start afresh now; their last step goes to final_*.
        rows = list(np.flatnonzero(done))
        if rows:
            self.core.reset_rows(rows, [self._rngs[r] for r in rows], [None] * len(rows))
        final_obs = np.array([obs_rows[i] if done[i] else None for i in range(self.num_envs)], dtype=object)
        final_info = np.array([infos[i] if done[i] else None for i in range(self.num_envs)], dtype=object)
        obs, info = self._batch([self.core.observation(i) if done[i] else obs_rows[i] for i in range(self.num_envs)],
                                [self.core.info(i) if done[i] else infos[i] for i in range(self.num_envs)])
        if rows:
            info.update(final_obs=final_obs, _final_obs=done.copy(), final_info=final_info, _final_info=done.copy())
        return obs, reward, terminated, truncated, info

    def render(self):
        if self.render_mode != "rgb_array" or self.core.state is None:
            return None
        return self.core.frames[:, -1].copy()

    @property
    def intrinsics(self) -> np.ndarray:
        """``(3, 3)`` intrinsics of every row's frames."""
        return self.core.intrinsics

    def get_attr(self, name: str) -> tuple:
        """Per-row values of a row attribute, as Gymnasium's vector envs return them; the
        batched core has one: ``"scene"`` (each row's reference scene, None for a user image)."""
        if name != "scene":
            raise AttributeError(f"the native vector env has no per-row attribute {name!r}; it has 'scene'")
        return tuple(self.core.scenes)
