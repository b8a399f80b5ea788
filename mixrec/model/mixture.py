"""The mixture-embedding model: one (N, C, dim) table per entity type, scoring, and its model directory."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mixrec.config import Config
from mixrec.csr import csr_from_pairs
from mixrec.data.dataset import Dataset, Relation, _id_array
from mixrec.ids import IdLookup
from mixrec.io import discard_dir, load_array, save_array, save_json, sha256
from mixrec.model.functional import ALL_DIMS, normalize, pool, product_all

MODEL_FORMAT = 1


@dataclass
class MixtureModel:
    """Trained mixture embeddings plus what retrieval needs: ids, relations, weights, training edges."""

    config: Config
    tables: dict[str, torch.Tensor]  # type -> (N, C, dim) float32
    relations: list[Relation]
    ids: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # set -> type -> (N, C)
    train_edges: dict[str, np.ndarray] = field(default_factory=dict)  # src, dst, rel (int64)
    info: dict = field(default_factory=dict)
    path: Path | None = None
    _seen_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _lookups: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ----------------------------------------------------------------- creation
    @classmethod
    def initialise(cls, dataset: Dataset, config: Config) -> "MixtureModel":
        """Random unit components for every entity type, seeded by ``config.seed``."""
        g = torch.Generator().manual_seed(config.seed)
        tables = {}
        for t in dataset.entity_types:
            c = config.components_of(t)
            tables[t] = torch.randn(dataset.num(t), c, config.dim, generator=g) * config.init_scale
        train = dataset.split("train")
        return cls(config=config, tables=tables, relations=list(dataset.relations), ids=dict(dataset.ids),
                   train_edges={"src": train.src, "dst": train.dst, "rel": train.rel})

    # ----------------------------------------------------------------- queries
    def components(self, entity_type: str) -> int:
        return int(self.tables[entity_type].shape[1])

    def num(self, entity_type: str) -> int:
        return int(self.tables[entity_type].shape[0])

    def vectors(self, entity_type: str) -> torch.Tensor:
        """Unit-normalised components of a type, (N, C, dim)."""
        return normalize(self.tables[entity_type])

    @property
    def source_type(self) -> str:
        return self.relations[0].source_type

    @property
    def target_type(self) -> str:
        return self.relations[0].target_type

    def relation_code(self, name: str) -> int:
        names = [r.name for r in self.relations]
        if name not in names:
            raise KeyError(f"unknown relation {name!r}; the model has {names}")
        return names.index(name)

    def mixture_weights(self, entity_type: str, weight_set: str = "all") -> np.ndarray:
        """(N, C) weights of a named set; uniform where the set was not computed."""
        if weight_set in self.weights and entity_type in self.weights[weight_set]:
            return self.weights[weight_set][entity_type]
        if weight_set not in self.weights and self.weights:
            raise KeyError(f"unknown weight set {weight_set!r}; the model has {sorted(self.weights)}")
        c = self.components(entity_type)
        return np.full((self.num(entity_type), c), 1.0 / c, dtype=np.float32)

    def score(self, sources: np.ndarray, targets: np.ndarray | None = None, *, pooling: str | None = None,
              source_type: str | None = None, target_type: str | None = None) -> torch.Tensor:
        """Pooled scores (B, N) of sources against all (or the given) targets."""
        cfg = self.config
        us = self.tables[source_type or self.source_type][torch.as_tensor(sources)]
        vt = self.tables[target_type or self.target_type]
        ud = vt if targets is None else vt[torch.as_tensor(targets)]
        m = product_all(us, ud)
        return pool(m, pooling or cfg.score_pooling, gamma=cfg.gamma, theta=cfg.theta, theta_form=cfg.theta_form,
                    dims=ALL_DIMS)

    def lookup(self, entity_type: str) -> IdLookup:
        """Raw id -> dense index of one entity type (built once)."""
        if entity_type not in self._lookups:
            self._lookups[entity_type] = IdLookup(self.ids[entity_type])
        return self._lookups[entity_type]

    def seen(self, relations: list[str] | None = None, *, source_type: str | None = None,
             target_type: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """CSR (indptr, indices) of each source's training destinations of one type pair; cached.

        The pair defaults to the model's (source, target) types; only relations connecting that pair
        count (destinations of another type are other id spaces). ``relations`` narrows them further;
        naming one of another pair is an error.
        """
        s_t, d_t = source_type or self.source_type, target_type or self.target_type
        key = (s_t, d_t, None if relations is None else tuple(sorted(relations)))
        if key not in self._seen_cache:
            self._seen_cache[key] = self._build_seen(relations, s_t, d_t)
        return self._seen_cache[key]

    def relations_between(self, source_type: str, target_type: str) -> list[str]:
        """Names of the relations from ``source_type`` to ``target_type``."""
        return [r.name for r in self.relations if (r.source_type, r.target_type) == (source_type, target_type)]

    def _build_seen(self, relations: list[str] | None, s_t: str, d_t: str) -> tuple[np.ndarray, np.ndarray]:
        src, dst, rel = self.train_edges["src"], self.train_edges["dst"], self.train_edges["rel"]
        pair = self.relations_between(s_t, d_t)
        if relations is not None:
            other = [r for r in relations if r not in pair]
            for r in other:
                self.relation_code(r)  # unknown names: KeyError listing the model's relations
            if other:
                raise ValueError(f"relation(s) {other} do not connect {s_t} -> {d_t} (those that do: {pair}); "
                                 "seen destinations are excluded within one destination type")
            pair = list(relations)
        keep = np.isin(rel, [self.relation_code(r) for r in pair])
        src, dst = src[keep], dst[keep]
        return csr_from_pairs(src, dst, self.num(s_t), dedupe=False)

    # ----------------------------------------------------------------- storage
    def save(self, path: str | Path) -> Path:
        """Write the model directory (each file atomically; ``model.json`` last)."""
        path = Path(path)
        discard_dir(path / "index")  # an index of the embeddings this save replaces would be stale
        (path / "embeddings").mkdir(parents=True, exist_ok=True)
        for t, tab in self.tables.items():
            unit = normalize(tab).numpy().astype(np.float32)
            save_array(path / "embeddings" / f"{t}.npy", unit)
            # from now on this model is the saved one, bit for bit: an index built from either is the same
            self.tables[t] = torch.from_numpy(unit)  # astype made it a fresh array
            ids = _id_array(self.ids[t])
            write_ids(path, t, [ids], ids.type)
        (path / "train").mkdir(exist_ok=True)
        for k, v in self.train_edges.items():
            save_array(path / "train" / f"{k}.npy", v.astype(np.int64))
        write_manifest(path, self.config, {t: (self.num(t), self.components(t)) for t in self.tables},
                       self.relations, self.weights, self.info)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "MixtureModel":
        """Read a model directory without unpickling anything; checksums are verified by default."""
        path = Path(path)
        meta_path = path / "model.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path}: not a mixrec model (no model.json); train one with `mixrec train`")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != MODEL_FORMAT:
            raise ValueError(f"{meta_path}: model format {meta.get('format')!r}, expected {MODEL_FORMAT}")
        if verify and not meta.get("checksums"):
            raise ValueError(f"{meta_path}: lists no checksums, so the model's files cannot be verified; retrain "
                             "the model, or load it unverified with verify=False (--no-verify) if you trust it")
        if verify:
            for rel, digest in meta["checksums"].items():
                f = path / rel
                if not _is_artifact(path, f):  # older manifests hashed every file, reports beside the model too
                    continue
                if not f.is_file() or sha256(f) != digest:
                    raise ValueError(f"{f}: missing or modified since the model was saved (checksum mismatch); "
                                     "retrain or restore the model directory")
        config = Config.load(path / "config.toml")
        tables = {t: torch.from_numpy(np.array(load_array(path / "embeddings" / f"{t}.npy")))
                  for t in meta["entities"]}
        for t, tab in tables.items():
            if not torch.isfinite(tab).all():
                raise ValueError(f"{path / 'embeddings' / f'{t}.npy'}: {int((~torch.isfinite(tab)).sum())} non-finite "
                                 "values (a diverged training run?); retrain the model")
        ids = {t: pq.read_table(path / "ids" / f"{t}.parquet").column("id").to_numpy(zero_copy_only=False)
               for t in meta["entities"]}
        weights = {n: {t: load_array(path / "weights" / n / f"{t}.npy") for t in types}
                   for n, types in meta.get("weight_sets", {}).items()}
        train = {k: load_array(path / "train" / f"{k}.npy") for k in ("src", "dst", "rel")}
        return cls(config=config, tables=tables, relations=[Relation(**r) for r in meta["relations"]], ids=ids,
                   weights=weights, train_edges=train, info=meta.get("info", {}), path=path)


def write_ids(path: Path, entity_type: str, blocks, id_type: pa.DataType) -> None:
    """``ids/<type>.parquet`` (column ``id``) from blocks of raw ids, written aside and renamed into place."""
    tmp = path / "ids" / f".{entity_type}.parquet.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(tmp, pa.schema([("id", id_type)])) as writer:
        for block in blocks:
            writer.write_table(pa.table({"id": block}))
    tmp.replace(path / "ids" / f"{entity_type}.parquet")


def write_manifest(path: Path, config: Config, entities: dict[str, tuple[int, int]], relations: list[Relation],
                   weights: dict[str, dict[str, np.ndarray]], info: dict) -> None:
    """Finish a model directory whose embeddings, ids and training edges are written: the weight sets,
    ``config.toml`` and, last, ``model.json`` with the checksum of every artifact. Every trainer ends here."""
    for name, per_type in weights.items():
        (path / "weights" / name).mkdir(parents=True, exist_ok=True)
        for t, w in per_type.items():
            save_array(path / "weights" / name / f"{t}.npy", w.astype(np.float32))
    config.save(path / "config.toml")
    files = sorted(p for p in path.rglob("*") if p.is_file() and _is_artifact(path, p))
    save_json(path / "model.json", {
        "format": MODEL_FORMAT,
        "entities": {t: {"count": n, "components": c} for t, (n, c) in entities.items()},
        "relations": [r.__dict__ for r in relations],
        "weight_sets": {n: sorted(w) for n, w in weights.items()},
        "info": info,
        "checksums": {str(p.relative_to(path)): sha256(p) for p in files},
    })


ARTIFACTS = ("config.toml", "embeddings", "ids", "train", "weights")  # what model.json's checksums cover


def _is_artifact(root: Path, p: Path) -> bool:
    """Part of the model: the config and the files under its four folders. The checkpoint, the index
    (rebuilt when stale) and anything else saved in the directory, such as an evaluation report, are not."""
    rel = p.relative_to(root).parts
    return bool(rel) and rel[0] in ARTIFACTS and not p.name.startswith(".")
