"""Action spaces of the navigation envs and the validation every action goes through.

Two modes share one body-frame kinematics (:mod:`sanawm_gym.kinematics`):

- ``"6dof"``: ``[vx, vy, vz, wx, wy, wz]`` in [-1, 1], a body twist (OpenCV camera frame:
  x right, y down, z forward) scaled by the maximum linear and angular speeds;
- ``"planar"``: ``[forward, yaw_rate]`` in [-1, 1] for a ground robot (positive yaw turns left).

Out-of-range values are *clipped* to [-1, 1] (``info["action_clipped"]`` says so); anything
that is not a finite float array of the right shape is rejected with a ``ValueError``.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from sanawm_gym.kinematics import planar_to_body

__all__ = ["ACTION_MODES", "make_action_space", "to_body_action"]

ACTION_MODES = {"6dof": 6, "planar": 2}
"""Action mode -> action dimension."""


def make_action_space(mode: str) -> spaces.Box:
    """The ``Box(-1, 1)`` action space of a mode."""
    if mode not in ACTION_MODES:
        raise ValueError(f"action_mode must be one of {sorted(ACTION_MODES)}, got {mode!r}")
    return spaces.Box(-1.0, 1.0, shape=(ACTION_MODES[mode],), dtype=np.float32)


def to_body_action(action, mode: str) -> tuple[np.ndarray, bool]:
    """Validate ``action`` and return the normalised 6-D body action ``(6,)`` float64 and
    whether it had to be clipped. Accepts a numpy array, list or tuple of real numbers
    (any float or integer dtype) of shape ``(ACTION_MODES[mode],)``."""
    dim = ACTION_MODES[mode]
    arr = np.asarray(action)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"action must be a real-valued array of shape ({dim},), got dtype {arr.dtype}")
    if arr.shape != (dim,):
        raise ValueError(f"action must have shape ({dim},) in '{mode}' mode, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"action must be finite (accepted range [-1, 1] per component), got {arr.tolist()}")
    clipped = bool((np.abs(arr) > 1.0).any())
    arr = np.clip(arr, -1.0, 1.0)
    return (planar_to_body(arr) if mode == "planar" else arr), clipped
