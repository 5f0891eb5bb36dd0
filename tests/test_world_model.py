"""The inference API (WorldModel) and the teacher training stage, on tiny random models."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from world_model.geometry import exp_se3, intrinsics_from_fov
from world_model.autoencoder import Autoencoder, AutoencoderConfig
from world_model.checkpoint import CheckpointError, save_pretrained
from world_model.model import WorldModelBackbone, WorldModelConfig, state_nbytes
from world_model.world_model import WorldModel

ROOT = Path(__file__).resolve().parents[1]
AE = AutoencoderConfig(latent_channels=4, frame_widths=(8, 8), latent_widths=(16, 16), encoder_blocks=(1, 0, 0, 1),
                       decoder_blocks=(1, 0, 0, 1))
BACKBONE = WorldModelConfig(latent_channels=4, latent_height=4, latent_width=4, depth=2, width=32, num_heads=2,
                            softmax_every=2, softmax_window_chunks=2)


def tiny_world_model(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    backbone = WorldModelBackbone(BACKBONE)
    with torch.no_grad():  # make the output depend on the noise and the camera
        for name, p in backbone.named_parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return WorldModel(Autoencoder(AE), backbone, sample_steps=2)


def path(frames: int = 9) -> np.ndarray:
    twist = np.array([0.2, 0.0, 0.8, 0.0, 0.4, 0.0])
    steps = np.arange(frames)[:, None] * 0.0625
    return exp_se3(twist[None] * steps)


@pytest.fixture(scope="module")
def wm():
    return tiny_world_model()


def first_frame(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_generate_video_shapes_and_seeds(wm):
    K = intrinsics_from_fov(90, 32, 32).numpy()
    a = wm.generate_video(first_frame(), path(9), K, seed=1)
    b = wm.generate_video(first_frame(), path(9), K, seed=1)
    c = wm.generate_video(first_frame(), path(9), K, seed=2)
    assert a.shape == (9, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[1:], c[1:])
    np.testing.assert_array_equal(a[0], c[0])  # the first frame is the encoded input, noise-free
    full_k = np.repeat(K[None], 9, 0)
    np.testing.assert_array_equal(wm.generate_video(first_frame(), path(9), full_k, seed=1), a)


def test_step_by_step_equals_generate_video_and_state_is_bounded(wm):
    K = intrinsics_from_fov(90, 32, 32).numpy()
    c2w = path(13)
    video = wm.generate_video(first_frame(), c2w, K, seed=3)
    g = torch.Generator().manual_seed(3)
    frame0, state = wm.init_state(first_frame()[None], c2w[None, 0], K[None])
    frames, sizes = [frame0[:, None]], []
    for i in range(1, 13, 4):
        out, state = wm.step(state, c2w[None, i : i + 4], g)
        frames.append(out)
        sizes.append(state_nbytes(state.stream))
    np.testing.assert_array_equal(np.concatenate(frames, 1)[0], video)
    assert len(set(sizes)) == 1


def test_camera_changes_the_video(wm):
    K = intrinsics_from_fov(90, 32, 32).numpy()
    still = np.repeat(np.eye(4)[None], 9, 0)
    assert not np.array_equal(wm.generate_video(first_frame(), path(9), K, seed=0),
                              wm.generate_video(first_frame(), still, K, seed=0))


def test_save_and_load_round_trip(wm, tmp_path):
    wm.save_pretrained(tmp_path / "wm")
    loaded = WorldModel.from_pretrained(tmp_path / "wm")
    K = intrinsics_from_fov(90, 32, 32).numpy()
    np.testing.assert_array_equal(loaded.generate_video(first_frame(), path(5), K, seed=0),
                                  wm.generate_video(first_frame(), path(5), K, seed=0))
    assert loaded.sample_steps == 2 and loaded.image_hw == (32, 32)


def test_bad_files_name_the_problem(wm, tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        WorldModel.from_pretrained(tmp_path / "nowhere")
    wm.save_pretrained(tmp_path / "wm")
    weights = tmp_path / "wm" / "backbone" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        WorldModel.from_pretrained(tmp_path / "wm")


def test_bad_inputs(wm):
    K = intrinsics_from_fov(90, 32, 32).numpy()
    with pytest.raises(ValueError, match="uint8"):
        wm.generate_video(first_frame().astype(np.float32), path(5), K)
    with pytest.raises(ValueError, match=r"\(B, 32, 32, 3\)"):
        wm.generate_video(np.zeros((16, 16, 3), np.uint8), path(5), K)
    with pytest.raises(ValueError, match="1 \\+ 4 n"):
        wm.generate_video(first_frame(), path(6), K)
    with pytest.raises(ValueError, match="intrinsics"):
        wm.generate_video(first_frame(), path(5), np.eye(4))
    _, state = wm.init_state(first_frame()[None], path(1), K[None])
    with pytest.raises(ValueError, match="c2w_chunk"):
        wm.step(state, path(3)[None])


@pytest.mark.parametrize("change, match", [
    (lambda c2w, K: (np.where(np.arange(4) == 0, np.nan, 1.0) * c2w, K), "c2w must be finite"),
    (lambda c2w, K: (c2w * np.array([2.0, 1.0, 1.0, 1.0])[:, None], K), "c2w must be rigid.*matrix 0"),
    (lambda c2w, K: (c2w, K * np.nan), "intrinsics must be finite"),
    (lambda c2w, K: (c2w, K * np.array([[-1.0], [1.0], [1.0]])), "focal lengths.*> 0"),
    (lambda c2w, K: (c2w, np.diag([20.0, 20.0, 0.0])), "pinhole.*not singular"),
])
def test_generate_video_refuses_bad_cameras(wm, change, match):
    K = intrinsics_from_fov(90, 32, 32).numpy()
    c2w, K = change(path(5), K)
    with pytest.raises(ValueError, match=match):
        wm.generate_video(first_frame(), c2w, K)


@pytest.mark.parametrize("steps", [0, -1, 1.5, "2", True])
def test_steps_must_be_a_positive_integer(wm, steps):
    K = intrinsics_from_fov(90, 32, 32).numpy()
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1"):
        wm.generate_video(first_frame(), path(5), K, steps=steps)
    _, state = wm.init_state(first_frame()[None], path(1), K[None])
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1"):
        wm.step(state, path(4)[None], steps=steps)


def test_step_refuses_non_rigid_chunks_and_init_refuses_bad_intrinsics(wm):
    K = intrinsics_from_fov(90, 32, 32).numpy()
    _, state = wm.init_state(first_frame()[None], path(1), K[None])
    bad = path(4)[None].copy()
    bad[0, 2, :3, :3] *= 1.5
    with pytest.raises(ValueError, match="c2w_chunk must be rigid.*matrix 2"):
        wm.step(state, bad)
    with pytest.raises(ValueError, match="focal"):
        wm.init_state(first_frame()[None], path(1), -K[None])


def test_a_checkpoint_with_non_finite_weights_is_refused(wm, tmp_path):
    bad = tiny_world_model()
    with torch.no_grad():
        bad.backbone.final.bias[0] = float("inf")
    bad.save_pretrained(tmp_path / "wm")
    with pytest.raises(CheckpointError, match=r"backbone.*non-finite.*final\.bias"):
        WorldModel.from_pretrained(tmp_path / "wm")


def test_world_state_rows_select_replace_and_clone(wm):
    K = intrinsics_from_fov(90, 32, 32).numpy()
    frames = np.stack([first_frame(0), first_frame(1), first_frame(2)])
    _, state = wm.init_state(frames, np.repeat(path(1), 3, 0), np.repeat(K[None], 3, 0))
    row = state.select([2])
    assert row.batch_size == 1 and state.batch_size == 3
    _, single = wm.init_state(frames[2:], path(1), K[None])
    for k, v in row.tensors().items():
        torch.testing.assert_close(v, single.tensors()[k], rtol=1e-5, atol=1e-6)
    swapped = state.with_rows([0], row)
    for k, v in swapped.tensors().items():
        torch.testing.assert_close(v[0], state.tensors()[k][2])
        torch.testing.assert_close(v[1:], state.tensors()[k][1:])
    copy = state.clone()
    copy.reference += 1
    assert not torch.equal(copy.reference, state.reference)
    rebuilt = state.from_tensors(state.tensors(), state.decode.latent_frames)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.tensors().values(), state.tensors().values()))


def test_teacher_stage_trains_resumes_and_exports_a_loadable_world_model(tmp_path, monkeypatch):
    from sanawm_gym.dataset import write_dataset

    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    data = write_dataset(tmp_path / "data", num_clips=6, frames_per_clip=9, height=32, width=32, seed=0, progress=False)
    held = write_dataset(tmp_path / "held", num_clips=2, frames_per_clip=9, height=32, width=32, seed=99, progress=False)
    torch.manual_seed(0)
    save_pretrained(tmp_path / "ae", Autoencoder(AE), AE)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "world_model.train", "--stage", "teacher", "--data", str(data), "--heldout", str(held),
            "--out", str(out), "--steps", "4", "--batch-size", "2", "--clip-frames", "9", "--eval-frames", "9",
            "--eval-clips", "2", "--eval-interval", "4", "--ckpt-interval", "2", "--num-workers", "0", "--no-progress",
            "--autoencoder", str(tmp_path / "ae"), "--model.latent-channels", "4", "--model.latent-height", "4",
            "--model.latent-width", "4", "--model.depth", "2", "--model.width", "32", "--model.num-heads", "2",
            "--model.softmax-every", "2", "--progressive", "2", "3", "--progressive-epochs", "1", "--sample-steps", "2",
            "--horizons-s", "0.25", "0.5"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.run(args + ["--stop-after", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resum" in done.stderr.lower()
    assert list((out / "eval").glob("psnr-horizon-*.png")) and list((out / "eval").glob("rollout-*.png"))
    wm = WorldModel.from_pretrained(out / "final")
    K = intrinsics_from_fov(90, 32, 32).numpy()
    assert wm.generate_video(first_frame(), path(5), K).shape == (5, 32, 32, 3)


def test_teacher_init_from_copies_every_fitting_tensor(wm, tmp_path, monkeypatch):
    """``--init-from`` warm start: from a world-model folder or a backbone folder, every
    tensor whose name and shape match is copied; after a change of latent channels only the
    latent projections start fresh."""
    from sanawm_gym.dataset import write_dataset
    from world_model.train.config import TrainConfig
    from world_model.train.stages.teacher import TeacherStage, TeacherStageConfig
    from world_model.world_model import load_backbone

    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    wm.save_pretrained(tmp_path / "wm")
    for folder in (tmp_path / "wm", tmp_path / "wm" / "backbone"):
        assert load_backbone(folder).cfg == BACKBONE
    assert load_backbone().cfg == WorldModel.from_pretrained().backbone.cfg
    data = write_dataset(tmp_path / "data", num_clips=2, frames_per_clip=5, height=32, width=32, seed=0, progress=False)
    wider_ae = dataclasses.replace(AE, latent_channels=8)
    save_pretrained(tmp_path / "ae8", Autoencoder(wider_ae), wider_ae)
    train = TrainConfig(stage="teacher", data=str(data), out=str(tmp_path / "run"), clip_frames=5, eval_frames=5)
    stage = TeacherStage(train, TeacherStageConfig(model=dataclasses.replace(BACKBONE, latent_channels=8),
                                                   autoencoder=str(tmp_path / "ae8"), init_from=str(tmp_path / "wm")))
    mine = stage.build_model().backbone.state_dict()
    theirs = wm.backbone.state_dict()
    differ = sorted(k for k in mine if k not in theirs or mine[k].shape != theirs[k].shape)
    assert differ == ["embed.weight", "final.bias", "final.weight"], differ
    for k, v in mine.items():
        if k not in differ:
            torch.testing.assert_close(v, theirs[k], rtol=0, atol=0, msg=k)
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_backbone(tmp_path / "nowhere")
    other = TeacherStage(train, TeacherStageConfig(model=dataclasses.replace(BACKBONE, latent_channels=8, width=48),
                                                   autoencoder=str(tmp_path / "ae8"), init_from=str(tmp_path / "wm")))
    with pytest.raises(ValueError, match="less than half .* width: 32 in init_from, 48 in this run"):
        other.build_model()
    # --init-fresh: tensors named by a pattern start as initialised (here the GDN blocks' camera branch)
    fresh = TeacherStage(train, TeacherStageConfig(model=dataclasses.replace(BACKBONE, latent_channels=8),
                                                   autoencoder=str(tmp_path / "ae8"), init_from=str(tmp_path / "wm"),
                                                   init_fresh=(r"blocks\.0\.attn\.cam_",)))
    mine = fresh.build_model().backbone.state_dict()
    named = [k for k in mine if k.startswith("blocks.0.attn.cam_")]
    assert len(named) == 5 and not mine["blocks.0.attn.cam_out.weight"].any()  # as initialised: zero out-projection
    assert torch.equal(mine["blocks.0.attn.cam_q_norm"], torch.ones_like(mine["blocks.0.attn.cam_q_norm"]))
    assert not torch.equal(mine["blocks.0.attn.cam_qkv.weight"], theirs["blocks.0.attn.cam_qkv.weight"])
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if k not in differ and k not in named)
    for bad, message in (((r"blocks\.0\.attn\.nothing",), "matches no tensor"), ((r"(",), "not a regular expression")):
        with pytest.raises(ValueError, match=message):
            TeacherStage(train, TeacherStageConfig(model=dataclasses.replace(BACKBONE, latent_channels=8),
                                                   autoencoder=str(tmp_path / "ae8"), init_from=str(tmp_path / "wm"),
                                                   init_fresh=bad)).build_model()
    with pytest.raises(ValueError, match="needs init_from"):
        TeacherStageConfig(init_fresh=("x",))


def test_teacher_latent_cache_follows_the_autoencoders_normalisation(wm, tmp_path, monkeypatch):
    """The encoded training clips are cached per autoencoder: the same weights with another
    latent normalisation (config only) are encoded again, not served from the stale cache;
    a world-model folder is accepted as ``--autoencoder``."""
    from sanawm_gym.dataset import write_dataset
    from world_model.train.config import TrainConfig
    from world_model.train.stages.teacher import TeacherStage, TeacherStageConfig

    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    wm.save_pretrained(tmp_path / "wm")
    data = write_dataset(tmp_path / "data", num_clips=2, frames_per_clip=5, height=32, width=32, seed=0, progress=False)
    train = TrainConfig(stage="teacher", data=str(data), out=str(tmp_path / "run"), clip_frames=5, eval_frames=5)
    (tmp_path / "run").mkdir()
    shared = dataclasses.replace(AE, latent_std=(0.5,) * AE.latent_channels)
    save_pretrained(tmp_path / "ae_shared", wm.autoencoder, shared)
    caches = []
    for folder in (tmp_path / "wm", tmp_path / "ae_shared", tmp_path / "wm"):
        stage = TeacherStage(train, TeacherStageConfig(model=BACKBONE, autoencoder=str(folder)))
        caches.append(stage._latent_cache()["latents"])
    assert len(list((tmp_path / "run").glob("latents-*.safetensors"))) == 2
    torch.testing.assert_close(caches[1] * 0.5, caches[0], rtol=1e-4, atol=1e-5)  # std 1 -> 0.5: latents doubled
    torch.testing.assert_close(caches[2], caches[0], rtol=0, atol=0)


def test_teacher_latent_cache_split_between_processes_equals_one_process(wm, tmp_path, monkeypatch):
    """Under torchrun each process encodes every other batch into a part file; the parts
    assembled (in clip order) equal the cache one process writes, and the parts are gone
    after. Process 1 runs first and is stopped at its barrier, as a kill would stop it:
    process 0 then reuses its part."""
    import torch.distributed as tdist

    from sanawm_gym.dataset import write_dataset
    from world_model.train.config import TrainConfig
    from world_model.train.stages.teacher import TeacherStage, TeacherStageConfig

    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    wm.save_pretrained(tmp_path / "wm")
    data = write_dataset(tmp_path / "data", num_clips=5, frames_per_clip=5, height=32, width=32, seed=0, progress=False)

    def cache(run: str, rank: int | None, stop_at_barrier: bool = False) -> dict:
        train = TrainConfig(stage="teacher", data=str(data), out=str(tmp_path / run), clip_frames=5, eval_frames=5,
                            progress=False)
        (tmp_path / run).mkdir(exist_ok=True)
        stage = TeacherStage(train, TeacherStageConfig(model=BACKBONE, autoencoder=str(tmp_path / "wm"), encode_batch=2))
        with monkeypatch.context() as mp:
            if rank is not None:
                mp.setattr(tdist, "is_initialized", lambda: True)
                mp.setattr(tdist, "get_rank", lambda: rank)
                mp.setattr(tdist, "get_world_size", lambda: 2)

                def barrier():
                    if stop_at_barrier:
                        raise KeyboardInterrupt("killed at the barrier")

                mp.setattr(tdist, "barrier", barrier)
            return stage._latent_cache()

    single = cache("one", None)
    with pytest.raises(KeyboardInterrupt):
        cache("two", 1, stop_at_barrier=True)
    assert [p.name for p in (tmp_path / "two").glob("*.part*")] == [p.name for p in (tmp_path / "two").glob("*part1of2*")]
    split = cache("two", 0)
    for k in ("latents", "c2w", "intrinsics"):
        torch.testing.assert_close(split[k], single[k], rtol=0, atol=0, msg=k)
    assert not list((tmp_path / "two").glob("*.part*")) and len(list((tmp_path / "two").glob("latents-*"))) == 1


def test_teacher_latent_cache_windows_cut_each_clip_into_consecutive_clips(wm, tmp_path, monkeypatch):
    """``windows_per_clip=2``: 9-frame clips give two 5-frame training clips each (frames
    0-4 and 4-8), window 0 the same as the one-window cache; too short clips are refused."""
    from safetensors.numpy import load_file as load_np

    from sanawm_gym.dataset import write_dataset
    from world_model.train.config import TrainConfig
    from world_model.train.stages.teacher import TeacherStage, TeacherStageConfig

    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    wm.save_pretrained(tmp_path / "wm")
    data = write_dataset(tmp_path / "data", num_clips=3, frames_per_clip=9, height=32, width=32, seed=0, progress=False)
    train = TrainConfig(stage="teacher", data=str(data), out=str(tmp_path / "run"), clip_frames=5, eval_frames=5)
    (tmp_path / "run").mkdir()
    caches = [TeacherStage(train, TeacherStageConfig(model=BACKBONE, autoencoder=str(tmp_path / "wm"),
                                                     windows_per_clip=w))._latent_cache() for w in (1, 2)]
    one, two = caches
    assert two["latents"].shape[0] == 6 and one["latents"].shape[0] == 3
    torch.testing.assert_close(two["latents"][:3], one["latents"], rtol=0, atol=0)
    c2w = torch.from_numpy(load_np(str(data / "shard-00000.safetensors"))["c2w"])
    torch.testing.assert_close(two["c2w"][3:], c2w[:, 4:9], rtol=0, atol=0)
    with pytest.raises(ValueError, match="3 windows of 5 frames need clips of 13 frames, the shortest has 9"):
        TeacherStage(train, TeacherStageConfig(model=BACKBONE, autoencoder=str(tmp_path / "wm"),
                                               windows_per_clip=3))._latent_cache()


def test_student_rollout_at_the_last_step_is_the_generation_loop(wm):
    """With the gradient at the last sampler step, the Self-Forcing rollout (no grad) makes
    exactly the latents the generation loop makes from the same noise; with gradient, every
    generated frame carries it and the first frame is the given one."""
    from world_model.diffusion import sampling_times
    from world_model.generation import rollout_latents
    from world_model.train.stages.self_forcing import student_rollout

    backbone = wm.backbone
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 5, 4, 4, 4, generator=g)
    c2w = torch.as_tensor(np.stack([path(17), path(17)])).float()
    K = intrinsics_from_fov(90, 32, 32)[None].expand(2, 3, 3).float()
    cam = backbone.camera(c2w, K, (32, 32))
    times = sampling_times(2, 3.0)
    with torch.no_grad():
        video, error = student_rollout(backbone, latents, cam, times, 1, torch.Generator().manual_seed(5))
        reference, _ = rollout_latents(backbone, latents[:, :1], cam, 5, times, torch.Generator().manual_seed(5))
    torch.testing.assert_close(video, reference, rtol=1e-5, atol=1e-6)
    assert error.shape == (2, 5) and error[:, 0].abs().max() == 0 and (error[:, 1:] > 0).all()
    video, error = student_rollout(backbone, latents, cam, times, 0, torch.Generator().manual_seed(5))
    assert torch.equal(video[:, 0].detach(), latents[:, 0]) and video.requires_grad
    error[:, 1:].mean().backward()
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    backbone.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="grad_step must be in"):
        student_rollout(backbone, latents, cam, times, 2)


def test_dmd_gradient_is_the_score_difference_and_reaches_only_student_and_critic(wm):
    """DMD: with the critic equal to the teacher the two scores agree and the student's
    gradient is exactly zero; once the critic differs, the student's gradient through a
    generated chunk is non-zero (the first, given frame gets none), the teacher gets none
    and the critic only from its own flow-matching loss."""
    import copy

    from world_model.diffusion import sampling_times
    from world_model.train.stages.self_forcing import dmd_losses, student_rollout

    student = copy.deepcopy(wm.backbone)
    teacher = copy.deepcopy(wm.backbone).requires_grad_(False)
    critic = copy.deepcopy(wm.backbone)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 4, 4, 4, generator=g)
    c2w = torch.as_tensor(np.stack([path(13), path(13)])).float()
    K = intrinsics_from_fov(90, 32, 32)[None].expand(2, 3, 3).float()
    cam = student.camera(c2w, K, (32, 32))
    video, _ = student_rollout(student, latents, cam, sampling_times(1, 3.0), 0, torch.Generator().manual_seed(1))
    video.retain_grad()
    dmd, crit, g_abs = dmd_losses(video, cam, teacher, critic, 3.0, generator=torch.Generator().manual_seed(2))
    dmd.backward(retain_graph=True)
    assert float(g_abs) == 0 and video.grad.abs().max() == 0  # same weights: same scores, no DMD gradient
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in critic.parameters())
    crit.backward()
    assert float(crit.detach()) > 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    with torch.no_grad():  # a critic that has learned something else
        for p in critic.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    video.grad = None
    student.zero_grad(set_to_none=True)
    dmd, _, g_abs = dmd_losses(video, cam, teacher, critic, 3.0, generator=torch.Generator().manual_seed(2))
    dmd.backward(retain_graph=True)
    assert float(g_abs) > 0 and video.grad[:, 0].abs().max() == 0 and (video.grad[:, 1:].abs().sum((2, 3, 4)) > 0).all()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_self_forcing_stage_trains_from_a_teacher_and_exports_a_student(wm, tmp_path, monkeypatch):
    from sanawm_gym.dataset import write_dataset

    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    data = write_dataset(tmp_path / "data", num_clips=4, frames_per_clip=9, height=32, width=32, seed=0, progress=False)
    held = write_dataset(tmp_path / "held", num_clips=2, frames_per_clip=9, height=32, width=32, seed=99, progress=False)
    wm.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "student"
    args = [sys.executable, "-m", "world_model.train", "--stage", "self_forcing", "--data", str(data),
            "--heldout", str(held), "--out", str(out), "--steps", "2", "--batch-size", "2", "--clip-frames", "9",
            "--eval-frames", "9", "--eval-clips", "2", "--eval-interval", "2", "--num-workers", "0", "--no-progress",
            "--autoencoder", str(tmp_path / "teacher"), "--init-from", str(tmp_path / "teacher"),
            "--model.latent-channels", "4", "--model.latent-height", "4", "--model.latent-width", "4",
            "--model.depth", "2", "--model.width", "32", "--model.num-heads", "2", "--model.softmax-every", "2",
            "--model.softmax-window-chunks", "2", "--progressive", "3", "--student-steps", "1", "--horizons-s", "0.25",
            "--dmd-weight", "0.5", "--dmd-teacher", str(tmp_path / "teacher")]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"regression", "dmd_grad", "critic"} <= set(logged[-1])
    student = WorldModel.from_pretrained(out / "final")
    assert student.sample_steps == 1
    K = intrinsics_from_fov(90, 32, 32).numpy()
    assert student.generate_video(first_frame(), path(5), K).shape == (5, 32, 32, 3)
    without = [a for a in args[:-4] if a not in ("--init-from", str(tmp_path / "teacher"))]
    refused = subprocess.run(without + ["--out", str(tmp_path / "x")], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode != 0 and "--init-from" in refused.stderr


def test_evaluate_command_reports_horizons_and_baselines(wm, tmp_path, monkeypatch, capsys):
    from sanawm_gym.fidelity import main

    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    wm.save_pretrained(tmp_path / "wm")
    assert main(["--model", str(tmp_path / "wm"), "--data", str(tmp_path / "held"), "--clips", "2", "--seconds", "0.5",
                 "--horizons", "0.25", "0.5", "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "camera off" in out and "first frame" in out and "   0.5s" in out
    for name in ("report.json", "psnr-horizon.png", "rollout.png"):
        assert (tmp_path / "eval" / name).exists()
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    for n in ("model", "no_camera", "first_frame"):  # the per-clip values are the ones the means are taken over
        assert len(report[f"clips_{n}_0.5s"]) == 2
        assert report[f"psnr_{n}_0.5s"] == pytest.approx(np.mean(report[f"clips_{n}_0.5s"]), abs=1e-5)
    model, cam_off, first = (np.array(report[f"clips_{n}_0.5s"]) for n in ("model", "no_camera", "first_frame"))
    margins = model - np.maximum(cam_off, first)
    row = next(line for line in out.splitlines() if line.startswith("    0.5s")).split()
    assert row[-2] == f"{np.median(margins):+.2f}" and row[-1] == f"{int((margins > 0).sum())}/2"


def test_clip_margins_compare_each_clip_with_its_better_baseline():
    from sanawm_gym.fidelity import clip_margins

    report = {"clips_model_2s": [20.0, 18.0, 25.0, 17.0], "clips_no_camera_2s": [15.0, 19.0, 15.0, 16.0],
              "clips_first_frame_2s": [19.0, 17.0, 48.13, 17.0]}
    # clip 0 is ahead; 1 loses to camera off, 2 to an exact first frame (its camera is back at the start), 3 ties
    np.testing.assert_allclose(clip_margins(report, 2.0), [1.0, -1.0, -23.13, 0.0])


def test_evaluate_command_autoencoder_reports_reconstruction(wm, tmp_path, monkeypatch, capsys):
    from world_model.data import PosedVideoDataset
    from sanawm_gym.fidelity import main
    from world_model.scoring import evaluate_reconstruction

    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    wm.save_pretrained(tmp_path / "wm")
    save_pretrained(tmp_path / "ae", wm.autoencoder, wm.autoencoder.config)  # what an autoencoder run exports
    reports = []
    for folder in ("wm", "ae"):
        out = tmp_path / f"eval-{folder}"
        assert main(["--model", str(tmp_path / folder), "--autoencoder", "--data", str(tmp_path / "held"),
                     "--clips", "2", "--seconds", "0.5", "--out", str(out)]) == 0
        assert "autoencoder, 2 held-out clips of 9 frames" in capsys.readouterr().out
        assert (out / "recon.png").exists()
        reports.append(json.loads((out / "report.json").read_text()))
    assert reports[0] == reports[1]
    # the same figures as the function on the float32 model (a random autoencoder: low, finite)
    again = evaluate_reconstruction(wm.autoencoder, PosedVideoDataset(tmp_path / "held", 9, random_crop=False))
    report = reports[0]
    assert again["psnr"] == pytest.approx(report["psnr"], abs=1e-4) and 0 < report["psnr"] < 30
    assert report["psnr_worst_clip"] <= report["psnr"] and -1 <= report["ssim"] <= 1


def test_the_shipped_default_checkpoint_loads_and_generates():
    from world_model.world_model import DEFAULT_WEIGHTS

    size = sum(f.stat().st_size for f in DEFAULT_WEIGHTS.rglob("*") if f.is_file())
    assert size < 25 * 2**20  # the package's budget for the default checkpoint
    wm = WorldModel.from_pretrained()
    assert wm.image_hw == (64, 64) and wm.config == WorldModelConfig.tiny()
    K = intrinsics_from_fov(90, 64, 64).numpy()
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    video = wm.generate_video(frame, path(5), K, seed=0)
    assert video.shape == (5, 64, 64, 3) and video.dtype == np.uint8


def test_packaged_models_load_by_name_and_share_one_autoencoder(tmp_path, monkeypatch):
    """``"default"`` and ``"teacher"`` name the package's checkpoints (their backbones differ
    only in what was trained; the autoencoder is stored once); a folder of that name, where
    one exists, wins over the name; anything else is a clear error."""
    from world_model.world_model import DEFAULT_WEIGHTS, PACKAGED_MODELS, component_folder, packaged_model

    assert set(PACKAGED_MODELS) == {"default", "teacher"}
    assert packaged_model(None) == "default" and packaged_model("teacher") == "teacher"
    assert component_folder("teacher", "autoencoder") == component_folder(None, "autoencoder") == \
        DEFAULT_WEIGHTS / "autoencoder"
    assert component_folder("teacher", "backbone") == DEFAULT_WEIGHTS / "teacher" / "backbone"
    teacher = WorldModel.from_pretrained("teacher")
    default = WorldModel.from_pretrained("default")
    assert teacher.config == default.config and teacher.image_hw == default.image_hw
    assert teacher.sample_steps >= default.sample_steps  # the default is the distilled student, if shipped
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher").mkdir()  # a folder named like a packaged model is that folder
    assert packaged_model("teacher") is None
    with pytest.raises(CheckpointError, match="teacher"):
        WorldModel.from_pretrained("teacher")
    with pytest.raises(CheckpointError, match="not a packaged model's name"):
        WorldModel.from_pretrained("studnet")


@pytest.mark.parametrize("folder", [None, "teacher", ROOT / "checkpoints" / "world-model-32ch",
                                    ROOT / "checkpoints" / "teacher-v2-candidate", ROOT / "checkpoints" / "student-sf-probe",
                                    ROOT / "checkpoints" / "student-ode1", ROOT / "checkpoints" / "student-ode-sf"],
                         ids=["shipped", "teacher", "32ch", "v2-candidate", "sf-probe", "ode1", "ode-sf"])
def test_trained_world_models_follow_the_camera(folder, tmp_path, monkeypatch):
    """The packaged checkpoints and the ones in ``checkpoints/`` load into today's code
    and, on fresh held-out clips, beat both baselines 1 s ahead by a clear margin, each at
    its own sampler steps (measured on these 4 clips, model / first frame / camera off: the
    2-step teacher 21.2 / 17.9 / 14.5 dB, 32ch 21.3 / 17.9 / 15.9 dB)."""
    from sanawm_gym.dataset import write_dataset
    from world_model.data import PosedVideoDataset
    from world_model.scoring import evaluate_rollouts

    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    wm = WorldModel.from_pretrained(folder)
    held = PosedVideoDataset(write_dataset(tmp_path / "held", 4, 17, height=64, width=64, seed=7000, progress=False), 17,
                             random_crop=False)
    report = evaluate_rollouts(wm.backbone, wm.autoencoder, held, wm.image_hw, wm.sample_steps, wm.sample_shift, (1.0,))
    assert report["psnr_model_1s"] >= report["psnr_first_frame_1s"] + 2.0, report
    assert report["psnr_model_1s"] >= report["psnr_no_camera_1s"] + 4.0, report


def test_a_context_clip_is_committed_clean_and_the_state_keeps_its_size(wm):
    """A look-around clip goes into the state chunk by chunk; streaming after it equals
    generate_video from it, and the state is as large as after one frame."""
    K = intrinsics_from_fov(90, 32, 32).numpy()
    c2w = path(17)
    clip = np.stack([first_frame(i) for i in range(9)])  # 1 + 4 * 2 frames at c2w[:9]
    decoded, state = wm.init_state(clip[None], c2w[None, :9], K[None])
    assert decoded.shape == (1, 9, 32, 32, 3)
    _, single = wm.init_state(clip[None, 0], c2w[None, 0], K[None])
    assert state.nbytes == single.nbytes and int(state.stream.frame_index[0]) == 3
    g = torch.Generator().manual_seed(5)
    frames = [decoded[0]]
    for i in range(9, 17, 4):
        out, state = wm.step(state, c2w[None, i : i + 4], g)
        frames.append(out[0])
    video = wm.generate_video(clip, c2w, K, seed=5)
    assert video.shape == (17, 32, 32, 3)
    np.testing.assert_array_equal(np.concatenate(frames), video)
    # The context matters: starting from its last frame alone continues differently.
    alone = wm.generate_video(clip[-1], c2w[8:], K, seed=5)
    assert not np.array_equal(alone[1:], video[9:])
    with pytest.raises(ValueError, match=r"context clips \(B, 1 \+ 4 n"):
        wm.init_state(clip[None, :6], c2w[None, :6], K[None])
    with pytest.raises(ValueError, match="needs at least as many poses"):
        wm.generate_video(clip, c2w[:5], K)
