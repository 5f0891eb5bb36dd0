"""The training run's configuration (:class:`TrainConfig`) and the command line built from
frozen config dataclasses: one ``--flag`` per field, its help the field's docstring."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

from world_model import checkpoint

__all__ = ["TrainConfig", "add_dataclass_arguments", "config_differences", "dataclass_from_args", "field_docs"]


@dataclass(frozen=True)
class TrainConfig:
    """What the generic loop needs; a stage brings its own config for the rest."""

    stage: str = "autoencoder"
    """Which stage to train (see ``world_model.train.stages.STAGES``)."""
    data: str = ""
    """Training dataset folder (``sanawm-gym dataset``)."""
    heldout: str = ""
    """Held-out dataset folder for evaluation (another seed); empty: no evaluation."""
    out: str = "runs/ae"
    """Run folder: checkpoints, logs, plots, and ``final/`` (the exported EMA model)."""
    steps: int = 10000
    """Optimizer steps in all."""
    batch_size: int = 8
    """Clips per step and process (the global batch is this times the process count)."""
    clip_frames: int = 13
    """Frames per training clip."""
    eval_frames: int = 33
    """Frames per held-out clip (its first ones)."""
    eval_clips: int = 32
    """Held-out clips per evaluation (the first ones; 0: all)."""
    lr: float = 1e-3
    """Peak learning rate."""
    final_lr_fraction: float = 0.05
    """Learning rate at the end of the cosine, as a fraction of ``lr``."""
    warmup_steps: int = 200
    """Linear warm-up steps from 0 to ``lr``."""
    weight_decay: float = 0.01
    """AdamW weight decay (on weights of rank >= 2 only)."""
    adam_betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    ema_decay: float = 0.999
    """Decay of the EMA weights (ramped up from 0 over the first steps)."""
    eval_interval: int = 500
    """Evaluate the EMA model on the held-out data every this many steps (and at the end)."""
    ckpt_interval: int = 500
    """Write a resumable checkpoint every this many steps (and at the end)."""
    log_interval: int = 50
    """Log the mean of every loss term over this many steps."""
    keep_checkpoints: int = 2
    """Resumable checkpoints kept (the newest)."""
    seed: int = 0
    """Seed of the weights, the data order, the crops and each step's random draws."""
    bf16: bool = True
    """bfloat16 autocast for the forward pass (CPU and CUDA); weights stay float32."""
    num_workers: int = 1
    """DataLoader worker processes per training process (0: load in the main process)."""
    threads: int = 0
    """CPU threads of torch per process (0: torch's default)."""
    device: str = "auto"
    """``auto`` (CUDA if available, one GPU per process), ``cpu``, or ``cuda``."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0)."""
    stop_after: int = 0
    """Stop this process after this global step as a kill would, without checkpoint or
    export (to test resuming; 0: off)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        positive = ("steps", "batch_size", "clip_frames", "eval_frames", "eval_interval", "ckpt_interval",
                    "log_interval", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_clips", "num_workers", "threads", "seed", "stop_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.data:
            raise ValueError("data (the training dataset folder) is required")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if not self.weight_decay >= 0 or not self.grad_clip >= 0:
            raise ValueError(f"weight_decay and grad_clip must be >= 0, got {self.weight_decay}, {self.grad_clip}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be one of auto, cpu, cuda; got {self.device!r}")


# These may change between a run and its resumption without changing what it computes
# (``steps`` stretches the cosine schedule from the resumed step on).
RESUMABLE_FIELDS = frozenset({"heldout", "steps", "eval_frames", "eval_clips", "eval_interval", "ckpt_interval",
                              "log_interval", "keep_checkpoints", "num_workers", "threads", "progress", "stop_after",
                              "out"})


# ------------------------------------------------------------------------------ command line
def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under the fields of dataclass ``cls`` (and its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _field_defaults(cls: type, base: Any) -> dict[str, Any]:
    """Each field's default: ``base``'s value when given, else the declared default."""
    out = {}
    for f in dataclasses.fields(cls):
        if base is not None:
            out[f.name] = getattr(base, f.name)
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, title: str, prefix: str = "",
                            base: Any = None) -> None:
    """One option ``--<prefix><field>`` per field of ``cls``; a field that is itself a
    dataclass gets options ``--<field>.<subfield>``. Unset options stay None (keep the default)."""
    group = parser.add_argument_group(title)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    defaults = _field_defaults(cls, base)
    for f in dataclasses.fields(cls):
        hint, default = hints[f.name], defaults.get(f.name)
        if dataclasses.is_dataclass(hint):
            add_dataclass_arguments(parser, hint, f"{title}: {f.name}", f"{prefix}{f.name}.", default)
            continue
        kwargs: dict[str, Any] = {"default": None, "help": f"{docs.get(f.name, '')} (default: {default})"}
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is tuple and args and args[0] in (int, float, str):
            kwargs.update(type=args[0], nargs="+" if Ellipsis in args else len(args), metavar=args[0].__name__.upper())
        elif hint in (int, float, str):
            kwargs["type"] = hint
        else:
            continue  # not settable from the command line (e.g. measured statistics)
        group.add_argument("--" + (prefix + f.name).replace("_", "-"), dest=prefix + f.name, **kwargs)


def dataclass_from_args(cls: type, args: argparse.Namespace, prefix: str = "", base: Any = None) -> Any:
    """``cls`` built from the options of :func:`add_dataclass_arguments` that were set,
    over ``base`` (or the declared defaults)."""
    hints = typing.get_type_hints(cls)
    defaults = _field_defaults(cls, base)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = dataclass_from_args(hints[f.name], args, f"{prefix}{f.name}.", defaults.get(f.name))
        elif getattr(args, prefix + f.name, None) is not None:
            value = getattr(args, prefix + f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def config_differences(stored: dict[str, Any], wanted: dict[str, Any], ignore: frozenset[str] = frozenset()) -> list[str]:
    """``"field: stored ... wanted"`` for every differing (nested: dotted) field of two JSON configs."""
    return checkpoint.config_differences(stored, wanted, ignore, ("in the run folder", "now"))
