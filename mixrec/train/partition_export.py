"""Writing a partitioned run as an ordinary model directory, streaming: no table or edge list is held whole.

The files match :meth:`mixrec.model.MixtureModel.save` (unit-normalised embeddings, ids, eq. 5 mixture
weights, training edges, ``config.toml``, ``model.json`` with checksums), so ``MixtureModel.load``,
retrieval and serving read the result like any other model.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa
import torch

from mixrec.model.functional import normalize, product
from mixrec.model.mixture import write_ids, write_manifest
from mixrec.weights import OnlineWeights, component_logits, group_weight_sets

if TYPE_CHECKING:  # pragma: no cover
    from mixrec.train.partitioned import PartitionedTrainer

CHUNK = 65536  # edges scored at once for the mixture weights


@contextlib.contextmanager
def npy_writer(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> Iterator:
    """Write a ``.npy`` file block by block along axis 0 (``write(block)``); renamed into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    written = 0
    with open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})

        def write(block: np.ndarray) -> None:
            nonlocal written
            fh.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
            written += len(block)

        try:
            yield write
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
    if written != shape[0]:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{path}: wrote {written} rows, expected {shape[0]}")
    os.replace(tmp, path)


def export_model(trainer: "PartitionedTrainer", out: Path) -> Path:
    """Write ``trainer``'s partitions, weights and training edges as a model directory at ``out``."""
    src, cfg, store = trainer.source, trainer.config, trainer.store
    out.mkdir(parents=True, exist_ok=True)
    for t, n in src.entities.items():
        with npy_writer(out / "embeddings" / f"{t}.npy", np.float32, (n, cfg.components_of(t), cfg.dim)) as w:
            for p in range(cfg.partitions_of(t)):
                w(normalize(torch.from_numpy(np.array(store.read(t, p)))).numpy())
        write_ids(out, t, src.ids(t), _id_type(src, t))
    _write_train_edges(trainer, out / "train")
    write_manifest(out, cfg, {t: (n, cfg.components_of(t)) for t, n in src.entities.items()}, src.relations,
                   _weight_sets(trainer), {"history": trainer.history, "edges": src.n_train, "best_epoch": None,
                                           "partitions": {t: cfg.partitions_of(t) for t in src.entities}})
    return out


def _id_type(src, t: str) -> pa.DataType:
    return next(iter(src.ids(t))).type


def _write_train_edges(trainer: "PartitionedTrainer", root: Path) -> None:
    src = trainer.source
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(npy_writer(root / f"{k}.npy", np.int64, (src.n_train,)))
                   for k in ("src", "dst", "rel")]
        for chunk in src.train_chunks():
            for w, a in zip(writers, chunk[:3]):
                w(a)


def _weight_sets(trainer: "PartitionedTrainer") -> dict[str, dict[str, np.ndarray]]:
    """Eq. 5 for every configured weight set, one streaming pass over the buckets per set."""
    src, cfg = trainer.source, trainer.config
    return group_weight_sets(cfg, src.relations, lambda t: (src.entities[t], cfg.components_of(t)),
                             lambda pair, codes, gamma, form, accs: _pair_weights(trainer, pair, codes, gamma,
                                                                                  form, accs))


def _pair_weights(trainer: "PartitionedTrainer", pair: tuple[str, str], codes: list[int], gamma: float,
                  form: str, acc: tuple[OnlineWeights, OnlineWeights]) -> None:
    """Add one type pair's eq. 5 terms (edges of relations ``codes``, bucket by bucket) to the source and
    target types' accumulators ``acc``."""
    cfg, store, buckets = trainer.config, trainer.store, trainer.buckets
    s_t, d_t = pair
    if max(cfg.components_of(s_t), cfg.components_of(d_t)) > 1:
        with torch.no_grad():
            for i in range(cfg.partitions_of(s_t)):
                us = torch.from_numpy(np.array(store.read(s_t, i)))
                for j in range(cfg.partitions_of(d_t)):
                    ud = torch.from_numpy(np.array(store.read(d_t, j)))
                    for c in codes:
                        rec = buckets.read(c, i, j)
                        for k in range(0, len(rec), CHUNK):
                            s = torch.from_numpy(rec["src"][k:k + CHUNK].astype(np.int64))
                            d = torch.from_numpy(rec["dst"][k:k + CHUNK].astype(np.int64))
                            m = product(us[s], ud[d])
                            acc[0].add(s + int(store.bounds[s_t][i]), component_logits(m, gamma, "source", form))
                            acc[1].add(d + int(store.bounds[d_t][j]), component_logits(m, gamma, "target", form))
