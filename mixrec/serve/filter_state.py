"""A served graph-filter model (mixrec.filters): the snapshot interface the candidate routes use, ranked exactly."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixrec.data.dataset import Relation
from mixrec.filters import FilterModel, load_filter
from mixrec.ids import IdLookup
from mixrec.search import Candidates
from mixrec.serve.state import model_version

__all__ = ["FilterSnapshot", "FilterView", "model_kind"]
SOURCE, TARGET = "user", "item"


class FilterView:
    """The attributes of a served model that the routes read (raw ids, entity types, relations), for a filter."""

    source_type, target_type = SOURCE, TARGET

    def __init__(self, model: FilterModel):
        self.filter = model
        self.ids: dict[str, np.ndarray] = model.ids
        self.tables = {SOURCE: model.n_users, TARGET: model.n_items}  # type -> count (no embedding tables)
        # input relations, then the target if it is not one of them: a history's relation codes index this
        self.relations = [Relation(r) for r in dict.fromkeys(model.relations + [model.target])]
        self._lookups = {t: IdLookup(ids) for t, ids in model.ids.items()}

    def lookup(self, entity_type: str) -> IdLookup:
        return self._lookups[entity_type]


@dataclass
class FilterSnapshot:
    """A loaded filter model directory, never mutated after loading; same query methods as a mixture Snapshot.

    Every score is the filter's exact one (history row x filter, all items ranked); a new user needs no
    fold-in: its history row goes through the filter. There are no mixture components, so the only
    weight set is ``all`` and every candidate's ``component`` is -1.
    """

    filter: FilterModel
    path: Path
    version: str
    users: IdLookup = field(init=False)
    items: IdLookup = field(init=False)
    model: FilterView = field(init=False)

    def __post_init__(self) -> None:
        self.model = FilterView(self.filter)
        self.users, self.items = self.model.lookup(SOURCE), self.model.lookup(TARGET)

    @classmethod
    def load(cls, path: str | Path) -> "FilterSnapshot":
        """Load a filter model directory (checksums verified, as ``mixrec retrieve`` does)."""
        path = Path(path).resolve()
        f = load_filter(path)
        return cls(filter=f, path=path, version=model_version(path))

    # ----------------------------------------------------------------- description
    @property
    def kind(self) -> str:
        """The filter kind (``gfcf``, ``chebyshev``, ...)."""
        return self.filter.kind

    @property
    def n_users(self) -> int:
        return self.filter.n_users

    @property
    def n_items(self) -> int:
        return self.filter.n_items

    @property
    def weight_sets(self) -> list[str]:
        return ["all"]

    @property
    def entity_types(self) -> list[str]:
        return sorted(self.model.tables)

    def describe(self) -> dict:
        """The filter's kind, hyper-parameters, input relations, ranked relation and per-user table size (0: none)."""
        f = self.filter
        return {"kind": f.kind, "params": dict(f.params), "relations": list(f.relations), "target": f.target,
                "table_k": f.table.k if f.table is not None else 0}

    # ----------------------------------------------------------------- queries
    def weights(self, weight_set: str) -> None:
        """Check the weight set; KeyError says a filter has only ``all``."""
        if weight_set != "all":
            raise KeyError(f"unknown weight set {weight_set!r}: a graph-filter model ({self.kind}) has no mixture "
                           "components, so its only weight set is 'all'")

    def recommend(self, users: np.ndarray, k: int, weight_set: str = "all", exclude_seen: bool = True) -> Candidates:
        """Top ``k`` items for dense user indices (``FilterModel.recommend``: its per-user table when it has one)."""
        self.weights(weight_set)
        return _candidates(*self.filter.recommend(users, k=k, exclude_seen=exclude_seen))

    def similar(self, items: np.ndarray, k: int, weight_set: str = "all") -> Candidates:
        """Each item's one-item history through the filter, the item itself excluded (``FilterModel.similar``)."""
        self.weights(weight_set)
        return _candidates(*self.filter.similar(items, k=k))

    def from_history(self, items: np.ndarray, relations: np.ndarray | None, k: int, weight_set: str = "all",
                     exclude_seen: bool = True, source_type: str | None = None,
                     target_type: str | None = None) -> tuple[Candidates, np.ndarray]:
        """A new user's history row through the filter (no training); also returns its (empty) mixture weights.

        Without ``relations`` the items are the history of every input relation; with them (codes into
        ``model.relations``) each relation gets its own items. Excluded items are the target relation's
        (``FilterModel.recommend_from_history``); KeyError when no item is in an input relation or the
        types are not the filter's (user, item).
        """
        self.weights(weight_set)
        if (source_type or SOURCE, target_type or TARGET) != (SOURCE, TARGET):
            raise KeyError(f"a graph-filter model ranks items for a {SOURCE} history of items only, not "
                           f"{source_type} -> {target_type}")
        hist: list | dict = [items.tolist()]
        if relations is not None:
            names = [r.name for r in self.model.relations]
            hist = {names[c]: [items[relations == c].tolist()] for c in np.unique(relations)}
            inputs = self.filter.input_relations()
            if not set(hist) & set(inputs):
                raise KeyError(f"none of the history items is in an input relation of this graph-filter model "
                               f"({inputs}); give at least one item of those")
        out = self.filter.recommend_from_history(hist, k=k, exclude_seen=exclude_seen)
        return _candidates(*out), np.zeros(0, np.float32)

    def candidates(self, source_type: str, target_type: str, sources: np.ndarray, k: int, weight_set: str = "all",
                   exclude_seen: bool = True) -> Candidates:
        """user -> item: :meth:`recommend`; item -> item: :meth:`similar`; KeyError for a pair a filter cannot rank."""
        if target_type != TARGET:
            raise KeyError(f"a graph-filter model ranks items only, not {target_type!r}; use to={TARGET}")
        if source_type == TARGET:
            return self.similar(sources, k, weight_set)
        return self.recommend(sources, k, weight_set, exclude_seen)


def model_kind(snapshot) -> str:
    """``"filter"`` for a :class:`FilterSnapshot`, ``"mixture"`` otherwise."""
    return "filter" if isinstance(snapshot, FilterSnapshot) else "mixture"


def _candidates(items: np.ndarray, scores: np.ndarray) -> Candidates:
    return Candidates(items=items, scores=scores, components=np.full(items.shape, -1, np.int64))
