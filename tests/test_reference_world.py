"""Scenes, the ray caster and collision queries of the reference world."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from world_model.geometry import intrinsics_from_fov, look_at, pixel_rays, pose_from_yaw_pitch
from sanawm_gym.reference_world import OBJECT_KINDS, SceneConfig, generate_scene, render
from sanawm_gym.reference_world.collision import segment_collision, signed_distance
from sanawm_gym.reference_world.raycast import trace
from sanawm_gym.reference_world.scene import MAX_BOXES, MAX_CYLINDERS, MAX_SPHERES, PRIMITIVE_OFFSETS, _Builder, _pack


def empty_scene(boxes=(), cylinders=(), spheres=(), half=50.0):
    """A hand-built scene (no boundary walls unless given), for analytic checks."""
    b = _Builder()
    b.material([0.5, 0.5, 0.5], [0.4, 0.4, 0.4], 0, 1.0)  # ground, solid
    m = b.material([0.9, 0.1, 0.1], [0.9, 0.1, 0.1], 0, 1.0)
    for lo, hi in boxes:
        b.box(list(lo), list(hi), m)
    for c in cylinders:
        b.cylinders.append((list(c), m))
    for s in spheres:
        b.spheres.append((list(s), m))
    return _pack(b, [0, 0, 1], [0.2, 0.4, 0.9], [0.8, 0.8, 0.9], 1e6, half, SceneConfig(), [], [], None)


# ----------------------------------------------------------------------------------- scenes
def test_scene_is_deterministic_and_seed_dependent():
    a, b, c = generate_scene(11), generate_scene(11), generate_scene(12)
    for name in ("box_lo", "box_hi", "cylinders", "spheres", "color_a", "pattern"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.box_lo, c.box_lo) or not torch.equal(a.cylinders, c.cylinders)
    assert a.object_names == b.object_names


def test_scene_tensors_have_fixed_shapes():
    shapes = {(tuple(s.box_lo.shape), tuple(s.cylinders.shape), tuple(s.spheres.shape), tuple(s.color_a.shape))
              for s in (generate_scene(i) for i in range(20))}
    assert len(shapes) == 1  # so the compiled ray caster never recompiles
    assert shapes.pop()[:3] == ((MAX_BOXES, 3), (MAX_CYLINDERS, 5), (MAX_SPHERES, 4))


def test_at_least_ten_object_kinds_with_distinct_looks():
    assert len(OBJECT_KINDS) >= 10
    looks = {(k.shape, k.color_a, k.pattern) for k in OBJECT_KINDS}
    assert len(looks) == len(OBJECT_KINDS)
    colours = np.array([k.color_a for k in OBJECT_KINDS])
    dists = np.linalg.norm(colours[:, None] - colours[None], axis=-1) + np.eye(len(colours))
    assert dists.min() > 0.1  # primary colours pairwise distinct
    seen = {name for i in range(40) for name in generate_scene(i).object_names}
    assert seen == {k.name for k in OBJECT_KINDS}


def test_objects_do_not_overlap_and_stay_inside():
    for seed in range(15):
        s = generate_scene(seed)
        assert 1 <= s.num_objects <= 18
        xy = s.object_positions[:, :2]
        assert (np.abs(xy) < s.arena_half).all()
        d = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + 1e3 * np.eye(len(xy))
        assert d.min() > 0.9  # min_gap plus sizes


def test_layouts():
    open_ = generate_scene(0, SceneConfig(layout="open"))
    rooms = generate_scene(0, SceneConfig(layout="rooms"))
    n_walls = lambda s: int((s.box_lo[:, 2] == 0).logical_and(s.box_hi[:, 2] == s.wall_height).sum())  # noqa: E731
    assert n_walls(rooms) > n_walls(open_)
    with pytest.raises(ValueError, match="layout"):
        SceneConfig(layout="maze")
    with pytest.raises(ValueError, match="arena_size"):
        SceneConfig(arena_size=(2.0, 3.0))


# ---------------------------------------------------------------------------------- renders
def test_ground_depth_is_exact_everywhere():
    """A camera at height h pitched down sees the plane z=0: depth matches the analytic
    intersection of every pixel's ray."""
    scene = empty_scene()
    c2w = pose_from_yaw_pitch(np.array([0.0, 0.0, 1.5]), 0.3, -0.2)
    K = intrinsics_from_fov(70, 24, 32).numpy()
    out = render(scene, c2w, K, 24, 32, backend="eager")
    o, d = pixel_rays(c2w, K, 24, 32)
    t = np.where(d[..., 2] < 0, -o[..., 2] / np.minimum(d[..., 2], -1e-12), np.inf)
    z = t * (d @ c2w[:3, 2])
    ground = np.isfinite(z)
    assert ground.any() and (~ground).any()  # horizon in view
    np.testing.assert_allclose(out.depth[ground], z[ground], rtol=1e-4)
    assert np.isinf(out.depth[~ground]).all()


@pytest.mark.parametrize("shape", ["box", "cylinder", "sphere"])
def test_primitive_depth_at_image_centre(shape):
    # Camera at (0, 0, 1) looking along +x; primitive front surface at x = 3.
    if shape == "box":
        scene = empty_scene(boxes=[((3.0, -0.5, 0.0), (4.0, 0.5, 2.0))])
    elif shape == "cylinder":
        scene = empty_scene(cylinders=[(3.5, 0.0, 0.5, 0.0, 2.0)])
    else:
        scene = empty_scene(spheres=[(3.5, 0.0, 1.0, 0.5)])
    c2w = pose_from_yaw_pitch(np.array([0.0, 0.0, 1.0]), 0.0, 0.0)
    K = intrinsics_from_fov(60, 9, 9).numpy()  # odd size: the centre pixel is on the axis
    out = render(scene, c2w, K, 9, 9, backend="eager")
    assert out.depth[4, 4] == pytest.approx(3.0, abs=1e-4)
    assert tuple(out.rgb[4, 4]) != tuple(out.rgb[0, 4])  # object differs from the sky above


def test_cylinder_top_cap_and_sphere_from_above():
    scene = empty_scene(cylinders=[(0.0, 0.0, 0.6, 0.0, 1.0)], spheres=[(5.0, 0.0, 1.0, 0.5)])
    K = intrinsics_from_fov(30, 5, 5).numpy()
    down = look_at(np.array([0.0, 0.0, 3.0]), np.array([0.0, 1e-6, 0.0]), np.array([1.0, 0.0, 0.0]))
    assert render(scene, down, K, 5, 5, backend="eager").depth[2, 2] == pytest.approx(2.0, abs=1e-4)
    down2 = look_at(np.array([5.0, 0.0, 3.0]), np.array([5.0, 1e-6, 0.0]), np.array([1.0, 0.0, 0.0]))
    assert render(scene, down2, K, 5, 5, backend="eager").depth[2, 2] == pytest.approx(1.5, abs=1e-4)


def test_primitive_ids_and_sky():
    scene = empty_scene(spheres=[(3.0, 0.0, 1.0, 0.5)])
    c2w = pose_from_yaw_pitch(np.array([0.0, 0.0, 1.0]), 0.0, 0.0)
    o, d = pixel_rays(torch.from_numpy(c2w), intrinsics_from_fov(60, 9, 9), 9, 9)
    _, t, prim = trace(scene, o, d, backend="eager")
    prim = prim.reshape(9, 9)
    assert prim[4, 4] == PRIMITIVE_OFFSETS["sphere"]
    assert prim[0, 4] == -1 and math.isinf(t.reshape(9, 9)[0, 4])  # sky
    assert prim[8, 4] == 0  # ground


def test_batch_render_equals_one_by_one():
    scene = generate_scene(5)
    rng = np.random.default_rng(0)
    poses = np.stack([pose_from_yaw_pitch(np.r_[rng.uniform(-1, 1, 2), 1.2], rng.uniform(-3, 3), 0.1) for _ in range(3)])
    K = intrinsics_from_fov(90, 20, 28).numpy()
    batch = render(scene, poses, K, 20, 28)
    assert batch.rgb.shape == (3, 20, 28, 3) and batch.rgb.dtype == np.uint8
    assert batch.depth.shape == (3, 20, 28) and batch.depth.dtype == np.float32
    for i in range(3):
        one = render(scene, poses[i], K, 20, 28)
        np.testing.assert_array_equal(one.rgb, batch.rgb[i])
        np.testing.assert_array_equal(one.depth, batch.depth[i])


def test_compiled_backend_matches_eager_reference():
    scene = generate_scene(9)
    poses = np.stack([pose_from_yaw_pitch(np.array([0.3, -0.2, 1.1]), y, p) for y, p in [(0.0, 0.0), (2.0, -0.3), (-2.5, 0.4)]])
    K = intrinsics_from_fov(90, 48, 40).numpy()  # 5760 rays: two chunks, the last one padded
    eager = render(scene, poses, K, 48, 40, backend="eager")
    compiled = render(scene, poses, K, 48, 40, backend="compiled")
    diff = np.abs(eager.rgb.astype(int) - compiled.rgb.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    finite = np.isfinite(eager.depth)
    np.testing.assert_array_equal(finite, np.isfinite(compiled.depth))
    np.testing.assert_allclose(compiled.depth[finite], eager.depth[finite], rtol=1e-5)


def test_views_differ_between_scenes_and_directions():
    K = intrinsics_from_fov(90, 32, 32).numpy()
    pose = lambda yaw: pose_from_yaw_pitch(np.array([0.0, 0.0, 1.2]), yaw, 0.0)  # noqa: E731
    a = render(generate_scene(1), np.stack([pose(0.0), pose(np.pi)]), K, 32, 32).rgb.astype(float)
    b = render(generate_scene(2), pose(0.0), K, 32, 32).rgb.astype(float)
    assert np.abs(a[0] - a[1]).mean() > 5
    assert np.abs(a[0] - b).mean() > 5


def test_render_rejects_bad_input():
    scene = generate_scene(0)
    K = intrinsics_from_fov(90, 8, 8).numpy()
    with pytest.raises(ValueError, match="c2w"):
        render(scene, np.eye(3), K, 8, 8)
    with pytest.raises(ValueError, match="K must"):
        render(scene, np.eye(4), np.eye(4), 8, 8)
    with pytest.raises(ValueError, match="image size"):
        render(scene, np.eye(4), K, 0, 8)
    with pytest.raises(ValueError, match="backend"):
        render(scene, np.eye(4), K, 8, 8, backend="cuda-magic")


# -------------------------------------------------------------------------------- collision
def test_signed_distance_values():
    scene = empty_scene(boxes=[((1.0, -1.0, 0.0), (2.0, 1.0, 1.0))], cylinders=[(-3.0, 0.0, 0.5, 0.0, 2.0)],
                        spheres=[(0.0, 4.0, 1.0, 0.5)])
    pts = np.array([
        [0.0, 0.0, 0.5],  # 1 m from the box face, 0.5 m from the ground
        [0.0, 0.0, 1.5],  # nearest the box edge at x=1, z=1: sqrt(1 + 0.25)
        [-2.0, 0.0, 1.5],  # 0.5 from the cylinder side
        [0.0, 3.0, 1.0],  # 0.5 from the sphere
        [1.5, 0.0, 0.5],  # inside the box: -0.5 (nearest face at z=1 or x faces)
    ])
    np.testing.assert_allclose(signed_distance(scene, pts), [0.5, math.sqrt(1.25), 0.5, 0.5, -0.5], atol=1e-5)
    ceiling = signed_distance(scene, np.array([0.0, -10.0, 2.8]))
    assert ceiling == pytest.approx(scene.wall_height - 2.8, abs=1e-5)


def test_segment_collision_matches_dense_sampling():
    scene = generate_scene(4)
    rng = np.random.default_rng(1)
    start = np.concatenate([rng.uniform(-4, 4, (200, 2)), rng.uniform(0.5, 2.0, (200, 1))], 1)
    end = start + rng.normal(0, 1.0, (200, 3))
    hit = segment_collision(scene, start, end, 0.2)
    s = np.linspace(0, 1, 2001)
    dense = signed_distance(scene, start[:, None] + (end - start)[:, None] * s[None, :, None]) < 0.2
    np.testing.assert_array_equal(hit.collided, dense.any(1))
    assert hit.collided.any() and (~hit.collided).any()
    first = np.where(dense.any(1), dense.argmax(1) / 2000, 1.0)
    assert (hit.free_fraction <= first + 1e-6).all()  # never reports more free travel than there is
    length = np.linalg.norm(end - start, axis=1)
    assert ((first - hit.free_fraction) * length <= 0.2 / 4 + 1e-3)[hit.collided].all()
    with pytest.raises(ValueError, match="radius"):
        segment_collision(scene, start, end, 0.0)
