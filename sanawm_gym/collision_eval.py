"""Are imagination's predicted collisions right? Scored against the reference world's exact geometry.

Held-out driving episodes (a seeded scene and a free level start each, as the fidelity
suite draws them): even episodes drive **forward into** walls and objects (full speed, a
small constant turn), odd ones follow a **smooth random** policy (forward speed and turn
rate drift as Ornstein-Uhlenbeck processes). Each step:

1. the env's prediction: the proposed chunk swept against the surfaces the start showed
   (``memory``: the exact depth of the first frame and of the look-around context of
   ``context_seconds``, which the model is also given as its clean context, as the env
   does) and the points of the depth the model generated for the last chunk
   (:mod:`sanawm_gym.depth_collision`), for each ``min_points`` threshold asked for (one
   remembered point touches; the generated depth's take ``min_points``);
2. the truth: the same chunk swept against the scene (:func:`obstacle_sweep`);
3. both worlds move along the **true** motion (the reference's, stopped at walls), so the
   model imagines the poses the reference camera really takes and the two stay paired;
   the generated depth is scored against the exact render at the same poses.

Reported per threshold: recall and precision over all steps, and the recall of **first
contacts** (a collision right after a free step: the moment a policy has to be stopped; the
steps spent pressed against a wall afterwards are easy); the generated depth's absolute
relative error, overall and on near pixels (< 2 m), by horizon. The first step's depth is
the exact render, as in the env after a seeded reset.

``depth_source`` takes the prediction apart: ``generated`` (what the env does), ``clean``
(the depth head on the autoencoder's latents of the *exact* frames: the head alone, no
imagination), ``exact`` (the render's depth: the rule alone, which misses only what is
out of view) and ``none`` (no depth of the last chunk: the memory alone).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sanawm_gym.depth_collision import SurfaceMemory, depth_points, points_sweep, surface_reach
from sanawm_gym.kinematics import MotionConfig, action_to_twist, look_around, move_chunk, planar_to_body
from sanawm_gym.reference_world import render
from sanawm_gym.reference_world.collision import obstacle_sweep
from sanawm_gym.reference_world.trajectories import driving_actions
from world_model.memory import SceneMemory

__all__ = ["DEPTH_SOURCES", "evaluate_collisions", "format_collisions"]

DEPTH_SOURCES = ("generated", "clean", "exact", "none")
"""Where the predicting depth comes from (see the module docstring)."""

NEAR_M = 2.0
"""Reference depth below which a pixel counts as near (metres)."""


def _episode_start(seed: int, index: int):
    from sanawm_gym.fidelity_suite import _start  # the suite's held-out scene and free start

    return _start(seed, index)


@torch.no_grad()
def evaluate_collisions(wm, episodes: int = 16, steps: int = 40, seed: int = 5000,
                        min_points: tuple[int, ...] = (8,), precision: str = "float32",
                        horizons: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0), noise_seed: int = 0,
                        depth_source: str = "generated", memory: tuple[bool, ...] = (True,),
                        context_seconds: float = 0.0, scene_memory: bool = False) -> dict[str, Any]:
    """Run the episodes (see the module docstring) with the world model ``wm`` (it needs a
    depth head) and return the report: per threshold ``recall``, ``precision``,
    ``first_contact_recall`` and the counts; ``depth`` errors by horizon; per-episode labels.
    ``scene_memory``: the chunks are guided by a scene memory of the start, as the env's
    ``NavConfig.scene_memory`` guides them (:mod:`world_model.memory`)."""
    if not wm.has_depth:
        raise ValueError("the world model has no depth head: collisions cannot be predicted")
    if depth_source not in DEPTH_SOURCES:
        raise ValueError(f"depth_source must be one of {DEPTH_SOURCES}, got {depth_source!r}")
    motion = MotionConfig()
    H, W = wm.image_hw
    from world_model.geometry import intrinsics_from_fov

    K = intrinsics_from_fov(90.0, H, W).numpy()
    max_depth = float(wm.depth_head.config.max_depth)
    starts = [_episode_start(seed, i) for i in range(episodes)]
    scenes = [s for s, _ in starts]
    sweeps = [obstacle_sweep(s) for s in scenes]
    pose = np.stack([p for _, p in starts])  # (E, 4, 4)
    actions = np.stack([driving_actions(i, steps, seed) for i in range(episodes)])  # (E, T, 2)
    # the start as the env resets: a look-around context ending at the start pose (or the first frame alone)
    context = [look_around(p, context_seconds, motion.fps, motion.frames_per_step) for _, p in starts]
    shown = [render(s, c, K, H, W) for (s, _), c in zip(starts, context)]
    clip = np.stack([np.asarray(o.rgb) for o in shown])  # (E, 1 + K n, H, W, 3)
    known = np.minimum(np.nan_to_num(np.stack([np.asarray(o.depth) for o in shown]), posinf=max_depth), max_depth)
    first, k = clip[:, -1], motion.frames_per_step
    if clip.shape[1] >= k:  # the last step's depth and poses: the context's last K frames, as the env's
        depth, chunk_poses = known[:, -k:].astype(np.float32), np.stack(context)[:, -k:]
    else:
        depth, chunk_poses = np.repeat(known[:, -1:], k, 1).astype(np.float32), np.repeat(pose[:, None], k, 1)
    if clip.shape[1] > 1:
        _, state = wm.init_state(clip, np.stack(context), np.repeat(K[None], episodes, 0), precision)
    else:
        _, state = wm.init_state(first, pose, np.repeat(K[None], episodes, 0), precision)
    video = torch.from_numpy(clip).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
    _, encoder_cache = wm.autoencoder.encode_step(video)  # the clean source's streaming encoder
    g = torch.Generator().manual_seed(noise_seed)
    held, last = None, first
    if scene_memory:
        held = [SceneMemory() for _ in range(episodes)]
        for e in range(episodes):
            held[e].add(clip[e], known[e], context[e], K, max_depth)
    truth = np.zeros((episodes, steps), bool)
    labels = {(k, m): str(m) if len(memory) == 1 else f"{m}, {'with' if k else 'no'} memory" for k in memory
              for m in min_points}
    predicted = {key: np.zeros((episodes, steps), bool) for key in labels}
    memories = [SurfaceMemory() for _ in range(episodes)]  # the geometry known at reset: the start's exact depth
    for e in range(episodes):
        memories[e].add(depth_points(known[e], context[e], K, 2, max_depth))
    nothing = SurfaceMemory()
    reach = surface_reach(motion)
    abs_rel = np.full((episodes, steps), np.nan)
    near_rel = np.full((episodes, steps), np.nan)
    for t in range(steps):
        twist = action_to_twist(planar_to_body(actions[:, t]), motion)
        true_chunks = np.zeros((episodes, motion.frames_per_step, 4, 4))
        for e in range(episodes):
            real = move_chunk(pose[e], twist[e], motion, sweeps[e])
            true_chunks[e], truth[e, t] = real.poses, real.collided
            fresh = depth_points(depth[e], chunk_poses[e], K, 2, max_depth) if depth_source != "none" else None
            for k in memory:
                known, seen = (memories[e] if k else nothing).near_split(pose[e, :3, 3], reach, fresh)
                for m in min_points:
                    predicted[k, m][e, t] = move_chunk(pose[e], twist[e], motion, points_sweep(seen, m, known)).collided
        frames, state, depth = wm.step(state, true_chunks, generator=g, precision=precision, depth=True, memory=held,
                                       previous=last)
        last = frames[:, -1]
        # the exact render at the true poses: the chunk's last frame (the reference depth), all K for other sources
        out = [render(scenes[e], true_chunks[e, -1 if depth_source in ("generated", "none") else 0:], K, H, W)
               for e in range(episodes)]
        if depth_source in ("clean", "exact"):
            if depth_source == "exact":
                depth = np.minimum(np.nan_to_num(np.stack([np.asarray(o.depth) for o in out]), posinf=max_depth),
                                   max_depth).astype(np.float32)
            else:
                rgb = torch.from_numpy(np.stack([np.asarray(o.rgb) for o in out])).permute(0, 1, 4, 2, 3)
                latent, encoder_cache = wm.autoencoder.encode_step(rgb.float() / 127.5 - 1.0, encoder_cache)
                depth = wm.decode_depth(latent)[:, 0]
        pose, chunk_poses = true_chunks[:, -1], true_chunks
        for e in range(episodes):
            ref = np.asarray(out[e].depth[-1])
            ref = np.minimum(np.nan_to_num(ref, posinf=max_depth), max_depth)
            rel = np.abs(depth[e, -1] - ref) / ref
            abs_rel[e, t] = rel.mean()
            near = ref < NEAR_M
            near_rel[e, t] = rel[near].mean() if near.any() else np.nan
    report: dict[str, Any] = {"episodes": episodes, "steps": steps, "seed": seed, "positives": int(truth.sum()),
                              "depth_source": depth_source, "context_seconds": context_seconds,
                              "scene_memory": scene_memory, "thresholds": {}}
    first_contact = truth & ~np.concatenate([np.zeros((episodes, 1), bool), truth[:, :-1]], 1)
    for (k, m), pred in predicted.items():
        tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
        report["thresholds"][labels[k, m]] = {"min_points": m, "memory": k,
            "recall": tp / max(tp + fn, 1), "precision": tp / max(tp + fp, 1),
            "first_contact_recall": int((pred & first_contact).sum()) / max(int(first_contact.sum()), 1),
            "true_positives": tp, "false_positives": fp, "false_negatives": fn,
            "first_contacts": int(first_contact.sum()),
            "forward_recall": _recall(pred[0::2], truth[0::2]), "smooth_recall": _recall(pred[1::2], truth[1::2]),
            "smooth_precision": _precision(pred[1::2], truth[1::2]),
            "clips_predicted": pred.astype(int).tolist()}
    step_s = motion.frames_per_step / motion.fps
    report["depth"] = {}
    for h in horizons:
        j = int(round(h / step_s)) - 1
        if 0 <= j < steps:
            report["depth"][f"{h:g}s"] = {"abs_rel": float(np.nanmean(abs_rel[:, j])),
                                          "near_abs_rel": float(np.nanmean(near_rel[:, j]))}
    report["truth"] = truth.astype(int).tolist()
    return report


def _recall(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum() / max(truth.sum(), 1))


def _precision(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum() / max(pred.sum(), 1))


def format_collisions(report: dict[str, Any]) -> str:
    """The report as a short table."""
    source = report.get("depth_source", "generated")
    context = report.get("context_seconds", 0.0)
    lines = [f"collisions: {report['episodes']} episodes (seed {report['seed']}) of {report['steps']} steps, "
             f"{report['positives']} colliding steps in the reference world; predicted from "
             + ("no depth of the last chunk" if source == "none" else f"the {source} depth of the last chunk")
             + f" and (with memory) the surfaces of the start's exact depth, a look-around of {context:g} s before it"
             + ("; the chunks guided by the scene memory" if report.get("scene_memory") else ""),
             f"{'min points':>10} {'recall':>7} {'precision':>10} {'first contacts':>15} {'forward rec':>12} "
             f"{'smooth rec':>11} {'smooth prec':>12}"]
    for m, r in report["thresholds"].items():
        lines.append(f"{m:>10} {r['recall']:>7.3f} {r['precision']:>10.3f} "
                     f"{r['first_contact_recall']:>9.3f} ({r['first_contacts']}) {r['forward_recall']:>12.3f} "
                     f"{r['smooth_recall']:>11.3f} {r['smooth_precision']:>12.3f}")
    depth = report.get("depth", {})
    if depth:
        scored = "generated" if source == "none" else source  # with no depth used, the generated one is scored
        lines.append(f"{scored} depth, abs. relative error (all pixels / nearer than "
                     "2 m) at "
                     + ", ".join(f"{h}: {d['abs_rel']:.3f} / {d['near_abs_rel']:.3f}" for h, d in depth.items()))
    return "\n".join(lines)
