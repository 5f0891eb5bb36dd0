"""The interface between the generic training loop and what it trains.

A stage is a class with a frozen config dataclass (``config_class``, whose fields become
command-line options) that builds the trainable module, the datasets, the evaluation and
the export. The loop owns everything else: devices and DDP, the optimizer and schedule,
EMA, bf16 autocast, logging, checkpoints and resume. To add one, write a module under
``world_model/train/stages/`` and name it in ``STAGES`` there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.utils.data import Dataset

from world_model.train.config import TrainConfig

__all__ = ["Stage", "Batch", "Logs"]

Batch = dict[str, Any]
"""One collated batch, tensors already on the process's device."""
Logs = dict[str, Tensor]
"""Scalar tensors to log (every loss term, unweighted, and anything else of interest)."""


class Stage(ABC):
    """One training stage. Construct with the run's :class:`TrainConfig` and the stage's
    own config (an instance of ``config_class``)."""

    name: ClassVar[str]
    """Name on the command line (``--stage``)."""
    config_class: ClassVar[type]
    """Frozen dataclass of the stage's options."""

    def __init__(self, train: TrainConfig, config: Any) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.train = train
        self.config = config

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The trainable module (float32, on the CPU; the loop moves it, wraps it in DDP and
        keeps its EMA). ``module(batch)`` returns ``(loss, logs)``."""

    @abstractmethod
    def train_dataset(self) -> Dataset:
        """Training items; the loop batches them with a seeded ``DistributedSampler`` and
        calls ``set_epoch(epoch)`` on the dataset (if it has one) at each epoch."""

    def heldout_dataset(self) -> Dataset | None:
        """Held-out items for :meth:`evaluate`, or None."""
        return None

    @abstractmethod
    def evaluate(self, model: nn.Module, heldout: Dataset, out_dir: Path, step: int) -> dict[str, float]:
        """Metrics of ``model`` (the EMA copy, eval mode, float32, no grad; on rank 0) on
        ``heldout``. May write pictures into ``out_dir``."""

    @abstractmethod
    def export(self, model: nn.Module, out_dir: Path, extra: dict[str, Any]) -> None:
        """Write the finished EMA ``model`` into ``out_dir`` with
        :func:`world_model.checkpoint.save_pretrained` (``extra``: run facts to record)."""
