"""A dataset seen as a stream: entity counts, relations and the train split in chunks, never loaded whole."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixrec.config import Config
from mixrec.data.dataset import EDGES, MANIFEST, SPLITS, Dataset, Relation, _id_array
from mixrec.train.sampler import degree_term

CHUNK = 1 << 20  # edges per chunk read from edges.parquet
Chunk = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # src, dst, rel (int64), weight (float32)
Scale = Callable[[np.ndarray, np.ndarray], np.ndarray | float]


@dataclass
class GraphSource:
    """Either a dataset directory (streamed from ``edges.parquet``) or an in-memory :class:`Dataset`."""

    entities: dict[str, int]
    relations: list[Relation]
    n_train: int
    has_valid: bool
    path: Path | None = None
    dataset: Dataset | None = None

    @classmethod
    def open(cls, dataset: Dataset | str | Path) -> "GraphSource":
        """Wrap a loaded dataset, or read only the manifest of a dataset directory."""
        if isinstance(dataset, Dataset):
            return cls({t: dataset.num(t) for t in dataset.entity_types}, list(dataset.relations),
                       len(dataset.split("train")), dataset.has_split("valid"), dataset=dataset)
        path = Path(dataset)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"{path}: not a mixrec dataset (no {MANIFEST}); create one with `mixrec ingest`")
        m = json.loads((path / MANIFEST).read_text())
        counts = m.get("counts", {})
        return cls(dict(m["entities"]), [Relation(**r) for r in m["relations"]],
                   sum(c.get("train", 0) for c in counts.values()),
                   any(c.get("valid", 0) for c in counts.values()), path=path)

    def train_chunks(self, chunk: int = CHUNK) -> Iterator[Chunk]:
        """The train split as (src, dst, rel, weight) blocks of at most ``chunk`` edges, in storage order."""
        if self.dataset is not None:
            e = self.dataset.split("train")
            for i in range(0, len(e), chunk):
                yield e.src[i:i + chunk], e.dst[i:i + chunk], e.rel[i:i + chunk], e.weight[i:i + chunk]
            return
        train = SPLITS.index("train")
        reader = pq.ParquetFile(self.path / EDGES)
        for b in reader.iter_batches(batch_size=chunk, columns=["src", "dst", "rel", "weight", "split"]):
            m = b.column("split").to_numpy() == train
            if m.any():
                yield (b.column("src").to_numpy()[m].astype(np.int64), b.column("dst").to_numpy()[m].astype(np.int64),
                       b.column("rel").to_numpy()[m].astype(np.int64),
                       b.column("weight").to_numpy()[m].astype(np.float32))

    def ids(self, entity_type: str) -> Iterator[pa.Array]:
        """Raw ids of a type, in index order, as Arrow blocks."""
        if self.dataset is not None:
            yield _id_array(self.dataset.ids[entity_type])
            return
        reader = pq.ParquetFile(self.path / "entities" / f"{entity_type}.parquet")
        for b in reader.iter_batches(batch_size=CHUNK, columns=["id"]):
            yield b.column("id")

    def weight_scale(self, cfg: Config) -> list[Scale]:
        """Per relation, the factor omega(e) / input weight of eq. 4: task weight x optional degree term.

        Matches :func:`mixrec.train.sampler.edge_weights`; the degree term costs two extra passes over the
        train split (degrees, then the mean of the term). Only the ``default`` edge-weight function streams.
        """
        for r in self.relations:
            if cfg.relation(r.name).edge_weight != "default":
                raise ValueError(f"relations.{r.name}.edge_weight: partitioned training supports only the "
                                 "'default' edge weight (custom functions need every edge in memory)")
        expo = [cfg.relation(r.name).degree_exponent for r in self.relations]
        out: list[Scale] = [_constant(cfg.relation(r.name).weight) for r in self.relations]
        if not any(expo):
            return out
        deg = [(np.zeros(self.entities[r.source_type], np.int64), np.zeros(self.entities[r.target_type], np.int64))
               for r in self.relations]
        for src, dst, rel, _ in self.train_chunks():
            for c in np.flatnonzero(expo).tolist():
                m = rel == c
                deg[c][0][:] += np.bincount(src[m], minlength=len(deg[c][0]))
                deg[c][1][:] += np.bincount(dst[m], minlength=len(deg[c][1]))
        total = np.zeros(len(self.relations))
        count = np.zeros(len(self.relations))
        for src, dst, rel, _ in self.train_chunks():
            for c in np.flatnonzero(expo).tolist():
                m = rel == c
                total[c] += degree_term(*deg[c], expo[c], src[m], dst[m]).sum()
                count[c] += m.sum()
        for c in np.flatnonzero(expo).tolist():
            mean = total[c] / max(count[c], 1)
            out[c] = _degree_scale(cfg.relation(self.relations[c].name).weight, deg[c], expo[c], mean)
        return out


def _constant(w: float) -> Scale:
    return lambda s, d: np.float64(w)


def _degree_scale(w: float, deg: tuple[np.ndarray, np.ndarray], x: float, mean: float) -> Scale:
    return lambda s, d: w * degree_term(*deg, x, s, d) / mean
