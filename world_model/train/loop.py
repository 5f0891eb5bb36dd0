"""The generic training loop: any :class:`~world_model.train.stage.Stage`, one process or
many (``torchrun``, DDP), resumable.

Per step: the step's random draws are seeded from ``(seed, rank, step)``; the batch comes
from a seeded ``DistributedSampler`` (epoch ``step // steps_per_epoch``, skipping the
batches already done), so a resumed run sees exactly the batches the uninterrupted run
would have seen; the warm-up + cosine learning rate is set; forward under bf16 autocast;
backward; gradient-norm clipping; AdamW; EMA update.

Rank 0 logs the mean of every loss term every ``log_interval`` steps (averaged over
processes), evaluates the EMA model on held-out data every ``eval_interval`` steps (the
metric history goes into the checkpoint and ``eval/metrics.png``), and writes a resumable
checkpoint every ``ckpt_interval`` steps. At the end it exports the EMA model to
``<out>/final``.

The run folder::

    run.json                  the configs of the run (a re-run must match them)
    checkpoints/step-*.json   resumable states (+ .safetensors): weights, EMA, AdamW, RNGs
    train_log.jsonl           one line per log interval; train.log the log messages
    eval/metrics.png          held-out metrics by step; eval/recon-*.png reconstructions
    final/                    the exported EMA model (save_pretrained)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from world_model.checkpoint import (
    CheckpointError,
    field_defaults,
    load_state_into,
    load_training_state,
    optimizer_state_from_flat,
    optimizer_state_to_flat,
    remove_stale_temporaries,
    save_training_state,
    with_defaults,
    write_files_atomically,
)
from world_model.train import distributed
from world_model.train.config import RESUMABLE_FIELDS, TrainConfig, config_differences
from world_model.plots import plot_history
from world_model.train.schedule import ema_decay_at, lr_at, step_seed
from world_model.train.stage import Batch, Stage
from world_model.world_model import has_native_bf16

__all__ = ["RUN_JSON", "train"]

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
CHECKPOINTS = "checkpoints"
EVAL = "eval"
FINAL = "final"
TRAIN_LOG = "train_log.jsonl"


# ------------------------------------------------------------------------------ small pieces
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weights of rank >= 2 only (not on biases and gains)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, fused=True)  # one kernel (CPU and CUDA): 4x the per-tensor loop


def _optimizer_params(model: nn.Module, opt: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """``(name, parameter)`` in the optimizer's id order (its groups' order)."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [(name_of[id(p)], p) for group in opt.param_groups for p in group["params"]]


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batches(dataset: Dataset, sampler: DistributedSampler, cfg: TrainConfig, start_step: int) -> Iterator[Batch]:
    """The training batches from global step ``start_step`` on, epoch after epoch."""
    per_epoch = len(sampler) // cfg.batch_size
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)  # picked up by the workers, which start with each epoch
        indices = list(sampler)[skip * cfg.batch_size:]
        yield from DataLoader(dataset, batch_size=cfg.batch_size, sampler=indices, num_workers=cfg.num_workers,
                              drop_last=True, pin_memory=_uses_cuda(cfg))
        epoch, skip = epoch + 1, 0


def _uses_cuda(cfg: TrainConfig) -> bool:
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    data = {"python": json.loads(json.dumps(random.getstate())), "numpy": [name, pos, has_gauss, gauss]}
    return tensors, data


def _set_rng_state(tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, state, gauss = data["python"]
    random.setstate((version, tuple(state), gauss))
    name, pos, has_gauss, cached = data["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))


def _checkpoint_step(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _checkpoints(folder: Path) -> list[Path]:
    """The JSON files of the resumable checkpoints in ``folder``, newest first."""
    return sorted(folder.glob("step-*.json"), key=_checkpoint_step, reverse=True) if folder.is_dir() else []


def _load_latest(folder: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest readable checkpoint (a damaged one is reported and skipped)."""
    for path in _checkpoints(folder):
        try:
            tensors, data = load_training_state(path)
            return path, tensors, data
        except CheckpointError as exc:
            log.warning("skipping damaged checkpoint: %s", exc)
    return None


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _run_configs(cfg: TrainConfig, stage: Stage) -> dict[str, Any]:
    return json.loads(json.dumps({"train": cfg.__dict__, "stage": stage.config.__class__.__name__,
                                  "stage_config": dataclasses.asdict(stage.config)}))


def _check_run_folder(out: Path, cfg: TrainConfig, stage: Stage) -> None:
    """Write ``run.json``, or check that the run in ``out`` was started with the same configs."""
    wanted = _run_configs(cfg, stage)
    path = out / RUN_JSON
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable ({exc}); delete it to start the run afresh") from None
        # a field added to a config since the run started did not exist then: it is read as its default
        defaults = json.loads(json.dumps({"train": field_defaults(TrainConfig),
                                          "stage_config": field_defaults(type(stage.config))}))
        diffs = config_differences(with_defaults(stored.get("train", {}), defaults["train"]), wanted["train"],
                                   ignore=RESUMABLE_FIELDS)
        diffs += config_differences(with_defaults(stored.get("stage_config", {}), defaults["stage_config"]),
                                    wanted["stage_config"])
        if stored.get("stage") != wanted["stage"]:
            diffs.append(f"stage: {stored.get('stage')!r} in the run folder, {wanted['stage']!r} now")
        if diffs:
            raise ValueError(f"{out} holds a run with other settings; differing fields:\n  " + "\n  ".join(diffs)
                             + "\nuse the same arguments to resume it, or another --out folder")
        if stored["train"].get("steps") != cfg.steps:
            log.info("steps changed from %s to %d: the cosine schedule is stretched from the resumed step on",
                     stored["train"].get("steps"), cfg.steps)
    write_files_atomically(out, {RUN_JSON: (json.dumps(wanted, indent=2) + "\n").encode()})


# ------------------------------------------------------------------------------ the loop
def train(cfg: TrainConfig, stage: Stage) -> dict[str, Any]:
    """Train ``stage`` as configured by ``cfg`` (resuming from ``cfg.out`` if it holds a
    checkpoint). Returns ``{"step", "elapsed_s", "history", "stopped"}``."""
    d = distributed.setup(cfg.device)
    handler = None
    try:
        out = Path(cfg.out)
        if d.is_main:
            out.mkdir(parents=True, exist_ok=True)
            _check_run_folder(out, cfg, stage)
            remove_stale_temporaries(out / CHECKPOINTS)
            handler = logging.FileHandler(out / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
            logging.getLogger().addHandler(handler)
        distributed.barrier(d)
        with logging_redirect_tqdm():
            return _train(cfg, stage, d, out)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        distributed.teardown(d)


def _train(cfg: TrainConfig, stage: Stage, d: distributed.Dist, out: Path) -> dict[str, Any]:
    # 1. model, EMA, optimizer (identical on every process)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = stage.build_model().to(d.device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = make_optimizer(model, cfg)
    n_params = sum(p.numel() for p in model.parameters())

    # 2. resume
    step, elapsed, history = 0, 0.0, []
    latest = _load_latest(out / CHECKPOINTS)
    if latest is not None:
        path, tensors, data = latest
        load_state_into(model, _prefixed(tensors, "model."), path.with_suffix(".safetensors"))
        load_state_into(ema, _prefixed(tensors, "ema."), path.with_suffix(".safetensors"))
        try:
            opt.load_state_dict(optimizer_state_from_flat(tensors, data["optimizer"], params=_optimizer_params(model, opt)))
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: optimizer state does not fit ({exc})") from None
        _set_rng_state(tensors, data["rng"])
        step, elapsed, history = data["step"], data["elapsed_s"], data["history"]
        if data.get("world_size", 1) != d.world_size:
            log.warning("%s was written by %d process(es), resuming with %d: the data order differs from here on",
                        path, data.get("world_size", 1), d.world_size)
        log.info("resuming from %s (step %d of %d, %.0f s trained)", path, step, cfg.steps, elapsed)
    if d.is_main and (out / TRAIN_LOG).exists():  # drop log lines of steps the checkpoint does not have
        lines = [ln for ln in (out / TRAIN_LOG).read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        write_files_atomically(out, {TRAIN_LOG: "".join(ln + "\n" for ln in lines).encode()})

    # 3. data
    dataset = stage.train_dataset()
    heldout = stage.heldout_dataset() if d.is_main else None
    sampler = DistributedSampler(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    if len(sampler) < cfg.batch_size:
        raise ValueError(f"{cfg.data}: {len(dataset)} training items are too few for batch_size={cfg.batch_size} "
                         f"on each of {d.world_size} process(es)")
    net = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None) \
        if d.distributed else model
    if d.is_main:
        log.info("stage %s: %.2f M parameters; %d training items, %d steps per epoch, %d process(es) x batch %d; "
                 "device %s, bf16 autocast %s", stage.name, n_params / 1e6, len(dataset),
                 len(sampler) // cfg.batch_size, d.world_size, cfg.batch_size, d.device, cfg.bf16)
        if cfg.bf16 and not has_native_bf16(d.device):
            log.warning("bf16 autocast on %s, which has no bf16 matmul in hardware (AMX or AVX-512 BF16): PyTorch "
                        "emulates it, measured 3-13x slower than float32 (--no-bf16)", d.device)

    # 4. steps
    stopped = False
    if step < cfg.steps:
        batches = _batches(dataset, sampler, cfg, step)
        sums: dict[str, float] = {}
        count, t_log, t_start = 0, time.perf_counter(), time.perf_counter() - elapsed
        bar = tqdm(total=cfg.steps, initial=step, desc=stage.name, unit="step", dynamic_ncols=True,
                   disable=not (d.is_main and cfg.progress))
        model.train()
        while step < cfg.steps:
            torch.manual_seed(step_seed(cfg.seed, d.rank, step))
            batch = _to_device(next(batches), d.device)
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.final_lr_fraction)
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, logs = net(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; logs: "
                                         f"{ {k: float(v) for k, v in logs.items()} }")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            opt.step()
            ema_update(ema, model, ema_decay_at(step, cfg.ema_decay))
            step += 1
            bar.update(1)

            for k, v in {"loss": loss.detach(), **logs, "grad_norm": grad_norm}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            if step % cfg.log_interval == 0 or step == cfg.steps:
                means = distributed.all_reduce_mean(d, {k: v / count for k, v in sums.items()})
                now = time.perf_counter()
                if d.is_main:
                    record = {"step": step, "lr": lr, "sec_per_step": (now - t_log) / count,
                              "elapsed_s": now - t_start, **means}
                    log.info("step %d  " + "  ".join(f"{k} {v:.4g}" for k, v in means.items()) + "  lr %.3g", step, lr)
                    bar.set_postfix(loss=f"{means['loss']:.4f}")
                    with open(out / TRAIN_LOG, "a") as f:
                        f.write(json.dumps(record) + "\n")
                sums, count, t_log = {}, 0, now

            if heldout is not None and (step % cfg.eval_interval == 0 or step == cfg.steps):
                metrics = stage.evaluate(ema, heldout, out / EVAL, step)
                history.append({"step": step, "elapsed_s": round(time.perf_counter() - t_start, 1), **metrics})
                log.info("eval step %d: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()), step)
                plot_history(history, list(metrics), out / EVAL / "metrics.png")

            if step % cfg.ckpt_interval == 0 or step == cfg.steps:
                if d.is_main:
                    _save(out / CHECKPOINTS, cfg, d, model, ema, opt, step, time.perf_counter() - t_start, history)
                distributed.barrier(d)
            if cfg.stop_after and step >= cfg.stop_after and step < cfg.steps:
                log.info("stop_after=%d reached: stopping without a final checkpoint", cfg.stop_after)
                stopped = True
                break
        bar.close()
        elapsed = time.perf_counter() - t_start

    # 5. export
    if not stopped and d.is_main:
        extra = {"stage": stage.name, "step": step, "train_seconds": round(elapsed, 1),
                 "heldout": history[-1] if history else None, "world_size": d.world_size}
        stage.export(ema, out / FINAL, extra)
        log.info("exported the EMA model to %s", out / FINAL)
    distributed.barrier(d)
    return {"step": step, "elapsed_s": elapsed, "history": history, "stopped": stopped}


def _save(folder: Path, cfg: TrainConfig, d: distributed.Dist, model: nn.Module, ema: nn.Module,
          opt: torch.optim.Optimizer, step: int, elapsed: float, history: list[dict[str, Any]]) -> None:
    """Write checkpoint ``step-<step>`` and delete all but the newest ``keep_checkpoints``."""
    opt_tensors, opt_data = optimizer_state_to_flat(opt.state_dict(), param_names=[n for n, _ in _optimizer_params(model, opt)])
    rng_tensors, rng_data = _rng_state()
    tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
               **{f"ema.{k}": v for k, v in ema.state_dict().items()}, **opt_tensors, **rng_tensors}
    data = {"step": step, "elapsed_s": round(elapsed, 3), "history": history, "optimizer": opt_data, "rng": rng_data,
            "world_size": d.world_size, "train_config": json.loads(json.dumps(cfg.__dict__))}
    path = save_training_state(folder, f"step-{step:08d}", tensors, data)
    for old in _checkpoints(folder)[cfg.keep_checkpoints:]:
        old.unlink(missing_ok=True)  # the JSON first: a half-deleted pair is never taken for a checkpoint
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    log.info("checkpoint %s", path)
