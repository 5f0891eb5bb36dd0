"""Stable-Baselines3 on the native batched env: a ``VecEnv`` over a Gymnasium ``VectorEnv``.

SB3's ``VecEnv`` resets finished envs inside ``step`` and returns the last observation of
the episode in ``infos[i]["terminal_observation"]``; Gymnasium's same-step autoreset mode
does the same with ``info["final_obs"]``. The adapter maps one onto the other, so that

    venv = SB3VecEnv.make("SanaWM/Nav-v0", num_envs=16)
    PPO("MultiInputPolicy", venv).learn(10_000)

steps 16 imagined episodes with one world-model forward per step.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

__all__ = ["SB3VecEnv"]


class SB3VecEnv(VecEnv):
    """``VecEnv`` view of a Gymnasium vector env that uses same-step autoreset."""

    def __init__(self, venv: gym.vector.VectorEnv):
        mode = venv.metadata.get("autoreset_mode")
        if mode != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError(f"SB3VecEnv needs a vector env with autoreset_mode=SAME_STEP, got {mode!r}; "
                             "build it with SB3VecEnv.make(env_id, num_envs) or pass autoreset_mode='SameStep'")
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None
        self._seed: int | None = None

    @classmethod
    def make(cls, env_id: str, num_envs: int, **kwargs: Any) -> "SB3VecEnv":
        """``gym.make_vec(env_id, num_envs, vectorization_mode="vector_entry_point",
        autoreset_mode=SAME_STEP, **kwargs)`` wrapped for SB3."""
        venv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, **kwargs)
        return cls(venv)

    def _split_info(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key, values in info.items():
            if key.startswith("_") or key in ("final_obs", "final_info"):
                continue
            mask = info.get("_" + key, np.ones(self.num_envs, bool))
            for i in range(self.num_envs):
                if mask[i]:
                    out[i][key] = values[i]
        return out

    def reset(self):
        obs, info = self.venv.reset(seed=self._seed)
        self._seed = None
        self.reset_infos = self._split_info(info)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        infos = self._split_info(info)
        done = terminated | truncated
        for i in np.flatnonzero(done):
            infos[i] = dict(info["final_info"][i])
            infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, reward.astype(np.float32), done, infos

    def seed(self, seed: int | None = None):
        self._seed = seed
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.venv.unwrapped, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.venv.unwrapped, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self.venv.unwrapped, method_name)(*method_args, **method_kwargs)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._get_indices(indices))

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render()
        return [None] * self.num_envs if frames is None else list(frames)
