"""Posed-video data: the datasets that read posed clips for training and scoring (the
reference world's sharded sets, written by ``sanawm-gym dataset``, and external posed
clips in SANA-WM's benchmark layout). This package reads clips; it renders none."""

from world_model.data.dataset import ClipRead, ExternalPosedClips, PosedClipDataset, PosedVideoDataset, open_dataset
from world_model.data.layout import FORMAT, FORMAT_VERSION, MANIFEST

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "ClipRead",
    "ExternalPosedClips",
    "PosedClipDataset",
    "PosedVideoDataset",
    "open_dataset",
]
