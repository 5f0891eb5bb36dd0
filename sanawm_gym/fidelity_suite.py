"""The fidelity suite: does the imagined world hold its places, its still scenes and its detail?

``sanawm-gym fidelity`` (no ``--data``) runs it on a checkpoint beside two baselines (the
first frame repeated; the model with its camera conditioning off), on held-out sets whose
seeds no training set uses (training sets: seeds below 1000, the shipped model seed 0):

- **motion**: clips along the dataset's smooth random camera paths (seed 3100, 10 s; the
  long suite adds 60 s clips, seed 3000): PSNR, SSIM and the sharpness ratio by horizon.
- **motion_ctx**: the motion set's first 8 clips, each after the env's look-around of the
  start (``context_seconds``), given clean: motion as a seeded ``Nav-v0`` episode starts it.
- **still**: the camera does not move for 10 s (seed 4000): does the scene hold?
  Scores at 2 s and 10 s; the reference is the first frame itself.
- **revisit**: walk 1 m forward to a pose P1 (frame 16), turn 180 degrees away (frame 48)
  and back (frame 80, exactly P1 again) (seed 4500). The returned frame is scored against
  the reference and against the model's own first visit of P1; the "wrong view" line is the
  reference of the turned-away pose scored against the returned one, what showing another
  view would score.
- **collisions** (a model with a depth head): 16 driving episodes of 10 s (seed 5000),
  forward into walls and objects or smooth random: recall and precision of the collisions
  the env predicts from the generated depth against the reference world's exact ones, and
  the generated depth's error by horizon (:mod:`sanawm_gym.collision_eval`).

``--memory`` (``run_suite(..., memory=True)``) scores every set a second time with the
chunks guided by a scene memory of what the clip's start showed (:mod:`world_model.memory`;
``Nav-v0``'s default), as ``+mem`` rows beside the model alone.

The motion sets are written with the reference world's dataset writer, one clip per shard,
so an interrupted run keeps every finished clip and resumes; still and revisit clips are
rendered in memory (a few seconds). The short suite takes about 5-10 minutes on 2 CPU
cores; ``--suite long`` adds the 60 s set. Everything goes to ``--out``: ``report.json``
(every per-clip value), and per set ``<set>/psnr-horizon.png`` and ``<set>/rollout.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sanawm_gym.dataset import clip_seeds, write_dataset
from sanawm_gym.kinematics import MotionConfig, look_around
from sanawm_gym.reference_world import generate_scene, render
from sanawm_gym.reference_world.collision import obstacle_sweep
from sanawm_gym.tasks import PointGoalConfig, sample_goal
from world_model.autoencoder.losses import psnr
from world_model.data import PosedVideoDataset
from world_model.geometry import integrate_twist, intrinsics_from_fov, pose_from_yaw_pitch
from world_model.scoring import BASELINES, FPS, PSNR_CAP, evaluate_rollouts, save_horizon_plot
from world_model.world_model import autocast, resolve_precision

__all__ = ["SUITES", "HeldoutSet", "format_report", "look_around", "revisit_clip", "run_suite", "still_clip"]

COLLISION_EPISODES, COLLISION_STEPS, COLLISION_SEED = 16, 40, 5000
"""The suite's collision episodes: how many, env steps each (10 s), their seed."""
REVISIT_FRAMES = (16, 48, 80)
"""Raw frames of a revisit clip: first arrival at P1, turned away, back at P1."""


@dataclass(frozen=True)
class HeldoutSet:
    """One held-out set of the suite."""

    name: str
    kind: str
    """``motion``, ``still`` or ``revisit``."""
    clips: int
    seconds: float
    seed: int
    """Dataset seed; never used by a training set (those use seeds below 1000)."""
    horizons: tuple[float, ...] = ()
    context: bool = False
    """A motion set whose clips start with the suite's look-around (as a seeded ``Nav-v0``
    reset does), given clean as a context clip; scores count from its end."""

    @property
    def frames(self) -> int:
        return 1 + 4 * max(1, int(round(self.seconds * FPS / 4)))


_SHORT = (
    HeldoutSet("motion", "motion", 16, 10.0, 3100, (0.5, 1.0, 2.0, 5.0, 10.0)),
    HeldoutSet("motion_ctx", "motion", 8, 10.0, 3100, (0.5, 1.0, 2.0, 5.0, 10.0), context=True),  # motion's first 8
    HeldoutSet("still", "still", 8, 10.0, 4000, (2.0, 10.0)),
    HeldoutSet("revisit", "revisit", 8, 5.0, 4500),
)
SUITES = {"short": _SHORT, "long": _SHORT + (HeldoutSet("motion60", "motion", 16, 60.0, 3000,
                                                          (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)),)}


def _start(seed: int, index: int) -> tuple[Any, np.ndarray]:
    """The scene and a level start pose of clip ``index`` of a set ``seed``."""
    scene_seed, sequence = clip_seeds(seed, index)
    scene = generate_scene(scene_seed)
    sample = sample_goal(scene, np.random.default_rng(sequence), PointGoalConfig(), MotionConfig().camera_radius)
    return scene, pose_from_yaw_pitch(sample.start, sample.yaw, 0.0)


def _clip(scene, c2w: np.ndarray, K: np.ndarray, hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    out = render(scene, c2w, K, *hw)
    video = torch.from_numpy(np.asarray(out.rgb)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # rgb (F, H, W, 3) uint8
    F = c2w.shape[0]
    return {"video": video, "c2w": torch.as_tensor(c2w, dtype=torch.float32),
            "intrinsics": torch.as_tensor(np.repeat(K[None], F, 0), dtype=torch.float32),
            "depth": torch.as_tensor(np.asarray(out.depth), dtype=torch.float32)}


class _LookAroundFirst(torch.utils.data.Dataset):
    """The first ``clips`` clips of a motion set, each after a :func:`look_around` of
    ``seconds`` ending at its first pose, rendered in its scene, with the look-around's exact
    z-depth (``depth (context, H, W)``): what a seeded ``Nav-v0`` reset shows before the path."""

    def __init__(self, data: PosedVideoDataset, clips: int, seed: int, K: np.ndarray, hw: tuple[int, int],
                 seconds: float):
        self.data, self.clips, self.seed, self.K, self.hw, self.seconds = data, clips, seed, K, hw, seconds

    def __len__(self) -> int:
        return min(self.clips, len(self.data))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.data[i]
        start = item["c2w"][0].double().numpy()
        look = look_around(start, self.seconds)[:-1]  # ends just before the first pose
        shown = _clip(generate_scene(clip_seeds(self.seed, i)[0]), np.concatenate([look, start[None]]), self.K, self.hw)
        F = len(look)
        return {"video": torch.cat([shown["video"][:F], item["video"]]),
                "c2w": torch.cat([shown["c2w"][:F], item["c2w"].float()]),
                "intrinsics": torch.cat([shown["intrinsics"][:F], item["intrinsics"].float()]),
                "depth": shown["depth"]}


class _FirstFrameDepth(torch.utils.data.Dataset):
    """A motion set's clips with their first frame's exact z-depth (``depth (1, H, W)``),
    rendered from the clip's scene (what a seeded env's reset knows of its first frame)."""

    def __init__(self, data: PosedVideoDataset, seed: int, K: np.ndarray, hw: tuple[int, int]):
        self.data, self.seed, self.K, self.hw = data, seed, K, hw

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = dict(self.data[i])
        scene = generate_scene(clip_seeds(self.seed, i)[0])
        out = render(scene, item["c2w"][:1].double().numpy(), self.K, *self.hw)
        item["depth"] = torch.as_tensor(np.asarray(out.depth), dtype=torch.float32)
        return item


def still_clip(seed: int, index: int, frames: int, hw: tuple[int, int], K: np.ndarray,
               context_seconds: float = 0.0) -> dict[str, torch.Tensor]:
    """A clip whose camera stands still at a level start pose for ``frames`` frames, after
    a :func:`look_around` of ``context_seconds`` ending there."""
    scene, pose = _start(seed, index)
    return _clip(scene, np.concatenate([look_around(pose, context_seconds)[:-1], np.repeat(pose[None], frames, 0)]),
                 K, hw)


def revisit_clip(seed: int, index: int, hw: tuple[int, int], K: np.ndarray,
                 context_seconds: float = 0.0) -> dict[str, torch.Tensor]:
    """81 frames: 1 m forward at 1 m/s to P1 (frame 16), a 180-degree left turn at pi/2
    rad/s (frame 48), the same turn back (frame 80: P1 again), after a :func:`look_around`
    of ``context_seconds`` ending at the start. The heading is the first of eight around the
    start's whose walk is free of obstacles."""
    scene, pose = _start(seed, index)
    motion = MotionConfig()
    sweep = obstacle_sweep(scene)
    dt = 1.0 / FPS
    walk, left = np.array([0, 0, 1.0, 0, 0, 0]), np.array([0, 0, 0, 0, -math.pi / 2, 0])
    for k in range(8):
        start = pose_from_yaw_pitch(pose[:3, 3], math.atan2(pose[1, 2], pose[0, 2]) + k * math.pi / 4, 0.0)
        forward = integrate_twist(start, walk, dt, 16)  # (16, 4, 4)
        ends = forward[:, :3, 3]
        starts = np.concatenate([start[None, :3, 3], ends[:-1]])
        if not np.asarray(sweep(starts, ends, motion.camera_radius)).any():
            break
    away = integrate_twist(forward[-1], left, dt, 32)
    back = integrate_twist(away[-1], -left, dt, 32)
    c2w = np.concatenate([look_around(start, context_seconds)[:-1], start[None], forward, away, back])
    return _clip(scene, c2w, K, hw)


def _motion_set(spec: HeldoutSet, root: Path, hw: tuple[int, int]) -> PosedVideoDataset:
    folder = root / f"{spec.name}-{spec.clips}x{spec.frames}-seed{spec.seed}"
    write_dataset(folder, spec.clips, spec.frames, height=hw[0], width=hw[1], seed=spec.seed, clips_per_shard=1,
                  progress=True)
    return PosedVideoDataset(folder, spec.frames, random_crop=False)


def _summary(report: dict[str, Any], horizons: tuple[float, ...]) -> dict[str, Any]:
    """The figures of one set at its horizons (means and per-clip lists)."""
    out: dict[str, Any] = {}
    for h in horizons:
        row = {}
        for metric, prefix in (("psnr", ""), ("ssim", "ssim_"), ("sharpness", "sharpness_")):
            for name in ("model", "memory") + BASELINES + ("reconstruction",):
                key = f"{metric}_{name}_{h:g}s"
                if key in report:
                    row[f"{metric}_{name}"] = report[key]
                    row[f"clips_{metric}_{name}"] = report[f"clips_{prefix}{name}_{h:g}s"]
        out[f"{h:g}s"] = row
    return out


def _revisit_scores(videos: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per-clip PSNR of the returned frame (index 2 of :data:`REVISIT_FRAMES`)."""
    ref = videos["reference"]
    scores = {f"return_vs_reference_{name}": psnr(videos[name][:, 2], ref[:, 2]).clamp(max=PSNR_CAP)
              for name in ("model",) + BASELINES}
    scores["return_vs_first_visit_model"] = psnr(videos["model"][:, 2], videos["model"][:, 0]).clamp(max=PSNR_CAP)
    if "memory" in videos:
        scores["return_vs_reference_memory"] = psnr(videos["memory"][:, 2], ref[:, 2]).clamp(max=PSNR_CAP)
        scores["return_vs_first_visit_memory"] = psnr(videos["memory"][:, 2], videos["memory"][:, 0]).clamp(max=PSNR_CAP)
    scores["wrong_view"] = psnr(ref[:, 1], ref[:, 2]).clamp(max=PSNR_CAP)
    out: dict[str, Any] = {k: float(v.mean()) for k, v in scores.items()}
    out.update({f"clips_{k}": v.tolist() for k, v in scores.items()})
    return out


@torch.no_grad()
def run_suite(wm, suite: str, root: Path, out: Path, steps: int | None = None, seed: int = 0,
              context_seconds: float = 0.0, log=print, precision: str = "float32",
              memory: bool = False) -> dict[str, Any]:
    """Run the ``suite`` (a key of :data:`SUITES`) on the world model ``wm``; held-out sets
    live under ``root``; pictures and ``report.json`` go to ``out``. ``context_seconds``:
    the still and revisit clips and the ``motion_ctx`` set (the first 8 motion clips) start
    with a :func:`look_around` of that length, given to the model clean as a context clip
    (scores count from its end; the ``motion`` sets start from their first frame as before;
    with no look-around ``motion_ctx`` is left out). ``precision``: how the backbone computes (one of
    ``world_model.world_model.PRECISIONS``; ``nvfp4`` / ``int8``: a low-bit backbone, the
    autoencoder and the ceiling in float32). ``memory``: also score the model guided by a
    scene memory of what each clip's start showed with its exact depth (the first frame, or
    the look-around; :mod:`world_model.memory`), as ``memory`` beside ``model``. Returns the
    report."""
    hw = tuple(wm.image_hw)
    K = intrinsics_from_fov(90.0, *hw).numpy()
    sample_steps = steps or wm.sample_steps
    report: dict[str, Any] = {"suite": suite, "sample_steps": sample_steps, "context_seconds": context_seconds,
                              "precision": resolve_precision(precision), "memory": memory, "sets": {}}
    backbone = wm.backbone_for(precision)
    context = len(look_around(np.eye(4), context_seconds))
    for spec in SUITES[suite]:
        t0 = time.perf_counter()
        given = 1
        if spec.kind == "motion" and spec.context:
            if context == 1:
                continue  # no look-around to start from: the plain motion set says it all
            base = next((x for x in SUITES[suite] if x.kind == "motion" and not x.context and x.seed == spec.seed
                         and x.frames == spec.frames and x.clips >= spec.clips), dataclasses.replace(spec, name="motion"))
            clips = _motion_set(base, root, hw)  # the motion set's first clips, after a look-around
            data, given = _LookAroundFirst(clips, spec.clips, spec.seed, K, hw, context_seconds), context
        elif spec.kind == "motion":
            data = _motion_set(spec, root, hw)
            if memory:
                data = _FirstFrameDepth(data, spec.seed, K, hw)
        elif spec.kind == "still":
            data, given = [still_clip(spec.seed, i, spec.frames, hw, K, context_seconds) for i in range(spec.clips)], context
        else:
            data, given = [revisit_clip(spec.seed, i, hw, K, context_seconds) for i in range(spec.clips)], context
        (out / spec.name).mkdir(parents=True, exist_ok=True)
        with autocast(precision):
            scored = evaluate_rollouts(backbone, wm.autoencoder, data, hw, sample_steps, wm.sample_shift,
                                       spec.horizons, batch_size=spec.clips, picture=out / spec.name / "rollout.png",
                                       seed=seed, frames=REVISIT_FRAMES if spec.kind == "revisit" else (),
                                       context=given, ceiling=True, memory=memory)
        save_horizon_plot(scored, out / spec.name / "psnr-horizon.png")
        entry: dict[str, Any] = {**dataclasses.asdict(spec), "frames": spec.frames, "context_frames": given,
                                 "seconds_taken": time.perf_counter() - t0}
        if spec.kind == "revisit":
            entry["revisit"] = _revisit_scores(scored.pop("videos"))
        entry["horizons"] = _summary(scored, spec.horizons)
        entry["curves"] = {k: v for k, v in scored.items() if k.startswith("curve_")}
        report["sets"][spec.name] = entry
        log(f"{spec.name}: {spec.clips} clips of {spec.frames} frames scored in {entry['seconds_taken']:.0f} s")
    if wm.has_depth:
        from sanawm_gym.collision_eval import evaluate_collisions
        from sanawm_gym.envs.world_model_nav import NavConfig

        t0 = time.perf_counter()
        points = NavConfig.collision_points
        report["collisions"] = {**evaluate_collisions(wm, COLLISION_EPISODES, COLLISION_STEPS, COLLISION_SEED, (points,),
                                                      precision, noise_seed=seed, context_seconds=context_seconds,
                                                      scene_memory=memory),
                                "min_points": points, "seconds_taken": time.perf_counter() - t0}
        log(f"collisions: {COLLISION_EPISODES} episodes of {COLLISION_STEPS} steps in "
            f"{report['collisions']['seconds_taken']:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "report.json")
    return report


def _steps(n: int, kind: str = "") -> str:
    return f"{n} {kind}step{'s' * (n != 1)}"


def format_report(report: dict[str, Any]) -> str:
    """The suite's table: model and baselines per set and horizon (PSNR, SSIM, sharpness)."""
    lines = [f"fidelity suite '{report['suite']}', {_steps(report['sample_steps'], 'sampler ')}, backbone in "
             f"{report.get('precision', 'float32')}, a look-around context of "
             f"{report['context_seconds']:g} s before the still, revisit and motion_ctx clips; PSNR in dB against the "
             "exact reference render; sharpness = generated / reference high-frequency energy",
             f"{'set':<9} {'at':>6} {'model':>7} {'cam off':>8} {'first fr':>9} {'AE':>6} {'SSIM':>6} {'sharp':>6} "
             f"{'cam off':>8} {'AE':>5} {'clips ahead':>12}"]
    for name, entry in report["sets"].items():
        for at, row in entry["horizons"].items():
            model = np.asarray(row["clips_psnr_model"])
            best = np.maximum(np.asarray(row["clips_psnr_no_camera"]), np.asarray(row["clips_psnr_first_frame"]))
            lines.append(f"{name:<9} {at:>6} {row['psnr_model']:>7.2f} {row['psnr_no_camera']:>8.2f} "
                         f"{row['psnr_first_frame']:>9.2f} {row['psnr_reconstruction']:>6.2f} {row['ssim_model']:>6.3f} "
                         f"{row['sharpness_model']:>6.2f} {row['sharpness_no_camera']:>8.2f} "
                         f"{row['sharpness_reconstruction']:>5.2f} {f'{int((model > best).sum())}/{len(model)}':>12}")
            if "psnr_memory" in row:
                guided = np.asarray(row["clips_psnr_memory"])
                lines.append(f"{'':<9} {'+mem':>6} {row['psnr_memory']:>7.2f} {'':>8} {'':>9} {'':>6} "
                             f"{row['ssim_memory']:>6.3f} {row['sharpness_memory']:>6.2f} {'':>8} {'':>5} "
                             f"{f'{int((guided > best).sum())}/{len(guided)}':>12}   "
                             f"(ahead of the model alone on {int((guided > model).sum())}/{len(guided)})")
        if "revisit" in entry:
            r = entry["revisit"]
            lines.append(f"{name:<9} return {r['return_vs_reference_model']:>7.2f} "
                         f"{r['return_vs_reference_no_camera']:>8.2f} {r['return_vs_reference_first_frame']:>9.2f}   "
                         f"(vs its first visit {r['return_vs_first_visit_model']:.2f}; a wrong view scores "
                         f"{r['wrong_view']:.2f})")
            if "return_vs_reference_memory" in r:
                lines.append(f"{'':<9} {'+mem':>6} {r['return_vs_reference_memory']:>7.2f} {'':>8} {'':>9}   "
                             f"(vs its first visit {r['return_vs_first_visit_memory']:.2f})")
    if "collisions" in report:
        from sanawm_gym.collision_eval import format_collisions

        lines.append(format_collisions(report["collisions"]))
    if report.get("memory"):
        lines.append("+mem: the same model and noise guided by a scene memory of what the start showed (its exact "
                     "depth): each chunk composited with the memory's view, then committed (world_model.memory).")
    lines.append("AE: the autoencoder's reconstruction of the reference, the ceiling through this autoencoder. "
                 "sharp: the model's sharpness ratio; cam off: the camera-off baseline's. clips ahead: clips on which "
                 "the model beats both baselines. still: the reference is the first frame itself (the first-frame "
                 f"baseline is exact, capped at {PSNR_CAP:.2f} dB).")
    return "\n".join(lines)


def compare_reports(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> str:
    """Two suite reports on the same held-out sets side by side: per set and horizon the
    model's PSNR, SSIM and sharpness in each, B minus A, and on how many clips B is ahead
    (the clips are the same seeds in both, so the per-clip differences are paired); the
    revisit's returned frame too. Sets in one report only (a suite that gained a set since
    the other was run) are named and left out; ValueError when no set is in both."""
    shared = [name for name in a["sets"] if name in b["sets"]]
    if not shared:
        raise ValueError(f"the reports hold different sets: {sorted(a['sets'])} and {sorted(b['sets'])}")
    na, nb = names
    lines = [f"{na}: {a.get('precision', 'float32')}, {_steps(a['sample_steps'])}; {nb}: {b.get('precision', 'float32')}, "
             f"{_steps(b['sample_steps'])}; PSNR (dB), SSIM and sharpness of the model; {nb} - {na}",
             f"{'set':<9} {'at':>6} {'PSNR ' + na:>10} {'PSNR ' + nb:>10} {'diff':>7} {'clips +':>8} "
             f"{'SSIM ' + na:>10} {'SSIM ' + nb:>10} {'sharp ' + na:>10} {'sharp ' + nb:>10}"]
    for name in shared:
        ea, eb = a["sets"][name], b["sets"][name]
        for at, ra in ea["horizons"].items():
            rb = eb["horizons"].get(at)
            if rb is None:
                continue
            paired = np.asarray(rb["clips_psnr_model"]) - np.asarray(ra["clips_psnr_model"])
            lines.append(f"{name:<9} {at:>6} {ra['psnr_model']:>10.2f} {rb['psnr_model']:>10.2f} "
                         f"{rb['psnr_model'] - ra['psnr_model']:>+7.2f} {f'{int((paired > 0).sum())}/{len(paired)}':>8} "
                         f"{ra['ssim_model']:>10.3f} {rb['ssim_model']:>10.3f} {ra['sharpness_model']:>10.2f} "
                         f"{rb['sharpness_model']:>10.2f}")
        if "revisit" in ea and "revisit" in eb:
            xa, xb = ea["revisit"], eb["revisit"]
            paired = np.asarray(xb["clips_return_vs_reference_model"]) - np.asarray(xa["clips_return_vs_reference_model"])
            lines.append(f"{name:<9} {'return':>6} {xa['return_vs_reference_model']:>10.2f} "
                         f"{xb['return_vs_reference_model']:>10.2f} "
                         f"{xb['return_vs_reference_model'] - xa['return_vs_reference_model']:>+7.2f} "
                         f"{f'{int((paired > 0).sum())}/{len(paired)}':>8}   (vs the first visit: "
                         f"{xa['return_vs_first_visit_model']:.2f} / {xb['return_vs_first_visit_model']:.2f}; "
                         f"a wrong view {xa['wrong_view']:.2f})")
    lines.append(f"clips +: clips (the same seeds in both) on which {nb} scores higher than {na}.")
    only = [(n, na) for n in a["sets"] if n not in b["sets"]] + [(n, nb) for n in b["sets"] if n not in a["sets"]]
    if only:
        lines.append("left out, in one report only: " + ", ".join(f"{n} ({who})" for n, who in only))
    return "\n".join(lines)
