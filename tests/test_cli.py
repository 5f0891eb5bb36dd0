"""The `sanawm-gym` command line: argument errors and each command's --help in-process,
smoke runs as subprocesses with tiny budgets, and the PPO example's --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest

from sanawm_gym.cli import main

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


def test_eval_policy_prints_success_rate():
    stdout = run_cli("eval-policy", "--episodes", "2", "--env", "SanaWM/ReferenceNavPlanar-v0", "--quiet")
    assert "success=" in stdout and "SPL=" in stdout and "over 2 episodes (seeds 0..1)" in stdout


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
    rows = [line.split()[:1] + line.split()[2:] for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[:3] for r in rows] == [["1", "float32", "off"], ["1", "bfloat16", "off"], ["2", "float32", "off"],
                                     ["2", "bfloat16", "off"]]
    assert rows[0][-3:-1] == ["1.0x", "1.00x"] and rows[1][-3] == "1.0x" and float(rows[1][-2][:-1]) > 0
    assert all(float(r[-1]) > 0 for r in rows)  # ms per reset
    stdout = run_cli("bench", "env", "--model", str(tmp_path / "wm"), "--num-envs", "1", "--env-steps", "2",
                     "--precision", "float32", "--compile", "off", "on")
    rows = [line.split()[:1] + line.split()[2:] for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[:3] for r in rows] == [["1", "float32", "off"], ["1", "float32", "on"]] and float(rows[1][-2][:-1]) > 0
    stdout = run_cli("bench", "env", "--model", str(tmp_path / "wm"), "--num-envs", "1", "--env-steps", "2",
                     "--precision", "auto", "--threads", "auto", "2")
    assert "precision 'auto' is " in stdout and "* chosen by precision='auto'" in stdout
    rows = [line.split()[:1] + line.split()[2:] for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[1].rstrip("*"), r[3]) for r in rows] == [("1", "float32", "1"), ("1", "float32", "2")] or \
        [r[1] for r in rows] == ["bfloat16*", "bfloat16*"]  # auto: float32 without bf16 matmul in hardware
    # two models side by side (a 1-step and a 2-step sampler): x base compares them at the same N
    WorldModel(ae, backbone, sample_steps=2).save_pretrained(tmp_path / "wm2")
    stdout = run_cli("bench", "env", "--model", str(tmp_path / "wm"), str(tmp_path / "wm2"), "--num-envs", "1",
                     "--env-steps", "2", "--precision", "float32")
    assert "1 sampler step + 1 commit pass" in stdout and "2 sampler steps + 1 commit pass" in stdout
    rows = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[1] for r in rows] == [str(tmp_path / "wm"), str(tmp_path / "wm2")]
    assert rows[0][-2] == "1.00x" and rows[1][-3] == "1.0x" and float(rows[1][-2][:-1]) > 0
    # with a depth head, predicted collisions off and on side by side (a model without one: off either way)
    from world_model.autoencoder.depth import DepthHead, DepthHeadConfig

    WorldModel(ae, backbone, sample_steps=1, depth_head=DepthHead(DepthHeadConfig(latent_channels=4, width=8, blocks=1,
                                                                                up_widths=(8, 4)))
               ).save_pretrained(tmp_path / "wm3")
    stdout = run_cli("bench", "env", "--model", str(tmp_path / "wm3"), str(tmp_path / "wm"), "--num-envs", "1",
                     "--env-steps", "2", "--precision", "float32", "--collisions", "off", "on")
    rows = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[5] for r in rows] == ["off", "on", "off", "off"]
    # look-around contexts side by side (seeded resets: the reference world renders them)
    stdout = run_cli("bench", "env", "--model", str(tmp_path / "wm3"), "--num-envs", "1", "--env-steps", "2",
                     "--precision", "float32", "--context-seconds", "0", "1")
    rows = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[6] for r in rows] == ["0s", "1s"] and all(float(r[-1]) > 0 for r in rows)


# ------------------------------------------------------------------------ in-process checks
@pytest.mark.parametrize("command", ["demo", "eval-policy", "bench", "record", "dataset", "fidelity"])
def test_every_command_help_names_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: sanawm-gym {command} ")


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage: sanawm-gym ")
    for command in ("demo", "eval-policy", "fidelity", "bench", "dataset", "record"):
        assert f"\n    {command}" in out


def _argument_error(argv: list[str], capsys) -> str:
    """The one error line of ``main(argv)``, which must exit with status 2 (argparse's)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage: sanawm-gym")
    return lines[-1]


ENV_CHOICES = "(choose from 'SanaWM/Nav-v0', 'SanaWM/NavPlanar-v0', 'SanaWM/ReferenceNav-v0', 'SanaWM/ReferenceNavPlanar-v0')"


@pytest.mark.parametrize("argv, message", [
    (["eval-policy", "--episodes", "-1"], "eval-policy: error: argument --episodes: must be an integer >= 1, got -1"),
    (["eval-policy", "--episodes", "0"], "eval-policy: error: argument --episodes: must be an integer >= 1, got 0"),
    (["eval-policy", "--episodes", "many"], "argument --episodes: must be an integer >= 1, got 'many'"),
    (["eval-policy", "--seed", "-3"], "eval-policy: error: argument --seed: must be an integer >= 0, got -3"),
    (["eval-policy", "--env", "CartPole-v1"], f"argument --env: invalid choice: 'CartPole-v1' {ENV_CHOICES}"),
    (["demo", "--env", "Nope-v0"], f"demo: error: argument --env: invalid choice: 'Nope-v0' {ENV_CHOICES}"),
    (["demo", "--seed", "-1"], "demo: error: argument --seed: must be an integer >= 0, got -1"),
    (["demo", "--video-size", "63"], "demo: error: argument --video-size: must be an even integer >= 2, got 63"),
    (["demo", "--video-size", "0"], "demo: error: argument --video-size: must be an even integer >= 2, got 0"),
    (["demo", "--env", "SanaWM/ReferenceNav-v0", "--model", "runs/x"],
     "demo: error: argument --model: only a world-model env (SanaWM/Nav-v0, SanaWM/NavPlanar-v0) uses a world model"),
    (["record", "--env", "Nope-v0"], f"record: error: argument --env: invalid choice: 'Nope-v0' {ENV_CHOICES}"),
    (["record", "--steps", "0"], "record: error: argument --steps: must be an integer >= 1, got 0"),
    (["record", "--steps", "-5"], "record: error: argument --steps: must be an integer >= 1, got -5"),
    (["record", "--web-port", "70000"], "record: error: argument --web-port: must be an integer in [1, 65535], got 70000"),
    (["record", "--out", "run.txt"], "record: error: argument --out: must end in .rrd, got 'run.txt'"),
    (["record", "--video", "run.avi"], "record: error: argument --video: must end in .mp4 or .gif, got 'run.avi'"),
    (["record", "--policy", "smart"], "record: error: argument --policy: invalid choice: 'smart'"),
    (["bench", "--sizes", "64", "0"], "bench: error: argument --sizes: must be an integer >= 1, got 0"),
    (["bench", "env", "--num-envs", "-2"], "bench: error: argument --num-envs: must be an integer >= 1, got -2"),
    (["bench", "env", "--threads", "0"], "bench: error: argument --threads: must be an integer >= 1, got 0"),
    (["bench", "--repeats", "0"], "bench: error: argument --repeats: must be an integer >= 1, got 0"),
    (["bench", "--model", "runs/x"], "bench: error: argument --model: only `bench env` uses a world model"),
    (["fidelity", "--clips", "0"], "fidelity: error: argument --clips: must be an integer >= 1, got 0"),
    (["fidelity", "--seconds", "-1"], "fidelity: error: argument --seconds: must be in (0, 600] seconds, got -1"),
    (["fidelity", "--steps", "0"], "fidelity: error: argument --steps: must be an integer >= 1, got 0"),
    (["fidelity", "--seconds", "2", "--horizons", "5"], "fidelity: error: argument --horizons: each must be in (0,"),
    (["eval"], "sanawm-gym: error: the command `eval` is now `eval-policy`"),
    (["evaluate"], "sanawm-gym: error: argument COMMAND: invalid choice: 'evaluate'"),
])
def test_bad_arguments_give_one_line_and_status_2(argv, message, capsys):
    assert message in _argument_error(argv, capsys)


def test_model_and_out_dir_must_be_usable(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert "demo: error: argument --model: " + repr(str(missing)) + " is neither a folder" in \
        _argument_error(["demo", "--model", str(missing)], capsys)
    (tmp_path / "wm" / "autoencoder").mkdir(parents=True)  # a folder, but no checkpoint in it
    line = _argument_error(["demo", "--model", str(tmp_path / "wm"), "--out-dir", str(tmp_path)], capsys)
    assert line.startswith("sanawm-gym demo: error: argument --model: ") and "autoencoder" in line
    (tmp_path / "file").write_text("")
    assert "demo: error: argument --out-dir: " in _argument_error(
        ["demo", "--env", "SanaWM/ReferenceNav-v0", "--out-dir", str(tmp_path / "file")], capsys)
    assert f"record: error: argument --out: {str(tmp_path)!r} is a directory; give a .rrd file path" in \
        _argument_error(["record", "--out", str(tmp_path)], capsys)


def test_pass_through_commands_get_the_rest_of_the_line(tmp_path, capsys):
    """`sanawm-gym dataset ...` and `sanawm-gym fidelity ...` hand their arguments to the
    module's own parser, which names the full command in its errors too."""
    line = _argument_error(["dataset", "--out", str(tmp_path / "d"), "--clips", "1"], capsys)
    assert line.startswith("sanawm-gym dataset: error: the following arguments are required: --frames")
    line = _argument_error(["fidelity", "--no-such-option"], capsys)
    assert line.startswith("sanawm-gym fidelity: error: unrecognized arguments: --no-such-option")


def test_bad_argument_exit_status_from_the_shell():
    proc = subprocess.run([sys.executable, "-m", "sanawm_gym.cli", "eval-policy", "--episodes", "-1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        "sanawm-gym eval-policy: error: argument --episodes: must be an integer >= 1, got -1"


# ------------------------------------------------------------------------ examples/train_ppo.py
def test_train_ppo_help_describes_every_option():
    """The Args dataclass's field docstrings are the options' help (the example's --help)."""
    proc = subprocess.run([sys.executable, "examples/train_ppo.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = " ".join(proc.stdout.split())  # argparse wraps help lines
    for option, text in [("--model", "World-model checkpoint folder"), ("--action-mode", "'planar' ([forward, yaw_rate])"),
                         ("--num-envs", "Imagined episodes stepped together"), ("--learning-rate", "Adam learning rate"),
                         ("--seed", "evaluation uses seeds 10_000 + i"), ("--out", "Folder for the trained policy")]:
        assert option in out and text in out, option
    options = [word for word in proc.stdout.split() if word.startswith("--") and word != "--help"]
    assert len(set(options)) == 11 and "(default: 8)" in out
