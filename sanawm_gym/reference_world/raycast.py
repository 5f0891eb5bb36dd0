"""A vectorised ray caster for reference-world scenes: RGB and depth for many cameras at once.

Every ray is tested against every primitive slot of the scene (axis-aligned boxes,
vertical cylinders with a top cap, spheres, the ground plane) in closed form; the nearest
hit is textured procedurally (:class:`~sanawm_gym.reference_world.scene.Pattern`) and lit
by an ambient term plus a sun (Lambert, no shadows), with distance fog towards the horizon
colour; rays that hit nothing see a sky gradient with a sun glow.

Two backends compute the same function on fixed-size chunks of ``RAY_CHUNK`` rays:
``"eager"`` is the plain PyTorch reference; ``"compiled"`` is the same code through
``torch.compile`` (Inductor fuses the per-primitive tests into one loop, about 10x faster
on a CPU). ``"auto"`` (the default, or the ``SANAWM_RENDER_BACKEND`` environment variable)
compiles and falls back to eager with a warning if compilation fails.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from typing import Callable, NamedTuple

import torch

from world_model.geometry import pixel_rays
from world_model.geometry._arrays import accepts_numpy
from sanawm_gym.reference_world.scene import PRIMITIVE_OFFSETS, Pattern, Scene

__all__ = ["FAR", "RAY_CHUNK", "RenderOutput", "cast_rays", "render", "render_backend"]

log = logging.getLogger(__name__)

FAR = 1.0e4
"""Hits beyond this distance (metres) count as misses: parked slots sit much farther."""
RAY_CHUNK = 4096
"""Rays per kernel call (one 64x64 image); the last chunk is padded, so shapes never change."""
_EPS = 1.0e-4
_TWO_PI = 2.0 * math.pi


class RenderOutput(NamedTuple):
    rgb: torch.Tensor
    """``(..., H, W, 3)`` uint8."""
    depth: torch.Tensor
    """``(..., H, W)`` float32 z-depth along the camera's optical axis (metres); ``inf`` for sky."""


# --------------------------------------------------------------------------- intersections
def _nearest_box(o: torch.Tensor, inv_d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Slab test. ``o, inv_d (N, 3)``, ``lo, hi (B, 3)`` -> nearest ``t (N,)``, slot ``(N,)``."""
    t1 = (lo[None] - o[:, None]) * inv_d[:, None]  # (N, B, 3)
    t2 = (hi[None] - o[:, None]) * inv_d[:, None]
    t_near = torch.minimum(t1, t2).amax(-1)  # (N, B)
    t_far = torch.maximum(t1, t2).amin(-1)
    hit = (t_near <= t_far) & (t_near > _EPS)
    return torch.where(hit, t_near, torch.full_like(t_near, math.inf)).min(-1)


def _nearest_cylinder(o: torch.Tensor, d: torch.Tensor, cyl: torch.Tensor):
    """Vertical cylinders ``[cx, cy, r, z0, z1] (C, 5)``: side wall and top cap."""
    ox = o[:, 0:1] - cyl[None, :, 0]  # (N, C)
    oy = o[:, 1:2] - cyl[None, :, 1]
    r = cyl[None, :, 2]
    dx, dy, dz = d[:, 0:1], d[:, 1:2], d[:, 2:3]
    a = (dx * dx + dy * dy).clamp_min(1e-12)  # (N, 1)
    half_b = ox * dx + oy * dy
    c = ox * ox + oy * oy - r * r
    disc = half_b * half_b - a * c
    t_side = (-half_b - disc.clamp_min(0).sqrt()) / a
    z_side = o[:, 2:3] + t_side * dz
    side_ok = (disc >= 0) & (t_side > _EPS) & (z_side >= cyl[None, :, 3]) & (z_side <= cyl[None, :, 4])
    safe_dz = torch.where(dz.abs() < 1e-9, torch.full_like(dz, 1e-9), dz)
    t_cap = (cyl[None, :, 4] - o[:, 2:3]) / safe_dz
    cx_ = ox + t_cap * dx
    cy_ = oy + t_cap * dy
    cap_ok = (t_cap > _EPS) & (cx_ * cx_ + cy_ * cy_ <= r * r)
    inf = torch.full_like(t_side, math.inf)
    t = torch.minimum(torch.where(side_ok, t_side, inf), torch.where(cap_ok, t_cap, inf))
    return t.min(-1)


def _nearest_sphere(o: torch.Tensor, d: torch.Tensor, sph: torch.Tensor):
    """Spheres ``[cx, cy, cz, r] (S, 4)``."""
    oc = o[:, None] - sph[None, :, :3]  # (N, S, 3)
    half_b = (oc * d[:, None]).sum(-1)
    c = (oc * oc).sum(-1) - sph[None, :, 3] ** 2
    disc = half_b * half_b - c
    t = -half_b - disc.clamp_min(0).sqrt()
    ok = (disc >= 0) & (t > _EPS)
    return torch.where(ok, t, torch.full_like(t, math.inf)).min(-1)


# ------------------------------------------------------------------------------ texturing
def _frac(x: torch.Tensor) -> torch.Tensor:
    return x - torch.floor(x)


def _parity(x: torch.Tensor) -> torch.Tensor:
    return torch.remainder(torch.floor(x), 2.0)


def _pattern_mix(pattern: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mix factor in [0, 1] between a material's two colours, for surface coordinates
    ``u, v`` in metres; ``pattern`` is a :class:`Pattern` per ray."""
    a, b = u / scale, v / scale
    row = torch.floor(2 * b)
    bricks = ((_frac(2 * b) < 0.12) | (_frac(a + 0.5 * torch.remainder(row, 2.0)) < 0.06)).float()
    fa, fb = _frac(a) - 0.5, _frac(b) - 0.5
    grain = 0.5 + 0.5 * torch.sin(_TWO_PI * (b + 0.25 * torch.sin(0.7 * a)))
    wood = torch.maximum(grain * 0.6, (_frac(b / 4) < 0.06).float())
    table = torch.stack(
        [
            torch.zeros_like(a),  # SOLID
            torch.remainder(torch.floor(a) + torch.floor(b), 2.0),  # CHECKER
            _parity(b),  # H_STRIPES
            _parity(a),  # V_STRIPES
            bricks,  # BRICKS
            (fa * fa + fb * fb < 0.09).float(),  # DOTS
            ((_frac(a) < 0.08) | (_frac(b) < 0.08)).float(),  # GRID
            _parity(a + b),  # DIAGONAL
            wood,  # WOOD
        ],
        -1,
    )
    assert table.shape[-1] == len(Pattern)
    return table.gather(-1, pattern[:, None])[:, 0]


# ------------------------------------------------------------------------- one chunk of rays
def cast_rays(
    o: torch.Tensor,
    d: torch.Tensor,
    box_lo: torch.Tensor,
    box_hi: torch.Tensor,
    cylinders: torch.Tensor,
    spheres: torch.Tensor,
    color_a: torch.Tensor,
    color_b: torch.Tensor,
    pattern: torch.Tensor,
    pattern_scale: torch.Tensor,
    sun: torch.Tensor,
    zenith: torch.Tensor,
    horizon: torch.Tensor,
    fog_distance: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trace and shade rays ``o, d (N, 3)`` (float32, ``d`` unit) against a scene's tensors.

    Returns ``rgb (N, 3)`` in [0, 1], the hit distance ``t (N,)`` along the ray (``inf``
    for sky) and the global primitive id ``(N,)`` (-1 for sky). This is the reference
    implementation; :func:`render` may run it through ``torch.compile``.
    """
    n = o.shape[0]
    safe_d = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    inv_d = 1.0 / safe_d
    # 1. Nearest hit per primitive type, then overall.
    t_box, i_box = _nearest_box(o, inv_d, box_lo, box_hi)
    t_cyl, i_cyl = _nearest_cylinder(o, d, cylinders)
    t_sph, i_sph = _nearest_sphere(o, d, spheres)
    t_gnd = torch.where(d[:, 2] < -1e-9, -o[:, 2] / safe_d[:, 2], torch.full_like(t_box, math.inf))
    t_all = torch.stack([t_gnd, t_box, t_cyl, t_sph], -1)  # (N, 4)
    t, kind = t_all.min(-1)
    hit = t < FAR
    t = torch.where(hit, t, torch.full_like(t, math.inf))
    prim = torch.stack(
        [
            torch.zeros_like(i_box),
            i_box + PRIMITIVE_OFFSETS["box"],
            i_cyl + PRIMITIVE_OFFSETS["cylinder"],
            i_sph + PRIMITIVE_OFFSETS["sphere"],
        ],
        -1,
    ).gather(-1, kind[:, None])[:, 0]
    p = o + d * torch.where(hit, t, torch.zeros_like(t))[:, None]  # (N, 3) hit point
    px, py, pz = p.unbind(-1)
    zero, one = torch.zeros_like(px), torch.ones_like(px)

    # 2. Normal and surface coordinates (u, v in metres) of the winning primitive.
    lo, hi = box_lo[i_box], box_hi[i_box]  # (N, 3)
    q = (p - (lo + hi) / 2) / ((hi - lo) / 2).clamp_min(1e-6)
    axis = q.abs().argmax(-1)
    box_n = torch.nn.functional.one_hot(axis, 3).float() * torch.sign(q.gather(-1, axis[:, None]))
    box_u = torch.where(axis == 0, py, px)
    box_v = torch.where(axis == 2, py, pz)

    cyl = cylinders[i_cyl]  # (N, 5)
    rx, ry = px - cyl[:, 0], py - cyl[:, 1]
    on_cap = pz >= cyl[:, 4] - 1e-3
    radius = cyl[:, 2].clamp_min(1e-6)
    cyl_n = torch.where(on_cap[:, None], torch.stack([zero, zero, one], -1), torch.stack([rx / radius, ry / radius, zero], -1))
    cyl_u = torch.where(on_cap, px, torch.atan2(ry, rx) * radius)
    cyl_v = torch.where(on_cap, py, pz)

    sph = spheres[i_sph]  # (N, 4)
    s_r = sph[:, 3].clamp_min(1e-6)
    sph_n = (p - sph[:, :3]) / s_r[:, None]
    sph_u = torch.atan2(sph_n[:, 1], sph_n[:, 0]) * s_r
    sph_v = torch.asin(sph_n[:, 2].clamp(-1, 1)) * s_r

    sel = kind[:, None]
    normal = torch.stack([torch.stack([zero, zero, one], -1), box_n, cyl_n, sph_n], 1)  # (N, 4, 3)
    normal = normal.gather(1, sel[:, :, None].expand(n, 1, 3))[:, 0]
    u = torch.stack([px, box_u, cyl_u, sph_u], -1).gather(-1, sel)[:, 0]
    v = torch.stack([py, box_v, cyl_v, sph_v], -1).gather(-1, sel)[:, 0]

    # 3. Texture, light, fog.
    mix = _pattern_mix(pattern[prim], u, v, pattern_scale[prim])[:, None]
    albedo = color_a[prim] * (1 - mix) + color_b[prim] * mix
    light = 0.45 + 0.65 * (normal @ sun).clamp_min(0)
    fog = torch.exp(-torch.where(hit, t, torch.zeros_like(t)) / fog_distance)[:, None]
    surface = albedo * light[:, None] * fog + horizon * (1 - fog)

    # 4. Sky for the rays that hit nothing.
    up = d[:, 2:3].clamp(0, 1)
    glow = (d @ sun).clamp_min(0)[:, None] ** 200
    sky = horizon + (zenith - horizon) * up.sqrt() + 0.8 * glow
    rgb = torch.where(hit[:, None], surface, sky).clamp(0, 1)
    return rgb, t, torch.where(hit, prim, torch.full_like(prim, -1))


# --------------------------------------------------------------------------------- backends
_KERNELS: dict[str, Callable] = {"eager": cast_rays}
_BACKENDS = ("auto", "compiled", "eager")


def render_backend(name: str | None = None) -> str:
    """The backend that :func:`render` uses for ``name`` (``None``: the environment variable
    ``SANAWM_RENDER_BACKEND``, default ``"auto"``), resolved to ``"compiled"`` or ``"eager"``."""
    name = name or os.environ.get("SANAWM_RENDER_BACKEND", "auto")
    if name not in _BACKENDS:
        raise ValueError(f"render backend must be one of {_BACKENDS}, got {name!r}")
    if name == "auto":
        return "eager" if _KERNELS.get("compiled") is cast_rays else "compiled"
    return name


def _kernel(backend: str) -> Callable:
    if backend == "eager":
        return cast_rays
    if "compiled" not in _KERNELS:
        _KERNELS["compiled"] = torch.compile(cast_rays, dynamic=False, fullgraph=True)
    return _KERNELS["compiled"]


def _run_chunks(kernel: Callable, o: torch.Tensor, d: torch.Tensor, scene_args: tuple) -> tuple[torch.Tensor, ...]:
    n = o.shape[0]
    pad = (-n) % RAY_CHUNK
    if pad:
        o = torch.cat([o, o[:1].expand(pad, 3)])
        d = torch.cat([d, d[:1].expand(pad, 3)])
    outs = [kernel(o[i : i + RAY_CHUNK], d[i : i + RAY_CHUNK], *scene_args) for i in range(0, n + pad, RAY_CHUNK)]
    rgb, t, prim = (torch.cat(x)[:n] for x in zip(*outs))
    return rgb, t, prim


def _scene_args(scene: Scene) -> tuple:
    return (
        scene.box_lo, scene.box_hi, scene.cylinders, scene.spheres, scene.color_a, scene.color_b, scene.pattern,
        scene.pattern_scale, scene.sun_direction, scene.sky_zenith, scene.sky_horizon, scene.fog_distance,
    )


@torch.no_grad()
def trace(scene: Scene, origins: torch.Tensor, directions: torch.Tensor, backend: str | None = None):
    """Trace world rays ``(N, 3)`` (any float dtype; directions unit): ``rgb (N, 3)`` float in
    [0, 1], hit distance ``(N,)`` and primitive id ``(N,)``."""
    chosen = render_backend(backend)
    o = origins.reshape(-1, 3).float().contiguous()
    d = directions.reshape(-1, 3).float().contiguous()
    args = _scene_args(scene)
    if chosen == "compiled":
        try:
            return _run_chunks(_kernel("compiled"), o, d, args)
        except Exception as exc:  # compiler missing or broken: keep rendering, slower
            if backend == "compiled":
                raise
            warnings.warn(f"torch.compile of the ray caster failed ({exc!r:.200}); using the eager backend", stacklevel=2)
            _KERNELS["compiled"] = cast_rays
    return _run_chunks(cast_rays, o, d, args)


@accepts_numpy
def render(
    scene: Scene,
    c2w: torch.Tensor,
    K: torch.Tensor,
    height: int,
    width: int,
    backend: str | None = None,
) -> RenderOutput:
    """Render cameras ``c2w (..., 4, 4)`` with intrinsics ``K (3, 3)`` or ``(..., 3, 3)`` at
    ``height x width``: ``rgb (..., H, W, 3)`` uint8 and z-``depth (..., H, W)`` float32.

    Accepts torch or numpy poses (numpy in, numpy out). Rays are built in float64 in the
    camera frame and traced in float32.
    """
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w must have shape (..., 4, 4), got {tuple(c2w.shape)}")
    if K.shape[-2:] != (3, 3):
        raise ValueError(f"K must have shape (3, 3) or (..., 3, 3), got {tuple(K.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    # Unit ray directions in the camera frame, built once per intrinsics in float64, then
    # rotated into the world in float32 (a rotation keeps them unit length).
    eye = torch.eye(4, dtype=torch.float64)
    dirs_cam = pixel_rays(eye, K.to(torch.float64), height, width)[1].float()  # (..., H, W, 3)
    rot = c2w[..., None, None, :3, :3].float()  # columns: the camera axes in the world
    # Written per element (no batched matmul), so a pose renders bit-identically in any batch.
    dirs = rot[..., 0] * dirs_cam[..., 0:1] + rot[..., 1] * dirs_cam[..., 1:2] + rot[..., 2] * dirs_cam[..., 2:3]
    batch = dirs.shape[:-1]
    origins = c2w[..., None, None, :3, 3].float().expand(*batch, 3)
    rgb, t, _ = trace(scene, origins, dirs, backend)
    depth = t.reshape(batch) * dirs_cam[..., 2]  # z-depth: distance times cos(angle to the axis)
    rgb8 = (rgb.reshape(*batch, 3) * 255 + 0.5).to(torch.uint8)
    return RenderOutput(rgb8, depth)
