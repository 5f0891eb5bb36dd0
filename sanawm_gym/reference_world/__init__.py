"""The reference world: procedural scenes, an exact ray caster, collision queries, camera
trajectories. Training data, ground truth and the "real" world for policy transfer."""

from sanawm_gym.reference_world.raycast import RenderOutput, render, render_backend, trace
from sanawm_gym.reference_world.scene import OBJECT_KINDS, ObjectKind, Pattern, Scene, SceneConfig, generate_scene

__all__ = [
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
