"""Stage ``self_forcing``: a few-step student trained on its own rollouts (SANA-WM's second
distillation stage, after Self-Forcing), supervised by the exact render.

The student starts from a chunk-causal teacher (``--init-from``, required) and learns to
sample with ``student_steps`` Euler steps. Each training item is a clip of the teacher's
latent cache (the same data, encoded by the same frozen autoencoder). One step rolls the
student out over the whole clip exactly as the env runs it:

1. the clip's first latent frame is committed clean into a fresh state;
2. each later chunk starts from fresh noise; one sampler step ``j`` is drawn per rollout
   (uniformly among ``student_steps``); the steps before it run without gradient, the pass
   at step ``j`` runs with it and its clean estimate ``x0 = x_t - t v`` is the chunk's
   output (with ``j`` the last step this is exactly what the sampler returns);
3. the chunk is committed into the state by a clean pass **without gradient** (the state
   the next chunk reads is detached, as upstream truncates it);
4. the loss regresses every generated chunk's latents onto the latents of the exact render
   of the same camera path: supervision at rollout length, on the student's own context,
   which is where a teacher-forced model drifts.

Peers distil onto a teacher's outputs or a critic (DMD); this project has the ground truth
of every trajectory, so the regression uses it. The DMD loss (a fake-score critic) is not
built yet; a regression alone tends to blur what it cannot predict. The ODE-regression stage
before this one is not built either: the student starts from the teacher itself.

Evaluation and export are the teacher stage's, with the student's sampler steps; the
exported folder loads with ``WorldModel.from_pretrained`` and samples with ``student_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from world_model.diffusion import commit_chunk, sampling_times
from world_model.generation import slice_camera
from world_model.model import CameraInputs, WorldModelBackbone
from world_model.train.stage import Batch, Logs
from world_model.train.stages.teacher import TeacherStage, TeacherStageConfig

__all__ = ["SelfForcingObjective", "SelfForcingStage", "SelfForcingStageConfig", "student_rollout"]


@dataclass(frozen=True)
class SelfForcingStageConfig(TeacherStageConfig):
    """The teacher stage's options (data, autoencoder, architecture, evaluation) plus the
    student's. ``init_from`` must name the teacher; ``sample_steps`` is ignored in favour of
    ``student_steps`` (evaluation and export use the student's)."""

    student_steps: int = 2
    """Euler steps of the student's sampler (1 or 2 in SANA-WM's distilled models)."""
    progressive: tuple[int, ...] = (17,)
    """Latent frames per rollout (the teacher stage's progressive schedule)."""
    progressive_epochs: tuple[int, ...] = field(default=())
    """Epochs spent at each length but the last."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.student_steps < 1:
            raise ValueError(f"student_steps must be >= 1, got {self.student_steps}")


def student_rollout(backbone: WorldModelBackbone, latents: Tensor, camera: CameraInputs | None, times: Tensor,
                    grad_step: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Roll the student out over the clip ``latents (B, T, C, h, w)`` (its first frame given
    clean) along ``camera``: returns the generated latents ``(B, T, C, h, w)`` (the first
    frame the given one; the others carry gradient through one backbone pass each) and the
    per-frame squared error against ``latents`` ``(B, T)`` (0 for the first frame).

    ``times``: the sampler's ``steps + 1`` times; ``grad_step`` in ``[0, steps)``: the step
    whose pass carries gradient and whose clean estimate is the chunk's output. Noise is
    drawn per chunk from ``generator`` in the order and shapes of
    :func:`world_model.generation.stream_latents`, so with ``grad_step = steps - 1`` and no
    gradient the rollout is the same generation, frame for frame."""
    steps = times.numel() - 1
    if not 0 <= grad_step < steps:
        raise ValueError(f"grad_step must be in [0, {steps}), got {grad_step}")
    cfg = backbone.cfg
    B, T = latents.shape[:2]
    chunks = cfg.chunk_lengths(T)
    grid = times.tolist()
    with torch.no_grad():
        state = commit_chunk(backbone, latents[:, :chunks[0]], slice_camera(camera, 0, chunks[0]), None)
    out, start = [latents[:, :chunks[0]]], chunks[0]
    for n in chunks[1:]:
        cam = slice_camera(camera, start, start + n)
        shape = (B, n) + tuple(latents.shape[2:])
        x = torch.randn(shape, generator=generator, dtype=torch.float32).to(latents.device)
        with torch.no_grad():
            for t, t_next in zip(grid[:grad_step], grid[1:grad_step + 1]):
                v, _ = backbone(x, torch.full((B, n), t, device=x.device), cam, [n], state, commit=False)
                x = x + (t_next - t) * v
        t = grid[grad_step]
        v, _ = backbone(x, torch.full((B, n), t, device=x.device), cam, [n], state, commit=False)
        x0 = x - t * v  # the clean estimate at this step; at the last step, the sampler's own output
        out.append(x0)
        with torch.no_grad():  # the state-writing pass: no gradient through the recurrent state
            state = commit_chunk(backbone, x0.detach(), cam, state)
        start += n
    video = torch.cat(out, 1)
    error = (video.float() - latents.float()).square().mean((2, 3, 4))
    return video, error


class SelfForcingObjective(nn.Module):
    """The student with its rollout loss: ``forward(batch) -> (loss, logs)``."""

    def __init__(self, backbone: WorldModelBackbone, student_steps: int, shift: float, image_hw: tuple[int, int]):
        super().__init__()
        self.backbone = backbone
        self.image_hw = image_hw
        self.register_buffer("times", sampling_times(student_steps, shift), persistent=False)

    def forward(self, batch: Batch) -> tuple[Tensor, Logs]:
        latents = batch["latents"]
        cam = self.backbone.camera(batch["c2w"], batch["intrinsics"], self.image_hw)
        steps = self.times.numel() - 1
        grad_step = int(torch.randint(steps, ()))  # one per rollout, from the step's seeded generator
        _, error = student_rollout(self.backbone, latents, cam, self.times, grad_step)
        loss = error[:, 1:].mean()
        logs = {"loss": loss.detach(), "grad_step": torch.tensor(float(grad_step)),
                "loss_last_frame": error[:, -1].detach().mean()}
        return loss, logs


class SelfForcingStage(TeacherStage):
    """See the module docstring."""

    name = "self_forcing"
    config_class = SelfForcingStageConfig

    def __init__(self, train, config: SelfForcingStageConfig) -> None:
        super().__init__(train, config)
        if not config.init_from:
            raise ValueError("the self_forcing stage starts from a teacher: pass --init-from (a world-model folder, "
                             "a backbone folder, or 'shipped')")

    def build_model(self) -> nn.Module:
        teacher = super().build_model()  # the backbone, initialised from --init-from, and the checks
        cfg = self.config
        return SelfForcingObjective(teacher.backbone, cfg.student_steps, cfg.sample_shift, teacher.image_hw)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, heldout, out_dir, step: int) -> dict[str, float]:
        return self._evaluate_with(model, heldout, out_dir, step, self.config.student_steps)

    @torch.no_grad()
    def export(self, model: nn.Module, out_dir, extra) -> None:
        self._export_with(model, out_dir, {**extra, "student_steps": self.config.student_steps},
                          self.config.student_steps)
