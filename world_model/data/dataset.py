"""Posed-video datasets: random temporal crops of posed clips, as the model wants them.

Every source goes through one base class, :class:`PosedClipDataset`, which owns what they
share: the crop (``clip_frames`` consecutive frames; where it starts depends only on
``(seed, epoch, index)``), the conversion to model tensors and the checks. A source only
says how long each clip is and reads a range of frames.

- :class:`PosedVideoDataset` reads the shards of :mod:`sanawm_gym.dataset` lazily
  (``safetensors.safe_open``: memory-mapped, only the crop is read);
- :class:`ExternalPosedClips` reads a folder of clips in the SANA-WM benchmark layout;
- :func:`open_dataset` picks one from what the folder holds.

An item is a dict::

    video       float32 (T, 3, H, W) in [-1, 1], channels first
    c2w         float32 (T, 4, 4)    OpenCV camera-to-world
    intrinsics  float32 (T, 3, 3)    pixels of the H x W frames
    clip_index  int                  which clip
    start       int                  first frame of the crop within the clip
    depth       float32 (T, H, W)    z-depth in metres (inf: sky); only from
                                     ``PosedVideoDataset(..., depth=True)`` on a set written with ``--depth``

Problems with the data (missing or unfinished datasets, truncated shards, frame / pose
count mismatches, non-rigid poses, wrong shapes, clips shorter than ``clip_frames``) raise
``ValueError`` naming the file and the problem, when the dataset is built where possible.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset

from world_model.geometry import is_rigid
from world_model.data.layout import MANIFEST, file_sha256, read_manifest

__all__ = ["ClipRead", "ExternalPosedClips", "PosedClipDataset", "PosedVideoDataset", "open_dataset"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Frame files recognised in a clip's ``frames/`` folder (any case)."""
VIDEO_NAME = "video.mp4"
"""A clip's video file, when it has no ``frames/`` folder."""
_OPEN_SHARDS = 16  # safe_open handles kept per process


class ClipRead(NamedTuple):
    """A range of ``T`` frames of one clip, as stored."""

    frames: np.ndarray
    """``(T, H, W, 3)`` uint8 RGB."""
    c2w: np.ndarray
    """``(T, 4, 4)``."""
    intrinsics: np.ndarray
    """``(T, 3, 3)``."""
    depth: np.ndarray | None = None
    """``(T, H, W)`` z-depth in metres, where the source has it and it was asked for."""


class PosedClipDataset(Dataset):
    """Base class: random crops of ``clip_frames`` consecutive frames of posed clips.

    Subclasses call ``super().__init__``, then :meth:`_set_clips` with each clip's frame
    count, and implement :meth:`clip_name` and :meth:`_read`.

    Args:
        clip_frames: T, frames per crop.
        seed: crop seed; the crop of item ``i`` depends only on ``(seed, epoch, i)``.
        samples_per_clip: crops per clip and epoch (``len = clips * samples_per_clip``;
            item ``i`` is a crop of clip ``i % clips``).
        random_crop: draw the crop start uniformly; if False every crop starts at frame 0.

    With ``DataLoader(persistent_workers=True)`` the workers keep the copy of the dataset
    they started with, so :meth:`set_epoch` does not reach them; use non-persistent workers
    (the default) or pass the epoch through the sampler's indices.
    """

    def __init__(self, clip_frames: int, seed: int = 0, samples_per_clip: int = 1, random_crop: bool = True) -> None:
        if clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {clip_frames}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if samples_per_clip < 1:
            raise ValueError(f"samples_per_clip must be >= 1, got {samples_per_clip}")
        self.clip_frames = clip_frames
        self.seed = seed
        self.samples_per_clip = samples_per_clip
        self.random_crop = random_crop
        self.epoch = 0
        self.clip_lengths = np.zeros(0, dtype=np.int64)
        """``(num_clips,)`` frames per clip."""

    # -- what subclasses provide
    def _set_clips(self, lengths: np.ndarray | list[int], source: str) -> None:
        """Register each clip's frame count; raises if there is none or one is too short."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if not len(lengths):
            raise ValueError(f"{source}: no clips")
        self.clip_lengths = lengths
        short = np.flatnonzero(lengths < self.clip_frames)
        if len(short):
            clip = int(short[0])
            raise ValueError(f"{self.clip_name(clip)}: clip has {lengths[clip]} frames, "
                             f"fewer than clip_frames={self.clip_frames}")

    def clip_name(self, clip: int) -> str:
        """Where clip ``clip`` comes from, for messages."""
        raise NotImplementedError

    def _read(self, clip: int, start: int, stop: int) -> ClipRead:
        """Frames ``start:stop`` of clip ``clip``."""
        raise NotImplementedError

    # -- the shared part
    @property
    def num_clips(self) -> int:
        return len(self.clip_lengths)

    def __len__(self) -> int:
        return self.num_clips * self.samples_per_clip

    def set_epoch(self, epoch: int) -> None:
        """Draw new crops: item ``i`` of epoch ``e`` is the same crop whatever the worker."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def crop_start(self, index: int) -> int:
        """First frame of item ``index``'s crop."""
        room = int(self.clip_lengths[index % self.num_clips]) - self.clip_frames + 1
        if not self.random_crop or room == 1:
            return 0
        return int(np.random.default_rng([self.seed, self.epoch, index]).integers(room))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        clip = index % self.num_clips
        start = self.crop_start(index)
        read = self._read(clip, start, start + self.clip_frames)
        expected = {"frames": (self.clip_frames, None, None, 3), "c2w": (self.clip_frames, 4, 4),
                    "intrinsics": (self.clip_frames, 3, 3)}
        for key, shape in expected.items():
            got = getattr(read, key).shape
            if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
                raise ValueError(f"{self.clip_name(clip)}: {key} of frames {start}:{start + self.clip_frames} "
                                 f"has shape {got}, expected {tuple('*' if s is None else s for s in shape)}")
        video = torch.from_numpy(np.ascontiguousarray(read.frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        item = {
            "video": video,  # (T, 3, H, W) in [-1, 1]
            "c2w": torch.from_numpy(np.array(read.c2w, dtype=np.float32)),  # (T, 4, 4), a copy
            "intrinsics": torch.from_numpy(np.array(read.intrinsics, dtype=np.float32)),  # (T, 3, 3), a copy
            "clip_index": clip,
            "start": start,
        }
        if read.depth is not None:
            item["depth"] = torch.from_numpy(np.array(read.depth, dtype=np.float32))  # (T, H, W) metres
        return item


# --------------------------------------------------------------------------- our own shards
class _Shard(NamedTuple):
    path: Path
    first_clip: int
    num_clips: int


class PosedVideoDataset(PosedClipDataset):
    """The shards written by :func:`world_model.data.write_dataset` under ``root``.

    ``verify=True`` also checks every shard's sha256 against the manifest (reads all of
    the data once). Shards are opened lazily and memory-mapped, one set per process, so the
    dataset works in ``DataLoader`` workers. ``depth=True`` adds each frame's z-depth (sets
    written with ``--depth``). Other arguments: :class:`PosedClipDataset`.
    """

    def __init__(self, root: str | os.PathLike, clip_frames: int, seed: int = 0, samples_per_clip: int = 1,
                 random_crop: bool = True, verify: bool = False, depth: bool = False) -> None:
        super().__init__(clip_frames, seed, samples_per_clip, random_crop)
        self.root = Path(root)
        manifest = _load_manifest(self.root)
        config = manifest["config"]
        F, H, W = config["frames_per_clip"], config["height"], config["width"]
        if depth and not config.get("depth", False):
            raise ValueError(f"{self.root}: the set holds no depth; write it with `sanawm-gym dataset ... --depth`")
        self.depth = depth
        self.frame_shape = (H, W)
        self.shards: list[_Shard] = []
        for entry in manifest["shards"]:
            lo, hi = entry["clips"]
            path = self.root / entry["file"]
            _check_shard(path, entry, hi - lo, (F, H, W), verify, depth)
            self.shards.append(_Shard(path, lo, hi - lo))
        if sum(s.num_clips for s in self.shards) != manifest["num_clips"]:
            raise ValueError(f"{self.root / MANIFEST}: shards hold {sum(s.num_clips for s in self.shards)} clips, "
                             f"the manifest says {manifest['num_clips']}")
        self._clip_shard = np.concatenate([np.full(s.num_clips, k) for k, s in enumerate(self.shards)])
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()
        self._set_clips(np.full(len(self._clip_shard), F), str(self.root))

    def clip_name(self, clip: int) -> str:
        return f"{self.shards[int(self._clip_shard[clip])].path} [clip {clip}]"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()  # safe_open handles do not pickle; reopened lazily
        return state

    def _handle(self, shard: int) -> Any:
        if self._pid != os.getpid():  # a forked worker: open its own
            self._handles, self._pid = OrderedDict(), os.getpid()
        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            self._handles[shard] = safe_open(str(self.shards[shard].path), framework="np")
            if len(self._handles) > _OPEN_SHARDS:
                self._handles.popitem(last=False)
        return self._handles[shard]

    def _read(self, clip: int, start: int, stop: int) -> ClipRead:
        k = int(self._clip_shard[clip])
        row = clip - self.shards[k].first_clip
        f = self._handle(k)
        keys = ("frames", "c2w", "intrinsics") + (("depth",) if self.depth else ())
        return ClipRead(*(f.get_slice(key)[row, start:stop] for key in keys))


def _load_manifest(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    manifest = read_manifest(root)
    if manifest is None:
        raise ValueError(f"{root / MANIFEST}: missing; {root} is not a dataset written by `sanawm-gym dataset`")
    if not manifest.get("complete"):
        raise ValueError(f"{root}: unfinished dataset ({manifest.get('clips_written', 0)} of "
                         f"{manifest.get('num_clips', '?')} clips written); run `sanawm-gym dataset` "
                         "again with the same arguments to finish it")
    return manifest


def _check_shard(path: Path, entry: dict[str, Any], n: int, fhw: tuple[int, int, int], verify: bool,
                 depth: bool = False) -> None:
    """Size (and with ``verify`` the sha256) against the manifest, then the arrays' shapes."""
    if not path.is_file():
        raise ValueError(f"{path}: shard listed in the manifest is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ValueError(f"{path}: shard is {size} bytes, the manifest says {entry['bytes']} (truncated or "
                         "overwritten); re-run the writer with the same arguments to repair it")
    if verify and file_sha256(path) != entry["sha256"]:
        raise ValueError(f"{path}: sha256 differs from the manifest (corrupt); re-run the writer to repair it")
    F, H, W = fhw
    expected = {"frames": ("U8", [n, F, H, W, 3]), "c2w": ("F32", [n, F, 4, 4]), "intrinsics": ("F32", [n, F, 3, 3])}
    if depth:
        expected["depth"] = ("F16", [n, F, H, W])
    try:
        with safe_open(str(path), framework="np") as f:
            found = {key: (f.get_slice(key).get_dtype(), f.get_slice(key).get_shape()) for key in f.keys()}
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    for key, (dtype, shape) in expected.items():
        if found.get(key) != (dtype, shape):
            raise ValueError(f"{path}: array {key!r} is {found.get(key, 'missing')}, expected {dtype} {shape}")


# ------------------------------------------------------------------------- external clips
class _ExternalClip(NamedTuple):
    folder: Path
    images: tuple[Path, ...]
    """Frame files in order; empty when the clip is a video."""
    video: Path | None
    c2w: np.ndarray
    """``(F, 4, 4)`` float32."""
    intrinsics: np.ndarray
    """``(F, 3, 3)`` float32."""


class ExternalPosedClips(PosedClipDataset):
    """Posed clips in the SANA-WM benchmark layout under ``root``::

        root/<clip>/frames/*.png|jpg   (sorted by name)   or   root/<clip>/video.mp4
        root/<clip>/c2w.npy (F, 4, 4) and intrinsics.npy (F, 3, 3) or (3, 3)
                                       or   root/<clip>/cameras.npz with both arrays

    Clips are the sub-folders (sorted by name) holding any of these; ``root`` may also be a
    single clip folder. ``frames/`` wins over ``video.mp4`` when both exist. Poses are
    OpenCV camera-to-world, intrinsics in pixels of the frames. Everything but the pixels
    is checked when the dataset is built. Other arguments: :class:`PosedClipDataset`.
    """

    def __init__(self, root: str | os.PathLike, clip_frames: int, seed: int = 0, samples_per_clip: int = 1,
                 random_crop: bool = True) -> None:
        super().__init__(clip_frames, seed, samples_per_clip, random_crop)
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{self.root}: no such folder")
        folders = [self.root] if _looks_like_clip(self.root) else sorted(
            d for d in self.root.iterdir() if d.is_dir() and _looks_like_clip(d))
        if not folders:
            raise ValueError(f"{self.root}: no clips found (a clip is a folder with frames/ or {VIDEO_NAME}, and "
                             "c2w.npy + intrinsics.npy or cameras.npz)")
        self.clips = [_load_clip(d) for d in folders]
        self._set_clips([len(c.c2w) for c in self.clips], str(self.root))

    def clip_name(self, clip: int) -> str:
        return str(self.clips[clip].folder)

    def _read(self, clip: int, start: int, stop: int) -> ClipRead:
        c = self.clips[clip]
        if c.video is None:
            frames = [_as_rgb(iio.imread(p), p) for p in c.images[start:stop]]
            names = c.images[start:stop]
        else:
            frames = _read_video(c.video, start, stop)
            names = (c.video,) * len(frames)
        for frame, name in zip(frames, names):
            if frame.shape != frames[0].shape:
                raise ValueError(f"{name}: frame of size {frame.shape[:2]} in a clip of {frames[0].shape[:2]} frames")
        return ClipRead(np.stack(frames), c.c2w[start:stop], c.intrinsics[start:stop])


def _looks_like_clip(folder: Path) -> bool:
    names = ("frames", VIDEO_NAME, "c2w.npy", "intrinsics.npy", "cameras.npz")
    return any((folder / n).exists() for n in names)


def _load_array(path: Path, key: str | None = None) -> np.ndarray:
    """A numeric array from a ``.npy`` file, or array ``key`` of a ``.npz`` file."""
    try:
        data = np.load(path, allow_pickle=False)
        if key is not None:
            with data:
                if key not in data.files:
                    raise ValueError(f"{path}: no array {key!r} (it has {sorted(data.files)})")
                data = data[key]
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(exc if str(path) in str(exc) else f"{path}: cannot read ({exc})") from None
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "fiu":
        raise ValueError(f"{path}: expected a numeric array, got {type(data).__name__} {getattr(data, 'dtype', '')}")
    return data


def _load_clip(folder: Path) -> _ExternalClip:
    """A clip's cameras and frame source, checked against each other."""
    if (folder / "cameras.npz").is_file():
        c2w_file = intr_file = folder / "cameras.npz"
        c2w, K = _load_array(c2w_file, "c2w"), _load_array(intr_file, "intrinsics")
    else:
        c2w_file, intr_file = folder / "c2w.npy", folder / "intrinsics.npy"
        for path in (c2w_file, intr_file):
            if not path.is_file():
                raise ValueError(f"{path}: missing (a clip needs c2w.npy and intrinsics.npy, or cameras.npz)")
        c2w, K = _load_array(c2w_file), _load_array(intr_file)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"{c2w_file}: c2w must have shape (F, 4, 4), got {c2w.shape}")
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (len(c2w), 3, 3))
    if K.ndim != 3 or K.shape[1:] != (3, 3):
        raise ValueError(f"{intr_file}: intrinsics must have shape (F, 3, 3) or (3, 3), got {K.shape}")
    if len(K) != len(c2w):
        raise ValueError(f"{intr_file}: {len(K)} intrinsics for {len(c2w)} poses in {c2w_file.name}")
    rigid = is_rigid(torch.from_numpy(np.asarray(c2w, dtype=np.float64)), atol=1e-4).numpy()
    if not rigid.all():
        i = int(np.argmin(rigid))
        raise ValueError(f"{c2w_file}: c2w[{i}] is not a rigid transform (rotation must be orthonormal with "
                         f"det +1, last row [0, 0, 0, 1]): {np.asarray(c2w[i]).tolist()}")
    K64 = np.asarray(K, dtype=np.float64)
    bad = ~np.isfinite(K64).all((1, 2)) | (K64[:, 0, 0] <= 0) | (K64[:, 1, 1] <= 0) | \
        (np.abs(K64[:, 2] - [0.0, 0.0, 1.0]).max(-1) > 1e-6)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{intr_file}: intrinsics[{i}] is not a pinhole matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]] "
                         f"with fx, fy > 0: {K64[i].tolist()}")

    images: tuple[Path, ...] = ()
    video = None
    if (folder / "frames").is_dir():
        images = tuple(sorted(p for p in (folder / "frames").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        source, count = folder / "frames", len(images)
        if not count:
            raise ValueError(f"{source}: no {'/'.join(IMAGE_SUFFIXES)} frames")
    elif (folder / VIDEO_NAME).is_file():
        video = source = folder / VIDEO_NAME
        try:
            count = imageio_ffmpeg.count_frames_and_secs(str(video))[0]
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"{video}: cannot read the video ({exc})") from None
    else:
        raise ValueError(f"{folder}: no frames/ folder and no {VIDEO_NAME}")
    if count != len(c2w):
        raise ValueError(f"{source}: {count} frames but {len(c2w)} poses in {c2w_file}")
    return _ExternalClip(folder, images, video, np.asarray(c2w, np.float32), np.asarray(K, np.float32))


def _as_rgb(image: np.ndarray, path: Path) -> np.ndarray:
    """Any 8- or 16-bit grey / RGB / RGBA image -> ``(H, W, 3)`` uint8."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"{path}: pixel type {image.dtype} (need 8- or 16-bit images)")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{path}: image of shape {image.shape} is not grey, RGB or RGBA")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, -1)
    return image[..., :3]


def _read_video(path: Path, start: int, stop: int) -> list[np.ndarray]:
    frames = []
    try:
        for i, frame in enumerate(iio.imiter(path)):
            if i >= stop:
                break
            if i >= start:
                frames.append(_as_rgb(frame, path))
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot decode ({exc})") from None
    if len(frames) != stop - start:
        raise ValueError(f"{path}: decoded {start + len(frames)} frames, expected at least {stop}")
    return frames


# ------------------------------------------------------------------------------- choosing
def open_dataset(root: str | os.PathLike, clip_frames: int, seed: int = 0, samples_per_clip: int = 1,
                 random_crop: bool = True) -> PosedClipDataset:
    """:class:`PosedVideoDataset` if ``root`` holds a ``manifest.json``, else
    :class:`ExternalPosedClips`. Raises ``ValueError`` when it is neither."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    if (root / MANIFEST).exists():
        return PosedVideoDataset(root, clip_frames, seed, samples_per_clip, random_crop)
    return ExternalPosedClips(root, clip_frames, seed, samples_per_clip, random_crop)
