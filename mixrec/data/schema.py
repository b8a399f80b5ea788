"""The graph schema: entity types and typed relations read from one TOML file into a single dataset."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mixrec.config import Config, ConfigError, read_mapping
from mixrec.data.dataset import MANIFEST, SPLITS, Dataset, Edges, Relation, read_manifest
from mixrec.data.ingest import build_dataset, check_out
from mixrec.data.readers import IngestError, read_log

TASK_WEIGHTS = "task_weights"  # key of Dataset.info holding each relation's schema weight


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EntitySchema(_Strict):
    """An entity type; its raw ids are its own id space (the same raw id in two types is a persona)."""


class SplitSchema(_Strict):
    """How held-out edges are chosen, for every relation unless it sets its own ``split``."""

    strategy: Literal["column", "random", "temporal", "leave-last-out"] = "random"
    test_fraction: float = Field(0.2, ge=0, lt=1)
    valid_fraction: float = Field(0.0, ge=0, lt=1)
    seed: int = 0


class RelationSchema(_Strict):
    """One relation (a task): its types, the file and columns it is read from, and its task weight."""

    name: str
    source: str = Field(description="source entity type")
    target: str = Field(description="destination entity type")
    file: str = Field(description="CSV/TSV/Parquet file or glob, relative to the schema file")
    source_col: str
    target_col: str
    weight_col: Optional[str] = Field(None, description="per-edge input weight")
    timestamp_col: Optional[str] = None
    split_col: Optional[str] = Field(None, description="train/valid/test labels (split strategy 'column')")
    weight: float = Field(1.0, ge=0, description="task weight omega_T of eq. 4 (relations.<name>.weight)")
    split: Optional[SplitSchema] = None


class GraphSchema(_Strict):
    """Entity types and the relations between them."""

    entities: dict[str, EntitySchema]
    relations: list[RelationSchema] = Field(min_length=1)
    split: SplitSchema = Field(default_factory=SplitSchema)

    @model_validator(mode="after")
    def _consistent(self):
        names = [r.name for r in self.relations]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"relation names must be unique; repeated: {dup}")
        for i, r in enumerate(self.relations):
            for side, t in (("source", r.source), ("target", r.target)):
                if t not in self.entities:
                    raise ValueError(f"relations[{i}] ({r.name}).{side} = {t!r} is not a declared entity type; "
                                     f"declare [entities.{t}] (declared: {sorted(self.entities)})")
        return self

    @classmethod
    def load(cls, path: str | Path) -> "GraphSchema":
        try:
            return cls.model_validate(read_mapping(path))
        except ValidationError as e:
            errs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or '<top>'}: {err['msg']}" for err in e.errors())
            raise ConfigError(f"{path}: invalid graph schema: {errs}") from None


def build_graph(schema: GraphSchema, base: str | Path = ".") -> Dataset:
    """Read every relation's file (paths relative to ``base``) and merge them into one typed :class:`Dataset`."""
    start = time.perf_counter()
    parts = []
    for r in schema.relations:
        sp = r.split or schema.split
        strategy = "column" if r.split_col and sp.strategy == "column" else sp.strategy
        path = Path(base) / r.file
        wanted = [c for c in (r.source_col, r.target_col, r.weight_col, r.timestamp_col,
                              r.split_col if strategy == "column" else None) if c]
        table = read_log(str(path), columns=wanted, string_columns=[r.source_col, r.target_col])
        try:
            ds, _ = build_dataset(table, source_col=r.source_col, target_col=r.target_col, weight_col=r.weight_col,
                                  timestamp_col=r.timestamp_col,
                                  split_col=r.split_col if strategy == "column" else None,
                                  split=strategy, test_fraction=sp.test_fraction, valid_fraction=sp.valid_fraction,
                                  seed=sp.seed, source_type=r.source, target_type=r.target, default_relation=r.name)
        except IngestError as e:
            raise IngestError(f"relation {r.name!r}: {e}") from None
        parts.append(ds)
    return merge_typed(parts, schema, time.perf_counter() - start)


def merge_typed(parts: list[Dataset], schema: GraphSchema, seconds: float = 0.0) -> Dataset:
    """One dataset from single-relation ones: a dictionary per entity type over all of them, codes remapped."""
    ids: dict[str, np.ndarray] = {}
    for t in schema.entities:
        tables = [p.ids[t] for p in parts if t in p.ids]
        if not tables:
            raise IngestError(f"entity type {t!r} is declared but no relation connects it")
        if any(a.dtype.kind not in "iu" for a in tables):
            tables = [a.astype(str) for a in tables]
        ids[t] = np.unique(np.concatenate(tables))
    edges: dict[str, list[Edges]] = {}
    relations = []
    for code, (p, r) in enumerate(zip(parts, schema.relations)):
        relations.append(Relation(r.name, r.source, r.target))
        remap = {t: np.searchsorted(ids[t], p.ids[t].astype(ids[t].dtype)) for t in p.ids}
        for s, e in p.edges.items():
            edges.setdefault(s, []).append(Edges(remap[r.source][e.src], remap[r.target][e.dst],
                                                 np.full(len(e), code, np.int64), e.weight))
    merged = {s: Edges(*(np.concatenate([getattr(e, f) for e in edges[s]]) for f in ("src", "dst", "rel", "weight")))
              for s in SPLITS if s in edges}
    info = {TASK_WEIGHTS: {r.name: r.weight for r in schema.relations},
            "ingest": {"schema": schema.model_dump(), "seconds": seconds,
                       "relations": {r.name: p.info.get("ingest", {}).get("edges", {}).get(r.name)
                                     for p, r in zip(parts, schema.relations)}}}
    return Dataset(ids=ids, relations=relations, edges=merged, info=info)


def ingest_graph(schema_path: str | Path, out: str | Path, *, overwrite: bool | None = None,
                 progress: bool = True) -> Dataset:
    """``mixrec ingest --schema graph.toml --out data/``: read, validate, merge and write the dataset directory
    (``overwrite`` as in :func:`mixrec.data.ingest.ingest`: by default only a dataset directory or an empty
    folder is replaced)."""
    schema_path = Path(schema_path)
    schema = GraphSchema.load(schema_path)
    out = Path(out)
    check_out(out, overwrite)
    ds = build_graph(schema, schema_path.parent)
    ds.save(out, overwrite=True)
    if progress:
        ents = ", ".join(f"{ds.num(t):,} {t}" for t in ds.entity_types)
        rels = "; ".join(f"{r}: " + " ".join(f"{s} {n:,}" for s, n in c.items()) for r, c in ds.counts().items())
        print(f"ingested graph {schema_path} -> {ents}; {rels}", file=sys.stderr)
    return ds


def with_task_weights(config: Config, dataset: Dataset | str | Path) -> Config:
    """``config`` with the schema's task weights for relations it does not set itself (``relations.<name>``)."""
    if isinstance(dataset, Dataset):
        info = dataset.info
    else:
        info = _manifest_info(Path(dataset)) if isinstance(dataset, (str, Path)) else {}
    weights = {k: v for k, v in info.get(TASK_WEIGHTS, {}).items() if k not in config.relations}
    return config.with_overrides({f"relations.{k}.weight": v for k, v in weights.items()}) if weights else config


def _manifest_info(path: Path) -> dict:
    return read_manifest(path).get("info", {}) if (path / MANIFEST).is_file() else {}
