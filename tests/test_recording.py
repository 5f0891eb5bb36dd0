"""The Rerun recorders: record a few steps to .rrd files, read them back with rerun's own
reader (``rerun.chunk.RrdReader``), and check entities, rows per entity on the ``step``
timeline, and a few logged values against what the env returned."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import pytest

import sanawm_gym  # noqa: F401  (registers the ids)
from sanawm_gym.recording import RerunRecorder, RerunVectorRecorder

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "SanaWM/ReferenceNav-v0"
SIZE = 32  # small frames: fast to render and to read back


@pytest.fixture(autouse=True)
def eager_renderer(monkeypatch):
    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")  # tiny frames: compiling would cost more than it saves


# ------------------------------------------------------------------------ reading back
@dataclass
class Rrd:
    """What an .rrd holds, per entity path (``/world/camera/image``, ...)."""

    application_id: str
    steps: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    """The ``step`` value of every row of each temporal entity, in file order."""
    values: dict[str, dict[tuple[str, int], object]] = field(default_factory=lambda: defaultdict(dict))
    """``values[entity][(column, step)]``: a logged component value (the last one at that step)."""
    static: dict[str, dict[str, object]] = field(default_factory=lambda: defaultdict(dict))
    """``static[entity][column]``: static components."""
    timelines: set[str] = field(default_factory=set)


def read_rrd(path: Path) -> Rrd:
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
        steps = batch.column("step").to_pylist()
        out.steps[entity] += steps
        for name in data:
            for step, value in zip(steps, batch.column(name).to_pylist()):
                if value is not None:
                    out.values[entity][(name, step)] = value
    return out


def strip_length(rrd: Rrd, entity: str, step: int) -> int:
    (strip,) = rrd.values[entity][("LineStrips3D:strips", step)]
    return len(strip)


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
    for _ in range(6):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert not (terminated or truncated)
    env.close()

    rrd = read_rrd(path)
    assert rrd.application_id == "test_single"
    assert {"step", "sim_time"} <= rrd.timelines
    every_frame, every_step = list(range(7)), list(range(1, 7))  # reset at step 0, then 6 steps
    expected = {
        "/world/camera": every_frame,  # Transform3D
        "/world/camera/image": every_frame,
        "/world/camera/reference": every_frame,
        "/world/trajectory": every_frame,  # Clear at the reset, then the strip
        "/metrics/distance": every_frame,
        "/metrics/reward": every_step,
        "/world/goal": [0],
        "/topdown": [0],
    }
    assert {e: sorted(s) for e, s in rrd.steps.items()} == expected

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


def test_log_reference_false_leaves_the_reference_out(tmp_path):
    env = RerunRecorder(WithReference(gym.make(ENV_ID, height=SIZE, width=SIZE)), "rrd", path=tmp_path / "r.rrd",
                        log_reference=False, log_topdown=False)
    env.reset(seed=1)
    env.step(env.action_space.sample())
    env.close()
    entities = set(read_rrd(tmp_path / "r.rrd").steps)
    assert "/world/camera/image" in entities and "/world/camera/reference" not in entities and "/topdown" not in entities


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
        assert sorted(rrd.steps[f"{metrics}/distance"]) == [0, 1, 2, 3, 4, 5]
        assert sorted(rrd.steps[f"{metrics}/reward"]) == [1, 2, 3, 5]  # step 4 was a reset, not a step
        assert sorted(rrd.steps[f"{world}/goal"]) == [0, 4]
        assert rrd.values[f"{world}/goal"][("Points3D:positions", 4)][0] == pytest.approx(list(new_goals[i]), abs=1e-5)
        trajectory = rrd.values[f"{world}/trajectory"]
        assert {s for (name, s) in trajectory if name == "Clear:is_recursive"} == {0, 4}
        assert [strip_length(rrd, f"{world}/trajectory", s) for s in (1, 2, 3, 5)] == [5, 9, 13, 5]
        assert pytest.approx(rrd.static[f"{world}/camera"]["Pinhole:resolution"][0]) == [SIZE, SIZE]
        np.testing.assert_array_equal(np.asarray(rrd.values[f"{world}/camera/image"][("Image:buffer", 5)][0], np.uint8),
                                      obs["rgb"][i].reshape(-1))
    assert not any(e.startswith("/world/camera") for e in rrd.steps)  # nothing logged outside the env prefixes


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
