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
of every trajectory, so the regression uses it. A regression alone tends to blur what it
cannot predict, so ``--dmd-weight`` adds the DMD loss (:func:`dmd_losses`): a fake-score
critic, initialised from the teacher (``--dmd-teacher``) and trained alongside on the
student's own chunks, against the frozen teacher's score. Both read the rollout through
their own streaming states. The critic shares the student's optimizer, learning rate and
gradient clipping (one backward pass over disjoint parameters) and is updated once per
student update; Self-Forcing updates its critic five times per generator update. The
student starts from ``--init-from``: the teacher itself, or the output of the ODE-regression
stage (:mod:`world_model.train.stages.ode`), SANA-WM's first distillation stage.

Sampler times (``sampling_times(steps, shift=3)``): 1 step goes from ``t = 1`` straight to
the clean estimate; 2 steps visit ``t = 1, 0.75, 0``. Per env step a student of ``s`` steps
runs ``s + 1`` backbone passes (the last commits the chunk clean).

Evaluation and export are the teacher stage's, with the student's sampler steps; the
exported folder loads with ``WorldModel.from_pretrained`` and samples with ``student_steps``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from world_model.checkpoint import config_differences
from world_model.diffusion import commit_chunk, sampling_times, shift_time
from world_model.generation import slice_camera
from world_model.model import CameraInputs, WorldModelBackbone
from world_model.train.stage import Batch, Logs
from world_model.train.stages.teacher import StudentStage, StudentStageConfig
from world_model.world_model import load_backbone

__all__ = ["SelfForcingObjective", "SelfForcingStage", "SelfForcingStageConfig", "dmd_losses", "student_rollout"]


@dataclass(frozen=True)
class SelfForcingStageConfig(StudentStageConfig):
    """The distillation stages' options (:class:`StudentStageConfig`: data, autoencoder,
    architecture, evaluation, the student's steps and rollout lengths) plus DMD's.
    ``init_from`` names the teacher (or an ``ode`` stage's student)."""

    student_steps: int = 2
    """Euler steps of the student's sampler (1 or 2 in SANA-WM's distilled models)."""

    dmd_weight: float = 0.0
    """Weight of the DMD loss beside the regression onto the exact render (0: off). DMD
    (distribution matching distillation, as Self-Forcing and SANA-WM train their students)
    moves each generated chunk along the difference of two scores: a fake-score critic's
    (initialised from ``dmd_teacher``, trained alongside on the student's own chunks) minus
    the frozen teacher's. It pulls the student towards the teacher's distribution, detail
    included, where a regression onto the mean blurs what it cannot predict."""
    dmd_teacher: str = ""
    """The real score and the critic's initialisation for DMD: a world-model or backbone
    folder or a packaged model's name (``teacher``); empty: ``init_from``."""
    regression_weight: float = 1.0
    """Weight of the regression onto the exact render's latents (0 with ``dmd_weight > 0``:
    DMD alone, as peers train)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dmd_weight < 0 or self.regression_weight < 0 or self.dmd_weight + self.regression_weight <= 0:
            raise ValueError(f"dmd_weight and regression_weight must be >= 0 and not both 0, got {self.dmd_weight} "
                             f"and {self.regression_weight}")


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


def dmd_losses(video: Tensor, camera: CameraInputs | None, teacher: WorldModelBackbone, critic: WorldModelBackbone,
               shift: float, t_range: tuple[float, float] = (0.02, 0.98),
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The DMD loss of a student rollout ``video (B, T, C, h, w)`` (its first frame the given
    clean one, the others carrying the student's gradient) and the critic's loss.

    Both scores see the rollout as the env would: each of ``teacher`` (frozen, the real
    score) and ``critic`` (the fake score) commits the generated chunks, detached, into its
    own streaming state, chunk by chunk. For each generated chunk ``x0`` one time ``t`` per
    row (uniform in ``t_range``, then shifted by ``shift`` as the sampler's times are) and
    fresh noise give ``x_t``; the two clean estimates ``x0_real`` and ``x0_fake`` at ``x_t``
    give the DMD gradient ``(x0_fake - x0_real) / mean|x0 - x0_real|`` (the DMD paper's
    normalisation), applied to ``x0`` through ``0.5 |x0 - sg(x0 - g)|^2`` (so the student's
    gradient is exactly ``g``, averaged over elements). The critic learns the student's
    distribution by flow matching on the same detached chunks (at an independent time and
    noise), reading its own state. Returns ``(dmd_loss, critic_loss, mean |g|)``; the teacher
    gets no gradient, the critic only from its own loss, the student only from the DMD loss."""
    B, T = video.shape[:2]
    chunks = teacher.cfg.chunk_lengths(T)
    clean = video.detach()
    lo, hi = t_range
    with torch.no_grad():
        first = slice_camera(camera, 0, chunks[0])
        real_state = commit_chunk(teacher, clean[:, :chunks[0]], first, None)
        fake_state = commit_chunk(critic, clean[:, :chunks[0]], first, None)
    dmd, crit, g_abs, start = video.new_zeros(()), video.new_zeros(()), video.new_zeros(()), chunks[0]
    for n in chunks[1:]:
        cam = slice_camera(camera, start, start + n)
        x0, x0d = video[:, start:start + n], clean[:, start:start + n]
        draws = torch.rand(2, B, generator=generator).to(video.device)
        t, t_critic = (shift_time(lo + (hi - lo) * u, shift) for u in draws)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(video.device)
        tb = t.view(B, 1, 1, 1, 1)
        x_t = (1 - tb) * x0d + tb * noise
        times = t[:, None].expand(B, n)
        with torch.no_grad():
            v_real, _ = teacher(x_t, times, cam, [n], real_state, commit=False)
            v_fake, _ = critic(x_t, times, cam, [n], fake_state, commit=False)
            x0_real, x0_fake = x_t - tb * v_real, x_t - tb * v_fake
            scale = (x0d - x0_real).abs().mean((1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
            g = (x0_fake - x0_real) / scale
        dmd = dmd + 0.5 * (x0 - (x0d - g)).square().mean()
        g_abs = g_abs + g.abs().mean()
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(video.device)
        tc = t_critic.view(B, 1, 1, 1, 1)
        v, _ = critic((1 - tc) * x0d + tc * noise, t_critic[:, None].expand(B, n), cam, [n], fake_state, commit=False)
        crit = crit + (v - (noise - x0d)).square().mean()
        with torch.no_grad():
            real_state = commit_chunk(teacher, x0d, cam, real_state)
            fake_state = commit_chunk(critic, x0d, cam, fake_state)
        start += n
    k = max(1, len(chunks) - 1)
    return dmd / k, crit / k, g_abs / k


class SelfForcingObjective(nn.Module):
    """The student with its rollout loss: ``forward(batch) -> (loss, logs)``."""

    def __init__(self, backbone: WorldModelBackbone, student_steps: int, shift: float, image_hw: tuple[int, int],
                 teacher: WorldModelBackbone | None = None, dmd_weight: float = 0.0, regression_weight: float = 1.0):
        super().__init__()
        if dmd_weight > 0 and teacher is None:
            raise ValueError("dmd_weight > 0 needs a teacher (the real score)")
        self.backbone = backbone
        self.image_hw = image_hw
        self.shift = shift
        self.dmd_weight, self.regression_weight = dmd_weight, regression_weight
        self.register_buffer("times", sampling_times(student_steps, shift), persistent=False)
        if dmd_weight > 0:
            # the real score, frozen (its weights stay in checkpoints so that a resumed run
            # reads the same teacher), and the fake-score critic that starts as a copy of it
            self.teacher = copy.deepcopy(teacher).requires_grad_(False).eval()
            self.critic = copy.deepcopy(teacher).requires_grad_(True).train()

    def forward(self, batch: Batch) -> tuple[Tensor, Logs]:
        latents = batch["latents"]
        cam = self.backbone.camera(batch["c2w"], batch["intrinsics"], self.image_hw)
        steps = self.times.numel() - 1
        grad_step = int(torch.randint(steps, ()))  # one per rollout, from the step's seeded generator
        video, error = student_rollout(self.backbone, latents, cam, self.times, grad_step)
        regression = error[:, 1:].mean()
        logs = {"regression": regression.detach(), "grad_step": torch.tensor(float(grad_step)),
                "loss_last_frame": error[:, -1].detach().mean()}
        loss = self.regression_weight * regression
        if self.dmd_weight > 0:
            dmd, critic, g_abs = dmd_losses(video, cam, self.teacher, self.critic, self.shift)
            loss = loss + self.dmd_weight * dmd + critic  # disjoint parameters: one backward serves both
            logs.update(dmd_grad=g_abs.detach(), critic=critic.detach())
        return loss, logs


class SelfForcingStage(StudentStage):
    """See the module docstring."""

    name = "self_forcing"
    config_class = SelfForcingStageConfig

    def build_model(self) -> nn.Module:
        teacher = super().build_model()  # the backbone, initialised from --init-from, and the checks
        cfg = self.config
        real = None
        if cfg.dmd_weight > 0:
            real = load_backbone(cfg.dmd_teacher or (None if cfg.init_from == "shipped" else cfg.init_from))
            if real.cfg != teacher.backbone.cfg:
                differ = config_differences(dataclasses.asdict(real.cfg), dataclasses.asdict(teacher.backbone.cfg),
                                            labels=("in dmd_teacher", "in this run"))
                raise ValueError(f"dmd_teacher {cfg.dmd_teacher or cfg.init_from}: not this student's architecture "
                                 f"({'; '.join(differ)})")
        return SelfForcingObjective(teacher.backbone, cfg.student_steps, cfg.sample_shift, teacher.image_hw, real,
                                    cfg.dmd_weight, cfg.regression_weight)
