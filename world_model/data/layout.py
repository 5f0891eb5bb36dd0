"""The on-disk layout of a posed-video dataset: file names, the manifest, checksums, and
atomic writes. Shared by the writer and the reader; see :mod:`sanawm_gym.dataset`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["ARRAYS", "FORMAT", "FORMAT_VERSION", "MANIFEST", "atomic_write", "file_sha256", "read_manifest", "shard_name"]

FORMAT = "sanawm-posed-video"
"""Value of ``manifest["format"]``."""
FORMAT_VERSION = 1
"""Bumped when the layout of shards or manifest changes."""
MANIFEST = "manifest.json"
"""Name of the manifest inside a dataset folder."""
TMP_SUFFIX = ".tmp"
"""Suffix of the temporary files of :func:`atomic_write` (hidden: they start with a dot)."""
ARRAYS = {
    "frames": "uint8 (n, F, H, W, 3)",
    "c2w": "float32 (n, F, 4, 4)",
    "intrinsics": "float32 (n, F, 3, 3)",
    "actions": "float32 (n, S, 6)",
    "scene_seed": "int64 (n,)",
    "clip_index": "int64 (n,)",
    "depth": "float16 (n, F, H, W), only in sets written with --depth",
}
"""The arrays of every shard: ``n`` clips of ``F`` frames, ``S`` env steps."""


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:05d}.safetensors"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder: written,
    fsynced, moved into place with ``os.replace``, then the folder fsynced. A reader sees
    the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of ``folder``, or None if it has none. Raises ``ValueError`` naming the
    file when it is unreadable or not a posed-video manifest."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {manifest.get('format_version')}, this code reads {FORMAT_VERSION}")
    return manifest
