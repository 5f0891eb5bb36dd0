"""Stage ``ode``: ODE regression, SANA-WM's first distillation stage (after CausVid and
Self-Forcing's ODE initialisation): a few-step student learns the chunk-causal teacher's
noise-to-clean map, before Self-Forcing (``--stage self_forcing``) trains it on its own
rollouts.

**Pairs.** The teacher (``--ode-teacher``, default ``--init-from``) rolls out over every
clip of the latent cache, chunk by chunk, exactly as the env generates: the clip's first
latent frame is committed clean, each later chunk starts from fresh noise, is integrated
by Euler steps to ``t = 0`` and the result is committed into the teacher's streaming state
(so every chunk's context is the teacher's own earlier output, not the dataset's). The
Euler grid is the teacher's ``teacher_steps``-step grid joined with the student's sampler
times (``sampling_times(student_steps, sample_shift)``), so that the trajectory passes
through every time the student will be asked about; the stage records ``x`` at the
student's times and the final clean ``x0``. The noise of clip ``i`` is drawn from a
generator seeded by ``(pair_seed, i)``, so the pairs do not depend on batching or on the
process count. Pairs are written in fp16 shards of ``pair_batch`` clips
(``ode-<key>/pairs-<b>.safetensors``, atomic), keyed by the latent cache, the teacher's
weights and the sampler settings; a killed run keeps its shards and the next one writes
only the missing ones. Under ``torchrun`` the processes share the shards out and wait for
each other.

**Loss.** Per training item the teacher's rollout is the context: its clean chunks are
committed into the student's state (no gradient), and for each generated chunk the
student, at one sampler step ``j`` drawn per rollout, predicts from the recorded ``x`` at
``t_j`` the clean chunk ``x0 = x - t_j v``; the loss is its squared error against the
teacher's ``x0``, averaged over the generated frames. With one student step this maps
the noise straight to the teacher's output; with two, also the teacher's point at the
second time.

Evaluation and export are the teacher stage's with the student's sampler steps, as in
:mod:`world_model.train.stages.self_forcing`; the exported folder samples with
``student_steps``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from world_model.checkpoint import config_differences, write_files_atomically
from world_model.data import PosedVideoDataset
from world_model.diffusion import commit_chunk, sampling_times
from world_model.generation import slice_camera
from world_model.model import CameraInputs, WorldModelBackbone
from world_model.train.stage import Batch, Logs
from world_model.train.stages.teacher import LatentClips, StudentStage, StudentStageConfig
from world_model.world_model import load_backbone

__all__ = ["OdeObjective", "OdePairs", "OdeStage", "OdeStageConfig", "ode_grid", "ode_pairs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OdeStageConfig(StudentStageConfig):
    """The distillation stages' options (:class:`StudentStageConfig`: data, autoencoder,
    architecture, evaluation, the student's steps and lengths; ``progressive`` gives
    prefixes of the teacher's rollouts, made at the longest length) plus the pairs'.
    ``init_from`` names the student's starting point (as a rule the teacher itself)."""

    ode_teacher: str = ""
    """The teacher that makes the pairs: a world-model or backbone folder or a packaged
    model's name (``teacher``); empty: ``init_from``."""
    teacher_steps: int = 8
    """Euler steps of the teacher's solve (its grid; the student's times are added to it)."""
    pair_seed: int = 0
    """Seed of the pairs' noise (clip ``i`` draws from a generator seeded by ``(pair_seed, i)``)."""
    pair_batch: int = 8
    """Clips per teacher rollout and per shard of pairs."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher_steps < 1:
            raise ValueError(f"teacher_steps must be >= 1, got {self.teacher_steps}")
        if self.pair_batch < 1:
            raise ValueError(f"pair_batch must be >= 1, got {self.pair_batch}")


def ode_grid(teacher_steps: int, student_times: Tensor, shift: float) -> tuple[Tensor, list[int]]:
    """The teacher's Euler grid ``(G,)`` (its ``teacher_steps``-step grid, shifted by
    ``shift``, joined with ``student_times``; decreasing from 1 to 0) and, for each student
    time but the last (0), its index in the grid."""
    grid = torch.cat([sampling_times(teacher_steps, shift), student_times.float()])
    grid = torch.unique(grid.double().round(decimals=12)).flip(0).float()  # decreasing, each time once
    index = []
    for t in student_times[:-1].tolist():
        hit = torch.nonzero((grid - t).abs() < 1e-6)
        index.append(int(hit[0]))
    return grid, index


@torch.no_grad()
def ode_pairs(teacher: WorldModelBackbone, latents: Tensor, camera: CameraInputs | None, grid: Tensor,
              record: list[int], generators: list[torch.Generator]) -> tuple[Tensor, Tensor]:
    """The teacher's chunk-causal rollout over ``latents (B, T, C, h, w)`` (only its first
    latent frame is used, given clean) along ``camera``: returns ``x0 (B, T, C, h, w)`` (the
    given first frame, then each chunk's Euler solve along ``grid`` from fresh noise, every
    chunk committed into the state before the next) and ``xt (B, S, T, C, h, w)``, the
    chunks' ``x`` at the grid indices ``record`` (the first frame: the given one). Row
    ``b``'s noise comes from ``generators[b]``, chunk by chunk."""
    cfg = teacher.cfg
    B, T = latents.shape[:2]
    chunks = cfg.chunk_lengths(T)
    times = grid.tolist()
    first = latents[:, :chunks[0]]
    state = commit_chunk(teacher, first, slice_camera(camera, 0, chunks[0]), None)
    x0, xt, start = [first], [first[:, None].expand(B, len(record), *first.shape[1:])], chunks[0]
    for n in chunks[1:]:
        cam = slice_camera(camera, start, start + n)
        x = torch.stack([torch.randn((n,) + tuple(latents.shape[2:]), generator=g, dtype=torch.float32)
                         for g in generators]).to(latents.device)
        seen = {}
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            if i in record:
                seen[i] = x
            v, _ = teacher(x, torch.full((B, n), t, device=x.device), cam, [n], state, commit=False)
            x = x + (t_next - t) * v
        x0.append(x)
        xt.append(torch.stack([seen[i] for i in record], 1))
        state = commit_chunk(teacher, x, cam, state)
        start += n
    return torch.cat(x0, 1), torch.cat(xt, 2)


class OdePairs(LatentClips):
    """The teacher's rollouts: item ``i`` is clip ``i``'s first ``length`` latent frames of
    ``x0`` (the teacher's output, its first frame the given one) and of ``xt`` (``(S, T, C,
    h, w)``: the solve's ``x`` at the student's times), with the raw poses and intrinsics;
    :meth:`set_epoch` picks ``length`` from the progressive schedule. Kept in fp16,
    returned in float32."""

    def __init__(self, tensors: dict[str, Tensor], k: int, progressive: tuple[int, ...], epochs: tuple[int, ...]):
        super().__init__({"latents": tensors["x0"], "c2w": tensors["c2w"], "intrinsics": tensors["intrinsics"]}, k,
                         progressive, epochs)
        self.xt = tensors["xt"]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        T = self.length
        return {"x0": self.latents[i, :T].float(), "xt": self.xt[i, :, :T].float(),
                "c2w": self.c2w[i, : 1 + self.k * (T - 1)], "intrinsics": self.intrinsics[i]}


def ode_loss(backbone: WorldModelBackbone, x0: Tensor, xt: Tensor, camera: CameraInputs | None, t: float) -> Tensor:
    """Per-frame squared error ``(B, T)`` (0 for the first chunk) of the student's clean
    estimates ``x - t v`` from ``xt (B, T, C, h, w)`` at time ``t`` against the teacher's
    ``x0 (B, T, C, h, w)``, each chunk read with the teacher's earlier chunks committed as
    context (no gradient through the state)."""
    cfg = backbone.cfg
    B, T = x0.shape[:2]
    chunks = cfg.chunk_lengths(T)
    with torch.no_grad():
        state = commit_chunk(backbone, x0[:, :chunks[0]], slice_camera(camera, 0, chunks[0]), None)
    errors, start = [x0.new_zeros(B, chunks[0])], chunks[0]
    for n in chunks[1:]:
        cam = slice_camera(camera, start, start + n)
        x = xt[:, start:start + n]
        v, _ = backbone(x, torch.full((B, n), t, device=x.device), cam, [n], state, commit=False)
        errors.append((x - t * v - x0[:, start:start + n]).float().square().mean((2, 3, 4)))
        if start + n < T:
            with torch.no_grad():
                state = commit_chunk(backbone, x0[:, start:start + n], cam, state)
        start += n
    return torch.cat(errors, 1)


class OdeObjective(nn.Module):
    """The student with its ODE-regression loss: ``forward(batch) -> (loss, logs)``."""

    def __init__(self, backbone: WorldModelBackbone, student_steps: int, shift: float, image_hw: tuple[int, int]):
        super().__init__()
        self.backbone = backbone
        self.image_hw = image_hw
        self.register_buffer("times", sampling_times(student_steps, shift), persistent=False)

    def forward(self, batch: Batch) -> tuple[Tensor, Logs]:
        x0, xt = batch["x0"], batch["xt"]
        cam = self.backbone.camera(batch["c2w"], batch["intrinsics"], self.image_hw)
        j = int(torch.randint(self.times.numel() - 1, ()))  # one sampler step per rollout, seeded by the loop
        error = ode_loss(self.backbone, x0, xt[:, j], cam, float(self.times[j]))
        loss = error[:, 1:].mean()
        return loss, {"ode": loss.detach(), "step_index": torch.tensor(float(j)),
                      "loss_last_frame": error[:, -1].detach().mean()}


class OdeStage(StudentStage):
    """See the module docstring."""

    name = "ode"
    config_class = OdeStageConfig

    def build_model(self) -> nn.Module:
        start = super().build_model()  # the backbone, initialised from --init-from, and the checks
        return OdeObjective(start.backbone, self.config.student_steps, self.config.sample_shift, start.image_hw)

    def teacher(self) -> WorldModelBackbone:
        """The frozen teacher that makes the pairs; refused when its latents or chunks are
        not the student's."""
        cfg = self.config
        name = cfg.ode_teacher or cfg.init_from
        teacher = load_backbone(None if name == "shipped" else name).requires_grad_(False).eval()
        fields = ("latent_channels", "latent_height", "latent_width", "frames_per_latent", "first_chunk_frames",
                  "chunk_frames")
        a, b = dataclasses.asdict(teacher.cfg), dataclasses.asdict(cfg.model)
        if any(a[f] != b[f] for f in fields):
            differ = config_differences({f: a[f] for f in fields}, {f: b[f] for f in fields},
                                        labels=("in ode_teacher", "in this run"))
            raise ValueError(f"ode_teacher {name}: its latents or chunks are not this student's ({'; '.join(differ)})")
        return teacher

    def _pairs(self) -> dict[str, Tensor]:
        """The teacher's rollouts over the latent cache (see the module docstring), made
        once per key, shard by shard, and loaded whole."""
        cfg = self.config
        cache = self._latent_cache()
        teacher = self.teacher()
        H, W = self._image_hw(PosedVideoDataset(self.train.data, self.train.clip_frames, random_crop=False))
        student_times = sampling_times(cfg.student_steps, cfg.sample_shift)
        grid, record = ode_grid(cfg.teacher_steps, student_times, cfg.sample_shift)
        T = min(max(cfg.progressive), cache["latents"].shape[1])
        digest = hashlib.sha256()
        for name, tensor in sorted(teacher.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().contiguous().numpy().tobytes())
        for name in ("latents", "c2w", "intrinsics"):
            digest.update(cache[name].contiguous().numpy().tobytes())
        digest.update(json.dumps([grid.tolist(), record, T, cfg.pair_seed, cfg.pair_batch]).encode())
        folder = Path(self.train.out) / f"ode-{digest.hexdigest()[:16]}"
        N, B = cache["latents"].shape[0], cfg.pair_batch
        shards = [folder / f"pairs-{b:05d}.safetensors" for b in range(-(-N // B))]
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
        todo = [b for b in range(rank, len(shards), world) if not shards[b].is_file()]
        if todo:
            log.info("the teacher rolls out %d clips of %d latent frames (%d Euler steps per chunk) into %s: "
                     "%d of %d shards here", N, T, len(grid) - 1, folder, len(todo), len(shards))
        for b in tqdm(todo, desc=f"ode pairs (process {rank})", disable=not self.train.progress or rank > 0):
            index = range(b * B, min((b + 1) * B, N))
            latents = cache["latents"][index.start:index.stop, :T]
            c2w = cache["c2w"][index.start:index.stop, : 1 + cfg.model.frames_per_latent * (T - 1)]
            K = cache["intrinsics"][index.start:index.stop]
            cam = teacher.camera(c2w, K, (H, W))
            gens = [torch.Generator().manual_seed(int(cfg.pair_seed) * 1_000_003 + i) for i in index]
            x0, xt = ode_pairs(teacher, latents, cam, grid, record, gens)
            write_files_atomically(folder, {shards[b].name: safetensors.torch.save(
                {"x0": x0.half().contiguous(), "xt": xt.half().contiguous(), "c2w": c2w.contiguous(),
                 "intrinsics": K.contiguous()})})
        if dist:
            torch.distributed.barrier()
        loaded = [safetensors.torch.load_file(s) for s in shards]
        return {k: torch.cat([p[k] for p in loaded]) for k in ("x0", "xt", "c2w", "intrinsics")}

    def train_dataset(self) -> Dataset:
        cfg = self.config
        return OdePairs(self._pairs(), cfg.model.frames_per_latent, cfg.progressive, cfg.progressive_epochs)
