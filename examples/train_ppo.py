"""Train PPO in imagination (SanaWM/Nav-v0), evaluate it in imagination and in the reference world.

    python examples/train_ppo.py                                   # shipped world model, defaults below
    python examples/train_ppo.py --num-envs 16 --total-timesteps 200000 --eval-episodes 50

The policy is Stable-Baselines3's PPO with a ``MultiInputPolicy`` (a CNN on the 64x64
frame, an MLP on the goal vector) trained on the native batched env through
:class:`sanawm_gym.envs.sb3.SB3VecEnv` (one world-model forward per step for all envs).
Evaluation runs the trained policy on the same seeded episodes in ``SanaWM/Nav-v0``
(imagination: distances on the integrated pose, collisions predicted) and in
``SanaWM/ReferenceNav-v0`` (the exactly rendered world, with collisions) and prints
success, SPL and final distance for both, the way model-based RL papers report transfer.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

import sanawm_gym  # noqa: F401  (registers the ids)


@dataclass
class Args:
    model: str = ""
    """World-model checkpoint folder (empty: the one shipped in the package)."""
    action_mode: str = "planar"
    """'planar' ([forward, yaw_rate]) or '6dof'."""
    num_envs: int = 8
    """Imagined episodes stepped together (one model forward per step)."""
    total_timesteps: int = 4096
    """PPO environment steps in all (over all envs)."""
    n_steps: int = 64
    """Steps per env between PPO updates."""
    batch_size: int = 128
    """PPO minibatch size."""
    learning_rate: float = 3e-4
    """Adam learning rate."""
    max_episode_steps: int = 100
    """Episode length limit in training and evaluation (steps of 0.25 s)."""
    eval_episodes: int = 10
    """Seeded episodes for each evaluation world."""
    seed: int = 0
    """Seed of PPO and of the training episodes; evaluation uses seeds 10_000 + i."""
    out: str = "outputs/ppo"
    """Folder for the trained policy and the evaluation results."""


CHOICES = {"action_mode": ["planar", "6dof"]}


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of the dataclass ``cls`` (a string literal
    right after the field's annotated assignment; Python keeps none of them at run time)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {node.target.id: inspect.cleandoc(doc.value.value) for node, doc in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)}


def parse(argv: list[str] | None = None) -> Args:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = field_docs(Args)
    for f in dataclasses.fields(Args):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       choices=CHOICES.get(f.name), help=docs[f.name].replace("%", "%%") + " (default: %(default)r)")
    return Args(**vars(p.parse_args(argv)))


def evaluate(policy, env_id: str, args: Args, **kwargs) -> dict[str, float]:
    env = gym.make(env_id, max_episode_steps=args.max_episode_steps, **kwargs)
    results = []
    for i in range(args.eval_episodes):
        obs, info = env.reset(seed=10_000 + i)
        d0 = info["geodesic_distance"]
        while True:
            action, _ = policy.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        spl = info["success"] * d0 / max(d0, info["path_length"]) if np.isfinite(d0) else 0.0
        results.append((info["success"], spl, info["distance"]))
    r = np.asarray(results, dtype=np.float64)
    return {"success": float(r[:, 0].mean()), "spl": float(r[:, 1].mean()), "final_distance": float(r[:, 2].mean())}


def main() -> None:
    args = parse()
    from stable_baselines3 import PPO

    from sanawm_gym.envs.sb3 import SB3VecEnv
    from sanawm_gym.envs.world_model_nav import load_world_model

    model = load_world_model(args.model or None)
    env_id = "SanaWM/NavPlanar-v0" if args.action_mode == "planar" else "SanaWM/Nav-v0"
    ref_id = "SanaWM/ReferenceNavPlanar-v0" if args.action_mode == "planar" else "SanaWM/ReferenceNav-v0"
    venv = SB3VecEnv.make(env_id, args.num_envs, model=model, max_episode_steps=args.max_episode_steps)
    venv.seed(args.seed)
    ppo = PPO("MultiInputPolicy", venv, n_steps=args.n_steps, batch_size=args.batch_size,
              learning_rate=args.learning_rate, seed=args.seed, verbose=1)
    t0 = time.perf_counter()
    ppo.learn(total_timesteps=args.total_timesteps, progress_bar=False)
    train_s = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ppo.save(out / "ppo_policy")
    H, W = model.image_hw
    results = {
        "imagination": evaluate(ppo, env_id, args, model=model),
        "reference_world": evaluate(ppo, ref_id, args, height=H, width=W),
        "train_seconds": train_s,
        "timesteps": args.total_timesteps,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    for world in ("imagination", "reference_world"):
        r = results[world]
        print(f"{world:>16}: success={r['success']:.2f} SPL={r['spl']:.2f} final_distance={r['final_distance']:.2f} m"
              + (" (Euclidean on the integrated pose)" if world == "imagination" else ""))
    print(f"trained {args.total_timesteps} steps in {train_s:.0f} s; policy and results in {out}")


if __name__ == "__main__":
    main()
