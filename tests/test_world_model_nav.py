"""SanaWM/Nav-v0 over a tiny random world model: API conformance, determinism, snapshots,
the batched vector env, bad input."""

from __future__ import annotations

import dataclasses
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import sanawm_gym  # noqa: F401
from world_model.geometry import pose_from_yaw_pitch
from world_model.autoencoder import Autoencoder, AutoencoderConfig
from world_model.model import WorldModelBackbone, WorldModelConfig
from world_model.world_model import WorldModel

AE = AutoencoderConfig(latent_channels=4, frame_widths=(8, 8), latent_widths=(16, 16), encoder_blocks=(1, 0, 0, 1),
                       decoder_blocks=(1, 0, 0, 1))
BACKBONE = WorldModelConfig(latent_channels=4, latent_height=4, latent_width=4, depth=2, width=32, num_heads=2,
                            softmax_every=2, softmax_window_chunks=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    backbone = WorldModelBackbone(BACKBONE)
    with torch.no_grad():
        for p in backbone.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return WorldModel(Autoencoder(AE), backbone, sample_steps=2)


def make(model, **kwargs):
    return gym.make("SanaWM/Nav-v0", model=model, **kwargs)


def test_check_env_gymnasium_and_sb3(model):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make(model, render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=False)
        sb3_check_env(make(model).unwrapped, warn=True)
    bad = [str(w.message) for w in caught if "gymnasium" in w.filename or "stable_baselines3" in w.filename]
    # The tiny test model makes 32x32 frames; SB3 notes that its default CNN wants >= 36x36
    # (the shipped model's frames are 64x64).
    assert [m for m in bad if "minimal resolution" not in m] == []


def rollout(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    out = [obs["rgb"]]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append(obs["rgb"])
    return np.stack(out), info


def test_same_seed_same_observations_and_noise_matters(model):
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 6)).astype(np.float32)
    a, ia = rollout(make(model), 7, actions)
    b, _ = rollout(make(model), 7, actions)
    np.testing.assert_array_equal(a, b)
    c, _ = rollout(make(model), 8, actions)
    assert not np.array_equal(a, c)
    assert ia["collided"] is False and "generation_time_s" not in ia
    env = make(model, timing_info=True)
    env.reset(seed=7)
    assert env.step(actions[0])[4]["generation_time_s"] > 0 and env.unwrapped.core.last_generation_time_s > 0


def test_bfloat16_precision_is_deterministic_and_close_to_float32(model):
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 6)).astype(np.float32)
    a, _ = rollout(make(model, precision="bfloat16"), 7, actions)
    b, _ = rollout(make(model, precision="bfloat16"), 7, actions)
    np.testing.assert_array_equal(a, b)
    f, _ = rollout(make(model, precision="float32"), 7, actions)
    diff = np.abs(a.astype(np.int16) - f.astype(np.int16))
    assert 0 < diff.max() and diff.mean() < 3.0  # bf16 changes the frames, but only slightly
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'float32', 'bfloat16', 'nvfp4', 'int8'\), "
                                         r"got 'fp8'"):
        make(model, precision="fp8")


@pytest.mark.parametrize("precision", ["int8", "nvfp4"])
def test_low_bit_precisions_step_deterministically(model, precision):
    """The env steps a low-bit backbone (emulated on CPU): deterministic under a seed, and
    the frames differ from float32's (the format changes the arithmetic)."""
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 6)).astype(np.float32)
    a, _ = rollout(make(model, precision=precision), 7, actions)
    b, _ = rollout(make(model, precision=precision), 7, actions)
    np.testing.assert_array_equal(a, b)
    f, _ = rollout(make(model, precision="float32"), 7, actions)
    assert not np.array_equal(a[1:], f[1:])


def test_compiled_model_passes_match_eager_and_stay_deterministic(model):
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 6)).astype(np.float32)
    env = make(model, compile=True)
    a, _ = rollout(env, 7, actions)
    env.reset(seed=7)
    snap = env.unwrapped.get_state()
    b = np.stack([env.step(x)[0]["rgb"] for x in actions])
    env.unwrapped.set_state(snap)
    c = np.stack([env.step(x)[0]["rgb"] for x in actions])
    np.testing.assert_array_equal(a[1:], b)  # deterministic under a seed ...
    np.testing.assert_array_equal(b, c)  # ... and after restoring a snapshot
    precision = env.unwrapped.core.precision
    f, _ = rollout(make(model, precision=precision), 7, actions)
    # eager up to rounding: float32's, or bfloat16's where auto picks it (Inductor keeps other intermediates)
    assert np.abs(a.astype(np.int16) - f.astype(np.int16)).max() <= (1 if precision == "float32" else 3)
    with pytest.raises(ValueError, match="compile must be True or False, got 'yes'"):
        make(model, compile="yes")


def test_snapshot_restores_bit_for_bit_and_does_not_grow(model):
    env = make(model)
    env.reset(seed=3)
    for _ in range(2):
        env.step(env.action_space.sample())
    snap = env.unwrapped.get_state()
    size_early = snap.nbytes
    actions = np.random.default_rng(1).uniform(-1, 1, (4, 6)).astype(np.float32)
    first = [env.step(a)[0]["rgb"] for a in actions]
    env.unwrapped.set_state(snap)
    again = [env.step(a)[0]["rgb"] for a in actions]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    # ... and in another env built with the same model.
    other = make(model)
    other.reset(seed=99)
    other.unwrapped.set_state(snap)
    np.testing.assert_array_equal(np.stack([other.step(a)[0]["rgb"] for a in actions]), np.stack(first))
    for _ in range(10):
        env.step(env.action_space.sample())
    assert env.unwrapped.get_state().nbytes == size_early


def test_vector_env_matches_single_envs_and_autoresets(model):
    N = 3
    venv = gym.make_vec("SanaWM/Nav-v0", num_envs=N, vectorization_mode="vector_entry_point", model=model,
                        max_episode_steps=3)
    assert venv.unwrapped.core.num_envs == N
    obs, info = venv.reset(seed=10)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (3, N, 6)).astype(np.float32)
    vec_frames, flags = [obs["rgb"]], []
    for a in actions:
        obs, r, term, trunc, info = venv.step(a)
        vec_frames.append(obs["rgb"])
        flags.append(trunc)
    assert flags[-1].all() and not flags[0].any()  # TimeLimit equivalent inside the vector env
    for i in range(N):
        single, _ = rollout(make(model), 10 + i, actions[:, i])
        # the same episode; a batched matmul may sum in another order: one grey level at most
        diff = np.abs(np.stack(vec_frames)[:, i].astype(int) - single)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    # Next-step autoreset: the following step resets every row (reward 0, fresh episode).
    obs, r, term, trunc, info = venv.step(actions[0])
    assert (r == 0).all() and not term.any() and not trunc.any()
    assert (info["path_length"] == 0).all()


def test_user_image_reset_and_bad_input(model):
    env = make(model)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    obs, info = env.reset(seed=0, options={"image": image, "goal": [0.0, 0.0, 5.0]})
    np.testing.assert_array_equal(obs["rgb"], image)
    assert info["scene_seed"] is None
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        env.reset(options={"image": np.zeros((64, 64, 3), np.uint8)})
    with pytest.raises(ValueError, match="uint8"):
        env.reset(options={"image": image.astype(np.float32)})
    with pytest.raises(ValueError, match="rigid"):
        env.reset(options={"image": image, "pose": np.diag([2.0, 1.0, 1.0, 1.0])})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"teleport": 1})
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan] * 6))
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="NavSnapshot"):
        env.unwrapped.set_state({"pose": 1})


def test_missing_checkpoint_names_the_folder(tmp_path):
    from world_model.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="nowhere"):
        gym.make("SanaWM/Nav-v0", model=str(tmp_path / "nowhere"))


def test_reference_frames_and_chunk_mode(model):
    env = make(model, reference_frames=True, obs_mode="chunk")
    obs, info = env.reset(seed=1)
    assert obs["rgb"].shape == (4, 32, 32, 3)
    obs, _, _, _, info = env.step(np.zeros(6, np.float32))
    assert obs["rgb"].shape == (4, 32, 32, 3) and info["reference_rgb"].shape == (32, 32, 3)
    pose = pose_from_yaw_pitch(np.array([0.0, 0.0, 1.0]), 0.0, 0.0)
    _, info = env.reset(seed=1, options={"pose": pose})
    np.testing.assert_array_equal(info["pose"], pose)


# ---------------------------------------------------------------------------- hardened edges
def test_nav_and_reference_envs_reset_with_one_seed_give_one_episode(model):
    """Train in imagination, evaluate on the same seeds in the reference world: paired."""
    nav = make(model)
    ref = gym.make("SanaWM/ReferenceNav-v0", height=32, width=32)
    for seed in range(4):
        _, a = nav.reset(seed=seed)
        _, b = ref.reset(seed=seed)
        assert a["scene_seed"] == b["scene_seed"]
        np.testing.assert_array_equal(a["pose"], b["pose"])
        np.testing.assert_array_equal(a["goal"], b["goal"])
        assert a["geodesic_distance"] == b["geodesic_distance"]


def test_config_object_and_keywords_and_bad_arguments(model):
    from sanawm_gym.envs.world_model_nav import NavConfig

    env = gym.make("SanaWM/Nav-v0", model=model, config=NavConfig(obs_mode="chunk", fov_deg=70.0), precision="float32")
    cfg = env.unwrapped.config
    assert (cfg.obs_mode, cfg.fov_deg, cfg.precision) == ("chunk", 70.0, "float32")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.fov_deg = 10.0
    for kwargs, match in [({"fov_deg": 0}, "fov_deg"), ({"fov_deg": "90"}, "fov_deg"), ({"threads": 0}, "threads"),
                          ({"obs_mode": "video"}, "obs_mode"), ({"reference_frames": 1}, "reference_frames"),
                          ({"task": {}}, "task")]:
        with pytest.raises(ValueError, match=match):
            make(model, **kwargs)
    with pytest.raises(TypeError, match="unknown argument.*'fovv'.*accepted"):
        make(model, fovv=3)
    for n in (0, -1, 2.5, "3"):
        with pytest.raises(ValueError, match="num_envs"):
            gym.make_vec("SanaWM/Nav-v0", num_envs=n, vectorization_mode="vector_entry_point", model=model)


def test_precision_auto_picks_bf16_only_with_bf16_matmul_in_hardware(model, monkeypatch):
    from world_model import world_model as wm_module

    monkeypatch.setattr(wm_module.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(wm_module, "_cpu_flags", lambda: frozenset({"avx512f", "avx512bw"}))
    assert wm_module.resolve_precision("auto") == "float32"  # AVX-512F alone: emulated bf16 matmuls, slower
    assert make(model).unwrapped.core.precision == "float32"
    for flags in ({"avx512f", "avx512_bf16"}, {"avx512f", "amx_bf16", "amx_tile"}):
        monkeypatch.setattr(wm_module, "_cpu_flags", lambda flags=flags: frozenset(flags))
        assert wm_module.resolve_precision("auto") == "bfloat16"
        assert make(model).unwrapped.core.precision == "bfloat16"
    monkeypatch.setattr(wm_module.platform, "machine", lambda: "aarch64")
    assert wm_module.resolve_precision("auto") == "float32"
    assert wm_module.resolve_precision("float32") == "float32"


def test_thread_default_is_one_for_small_batches(model):
    from sanawm_gym.envs.world_model_nav import inference_threads

    assert inference_threads(1) == 1 and inference_threads(15) == 1 and inference_threads(4, threads=2) == 2
    assert inference_threads(16) >= 1
    before = torch.get_num_threads()
    try:
        make(model, threads=2)
        assert torch.get_num_threads() == 2
        make(model)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_leaving_the_arena_or_the_ground_ends_the_episode(model):
    env = make(model)
    _, info = env.reset(seed=2)
    start = info["pose"]
    down = np.array([0, 1.0, 0, 0, 0, 0], np.float32)  # +y of an OpenCV camera points down
    for step in range(1, 40):
        _, reward, term, trunc, info = env.step(down)
        if term:
            break
    assert term and info["out_of_bounds"] and not info["success"]
    assert info["pose"][2, 3] < env.unwrapped.core.motion.camera_radius
    assert step == int(np.ceil((start[2, 3] - 0.2) / 0.25 + 1e-9))  # 0.25 m per step
    assert reward < -0.2  # the collision penalty
    # A user image has no bounds unless the option gives them.
    image = np.zeros((32, 32, 3), np.uint8)
    env.reset(options={"image": image})
    assert not any(env.step(down)[2] for _ in range(8))
    env.reset(options={"image": image, "bounds": {"low": [-1, -1, 0.8], "high": [1, 1, 2]}})
    assert [env.step(down)[4]["out_of_bounds"] for _ in range(2)] == [False, True]
    with pytest.raises(ValueError, match="bounds.*contain the start"):
        env.reset(options={"image": image, "bounds": {"low": [-1, -1, 1.5], "high": [1, 1, 2]}})
    with pytest.raises(ValueError, match="'bounds' goes with 'image'"):
        env.reset(seed=0, options={"bounds": {"low": [-1, -1, 0], "high": [1, 1, 2]}})


def test_vector_env_terminates_rows_that_leave_the_bounds(model):
    venv = gym.make_vec("SanaWM/Nav-v0", num_envs=2, vectorization_mode="vector_entry_point", model=model)
    venv.reset(seed=2)
    actions = np.array([[0, 1.0, 0, 0, 0, 0], [0, 0, 0, 0, 0.3, 0]], np.float32)
    for _ in range(12):
        _, _, term, _, info = venv.step(actions)
        if term[0]:
            break
    assert term[0] and info["out_of_bounds"][0] and not term[1]


def test_goal_inside_an_obstacle_or_at_the_camera_is_refused(model):
    from sanawm_gym.reference_world.collision import signed_distance

    env = make(model)
    _, info = env.reset(seed=0)
    with pytest.raises(ValueError, match="goal.*from the camera, within goal_radius"):
        env.reset(seed=0, options={"goal": info["pose"][:3, 3] + [0.1, 0, 0]})
    scene = env.unwrapped.scene
    # A point inside an object: search the arena's free-height band for negative clearance.
    axis = np.linspace(-scene.arena_half + 0.3, scene.arena_half - 0.3, 41)
    grid = np.stack(np.meshgrid(axis, axis, [0.5], indexing="ij"), -1).reshape(-1, 3)
    inside = grid[np.argmin(signed_distance(scene, grid))]
    assert signed_distance(scene, inside) < 0
    with pytest.raises(ValueError, match="goal.*inside an obstacle"):
        env.reset(seed=0, options={"goal": inside})
    with pytest.raises(ValueError, match="goal.*outside the arena"):
        env.reset(seed=0, options={"goal": [0.0, 0.0, -0.5]})
    with pytest.raises(ValueError, match="goal.*outside the arena"):
        env.reset(seed=0, options={"goal": [scene.arena_half + 3.0, 0.0, 1.0]})


def test_snapshot_validation_names_what_does_not_fit(model):
    env = make(model, precision="float32")
    env.reset(seed=3)
    env.step(env.action_space.sample())
    snap = env.unwrapped.get_state()
    assert snap.world.batch_size == 1
    # float32 -> bfloat16 env of the same model: restores, the tensors converted.
    bf = make(model, precision="bfloat16")
    bf.reset(seed=1)
    bf.unwrapped.set_state(snap)
    assert bf.step(np.zeros(6, np.float32))[0]["rgb"].shape == (32, 32, 3)
    bad = dataclasses.replace(snap, world=snap.world.clone())
    bad.world.stream.blocks[0].S[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        env.unwrapped.set_state(bad)
    bad = dataclasses.replace(snap, world=snap.world.clone())
    bad.world.stream.frame_index = bad.world.stream.frame_index.float()
    with pytest.raises(ValueError, match="frame_index.*only floating-point precisions convert"):
        env.unwrapped.set_state(bad)
    with pytest.raises(ValueError, match="intrinsics differ"):
        _restore(make(model, fov_deg=60.0), snap)
    with pytest.raises(ValueError, match="frames are"):
        _restore(env, dataclasses.replace(snap, frames=snap.frames[:, :16]))
    other = WorldModel(Autoencoder(AE), WorldModelBackbone(dataclasses.replace(BACKBONE, width=64)), sample_steps=2)
    with pytest.raises(ValueError, match="shape"):
        _restore(make(other), snap)


def _restore(env, snap):
    env.reset(seed=0)
    env.unwrapped.set_state(snap)


def test_snapshot_files_restore_bit_for_bit_in_another_process(model, tmp_path):
    import subprocess
    import sys

    model.save_pretrained(tmp_path / "wm")
    env = gym.make("SanaWM/Nav-v0", model=str(tmp_path / "wm"), precision="float32")
    env.reset(seed=5)
    env.step(np.full(6, 0.3, np.float32))
    path = env.unwrapped.save_state(tmp_path / "snap")
    assert path.name == "snap.json" and (tmp_path / "snap.safetensors").is_file()
    actions = np.random.default_rng(2).uniform(-1, 1, (3, 6)).astype(np.float32)
    np.save(tmp_path / "actions.npy", actions)
    here = np.stack([env.step(a)[0]["rgb"] for a in actions])
    code = (
        "import sys, numpy as np, gymnasium as gym, sanawm_gym\n"
        "d = sys.argv[1]\n"
        "env = gym.make('SanaWM/Nav-v0', model=d + '/wm', precision='float32')\n"
        "env.reset(seed=0)\n"
        "env.unwrapped.load_state(d + '/snap.json')\n"
        "np.save(d + '/there.npy', np.stack([env.step(a)[0]['rgb'] for a in np.load(d + '/actions.npy')]))\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=300,
                   env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    np.testing.assert_array_equal(np.load(tmp_path / "there.npy"), here)
    # A reference-world snapshot file is refused by name, not misread.
    ref = gym.make("SanaWM/ReferenceNav-v0", height=32, width=32)
    ref.reset(seed=0)
    ref.unwrapped.save_state(tmp_path / "ref")
    with pytest.raises(ValueError, match="'reference' snapshot"):
        env.unwrapped.load_state(tmp_path / "ref.json")
    from world_model.checkpoint import CheckpointError

    (tmp_path / "snap.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="snap.safetensors"):
        env.unwrapped.load_state(tmp_path / "snap")


def test_native_vector_env_exposes_scenes_and_intrinsics_for_recorders(model):
    venv = gym.make_vec("SanaWM/Nav-v0", num_envs=2, vectorization_mode="vector_entry_point", model=model)
    venv.reset(seed=0, options=None)
    scenes = venv.unwrapped.get_attr("scene")
    assert len(scenes) == 2 and all(s is not None for s in scenes)
    assert venv.unwrapped.intrinsics.shape == (3, 3)
    with pytest.raises(AttributeError, match="'scene'"):
        venv.unwrapped.get_attr("pose")


def test_context_clips_at_reset_keep_the_state_size_and_match_the_model(model):
    from sanawm_gym.kinematics import look_around

    env = make(model, context_seconds=1.0, precision="float32")
    obs, info = env.reset(seed=4)
    plain = make(model, context_seconds=0.0, precision="float32")
    _, plain_info = plain.reset(seed=4)
    np.testing.assert_array_equal(info["pose"], plain_info["pose"])  # the same start, seen after a look around
    np.testing.assert_array_equal(obs["rgb"], plain.reset(seed=4)[0]["rgb"])
    assert env.unwrapped.get_state().nbytes == plain.unwrapped.get_state().nbytes
    assert int(env.unwrapped.core.state.stream.frame_index[0]) == 5  # 1 + 16 frames: 5 latent frames committed
    # A user's clip: the env's state equals the model's own init_state of the clip.
    clip = env.unwrapped.core.frames[0]  # any uint8 frames will do
    frames = np.concatenate([clip[:1], clip])  # 1 + 4 frames
    c2w = look_around(info["pose"], 0.25)
    env.reset(options={"context": {"frames": frames, "c2w": c2w}})
    _, own = model.init_state(frames[None], c2w[None], env.unwrapped.intrinsics[None], "float32")
    for k, v in own.tensors().items():
        torch.testing.assert_close(env.unwrapped.core.state.tensors()[k], v)
    with pytest.raises(ValueError, match="context.*c2w must be \\(5, 4, 4\\)"):
        env.reset(options={"context": {"frames": frames, "c2w": c2w[:3]}})
    with pytest.raises(ValueError, match="frames must be uint8 \\(1 \\+ 4 n"):
        env.reset(options={"context": {"frames": frames[:3], "c2w": c2w[:3]}})
    with pytest.raises(ValueError, match="'image' and 'context' exclude"):
        env.reset(options={"context": {"frames": frames, "c2w": c2w}, "image": frames[0]})
    with pytest.raises(ValueError, match="context_seconds"):
        make(model, context_seconds=-1)
    # Rows of a vector env reset with and without context side by side.
    venv = gym.make_vec("SanaWM/Nav-v0", num_envs=2, vectorization_mode="vector_entry_point", model=model,
                        context_seconds=1.0, max_episode_steps=2, precision="float32")
    venv.reset(seed=4)
    for _ in range(3):
        venv.step(np.zeros((2, 6), np.float32))
    # One reset of rows with clips of two lengths and an image: every row's state is the
    # model's own init_state of its clip.
    venv = gym.make_vec("SanaWM/Nav-v0", num_envs=4, vectorization_mode="vector_entry_point", model=model,
                        precision="float32")
    venv.reset(seed=0)
    core = venv.unwrapped.core
    long = np.concatenate([frames, frames[1:]])  # 1 + 8 frames
    long_c2w = look_around(info["pose"], 0.5)
    given = [{"context": {"frames": frames, "c2w": c2w}}, {"context": {"frames": long, "c2w": long_c2w}},
             {"image": frames[0], "pose": info["pose"]}, {"context": {"frames": long[::-1].copy(), "c2w": long_c2w}}]
    core.reset_rows([0, 1, 2, 3], [np.random.default_rng(i) for i in range(4)], given)
    for r, opts in enumerate(given):
        clip = opts["context"]["frames"][None] if "context" in opts else opts["image"][None]
        poses = opts["context"]["c2w"][None] if "context" in opts else opts["pose"][None]
        _, own = model.init_state(clip, poses, core.intrinsics[None], "float32")
        for k, v in own.tensors().items():
            torch.testing.assert_close(core.state.tensors()[k][r : r + 1], v, rtol=1e-4, atol=1e-5, msg=f"row {r} {k}")
