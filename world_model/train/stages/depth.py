"""Stage ``depth``: train the depth head (:class:`~world_model.autoencoder.depth.DepthHead`)
on the latent frames of posed clips rendered with depth (``sanawm-gym dataset --depth``).

Two kinds of latent frames are cached once in the run folder (atomic, keyed by data, frames,
autoencoder and rollout model), then trained on together:

- **clean**: the frozen autoencoder's latents of each training clip;
- **imagined** (``--rollout-model``, default the packaged world model; empty: none): the
  latents that world model generates along the clip's own camera path from its first
  frame, with its own sampler and a fixed seed: what the env's depth head will read.

Both are regressed onto the clip's exact depth (log-L1, :func:`depth_log_l1`), so the head
learns to report, from an imagined latent, the reference world's geometry at that pose.
Evaluation reports, on held-out clips, the depth error of both kinds (absolute relative
error, log-L1, the share of pixels within 25 %, and the relative error of near pixels,
under 2 m, where collisions are decided) and for imagined latents by horizon.

    python -m world_model.train --stage depth --data DATA --heldout HELDOUT --out runs/depth \\
        --clip-frames 65 --eval-frames 33 --batch-size 8 --steps 1500 --lr 1e-3
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, default_collate
from tqdm import tqdm

from world_model.autoencoder import Autoencoder
from world_model.autoencoder.depth import DepthHead, DepthHeadConfig, depth_log_l1
from world_model.checkpoint import save_pretrained, write_files_atomically
from world_model.data import PosedVideoDataset
from world_model.diffusion import sampling_times
from world_model.generation import rollout_latents
from world_model.train.stage import Batch, Logs, Stage
from world_model.world_model import component_folder, packaged_model

__all__ = ["DepthObjective", "DepthStage", "DepthStageConfig", "depth_metrics", "depth_targets"]

log = logging.getLogger(__name__)

NEAR_M = 2.0
"""Pixels nearer than this (metres, in the reference) are the ones collisions are decided on."""


@dataclass(frozen=True)
class DepthStageConfig:
    """Options of the depth stage."""

    head: DepthHeadConfig = field(default_factory=DepthHeadConfig)
    """The depth head's architecture."""
    autoencoder: str = ""
    """Folder of the frozen autoencoder, or of a world model holding one (empty: the packaged one)."""
    rollout_model: str = "default"
    """World model (a packaged name or a folder) whose generated latents along each training
    clip's camera path are trained on beside the clean ones; empty: clean latents only."""
    rollout_clips: int = 0
    """Training clips rolled out (spread over the set; 0: all)."""
    rollout_seed: int = 0
    """Noise seed of the rollouts."""
    encode_batch: int = 16
    """Clips per batch when encoding and rolling out."""
    near_weight: float = 0.0
    """Extra loss weight of pixels nearer than 2 m (see :func:`depth_log_l1`)."""
    extra_data: str = ""
    """A second depth set trained on beside ``--data`` (for example driving episodes that meet
    walls, ``sanawm-gym dataset --paths drive --depth``); its clips are cut into whole windows
    of ``clip_frames``, each encoded and rolled out like the first set's."""
    init_from: str = ""
    """A depth head (its folder, a world-model folder holding ``depth/``, or a packaged
    model's name) whose weights start the run; its config must equal ``head``. Empty: fresh."""

    def __post_init__(self) -> None:
        if self.rollout_clips < 0 or self.encode_batch < 1 or self.near_weight < 0:
            raise ValueError(f"rollout_clips and near_weight must be >= 0 and encode_batch >= 1, got "
                             f"{self.rollout_clips}, {self.near_weight}, {self.encode_batch}")


def depth_targets(depth: Tensor, k: int) -> Tensor:
    """Per-frame depth ``(B, 1 + k n, H, W)`` -> per latent frame ``(B, 1 + n, k, H, W)``:
    latent frame 0 holds frame 0 ``k`` times, latent frame ``j`` frames ``1 + k(j-1) .. kj``."""
    B, F, H, W = depth.shape
    if (F - 1) % k:
        raise ValueError(f"depth must have 1 + {k} n frames, got {F}")
    return torch.cat([depth[:, :1, None].expand(B, 1, k, H, W), depth[:, 1:].reshape(B, -1, k, H, W)], 1)


def depth_metrics(pred: Tensor, target: Tensor, max_depth: float) -> dict[str, Tensor]:
    """Per latent frame ``(B, T)`` errors of ``pred`` against ``target`` (metres, ``(B, T, K,
    H, W)``; ``inf`` sky is ``max_depth``): ``abs_rel`` mean |p - t| / t, ``log_l1``,
    ``delta_1.25`` share of pixels with max(p/t, t/p) < 1.25, ``near_abs_rel`` abs_rel over
    pixels nearer than :data:`NEAR_M` (NaN where none)."""
    t = target.clamp(max=max_depth).float()
    p = pred.float()
    rel = (p - t).abs() / t
    ratio = torch.maximum(p / t, t / p)
    near = t < NEAR_M
    near_rel = (rel * near).sum((2, 3, 4)) / near.sum((2, 3, 4))
    return {"abs_rel": rel.mean((2, 3, 4)), "log_l1": (p.log() - t.log()).abs().mean((2, 3, 4)),
            "delta_1.25": (ratio < 1.25).float().mean((2, 3, 4)), "near_abs_rel": near_rel}


class _AllWindows(PosedVideoDataset):
    """Every whole window of ``clip_frames`` frames of each clip, with depth: item ``i`` is
    window ``i // num_clips`` of clip ``i % num_clips`` (consecutive windows share a frame)."""

    def __init__(self, root, clip_frames: int):
        super().__init__(root, clip_frames, random_crop=False, depth=True)
        self.samples_per_clip = max(1, (int(self.clip_lengths.min()) - 1) // max(clip_frames - 1, 1))

    def crop_start(self, index: int) -> int:
        return (index // self.num_clips) * (self.clip_frames - 1)


class LatentDepth(Dataset):
    """Cached latent frames with their depth: item ``i`` is one clip's ``(T, L, h, w)`` latents
    (clean or imagined) and ``(T, K, H, W)`` depth (float32 metres, read from the set)."""

    def __init__(self, latents: Tensor, clip: Tensor, depth_set: PosedVideoDataset, k: int):
        self.latents, self.clip, self.depth_set, self.k = latents, clip, depth_set, k

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        depth = self.depth_set[int(self.clip[i])]["depth"]
        return {"latents": self.latents[i].float(), "depth": depth_targets(depth[None], self.k)[0]}


class DepthObjective(nn.Module):
    """The head with its loss: ``forward(batch) -> (loss, logs)``."""

    def __init__(self, head: DepthHead, near_weight: float = 0.0):
        super().__init__()
        self.head = head
        self.near_weight = near_weight

    def forward(self, batch: Batch) -> tuple[Tensor, Logs]:
        cfg = self.head.config
        z = batch["latents"]  # (B, T, L, h, w)
        log_d = self.head.log_depth(z.flatten(0, 1))  # (B T, K, H, W)
        loss = depth_log_l1(log_d, batch["depth"].flatten(0, 1), cfg.min_depth, cfg.max_depth, self.near_weight, NEAR_M)
        return loss, {"log_l1": loss.detach()}


class DepthStage(Stage):
    """See the module docstring."""

    name = "depth"
    config_class = DepthStageConfig

    def __init__(self, train, config: DepthStageConfig) -> None:
        super().__init__(train, config)
        K = config.head.frames_per_latent
        for what, frames in (("clip_frames", train.clip_frames), ("eval_frames", train.eval_frames)):
            if (frames - 1) % K:
                raise ValueError(f"{what} must be 1 + {K}n frames for the depth stage, got {frames}")
        self._ae: Autoencoder | None = None
        self._model = None

    def autoencoder(self) -> Autoencoder:
        if self._ae is None:
            from world_model.autoencoder import load_autoencoder

            self._ae = load_autoencoder(component_folder(self.config.autoencoder or None, "autoencoder")).eval()
            self._ae.requires_grad_(False)
        return self._ae

    def world_model(self):
        """The rollout model (``rollout_model``): only its backbone and sampler settings are
        used; the first frames it starts from are encoded by this stage's autoencoder."""
        if self._model is None and self.config.rollout_model:
            from world_model.world_model import WorldModel

            self._model = WorldModel.from_pretrained(self.config.rollout_model)
            self._model.requires_grad_(False)
        return self._model

    def build_model(self) -> nn.Module:
        latent = self.autoencoder().config.latent_channels
        if latent != self.config.head.latent_channels:
            raise ValueError(f"the autoencoder makes {latent} latent channels; set --head.latent-channels {latent}")
        head = DepthHead(self.config.head)
        if self.config.init_from:
            from world_model.world_model import load_depth_head

            source = load_depth_head(self.config.init_from)
            if source is None:
                raise ValueError(f"init_from {self.config.init_from}: no depth head there")
            if source.config != self.config.head:
                raise ValueError(f"init_from {self.config.init_from}: its head config {source.config} differs from "
                                 f"this run's {self.config.head}")
            head.load_state_dict(source.state_dict())
            log.info("initialised from %s", self.config.init_from)
        return DepthObjective(head, self.config.near_weight)

    @torch.no_grad()
    def _imagine(self, video: Tensor, c2w: Tensor, intrinsics: Tensor, seed: int) -> Tensor:
        """Latents the rollout model generates along ``c2w`` from the clip's first frame."""
        model = self.world_model()
        first = self.autoencoder().encode(video[:, :1])
        T = 1 + (video.shape[1] - 1) // self.config.head.frames_per_latent
        camera = model.backbone.camera(c2w, intrinsics, model.image_hw)
        g = torch.Generator().manual_seed(seed)
        lat, _ = rollout_latents(model.backbone, first, camera, T, sampling_times(model.sample_steps, model.sample_shift), g)
        return lat

    def _cache(self, root: str, frames: int, clips: list[int], imagined: list[int], out: Path,
               what: str, shared: bool = True) -> dict[str, Tensor]:
        """Encode ``clips`` (and roll out ``imagined``) of the set at ``root`` once, into ``out``.
        ``shared``: every process of a ``torchrun`` calls this and each does its share of the
        batches (else only the calling process, which does all of them)."""
        ae = self.autoencoder()
        ae_file = component_folder(self.config.autoencoder or None, "autoencoder") / "model.safetensors"
        model = self.config.rollout_model
        model_id = model if packaged_model(model) is not None or not model else str(Path(model).resolve())
        if model and packaged_model(model) is not None:
            model_id += ":" + hashlib.sha256((component_folder(model, "backbone") / "model.safetensors").read_bytes()
                                             ).hexdigest()[:16]
        key = hashlib.sha256(json.dumps([str(Path(root).resolve()), frames, clips, imagined, model_id,
                                         self.config.rollout_seed, hashlib.sha256(ae_file.read_bytes()).hexdigest(),
                                         dataclasses.asdict(ae.config)]).encode()).hexdigest()[:16]
        file = out / f"depth-latents-{what}-{key}.safetensors"
        if file.is_file():
            return safetensors.torch.load_file(file)
        ds = _AllWindows(root, frames)
        n = self.config.encode_batch
        batches = [[(c, kind) for c in chosen[b : b + n]] for chosen, kind in ((clips, False), (imagined, True))
                   for b in range(0, len(chosen), n)]
        dist = shared and torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
        parts = [out / f"{file.stem}.part{r}of{world}.safetensors" for r in range(world)]
        if not parts[rank].is_file():  # each process its share of the batches; a part left by a killed run is reused
            log.info("caching %d clean and %d imagined latent clips of %d frames into %s (%d of %d batches here)",
                     len(clips), len(imagined), frames, file, len(batches[rank::world]), len(batches))
            pieces: dict[str, list[Tensor]] = {"latents": [], "clip": [], "imagined": []}
            for b in tqdm(range(rank, len(batches), world), desc=f"latents ({what})",
                          disable=not self.train.progress or rank > 0):
                part = batches[b]
                batch = default_collate([ds[c] for c, _ in part])
                if part[0][1]:
                    lat = self._imagine(batch["video"], batch["c2w"], batch["intrinsics"][:, 0],
                                        self.config.rollout_seed + b)
                else:
                    lat = ae.encode(batch["video"])
                pieces["latents"].append(lat.half())
                pieces["clip"].append(torch.tensor([c for c, _ in part]))
                pieces["imagined"].append(torch.tensor([im for _, im in part]))
            T, st = 1 + (frames - 1) // self.config.head.frames_per_latent, ae.config.spatial_stride
            shape = (0, T, ae.config.latent_channels, ds.frame_shape[0] // st, ds.frame_shape[1] // st)
            empty = {"latents": torch.zeros(shape, dtype=torch.float16), "clip": torch.zeros(0, dtype=torch.long),
                     "imagined": torch.zeros(0, dtype=torch.bool)}
            tensors = {k: torch.cat(v).contiguous() if v else empty[k].contiguous() for k, v in pieces.items()}
            write_files_atomically(out, {parts[rank].name: safetensors.torch.save(tensors)})
        if dist:
            torch.distributed.barrier()
        loaded = [safetensors.torch.load_file(p) for p in parts]
        tensors = {k: torch.cat([p[k] for p in loaded]).contiguous() for k in ("latents", "clip", "imagined")}
        if rank == 0:
            write_files_atomically(out, {file.name: safetensors.torch.save(tensors)})
        if dist:
            torch.distributed.barrier()  # every process has read the parts before they go
        if rank == 0:
            for p in parts:
                p.unlink(missing_ok=True)
        return tensors

    def _both(self, n: int, limit: int) -> tuple[list[int], list[int]]:
        clips = list(range(n))
        if not self.config.rollout_model:
            return clips, []
        m = n if limit <= 0 else min(limit, n)
        return clips, sorted({round(i * (n - 1) / max(m - 1, 1)) for i in range(m)})

    def train_dataset(self) -> Dataset:
        from torch.utils.data import ConcatDataset

        sets = []
        for root, what in ((self.train.data, "train"), (self.config.extra_data, "extra")):
            if not root:
                continue
            depth_set = _AllWindows(root, self.train.clip_frames)
            clips, imagined = self._both(len(depth_set), self.config.rollout_clips)
            cache = self._cache(root, self.train.clip_frames, clips, imagined, Path(self.train.out), what)
            sets.append(LatentDepth(cache["latents"], cache["clip"], depth_set, self.config.head.frames_per_latent))
        return sets[0] if len(sets) == 1 else ConcatDataset(sets)

    def heldout_dataset(self) -> Dataset | None:
        if not self.train.heldout:
            return None
        ds = PosedVideoDataset(self.train.heldout, self.train.eval_frames, random_crop=False, depth=True)
        n = min(self.train.eval_clips or ds.num_clips, ds.num_clips)
        clips = list(range(n))
        cache = self._cache(self.train.heldout, self.train.eval_frames, clips, clips if self.config.rollout_model else [],
                            Path(self.train.out), "heldout", shared=False)
        self._heldout_imagined = cache["imagined"]
        return LatentDepth(cache["latents"], cache["clip"], ds, self.config.head.frames_per_latent)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, heldout: Dataset, out_dir: Path, step: int) -> dict[str, float]:
        head: DepthHead = model.head
        batch = default_collate([heldout[i] for i in range(len(heldout))])
        pred = head(batch["latents"])
        metrics = depth_metrics(pred, batch["depth"], head.config.max_depth)
        imagined = self._heldout_imagined.bool()
        out: dict[str, float] = {}
        for kind, rows in (("clean", ~imagined), ("imagined", imagined)):
            if rows.any():
                for name, v in metrics.items():
                    out[f"{name}_{kind}"] = float(v[rows].nanmean())
        if imagined.any():
            T = pred.shape[1]
            for j in sorted({1, T // 4, T // 2, T - 1} - {0}):
                seconds = j * head.config.frames_per_latent / 16.0
                out[f"abs_rel_imagined_{seconds:g}s"] = float(metrics["abs_rel"][imagined, j].mean())
        self._picture(pred, batch["depth"], imagined, head.config.max_depth, out_dir / f"depth-{step:08d}.png")
        return out

    @staticmethod
    def _picture(pred: Tensor, target: Tensor, imagined: Tensor, max_depth: float, path: Path) -> None:
        """Reference depth above predicted depth, last frame of each latent frame, for the first
        clean and the first imagined clip (inverse depth, so near is bright)."""
        from PIL import Image

        from world_model.plots import save_png

        rows = []
        for kind in (False, True):
            idx = torch.nonzero(imagined == kind).flatten()
            if len(idx):
                i = int(idx[0])
                for d in (target[i], pred[i]):
                    inv = (1.0 / d[:, -1].clamp(0.05, max_depth)).clamp(max=2.0) / 2.0  # (T, H, W)
                    rows.append(torch.cat(list(inv), 1))
        grid = (torch.cat(rows, 0) * 255).round().to(torch.uint8).numpy()
        save_png(Image.fromarray(grid), path)

    def export(self, model: nn.Module, out_dir: Path, extra: dict[str, Any]) -> None:
        save_pretrained(out_dir, model.head, model.head.config,
                        extra={**extra, "rollout_model": self.config.rollout_model,
                               "rollout_clips": self.config.rollout_clips})
