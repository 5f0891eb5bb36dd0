"""Tests for :mod:`world_model.geometry` (SE(3), pinhole cameras, Plücker maps, camera metrics).

Every check is against an independent reference: ``scipy.linalg.expm`` for the exponential
map, ``numpy.linalg.inv`` for inverses, literal per-pixel loops for the ray maps and
hand-computed values for the metrics. Random inputs are seeded; both float64 and float32
are exercised (float32 with tolerances a few hundred ulps wide, so that a formula that
loses precision to cancellation still fails).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.transform import Rotation

from world_model.geometry import (
    CameraErrors,
    c2w_to_w2c,
    camera_errors,
    exp_se3,
    exp_so3,
    hat,
    integrate_twist,
    intrinsics_from_fov,
    invert_se3,
    is_rigid,
    pixel_rays,
    plucker_map,
    relative_to_first,
    rotation_angle_deg,
    scale_intrinsics,
    w2c_to_c2w,
)
from world_model.geometry._arrays import accepts_numpy

DTYPES = [np.float64, np.float32]
BATCH_SHAPES = [(), (5,), (2, 3)]


# --------------------------------------------------------------------------- helpers


def tol(dtype) -> dict:
    """Absolute/relative tolerances for results of O(1) magnitude."""
    return {"atol": 1e-11, "rtol": 1e-11} if np.dtype(dtype) == np.float64 else {"atol": 2e-6, "rtol": 2e-6}


def np_hat(w: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def twist_matrix(xi: np.ndarray) -> np.ndarray:
    """The 4x4 se(3) matrix ``[[hat(w), v], [0, 0]]`` of one twist ``[v, w]``."""
    M = np.zeros((4, 4))
    M[:3, :3] = np_hat(xi[3:])
    M[:3, 3] = xi[:3]
    return M


def expm_twist(xi: np.ndarray) -> np.ndarray:
    """Batched reference exponential: ``scipy.linalg.expm`` of each twist matrix, float64."""
    xi = np.asarray(xi, dtype=np.float64)
    out = np.empty(xi.shape[:-1] + (4, 4))
    for idx in np.ndindex(*xi.shape[:-1]):
        out[idx] = scipy.linalg.expm(twist_matrix(xi[idx]))
    return out


def random_rotation(rng: np.random.Generator, shape=()) -> np.ndarray:
    """Haar-random rotations (QR of a Gaussian matrix, det fixed to +1)."""
    A = rng.normal(size=tuple(shape) + (3, 3))
    Q, R = np.linalg.qr(A)
    Q = Q * np.sign(np.diagonal(R, axis1=-2, axis2=-1))[..., None, :]
    neg = np.linalg.det(Q) < 0
    Q[neg, :, 0] *= -1
    return Q


def random_rigid(rng: np.random.Generator, shape=(), t_scale: float = 3.0) -> np.ndarray:
    T = np.zeros(tuple(shape) + (4, 4))
    T[..., :3, :3] = random_rotation(rng, shape)
    T[..., :3, 3] = rng.normal(scale=t_scale, size=tuple(shape) + (3,))
    T[..., 3, 3] = 1.0
    return T


def rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def homogeneous(R: np.ndarray, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def random_twists(rng: np.random.Generator, shape, kind: str) -> np.ndarray:
    """Twists of a given kind; ``w`` has a prescribed norm (or is drawn) along a random axis."""
    shape = tuple(shape)
    v = rng.normal(size=shape + (3,))
    axis = rng.normal(size=shape + (3,))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    if kind == "general":
        theta = rng.uniform(0.0, 2.0, size=shape)
    elif kind == "tiny":  # far inside the series branch
        theta = rng.uniform(0.5e-6, 2e-6, size=shape)
    elif kind == "small":
        theta = rng.uniform(0.5e-4, 2e-4, size=shape)
    elif kind == "threshold":  # both sides of the series/closed-form switch and just above it
        theta = rng.uniform(0.5e-3, 5e-3, size=shape)
    elif kind == "pure_translation":
        theta = np.zeros(shape)
    elif kind == "large":  # close to pi, where sin(theta) is small again
        theta = rng.uniform(2.9, 3.1, size=shape)
    elif kind == "pure_rotation":
        theta = rng.uniform(0.0, 3.0, size=shape)
        v = np.zeros_like(v)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return np.concatenate([v, axis * theta[..., None]], -1)


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test's id (deterministic across runs and processes)."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


# --------------------------------------------------------------------------- hat / exp_so3 / exp_se3


def test_hat_is_cross_product(rng):
    w = rng.normal(size=(4, 3))
    x = rng.normal(size=(4, 3))
    W = hat(w)
    assert W.shape == (4, 3, 3)
    np.testing.assert_allclose(W @ x[..., None], np.cross(w, x)[..., None], atol=1e-14)
    np.testing.assert_allclose(W, -np.swapaxes(W, -1, -2), atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["general", "tiny", "small", "threshold", "large", "pure_rotation"])
def test_exp_so3_matches_expm(rng, dtype, kind):
    w = random_twists(rng, (2, 3), kind)[..., 3:]
    R = exp_so3(w.astype(dtype))
    assert R.shape == (2, 3, 3, 3) and R.dtype == dtype
    for idx in np.ndindex(2, 3):
        np.testing.assert_allclose(R[idx], scipy.linalg.expm(np_hat(w[idx])), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BATCH_SHAPES)
@pytest.mark.parametrize(
    "kind", ["general", "tiny", "small", "threshold", "pure_translation", "large", "pure_rotation"]
)
def test_exp_se3_matches_scipy_expm(rng, dtype, shape, kind):
    xi = random_twists(rng, shape, kind)
    T = exp_se3(xi.astype(dtype))
    assert isinstance(T, np.ndarray)
    assert T.shape == shape + (4, 4) and T.dtype == dtype
    np.testing.assert_allclose(T, expm_twist(xi.astype(dtype)), **tol(dtype))
    assert np.all(is_rigid(T))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_exp_se3_torch_and_threshold_sweep(dtype):
    """A dense sweep of |w| across the series/closed-form switch (1e-3), torch in/out.

    A closed form such as ``(1 - cos t) / t^2`` loses most of its digits just above the
    switch in float32, which shows up in the translation ``V v``.
    """
    rng = np.random.default_rng(7)
    theta = np.geomspace(1e-7, 3.1, 200)
    axis = rng.normal(size=(200, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    v = rng.normal(size=(200, 3))
    xi = np.concatenate([v, axis * theta[:, None]], -1)
    xi_t = torch.from_numpy(xi).to(dtype)
    T = exp_se3(xi_t)
    assert isinstance(T, torch.Tensor) and T.dtype == dtype
    ref = expm_twist(xi_t.double().numpy())
    t = tol(np.float64 if dtype == torch.float64 else np.float32)
    np.testing.assert_allclose(T.double().numpy(), ref, **t)


def test_exp_se3_exact_special_cases():
    # pure translation: identity rotation, translation v
    T = exp_se3(np.array([1.0, -2.0, 3.0, 0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(T, homogeneous(np.eye(3), (1.0, -2.0, 3.0)))
    # pure rotation about z by 90 degrees: no translation
    T = exp_se3(np.array([0.0, 0.0, 0.0, 0.0, 0.0, math.pi / 2]))
    np.testing.assert_allclose(T, homogeneous(rot_z(90.0)), atol=1e-15)
    # zero twist is exactly the identity
    np.testing.assert_array_equal(exp_se3(np.zeros((3, 6))), np.broadcast_to(np.eye(4), (3, 4, 4)))


def test_exp_se3_rejects_wrong_shape():
    with pytest.raises(ValueError):
        exp_se3(np.zeros((4, 5)))
    with pytest.raises(ValueError):
        exp_se3(torch.zeros(3))


def test_exp_se3_gradients_finite_at_zero():
    xi = torch.zeros(2, 6, dtype=torch.float64, requires_grad=True)
    exp_se3(xi).sum().backward()
    assert torch.isfinite(xi.grad).all()


# --------------------------------------------------------------------------- integrate_twist


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BATCH_SHAPES)
def test_integrate_twist_matches_expm(rng, dtype, shape):
    c2w = random_rigid(rng, shape)
    twist = random_twists(rng, shape, "general")
    dt, n = 0.05 + rng.uniform(), 6
    out = integrate_twist(c2w.astype(dtype), twist.astype(dtype), dt, n)
    assert isinstance(out, np.ndarray)
    assert out.shape == shape + (n, 4, 4) and out.dtype == dtype
    c2w_q, twist_q = c2w.astype(dtype).astype(np.float64), twist.astype(dtype).astype(np.float64)
    for idx in np.ndindex(*shape):
        for i in range(1, n + 1):
            M = twist_matrix(twist_q[idx]) * (i * dt)
            ref = c2w_q[idx] @ scipy.linalg.expm(M)
            t = tol(dtype)
            # Poses have translations of a few units: scale atol with them.
            np.testing.assert_allclose(out[idx + (i - 1,)], ref, rtol=t["rtol"], atol=10 * t["atol"])


def test_integrate_twist_broadcasts_pose_against_twists(rng):
    c2w = random_rigid(rng)
    twists = random_twists(rng, (2, 3), "general")
    out = integrate_twist(c2w, twists, 0.1, 4)
    assert out.shape == (2, 3, 4, 4, 4)
    for idx in np.ndindex(2, 3):
        np.testing.assert_allclose(out[idx], integrate_twist(c2w, twists[idx], 0.1, 4), atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n1,n2", [(1, 1), (3, 5), (7, 2)])
def test_integrate_twist_composition(rng, dtype, n1, n2):
    c2w = random_rigid(rng, (3,)).astype(dtype)
    twist = random_twists(rng, (3,), "general").astype(dtype)
    dt = 1 / 30
    full = integrate_twist(c2w, twist, dt, n1 + n2)
    first = integrate_twist(c2w, twist, dt, n1)
    rest = integrate_twist(first[..., -1, :, :], twist, dt, n2)
    np.testing.assert_allclose(np.concatenate([first, rest], -3), full, rtol=tol(dtype)["rtol"], atol=10 * tol(dtype)["atol"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_integrate_twist_forward_moves_along_camera_z(rng, dtype):
    c2w = random_rigid(rng, (4,)).astype(dtype)
    dt, n = 0.1, 9
    out = integrate_twist(c2w, np.array([0, 0, 1, 0, 0, 0], dtype=dtype), dt, n)
    assert out.shape == (4, n, 4, 4)
    z_axis = c2w[..., :3, 2]  # the camera's forward axis in world
    for i in range(1, n + 1):
        expected = c2w[..., :3, 3] + dt * i * z_axis
        np.testing.assert_allclose(out[:, i - 1, :3, 3], expected, rtol=tol(dtype)["rtol"], atol=10 * tol(dtype)["atol"])
        np.testing.assert_allclose(out[:, i - 1, :3, :3], c2w[..., :3, :3], **tol(dtype))


def test_integrate_twist_forward_and_yaw_traces_a_circle(rng):
    """Forward speed v with a yaw rate w about the camera's +y (down) axis moves the camera
    on a circle of radius v/w, turning towards +x (right), while it keeps facing the tangent."""
    c2w = random_rigid(rng)
    speed, rate = 2.0, 0.5
    out = integrate_twist(c2w, np.array([0, 0, speed, 0, rate, 0]), 0.2, 20)
    radius = speed / rate
    centre = c2w[:3, 3] + radius * c2w[:3, 0]  # to the camera's right
    dist = np.linalg.norm(out[:, :3, 3] - centre, axis=-1)
    np.testing.assert_allclose(dist, radius, rtol=1e-12)
    # The heading rotates by rate * t about the camera's own y-axis.
    for i in range(20):
        R_rel = c2w[:3, :3].T @ out[i, :3, :3]
        ang = rate * 0.2 * (i + 1)
        c, s = math.cos(ang), math.sin(ang)
        np.testing.assert_allclose(R_rel, [[c, 0, s], [0, 1, 0], [-s, 0, c]], atol=1e-12)
    # After a small step the camera has moved towards +x of its initial frame (turned right).
    p1 = c2w[:3, :3].T @ (out[0, :3, 3] - c2w[:3, 3])
    assert p1[0] > 0 and p1[2] > 0


@pytest.mark.parametrize("n", [0, -1])
def test_integrate_twist_rejects_no_frames(n):
    with pytest.raises(ValueError):
        integrate_twist(np.eye(4), np.zeros(6), 0.1, n)


# --------------------------------------------------------------------------- inversion and relative poses


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BATCH_SHAPES)
def test_invert_se3(rng, dtype, shape):
    T = random_rigid(rng, shape).astype(dtype)
    inv = invert_se3(T)
    assert inv.shape == T.shape and inv.dtype == dtype and isinstance(inv, np.ndarray)
    eye = np.broadcast_to(np.eye(4), T.shape)
    t = tol(dtype)
    np.testing.assert_allclose(T @ inv, eye, atol=10 * t["atol"])
    np.testing.assert_allclose(inv @ T, eye, atol=10 * t["atol"])
    np.testing.assert_allclose(invert_se3(inv), T, atol=10 * t["atol"], rtol=t["rtol"])
    np.testing.assert_allclose(inv, np.linalg.inv(T.astype(np.float64)), atol=10 * t["atol"], rtol=t["rtol"])
    # last row stays exactly [0, 0, 0, 1]
    np.testing.assert_array_equal(inv[..., 3, :], np.broadcast_to([0, 0, 0, 1], shape + (4,)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_invert_se3_of_product(rng, dtype):
    A = random_rigid(rng, (2, 3)).astype(dtype)
    B = random_rigid(rng, (2, 3)).astype(dtype)
    t = tol(dtype)
    np.testing.assert_allclose(invert_se3(A @ B), invert_se3(B) @ invert_se3(A), atol=50 * t["atol"], rtol=t["rtol"])


def test_c2w_w2c_round_trip_and_meaning(rng):
    c2w = random_rigid(rng, (5,))
    w2c = c2w_to_w2c(c2w)
    np.testing.assert_allclose(w2c_to_c2w(w2c), c2w, atol=1e-13)
    np.testing.assert_allclose(c2w_to_w2c(w2c_to_c2w(w2c)), w2c, atol=1e-13)
    # The camera centre maps to the camera-frame origin; a point 2 units ahead along the
    # camera's forward axis maps to (0, 0, 2) (OpenCV: z forward).
    centre = c2w[:, :, 3]
    np.testing.assert_allclose((w2c @ centre[..., None])[..., 0], np.broadcast_to([0, 0, 0, 1.0], (5, 4)), atol=1e-13)
    ahead = centre.copy()
    ahead[:, :3] += 2.0 * c2w[:, :3, 2]
    np.testing.assert_allclose((w2c @ ahead[..., None])[..., 0], np.broadcast_to([0, 0, 2.0, 1.0], (5, 4)), atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (2,), (2, 3)])
def test_relative_to_first(rng, dtype, shape):
    F = 6
    c2w = random_rigid(rng, shape + (F,)).astype(dtype)
    rel = relative_to_first(c2w)
    assert rel.shape == c2w.shape and rel.dtype == dtype
    t = tol(dtype)
    np.testing.assert_allclose(rel[..., 0, :, :], np.broadcast_to(np.eye(4), shape + (4, 4)), atol=10 * t["atol"])
    c64 = c2w.astype(np.float64)
    ref = np.linalg.inv(c64[..., :1, :, :]) @ c64
    np.testing.assert_allclose(rel, ref, atol=50 * t["atol"], rtol=t["rtol"])
    # Invariant to a global rigid transform applied on the left (a change of world frame).
    G = random_rigid(rng, shape)[..., None, :, :]
    rel_g = relative_to_first((G @ c64).astype(dtype))
    np.testing.assert_allclose(rel_g, rel, atol=100 * t["atol"], rtol=t["rtol"])


def test_relative_to_first_is_not_invariant_to_right_multiplication(rng):
    """Sanity check of the test above: a change of *camera* frame does change relative poses."""
    c2w = random_rigid(rng, (4,))
    G = random_rigid(rng)
    assert not np.allclose(relative_to_first(c2w @ G), relative_to_first(c2w), atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_is_rigid_true_for_rigid(rng, dtype):
    T = random_rigid(rng, (2, 5)).astype(dtype)
    ok = is_rigid(T)
    assert ok.shape == (2, 5) and ok.dtype == np.bool_ and ok.all()
    assert bool(is_rigid(torch.from_numpy(np.eye(4))))
    assert bool(is_rigid(exp_se3(random_twists(rng, (), "large"))))


def test_is_rigid_false_cases(rng):
    T = random_rigid(rng)
    scaled = T.copy()
    scaled[:3, :3] *= 1.01
    sheared = T.copy()
    sheared[:3, :3] = T[:3, :3] @ np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # det +1
    squashed = T.copy()
    squashed[:3, :3] = T[:3, :3] @ np.diag([2.0, 0.5, 1.0])  # det +1
    reflection = T.copy()
    reflection[:3, 0] *= -1  # orthogonal, det -1
    bad_row = T.copy()
    bad_row[3, 0] = 0.1
    bad_w = T.copy()
    bad_w[3, 3] = 2.0
    nan = T.copy()
    nan[1, 3] = np.nan
    inf = T.copy()
    inf[0, 3] = np.inf
    nan_rot = T.copy()
    nan_rot[0, 0] = np.nan
    batch = np.stack([T, scaled, sheared, squashed, reflection, bad_row, bad_w, nan, inf, nan_rot, T])
    assert is_rigid(batch).tolist() == [True] + [False] * 9 + [True]
    # Wrong shapes are not rigid transforms (not an error).
    assert not np.any(is_rigid(np.eye(3)))
    assert not np.any(is_rigid(T[:3, :]))
    assert not np.any(is_rigid(np.zeros((2, 4, 3))))
    assert is_rigid(np.zeros((2, 4, 3))).shape == (2,)


def test_is_rigid_tolerance(rng):
    T = random_rigid(rng)
    T[0, 0] += 1e-7
    assert bool(is_rigid(T))
    assert not bool(is_rigid(T, atol=1e-9))
    T[0, 0] += 1e-3
    assert not bool(is_rigid(T))


# --------------------------------------------------------------------------- intrinsics


@pytest.mark.parametrize("fov", [1.0, 45.0, 60.0, 90.0, 120.0, 179.0])
@pytest.mark.parametrize("hw", [(480, 640), (5, 7), (256, 256), (1, 1)])
def test_intrinsics_from_fov(fov, hw):
    H, W = hw
    K = intrinsics_from_fov(fov, H, W)
    assert isinstance(K, torch.Tensor) and K.shape == (3, 3) and K.dtype == torch.float64
    fx = W / 2 / math.tan(math.radians(fov) / 2)
    expected = np.array([[fx, 0, (W - 1) / 2], [0, fx, (H - 1) / 2], [0, 0, 1]])
    np.testing.assert_allclose(K.numpy(), expected, rtol=1e-14)
    # The left edge of pixel 0 (u = -0.5) and the right edge of pixel W-1 (u = W-0.5) lie at
    # +-fov/2 from the optical axis.
    K = K.numpy()
    for u in (-0.5, W - 0.5):
        x = (u - K[0, 2]) / K[0, 0]
        assert math.degrees(math.atan(abs(x))) == pytest.approx(fov / 2, rel=1e-12)


def test_intrinsics_from_fov_90_and_fov_y():
    K = intrinsics_from_fov(90.0, 480, 640).numpy()
    assert K[0, 0] == pytest.approx(320.0) and K[1, 1] == pytest.approx(320.0)
    K = intrinsics_from_fov(90.0, 480, 640, fov_y_deg=60.0).numpy()
    assert K[0, 0] == pytest.approx(320.0)
    assert K[1, 1] == pytest.approx(240.0 / math.tan(math.radians(30.0)))
    assert (K[0, 2], K[1, 2]) == (319.5, 239.5)
    # A vertical fov consistent with square pixels gives fx == fy.
    fov_y = 2 * math.degrees(math.atan(240.0 / 320.0))
    K = intrinsics_from_fov(90.0, 480, 640, fov_y_deg=fov_y).numpy()
    assert K[1, 1] == pytest.approx(K[0, 0], rel=1e-12)
    assert intrinsics_from_fov(60.0, 8, 8, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(fov_x_deg=0.0, height=4, width=4),
        dict(fov_x_deg=-10.0, height=4, width=4),
        dict(fov_x_deg=180.0, height=4, width=4),
        dict(fov_x_deg=270.0, height=4, width=4),
        dict(fov_x_deg=float("nan"), height=4, width=4),
        dict(fov_x_deg=60.0, height=4, width=4, fov_y_deg=0.0),
        dict(fov_x_deg=60.0, height=4, width=4, fov_y_deg=180.0),
        dict(fov_x_deg=60.0, height=0, width=4),
        dict(fov_x_deg=60.0, height=4, width=0),
        dict(fov_x_deg=60.0, height=-2, width=4),
    ],
)
def test_intrinsics_from_fov_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        intrinsics_from_fov(**kwargs)


def project(K: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Pixel coordinates ``(N, 2)`` of camera-frame points ``X (N, 3)``."""
    p = X @ K.T
    return p[:, :2] / p[:, 2:]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "from_hw,to_hw",
    [((480, 640), (60, 80)), ((256, 256), (32, 32)), ((100, 200), (50, 300)), ((90, 160), (360, 640)), ((5, 7), (3, 11))],
)
def test_scale_intrinsics_maps_image_points(rng, dtype, from_hw, to_hw):
    H, W = from_hw
    K = np.array([[1.3 * W, 0.7, 0.45 * W], [0.0, 1.1 * W, 0.55 * H], [0.0, 0.0, 1.0]])  # skew, off-centre
    K = K.astype(dtype)
    K_in = K.copy()
    K2 = scale_intrinsics(K, from_hw, to_hw)
    assert isinstance(K2, np.ndarray) and K2.dtype == dtype and K2.shape == (3, 3)
    np.testing.assert_array_equal(K, K_in)  # input not modified
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    X = np.concatenate([rng.normal(size=(20, 2)), rng.uniform(0.5, 5.0, size=(20, 1))], -1)
    uv = project(K.astype(np.float64), X)
    uv2 = project(K2.astype(np.float64), X)
    expected = np.stack([(uv[:, 0] + 0.5) * sx - 0.5, (uv[:, 1] + 0.5) * sy - 0.5], -1)
    np.testing.assert_allclose(uv2, expected, rtol=tol(dtype)["rtol"], atol=1e3 * tol(dtype)["atol"])
    # The image's outer edges map to the new image's outer edges.
    np.testing.assert_allclose(K2[2], [0, 0, 1])


def test_scale_intrinsics_latent_grid_by_8_and_batched():
    K = intrinsics_from_fov(60.0, 480, 640)
    K8 = scale_intrinsics(K, (480, 640), (60, 80))
    assert isinstance(K8, torch.Tensor)
    # Same fov on the smaller grid: equals intrinsics_from_fov at the latent size.
    torch.testing.assert_close(K8, intrinsics_from_fov(60.0, 60, 80), rtol=1e-14, atol=1e-12)
    # Batched K: each scaled independently; round trip back to full size restores K.
    Ks = torch.stack([intrinsics_from_fov(f, 480, 640) for f in (40.0, 60.0, 90.0)])
    Ks8 = scale_intrinsics(Ks, (480, 640), (60, 80))
    assert Ks8.shape == (3, 3, 3)
    for i in range(3):
        torch.testing.assert_close(Ks8[i], scale_intrinsics(Ks[i], (480, 640), (60, 80)))
    torch.testing.assert_close(scale_intrinsics(Ks8, (60, 80), (480, 640)), Ks, rtol=1e-14, atol=1e-12)


# --------------------------------------------------------------------------- rays and Plücker maps


def loop_reference(c2w: np.ndarray, K: np.ndarray, H: int, W: int):
    """Literal per-pixel rays: ``d = R K^-1 [u, v, 1]`` normalised, ``o`` the camera centre."""
    R, o = c2w[:3, :3], c2w[:3, 3]
    Kinv = np.linalg.inv(K)
    origins = np.zeros((H, W, 3))
    dirs = np.zeros((H, W, 3))
    plucker = np.zeros((H, W, 6))
    for v in range(H):
        for u in range(W):
            d = R @ Kinv @ np.array([u, v, 1.0])
            d = d / np.linalg.norm(d)
            origins[v, u] = o
            dirs[v, u] = d
            plucker[v, u, :3] = d
            plucker[v, u, 3:] = np.cross(o, d)
    return origins, dirs, plucker


def random_K(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    return np.array(
        [
            [rng.uniform(0.8, 1.5) * W, rng.uniform(-0.5, 0.5), rng.uniform(0.3, 0.7) * W],
            [0.0, rng.uniform(0.8, 1.5) * W, rng.uniform(0.3, 0.7) * H],
            [0.0, 0.0, 1.0],
        ]
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_pixel_rays_and_plucker_single_pose(rng, dtype):
    H, W = 5, 7
    c2w = random_rigid(rng).astype(dtype)
    K = random_K(rng, H, W).astype(dtype)
    origins, dirs = pixel_rays(c2w, K, H, W)
    pl = plucker_map(c2w, K, H, W)
    assert isinstance(pl, np.ndarray) and pl.shape == (H, W, 6) and pl.dtype == dtype
    assert origins.shape == dirs.shape == (H, W, 3) and dirs.dtype == dtype
    o_ref, d_ref, pl_ref = loop_reference(c2w.astype(np.float64), K.astype(np.float64), H, W)
    t = tol(dtype)
    np.testing.assert_allclose(origins, o_ref, atol=t["atol"], rtol=t["rtol"])
    np.testing.assert_allclose(dirs, d_ref, atol=t["atol"], rtol=t["rtol"])
    np.testing.assert_allclose(pl, pl_ref, atol=10 * t["atol"], rtol=t["rtol"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_plucker_batch_with_per_pose_K(rng, dtype):
    H, W = 5, 7
    c2w = random_rigid(rng, (3,)).astype(dtype)
    K = np.stack([random_K(rng, H, W) for _ in range(3)]).astype(dtype)
    pl = plucker_map(c2w, K, H, W)
    assert pl.shape == (3, H, W, 6) and pl.dtype == dtype
    t = tol(dtype)
    for b in range(3):
        _, _, ref = loop_reference(c2w[b].astype(np.float64), K[b].astype(np.float64), H, W)
        np.testing.assert_allclose(pl[b], ref, atol=10 * t["atol"], rtol=t["rtol"])
    # One shared K broadcasts against a (2, 3) batch of poses.
    c2w2 = random_rigid(rng, (2, 3)).astype(dtype)
    pl2 = plucker_map(c2w2, K[0], H, W)
    assert pl2.shape == (2, 3, H, W, 6)
    for idx in np.ndindex(2, 3):
        _, _, ref = loop_reference(c2w2[idx].astype(np.float64), K[0].astype(np.float64), H, W)
        np.testing.assert_allclose(pl2[idx], ref, atol=10 * t["atol"], rtol=t["rtol"])


def test_plucker_properties(rng):
    H, W = 5, 7
    c2w = random_rigid(rng, (3,))
    K = intrinsics_from_fov(70.0, H, W).numpy()  # principal point (3, 2): a pixel centre
    pl = plucker_map(c2w, K, H, W)
    d, m = pl[..., :3], pl[..., 3:]
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-14)
    # Plücker constraint d . m = 0.
    np.testing.assert_allclose((d * m).sum(-1), 0.0, atol=1e-12)
    # The ray through the principal point is the camera's z-axis in world.
    np.testing.assert_allclose(d[:, 2, 3], c2w[:, :3, 2], atol=1e-14)
    # Pixels right of / below the centre point towards the camera's +x / +y.
    R = c2w[:, :3, :3]
    d_cam = np.einsum("bji,bhwj->bhwi", R, d)
    assert np.all(d_cam[:, :, 4:, 0] > 0) and np.all(d_cam[:, :, :3, 0] < 0)
    assert np.all(d_cam[:, 3:, :, 1] > 0) and np.all(d_cam[:, :2, :, 1] < 0)
    assert np.all(d_cam[..., 2] > 0)
    # The moment does not depend on the point chosen on the ray.
    o = c2w[:, None, None, :3, 3]
    np.testing.assert_allclose(np.cross(o + 2.5 * d, d), m, atol=1e-12)
    np.testing.assert_allclose(np.cross(o - 7.0 * d, d), m, atol=1e-12)
    # ... but does depend on the ray: shifting the camera sideways changes it.
    shifted = c2w.copy()
    shifted[:, :3, 3] += c2w[:, :3, 0]
    assert not np.allclose(plucker_map(shifted, K, H, W)[..., 3:], m, atol=1e-3)


def test_pixel_rays_origins_are_camera_centre_and_torch_io(rng):
    H, W = 4, 6
    c2w = torch.from_numpy(random_rigid(rng, (2,))).float()
    K = intrinsics_from_fov(60.0, H, W)  # float64 K with a float32 pose: output follows the pose
    origins, dirs = pixel_rays(c2w, K, H, W)
    assert isinstance(origins, torch.Tensor) and isinstance(dirs, torch.Tensor)
    assert origins.shape == dirs.shape == (2, H, W, 3)
    assert dirs.dtype == torch.float32 and origins.dtype == torch.float32
    torch.testing.assert_close(origins, c2w[:, None, None, :3, 3].expand(2, H, W, 3))
    pl = plucker_map(c2w, K, H, W)
    assert isinstance(pl, torch.Tensor) and pl.shape == (2, H, W, 6) and pl.dtype == torch.float32


def test_latent_plucker_matches_full_resolution_rays(rng):
    """Rays of the latent grid (scaled K) pass through the centres of the latent cells in
    the full-resolution image: latent pixel (i, j) <-> full pixel ((j + .5) r - .5, (i + .5) r - .5)."""
    H, W, r = 48, 64, 8
    c2w = random_rigid(rng)
    K = random_K(rng, H, W)
    K_lat = scale_intrinsics(K, (H, W), (H // r, W // r))
    _, d_lat = pixel_rays(c2w, K_lat, H // r, W // r)
    Kinv = np.linalg.inv(K)
    for i in range(H // r):
        for j in range(W // r):
            uv = np.array([(j + 0.5) * r - 0.5, (i + 0.5) * r - 0.5, 1.0])
            d = c2w[:3, :3] @ Kinv @ uv
            np.testing.assert_allclose(d_lat[i, j], d / np.linalg.norm(d), atol=1e-13)


# --------------------------------------------------------------------------- camera metrics


def trajectory(rng: np.random.Generator, shape=(), F: int = 8) -> np.ndarray:
    """A smooth random camera trajectory ``(..., F, 4, 4)`` (first frame a random pose)."""
    c2w0 = random_rigid(rng, shape)
    twist = random_twists(rng, shape, "general")
    rest = integrate_twist(c2w0, twist, 0.2, F - 1)
    return np.concatenate([c2w0[..., None, :, :], rest], -3)


def perturb(rng: np.random.Generator, traj: np.ndarray, scale: float = 0.05) -> np.ndarray:
    """Right-multiply every frame by a small random rigid motion."""
    return traj @ exp_se3(scale * rng.normal(size=traj.shape[:-2] + (6,)))


def reference_errors(est: np.ndarray, cmd: np.ndarray):
    """Straightforward loop implementation of RotErr / TransErr / CamMC for one trajectory."""
    est_rel = [np.linalg.inv(est[0]) @ T for T in est]
    cmd_rel = [np.linalg.inv(cmd[0]) @ T for T in cmd]
    num = sum(a[:3, 3] @ b[:3, 3] for a, b in zip(est_rel, cmd_rel))
    den = sum(a[:3, 3] @ a[:3, 3] for a in est_rel)
    s = num / den
    rot = trans = mc = 0.0
    for a, b in zip(est_rel, cmd_rel):
        rot += math.degrees(Rotation.from_matrix(a[:3, :3].T @ b[:3, :3]).magnitude())
        trans += np.linalg.norm(s * a[:3, 3] - b[:3, 3])
        diff = np.concatenate([a[:3, :3] - b[:3, :3], (s * a[:3, 3] - b[:3, 3])[:, None]], 1)
        mc += math.sqrt((diff**2).sum())
    return rot, trans, mc, s


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (3,)])
def test_camera_errors_zero_for_identical(rng, dtype, shape):
    traj = trajectory(rng, shape, F=40).astype(dtype)
    err = camera_errors(traj, traj.copy())
    assert isinstance(err, CameraErrors)
    for field in err:
        assert isinstance(field, np.ndarray) and field.shape == shape
    # Summed over 40 frames; a float32 trajectory must still give (almost exactly) zero.
    np.testing.assert_allclose(err.rot_err_deg, 0.0, atol=1e-4)
    np.testing.assert_allclose(err.trans_err, 0.0, atol=1e-10)
    np.testing.assert_allclose(err.cam_mc, 0.0, atol=1e-10)
    np.testing.assert_allclose(err.scale, 1.0, rtol=1e-10)


def test_camera_errors_matches_loop_reference(rng):
    cmd = trajectory(rng, (4,), F=10)
    est = perturb(rng, cmd, 0.1)
    err = camera_errors(est, cmd)
    for b in range(4):
        rot, trans, mc, s = reference_errors(est[b], cmd[b])
        assert err.rot_err_deg[b] == pytest.approx(rot, rel=1e-9)
        assert err.trans_err[b] == pytest.approx(trans, rel=1e-9)
        assert err.cam_mc[b] == pytest.approx(mc, rel=1e-9)
        assert err.scale[b] == pytest.approx(s, rel=1e-9)
    assert np.all(err.rot_err_deg > 0) and np.all(err.trans_err > 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_camera_errors_invariant_to_global_rigid_transform(rng, dtype):
    cmd = trajectory(rng, (2,), F=12)
    est = perturb(rng, cmd, 0.1)
    base = camera_errors(est.astype(dtype), cmd.astype(dtype))
    G1 = random_rigid(rng, (2,))[:, None]
    G2 = random_rigid(rng, (2,))[:, None]
    rtol = 1e-9 if dtype == np.float64 else 2e-3
    for e, c in [(G1 @ est, cmd), (est, G2 @ cmd), (G1 @ est, G2 @ cmd)]:
        moved = camera_errors(e.astype(dtype), c.astype(dtype))
        for a, b in zip(moved, base):
            np.testing.assert_allclose(a, b, rtol=rtol)


def test_camera_errors_scale_alignment(rng):
    cmd = trajectory(rng, (3,), F=10)
    est = perturb(rng, cmd, 0.1)
    base = camera_errors(est, cmd)
    for k in (0.01, 0.37, 4.0, 250.0):
        scaled = est.copy()
        scaled[..., :3, 3] *= k  # a world known only up to scale
        err = camera_errors(scaled, cmd)
        np.testing.assert_allclose(err.trans_err, base.trans_err, rtol=1e-9)
        np.testing.assert_allclose(err.rot_err_deg, base.rot_err_deg, rtol=1e-9)
        np.testing.assert_allclose(err.cam_mc, base.cam_mc, rtol=1e-9)
        np.testing.assert_allclose(err.scale, base.scale / k, rtol=1e-9)
    # A scaled copy of the commanded trajectory has zero error and scale 1/k.
    scaled = cmd.copy()
    scaled[..., :3, 3] *= 3.0
    err = camera_errors(scaled, cmd)
    np.testing.assert_allclose(err.scale, 1 / 3.0, rtol=1e-12)
    np.testing.assert_allclose(err.trans_err, 0.0, atol=1e-12)
    np.testing.assert_allclose(err.cam_mc, 0.0, atol=1e-12)
    # But rotation errors are not scale-aligned away: rotating does change RotErr.
    assert camera_errors(perturb(rng, scaled, 0.1), cmd).rot_err_deg.min() > 0.1


@pytest.mark.parametrize("F", [2, 5, 16])
def test_camera_errors_extra_rotation_about_z(rng, F):
    cmd = trajectory(rng, (), F=F)
    est = cmd.copy()
    est[1:] = est[1:] @ homogeneous(rot_z(10.0))
    err = camera_errors(est, cmd)
    assert float(err.rot_err_deg) == pytest.approx(10.0 * (F - 1), rel=1e-9)
    assert float(err.trans_err) == pytest.approx(0.0, abs=1e-10)
    assert float(err.scale) == pytest.approx(1.0, rel=1e-12)
    # ||Rz(10) - I||_F = 2 sqrt(1 - cos 10deg) per frame
    per_frame = 2 * math.sqrt(1 - math.cos(math.radians(10.0)))
    assert float(err.cam_mc) == pytest.approx(per_frame * (F - 1), rel=1e-9)


def test_camera_errors_hand_computed():
    """cmd: x = 0, 1, 2 with identity rotation. est: x = 0, 2, then (4, 2, 0) rotated 90 deg
    about z. Scale s = (2*1 + 4*2) / (2^2 + 4^2 + 2^2) = 10/24; aligned est translations are
    (5/6, 0, 0) and (5/3, 5/6, 0)."""
    cmd = np.stack([homogeneous(np.eye(3), (x, 0.0, 0.0)) for x in (0.0, 1.0, 2.0)])
    est = np.stack(
        [homogeneous(np.eye(3)), homogeneous(np.eye(3), (2.0, 0.0, 0.0)), homogeneous(rot_z(90.0), (4.0, 2.0, 0.0))]
    )
    # Move both into different world frames: nothing may change.
    G1 = homogeneous(rot_z(33.0), (5.0, -1.0, 2.0))
    G2 = homogeneous(rot_z(-70.0), (-3.0, 0.5, 9.0))
    err = camera_errors(G1 @ est, G2 @ cmd)
    assert float(err.scale) == pytest.approx(10 / 24, rel=1e-12)
    assert float(err.rot_err_deg) == pytest.approx(90.0, rel=1e-12)
    d1 = 1 / 6  # |5/6 - 1|
    d2 = math.sqrt((5 / 3 - 2) ** 2 + (5 / 6) ** 2)  # = sqrt(29) / 6
    assert d2 == pytest.approx(math.sqrt(29) / 6)
    assert float(err.trans_err) == pytest.approx(d1 + d2, rel=1e-12)
    # CamMC: frame 1 differs only in t; frame 2 has ||Rz90 - I||_F^2 = 4 plus the t error.
    assert float(err.cam_mc) == pytest.approx(d1 + math.sqrt(4 + d2**2), rel=1e-12)


def test_camera_errors_static_estimate_uses_unit_scale():
    cmd = np.stack([homogeneous(np.eye(3), (x, 0.0, 0.0)) for x in (0.0, 1.0, 2.0)])
    est = np.stack([homogeneous(np.eye(3))] * 3)
    err = camera_errors(est, cmd)
    assert float(err.scale) == 1.0
    assert float(err.trans_err) == pytest.approx(3.0)
    assert np.isfinite(err.cam_mc)


@pytest.mark.parametrize(
    "a,b",
    [((5, 4, 4), (6, 4, 4)), ((2, 5, 4, 4), (5, 4, 4)), ((5, 3, 4), (5, 3, 4)), ((4, 4), (4, 4)), ((5, 4, 4), (5, 4, 3))],
)
def test_camera_errors_rejects_bad_shapes(a, b):
    with pytest.raises(ValueError):
        camera_errors(np.zeros(a), np.zeros(b))


def test_camera_errors_torch_in_torch_out(rng):
    cmd = torch.from_numpy(trajectory(rng, (2,), F=6))
    err = camera_errors(cmd.float(), cmd.float())
    assert isinstance(err, CameraErrors)
    assert all(isinstance(f, torch.Tensor) and f.shape == (2,) for f in err)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotation_angle_deg(rng, dtype):
    axis = rng.normal(size=(50, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    angles = np.concatenate([np.linspace(0.0, 179.0, 46), [179.99, 180.0, 1e-3, 0.01]])
    R0 = random_rotation(rng, (50,))
    R1 = R0 @ exp_so3(axis * np.radians(angles)[:, None])
    got = rotation_angle_deg(R0.astype(dtype), R1.astype(dtype))
    assert got.shape == (50,) and got.dtype == dtype
    atol = 1e-9 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(got, angles, atol=atol)
    np.testing.assert_allclose(rotation_angle_deg(R1, R0), angles, atol=1e-9)  # symmetric


# --------------------------------------------------------------------------- accepts_numpy


@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_in_numpy_out_keeps_dtype(rng, dtype):
    T = random_rigid(rng, (3,)).astype(dtype)
    xi = random_twists(rng, (3,), "general").astype(dtype)
    K = random_K(rng, 4, 5).astype(dtype)
    results = {
        "hat": hat(xi[:, 3:]),
        "exp_so3": exp_so3(xi[:, 3:]),
        "exp_se3": exp_se3(xi),
        "integrate_twist": integrate_twist(T, xi, 0.1, 2),
        "invert_se3": invert_se3(T),
        "relative_to_first": relative_to_first(T),
        "scale_intrinsics": scale_intrinsics(K, (4, 5), (8, 10)),
        "plucker_map": plucker_map(T, K, 4, 5),
        "rotation_angle_deg": rotation_angle_deg(T[:, :3, :3], T[:, :3, :3]),
    }
    results.update(zip(("origins", "dirs"), pixel_rays(T, K, 4, 5)))
    for name, out in results.items():
        assert type(out) is np.ndarray, name
        assert out.dtype == dtype, name
    assert isinstance(pixel_rays(T, K, 4, 5), tuple)


def test_torch_in_torch_out(rng):
    T = torch.from_numpy(random_rigid(rng, (3,)))
    xi = torch.from_numpy(random_twists(rng, (3,), "general"))
    for out in (exp_se3(xi), integrate_twist(T, xi, 0.1, 2), invert_se3(T), relative_to_first(T), is_rigid(T)):
        assert isinstance(out, torch.Tensor)
    assert exp_se3(xi.float()).dtype == torch.float32


def test_accepts_numpy_mixed_and_noncontiguous_inputs(rng):
    # A numpy argument anywhere (positional or keyword) makes the output numpy.
    T = random_rigid(rng, (3,))
    K = intrinsics_from_fov(60.0, 4, 5)  # torch
    out = plucker_map(T, K, 4, 5)
    assert isinstance(out, np.ndarray)
    out_kw = plucker_map(c2w=torch.from_numpy(T), K=K.numpy(), height=4, width=5)
    assert isinstance(out_kw, np.ndarray)
    np.testing.assert_allclose(out_kw, out, atol=1e-15)
    # Non-contiguous views (transposed, strided, negative strides) are handled correctly.
    Tt = np.ascontiguousarray(np.swapaxes(T, -1, -2)).swapaxes(-1, -2)
    assert not Tt.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(invert_se3(Tt), invert_se3(T), atol=1e-15)
    big = random_rigid(rng, (6,))
    np.testing.assert_allclose(invert_se3(big[::2]), invert_se3(np.ascontiguousarray(big[::2])), atol=0)
    np.testing.assert_allclose(invert_se3(big[::-1]), invert_se3(big)[::-1], atol=0)
    # Inputs are never modified.
    before = T.copy()
    invert_se3(T), relative_to_first(T), is_rigid(T), camera_errors(T, T)
    np.testing.assert_array_equal(T, before)


def test_accepts_numpy_decorator_directly():
    @accepts_numpy
    def f(a, b=None):
        """doc"""
        assert isinstance(a, torch.Tensor)
        return a * 2, (a + 1 if b is None else b), "tag"

    x = np.arange(3, dtype=np.float32)
    out = f(x)
    assert f.__doc__ == "doc" and f.__name__ == "f"
    assert isinstance(out, tuple) and isinstance(out[0], np.ndarray) and out[0].dtype == np.float32
    assert out[2] == "tag"
    np.testing.assert_array_equal(out[0], [0, 2, 4])
    t_out = f(torch.arange(3.0))
    assert isinstance(t_out[0], torch.Tensor) and isinstance(t_out[1], torch.Tensor)
    kw_out = f(torch.arange(3.0), b=np.ones(2))
    assert isinstance(kw_out[0], np.ndarray) and isinstance(kw_out[1], np.ndarray)


def test_unproject_depth_lands_on_the_pixel_rays_at_the_given_z_depth():
    from world_model.geometry import exp_se3, unproject_depth

    rng = np.random.default_rng(3)
    c2w = np.stack([np.asarray(exp_se3(rng.normal(size=6))) for _ in range(2)])
    K = np.array([[20.0, 0, 7.5], [0, 22.0, 5.5], [0, 0, 1]])
    depth = rng.uniform(0.5, 9.0, (2, 12, 16))
    for stride in (1, 3):
        world = unproject_depth(depth, c2w, K, stride)
        assert world.shape == (2, 4 if stride == 3 else 12, 6 if stride == 3 else 16, 3) and world.dtype == np.float64
        cam = np.einsum("fji,fhwj->fhwi", c2w[:, :3, :3], world - c2w[:, None, None, :3, 3])  # back to each camera
        z = depth[:, ::stride, ::stride]
        np.testing.assert_allclose(cam[..., 2], z, rtol=1e-12)
        pix = np.einsum("ij,fhwj->fhwi", K, cam / cam[..., 2:])
        v, u = np.meshgrid(np.arange(0, 12, stride), np.arange(0, 16, stride), indexing="ij")
        np.testing.assert_allclose(pix[..., 0], np.broadcast_to(u, z.shape), atol=1e-9)
        np.testing.assert_allclose(pix[..., 1], np.broadcast_to(v, z.shape), atol=1e-9)
