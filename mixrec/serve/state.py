"""One loaded, immutable serving snapshot: model, FAISS index, id lookups and weight sets."""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mixrec.evaluate.exact import csr_rows
from mixrec.foldin import FoldInSettings, fold_in_model
from mixrec.index import ComponentIndex
from mixrec.model.mixture import MixtureModel
from mixrec.retrieve import Candidates, load_or_build_index, round_robin_merge

log = logging.getLogger("mixrec.serve")
_INT = re.compile(r"0|-?[1-9][0-9]*")


class IdLookup:
    """Raw id -> dense index by binary search over a sorted copy (no per-id Python objects)."""

    def __init__(self, ids: np.ndarray):
        self.is_int = ids.dtype.kind in "iu"
        keys = ids.astype(np.int64) if self.is_int else ids.astype(str)
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]

    def find(self, raw: Sequence[str | int]) -> np.ndarray:
        """Dense indices of raw ids (-1 where unknown or not parseable as this model's id type)."""
        out = np.full(len(raw), -1, np.int64)
        if not len(raw) or not len(self.sorted):
            return out
        if self.is_int:
            keys, ok = np.zeros(len(raw), np.int64), np.zeros(len(raw), bool)
            for i, v in enumerate(raw):
                text = str(v)
                if len(text) <= 20 and _INT.fullmatch(text) and -(2 ** 63) <= (x := int(text)) < 2 ** 63:
                    keys[i], ok[i] = x, True
        else:
            keys, ok = np.array([str(v) for v in raw]), np.ones(len(raw), bool)
        pos = np.searchsorted(self.sorted, keys).clip(0, len(self.sorted) - 1)
        hit = ok & (self.sorted[pos] == keys)
        out[hit] = self.order[pos[hit]]
        return out


def model_version(path: Path) -> str:
    """A short content id of a model directory (the SHA-256 of its model.json, which lists every checksum)."""
    return hashlib.sha256((path / "model.json").read_bytes()).hexdigest()[:12]


@dataclass
class Snapshot:
    """Everything a request needs, never mutated after loading: requests keep the snapshot they started on."""

    model: MixtureModel
    path: Path
    version: str
    index: ComponentIndex
    source_vectors: np.ndarray  # (N_s, C_s, n) unit
    target_vectors: np.ndarray  # (N_d, C_d, n) unit
    target_tensor: torch.Tensor
    users: IdLookup
    items: IdLookup
    foldin: FoldInSettings
    set_weights: dict[str, tuple[np.ndarray, np.ndarray]]  # set -> (w_source, w_target), materialised once

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, index_kind: str | None = None, foldin: FoldInSettings | None = None,
             ef_search: int | None = None, nprobe: int | None = None) -> "Snapshot":
        """Load and verify a model directory and its index (built, and saved when possible, if missing).

        ``index_kind`` overrides the model's index kind; ``ef_search`` / ``nprobe`` its search-time
        parameters (HNSW / IVF), which never force a rebuild of a saved index.
        """
        path = Path(path).resolve()
        model = MixtureModel.load(path)  # verifies the checksum manifest; no pickle anywhere
        version = model_version(path)
        update = {k: v for k, v in (("kind", index_kind), ("ef_search", ef_search), ("nprobe", nprobe)) if v is not None}
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
        target = model.vectors(model.target_type)
        sets = sorted(model.weights) or ["all"]
        # every weight set (uniform ones too) and the seen-items CSR up front, not per request
        set_weights = {s: (model.mixture_weights(model.source_type, s), model.mixture_weights(model.target_type, s))
                       for s in sets}
        model.seen()
        return cls(model=model, path=path, version=version, index=index,
                   source_vectors=model.vectors(model.source_type).numpy(), target_vectors=target.numpy(),
                   target_tensor=target, users=IdLookup(model.ids[model.source_type]),
                   items=IdLookup(model.ids[model.target_type]), foldin=foldin or FoldInSettings(),
                   set_weights=set_weights)

    # ----------------------------------------------------------------- queries
    @property
    def n_users(self) -> int:
        return self.model.num(self.model.source_type)

    @property
    def n_items(self) -> int:
        return self.model.num(self.model.target_type)

    @property
    def weight_sets(self) -> list[str]:
        return list(self.set_weights)

    def weights(self, weight_set: str) -> tuple[np.ndarray, np.ndarray]:
        """(w_source, w_target) of a weight set; KeyError names the available sets."""
        if weight_set not in self.set_weights:
            raise KeyError(f"unknown weight set {weight_set!r}; this model has {self.weight_sets}")
        return self.set_weights[weight_set]

    def search(self, queries: np.ndarray, w_src: np.ndarray, w_dst: np.ndarray, k: int,
               exclude: tuple[np.ndarray, np.ndarray] | None, extra: int) -> Candidates:
        """Round-robin search as :meth:`mixrec.retrieve.Retriever.search_vectors`, for any weight set."""
        b, cs, dim = queries.shape
        m = min((k + extra) * self.index.components, self.index.size)
        sims, ids = self.index.search(queries.reshape(b * cs, dim), m)
        return round_robin_merge(sims.reshape(b, cs, -1), ids.reshape(b, cs, -1), w_src, w_dst, k, exclude)

    def recommend(self, users: np.ndarray, k: int, weight_set: str = "all", exclude_seen: bool = True) -> Candidates:
        """Top ``k`` items for dense user indices (same result as ``Retriever.recommend``)."""
        w_src, w_dst = self.weights(weight_set)
        excl, extra = None, 0
        if exclude_seen:
            indptr, indices = self.model.seen()
            excl = csr_rows(indptr, indices, users)
            extra = int((indptr[users + 1] - indptr[users]).max(initial=0))
        return self.search(self.source_vectors[users], w_src[users], w_dst, k, excl, extra)

    def similar(self, items: np.ndarray, k: int, weight_set: str = "all") -> Candidates:
        """Item-to-item neighbours (the item itself excluded)."""
        _, w_dst = self.weights(weight_set)
        excl = (np.arange(len(items)), items)
        return self.search(self.target_vectors[items], w_dst[items], w_dst, k, excl, 1)

    def from_history(self, items: np.ndarray, relations: np.ndarray | None, k: int, weight_set: str = "all",
                     exclude_seen: bool = True) -> tuple[Candidates, np.ndarray]:
        """Fold a new user in from dense item indices (and relation codes), then retrieve; also returns its weights."""
        _, w_dst = self.weights(weight_set)
        folded = fold_in_model(self.model, [items], None if relations is None else [relations],
                               weight_set=weight_set, settings=self.foldin, items=self.target_tensor)
        uniq = np.unique(items)
        excl = (np.zeros(len(uniq), np.int64), uniq) if exclude_seen else None
        extra = len(uniq) if exclude_seen else 0
        return self.search(folded.vectors, folded.weights, w_dst, k, excl, extra), folded.weights[0]
