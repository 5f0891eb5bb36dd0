"""Snapshots of a navigation episode: what ``get_state`` returns and ``set_state`` restores,
and their files (``save_state`` / ``load_state``).

Both worlds snapshot alike, so a planner treats them alike: :class:`NavSnapshot` (the world
model env: the model's one-row :class:`~world_model.WorldState` plus pose, goal, counters and
random generators) and :class:`ReferenceSnapshot` (the reference env: scene seed, pose, goal,
counters and the random generator; the scene is rebuilt from its seed). Neither grows with
the episode.

A snapshot file is a pair written atomically, safetensors for the arrays and JSON for
the rest (``<stem>.safetensors`` + ``<stem>.json``, the JSON holding the tensors' size and
sha256): no pickle, so loading a file cannot run code. A file restores bit for bit in
another process on the same machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from world_model.checkpoint import CheckpointError, load_training_state, save_training_state

if TYPE_CHECKING:
    from world_model import WorldState

__all__ = ["SNAPSHOT_FORMAT", "NavSnapshot", "ReferenceSnapshot", "read_snapshot", "write_snapshot"]

SNAPSHOT_FORMAT = "sanawm-env-snapshot"
"""``<stem>.json["format"]`` of a snapshot file."""


@dataclass
class NavSnapshot:
    """Everything one row of the world-model env depends on (``SanaWM/Nav-v0``)."""

    world: WorldState
    """The row's model state: a one-row :class:`~world_model.WorldState` (a copy)."""
    pose: np.ndarray
    """``(4, 4)`` float64 c2w at the end of the last step."""
    chunk_poses: np.ndarray
    """``(K, 4, 4)`` float64 poses of the last step's frames."""
    goal: np.ndarray
    bounds: np.ndarray
    """``(2, 3)`` low / high corner of the box the camera must stay in (NaN: unbounded)."""
    distance: float
    path_length: float
    geodesic_distance: float
    steps: int
    scene_seed: int | None
    np_random_state: dict
    torch_generator_state: torch.Tensor
    frames: np.ndarray
    """``(K, H, W, 3)`` uint8: the last chunk of frames (what the observation shows)."""
    depth: np.ndarray | None = None
    """``(K, H, W)`` float32: the last chunk's depth (metres), where the env uses depth (the
    ``depth`` observation, predicted collisions); else None."""
    surface: np.ndarray | None = None
    """``(M, 3)`` float64: the surfaces known at reset, one point per voxel
    (:meth:`SurfaceMemory.state <sanawm_gym.depth_collision.SurfaceMemory.state>`), where the
    env predicts collisions; else None."""
    scene_memory: dict[str, torch.Tensor] | None = None
    """What the episode was shown, as coloured surface points (:meth:`SceneMemory.state
    <world_model.memory.SceneMemory.state>`), where the env keeps a scene memory; else None."""

    kind = "nav"

    @property
    def nbytes(self) -> int:
        """Bytes of the snapshot's arrays and tensors (independent of the episode's length)."""
        arrays = [self.pose, self.chunk_poses, self.goal, self.bounds, self.frames, self.torch_generator_state.numpy()]
        arrays += [a for a in (self.depth, self.surface) if a is not None]
        held = sum(t.numel() * t.element_size() for t in (self.scene_memory or {}).values())
        return self.world.nbytes + sum(a.nbytes for a in arrays) + held

    def _parts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"world.{k}": v.contiguous() for k, v in self.world.tensors().items()}
        tensors.update(pose=torch.from_numpy(self.pose), chunk_poses=torch.from_numpy(self.chunk_poses),
                       goal=torch.from_numpy(self.goal), bounds=torch.from_numpy(self.bounds),
                       frames=torch.from_numpy(self.frames), torch_generator_state=self.torch_generator_state)
        if self.depth is not None:
            tensors["depth"] = torch.from_numpy(np.ascontiguousarray(self.depth))
        if self.surface is not None:
            tensors["surface"] = torch.from_numpy(np.ascontiguousarray(self.surface))
        if self.scene_memory is not None:
            tensors.update({f"scene_memory.{k}": v.contiguous() for k, v in self.scene_memory.items()})
        data = {"decode_frames": self.world.decode.latent_frames, "distance": self.distance,
                "path_length": self.path_length, "geodesic_distance": _json_float(self.geodesic_distance),
                "steps": self.steps, "scene_seed": self.scene_seed, "np_random_state": self.np_random_state}
        return tensors, data

    @classmethod
    def _from_parts(cls, tensors: dict[str, torch.Tensor], data: dict[str, Any], like: WorldState) -> "NavSnapshot":
        world = like.from_tensors({k[len("world."):]: v for k, v in tensors.items() if k.startswith("world.")},
                                  data["decode_frames"])
        return cls(world, tensors["pose"].numpy(), tensors["chunk_poses"].numpy(), tensors["goal"].numpy(),
                   tensors["bounds"].numpy(), float(data["distance"]), float(data["path_length"]),
                   float(data["geodesic_distance"]), int(data["steps"]), data["scene_seed"], data["np_random_state"],
                   tensors["torch_generator_state"], tensors["frames"].numpy(),
                   tensors["depth"].numpy() if "depth" in tensors else None,
                   tensors["surface"].numpy() if "surface" in tensors else None,
                   {k[len("scene_memory."):]: v for k, v in tensors.items() if k.startswith("scene_memory.")} or None)


@dataclass
class ReferenceSnapshot:
    """Everything the reference env's episode depends on (``SanaWM/ReferenceNav-v0``)."""

    scene_seed: int
    pose: np.ndarray
    chunk_poses: np.ndarray
    goal: np.ndarray
    distance: float
    path_length: float
    geodesic_distance: float
    np_random_state: dict

    kind = "reference"

    @property
    def nbytes(self) -> int:
        return self.pose.nbytes + self.chunk_poses.nbytes + self.goal.nbytes

    def _parts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"pose": torch.from_numpy(self.pose), "chunk_poses": torch.from_numpy(self.chunk_poses),
                   "goal": torch.from_numpy(self.goal)}
        data = {"scene_seed": self.scene_seed, "distance": self.distance, "path_length": self.path_length,
                "geodesic_distance": _json_float(self.geodesic_distance), "np_random_state": self.np_random_state}
        return tensors, data

    @classmethod
    def _from_parts(cls, tensors: dict[str, torch.Tensor], data: dict[str, Any], like: Any = None) -> "ReferenceSnapshot":
        return cls(int(data["scene_seed"]), tensors["pose"].numpy(), tensors["chunk_poses"].numpy(),
                   tensors["goal"].numpy(), float(data["distance"]), float(data["path_length"]),
                   float(data["geodesic_distance"]), data["np_random_state"])


def _json_float(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _paths(path: str | Path) -> tuple[Path, str]:
    path = Path(path)
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    if not stem:
        raise ValueError(f"snapshot path needs a file name, got {str(path)!r}")
    return path.parent, stem


def write_snapshot(path: str | Path, snapshot: NavSnapshot | ReferenceSnapshot, env_id: str) -> Path:
    """Write ``snapshot`` to ``<path>.json`` + ``<path>.safetensors`` (``path`` with or
    without ``.json``), atomically. Returns the JSON's path."""
    folder, stem = _paths(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, data = snapshot._parts()
    data = {**data, "kind": snapshot.kind, "env": env_id}
    return save_training_state(folder, stem, tensors, data, fmt=SNAPSHOT_FORMAT)


def read_snapshot(path: str | Path, cls: type, like: Any = None):
    """The snapshot of class ``cls`` in the file pair at ``path`` (see :func:`write_snapshot`);
    ``like``: the env's own :class:`~world_model.WorldState` that a :class:`NavSnapshot`'s
    model state is rebuilt after. Raises :class:`~world_model.CheckpointError` for a missing,
    corrupt or foreign file, ``ValueError`` for a snapshot of another kind or model."""
    folder, stem = _paths(path)
    tensors, data = load_training_state(folder / f"{stem}.json", fmt=SNAPSHOT_FORMAT)
    if data.get("kind") != cls.kind:
        raise ValueError(f"{folder / stem}.json holds a {data.get('kind')!r} snapshot (from {data.get('env')}); "
                         f"this env restores {cls.kind!r} snapshots")
    data = {k: (float("nan") if k == "geodesic_distance" and v is None else v) for k, v in data.items()}
    try:
        return cls._from_parts(tensors, data, like)
    except KeyError as exc:
        raise CheckpointError(f"{folder / stem}.json: snapshot lacks {exc}") from None

