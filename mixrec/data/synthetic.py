"""Synthetic multi-relation interaction logs with planted interest clusters, for tests and demos."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mixrec.io import atomic_file

CLUSTER_EXPONENT = 0.8  # popularity skew across clusters when users pick their interests
OVERSAMPLE = 2.0  # draws per requested edge before removing repeated (user, item) clicks
LIKE_PROB = (0.5, 0.06)  # chance a click is also a "like": on the strongest interest, elsewhere
CHUNK_DRAWS = 1 << 21  # bound on item draws generated at once
T0 = 1_600_000_000  # first possible timestamp (seconds)


@dataclass
class SyntheticSpec:
    """Size and shape of a synthetic log; see :func:`generate`."""

    n_users: int = 4000
    n_items: int = 3000
    n_clusters: int = 24
    interests_per_user: tuple[int, int] = (2, 4)
    edges_per_user: tuple[int, int] = (20, 60)
    relations: tuple[str, ...] = ("click", "like")
    popularity_exponent: float = 1.0
    noise: float = 0.05
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.interests_per_user
        elo, ehi = self.edges_per_user
        if min(self.n_users, self.n_items, self.n_clusters) < 1 or self.n_clusters > self.n_items:
            raise ValueError("need n_users, n_items >= 1 and 1 <= n_clusters <= n_items")
        if not (1 <= lo <= hi) or not (1 <= elo <= ehi):
            raise ValueError("interests_per_user and edges_per_user must be (low, high) with 1 <= low <= high")
        if not self.relations or len(set(self.relations)) != len(self.relations):
            raise ValueError(f"relations must be distinct and non-empty; got {self.relations}")
        if not (0.0 <= self.noise <= 1.0 and 0.0 <= self.test_fraction < 1.0):
            raise ValueError("need 0 <= noise <= 1 and 0 <= test_fraction < 1")


@dataclass
class Planted:
    """The hidden structure behind a generated log (row-aligned with the log where per edge)."""

    item_ids: np.ndarray  # (n_items,) int64 raw item ids
    item_cluster: np.ndarray  # (n_items,) int64
    interests: np.ndarray  # (n_users, max_k) int64 cluster ids, strongest first, -1 padded
    proportions: np.ndarray  # (n_users, max_k) float64, descending, 0 padded
    edge_user: np.ndarray  # (E,) dense user index of each log row
    edge_cluster: np.ndarray  # (E,) interest cluster that produced the row, -1 for noise


def generate(spec: SyntheticSpec) -> tuple[pa.Table, pa.Table]:
    """The interaction log and the item label table (item_id, genres) of ``spec``; deterministic in ``spec.seed``.

    Items are split evenly over clusters ("topicNN" labels). Each user has ``interests_per_user``
    distinct interest clusters (popular clusters more likely) with Dirichlet(1) proportions; each click picks an
    interest by proportion, then an item of that cluster with Zipf(``popularity_exponent``)
    popularity, or with probability ``noise`` a uniform item. Repeated (user, item) clicks are
    dropped, so a user gets at most ``edges_per_user`` distinct clicked items. Every further
    relation r >= 1 ("like") marks a subset of clicks, with probability 0.5/r on the user's
    strongest interest and 0.06/r elsewhere, logged right after its click. Per user the last
    ``test_fraction`` of events by timestamp (at least one when the user has >= 5) are "test".
    """
    log, items, _ = generate_planted(spec)
    return log, items


def generate_planted(spec: SyntheticSpec) -> tuple[pa.Table, pa.Table, Planted]:
    """Like :func:`generate`, also returning the :class:`Planted` truth."""
    rng = np.random.default_rng(spec.seed)
    item_ids, cluster, sampler = _items(spec, rng)
    interests, props = _interests(spec, rng)
    n_edges = rng.integers(spec.edges_per_user[0], spec.edges_per_user[1] + 1, spec.n_users)
    parts = []
    for lo, hi in _user_chunks(n_edges):
        user, item, clus = _clicks(spec, rng, sampler, interests[lo:hi], props[lo:hi], n_edges[lo:hi])
        parts.append(_with_relations(spec, rng, user + lo, item, clus, interests[lo:hi, 0][user]))
    user, item, clus, rel = (np.concatenate(cols) for cols in zip(*parts))
    ts = _timestamps(rng, user, spec.n_users)
    test = _test_mask(user, spec.n_users, spec.test_fraction)
    log = pa.table({
        "user_id": pc.take(user_names(spec.n_users), pa.array(user)),
        "item_id": pa.array(item_ids[item]),
        "event": pc.take(pa.array(list(spec.relations)), pa.array(rel)),
        "timestamp": pa.array(ts),
        "split": pc.take(pa.array(["train", "test"]), pa.array(test.astype(np.int64))),
    })
    width = max(2, len(str(spec.n_clusters - 1)))
    items = pa.table({"item_id": pa.array(item_ids),
                      "genres": pc.take(pa.array([f"topic{c:0{width}d}" for c in range(spec.n_clusters)]),
                                        pa.array(cluster))})
    return log, items, Planted(item_ids, cluster, interests, props, user, clus)


def write(spec: SyntheticSpec, out_dir: str | Path) -> dict[str, Path]:
    """Write ``events.parquet`` and ``items.tsv`` (item_id, genres) into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    log, items = generate(spec)
    paths = {"events": out_dir / "events.parquet", "items": out_dir / "items.tsv"}
    with atomic_file(paths["events"]) as fh:
        pq.write_table(log, fh)
    with atomic_file(paths["items"]) as fh:
        pacsv.write_csv(items, fh, pacsv.WriteOptions(delimiter="\t", quoting_style="none"))
    return paths


def user_names(n_users: int) -> pa.Array:
    """Raw user ids "u000000", "u000001", ... (zero-padded to at least 6 digits)."""
    width = max(6, len(str(n_users - 1)))
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(n_users)), pa.string()), width, "0")
    return pc.binary_join_element_wise("u", digits, "")


# ---------------------------------------------------------------- items and users
def _items(spec: SyntheticSpec, rng: np.random.Generator):
    """Raw ids, cluster of each item, and a sampler (item order, offset CDF, cluster bounds)."""
    item_ids = np.cumsum(rng.integers(1, 8, spec.n_items)).astype(np.int64)  # distinct, with gaps
    cluster = np.empty(spec.n_items, dtype=np.int64)
    cluster[rng.permutation(spec.n_items)] = np.arange(spec.n_items) % spec.n_clusters
    order = np.lexsort((rng.random(spec.n_items), cluster))  # grouped by cluster, random rank inside
    bounds = np.concatenate([[0], np.cumsum(np.bincount(cluster, minlength=spec.n_clusters))])
    rank = np.arange(spec.n_items) - bounds[cluster[order]]
    weight = (rank + 1.0) ** -spec.popularity_exponent
    cum = np.cumsum(weight)
    start_cum = np.concatenate([[0.0], cum])[bounds[:-1]]
    total = cum[bounds[1:] - 1] - start_cum
    c = cluster[order]
    cdf = (cum - start_cum[c]) / total[c]
    cdf[bounds[1:] - 1] = 1.0
    return item_ids, cluster, (order, c + cdf, bounds)


def _interests(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Distinct interest clusters per user (Gumbel top-k on cluster popularity), strongest first."""
    lo, hi = (min(v, spec.n_clusters) for v in spec.interests_per_user)
    k = rng.integers(lo, hi + 1, spec.n_users)
    logw = -CLUSTER_EXPONENT * np.log(np.arange(1, spec.n_clusters + 1))
    keys = logw + rng.gumbel(size=(spec.n_users, spec.n_clusters))
    chosen = np.argpartition(-keys, hi - 1, axis=1)[:, :hi]  # order is reset by proportion below
    valid = np.arange(hi) < k[:, None]
    props = rng.gamma(1.0, size=(spec.n_users, hi)) * valid
    props /= props.sum(axis=1, keepdims=True)
    desc = np.argsort(-props, axis=1, kind="stable")
    props = np.take_along_axis(props, desc, axis=1)
    chosen = np.where(np.take_along_axis(valid, desc, axis=1), np.take_along_axis(chosen, desc, axis=1), -1)
    return chosen.astype(np.int64), props


def _user_chunks(n_edges: np.ndarray):
    """(lo, hi) user ranges whose oversampled draws stay under CHUNK_DRAWS."""
    draws = np.cumsum(np.ceil(n_edges * OVERSAMPLE) + 4)
    cuts = np.searchsorted(draws, np.arange(CHUNK_DRAWS, draws[-1], CHUNK_DRAWS), side="right")
    edges = np.unique(np.concatenate([[0], cuts, [len(n_edges)]]))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


# ---------------------------------------------------------------- edges
def _clicks(spec, rng, sampler, interests, props, n_edges):
    """Distinct clicked items of a chunk of users: (local user, item index, cluster or -1 for noise)."""
    order, offset_cdf, bounds = sampler
    n_users = interests.shape[0]
    draws = (np.ceil(n_edges * OVERSAMPLE) + 4).astype(np.int64)
    user = np.repeat(np.arange(n_users), draws)
    n_int = (interests >= 0).sum(axis=1)
    slot_cdf = np.where(np.arange(props.shape[1]) >= n_int[:, None] - 1, 1.0, np.cumsum(props, axis=1))
    slot = (rng.random(user.size)[:, None] >= slot_cdf[user]).sum(axis=1)  # < n_int: last cdf is 1
    clus = interests[user, slot]
    pos = np.searchsorted(offset_cdf, clus + rng.random(user.size), side="right")
    item = order[np.clip(pos, bounds[clus], bounds[clus + 1] - 1)]
    noisy = rng.random(user.size) < spec.noise
    item = np.where(noisy, rng.integers(0, spec.n_items, user.size), item)
    clus = np.where(noisy, -1, clus)
    _, first = np.unique(user * spec.n_items + item, return_index=True)
    first.sort()
    user, item, clus = user[first], item[first], clus[first]
    starts = np.searchsorted(user, np.arange(n_users))
    keep = np.arange(user.size) - starts[user] < n_edges[user]
    return user[keep], item[keep], clus[keep]


def _with_relations(spec, rng, user, item, clus, strongest):
    """Clicks plus, per further relation, a subset placed right after its click (user-grouped order)."""
    n_rel = len(spec.relations)
    seq = np.arange(user.size) * n_rel
    cols = [(user, item, clus, np.zeros(user.size, dtype=np.int64), seq)]
    for r in range(1, n_rel):
        p = np.where(clus == strongest, LIKE_PROB[0], LIKE_PROB[1]) / r
        m = rng.random(user.size) < p
        cols.append((user[m], item[m], clus[m], np.full(int(m.sum()), r, dtype=np.int64), seq[m] + r))
    user, item, clus, rel, key = (np.concatenate(c) for c in zip(*cols))
    o = np.argsort(key, kind="stable")
    return user[o], item[o], clus[o], rel[o]


def _timestamps(rng: np.random.Generator, user: np.ndarray, n_users: int) -> np.ndarray:
    """Strictly increasing int64 timestamps within each user (rows grouped by user, in event order)."""
    gaps = rng.integers(60, 86_400, user.size)
    total = np.cumsum(gaps)
    starts = np.searchsorted(user, np.arange(n_users))
    before = np.concatenate([[0], total])[starts]  # cumulative gap before each user's first row
    t_start = T0 + rng.integers(0, 30 * 86_400, n_users)
    return (t_start[user] + total - before[user]).astype(np.int64)


def _test_mask(user: np.ndarray, n_users: int, fraction: float) -> np.ndarray:
    """True for each user's last ``fraction`` of rows (floor, at least 1 for users with >= 5 rows)."""
    counts = np.bincount(user, minlength=n_users)
    n_test = np.floor(counts * fraction).astype(np.int64)
    if fraction > 0:
        n_test = np.where(counts >= 5, np.maximum(n_test, 1), n_test)
    starts = np.searchsorted(user, np.arange(n_users))
    rank = np.arange(user.size) - starts[user]
    return rank >= (counts - n_test)[user]
