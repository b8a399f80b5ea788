"""Random walks with restart on the user-item interaction graph (Pixie-style), vectorised over walkers.

Every step moves all walkers at once: item -> a uniformly drawn user of that item -> a uniformly
drawn item of that user; the arrival item gets a visit (credited to the walker's seed), then the
walker jumps back to its seed with probability ``restart``. As in Pixie, the walk stops early once
``n_p`` items have at least ``n_v`` visits each. The graph is a pair of numpy CSRs (no scipy).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixrec.evaluate.metrics import csr_from_pairs
from mixrec.funnel.sources import CandidateSet, aggregate


@dataclass
class BipartiteGraph:
    """Both directions of the interaction graph as CSRs (duplicate edges merged)."""

    item_ptr: np.ndarray  # (n_items + 1,)
    item_users: np.ndarray
    user_ptr: np.ndarray  # (n_users + 1,)
    user_items: np.ndarray

    @classmethod
    def from_edges(cls, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> "BipartiteGraph":
        ip, iu = csr_from_pairs(items, users, n_items)
        up, ui = csr_from_pairs(users, items, n_users)
        return cls(ip, iu, up, ui)

    @property
    def n_items(self) -> int:
        return int(self.item_ptr.shape[0] - 1)


@dataclass
class WalkResult:
    """Visit counts per (seed index, item) pair (sparse), the steps taken and whether it stopped early."""

    seed_idx: np.ndarray
    items: np.ndarray
    visits: np.ndarray
    steps: int
    early_stopped: bool

    def totals(self, n_items: int) -> np.ndarray:
        return np.bincount(self.items, weights=self.visits, minlength=n_items)


def walk_step(g: BipartiteGraph, pos: np.ndarray, home: np.ndarray, u: np.ndarray,
              restart: float) -> tuple[np.ndarray, np.ndarray]:
    """One step for all walkers given uniforms ``u`` (3, W): (arrival item or -1 if stuck, next position)."""
    deg_i = g.item_ptr[pos + 1] - g.item_ptr[pos]
    ok = deg_i > 0
    ui = g.item_ptr[pos] + np.minimum((u[1] * deg_i).astype(np.int64), np.maximum(deg_i - 1, 0))
    user = g.item_users[np.where(ok, ui, 0)] if len(g.item_users) else np.zeros_like(pos)
    deg_u = g.user_ptr[user + 1] - g.user_ptr[user]
    ok &= deg_u > 0
    uj = g.user_ptr[user] + np.minimum((u[2] * deg_u).astype(np.int64), np.maximum(deg_u - 1, 0))
    arrive = np.where(ok, g.user_items[np.where(ok, uj, 0)] if len(g.user_items) else -1, -1)
    nxt = np.where(ok & (u[0] >= restart), arrive, home)
    return arrive, nxt


def random_walk(g: BipartiteGraph, seeds: np.ndarray, walkers_per_seed: np.ndarray, restart: float = 0.5,
                max_steps: int = 20, n_p: int | None = None, n_v: int = 4,
                rng: np.random.Generator | None = None) -> WalkResult:
    """Run ``walkers_per_seed[i]`` walkers from ``seeds[i]`` for up to ``max_steps`` steps.

    Draws ``rng.random((3, W))`` once per step (restart, user choice, item choice), so a loop over
    walkers with the same draws reproduces the result exactly. Early stopping (Pixie): after a step,
    stop when at least ``n_p`` items have ``n_v`` or more visits (``n_p=None`` disables it).
    """
    rng = rng or np.random.default_rng(0)
    seeds = np.asarray(seeds, np.int64)
    home_idx = np.repeat(np.arange(len(seeds)), np.asarray(walkers_per_seed, np.int64))
    home = seeds[home_idx]
    pos = home.copy()
    n_items = g.n_items
    totals = np.zeros(n_items, np.int64)
    keys = []
    steps, early = 0, False
    for steps in range(1, max_steps + 1):
        arrive, pos = walk_step(g, pos, home, rng.random((3, len(home))), restart)
        hit = arrive >= 0
        keys.append(home_idx[hit] * n_items + arrive[hit])
        totals += np.bincount(arrive[hit], minlength=n_items)
        if n_p is not None and int((totals >= n_v).sum()) >= n_p:
            early = True
            break
    if not keys:
        steps = 0
    uk, cnt = np.unique(np.concatenate(keys) if keys else np.zeros(0, np.int64), return_counts=True)
    return WalkResult(uk // n_items, uk % n_items, cnt.astype(np.float64), steps, early)


def allocate_walkers(weights: np.ndarray, degrees: np.ndarray, total: int) -> np.ndarray:
    """Pixie's allocation: walkers per seed proportional to weight * sqrt(degree) (at least one each)."""
    w = np.asarray(weights, np.float64) * np.sqrt(np.maximum(np.asarray(degrees, np.float64), 1.0))
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / max(len(w), 1))
    return np.maximum(1, np.floor(w * total)).astype(np.int64)


def walk_expand(g: BipartiteGraph, parent: CandidateSet, k: int, walkers: int = 2000, restart: float = 0.5,
                max_steps: int = 20, n_p: int | None = None, n_v: int = 4, exclude_seeds: bool = True,
                rng: np.random.Generator | None = None) -> tuple[CandidateSet, WalkResult]:
    """Walk from the parent set's items (weighted by their scores); the ``k`` most visited items.

    Scores are visit shares; each item's seed is the parent item whose walkers visited it most.
    """
    if len(parent) == 0:
        return CandidateSet.empty(), WalkResult(*(np.zeros(0, np.int64),) * 2, np.zeros(0), 0, False)
    weights = np.maximum(parent.scores, 0) + 1e-12
    deg = g.item_ptr[parent.items + 1] - g.item_ptr[parent.items]
    res = random_walk(g, parent.items, allocate_walkers(weights, deg, walkers), restart, max_steps, n_p, n_v, rng)
    keep = ~np.isin(res.items, parent.items) if exclude_seeds else np.ones(len(res.items), bool)
    total = max(res.visits.sum(), 1.0)
    out = aggregate(res.items[keep], res.visits[keep] / total, parent.items[res.seed_idx[keep]], "walk")
    return out.head(k), res

