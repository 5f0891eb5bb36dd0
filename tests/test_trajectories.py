"""Reference-world camera trajectories: determinism, smoothness, safety, exact revisits."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from sanawm_gym.kinematics import MotionConfig, action_to_twist, move_chunk
from sanawm_gym.reference_world import generate_scene
from sanawm_gym.reference_world.collision import obstacle_sweep, signed_distance
from sanawm_gym.reference_world.trajectories import (
    BEHAVIOURS,
    BehaviourMix,
    TrajectoryConfig,
    generate_trajectory,
    sample_start_pose,
)

MOTION = MotionConfig()
CFG = TrajectoryConfig()
K = MOTION.frames_per_step


@pytest.fixture(scope="module")
def batch():
    """30 scenes x 40 steps: ``(scene, trajectory)`` pairs."""
    out = []
    for seed in range(30):
        scene = generate_scene(seed)
        out.append((scene, generate_trajectory(scene, 40, np.random.default_rng(seed))))
    return out


def _only(name: str) -> TrajectoryConfig:
    mix = BehaviourMix(**{f.name: float(f.name == name) for f in dataclasses.fields(BehaviourMix)})
    return dataclasses.replace(CFG, mix=mix)


def test_shapes_and_ranges(batch):
    for _, traj in batch:
        assert traj.actions.shape == (40, 6) and traj.actions.dtype == np.float32
        assert traj.c2w.shape == (1 + 40 * K, 4, 4) and traj.c2w.dtype == np.float64
        assert len(traj.behaviours) == 40 and set(traj.behaviours) <= set(BEHAVIOURS)
        assert np.abs(traj.actions).max() <= 1.0


def test_deterministic_under_a_seed():
    scene = generate_scene(3)
    a = generate_trajectory(scene, 24, np.random.default_rng(7))
    b = generate_trajectory(scene, 24, np.random.default_rng(7))
    c = generate_trajectory(scene, 24, np.random.default_rng(8))
    assert np.array_equal(a.actions, b.actions) and np.array_equal(a.c2w, b.c2w)
    assert a.behaviours == b.behaviours and a.revisits == b.revisits
    assert not np.array_equal(a.c2w, c.c2w)


def test_actions_are_smooth(batch):
    for _, traj in batch:
        previous = np.concatenate([np.zeros((1, 6), np.float32), traj.actions])  # starts at rest
        assert np.abs(np.diff(previous, axis=0)).max() <= CFG.max_action_change + 1e-6


def test_poses_are_move_chunk_integration_without_collision(batch):
    for scene, traj in batch:
        pose = traj.c2w[0]
        for s, action in enumerate(traj.actions):
            chunk = move_chunk(pose, action_to_twist(action, MOTION), MOTION, obstacle_sweep(scene))
            assert not chunk.collided, (scene.seed, s)
            np.testing.assert_array_equal(chunk.poses, traj.c2w[1 + s * K : 1 + (s + 1) * K])
            pose = chunk.poses[-1]


def test_clearance_height_pitch_roll_within_bounds(batch):
    lo, hi = CFG.height_range
    for scene, traj in batch:
        z = traj.c2w[:, 2, 3]
        assert lo - 1e-9 <= z.min() and z.max() <= hi + 1e-9
        assert np.degrees(np.arcsin(np.abs(traj.c2w[:, 2, 2]))).max() <= CFG.max_pitch_deg + 1e-6
        assert np.degrees(np.arcsin(np.abs(traj.c2w[:, 2, 0]))).max() <= CFG.max_roll_deg + 1e-6
        clearance = signed_distance(scene, traj.c2w[:, :3, 3])
        assert clearance.min() >= MOTION.camera_radius + CFG.margin - 1e-5, scene.seed
        rotations = traj.c2w[:, :3, :3]
        eye = np.broadcast_to(np.eye(3), rotations.shape)
        np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), eye, atol=1e-9)


def test_every_behaviour_appears(batch):
    seen = {name for _, traj in batch for name in traj.behaviours}
    assert seen == set(BEHAVIOURS) - {"hold"}  # hold has weight 0 in the default mix
    assert sum(len(traj.revisits) for _, traj in batch) >= 10


def test_out_and_back_revisits_exactly():
    cfg = _only("out_and_back")
    count = 0
    for seed in range(6):
        scene = generate_scene(100 + seed)
        traj = generate_trajectory(scene, 30, np.random.default_rng(seed), cfg)
        for r in traj.revisits:
            count += 1
            n, a = r.num_steps, traj.actions
            assert r.num_frames == n * K and r.turn_frame == (r.start_step + n) * K
            out, back = a[r.start_step : r.start_step + n], a[r.start_step + n : r.start_step + 2 * n]
            np.testing.assert_array_equal(back, -out[::-1])
            m = np.arange(r.num_frames + 1)
            np.testing.assert_allclose(traj.c2w[r.turn_frame + m], traj.c2w[r.turn_frame - m], rtol=0, atol=1e-9)
            moved = np.linalg.norm(traj.c2w[r.turn_frame - m, :3, 3] - traj.c2w[r.turn_frame - r.num_frames, :3, 3], axis=-1)
            turned = np.abs(traj.c2w[r.turn_frame - m, :3, 2] - traj.c2w[r.turn_frame - r.num_frames, :3, 2]).max()
            assert moved.max() > 0.05 or turned > 0.05  # the leg actually goes somewhere
    assert count >= 6


@pytest.mark.parametrize("name", ["walk", "turn", "strafe", "look_around", "change_height", "hold"])
def test_single_behaviour_mixes(name):
    scene = generate_scene(11)
    traj = generate_trajectory(scene, 20, np.random.default_rng(0), _only(name))
    assert set(traj.behaviours) <= {name, "avoid"} and name in traj.behaviours


def test_change_height_moves_vertically():
    span = []
    for seed in range(4):
        traj = generate_trajectory(generate_scene(seed), 24, np.random.default_rng(seed), _only("change_height"))
        span.append(np.ptp(traj.c2w[:, 2, 3]))
    assert max(span) > 0.3


def test_sample_start_pose_is_free_and_level():
    for seed in range(20):
        scene = generate_scene(seed)
        c2w = sample_start_pose(scene, np.random.default_rng(seed))
        assert c2w.shape == (4, 4)
        assert float(signed_distance(scene, c2w[:3, 3])) >= MOTION.camera_radius + CFG.margin
        assert CFG.start_height_range[0] <= c2w[2, 3] <= CFG.start_height_range[1]
        assert abs(math.degrees(math.asin(c2w[2, 2]))) <= CFG.start_pitch_deg + 1e-9
        assert abs(c2w[2, 0]) < 1e-9  # no roll


def test_zero_steps_and_given_start():
    scene = generate_scene(2)
    start = sample_start_pose(scene, np.random.default_rng(0))
    traj = generate_trajectory(scene, 0, np.random.default_rng(0), start=start)
    assert traj.actions.shape == (0, 6) and np.array_equal(traj.c2w, start[None])
    blocked = start.copy()
    blocked[2, 3] = 0.05  # below the height range, inside the ground clearance
    with pytest.raises(ValueError, match="outside the trajectory bounds"):
        generate_trajectory(scene, 4, np.random.default_rng(0), start=blocked)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"height_range": (2.0, 1.0)}, "height_range"),
        ({"start_height_range": (0.1, 1.0)}, "start_height_range"),
        ({"smoothing": 0.0}, "smoothing"),
        ({"max_action_change": 0.0}, "max_action_change"),
        ({"walk_speed": (0.5, 1.5)}, "walk_speed"),
        ({"mix": None}, None),
    ],
)
def test_config_validation(changes, match):
    if changes.get("mix", 1) is None:
        with pytest.raises(ValueError, match="behaviour weights"):
            BehaviourMix(walk=0, turn=0, strafe=0, look_around=0, change_height=0, out_and_back=0)
        return
    with pytest.raises(ValueError, match=match):
        TrajectoryConfig(**changes)


def test_margin_must_cover_a_frame():
    with pytest.raises(ValueError, match="margin"):
        generate_trajectory(generate_scene(0), 4, np.random.default_rng(0), TrajectoryConfig(margin=0.01))


def test_hold_brakes_then_keeps_the_camera_still():
    """A hold after motion ramps the action down along the braking tail (no jump), then
    every step is zero and every frame the same pose."""
    mix = dataclasses.replace(CFG.mix, hold=1.0, walk=1.0)
    cfg = dataclasses.replace(CFG, mix=mix)
    found = 0
    for seed in range(6):
        traj = generate_trajectory(generate_scene(seed), 40, np.random.default_rng(seed), cfg)
        labels = np.array(traj.behaviours)
        steps = np.flatnonzero(labels == "hold")
        zero = ~traj.actions[steps].any(1)
        for s in steps[zero]:
            frames = traj.c2w[1 + s * K: 1 + (s + 1) * K]
            np.testing.assert_array_equal(frames, np.broadcast_to(traj.c2w[s * K], frames.shape))
            found += 1
        changes = np.abs(np.diff(traj.actions, axis=0)).max(1)
        assert changes.max() <= CFG.max_action_change + 1e-6
    assert found >= 10
