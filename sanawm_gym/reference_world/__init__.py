"""The reference world: procedural scenes, an exact ray caster, collision queries, camera
trajectories. Training data, ground truth and the "real" world for policy transfer."""

from sanawm_gym.reference_world.trajectories import (
    BEHAVIOURS,
    Trajectory,
    TrajectoryConfig,
    generate_trajectory,
    sample_start_pose,
)
from sanawm_gym.reference_world.raycast import RenderOutput, render, render_backend, trace
from sanawm_gym.reference_world.scene import OBJECT_KINDS, ObjectKind, Pattern, Scene, SceneConfig, generate_scene

WORLD_VERSION = 1
"""Bump whenever scene generation, trajectories or rendering change what a seed produces:
datasets record it and refuse to resume across versions."""

__all__ = [
    "BEHAVIOURS",
    "Trajectory",
    "TrajectoryConfig",
    "WORLD_VERSION",
    "generate_trajectory",
    "sample_start_pose",
    "OBJECT_KINDS",
    "ObjectKind",
    "Pattern",
    "RenderOutput",
    "Scene",
    "SceneConfig",
    "generate_scene",
    "render",
    "render_backend",
    "trace",
]
