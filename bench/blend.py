"""The funnel's blend of mixture + graph filter + history + popularity on tmall_mb (or ml1m): what each source adds.

    python bench/blend.py                                    # tmall_mb, all test users
    python bench/blend.py --users 2000 --epochs 5 --filter-params '{"own": 1.0, "stage_bonus": -0.5}'
    python bench/blend.py --graph-only --users 500                # the graph source alone: dense vs sparse route

One funnel query per test user, ``mixture(k) | graph(k) | history(n) | popular(k)`` unioned with quotas,
the user's seen target items removed (tmall_mb: only buy-train). Per source: the held-out items its
quota list holds (``hits alone``), those no other source holds (``only it``) and its hit rate alone;
the blend's candidate-set hit rate against the best single source, and its latency per user (p50/p99,
in process, one user at a time). Mixture: mixrec's defaults trained for ``--epochs`` (or ``--model``);
graph filter: the cascade on tmall_mb (``--filter-params``, tuned by bench/filters.py on validation),
GF-CF on ml1m; or a fitted directory (``--filter``).

``--graph-only`` trains no mixture and times the graph source alone (the funnel's ``graph(k)``, k the
largest quota) per user, in process, one thread, twice per user in alternating order: with the filters'
dense route forced (``SPARSE_SHARE = 0``: every walk step two products over all nonzeros, as before the
sparse route existed) and with the default route; both must return the same items and scores.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import DATA, DATASETS, Bench  # noqa: E402

from mixrec.config import Config  # noqa: E402
from mixrec.filters import load_filter, make_filter  # noqa: E402
from mixrec.funnel import Funnel, Query  # noqa: E402
from mixrec.funnel.contrib import as_table, contributions  # noqa: E402
from mixrec.filters import base as filter_base  # noqa: E402
from mixrec.funnel.sources import SOURCE_CODE, graph_source  # noqa: E402
from mixrec.model.mixture import MixtureModel  # noqa: E402
from mixrec.serve.server import configure_threads  # noqa: E402
from mixrec.train import train  # noqa: E402

NAMES = ("mixture", "graph", "history", "popular")


def blend_query(quotas: list[int], seen: list[str] | bool) -> Query:
    k = max(quotas)
    subs = [Query.source().graph(k=k), Query.source().history(n=quotas[2]), Query.source().popular(k=k)]
    return Query.source().mixture(k=k, exclude_seen=seen).union(*subs, weights=[1.0] * 4, quotas=quotas) \
        .filter(exclude_seen=seen)


def graph_latency(filt, users: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Seconds per user of the graph source with the dense route forced and with the default one, interleaved.

    Raises if the two routes return different items or scores for any user.
    """
    share = filter_base.SPARSE_SHARE
    routes = {"dense": 0.0, "default": share}
    lat = {r: np.zeros(len(users)) for r in routes}
    try:
        for r, v in routes.items():  # warm both
            filter_base.SPARSE_SHARE = v
            graph_source(filt, int(users[0]), k)
        for j, u in enumerate(users):
            got = {}
            for r in (list(routes) if j % 2 == 0 else list(routes)[::-1]):
                filter_base.SPARSE_SHARE = routes[r]
                t = time.perf_counter()
                got[r] = graph_source(filt, int(u), k)
                lat[r][j] = time.perf_counter() - t
            if not (np.array_equal(got["dense"].items, got["default"].items)
                    and np.array_equal(got["dense"].scores, got["default"].scores)):
                raise AssertionError(f"user {u}: the sparse route changed the graph source's candidates")
    finally:
        filter_base.SPARSE_SHARE = share
    return lat


def percentiles(sec: np.ndarray) -> dict[str, float]:
    return {f"p{q}_ms": float(np.percentile(sec, q) * 1e3) for q in (50, 95, 99)}


def show_graph_only(a: argparse.Namespace, filt, users: np.ndarray, fit_s: float) -> None:
    """--graph-only: print (and write with --rows) the graph source's latency percentiles on both routes."""
    k = max(a.quotas)
    figs = {r: percentiles(v) for r, v in graph_latency(filt, users, k).items()}
    print(f"{a.dataset}: graph source alone ({filt.kind}, k {k}, fitted {fit_s:.1f}s {filt.params}), "
          f"{len(users):,} users, one at a time, same candidates on both routes")
    for r, f in figs.items():
        print(f"  {r + ' route':<14} " + ", ".join(f"{q[:-3]} {v:.2f} ms" for q, v in f.items()))
    if a.rows:
        Path(a.rows).parent.mkdir(parents=True, exist_ok=True)
        Path(a.rows).write_text(json.dumps({"users": len(users), "k": k, "graph_only": figs,
                                            "sparse_share": filter_base.SPARSE_SHARE}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="tmall_mb", choices=["tmall_mb", "ml1m"])
    p.add_argument("--quotas", type=int, nargs=4, default=[50, 50, 30, 10], metavar=NAMES)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--model", default=None, help="a trained mixrec model directory (default: train one)")
    p.add_argument("--filter", default=None, help="a fitted graph-filter directory (default: fit one)")
    p.add_argument("--filter-params", default='{"restart": 0.5, "carry": 0.6, "own": 4.0, "stage_bonus": 0.0, "conv_exp": 0.5, "smoothing": 2.0}')
    p.add_argument("--users", type=int, default=None, help="a seeded sample of test users (default: all)")
    p.add_argument("--work", default=str(ROOT / "runs" / "blend"))
    p.add_argument("--rows", default=None, help="write the figures as JSON")
    p.add_argument("--graph-only", action="store_true",
                   help="no mixture: time the graph source alone, dense route forced vs default (see above)")
    a = p.parse_args()
    print("command: python bench/blend.py " + " ".join(sys.argv[1:]), flush=True)
    if not (DATA / DATASETS[a.dataset]["file"]).is_file():
        print(f"skipping {a.dataset}: not found")
        return
    b = Bench(a.dataset, Path(a.work))
    t0 = time.perf_counter()
    model = None if a.graph_only else MixtureModel.load(a.model) if a.model else train(
        b.eval_data, Config().with_overrides({"epochs": a.epochs}), b.work / "mixture", progress=False)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if a.filter:
        filt = load_filter(a.filter)
    else:
        kind, params = ("cascade", json.loads(a.filter_params)) if a.dataset == "tmall_mb" else ("gfcf", {})
        rels = [r for r in ("view", "cart", "buy")] if kind == "cascade" else [r.name for r in b.data.relations]
        filt = make_filter(kind, **params).fit(b.eval_data, relations=rels, target=b.target)
    fit_s = time.perf_counter() - t0
    configure_threads()  # one thread per query, as the server runs them (FAISS's OpenMP pool costs 20x at p50 under load)
    users = b.users if a.users is None else np.sort(np.random.default_rng(0).choice(b.users, a.users, False))
    if a.graph_only:
        show_graph_only(a, filt, users, fit_s)
        return
    funnel = Funnel(model, filters={"default": filt})
    seen = [b.target] if b.spec["exclude"] == "relation" else True
    q = blend_query(a.quotas, seen)
    rows = np.searchsorted(b.users, users)
    width = sum(a.quotas)
    items, via = np.full((len(users), width), -1, np.int64), np.zeros((len(users), width), np.int64)
    lat = np.zeros(len(users))
    funnel.run(q, int(users[0]))  # warm caches (seen, history, popularity tables)
    for j, u in enumerate(users):
        t = time.perf_counter()
        c = funnel.run(q, int(u), validate=False).candidates
        lat[j] = time.perf_counter() - t
        items[j, :len(c)], via[j, :len(c)] = c.items, c.via
    # funnel via bits are SOURCE_CODE positions; contributions reads bit s as NAMES[s]
    remap = np.zeros_like(via)
    for s, n in enumerate(NAMES):
        remap |= ((via >> SOURCE_CODE[n]) & 1) << s
    indptr, t_items = b.truth
    sub_ptr = np.r_[0, np.cumsum(indptr[rows + 1] - indptr[rows])]
    sub_items = np.concatenate([t_items[indptr[r]:indptr[r + 1]] for r in rows])
    stats = contributions(items, remap, NAMES, (sub_ptr, sub_items))
    n = len(users)
    print(f"{a.dataset}: {n:,} test users, quotas {dict(zip(NAMES, a.quotas))} (<= {width} candidates), "
          f"mixture trained {train_s:.0f}s, {filt.kind} fitted {fit_s:.1f}s {filt.params}")
    print(as_table(stats, n))
    best = max(NAMES, key=lambda s: stats[s]["users_alone"])
    print(f"  blend candidate HR {stats['blend']['users_alone'] / n:.4f} = "
          f"x{stats['blend']['users_alone'] / max(stats[best]['users_alone'], 1):.3f} the best single source ({best})")
    print(f"  latency per user: p50 {np.percentile(lat, 50) * 1e3:.2f} ms, p99 {np.percentile(lat, 99) * 1e3:.2f} ms")
    if a.rows:
        Path(a.rows).parent.mkdir(parents=True, exist_ok=True)
        Path(a.rows).write_text(json.dumps({"stats": stats, "users": n, "quotas": a.quotas,
                                            "p50_ms": float(np.percentile(lat, 50) * 1e3),
                                            "p99_ms": float(np.percentile(lat, 99) * 1e3)}, indent=1))


if __name__ == "__main__":
    main()
