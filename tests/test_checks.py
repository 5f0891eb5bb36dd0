"""Reset-option checks: the pose forms of `check_pose` (4x4 matrix, position + quaternion,
position + Euler angles), their conventions, and the errors for bad values."""

from __future__ import annotations

import numpy as np
import pytest
from transforms3d.euler import euler2quat

from sanawm_gym.envs.checks import BODY_FROM_OPENCV, check_pose
from world_model.geometry import is_rigid, look_at, pose_from_yaw_pitch

POSITION = (0.5, -1.0, 1.2)


def test_identity_orientation_is_a_level_camera_looking_along_world_x():
    for rotation in ({"quaternion": (1, 0, 0, 0)}, {"euler_deg": (0, 0, 0)}):
        c2w = check_pose({"position": POSITION, **rotation})
        assert c2w.shape == (4, 4) and c2w.dtype == np.float64
        np.testing.assert_allclose(c2w[:3, 2], [1, 0, 0], atol=1e-12)  # OpenCV z (forward) = world +x
        np.testing.assert_allclose(c2w[:3, 0], [0, -1, 0], atol=1e-12)  # x (right) = world -y
        np.testing.assert_allclose(c2w[:3, 1], [0, 0, -1], atol=1e-12)  # y (down) = world -z
        np.testing.assert_allclose(c2w[:3, 3], POSITION)
        np.testing.assert_allclose(c2w[3], [0, 0, 0, 1])
    np.testing.assert_allclose(check_pose({"position": POSITION, "euler_deg": (0, 0, 0)}),
                               pose_from_yaw_pitch(np.array(POSITION), 0.0, 0.0), atol=1e-12)


@pytest.mark.parametrize("yaw_deg, pitch_up_deg", [(0, 0), (30, 0), (-135, 10), (90, -45), (179, 60)])
def test_euler_yaw_and_pitch_match_pose_from_yaw_pitch(yaw_deg, pitch_up_deg):
    """Yaw turns the view from +x towards +y; a positive pitch looks down (REP 103), the
    opposite sign to pose_from_yaw_pitch's pitch."""
    c2w = check_pose({"position": POSITION, "euler_deg": (0, -pitch_up_deg, yaw_deg)})
    expected = pose_from_yaw_pitch(np.array(POSITION), np.radians(yaw_deg), np.radians(pitch_up_deg))
    np.testing.assert_allclose(c2w, expected, atol=1e-12)


def test_positive_pitch_looks_down_positive_roll_lowers_the_right_side():
    forward = check_pose({"position": POSITION, "euler_deg": (0, 30, 0)})[:3, 2]
    np.testing.assert_allclose(forward, [np.cos(np.radians(30)), 0, -0.5], atol=1e-12)
    right = check_pose({"position": POSITION, "euler_deg": (20, 0, 0)})[:3, 0]  # the camera's x axis in the world
    assert right[2] < 0 and np.isclose(right[2], -np.sin(np.radians(20)))


@pytest.mark.parametrize("seed", range(5))
def test_quaternion_and_euler_forms_agree(seed):
    rng = np.random.default_rng(seed)
    roll, pitch, yaw = rng.uniform(-180, 180), rng.uniform(-89, 89), rng.uniform(-180, 180)
    by_euler = check_pose({"position": POSITION, "euler_deg": (roll, pitch, yaw)})
    q = euler2quat(*np.radians([roll, pitch, yaw]), "sxyz")
    by_quaternion = check_pose({"position": np.array(POSITION), "quaternion": q})
    np.testing.assert_allclose(by_quaternion, by_euler, atol=1e-12)
    np.testing.assert_allclose(check_pose({"position": POSITION, "quaternion": -q}), by_euler, atol=1e-12)
    assert bool(is_rigid(by_euler, 1e-9))
    np.testing.assert_array_equal(check_pose(by_euler), by_euler)  # the matrix form passes unchanged


def test_matrix_form_is_unchanged_and_float64():
    c2w = look_at(np.array([1.0, 2.0, 1.5]), np.array([0.0, 0.0, 1.0]))
    out = check_pose(c2w.astype(np.float32).tolist())
    assert out.dtype == np.float64 and out.shape == (4, 4)
    np.testing.assert_allclose(out, c2w, atol=1e-6)


def test_a_nearly_unit_quaternion_is_normalised():
    q = np.array([np.cos(0.3), 0.0, 0.0, np.sin(0.3)])
    exact = check_pose({"position": POSITION, "quaternion": q})
    rounded = check_pose({"position": POSITION, "quaternion": q * 1.0008})  # within the 1e-3 tolerance
    np.testing.assert_allclose(rounded, exact, atol=1e-12)
    assert bool(is_rigid(rounded, 1e-12))


def test_body_from_opencv_is_a_rotation():
    assert np.isclose(np.linalg.det(BODY_FROM_OPENCV), 1.0)
    np.testing.assert_allclose(BODY_FROM_OPENCV.T @ BODY_FROM_OPENCV, np.eye(3))


@pytest.mark.parametrize("pose, message", [
    (np.eye(3), r"must be a 4x4 rigid camera-to-world matrix .*'quaternion'.*'euler_deg'.*got shape \(3, 3\)"),
    (np.diag([2.0, 1.0, 1.0, 1.0]), r"must be a 4x4 rigid .*got a matrix that is not rigid"),
    (np.full((4, 4), np.nan), r"must be a 4x4 rigid .*not rigid"),
    ("level", r"must be a 4x4 rigid .*got str"),
    ({"position": POSITION}, r"exactly one of 'quaternion', 'euler_deg'; got neither"),
    ({"position": POSITION, "quaternion": (1, 0, 0, 0), "euler_deg": (0, 0, 0)}, r"got both"),
    ({"quaternion": (1, 0, 0, 0)}, r"got no 'position'"),
    ({"position": POSITION, "euler": (0, 0, 0)}, r"got unknown key\(s\) \['euler'\]"),
    ({"position": (0, 0), "euler_deg": (0, 0, 0)}, r"pose\['position'\] must be 3 finite floats \(x, y, z\) in metres"),
    ({"position": (0, 0, np.inf), "euler_deg": (0, 0, 0)}, r"pose\['position'\] must be 3 finite floats"),
    ({"position": POSITION, "euler_deg": (0, np.nan, 0)}, r"pose\['euler_deg'\] must be 3 finite floats \(roll, pitch, yaw\) in degrees"),
    ({"position": POSITION, "euler_deg": "north"}, r"pose\['euler_deg'\] must be 3 finite floats"),
    ({"position": POSITION, "quaternion": (1, 0, 0)}, r"pose\['quaternion'\] must be 4 finite floats \(w, x, y, z\)"),
    ({"position": POSITION, "quaternion": (0, 0, 0, 0)}, r"must be a unit quaternion .*got norm 0"),
    ({"position": POSITION, "quaternion": (1, 1, 0, 0)}, r"must be a unit quaternion \(w, x, y, z\) \(norm within 0.001 of 1"),
])
def test_bad_poses_name_the_option_and_the_accepted_forms(pose, message):
    with pytest.raises(ValueError, match=message):
        check_pose(pose)
