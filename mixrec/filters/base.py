"""The filter model interface: batched scoring of history rows, top-k, exclusion, pickle-free model directories."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from mixrec.data.dataset import Dataset
from mixrec.io import atomic_dir, save_json, sha256
from mixrec.progress import progress_bar

FORMAT = 1
ARRAYS = "arrays.npz"
TABLE = "table.npz"


def binary_matrix(src: np.ndarray, dst: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """Binary CSR of (row, col) pairs, duplicates merged."""
    m = sp.csr_matrix((np.ones(len(src), dtype=np.float32), (np.asarray(src), np.asarray(dst))),
                      shape=(n_rows, n_cols))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def inv_power(deg: np.ndarray, p: float) -> np.ndarray:
    """deg ** -p with 0 where deg == 0 (float64)."""
    deg = np.asarray(deg, dtype=np.float64).ravel()
    out = np.zeros_like(deg)
    nz = deg > 0
    out[nz] = deg[nz] ** -p
    return out


def normalise(r: sp.csr_matrix, user_exp: float = 0.5, item_exp: float = 0.5) -> sp.csr_matrix:
    """R~ = D_u^{-a} R D_i^{-b} (GF-CF's normalised interaction matrix at a = b = 1/2), float32 CSR."""
    du = inv_power(r.sum(axis=1), user_exp)
    di = inv_power(r.sum(axis=0), item_exp)
    return sp.csr_matrix(sp.diags(du) @ r @ sp.diags(di), dtype=np.float32)


SPARSE_SHARE = 0.4
"""Each product of through_users reads only the rows it needs when they hold at most this share of R's
nonzeros (0: always dense).

A restricted product copies its rows, then multiplies them (the second one scattering into the output):
on tmall_mb's view graph (858,505 nonzeros, one thread) it costs about 1.6x a full product per nonzero
read, so the two break even near half the nonzeros; 0.4 keeps a margin."""


def row_positions(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions in a CSR's indices/data of the entries of ``rows``, row by row."""
    lens = indptr[rows + 1] - indptr[rows]
    return np.repeat(indptr[rows] + lens - np.cumsum(lens), lens) + np.arange(int(lens.sum()))


def row_entries(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(output row j, column, position in m.data) of every entry of ``m[rows]`` without building the sliced CSR."""
    rows = np.asarray(rows, dtype=np.int64)
    pos = row_positions(m.indptr, rows)
    return np.repeat(np.arange(len(rows)), m.indptr[rows + 1] - m.indptr[rows]), m.indices[pos], pos


def dense_rows(m: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """``m[rows].toarray()`` for a CSR without duplicate entries (binary_matrix's), at the cost of those rows."""
    r, c, pos = row_entries(m, rows)
    out = np.zeros((len(rows), m.shape[1]), dtype=m.dtype)
    out[r, c] = m.data[pos]
    return out


def nnz_of_rows(m: sp.csr_matrix, rows: np.ndarray) -> int:
    """Number of stored entries in ``rows`` of a CSR."""
    return int((m.indptr[rows + 1] - m.indptr[rows]).sum())


def user_side(x: np.ndarray, rn: sp.csr_matrix, rn_t: sp.csr_matrix,
              budget: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(R x^T as dense (U, B), the users where it can be nonzero or None when unknown).

    Sparse when the columns of R that x touches hold at most ``budget`` nonzeros: read as rows of rn_t,
    their transpose is CSC, whose product adds each user's terms item by item, ascending, exactly as the
    full product over rn's rows adds them (less terms that are exactly zero).
    """
    touched = x.any(axis=0)
    if 2 * np.count_nonzero(touched) > len(touched):  # mostly touched (a walk): count the columns it misses
        read = rn_t.nnz - nnz_of_rows(rn_t, np.flatnonzero(~touched))
    else:
        read = nnz_of_rows(rn_t, np.flatnonzero(touched))
    if read > budget:
        return rn @ np.ascontiguousarray(x.T), None
    cols = np.flatnonzero(touched)
    g = rn_t[cols]
    return g.T @ np.ascontiguousarray(x[:, cols].T), np.flatnonzero(np.bincount(g.indices, minlength=rn.shape[0]))


def item_side(mid: np.ndarray, users: np.ndarray | None, rn: sp.csr_matrix, rn_t: sp.csr_matrix,
              budget: float) -> np.ndarray:
    """mid^T @ R as (B, I) float32, mid zero outside ``users`` (None: anywhere).

    Sparse when those users' rows hold at most ``budget`` nonzeros: their transpose is CSC, whose product
    adds each item's terms user by user, ascending, exactly as the full product over rn_t's rows does.
    """
    if users is not None and nnz_of_rows(rn, users) <= budget:
        out = rn[users].T @ mid[users]
    else:
        out = rn_t @ mid
    return np.ascontiguousarray(out.T, dtype=np.float32)


def through_users(x: np.ndarray, rn: sp.csr_matrix, rn_t: sp.csr_matrix, share: float | None = None) -> np.ndarray:
    """x @ R^T @ R for dense x (B, I), R a user x item CSR with sorted indices and rn_t its transpose as CSR (I, U).

    Two products, each over all of R's nonzeros, or, when that reads at most ``share`` (default
    SPARSE_SHARE) of them, over the rows it needs (one user's history: the columns of its items, then
    the rows of their users). Every output entry is the same float sum in the same order, less terms
    that are exactly zero, so all routes agree exactly.
    """
    budget = (SPARSE_SHARE if share is None else share) * rn.nnz
    mid, users = user_side(x, rn, rn_t, budget)
    return item_side(mid, users, rn, rn_t, budget)


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns per row (items, scores), best first, equal scores by ascending column; -inf entries
    become item -1.

    Ties are broken by column, so the best ``k`` are the first ``k`` of the best ``k' >= k`` (a stored
    top-k table answers every shorter request).
    """
    k_eff = min(k, scores.shape[1])
    out_i = np.full((scores.shape[0], k), -1, dtype=np.int64)
    out_s = np.full((scores.shape[0], k), -np.inf, dtype=np.float32)
    if k_eff == 0:
        return out_i, out_s
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    vals = np.take_along_axis(scores, part, 1)
    kth = vals.min(axis=1, keepdims=True)  # the k-th best score of each row
    split = np.count_nonzero(scores == kth, axis=1) > np.count_nonzero(vals == kth, axis=1)
    if split.any():  # the cut falls inside a tie: keep its lowest columns, not argpartition's arbitrary ones
        s, t = scores[split], kth[split]
        above, tied = s > t, s == t
        need = k_eff - np.count_nonzero(above, axis=1, keepdims=True)
        keep = above | (tied & (np.cumsum(tied, axis=1) <= need))
        part[split] = np.nonzero(keep)[1].reshape(-1, k_eff)
        vals[split] = np.take_along_axis(s, part[split], 1)
    order = np.lexsort((part, -vals), axis=1)
    idx, vals = np.take_along_axis(part, order, 1), np.take_along_axis(vals, order, 1)
    idx[~np.isfinite(vals)] = -1
    out_i[:, :k_eff], out_s[:, :k_eff] = idx, vals
    return out_i, out_s


@dataclass(frozen=True)
class UserTable:
    """Every training user's top ``k`` of the default request (the target relation's training items excluded),
    best first, as :meth:`FilterModel.recommend` ranks them: row u holds user u, item -1 past its last
    rankable item."""

    items: np.ndarray  # (U, k) int32
    scores: np.ndarray  # (U, k) float32

    @property
    def k(self) -> int:
        return int(self.items.shape[1])

    def rows(self, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``k <= self.k`` (items as int64, scores) of each of ``users``."""
        return self.items[users, :k].astype(np.int64), self.scores[users, :k]


class FilterModel:
    """A closed-form item-item filter: scores = history rows x filter, fitted from a dataset directory.

    Subclasses define ``kind``, ``_fit(inputs)``, ``_apply(x)`` (dense (B, I) history -> (B, I) scores)
    and the arrays they save. ``inputs`` maps each input relation to its binary user x item CSR.

    With a :class:`UserTable` (``fit(..., table_k=K)`` or :meth:`build_table`), :meth:`recommend` of training
    users with their seen target items excluded and ``k <= K`` is a lookup; everything else is scored.
    """

    kind = "base"

    def __init__(self, **params):
        self.params = dict(params)
        self.relations: list[str] = []
        self.target: str = ""
        self.ids: dict[str, np.ndarray] = {}
        self.history: dict[str, sp.csr_matrix] = {}  # relation -> user x item binary training rows
        self.table: UserTable | None = None
        self.path: Path | None = None

    # ------------------------------------------------------------------ fitting
    def fit(self, dataset: Dataset | str | Path, relations: Sequence[str] | None = None,
            target: str | None = None, table_k: int = 0, batch: int = 512,
            progress: bool = False) -> "FilterModel":
        """Fit on the train split of ``relations`` (default all); ``target`` (default the last) is what is ranked.

        ``table_k`` > 0 also ranks every training user's top ``table_k`` (:meth:`build_table`).
        """
        if isinstance(table_k, bool) or not isinstance(table_k, (int, np.integer)) or table_k < 0:
            raise ValueError(f"table_k must be an integer >= 0 (0: no per-user table), got {table_k!r}")
        data = dataset if isinstance(dataset, Dataset) else Dataset.load(dataset)
        self.relations = list(relations) if relations else [r.name for r in data.relations]
        self.target = target or self.relations[-1]
        self.ids = {t: np.asarray(data.ids[t]) for t in ("user", "item")}
        n_u, n_i = data.num("user"), data.num("item")
        for r in dict.fromkeys(self.relations + [self.target]):
            e = data.split("train", relations=[r])
            self.history[r] = binary_matrix(e.src, e.dst, n_u, n_i)
        self._fit()
        self.table = None
        if table_k:
            self.build_table(int(table_k), batch, progress)
        return self

    def build_table(self, k: int, batch: int = 512, progress: bool = False) -> UserTable:
        """Rank every training user's top ``k`` (seen target items excluded) in batches and keep it as the table."""
        users = np.arange(self.n_users)
        items = np.full((len(users), k), -1, dtype=np.int32)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        bar = progress_bar(total=len(users), unit="user", desc=f"top-{k} table", disable=not progress)
        for lo in range(0, len(users), batch):
            part = users[lo:lo + batch]
            items[lo:lo + len(part)], scores[lo:lo + len(part)] = self._score_ranked(part, k, True, batch)
            bar.update(len(part))
        bar.close()
        self.table = UserTable(items, scores)
        return self.table

    def _fit(self) -> None:
        raise NotImplementedError

    def _apply(self, x: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    @property
    def n_items(self) -> int:
        return int(len(self.ids["item"]))

    @property
    def n_users(self) -> int:
        return int(len(self.ids["user"]))

    def input_relations(self) -> list[str]:
        return list(self.relations)

    # ------------------------------------------------------------------ scoring
    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Dense (B, I) scores of some training users (one batch: keep B small)."""
        users = np.asarray(users, dtype=np.int64)
        return self._apply({r: dense_rows(self.history[r], users) for r in self.input_relations()})

    def _ranked(self, score, rows: int, k: int, exclude: tuple[sp.csr_matrix, np.ndarray] | None,
                batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of ``score(lo, hi)`` (dense (hi - lo, I)) by batches; output row j skips row ``exclude[1][j]``
        of the CSR ``exclude[0]``."""
        items = np.full((rows, k), -1, dtype=np.int64)
        scores = np.full((rows, k), -np.inf, dtype=np.float32)
        for lo in range(0, rows, batch):
            hi = min(lo + batch, rows)
            s = score(lo, hi)
            if exclude is not None:
                r, c, _ = row_entries(exclude[0], exclude[1][lo:hi])
                s[r, c] = -np.inf
            items[lo:hi], scores[lo:hi] = topk_rows(s, k)
        return items, scores

    def recommend(self, users: Sequence[int], k: int = 20, exclude_seen: bool = True,
                  batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (items, scores) per training user, scored in batches; seen target items skipped if asked.

        Read from the table when there is one, ``exclude_seen`` holds and ``k <= table.k`` (the same answer).
        """
        users = np.asarray(users, dtype=np.int64)
        if users.size and (users.min() < 0 or users.max() >= self.n_users):
            raise IndexError(f"user indices must lie in [0, {self.n_users})")
        if exclude_seen and self.table is not None and k <= self.table.k:
            return self.table.rows(users, k)
        return self._score_ranked(users, k, exclude_seen, batch)

    def _score_ranked(self, users: np.ndarray, k: int, exclude_seen: bool,
                      batch: int) -> tuple[np.ndarray, np.ndarray]:
        return self._ranked(lambda lo, hi: self.score_users(users[lo:hi]), len(users), k,
                            (self.history[self.target], users) if exclude_seen else None, batch)

    def history_matrix(self, histories: Sequence[Sequence[int]]) -> sp.csr_matrix:
        """Binary CSR (len(histories), I) of item index lists."""
        rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if len(histories) else \
            np.zeros(0, dtype=np.int64)
        if cols.size and (cols.min() < 0 or cols.max() >= self.n_items):
            raise IndexError(f"history item indices must lie in [0, {self.n_items})")
        return binary_matrix(rows, cols, len(histories), self.n_items)

    def recommend_from_history(self, histories: Sequence[Sequence[int]] | dict[str, Sequence[Sequence[int]]],
                               k: int = 20, exclude_seen: bool = True,
                               batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` for unseen users from item lists (no training): scores = history rows x filter.

        Multi-relation models take ``{relation: lists}``; a plain list is used for every input relation.
        Excluded items are the target relation's history.
        """
        if not isinstance(histories, dict):
            histories = {r: histories for r in self.input_relations()}
        n = len(next(iter(histories.values())))
        mats = {r: self.history_matrix(histories.get(r, [[]] * n)) for r in self.input_relations()}
        target = self.history_matrix(histories[self.target]) if self.target in histories else mats[
            self.input_relations()[-1]]
        rows = np.arange(n)
        return self._ranked(lambda lo, hi: self._apply({r: dense_rows(m, rows[lo:hi]) for r, m in mats.items()}),
                            n, k, (target, rows) if exclude_seen else None, batch)

    def similar(self, items: Sequence[int], k: int = 20, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items for each query item (its one-item history through the filter), the item itself excluded."""
        items = np.asarray(items, dtype=np.int64)
        one = [[int(i)] for i in items]
        return self.recommend_from_history(one, k=k, exclude_seen=True, batch=batch)

    # ------------------------------------------------------------------ storage
    def save(self, path: str | Path) -> Path:
        """Write the model directory atomically: model.json (kind, params, checksums) and arrays.npz."""
        path = Path(path)
        arrays = dict(self._arrays())
        for t, ids in self.ids.items():
            arrays[f"ids_{t}"] = ids.astype(str) if ids.dtype.kind == "O" else ids
        for r, m in self.history.items():
            m = m.tocsr()
            arrays[f"history_{r}_indptr"], arrays[f"history_{r}_indices"] = m.indptr.astype(np.int64), \
                m.indices.astype(np.int32)
        with atomic_dir(path) as tmp:
            np.savez(tmp / ARRAYS, **arrays)
            files = [ARRAYS]
            if self.table is not None:
                np.savez(tmp / TABLE, items=self.table.items, scores=self.table.scores)
                files.append(TABLE)
            meta = {"format": FORMAT, "kind": self.kind, "params": self.params, "relations": self.relations,
                    "target": self.target, "history": list(self.history),
                    "shape": [self.n_users, self.n_items], "table_k": self.table.k if self.table else 0,
                    "checksums": {f: sha256(tmp / f) for f in files}}
            save_json(tmp / "model.json", meta)
        self.path = path
        return path

    @classmethod
    def _load_into(cls, model: "FilterModel", path: Path, meta: dict, verify: bool) -> "FilterModel":
        for name, digest in meta["checksums"].items() if verify else ():
            f = path / name
            if not f.is_file() or sha256(f) != digest:
                raise ValueError(f"{f}: missing or modified since the model was saved (checksum mismatch); "
                                 "refit or restore the model directory")
        f = path / ARRAYS
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        model.relations, model.target = list(meta["relations"]), meta["target"]
        model.ids = {t: arrays.pop(f"ids_{t}") for t in ("user", "item")}
        n_u, n_i = meta["shape"]
        for r in meta["history"]:
            ptr, ind = arrays.pop(f"history_{r}_indptr"), arrays.pop(f"history_{r}_indices")
            model.history[r] = sp.csr_matrix((np.ones(len(ind), dtype=np.float32), ind, ptr), shape=(n_u, n_i))
        model._restore(arrays)
        model.table = None
        if meta.get("table_k", 0):
            with np.load(path / TABLE, allow_pickle=False) as z:
                model.table = UserTable(z["items"], z["scores"])
        model.path = path
        return model


def read_meta(path: str | Path) -> dict:
    """model.json of a filter model directory, with a clear error when it is not one."""
    path = Path(path)
    mp = path / "model.json"
    if not mp.is_file():
        raise FileNotFoundError(f"{path}: not a model directory (no model.json); fit one with `mixrec fit-filter`")
    meta = json.loads(mp.read_text())
    if "kind" not in meta or meta.get("format") != FORMAT:
        raise ValueError(f"{mp}: not a filter model (needs format {FORMAT} and a 'kind' field)")
    return meta
