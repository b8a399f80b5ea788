"""One loaded, immutable serving snapshot: model, FAISS index, id lookups and weight sets."""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mixrec.config import IndexConfig
from mixrec.foldin import FoldInSettings, fold_in_model
from mixrec.ids import IdLookup
from mixrec.index import ComponentIndex
from mixrec.model.mixture import MixtureModel
from mixrec.search import Candidates, Searcher, load_or_build_index

__all__ = ["IdLookup", "Snapshot", "model_version"]
log = logging.getLogger("mixrec.serve")


def model_version(path: Path) -> str:
    """A short content id of a model directory (the SHA-256 of its model.json, which lists every checksum)."""
    return hashlib.sha256((path / "model.json").read_bytes()).hexdigest()[:12]


@dataclass
class Snapshot:
    """Everything a request needs, never mutated after loading: requests keep the snapshot they started on."""

    model: MixtureModel
    path: Path
    version: str
    searcher: Searcher  # index, unit vectors and every weight set, materialised at load
    target_tensor: torch.Tensor
    users: IdLookup
    items: IdLookup
    foldin: FoldInSettings
    index_config: IndexConfig | None = None  # the served index config (the model's, with the load's overrides)
    # searchers of other (source, target) type pairs and indexes of other target types, built on first use
    _searchers: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _indexes: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, index_kind: str | None = None, foldin: FoldInSettings | None = None,
             ef_search: int | None = None, nprobe: int | None = None, merge: str | None = None) -> "Snapshot":
        """Load and verify a model directory and its index (built, and saved when possible, if missing).

        ``index_kind`` overrides the model's index kind; ``ef_search`` / ``nprobe`` its search-time
        parameters (HNSW / IVF), which never force a rebuild of a saved index; ``merge`` its list merge.
        """
        path = Path(path).resolve()
        model = MixtureModel.load(path)  # verifies the checksum manifest; no pickle anywhere
        version = model_version(path)
        update = {k: v for k, v in (("kind", index_kind), ("ef_search", ef_search), ("nprobe", nprobe),
                                    ("merge", merge)) if v is not None}
        cfg = model.config.index.model_copy(update=update)
        try:
            index = load_or_build_index(model, model.target_type, cfg)
        except OSError as e:  # read-only model directory: serve from an in-memory index
            log.warning("could not save the index into %s (%s); building it in memory", path, e)
            index = ComponentIndex.build(model.vectors(model.target_type).numpy(), cfg)
        if index.n_items != model.num(model.target_type) or index.components != model.components(model.target_type):
            raise ValueError(f"{path}: the index does not match the model ({index.n_items} x {index.components} vs "
                             f"{model.num(model.target_type)} x {model.components(model.target_type)}); "
                             "delete the model's index/ folder so it is rebuilt")
        searcher = Searcher(model, index)
        # every weight set (uniform ones too) and the seen-items CSR up front, not per request
        for s in searcher.weight_sets:
            searcher.weights(s)
        model.seen()
        return cls(model=model, path=path, version=version, searcher=searcher,
                   target_tensor=torch.from_numpy(searcher.target_vectors), users=model.lookup(model.source_type),
                   items=model.lookup(model.target_type), foldin=foldin or FoldInSettings(), index_config=cfg)

    # ----------------------------------------------------------------- queries
    @property
    def n_users(self) -> int:
        return self.model.num(self.model.source_type)

    @property
    def n_items(self) -> int:
        return self.model.num(self.model.target_type)

    @property
    def index(self) -> ComponentIndex:
        return self.searcher.index

    @property
    def weight_sets(self) -> list[str]:
        return self.searcher.weight_sets

    @property
    def entity_types(self) -> list[str]:
        """The model's entity types (every pair of them can be searched)."""
        return sorted(self.model.tables)

    def searcher_for(self, source_type: str, target_type: str) -> Searcher:
        """The searcher from ``source_type`` to ``target_type``, built (with its target type's index) on first
        use and kept for the snapshot's life; the model's own pair is :attr:`searcher`. KeyError names the types."""
        bad = [t for t in (source_type, target_type) if t not in self.model.tables]
        if bad:
            raise KeyError(f"unknown entity type {bad[0]!r}; this model has {self.entity_types}")
        if (source_type, target_type) == (self.searcher.source_type, self.searcher.target_type):
            return self.searcher
        with self._lock:  # one build per pair even when requests for it arrive together
            if (source_type, target_type) not in self._searchers:
                self._searchers[source_type, target_type] = Searcher(self.model, self._index(target_type),
                                                                     source_type, target_type)
            return self._searchers[source_type, target_type]

    def _index(self, target_type: str) -> ComponentIndex:
        """The index over one target type (the served one for the model's target type); call under the lock."""
        if target_type == self.searcher.target_type:
            return self.searcher.index
        if target_type not in self._indexes:
            cfg = self.index_config or self.model.config.index
            try:
                self._indexes[target_type] = load_or_build_index(self.model, target_type, cfg)
            except OSError as e:  # read-only model directory: keep the index in memory
                log.warning("could not save the %s index into %s (%s); building it in memory", target_type,
                            self.path, e)
                self._indexes[target_type] = ComponentIndex.build(self.model.vectors(target_type).numpy(), cfg)
        return self._indexes[target_type]

    def candidates(self, source_type: str, target_type: str, sources: np.ndarray, k: int, weight_set: str = "all",
                   exclude_seen: bool = True) -> Candidates:
        """Top ``k`` targets of ``target_type`` for dense ``source_type`` indices (same result as
        ``Retriever(model, source_type=..., target_type=...).recommend``); KeyError names unknown sets."""
        self.weights(weight_set)
        return self.searcher_for(source_type, target_type).recommend(sources, k, weight_set, exclude_seen)

    def weights(self, weight_set: str) -> tuple[np.ndarray, np.ndarray]:
        """(w_source, w_target) of a weight set; KeyError names the available sets."""
        if weight_set not in self.weight_sets:
            raise KeyError(f"unknown weight set {weight_set!r}; this model has {self.weight_sets}")
        return self.searcher.weights(weight_set)

    def recommend(self, users: np.ndarray, k: int, weight_set: str = "all", exclude_seen: bool = True) -> Candidates:
        """Top ``k`` items for dense user indices (same result as ``Retriever.recommend``)."""
        self.weights(weight_set)
        return self.searcher.recommend(users, k, weight_set, exclude_seen)

    def similar(self, items: np.ndarray, k: int, weight_set: str = "all") -> Candidates:
        """Item-to-item neighbours (the item itself excluded)."""
        self.weights(weight_set)
        return self.searcher.similar(items, k, weight_set)

    def from_history(self, items: np.ndarray, relations: np.ndarray | None, k: int, weight_set: str = "all",
                     exclude_seen: bool = True, source_type: str | None = None,
                     target_type: str | None = None) -> tuple[Candidates, np.ndarray]:
        """Fold a new node of ``source_type`` in from dense ``target_type`` indices (and relation codes), then
        retrieve targets; also returns its weights. The types default to the model's own pair."""
        self.weights(weight_set)
        searcher = self.searcher_for(source_type or self.searcher.source_type, target_type or self.searcher.target_type)
        vectors = self.target_tensor if searcher is self.searcher else torch.from_numpy(searcher.target_vectors)
        folded = fold_in_model(self.model, [items], None if relations is None else [relations],
                               weight_set=weight_set, source_type=searcher.source_type,
                               target_type=searcher.target_type, settings=self.foldin, items=vectors)
        seen = [np.unique(items)] if exclude_seen else None
        return searcher.from_vectors(folded.vectors, folded.weights, k, weight_set, seen), folded.weights[0]
