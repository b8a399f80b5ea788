"""The dataset directory: entity dictionaries, typed edges per relation and split, and its manifest."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixrec.io import atomic_dir

MANIFEST = "manifest.json"
EDGES = "edges.parquet"
SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Relation:
    """One edge type (a task): its name and the entity types it connects."""

    name: str
    source_type: str = "user"
    target_type: str = "item"


@dataclass
class Edges:
    """A columnar block of edges: dense source/target indices, relation codes and weights."""

    src: np.ndarray  # int64 (E,)
    dst: np.ndarray  # int64 (E,)
    rel: np.ndarray  # int64 (E,) code into Dataset.relations
    weight: np.ndarray  # float32 (E,)

    def __len__(self) -> int:
        return int(self.src.shape[0])

    def select(self, mask: np.ndarray) -> "Edges":
        """The edges where ``mask`` is true (boolean mask or index array)."""
        return Edges(self.src[mask], self.dst[mask], self.rel[mask], self.weight[mask])


@dataclass
class Dataset:
    """Interactions between entity types, indexed densely, split into train/valid/test.

    ``ids[type]`` maps a dense index to the raw id (integers or strings);
    ``edges[split]`` holds that split's edges; ``relations`` lists the tasks in code order.
    """

    ids: dict[str, np.ndarray]
    relations: list[Relation]
    edges: dict[str, Edges]
    info: dict = field(default_factory=dict)
    path: Path | None = None

    # ------------------------------------------------------------------ queries
    @property
    def entity_types(self) -> list[str]:
        return list(self.ids)

    def num(self, entity_type: str) -> int:
        """Number of entities of a type."""
        return int(len(self.ids[entity_type]))

    def relation(self, name: str) -> Relation:
        for r in self.relations:
            if r.name == name:
                return r
        raise KeyError(f"unknown relation {name!r}; the dataset has {[r.name for r in self.relations]}")

    def relation_code(self, name: str) -> int:
        self.relation(name)
        return [r.name for r in self.relations].index(name)

    def split(self, split: str | Sequence[str] = "train", relations: Iterable[str] | None = None) -> Edges:
        """Edges of one or several splits, optionally restricted to some relations."""
        names = [split] if isinstance(split, str) else list(split)
        parts = [self.edges[s] for s in names if s in self.edges]
        if not parts:
            return _empty_edges()
        e = Edges(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("src", "dst", "rel", "weight")))
        if relations is not None:
            codes = [self.relation_code(r) for r in relations]
            e = e.select(np.isin(e.rel, codes))
        return e

    def has_split(self, split: str) -> bool:
        return split in self.edges and len(self.edges[split]) > 0

    def index_of(self, entity_type: str, raw_ids: Sequence) -> np.ndarray:
        """Dense indices of raw ids (-1 where unknown)."""
        table = self.ids[entity_type]
        lookup = {v: i for i, v in enumerate(table.tolist())}
        conv = _id_converter(table)
        return np.array([lookup.get(conv(v), -1) for v in raw_ids], dtype=np.int64)

    def counts(self) -> dict:
        """Edges per relation and split, as written in the manifest."""
        out: dict = {}
        for s, e in self.edges.items():
            codes, n = np.unique(e.rel, return_counts=True)
            for c, k in zip(codes.tolist(), n.tolist()):
                out.setdefault(self.relations[c].name, {})[s] = k
        return out

    # ------------------------------------------------------------------ storage
    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write the dataset directory atomically (old content survives a failure)."""
        path = Path(path)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            (tmp / "entities").mkdir()
            for t, ids in self.ids.items():
                pq.write_table(pa.table({"index": np.arange(len(ids), dtype=np.int64), "id": _id_array(ids)}),
                               tmp / "entities" / f"{t}.parquet")
            cols: dict[str, list] = {k: [] for k in ("src", "dst", "rel", "weight", "split")}
            for s, e in self.edges.items():
                cols["src"].append(e.src.astype(np.int64))
                cols["dst"].append(e.dst.astype(np.int64))
                cols["rel"].append(e.rel.astype(np.int16))
                cols["weight"].append(e.weight.astype(np.float32))
                cols["split"].append(np.full(len(e), SPLITS.index(s), dtype=np.int8))
            table = pa.table({k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()})
            pq.write_table(table, tmp / EDGES, write_page_checksum=True)
            manifest = {
                "format": FORMAT_VERSION,
                "entities": {t: len(v) for t, v in self.ids.items()},
                "relations": [r.__dict__ for r in self.relations],
                "counts": self.counts(),
                "info": self.info,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Dataset":
        """Read a dataset directory written by :meth:`save` (or ``mixrec ingest``)."""
        path = Path(path)
        manifest = read_manifest(path)
        ids = {t: _read_parquet(path / "entities" / f"{t}.parquet", ["id"])["id"] for t in manifest["entities"]}
        relations = [Relation(**r) for r in manifest["relations"]]
        arrays = _read_parquet(path / EDGES, ["src", "dst", "rel", "weight", "split"])
        _check_edges(path / EDGES, arrays, {t: len(v) for t, v in ids.items()}, relations, manifest)
        split = arrays["split"]
        edges = {}
        for i, s in enumerate(SPLITS):
            m = split == i
            if m.any():
                edges[s] = Edges(arrays["src"][m].astype(np.int64), arrays["dst"][m].astype(np.int64),
                                 arrays["rel"][m].astype(np.int64), arrays["weight"][m].astype(np.float32))
        return cls(ids=ids, relations=relations, edges=edges, info=manifest.get("info", {}), path=path)


def _read_parquet(path: Path, columns: list[str]) -> dict[str, np.ndarray]:
    """Columns of a dataset's Parquet file (page checksums verified where written); errors name the file."""
    try:
        tab = pq.read_table(path, columns=columns, page_checksum_verification=True)
        return {c: tab.column(c).to_numpy() if c != "id" else tab.column(c).to_numpy(zero_copy_only=False)
                for c in columns}
    except (OSError, pa.ArrowException, KeyError) as e:
        raise ValueError(f"{path}: unreadable or corrupt ({e}); re-run `mixrec ingest` to rewrite the dataset") from None


def _check_edges(path: Path, a: dict[str, np.ndarray], sizes: dict[str, int], relations: list[Relation],
                 manifest: dict) -> None:
    """Every edge's indices in range and the per-relation/split counts as in the manifest; else name the file."""
    problem = None
    if len(a["rel"]) and (a["rel"].min() < 0 or a["rel"].max() >= len(relations)):
        problem = "relation codes out of range"
    elif len(a["split"]) and (a["split"].min() < 0 or a["split"].max() >= len(SPLITS)):
        problem = "split codes out of range"
    else:
        for col, side in (("src", "source_type"), ("dst", "target_type")):
            n = np.array([sizes[getattr(r, side)] for r in relations])[a["rel"]] if len(a["rel"]) else 0
            if len(a[col]) and ((a[col] < 0) | (a[col] >= n)).any():
                problem = f"{col} indices out of range"
    if problem is None and "counts" in manifest:
        got: dict = {}
        keys, n = np.unique(np.stack([a["rel"].astype(np.int64), a["split"].astype(np.int64)], 1), axis=0,
                            return_counts=True)
        for (r, sp), k in zip(keys.tolist(), n.tolist()):
            got.setdefault(relations[r].name, {})[SPLITS[sp]] = k
        if got != manifest["counts"]:
            problem = f"edge counts {got} differ from the manifest's {manifest['counts']}"
    if problem:
        raise ValueError(f"{path}: corrupt ({problem}); re-run `mixrec ingest` to rewrite the dataset")


def dataset_entities(dataset: "Dataset | str | Path") -> dict[str, int]:
    """Entities per type of a dataset or a dataset directory (from its manifest alone)."""
    if isinstance(dataset, Dataset):
        return {t: dataset.num(t) for t in dataset.entity_types}
    return {t: int(n) for t, n in read_manifest(Path(dataset))["entities"].items()}


def dataset_names(dataset: "Dataset | str | Path") -> tuple[list[str], list[str]]:
    """(entity types, relation names) of a dataset or a dataset directory (from its manifest alone)."""
    if isinstance(dataset, Dataset):
        return dataset.entity_types, [r.name for r in dataset.relations]
    manifest = read_manifest(Path(dataset))
    return list(manifest["entities"]), [r["name"] for r in manifest["relations"]]


def read_manifest(path: Path) -> dict:
    """A dataset directory's manifest; errors name the file and say what to do."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"{path}: not a mixrec dataset (no {MANIFEST}); create one with `mixrec ingest`")
    try:
        manifest = json.loads(mpath.read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"dataset format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
        for key in ("entities", "relations"):
            if key not in manifest:
                raise ValueError(f"no {key!r} entry")
        [Relation(**r) for r in manifest["relations"]]
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ValueError(f"{mpath}: broken manifest ({e}); re-run `mixrec ingest` to rewrite the dataset") from None
    return manifest


def _empty_edges() -> Edges:
    z = np.zeros(0, dtype=np.int64)
    return Edges(z, z.copy(), z.copy(), np.zeros(0, dtype=np.float32))


def _id_array(ids: np.ndarray) -> pa.Array:
    if ids.dtype.kind in "iu":
        return pa.array(ids.astype(np.int64))
    return pa.array([str(v) for v in ids.tolist()], type=pa.string())


def _id_converter(table: np.ndarray):
    if table.dtype.kind in "iu":
        return lambda v: int(v) if re.fullmatch(r"0|-?[1-9][0-9]*", str(v)) else v
    return str
