"""Data-parallel training over torch.distributed, launched by ``torchrun``.

    torchrun --standalone --nproc_per_node=2 -m mixrec.train.distributed data/ --out model/ --set epochs=10

Design (local SGD with averaging of the touched rows): every process holds the full tables and trains on
its own stride of the epoch's seeded batch schedule (process r takes batches r, r + W, ...). Every
``distributed.sync_every`` local batches the processes all-reduce what each changed since the last
synchronisation, for the tables and the row-wise Adagrad state alike: a row that one process updated
takes that update whole, a row several processes updated takes the mean of their updates (model
averaging restricted to the rows that moved; plain summing over-steps the rows everyone touches, such as
popular items). The schedule is fixed before the epoch, so no lock or parameter server is needed, and
after the last synchronisation of an epoch all tables are identical: validation, early stopping and the
mixture weights give the same result everywhere, and rank 0 alone writes the checkpoint and the model
directory, which any single process loads. The backend is gloo on the CPU and
NCCL when ``device`` is a GPU (each process takes ``cuda:<LOCAL_RANK>``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from mixrec.config import Config, ConfigError
from mixrec.data.dataset import Dataset
from mixrec.model.mixture import MixtureModel
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

    def __init__(self, dataset: Dataset, config: Config, out: str | Path | None = None, progress: bool = True):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if config.workers > 1:
            raise ValueError("distributed training runs one training process per rank; set workers=1 "
                             "and raise --nproc_per_node instead")
        super().__init__(dataset, config, out, progress and self.rank == 0)
        keep_freed_heap()  # the synchronisations allocate whole-table deltas
        self.epoch_stats: dict = {}
        for t in self.model.tables:  # the seeded initialisation is the same everywhere; make sure of it
            self._broadcast(self.model.tables[t])

    def fit(self, resume: bool = False) -> MixtureModel:
        """Every rank reads the checkpoint when resuming; only rank 0 writes checkpoints and the model."""
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
                    total += train_step(batch, tables, states, cfg)
                    edges += len(batch.src)
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


def backend_for(config: Config) -> str:
    """The process-group backend: ``distributed.backend``, or with 'auto' NCCL on a GPU and gloo on the CPU."""
    if config.distributed.backend != "auto":
        return config.distributed.backend
    return "nccl" if config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available()) \
        else "gloo"


def train_distributed(dataset: Dataset | str | Path, config: Config, out: str | Path | None = None, *,
                      resume: bool = False, progress: bool = True) -> MixtureModel:
    """Train in every process of a torchrun launch (initialising the process group from its environment).

    Returns the trained model in every process; only rank 0 writes ``out``.
    """
    own_group = not dist.is_initialized()
    if own_group:
        backend = backend_for(config)
        if backend == "nccl":
            local = int(os.environ.get("LOCAL_RANK", 0))
            config = config.with_overrides({"device": f"cuda:{local}"})
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    try:
        if not isinstance(dataset, Dataset):
            dataset = Dataset.load(dataset)
        model = DistributedTrainer(dataset, config, out, progress).fit(resume=resume)
        dist.barrier()  # rank 0 has written the model directory when every rank returns
        return model
    finally:
        if own_group:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """``torchrun [...] -m mixrec.train.distributed DATA --out MODEL [--config FILE] [--set KEY=VALUE ...]``."""
    p = argparse.ArgumentParser(prog="mixrec.train.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="dataset directory (from `mixrec ingest`), readable by every process")
    p.add_argument("--out", required=True, help="model directory rank 0 writes")
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s [rank {os.environ.get('RANK', 0)}] %(message)s")
    try:
        cfg = (Config.load(a.config) if a.config else Config()).with_overrides(a.set or [])
    except ConfigError as e:
        print(f"mixrec.train.distributed: error: {e}", file=sys.stderr)
        return 2
    model = train_distributed(a.data, cfg, a.out, resume=a.resume, progress=not a.quiet)
    if int(os.environ.get("RANK", 0)) == 0:
        last = model.info["history"][-1] if model.info.get("history") else {}
        print(f"trained {len(model.info.get('history', []))} epochs on {os.environ.get('WORLD_SIZE', 1)} processes; "
              f"{last.get('edges_per_s', 0):,.0f} edges/s in all, "
              f"{last.get('edges_per_s_per_process', 0):,.0f} per process; model in {a.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
