"""The training stages by name; each is imported only when asked for."""

from __future__ import annotations

import importlib

from world_model.train.stage import Stage

__all__ = ["STAGES", "stage_class"]

STAGES = {
    "autoencoder": "world_model.train.stages.autoencoder:AutoencoderStage",
    "teacher": "world_model.train.stages.teacher:TeacherStage",
    "ode": "world_model.train.stages.ode:OdeStage",
    "self_forcing": "world_model.train.stages.self_forcing:SelfForcingStage",
    "depth": "world_model.train.stages.depth:DepthStage",
}
"""``--stage`` name -> ``module:class`` of a :class:`~world_model.train.stage.Stage`."""


def stage_class(name: str) -> type[Stage]:
    """The :class:`Stage` subclass registered as ``name``."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(sorted(STAGES))}")
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)
