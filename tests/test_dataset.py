"""Posed-video data: the writer (layout, determinism, resume, config checks) and the datasets
(our shards and external clips) with their error messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch.utils.data import DataLoader

import sanawm_gym.dataset as writer
from world_model.geometry import intrinsics_from_fov, is_rigid, pose_from_yaw_pitch
from sanawm_gym.kinematics import MotionConfig, action_to_twist, move_chunk
from sanawm_gym.reference_world import generate_scene
from sanawm_gym.reference_world.collision import obstacle_sweep
from sanawm_gym.dataset import clip_seeds, main, write_dataset
from sanawm_gym.reference_world.trajectories import BehaviourMix, TrajectoryConfig
from world_model.data import MANIFEST, ExternalPosedClips, PosedVideoDataset, open_dataset

SIZE = dict(frames_per_clip=10, height=16, width=16, clips_per_shard=2, progress=False)
NUM_CLIPS = 5


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv("SANAWM_RENDER_BACKEND", "eager")  # tiny frames: compiling would cost more than it saves


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SANAWM_RENDER_BACKEND", "eager")
        return write_dataset(tmp_path_factory.mktemp("ds") / "a", NUM_CLIPS, seed=3, **SIZE)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _shards(folder: Path) -> dict[str, np.ndarray]:
    """All shards concatenated along the clip axis."""
    parts = [load_file(p) for p in sorted(folder.glob("shard-*.safetensors"))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ------------------------------------------------------------------------------- writer
def test_manifest_and_shards(dataset_dir):
    manifest = json.loads((dataset_dir / MANIFEST).read_text())
    assert manifest["complete"] and manifest["num_clips"] == NUM_CLIPS and manifest["clips_written"] == NUM_CLIPS
    assert [e["clips"] for e in manifest["shards"]] == [[0, 2], [2, 4], [4, 5]]
    for entry in manifest["shards"]:
        assert (dataset_dir / entry["file"]).stat().st_size == entry["bytes"] and len(entry["sha256"]) == 64
    assert manifest["config"]["seed"] == 3 and manifest["config"]["trajectory"]["margin"] > 0
    assert not list(dataset_dir.glob(".*"))  # no temporary files left

    data = _shards(dataset_dir)
    F, S = 10, manifest["steps_per_clip"]
    assert S == 3  # ceil((10 - 1) / 4): the last step is cut short
    assert data["frames"].shape == (NUM_CLIPS, F, 16, 16, 3) and data["frames"].dtype == np.uint8
    assert data["c2w"].shape == (NUM_CLIPS, F, 4, 4) and data["c2w"].dtype == np.float32
    assert data["intrinsics"].shape == (NUM_CLIPS, F, 3, 3) and data["intrinsics"].dtype == np.float32
    assert data["actions"].shape == (NUM_CLIPS, S, 6) and np.abs(data["actions"]).max() <= 1
    assert data["clip_index"].tolist() == list(range(NUM_CLIPS)) and data["scene_seed"].dtype == np.int64
    assert data["frames"].std() > 10  # real pictures, not a constant
    np.testing.assert_allclose(data["intrinsics"][0, 0], intrinsics_from_fov(90.0, 16, 16).numpy(), rtol=1e-6)
    assert is_rigid(torch.from_numpy(data["c2w"]), atol=1e-5).all()


def test_clip_is_its_scene_and_actions(dataset_dir):
    """Clip i: scene from its seed, poses = move_chunk of its actions from the first pose."""
    data = _shards(dataset_dir)
    motion = MotionConfig()
    for i in range(NUM_CLIPS):
        assert data["scene_seed"][i] == clip_seeds(3, i)[0]
        scene = generate_scene(int(data["scene_seed"][i]))
        pose = data["c2w"][i, 0].astype(np.float64)
        poses = [pose[None]]
        for action in data["actions"][i]:
            chunk = move_chunk(poses[-1][-1], action_to_twist(action, motion), motion, obstacle_sweep(scene))
            assert not chunk.collided
            poses.append(chunk.poses)
        np.testing.assert_allclose(np.concatenate(poses)[:10], data["c2w"][i], atol=1e-5)


def test_same_seed_is_byte_identical_and_other_seed_differs(dataset_dir, tmp_path):
    again = write_dataset(tmp_path / "b", NUM_CLIPS, seed=3, **SIZE)
    assert _files(again) == _files(dataset_dir)
    other = write_dataset(tmp_path / "c", 2, seed=4, **SIZE)
    assert _shards(other)["frames"].tobytes() != _shards(dataset_dir)["frames"][:2].tobytes()


def test_resume_after_damage(dataset_dir, tmp_path):
    """The last shard lost before the manifest listed it, another truncated, a stale temp
    file: re-running repairs exactly those and ends byte-identical."""
    folder = tmp_path / "resumed"
    shutil.copytree(dataset_dir, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["shards"] = manifest["shards"][:-1]
    manifest["complete"] = False
    (folder / MANIFEST).write_text(json.dumps(manifest))
    (folder / "shard-00002.safetensors").unlink()
    shard1 = folder / "shard-00001.safetensors"
    shard1.write_bytes(shard1.read_bytes()[:100])
    (folder / ".shard-00002.safetensors.123.tmp").write_bytes(b"partial")
    with pytest.raises(ValueError, match="unfinished dataset"):
        PosedVideoDataset(folder, 4)
    write_dataset(folder, NUM_CLIPS, seed=3, **SIZE)
    assert _files(folder) == _files(dataset_dir)


def test_resume_after_interruption(dataset_dir, tmp_path, monkeypatch):
    """A crash in the middle of the third shard, then the same call again."""
    folder = tmp_path / "interrupted"
    real = writer._render_clip
    calls = []

    def crash_on_fifth(cfg, index, K):
        calls.append(index)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(cfg, index, K)

    monkeypatch.setattr(writer, "_render_clip", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(folder, NUM_CLIPS, seed=3, **SIZE)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert not manifest["complete"] and manifest["clips_written"] == 4
    calls.clear()
    monkeypatch.setattr(writer, "_render_clip", lambda cfg, index, K: calls.append(index) or real(cfg, index, K))
    write_dataset(folder, NUM_CLIPS, seed=3, **SIZE)
    assert calls == [4]  # only the missing clip is rendered: nothing lost, nothing twice
    assert _files(folder) == _files(dataset_dir)


def test_extend_keeps_the_first_clips(dataset_dir, tmp_path):
    folder = tmp_path / "grown"
    write_dataset(folder, 3, seed=3, **SIZE)
    write_dataset(folder, NUM_CLIPS, seed=3, **SIZE)
    assert _files(folder) == _files(dataset_dir)
    with pytest.raises(ValueError, match="refusing to shrink"):
        write_dataset(folder, 2, seed=3, **SIZE)


def test_a_set_written_before_a_config_field_existed_resumes(dataset_dir, tmp_path):
    """A manifest without a field added since (here the mix's ``hold``) reads it as its
    default: the same arguments resume the set; another value is refused."""
    folder = tmp_path / "older"
    shutil.copytree(dataset_dir, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["config"]["trajectory"]["mix"]["hold"]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    write_dataset(folder, NUM_CLIPS, seed=3, **SIZE)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="trajectory.mix.hold: 0.0 in the folder, 0.5 requested"):
        write_dataset(folder, NUM_CLIPS, seed=3, trajectory_config=TrajectoryConfig(mix=BehaviourMix(hold=0.5)), **SIZE)


def test_config_mismatch_names_the_fields(dataset_dir, tmp_path):
    folder = tmp_path / "mismatch"
    shutil.copytree(dataset_dir, folder)
    expected = r"(?s)differing fields.*height: 16 in the folder, 24 requested.*seed: 3 in the folder, 5"
    with pytest.raises(ValueError, match=expected):
        write_dataset(folder, NUM_CLIPS, seed=5, **{**SIZE, "height": 24})
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and has no manifest.json"):
        write_dataset(tmp_path / "junk", 1, **SIZE)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_clips"):
        write_dataset("/nonexistent/never", 0, 8)
    with pytest.raises(ValueError, match="frames_per_clip"):
        write_dataset("/nonexistent/never", 1, 0)
    with pytest.raises(ValueError, match="fov_deg"):
        write_dataset("/nonexistent/never", 1, 8, fov_deg=200)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--clips", "2", "--frames", "5", "--height", "8", "--width", "8", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("2 clips x 5 frames at 8x8") and "clips/s" in line
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(out), "--clips", "2", "--frames", "6", "--height", "8", "--width", "8", "--no-progress"])
    assert exc.value.code == 2 and "frames_per_clip: 5 in the folder, 6 requested" in capsys.readouterr().err


def test_command_line_behaviour_mix(tmp_path, capsys):
    out = tmp_path / "mix"
    args = ["--out", str(out), "--clips", "1", "--frames", "9", "--height", "8", "--width", "8", "--no-progress"]
    assert main(args + ["--mix", "hold=1", "walk=0", "turn=0", "strafe=0", "look_around=0", "change_height=0",
                        "out_and_back=0", "--out-steps", "2", "5"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    mix = manifest["config"]["trajectory"]["mix"]
    assert mix["hold"] == 1 and mix["walk"] == 0 and manifest["config"]["trajectory"]["out_steps"] == [2, 5]
    clip = load_file(str(out / "shard-00000.safetensors"))
    assert not clip["actions"].any()  # at rest from the start: every action is zero, the camera still
    np.testing.assert_array_equal(clip["c2w"][0], np.broadcast_to(clip["c2w"][0, :1], clip["c2w"][0].shape))
    for bad, message in ((["--mix", "jump=1"], "NAME one of walk"), (["--mix", "hold"], "NAME=WEIGHT"),
                         (["--mix", "hold=x"], "must be a number"), (["--mix", "hold=-1"], "behaviour weights")):
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(tmp_path / "bad"), "--clips", "1", "--frames", "5", "--no-progress", *bad])
        assert exc.value.code == 2 and message in capsys.readouterr().err


# ------------------------------------------------------------------------------ dataset
def test_crops(dataset_dir):
    ds = PosedVideoDataset(dataset_dir, clip_frames=4, seed=1, samples_per_clip=2)
    assert len(ds) == 2 * NUM_CLIPS
    data = _shards(dataset_dir)
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (4, 3, 16, 16) and item["video"].dtype == torch.float32
        assert item["c2w"].shape == (4, 4, 4) and item["intrinsics"].shape == (4, 3, 3)
        assert -1 <= item["video"].min() and item["video"].max() <= 1
        c, s = item["clip_index"], item["start"]
        assert c == i % NUM_CLIPS and 0 <= s <= 10 - 4
        expected = torch.from_numpy(data["frames"][c, s : s + 4]).permute(0, 3, 1, 2).float() / 127.5 - 1
        torch.testing.assert_close(item["video"], expected)
        torch.testing.assert_close(item["c2w"], torch.from_numpy(data["c2w"][c, s : s + 4]))
    starts = [ds.crop_start(i) for i in range(len(ds))]
    assert starts == [PosedVideoDataset(dataset_dir, 4, seed=1, samples_per_clip=2).crop_start(i) for i in range(len(ds))]
    ds.set_epoch(1)
    assert [ds.crop_start(i) for i in range(len(ds))] != starts
    assert all(PosedVideoDataset(dataset_dir, 4, random_crop=False)[i]["start"] == 0 for i in range(NUM_CLIPS))
    assert ds[0]["video"].shape == open_dataset(dataset_dir, 4)[0]["video"].shape
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataloader_with_two_workers(dataset_dir):
    ds = PosedVideoDataset(dataset_dir, clip_frames=3, seed=2)
    ds[0]  # open a shard in the parent first: workers must reopen their own
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["clip_index"]) for b in batches) == NUM_CLIPS
    assert batches[0]["video"].shape == (2, 3, 3, 16, 16)
    torch.testing.assert_close(batches[0]["video"][1], ds[1]["video"])
    assert torch.equal(torch.cat([b["start"] for b in batches]), torch.tensor([ds.crop_start(i) for i in range(NUM_CLIPS)]))


def test_dataset_errors(dataset_dir, tmp_path):
    with pytest.raises(ValueError, match="manifest.json: missing"):
        PosedVideoDataset(tmp_path, 4)
    with pytest.raises(ValueError, match="fewer than clip_frames=11"):
        PosedVideoDataset(dataset_dir, 11)
    with pytest.raises(ValueError, match="clip_frames must be >= 1"):
        PosedVideoDataset(dataset_dir, 0)
    folder = tmp_path / "truncated"
    shutil.copytree(dataset_dir, folder)
    shard = folder / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"shard-00001.safetensors: shard is \d+ bytes, the manifest says"):
        PosedVideoDataset(folder, 4)
    shutil.copy(dataset_dir / "shard-00001.safetensors", shard)
    blob = bytearray(shard.read_bytes())
    blob[-1] ^= 0xFF
    shard.write_bytes(bytes(blob))
    PosedVideoDataset(folder, 4)  # same size: only the checksum sees it
    with pytest.raises(ValueError, match="sha256 differs"):
        PosedVideoDataset(folder, 4, verify=True)
    with pytest.raises(ValueError, match="no such folder"):
        open_dataset(tmp_path / "missing", 4)


# ------------------------------------------------------------------------ external clips
def _cameras(n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    c2w = np.stack([pose_from_yaw_pitch(np.array([0.1 * i, 0.0, 1.5]), 0.05 * i, 0.0) for i in range(n)])
    K = np.broadcast_to(intrinsics_from_fov(80.0, size, size).numpy(), (n, 3, 3)).copy()
    return c2w, K


def _frames(n: int, size: int = 32) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return np.stack([np.stack([(x * 8 + 10 * i) % 256, (y * 8) % 256, np.full_like(x, 40 * i % 256)], -1)
                     for i in range(n)]).astype(np.uint8)


def _png_clip(folder: Path, n: int, npz: bool = False) -> np.ndarray:
    (folder / "frames").mkdir(parents=True)
    frames = _frames(n)
    for i, frame in enumerate(frames):
        iio.imwrite(folder / "frames" / f"{i:04d}.png", frame)
    c2w, K = _cameras(n)
    if npz:
        np.savez(folder / "cameras.npz", c2w=c2w, intrinsics=K)
    else:
        np.save(folder / "c2w.npy", c2w)
        np.save(folder / "intrinsics.npy", K)
    return frames


def test_external_png_clips(tmp_path):
    root = tmp_path / "ext"
    frames_a = _png_clip(root / "a", 6)
    _png_clip(root / "b", 5, npz=True)
    (root / "unrelated").mkdir()
    ds = open_dataset(root, clip_frames=4, seed=0)
    assert isinstance(ds, ExternalPosedClips) and len(ds) == 2
    item = ds[0]
    s = item["start"]
    assert item["video"].shape == (4, 3, 32, 32) and item["clip_index"] == 0
    expected = torch.from_numpy(frames_a[s : s + 4]).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(item["video"], expected)  # PNG is lossless
    torch.testing.assert_close(item["c2w"], torch.from_numpy(_cameras(6)[0][s : s + 4]).float())
    assert ds[1]["intrinsics"].shape == (4, 3, 3)
    single = ExternalPosedClips(root / "a", clip_frames=6)  # a clip folder on its own
    assert len(single) == 1 and single[0]["start"] == 0


def test_external_video_clip(tmp_path):
    clip = tmp_path / "vid" / "clip0"
    clip.mkdir(parents=True)
    frames = _frames(8)
    iio.imwrite(clip / "video.mp4", frames, fps=16)
    c2w, K = _cameras(8)
    np.save(clip / "c2w.npy", c2w)
    np.save(clip / "intrinsics.npy", K[0])  # one (3, 3) matrix for every frame
    ds = ExternalPosedClips(tmp_path / "vid", clip_frames=5, seed=3)
    item = ds[0]
    s = item["start"]
    assert item["video"].shape == (5, 3, 32, 32) and item["intrinsics"].shape == (5, 3, 3)
    expected = torch.from_numpy(frames[s : s + 5]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert (item["video"] - expected).abs().mean() < 0.1  # lossy codec


def test_external_errors(tmp_path):
    def fresh(name: str, n: int = 6) -> Path:
        folder = tmp_path / name / "clip"
        _png_clip(folder, n)
        return folder

    clip = fresh("count")
    (clip / "frames" / "0005.png").unlink()
    with pytest.raises(ValueError, match=r"frames: 5 frames but 6 poses in .*c2w.npy"):
        ExternalPosedClips(clip.parent, 4)

    clip = fresh("rigid")
    c2w = np.load(clip / "c2w.npy")
    c2w[2, :3, :3] *= 2.0
    np.save(clip / "c2w.npy", c2w)
    with pytest.raises(ValueError, match=r"c2w.npy: c2w\[2\] is not a rigid transform"):
        ExternalPosedClips(clip.parent, 4)

    clip = fresh("shape")
    np.save(clip / "c2w.npy", np.zeros((6, 3, 4)))
    with pytest.raises(ValueError, match=r"c2w.npy: c2w must have shape \(F, 4, 4\), got \(6, 3, 4\)"):
        ExternalPosedClips(clip.parent, 4)

    clip = fresh("intrinsics")
    np.save(clip / "intrinsics.npy", np.zeros((5, 3, 3)))
    with pytest.raises(ValueError, match=r"intrinsics.npy: 5 intrinsics for 6 poses"):
        ExternalPosedClips(clip.parent, 4)

    clip = fresh("short", n=3)
    with pytest.raises(ValueError, match=r"short/clip: clip has 3 frames, fewer than clip_frames=4"):
        ExternalPosedClips(clip.parent, 4)

    clip = fresh("nocams")
    (clip / "intrinsics.npy").unlink()
    with pytest.raises(ValueError, match=r"intrinsics.npy: missing"):
        ExternalPosedClips(clip.parent, 4)

    clip = fresh("npz")
    (clip / "c2w.npy").unlink()
    (clip / "intrinsics.npy").unlink()
    np.savez(clip / "cameras.npz", c2w=_cameras(6)[0])
    with pytest.raises(ValueError, match=r"cameras.npz: no array 'intrinsics'"):
        ExternalPosedClips(clip.parent, 4)

    clip = fresh("garbled")
    (clip / "c2w.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match=r"c2w.npy: cannot read"):
        ExternalPosedClips(clip.parent, 4)

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no clips found"):
        open_dataset(tmp_path / "empty", 4)
