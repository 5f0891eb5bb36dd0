"""Writing videos and images of episodes (atomically: temp file, then rename)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["upscale", "write_video"]


def upscale(frame: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of ``(H, W, C)`` by an integer ``factor`` (keeps pixels crisp)."""
    if factor == 1:
        return frame
    return np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Encode uint8 ``(H, W, 3)`` frames as H.264 MP4 (or GIF, by the suffix) at ``fps``.

    Frame sizes must be even for MP4 (yuv420p). The file appears only when complete.
    """
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    kwargs = {"fps": fps}
    if path.suffix.lower() == ".mp4":
        kwargs.update(codec="libx264", quality=8, pixelformat="yuv420p", macro_block_size=2)
    try:
        with imageio.get_writer(tmp, **kwargs) as writer:
            for frame in frames:
                writer.append_data(np.ascontiguousarray(frame, dtype=np.uint8))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
