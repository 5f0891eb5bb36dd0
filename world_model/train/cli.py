"""Command line of :mod:`world_model.train` (see its docstring for the commands)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from world_model.train.config import TrainConfig, add_dataclass_arguments, dataclass_from_args
from world_model.train.loop import train
from world_model.train.stages import STAGES, stage_class
from world_model.world_model import packaged_model

__all__ = ["main"]

PATH_FIELDS = ("data", "heldout", "out", "extra_data")
"""Path options (of TrainConfig and of the stages) made absolute, so that a resumed run is recognised from anywhere."""


def build_parser(stage: str) -> argparse.ArgumentParser:
    import world_model.train as package

    parser = argparse.ArgumentParser(prog="python -m world_model.train", description=package.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, TrainConfig, "training")
    add_dataclass_arguments(parser, stage_class(stage).config_class, f"stage {stage}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, train; returns 0, or exits with status 2 and the message on a ``ValueError``."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--stage", default=TrainConfig.stage, choices=sorted(STAGES))
    known, _ = pre.parse_known_args(argv)
    parser = build_parser(known.stage)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    for name in PATH_FIELDS:
        if getattr(args, name, None):
            setattr(args, name, str(Path(getattr(args, name)).expanduser().resolve()))
    if getattr(args, "init_from", None) not in (None, "", "shipped") and packaged_model(args.init_from) is None:
        args.init_from = str(Path(args.init_from).expanduser().resolve())
    try:
        cfg = dataclass_from_args(TrainConfig, args)
        cls = stage_class(cfg.stage)
        stage = cls(cfg, dataclass_from_args(cls.config_class, args))
        result = train(cfg, stage)
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    if rank == 0:
        last = result["history"][-1] if result["history"] else {}
        summary = "  ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float))
        print(f"{'stopped' if result['stopped'] else 'done'} at step {result['step']} after "
              f"{result['elapsed_s']:.0f} s of training{'; last eval: ' + summary if summary else ''}")
    return 0
