"""The world model: a miniature SANA-WM, as a library that needs no simulator.

    from world_model import WorldModel, WorldState

    wm = WorldModel.from_pretrained()          # the checkpoint shipped in the package
    video = wm.generate_video(first_frame, c2w, intrinsics)

Layers, bottom up: :mod:`world_model.geometry` (SE(3), cameras, Plücker maps, camera
metrics; imports nothing else of the project), :mod:`world_model.ops` (pure functions),
:mod:`world_model.model` / :mod:`world_model.autoencoder` / :mod:`world_model.diffusion`
(parameters and samplers), :mod:`world_model.generation` (the one streaming generation
loop), :class:`WorldModel` (the inference API), :mod:`world_model.scoring` (held-out
scores), :mod:`world_model.train`. Nothing here imports :mod:`sanawm_gym`: the model reads
posed clips (:mod:`world_model.data`), it does not render them.

The names below load on first use, so ``import world_model.geometry`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["CheckpointError", "WorldModel", "WorldModelConfig", "WorldState"]

_LAZY = {
    "WorldModel": "world_model.world_model",
    "WorldState": "world_model.world_model",
    "WorldModelConfig": "world_model.model",
    "CheckpointError": "world_model.checkpoint",
}

if TYPE_CHECKING:
    from world_model.checkpoint import CheckpointError
    from world_model.model import WorldModelConfig
    from world_model.world_model import WorldModel, WorldState


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'world_model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
