"""The Rerun recorders: record a few steps to .rrd files, read them back with rerun's own
reader (``rerun.chunk.RrdReader``: the recording store and the blueprint store), and check
entities, rows per entity on the ``step`` and ``frame`` timelines, the layout, and logged
values against what the env returned."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import pytest

import sanawm_gym  # noqa: F401  (registers the ids)
from sanawm_gym.recording import RerunRecorder, RerunVectorRecorder
from sanawm_gym.reference_world.topdown import TopDownMap

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "SanaWM/ReferenceNav-v0"
SIZE = 32  # small frames: fast to render and to read back
SCENE = ("ground", "walls", "boxes", "cylinders", "spheres")


@pytest.fixture(autouse=True)
def eager_renderer(monkeypatch):
    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")  # tiny frames: compiling would cost more than it saves


# ------------------------------------------------------------------------ reading back
@dataclass
class Rrd:
    """What an .rrd's recording store holds, per entity path (``/world/camera/image``, ...)."""

    application_id: str
    steps: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    """The ``step`` value of every row of each temporal entity that is on that timeline, in file order."""
    frames: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    """The ``frame`` value of every row of each temporal entity."""
    values: dict[str, dict[tuple[str, int], object]] = field(default_factory=lambda: defaultdict(dict))
    """``values[entity][(column, step)]``: a logged component value (the last one at that step)."""
    at_frame: dict[str, dict[tuple[str, int], object]] = field(default_factory=lambda: defaultdict(dict))
    """``at_frame[entity][(column, frame)]``: the same by frame."""
    video_ns: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    """``video_time`` (ns) of the rows at each frame."""
    static: dict[str, dict[str, object]] = field(default_factory=lambda: defaultdict(dict))
    """``static[entity][column]``: static components."""
    timelines: set[str] = field(default_factory=set)


def read_rrd(path: Path) -> Rrd:
    import pyarrow as pa
    from rerun.chunk import RrdReader

    reader = RrdReader(path)
    (store,) = reader.recordings()
    out = Rrd(store.application_id)
    for chunk in reader.stream():
        batch = chunk.to_record_batch()
        entity = chunk.entity_path
        data = [f.name for f in batch.schema if (f.metadata or {}).get(b"rerun:kind") == b"data"]
        if chunk.is_static:
            for name in data:
                out.static[entity][name] = batch.column(name).to_pylist()[-1]
            continue
        out.timelines.update(chunk.timeline_names)
        none = [None] * batch.num_rows
        steps = batch.column("step").to_pylist() if "step" in chunk.timeline_names else none
        frames = batch.column("frame").to_pylist() if "frame" in chunk.timeline_names else none
        video = batch.column("video_time").cast(pa.int64()).to_pylist() if "video_time" in chunk.timeline_names else none
        out.steps[entity] += [s for s in steps if s is not None]
        out.frames[entity] += [f for f in frames if f is not None]
        for frame, ns in zip(frames, video):
            out.video_ns[frame].add(ns)
        for name in data:
            for step, frame, value in zip(steps, frames, batch.column(name).to_pylist()):
                if value is not None:
                    if step is not None:
                        out.values[entity][(name, step)] = value
                    out.at_frame[entity][(name, frame)] = value
    return out


@dataclass
class Layout:
    """The blueprint store of an .rrd: its views and containers."""

    application_id: str
    views: dict[str, dict[str, object]]
    """``views[id]``: ``class`` (2D, 3D, TimeSeries), ``name``, ``origin``, ``contents`` (the query), ``eye``."""
    containers: dict[str, dict[str, object]]
    """``containers[id]``: ``kind`` and ``contents`` (``view/<id>`` or ``container/<id>``)."""
    root: str
    time_panel: dict[str, object]

    def view(self, name: str) -> dict[str, object]:
        (view,) = [v for v in self.views.values() if v["name"] == name]
        return view

    def children(self, container: str) -> list[str]:
        return [c.split("/", 1)[1] for c in self.containers[container]["contents"]]


def blueprints(path: Path) -> list:
    """The file's blueprint stores (one per blueprint sent; the viewer shows the last) in the order sent."""
    import pyarrow as pa
    from rerun.chunk import RrdReader

    reader = RrdReader(path)

    def sent_at(store) -> int:  # RrdReader lists the stores in no particular order
        return min(min(chunk.to_record_batch().column("log_time").cast(pa.int64()).to_pylist())
                   for chunk in reader.stream(store=store))

    return sorted(reader.blueprints(), key=sent_at)


def read_layout(path: Path, which: int = -1) -> Layout:
    """Blueprint ``which`` of the file, in the order sent."""
    from rerun.chunk import RrdReader

    reader = RrdReader(path)
    store = blueprints(path)[which]
    latest: dict[str, dict[str, object]] = defaultdict(dict)
    for chunk in reader.stream(store=store):
        batch = chunk.to_record_batch()
        for f in batch.schema:
            if (f.metadata or {}).get(b"rerun:kind") == b"data":
                values = [v for v in batch.column(f.name).to_pylist() if v is not None]
                if values:
                    latest[chunk.entity_path][f.name] = values[-1]
    views, containers = {}, {}
    for entity, comps in latest.items():
        if entity.startswith("/view/") and entity.count("/") == 2:
            key = entity.split("/")[2]
            eye = latest.get(f"{entity}/EyeControls3D", {})
            views[key] = {"class": comps["ViewBlueprint:class_identifier"][0], "name": comps["ViewBlueprint:display_name"][0],
                          "origin": comps["ViewBlueprint:space_origin"][0],
                          "contents": latest[f"{entity}/ViewContents"]["ViewContents:query"], "eye": eye}
        elif entity.startswith("/container/"):
            containers[entity.split("/")[2]] = {"kind": comps["ContainerBlueprint:container_kind"][0],
                                                "contents": comps.get("ContainerBlueprint:contents", [])}
    root = str(uuid.UUID(bytes=bytes(latest["/viewport"]["ViewportBlueprint:root_container"][0])))
    return Layout(store.application_id, views, containers, root, latest.get("/time_panel", {}))


def check_layout(path: Path, application_id: str, *, world: str = "/world", reference: bool = True,
                 topdown: str | None = "/topdown", which: int = -1, sent: int = 1) -> Layout:
    """The blueprint: observation (and reference) on top, side by side; the world, the map and the plots below."""
    from rerun.blueprint.components import ContainerKind

    assert len(blueprints(path)) == sent
    layout = read_layout(path, which)
    assert layout.application_id == application_id  # the viewer applies a blueprint to recordings of its application
    assert layout.time_panel["TimePanelBlueprint:timeline"] == ["video_time"]
    top, below = layout.children(layout.root)
    frames = [layout.views[v] for v in layout.children(top)]
    assert [(v["class"], v["name"], v["origin"], v["contents"]) for v in frames] == \
        [("2D", "observation", f"{world}/camera", ["+ $origin/image"])] + \
        ([("2D", "reference", f"{world}/camera", ["+ $origin/reference"])] if reference else [])
    assert layout.containers[layout.root]["kind"] == ContainerKind.Vertical.value
    assert layout.containers[top]["kind"] == layout.containers[below]["kind"] == ContainerKind.Horizontal.value
    world3d = layout.view("world")
    assert world3d["class"] == "3D" and world3d["origin"] == "/world"
    assert world3d["contents"] == [f"+ {world}/**", f"- {world}/camera/reference"]
    assert "EyeControls3D:position" in world3d["eye"]  # framed on the scene, not on the camera
    assert layout.children(below)[0] in layout.views and layout.views[layout.children(below)[0]]["name"] == "world"
    names = {v["name"]: v for v in layout.views.values()}
    assert (names["top-down map"]["origin"] == topdown) if topdown else "top-down map" not in names
    assert names["reward"]["class"] == names["distance"]["class"] == "TimeSeries"
    return layout


def strip_length(rrd: Rrd, entity: str, step: int, column: str = "LineStrips3D:strips") -> int:
    (strip,) = rrd.values[entity][(column, step)]
    return len(strip)


def scene_counts(scene) -> dict[str, int]:
    """How many of each primitive a scene uses (unused slots are parked far away)."""
    from sanawm_gym.reference_world.scene import OBJECT_KINDS, PARKED

    shape = {k.name: k.shape for k in OBJECT_KINDS}
    n_boxes = int((scene.box_lo[:, 0] < PARKED / 2).sum())
    n_box_objects = sum(shape[n] == "box" for n in scene.object_names)
    return {"ground": 1, "walls": n_boxes - n_box_objects, "boxes": n_box_objects,
            "cylinders": int((scene.cylinders[:, 2] > 0).sum()), "spheres": int((scene.spheres[:, 3] > 0).sum())}


def check_scene(rrd: Rrd, world: str, step: int, scene) -> None:
    """The scene's primitives as logged at ``step``: one instance per primitive, objects labelled by kind."""
    from sanawm_gym.reference_world.scene import OBJECT_KINDS

    column = {"cylinders": "Cylinders3D:centers", "spheres": "Ellipsoids3D:centers"}
    for name, count in scene_counts(scene).items():
        values = rrd.values[f"{world}/scene/{name}"]
        assert len(values[(column.get(name, "Boxes3D:centers"), step)]) == count, name
    walls = rrd.values[f"{world}/scene/walls"]
    assert count_walls_at_full_height(walls, step, scene.wall_height) == scene_counts(scene)["walls"]
    shape = {k.name: k.shape for k in OBJECT_KINDS}
    for name, kind, archetype in (("boxes", "box", "Boxes3D"), ("cylinders", "cylinder", "Cylinders3D"),
                                  ("spheres", "sphere", "Ellipsoids3D")):
        labels = [n for n in scene.object_names if shape[n] == kind]
        assert rrd.values[f"{world}/scene/{name}"].get((f"{archetype}:labels", step), []) == labels, name


def count_walls_at_full_height(walls: dict, step: int, height: float) -> int:
    return sum(abs(2 * h[2] - height) < 1e-4 for h in walls[("Boxes3D:half_sizes", step)])


class WithReference(gym.Wrapper):
    """Adds ``info["reference_rgb"]`` (here: the observation upside down) like ``Nav-v0(reference_frames=True)``."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, dict(info, reference_rgb=obs["rgb"][::-1].copy())

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, dict(info, reference_rgb=obs["rgb"][::-1].copy())


# ---------------------------------------------------------------------------- one env
def test_single_env_recording_reads_back(tmp_path):
    path = tmp_path / "single.rrd"
    base = gym.make(ENV_ID, height=SIZE, width=SIZE)
    env = RerunRecorder(WithReference(base), "rrd", path=path, application_id="test_single")
    env.action_space.seed(0)
    obs, info = env.reset(seed=0)
    start, infos = info["pose"], []
    for _ in range(6):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        infos.append(info)
        assert not (terminated or truncated)
    env.close()

    rrd = read_rrd(path)
    assert rrd.application_id == "test_single"
    assert {"step", "sim_time", "frame", "video_time"} <= rrd.timelines
    every_call, every_step = list(range(7)), list(range(1, 7))  # reset at step 0, then 6 steps
    expected = {
        "/world/camera": every_call,  # Transform3D (the chunks' earlier frames are on `frame` only)
        "/world/camera/image": every_call,
        "/world/camera/reference": every_call,
        "/world/trajectory": every_call,  # Clear at the reset, then the strip
        "/metrics/distance": every_call,
        "/metrics/reward": every_step,
        "/metrics/collided": every_step,  # the reference world's exact collisions
        "/world/goal": [0],
        **{f"/world/scene/{name}": [0] for name in SCENE},  # once: the episode has one scene
        "/topdown/map": [0],
        "/topdown/path": every_call,  # Clear at the reset, then the strip
        "/topdown/camera": every_call,
        "/topdown/goal": [0],
    }
    assert {e: sorted(s) for e, s in rrd.steps.items()} == expected

    # Every raw frame (K = 4 per step) on `frame`, at 16 fps on `video_time`; the observation (one frame) at the last.
    assert sorted(rrd.frames["/world/camera"]) == list(range(25))
    assert sorted(rrd.frames["/world/camera/image"]) == sorted(rrd.frames["/world/camera/reference"]) == [0, 4, 8, 12, 16, 20, 24]
    assert all(ns == {frame * 62_500_000} for frame, ns in rrd.video_ns.items())
    camera = rrd.at_frame["/world/camera"]
    for k, pose in enumerate(infos[2]["chunk_poses"]):  # step 3: frames 9..12
        np.testing.assert_allclose(camera[("Transform3D:translation", 9 + k)][0], pose[:3, 3], atol=1e-5)

    # The static pieces: the world's up axis and the camera's pinhole.
    assert "ViewCoordinates:xyz" in rrd.static["/world"]
    pinhole = rrd.static["/world/camera"]
    np.testing.assert_allclose(np.reshape(pinhole["Pinhole:image_from_camera"], (3, 3)).T, env.unwrapped.intrinsics, rtol=1e-6)
    assert pinhole["Pinhole:resolution"] == [[SIZE, SIZE]]

    # The last frame as logged equals what the env returned.
    image = rrd.values["/world/camera/image"]
    np.testing.assert_array_equal(np.asarray(image[("Image:buffer", 6)][0], np.uint8), obs["rgb"].reshape(-1))
    reference = rrd.values["/world/camera/reference"][("Image:buffer", 6)][0]
    np.testing.assert_array_equal(np.asarray(reference, np.uint8), obs["rgb"][::-1].reshape(-1))
    camera = rrd.values["/world/camera"]
    np.testing.assert_allclose(camera[("Transform3D:translation", 6)][0], info["pose"][:3, 3], atol=1e-5)
    np.testing.assert_allclose(np.reshape(camera[("Transform3D:mat3x3", 6)][0], (3, 3)).T, info["pose"][:3, :3], atol=1e-6)
    assert rrd.values["/metrics/reward"][("Scalars:scalars", 6)] == [pytest.approx(reward)]
    assert rrd.values["/world/goal"][("Points3D:positions", 0)][0] == pytest.approx(list(info["goal"]), abs=1e-5)
    # The path: the reset pose, then K = 4 raw-frame poses per step.
    assert strip_length(rrd, "/world/trajectory", 6) == 1 + 6 * 4

    # The scene, and the map with the same path growing step by step, in the map's pixels.
    check_scene(rrd, "/world", 0, env.unwrapped.scene)
    topdown = TopDownMap(env.unwrapped.scene, height=float(start[2, 3]), size=128)
    np.testing.assert_array_equal(np.asarray(rrd.values["/topdown/map"][("Image:buffer", 0)][0], np.uint8), topdown.base.reshape(-1))
    assert [strip_length(rrd, "/topdown/path", s, "LineStrips2D:strips") for s in every_step] == [1 + 4 * s for s in every_step]
    (strip,) = rrd.values["/topdown/path"][("LineStrips2D:strips", 6)]
    (trajectory,) = rrd.values["/world/trajectory"][("LineStrips3D:strips", 6)]
    np.testing.assert_allclose(strip, topdown.to_image(np.asarray(trajectory)[:, :2]), atol=1e-3)

    check_layout(path, "test_single")


def test_scene_is_logged_once_per_scene(tmp_path):
    """A new scene re-logs the geometry and the map at its reset; the same scene again logs nothing."""
    path = tmp_path / "scenes.rrd"
    env = RerunRecorder(gym.make(ENV_ID, height=SIZE, width=SIZE), "rrd", path=path)
    scenes = []
    for scene_seed in (11, 12, 12):  # resets at steps 0, 2, 4
        env.reset(seed=scene_seed, options={"scene_seed": scene_seed})
        scenes.append(env.unwrapped.scene)
        env.step(env.action_space.sample())
    env.close()

    rrd = read_rrd(path)
    for name in SCENE:
        assert sorted(rrd.steps[f"/world/scene/{name}"]) == [0, 2], name
        assert f"/world/scene/{name}" not in rrd.static  # static data would stand for every episode
    assert sorted(rrd.steps["/topdown/map"]) == [0, 2]
    assert scene_counts(scenes[0]) != scene_counts(scenes[1])
    check_scene(rrd, "/world", 0, scenes[0])
    check_scene(rrd, "/world", 2, scenes[1])
    assert sorted(rrd.steps["/topdown/path"]) == [0, 1, 2, 3, 4, 5]  # a Clear at each reset
    assert {s for (name, s) in rrd.values["/topdown/path"] if name == "Clear:is_recursive"} == {0, 2, 4}


def test_log_reference_false_leaves_the_reference_out(tmp_path):
    env = RerunRecorder(WithReference(gym.make(ENV_ID, height=SIZE, width=SIZE)), "rrd", path=tmp_path / "r.rrd",
                        log_reference=False, log_topdown=False, blueprint=False)
    env.reset(seed=1)
    env.step(env.action_space.sample())
    env.close()
    entities = set(read_rrd(tmp_path / "r.rrd").steps)
    assert "/world/camera/image" in entities and "/world/camera/reference" not in entities
    assert not any(e.startswith("/topdown") for e in entities) and "/world/scene/walls" in entities
    from rerun.chunk import RrdReader

    assert RrdReader(tmp_path / "r.rrd").blueprints() == []


# -------------------------------------------------------------------- the world model
@pytest.fixture(scope="module")
def tiny_model():
    """A tiny random world model (32x32 frames), as in test_world_model_nav.py."""
    import torch

    from world_model.autoencoder import Autoencoder, AutoencoderConfig
    from world_model.model import WorldModelBackbone, WorldModelConfig
    from world_model.world_model import WorldModel

    torch.manual_seed(0)
    ae = AutoencoderConfig(latent_channels=4, frame_widths=(8, 8), latent_widths=(16, 16), encoder_blocks=(1, 0, 0, 1),
                           decoder_blocks=(1, 0, 0, 1))
    backbone = WorldModelBackbone(WorldModelConfig(latent_channels=4, latent_height=4, latent_width=4, depth=2, width=32,
                                                   num_heads=2, softmax_every=2, softmax_window_chunks=2))
    return WorldModel(Autoencoder(ae), backbone, sample_steps=2)


def test_world_model_env_logs_every_frame_of_each_chunk(tmp_path, tiny_model):
    """Nav-v0 with chunk observations and reference frames: an episode from a user image (no
    scene: no geometry, no map), then one in a scene (geometry, map, and the blueprint again)."""
    path = tmp_path / "imagined.rrd"
    env = RerunRecorder(gym.make("SanaWM/Nav-v0", model=tiny_model, obs_mode="chunk", reference_frames=True), "rrd",
                        path=path, application_id="test_imagined")
    image = np.random.default_rng(0).integers(0, 256, env.observation_space["rgb"].shape[1:], dtype=np.uint8)
    first = env.reset(seed=0, options={"image": image})[1]["pose"]  # step 0
    assert env.unwrapped.scene is None
    env.step(env.action_space.sample())  # step 1
    obs, info = env.reset(seed=0)  # step 2: a scene
    start = info["pose"]
    steps = []
    for _ in range(3):  # steps 3, 4, 5
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps.append((obs, info))
    env.close()

    rrd = read_rrd(path)
    K = 4
    # The camera at every raw frame; the images of a chunk observation at every raw frame too.
    every_frame = [0, *range(1, K + 1), K * 2, *range(K * 2 + 1, K * 5 + 1)]  # reset, step, reset, 3 steps
    assert sorted(rrd.frames["/world/camera"]) == sorted(rrd.frames["/world/camera/image"]) == every_frame
    assert sorted(rrd.steps["/world/camera/image"]) == [0, 1, 2, 3, 4, 5]  # one row per call on `step`
    assert sorted(rrd.frames["/world/camera/reference"]) == [K * 2, K * 3, K * 4, K * 5]  # scene episodes only
    assert all(ns == {frame * 62_500_000} for frame, ns in rrd.video_ns.items())  # 16 fps
    images, camera = rrd.at_frame["/world/camera/image"], rrd.at_frame["/world/camera"]
    for t, (obs, info) in zip((3, 4, 5), steps):
        for k in range(K):
            frame = K * t - (K - 1 - k)
            np.testing.assert_array_equal(np.asarray(images[("Image:buffer", frame)][0], np.uint8), obs["rgb"][k].reshape(-1))
            np.testing.assert_allclose(camera[("Transform3D:translation", frame)][0], info["chunk_poses"][k][:3, 3], atol=1e-5)
        reference = rrd.values["/world/camera/reference"][("Image:buffer", t)][0]
        np.testing.assert_array_equal(np.asarray(reference, np.uint8), info["reference_rgb"].reshape(-1))

    # No scene in the first episode; the scene's geometry and map arrive with the second.
    for name in SCENE:
        assert sorted(rrd.steps[f"/world/scene/{name}"]) == [2], name
    check_scene(rrd, "/world", 2, env.unwrapped.scene)
    assert sorted(rrd.steps["/topdown/map"]) == [2]
    assert [strip_length(rrd, "/topdown/path", t, "LineStrips2D:strips") for t in (3, 4, 5)] == [5, 9, 13]
    topdown = TopDownMap(env.unwrapped.scene, height=float(start[2, 3]), size=128)
    (strip,) = rrd.values["/topdown/path"][("LineStrips2D:strips", 5)]
    (trajectory,) = rrd.values["/world/trajectory"][("LineStrips3D:strips", 5)]
    np.testing.assert_allclose(strip, topdown.to_image(np.asarray(trajectory)[:, :2]), atol=1e-3)
    # The blueprint sent at the first reset had neither the reference view nor the map; the scene brought both.
    # The 3-D view looked at the start of the first episode, then at the arena's centre.
    before = check_layout(path, "test_imagined", reference=False, topdown=None, which=0, sent=2)
    after = check_layout(path, "test_imagined", which=1, sent=2)
    assert before.view("world")["eye"]["EyeControls3D:look_target"][0] == pytest.approx(list(first[:3, 3]), abs=1e-6)
    assert after.view("world")["eye"]["EyeControls3D:look_target"] == [[0.0, 0.0, 0.0]]


def test_depth_observation_and_collisions_are_logged(tmp_path, tiny_model):
    """Nav-v0 with a depth head and the depth observation: the chunk's last depth map under the
    camera's pinhole, and whether each step collided."""
    from world_model.autoencoder.depth import DepthHead, DepthHeadConfig
    from world_model.world_model import WorldModel

    head = DepthHead(DepthHeadConfig(latent_channels=4, width=8, blocks=1, up_widths=(8, 4)))
    model = WorldModel(tiny_model.autoencoder, tiny_model.backbone, tiny_model.sample_steps, depth_head=head)
    path = tmp_path / "depth.rrd"
    env = RerunRecorder(gym.make("SanaWM/Nav-v0", model=model, depth=True, collisions=True), "rrd", path=path,
                        application_id="test_depth")
    obs, _ = env.reset(seed=0)
    env.unwrapped.core.depth[0] = 0.3  # a wall just ahead: the next forward step collides
    obs, _, _, _, info = env.step(np.array([0, 0, 1.0, 0, 0, 0], np.float32))
    env.close()
    assert info["collided"]
    rrd = read_rrd(path)
    assert sorted(rrd.steps["/world/camera/depth"]) == [0, 1]
    assert sorted(rrd.steps["/metrics/collided"]) == [1]
    (value,) = rrd.values["/metrics/collided"][("Scalars:scalars", 1)]
    assert value == 1.0


# ------------------------------------------------------------------------- vector env
def test_vector_env_next_step_autoreset_starts_a_new_trajectory(tmp_path):
    path = tmp_path / "vector.rrd"
    venv = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="sync", max_episode_steps=3, height=SIZE, width=SIZE)
    env = RerunVectorRecorder(venv, "rrd", path=path)
    env.reset(seed=[3, 4])
    hold = np.zeros(env.action_space.shape, np.float32)  # standing still: no success, truncated at step 3
    for t in range(1, 6):
        obs, rewards, terminations, truncations, infos = env.step(hold)
        assert truncations.all() == (t == 3) and not terminations.any()
        if t == 4:
            new_goals = infos["goal"]  # the autoreset row's info: the new episode's goal
    env.close()

    rrd = read_rrd(path)
    for i in range(2):
        world, metrics = f"/world/env_{i}", f"/metrics/env_{i}"
        assert sorted(rrd.steps[f"{world}/camera/image"]) == [0, 1, 2, 3, 4, 5]
        assert sorted(rrd.steps[f"{world}/camera"]) == [0, 1, 2, 3, 4, 5]
        assert sorted(rrd.frames[f"{world}/camera"]) == [0, *range(1, 13), 16, *range(17, 21)]  # step 4: a reset, one frame
        assert sorted(rrd.steps[f"{metrics}/distance"]) == [0, 1, 2, 3, 4, 5]
        assert sorted(rrd.steps[f"{metrics}/reward"]) == [1, 2, 3, 5]  # step 4 was a reset, not a step
        assert sorted(rrd.steps[f"{world}/goal"]) == [0, 4]
        assert sorted(rrd.steps[f"{world}/scene/walls"]) == [0, 4]  # the new episode draws a new scene
        assert rrd.values[f"{world}/goal"][("Points3D:positions", 4)][0] == pytest.approx(list(new_goals[i]), abs=1e-5)
        trajectory = rrd.values[f"{world}/trajectory"]
        assert {s for (name, s) in trajectory if name == "Clear:is_recursive"} == {0, 4}
        assert [strip_length(rrd, f"{world}/trajectory", s) for s in (1, 2, 3, 5)] == [5, 9, 13, 5]
        assert pytest.approx(rrd.static[f"{world}/camera"]["Pinhole:resolution"][0]) == [SIZE, SIZE]
        np.testing.assert_array_equal(np.asarray(rrd.values[f"{world}/camera/image"][("Image:buffer", 5)][0], np.uint8),
                                      obs["rgb"][i].reshape(-1))
    assert not any(e.startswith("/world/camera") for e in rrd.steps)  # nothing logged outside the env prefixes
    assert sorted(rrd.steps["/topdown/env_0/map"]) == [0, 4]  # the map: env 0's only
    assert not any(e.startswith("/topdown/env_1") for e in rrd.steps)
    layout = check_layout(path, "sanawm_gym", world="/world/env_0", reference=False, topdown="/topdown/env_0")
    assert layout.view("reward")["contents"] == ["+ /metrics/env_0/reward", "+ /metrics/env_1/reward"]


def test_vector_env_same_step_autoreset_logs_the_final_and_the_reset_frame(tmp_path):
    path = tmp_path / "same_step.rrd"
    venv = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="sync", max_episode_steps=3, height=SIZE, width=SIZE,
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    env = RerunVectorRecorder(venv, "rrd", path=path)
    env.reset(seed=[5, 6])
    for _ in range(4):
        obs, *_ = env.step(np.zeros(env.action_space.shape, np.float32))
    env.close()

    rrd = read_rrd(path)
    for i in range(2):
        world = f"/world/env_{i}"
        assert sorted(rrd.steps[f"{world}/camera/image"]) == [0, 1, 2, 3, 3, 4]  # step 3: the final frame, then the reset
        assert sorted(rrd.steps[f"/metrics/env_{i}/reward"]) == [1, 2, 3, 4]
        assert sorted(rrd.steps[f"{world}/goal"]) == [0, 3]
        assert sorted(rrd.steps[f"{world}/scene/walls"]) == [0, 3]
        assert [strip_length(rrd, f"{world}/trajectory", s) for s in (2, 4)] == [9, 5]


# ------------------------------------------------------------------------ command line
def test_record_cli_writes_rrd_and_video(tmp_path):
    out = tmp_path / "run" / "episode.rrd"
    env = dict(os.environ, PYTHONUNBUFFERED="1", SANAWM_RENDER_BACKEND="eager")
    proc = subprocess.run([sys.executable, "-m", "sanawm_gym.cli", "record", "--env", ENV_ID, "--steps", "4", "--seed", "0",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    video = out.with_suffix(".mp4")
    assert str(out) in proc.stdout and str(video) in proc.stdout and "4 steps, 1 episodes" in proc.stdout
    rrd = read_rrd(out)
    assert sorted(rrd.steps["/world/camera/image"]) == [0, 1, 2, 3, 4]
    frames = imageio.mimread(video, memtest=False)
    assert len(frames) == 5 and frames[0].shape == (256, 256, 3)


def test_record_cli_rejects_a_directory_as_rrd(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sanawm_gym.cli", "record", "--steps", "1", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "is a directory" in proc.stderr


# ------------------------------------------------------------------- the rerun boundary
def test_importing_the_package_does_not_load_rerun():
    code = ("import sys, gymnasium as gym, sanawm_gym, sanawm_gym.recording, sanawm_gym.cli; "
            "gym.make('SanaWM/ReferenceNav-v0'); print('rerun' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"


def test_only_the_recording_module_imports_rerun():
    pattern = re.compile(r"^\s*(import rerun|from rerun[ .])", re.MULTILINE)
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("sanawm_gym", "world_model", "policies", "examples")
        for p in (ROOT / folder).rglob("*.py")
        if p.name != "recording.py" and pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []


# ---------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    ("mode", "path", "message"),
    [
        ("rdd", "x.rrd", "mode must be one of"),
        ("rrd", None, "needs path"),
        ("rrd", "DIR", "is a directory"),
        ("rrd", "episode.mp4", "must end in '.rrd'"),
    ],
)
def test_bad_recorder_arguments_raise_value_error(tmp_path, mode, path, message):
    env = gym.make(ENV_ID, height=SIZE, width=SIZE)
    path = tmp_path if path == "DIR" else (None if path is None else tmp_path / path)
    with pytest.raises(ValueError, match=message):
        RerunRecorder(env, mode, path=path)
    with pytest.raises(ValueError, match=message):
        RerunVectorRecorder(gym.vector.SyncVectorEnv([lambda: gym.make(ENV_ID, height=SIZE, width=SIZE)]), mode, path=path)


def test_recorder_rejects_envs_without_an_rgb_observation(tmp_path):
    with pytest.raises(ValueError, match="Dict observation space with an 'rgb'"):
        RerunRecorder(gym.make("CartPole-v1"), "rrd", path=tmp_path / "x.rrd")
    with pytest.raises(ValueError, match="grpc_port must be an integer"):
        RerunRecorder(gym.make(ENV_ID, height=SIZE, width=SIZE), "serve", grpc_port=70000)
