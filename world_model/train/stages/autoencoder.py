"""Stage ``autoencoder``: train the causal video autoencoder on posed-video clips.

The trainable module is :class:`AutoencoderObjective` (the autoencoder plus its loss
weights): ``objective(batch) -> (loss, logs)`` with every loss term logged. Evaluation
measures PSNR / SSIM of held-out reconstructions (float32, clamped to [-1, 1], per frame
then averaged) and saves originals above reconstructions as a PNG. The export measures the
latent statistics (per-channel means; per-channel or one shared standard deviation) on
training clips, stores them in the config, and writes the
EMA autoencoder with :func:`world_model.checkpoint.save_pretrained`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from world_model.autoencoder import Autoencoder, AutoencoderConfig
from world_model.autoencoder.losses import LossWeights, reconstruction_loss
from world_model.checkpoint import copy_matching_tensors, save_pretrained
from world_model.data import PosedVideoDataset
from world_model.scoring import evaluate_reconstruction
from world_model.train.stage import Batch, Logs, Stage

__all__ = ["AutoencoderObjective", "AutoencoderStage", "AutoencoderStageConfig", "initialise_from", "latent_statistics",
           "shared_std"]

log = logging.getLogger(__name__)


LATENT_SCALES = ("channel", "shared")


@dataclass(frozen=True)
class AutoencoderStageConfig:
    """Options of the autoencoder stage."""

    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    """The autoencoder's architecture."""
    loss: LossWeights = field(default_factory=LossWeights)
    """Weights of the loss terms."""
    crops_per_clip: int = 4
    """Random crops drawn per training clip and epoch."""
    stats_clips: int = 256
    """Training clips (spread over the dataset) whose latents give the per-channel statistics."""
    eval_batch: int = 4
    """Held-out clips per forward pass in evaluation and statistics."""
    picture_clips: int = 4
    """Held-out clips shown in the reconstruction picture."""
    init_from: str = ""
    """A pretrained autoencoder folder (``save_pretrained`` format; ``shipped``: the one in
    the package) whose tensors start the run wherever name and shape match; empty: random
    initialisation."""
    latent_scale: str = "shared"
    """How the export normalises the latents: ``shared``, all channels by one, the pooled
    standard deviation of the mean-removed latents (as SD's and DC-AE's single scaling
    factor), so that channels keep their relative energy and a diffusion model's loss is not
    dominated by many low-energy detail channels (the shipped autoencoder's); ``channel``,
    each channel by its own standard deviation (every channel unit variance)."""
    decoder_only: bool = False
    """Train the decoder alone on the frozen encoder of ``init_from`` (same encoder
    architecture required). The latents, and the latent statistics the export keeps, stay
    those of ``init_from``, so a teacher trained on them stays valid with the new decoder."""

    def __post_init__(self) -> None:
        for name in ("crops_per_clip", "stats_clips", "eval_batch", "picture_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.latent_scale not in LATENT_SCALES:
            raise ValueError(f"latent_scale must be one of {', '.join(LATENT_SCALES)}, got {self.latent_scale!r}")
        if self.decoder_only and not self.init_from:
            raise ValueError("decoder_only needs init_from (the autoencoder whose encoder stays frozen)")


ENCODER_FIELDS = ("in_channels", "latent_channels", "temporal_stride", "patch_size", "frame_widths", "latent_widths",
                  "encoder_blocks", "shortcuts")
"""The :class:`AutoencoderConfig` fields that shape the encoder."""


class AutoencoderObjective(nn.Module):
    """The autoencoder with its loss: ``forward(batch) -> (loss, logs)``. ``decoder_only``:
    the encoder runs without gradients (its parameters are frozen by the caller)."""

    def __init__(self, autoencoder: Autoencoder, weights: LossWeights, decoder_only: bool = False) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.weights = weights
        self.decoder_only = decoder_only

    def forward(self, batch: Batch) -> tuple[Tensor, Logs]:
        video = batch["video"]  # (B, T, 3, H, W) in [-1, 1]
        if not self.decoder_only:
            rec = self.autoencoder(video)
            return reconstruction_loss(rec.video, video, rec.raw_latents, self.weights)
        with torch.no_grad():
            raw = self.autoencoder.encoder(video, None)[0]  # (B, T', L, h, w)
        decoded = self.autoencoder.decoder(raw, None)[0]  # (B, T, 3, H, W)
        return reconstruction_loss(decoded, video, raw, self.weights)


def initialise_from(ae: Autoencoder, source: Autoencoder, decoder_only: bool) -> list[str]:
    """Copy ``source``'s tensors into ``ae`` wherever name and shape match; returns the names
    of ``ae``'s tensors left as initialised. ``decoder_only``: the encoders must agree (all
    their tensors are copied), ``source``'s latent statistics are kept and the encoder's
    parameters are frozen. Raises ``ValueError`` naming the fields that differ."""
    if decoder_only:
        differ = [f"{n}: {getattr(source.config, n)} vs {getattr(ae.config, n)}" for n in ENCODER_FIELDS
                  if getattr(source.config, n) != getattr(ae.config, n)]
        if differ:
            raise ValueError("decoder_only needs the encoder architecture of init_from; differing fields "
                             f"(init_from vs this run): {'; '.join(differ)}")
    fresh = copy_matching_tensors(ae, source)
    if decoder_only:
        if source.config.latent_mean is not None and source.config.latent_std is not None:
            ae.set_latent_stats(list(source.config.latent_mean), list(source.config.latent_std))
        ae.encoder.requires_grad_(False)
    return fresh


def shared_std(std: Tensor) -> Tensor:
    """Per-channel standard deviations ``(L,)`` -> their pooled value repeated ``(L,)``: the
    standard deviation of all latents once each channel's mean is removed (the RMS of the
    per-channel values, every channel having as many samples)."""
    std = torch.as_tensor(std, dtype=torch.float64)
    return std.square().mean().sqrt().expand_as(std).float().clone()


@torch.no_grad()
def latent_statistics(autoencoder: Autoencoder, loader: DataLoader, device: torch.device,
                      scale: str = "channel") -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation ``(L,)`` of the raw latents of ``loader``'s
    clips (accumulated in float64); ``scale="shared"``: the standard deviation pooled over
    channels (see :func:`shared_std`)."""
    L = autoencoder.config.latent_channels
    total = torch.zeros(L, dtype=torch.float64)
    square = torch.zeros(L, dtype=torch.float64)
    count = 0
    for batch in loader:
        raw = autoencoder.encoder(batch["video"].to(device), None)[0].double().cpu()  # (B, T, L, h, w)
        raw = raw.transpose(0, 2).reshape(L, -1)  # (L, B T h w)
        total += raw.sum(1)
        square += raw.square().sum(1)
        count += raw.shape[1]
    mean = total / count
    std = (square / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.float(), shared_std(std) if scale == "shared" else std.float()


class AutoencoderStage(Stage):
    """See the module docstring."""

    name = "autoencoder"
    config_class = AutoencoderStageConfig

    def __init__(self, train, config: AutoencoderStageConfig) -> None:
        super().__init__(train, config)
        K = config.model.temporal_stride
        for what, frames in (("clip_frames", train.clip_frames), ("eval_frames", train.eval_frames)):
            if (frames - 1) % K:
                raise ValueError(f"{what} must be 1 + {K}n (1, {1 + K}, {1 + 2 * K}, ...) for the autoencoder, "
                                 f"got {frames}")

    def build_model(self) -> nn.Module:
        cfg = self.config
        ae = Autoencoder(cfg.model)
        if cfg.init_from:
            from world_model.autoencoder import load_autoencoder

            source = load_autoencoder(None if cfg.init_from == "shipped" else cfg.init_from)
            fresh = initialise_from(ae, source, cfg.decoder_only)
            log.info("initialised from %s: %d of %d tensors copied%s", cfg.init_from,
                     len(ae.state_dict()) - len(fresh), len(ae.state_dict()),
                     "; encoder frozen, its latent statistics kept" if cfg.decoder_only else "")
        return AutoencoderObjective(ae, cfg.loss, cfg.decoder_only)

    def train_dataset(self) -> Dataset:
        ds = PosedVideoDataset(self.train.data, self.train.clip_frames, seed=self.train.seed,
                               samples_per_clip=self.config.crops_per_clip)
        self._check_size(ds, self.train.data)
        return ds

    def heldout_dataset(self) -> Dataset | None:
        if not self.train.heldout:
            return None
        ds = PosedVideoDataset(self.train.heldout, self.train.eval_frames, random_crop=False)
        self._check_size(ds, self.train.heldout)
        n = min(self.train.eval_clips or len(ds), len(ds))
        return Subset(ds, range(n))

    def _check_size(self, ds: PosedVideoDataset, where: str) -> None:
        s = self.config.model.spatial_stride
        H, W = ds.frame_shape
        if H % s or W % s:
            raise ValueError(f"{where}: frames are {H}x{W}; the autoencoder needs multiples of {s}")

    def evaluate(self, model: nn.Module, heldout: Dataset, out_dir: Path, step: int) -> dict[str, float]:
        return evaluate_reconstruction(model.autoencoder, heldout, self.config.eval_batch,
                                       out_dir / f"recon-{step:08d}.png", self.config.picture_clips)

    @torch.no_grad()
    def export(self, model: nn.Module, out_dir: Path, extra: dict[str, Any]) -> None:
        ae: Autoencoder = model.autoencoder
        if self.config.decoder_only:  # the frozen encoder's statistics, which a teacher was trained with
            save_pretrained(out_dir, ae, ae.config, extra={**extra, "decoder_only_from": self.config.init_from})
            return
        device = next(ae.parameters()).device
        data = PosedVideoDataset(self.train.data, self.train.clip_frames, random_crop=False)
        n = min(self.config.stats_clips, len(data))
        picks = np.linspace(0, len(data) - 1, n).round().astype(int).tolist()
        loader = DataLoader(Subset(data, picks), batch_size=self.config.eval_batch)
        mean, std = latent_statistics(ae, loader, device, self.config.latent_scale)
        ae.set_latent_stats(mean, std)
        log.info("latent statistics over %d training clips: mean in [%.3f, %.3f], std in [%.3f, %.3f]",
                 n, mean.min(), mean.max(), std.min(), std.max())
        save_pretrained(out_dir, ae, ae.config,
                        extra={**extra, "latent_stats_clips": n, "latent_scale": self.config.latent_scale})
