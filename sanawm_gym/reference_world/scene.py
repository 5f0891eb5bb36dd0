"""Procedural scenes of the reference world: an arena or rooms, textured objects, sky.

A :class:`Scene` is a handful of fixed-capacity tensors (axis-aligned boxes, vertical
cylinders, spheres, one material per primitive, lighting), so every scene has the same
tensor shapes and the ray caster compiles once. Unused slots are parked far away and are
never hit. :func:`generate_scene` draws a scene from a seed; the same seed always gives the
same scene.

World frame (docs/DESIGN.md): right-handed, metres, +z up, ground plane z = 0. The arena is the
square ``[-L/2, L/2]^2`` closed by four walls of height ``wall_height``; an invisible
ceiling at that height bounds the camera (see :mod:`collision`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch

__all__ = [
    "MAX_BOXES",
    "MAX_CYLINDERS",
    "MAX_SPHERES",
    "NUM_PRIMITIVES",
    "PRIMITIVE_OFFSETS",
    "OBJECT_KINDS",
    "ObjectKind",
    "Pattern",
    "Scene",
    "SceneConfig",
    "generate_scene",
]

MAX_BOXES = 40
"""Box slots per scene: 4 boundary walls, up to 6 interior wall segments, box objects."""
MAX_CYLINDERS = 16
"""Vertical-cylinder slots per scene."""
MAX_SPHERES = 16
"""Sphere slots per scene."""
NUM_PRIMITIVES = 1 + MAX_BOXES + MAX_CYLINDERS + MAX_SPHERES
"""Ground plus every slot: the length of the per-primitive material table."""
PRIMITIVE_OFFSETS = {"ground": 0, "box": 1, "cylinder": 1 + MAX_BOXES, "sphere": 1 + MAX_BOXES + MAX_CYLINDERS}
"""Global primitive id of the first slot of each type."""
PARKED = 1.0e5
"""Where unused slots are parked (metres); the ray caster ignores hits beyond ``FAR``."""


class Pattern(IntEnum):
    """Procedural texture patterns; ``scale`` is the period in metres of surface length."""

    SOLID = 0
    CHECKER = 1
    H_STRIPES = 2
    V_STRIPES = 3
    BRICKS = 4
    DOTS = 5
    GRID = 6
    DIAGONAL = 7
    WOOD = 8


@dataclass(frozen=True)
class ObjectKind:
    """One kind of object: a primitive shape, a size range, two colours and a pattern."""

    name: str
    shape: str
    """"box", "cylinder" or "sphere"."""
    footprint: tuple[float, float]
    """Box side / cylinder or sphere radius range (metres)."""
    height: tuple[float, float]
    """Box / cylinder height range; for spheres the height of the centre above its radius
    (0 = resting on the ground)."""
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    pattern: Pattern
    scale: float


OBJECT_KINDS: tuple[ObjectKind, ...] = (
    ObjectKind("crate", "box", (0.6, 1.0), (0.6, 1.0), (0.55, 0.35, 0.17), (0.38, 0.22, 0.09), Pattern.WOOD, 0.12),
    ObjectKind("brick_block", "box", (0.9, 1.5), (0.8, 1.4), (0.72, 0.2, 0.14), (0.88, 0.84, 0.78), Pattern.BRICKS, 0.22),
    ObjectKind("checker_cube", "box", (0.7, 1.1), (0.7, 1.1), (0.12, 0.28, 0.85), (0.95, 0.95, 0.95), Pattern.CHECKER, 0.25),
    ObjectKind("tower", "box", (0.5, 0.8), (2.2, 2.9), (0.08, 0.58, 0.56), (0.92, 0.92, 0.88), Pattern.H_STRIPES, 0.3),
    ObjectKind("platform", "box", (1.2, 2.0), (0.25, 0.45), (0.45, 0.52, 0.3), (0.25, 0.3, 0.18), Pattern.GRID, 0.3),
    ObjectKind("pillar", "cylinder", (0.2, 0.32), (2.5, 3.2), (0.93, 0.9, 0.84), (0.66, 0.64, 0.6), Pattern.V_STRIPES, 0.12),
    ObjectKind("barrel", "cylinder", (0.35, 0.5), (0.8, 1.1), (0.95, 0.5, 0.08), (0.22, 0.22, 0.25), Pattern.H_STRIPES, 0.25),
    ObjectKind("column", "cylinder", (0.12, 0.2), (1.5, 2.4), (0.52, 0.18, 0.72), (0.95, 0.82, 0.15), Pattern.DIAGONAL, 0.2),
    ObjectKind("ball", "sphere", (0.3, 0.5), (0.0, 0.0), (0.97, 0.86, 0.12), (0.85, 0.7, 0.05), Pattern.SOLID, 1.0),
    ObjectKind("polka_ball", "sphere", (0.35, 0.6), (0.0, 0.0), (0.88, 0.18, 0.58), (0.97, 0.97, 0.97), Pattern.DOTS, 0.22),
    ObjectKind("orb", "sphere", (0.25, 0.4), (1.0, 1.8), (0.2, 0.86, 0.92), (0.04, 0.3, 0.5), Pattern.CHECKER, 0.16),
    ObjectKind("beach_ball", "sphere", (0.4, 0.6), (0.0, 0.0), (0.2, 0.75, 0.3), (0.97, 0.97, 0.97), Pattern.V_STRIPES, 0.3),
)
"""The twelve object kinds: distinct shapes, colours and textures, so views are told apart."""

_GROUND_STYLES = (  # (colour a, colour b, pattern)
    ((0.76, 0.68, 0.5), (0.68, 0.6, 0.43), Pattern.CHECKER),  # sand tiles
    ((0.33, 0.5, 0.23), (0.28, 0.43, 0.19), Pattern.CHECKER),  # lawn
    ((0.42, 0.44, 0.47), (0.3, 0.31, 0.34), Pattern.GRID),  # slate
    ((0.7, 0.42, 0.3), (0.58, 0.34, 0.24), Pattern.BRICKS),  # terracotta paving
    ((0.62, 0.62, 0.6), (0.5, 0.5, 0.49), Pattern.GRID),  # concrete
)
_WALL_COLOURS = (
    (0.86, 0.8, 0.66),  # beige
    (0.72, 0.76, 0.8),  # light grey-blue
    (0.56, 0.7, 0.86),  # pale blue
    (0.88, 0.62, 0.55),  # salmon
    (0.66, 0.82, 0.62),  # pale green
    (0.84, 0.76, 0.9),  # lilac
)
_WALL_PATTERNS = (Pattern.BRICKS, Pattern.H_STRIPES, Pattern.GRID)


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Every range is sampled uniformly per scene."""

    arena_size: tuple[float, float] = (10.0, 14.0)
    """Side length L of the square arena (metres)."""
    wall_height: float = 3.0
    """Height of the walls, and of the invisible ceiling that bounds the camera."""
    wall_thickness: float = 0.2
    """Thickness of boundary and interior walls."""
    layout: str = "auto"
    """"open" (one arena), "rooms" (interior walls with doorways) or "auto" (either, 50/50)."""
    door_width: float = 1.6
    """Width of the doorways in interior walls."""
    n_objects: tuple[int, int] = (10, 18)
    """Number of objects (inclusive range); fewer are placed if no free spot is found."""
    min_gap: float = 0.9
    """Free space kept between objects and walls, so that a camera can pass."""
    color_jitter: float = 0.05
    """Per-scene random offset of every colour channel (kinds stay distinguishable)."""

    def __post_init__(self) -> None:
        lo, hi = self.arena_size
        if not 4.0 <= lo <= hi:
            raise ValueError(f"arena_size must satisfy 4 <= lo <= hi, got {self.arena_size}")
        if self.layout not in ("auto", "open", "rooms"):
            raise ValueError(f"layout must be 'auto', 'open' or 'rooms', got {self.layout!r}")
        if not 0 <= self.n_objects[0] <= self.n_objects[1]:
            raise ValueError(f"n_objects must satisfy 0 <= lo <= hi, got {self.n_objects}")
        if self.wall_height <= 0 or self.wall_thickness <= 0 or self.door_width <= 0:
            raise ValueError("wall_height, wall_thickness and door_width must be positive")


@dataclass(frozen=True)
class Scene:
    """A scene as fixed-capacity float32 tensors (CPU).

    Materials are indexed by global primitive id: 0 is the ground, then the boxes
    (``1 .. MAX_BOXES``), the cylinders, the spheres (see :data:`PRIMITIVE_OFFSETS`)."""

    box_lo: torch.Tensor  # (MAX_BOXES, 3) min corner
    box_hi: torch.Tensor  # (MAX_BOXES, 3) max corner
    cylinders: torch.Tensor  # (MAX_CYLINDERS, 5) [cx, cy, radius, z0, z1]
    spheres: torch.Tensor  # (MAX_SPHERES, 4) [cx, cy, cz, radius]
    color_a: torch.Tensor  # (NUM_PRIMITIVES, 3) primary colour in [0, 1]
    color_b: torch.Tensor  # (NUM_PRIMITIVES, 3) secondary colour
    pattern: torch.Tensor  # (NUM_PRIMITIVES,) int64 Pattern
    pattern_scale: torch.Tensor  # (NUM_PRIMITIVES,) metres per period
    sun_direction: torch.Tensor  # (3,) unit vector towards the sun
    sky_zenith: torch.Tensor  # (3,)
    sky_horizon: torch.Tensor  # (3,)
    fog_distance: torch.Tensor  # () metres; colour fades to the horizon colour with exp(-t / fog)
    arena_half: float
    """Half the arena's side: the free space is within ``|x|, |y| < arena_half``."""
    wall_height: float
    object_names: tuple[str, ...]
    """Kind of each placed object, in placement order (walls excluded)."""
    object_positions: np.ndarray  # (n_objects, 3) centre of each object's base / sphere centre
    seed: int | None = None

    @property
    def num_objects(self) -> int:
        return len(self.object_names)

    def to(self, device: torch.device | str) -> "Scene":
        """A copy with every tensor on ``device``."""
        changes = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **changes)


def _jitter(rng: np.random.Generator, colour: tuple[float, float, float], amount: float) -> list[float]:
    return list(np.clip(np.asarray(colour) + rng.uniform(-amount, amount, 3), 0.0, 1.0))


class _Builder:
    """Collects primitives and materials while a scene is generated."""

    def __init__(self) -> None:
        self.boxes: list[tuple[list[float], list[float], int]] = []
        self.cylinders: list[tuple[list[float], int]] = []
        self.spheres: list[tuple[list[float], int]] = []
        self.materials: list[tuple[list[float], list[float], int, float]] = []
        self.footprints: list[tuple[float, float, float]] = []  # (x, y, radius) for spacing
        self.wall_segments: list[tuple[float, float, float, float]] = []  # x0, y0, x1, y1 (2-D boxes)

    def material(self, a: list[float], b: list[float], pattern: Pattern, scale: float) -> int:
        self.materials.append((a, b, int(pattern), scale))
        return len(self.materials) - 1

    def box(self, lo: list[float], hi: list[float], mat: int) -> None:
        if len(self.boxes) >= MAX_BOXES:
            raise RuntimeError(f"scene exceeds MAX_BOXES={MAX_BOXES}")
        self.boxes.append((lo, hi, mat))

    def wall(self, x0: float, y0: float, x1: float, y1: float, height: float, mat: int) -> None:
        self.box([x0, y0, 0.0], [x1, y1, height], mat)
        self.wall_segments.append((x0, y0, x1, y1))

    def free_for(self, x: float, y: float, r: float, gap: float, half: float) -> bool:
        if abs(x) + r + gap > half or abs(y) + r + gap > half:
            return False
        for fx, fy, fr in self.footprints:
            if (x - fx) ** 2 + (y - fy) ** 2 < (r + fr + gap) ** 2:
                return False
        for x0, y0, x1, y1 in self.wall_segments:
            dx = max(x0 - x, 0.0, x - x1)
            dy = max(y0 - y, 0.0, y - y1)
            if dx * dx + dy * dy < (r + gap) ** 2:
                return False
        return True


def _interior_walls(b: _Builder, rng: np.random.Generator, cfg: SceneConfig, half: float, mats: list[int]) -> None:
    """One wall across the arena with a doorway, and a second one, perpendicular, across
    one of the two halves with its own doorway: three connected rooms."""
    t = cfg.wall_thickness / 2
    h = cfg.wall_height

    def split(lo: float, hi: float) -> list[tuple[float, float]]:
        width = min(cfg.door_width, hi - lo)
        margin = min(0.8, (hi - lo - width) / 2)
        door = lo + margin + rng.uniform() * max(0.0, hi - lo - width - 2 * margin)
        return [(a, c) for a, c in ((lo, door), (door + width, hi)) if c - a > 1e-3]

    y0 = rng.uniform(-0.2, 0.2) * 2 * half
    for a, c in split(-half, half):
        b.wall(a, y0 - t, c, y0 + t, h, mats[0])
    x0 = rng.uniform(-0.2, 0.2) * 2 * half
    if rng.random() < 0.5:
        lo_y, hi_y = y0 + t, half
    else:
        lo_y, hi_y = -half, y0 - t
    for a, c in split(lo_y, hi_y):
        b.wall(x0 - t, a, x0 + t, c, h, mats[1])


def generate_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """Draw a scene from ``seed`` (same seed, same scene)."""
    cfg = config or SceneConfig()
    rng = np.random.default_rng(seed)
    b = _Builder()
    jit = cfg.color_jitter

    ground = _GROUND_STYLES[rng.integers(len(_GROUND_STYLES))]
    b.material(_jitter(rng, ground[0], jit), _jitter(rng, ground[1], jit), ground[2], float(rng.uniform(0.5, 1.0)))

    half = float(rng.uniform(*cfg.arena_size)) / 2
    t, h = cfg.wall_thickness, cfg.wall_height
    wall_cols = rng.permutation(len(_WALL_COLOURS))
    wall_mats = []
    for i in range(6):  # four boundary walls (each its own colour), two interior walls
        col = _jitter(rng, _WALL_COLOURS[wall_cols[i]], jit)
        dark = list(np.asarray(col) * 0.75)
        pattern = _WALL_PATTERNS[rng.integers(len(_WALL_PATTERNS))]
        wall_mats.append(b.material(col, dark, pattern, float(rng.uniform(0.3, 0.6))))
    b.box([-half - t, -half - t, 0.0], [half + t, -half, h], wall_mats[0])  # south (-y)
    b.box([half, -half - t, 0.0], [half + t, half + t, h], wall_mats[1])  # east (+x)
    b.box([-half - t, half, 0.0], [half + t, half + t, h], wall_mats[2])  # north (+y)
    b.box([-half - t, -half - t, 0.0], [-half, half + t, h], wall_mats[3])  # west (-x)
    rooms = cfg.layout == "rooms" or (cfg.layout == "auto" and rng.random() < 0.5)
    if rooms:
        _interior_walls(b, rng, cfg, half, wall_mats[4:])

    names: list[str] = []
    positions: list[list[float]] = []
    target = int(rng.integers(cfg.n_objects[0], cfg.n_objects[1] + 1))
    counts = {"box": len(b.boxes), "cylinder": 0, "sphere": 0}
    capacity = {"box": MAX_BOXES, "cylinder": MAX_CYLINDERS, "sphere": MAX_SPHERES}
    for _ in range(target):
        kind = OBJECT_KINDS[rng.integers(len(OBJECT_KINDS))]
        if counts[kind.shape] >= capacity[kind.shape]:
            continue
        size = float(rng.uniform(*kind.footprint))
        height = float(rng.uniform(*kind.height))
        radius = size * (0.7072 if kind.shape == "box" else 1.0)  # boxes: half diagonal
        for _attempt in range(60):
            x, y = rng.uniform(-half, half, 2)
            if b.free_for(x, y, radius, cfg.min_gap, half):
                break
        else:
            continue
        mat = b.material(_jitter(rng, kind.color_a, jit), _jitter(rng, kind.color_b, jit), kind.pattern, kind.scale)
        if kind.shape == "box":
            s = size / 2
            b.box([x - s, y - s, 0.0], [x + s, y + s, height], mat)
            positions.append([x, y, 0.0])
        elif kind.shape == "cylinder":
            b.cylinders.append(([x, y, size, 0.0, height], mat))
            positions.append([x, y, 0.0])
        else:
            cz = size + height
            b.spheres.append(([x, y, cz, size], mat))
            positions.append([x, y, cz])
        counts[kind.shape] += 1
        b.footprints.append((x, y, radius))
        names.append(kind.name)

    # Sky and light.
    sun_az = rng.uniform(0, 2 * np.pi)
    sun_el = np.radians(rng.uniform(30, 70))
    sun = [np.cos(sun_el) * np.cos(sun_az), np.cos(sun_el) * np.sin(sun_az), np.sin(sun_el)]
    zenith = _jitter(rng, (0.25, 0.45, 0.85), 0.06)
    horizon = _jitter(rng, (0.75, 0.84, 0.95), 0.04)
    return _pack(b, sun, zenith, horizon, fog=float(rng.uniform(35, 60)), half=half, cfg=cfg,
                 names=names, positions=positions, seed=seed)


def _pack(b: _Builder, sun: list[float], zenith: list[float], horizon: list[float], fog: float, half: float,
          cfg: SceneConfig, names: list[str], positions: list[list[float]], seed: int | None) -> Scene:
    f32 = torch.float32
    box_lo = torch.full((MAX_BOXES, 3), PARKED, dtype=f32)
    box_hi = torch.full((MAX_BOXES, 3), PARKED, dtype=f32)
    cyl = torch.tensor([[PARKED, PARKED, 0.0, 0.0, 0.0]], dtype=f32).repeat(MAX_CYLINDERS, 1)
    sph = torch.tensor([[PARKED, PARKED, PARKED, 0.0]], dtype=f32).repeat(MAX_SPHERES, 1)
    material_of = torch.zeros(NUM_PRIMITIVES, dtype=torch.int64)  # unused slots: ground material
    for i, (lo, hi, m) in enumerate(b.boxes):
        box_lo[i], box_hi[i] = torch.tensor(lo), torch.tensor(hi)
        material_of[PRIMITIVE_OFFSETS["box"] + i] = m
    for i, (p, m) in enumerate(b.cylinders):
        cyl[i] = torch.tensor(p)
        material_of[PRIMITIVE_OFFSETS["cylinder"] + i] = m
    for i, (p, m) in enumerate(b.spheres):
        sph[i] = torch.tensor(p)
        material_of[PRIMITIVE_OFFSETS["sphere"] + i] = m
    mats = b.materials
    return Scene(
        box_lo=box_lo,
        box_hi=box_hi,
        cylinders=cyl,
        spheres=sph,
        color_a=torch.tensor([m[0] for m in mats], dtype=f32)[material_of],
        color_b=torch.tensor([m[1] for m in mats], dtype=f32)[material_of],
        pattern=torch.tensor([m[2] for m in mats], dtype=torch.int64)[material_of],
        pattern_scale=torch.tensor([m[3] for m in mats], dtype=f32)[material_of],
        sun_direction=torch.tensor(sun, dtype=f32),
        sky_zenith=torch.tensor(zenith, dtype=f32),
        sky_horizon=torch.tensor(horizon, dtype=f32),
        fog_distance=torch.tensor(fog, dtype=f32),
        arena_half=half,
        wall_height=cfg.wall_height,
        object_names=tuple(names),
        object_positions=np.asarray(positions, dtype=np.float64).reshape(-1, 3),
        seed=seed,
    )
