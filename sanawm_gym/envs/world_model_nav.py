"""Point-goal navigation in imagination: the world model is the simulator.

One batched core (:class:`NavCore`) steps N episodes with one model forward per chunk; the
single env (:class:`WorldModelNavEnv`, ``SanaWM/Nav-v0``) is the core with N = 1 and the
native vector env (:class:`WorldModelNavVectorEnv`, ``gym.make_vec(...,
vectorization_mode="vector_entry_point")``) the core with N rows and Gymnasium's
next-step autoreset. The simulator state is the model's recurrent state (fixed size), so
``get_state`` / ``set_state`` snapshot and restore an episode cheaply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector.utils import batch_space

from sanawm_gym.envs.actions import make_action_space, to_body_action
from sanawm_gym.envs.checks import check_goal, check_image, check_options, check_pose
from world_model.geometry import integrate_twist, intrinsics_from_fov, pose_from_yaw_pitch
from sanawm_gym.kinematics import MotionConfig, action_to_twist
from sanawm_gym.reference_world import SceneConfig, generate_scene, render
from sanawm_gym.tasks import GOAL_OBS_HIGH, GOAL_OBS_LOW, PointGoalConfig, goal_observation, sample_goal, score_step

__all__ = ["NavCore", "NavSnapshot", "WorldModelNavEnv", "WorldModelNavVectorEnv", "load_world_model"]

RESET_OPTIONS = ("scene_seed", "image", "pose", "goal")
OBS_MODES = ("frame", "chunk")
_MODEL_CACHE: dict[str, Any] = {}


def load_world_model(model=None):
    """``model``: a ``WorldModel``, a checkpoint folder, or None for the one shipped in the
    package (loaded once per process and shared by every env)."""
    from world_model.world_model import DEFAULT_WEIGHTS, WorldModel

    if isinstance(model, WorldModel):
        return model
    key = str(model if model is not None else DEFAULT_WEIGHTS)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = WorldModel.from_pretrained(model)
    return _MODEL_CACHE[key]


@dataclass
class NavSnapshot:
    """Everything one row's simulation depends on: model state, pose, goal, counters, RNGs."""

    world: dict[str, torch.Tensor]
    """The row's model state tensors (``WorldState.tensors()`` of one row), cloned."""
    decode_frames: int
    pose: np.ndarray
    goal: np.ndarray
    distance: float
    path_length: float
    steps: int
    scene_seed: int | None
    np_random_state: dict
    torch_generator_state: torch.Tensor
    frames: np.ndarray
    """The last chunk of frames (what the observation shows)."""

    @property
    def nbytes(self) -> int:
        """Bytes of the snapshot's arrays and tensors (independent of the episode's length)."""
        arrays = [self.pose, self.goal, self.frames, self.torch_generator_state.numpy()]
        return sum(t.numel() * t.element_size() for t in self.world.values()) + sum(a.nbytes for a in arrays)


class NavCore:
    """N point-goal episodes in imagination, stepped together.

    Rows have their own numpy generator (scenes, goals) and torch generator (model noise),
    so a row evolves the same whether it runs alone or in a batch.
    """

    def __init__(self, num_envs: int, model=None, action_mode: str = "6dof", obs_mode: str = "frame",
                 fov_deg: float = 90.0, scene_config: SceneConfig | None = None, motion: MotionConfig | None = None,
                 task: PointGoalConfig | None = None, reference_frames: bool = False, timing_info: bool = False,
                 precision: str = "float32", compile: bool = False):
        from world_model.world_model import PRECISIONS

        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        self.precision, self.compile = precision, compile
        self.model = load_world_model(model)
        self.num_envs, self.action_mode, self.obs_mode = num_envs, action_mode, obs_mode
        self.motion = motion or MotionConfig()
        if self.motion.frames_per_step != self.model.config.frames_per_latent:
            raise ValueError(f"motion.frames_per_step={self.motion.frames_per_step} must equal the model's "
                             f"frames_per_latent={self.model.config.frames_per_latent}")
        self.scene_config = scene_config or SceneConfig()
        self.task = task or PointGoalConfig()
        self.reference_frames = reference_frames
        self.timing_info = timing_info
        self.last_generation_time_s = 0.0
        self.height, self.width = self.model.image_hw
        self.intrinsics = intrinsics_from_fov(fov_deg, self.height, self.width).numpy()
        self.action_space = make_action_space(action_mode)
        frame = (self.height, self.width, 3)
        rgb_shape = frame if obs_mode == "frame" else (self.motion.frames_per_step, *frame)
        self.observation_space = spaces.Dict({
            "rgb": spaces.Box(0, 255, rgb_shape, np.uint8),
            "goal": spaces.Box(GOAL_OBS_LOW, GOAL_OBS_HIGH, dtype=np.float32),
        })
        N, K = num_envs, self.motion.frames_per_step
        self.pose = np.tile(np.eye(4), (N, 1, 1))
        self.chunk_poses = np.tile(np.eye(4), (N, K, 1, 1))
        self.goal = np.zeros((N, 3))
        self.distance = np.zeros(N)
        self.path_length = np.zeros(N)
        self.steps = np.zeros(N, dtype=np.int64)
        self.geodesic = np.full(N, np.nan)
        self.scene_seed: list[int | None] = [None] * N
        self.scenes: list = [None] * N
        self.rngs: list[np.random.Generator | None] = [None] * N
        self.torch_gens = [torch.Generator() for _ in range(N)]
        self.frames = np.zeros((N, K, *frame), np.uint8)
        self.state = None

    # ---------------------------------------------------------------------------- reset
    def reset_rows(self, rows: list[int], rngs: list[np.random.Generator], options: list[dict | None]) -> None:
        """Start new episodes in ``rows``, each drawing from its ``rng`` (kept as the row's)."""
        images, poses = [], []
        for r, rng, opts in zip(rows, rngs, options):
            opts = check_options(opts, RESET_OPTIONS)
            self.rngs[r] = rng
            self.torch_gens[r].manual_seed(int(rng.integers(2**63 - 1)))
            image, pose, goal = self._start(r, rng, opts)
            self.pose[r], self.goal[r] = pose, goal
            self.chunk_poses[r] = pose
            self.distance[r] = float(np.linalg.norm(goal - pose[:3, 3]))
            self.path_length[r], self.steps[r] = 0.0, 0
            images.append(image)
            poses.append(pose)
        index = torch.as_tensor(rows, dtype=torch.long)
        Ks = np.repeat(self.intrinsics[None], len(rows), 0)
        if self.state is None and len(rows) != self.num_envs:
            raise RuntimeError("the first reset must reset every row")
        _, self.state = self.model.reset_rows(self.state, index, np.stack(images), np.stack(poses), Ks, self.precision)
        self.frames[rows] = np.stack(images)[:, None]  # the observation at reset is the true first frame

    def _start(self, r: int, rng: np.random.Generator, opts: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if "image" in opts:
            if "scene_seed" in opts:
                raise ValueError("reset options 'image' and 'scene_seed' exclude each other")
            image = check_image(opts["image"], self.height, self.width)
            pose = check_pose(opts["pose"]) if "pose" in opts else pose_from_yaw_pitch(np.array([0.0, 0.0, 1.2]), 0.0, 0.0)
            goal = check_goal(opts["goal"]) if "goal" in opts else pose[:3, 3] + 4.0 * pose[:3, 2]
            self.scenes[r], self.scene_seed[r], self.geodesic[r] = None, None, np.nan
            return image, pose, goal
        seed = opts.get("scene_seed")
        if seed is None:
            seed = int(rng.integers(2**31 - 1))
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"scene_seed must be a non-negative integer, got {seed!r}")
        if self.scene_seed[r] != int(seed) or self.scenes[r] is None:
            self.scenes[r] = generate_scene(int(seed), self.scene_config)
        self.scene_seed[r] = int(seed)
        sample = sample_goal(self.scenes[r], rng, self.task, self.motion.camera_radius)
        pose = pose_from_yaw_pitch(sample.start, sample.yaw, 0.0)
        goal, self.geodesic[r] = sample.goal, sample.geodesic_distance
        if "pose" in opts:
            pose, self.geodesic[r] = check_pose(opts["pose"]), np.nan
        if "goal" in opts:
            goal, self.geodesic[r] = check_goal(opts["goal"]), np.nan
        image = render(self.scenes[r], pose, self.intrinsics, self.height, self.width).rgb
        return image, pose, goal

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
        noise = torch.cat([torch.randn(self.model.noise_shape(1), generator=g) if a else torch.zeros(self.model.noise_shape(1))
                           for g, a in zip(self.torch_gens, active)])
        t0 = time.perf_counter()
        frames, self.state = self.model.step(self.state, chunk, noise=noise, precision=self.precision,
                                             compile=self.compile)
        seconds = time.perf_counter() - t0
        self.last_generation_time_s = seconds
        prev = self.distance.copy()
        moved = np.linalg.norm(np.diff(np.concatenate([self.pose[:, None, :3, 3], chunk[:, :, :3, 3]], 1), axis=1), axis=-1).sum(1)
        self.pose, self.chunk_poses, self.frames = chunk[:, -1], chunk, frames
        self.path_length += moved
        self.steps += 1
        reward, success = np.zeros(N), np.zeros(N, bool)
        for r in range(N):
            out = score_step(self.task, prev[r], self.pose[r, :3, 3], self.goal[r], collided=False)
            reward[r], self.distance[r], success[r] = out.reward, out.distance, out.success
        return {"reward": reward, "success": success, "clipped": clipped, "seconds": np.full(N, seconds / N)}

    # -------------------------------------------------------------------------- outputs
    def observation(self, r: int) -> dict[str, np.ndarray]:
        rgb = self.frames[r, -1] if self.obs_mode == "frame" else self.frames[r]
        return {"rgb": rgb.copy(), "goal": goal_observation(self.pose[r], self.goal[r])}

    def info(self, r: int, success: bool = False, clipped: bool = False, seconds: float = 0.0) -> dict[str, Any]:
        info = {
            "pose": self.pose[r].copy(),
            "chunk_poses": self.chunk_poses[r].copy(),
            "goal": self.goal[r].copy(),
            "distance": float(self.distance[r]),
            "collided": False,
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
        world = {k: v[r : r + 1].clone() for k, v in self.state.tensors().items()}
        return NavSnapshot(world, self.state.decode.latent_frames, self.pose[r].copy(), self.goal[r].copy(),
                           float(self.distance[r]), float(self.path_length[r]), int(self.steps[r]), self.scene_seed[r],
                           self.rngs[r].bit_generator.state, self.torch_gens[r].get_state(), self.frames[r].copy())

    def set_row(self, r: int, snap: NavSnapshot) -> None:
        if not isinstance(snap, NavSnapshot):
            raise ValueError(f"set_state expects a NavSnapshot from get_state(), got {type(snap).__name__}")
        if self.state is None:
            raise RuntimeError("call reset() once before set_state() (it allocates the model state)")
        own = self.state.tensors()
        if own.keys() != snap.world.keys() or any(own[k].shape[1:] != v.shape[1:] for k, v in snap.world.items()):
            raise ValueError("this snapshot comes from a different world model (its state tensors do not match)")
        index = torch.tensor([r])
        self.state = _rebuild(self.state, {k: own[k].index_copy(0, index, v) for k, v in snap.world.items()})
        self.pose[r], self.goal[r], self.frames[r] = snap.pose, snap.goal, snap.frames
        self.chunk_poses[r] = snap.pose
        self.distance[r], self.path_length[r], self.steps[r] = snap.distance, snap.path_length, snap.steps
        if snap.scene_seed is not None and snap.scene_seed != self.scene_seed[r]:
            self.scenes[r] = generate_scene(snap.scene_seed, self.scene_config)
        self.scene_seed[r] = snap.scene_seed
        if self.rngs[r] is None:
            self.rngs[r] = np.random.default_rng()
        self.rngs[r].bit_generator.state = snap.np_random_state
        self.torch_gens[r].set_state(snap.torch_generator_state)


def _rebuild(state, tensors: dict[str, torch.Tensor]):
    """A WorldState like ``state`` whose tensors are replaced by ``tensors`` (same names)."""
    from world_model.autoencoder import StreamCache
    from world_model.model.state import StreamState
    from world_model.world_model import WorldState

    blocks = []
    for i, block in enumerate(state.stream.blocks):
        fields = {name: tensors[f"stream.blocks.{i}.{name}"] for name in vars(block)}
        blocks.append(type(block)(**fields))
    stream = StreamState(blocks, tensors["stream.frame_index"], tensors["stream.chunk_index"])
    decode = StreamCache(tuple(tensors[f"decode.{i}"] for i in range(len(state.decode.previous))), state.decode.latent_frames)
    return WorldState(stream, decode, tensors["reference"], tensors["intrinsics"])


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

    ## Rewards
    As the reference env: progress toward the goal, minus a step cost, plus a success bonus.
    **Collisions are unknown in imagination**: the camera passes through whatever the
    model draws, there is no collision penalty, ``info["collided"]`` is always False, and
    distances are Euclidean on the integrated pose, not on the imagined scene.

    ## Starting State
    ``reset(seed=...)`` draws a scene and a start/goal pair exactly as
    ``SanaWM/ReferenceNav-v0`` does, renders the first frame with the reference world and
    encodes it into a fresh model state; the first observation is that exact frame.
    ``reset(options={"image": uint8 (H, W, 3), "pose": 4x4, "goal": (3,)})`` starts from a
    user's image instead (no resize: the image must have the model's size; default pose a
    level camera at 1.2 m, default goal 4 m ahead). Other options: ``scene_seed``.

    ## Episode End
    Terminated within ``goal_radius`` (0.5 m) of the goal; truncated after 200 steps
    (``max_episode_steps``).

    ## Determinism
    All randomness, the model's noise included, comes from the env's seeded generators:
    two envs reset with the same seed and stepped with the same actions return identical
    observations on the CPU (the registration says ``nondeterministic=False``; GPU kernels
    may differ in the last bits).
"""


class WorldModelNavEnv(gym.Env):
    __doc__ = """Point-goal navigation in imagination (``SanaWM/Nav-v0``).

    ## Description
    The simulator is the world model: each step integrates the action into K = 4 camera
    poses (0.25 s at 16 fps), generates the next chunk of video conditioned on them from
    the model's recurrent state, and returns its last frame. ``get_state()`` /
    ``set_state()`` snapshot and restore the whole simulation (model state, pose, goal,
    counters, random generators) for planners; the snapshot's size does not grow with the
    episode.
""" + _DOC_SECTIONS + """
    ## Arguments
    ``gym.make("SanaWM/Nav-v0", model=None, action_mode="6dof", obs_mode="frame",
    reference_frames=False, timing_info=False, render_mode=None, fov_deg=90.0,
    scene_config=None, motion=None, task=None, precision="float32", compile=False)``;
    ``model`` is a ``WorldModel``, a checkpoint folder, or None for the shipped one.
    ``precision="bfloat16"`` generates under bfloat16 autocast (faster on CPUs with AMX,
    frames differ slightly from float32; still deterministic under a seed).
    ``compile=True`` runs the model's denoising and commit passes and its decoding through
    ``torch.compile`` (the first step of a batch size and precision builds it: tens of
    seconds, cached on disk by inductor; then about 1.5-2x faster; frames equal the eager
    ones up to float rounding and stay deterministic under a seed). ``reference_frames=True`` adds
    ``info["reference_rgb"]``, the exact render of the same pose (scene starts only).
    ``timing_info=True`` adds ``info["generation_time_s"]``, the seconds spent generating
    the step (off by default because a wall-clock time makes infos differ between two
    identically seeded runs, which Gymnasium's ``check_env`` rejects); the same figure is
    always in ``env.unwrapped.last_generation_time_s``.

    ``info``: ``pose``, ``chunk_poses``, ``goal``, ``distance``, ``success``,
    ``path_length``, ``action_clipped``, ``geodesic_distance``, ``scene_seed``,
    ``collided`` (always False).

    ## Version History
    * v0: initial release.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, model=None, action_mode: str = "6dof", obs_mode: str = "frame", reference_frames: bool = False,
                 timing_info: bool = False, render_mode: str | None = None, fov_deg: float = 90.0,
                 scene_config: SceneConfig | None = None, motion: MotionConfig | None = None,
                 task: PointGoalConfig | None = None, precision: str = "float32", compile: bool = False):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.core = NavCore(1, model, action_mode, obs_mode, fov_deg, scene_config, motion, task, reference_frames,
                            timing_info, precision, compile)
        self.action_space = self.core.action_space
        self.observation_space = self.core.observation_space

    @property
    def intrinsics(self) -> np.ndarray:
        return self.core.intrinsics

    @property
    def scene(self):
        return self.core.scenes[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.core.reset_rows([0], [self.np_random], [options])
        return self.core.observation(0), self.core.info(0)

    def step(self, action):
        out = self.core.step([action])
        success = bool(out["success"][0])
        info = self.core.info(0, success, bool(out["clipped"][0]), float(out["seconds"][0]))
        return self.core.observation(0), float(out["reward"][0]), success, False, info

    def render(self):
        if self.render_mode != "rgb_array" or self.core.state is None:
            return None
        return self.core.frames[0, -1].copy()

    def get_state(self) -> NavSnapshot:
        """A snapshot of everything the simulation depends on (see :class:`NavSnapshot`)."""
        return self.core.get_row(0)

    def set_state(self, snapshot: NavSnapshot) -> None:
        """Restore a snapshot from this env or another one built with the same model; the
        env's generator continues from the snapshot's."""
        self.core.set_row(0, snapshot)
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
""" + _DOC_SECTIONS

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4, "autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, model=None, action_mode: str = "6dof", obs_mode: str = "frame",
                 reference_frames: bool = False, timing_info: bool = False, render_mode: str | None = None,
                 fov_deg: float = 90.0, scene_config: SceneConfig | None = None, motion: MotionConfig | None = None,
                 task: PointGoalConfig | None = None, max_episode_steps: int | None = None,
                 autoreset_mode: gym.vector.AutoresetMode | str = gym.vector.AutoresetMode.NEXT_STEP,
                 precision: str = "float32", compile: bool = False):
        modes = (gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP)
        autoreset_mode = gym.vector.AutoresetMode(autoreset_mode)
        if autoreset_mode not in modes:
            raise ValueError(f"autoreset_mode must be one of {[m.value for m in modes]}, got {autoreset_mode.value!r}")
        self.metadata = {**self.metadata, "autoreset_mode": autoreset_mode}
        self.core = NavCore(num_envs, model, action_mode, obs_mode, fov_deg, scene_config, motion, task, reference_frames,
                            timing_info, precision, compile)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.single_action_space = self.core.action_space
        self.single_observation_space = self.core.observation_space
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._autoreset = np.zeros(num_envs, bool)
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]

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
        terminated = out["success"] & ~resetting
        truncated = np.zeros(self.num_envs, bool)
        if self.max_episode_steps is not None:
            truncated = (self.core.steps >= self.max_episode_steps) & ~terminated & ~resetting
        reward = np.where(resetting, 0.0, out["reward"])
        infos = [self.core.info(i) if resetting[i] else
                 self.core.info(i, bool(out["success"][i]), bool(out["clipped"][i]), float(out["seconds"][i]))
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
