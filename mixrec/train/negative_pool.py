"""Negatives of one bucket in partitioned training: its destination partition plus rows of the other partitions.

With the destination type cut into partitions, a bucket's positives would only ever meet negatives from
their own destination partition, so a source is never pushed away from the rest of the catalogue, which
full-ranking retrieval then exposes. :class:`BucketNegatives` appends to the loaded partition a sample of
rows of the *other* partitions (with their Adagrad state), draws uniform negatives over the whole
destination type (own rows with probability ``local / total``, pool rows for the rest) and, after the
bucket, adds the pool rows' changes to their partitions, so every destination receives its share of
negative updates as in unpartitioned training. (Freezing the pool instead was measured to lose recall: the own
partition then gets a fraction of the negative updates it would get in memory.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

RowReader = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (partition, rows) -> (table, state) rows
RowWriter = Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]  # (partition, rows, table, state changes)


@dataclass
class BucketNegatives:
    """The destination table a bucket trains on: ``local`` rows of its own partition, then the pool rows."""

    table: torch.Tensor  # (local + pool, C, n); with a pool a copy, written back by :meth:`write_back`
    state: torch.Tensor  # (local + pool,) row-wise Adagrad state
    local: int
    total: int  # size of the whole destination type
    pool_rows: dict[int, np.ndarray] = field(default_factory=dict)  # partition -> its rows, in table order
    pool_start: tuple[torch.Tensor, torch.Tensor] | None = None  # the pool rows and state as read

    @property
    def pool(self) -> int:
        return len(self.table) - self.local

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` row indices, each uniform over the whole destination type (pool rows stand in for the others)."""
        if self.pool == 0:
            return rng.integers(0, self.local, size=n, dtype=np.int64)
        k = int(rng.binomial(n, self.local / self.total))
        return np.concatenate([rng.integers(0, self.local, size=k, dtype=np.int64),
                               rng.integers(self.local, len(self.table), size=n - k, dtype=np.int64)])

    def uniform_prob(self) -> np.ndarray:
        """Probability of each row under one :meth:`draw` (sums to 1; log-Q uses it)."""
        p = np.full(len(self.table), 1.0 / self.total, np.float64)
        if self.pool:
            p[self.local:] = (self.total - self.local) / (self.total * self.pool)
        return p.astype(np.float32)

    def write_back(self, table: torch.Tensor, state: torch.Tensor, write: RowWriter) -> None:
        """Copy the own-partition rows into ``table``/``state`` and hand each partition's pool-row *changes* to
        ``write``, which adds them (so updates the rows got elsewhere meanwhile, as sources, are kept)."""
        if not self.pool:  # trained in place
            return
        table.copy_(self.table[:self.local])
        state.copy_(self.state[:self.local])
        d_tab = (self.table[self.local:] - self.pool_start[0]).numpy()
        d_state = (self.state[self.local:] - self.pool_start[1]).numpy()
        at = 0
        for p, rows in self.pool_rows.items():
            write(p, rows, d_tab[at:at + len(rows)], d_state[at:at + len(rows)])
            at += len(rows)


def pool_rows(sizes: list[int], own: int, size: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Sorted local rows to take from each partition other than ``own``: all of them when they fit in
    ``size``, else a sample without replacement split in proportion to the partitions' sizes."""
    others = [p for p in range(len(sizes)) if p != own and sizes[p] > 0]
    n_other = sum(sizes[p] for p in others)
    if n_other <= size:
        return {p: np.arange(sizes[p], dtype=np.int64) for p in others}
    picked = np.sort(rng.choice(n_other, size=size, replace=False))
    bounds = np.concatenate([[0], np.cumsum([sizes[p] for p in others])])
    part = np.searchsorted(bounds, picked, side="right") - 1
    return {p: picked[part == k] - bounds[k] for k, p in enumerate(others) if (part == k).any()}


def bucket_negatives(table: torch.Tensor, state: torch.Tensor, sizes: list[int], own: int, size: int,
                     read: RowReader | None, rng: np.random.Generator) -> BucketNegatives:
    """The own partition's ``table``/``state`` extended by up to ``size`` rows of the other partitions."""
    total = int(sum(sizes))
    rows = pool_rows(sizes, own, size, rng) if size > 0 and len(sizes) > 1 else {}
    if not rows:
        return BucketNegatives(table, state, len(table), total)
    got = [read(p, r) for p, r in rows.items()]
    pool = torch.from_numpy(np.concatenate([np.asarray(t, np.float32) for t, _ in got])).to(table.dtype)
    pool_state = torch.from_numpy(np.concatenate([np.asarray(s, np.float32) for _, s in got])).to(state.dtype)
    return BucketNegatives(torch.cat([table, pool]), torch.cat([state, pool_state]), len(table), total, rows,
                           (pool, pool_state))


__all__ = ["BucketNegatives", "bucket_negatives", "pool_rows"]
