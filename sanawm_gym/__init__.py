"""sanawm-gym: Gymnasium environments over a learned video world model and its reference world.

Importing the package registers the environments::

    import gymnasium as gym
    import sanawm_gym  # noqa: F401

    env = gym.make("SanaWM/ReferenceNav-v0")
"""

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

MAX_EPISODE_STEPS = 200
"""Default episode length: 200 steps of 0.25 s, 50 s of video."""

_REFERENCE = "sanawm_gym.envs.reference_nav:ReferenceNavEnv"
_IMAGINED = "sanawm_gym.envs.world_model_nav:WorldModelNavEnv"
_IMAGINED_VECTOR = "sanawm_gym.envs.world_model_nav:WorldModelNavVectorEnv"

# id -> (entry point, vector entry point, kwargs). Every env is deterministic on the CPU
# given its seed (the world model's noise comes from the env's seeded generators).
_ENVS = {
    "SanaWM/ReferenceNav-v0": (_REFERENCE, None, {}),
    "SanaWM/ReferenceNavPlanar-v0": (_REFERENCE, None, {"action_mode": "planar"}),
    "SanaWM/Nav-v0": (_IMAGINED, _IMAGINED_VECTOR, {}),
    "SanaWM/NavPlanar-v0": (_IMAGINED, _IMAGINED_VECTOR, {"action_mode": "planar"}),
}

for _env_id, (_entry, _vector_entry, _kwargs) in _ENVS.items():
    if _env_id not in registry:
        register(
            id=_env_id,
            entry_point=_entry,
            vector_entry_point=_vector_entry,
            max_episode_steps=MAX_EPISODE_STEPS,
            kwargs=_kwargs,
            nondeterministic=False,
        )
