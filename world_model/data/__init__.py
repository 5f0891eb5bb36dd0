"""Posed-video data: the reference-world dataset writer and the datasets that read it (and
external posed clips) for training. ``python -m world_model.data --help`` writes one."""

from world_model.data.dataset import ClipRead, ExternalPosedClips, PosedClipDataset, PosedVideoDataset, open_dataset
from world_model.data.layout import FORMAT, FORMAT_VERSION, MANIFEST
from world_model.data.writer import DatasetConfig, clip_seeds, main, write_dataset

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "ClipRead",
    "DatasetConfig",
    "ExternalPosedClips",
    "PosedClipDataset",
    "PosedVideoDataset",
    "clip_seeds",
    "main",
    "open_dataset",
    "write_dataset",
]
