"""Stable-Baselines3 on the batched world-model env, and the PPO example as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import sanawm_gym  # noqa: F401
from sanawm_gym.envs.sb3 import SB3VecEnv
from world_model.autoencoder import Autoencoder, AutoencoderConfig
from world_model.model import WorldModelBackbone, WorldModelConfig
from world_model.world_model import WorldModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model64(tmp_path_factory):
    """A tiny random world model with 64x64 frames (SB3's CNN needs at least 36x36)."""
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(latent_channels=4, frame_widths=(8, 8), latent_widths=(16, 16),
                                       encoder_blocks=(1, 0, 0, 1), decoder_blocks=(1, 0, 0, 1)))
    backbone = WorldModelBackbone(WorldModelConfig(latent_channels=4, depth=2, width=32, num_heads=2, softmax_every=2,
                                                   softmax_window_chunks=2))
    wm = WorldModel(ae, backbone, sample_steps=1)
    path = tmp_path_factory.mktemp("wm") / "tiny64"
    wm.save_pretrained(path)
    return wm, path


def test_adapter_resets_finished_envs_within_the_step(model64):
    wm, _ = model64
    venv = SB3VecEnv.make("SanaWM/NavPlanar-v0", 2, model=wm, max_episode_steps=2)
    venv.seed(3)
    obs = venv.reset()
    assert obs["rgb"].shape == (2, 64, 64, 3) and obs["goal"].shape == (2, 4)
    venv.step_async(np.zeros((2, 2), np.float32))
    obs, reward, done, infos = venv.step_wait()
    assert not done.any() and reward.dtype == np.float32
    venv.step_async(np.zeros((2, 2), np.float32))
    obs, reward, done, infos = venv.step_wait()
    assert done.all()
    for info in infos:
        assert info["TimeLimit.truncated"] and info["terminal_observation"]["rgb"].shape == (64, 64, 3)
    # The returned observation already belongs to the next episode: its path starts afresh.
    venv.step_async(np.zeros((2, 2), np.float32))
    _, _, done, infos = venv.step_wait()
    assert not done.any() and all(i["path_length"] == 0.0 for i in infos)


def test_adapter_needs_same_step_autoreset(model64):
    wm, _ = model64
    with pytest.raises(ValueError, match="SAME_STEP"):
        SB3VecEnv(gym.make_vec("SanaWM/Nav-v0", num_envs=1, vectorization_mode="vector_entry_point", model=wm))


def test_train_ppo_example_runs(model64, tmp_path):
    _, path = model64
    env = dict(os.environ, PYTHONUNBUFFERED="1", SANAWM_RENDER_BACKEND="eager")
    proc = subprocess.run(
        [sys.executable, "examples/train_ppo.py", "--model", str(path), "--num-envs", "2", "--total-timesteps", "64",
         "--n-steps", "32", "--batch-size", "32", "--eval-episodes", "1", "--max-episode-steps", "4",
         "--out", str(tmp_path / "ppo")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imagination: success=" in proc.stdout and "reference_world: success=" in proc.stdout
    assert (tmp_path / "ppo" / "ppo_policy.zip").exists() and (tmp_path / "ppo" / "results.json").exists()
