"""The training loop: epochs over the schedule, HOGWILD workers, checkpoints, resume and early stopping."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.multiprocessing as mp

from mixrec.config import Config, ConfigError
from mixrec.data.dataset import Dataset, dataset_entities, dataset_names
from mixrec.evaluate.exact import sample_recall
from mixrec.io import atomic_dir, load_array, save_array
from mixrec.model.mixture import MixtureModel
from mixrec.progress import epoch_line, progress_bar
from mixrec.train.base import CHECKPOINT, RESUMABLE, Callback, ModelTrainer, TrainEvent, epoch_event
from mixrec.train.device import on_device, resolve_device
from mixrec.train.levers import prepare, prune_weights
from mixrec.train.sampler import TrainingEdges, epoch_schedule, make_batches, training_edges
from mixrec.train.step import train_step
from mixrec.weights import compute_weight_sets

log = logging.getLogger("mixrec.train")


class TrainingDiverged(ValueError):
    """The loss became non-finite: training stopped, the last checkpoint is that of the last good epoch."""


class Trainer(ModelTrainer):
    """Trains a :class:`MixtureModel` in memory on a dataset's train split according to a :class:`Config`
    (``workers > 1``: HOGWILD worker processes on shared tables)."""

    def __init__(self, dataset: Dataset, config: Config, out: str | Path | None = None, progress: bool = True,
                 callbacks: Sequence[Callback] = ()):
        self.dataset, self.config, self.progress = dataset, config, progress
        self.out = Path(out) if out is not None else None
        self.callbacks = list(callbacks)
        self.model = MixtureModel.initialise(dataset, config)
        self.states = {t: torch.zeros(len(tab)) for t, tab in self.model.tables.items()}
        prepare(self)  # init.user_components, components_rule
        self.edges: TrainingEdges = training_edges(dataset, config)
        self.history: list[dict] = []
        self.start_epoch = 0
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self.device = resolve_device(config.device)
        if self.device.type != "cpu" and config.workers > 1:
            raise ValueError(f"workers={config.workers}: HOGWILD worker processes train on the CPU; "
                             f"use workers=1 with device={config.device!r}")

    # ----------------------------------------------------------------- main loop
    def fit(self, resume: bool = False) -> MixtureModel:
        """Run all epochs (from the last checkpoint when ``resume``), then compute mixture weights."""
        if resume:
            self._load_checkpoint()
        cfg = self.config
        pool = _WorkerPool(self) if cfg.workers > 1 else None
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                loss = pool.run_epoch(epoch) if pool else self._run_epoch(epoch)
                check_loss(loss, epoch, None, cfg)
                secs = time.perf_counter() - t0
                rec = {"epoch": epoch + 1, "loss": loss / max(self.edges.total, 1),
                       "edges_per_s": self.edges.total / max(secs, 1e-9), "seconds": secs}
                rec.update(self._validate(epoch))
                self.history.append(rec)
                epoch_line(rec, cfg.epochs) if self.progress else log.info("epoch %d: %s", epoch + 1, rec)
                stop = self._early_stop(epoch)
                self._save_checkpoint(epoch + 1)
                self._emit(epoch_event(rec))
                if stop:
                    break
        finally:
            if pool:
                pool.close()
        if self.best is not None:
            self.model.tables = {t: v.clone() for t, v in self.best[2].items()}
        self.model.weights = compute_weight_sets(self.model)
        self.model.weights = prune_weights(self.model)
        self.model.info = {"history": self.history, "edges": self.edges.total,
                           "best_epoch": self.best[1] if self.best else None}
        if self.out is not None:
            self.model.save(self.out)
        return self.model

    def _run_epoch(self, epoch: int) -> float:
        total, n_edges = 0.0, self.edges.total
        bar = progress_bar(total=n_edges, unit="edge", unit_scale=True, disable=not self.progress,
                   desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False)
        with on_device(self.model.tables, self.states, self.device) as (tables, states):
            for i, batch in enumerate(make_batches(self.edges, self.config, epoch)):
                loss = train_step(batch, tables, states, self.config)
                check_loss(loss, epoch, i, self.config)
                total += loss
                bar.update(len(batch.src))
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{loss / max(len(batch.src), 1):.4f}")
                self._emit(TrainEvent("batch", epoch + 1, i, loss))
        bar.close()
        return total

    # ----------------------------------------------------------------- validation
    def _validate(self, epoch: int) -> dict:
        cfg = self.config
        every = cfg.eval_every or (1 if cfg.early_stopping.patience else 0)
        if not every or (epoch + 1) % every or not self.dataset.has_split("valid"):
            return {}
        return {f"valid_recall@{cfg.early_stopping.k}": sample_recall(
            self.model, self.dataset, "valid", cfg.early_stopping.k, cfg.early_stopping.max_users, cfg.seed)}

    def _early_stop(self, epoch: int) -> bool:
        es = self.config.early_stopping
        key = f"valid_recall@{es.k}"
        if not es.patience or key not in self.history[-1]:
            return False
        value = self.history[-1][key]
        if self.best is None or value > self.best[0]:
            self.best = (value, epoch + 1, {t: v.clone() for t, v in self.model.tables.items()})
        return epoch + 1 - self.best[1] >= es.patience

    # ----------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, epochs_done: int) -> None:
        if self.out is None:
            return
        with atomic_dir(self.out / CHECKPOINT) as tmp:
            for t, tab in self.model.tables.items():
                save_array(tmp / f"{t}.npy", tab.numpy())
                save_array(tmp / f"{t}.state.npy", self.states[t].numpy())
                if self.best is not None:
                    save_array(tmp / f"{t}.best.npy", self.best[2][t].numpy())
            state = {"epochs_done": epochs_done, "history": self.history,
                     "best": None if self.best is None else list(self.best[:2]),
                     "config": self.config.model_dump()}
            (tmp / "state.json").write_text(json.dumps(state, indent=2))

    def _load_checkpoint(self) -> None:
        ck = None if self.out is None else self.out / CHECKPOINT
        if ck is None or not (ck / "state.json").is_file():
            log.warning("no checkpoint to resume from%s; starting afresh", f" in {ck}" if ck else "")
            return
        state = json.loads((ck / "state.json").read_text())
        saved = Config.from_dict(state["config"])
        if saved.model_dump(exclude=RESUMABLE) != self.config.model_dump(exclude=RESUMABLE):
            raise ValueError(f"{ck}: checkpoint was trained with a different configuration; "
                             "resume with the same settings or train into a new --out directory")
        for t in self.model.tables:
            self.model.tables[t] = torch.from_numpy(np.array(load_array(ck / f"{t}.npy")))
            self.states[t] = torch.from_numpy(np.array(load_array(ck / f"{t}.state.npy")))
        if state.get("best"):
            tabs = {t: torch.from_numpy(np.array(load_array(ck / f"{t}.best.npy"))) for t in self.model.tables}
            self.best = (state["best"][0], state["best"][1], tabs)
        self.history = state["history"]
        self.start_epoch = state["epochs_done"]
        log.info("resuming after epoch %d from %s", self.start_epoch, ck)


def check_loss(loss: float, epoch: int, batch: int | None, config: Config) -> None:
    """Raise :class:`TrainingDiverged` naming the (0-based) ``epoch`` and ``batch`` when ``loss`` is not finite."""
    if np.isfinite(loss):
        return
    where = f"epoch {epoch + 1}" + ("" if batch is None else f", batch {batch + 1}")
    raise TrainingDiverged(
        f"training diverged: loss {loss} at {where}; no model was written and the checkpoint (if any) holds "
        f"the last good epoch. Lower lr (now {config.lr}) or raise temperature (now {config.temperature}) "
        f"/ gamma (now {config.gamma})")


def check_dataset(dataset: Dataset | str | Path, config: Config) -> None:
    """Refuse, before anything is written, a config whose keys name no entity type or relation of the dataset."""
    config.check_names(*dataset_names(dataset))
    if not config.partitioned:
        check_memory(dataset_entities(dataset), config)


def check_memory(entities: dict[str, int], config: Config) -> None:
    """Refuse (naming dim and components) embedding tables that cannot fit in the available memory.

    Estimate: each type's (N, C, dim) float32 table about three times over (the table, its unit-normalised
    copy for weights and saving, the update buffers), against MemAvailable (or the physical memory).
    """
    need = 3 * 4 * sum(n * config.components_of(t) * config.dim for t, n in entities.items())
    have = available_memory()
    if have is not None and need > have:
        sizes = ", ".join(f"{n:,} {t} x {config.components_of(t)}" for t, n in entities.items())
        raise ConfigError(f"dim={config.dim} with components {sizes} needs about {need / 2**30:,.1f} GiB for the "
                          f"embedding tables, more than the {have / 2**30:,.1f} GiB available; lower dim or "
                          "components.*, or train from disk with partitions.<type> > 1")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable; else physical memory; None if unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# --------------------------------------------------------------------- HOGWILD workers
def _worker_main(rank: int, n: int, tables, states, edges: TrainingEdges, cfg: Config, inbox, outbox,
                 report_batches: bool) -> None:
    """Train batches ``rank, rank + n, ...`` of each epoch the inbox names; with ``report_batches`` every
    batch's loss goes to the outbox as it is done, for the parent's callbacks."""
    torch.set_num_threads(1)
    while True:
        epoch = inbox.get()
        if epoch is None:
            return
        try:
            schedule = epoch_schedule(edges, cfg, epoch)
            total = 0.0
            for k, b in enumerate(make_batches(edges, cfg, epoch, schedule, start=rank, stride=n)):
                loss = train_step(b, tables, states, cfg)
                total += loss
                if report_batches:
                    outbox.put(("batch", rank + k * n, loss, None))
            outbox.put(("done", rank, total, None))
        except Exception as e:  # report instead of hanging the parent
            outbox.put(("done", rank, 0.0, repr(e)))


class _WorkerPool:
    """Worker processes updating shared-memory tables lock-free (HOGWILD), one batch stride each."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        n = trainer.config.workers
        for t in trainer.model.tables:
            trainer.model.tables[t].share_memory_()
            trainer.states[t].share_memory_()
        ctx = mp.get_context("spawn")
        self.outbox = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=_worker_main, daemon=True,
                                  args=(r, n, trainer.model.tables, trainer.states, trainer.edges,
                                        trainer.config, self.inboxes[r], self.outbox, bool(trainer.callbacks)))
                      for r in range(n)]
        for p in self.procs:
            p.start()

    def run_epoch(self, epoch: int) -> float:
        for q in self.inboxes:
            q.put(epoch)
        total, done = 0.0, 0
        bar = progress_bar(total=len(self.procs), unit="worker", disable=not self.trainer.progress,
                   desc=f"epoch {epoch + 1}/{self.trainer.config.epochs} ({len(self.procs)} workers)", leave=False)
        while done < len(self.procs):
            kind, who, loss, err = self.outbox.get()
            if kind == "batch":
                self.trainer._emit(TrainEvent("batch", epoch + 1, who, loss))
                continue
            if err:
                raise RuntimeError(f"training worker {who} failed: {err}")
            total += loss
            done += 1
            bar.update(1)
        bar.close()
        return total

    def close(self) -> None:
        for q in self.inboxes:
            q.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
