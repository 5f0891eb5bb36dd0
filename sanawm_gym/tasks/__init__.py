"""Tasks shared by the reference-world and world-model envs."""

from sanawm_gym.tasks.point_goal import (
    GOAL_OBS_HIGH,
    GOAL_OBS_LOW,
    GoalSample,
    PointGoalConfig,
    StepOutcome,
    arena_bounds,
    check_goal_placement,
    check_start_placement,
    goal_observation,
    sample_goal,
    score_step,
)

__all__ = [
    "GOAL_OBS_HIGH",
    "GOAL_OBS_LOW",
    "GoalSample",
    "PointGoalConfig",
    "StepOutcome",
    "arena_bounds",
    "check_goal_placement",
    "check_start_placement",
    "goal_observation",
    "sample_goal",
    "score_step",
]
