"""The ODE-regression distillation stage: the teacher's pairs, the loss, the resumable shards
and the stage end to end (tiny models)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from test_world_model import BACKBONE, ROOT, first_frame, path, tiny_world_model
from world_model.diffusion import sampling_times
from world_model.geometry import intrinsics_from_fov
from world_model.world_model import WorldModel


@pytest.fixture(scope="module")
def wm():
    return tiny_world_model()


def _inputs(wm, batch=2, frames=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, frames, 4, 4, 4, generator=g)
    c2w = torch.as_tensor(np.stack([path(1 + 4 * (frames - 1))] * batch)).float()
    K = intrinsics_from_fov(90, 32, 32)[None].expand(batch, 3, 3).float()
    return latents, wm.backbone.camera(c2w, K, (32, 32))


def test_ode_grid_joins_the_teachers_grid_and_the_students_times():
    from world_model.train.stages.ode import ode_grid

    student = sampling_times(2, 3.0)  # 1, 0.75, 0
    grid, record = ode_grid(3, student, 3.0)
    assert grid[0] == 1 and grid[-1] == 0 and (grid[1:] < grid[:-1]).all()
    teacher = sampling_times(3, 3.0)
    assert all((grid - t).abs().min() < 1e-6 for t in torch.cat([teacher, student]))
    assert len(grid) == 5 and [float(grid[i]) for i in record] == pytest.approx([1.0, 0.75])
    grid, record = ode_grid(8, student, 3.0)  # 0.75 is on the 8-step grid already: counted once
    assert len(grid) == 9 and record == [0, 4]


def test_ode_pairs_on_the_students_grid_are_the_generation_loop_and_do_not_depend_on_the_batch(wm):
    """With the student's own grid the teacher's pairs are exactly what the generation loop
    makes from the same noise; ``xt`` at ``t = 1`` is that noise; each row's pairs are the
    same whether made alone or beside another row."""
    from world_model.generation import rollout_latents
    from world_model.train.stages.ode import ode_grid, ode_pairs

    latents, cam = _inputs(wm)
    times = sampling_times(2, 3.0)
    grid, record = ode_grid(2, times, 3.0)
    x0, xt = ode_pairs(wm.backbone, latents, cam, grid, record, [torch.Generator().manual_seed(s) for s in (7, 8)])
    assert x0.shape == latents.shape and xt.shape == (2, 2) + latents.shape[1:]
    assert torch.equal(x0[:, 0], latents[:, 0]) and torch.equal(xt[:, :, 0], latents[:, None, 0].expand(2, 2, 4, 4, 4))
    for row, seed in ((0, 7), (1, 8)):
        sub_cam = type(cam)(*(x[row:row + 1] for x in cam))
        alone, _ = ode_pairs(wm.backbone, latents[row:row + 1], sub_cam, grid, record, [torch.Generator().manual_seed(seed)])
        torch.testing.assert_close(alone[0], x0[row], rtol=1e-5, atol=1e-6)
        reference, _ = rollout_latents(wm.backbone, latents[row:row + 1, :1], sub_cam, 5, times,
                                       torch.Generator().manual_seed(seed))
        torch.testing.assert_close(x0[row], reference[0], rtol=1e-5, atol=1e-6)
        noise = torch.randn((4, 4, 4, 4), generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(xt[row, 0, 1:], noise, rtol=0, atol=0)


def test_ode_loss_vanishes_for_the_teacher_itself_and_trains_a_perturbed_student(wm):
    """On one Euler step the teacher's own pairs are its exact outputs, so the teacher as
    student has zero loss (its context, the committed teacher chunks, is the rollout's own
    state); a perturbed student has a positive loss whose gradient reaches its weights,
    and not the first frame's chunk."""
    from world_model.train.stages.ode import ode_grid, ode_loss, ode_pairs

    latents, cam = _inputs(wm)
    times = sampling_times(1, 3.0)
    grid, record = ode_grid(1, times, 3.0)
    x0, xt = ode_pairs(wm.backbone, latents, cam, grid, record, [torch.Generator().manual_seed(s) for s in (1, 2)])
    with torch.no_grad():
        error = ode_loss(wm.backbone, x0, xt[:, 0], cam, 1.0)
    assert error.shape == (2, 5) and error.abs().max() < 1e-9
    student = copy.deepcopy(wm.backbone)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    error = ode_loss(student, x0, xt[:, 0], cam, 1.0)
    assert error[:, 0].abs().max() == 0 and (error[:, 1:] > 1e-8).all()
    error[:, 1:].mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def _stage(wm, tmp_path, monkeypatch, **options):
    from sanawm_gym.dataset import write_dataset
    from world_model.train.config import TrainConfig
    from world_model.train.stages.ode import OdeStage, OdeStageConfig

    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    if not (tmp_path / "wm").is_dir():
        wm.save_pretrained(tmp_path / "wm")
        write_dataset(tmp_path / "data", num_clips=5, frames_per_clip=9, height=32, width=32, seed=0, progress=False)
    train = TrainConfig(stage="ode", data=str(tmp_path / "data"), out=str(tmp_path / "run"), clip_frames=9,
                        eval_frames=9, progress=False)
    (tmp_path / "run").mkdir(exist_ok=True)
    cfg = OdeStageConfig(model=BACKBONE, autoencoder=str(tmp_path / "wm"), init_from=str(tmp_path / "wm"),
                         progressive=(3,), teacher_steps=2, pair_batch=2, **options)
    return OdeStage(train, cfg)


def test_ode_pairs_are_written_in_shards_and_a_killed_run_writes_only_the_missing_ones(wm, tmp_path, monkeypatch):
    stage = _stage(wm, tmp_path, monkeypatch)
    pairs = stage._pairs()
    assert pairs["x0"].shape == (5, 3, 4, 4, 4) and pairs["x0"].dtype == torch.float16
    assert pairs["xt"].shape == (5, 1, 3, 4, 4, 4) and pairs["c2w"].shape == (5, 9, 4, 4)
    shards = sorted((tmp_path / "run").glob("ode-*/pairs-*.safetensors"))
    assert [s.name for s in shards] == ["pairs-00000.safetensors", "pairs-00001.safetensors", "pairs-00002.safetensors"]
    shards[1].unlink()  # as if the run had been killed before writing it
    kept = {s: s.stat().st_mtime_ns for s in (shards[0], shards[2])}
    again = _stage(wm, tmp_path, monkeypatch)._pairs()
    assert all(s.stat().st_mtime_ns == t for s, t in kept.items()) and shards[1].is_file()
    for k in pairs:
        torch.testing.assert_close(again[k], pairs[k], rtol=0, atol=0, msg=k)
    other = _stage(wm, tmp_path, monkeypatch, pair_seed=1)._pairs()  # another seed: other noise, another folder
    assert len(list((tmp_path / "run").glob("ode-*"))) == 2 and not torch.equal(other["xt"], pairs["xt"])
    torch.testing.assert_close(other["x0"][:, 0], pairs["x0"][:, 0], rtol=0, atol=0)  # the same given frames
    items = stage.train_dataset()
    assert len(items) == 5 and items[0]["x0"].dtype == torch.float32 and items[0]["xt"].shape == (1, 3, 4, 4, 4)


def test_ode_stage_refuses_a_teacher_with_other_latents(wm, tmp_path, monkeypatch):
    from world_model.model import WorldModelBackbone
    import dataclasses

    from world_model.checkpoint import save_pretrained

    other = dataclasses.replace(BACKBONE, latent_channels=8)
    save_pretrained(tmp_path / "other", WorldModelBackbone(other), other)
    stage = _stage(wm, tmp_path, monkeypatch, ode_teacher=str(tmp_path / "other"))
    with pytest.raises(ValueError, match="latent_channels: 8 in ode_teacher, 4 in this run"):
        stage.teacher()


def test_ode_stage_trains_a_student_from_the_teacher_and_exports_it(wm, tmp_path, monkeypatch):
    from sanawm_gym.dataset import write_dataset

    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    data = write_dataset(tmp_path / "data", num_clips=4, frames_per_clip=9, height=32, width=32, seed=0, progress=False)
    held = write_dataset(tmp_path / "held", num_clips=2, frames_per_clip=9, height=32, width=32, seed=99, progress=False)
    wm.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "student"
    args = [sys.executable, "-m", "world_model.train", "--stage", "ode", "--data", str(data),
            "--heldout", str(held), "--out", str(out), "--steps", "2", "--batch-size", "2", "--clip-frames", "9",
            "--eval-frames", "9", "--eval-clips", "2", "--eval-interval", "2", "--num-workers", "0", "--no-progress",
            "--autoencoder", str(tmp_path / "teacher"), "--init-from", str(tmp_path / "teacher"),
            "--model.latent-channels", "4", "--model.latent-height", "4", "--model.latent-width", "4",
            "--model.depth", "2", "--model.width", "32", "--model.num-heads", "2", "--model.softmax-every", "2",
            "--model.softmax-window-chunks", "2", "--progressive", "3", "--student-steps", "2", "--teacher-steps", "4",
            "--horizons-s", "0.25"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"ode", "step_index"} <= set(logged[-1]) and np.isfinite(logged[-1]["ode"])
    assert len(list(out.glob("ode-*/pairs-*.safetensors"))) == 1  # 4 clips, 8 per shard
    student = WorldModel.from_pretrained(out / "final")
    assert student.sample_steps == 2
    K = intrinsics_from_fov(90, 32, 32).numpy()
    assert student.generate_video(first_frame(), path(5), K).shape == (5, 32, 32, 3)
    without = [a for a in args if a not in ("--init-from", str(tmp_path / "teacher"))]
    refused = subprocess.run(without + ["--out", str(tmp_path / "x")], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode != 0 and "--init-from" in refused.stderr
