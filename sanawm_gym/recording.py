"""Episodes to Rerun, laid out for a person: the frames, the world, the map, the numbers.

This is the only module of the project that imports ``rerun``, and it does so lazily
(inside functions), so ``import sanawm_gym`` never loads it.

Two wrappers share one logging core, :class:`EpisodeLogger`:

- :class:`RerunRecorder`, a ``gymnasium.Wrapper`` for one env;
- :class:`RerunVectorRecorder`, a ``gymnasium.vector.VectorWrapper`` for a batch of envs
  (``gym.make_vec(...)``, sync, async or a native vector entry point), which follows the
  vector env's autoreset mode (next-step by default: the step after a done row is that
  row's reset).

Both work for any env of the navigation contract: a ``Dict`` observation with ``rgb``
(uint8 ``H x W x 3``, or ``K x H x W x 3`` for a chunk), an ``info`` with ``pose`` (4x4
camera-to-world, OpenCV camera) and, when present, ``chunk_poses`` (the K raw-frame poses
of the step), ``goal``, ``distance`` and ``reference_rgb``; the 3x3 pinhole of the
observation image as ``env.unwrapped.intrinsics`` (or per sub-env through
``get_attr("intrinsics")``); and, optionally, the reference-world ``Scene`` of the episode
as ``env.unwrapped.scene`` (per sub-env through ``get_attr("scene")``; ``None`` for a
world-model episode started from a user image).

What the viewer shows (the blueprint sent with the recording; ``blueprint=False`` leaves
the layout to the viewer):

- on top, large and side by side: the observation (the imagined frame of a world-model
  env) and, when the env gives one, the reference frame (the exact render of the same pose);
- below: a 3-D view of the world (the scene's ground, walls, boxes, cylinders and spheres,
  the camera frustum with its image, the trajectory, the goal), the top-down map of the
  scene with the path growing step by step, and plots of reward and distance;
- the time panel on ``video_time``: every raw frame of every chunk at 16 fps, so playing it
  replays the episode at its own speed.

With a batch of envs the views show env 0 and the plots every env; all envs are logged.

Timelines: ``step`` (one tick per ``reset()`` or ``step()`` call of the wrapper, so
episodes follow one another), ``sim_time`` (``step * seconds_per_step``, 0.25 s by
default), ``frame`` (raw frames: the last frame of tick ``t`` is frame ``K * t``, its chunk
frames the ``K - 1`` before it; a reset is one frame, ``K * t``) and ``video_time`` (``frame *
seconds_per_step / K``: 16 fps for K = 4). K is the length of ``info["chunk_poses"]`` in
the first info logged (1 without it). A step's earlier chunk frames are on ``frame`` and
``video_time`` only; everything else is logged at the step's last frame, on all four.

For env ``i`` (``W`` = ``world``, ``M`` = ``metrics``, ``T`` = ``topdown`` for one env;
``world/env_{i}``, ``metrics/env_{i}``, ``topdown/env_0`` for a batch):

==================================  =======================================  ============================
entity                              archetype                                when
==================================  =======================================  ============================
``world``                           ``ViewCoordinates.RIGHT_HAND_Z_UP``      first reset (static)
``W/scene/ground``, ``walls``,      ``Boxes3D``                              each reset into a new scene
``boxes``
``W/scene/cylinders``               ``Cylinders3D``                          each reset into a new scene
``W/scene/spheres``                 ``Ellipsoids3D``                         each reset into a new scene
``W/camera``                        ``Pinhole`` (3x3 K, resolution, RDF)     first frame (static)
``W/camera``                        ``Transform3D`` (c2w)                    every raw frame
``W/camera/image``                  ``Image`` (the observation)              every raw frame of a chunk
                                                                             observation, else each call
``W/camera/reference``              ``Image`` (``info["reference_rgb"]``)    each call, if asked and present
``W/camera/depth``                  ``DepthImage`` (``obs["depth"]``, metres) each call, where the env has it
``W/trajectory``                    ``Clear`` on reset, ``LineStrips3D``     each call
``W/goal``                          ``Points3D``                             reset, and when it moves
``M/reward``                        ``Scalars``                              each step (not resets)
``M/collided``                      ``Scalars`` (0 / 1)                      each step (not resets)
``M/distance``                      ``Scalars``                              each call
``T/map``                           ``Image`` (obstacles, map pixels)        each reset into a new scene
``T/path``                          ``Clear`` on reset, ``LineStrips2D``     each call
``T/camera``                        ``Arrows2D`` (position, heading)         each call
``T/goal``                          ``Points2D``                             with ``W/goal``
==================================  =======================================  ============================

"Each call" is one row per wrapper ``reset()`` / ``step()`` at its last frame. The
trajectory is the whole path of the episode so far (the camera centres of every raw frame),
re-logged as one strip each step; ``T/path`` is the same path in the map's pixel
coordinates. ``W/camera/reference`` shares the observation's pinhole: it is meant to be the
same view rendered exactly, at the same size. The scene and the map are logged once per
scene on the timelines, not as static data: Rerun keeps one value of a static entity for
all times, so a recording whose episodes draw different scenes would show the last scene
under every episode. A reset without a scene clears ``W/scene`` and ``T``. The map is
drawn for env 0 only (rasterising one costs about 0.2 s).
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
    import rerun.blueprint as rrb

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
_CAMERA_COLOR = (220, 50, 40)

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
    """What the logger remembers about one env: its current episode, and what outlives it."""

    points: list[np.ndarray] = field(default_factory=list)  # camera centres so far, (3,) each
    goal: np.ndarray | None = None
    pinhole_logged: bool = False
    scene: Any = None  # the scene whose geometry is logged under W/scene (None: none)


class EpisodeLogger:
    """Logs frames of ``num_envs`` envs to one stream; the wrappers decide what is a reset.

    Call :meth:`next_frame` once per env call (it advances the timelines), then
    :meth:`log_reset` or :meth:`log_step` for each env with a new frame. ``intrinsics`` is
    one 3x3 K for all envs, ``(num_envs, 3, 3)``, or ``None`` (no pinhole: the images are
    logged, but not placed in 3D). ``log_topdown``: draw env 0's scene map and path.
    ``blueprint``: send the layout of the module docstring at env 0's first reset (again if
    a reference frame or a map shows up later).
    """

    def __init__(
        self,
        recording: OpenedRecording,
        num_envs: int,
        *,
        vector: bool,
        intrinsics: np.ndarray | None,
        log_reference: bool = True,
        log_topdown: bool = True,
        blueprint: bool = True,
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
        self.log_topdown = log_topdown
        self.blueprint = blueprint
        self.seconds_per_step = float(seconds_per_step)
        self.topdown_size = topdown_size
        self.frames_per_step: int | None = None  # K, from the first info logged
        self.tick = -1
        self._tracks = [_Track() for _ in range(num_envs)]
        self._world_logged = False
        self._topdown: Any = None  # env 0's TopDownMap, None while its episode has no scene
        self._blueprint_sent: tuple[bool, bool] | None = None  # (reference view, map view)
        self._eye: tuple[np.ndarray, np.ndarray] | None = None  # 3-D view (position, look target)
        self._eye_on_scene = False  # whether the eye frames a scene (else the start of a scene-less episode)
        self._closed = False

    # ------------------------------------------------------------------ entity paths
    def world_path(self, i: int) -> str:
        return f"world/env_{i}" if self.vector else "world"

    def metrics_path(self, i: int) -> str:
        return f"metrics/env_{i}" if self.vector else "metrics"

    def topdown_path(self, i: int) -> str:
        return f"topdown/env_{i}" if self.vector else "topdown"

    # ------------------------------------------------------------------ timelines
    def next_frame(self) -> int:
        """Advance the timelines by one tick; return the new ``step``."""
        self.tick += 1
        self._at(0)
        return self.tick

    def _at(self, before: int, *, on_step: bool = True) -> None:
        """Set the time to ``before`` raw frames before the current tick's last frame;
        ``on_step=False`` leaves ``step`` and ``sim_time`` out (a chunk's earlier frames)."""
        k = self.frames_per_step or 1
        frame = max(0, k * self.tick - before)
        if on_step:
            self.rec.set_time("step", sequence=self.tick)
            self.rec.set_time("sim_time", duration=self.tick * self.seconds_per_step)
        else:  # other timelines of a given stream stay as its owner set them
            self.rec.disable_timeline("step")
            self.rec.disable_timeline("sim_time")
        self.rec.set_time("frame", sequence=frame)
        self.rec.set_time("video_time", duration=frame * self.seconds_per_step / k)

    def _learn_frames_per_step(self, info: dict[str, Any]) -> None:
        if self.frames_per_step is None:
            chunk = info.get("chunk_poses")
            self.frames_per_step = max(1, len(chunk)) if chunk is not None else 1

    # ------------------------------------------------------------------ logging
    def log_reset(self, i: int, rgb: np.ndarray, info: dict[str, Any], scene: Any = None,
                  depth: np.ndarray | None = None) -> None:
        """A new episode of env ``i`` in ``scene`` (a reference-world ``Scene`` or ``None``):
        the scene if it is new, a fresh trajectory, the goal, the first frame (and its
        ``depth`` in metres, where the env observes one)."""
        import rerun as rr

        pose, frames = _pose(info), _frames(rgb)
        self._learn_frames_per_step(info)
        self._at(0)
        if not self._world_logged:
            self.rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
            self._world_logged = True
        old = self._tracks[i]
        track = self._tracks[i] = _Track(pinhole_logged=old.pinhole_logged, scene=old.scene)
        self._log_scene(i, scene, pose)
        self.rec.log(f"{self.world_path(i)}/trajectory", rr.Clear(recursive=False))
        track.points.append(pose[:3, 3].copy())
        self._log_camera(i, pose, frames[-1])
        self._log_call(i, pose, info, depth)
        if self._map_of(i) is not None:
            self.rec.log(f"{self.topdown_path(i)}/path", rr.Clear(recursive=False))
        if info.get("goal") is not None:
            self._log_goal(i, np.asarray(info["goal"], dtype=np.float64))
        if i == 0:
            self._send_blueprint(info, pose)

    def log_step(self, i: int, rgb: np.ndarray, reward: float, info: dict[str, Any],
                 depth: np.ndarray | None = None) -> None:
        """One step of env ``i``: every raw frame of its chunk, its path so far, its reward,
        whether it collided (and the chunk's last ``depth``, where the env observes one)."""
        import rerun as rr

        self._learn_frames_per_step(info)
        track = self._tracks[i]
        pose = _pose(info)
        chunk = info.get("chunk_poses")
        poses = np.asarray(chunk, dtype=np.float64).reshape(-1, 4, 4) if chunk is not None else pose[None]
        frames = _frames(rgb)
        n = len(poses)
        for k in range(n):  # the chunk's frames; the last one at this call's time (step and all)
            self._at(n - 1 - k, on_step=k == n - 1)
            image = frames[k] if len(frames) == n else (frames[-1] if k == n - 1 else None)
            self._log_camera(i, pose if k == n - 1 else poses[k], image)
        track.points.extend(poses[:, :3, 3].copy())
        color = _TRAJECTORY_COLORS[i % len(_TRAJECTORY_COLORS)]
        self.rec.log(f"{self.world_path(i)}/trajectory", rr.LineStrips3D([np.stack(track.points)], colors=[color], radii=0.02))
        topdown = self._map_of(i)
        if topdown is not None:
            radius = self.topdown_size / 256
            self.rec.log(f"{self.topdown_path(i)}/path",
                         rr.LineStrips2D([topdown.to_image(np.stack(track.points)[:, :2])], colors=[color], radii=radius))
        self._log_call(i, pose, info, depth)
        self.rec.log(f"{self.metrics_path(i)}/reward", rr.Scalars(float(reward)))
        if "collided" in info:
            self.rec.log(f"{self.metrics_path(i)}/collided", rr.Scalars(float(bool(info["collided"]))))
        goal = info.get("goal")
        if goal is not None and (track.goal is None or not np.array_equal(track.goal, goal)):
            self._log_goal(i, np.asarray(goal, dtype=np.float64))

    def _log_camera(self, i: int, pose: np.ndarray, image: np.ndarray | None) -> None:
        """The camera of env ``i`` at one raw frame: where it is, and what it saw (if given)."""
        import rerun as rr

        world, track = self.world_path(i), self._tracks[i]
        if image is not None and not track.pinhole_logged and self.intrinsics is not None:
            h, w = image.shape[:2]
            pinhole = rr.Pinhole(image_from_camera=self.intrinsics[i], resolution=[w, h], camera_xyz=rr.ViewCoordinates.RDF,
                                 image_plane_distance=0.5)
            self.rec.log(f"{world}/camera", pinhole, static=True)
            track.pinhole_logged = True
        self.rec.log(f"{world}/camera", rr.Transform3D(translation=pose[:3, 3], mat3x3=pose[:3, :3]))
        if image is not None:
            self.rec.log(f"{world}/camera/image", rr.Image(image))

    def _log_call(self, i: int, pose: np.ndarray, info: dict[str, Any], depth: np.ndarray | None = None) -> None:
        """What env ``i`` reports once per call: the reference frame, the depth, the distance,
        the camera on the map."""
        import rerun as rr

        if depth is not None:  # the chunk's last map; under the pinhole, Rerun also shows it as points in 3-D
            d = np.asarray(depth, dtype=np.float32)
            self.rec.log(f"{self.world_path(i)}/camera/depth", rr.DepthImage(d.reshape(-1, *d.shape[-2:])[-1], meter=1.0))
        reference = info.get("reference_rgb")
        if self.log_reference and reference is not None:
            self.rec.log(f"{self.world_path(i)}/camera/reference", rr.Image(np.asarray(reference, dtype=np.uint8)))
        if info.get("distance") is not None:
            self.rec.log(f"{self.metrics_path(i)}/distance", rr.Scalars(float(info["distance"])))
        topdown = self._map_of(i)
        if topdown is not None:
            at = topdown.to_image(pose[:2, 3])
            heading = topdown.to_image(pose[:2, 3] + 0.8 * _unit(pose[:2, 2])) - at  # 0.8 m along the view direction
            self.rec.log(f"{self.topdown_path(i)}/camera",
                         rr.Arrows2D(origins=[at], vectors=[heading], colors=[_CAMERA_COLOR], radii=self.topdown_size / 128))

    def _log_goal(self, i: int, goal: np.ndarray) -> None:
        import rerun as rr

        self._tracks[i].goal = goal.copy()
        self.rec.log(f"{self.world_path(i)}/goal", rr.Points3D([goal], radii=0.15, colors=[_GOAL_COLOR], labels=["goal"]))
        topdown = self._map_of(i)
        if topdown is not None:
            self.rec.log(f"{self.topdown_path(i)}/goal",
                         rr.Points2D([topdown.to_image(goal[:2])], radii=self.topdown_size / 48, colors=[_GOAL_COLOR]))

    def _map_of(self, i: int) -> Any:
        """Env ``i``'s top-down map, if it has one (env 0 in a scene, with ``log_topdown``)."""
        return self._topdown if i == 0 else None

    def _log_scene(self, i: int, scene: Any, pose: np.ndarray) -> None:
        """Env ``i``'s scene geometry (and env 0's map) when its scene changes; a clear when it has none."""
        import rerun as rr

        from sanawm_gym.reference_world.scene import Scene

        scene = scene if isinstance(scene, Scene) else None
        track = self._tracks[i]
        if _same_scene(track.scene, scene):
            return
        track.scene = scene
        world = self.world_path(i)
        if scene is None:
            self.rec.log(f"{world}/scene", rr.Clear(recursive=True))
        else:
            for name, archetype in _scene_geometry(scene):
                self.rec.log(f"{world}/scene/{name}", archetype)
        if i != 0 or not self.log_topdown:
            return
        if scene is None:
            if self._topdown is not None:
                self.rec.log(self.topdown_path(i), rr.Clear(recursive=True))
            self._topdown = None
            return
        from sanawm_gym.reference_world.topdown import TopDownMap

        self._topdown = TopDownMap(scene, height=float(pose[2, 3]), size=self.topdown_size)
        self.rec.log(f"{self.topdown_path(i)}/map", rr.Image(self._topdown.base))

    # ------------------------------------------------------------------ the layout
    def _send_blueprint(self, info: dict[str, Any], pose: np.ndarray) -> None:
        """Send the layout at env 0's first reset, and again when a reference frame or a map first shows up."""
        if not self.blueprint:
            return
        sent = self._blueprint_sent or (False, False)
        wanted = (sent[0] or (self.log_reference and info.get("reference_rgb") is not None), sent[1] or self._topdown is not None)
        if self._blueprint_sent == wanted:
            return
        scene = self._tracks[0].scene
        if scene is not None and not self._eye_on_scene:  # the whole arena, from above its south side
            half = float(scene.arena_half)
            self._eye, self._eye_on_scene = (np.array([0.0, -1.6 * half, 2.0 * half]), np.zeros(3)), True
        elif self._eye is None:  # no scene: around the start
            self._eye = (pose[:3, 3] + np.array([0.0, -6.0, 6.0]), pose[:3, 3].copy())
        self.rec.send_blueprint(self.layout(reference=wanted[0], topdown=wanted[1]))
        self._blueprint_sent = wanted

    def layout(self, *, reference: bool = True, topdown: bool = True) -> rrb.Blueprint:
        """The blueprint: env 0's observation and reference frame large and side by side; below,
        the 3-D world, the top-down map, reward and distance; the time panel on ``video_time``."""
        import rerun.blueprint as rrb

        world, top = self.world_path(0), self.topdown_path(0)
        # Each in the camera's image plane (the pinhole's 2-D space), showing one of its two images.
        frames: list[Any] = [rrb.Spatial2DView(origin=f"/{world}/camera", contents="+ $origin/image", name="observation")]
        if reference:
            frames.append(rrb.Spatial2DView(origin=f"/{world}/camera", contents="+ $origin/reference", name="reference"))
        eye = None if self._eye is None else rrb.EyeControls3D(position=self._eye[0], look_target=self._eye[1], eye_up=[0.0, 0.0, 1.0])
        below: list[Any] = [rrb.Spatial3DView(origin="/world", contents=[f"+ /{world}/**", f"- /{world}/camera/reference"],
                                              name="world", eye_controls=eye)]
        if topdown:
            below.append(rrb.Spatial2DView(origin=f"/{top}", name="top-down map"))
        rows = [self.metrics_path(i) for i in range(self.num_envs)]
        below.append(rrb.Vertical(
            rrb.TimeSeriesView(origin="/metrics", contents=[f"+ /{m}/reward" for m in rows], name="reward"),
            rrb.TimeSeriesView(origin="/metrics", contents=[f"+ /{m}/distance" for m in rows], name="distance"),
        ))
        shares = [3.0, 2.0, 1.5] if topdown else [3.0, 1.5]
        return rrb.Blueprint(
            rrb.Vertical(rrb.Horizontal(*frames, name="frames"), rrb.Horizontal(*below, column_shares=shares), row_shares=[3.0, 2.0]),
            rrb.TimePanel(timeline="video_time"),
        )

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


# ---------------------------------------------------------------------- the scene in 3-D
def _same_scene(a: Any, b: Any) -> bool:
    """The same geometry (scenes fetched from subprocesses are copies, so identity is not enough)."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    import torch

    return a.arena_half == b.arena_half and all(
        torch.equal(getattr(a, name), getattr(b, name)) for name in ("box_lo", "box_hi", "cylinders", "spheres"))


def _scene_geometry(scene: Any) -> list[tuple[str, Any]]:
    """A reference-world scene as Rerun primitives, by entity name under ``W/scene``: the ground
    (a thin slab just below z = 0), the walls (the boxes placed before any object: the four
    boundary walls and the interior ones), the box, cylinder and sphere objects (labelled by
    kind), each in its primary colour. Unused (parked) slots are left out."""
    import rerun as rr

    from sanawm_gym.reference_world.scene import OBJECT_KINDS, PARKED, PRIMITIVE_OFFSETS

    def array(t: Any) -> np.ndarray:
        return np.asarray(t.detach().cpu(), dtype=np.float64)

    colors = np.clip(np.round(array(scene.color_a) * 255), 0, 255).astype(np.uint8)
    shape_of = {kind.name: kind.shape for kind in OBJECT_KINDS}
    names = {shape: [n for n in scene.object_names if shape_of.get(n) == shape] for shape in ("box", "cylinder", "sphere")}

    def labels(shape: str, count: int) -> list[str] | None:
        return names[shape] if len(names[shape]) == count else None

    lo, hi = array(scene.box_lo), array(scene.box_hi)
    boxes = np.flatnonzero(lo[:, 0] < PARKED / 2)
    n_objects = len(names["box"]) if len(names["box"]) <= len(boxes) else 0
    walls, objects = boxes[: len(boxes) - n_objects], boxes[len(boxes) - n_objects:]
    box_colors = colors[PRIMITIVE_OFFSETS["box"]:]
    cylinders, spheres = array(scene.cylinders), array(scene.spheres)
    used_cylinders, used_spheres = np.flatnonzero(cylinders[:, 2] > 0), np.flatnonzero(spheres[:, 3] > 0)
    cylinders, spheres = cylinders[used_cylinders], spheres[used_spheres]
    half = float(scene.arena_half)
    return [
        ("ground", rr.Boxes3D(mins=[[-half, -half, -0.03]], sizes=[[2 * half, 2 * half, 0.02]], colors=colors[:1], fill_mode="solid")),
        ("walls", rr.Boxes3D(mins=lo[walls], sizes=hi[walls] - lo[walls], colors=box_colors[walls], fill_mode="solid")),
        ("boxes", rr.Boxes3D(mins=lo[objects], sizes=hi[objects] - lo[objects], colors=box_colors[objects], fill_mode="solid",
                             labels=labels("box", len(objects)), show_labels=False)),
        ("cylinders", rr.Cylinders3D(centers=np.c_[cylinders[:, :2], (cylinders[:, 3] + cylinders[:, 4]) / 2],
                                     lengths=cylinders[:, 4] - cylinders[:, 3], radii=cylinders[:, 2],
                                     colors=colors[PRIMITIVE_OFFSETS["cylinder"] + used_cylinders], fill_mode="solid",
                                     labels=labels("cylinder", len(cylinders)), show_labels=False)),
        ("spheres", rr.Ellipsoids3D(centers=spheres[:, :3], half_sizes=np.repeat(spheres[:, 3:4], 3, 1),
                                    colors=colors[PRIMITIVE_OFFSETS["sphere"] + used_spheres], fill_mode="solid",
                                    labels=labels("sphere", len(spheres)), show_labels=False)),
    ]


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


def _row_depth(obs: dict[str, Any], i: int) -> np.ndarray | None:
    """Row ``i`` of a batched observation's ``depth``, or None when it has none."""
    return obs["depth"][i] if "depth" in obs else None


def _frames(rgb: np.ndarray) -> np.ndarray:
    """The observation's frames as ``(n, H, W, 3)`` uint8 (n = 1 for one frame, K for a chunk)."""
    rgb = np.asarray(rgb)
    if rgb.ndim not in (3, 4) or rgb.shape[-1] != 3 or rgb.dtype != np.uint8 or (rgb.ndim == 4 and len(rgb) == 0):
        raise ValueError(f"observation 'rgb' must be uint8 HxWx3 (or KxHxWx3), got {rgb.dtype} {rgb.shape}")
    return rgb if rgb.ndim == 4 else rgb[None]


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-9 else np.zeros_like(v)


# ----------------------------------------------------------------------------- wrappers
class RerunRecorder(gym.Wrapper):
    """Logs every reset and step of one navigation env to Rerun (see the module docstring).

    ``RerunRecorder(env, "rrd", path="runs/episode.rrd")``; ``mode``, ``path``, ports and
    ``open_browser`` as in :func:`open_recording`. ``log_reference``: log
    ``info["reference_rgb"]`` beside the observation when present. ``log_topdown``: draw the
    top-down map of ``env.unwrapped.scene`` with the path (the scene's 3-D geometry is
    logged either way). ``blueprint``: send the layout of the module docstring (``False``
    leaves the layout to the viewer, or to the owner of a given stream). ``close()``
    flushes, and disconnects the stream if the recorder opened it.
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
        blueprint: bool = True,
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
                                    log_reference=log_reference, log_topdown=log_topdown, blueprint=blueprint,
                                    seconds_per_step=seconds_per_step)
        self.url, self.path = self.recording.url, self.recording.path

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.logger.next_frame()
        self.logger.log_reset(0, obs["rgb"], info, scene=getattr(self.env.unwrapped, "scene", None),
                              depth=obs.get("depth"))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.logger.next_frame()
        self.logger.log_step(0, obs["rgb"], reward, info, depth=obs.get("depth"))
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
    resets the masked rows). Arguments as for :class:`RerunRecorder`; the map is env 0's.
    Scenes come from ``get_attr("scene")`` (sync and async vector envs) at resets; a vector
    env without ``get_attr`` is logged without them.
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        mode: str | rr.RecordingStream = "rrd",
        *,
        path: str | os.PathLike | None = None,
        application_id: str = "sanawm_gym",
        log_reference: bool = True,
        log_topdown: bool = True,
        blueprint: bool = True,
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
                                    log_reference=log_reference, log_topdown=log_topdown, blueprint=blueprint,
                                    seconds_per_step=seconds_per_step)
        self.url, self.path = self.recording.url, self.recording.path
        self._autoreset = np.zeros(env.num_envs, dtype=bool)

    def _scenes(self, rows: np.ndarray) -> list[Any]:
        """Each sub-env's scene, fetched only when some row resets (``None`` where unknown)."""
        if len(rows) and hasattr(self.env, "get_attr"):
            try:
                return list(self.env.get_attr("scene"))
            except (AttributeError, TypeError, ValueError):
                pass
        return [None] * self.num_envs

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        mask = None if options is None else options.get("reset_mask")
        mask = np.ones(self.num_envs, dtype=bool) if mask is None else np.array(mask, dtype=bool)
        obs, infos = self.env.reset(seed=seed, options=options)
        self.logger.next_frame()
        rows = np.flatnonzero(mask)
        scenes = self._scenes(rows)
        for i in rows:
            self.logger.log_reset(int(i), obs["rgb"][i], _row_info(infos, int(i)), scene=scenes[i],
                                  depth=_row_depth(obs, i))
        self._autoreset[mask] = False
        return obs, infos

    def step(self, actions):
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        self.logger.next_frame()
        done = np.logical_or(terminations, truncations)
        resets = self._autoreset if self.autoreset_mode == AutoresetMode.NEXT_STEP else \
            done if self.autoreset_mode == AutoresetMode.SAME_STEP else np.zeros_like(done)
        scenes = self._scenes(np.flatnonzero(resets))
        for i in range(self.num_envs):
            info = _row_info(infos, i)
            if self._autoreset[i]:  # next-step autoreset: this row was reset, not stepped
                self.logger.log_reset(i, obs["rgb"][i], info, scene=scenes[i], depth=_row_depth(obs, i))
                continue
            if self.autoreset_mode == AutoresetMode.SAME_STEP and done[i]:
                final_obs, final_info = infos["final_obs"][i], _row_info(infos.get("final_info", {}), i)
                self.logger.log_step(i, final_obs["rgb"], rewards[i], final_info, depth=final_obs.get("depth"))
                self.logger.log_reset(i, obs["rgb"][i], info, scene=scenes[i], depth=_row_depth(obs, i))
                continue
            self.logger.log_step(i, obs["rgb"][i], rewards[i], info, depth=_row_depth(obs, i))
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
