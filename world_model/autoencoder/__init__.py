"""The causal video autoencoder: ``1 + 4n`` frames -> ``1 + n`` latent frames at stride 8,
streamable one latent frame at a time. See :mod:`world_model.autoencoder.model`.

    ae = load_autoencoder()                       # the shipped weights, float32, eval mode
    z = ae.encode(video)                          # (B, 1+4n, 3, 64, 64) -> (B, 1+n, L, 8, 8)
    frames, cache = ae.decode_step(z[:, :1])      # first latent frame -> 1 frame
    frames, cache = ae.decode_step(z[:, 1:2], cache)  # each next one -> 4 frames
"""

from __future__ import annotations

import os
from pathlib import Path

from world_model.autoencoder.config import AutoencoderConfig
from world_model.autoencoder.model import Autoencoder, Reconstruction, StreamCache
from world_model.checkpoint import load_pretrained

__all__ = ["Autoencoder", "AutoencoderConfig", "Reconstruction", "StreamCache", "WEIGHTS_DIR", "load_autoencoder"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "autoencoder"
"""The shipped autoencoder (``save_pretrained`` folder)."""


def load_autoencoder(path: str | os.PathLike | None = None) -> Autoencoder:
    """The autoencoder saved in ``path`` (default: the shipped one), float32, eval mode.
    Raises :class:`world_model.checkpoint.CheckpointError` naming the file on problems."""
    return load_pretrained(WEIGHTS_DIR if path is None else path,
                           lambda config: Autoencoder(AutoencoderConfig.from_json(config)))
