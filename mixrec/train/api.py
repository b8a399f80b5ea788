"""The one training entry: :func:`train` picks the trainer a config and the process call for."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch.distributed as dist

from mixrec.config import Config
from mixrec.data.dataset import Dataset
from mixrec.data.schema import with_task_weights
from mixrec.model.mixture import MixtureModel
from mixrec.train.base import Callback, ModelTrainer
from mixrec.train.distributed_trainer import DistributedTrainer
from mixrec.train.graph_source import GraphSource
from mixrec.train.partitioned import PartitionedTrainer
from mixrec.train.trainer import Trainer, check_dataset


def in_process_group() -> bool:
    """True inside an initialised torch.distributed process group (e.g. every process of a torchrun launch)."""
    return dist.is_available() and dist.is_initialized()


def make_trainer(dataset: Dataset | str | Path, config: Config | None = None, out: str | Path | None = None, *,
                 progress: bool = True, callbacks: Sequence[Callback] = ()) -> ModelTrainer:
    """The trainer for ``config``: partitioned from disk when ``partitions.<type> > 1`` (a dataset directory
    is then streamed, never loaded whole), data-parallel inside a process group, else in memory (HOGWILD
    worker processes when ``workers > 1``). Options a trainer cannot honour are refused with a ValueError."""
    config = with_task_weights(config or Config(), dataset)  # a graph schema's task weights (eq. 4)
    check_dataset(dataset, config)  # keys naming nothing, tables that cannot fit: refused before any write
    if config.partitioned:
        if in_process_group():
            raise ValueError(f"partitions={config.partitions}: partitioned training runs in one process, not in "
                             "a torch.distributed group; launch it without torchrun or set partitions to 1")
        return PartitionedTrainer(GraphSource.open(dataset), config, None, progress, callbacks, out=out)
    if not isinstance(dataset, Dataset):
        dataset = Dataset.load(dataset)
    if in_process_group():
        return DistributedTrainer(dataset, config, out, progress, callbacks)
    return Trainer(dataset, config, out, progress, callbacks)


def train(dataset: Dataset | str | Path, config: Config | None = None, out: str | Path | None = None, *,
          resume: bool = False, progress: bool = True, callbacks: Sequence[Callback] = ()) -> MixtureModel:
    """Train a mixture model: ``model = mixrec.train(mixrec.Dataset.load("data/"), Config(), out="model/")``.

    Every trainer (see :func:`make_trainer`) checkpoints into ``out`` after each epoch, resumes from there
    with ``resume``, calls ``callbacks`` with a :class:`~mixrec.train.base.TrainEvent` per batch and per epoch,
    and writes the model directory ``out`` (when given).
    """
    return make_trainer(dataset, config, out, progress=progress, callbacks=callbacks).fit(resume=resume)


__all__ = ["in_process_group", "make_trainer", "train"]
