"""Stage ``teacher``: train the chunk-causal flow-matching backbone on autoencoder latents.

The training clips are encoded once by the frozen autoencoder (``--autoencoder``, default:
the one shipped in the package) into a latent cache inside the run folder, written
atomically; later runs and resumes reuse it. Each item is the first ``T`` latent frames of
a clip (its first frame alone, then groups of K = 4) with the raw-frame poses and
intrinsics; ``T`` grows with the epoch (``progressive``: short clips first). The module
``TeacherObjective(batch) -> (loss, logs)`` computes the camera conditioning and the
chunk-causal flow-matching loss (:mod:`world_model.diffusion.flow_matching`).

Evaluation generates each held-out clip from its first frame along its true camera path
(streaming, few-step Euler sampling, the state carried across chunks) and reports PSNR
against the exact reference render by horizon, beside two baselines on the same clips: the
first frame repeated, and the same model with its camera conditioning off. It saves the
PSNR-vs-horizon plot and a picture of generated vs reference frames.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, default_collate
from tqdm import tqdm

from world_model.autoencoder import Autoencoder
from world_model.checkpoint import config_differences, copy_matching_tensors, save_pretrained, write_files_atomically
from world_model.data import PosedVideoDataset
from world_model.diffusion import FlowMatchingConfig, flow_matching_loss
from world_model.model import WorldModelBackbone, WorldModelConfig
from world_model.scoring import evaluate_rollouts, save_horizon_plot
from world_model.train.stage import Batch, Logs, Stage
from world_model.world_model import component_folder, load_backbone

__all__ = ["LatentClips", "StudentStage", "StudentStageConfig", "TeacherObjective", "TeacherStage", "TeacherStageConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherStageConfig:
    """Options of the teacher stage."""

    model: WorldModelConfig = field(default_factory=WorldModelConfig.tiny)
    """The backbone's architecture."""
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    """Timestep distribution and per-chunk noise mixture."""
    autoencoder: str = ""
    """Folder of the frozen autoencoder, or of a world model holding one (empty: the one shipped
    in the package)."""
    progressive: tuple[int, ...] = (5, 9, 17)
    """Latent frames per training clip, growing: stage i lasts ``progressive_epochs[i]`` epochs."""
    progressive_epochs: tuple[int, ...] = (1, 2)
    """Epochs spent at each length but the last."""
    fov_deg: float = 90.0
    """Field of view of the dataset (for the intrinsics check of external data only)."""
    sample_steps: int = 4
    """Euler steps per chunk in evaluation."""
    sample_shift: float = 3.0
    """Timestep shift of the sampling grid."""
    horizons_s: tuple[float, ...] = (0.5, 1.0, 2.0)
    """Horizons (seconds after the first frame) at which evaluation reports PSNR."""
    eval_batch: int = 4
    """Held-out clips generated at once."""
    encode_batch: int = 16
    """Clips per autoencoder call when building the latent cache."""
    windows_per_clip: int = 1
    """Training clips cut from each dataset clip: consecutive windows of ``clip_frames``
    frames, each starting on the frame the one before ends on (a 129-frame clip holds two
    65-frame windows). Each window is encoded on its own, so its first latent frame is a
    single frame, as a generated video's is."""
    init_from: str = ""
    """Warm start: a world-model folder (with ``backbone/``), a backbone folder, ``shipped``
    (the package's default) or another packaged model's name (``teacher``); every backbone tensor whose name and shape match is copied, the rest (for
    example the latent projections after a change of ``latent_channels``) start as
    initialised; refused when less than half of the weights fit. The optimizer starts
    fresh; empty: train from scratch."""
    init_fresh: tuple[str, ...] = ()
    """With ``init_from``: regular expressions (``re.search`` on the tensor name) of tensors
    left as initialised instead of copied, for example ``'blocks\\.[0-24-6]\\.attn\\.cam_'``,
    the GDN blocks' UCPE camera branch (an ablation that retrains one part on a trained rest)."""

    def __post_init__(self) -> None:
        if len(self.progressive_epochs) != len(self.progressive) - 1:
            raise ValueError(f"progressive_epochs needs {len(self.progressive) - 1} entries for progressive={self.progressive}")
        if min(self.progressive) < 1:
            raise ValueError(f"progressive lengths must be >= 1, got {self.progressive}")
        if self.windows_per_clip < 1:
            raise ValueError(f"windows_per_clip must be >= 1, got {self.windows_per_clip}")
        if self.init_fresh and not self.init_from:
            raise ValueError("init_fresh names tensors not to copy from init_from: it needs init_from")
        for pattern in self.init_fresh:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"init_fresh: {pattern!r} is not a regular expression ({e})") from None


class LatentClips(Dataset):
    """Pre-encoded clips: ``latents (N, T, C, h, w)``, ``c2w (N, F, 4, 4)``, ``intrinsics (N, 3, 3)``.

    Item ``i`` is clip ``i``'s first ``length`` latent frames and their ``1 + K (length - 1)``
    raw poses; :meth:`set_epoch` picks ``length`` from the progressive schedule.
    """

    def __init__(self, tensors: dict[str, Tensor], k: int, progressive: tuple[int, ...], epochs: tuple[int, ...]):
        self.latents, self.c2w, self.intrinsics = tensors["latents"], tensors["c2w"], tensors["intrinsics"]
        self.k, self.progressive, self.epochs = k, progressive, epochs
        self.max_frames = self.latents.shape[1]
        self.length = min(progressive[0], self.max_frames)

    def set_epoch(self, epoch: int) -> None:
        bounds = np.cumsum(self.epochs)
        self.length = min(self.progressive[int(np.searchsorted(bounds, epoch, side="right"))], self.max_frames)

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        T = self.length
        return {"latents": self.latents[i, :T], "c2w": self.c2w[i, : 1 + self.k * (T - 1)], "intrinsics": self.intrinsics[i]}


class _Windows(PosedVideoDataset):
    """Item ``i`` is window ``i // num_clips`` of clip ``i % num_clips``: frames
    ``w (F - 1) .. w (F - 1) + F - 1`` for windows of ``F = clip_frames`` frames."""

    def __init__(self, root, clip_frames: int, windows: int):
        super().__init__(root, clip_frames, samples_per_clip=windows, random_crop=False)
        need = windows * (clip_frames - 1) + 1
        if self.num_clips and int(self.clip_lengths.min()) < need:
            raise ValueError(f"{root}: {windows} windows of {clip_frames} frames need clips of {need} frames, "
                             f"the shortest has {int(self.clip_lengths.min())}")

    def crop_start(self, index: int) -> int:
        return (index // self.num_clips) * (self.clip_frames - 1)


class TeacherObjective(nn.Module):
    """The backbone with its loss: ``forward(batch) -> (loss, logs)``."""

    def __init__(self, backbone: WorldModelBackbone, flow: FlowMatchingConfig, image_hw: tuple[int, int]):
        super().__init__()
        self.backbone = backbone
        self.flow = flow
        self.image_hw = image_hw

    def forward(self, batch: Batch) -> tuple[Tensor, Logs]:
        latents = batch["latents"]  # (B, T, C, h, w)
        cam = self.backbone.camera(batch["c2w"], batch["intrinsics"], self.image_hw)
        chunks = self.backbone.cfg.chunk_lengths(latents.shape[1])
        loss, logs = flow_matching_loss(self.backbone, latents, cam, chunks, self.flow)
        return loss, {k: torch.tensor(v) for k, v in logs.items()}


class TeacherStage(Stage):
    """See the module docstring."""

    name = "teacher"
    config_class = TeacherStageConfig

    def __init__(self, train, config: TeacherStageConfig) -> None:
        super().__init__(train, config)
        K = config.model.frames_per_latent
        for what, frames in (("clip_frames", train.clip_frames), ("eval_frames", train.eval_frames)):
            if (frames - 1) % K:
                raise ValueError(f"{what} must be 1 + {K}n frames for the teacher, got {frames}")
        self._ae: Autoencoder | None = None

    # ------------------------------------------------------------------------- pieces
    def autoencoder_folder(self) -> Path:
        """The frozen autoencoder's folder: ``--autoencoder`` (an autoencoder folder or a
        world-model folder holding one), else the shipped one."""
        return component_folder(self.config.autoencoder or None, "autoencoder")

    def autoencoder(self) -> Autoencoder:
        if self._ae is None:
            from world_model.autoencoder import load_autoencoder

            self._ae = load_autoencoder(self.autoencoder_folder()).eval()
            for p in self._ae.parameters():
                p.requires_grad_(False)
        return self._ae

    def _image_hw(self, ds: PosedVideoDataset) -> tuple[int, int]:
        H, W = ds.frame_shape
        cfg = self.config.model
        if (H // 8, W // 8) != (cfg.latent_height, cfg.latent_width):
            raise ValueError(f"frames of {H}x{W} give an {H // 8}x{W // 8} latent grid; the model expects "
                             f"{cfg.latent_height}x{cfg.latent_width}")
        return H, W

    def build_model(self) -> nn.Module:
        ds = PosedVideoDataset(self.train.data, self.train.clip_frames, random_crop=False)
        latent = self.autoencoder().config.latent_channels
        if latent != self.config.model.latent_channels:
            raise ValueError(f"the autoencoder makes {latent} latent channels; set --model.latent-channels {latent} "
                             f"(got {self.config.model.latent_channels})")
        backbone = WorldModelBackbone(self.config.model)
        if self.config.init_from:
            source = load_backbone(None if self.config.init_from == "shipped" else self.config.init_from)
            skip = [re.compile(p) for p in self.config.init_fresh]
            theirs = {k: v for k, v in source.state_dict().items() if not any(p.search(k) for p in skip)}
            if skip and len(theirs) == len(source.state_dict()):
                raise ValueError(f"init_fresh {list(self.config.init_fresh)} matches no tensor of {self.config.init_from}")
            fresh = copy_matching_tensors(backbone, theirs)
            state = backbone.state_dict()
            total = len(state)
            if sum(state[k].numel() for k in fresh) > sum(v.numel() for v in state.values()) / 2:
                differ = config_differences(dataclasses.asdict(source.cfg), dataclasses.asdict(self.config.model),
                                            labels=("in init_from", "in this run"))
                raise ValueError(f"init_from {self.config.init_from}: less than half of this backbone's weights fit "
                                 f"({'; '.join(differ)})")
            log.info("initialised from %s: %d of %d tensors copied%s", self.config.init_from, total - len(fresh), total,
                     f"; left as initialised: {', '.join(fresh)}" if fresh else "")
        return TeacherObjective(backbone, self.config.flow, self._image_hw(ds))

    def _latent_cache(self) -> dict[str, Tensor]:
        """Encode the training clips once (the first ``clip_frames`` frames of each, or its
        ``windows_per_clip`` consecutive windows of that length) and keep the
        result in the run folder, keyed by the data, frames and autoencoder (its weights and its
        config, which holds the latent normalisation). Under ``torchrun`` each process encodes
        every ``world_size``-th batch into a part file (atomic), the processes wait for each
        other, and every one of them assembles the whole cache; the main process writes it and
        removes the parts. A part left by a killed run is reused."""
        ae = self.autoencoder()
        ae_file = self.autoencoder_folder() / "model.safetensors"
        windows = self.config.windows_per_clip
        key = hashlib.sha256(json.dumps([str(Path(self.train.data).resolve()), self.train.clip_frames,
                                         hashlib.sha256(ae_file.read_bytes()).hexdigest(),
                                         dataclasses.asdict(ae.config)] + ([windows] if windows > 1 else [])
                                        ).encode()).hexdigest()[:16]
        out = Path(self.train.out)
        file = out / f"latents-{key}.safetensors"
        if file.is_file():
            return safetensors.torch.load_file(file)
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
        parts = [out / f"latents-{key}.part{r}of{world}.safetensors" for r in range(world)]
        if not parts[rank].is_file():
            ds = _Windows(self.train.data, self.train.clip_frames, windows)
            batches = range(rank, -(-len(ds) // self.config.encode_batch), world)
            pieces: dict[str, list[Tensor]] = {"latents": [], "c2w": [], "intrinsics": [], "index": []}
            log.info("encoding %d training clips of %d frames into %s (%d of %d batches here)", len(ds),
                     self.train.clip_frames, file, len(batches), -(-len(ds) // self.config.encode_batch))
            with torch.no_grad():
                for b in tqdm(batches, desc=f"encoding (process {rank})", disable=not self.train.progress or rank > 0):
                    index = range(b * self.config.encode_batch, min((b + 1) * self.config.encode_batch, len(ds)))
                    batch = default_collate([ds[i] for i in index])
                    pieces["latents"].append(ae.encode(batch["video"]).float())
                    pieces["c2w"].append(batch["c2w"].float())
                    pieces["intrinsics"].append(batch["intrinsics"][:, 0].float())
                    pieces["index"].append(torch.tensor(list(index)))
            tensors = {k: torch.cat(v).contiguous() for k, v in pieces.items()}
            write_files_atomically(out, {parts[rank].name: safetensors.torch.save(tensors)})
        if dist:
            torch.distributed.barrier()
        loaded = [safetensors.torch.load_file(p) for p in parts]
        order = torch.cat([p["index"] for p in loaded]).argsort()
        tensors = {k: torch.cat([p[k] for p in loaded])[order].contiguous() for k in ("latents", "c2w", "intrinsics")}
        if rank == 0:
            write_files_atomically(out, {file.name: safetensors.torch.save(tensors)})
        if dist:
            torch.distributed.barrier()  # every process has read the parts before they go
        if rank == 0:
            for p in parts:
                p.unlink(missing_ok=True)
        return tensors

    def train_dataset(self) -> Dataset:
        cfg = self.config
        return LatentClips(self._latent_cache(), cfg.model.frames_per_latent, cfg.progressive, cfg.progressive_epochs)

    def heldout_dataset(self) -> Dataset | None:
        if not self.train.heldout:
            return None
        ds = PosedVideoDataset(self.train.heldout, self.train.eval_frames, random_crop=False)
        self._image_hw(ds)
        n = min(self.train.eval_clips or len(ds), len(ds))
        return Subset(ds, range(n))

    # ---------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, heldout: Dataset, out_dir: Path, step: int) -> dict[str, float]:
        return self._evaluate_with(model, heldout, out_dir, step, self.config.sample_steps)

    def _evaluate_with(self, model: nn.Module, heldout: Dataset, out_dir: Path, step: int, steps: int) -> dict[str, float]:
        cfg = self.config
        report = evaluate_rollouts(model.backbone, self.autoencoder(), heldout, model.image_hw, steps,
                                   cfg.sample_shift, cfg.horizons_s, cfg.eval_batch, out_dir / f"rollout-{step:08d}.png")
        save_horizon_plot(report, out_dir / f"psnr-horizon-{step:08d}.png")
        return {k: v for k, v in report.items() if isinstance(v, float)}

    @torch.no_grad()
    def export(self, model: nn.Module, out_dir: Path, extra: dict[str, Any]) -> None:
        self._export_with(model, out_dir, extra, self.config.sample_steps)

    def _export_with(self, model: nn.Module, out_dir: Path, extra: dict[str, Any], steps: int) -> None:
        """A complete world-model folder: ``backbone/`` (the EMA weights, the sampling
        settings) and ``autoencoder/`` (the frozen one it was trained on), so that
        ``WorldModel.from_pretrained(out_dir)`` loads it."""
        ae = self.autoencoder()
        save_pretrained(out_dir / "autoencoder", ae, ae.config)
        sampling = {"steps": steps, "shift": self.config.sample_shift}
        save_pretrained(out_dir / "backbone", model.backbone, model.backbone.cfg,
                        extra={**extra, "sampling": sampling, "image_hw": list(model.image_hw),
                               "flow": dataclasses.asdict(self.config.flow)})


@dataclass(frozen=True)
class StudentStageConfig(TeacherStageConfig):
    """The teacher stage's options (data, autoencoder, architecture, evaluation) for a
    distillation stage's few-step student: ``init_from`` must name the model it starts from;
    ``sample_steps`` is ignored in favour of ``student_steps`` (evaluation and export use the
    student's)."""

    student_steps: int = 1
    """Euler steps of the student's sampler (1 or 2 in SANA-WM's distilled models)."""
    progressive: tuple[int, ...] = (17,)
    """Latent frames per rollout (the teacher stage's progressive schedule)."""
    progressive_epochs: tuple[int, ...] = field(default=())
    """Epochs spent at each length but the last."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.student_steps < 1:
            raise ValueError(f"student_steps must be >= 1, got {self.student_steps}")


class StudentStage(TeacherStage):
    """A distillation stage (``ode``, ``self_forcing``): its student starts from
    ``--init-from`` (required) and is evaluated and exported with its ``student_steps``."""

    config_class = StudentStageConfig

    def __init__(self, train, config: StudentStageConfig) -> None:
        super().__init__(train, config)
        if not config.init_from:
            raise ValueError(f"the {self.name} stage starts the student from a model: pass --init-from (a world-model "
                             "folder, a backbone folder, 'shipped' or 'teacher'; as a rule the teacher)")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, heldout: Dataset, out_dir: Path, step: int) -> dict[str, float]:
        return self._evaluate_with(model, heldout, out_dir, step, self.config.student_steps)

    @torch.no_grad()
    def export(self, model: nn.Module, out_dir: Path, extra: dict[str, Any]) -> None:
        self._export_with(model, out_dir, {**extra, "student_steps": self.config.student_steps},
                          self.config.student_steps)
