r"""Train the world model's stages: one entry point, one generic loop, one module per stage.

One process (CPU or one GPU)::

    python -m world_model.train --stage autoencoder --data /tmp/ds1000 --heldout /tmp/dsval \
        --out runs/ae --steps 6000 --batch-size 8

Several processes on one machine, or several machines (DDP: gloo on CPU, NCCL on CUDA;
``--batch-size`` is per process)::

    torchrun --nproc_per_node 2 -m world_model.train --stage autoencoder --data /tmp/ds1000 ...
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 --nproc_per_node 8 \
        -m world_model.train --stage autoencoder --data /data/ds --out /shared/runs/ae ...

Re-running the same command resumes from the newest checkpoint in ``--out`` (``--steps``
may grow). Every option: ``python -m world_model.train --stage autoencoder --help``.
The loop is :mod:`world_model.train.loop`; stages plug in through
:class:`world_model.train.stage.Stage` (registered in :mod:`world_model.train.stages`).
"""

from world_model.train.config import TrainConfig
from world_model.train.loop import train
from world_model.train.stage import Stage

__all__ = ["Stage", "TrainConfig", "main", "train"]


def main(argv=None) -> int:
    """``python -m world_model.train``; see :mod:`world_model.train.cli`."""
    from world_model.train.cli import main as cli_main

    return cli_main(argv)
