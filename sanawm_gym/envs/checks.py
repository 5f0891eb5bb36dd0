"""Validation of reset options shared by the navigation envs: clear errors, accepted ranges.

Poses (reset option ``pose``, :func:`check_pose`). World frame right-handed, metres, +z up.
Camera frame OpenCV: x right, y down, z forward (the view direction). The env's pose is the
camera-to-world matrix ``c2w`` (4x4, float64). A pose is given in one of three forms:

- ``c2w``: a 4x4 rigid camera-to-world matrix (its columns are the camera's x, y, z axes
  and centre in world coordinates).
- ``{"position": (x, y, z), "quaternion": (w, x, y, z)}``: the camera centre in metres and
  the camera's orientation as a quaternion, scalar first (transforms3d's order, not
  SciPy's ``(x, y, z, w)``).
- ``{"position": (x, y, z), "euler_deg": (roll, pitch, yaw)}``: the same orientation as
  roll, pitch, yaw in degrees, static axes ``"sxyz"``: ``R = Rz(yaw) @ Ry(pitch) @ Rx(roll)``
  about the world axes (``transforms3d.euler.euler2mat(roll, pitch, yaw, "sxyz")``).

The quaternion and the Euler angles rotate the camera's *body* frame: x forward, y left,
z up, as in ROS REP 103 and URDF's ``rpy``. The identity (quaternion ``(1, 0, 0, 0)``,
angles ``(0, 0, 0)``) is a level camera looking along world +x. Yaw turns the view from +x
towards +y (counter-clockwise seen from above); a positive pitch tilts the view *down*
(right-hand rule about the left axis; :func:`world_model.geometry.pose_from_yaw_pitch`
counts pitch up, so its ``(yaw, pitch)`` is ``euler_deg = (0, -pitch, yaw)`` in degrees); a
positive roll lowers the camera's right side. The OpenCV camera-to-world rotation is then
``R @ BODY_FROM_OPENCV`` (:data:`BODY_FROM_OPENCV`: camera x = body -y, camera y = body -z,
camera z = body x), so it is *not* the quaternion's matrix itself.

A quaternion whose norm is within :data:`QUATERNION_NORM_TOLERANCE` of 1 (rounding in a
copied value) is normalised; any other norm is an error, as are non-finite values and a
dict with both or neither rotation key.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from transforms3d.euler import euler2mat
from transforms3d.quaternions import quat2mat

from world_model.geometry import is_rigid

__all__ = ["BODY_FROM_OPENCV", "QUATERNION_NORM_TOLERANCE", "check_goal", "check_image", "check_options",
           "check_pose"]

BODY_FROM_OPENCV = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
"""The OpenCV camera axes (columns: x right, y down, z forward) in the body frame (x
forward, y left, z up): ``c2w[:3, :3] = R_body @ BODY_FROM_OPENCV``."""

QUATERNION_NORM_TOLERANCE = 1e-3
"""A pose quaternion's norm may differ from 1 by this much; it is then normalised."""

_POSE_FORMS = ("a 4x4 rigid camera-to-world matrix (orthonormal rotation, det +1, last row [0, 0, 0, 1]), "
               "{'position': (x, y, z), 'quaternion': (w, x, y, z)} or "
               "{'position': (x, y, z), 'euler_deg': (roll, pitch, yaw)} (see sanawm_gym.envs.checks)")


def check_options(options: dict | None, accepted: tuple[str, ...]) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; accepted: {list(accepted)}")
    return options


def check_pose(pose) -> np.ndarray:
    """The camera-to-world matrix ``(4, 4)`` float64 of reset option ``pose``, given as a
    4x4 rigid matrix or as a dict of position and quaternion or Euler angles (the module
    docstring has the conventions); ``ValueError`` naming the accepted forms otherwise."""
    if isinstance(pose, Mapping):
        return _pose_from_dict(pose)
    try:
        arr = np.asarray(pose, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (4, 4) or not bool(is_rigid(arr, 1e-4)):
        got = f"shape {arr.shape}" if arr is not None and arr.shape != (4, 4) else \
            "a matrix that is not rigid" if arr is not None else f"{type(pose).__name__}"
        raise ValueError(f"reset option 'pose' must be {_POSE_FORMS}; got {got}")
    return arr


def _pose_from_dict(pose: Mapping) -> np.ndarray:
    keys = set(pose)
    rotations = sorted(keys & {"quaternion", "euler_deg"})
    unknown = sorted(map(str, keys - {"position", "quaternion", "euler_deg"}))
    if unknown or "position" not in keys or len(rotations) != 1:
        problem = (f"unknown key(s) {unknown}" if unknown else "no 'position'" if "position" not in keys else
                   "both 'quaternion' and 'euler_deg'" if rotations else "neither 'quaternion' nor 'euler_deg'")
        raise ValueError(f"reset option 'pose' as a dict takes 'position' and exactly one of 'quaternion', "
                         f"'euler_deg'; got {problem}. Accepted: {_POSE_FORMS}")
    position = _finite_vector(pose["position"], 3, "pose['position']", "(x, y, z) in metres")
    if rotations == ["quaternion"]:
        q = _finite_vector(pose["quaternion"], 4, "pose['quaternion']", "(w, x, y, z), scalar first")
        norm = float(np.linalg.norm(q))
        if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
            raise ValueError(f"reset option pose['quaternion'] must be a unit quaternion (w, x, y, z) (norm within "
                             f"{QUATERNION_NORM_TOLERANCE:g} of 1, then normalised), got norm {norm:.6g}")
        body = quat2mat(q / norm)
    else:
        roll, pitch, yaw = np.radians(_finite_vector(pose["euler_deg"], 3, "pose['euler_deg']",
                                                     "(roll, pitch, yaw) in degrees"))
        body = euler2mat(roll, pitch, yaw, "sxyz")
    c2w = np.eye(4)
    c2w[:3, :3] = body @ BODY_FROM_OPENCV
    c2w[:3, 3] = position
    return c2w


def _finite_vector(value, n: int, name: str, form: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (n,) or not np.isfinite(arr).all():
        raise ValueError(f"reset option {name} must be {n} finite floats {form}, got {value!r}")
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
