"""Scene memory: what the episode has seen, kept as coloured surface points and shown again.

The world model holds a scene in a fixed-size recurrent state, and a 2.5 M-parameter model's
state forgets texture within a second or two: a still camera watches its scene dissolve and a
place revisited comes back as a smear of its palette (docs/RESULTS.md). What the episode was
*shown* (its first frame, the look-around context at reset) came with its depth: the exact
render's for a seeded scene, the depth head's for a user's image or clip. A
:class:`SceneMemory` keeps those pixels as surface points in world coordinates (one per voxel,
fixed capacity), and :func:`render_points` splats them into any later camera with a z-buffer.

Each generated chunk is then **guided** (:func:`guide_chunk`): the chunk is sampled as
always, decoded, and wherever the memory covers the view its pixels replace the generated
ones; the result is encoded and committed into the state instead of the raw sample, so the
model continues from what it showed. Where the memory has nothing (what the start never
saw) the frame is the model's own. This is the idea of a 3D cache that conditions video
generation (GEN3C, Ren et al. 2025), here in its simplest non-learned form: composite, then
commit. It runs beside the model at inference (``Nav-v0``'s default where the model has a
depth head, ``NavConfig.scene_memory``), measured by the fidelity suite with and without it
(``sanawm-gym fidelity --memory``); it does not make the model's own prediction any better.
Only what the episode was shown goes in: remembering the model's own frames as well (with
the depth head's depth) was measured and rejected (it held imagined errors as firmly as
imagined places: -1 dB at 5-10 s; docs/RESULTS.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from world_model.geometry import unproject_depth

__all__ = ["MemoryGuide", "SceneMemory", "guide_chunk", "render_points"]

_BITS = 19
_OFFSET = 1 << (_BITS - 1)
_MASK = (1 << _BITS) - 1
_LEVELS = 1 << 5
"""Voxel levels: level ``L`` voxels are ``voxel * 2^L`` wide (keys pack the level above the
coordinates: 5 + 3 x 19 bits)."""
SKY_DEPTH = 1000.0
"""Where sky pixels (depth ``inf`` or at least ``max_depth``) are kept: points this far along
their rays, which no motion in a room moves by a pixel, so the sky turns with the camera."""
_NEAR = 0.05
"""Points closer to the camera than this (metres) are not drawn."""
_SURFACE = 0.2
"""Points within this fraction of a pixel's nearest depth belong to the nearest surface."""
_FOOTPRINT = 0.8
"""A point covers the pixel centres within a square of this fraction of its size (its source
pixel's width) around it: a little less than the pixel it came from, so that a point on the
edge of an object does not spill onto the background next to it."""
_MAX_HALF = 3
"""Largest splat half-width in pixels (a point seen from very close)."""


def _voxel_keys(points: Tensor, sizes: Tensor, voxel: float) -> tuple[Tensor, Tensor]:
    """Packed keys of ``points (N, 3)`` in voxels of a level fitted to each point's size (two
    to four voxels across its source pixel, never smaller than ``voxel``), and which points
    have one (those beyond the keys' reach have none)."""
    level = torch.floor(torch.log2((sizes / (2 * voxel)).clamp_min(1.0))).long().clamp(max=_LEVELS - 1)
    width = voxel * torch.pow(2.0, level.double())
    ijk = torch.floor(points.double() / width[:, None]).long() + _OFFSET
    ok = ((ijk >= 0) & (ijk <= _MASK)).all(-1)
    key = (level << (3 * _BITS)) | (ijk[:, 0] << (2 * _BITS)) | (ijk[:, 1] << _BITS) | ijk[:, 2]
    return key[ok], ok


class SceneMemory:
    """Coloured surface points of one episode, in world coordinates, each with its colour and
    its size (the width in metres of the pixel it came from): one per voxel, the voxels two to
    four to a source pixel's width and at least ``voxel`` metres (the latest point seen in a
    voxel replaces the one before: the last view of a place is what it shows), at most
    ``capacity`` of them (the earliest seen go first when full), so the memory stays fixed
    in size. Sky pixels are kept :data:`SKY_DEPTH` metres away. Filled with :meth:`add`,
    drawn with :meth:`render`."""

    def __init__(self, voxel: float = 0.01, capacity: int = 1 << 18):
        if not voxel > 0:
            raise ValueError(f"voxel must be positive, got {voxel}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.voxel, self.capacity = float(voxel), int(capacity)
        self.clear()

    def clear(self) -> None:
        self.keys = torch.zeros(0, dtype=torch.long)
        """``(M,)`` sorted packed voxel keys."""
        self.serial = torch.zeros(0, dtype=torch.long)
        """``(M,)`` when each point was seen: frames are numbered from 1 in the order added."""
        self.points = torch.zeros(0, 3)
        """``(M, 3)`` float32 world positions (metres)."""
        self.colours = torch.zeros(0, 3, dtype=torch.uint8)
        """``(M, 3)`` uint8 RGB."""
        self.sizes = torch.zeros(0)
        """``(M,)`` float32 width of each point's source pixel (metres)."""

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.points, self.colours, self.sizes, self.serial))

    def add(self, frames: np.ndarray, depth: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray,
            max_depth: float = math.inf) -> int:
        """Remember the pixels of ``frames`` uint8 ``(F, H, W, 3)`` with z-depth ``depth (F,
        H, W)`` (metres; ``inf`` or ``>= max_depth``: sky, kept :data:`SKY_DEPTH` away; NaN
        and non-positive pixels are left out) taken at ``c2w (F, 4, 4)`` with ``intrinsics
        (3, 3)`` (pixel centres at integer coordinates). A voxel's point is replaced by the
        latest seen there (later frames count as later). Returns how many points were
        written."""
        frames, depth = np.asarray(frames), np.asarray(depth, dtype=np.float32)
        c2w, K = np.asarray(c2w, dtype=np.float64), np.asarray(intrinsics, dtype=np.float64)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
        if depth.shape != frames.shape[:3] or c2w.shape != (frames.shape[0], 4, 4) or K.shape != (3, 3):
            raise ValueError(f"depth must be (F, H, W) = {frames.shape[:3]}, c2w (F, 4, 4) and intrinsics (3, 3); got "
                             f"{depth.shape}, {c2w.shape}, {K.shape}")
        depth = np.where(depth >= max_depth, SKY_DEPTH, depth)  # inf included
        world = unproject_depth(depth, c2w, K)  # (F, H, W, 3) float64
        keep = np.isfinite(depth) & (depth > 0)
        frame_of = torch.as_tensor(np.nonzero(keep)[0])
        points = torch.as_tensor(world[keep], dtype=torch.float32)
        colours = torch.as_tensor(frames[keep])
        sizes = torch.as_tensor(depth[keep] / K[0, 0], dtype=torch.float32).clamp_min(self.voxel)
        keys, ok = _voxel_keys(points, sizes, self.voxel)
        points, colours, sizes, frame_of = points[ok], colours[ok], sizes[ok], frame_of[ok]
        uniq, inverse = torch.unique(keys, return_inverse=True)  # sorted
        last = torch.full((len(uniq),), -1, dtype=torch.long).scatter_reduce(
            0, inverse, torch.arange(len(keys)), "amax")  # each voxel's last point, in the frames' order
        at = torch.searchsorted(self.keys, uniq)
        held = at < len(self.keys)
        held[held.clone()] = self.keys[at[held]] == uniq[held]
        if not len(last):
            return 0
        serial = (int(self.serial.max()) + 1 if len(self.serial) else 1) + frame_of[last]
        stay = torch.ones(len(self.keys), dtype=torch.bool)
        stay[at[held]] = False  # the latest sight of a voxel replaces the earlier one
        keys = torch.cat([self.keys[stay], keys[last]])
        order = torch.argsort(keys)
        self.keys = keys[order]
        self.serial = torch.cat([self.serial[stay], serial])[order]
        self.points = torch.cat([self.points[stay], points[last]])[order]
        self.colours = torch.cat([self.colours[stay], colours[last]])[order]
        self.sizes = torch.cat([self.sizes[stay], sizes[last]])[order]
        if len(self.keys) > self.capacity:  # forget the earliest seen
            keep = torch.sort(torch.argsort(-self.serial, stable=True)[: self.capacity]).values
            for name in ("keys", "serial", "points", "colours", "sizes"):
                setattr(self, name, getattr(self, name)[keep])
        return len(last)

    def render(self, c2w: np.ndarray, intrinsics: np.ndarray, height: int, width: int) -> tuple[Tensor, Tensor]:
        """The memory seen from ``c2w (F, 4, 4)``: :func:`render_points` of its points."""
        return render_points(self.points, self.colours, self.sizes, self.serial, c2w, intrinsics, height, width)

    def state(self) -> dict[str, Tensor]:
        """The memory's tensors (copies, for a snapshot; :meth:`restore` takes them back)."""
        return {"points": self.points.clone(), "colours": self.colours.clone(), "sizes": self.sizes.clone(),
                "serial": self.serial.clone()}

    def restore(self, state: dict[str, Tensor]) -> None:
        """Set the memory to a :meth:`state`; ``ValueError`` naming the problem when it is not one."""
        if not isinstance(state, dict) or set(state) != {"points", "colours", "sizes", "serial"}:
            raise ValueError("a scene memory state is a dict of 'points', 'colours', 'sizes' and 'serial' tensors")
        points, colours, sizes, serial = (torch.as_tensor(state[k]) for k in ("points", "colours", "sizes", "serial"))
        M = points.shape[0] if points.ndim == 2 else -1
        if (points.shape != (M, 3) or colours.shape != (M, 3) or sizes.shape != (M,) or serial.shape != (M,)
                or M > self.capacity or colours.dtype != torch.uint8 or not points.is_floating_point()
                or not bool(torch.isfinite(points).all()) or not bool((sizes > 0).all())):
            raise ValueError(f"a scene memory state holds M <= {self.capacity} finite points (M, 3), uint8 colours "
                             f"(M, 3), positive sizes (M,) and serials (M,); got points {tuple(points.shape)}, colours "
                             f"{colours.dtype} {tuple(colours.shape)}, sizes {tuple(sizes.shape)}, serial "
                             f"{tuple(serial.shape)}")
        keys, ok = _voxel_keys(points.float(), sizes.float(), self.voxel)
        if not bool(ok.all()):
            raise ValueError("a scene memory state holds points beyond the memory's reach")
        order = torch.argsort(keys)
        if len(keys) and bool((keys[order][1:] == keys[order][:-1]).any()):
            raise ValueError(f"a scene memory holds one point per {self.voxel:g} m voxel; this state has two in one")
        self.keys, self.serial = keys[order], serial.long()[order]
        self.points, self.colours, self.sizes = points.float()[order], colours[order], sizes.float()[order]


def render_points(points: Tensor, colours: Tensor, sizes: Tensor, serial: Tensor, c2w: np.ndarray,
                  intrinsics: np.ndarray, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Splat coloured points ``(M, 3)`` (colours uint8 ``(M, 3)``, sizes ``(M,)`` metres,
    ``serial (M,)`` when each was seen) into cameras ``c2w (F, 4, 4)`` with ``intrinsics
    (3, 3)``: each point covers the pixel centres within a square of :data:`_FOOTPRINT` times
    its size around it (up to 7 pixels across). A pixel shows the nearest surface (the
    points within :data:`_SURFACE` of the nearest depth there), and of that surface's points
    the one nearest the pixel's centre, the latest seen among equals: a view seen before is
    drawn back as it was seen.
    Returns ``(rgb float32 (F, H, W, 3) in [0, 255], covered bool (F, H, W))``."""
    c2w = torch.as_tensor(np.asarray(c2w, dtype=np.float64)).reshape(-1, 4, 4)
    K = np.asarray(intrinsics, dtype=np.float64)
    F, HW = c2w.shape[0], height * width
    rgb = torch.zeros(F, HW, 3)
    covered = torch.zeros(F, HW, dtype=torch.bool)
    if not len(points):
        return rgb.view(F, height, width, 3), covered.view(F, height, width)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    margin = _MAX_HALF + 1  # pixels beyond the image a splat may reach in from
    for f in range(F):
        R = c2w[f, :3, :3].float()
        cam = points @ R - (c2w[f, :3, 3] @ c2w[f, :3, :3]).float()  # R^T (p - t), row vectors
        z = cam[:, 2]
        # in front of the camera and inside the view (with a margin): one mask before any other work
        seen = (z > _NEAR) & (cam[:, 0] * fx >= (-cx - margin) * z) & (cam[:, 0] * fx <= (width - cx + margin) * z) \
            & (cam[:, 1] * fy >= (-cy - margin) * z) & (cam[:, 1] * fy <= (height - cy + margin) * z)
        idx = torch.nonzero(seen).squeeze(1)
        cam = cam.index_select(0, idx)
        z = cam[:, 2]
        uf, vf = fx * cam[:, 0] / z + cx, fy * cam[:, 1] / z + cy
        a = (_FOOTPRINT * sizes.index_select(0, idx) * fx / z / 2).clamp(max=_MAX_HALF + 0.5)  # half-side, pixels
        half = torch.floor(a + 0.5).long()
        order = torch.argsort(half)  # points grouped by splat size: each group a slice, no masks
        idx, uf, vf, a, z, half = (t.index_select(0, order) for t in (idx, uf, vf, a, z, half))
        u, v = torch.round(uf).long(), torch.round(vf).long()
        ends = torch.bincount(half, minlength=_MAX_HALF + 1).cumsum(0).tolist()
        pix, depth, dist, who = [], [], [], []
        for h in range(_MAX_HALF + 1):
            lo, hi = (ends[h - 1] if h else 0), ends[h]
            if hi == lo:
                continue
            d = torch.arange(-h, h + 1)
            dv, du = (t.reshape(-1) for t in torch.meshgrid(d, d, indexing="ij"))
            uu, vv = u[lo:hi, None] + du, v[lo:hi, None] + dv  # (n, (2h + 1)^2)
            ox, oy = uu - uf[lo:hi, None], vv - vf[lo:hi, None]  # pixel centre minus the point, in pixels
            ah = a[lo:hi, None]
            inside = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height) & (ox.abs() <= ah) & (oy.abs() <= ah)
            at = torch.nonzero(inside.reshape(-1)).squeeze(1)  # one index for the four gathers
            pix.append((vv * width + uu).reshape(-1).index_select(0, at))
            dist.append(torch.round((ox * ox + oy * oy) * 64).long().reshape(-1).index_select(0, at))
            point = torch.div(at, uu.shape[1], rounding_mode="floor") + lo
            depth.append(z.index_select(0, point))
            who.append(idx.index_select(0, point))
        if not pix:
            continue
        pix, depth, dist, who = torch.cat(pix), torch.cat(depth), torch.cat(dist), torch.cat(who)
        nearest = torch.full((HW,), math.inf).scatter_reduce(0, pix, depth, "amin")
        surface = depth <= nearest[pix] * (1 + _SURFACE)
        pix, dist, who = pix[surface], dist[surface], who[surface]
        rank = dist * (1 << 40) - serial[who]  # centred first, then the latest seen
        best = torch.full((HW,), 1 << 62, dtype=torch.long).scatter_reduce(0, pix, rank, "amin")
        win = rank == best[pix]
        owner = torch.full((HW,), -1, dtype=torch.long).scatter_reduce(0, pix[win], who[win], "amax")
        hit = owner >= 0
        rgb[f, hit] = colours[owner[hit]].float()
        covered[f] = hit
    return rgb.view(F, height, width, 3), covered.view(F, height, width)


def guide_chunk(autoencoder, latent: Tensor, frames: Tensor, previous: Tensor, memories: list[SceneMemory | None],
                c2w: np.ndarray, intrinsics: np.ndarray) -> tuple[Tensor, Tensor]:
    """Composite one generated chunk with what the memories hold and encode it for the commit.

    ``latent (B, 1, C, h, w)``: the sampled chunk; ``frames (B, K, 3, H, W)`` in [-1, 1]:
    its decoding; ``previous (B, 3, H, W)``: each row's frame before the chunk (what the
    chunk's encoding continues from); ``memories``: one per row (``None`` or empty: the row
    keeps its chunk as sampled); ``c2w (B, K, 4, 4)`` world poses of the chunk's frames;
    ``intrinsics`` ``(3, 3)`` or ``(B, 3, 3)``. Returns ``(frames, latent)``: the composited
    frames (the memory's pixels wherever it covers the view, the generated ones elsewhere)
    and, for guided rows, their latent, encoded from the previous frame and the chunk as a
    clip of its own (the encoder's context is one frame back), to be committed in place of
    the sampled one."""
    B, K, _, H, W = frames.shape
    frames, latent = frames.clone(), latent.clone()
    rows = [b for b, m in enumerate(memories) if m is not None and len(m)]
    if not rows:
        return frames, latent
    for b in rows:
        rgb, covered = memories[b].render(c2w[b], intrinsics if np.ndim(intrinsics) == 2 else intrinsics[b], H, W)
        rgb = (rgb / 127.5 - 1.0).permute(0, 3, 1, 2).to(frames.dtype)  # (K, 3, H, W)
        mask = covered[:, None].to(frames.dtype)
        frames[b] = mask * rgb + (1 - mask) * frames[b]
    index = torch.as_tensor(rows)
    clip = torch.cat([previous[index, None].to(frames.dtype), frames[index]], 1)
    latent[index] = autoencoder.encode(clip)[:, 1:].to(latent.dtype)
    return frames, latent


class MemoryGuide:
    """The ``guide`` of :func:`world_model.generation.stream_latents` for a batch of
    rollouts along known poses: decodes each sampled chunk (carrying the decoder's cache),
    composites it with the rows' memories (:func:`guide_chunk`) and returns the latent to
    commit; the composited frames are kept in :attr:`frames`.

    ``context_latents (B, n0, C, h, w)``: the clean context, decoded first (its frames open
    :attr:`frames`); ``last_frame (B, 3, H, W)`` in [-1, 1]: the context's last real frame;
    ``c2w (B, F, 4, 4)``: every raw frame's world pose, the context's included."""

    def __init__(self, autoencoder, memories: list[SceneMemory | None], context_latents: Tensor, last_frame: Tensor,
                 c2w: np.ndarray, intrinsics: np.ndarray):
        self.autoencoder, self.memories = autoencoder, memories
        self.c2w, self.intrinsics = np.asarray(c2w, dtype=np.float64), np.asarray(intrinsics, dtype=np.float64)
        decoded, self.cache = autoencoder.decode_step(context_latents, None)
        self.frames: list[Tensor] = [decoded]
        self.previous = last_frame
        self.k = autoencoder.config.temporal_stride

    def __call__(self, x: Tensor, start: int) -> Tensor:
        decoded, self.cache = self.autoencoder.decode_step(x, self.cache)
        first = 1 + self.k * (start - 1)
        poses = self.c2w[:, first : first + decoded.shape[1]]
        frames, latent = guide_chunk(self.autoencoder, x, decoded, self.previous, self.memories, poses, self.intrinsics)
        self.frames.append(frames)
        self.previous = frames[:, -1]
        return latent

    def video(self) -> Tensor:
        """Every frame so far ``(B, F, 3, H, W)`` in [-1, 1]."""
        return torch.cat(self.frames, 1).clamp(-1, 1)
