"""Score a world-model checkpoint against the exact reference render.

    sanawm-gym fidelity                          # the shipped checkpoint, the short fidelity suite
    sanawm-gym fidelity --suite long --model runs/teacher/final
    sanawm-gym fidelity --model runs/teacher/final --data /tmp/heldout60 --clips 4 --seconds 60
    sanawm-gym fidelity --autoencoder --data /tmp/dsval --clips 32 --seconds 2 --seed 1000
    sanawm-gym fidelity --collisions --clips 16 --seconds 10 --seed 500 --collision-points 2 4 8 16

Without ``--data`` it runs the fidelity suite (:mod:`sanawm_gym.fidelity_suite`: motion,
still camera and revisit sets, PSNR / SSIM / sharpness beside two baselines). With
``--data`` it scores one set of clips along the dataset's random camera paths: it writes
(atomically) a held-out set of ``--clips`` clips of ``--seconds`` seconds if ``--data``
does not hold one yet (seed ``--seed``, never a training seed), generates each
clip from its first frame along its true camera path, and prints PSNR against the exact
render at each horizon for the model, the model with its camera conditioning off, and the
first frame repeated. Saves ``psnr-horizon.png``, ``rollout.png`` (reference rows above
generated rows) and ``report.json`` into ``--out``. ``--autoencoder``: the checkpoint's
autoencoder alone (``--model`` may also be an autoencoder folder, such as an autoencoder
run's ``final/``), reconstruction PSNR / SSIM of the same clips (``recon.png``).
``--collisions``: only the collision episodes (:mod:`sanawm_gym.collision_eval`), ``--clips``
episodes of ``--seconds`` from seed ``--seed``, recall and precision for each
``--collision-points`` threshold (the suite runs them at the env's default).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sanawm_gym.dataset import write_dataset
from sanawm_gym.fidelity_suite import SUITES, compare_reports, format_report, run_suite
from world_model.autoencoder import load_autoencoder
from world_model.data import PosedVideoDataset
from world_model.scoring import (
    FPS,
    PSNR_CAP,
    evaluate_reconstruction,
    evaluate_rollouts,
    save_horizon_plot,
)
from world_model.world_model import PRECISIONS, WorldModel, autocast, component_folder

__all__ = ["clip_margins", "main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sanawm-gym fidelity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder, or a packaged model's name (default, teacher); "
                   "default: the default one")
    p.add_argument("--suite", choices=sorted(SUITES), default="short",
                   help="without --data: the fidelity suite to run (short: about 5-10 min on 2 cores; long adds 60 s clips)")
    p.add_argument("--context-seconds", type=float, default=None,
                   help="the suite's still, revisit and motion_ctx clips and the collision episodes start with a look-around of "
                        "this length, given to the model as a clean context clip (0: the first frame alone; 4: a full "
                        "turn; default: the env's, NavConfig.context_seconds)")
    p.add_argument("--data-root", type=Path, default=Path("outputs/heldout"),
                   help="folder of the suite's held-out sets (written resumably, clip by clip)")
    p.add_argument("--data", type=Path, default=None, help="score this one held-out dataset folder instead of the suite")
    p.add_argument("--clips", type=int, default=4, help="held-out clips")
    p.add_argument("--seconds", type=float, default=60.0, help="clip length (seconds at 16 fps)")
    p.add_argument("--seed", type=int, default=2000, help="dataset seed of the held-out clips")
    p.add_argument("--horizons", type=float, nargs="+", default=None,
                   help="seconds after the first frame (default: those of 0.5 2 10 60 within --seconds)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="how the backbone computes: nvfp4 / int8 run a low-bit backbone (emulated on CPU), the "
                        "autoencoder in float32")
    p.add_argument("--memory", action="store_true",
                   help="suite: also score the model guided by a scene memory of what each clip's start showed "
                        "(composited into every chunk and committed, as Nav-v0 does by default; world_model.memory), "
                        "as '+mem' rows; the collision episodes (and --collisions) then run guided too")
    p.add_argument("--out", type=Path, default=Path("outputs/fidelity"), help="folder for report.json and pictures")
    p.add_argument("--compare", type=Path, nargs=2, metavar=("REPORT_A", "REPORT_B"),
                   help="print two suite reports (report.json) side by side, B - A per set and horizon, and exit")
    p.add_argument("--autoencoder", action="store_true",
                   help="evaluate the autoencoder alone: reconstruction PSNR / SSIM of the clips")
    p.add_argument("--collisions", action="store_true",
                   help="only the collision episodes: predicted vs exact collisions (--clips, --seconds, --seed)")
    p.add_argument("--collision-points", type=int, nargs="+", default=None, metavar="M",
                   help="with --collisions: thresholds to score (depth points within the camera radius; default: "
                        "the env's)")
    p.add_argument("--collision-memory", nargs="+", default=["on"], choices=["on", "off"],
                   help="with --collisions: keep the surfaces known at reset (the start's exact depth) for the "
                        "episode, as the env does (on), or predict from the last chunk's depth alone (off); both: "
                        "side by side")
    p.add_argument("--collision-depth", choices=("generated", "clean", "exact", "none"), default="generated",
                   help="with --collisions: predict from the generated depth (the env's), the depth head on the exact "
                        "frames' latents (the head alone), the exact depth (the rule alone) or no depth of the last "
                        "chunk (the memory alone)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (process-wide; 1 by default, as the envs below 16: with torch's default the "
                        "suite ran about 3x slower on a busy 2-core machine)")
    args = p.parse_args(argv)
    if args.compare:
        try:
            reports = [json.loads(f.read_text()) for f in args.compare]
            print(compare_reports(*reports, names=("A", "B")))
        except (OSError, ValueError, KeyError) as exc:
            p.error(f"argument --compare: {type(exc).__name__}: {exc}")
        return 0
    if args.context_seconds is None:
        from sanawm_gym.envs.world_model_nav import NavConfig

        args.context_seconds = NavConfig.context_seconds
    if not 0 <= args.context_seconds <= 30:
        p.error(f"argument --context-seconds: must be in [0, 30] seconds, got {args.context_seconds:g}")
    if args.clips < 1:
        p.error(f"argument --clips: must be an integer >= 1, got {args.clips}")
    if args.threads < 1:
        p.error(f"argument --threads: must be an integer >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if not 0 < args.seconds <= 600:
        p.error(f"argument --seconds: must be in (0, 600] seconds, got {args.seconds:g}")
    if args.seed < 0:
        p.error(f"argument --seed: must be an integer >= 0, got {args.seed}")
    if args.steps is not None and args.steps < 1:
        p.error(f"argument --steps: must be an integer >= 1, got {args.steps}")
    if args.horizons is None:
        args.horizons = [h for h in (0.5, 2.0, 10.0, 60.0) if h <= args.seconds] or [args.seconds]
    if any(not 0 < h <= args.seconds for h in args.horizons):
        p.error(f"argument --horizons: each must be in (0, --seconds={args.seconds:g}], got {args.horizons}")
    frames = 1 + 4 * max(1, int(round(args.seconds * FPS / 4)))
    if args.data is None and args.autoencoder:
        args.data = args.data_root / f"autoencoder-{args.clips}x{frames}-seed{args.seed}"
    if args.autoencoder:
        return _evaluate_autoencoder(args, frames)
    wm = WorldModel.from_pretrained(args.model)
    if args.collisions:
        return _evaluate_collisions(args, wm)
    if args.data is None:
        t0 = time.perf_counter()
        report = run_suite(wm, args.suite, args.data_root, args.out, args.steps, context_seconds=args.context_seconds,
                           precision=args.precision, memory=args.memory)
        print(format_report(report))
        print(f"{time.perf_counter() - t0:.0f} s; per-clip values in {args.out / 'report.json'}, pictures in "
              f"{args.out}/<set>/")
        return 0
    H, W = wm.image_hw
    try:
        write_dataset(args.data, args.clips, frames, height=H, width=W, seed=args.seed, progress=True)
    except ValueError as exc:  # a folder holding another set: say so, and how to resume
        p.error(f"argument --data: {exc}")
    heldout = PosedVideoDataset(args.data, frames, random_crop=False)
    t0 = time.perf_counter()
    with autocast(args.precision):
        report = evaluate_rollouts(wm.backbone_for(args.precision), wm.autoencoder, heldout, wm.image_hw,
                                   args.steps or wm.sample_steps, wm.sample_shift, tuple(args.horizons),
                                   batch_size=args.clips, picture=args.out / "rollout.png")
    seconds = time.perf_counter() - t0
    save_horizon_plot(report, args.out / "psnr-horizon.png")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({**report, "clips": args.clips, "frames": frames,
                                                      "seed": args.seed, "seconds": seconds}, indent=1))
    steps = args.steps or wm.sample_steps
    print(f"{args.clips} held-out clips of {frames} frames (seed {args.seed}), {steps} sampler step{'s' * (steps != 1)}, "
          f"generated in {seconds:.0f} s; PSNR (dB) against the exact reference render:")
    print(f"{'horizon':>8} {'model':>7} {'camera off':>11} {'first frame':>12} {'vs best baseline':>17} "
          f"{'median clip':>12} {'clips ahead':>12}")
    for h in args.horizons:
        row = [report.get(f"psnr_{n}_{h:g}s") for n in ("model", "no_camera", "first_frame")]
        if row[0] is None:
            continue
        margins = clip_margins(report, h)
        print(f"{h:>7g}s {row[0]:>7.2f} {row[1]:>11.2f} {row[2]:>12.2f} {row[0] - max(row[1], row[2]):>+16.2f} "
              f"{np.median(margins):>+12.2f} {f'{int((margins > 0).sum())}/{len(margins)}':>12}")
    print("vs best baseline: the model's mean minus the better baseline's mean. Per clip, the model minus the better "
          "baseline on that clip: its median, and on how many clips it is positive. A clip whose camera is back at "
          f"its start pose gives the first frame an exact match (capped at {PSNR_CAP:.2f} dB), which moves the means "
          "a lot.")
    print(f"pictures and report in {args.out}")
    return 0


def clip_margins(report: dict, horizon_s: float) -> np.ndarray:
    """``(N,)`` per clip at ``horizon_s``: the model's PSNR minus the better of the two
    baselines' on that clip (the ``clips_*`` lists of
    :func:`world_model.scoring.evaluate_rollouts`)."""
    model, camera_off, first = (np.asarray(report[f"clips_{n}_{horizon_s:g}s"]) for n in
                                ("model", "no_camera", "first_frame"))
    return model - np.maximum(camera_off, first)


def _evaluate_collisions(args: argparse.Namespace, wm: WorldModel) -> int:
    from sanawm_gym.collision_eval import evaluate_collisions, format_collisions
    from sanawm_gym.envs.world_model_nav import NavConfig

    points = tuple(args.collision_points or (NavConfig.collision_points,))
    if min(points) < 1:
        raise SystemExit(f"error: argument --collision-points: each must be an integer >= 1, got {list(points)}")
    steps = max(1, int(round(args.seconds * FPS / 4)))
    t0 = time.perf_counter()
    try:
        report = evaluate_collisions(wm, args.clips, steps, args.seed, points, args.precision,
                                     depth_source=args.collision_depth,
                                     memory=tuple(m == "on" for m in args.collision_memory),
                                     context_seconds=args.context_seconds, scene_memory=args.memory)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    report["seconds_taken"] = time.perf_counter() - t0
    print(format_collisions(report))
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(args.out / "report.json")
    print(f"{report['seconds_taken']:.0f} s; report in {args.out / 'report.json'}")
    return 0


def _evaluate_autoencoder(args: argparse.Namespace, frames: int) -> int:
    """``--autoencoder``: ``--model`` may be a world-model folder or an autoencoder folder
    (what the autoencoder stage exports); the clips are the package's 64x64 frames."""
    ae = load_autoencoder(component_folder(args.model, "autoencoder"))
    write_dataset(args.data, args.clips, frames, seed=args.seed, progress=True)
    t0 = time.perf_counter()
    metrics = evaluate_reconstruction(ae, PosedVideoDataset(args.data, frames, random_crop=False),
                                      picture=args.out / "recon.png")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({**metrics, "clips": args.clips, "frames": frames,
                                                      "seed": args.seed}, indent=1))
    print(f"autoencoder, {args.clips} held-out clips of {frames} frames (seed {args.seed}): "
          f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, first frame {metrics['psnr_first_frame']:.2f} "
          f"dB, worst clip {metrics['psnr_worst_clip']:.2f} dB ({time.perf_counter() - t0:.0f} s); "
          f"picture in {args.out / 'recon.png'}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())
