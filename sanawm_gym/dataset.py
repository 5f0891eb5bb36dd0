"""Write a posed-video dataset from the reference world: seeded, sharded, atomic, resumable.

Clip ``i`` of a dataset with seed ``s`` is a scene drawn from ``SeedSequence([s, i, 0])``
and a trajectory drawn from ``SeedSequence([s, i, 1])`` (:mod:`sanawm_gym.reference_world`),
rendered in one batched ray-casting call. Clip ``i`` therefore depends only on ``(s, i)``
and the config, never on which clips were written before: a resumed, re-run or extended
write produces the same bytes.

Layout of ``out_dir``::

    manifest.json                 config, shard list (clip ranges, sizes, sha256), complete?
    shard-00000.safetensors       clips [0, clips_per_shard)
    shard-00001.safetensors       ...

Each shard holds, for its ``n`` clips of ``F`` frames and ``S = ceil((F - 1) / K)`` steps:

    frames      uint8   (n, F, H, W, 3)   RGB
    c2w         float32 (n, F, 4, 4)      OpenCV camera-to-world, world +z up
    intrinsics  float32 (n, F, 3, 3)      pixels of the H x W frames
    actions     float32 (n, S, 6)         normalised body actions, one per env step
    scene_seed  int64   (n,)              generate_scene(scene_seed) rebuilds the scene
    clip_index  int64   (n,)
    depth       float16 (n, F, H, W)      only with ``--depth``: z-depth in metres, inf where a ray
                                          meets nothing (the exact render's)

Frame 0 is the start pose and frame ``1 + s K + k`` is frame ``k`` of step ``s``; when
``F - 1`` is not a multiple of ``K`` the last step is cut short. Every file is written to a
temporary file in the same folder, fsynced and moved into place with ``os.replace``;
the manifest is rewritten after every shard. Running the same command again checks the
shards listed in the manifest (size and sha256), keeps the valid ones and writes the rest;
a larger ``num_clips`` extends the dataset. A different config raises ``ValueError``.

Command line (``sanawm-gym dataset``)::

    sanawm-gym dataset --out data/ref64 --clips 1000 --frames 65 --height 64 --width 64 --seed 0
    sanawm-gym dataset --out data/v2 --clips 1000 --frames 129 --seed 0 --mix hold=0.12 --out-steps 3 12
    sanawm-gym dataset --out data/drive --clips 400 --frames 129 --seed 0 --paths drive --depth
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import safetensors.numpy
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from world_model.geometry import intrinsics_from_fov
from sanawm_gym.kinematics import MotionConfig
from sanawm_gym.reference_world import WORLD_VERSION, SceneConfig, generate_scene, render, render_backend
from sanawm_gym.reference_world.trajectories import (
    BehaviourMix,
    TrajectoryConfig,
    drive_trajectory,
    driving_actions,
    generate_trajectory,
    sample_start_pose,
)
from world_model.checkpoint import config_differences, field_defaults, with_defaults
from world_model.data.layout import (
    ARRAYS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    TMP_SUFFIX,
    atomic_write,
    file_sha256,
    read_manifest,
    shard_name,
)

__all__ = ["PATHS", "DatasetConfig", "clip_seeds", "main", "write_dataset"]

PATHS = ("smooth", "drive")
"""How a dataset's cameras move (:attr:`DatasetConfig.paths`)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetConfig:
    """Everything that determines a dataset's bytes, except how many clips it holds."""

    frames_per_clip: int
    """F: frames per clip, the start pose included (``1 + 4 n`` fits whole env steps)."""
    height: int
    """Frame height in pixels."""
    width: int
    """Frame width in pixels."""
    seed: int
    """Dataset seed; clip ``i`` is drawn from ``(seed, i)``."""
    clips_per_shard: int
    """Clips per safetensors shard."""
    fov_deg: float
    """Horizontal field of view (degrees)."""
    scene: SceneConfig = field(default_factory=SceneConfig)
    """How scenes are drawn."""
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    """How camera trajectories are drawn."""
    motion: MotionConfig = field(default_factory=MotionConfig)
    """Frame rate, frames per env step and speed limits (the env's)."""
    format_version: int = FORMAT_VERSION
    """Layout version of the shards."""
    world_version: int = WORLD_VERSION
    """Version of the reference world's generators and renderer: a resume refuses to mix
    clips written by different versions."""
    depth: bool = False
    """Also store each frame's exact z-depth (``depth``, float16 metres), what the depth
    head of the autoencoder learns from (``python -m world_model.train --stage depth``)."""
    paths: str = "smooth"
    """How the camera moves: ``smooth``, the collision-free trajectories of
    :func:`generate_trajectory` (``trajectory``); ``drive``, driving episodes that meet walls
    and objects and are stopped by them, as in the env (:func:`drive_trajectory`, bump and
    turn: even clips full speed ahead, odd ones smooth random), from a free start of
    ``trajectory``'s bounds."""

    def __post_init__(self) -> None:
        if self.frames_per_clip < 1:
            raise ValueError(f"frames_per_clip must be >= 1, got {self.frames_per_clip}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be >= 1, got {self.height}x{self.width}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.clips_per_shard < 1:
            raise ValueError(f"clips_per_shard must be >= 1, got {self.clips_per_shard}")
        if not 0 < self.fov_deg < 180:
            raise ValueError(f"fov_deg must be in (0, 180), got {self.fov_deg}")
        if self.paths not in PATHS:
            raise ValueError(f"paths must be one of {PATHS}, got {self.paths!r}")

    @property
    def steps_per_clip(self) -> int:
        """Env steps per clip: ``ceil((F - 1) / K)``."""
        return math.ceil((self.frames_per_clip - 1) / self.motion.frames_per_step)

    def to_json(self) -> dict[str, Any]:
        """The config as JSON data (tuples become lists), as stored in the manifest."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ------------------------------------------------------------------------------ one clip
def clip_seeds(seed: int, index: int) -> tuple[int, np.random.SeedSequence]:
    """``(scene seed, trajectory seed sequence)`` of clip ``index`` of a dataset ``seed``."""
    scene_seed = int(np.random.SeedSequence([seed, index, 0]).generate_state(1, np.uint64)[0] >> np.uint64(1))
    return scene_seed, np.random.SeedSequence([seed, index, 1])


def _render_clip(cfg: DatasetConfig, index: int, K: np.ndarray) -> dict[str, np.ndarray]:
    """Scene, trajectory and frames of clip ``index`` (arrays without the clip axis)."""
    scene_seed, trajectory_seed = clip_seeds(cfg.seed, index)
    scene = generate_scene(scene_seed, cfg.scene)
    rng = np.random.default_rng(trajectory_seed)
    if cfg.paths == "drive":
        start = sample_start_pose(scene, rng, cfg.trajectory, cfg.motion)
        traj, _ = drive_trajectory(scene, start, driving_actions(index, cfg.steps_per_clip, cfg.seed), cfg.motion, rng)
    else:
        traj = generate_trajectory(scene, cfg.steps_per_clip, rng, cfg.trajectory, cfg.motion)
    c2w = traj.c2w[: cfg.frames_per_clip]  # (F, 4, 4)
    out = render(scene, c2w, K, cfg.height, cfg.width)  # (F, H, W, 3), all frames in one call
    arrays = {
        "frames": np.asarray(out.rgb),
        "c2w": c2w.astype(np.float32),
        "intrinsics": np.broadcast_to(K.astype(np.float32), (cfg.frames_per_clip, 3, 3)),
        "actions": traj.actions,
        "scene_seed": np.int64(scene_seed),
        "clip_index": np.int64(index),
    }
    if cfg.depth:
        arrays["depth"] = np.asarray(out.depth, dtype=np.float32).astype(np.float16)  # metres; inf stays inf
    return arrays


# ------------------------------------------------------------------------------ manifest
def _shard_is_valid(folder: Path, entry: dict[str, Any]) -> bool:
    path = folder / entry["file"]
    return path.is_file() and path.stat().st_size == entry["bytes"] and file_sha256(path) == entry["sha256"]


def _config_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return config_differences(stored, wanted, labels=("in the folder", "requested"))


def _manifest(cfg: DatasetConfig, num_clips: int, shards: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": complete,
        "num_clips": num_clips,
        "clips_written": sum(e["clips"][1] - e["clips"][0] for e in shards),
        "steps_per_clip": cfg.steps_per_clip,
        "config": cfg.to_json(),
        "arrays": ARRAYS,
        "shards": shards,
        "written_with": {"torch": torch.__version__, "render_backend": render_backend()},
    }


def _prepare_folder(folder: Path, cfg: DatasetConfig, num_clips: int) -> dict[str, dict[str, Any]]:
    """Create or check ``folder``; returns the valid shards already there, by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".*{TMP_SUFFIX}"):  # left by an interrupted write
        stale.unlink()
    manifest = read_manifest(folder)
    if manifest is None:
        if any(folder.iterdir()):
            raise ValueError(f"{folder} is not empty and has no {MANIFEST}; refusing to write a dataset into it")
        return {}
    # a field added to the config since the set was written did not exist then: it is read as its default
    stored = with_defaults(manifest.get("config", {}), json.loads(json.dumps(field_defaults(DatasetConfig))))
    differences = _config_differences(stored, cfg.to_json())
    if differences:
        raise ValueError(f"{folder} holds a dataset with a different config; differing fields:\n  "
                         + "\n  ".join(differences) + "\nuse the same arguments to resume, or another --out folder")
    if manifest.get("num_clips", 0) > num_clips:
        raise ValueError(f"{folder} holds {manifest['num_clips']} clips; refusing to shrink it to {num_clips}")
    valid = {e["file"]: e for e in manifest.get("shards", []) if _shard_is_valid(folder, e)}
    dropped = len(manifest.get("shards", [])) - len(valid)
    if dropped:
        log.warning("%s: %d listed shard(s) missing or corrupt; rewriting them", folder, dropped)
    return valid


# --------------------------------------------------------------------------------- writer
def write_dataset(
    out_dir: str | os.PathLike,
    num_clips: int,
    frames_per_clip: int,
    height: int = 64,
    width: int = 64,
    seed: int = 0,
    clips_per_shard: int = 64,
    fov_deg: float = 90.0,
    scene_config: SceneConfig | None = None,
    trajectory_config: TrajectoryConfig | None = None,
    progress: bool = True,
    depth: bool = False,
    paths: str = "smooth",
) -> Path:
    """Write (or resume, or extend) a posed-video dataset of ``num_clips`` clips into
    ``out_dir`` and return its path. See the module docstring for the layout.

    Raises ``ValueError`` for bad arguments, for a non-empty folder without a manifest, and
    for a folder holding a dataset with another config (the message lists the fields).
    """
    cfg = DatasetConfig(frames_per_clip, height, width, seed, clips_per_shard, float(fov_deg),
                        scene_config or SceneConfig(), trajectory_config or TrajectoryConfig(), depth=depth,
                        paths=paths)
    _write(Path(out_dir), cfg, num_clips, progress)
    return Path(out_dir)


def _write(folder: Path, cfg: DatasetConfig, num_clips: int, progress: bool) -> int:
    """:func:`write_dataset` for a config; returns how many clips this call rendered."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    valid = _prepare_folder(folder, cfg, num_clips)
    plan = [(shard_name(k), (lo, min(lo + cfg.clips_per_shard, num_clips)))
            for k, lo in enumerate(range(0, num_clips, cfg.clips_per_shard))]
    done = {name: valid[name] for name, clips in plan if name in valid and tuple(valid[name]["clips"]) == clips}
    entries = [done[name] for name, _ in plan if name in done]
    todo = [(name, clips) for name, clips in plan if name not in done]
    atomic_write(folder / MANIFEST, _json(_manifest(cfg, num_clips, entries, complete=not todo)))
    already = sum(e["clips"][1] - e["clips"][0] for e in entries)
    if done:
        log.info("%s: %d of %d shards already written and valid; resuming", folder, len(done), len(plan))
    if todo:
        log.info("%s: rendering %d of %d clips, %d frames at %dx%d, %d clips per shard", folder, num_clips - already,
                 num_clips, cfg.frames_per_clip, cfg.height, cfg.width, cfg.clips_per_shard)
    else:
        log.info("%s: all %d clips already written and valid", folder, num_clips)

    K = intrinsics_from_fov(cfg.fov_deg, cfg.height, cfg.width).numpy()
    with tqdm(total=num_clips, initial=already, unit="clip", desc="clips", disable=not progress) as bar:
        for name, (lo, hi) in todo:
            entries.append(_write_shard(folder, cfg, name, lo, hi, K, bar))
            entries.sort(key=lambda e: e["clips"][0])
            complete = len(entries) == len(plan)
            atomic_write(folder / MANIFEST, _json(_manifest(cfg, num_clips, entries, complete)))
    return num_clips - already


def _write_shard(folder: Path, cfg: DatasetConfig, name: str, lo: int, hi: int, K: np.ndarray,
                 bar: tqdm) -> dict[str, Any]:
    """Render clips ``lo:hi`` into shard ``name``; returns its manifest entry."""
    clips = []
    for i in range(lo, hi):
        clips.append(_render_clip(cfg, i, K))
        bar.update(1)
    arrays = {key: np.ascontiguousarray(np.stack([c[key] for c in clips])) for key in clips[0]}
    # One metadata key: safetensors writes several in no fixed order, and re-runs must be byte-identical.
    about = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "clips": [lo, hi]})
    data = safetensors.numpy.save(arrays, metadata={"dataset": about})
    atomic_write(folder / name, data)
    log.info("wrote %s (clips %d..%d, %.1f MB)", name, lo, hi - 1, len(data) / 1e6)
    return {"file": name, "clips": [lo, hi], "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _json(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


# ---------------------------------------------------------------------------- command line
_MIX_NAMES = tuple(f.name for f in dataclasses.fields(BehaviourMix))


def _trajectory_config(mix: Sequence[str], out_steps: Sequence[int] | None) -> TrajectoryConfig:
    """The default :class:`TrajectoryConfig` with ``NAME=WEIGHT`` behaviour weights and the
    outward-leg range replaced; ValueError naming what is wrong."""
    weights = {}
    for item in mix:
        name, sep, value = item.partition("=")
        if not sep or name not in _MIX_NAMES:
            raise ValueError(f"--mix takes NAME=WEIGHT with NAME one of {', '.join(_MIX_NAMES)}, got {item!r}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--mix {item!r}: the weight must be a number") from None
    cfg = TrajectoryConfig()
    cfg = dataclasses.replace(cfg, mix=dataclasses.replace(cfg.mix, **weights))
    return dataclasses.replace(cfg, out_steps=tuple(out_steps)) if out_steps else cfg


def main(argv: Sequence[str] | None = None) -> int:
    """``sanawm-gym dataset --out DIR --clips N --frames F ...``; returns the exit
    status (0), or exits with status 2 and the message on a ``ValueError``."""
    parser = argparse.ArgumentParser(prog="sanawm-gym dataset", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="dataset folder (created; resumed if it holds the same config)")
    parser.add_argument("--clips", type=int, required=True, help="number of clips")
    parser.add_argument("--frames", type=int, required=True, help="frames per clip, the start pose included")
    parser.add_argument("--height", type=int, default=64, help="frame height in pixels")
    parser.add_argument("--width", type=int, default=64, help="frame width in pixels")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--clips-per-shard", type=int, default=64, help="clips per safetensors shard")
    parser.add_argument("--fov", type=float, default=90.0, help="horizontal field of view in degrees")
    parser.add_argument("--mix", nargs="+", default=[], metavar="NAME=WEIGHT",
                        help=f"behaviour weights replacing the default mix's ({', '.join(_MIX_NAMES)}), e.g. hold=0.12 "
                             "out_and_back=0.2")
    parser.add_argument("--out-steps", type=int, nargs=2, metavar=("LO", "HI"),
                        help="steps of an out-and-back's outward leg (default: TrajectoryConfig's)")
    parser.add_argument("--depth", action="store_true",
                        help="also store each frame's exact z-depth (float16 metres; for the depth head)")
    parser.add_argument("--paths", choices=PATHS, default="smooth",
                        help="smooth: collision-free trajectories; drive: episodes that drive into walls and objects "
                             "and are stopped by them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    start = time.perf_counter()
    try:
        cfg = DatasetConfig(args.frames, args.height, args.width, args.seed, args.clips_per_shard, args.fov,
                            trajectory=_trajectory_config(args.mix, args.out_steps), depth=args.depth,
                            paths=args.paths)
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            written = _write(Path(args.out), cfg, args.clips, progress=not args.no_progress)
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    seconds = time.perf_counter() - start
    print(f"{args.clips} clips x {args.frames} frames at {args.height}x{args.width} in {args.out} "
          f"({written} rendered now): {seconds:.1f} s, {written / seconds:.2f} clips/s")
    return 0
