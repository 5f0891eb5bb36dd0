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

_ENVS = {
    "SanaWM/ReferenceNav-v0": {},
    "SanaWM/ReferenceNavPlanar-v0": {"action_mode": "planar"},
}

for _env_id, _kwargs in _ENVS.items():
    if _env_id not in registry:
        register(
            id=_env_id,
            entry_point="sanawm_gym.envs.reference_nav:ReferenceNavEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
            kwargs=_kwargs,
            nondeterministic=False,
        )
