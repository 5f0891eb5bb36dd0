"""The ``sanawm-gym`` command line.

``sanawm-gym demo``      a goal-seeking episode, written as a video (the README's main job)
``sanawm-gym eval``      success rate and SPL of the scripted policy over seeded episodes
``sanawm-gym bench``     renderer and env throughput, eager vs compiled side by side
``sanawm-gym dataset``   write a posed-video training set (``python -m world_model.data``)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("sanawm_gym")

DEFAULT_ENV = "SanaWM/ReferenceNav-v0"


def _make_env(env_id: str, **kwargs):
    import gymnasium as gym

    import sanawm_gym  # noqa: F401  (registers the ids)

    return gym.make(env_id, **kwargs)


def _action_mode(env) -> str:
    return "planar" if env.action_space.shape == (2,) else "6dof"


# ------------------------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from policies import GoalSeekingPolicy
    from sanawm_gym.geometry import intrinsics_from_fov
    from sanawm_gym.reference_world import render
    from sanawm_gym.reference_world.topdown import TopDownMap
    from sanawm_gym.video import upscale, write_video

    env = _make_env(args.env)
    policy = GoalSeekingPolicy(_action_mode(env), seed=args.seed)
    obs, info = env.reset(seed=args.seed)
    base = env.unwrapped
    size = args.video_size
    K_video = intrinsics_from_fov(90.0, size, size).numpy()
    topdown = TopDownMap(base.scene, height=float(info["pose"][2, 3]), size=size)
    path = [info["pose"][:3, 3]]

    def panel(poses: np.ndarray) -> list[np.ndarray]:
        views = render(base.scene, poses, K_video, size, size).rgb
        obs_big = upscale(obs["rgb"], max(1, size // obs["rgb"].shape[0]))
        out = []
        for view, pose in zip(views, poses):
            path.append(pose[:3, 3])
            heading = float(np.arctan2(pose[1, 2], pose[0, 2]))
            m = topdown.draw(np.asarray(path)[:, :2], info["goal"][:2], heading)
            out.append(np.concatenate([view, _fit(obs_big, size), m], 1))
        return out

    frames = panel(info["pose"][None])
    step_seconds, steps = 0.0, 0
    limit = env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else 200
    with tqdm(total=limit, desc="demo", unit="step", disable=args.quiet) as bar:
        while True:
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, info = env.step(policy.act(obs))
            step_seconds += time.perf_counter() - t0
            steps += 1
            frames += panel(info["chunk_poses"])
            bar.update(1)
            bar.set_postfix(distance=f"{info['distance']:.2f}")
            if terminated or truncated:
                break
    fps = base.motion.fps
    out = write_video(args.out, frames, fps=fps)
    print(
        f"{args.env} seed={args.seed}: success={info['success']} distance_to_goal={info['distance']:.2f} m "
        f"(Euclidean, camera centre to goal) steps={steps} path_length={info['path_length']:.2f} m "
        f"env_steps_per_s={steps / max(step_seconds, 1e-9):.1f}"
    )
    print(f"video: {out} ({len(frames)} frames at {fps:g} fps: exact render | 64x64 observation | top-down map)")
    return 0


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    """Pad or crop ``img`` to ``size x size`` (the observation panel of the demo video)."""
    out = np.full((size, size, 3), 255, np.uint8)
    h, w = min(size, img.shape[0]), min(size, img.shape[1])
    out[:h, :w] = img[:h, :w]
    return out


# ------------------------------------------------------------------------------------ eval
def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from policies import GoalSeekingPolicy

    env = _make_env(args.env)
    mode = _action_mode(env)
    results = []
    for seed in tqdm(range(args.seed, args.seed + args.episodes), desc="eval", unit="episode", disable=args.quiet):
        policy = GoalSeekingPolicy(mode, seed=seed)
        obs, info = env.reset(seed=seed)
        d0 = info["geodesic_distance"]
        while True:
            obs, _, terminated, truncated, info = env.step(policy.act(obs))
            if terminated or truncated:
                break
        spl = info["success"] * d0 / max(d0, info["path_length"])
        results.append((info["success"], spl, info["distance"]))
    r = np.asarray(results, dtype=np.float64)
    print(
        f"{args.env} goal-seeking policy over {args.episodes} episodes (seeds {args.seed}..{args.seed + args.episodes - 1}): "
        f"success={r[:, 0].mean():.2f} SPL={r[:, 1].mean():.2f} (geodesic d0) "
        f"mean_final_distance={r[:, 2].mean():.2f} m"
    )
    return 0


# ----------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from sanawm_gym.geometry import intrinsics_from_fov, pose_from_yaw_pitch
    from sanawm_gym.reference_world import generate_scene, render

    scene = generate_scene(args.seed)
    rng = np.random.default_rng(args.seed)
    n = args.batch
    pos = np.concatenate([rng.uniform(-2, 2, (n, 2)), rng.uniform(0.8, 1.6, (n, 1))], 1)
    c2w = np.stack([pose_from_yaw_pitch(p, y, 0.1) for p, y in zip(pos, rng.uniform(-np.pi, np.pi, n))])
    print(f"render throughput, scene seed {args.seed}, batch of {n} cameras, {torch.get_num_threads()} threads")
    print(f"{'size':>9} {'eager f/s':>11} {'compiled f/s':>13} {'ratio':>7}")
    for size in args.sizes:
        K = intrinsics_from_fov(90.0, size, size).numpy()
        fps = {}
        for backend in ("eager", "compiled"):
            render(scene, c2w, K, size, size, backend=backend)  # warm-up (compiles once)
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                render(scene, c2w, K, size, size, backend=backend)
            fps[backend] = n * args.repeats / (time.perf_counter() - t0)
        print(f"{size:>4}x{size:<4} {fps['eager']:>11.0f} {fps['compiled']:>13.0f} {fps['compiled'] / fps['eager']:>6.1f}x")

    env = _make_env(DEFAULT_ENV)
    obs, _ = env.reset(seed=args.seed)
    env.step(env.action_space.sample())
    t0 = time.perf_counter()
    for _ in range(args.env_steps):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    dt = time.perf_counter() - t0
    print(f"{DEFAULT_ENV} (64x64, compiled renderer, collisions): {args.env_steps / dt:.0f} steps/s")
    return 0


# --------------------------------------------------------------------------------- dataset
def cmd_dataset(argv: list[str]) -> int:
    from world_model.data.writer import main as dataset_main

    return dataset_main(argv) or 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sanawm-gym", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run a goal-seeking episode and write a video")
    d.add_argument("--env", default=DEFAULT_ENV, help="registered env id")
    d.add_argument("--seed", type=int, default=1, help="episode seed")
    d.add_argument("--out", type=Path, default=Path("outputs/demo.mp4"), help="video file to write")
    d.add_argument("--video-size", type=int, default=256, help="side of each video panel (pixels, even)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("eval", help="success rate of the scripted policy")
    e.add_argument("--env", default=DEFAULT_ENV)
    e.add_argument("--episodes", type=int, default=50)
    e.add_argument("--seed", type=int, default=0, help="first episode seed")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="renderer and env throughput")
    b.add_argument("target", nargs="?", default="render", choices=["render"], help="what to benchmark")
    b.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    b.add_argument("--batch", type=int, default=64, help="cameras per render call")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--env-steps", type=int, default=200)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=cmd_bench)

    sub.add_parser("dataset", help="write a posed-video dataset (see `sanawm-gym dataset --help`)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if argv and argv[0] == "dataset":
        return cmd_dataset(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "video_size", 2) % 2:
        raise SystemExit("--video-size must be even (H.264 needs even frame sizes)")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
