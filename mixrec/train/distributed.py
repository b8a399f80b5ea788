"""Data-parallel training over torch.distributed, launched by ``torchrun``.

    torchrun --standalone --nproc_per_node=2 -m mixrec.train.distributed data/ --out model/ --set epochs=10

This module is the launcher (process group and command line). Every process calls :func:`mixrec.train.train`,
which inside an initialised group picks :class:`mixrec.train.distributed_trainer.DistributedTrainer` (local SGD
with averaging of the touched rows; see that module for the design). The backend is gloo on the CPU and
NCCL when ``device`` is a GPU (each process takes ``cuda:<LOCAL_RANK>``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from mixrec.config import Config, ConfigError
from mixrec.data.dataset import Dataset
from mixrec.model.mixture import MixtureModel
from mixrec.train.api import train
from mixrec.train.base import Callback
from mixrec.train.distributed_trainer import DistributedTrainer, average_touched_

log = logging.getLogger("mixrec.train.distributed")


def backend_for(config: Config) -> str:
    """The process-group backend: ``distributed.backend``, or with 'auto' NCCL on a GPU and gloo on the CPU."""
    if config.distributed.backend != "auto":
        return config.distributed.backend
    return "nccl" if config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available()) \
        else "gloo"


def train_distributed(dataset: Dataset | str | Path, config: Config, out: str | Path | None = None, *,
                      resume: bool = False, progress: bool = True, callbacks: Sequence[Callback] = ()) -> MixtureModel:
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
        model = train(dataset, config, out, resume=resume, progress=progress, callbacks=callbacks)
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


__all__ = ["DistributedTrainer", "average_touched_", "backend_for", "main", "train_distributed"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
