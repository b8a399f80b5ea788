"""Partitioned, disk-backed training for graphs larger than memory (the PyTorch-BigGraph scheme).

Each entity type ``t`` is cut into ``partitions.<t>`` contiguous index ranges. Training edges are bucketed
on disk by (relation, source partition, destination partition); the embedding table and the row-wise
Adagrad state of every partition live in ``.npy`` files under ``<out>/checkpoint/``. An epoch visits the
buckets source partition by source partition (destination partitions in snake order, so one of them stays
loaded across the switch) and holds only the two partitions a bucket needs in memory. Uniform negatives
come from the bucket's destination partition plus a sample of rows of the other destination partitions,
trained and written back (:mod:`mixrec.train.negative_pool`; ``negatives.cross_partition = 0`` keeps PBG's
own-partition scheme). The result is an ordinary model directory.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from mixrec.config import Config
from mixrec.io import load_array, save_array, save_json
from mixrec.model.mixture import MixtureModel
from mixrec.progress import epoch_line, progress_bar
from mixrec.train.base import CHECKPOINT, RESUMABLE as TRAINER_RESUMABLE, Callback, ModelTrainer, TrainEvent, epoch_event
from mixrec.train.graph_source import GraphSource
from mixrec.train.memory import keep_freed_heap
from mixrec.train.negative_pool import BucketNegatives, bucket_negatives
from mixrec.train.partition_export import export_model
from mixrec.train.sampler import edge_shares
from mixrec.train.step import Batch, train_step

log = logging.getLogger("mixrec.train.partitioned")
RESUMABLE = TRAINER_RESUMABLE | {"distributed"}  # config keys a resume may change
RECORD = np.dtype([("src", "<i8"), ("dst", "<i8"), ("weight", "<f4")])  # local indices within the bucket


def partition_bounds(n: int, parts: int) -> np.ndarray:
    """(parts + 1,) start offsets of ``parts`` contiguous, near-equal ranges of ``n`` entities."""
    return (np.arange(parts + 1, dtype=np.int64) * n) // parts


def partition_of(index: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Partition of each entity index under ``bounds`` (from :func:`partition_bounds`)."""
    return np.searchsorted(bounds, index, side="right") - 1


def snake_order(n_src: int, n_dst: int) -> list[tuple[int, int]]:
    """Bucket visiting order: rows in turn, each row's columns reversed every other row (fewer swaps)."""
    return [(i, j if i % 2 == 0 else n_dst - 1 - j) for i in range(n_src) for j in range(n_dst)]


@dataclass
class BucketIndex:
    """Where the bucketed edges live and how many each bucket holds."""

    root: Path
    counts: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (rel, i, j) -> edges

    def path(self, rel: int, i: int, j: int) -> Path:
        return self.root / f"r{rel}_{i}_{j}.bin"

    def read(self, rel: int, i: int, j: int) -> np.ndarray:
        """The bucket's records, read into memory (empty when the bucket has no edges)."""
        if not self.counts.get((rel, i, j)):
            return np.zeros(0, dtype=RECORD)
        return np.fromfile(self.path(rel, i, j), dtype=RECORD)


def bucket_edges(source: GraphSource, cfg: Config, root: Path) -> BucketIndex:
    """Stream the train split once and append every edge (with omega(e)) to its bucket file under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    index = BucketIndex(root)
    scale = source.weight_scale(cfg)
    bounds = {t: partition_bounds(n, cfg.partitions_of(t)) for t, n in source.entities.items()}
    for n_chunk, (src, dst, rel, w) in enumerate(source.train_chunks()):
        if n_chunk % 10 == 0:
            log.info("bucketing: %d edges so far", sum(index.counts.values()))
        for code in np.unique(rel).tolist():
            r = source.relations[code]
            m = rel == code
            s, d = src[m], dst[m]
            weight = w[m] * scale[code](s, d)
            ps, pd = partition_of(s, bounds[r.source_type]), partition_of(d, bounds[r.target_type])
            key = ps * cfg.partitions_of(r.target_type) + pd
            order = np.argsort(key, kind="stable")
            cuts = np.flatnonzero(np.diff(key[order])) + 1
            for block in np.split(order, cuts):
                i, j = int(ps[block[0]]), int(pd[block[0]])
                rec = np.empty(len(block), dtype=RECORD)
                rec["src"] = s[block] - bounds[r.source_type][i]
                rec["dst"] = d[block] - bounds[r.target_type][j]
                rec["weight"] = weight[block]
                with open(index.path(code, i, j), "ab") as fh:
                    fh.write(rec.tobytes())
                index.counts[(code, i, j)] = index.counts.get((code, i, j), 0) + len(block)
    return index


class PartitionStore:
    """Embedding and Adagrad-state partitions as ``.npy`` files; loads on demand and writes back on release."""

    def __init__(self, root: Path, cfg: Config, entities: dict[str, int]):
        self.root, self.cfg = root, cfg
        self.bounds = {t: partition_bounds(n, cfg.partitions_of(t)) for t, n in entities.items()}
        self.loaded: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.io_seconds = 0.0

    def paths(self, t: str, p: int) -> tuple[Path, Path]:
        return self.root / f"{t}.{p}.npy", self.root / f"{t}.{p}.state.npy"

    def size(self, t: str, p: int) -> int:
        return int(self.bounds[t][p + 1] - self.bounds[t][p])

    def initialise(self) -> None:
        """Random components (std ``init_scale``) and zero state for every partition, seeded per partition."""
        for t in self.bounds:
            for p in range(len(self.bounds[t]) - 1):
                g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + zlib.crc32(f"{t}/{p}".encode()))
                tab = torch.randn(self.size(t, p), self.cfg.components_of(t), self.cfg.dim, generator=g)
                tab_path, state_path = self.paths(t, p)
                save_array(tab_path, tab.mul_(self.cfg.init_scale).numpy())
                save_array(state_path, np.zeros(self.size(t, p), dtype=np.float32))

    def get(self, t: str, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(table, state) of partition ``p`` of type ``t``, read from disk unless already loaded."""
        if (t, p) not in self.loaded:
            t0 = time.perf_counter()
            tab_path, state_path = self.paths(t, p)
            self.loaded[(t, p)] = (torch.from_numpy(np.array(load_array(tab_path, mmap=True))),
                                   torch.from_numpy(np.array(load_array(state_path, mmap=True))))
            self.io_seconds += time.perf_counter() - t0
        return self.loaded[(t, p)]

    def release(self, keep: Sequence[tuple[str, int]] = ()) -> None:
        """Write back and drop every loaded partition not in ``keep``."""
        for key in [k for k in self.loaded if k not in keep]:
            t0 = time.perf_counter()
            tab, state = self.loaded.pop(key)
            tab_path, state_path = self.paths(*key)
            save_array(tab_path, tab.numpy())
            save_array(state_path, state.numpy())
            self.io_seconds += time.perf_counter() - t0

    def read(self, t: str, p: int) -> np.ndarray:
        """Partition ``p`` of ``t`` as a read-only memory map (for export; nothing is loaded)."""
        return load_array(self.paths(t, p)[0], mmap=True)

    def read_rows(self, t: str, p: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(table rows, state rows) of partition ``p``, from memory when loaded, else from its files."""
        if (t, p) in self.loaded:
            tab, state = self.loaded[(t, p)]
            idx = torch.from_numpy(rows)
            return tab[idx].numpy(), state[idx].numpy()
        t0 = time.perf_counter()
        got = tuple(np.asarray(load_array(f, mmap=True)[rows]) for f in self.paths(t, p))
        self.io_seconds += time.perf_counter() - t0
        return got

    def add_rows(self, t: str, p: int, rows: np.ndarray, d_tab: np.ndarray, d_state: np.ndarray) -> None:
        """Add changes to rows (unique) of partition ``p``: in memory when loaded, else by rewriting its files
        atomically."""
        if (t, p) in self.loaded:
            idx = torch.from_numpy(rows)
            for arr, d in zip(self.loaded[(t, p)], (d_tab, d_state)):
                arr.index_add_(0, idx, torch.from_numpy(d))
            return
        t0 = time.perf_counter()
        for path, d in zip(self.paths(t, p), (d_tab, d_state)):
            arr = np.array(load_array(path, mmap=True))
            arr[rows] += d
            save_array(path, arr)
        self.io_seconds += time.perf_counter() - t0


class PartitionedTrainer(ModelTrainer):
    """Trains bucket by bucket from ``source`` with state under ``work`` (default ``<out>/checkpoint``) and
    writes the model directory ``out``; with neither, both live in a temporary folder during :meth:`fit`.

    Validation needs the whole model in memory, so a source with a valid split and a config asking for it
    (``early_stopping.patience`` or ``eval_every``) is refused, as are HOGWILD ``workers`` and a GPU ``device``.
    """

    def __init__(self, source: GraphSource, config: Config, work: str | Path | None = None, progress: bool = True,
                 callbacks: Sequence[Callback] = (), out: str | Path | None = None):
        check_supported(config, source.has_valid)
        self.source, self.config, self.progress = source, config, progress
        self.callbacks = list(callbacks)
        self.out = None if out is None else Path(out)
        self.work: Path | None = None
        self.store: PartitionStore | None = None
        if work is not None or self.out is not None:
            self._use_work(Path(work) if work is not None else self.out / CHECKPOINT)
        self.buckets: BucketIndex | None = None
        self.history: list[dict] = []
        self.epochs_done = 0
        self.batches_done = 0  # batches of the current epoch so far (the index of the next batch event)
        keep_freed_heap()

    def _use_work(self, work: Path) -> None:
        self.work = work
        self.store = PartitionStore(work / "tables", self.config, self.source.entities)

    def prepare(self, resume: bool = False) -> None:
        """Bucket the edges and initialise the tables, or pick both up from a previous run when ``resume``."""
        state_file = self.work / "state.json"
        fingerprint = self.config.model_dump(exclude=RESUMABLE)
        if resume and state_file.is_file():
            state = json.loads(state_file.read_text())
            if state["config"] != json.loads(json.dumps(fingerprint)):
                raise ValueError(f"{state_file}: checkpoint was trained with a different configuration; "
                                 "resume with the same settings or train into a new --out directory")
            self.buckets = BucketIndex(self.work / "buckets",
                                       {tuple(k): v for k, v in state["buckets"]})
            self.history, self.epochs_done = state["history"], state["epochs_done"]
            return
        for d in ("buckets", "tables"):
            for f in (self.work / d).glob("*") if (self.work / d).is_dir() else ():
                f.unlink()
        self.store.root.mkdir(parents=True, exist_ok=True)
        self.buckets = bucket_edges(self.source, self.config, self.work / "buckets")
        self.store.initialise()
        self._save_state(fingerprint)

    def plan(self) -> list[tuple[tuple[str, str], int, int]]:
        """The buckets of one epoch in visiting order: ((source type, target type), i, j)."""
        pairs = sorted({(r.source_type, r.target_type) for r in self.source.relations})
        return [(pair, i, j) for pair in pairs
                for i, j in snake_order(self.config.partitions_of(pair[0]), self.config.partitions_of(pair[1]))]

    def run_bucket(self, epoch: int, pair: tuple[str, str], i: int, j: int,
                   limit: int | None = None, chunk: int = 0) -> tuple[float, int]:
        """Train one bucket's edges (all relations of the type pair), or its part ``chunk`` of
        ``edge_chunks``; returns (loss sum, edges trained).

        ``limit`` stops after about that many edges (for measuring a fraction of a large bucket).
        """
        cfg, (s_t, d_t) = self.config, pair
        codes = [c for c, r in enumerate(self.source.relations)
                 if (r.source_type, r.target_type) == pair and cfg.relation(r.name).weight > 0]
        seed = [cfg.seed, epoch, zlib.crc32(f"{s_t}/{d_t}".encode()), i, j]
        recs = {c: _chunk(self.buckets.read(c, i, j), chunk, cfg.edge_chunks, seed + [c]) for c in codes}
        if not any(len(v) for v in recs.values()):
            return 0.0, 0
        keep = [(s_t, i), (d_t, j)]
        self.store.release(keep)
        (tab_s, st_s), (tab_d, st_d) = self.store.get(s_t, i), self.store.get(d_t, j)
        rng = np.random.default_rng(seed + ([chunk] if chunk else []))
        negs = self.bucket_negatives(d_t, j, tab_d, st_d, rng)
        same = (s_t, i) == (d_t, j)  # one table on both sides: train the extended copy for both
        tables = {"src": negs.table if same else tab_s, "dst": negs.table}
        states = {"src": negs.state if same else st_s, "dst": negs.state}
        probs = {c: self._bucket_shares(recs[c], negs, self.store.size(s_t, i)) for c in codes}
        u_prob = negs.uniform_prob() if cfg.applies_log_q else None
        total, done = 0.0, 0
        for code, pos in _bucket_schedule(recs, cfg.batch_size, rng):
            if limit is not None and done >= limit:
                break
            r = recs[code][pos]
            uniform = negs.draw(rng, cfg.negatives.uniform)
            u_src = (rng.integers(0, self.store.size(s_t, i), size=cfg.negatives.uniform, dtype=np.int64)
                     if cfg.negatives.two_sided else None)
            batch = Batch("src", "dst", r["src"].astype(np.int64), r["dst"].astype(np.int64),
                          r["weight"].astype(np.float32), uniform, u_src, *probs[code], u_prob)
            loss = train_step(batch, tables, states, cfg)
            total += loss
            done += len(pos)
            self._emit(TrainEvent("batch", epoch + 1, self.batches_done, loss))
            self.batches_done += 1
        negs.write_back(tab_d, st_d, lambda p, *change: self.store.add_rows(d_t, p, *change))
        return total, done

    def bucket_negatives(self, t: str, j: int, table: torch.Tensor, state: torch.Tensor,
                         rng: np.random.Generator) -> BucketNegatives:
        """Partition ``j`` of ``t`` plus up to ``negatives.cross_partition`` rows of its other partitions."""
        sizes = [self.store.size(t, p) for p in range(self.config.partitions_of(t))]
        return bucket_negatives(table, state, sizes, j, self.config.negatives.cross_partition,
                                lambda p, rows: self.store.read_rows(t, p, rows), rng)

    def _bucket_shares(self, rec: np.ndarray, negs: BucketNegatives, n_src: int):
        """(per-source, per-destination) share of the bucket's edges of one relation, for log-Q (else None)."""
        cfg = self.config
        if not cfg.applies_log_q:
            return None, None
        dst = edge_shares(rec["dst"], len(negs.table))  # pool rows never occur in a batch
        return (edge_shares(rec["src"], n_src) if cfg.negatives.two_sided else None), dst

    def run_epoch(self, epoch: int) -> dict:
        """One pass over every bucket; returns the epoch's history record."""
        t0, io0 = time.perf_counter(), self.store.io_seconds
        loss, edges = 0.0, 0
        self.batches_done = 0
        plan = self.plan()
        chunks = self.config.edge_chunks
        bar = progress_bar(total=len(plan) * chunks, unit="bucket", disable=not self.progress, leave=False,
                   desc=f"epoch {epoch + 1}/{self.config.epochs}")
        for chunk in range(chunks):
            for pair, i, j in plan:
                b_loss, b_edges = self.run_bucket(epoch, pair, i, j, chunk=chunk)
                loss, edges = loss + b_loss, edges + b_edges
                bar.update(1)
        bar.close()
        self.store.release()
        secs = time.perf_counter() - t0
        return {"epoch": epoch + 1, "loss": loss / max(edges, 1), "edges_per_s": edges / max(secs, 1e-9),
                "seconds": secs, "io_seconds": self.store.io_seconds - io0, "buckets": len(plan)}

    def fit(self, resume: bool = False) -> MixtureModel:
        """Run the remaining epochs, then write the model directory and return the model read back from it."""
        if self.out is not None:
            return self._fit(self.out, resume)
        with tempfile.TemporaryDirectory(prefix="mixrec-partitioned-") as tmp:
            if self.work is None:
                self._use_work(Path(tmp) / CHECKPOINT)
            model = self._fit(Path(tmp) / "model", resume)
            model.tables = {t: v.clone() for t, v in model.tables.items()}  # the files go with the folder
            model.path = None
            return model

    def _fit(self, out: Path, resume: bool) -> MixtureModel:
        self.prepare(resume)
        fingerprint = self.config.model_dump(exclude=RESUMABLE)
        for epoch in range(self.epochs_done, self.config.epochs):
            rec = self.run_epoch(epoch)
            self.history.append(rec)
            self.epochs_done = epoch + 1
            epoch_line(rec, self.config.epochs) if self.progress else log.info("epoch %d: %s", epoch + 1, rec)
            self._save_state(fingerprint)
            self._emit(epoch_event(rec))
        export_model(self, out)
        return MixtureModel.load(out)

    def _save_state(self, fingerprint: dict) -> None:
        save_json(self.work / "state.json", {
            "epochs_done": self.epochs_done, "history": self.history, "config": fingerprint,
            "buckets": [[list(k), v] for k, v in sorted(self.buckets.counts.items())]})


def _chunk(rec: np.ndarray, chunk: int, chunks: int, seed: list[int]) -> np.ndarray:
    """Part ``chunk`` of ``chunks`` of a bucket's records: a slice of one seeded permutation per epoch, so the
    parts are disjoint and cover the bucket."""
    if chunks == 1:
        return rec
    perm = np.random.default_rng(seed).permutation(len(rec))
    return rec[np.sort(perm[chunk * len(rec) // chunks:(chunk + 1) * len(rec) // chunks])]


def _bucket_schedule(recs: dict[int, np.ndarray], batch_size: int,
                     rng: np.random.Generator) -> Iterator[tuple[int, np.ndarray]]:
    """Shuffled (relation, record positions) batches of one bucket."""
    batches = []
    for code, r in recs.items():
        perm = rng.permutation(len(r))
        batches.extend((code, perm[k:k + batch_size]) for k in range(0, len(r), batch_size))
    for k in rng.permutation(len(batches)):
        yield batches[k]


def check_supported(config: Config, has_valid: bool) -> None:
    """Refuse, naming the option, what partitioned training cannot honour."""
    asks = [f"{k}={v}" for k, v in (("early_stopping.patience", config.early_stopping.patience),
                                    ("eval_every", config.eval_every)) if v]
    if has_valid and asks:
        raise ValueError(f"{' and '.join(asks)}: partitioned training cannot validate (that needs the whole model "
                         "in memory); set early_stopping.patience=0 and eval_every=0, or train in memory "
                         "(partitions.<type>=1)")
    if config.workers > 1:
        raise ValueError(f"workers={config.workers}: partitioned training runs in one process; set workers=1")
    if config.device.startswith("cuda"):
        raise ValueError(f"device={config.device!r}: partitioned training runs on the CPU; set device=cpu")


__all__ = ["BucketIndex", "PartitionStore", "PartitionedTrainer", "bucket_edges", "check_supported",
           "partition_bounds", "partition_of", "snake_order"]
