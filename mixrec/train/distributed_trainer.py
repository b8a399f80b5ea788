"""The data-parallel trainer: every process of a torch.distributed group trains its stride of each epoch.

Launch with ``torchrun ... -m mixrec.train.distributed`` (:mod:`mixrec.train.distributed`), or call
:func:`mixrec.train.train` in every process of an initialised group.

Design (local SGD with averaging of the touched rows): every process holds the full tables and trains on
its own stride of the epoch's seeded batch schedule (process r takes batches r, r + W, ...). Every
``distributed.sync_every`` local batches the processes all-reduce what each changed since the last
synchronisation, for the tables and the row-wise Adagrad state alike: a row that one process updated
takes that update whole, a row several processes updated takes the mean of their updates (model
averaging restricted to the rows that moved; plain summing over-steps the rows everyone touches, such as
popular items). The schedule is fixed before the epoch, so no lock or parameter server is needed, and
after the last synchronisation of an epoch all tables are identical: validation, early stopping and the
mixture weights give the same result everywhere, and rank 0 alone writes the checkpoint and the model
directory, which any single process loads.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from mixrec.config import Config
from mixrec.data.dataset import Dataset
from mixrec.model.mixture import MixtureModel
from mixrec.train.base import Callback, TrainEvent
from mixrec.train.device import on_device
from mixrec.train.memory import keep_freed_heap
from mixrec.train.sampler import epoch_schedule, make_batches
from mixrec.train.step import train_step
from mixrec.train.trainer import Trainer

log = logging.getLogger("mixrec.train.distributed")
Tables = dict[str, torch.Tensor]


def average_touched_(current: Tables, base: Tables) -> None:
    """All-reduce the row changes since ``base`` and apply, per row, their mean over the processes that touched it.

    A row only one process updated takes that update whole; a row several updated takes their average,
    as in model averaging. In place on both (``base`` becomes the new common value).
    """
    for t in current:
        delta = current[t] - base[t]
        touched = (delta != 0).reshape(len(delta), -1).any(1).to(delta.dtype)
        dist.all_reduce(delta, op=dist.ReduceOp.SUM)
        dist.all_reduce(touched, op=dist.ReduceOp.SUM)
        base[t].add_(delta / touched.clamp_min(1).view(-1, *([1] * (delta.dim() - 1))))
        current[t].copy_(base[t])


class DistributedTrainer(Trainer):
    """A :class:`Trainer` whose epochs are shared by all processes of the default process group."""

    def __init__(self, dataset: Dataset, config: Config, out: str | Path | None = None, progress: bool = True,
                 callbacks: Sequence[Callback] = ()):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if config.workers > 1:
            raise ValueError("distributed training runs one training process per rank; set workers=1 "
                             "and raise --nproc_per_node instead")
        super().__init__(dataset, config, out, progress and self.rank == 0, callbacks)
        keep_freed_heap()  # the synchronisations allocate whole-table deltas
        self.epoch_stats: dict = {}
        for t in self.model.tables:  # the seeded initialisation is the same everywhere; make sure of it
            self._broadcast(self.model.tables[t])

    def fit(self, resume: bool = False) -> MixtureModel:
        """Every rank reads the checkpoint when resuming; only rank 0 writes checkpoints and the model.
        Callbacks run in every process: the same epoch events everywhere, batch events for its own batches."""
        if resume:
            self._load_checkpoint()
        if self.rank != 0:
            self.out = None
        return super().fit(resume=False)

    def _broadcast(self, x: torch.Tensor) -> None:
        if self.device.type == "cpu":
            dist.broadcast(x, 0)
        else:
            y = x.to(self.device)
            dist.broadcast(y, 0)
            x.copy_(y.cpu())

    def _run_epoch(self, epoch: int) -> float:
        cfg, t0 = self.config, time.perf_counter()
        schedule = epoch_schedule(self.edges, cfg, epoch)
        steps = -(-len(schedule) // self.world)  # every rank runs the same number of synchronisation rounds
        batches = make_batches(self.edges, cfg, epoch, schedule, start=self.rank, stride=self.world)
        total, edges = 0.0, 0
        with on_device(self.model.tables, self.states, self.device) as (tables, states):
            base = {t: v.clone() for t, v in tables.items()}
            base_state = {t: v.clone() for t, v in states.items()}
            for k in range(steps):
                batch = next(batches, None)
                if batch is not None:
                    loss = train_step(batch, tables, states, cfg)
                    total += loss
                    edges += len(batch.src)
                    self._emit(TrainEvent("batch", epoch + 1, self.rank + k * self.world, loss))
                if (k + 1) % cfg.distributed.sync_every == 0 or k == steps - 1:
                    average_touched_(tables, base)
                    average_touched_(states, base_state)
        secs = time.perf_counter() - t0
        sums = torch.tensor([total, float(edges)], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(sums)
        self.epoch_stats = {"processes": self.world, "edges_per_s_per_process": edges / max(secs, 1e-9)}
        return float(sums[0])

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _validate(self, epoch: int) -> dict:
        rec = super()._validate(epoch)  # identical tables on every rank: identical result, no broadcast needed
        rec.update(self.epoch_stats)
        return rec
