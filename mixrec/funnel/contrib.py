"""Quota unions of per-user candidate lists and each source's contribution to the hits (vectorised)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def quota_union(lists: Sequence[np.ndarray], quotas: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Union per row of the first ``quotas[s]`` columns of each (B, k_s) list (item -1 = padding).

    Returns (items, via): items (B, sum quotas) in source order, then rank order, each item kept at its
    first occurrence and later repeats set to -1; via (B, sum quotas) int64 bit mask of every source whose
    quota list holds the item (0 where the item is -1).
    """
    if len(lists) != len(quotas):
        raise ValueError(f"one quota per list: {len(lists)} lists, {len(quotas)} quotas")
    cut = [np.asarray(l_, np.int64)[:, :q] for l_, q in zip(lists, quotas)]
    items = np.concatenate(cut, axis=1)
    bits = np.concatenate([np.full(c.shape, 1 << s, np.int64) for s, c in enumerate(cut)], axis=1)
    b, n = items.shape
    order = np.lexsort((np.broadcast_to(np.arange(n), (b, n)), items), axis=1) if n else np.zeros((b, 0), int)
    it = np.take_along_axis(items, order, 1)
    bt = np.take_along_axis(bits, order, 1)
    new = np.ones_like(it, dtype=bool)
    new[:, 1:] = it[:, 1:] != it[:, :-1]
    group = np.cumsum(new, axis=1) - 1 + (np.arange(b) * n)[:, None]  # run id of each sorted position
    ored = np.zeros(b * n, np.int64)
    np.bitwise_or.at(ored, group.ravel(), bt.ravel())
    first_items = np.where(new, it, -1)
    first_via = np.where(new & (it >= 0), ored[group], 0)
    out_i, out_v = np.full((b, n), -1, np.int64), np.zeros((b, n), np.int64)
    np.put_along_axis(out_i, order, first_items, 1)
    np.put_along_axis(out_v, order, first_via, 1)
    return out_i, out_v


def contributions(items: np.ndarray, via: np.ndarray, names: Sequence[str], truth: tuple[np.ndarray, np.ndarray],
                  ) -> dict[str, dict[str, float]]:
    """Per source: ``alone`` hits (held-out items in its list), ``only`` hits (in its list and no other),
    ``users_alone`` (users with at least one hit from it); plus ``blend`` for the union.

    ``items``/``via`` as returned by :func:`quota_union` (or a funnel result), row b the user of truth row
    b; ``truth`` = (indptr, items) CSR of held-out items per row.
    """
    indptr, t_items = (np.asarray(a, np.int64) for a in truth)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    n_items = int(max(items.max(initial=-1), t_items.max(initial=-1))) + 1
    keep = items >= 0
    keys = (np.nonzero(keep)[0] * n_items + items[keep])
    k_via = via[keep]
    order = np.argsort(keys, kind="stable")
    keys, k_via = keys[order], k_via[order]
    t_keys = rows * n_items + t_items
    pos = np.searchsorted(keys, t_keys)
    found = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == t_keys) if len(keys) else \
        np.zeros(len(t_keys), bool)
    hit_via = np.where(found, k_via[np.minimum(pos, max(len(keys) - 1, 0))] if len(keys) else 0, 0)
    out: dict[str, dict[str, float]] = {}
    for s, name in enumerate(names):
        mine = (hit_via >> s & 1).astype(bool)
        only = mine & (hit_via == (1 << s))
        out[name] = {"alone": int(mine.sum()), "only": int(only.sum()),
                     "users_alone": int(len(np.unique(rows[mine])))}
    out["blend"] = {"alone": int(found.sum()), "only": 0, "users_alone": int(len(np.unique(rows[found])))}
    return out


def as_table(stats: Mapping[str, Mapping[str, float]], n_users: int) -> str:
    """Plain-text table of :func:`contributions` with hit rates over ``n_users``."""
    lines = [f"  {'source':<10} {'hits alone':>10} {'only it':>8} {'HR alone':>9}"]
    for name, s in stats.items():
        lines.append(f"  {name:<10} {s['alone']:>10} {s['only']:>8} {s['users_alone'] / max(n_users, 1):>9.4f}")
    return "\n".join(lines)
