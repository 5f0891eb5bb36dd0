"""Validation of reset options shared by the navigation envs: clear errors, accepted ranges."""

from __future__ import annotations

import numpy as np

from world_model.geometry import is_rigid

__all__ = ["check_goal", "check_image", "check_options", "check_pose"]


def check_options(options: dict | None, accepted: tuple[str, ...]) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; accepted: {list(accepted)}")
    return options


def check_pose(pose) -> np.ndarray:
    arr = np.asarray(pose, dtype=np.float64)
    if arr.shape != (4, 4) or not bool(is_rigid(arr, 1e-4)):
        raise ValueError("reset option 'pose' must be a 4x4 rigid camera-to-world matrix "
                         "(orthonormal rotation, det +1, last row [0, 0, 0, 1])")
    return arr


def check_goal(goal) -> np.ndarray:
    arr = np.asarray(goal, dtype=np.float64)
    if arr.shape != (3,) or not np.isfinite(arr).all():
        raise ValueError(f"reset option 'goal' must be 3 finite floats (x, y, z in metres), got {goal!r}")
    return arr


def check_image(image, height: int, width: int) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.shape != (height, width, 3):
        raise ValueError(f"reset option 'image' must be a uint8 array of shape ({height}, {width}, 3) (the model's "
                         f"frame size; resize it first), got dtype {arr.dtype} and shape {arr.shape}")
    return arr
