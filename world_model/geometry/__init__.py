"""Pose and camera math shared by the reference world, the envs and the world model."""

from world_model.geometry.camera import (
    intrinsics_from_fov,
    look_at,
    pixel_rays,
    plucker_map,
    pose_from_yaw_pitch,
    scale_intrinsics,
    unproject_depth,
)
from world_model.geometry.metrics import CameraErrors, camera_errors, rotation_angle_deg
from world_model.geometry.se3 import (
    c2w_to_w2c,
    exp_se3,
    exp_so3,
    hat,
    integrate_twist,
    invert_se3,
    is_rigid,
    relative_to_first,
    w2c_to_c2w,
)

__all__ = [
    "CameraErrors",
    "c2w_to_w2c",
    "camera_errors",
    "exp_se3",
    "exp_so3",
    "hat",
    "integrate_twist",
    "intrinsics_from_fov",
    "invert_se3",
    "is_rigid",
    "look_at",
    "pixel_rays",
    "plucker_map",
    "pose_from_yaw_pitch",
    "relative_to_first",
    "rotation_angle_deg",
    "scale_intrinsics",
    "unproject_depth",
    "w2c_to_c2w",
]
