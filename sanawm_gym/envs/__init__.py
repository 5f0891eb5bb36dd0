"""Gymnasium environments."""

from sanawm_gym.envs.reference_nav import ReferenceNavEnv

__all__ = ["ReferenceNavEnv"]
