"""The scene memory (world_model.memory): what a reset showed, kept as coloured surface points
and composited into generated chunks; exact where it should be, fixed in size, snapshotted."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import sanawm_gym  # noqa: F401
from sanawm_gym.kinematics import look_around
from sanawm_gym.reference_world import generate_scene, render
from test_depth import depth_model
from world_model.geometry import intrinsics_from_fov, pose_from_yaw_pitch
from world_model.memory import SceneMemory, guide_chunk, render_points

K64 = intrinsics_from_fov(90.0, 64, 64).numpy()


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")


@pytest.fixture(scope="module")
def look():
    scene = generate_scene(7)
    pose = pose_from_yaw_pitch(np.array([0.0, 0.0, 1.2]), 0.3, 0.0)
    c2w = look_around(pose, 4.0)
    out = render(scene, c2w, K64, 64, 64)
    return scene, c2w, np.asarray(out.rgb), np.asarray(out.depth)


def test_a_frame_is_drawn_back_exactly_from_its_own_pose(look):
    _, c2w, rgb, depth = look
    memory = SceneMemory()
    memory.add(rgb[-1:], depth[-1:], c2w[-1:], K64)
    drawn, covered = memory.render(c2w[-1:], K64, 64, 64)
    assert (~np.isfinite(depth[-1])).mean() > 0.2 and bool(covered.all())  # the sky too, kept far away
    assert torch.equal(drawn[0], torch.from_numpy(rgb[-1]).float())
    sky = ~np.isfinite(depth[-1])  # ... and it turns with the camera, not with a step aside
    pose = c2w[-1].copy()
    pose[:3, 3] += 0.5 * pose[:3, 0]
    drawn, covered = memory.render(pose[None], K64, 64, 64)
    assert (drawn[0].numpy()[sky] == rgb[-1][sky]).all(-1).mean() > 0.9


def test_after_a_look_around_the_last_view_wins_and_other_views_are_close(look):
    scene, c2w, rgb, depth = look
    memory = SceneMemory()
    memory.add(rgb, depth, c2w, K64)
    drawn, covered = memory.render(c2w[-1:], K64, 64, 64)
    hit = covered[0].numpy()
    same = (drawn[0].numpy() == rgb[-1]).all(-1)
    assert hit.mean() > 0.6 and same[hit].mean() > 0.95  # the latest sight of a voxel is what it shows
    # a pose the look-around never took (half a turn and 0.3 m to the side): covered, and near the render
    pose = c2w[-1].copy()
    pose[:3, 3] += 0.3 * pose[:3, 0]
    drawn, covered = memory.render(pose[None], K64, 64, 64)
    truth = np.asarray(render(scene, pose[None], K64, 64, 64).rgb[0]).astype(np.float32)
    hit = covered[0].numpy()
    err = np.abs(drawn[0].numpy() - truth)[hit]
    assert hit.mean() > 0.5 and 20 * np.log10(255 / np.sqrt((err ** 2).mean())) > 18


def test_the_nearest_surface_hides_what_is_behind_it():
    # two squares of points across the optical axis, each point a pixel wide: red at 2 m, green behind it at 4 m
    def square(half: float, z: float) -> np.ndarray:
        step = z / K64[0, 0]  # one pixel at that depth
        g = np.arange(-half, half + 1e-9, step / 2)
        return np.stack([*np.meshgrid(g, g, indexing="ij"), np.full((len(g), len(g)), z)], -1).reshape(-1, 3)

    near, far = square(0.5, 2.0), square(6.0, 4.0)
    points = torch.as_tensor(np.concatenate([far, near]), dtype=torch.float32)
    colours = torch.as_tensor([[0, 255, 0]] * len(far) + [[255, 0, 0]] * len(near), dtype=torch.uint8)
    sizes = points[:, 2] / float(K64[0, 0])
    for serial in (torch.arange(len(points)), torch.arange(len(points)).flip(0)):  # whichever was seen last
        drawn, covered = render_points(points, colours, sizes, serial, np.eye(4)[None], K64, 64, 64)
        assert covered[0, 32, 32] and drawn[0, 32, 32].tolist() == [255.0, 0.0, 0.0]
        assert drawn[0, 32, 2].tolist() == [0.0, 255.0, 0.0]  # beside the near square: the far one
    # nothing behind the camera or without points is drawn
    drawn, covered = render_points(points, colours, sizes, torch.arange(len(points)),
                                   np.diag([1.0, 1.0, -1.0, 1.0])[None] @ np.diag([-1.0, 1.0, 1.0, 1.0])[None], K64, 64,
                                   64)
    assert not covered.any() and not drawn.any()


def test_capacity_is_fixed_and_the_earliest_seen_go_first(look):
    _, c2w, rgb, depth = look
    memory = SceneMemory(capacity=5000)
    memory.add(rgb[:8], depth[:8], c2w[:8], K64)
    assert len(memory) == 5000
    first_serial = int(memory.serial.min())
    memory.add(rgb[-8:], depth[-8:], c2w[-8:], K64)
    assert len(memory) == 5000 and int(memory.serial.min()) > first_serial
    size = memory.nbytes
    memory.add(rgb[20:28], depth[20:28], c2w[20:28], K64)
    assert memory.nbytes == size


def test_state_restores_exactly_and_bad_states_are_named(look):
    _, c2w, rgb, depth = look
    memory = SceneMemory()
    memory.add(rgb[::8], depth[::8], c2w[::8], K64)
    other = SceneMemory()
    other.restore(memory.state())
    for a, b in zip(memory.state().values(), other.state().values()):
        assert torch.equal(a, b)
    assert torch.equal(memory.render(c2w[-1:], K64, 64, 64)[0], other.render(c2w[-1:], K64, 64, 64)[0])
    bad = memory.state()
    bad["colours"] = bad["colours"].float()
    with pytest.raises(ValueError, match="uint8 colours"):
        other.restore(bad)
    bad = memory.state()
    bad["points"][0] = float("nan")
    with pytest.raises(ValueError, match="finite points"):
        other.restore(bad)
    bad = memory.state()
    bad["points"][1] = bad["points"][0]
    with pytest.raises(ValueError, match="two in one"):
        other.restore(bad)
    with pytest.raises(ValueError, match="uint8"):
        memory.add(rgb[:1].astype(np.float32), depth[:1], c2w[:1], K64)
    with pytest.raises(ValueError, match="voxel must be positive"):
        SceneMemory(voxel=0)


def test_guide_chunk_keeps_unguided_rows_and_replaces_covered_pixels(look):
    _, c2w, rgb, depth = look
    wm = depth_model()  # a tiny random world model at 32 x 32
    K32 = intrinsics_from_fov(90.0, 32, 32).numpy()
    small = render(generate_scene(7), c2w[-4:], K32, 32, 32)
    memory = SceneMemory()  # the last view alone: the chunk's earlier views (turned left of it) see more
    memory.add(np.asarray(small.rgb[-1:]), np.asarray(small.depth[-1:]), c2w[-1:], K32)
    latent = torch.randn(2, 1, wm.config.latent_channels, wm.config.latent_height, wm.config.latent_width)
    frames = torch.zeros(2, 4, 3, 32, 32)
    previous = torch.zeros(2, 3, 32, 32)
    poses = np.stack([c2w[-4:], c2w[-4:]])
    out, committed = guide_chunk(wm.autoencoder, latent, frames, previous, [None, memory], poses, K32)
    assert torch.equal(out[0], frames[0]) and torch.equal(committed[0], latent[0])  # no memory: untouched
    drawn, covered = memory.render(poses[1], K32, 32, 32)
    covered = covered.numpy()
    assert covered.mean() > 0.5 and not covered.all()
    shown = ((out[1].permute(0, 2, 3, 1) + 1) * 127.5).round().numpy()
    assert np.abs(shown[covered] - drawn.numpy()[covered]).max() <= 1  # what the memory shows, where it shows it
    assert np.abs(shown[-1][covered[-1]] - np.asarray(small.rgb[-1])[covered[-1]]).max() <= 1  # the last view exactly
    assert np.array_equal(shown[~covered], np.full_like(shown[~covered], 128))  # the rest: the generated grey
    assert not torch.equal(committed[1], latent[1])


def test_world_model_step_without_memories_is_the_plain_step():
    wm = depth_model()
    K32 = intrinsics_from_fov(90.0, 32, 32).numpy()
    first = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    poses = np.tile(np.eye(4), (2, 1, 1))
    _, state = wm.init_state(first, poses, np.stack([K32, K32]))
    chunk = np.tile(np.eye(4), (2, 4, 1, 1))
    noise = torch.randn(wm.noise_shape(2), generator=torch.Generator().manual_seed(1))
    plain, s1 = wm.step(state, chunk, noise=noise, precision="float32")
    guided, s2 = wm.step(state, chunk, noise=noise, precision="float32", memory=[None, SceneMemory()], previous=first)
    assert np.array_equal(plain, guided)
    for k, v in s1.tensors().items():
        assert torch.equal(v, s2.tensors()[k]), k
    with pytest.raises(ValueError, match="one SceneMemory"):
        wm.step(state, chunk, noise=noise, memory=[None])


def test_nav_env_scene_memory_holds_a_still_view_and_snapshots_restore_it(tmp_path):
    wm = depth_model()
    plain = gym.make("SanaWM/Nav-v0", model=wm, reference_frames=True, precision="float32", collisions=False,
                     scene_memory=False)
    held = gym.make("SanaWM/Nav-v0", model=wm, reference_frames=True, precision="float32", collisions=False,
                    scene_memory=True)
    still = np.zeros(6, np.float32)
    errors = {}
    for name, env in (("plain", plain), ("held", held)):
        _, info = env.reset(seed=5)
        errs = []
        for _ in range(4):
            obs, _, _, _, info = env.step(still)
            errs.append(np.abs(obs["rgb"].astype(float) - info["reference_rgb"].astype(float)).mean())
        errors[name] = np.mean(errs)
    assert errors["held"] < 0.5 * errors["plain"]  # the untrained model forgets; the memory holds the view
    core = held.unwrapped.core
    assert len(core.memories[0]) > 0 and core.scene_memory and not plain.unwrapped.core.scene_memory
    # the default: on where the model has a depth head
    assert gym.make("SanaWM/Nav-v0", model=wm).unwrapped.core.scene_memory
    no_head = depth_model()
    no_head.depth_head = None
    assert not gym.make("SanaWM/Nav-v0", model=no_head).unwrapped.core.scene_memory
    with pytest.raises(ValueError, match="need a world model with a depth head"):
        gym.make("SanaWM/Nav-v0", model=no_head, scene_memory=True)
    with pytest.raises(ValueError, match="scene_memory must be True, False or None"):
        gym.make("SanaWM/Nav-v0", model=wm, scene_memory="yes")
    snap = held.unwrapped.get_state()
    assert snap.scene_memory is not None
    actions = [np.array([0, 0, 0.5, 0, 0.3, 0], np.float32)] * 3
    first = [held.step(a)[0]["rgb"] for a in actions]
    held.unwrapped.save_state(tmp_path / "s")
    held.unwrapped.set_state(snap)
    assert np.array_equal(np.stack([held.step(a)[0]["rgb"] for a in actions]), np.stack(first))
    held.unwrapped.load_state(tmp_path / "s")
    assert held.unwrapped.get_state().scene_memory["points"].shape == core.memories[0].points.shape
    bad = held.unwrapped.get_state()
    bad.scene_memory["sizes"] = -bad.scene_memory["sizes"]
    with pytest.raises(ValueError, match="positive sizes"):
        held.unwrapped.set_state(bad)


def test_generate_video_with_context_depth_holds_a_still_scene():
    wm = depth_model()
    K32 = intrinsics_from_fov(90.0, 32, 32).numpy()
    pose = pose_from_yaw_pitch(np.array([0.0, 0.0, 1.2]), 0.3, 0.0)
    out = render(generate_scene(7), pose[None], K32, 32, 32)
    c2w = np.repeat(pose[None], 9, 0)
    plain = wm.generate_video(np.asarray(out.rgb[0]), c2w, K32, seed=0, precision="float32")
    held = wm.generate_video(np.asarray(out.rgb[0]), c2w, K32, seed=0, precision="float32",
                             context_depth=np.asarray(out.depth[0]))
    assert held.shape == plain.shape == (9, 32, 32, 3)
    assert np.array_equal(held[0], plain[0])  # the decoded first frame
    assert (held[1:] == np.asarray(out.rgb[0])).all()  # every pixel remembered (the sky far away), shown as seen
    assert not (plain[1:] == np.asarray(out.rgb[0])).all()
    with pytest.raises(ValueError, match="context_depth must be"):
        wm.generate_video(np.asarray(out.rgb[0]), c2w, K32, context_depth=np.ones((2, 32, 32)))


def test_fidelity_suite_scores_the_guided_model_beside_the_model_alone(tmp_path):
    from sanawm_gym import fidelity_suite as suite

    small = (suite.HeldoutSet("motion", "motion", 2, 0.5, 3100, (0.25, 0.5)),
             suite.HeldoutSet("motion_ctx", "motion", 1, 0.5, 3100, (0.25, 0.5), context=True),
             suite.HeldoutSet("still", "still", 1, 0.5, 4000, (0.5,)),
             suite.HeldoutSet("revisit", "revisit", 1, 5.0, 4500))
    wm = depth_model()
    wm.depth_head = None  # no collision episodes: the frames only
    old = suite.SUITES["short"]
    suite.SUITES["short"] = small
    try:
        report = suite.run_suite(wm, "short", tmp_path / "data", tmp_path / "out", context_seconds=1.0, memory=True,
                                 log=lambda *_: None)
        plain = suite.run_suite(wm, "short", tmp_path / "data", tmp_path / "plain", context_seconds=0.0,
                                log=lambda *_: None)
    finally:
        suite.SUITES["short"] = old
    sets = report["sets"]
    assert set(sets) == {"motion", "motion_ctx", "still", "revisit"} and "motion_ctx" not in plain["sets"]
    assert sets["motion_ctx"]["context_frames"] == 17 and sets["motion"]["context_frames"] == 1
    assert len(list((tmp_path / "data").glob("motion-*"))) == 1  # the context set reuses the motion clips
    still = sets["still"]["horizons"]["0.5s"]
    assert still["psnr_memory"] > still["psnr_model"] + 5  # the untrained model forgets, the memory holds
    assert sets["revisit"]["revisit"]["return_vs_first_visit_memory"] > sets["revisit"]["revisit"][
        "return_vs_first_visit_model"]
    assert "psnr_memory" not in plain["sets"]["still"]["horizons"]["0.5s"]
    table = suite.format_report(report)
    assert table.count("+mem") >= 5 and "ahead of the model alone" in table
