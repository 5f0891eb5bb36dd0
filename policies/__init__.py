"""Scripted and learned navigation policies."""

from policies.goal_seeking import GoalSeekingConfig, GoalSeekingPolicy

__all__ = ["GoalSeekingConfig", "GoalSeekingPolicy"]
