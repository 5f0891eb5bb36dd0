"""The ``sanawm-gym`` command line.

``sanawm-gym demo``          a goal-seeking episode, written as a video (the README's main job)
``sanawm-gym eval-policy``   success rate and SPL of the scripted policy over seeded episodes
``sanawm-gym fidelity``      a world-model checkpoint's PSNR against the exact render, by horizon
``sanawm-gym bench``         renderer and env throughput, eager vs compiled side by side
``sanawm-gym dataset``       write a posed-video training set (the reference world's renders)
``sanawm-gym record``        a policy's steps logged to Rerun (``.rrd``, live viewer or web viewer) and an mp4

``sanawm-gym COMMAND --help`` lists a command's options. A bad argument (an unknown env id,
a count below 1, ...) exits with status 2 and one line naming the argument and what it
accepts; ``eval-policy`` scores the scripted policy, ``fidelity`` scores a model (the
former ``eval`` command is ``eval-policy``).
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
DEMO_ENV = "SanaWM/Nav-v0"
"""The main job's env (``make demo``): imagination, on the shipped world model."""

PASS_THROUGH = {"dataset": "sanawm_gym.dataset", "fidelity": "sanawm_gym.fidelity"}
"""Commands whose module parses its own arguments: ``sanawm-gym NAME ARGS`` runs
``module.main(ARGS)`` (its ``--help`` says ``usage: sanawm-gym NAME``)."""


# ------------------------------------------------------------------------ argument types
def env_ids() -> list[str]:
    """The registered ``SanaWM/*`` env ids, the values ``--env`` accepts."""
    import gymnasium as gym

    import sanawm_gym  # noqa: F401  (registers the ids)

    return sorted(env_id for env_id in gym.registry if env_id.startswith("SanaWM/"))


def _imagined(env_id: str) -> bool:
    """Whether ``env_id`` is a world-model env (``SanaWM/Nav*``)."""
    return env_id.split("/")[-1].startswith("Nav")


def int_in(low: int, high: int | None = None, even: bool = False):
    """An argparse ``type`` for integers in ``[low, high]`` (even ones if ``even``); a value
    outside gives argparse's one-line error naming the option and this range, status 2."""
    accepted = f"an {'even ' if even else ''}integer " + (f">= {low}" if high is None else f"in [{low}, {high}]")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}") from None
        if value < low or (high is not None and value > high) or (even and value % 2):
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {value}")
        return value

    parse.__name__ = accepted
    return parse


COUNT = int_in(1)
SEED = int_in(0)
PORT = int_in(1, 65535)


def THREADS(text: str) -> str:  # noqa: N802 (an argparse type, named like the others)
    """``auto`` or an integer >= 1 (kept as text; the bench resolves ``auto`` per batch size)."""
    return text if text == "auto" else str(COUNT(text))


THREADS.__name__ = "'auto' or an integer >= 1"


def _check_model(args: argparse.Namespace, used: bool, user: str) -> None:
    """``--model``: a folder, and only where a world model is used."""
    if not args.model:
        return
    if not used:
        args.parser.error(f"argument --model: only {user} uses a world model; drop --model")
    from world_model.world_model import PACKAGED_MODELS, packaged_model

    for model in ([args.model] if isinstance(args.model, str) else args.model):
        if packaged_model(model) is None and not Path(model).is_dir():
            args.parser.error(f"argument --model: {model!r} is neither a folder (a world-model checkpoint folder with "
                              f"autoencoder/ and backbone/) nor a packaged model ({', '.join(PACKAGED_MODELS)}); "
                              f"leave --model out for the default")


def _load_model(args: argparse.Namespace, model: str | None = None):
    """The world model ``model`` (default: ``--model``; the default one if empty): a folder or
    a packaged model's name; a bad checkpoint is an argument error, not a traceback."""
    from sanawm_gym.envs.world_model_nav import load_world_model
    from world_model.checkpoint import CheckpointError

    try:
        return load_world_model((model if model is not None else args.model) or None)
    except CheckpointError as err:
        args.parser.error(f"argument --model: {err}")


def _make_env(env_id: str, **kwargs):
    import gymnasium as gym

    import sanawm_gym  # noqa: F401  (registers the ids)

    return gym.make(env_id, **kwargs)


def _action_mode(env) -> str:
    return "planar" if env.action_space.shape == (2,) else "6dof"


# ------------------------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    """A goal-seeking episode -> ``demo.rrd`` and a video. For a world-model env the video
    shows the imagined frames beside the exact reference render of the same poses (and a
    top-down map); for a reference env, the exact render beside the 64x64 observation."""
    from tqdm import tqdm

    from policies import GoalSeekingPolicy
    from world_model.geometry import intrinsics_from_fov
    from sanawm_gym.recording import RerunRecorder
    from sanawm_gym.reference_world import render
    from sanawm_gym.reference_world.topdown import TopDownMap
    from sanawm_gym.video import upscale, write_video

    imagined_env = _imagined(args.env)
    _check_model(args, imagined_env, "a world-model env (SanaWM/Nav-v0, SanaWM/NavPlanar-v0)")
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        args.parser.error(f"argument --out-dir: {str(out_dir)!r} is a file, not a folder")
    kwargs = {"obs_mode": "chunk", "reference_frames": True, "timing_info": True} if imagined_env else {}
    if imagined_env and args.model:
        _load_model(args)  # a bad checkpoint is an argument error; the env finds it in load_world_model's cache
        kwargs["model"] = args.model
    env = RerunRecorder(_make_env(args.env, **kwargs), "rrd", path=out_dir / "demo.rrd", application_id="sanawm_gym_demo")
    policy = GoalSeekingPolicy(_action_mode(env), seed=args.seed)
    obs, info = env.reset(seed=args.seed)
    base = env.unwrapped
    size = args.video_size
    K_video = intrinsics_from_fov(90.0, size, size).numpy()
    topdown = TopDownMap(base.scene, height=float(info["pose"][2, 3]), size=size)
    path = [info["pose"][:3, 3]]

    def panels(poses: np.ndarray, observed: np.ndarray) -> list[np.ndarray]:
        exact = render(base.scene, poses, K_video, size, size).rgb  # the reference world at the same poses
        observed = observed.reshape(-1, *observed.shape[-3:])
        out = []
        for k, pose in enumerate(poses):
            path.append(pose[:3, 3])
            seen = upscale(observed[min(k, len(observed) - 1)], max(1, size // observed.shape[1]))
            m = topdown.draw(np.asarray(path)[:, :2], info["goal"][:2], float(np.arctan2(pose[1, 2], pose[0, 2])))
            out.append(np.concatenate([_fit(seen, size), exact[k], m], 1))
        return out

    frames = panels(info["pose"][None], obs["rgb"][-1:] if imagined_env else obs["rgb"][None])
    step_seconds, generation_seconds, steps = 0.0, 0.0, 0
    limit = env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else 200
    with tqdm(total=limit, desc="demo", unit="step", disable=args.quiet) as bar:
        while True:
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, info = env.step(policy.act(obs))
            step_seconds += time.perf_counter() - t0
            generation_seconds += info.get("generation_time_s", 0.0)
            steps += 1
            frames += panels(info["chunk_poses"], obs["rgb"])
            bar.update(1)
            bar.set_postfix(distance=f"{info['distance']:.2f}")
            if terminated or truncated:
                break
    env.close()
    fps = base.core.motion.fps if imagined_env else base.motion.fps
    video = write_video(out_dir / "demo.mp4", frames, fps=fps)
    where = ("Euclidean on the integrated pose; collisions predicted" if base.core.collisions else
             "Euclidean on the integrated pose; collisions off") if imagined_env else "Euclidean, camera centre to goal"
    print(f"{args.env} seed={args.seed}: success={info['success']} distance_to_goal={info['distance']:.2f} m ({where}) "
          f"steps={steps} path_length={info['path_length']:.2f} m env_steps_per_s={steps / max(step_seconds, 1e-9):.1f}"
          + (f" generation_s_per_step={generation_seconds / steps:.3f}" if imagined_env else ""))
    left = "imagined (world model)" if imagined_env else "64x64 observation"
    print(f"video: {video} ({len(frames)} frames at {fps:g} fps: {left} | exact reference render | top-down map)")
    print(f"rerun: {out_dir / 'demo.rrd'} (open with `rerun {out_dir / 'demo.rrd'}`)")
    return 0


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    """Pad or crop ``img`` to ``size x size`` (a panel of the demo video)."""
    out = np.full((size, size, 3), 255, np.uint8)
    h, w = min(size, img.shape[0]), min(size, img.shape[1])
    out[:h, :w] = img[:h, :w]
    return out


# ----------------------------------------------------------------------------- eval-policy
def cmd_eval_policy(args: argparse.Namespace) -> int:
    """Success rate and SPL of the scripted goal-seeking policy over seeded episodes."""
    from tqdm import tqdm

    from policies import GoalSeekingPolicy

    env = _make_env(args.env)
    mode = _action_mode(env)
    results = []
    for seed in tqdm(range(args.seed, args.seed + args.episodes), desc="eval-policy", unit="episode", disable=args.quiet):
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
    _check_model(args, args.target == "env", "`bench env`")
    if args.target == "env":
        return _bench_vector_env(args)
    import torch

    from world_model.geometry import intrinsics_from_fov, pose_from_yaw_pitch
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


RESETS = 3
"""Seeded resets timed per mode by ``bench env``."""


def _bench_vector_env(args: argparse.Namespace) -> int:
    """Frames/s of the batched world-model env at several batch sizes, side by side: every
    ``--model`` (for example the default student beside ``teacher``) x every mode."""
    import gymnasium as gym
    import torch

    import sanawm_gym  # noqa: F401

    from sanawm_gym.envs.world_model_nav import inference_threads
    from world_model.world_model import has_native_bf16, resolve_precision

    names = args.model or ["default"]
    models = {name: _load_model(args, name) for name in names}
    from sanawm_gym.envs.world_model_nav import NavConfig

    contexts = args.context_seconds or [NavConfig().context_seconds]
    modes = [(p, c == "on", t, w == "on", s, m == "on") for m in args.scene_memory for s in contexts
             for w in args.collisions for t in args.threads for c in args.compile for p in args.precision]
    passes = ", ".join(f"{name}: {m.sample_steps} sampler step{'s' * (m.sample_steps > 1)} + 1 commit pass"
                       for name, m in models.items())
    print(f"SanaWM/Nav-v0 native vector env, backbone passes per step ({passes}), "
          f"{next(iter(models.values())).config.frames_per_latent} frames per step; precision 'auto' is "
          f"{resolve_precision('auto')} here (bf16 matmul in hardware, AMX or AVX-512 BF16: {'yes' if has_native_bf16() else 'no'}); "
          f"threads 'auto': 1 below 16 envs, else all CPUs; x N=1 compares within one model and mode, x base with "
          f"the first model and mode at the same N; reset: ms per seeded reset of all N envs (the look-around "
          f"context rendered and committed), the mean of {RESETS}")
    width = max(5, *(len(n) for n in names))
    print(f"{'envs':>5} {'model':>{width}} {'precision':>9} {'compile':>7} {'threads':>7} {'collide':>7} "
          f"{'context':>7} {'memory':>6} {'steps/s':>9} {'frames/s':>9} {'x N=1':>7} {'x base':>7} {'reset ms':>9}")
    first_n: dict[tuple, float] = {}
    for n in args.num_envs:
        base = None
        for name, model in models.items():
            for precision, compiled, threads, walls, context, held in modes:
                chosen = inference_threads(n, None if threads == "auto" else int(threads))
                venv = gym.make_vec("SanaWM/Nav-v0", num_envs=n, vectorization_mode="vector_entry_point", model=model,
                                    precision=precision, compile=compiled, threads=chosen,
                                    collisions=walls and model.has_depth, context_seconds=context,
                                    scene_memory=held and model.has_depth)
                venv.reset(seed=args.seed + RESETS)  # untimed: the first reset's one-time costs
                t0 = time.perf_counter()
                for i in range(RESETS):
                    venv.reset(seed=args.seed + RESETS - 1 - i)  # the last one: args.seed, as before
                reset_ms = (time.perf_counter() - t0) / RESETS * 1e3
                actions = np.random.default_rng(args.seed).uniform(-1, 1, (args.env_steps + 1, n, 6)).astype(np.float32)
                venv.step(actions[0])  # warm-up (and, compiled, the build)
                t0 = time.perf_counter()
                for a in actions[1:]:
                    venv.step(a)
                dt = time.perf_counter() - t0
                frames = n * args.env_steps * model.config.frames_per_latent / dt
                mode = (name, precision, compiled, threads, walls, context, held)
                first_n.setdefault(mode, frames)
                base = base or frames
                shown = venv.unwrapped.core.precision + ("*" if precision == "auto" else "")
                predicted = "on" if venv.unwrapped.core.collisions else "off"
                print(f"{n:>5} {name:>{width}} {shown:>9} {'on' if compiled else 'off':>7} {torch.get_num_threads():>7} "
                      f"{predicted:>7} {venv.unwrapped.core.config.context_seconds:>6g}s "
                      f"{'on' if venv.unwrapped.core.scene_memory else 'off':>6} {n * args.env_steps / dt:>9.1f} "
                      f"{frames:>9.1f} {frames / first_n[mode]:>6.1f}x {frames / base:>6.2f}x {reset_ms:>9.1f}",
                      flush=True)
                venv.close()
    if "auto" in args.precision:
        print("* chosen by precision='auto'")
    return 0


# ------------------------------------------------------------------------ dataset, fidelity
def run_pass_through(command: str, argv: list[str]) -> int:
    """``sanawm-gym dataset ...`` / ``sanawm-gym fidelity ...``: the module's own ``main``."""
    import importlib

    return importlib.import_module(PASS_THROUGH[command]).main(argv) or 0


# ---------------------------------------------------------------------------------- record
def cmd_record(args: argparse.Namespace) -> int:
    """Run a policy for ``--steps`` steps through :class:`RerunRecorder`; write the .rrd and an mp4."""
    from policies import GoalSeekingPolicy
    from sanawm_gym.recording import RerunRecorder
    from sanawm_gym.video import upscale, write_video

    if args.out.is_dir():
        args.parser.error(f"argument --out: {str(args.out)!r} is a directory; give a .rrd file path such as "
                          f"{str(args.out / 'record.rrd')!r}")
    if args.out.suffix.lower() != ".rrd":
        args.parser.error(f"argument --out: must end in .rrd, got {str(args.out)!r}")
    video = args.video or args.out.with_suffix(".mp4")
    if video.suffix.lower() not in (".mp4", ".gif"):
        args.parser.error(f"argument --video: must end in .mp4 or .gif, got {str(video)!r}")
    mode = "serve" if args.serve else "spawn" if args.spawn else "rrd"
    inner = _make_env(args.env)
    try:
        env = RerunRecorder(inner, mode, path=args.out, application_id="sanawm_gym_record", grpc_port=args.grpc_port,
                            web_port=args.web_port)
    except ValueError as err:  # the recorder's checks of --out and the ports
        inner.close()
        args.parser.error(str(err))
    policy = GoalSeekingPolicy(_action_mode(env), seed=args.seed) if args.policy == "goal-seeking" else None
    env.action_space.seed(args.seed)

    def act(obs):
        return policy.act(obs) if policy is not None else env.action_space.sample()

    if env.url:
        print(f"viewer: {env.url}", flush=True)

    obs, _ = env.reset(seed=args.seed)
    frames, episodes, finished, steps = [obs["rgb"]], 1, 0, 0
    for steps in range(1, args.steps + 1):
        obs, _, terminated, truncated, _ = env.step(act(obs))
        frames.append(obs["rgb"])
        if terminated or truncated:
            finished += 1
            if steps < args.steps:
                obs, _ = env.reset()
                frames.append(obs["rgb"])
                episodes += 1
                if policy is not None:
                    policy.reset()
    if mode != "serve":
        env.close()  # flushes and finishes the .rrd

    h, w = frames[0].shape[:2]
    factor = max(1, -(-256 // max(h, w)))  # at least 256 pixels on the long side
    factor *= 2 if (h * factor) % 2 or (w * factor) % 2 else 1  # H.264 needs even sizes
    seconds_per_step = env.logger.seconds_per_step
    out_video = write_video(video, (upscale(f, factor) for f in frames), fps=1.0 / seconds_per_step)
    print(f"{args.env} {args.policy} policy, seed {args.seed}: {steps} steps, {episodes} episodes ({finished} finished)")
    print(f"rerun: {args.out} (view with `rerun {args.out}`)")
    print(f"video: {out_video} ({len(frames)} frames, resets included, at {1.0 / seconds_per_step:g} fps, {h * factor}x{w * factor})")
    if mode == "serve":  # closing the recorder would stop the data server the web viewer reads
        print(f"serving the web viewer at {env.url}; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        env.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sanawm-gym", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ids = env_ids()
    env_help = "registered env id: " + ", ".join(ids)

    d = sub.add_parser("demo", help="run a goal-seeking episode; write demo.rrd and demo.mp4",
                       description="One goal-seeking episode -> OUT_DIR/demo.rrd and OUT_DIR/demo.mp4 "
                                   "(the agent's frames | the exact reference render | a top-down map).")
    d.add_argument("--env", default=DEMO_ENV, choices=ids, metavar="ID", help=f"{env_help} (default: %(default)s)")
    d.add_argument("--model", default="", help="world-model checkpoint folder or packaged model (default, teacher); "
                                               "world-model envs only")
    d.add_argument("--seed", type=SEED, default=1, help="episode seed, >= 0 (default: %(default)s)")
    d.add_argument("--out-dir", type=Path, default=Path("outputs"), help="folder for demo.rrd and demo.mp4")
    d.add_argument("--video-size", type=int_in(2, even=True), default=256,
                   help="side of each video panel in pixels, even (H.264), >= 2 (default: %(default)s)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo, parser=d)

    e = sub.add_parser("eval-policy", help="success rate and SPL of the scripted policy (`fidelity` scores a model)",
                       description="Success rate, SPL (on the geodesic start distance) and mean final distance of "
                                   "the scripted goal-seeking policy over seeded episodes. To score a world model "
                                   "against the exact render, see `sanawm-gym fidelity`.")
    e.add_argument("--env", default=DEFAULT_ENV, choices=ids, metavar="ID", help=f"{env_help} (default: %(default)s)")
    e.add_argument("--episodes", type=COUNT, default=50, help="episodes, >= 1 (default: %(default)s)")
    e.add_argument("--seed", type=SEED, default=0, help="first episode seed, >= 0 (default: %(default)s)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval_policy, parser=e)

    b = sub.add_parser("bench", help="renderer and env throughput; `bench env`: the batched world-model env")
    b.add_argument("target", nargs="?", default="render", choices=["render", "env"], help="what to benchmark")
    b.add_argument("--num-envs", type=COUNT, nargs="+", default=[1, 4, 16, 64], help="`bench env`: batch sizes, >= 1")
    b.add_argument("--model", nargs="+", default=[], help="`bench env`: world-model checkpoint folders or packaged "
                   "models (default, teacher), measured side by side (default: the default one)")
    b.add_argument("--precision", nargs="+", default=["float32", "bfloat16"], choices=["auto", "float32", "bfloat16"],
                   help="`bench env`: precisions to measure side by side (x N=1 is within one precision); 'auto' "
                        "is what the env picks by default (bfloat16 only with bf16 matmul in hardware: AMX or AVX-512 BF16)")
    b.add_argument("--threads", nargs="+", default=["auto"], type=THREADS,
                   help="`bench env`: torch threads to measure side by side: 'auto' (the env's default: 1 below 16 "
                        "envs, else all CPUs) or integers >= 1")
    b.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"],
                   help="`bench env`: eager (off) and/or torch.compile'd (on) model passes, side by side; "
                        "`on` builds the compiled passes once per batch size and precision (untimed)")
    b.add_argument("--collisions", nargs="+", default=["off"], choices=["off", "on"],
                   help="`bench env`: collisions predicted from the generated depth (on: where the model has a "
                        "depth head) and/or off, side by side")
    b.add_argument("--context-seconds", type=float, nargs="+", default=None, metavar="S",
                   help="`bench env`: look-around context at each seeded reset, in seconds (0: the first frame "
                        "alone), side by side (default: the env's)")
    b.add_argument("--scene-memory", nargs="+", default=["off"], choices=["off", "on"],
                   help="`bench env`: the scene memory (NavConfig.scene_memory: what the reset showed, composited "
                        "into every chunk; on where the model has a depth head) and/or off, side by side")
    b.add_argument("--sizes", type=COUNT, nargs="+", default=[64, 128], help="render sizes in pixels, >= 1")
    b.add_argument("--batch", type=COUNT, default=64, help="cameras per render call, >= 1")
    b.add_argument("--repeats", type=COUNT, default=5, help="timed render calls per size, >= 1")
    b.add_argument("--env-steps", type=COUNT, default=200, help="timed env steps, >= 1 (`bench env`: per batch size)")
    b.add_argument("--seed", type=SEED, default=0, help="scene and action seed, >= 0")
    b.set_defaults(func=cmd_bench, parser=b)

    r = sub.add_parser("record", help="log a policy's steps to Rerun (.rrd, --spawn, --serve) and write an mp4")
    r.add_argument("--env", default=DEFAULT_ENV, choices=ids, metavar="ID", help=f"{env_help} (default: %(default)s)")
    r.add_argument("--policy", choices=["goal-seeking", "random"], default="goal-seeking")
    r.add_argument("--steps", type=COUNT, default=200, help="env steps to record, >= 1 (resets on episode end)")
    r.add_argument("--seed", type=SEED, default=0, help="seed of the first episode and of the policy, >= 0")
    r.add_argument("--out", type=Path, default=Path("outputs/record.rrd"), help=".rrd file to write")
    r.add_argument("--video", type=Path, default=None, help=".mp4 (or .gif) of the observations (default: beside --out)")
    viewer = r.add_mutually_exclusive_group()
    viewer.add_argument("--serve", action="store_true", help="also serve a web viewer on localhost (--web-port)")
    viewer.add_argument("--spawn", action="store_true", help="also stream to a spawned native viewer")
    r.add_argument("--web-port", type=PORT, default=9090, help="--serve: port of the web viewer, in [1, 65535]")
    r.add_argument("--grpc-port", type=PORT, default=9876, help="--serve / --spawn: port of the data server, in [1, 65535]")
    r.set_defaults(func=cmd_record, parser=r)

    # parsed by their own modules (main() hands them the rest of the command line); listed here for --help
    sub.add_parser("dataset", help="write a posed-video dataset (see `sanawm-gym dataset --help`)", add_help=False)
    sub.add_parser("fidelity", help="score a world-model checkpoint against the exact render "
                                    "(see `sanawm-gym fidelity --help`)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if argv and argv[0] in PASS_THROUGH:
        return run_pass_through(argv[0], argv[1:])
    parser = build_parser()
    if argv and argv[0] == "eval":
        parser.error("the command `eval` is now `eval-policy` (the scripted policy's success rate and SPL); "
                     "`sanawm-gym fidelity` scores a world model")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
