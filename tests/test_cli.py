"""Smoke runs of the `sanawm-gym` command line as subprocesses, with tiny budgets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300) -> str:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "sanawm_gym.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_demo_writes_a_video_and_a_recording(tmp_path):
    stdout = run_cli("demo", "--env", "SanaWM/ReferenceNav-v0", "--out-dir", str(tmp_path), "--video-size", "64", "--quiet")
    assert "success=True" in stdout and "env_steps_per_s=" in stdout and str(tmp_path / "demo.mp4") in stdout
    frames = imageio.mimread(tmp_path / "demo.mp4", memtest=False)
    assert len(frames) > 8 and frames[0].shape == (64, 192, 3)
    assert (tmp_path / "demo.rrd").stat().st_size > 1000


def test_eval_prints_success_rate():
    stdout = run_cli("eval", "--episodes", "2", "--env", "SanaWM/ReferenceNavPlanar-v0", "--quiet")
    assert "success=" in stdout and "SPL=" in stdout


def test_bench_prints_side_by_side_figures():
    stdout = run_cli("bench", "--sizes", "16", "--batch", "2", "--repeats", "1", "--env-steps", "3")
    assert "16x16" in stdout and "steps/s" in stdout and "x" in stdout.splitlines()[2]


def test_bench_env_prints_frames_per_second_by_batch_size(tmp_path):
    import torch

    from world_model.autoencoder import Autoencoder, AutoencoderConfig
    from world_model.model import WorldModelBackbone, WorldModelConfig
    from world_model.world_model import WorldModel

    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(latent_channels=4, frame_widths=(8, 8), latent_widths=(16, 16),
                                       encoder_blocks=(1, 0, 0, 1), decoder_blocks=(1, 0, 0, 1)))
    backbone = WorldModelBackbone(WorldModelConfig(latent_channels=4, depth=2, width=32, num_heads=2, softmax_every=2))
    WorldModel(ae, backbone, sample_steps=1).save_pretrained(tmp_path / "wm")
    stdout = run_cli("bench", "env", "--model", str(tmp_path / "wm"), "--num-envs", "1", "2", "--env-steps", "2")
    rows = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[:3] for r in rows] == [["1", "float32", "off"], ["1", "bfloat16", "off"], ["2", "float32", "off"],
                                     ["2", "bfloat16", "off"]]
    assert rows[0][-2:] == ["1.0x", "1.00x"] and rows[1][-2] == "1.0x" and float(rows[1][-1][:-1]) > 0
    stdout = run_cli("bench", "env", "--model", str(tmp_path / "wm"), "--num-envs", "1", "--env-steps", "2",
                     "--precision", "float32", "--compile", "off", "on")
    rows = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[:3] for r in rows] == [["1", "float32", "off"], ["1", "float32", "on"]] and float(rows[1][-1][:-1]) > 0
