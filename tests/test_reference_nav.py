"""SanaWM/ReferenceNav-v0: API conformance, determinism, kinematics, task, bad input."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sanawm_gym  # noqa: F401
from policies import GoalSeekingPolicy
from sanawm_gym.envs import ReferenceNavEnv
from world_model.geometry import pose_from_yaw_pitch
from sanawm_gym.reference_world.collision import signed_distance

IDS = ["SanaWM/ReferenceNav-v0", "SanaWM/ReferenceNavPlanar-v0"]


def open_spot(env, clearance=1.2):
    """A position with ``clearance`` metres of free space around it in the env's scene."""
    scene = env.unwrapped.scene
    axis = np.linspace(-scene.arena_half + 1, scene.arena_half - 1, 40)
    pts = np.stack(np.meshgrid(axis, axis, [1.5], indexing="ij"), -1).reshape(-1, 3)
    sdf = signed_distance(scene, pts)
    assert sdf.max() > clearance
    return pts[np.argmax(sdf)]


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_check_env_passes_without_warnings(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=False)
    assert [str(w.message) for w in caught if "gymnasium" in w.filename or "sanawm" in w.filename] == []


@pytest.mark.parametrize("env_id", IDS)
def test_sb3_check_env_passes_without_warnings(env_id):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env.unwrapped, warn=True)
    assert [str(w.message) for w in caught if "stable_baselines3" in w.filename] == []


def rollout(env, seed, actions):
    obs, info = env.reset(seed=seed)
    out = [(obs["rgb"], obs["goal"], 0.0, info["pose"])]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs["rgb"], obs["goal"], r, info["pose"]))
        if term or trunc:
            break
    return out


def test_same_seed_same_actions_identical_observations():
    actions = np.random.default_rng(0).uniform(-1, 1, (15, 6)).astype(np.float32)
    a = rollout(gym.make("SanaWM/ReferenceNav-v0"), 123, actions)
    b = rollout(gym.make("SanaWM/ReferenceNav-v0"), 123, actions)
    c = rollout(gym.make("SanaWM/ReferenceNav-v0"), 124, actions)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0][0], c[0][0])


def test_spaces_and_info():
    env = gym.make("SanaWM/ReferenceNav-v0", height=48, width=80)
    obs, info = env.reset(seed=3)
    assert obs["rgb"].shape == (48, 80, 3) and obs["rgb"].dtype == np.uint8
    assert obs["goal"].shape == (4,) and obs["goal"].dtype == np.float32
    assert env.observation_space.contains(obs)
    for key in ("pose", "chunk_poses", "goal", "distance", "collided", "success", "path_length", "action_clipped",
                "geodesic_distance", "scene_seed"):
        assert key in info
    assert info["pose"].shape == (4, 4) and info["pose"].dtype == np.float64
    assert obs["goal"][0] == pytest.approx(info["distance"], rel=1e-5)
    assert info["geodesic_distance"] >= info["distance"] - 0.15  # grid path is no shorter than the straight line
    # The goal direction is the goal seen in the camera frame.
    rel = np.linalg.inv(info["pose"]) @ np.r_[info["goal"], 1.0]
    np.testing.assert_allclose(obs["goal"][1:], rel[:3] / np.linalg.norm(rel[:3]), atol=1e-5)
    assert info["chunk_poses"].shape == (4, 4, 4)  # K copies of the start pose: same shape as after a step
    _, _, _, _, info = env.step(np.zeros(6, np.float32))
    assert info["chunk_poses"].shape == (4, 4, 4)


def test_forward_and_turn_kinematics():
    env = gym.make("SanaWM/ReferenceNavPlanar-v0")
    env.reset(seed=0)
    spot = open_spot(env)
    start = pose_from_yaw_pitch(spot, 0.3, 0.0)
    env.reset(seed=0, options={"pose": start, "goal": spot + np.array([0.0, 0.0, 0.6])})
    _, _, _, _, info = env.step(np.array([1.0, 0.0], np.float32))  # 1 m/s for 0.25 s
    np.testing.assert_allclose(info["pose"][:3, 3], spot + 0.25 * start[:3, 2], atol=1e-9)
    assert not info["collided"] and info["path_length"] == pytest.approx(0.25)
    _, _, _, _, info = env.step(np.array([0.0, 1.0], np.float32))  # turn left at pi/2 rad/s
    fwd = info["pose"][:3, 2]
    assert math.atan2(fwd[1], fwd[0]) == pytest.approx(0.3 + math.pi / 8, abs=1e-9)


def test_collision_stops_translation_but_not_rotation():
    env = gym.make("SanaWM/ReferenceNav-v0")
    env.reset(seed=0)
    half = env.unwrapped.scene.arena_half
    # Facing the east wall (+x) from 0.45 m away: the first step would go 0.25 m, the second hits.
    start = pose_from_yaw_pitch(np.array([half - 0.45, 0.0, 1.2]), 0.0, 0.0)
    if signed_distance(env.unwrapped.scene, start[:3, 3]) < 0.4:
        pytest.skip("an object stands at this spot")
    env.reset(seed=0, options={"pose": start, "goal": [0.0, 0.0, 1.2]})
    collided, reward = [], []
    for _ in range(3):
        _, r, _, _, info = env.step(np.array([0, 0, 1.0, 0, 0.5, 0], np.float32))
        collided.append(info["collided"])
        reward.append(r)
        assert signed_distance(env.unwrapped.scene, info["pose"][:3, 3]) >= env.unwrapped.motion.camera_radius - 1e-6
    assert collided[-1]
    yaw = math.atan2(info["pose"][1, 2], info["pose"][0, 2])
    assert abs(yaw) == pytest.approx(3 * 0.25 * 0.5 * math.pi / 2, abs=1e-6)  # rotation continued
    assert reward[-1] < -0.2  # collision penalty


def test_reaching_the_goal_terminates_with_bonus():
    env = gym.make("SanaWM/ReferenceNavPlanar-v0")
    env.reset(seed=1)
    spot = open_spot(env)
    start = pose_from_yaw_pitch(spot, 0.0, 0.0)
    goal = spot + start[:3, 2] * 0.9
    obs, info = env.reset(seed=1, options={"pose": start, "goal": goal})
    _, r, term, trunc, info = env.step(np.array([1.0, 0.0], np.float32))
    assert not term and r == pytest.approx(0.25 - 0.01, abs=1e-6)
    _, r, term, trunc, info = env.step(np.array([1.0, 0.0], np.float32))
    assert term and not trunc and info["success"] and info["distance"] <= 0.5
    assert r == pytest.approx(0.25 - 0.01 + 10.0, abs=1e-6)


def test_time_limit_truncates():
    env = gym.make("SanaWM/ReferenceNav-v0", max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(np.zeros(6, np.float32))[3] for _ in range(3)]
    assert flags == [False, False, True]
    assert gym.spec("SanaWM/ReferenceNav-v0").max_episode_steps == sanawm_gym.MAX_EPISODE_STEPS


def test_render_modes():
    env = gym.make("SanaWM/ReferenceNav-v0", render_mode="rgb_array", render_height=96, render_width=128)
    obs, _ = env.reset(seed=2)
    frame = env.render()
    assert frame.shape == (96, 128, 3) and frame.dtype == np.uint8
    same = gym.make("SanaWM/ReferenceNav-v0", render_mode="rgb_array")
    obs, _ = same.reset(seed=2)
    np.testing.assert_array_equal(same.render(), obs["rgb"])
    assert gym.make("SanaWM/ReferenceNav-v0").unwrapped.render() is None
    with pytest.raises(ValueError, match="render_mode"):
        ReferenceNavEnv(render_mode="ansi")


@pytest.mark.parametrize(
    "action, match",
    [
        (np.array([np.nan, 0, 0, 0, 0, 0]), "finite"),
        (np.array([0, 0, np.inf, 0, 0, 0]), "finite"),
        (np.zeros(5), r"shape \(6,\)"),
        (np.zeros((1, 6)), r"shape \(6,\)"),
        (np.array(["a"] * 6), "real-valued"),
        ([None] * 6, "real-valued"),
    ],
)
def test_bad_actions_raise_clear_errors(action, match):
    env = gym.make("SanaWM/ReferenceNav-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_out_of_range_actions_are_clipped():
    a, b = gym.make("SanaWM/ReferenceNav-v0"), gym.make("SanaWM/ReferenceNav-v0")
    a.reset(seed=5)
    b.reset(seed=5)
    oa, ra, _, _, ia = a.step(np.array([0, 0, 3.0, 0, -7.0, 0]))
    ob, rb, _, _, ib = b.step(np.array([0, 0, 1.0, 0, -1.0, 0], np.float32))
    np.testing.assert_array_equal(oa["rgb"], ob["rgb"])
    assert ra == rb and ia["action_clipped"] and not ib["action_clipped"]
    # Lists and integer arrays are accepted too.
    a.step([0, 0, 1, 0, 0, 0])


def test_bad_reset_options_and_arguments():
    env = gym.make("SanaWM/ReferenceNav-v0")
    with pytest.raises(RuntimeError, match="reset"):
        gym.make("SanaWM/ReferenceNav-v0").unwrapped.step(np.zeros(6))
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(seed=0, options={"teleport": True})
    with pytest.raises(ValueError, match="rigid"):
        env.reset(seed=0, options={"pose": np.eye(4) * 2})
    with pytest.raises(ValueError, match="obstacle"):
        env.reset(seed=0, options={"pose": pose_from_yaw_pitch(np.array([0.0, 0.0, 0.05]), 0.0, 0.0)})
    with pytest.raises(ValueError, match="goal"):
        env.reset(seed=0, options={"goal": [1.0, np.nan, 1.0]})
    with pytest.raises(ValueError, match="scene_seed"):
        env.reset(seed=0, options={"scene_seed": -3})
    with pytest.raises(ValueError, match="action_mode"):
        gym.make("SanaWM/ReferenceNav-v0", action_mode="hover")
    with pytest.raises(ValueError, match="height"):
        gym.make("SanaWM/ReferenceNav-v0", height=4)


def test_fixed_scene_and_scene_seed_option():
    env = gym.make("SanaWM/ReferenceNav-v0", scene_seed=42)
    _, i1 = env.reset(seed=0)
    _, i2 = env.reset(seed=1)
    assert i1["scene_seed"] == i2["scene_seed"] == 42
    _, i3 = env.reset(seed=0, options={"scene_seed": 7})
    assert i3["scene_seed"] == 7


@pytest.mark.parametrize("env_id, mode", [("SanaWM/ReferenceNav-v0", "6dof"), ("SanaWM/ReferenceNavPlanar-v0", "planar")])
def test_scripted_policy_reaches_most_goals(env_id, mode):
    """`sanawm-gym eval-policy --episodes 50` reports the 50-seed figure; here 10 seeds."""
    env = gym.make(env_id)
    successes = 0
    for seed in range(10):
        policy = GoalSeekingPolicy(mode, seed=seed)
        obs, _ = env.reset(seed=seed)
        while True:
            obs, _, term, trunc, info = env.step(policy.act(obs))
            if term or trunc:
                break
        successes += info["success"]
    assert successes >= 6


@pytest.mark.slow
def test_scripted_policy_success_rate_over_50_seeds():
    """The figure `sanawm-gym eval-policy --episodes 50 --env SanaWM/ReferenceNavPlanar-v0` prints
    (`make test-slow`)."""
    env = gym.make("SanaWM/ReferenceNavPlanar-v0")
    successes = 0
    for seed in range(50):
        policy = GoalSeekingPolicy("planar", seed=seed)
        obs, _ = env.reset(seed=seed)
        while True:
            obs, _, term, trunc, info = env.step(policy.act(obs))
            if term or trunc:
                break
        successes += info["success"]
    assert successes >= 35


def test_snapshots_restore_the_episode_and_its_generator(tmp_path):
    env = gym.make("SanaWM/ReferenceNav-v0")
    env.reset(seed=4)
    env.step(np.array([0, 0, 0.5, 0, 0.2, 0], np.float32))
    snap = env.unwrapped.get_state()
    env.unwrapped.save_state(tmp_path / "ref")
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 6)).astype(np.float32)
    first = [env.step(a) for a in actions]
    next_reset = env.reset()[1]["pose"]  # draws from the env's generator
    for restore in (lambda e: e.unwrapped.set_state(snap), lambda e: e.unwrapped.load_state(tmp_path / "ref.json")):
        other = gym.make("SanaWM/ReferenceNav-v0")
        other.reset(seed=99)
        restore(other)
        again = [other.step(a) for a in actions]
        for (o1, r1, *_, i1), (o2, r2, *_, i2) in zip(first, again):
            np.testing.assert_array_equal(o1["rgb"], o2["rgb"])
            assert r1 == r2 and i1["path_length"] == i2["path_length"] and i1["scene_seed"] == i2["scene_seed"]
        np.testing.assert_array_equal(other.reset()[1]["pose"], next_reset)
    with pytest.raises(ValueError, match="ReferenceSnapshot"):
        env.unwrapped.set_state({"pose": np.eye(4)})
    import dataclasses

    with pytest.raises(ValueError, match="finite"):
        env.unwrapped.set_state(dataclasses.replace(snap, goal=np.array([np.nan, 0, 0])))
    with pytest.raises(RuntimeError, match="reset"):
        gym.make("SanaWM/ReferenceNav-v0").unwrapped.get_state()


def test_goal_at_the_camera_or_inside_an_obstacle_is_refused():
    env = gym.make("SanaWM/ReferenceNav-v0")
    _, info = env.reset(seed=0)
    with pytest.raises(ValueError, match="within goal_radius"):
        env.reset(seed=0, options={"goal": info["pose"][:3, 3]})
    with pytest.raises(ValueError, match="outside the arena"):
        env.reset(seed=0, options={"goal": [0.0, 0.0, 50.0]})


@pytest.mark.parametrize("kwargs, match", [
    ({"fov_deg": 0}, "fov_deg"), ({"fov_deg": 180}, "fov_deg"), ({"render_height": 0}, "render_height"),
    ({"render_width": "64"}, "render_width"), ({"width": 64.0}, "width"), ({"scene_seed": -1}, "scene_seed"),
    ({"motion": {}}, "motion"),
])
def test_bad_constructor_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gym.make("SanaWM/ReferenceNav-v0", **kwargs)
