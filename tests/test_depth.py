"""Depth in imagination: the dataset's exact depth, the depth head and its stage, the model's
depth outputs, collisions predicted from depth in Nav-v0, and their evaluation."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import sanawm_gym  # noqa: F401
from sanawm_gym.dataset import write_dataset
from sanawm_gym.depth_collision import SurfaceMemory, depth_points, points_sweep, surface_reach, surface_sweep
from sanawm_gym.kinematics import MotionConfig, move_chunk
from sanawm_gym.reference_world import SceneConfig, generate_scene, render
from sanawm_gym.reference_world.collision import obstacle_sweep, signed_distance
from world_model.autoencoder.depth import DepthHead, DepthHeadConfig, depth_log_l1
from world_model.data import PosedVideoDataset
from world_model.geometry import intrinsics_from_fov, pose_from_yaw_pitch
from world_model.world_model import WorldModel, load_depth_head

from test_world_model import AE, tiny_world_model

HEAD = DepthHeadConfig(latent_channels=AE.latent_channels, width=8, blocks=1, up_widths=(8, 4))


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")


def depth_model(seed: int = 0) -> WorldModel:
    wm = tiny_world_model(seed)
    torch.manual_seed(seed)
    wm.depth_head = DepthHead(HEAD).eval()
    return wm


@pytest.fixture(scope="module")
def depth_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth") / "set"
    write_dataset(root, 2, 9, height=32, width=32, seed=7, progress=False, depth=True)
    return root


# --------------------------------------------------------------------------------- data
def test_dataset_stores_the_exact_depth_and_the_reader_returns_it(depth_set, tmp_path):
    ds = PosedVideoDataset(depth_set, 9, random_crop=False, depth=True)
    item = ds[0]
    assert item["depth"].shape == (9, 32, 32) and item["depth"].dtype == torch.float32
    # Unprojected at the clip's poses, the stored depth lies on the scene's surfaces (float16: mm).
    from sanawm_gym.dataset import clip_seeds

    scene = generate_scene(clip_seeds(7, 0)[0])
    pts = depth_points(item["depth"].numpy(), item["c2w"].double().numpy(), item["intrinsics"][0].double().numpy(), 1)
    assert len(pts) > 1000 and float(np.abs(np.asarray(signed_distance(scene, pts))).max()) < 0.02
    assert "depth" not in PosedVideoDataset(depth_set, 9, random_crop=False)[0]  # only when asked for
    write_dataset(tmp_path / "rgb", 1, 5, height=32, width=32, seed=7, progress=False)
    with pytest.raises(ValueError, match="holds no depth.*--depth"):
        PosedVideoDataset(tmp_path / "rgb", 5, depth=True)


# --------------------------------------------------------------------------------- head
def test_depth_head_shapes_range_and_config():
    head = DepthHead(HEAD)
    z = torch.randn(2, 3, AE.latent_channels, 4, 4)
    with torch.no_grad():
        d = head(z)
    assert d.shape == (2, 3, 4, 32, 32)
    assert float(d.min()) >= HEAD.min_depth - 1e-6 and float(d.max()) <= HEAD.max_depth + 1e-4
    # A fresh head says the geometric middle of its range everywhere.
    torch.testing.assert_close(d, torch.full_like(d, math.sqrt(HEAD.min_depth * HEAD.max_depth)))
    assert DepthHeadConfig.from_json(HEAD.to_json()) == HEAD
    with pytest.raises(ValueError, match="min_depth < max_depth"):
        DepthHeadConfig(min_depth=2, max_depth=1)
    with pytest.raises(ValueError, match="image_stride"):
        DepthHeadConfig(up_widths=(8, 8, 8, 8))
    with pytest.raises(ValueError, match="latents must be"):
        head(torch.randn(2, 5, 4, 4))


def test_log_l1_clamps_sky_and_ignores_nan():
    target = torch.tensor([[1.0, math.inf, math.nan, 0.001]])
    pred = torch.log(torch.tensor([[1.0, 24.0, 5.0, 0.05]]))
    assert float(depth_log_l1(pred, target, 0.05, 24.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(depth_log_l1(pred + 1, target, 0.05, 24.0)) == pytest.approx(1.0, abs=1e-6)


def test_depth_targets_follow_the_latent_grouping():
    from world_model.train.stages.depth import depth_targets

    depth = torch.arange(9.0)[None, :, None, None].expand(1, 9, 2, 2)
    t = depth_targets(depth, 4)
    assert t.shape == (1, 3, 4, 2, 2)
    assert t[0, :, :, 0, 0].tolist() == [[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]]


# -------------------------------------------------------------------------------- model
def test_world_model_gives_depth_with_its_frames_and_saves_the_head(tmp_path):
    wm = depth_model()
    K = intrinsics_from_fov(90, 32, 32).numpy()
    pose = pose_from_yaw_pitch(np.array([0.0, 0.0, 1.2]), 0.0, 0.0)
    first = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    frames, state, depth = wm.init_state(first, np.stack([pose, pose]), np.stack([K, K]), depth=True)
    assert frames.shape == (2, 32, 32, 3) and depth.shape == (2, 32, 32) and depth.dtype == np.float32
    chunk = np.repeat(pose[None, None], 4, 1).repeat(2, 0)
    g = torch.Generator().manual_seed(0)
    frames2, state2 = wm.step(state, chunk, generator=g)
    g = torch.Generator().manual_seed(0)
    frames3, state3, d = wm.step(state, chunk, generator=g, depth=True)
    assert d.shape == (2, 4, 32, 32) and np.array_equal(frames2, frames3)  # depth changes nothing else
    wm.save_pretrained(tmp_path / "wm", dtype=torch.float16)
    back = WorldModel.from_pretrained(tmp_path / "wm")
    assert back.has_depth and back.depth_head.config == HEAD
    assert load_depth_head(tmp_path / "wm" / "backbone") is None  # another part's folder is not a depth head
    plain = tiny_world_model()
    assert not plain.has_depth
    with pytest.raises(ValueError, match="no depth head"):
        plain.step(state, chunk, generator=g, depth=True)


def test_packaged_models_share_the_depth_head():
    from world_model.world_model import DEFAULT_WEIGHTS

    if not (DEFAULT_WEIGHTS / "depth" / "config.json").is_file():
        pytest.skip("no packaged depth head")
    for name in ("default", "teacher"):
        head = load_depth_head(name)
        assert head is not None and head.config.latent_channels == 128


# ----------------------------------------------------------------------- collision rule
def _facing_wall(distance: float):
    """An open scene without objects, a level camera ``distance`` m from the +x wall facing it."""
    scene = generate_scene(3, SceneConfig(layout="open", n_objects=(0, 0)))
    half = scene.arena_half
    pose = pose_from_yaw_pitch(np.array([half - distance, 0.0, 1.2]), 0.0, 0.0)
    return scene, pose


def test_points_sweep_with_exact_depth_stops_where_the_scene_does():
    motion = MotionConfig()
    K = intrinsics_from_fov(90, 64, 64).numpy()
    for distance in (0.35, 0.45, 0.6, 1.0):
        scene, pose = _facing_wall(distance)
        assert float(signed_distance(scene, pose[None, :3, 3])[0]) == pytest.approx(distance, abs=1e-4)
        assert pose[0, 2] == pytest.approx(1.0)  # looking along +x, at the wall
        depth = np.asarray(render(scene, pose, K, 64, 64).depth)
        points = depth_points(depth, pose, K, 2, 24.0)
        for forward in (1.0, -1.0):
            twist = np.array([0, 0, forward, 0, 0, 0.0])
            exact = move_chunk(pose, twist, motion, obstacle_sweep(scene))
            seen = move_chunk(pose, twist, motion, points_sweep(points, 1))
            assert seen.collided == exact.collided, (distance, forward)
            np.testing.assert_allclose(seen.poses[:, :3, 3], exact.poses[:, :3, 3], atol=1e-9)
    with pytest.raises(ValueError, match="min_points"):
        points_sweep(points, 0)
    assert not points_sweep(np.zeros((0, 3)))(np.zeros((2, 3)), np.ones((2, 3)), 0.2).any()


def test_surface_memory_keeps_one_point_per_voxel_fixed_in_size_and_finds_what_is_near():
    rng = np.random.default_rng(0)
    memory = SurfaceMemory(voxel=0.1, capacity=400)
    for _ in range(6):
        memory.add(rng.uniform(-1, 1, (300, 3)))
        cells = np.floor(memory.points / 0.1)
        assert len(np.unique(cells, axis=0)) == len(memory) <= 400  # one point per voxel, never more than capacity
        assert (np.diff(memory.keys) > 0).all()
    # the earliest added go first: the last batch is all still there
    last = rng.uniform(-1, 1, (50, 3))
    memory.add(last)
    assert {tuple(c) for c in np.floor(last / 0.1)} <= {tuple(c) for c in np.floor(memory.points / 0.1)}
    # the latest point seen in a voxel is the one kept, where it is (not the voxel's centre)
    one = SurfaceMemory(voxel=0.1)
    one.add(np.array([[0.01, 0.02, 0.03], [0.05, 0.05, 0.05], [np.nan, 0, 0]]))
    np.testing.assert_array_equal(one.points, [[0.05, 0.05, 0.05]])
    # near == brute force, and extra points count once per voxel the memory lacks
    for _ in range(20):
        c, r = rng.uniform(-1, 1, 3), rng.uniform(0.05, 1.0)
        brute = memory.points[((memory.points - c) ** 2).sum(-1) <= r * r]
        got, none = memory.near_split(c, r)
        assert len(got) == len(brute) and np.allclose(np.sort(got, 0), np.sort(brute, 0)) and not len(none)
    extra = np.array([[5.01, 5.01, 5.01], [5.02, 5.02, 5.02], memory.points[0] + 1e-4])
    known, fresh = memory.near_split(np.array([5.0, 5.0, 5.0]), 0.2, extra)
    assert not len(known)
    np.testing.assert_array_equal(fresh, [[5.01, 5.01, 5.01]])
    known, fresh = memory.near_split(memory.points[0], 1e-3, extra)
    assert len(known) == 1 and not len(fresh)  # the voxel is held: its own point only
    # a snapshot's state restores exactly; anything else is refused with the reason
    again = SurfaceMemory(voxel=0.1, capacity=400)
    again.restore(memory.state())
    np.testing.assert_array_equal(again.keys, memory.keys) and np.testing.assert_array_equal(again.points, memory.points)
    for bad in (np.zeros((3, 2)), np.full((2, 3), np.nan), np.zeros((500, 3)), np.zeros((2, 3), np.float32),
                np.zeros((2, 3))):
        with pytest.raises(ValueError, match="surface memory"):
            again.restore(bad)
    with pytest.raises(ValueError, match="voxel"):
        SurfaceMemory(voxel=0)


def test_surface_sweep_remembers_a_wall_the_last_chunk_no_longer_shows():
    motion = MotionConfig()
    K = intrinsics_from_fov(90, 64, 64).numpy()
    scene, pose = _facing_wall(0.35)
    memory = SurfaceMemory()
    memory.add(depth_points(np.asarray(render(scene, pose, K, 64, 64).depth), pose, K, 2, 24.0))
    blind = np.full((4, 64, 64), 24.0, np.float32)  # the last chunk shows nothing near
    chunk = np.repeat(pose[None], 4, 0)
    twist = np.array([0, 0, 1.0, 0, 0, 0])
    exact = move_chunk(pose, twist, motion, obstacle_sweep(scene))
    kept = move_chunk(pose, twist, motion, surface_sweep(memory, blind, chunk, K, pose[:3, 3], surface_reach(motion), 1,
                                                         24.0))
    forgot = move_chunk(pose, twist, motion, surface_sweep(SurfaceMemory(), blind, chunk, K, pose[:3, 3],
                                                           surface_reach(motion), 1, 24.0))
    assert exact.collided and kept.collided and not forgot.collided
    np.testing.assert_allclose(kept.poses[:, :3, 3], exact.poses[:, :3, 3], atol=1e-9)
    # a remembered point touches alone; the last chunk's points take min_points of them
    sees = np.asarray(render(scene, chunk, K, 64, 64).depth, np.float32)
    for memory_, threshold, stops in ((memory, 10**6, True), (SurfaceMemory(), 1, True), (SurfaceMemory(), 10**6, False)):
        sweep = surface_sweep(memory_, sees, chunk, K, pose[:3, 3], surface_reach(motion), threshold, 24.0)
        assert move_chunk(pose, twist, motion, sweep).collided == stops
    known, fresh = memory.near_split(pose[:3, 3], 0.4, depth_points(sees, chunk, K, 2, 24.0))
    assert len(known) > 0 and len(fresh) == 0  # the chunk shows the remembered wall: its voxels are held
    assert surface_reach(motion) == pytest.approx(0.2 + math.sqrt(3) * 0.25)


# --------------------------------------------------------------------------------- env
def test_nav_env_depth_observation_and_predicted_collisions():
    wm = depth_model()
    assert gym.make("SanaWM/Nav-v0", model=wm).unwrapped.core.collisions  # on by default with a depth head ...
    assert not gym.make("SanaWM/Nav-v0", model=tiny_world_model()).unwrapped.core.collisions  # ... off without one
    env = gym.make("SanaWM/Nav-v0", model=wm, depth=True, collisions=True)
    obs, info = env.reset(seed=0)
    assert obs["depth"].shape == (32, 32) and obs["depth"].dtype == np.float32
    assert env.observation_space.contains(obs) and info["collided"] is False
    core = env.unwrapped.core
    # A wall 0.3 m ahead in the last chunk's depth: forward stops after the first frame (0.0625 m:
    # the next would bring the sphere of 0.2 m into it), the penalty applies.
    core.depth[0] = 0.3
    start = info["pose"].copy()
    _, reward, _, _, info = env.step(np.array([0, 0, 1.0, 0, 0, 0], np.float32))
    assert info["collided"] and np.linalg.norm(info["pose"][:3, 3] - start[:3, 3]) == pytest.approx(0.0625, abs=1e-6)
    assert reward <= 0.0625 - core.task.collision_penalty  # at most the progress, less the penalty
    # Nothing near in view: the camera moves; turning in place never collides.
    core.depth[0] = 20.0
    pose = info["pose"].copy()
    _, _, _, _, info = env.step(np.array([0, 0, 1.0, 0, 0, 0], np.float32))
    assert not info["collided"] and np.linalg.norm(info["pose"][:3, 3] - pose[:3, 3]) == pytest.approx(0.25, abs=1e-6)
    core.depth[0] = 0.3
    assert not env.step(np.array([0, 0, 0, 0, 1.0, 0], np.float32))[4]["collided"]
    obs = env.step(np.zeros(6, np.float32))[0]
    assert env.observation_space.contains(obs) and np.isfinite(obs["depth"]).all()
    # Chunk mode: K maps; off: no depth key, never a collision.
    chunk = gym.make("SanaWM/Nav-v0", model=wm, depth=True, obs_mode="chunk")
    assert chunk.reset(seed=0)[0]["depth"].shape == (4, 32, 32)
    off = gym.make("SanaWM/Nav-v0", model=wm, collisions=False)
    off.reset(seed=0)
    off.unwrapped.core.depth[0] = 0.3
    obs, _, _, _, info = off.step(np.array([0, 0, 1.0, 0, 0, 0], np.float32))
    assert "depth" not in obs and not info["collided"]
    for kwargs in ({"depth": True}, {"collisions": True}):
        with pytest.raises(ValueError, match="need a world model with a depth head"):
            gym.make("SanaWM/Nav-v0", model=tiny_world_model(), **kwargs)
    with pytest.raises(ValueError, match="collisions must be True, False or None"):
        gym.make("SanaWM/Nav-v0", model=wm, collisions="yes")
    with pytest.raises(ValueError, match="collision_points"):
        gym.make("SanaWM/Nav-v0", model=wm, collision_points=0)


def test_depth_env_conforms_and_snapshots_restore_the_depth(tmp_path):
    wm = depth_model()
    env = gym.make("SanaWM/Nav-v0", model=wm, depth=True, collisions=True)
    check_env(env.unwrapped, skip_render_check=True)
    env.reset(seed=1)
    env.step(np.array([0, 0, 0.5, 0, 0.3, 0], np.float32))
    snap = env.unwrapped.get_state()
    assert snap.depth is not None and snap.depth.shape == (4, 32, 32)
    actions = [np.array([0, 0, 1.0, 0, 0.2, 0], np.float32)] * 3
    first = [env.step(a) for a in actions]
    saved = env.unwrapped.get_state().depth
    env.unwrapped.save_state(tmp_path / "s")
    env.unwrapped.set_state(snap)
    again = [env.step(a) for a in actions]
    for a, b in zip(first, again):
        assert np.array_equal(a[0]["depth"], b[0]["depth"]) and a[4]["collided"] == b[4]["collided"]
    env.unwrapped.load_state(tmp_path / "s")
    assert np.array_equal(env.unwrapped.get_state().depth, saved) and np.array_equal(saved[-1], first[-1][0]["depth"])
    bad = env.unwrapped.get_state()
    bad.depth = bad.depth[:2]
    with pytest.raises(ValueError, match="snapshot depth"):
        env.unwrapped.set_state(bad)


def test_nav_env_remembers_the_surfaces_known_at_reset(tmp_path):
    wm = depth_model()
    env = gym.make("SanaWM/Nav-v0", model=wm, collisions=True)
    _, info = env.reset(seed=3)
    core = env.unwrapped.core
    # the memory holds the exact render's surfaces of the frames the episode starts from: the
    # look-around context (4 s by default: a full turn) ending at the start pose
    from sanawm_gym.kinematics import look_around

    c2w = look_around(core.pose[0], core.config.context_seconds, core.motion.fps, core.motion.frames_per_step)
    assert len(c2w) == 65  # 4 s at 16 frames/s, and the start
    exact = np.asarray(render(core.scenes[0], c2w, core.intrinsics, 32, 32).depth)
    expected = SurfaceMemory()
    expected.add(depth_points(np.minimum(np.nan_to_num(exact, posinf=core.max_depth), core.max_depth), c2w,
                              core.intrinsics, 2, core.max_depth))
    np.testing.assert_array_equal(core.surfaces[0].points, expected.points)
    # a wall it remembers 0.3 m ahead stops the camera though the last chunk shows nothing near
    pose = info["pose"]
    wall = pose[:3, 3] + 0.3 * pose[:3, 2] + np.stack(np.meshgrid(np.linspace(-0.3, 0.3, 13), np.linspace(-0.3, 0.3, 13)),
                                                      -1).reshape(-1, 2) @ np.stack([pose[:3, 0], pose[:3, 1]])
    core.surfaces[0].clear()
    core.surfaces[0].add(wall)
    core.depth[0] = 20.0
    snap = env.unwrapped.get_state()
    assert snap.surface.shape == (len(core.surfaces[0]), 3)
    _, _, _, _, info = env.step(np.array([0, 0, 1.0, 0, 0, 0], np.float32))
    assert info["collided"] and np.linalg.norm(info["pose"][:3, 3] - pose[:3, 3]) == pytest.approx(0.0625, abs=1e-6)
    # the snapshot (and its file) carries the memory; a new episode starts a new one
    env.unwrapped.save_state(tmp_path / "s")
    env.reset(seed=4)
    env.unwrapped.load_state(tmp_path / "s")
    np.testing.assert_array_equal(core.surfaces[0].points, snap.surface)
    env.unwrapped.set_state(snap)
    core.depth[0] = 20.0
    assert env.step(np.array([0, 0, 1.0, 0, 0, 0], np.float32))[4]["collided"]
    env.reset(seed=4)
    assert not np.array_equal(core.surfaces[0].points[:10], snap.surface[:10])
    bad = env.unwrapped.get_state()
    bad.surface = bad.surface[:, :2]
    with pytest.raises(ValueError, match="surface memory"):
        env.unwrapped.set_state(bad)


def test_vector_env_predicts_collisions_per_row():
    wm = depth_model()
    envs = gym.make_vec("SanaWM/Nav-v0", num_envs=2, vectorization_mode="vector_entry_point", model=wm, depth=True,
                        collisions=True)
    obs, _ = envs.reset(seed=0)
    assert obs["depth"].shape == (2, 32, 32)
    envs.unwrapped.core.depth[0] = 0.3
    envs.unwrapped.core.depth[1] = 20.0
    _, _, _, _, info = envs.step(np.tile(np.array([0, 0, 1.0, 0, 0, 0], np.float32), (2, 1)))
    assert info["collided"].tolist() == [True, False]


# --------------------------------------------------------------------------- evaluation
def test_collision_evaluation_reports_recall_precision_and_depth_error(monkeypatch):
    from sanawm_gym.collision_eval import evaluate_collisions, format_collisions
    from sanawm_gym.reference_world.trajectories import driving_actions

    wm = depth_model()
    report = evaluate_collisions(wm, episodes=2, steps=3, seed=5000, min_points=(1, 8), horizons=(0.5,))
    assert set(report["thresholds"]) == {"1", "8"}
    for r in report["thresholds"].values():
        assert 0 <= r["recall"] <= 1 and 0 <= r["precision"] <= 1
        assert r["true_positives"] + r["false_negatives"] == report["positives"]
    assert np.isfinite(report["depth"]["0.5s"]["abs_rel"])
    assert "recall" in format_collisions(report)
    # the memory alone (no depth of the last chunk) predicts only real surfaces: precision 1;
    # with neither memory nor depth nothing is predicted
    alone = evaluate_collisions(wm, episodes=2, steps=6, seed=5000, min_points=(1,), horizons=(0.5,),
                                depth_source="none", memory=(True, False), context_seconds=1.0)
    assert alone["context_seconds"] == 1.0 and set(alone["thresholds"]) == {"1, with memory", "1, no memory"}
    assert alone["thresholds"]["1, with memory"]["false_positives"] == 0
    assert alone["thresholds"]["1, no memory"]["true_positives"] + alone["thresholds"]["1, no memory"]["false_positives"] == 0
    forward = driving_actions(0, 5, 1)
    assert (forward[:, 0] == 1).all() and np.ptp(forward[:, 1]) == 0
    smooth = driving_actions(1, 50, 1)
    assert (smooth[:, 0] >= 0).all() and (np.abs(smooth[:, 1]) <= 1).all() and np.ptp(smooth[:, 1]) > 0.1
    with pytest.raises(ValueError, match="no depth head"):
        evaluate_collisions(tiny_world_model(), episodes=1, steps=1)


def test_depth_stage_trains_caches_and_exports(depth_set, tmp_path):
    from world_model.train.__main__ import main as train_main  # noqa: F401  (the command's module)
    from world_model.train.cli import main

    wm = tiny_world_model()
    wm.save_pretrained(tmp_path / "wm")
    out = tmp_path / "run"
    args = ["--stage", "depth", "--data", str(depth_set), "--heldout", str(depth_set), "--out", str(out),
            "--steps", "2", "--batch-size", "1", "--clip-frames", "9", "--eval-frames", "9", "--eval-interval", "2",
            "--ckpt-interval", "2", "--log-interval", "1", "--threads", "1", "--no-bf16", "--num-workers", "0",
            "--no-progress", "--autoencoder", str(tmp_path / "wm"), "--rollout-model", str(tmp_path / "wm"),
            "--head.latent-channels", str(AE.latent_channels), "--head.width", "8", "--head.blocks", "1",
            "--head.up-widths", "8", "4", "--head.image-stride", "8"]
    assert main(args) == 0
    caches = sorted(out.glob("depth-latents-*.safetensors"))
    assert len(caches) == 2 and not list(out.glob("*.part*"))
    head = load_depth_head(out / "final")
    assert head is not None and head.config.width == 8
    assert list((out / "eval").glob("depth-*.png"))
    import json

    history = json.loads((out / "checkpoints" / "step-00000002.json").read_text())["data"]["history"]
    assert {"abs_rel_clean", "abs_rel_imagined", "near_abs_rel_imagined", "abs_rel_imagined_0.5s"} <= set(history[-1])
    assert main(args) == 0  # a finished run re-run: the caches are reused
    assert sorted(out.glob("depth-latents-*.safetensors")) == caches
    # A second run from the first one's head, near pixels weighted; a head of another shape is refused.
    more = args + ["--init-from", str(out / "final"), "--near-weight", "2", "--extra-data", str(depth_set)]
    more[more.index("--out") + 1] = str(tmp_path / "run2")
    assert main(more) == 0 and load_depth_head(tmp_path / "run2" / "final") is not None
    assert len(list((tmp_path / "run2").glob("depth-latents-extra-*.safetensors"))) == 1  # the second set's own cache
    wider = list(more)
    wider[wider.index("--out") + 1] = str(tmp_path / "run3")
    wider[wider.index("--head.width") + 1] = "16"
    with pytest.raises(SystemExit):
        main(wider)


def test_driving_clips_meet_walls_and_stop_there(tmp_path):
    from sanawm_gym.reference_world.trajectories import drive_trajectory, driving_actions

    scene, pose = _facing_wall(1.0)
    traj, collided = drive_trajectory(scene, pose, np.tile([1.0, 0.0], (8, 1)))
    assert traj.c2w.shape == (33, 4, 4) and collided[-1] and not collided[0]
    gap = np.asarray(signed_distance(scene, traj.c2w[:, :3, 3]))
    assert gap.min() >= MotionConfig().camera_radius - 1e-6  # stopped at the wall, never through it
    turned, bumps = drive_trajectory(scene, pose, np.tile([1.0, 0.0], (12, 1)), rng=np.random.default_rng(0))
    assert (turned.actions[:, 4] != 0).any()  # bump and turn: it turned away after meeting the wall
    write_dataset(tmp_path / "a", 2, 17, height=32, width=32, seed=3, progress=False, depth=True, paths="drive")
    write_dataset(tmp_path / "b", 2, 17, height=32, width=32, seed=3, progress=False, depth=True, paths="drive")
    assert (tmp_path / "a" / "shard-00000.safetensors").read_bytes() == (tmp_path / "b" / "shard-00000.safetensors").read_bytes()
    forward = driving_actions(0, 4, 1)
    assert (forward[:, 0] == 1).all()
    with pytest.raises(ValueError, match="paths must be one of"):
        write_dataset(tmp_path / "c", 1, 5, paths="fly", progress=False)


def test_fidelity_suite_scores_collisions_for_a_model_with_depth(tmp_path, monkeypatch):
    import sanawm_gym.fidelity_suite as suite

    monkeypatch.setitem(suite.SUITES, "short", (suite.HeldoutSet("still", "still", 1, 1.0, 4000, (1.0,)),))
    monkeypatch.setattr(suite, "COLLISION_EPISODES", 2)
    monkeypatch.setattr(suite, "COLLISION_STEPS", 2)
    report = suite.run_suite(depth_model(), "short", tmp_path / "d", tmp_path / "o", log=lambda *_: None)
    from sanawm_gym.envs.world_model_nav import NavConfig

    entry = report["collisions"]
    m = NavConfig.collision_points
    assert entry["episodes"] == 2 and entry["min_points"] == m and set(entry["thresholds"]) == {str(m)}
    assert "collisions: 2 episodes" in suite.format_report(report)
    plain = suite.run_suite(tiny_world_model(), "short", tmp_path / "d", tmp_path / "o2", log=lambda *_: None)
    assert "collisions" not in plain  # no depth head, nothing to predict with
