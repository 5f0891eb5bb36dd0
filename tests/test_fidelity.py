"""The fidelity suite: its held-out clips, its scores and the command, on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sanawm_gym.fidelity_suite as suite
from world_model.geometry import intrinsics_from_fov, is_rigid
from world_model.scoring import PSNR_CAP, frame_metrics, sharpness

from test_world_model import tiny_world_model


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")  # tiny frames: compiling would cost more than it saves


def test_sharpness_ratio_sees_a_blur_that_psnr_forgives():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 2, 3, 32, 32, generator=g) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(ref.flatten(0, 1), 3, 1, 1).view_as(ref)
    same = frame_metrics(ref, ref)
    assert torch.allclose(same["sharpness"], torch.ones(1, 2)) and (same["psnr"] == PSNR_CAP).all()
    blur = frame_metrics(blurred, ref)
    assert (blur["sharpness"] < 0.3).all()
    assert sharpness(torch.zeros(2, 3, 16, 16)).eq(0).all()


def test_revisit_clip_returns_exactly_to_its_midway_pose():
    K = intrinsics_from_fov(90, 32, 32).numpy()
    clip = suite.revisit_clip(4500, 0, (32, 32), K)
    c2w = clip["c2w"].double().numpy()
    assert c2w.shape == (81, 4, 4) and bool(np.all(is_rigid(c2w, 1e-4)))
    first, away, back = suite.REVISIT_FRAMES
    np.testing.assert_allclose(c2w[back], c2w[first], atol=1e-5)
    assert np.linalg.norm(c2w[first, :3, 3] - c2w[0, :3, 3]) == pytest.approx(1.0, abs=1e-4)
    assert c2w[away, :3, 2] @ c2w[first, :3, 2] == pytest.approx(-1.0, abs=1e-4)  # facing the other way
    torch.testing.assert_close(clip["video"][back], clip["video"][first])  # the same view, rendered exactly
    still = suite.still_clip(4000, 0, 9, (32, 32), K)
    assert (still["video"] == still["video"][:1]).all() and (still["c2w"] == still["c2w"][:1]).all()


def test_suite_scores_every_set_and_writes_clip_by_clip(tmp_path, monkeypatch, capsys):
    small = (suite.HeldoutSet("motion", "motion", 2, 1.0, 3100, (0.5, 1.0)),
             suite.HeldoutSet("still", "still", 2, 1.0, 4000, (1.0,)),
             suite.HeldoutSet("revisit", "revisit", 2, 5.0, 4500))
    monkeypatch.setitem(suite.SUITES, "short", small)
    wm = tiny_world_model()
    report = suite.run_suite(wm, "short", tmp_path / "data", tmp_path / "out", log=lambda *_: None)
    sets = report["sets"]
    assert set(sets) == {"motion", "still", "revisit"}
    row = sets["motion"]["horizons"]["1s"]
    for key in ("psnr_model", "psnr_no_camera", "psnr_first_frame", "psnr_reconstruction", "ssim_model", "sharpness_model",
                "sharpness_reconstruction"):
        assert np.isfinite(row[key]) and len(row[f"clips_{key}"]) == 2
    assert sets["still"]["horizons"]["1s"]["psnr_first_frame"] == pytest.approx(PSNR_CAP)  # the reference is frame 0
    revisit = sets["revisit"]["revisit"]
    assert len(revisit["clips_return_vs_first_visit_model"]) == 2 and revisit["wrong_view"] < PSNR_CAP
    shards = sorted((tmp_path / "data").glob("motion-*/shard-*.safetensors"))
    assert len(shards) == 2  # one clip per shard: an interrupted run keeps every finished clip
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["sets"]["revisit"]["revisit"] == revisit
    for name in ("motion", "still", "revisit"):
        assert (tmp_path / "out" / name / "rollout.png").is_file()
        assert (tmp_path / "out" / name / "psnr-horizon.png").is_file()
    table = suite.format_report(report)
    assert "revisit   return" in table and "still" in table and "a wrong view scores" in table


def test_fidelity_command_runs_the_suite_without_data(tmp_path, monkeypatch, capsys, request):
    from sanawm_gym.fidelity import main

    request.addfinalizer(lambda threads=torch.get_num_threads(): torch.set_num_threads(threads))

    monkeypatch.setitem(suite.SUITES, "short", (suite.HeldoutSet("still", "still", 1, 1.0, 4000, (1.0,)),))
    tiny_world_model().save_pretrained(tmp_path / "wm")
    assert main(["--model", str(tmp_path / "wm"), "--data-root", str(tmp_path / "d"), "--out", str(tmp_path / "o"),
                 "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2  # the command sets torch's threads (default 1)
    out = capsys.readouterr().out
    assert "fidelity suite 'short'" in out and out.count("still") >= 2
    assert (tmp_path / "o" / "report.json").is_file()
    # the default context is the env's; a --data folder holding another set is refused, not a traceback
    from sanawm_gym.envs.world_model_nav import NavConfig

    assert json.loads((tmp_path / "o" / "report.json").read_text())["context_seconds"] == NavConfig.context_seconds
    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")
    args = ["--model", str(tmp_path / "wm"), "--data", str(tmp_path / "set"), "--clips", "1", "--seconds", "0.25"]
    assert main(args + ["--seed", "1000", "--out", str(tmp_path / "e")]) == 0
    with pytest.raises(SystemExit):
        main(args + ["--seed", "2000"])
    err = capsys.readouterr().err
    assert "argument --data:" in err and "seed: 1000 in the folder, 2000 requested" in err
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "wm"), "--threads", "0"])
    assert "argument --threads: must be an integer >= 1, got 0" in capsys.readouterr().err


def test_look_around_turns_in_place_and_ends_at_the_pose():
    from sanawm_gym.kinematics import look_around
    from world_model.geometry import pose_from_yaw_pitch

    pose = pose_from_yaw_pitch(np.array([1.0, 2.0, 1.2]), 0.3, 0.0)
    assert look_around(pose, 0).shape == (1, 4, 4)
    poses = look_around(pose, 1.0)
    assert poses.shape == (17, 4, 4) and np.array_equal(poses[-1], pose)
    np.testing.assert_allclose(poses[:, :3, 3], np.repeat(pose[None, :3, 3], 17, 0), atol=1e-9)  # in place
    yaw = np.arctan2(poses[:, 1, 2], poses[:, 0, 2])
    np.testing.assert_allclose(np.diff(np.unwrap(yaw)), -np.pi / 2 / 16, atol=1e-9)  # turning right at pi/2 rad/s
    full = look_around(pose, 4.0)
    np.testing.assert_allclose(full[0], pose, atol=1e-9)  # a full turn


def test_suite_with_a_look_around_context_scores_from_its_end(tmp_path, monkeypatch):
    small = (suite.HeldoutSet("revisit", "revisit", 1, 5.0, 4500),)
    monkeypatch.setitem(suite.SUITES, "short", small)
    report = suite.run_suite(tiny_world_model(), "short", tmp_path / "d", tmp_path / "o", context_seconds=1.0,
                             log=lambda *_: None)
    entry = report["sets"]["revisit"]
    assert report["context_seconds"] == 1.0 and entry["context_frames"] == 17
    assert len(entry["curves"]["curve_model"]) == 81  # scored from the context's last frame
    assert entry["curves"]["curve_first_frame"][0] == pytest.approx(PSNR_CAP)


def test_compare_reports_pairs_the_clips_and_leaves_out_sets_in_one_only(tmp_path, capsys):
    def row(psnr):
        return {"psnr_model": float(np.mean(psnr)), "clips_psnr_model": psnr, "ssim_model": 0.5, "sharpness_model": 0.2}

    def report(motion, returned):
        return {"sample_steps": 2, "sets": {
            "motion": {"horizons": {"2s": row(motion)}},
            "revisit": {"horizons": {}, "revisit": {"return_vs_reference_model": float(np.mean(returned)),
                                                    "clips_return_vs_reference_model": returned,
                                                    "return_vs_first_visit_model": 20.0, "wrong_view": 14.0}}}}

    a, b = report([20.0, 22.0, 24.0], [18.0, 19.0]), report([21.0, 21.0, 25.0], [19.0, 20.0])
    table = suite.compare_reports(a, b, ("old", "new"))
    motion = next(line for line in table.splitlines() if line.startswith("motion"))
    assert motion.split()[2:6] == ["22.00", "22.33", "+0.33", "2/3"]  # paired per clip: 2 of 3 ahead
    assert "return" in table and "2/2" in table
    fewer = suite.compare_reports(a, {"sample_steps": 2, "sets": {"motion": a["sets"]["motion"]}})  # a newer suite
    assert "+0.00" in fewer and "left out, in one report only: revisit (A)" in fewer
    with pytest.raises(ValueError, match="different sets"):
        suite.compare_reports(a, {"sample_steps": 2, "sets": {"still": {"horizons": {}}}})
    from sanawm_gym.fidelity import main

    for name, r in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    assert main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "+0.33" in capsys.readouterr().out
