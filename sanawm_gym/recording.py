"""Episodes to Rerun: what the camera saw, where it went, where it was going.

This is the only module of the project that imports ``rerun``, and it does so lazily
(inside functions), so ``import sanawm_gym`` never loads it.

Two wrappers share one logging core, :class:`EpisodeLogger`:

- :class:`RerunRecorder`, a ``gymnasium.Wrapper`` for one env;
- :class:`RerunVectorRecorder`, a ``gymnasium.vector.VectorWrapper`` for a batch of envs
  (``gym.make_vec(...)``, sync, async or a native vector entry point), which follows the
  vector env's autoreset mode (next-step by default: the step after a done row is that
  row's reset).

Both work for any env of the navigation contract: a ``Dict`` observation with ``rgb``
(uint8 ``H x W x 3``), an ``info`` with ``pose`` (4x4 camera-to-world, OpenCV camera) and,
when present, ``chunk_poses``, ``goal``, ``distance`` and ``reference_rgb``; and the 3x3
pinhole of the observation image as ``env.unwrapped.intrinsics`` (or per sub-env through
``get_attr("intrinsics")``).

What is logged, for env ``i`` (``W`` = ``world`` for one env, ``world/env_{i}`` for a
batch; ``M`` = ``metrics`` or ``metrics/env_{i}``), on the sequence timeline ``step`` (one
tick per ``reset()`` or ``step()`` call of the wrapper, so episodes follow one another) and
the duration timeline ``sim_time`` (``step * seconds_per_step``, 0.25 s by default):

==========================  ================================================  ==========
entity                      archetype                                         when
==========================  ================================================  ==========
``world``                   ``ViewCoordinates.RIGHT_HAND_Z_UP`` (static)       first reset
``W/camera``                ``Pinhole`` (3x3 K, resolution, RDF) (static)      first frame
``W/camera``                ``Transform3D`` (c2w translation + 3x3 matrix)    every frame
``W/camera/image``          ``Image`` (the observation)                       every frame
``W/camera/reference``      ``Image`` (``info["reference_rgb"]``)              every frame, if asked and present
``W/trajectory``            ``Clear`` on reset, ``LineStrips3D`` on steps      every frame
``W/goal``                  ``Points3D``                                      reset, and when it moves
``M/reward``                ``Scalars``                                       every step (not resets)
``M/distance``              ``Scalars``                                       every frame
``topdown``                 ``Image`` (map of the scene with the goal)        each reset, one env only
==========================  ================================================  ==========

"Every frame" is one row per step plus one per reset. The trajectory is the whole path
of the episode so far (camera centres of every raw frame, ``chunk_poses``), re-logged as
one strip each step. ``W/camera/reference`` shares the observation's pinhole: it is meant
to be the same view rendered exactly, at the same size.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorWrapper

if TYPE_CHECKING:
    import rerun as rr

__all__ = ["MODES", "SECONDS_PER_STEP", "EpisodeLogger", "RerunRecorder", "RerunVectorRecorder", "open_recording"]

log = logging.getLogger(__name__)

MODES = ("rrd", "spawn", "serve")
"""Where a recorder sends its data: a ``.rrd`` file, a spawned native viewer, or a web
viewer served from this process. A ``rerun.RecordingStream`` may be given instead."""

SECONDS_PER_STEP = 0.25
"""One env step: one chunk of K = 4 raw frames at 16 fps."""

DEFAULT_GRPC_PORT = 9876
DEFAULT_WEB_PORT = 9090

_TRAJECTORY_COLORS = ((40, 90, 220), (220, 120, 30), (150, 60, 200), (30, 160, 160), (200, 60, 90), (110, 150, 40))
_GOAL_COLOR = (40, 170, 60)


# ------------------------------------------------------------------------------- streams
def _check_rrd_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"the .rrd path {str(p)!r} is a directory; give a file path such as {str(p / 'episode.rrd')!r}")
    if p.suffix != ".rrd":
        raise ValueError(f"the recording path must end in '.rrd', got {str(p)!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


@dataclass
class OpenedRecording:
    """A recording stream and what :func:`open_recording` did to open it."""

    stream: rr.RecordingStream
    owned: bool
    """True when the recorder made the stream (and so disconnects it on close)."""
    path: Path | None = None
    """The ``.rrd`` file being written, if any."""
    url: str | None = None
    """Where to look: the web viewer's address (``serve``) or the viewer's gRPC address (``spawn``)."""


def open_recording(
    mode: str | rr.RecordingStream,
    *,
    path: str | os.PathLike | None = None,
    application_id: str = "sanawm_gym",
    grpc_port: int = DEFAULT_GRPC_PORT,
    web_port: int = DEFAULT_WEB_PORT,
    open_browser: bool = False,
) -> OpenedRecording:
    """Make (or adopt) the stream a recorder logs to (the recorders' ``mode`` and its options).

    ``mode``: ``"rrd"`` (write ``path``, a ``.rrd`` file), ``"spawn"`` (start the native
    viewer, listening on ``grpc_port``, and stream to it), ``"serve"`` (host the data on
    ``127.0.0.1:grpc_port`` and the web viewer on ``web_port``; ``url`` is the address to
    open; both servers last until the process exits), or a ``rerun.RecordingStream``, whose
    sinks stay as its owner set them. With ``spawn`` or ``serve``, a ``path`` also writes the
    file. Raises ``ValueError`` for an unknown mode, a missing or non-``.rrd`` path, a
    directory, a bad port.
    """
    import rerun as rr

    if isinstance(mode, rr.RecordingStream):
        if path is not None:
            raise ValueError("path is for modes 'rrd', 'spawn' and 'serve'; a given RecordingStream keeps the sinks its owner set")
        return OpenedRecording(mode, owned=False)
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} or a rerun.RecordingStream, got {mode!r}")
    if not isinstance(application_id, str) or not application_id:
        raise ValueError(f"application_id must be a non-empty string, got {application_id!r}")
    for name, port in (("grpc_port", grpc_port), ("web_port", web_port)):
        if not isinstance(port, (int, np.integer)) or not 1 <= port <= 65535:
            raise ValueError(f"{name} must be an integer in [1, 65535], got {port!r}")
    if mode == "rrd" and path is None:
        raise ValueError("mode='rrd' needs path=<file>.rrd")
    rrd = None if path is None else _check_rrd_path(path)

    stream = rr.RecordingStream(application_id, make_default=False)
    sinks: list[Any] = [] if rrd is None else [rr.FileSink(rrd)]
    url = None
    if mode == "spawn":
        # The viewer sits beside this interpreter in a virtualenv that is not activated (not on PATH).
        beside = Path(sys.executable).with_name("rerun")
        executable = shutil.which("rerun") or (str(beside) if beside.exists() else None)
        rr.spawn(port=int(grpc_port), connect=False, recording=stream, executable_path=executable)
        url = f"rerun+http://127.0.0.1:{int(grpc_port)}/proxy"
        sinks.append(rr.GrpcSink(url))
    elif mode == "serve":
        server = rr.GrpcServerSink("127.0.0.1", int(grpc_port))
        sinks.append(server)
    stream.set_sinks(*sinks)
    if mode == "serve":
        # The web viewer (HTTP) is a separate server from the data (gRPC); it lives until the process exits.
        rr.serve_web_viewer(web_port=int(web_port), open_browser=open_browser, connect_to=server.uri)
        url = f"http://localhost:{int(web_port)}/?url={quote(server.uri, safe='')}"
    return OpenedRecording(stream, owned=True, path=rrd, url=url)


# ---------------------------------------------------------------------------- the core
@dataclass
class _Track:
    """What the logger remembers about one env's current episode."""

    points: list[np.ndarray] = field(default_factory=list)  # camera centres so far, (3,) each
    goal: np.ndarray | None = None
    pinhole_logged: bool = False


class EpisodeLogger:
    """Logs frames of ``num_envs`` envs to one stream; the wrappers decide what is a reset.

    Call :meth:`next_frame` once per env call (it advances the ``step`` / ``sim_time``
    timelines), then :meth:`log_reset` or :meth:`log_step` for each env with a new frame.
    ``intrinsics`` is one 3x3 K for all envs, ``(num_envs, 3, 3)``, or ``None`` (no pinhole:
    the images are logged, but not placed in 3D).
    """

    def __init__(
        self,
        recording: OpenedRecording,
        num_envs: int,
        *,
        vector: bool,
        intrinsics: np.ndarray | None,
        log_reference: bool = True,
        seconds_per_step: float = SECONDS_PER_STEP,
        topdown_size: int = 128,
    ) -> None:
        if not seconds_per_step > 0:
            raise ValueError(f"seconds_per_step must be positive, got {seconds_per_step!r}")
        if intrinsics is not None:
            intrinsics = np.asarray(intrinsics, dtype=np.float64)
            if intrinsics.shape == (3, 3):
                intrinsics = np.broadcast_to(intrinsics, (num_envs, 3, 3))
            if intrinsics.shape != (num_envs, 3, 3) or not np.isfinite(intrinsics).all():
                raise ValueError(f"intrinsics must be a finite 3x3 pinhole matrix (or {num_envs} of them), got shape {intrinsics.shape}")
        self.recording = recording
        self.rec = recording.stream
        self.num_envs = num_envs
        self.vector = vector
        self.intrinsics = intrinsics
        self.log_reference = log_reference
        self.seconds_per_step = float(seconds_per_step)
        self.topdown_size = topdown_size
        self.tick = -1
        self._tracks = [_Track() for _ in range(num_envs)]
        self._world_logged = False
        self._topdown_cache: tuple[Any, Any] | None = None  # (scene, TopDownMap)
        self._closed = False

    # ------------------------------------------------------------------ entity paths
    def world_path(self, i: int) -> str:
        return f"world/env_{i}" if self.vector else "world"

    def metrics_path(self, i: int) -> str:
        return f"metrics/env_{i}" if self.vector else "metrics"

    # ------------------------------------------------------------------ logging
    def next_frame(self) -> int:
        """Advance the timelines by one tick; return the new ``step``."""
        self.tick += 1
        self.rec.set_time("step", sequence=self.tick)
        self.rec.set_time("sim_time", duration=self.tick * self.seconds_per_step)
        return self.tick

    def log_reset(self, i: int, rgb: np.ndarray, info: dict[str, Any], scene: Any = None) -> None:
        """A new episode of env ``i``: a fresh trajectory, its goal, its first frame (and a map of ``scene``)."""
        import rerun as rr

        if not self._world_logged:
            self.rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
            self._world_logged = True
        track = self._tracks[i] = _Track(pinhole_logged=self._tracks[i].pinhole_logged)
        world = self.world_path(i)
        self.rec.log(f"{world}/trajectory", rr.Clear(recursive=False))
        pose = _pose(info)
        track.points.append(pose[:3, 3].copy())
        self._log_frame(i, rgb, pose, info)
        if info.get("goal") is not None:
            self._log_goal(i, np.asarray(info["goal"], dtype=np.float64))
        if scene is not None and info.get("goal") is not None:
            self._log_topdown(scene, pose, np.asarray(info["goal"], dtype=np.float64))

    def log_step(self, i: int, rgb: np.ndarray, reward: float, info: dict[str, Any]) -> None:
        """One step of env ``i``: its frame, its path so far, its reward."""
        import rerun as rr

        track = self._tracks[i]
        pose = _pose(info)
        chunk = info.get("chunk_poses")
        centres = np.asarray(chunk, dtype=np.float64)[:, :3, 3] if chunk is not None else pose[None, :3, 3]
        track.points.extend(centres.copy())
        color = _TRAJECTORY_COLORS[i % len(_TRAJECTORY_COLORS)]
        self.rec.log(f"{self.world_path(i)}/trajectory", rr.LineStrips3D([np.stack(track.points)], colors=[color], radii=0.02))
        self._log_frame(i, rgb, pose, info)
        self.rec.log(f"{self.metrics_path(i)}/reward", rr.Scalars(float(reward)))
        goal = info.get("goal")
        if goal is not None and (track.goal is None or not np.array_equal(track.goal, goal)):
            self._log_goal(i, np.asarray(goal, dtype=np.float64))

    def _log_frame(self, i: int, rgb: np.ndarray, pose: np.ndarray, info: dict[str, Any]) -> None:
        import rerun as rr

        rgb = np.asarray(rgb)
        if rgb.ndim == 4:  # obs_mode="chunk": the K frames of the step; the last is at the logged pose
            rgb = rgb[-1]
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"observation 'rgb' must be uint8 HxWx3 (or KxHxWx3), got {rgb.dtype} {rgb.shape}")
        world, track = self.world_path(i), self._tracks[i]
        if not track.pinhole_logged and self.intrinsics is not None:
            h, w = rgb.shape[:2]
            pinhole = rr.Pinhole(image_from_camera=self.intrinsics[i], resolution=[w, h], camera_xyz=rr.ViewCoordinates.RDF)
            self.rec.log(f"{world}/camera", pinhole, static=True)
        track.pinhole_logged = True
        self.rec.log(f"{world}/camera", rr.Transform3D(translation=pose[:3, 3], mat3x3=pose[:3, :3]))
        self.rec.log(f"{world}/camera/image", rr.Image(rgb))
        reference = info.get("reference_rgb")
        if self.log_reference and reference is not None:
            self.rec.log(f"{world}/camera/reference", rr.Image(np.asarray(reference, dtype=np.uint8)))
        if info.get("distance") is not None:
            self.rec.log(f"{self.metrics_path(i)}/distance", rr.Scalars(float(info["distance"])))

    def _log_goal(self, i: int, goal: np.ndarray) -> None:
        import rerun as rr

        self._tracks[i].goal = goal.copy()
        self.rec.log(f"{self.world_path(i)}/goal", rr.Points3D([goal], radii=0.15, colors=[_GOAL_COLOR], labels=["goal"]))

    def _log_topdown(self, scene: Any, pose: np.ndarray, goal: np.ndarray) -> None:
        """The scene's map with this episode's goal (the map is rasterised once per scene)."""
        import rerun as rr

        from sanawm_gym.reference_world.scene import Scene
        from sanawm_gym.reference_world.topdown import TopDownMap

        if not isinstance(scene, Scene):
            return
        if self._topdown_cache is None or self._topdown_cache[0] is not scene:
            self._topdown_cache = (scene, TopDownMap(scene, height=float(pose[2, 3]), size=self.topdown_size))
        image = self._topdown_cache[1].draw(pose[None, :2, 3], goal[:2], float(np.arctan2(pose[1, 2], pose[0, 2])))
        self.rec.log("topdown", rr.Image(image))

    def close(self) -> None:
        """Flush; disconnect the stream if this recorder opened it (a given stream stays connected)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.rec.flush()
        except RuntimeError as err:  # e.g. a spawned viewer that never came up (no display)
            log.warning("rerun could not flush every sink: %s", err)
        finally:
            if self.recording.owned:
                self.rec.disconnect()  # finishes the .rrd (footer) and stops the servers this recorder started


def _pose(info: dict[str, Any]) -> np.ndarray:
    if info.get("pose") is None:
        raise ValueError(f"info has no 'pose' (4x4 camera-to-world); the recorder needs the navigation info contract, got keys {sorted(info)}")
    pose = np.asarray(info["pose"], dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"info['pose'] must be a 4x4 camera-to-world matrix, got shape {pose.shape}")
    return pose


def _check_obs_space(space: gym.Space, what: str) -> None:
    rgb = space.spaces.get("rgb") if isinstance(space, spaces.Dict) else None
    if not isinstance(rgb, spaces.Box) or len(rgb.shape) not in (3, 4) or rgb.shape[-1] != 3:
        raise ValueError(f"the recorders need a Dict observation space with an 'rgb' HxWx3 image (or KxHxWx3 frames); "
                         f"the {what} has {space}")


def _row_info(infos: dict[str, Any], i: int) -> dict[str, Any]:
    """Row ``i`` of Gymnasium's vector-info dict (keys mapping to arrays, ``_key`` masks)."""
    row = {}
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get(f"_{key}")
        if mask is not None and not mask[i]:
            continue
        row[key] = _row_info(value, i) if isinstance(value, dict) else value[i]
    return row


# ----------------------------------------------------------------------------- wrappers
class RerunRecorder(gym.Wrapper):
    """Logs every reset and step of one navigation env to Rerun (see the module docstring).

    ``RerunRecorder(env, "rrd", path="runs/episode.rrd")``; ``mode``, ``path``, ports and
    ``open_browser`` as in :func:`open_recording`. ``log_reference``: log
    ``info["reference_rgb"]`` beside the observation when present. ``log_topdown``: log a
    map of ``env.unwrapped.scene`` (a reference-world scene) with the goal at each reset.
    ``close()`` flushes, and disconnects the stream if the recorder opened it.
    """

    def __init__(
        self,
        env: gym.Env,
        mode: str | rr.RecordingStream = "rrd",
        *,
        path: str | os.PathLike | None = None,
        application_id: str = "sanawm_gym",
        log_reference: bool = True,
        log_topdown: bool = True,
        seconds_per_step: float = SECONDS_PER_STEP,
        grpc_port: int = DEFAULT_GRPC_PORT,
        web_port: int = DEFAULT_WEB_PORT,
        open_browser: bool = False,
    ) -> None:
        super().__init__(env)
        _check_obs_space(env.observation_space, "env")
        self.recording = open_recording(mode, path=path, application_id=application_id, grpc_port=grpc_port,
                                        web_port=web_port, open_browser=open_browser)
        self.logger = EpisodeLogger(self.recording, 1, vector=False, intrinsics=_intrinsics(env.unwrapped),
                                    log_reference=log_reference, seconds_per_step=seconds_per_step)
        self.log_topdown = log_topdown
        self.url, self.path = self.recording.url, self.recording.path

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.logger.next_frame()
        scene = getattr(self.env.unwrapped, "scene", None) if self.log_topdown else None
        self.logger.log_reset(0, obs["rgb"], info, scene=scene)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.logger.next_frame()
        self.logger.log_step(0, obs["rgb"], reward, info)
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self.logger.close()
        super().close()


class RerunVectorRecorder(VectorWrapper):
    """Logs every row of a vector navigation env to Rerun, env ``i`` under ``world/env_{i}``.

    ``RerunVectorRecorder(gym.make_vec(id, num_envs=4), "rrd", path="runs/batch.rrd")``.
    Follows the env's ``metadata["autoreset_mode"]``: next-step (the step after a done
    row logs that row as a reset), same-step (the final frame and the reset frame of a
    done row are logged at the same tick) or disabled (``reset(options={"reset_mask": m})``
    resets the masked rows). Arguments as for :class:`RerunRecorder`, without the top-down map.
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        mode: str | rr.RecordingStream = "rrd",
        *,
        path: str | os.PathLike | None = None,
        application_id: str = "sanawm_gym",
        log_reference: bool = True,
        seconds_per_step: float = SECONDS_PER_STEP,
        grpc_port: int = DEFAULT_GRPC_PORT,
        web_port: int = DEFAULT_WEB_PORT,
        open_browser: bool = False,
    ) -> None:
        super().__init__(env)
        _check_obs_space(env.single_observation_space, "vector env's single_observation_space")
        mode_value = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        self.autoreset_mode = AutoresetMode(mode_value.value if isinstance(mode_value, AutoresetMode) else mode_value)
        self.recording = open_recording(mode, path=path, application_id=application_id, grpc_port=grpc_port,
                                        web_port=web_port, open_browser=open_browser)
        self.logger = EpisodeLogger(self.recording, env.num_envs, vector=True, intrinsics=_vector_intrinsics(env),
                                    log_reference=log_reference, seconds_per_step=seconds_per_step)
        self.url, self.path = self.recording.url, self.recording.path
        self._autoreset = np.zeros(env.num_envs, dtype=bool)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        mask = None if options is None else options.get("reset_mask")
        mask = np.ones(self.num_envs, dtype=bool) if mask is None else np.array(mask, dtype=bool)
        obs, infos = self.env.reset(seed=seed, options=options)
        self.logger.next_frame()
        for i in np.flatnonzero(mask):
            self.logger.log_reset(int(i), obs["rgb"][i], _row_info(infos, int(i)))
        self._autoreset[mask] = False
        return obs, infos

    def step(self, actions):
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        self.logger.next_frame()
        done = np.logical_or(terminations, truncations)
        for i in range(self.num_envs):
            info = _row_info(infos, i)
            if self._autoreset[i]:  # next-step autoreset: this row was reset, not stepped
                self.logger.log_reset(i, obs["rgb"][i], info)
                continue
            if self.autoreset_mode == AutoresetMode.SAME_STEP and done[i]:
                final_obs, final_info = infos["final_obs"][i], _row_info(infos.get("final_info", {}), i)
                self.logger.log_step(i, final_obs["rgb"], rewards[i], final_info)
                self.logger.log_reset(i, obs["rgb"][i], info)
                continue
            self.logger.log_step(i, obs["rgb"][i], rewards[i], info)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._autoreset = done.copy()
        return obs, rewards, terminations, truncations, infos

    def close(self, **kwargs: Any) -> None:
        self.logger.close()
        super().close(**kwargs)


def _intrinsics(base: Any) -> np.ndarray | None:
    k = getattr(base, "intrinsics", None)
    if k is None:
        log.warning("%s has no 'intrinsics'; images are logged without a pinhole (not placed in 3D)", type(base).__name__)
        return None
    return np.asarray(k, dtype=np.float64)


def _vector_intrinsics(env: gym.vector.VectorEnv) -> np.ndarray | None:
    """A native vector env's own ``intrinsics``, else each sub-env's (``get_attr``)."""
    if getattr(env.unwrapped, "intrinsics", None) is None and hasattr(env, "get_attr"):
        try:
            return np.stack([np.asarray(k, dtype=np.float64) for k in env.get_attr("intrinsics")])
        except (AttributeError, TypeError, ValueError):
            pass
    return _intrinsics(env.unwrapped)
