"""The training entry point: a smoke run of the autoencoder stage as a subprocess, resume
after an interruption (a clean stop or a SIGKILL) equals an uninterrupted run bit for bit,
config checks on re-runs, a two-process gloo DDP run under ``torchrun``, and the
schedules."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from world_model.autoencoder import load_autoencoder
from world_model.checkpoint import read_pretrained_config
from sanawm_gym.dataset import write_dataset
from world_model.train import main
from world_model.train.config import TrainConfig
from world_model.train.schedule import ema_decay_at, lr_at, step_seed

REPO = Path(__file__).resolve().parents[1]
TINY_ARGS = [
    "--stage", "autoencoder", "--steps", "6", "--batch-size", "2", "--clip-frames", "5", "--eval-frames", "9",
    "--eval-clips", "2", "--ckpt-interval", "2", "--eval-interval", "3", "--log-interval", "2", "--warmup-steps", "2",
    "--num-workers", "0", "--threads", "1", "--no-progress", "--stats-clips", "4", "--eval-batch", "2",
    "--picture-clips", "1", "--model.latent-channels", "4", "--model.frame-widths", "4", "8",
    "--model.latent-widths", "8", "8", "--model.decoder-blocks", "1", "1", "1", "1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SANAWM_RENDER_BACKEND", "eager")  # tiny frames: compiling would cost more than it saves
        root = tmp_path_factory.mktemp("data")
        return {"train": write_dataset(root / "train", 16, 9, height=32, width=32, seed=0, progress=False),
                "heldout": write_dataset(root / "heldout", 2, 9, height=32, width=32, seed=1000, progress=False)}


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


def _train(data: dict[str, Path], out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "world_model.train", "--data", str(data["train"]), "--heldout", str(data["heldout"]),
           "--out", str(out), *TINY_ARGS, *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "full"
    _train(data, out)
    return out


# ------------------------------------------------------------------------------ smoke
def test_smoke_run_exports_and_logs(full_run):
    final = full_run / "final"
    model = load_autoencoder(final)
    assert model.config.latent_channels == 4 and model.config.latent_std is not None
    meta = read_pretrained_config(final)
    assert meta["extra"]["stage"] == "autoencoder" and meta["extra"]["step"] == 6
    assert set(meta["extra"]["heldout"]) >= {"psnr", "ssim", "step", "elapsed_s"}

    log = [json.loads(line) for line in (full_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6]
    assert set(log[0]) >= {"loss", "l1", "ssim", "gradient", "latent_l2", "psnr", "grad_norm", "lr"}
    assert all(math.isfinite(r["loss"]) for r in log)
    assert (full_run / "eval" / "metrics.png").stat().st_size > 0
    assert (full_run / "eval" / "recon-00000006.png").exists()
    assert sorted(p.name for p in (full_run / "checkpoints").glob("*.json")) == ["step-00000004.json",
                                                                               "step-00000006.json"]
    assert not list(full_run.rglob(".*.tmp"))


def test_rerunning_a_finished_run_changes_nothing(data, full_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(full_run, out)
    before = _tensors(out / "checkpoints" / "step-00000006.safetensors")
    proc = _train(data, out)
    assert "done at step 6" in proc.stdout
    after = _tensors(out / "checkpoints" / "step-00000006.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------ resume
def test_resume_after_stop_is_bit_exact(data, full_run, tmp_path):
    out = tmp_path / "interrupted"
    proc = _train(data, out, "--stop-after", "3")  # stops after step 3: the step-2 checkpoint survives
    assert "stopped at step 3" in proc.stdout
    assert not (out / "final").exists()
    assert sorted(p.name for p in (out / "checkpoints").glob("*.json")) == ["step-00000002.json"]

    proc = _train(data, out)
    assert "resuming from" in proc.stderr and "step 2 of 6" in proc.stderr
    for name in ("step-00000006.safetensors", "step-00000004.safetensors"):
        a, b = _tensors(full_run / "checkpoints" / name), _tensors(out / "checkpoints" / name)
        assert set(a) == set(b)
        different = [k for k in a if not k.startswith("rng.") and not torch.equal(a[k], b[k])]
        assert not different, different[:5]
    a, b = _tensors(full_run / "final" / "model.safetensors"), _tensors(out / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log == [2, 4, 6]  # lines of steps after the checkpoint were dropped, not duplicated


def test_resume_after_sigkill_is_bit_exact(data, full_run, tmp_path):
    """A run killed (SIGKILL: no handler, no clean-up) as soon as its first checkpoint is on
    disk resumes from its newest complete checkpoint and ends with the uninterrupted run's
    weights."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "world_model.train", "--data", str(data["train"]), "--heldout", str(data["heldout"]),
           "--out", str(out), *TINY_ARGS]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = out / "checkpoints" / "step-00000002.json"
        deadline = time.monotonic() + 120
        while not first.exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final").exists()  # killed mid-run, not after it

    resumed = _train(data, out)
    assert "resuming from" in resumed.stderr
    a, b = _tensors(full_run / "final" / "model.safetensors"), _tensors(out / "final" / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_damaged_newest_checkpoint_falls_back(data, full_run, tmp_path):
    out = tmp_path / "damaged"
    shutil.copytree(full_run, out)
    shutil.rmtree(out / "final")
    (out / "checkpoints" / "step-00000006.safetensors").write_bytes(b"broken")
    proc = _train(data, out)
    assert "skipping damaged checkpoint" in proc.stderr and "step 4 of 6" in proc.stderr
    a, b = _tensors(full_run / "final" / "model.safetensors"), _tensors(out / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _main_exit(data: dict[str, Path], out: Path, capsys, *extra: str) -> str:
    """Run the command line in this process, expecting exit status 2; returns stderr."""
    args = ["--data", str(data["train"]), "--heldout", str(data["heldout"]), "--out", str(out), *TINY_ARGS, *extra]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_rerun_with_other_settings_is_refused(data, full_run, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(full_run, out)
    err = _main_exit(data, out, capsys, "--lr", "0.01", "--model.latent-channels", "8")
    assert "holds a run with other settings" in err and "lr: 0.001 in the run folder, 0.01 now" in err
    assert "model.latent_channels: 4 in the run folder, 8 now" in err


def test_a_run_from_before_a_config_field_existed_resumes_as_its_default(data, full_run, tmp_path, capsys):
    """A run folder written before a field was added (its run.json lacks it) resumes: the
    field is read as its default; asking for another value is still refused."""
    out = tmp_path / "older"
    shutil.copytree(full_run, out)
    run = json.loads((out / "run.json").read_text())
    del run["train"]["grad_clip"], run["stage_config"]["model"]["shortcuts"]
    (out / "run.json").write_text(json.dumps(run))
    proc = _train(data, out)
    assert "done at step 6" in proc.stdout
    (out / "run.json").write_text(json.dumps(run))
    err = _main_exit(data, out, capsys, "--grad-clip", "0.5")
    assert "grad_clip: 1.0 in the run folder, 0.5 now" in err


def test_bad_arguments_exit_with_message(data, tmp_path, capsys):
    err = _main_exit(data, tmp_path / "bad", capsys, "--clip-frames", "6")
    assert "error: clip_frames must be 1 + 4n (1, 5, 9, ...) for the autoencoder, got 6" in err
    err = _main_exit(data, tmp_path / "bad", capsys, "--ema-decay", "1.5")
    assert r"error: ema_decay must be in [0, 1), got 1.5" in err


# ------------------------------------------------------------------------------ decoder only
def test_decoder_only_run_keeps_the_encoder_and_its_latents(data, full_run, tmp_path):
    """A wider decoder trained on the frozen encoder of a finished run: the encoder's tensors
    and latent statistics come out unchanged (a teacher trained on its latents stays valid),
    the decoder changed, and the decoder's extra width is in the exported config."""
    out = tmp_path / "decoder"
    proc = _train(data, out, "--steps", "4", "--init-from", str(full_run / "final"), "--decoder-only",
                  "--model.decoder-width-multiplier", "2")
    assert "encoder frozen, its latent statistics kept" in proc.stderr
    source, trained = load_autoencoder(full_run / "final"), load_autoencoder(out / "final")
    assert trained.config.decoder_width_multiplier == 2 and trained.decoder.level1[0].conv1.in_channels == 8
    assert (trained.config.latent_mean, trained.config.latent_std) == (source.config.latent_mean,
                                                                      source.config.latent_std)
    a, b = source.encoder.state_dict(), trained.encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = source.decoder.state_dict(), trained.decoder.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].shape == b[k].shape)
    assert read_pretrained_config(out / "final")["extra"]["decoder_only_from"] == str(full_run / "final")


def test_decoder_only_refuses_another_encoder(data, full_run, tmp_path, capsys):
    err = _main_exit(data, tmp_path / "bad", capsys, "--init-from", str(full_run / "final"), "--decoder-only",
                     "--model.frame-widths", "4", "16")
    assert "decoder_only needs the encoder architecture of init_from" in err
    assert "frame_widths: (4, 8) vs (4, 16)" in err
    err = _main_exit(data, tmp_path / "bad", capsys, "--decoder-only")
    assert "decoder_only needs init_from" in err


def test_decoder_only_objective_leaves_the_encoder_without_gradients():
    from world_model.autoencoder import Autoencoder, AutoencoderConfig
    from world_model.autoencoder.losses import LossWeights
    from world_model.train.stages.autoencoder import AutoencoderObjective, initialise_from

    cfg = AutoencoderConfig(latent_channels=4, frame_widths=(4, 8), latent_widths=(8, 8))
    source = Autoencoder(cfg)
    source.set_latent_stats([0.5] * 4, [2.0] * 4)
    ae = Autoencoder(AutoencoderConfig(**{**cfg.to_json(), "decoder_width_multiplier": 2}))
    fresh = initialise_from(ae, source, decoder_only=True)
    assert fresh and all(k.startswith("decoder.") for k in fresh)  # the wider per-frame levels start anew
    assert ae.config.latent_mean == (0.5,) * 4 and not any(p.requires_grad for p in ae.encoder.parameters())
    loss, _ = AutoencoderObjective(ae, LossWeights(), decoder_only=True)({"video": torch.rand(1, 5, 3, 16, 16)})
    loss.backward()
    assert all(p.grad is None for p in ae.encoder.parameters())
    assert all(p.grad is not None for p in ae.decoder.parameters())


# ------------------------------------------------------------------------------ DDP
def test_torchrun_two_processes(data, tmp_path):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "world_model.train",
           "--data", str(data["train"]), "--heldout", str(data["heldout"]), "--out", str(out), *TINY_ARGS,
           "--steps", "4", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) x batch 2" in proc.stderr
    assert proc.stdout.count("done at step 4") == 1  # rank 0 reports
    state = json.loads((out / "checkpoints" / "step-00000004.json").read_text())
    assert state["data"]["world_size"] == 2 and state["data"]["step"] == 4
    load_autoencoder(out / "final")


# ------------------------------------------------------------------------------ schedules
def test_lr_schedule():
    assert lr_at(0, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_at(99, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(500, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    mid = lr_at(54, 1.0, 10, 100, 0.1)
    assert mid == pytest.approx(0.55, abs=0.01)
    values = [lr_at(s, 1.0, 10, 100, 0.0) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_ema_decay_and_step_seed():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10**6, 0.999) == 0.999
    assert step_seed(0, 0, 5) == step_seed(0, 0, 5) != step_seed(0, 1, 5) != step_seed(0, 0, 6)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "data .* is required"),
    ({"data": "x", "steps": 0}, "steps must be >= 1, got 0"),
    ({"data": "x", "ema_decay": 1.0}, r"ema_decay must be in \[0, 1\), got 1.0"),
    ({"data": "x", "device": "tpu"}, "device must be one of auto, cpu, cuda; got 'tpu'"),
])
def test_train_config_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_ema_update_moves_towards_the_model_without_recording_autograd():
    """The EMA update runs in the training loop's grad mode: it must not make the EMA
    weights part of an autograd graph (a graph that would grow every step)."""
    import copy

    from world_model.train.loop import ema_update

    model = torch.nn.Linear(3, 2)
    ema = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.parameters()]
    ema_update(ema, model, 0.75)
    for b, e, m in zip(before, ema.parameters(), model.parameters()):
        torch.testing.assert_close(e, 0.75 * b + 0.25 * m.detach())
        assert e.grad_fn is None and not e.requires_grad


def test_training_benchmark_prints_rates_against_the_measured_peak(capsys):
    """``python -m world_model.train.bench`` on a tiny backbone: the header, the peak and
    one row per mode, with samples/s, GFLOP/s and the share of the peak."""
    from world_model.train.bench import main

    assert main(["--tiny", "--batch-size", "2", "--latent-frames", "3", "--steps", "1", "--warmup", "0",
                 "--precision", "float32", "auto", "--peak-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP per step" in out and "matmul peak here: float32" in out and "precision 'auto' is" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:2] in (["float32", "off"], ["bfloat16", "off"])]
    assert len(rows) == len(set(r[0] for r in rows)) >= 1  # auto resolves to one of the listed precisions
    assert all(r[2] == "fused" and float(r[3]) > 0 and float(r[4]) > 0 and r[6].endswith("%") for r in rows)
    with pytest.raises(SystemExit):
        main(["--steps", "0"])


def test_training_benchmark_fused_and_reference_ops_share_the_loss(capsys):
    """``--ops fused reference``: both rows, the same first loss to float tolerance."""
    from world_model.train.bench import main

    assert main(["--tiny", "--batch-size", "2", "--latent-frames", "3", "--steps", "1", "--warmup", "0",
                 "--precision", "float32", "--ops", "fused", "reference", "--peak-size", "128"]) == 0
    rows = {r[2]: r for r in (line.split() for line in capsys.readouterr().out.splitlines()) if r[:1] == ["float32"]}
    assert set(rows) == {"fused", "reference"}
    assert float(rows["fused"][-1]) == pytest.approx(float(rows["reference"][-1]), abs=1e-5)


def test_training_benchmark_compiled_backbone_keeps_the_loss(capsys):
    """The compiled backbone's training step gives the eager step's loss to float tolerance."""
    from world_model.train.bench import main

    assert main(["--tiny", "--batch-size", "2", "--latent-frames", "3", "--steps", "1", "--warmup", "0",
                 "--precision", "float32", "--compile", "off", "backbone", "--peak-size", "128"]) == 0
    rows = {r[1]: r for r in (line.split() for line in capsys.readouterr().out.splitlines())
            if r[:1] == ["float32"]}
    assert set(rows) == {"off", "backbone"}
    assert float(rows["backbone"][-1]) == pytest.approx(float(rows["off"][-1]), abs=1e-5)
