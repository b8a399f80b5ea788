"""The funnel's blend of mixture + graph filter + history + popularity on tmall_mb (or ml1m): what each source adds.

    python bench/blend.py                                    # tmall_mb, all test users
    python bench/blend.py --users 2000 --epochs 5 --filter-params '{"own": 1.0, "stage_bonus": -0.5}'
    python bench/blend.py --model MODEL_DIR --ranker --users 300 --ranker-users 300   # + the funnel's ranker
    python bench/blend.py --graph-only --users 500                # the graph source alone: dense, sparse, table

One funnel query per test user, ``mixture(k) | graph(k) | history(n) | popular(k)`` unioned with quotas,
the user's seen target items removed (tmall_mb: only buy-train). Per source: the held-out items its
quota list holds (``hits alone``), those no other source holds (``only it``) and its hit rate alone;
the blend's candidate-set hit rate against the best single source. Mixture: mixrec's defaults trained
for ``--epochs`` (or ``--model``, a directory trained on this dataset); graph filter: the cascade on
tmall_mb (``--filter-params``, tuned by bench/filters.py on validation), GF-CF on ml1m; or a fitted
directory (``--filter``). The filter gets a per-user top-``--table-k`` table (built at fit time, or
now when ``--filter`` has none that long; 0: none), so the graph source of a training user is a lookup.

Ordered lists: HR@10 and NDCG@10 of the blend in its own order (reciprocal-rank blend) and, with
``--ranker``, reordered by the funnel's multi-task ranker (``.rank(...)``, final stage over every
candidate), fitted as bench/funnel.py fits it (bench/blend_rank.py) on ``--ranker-users`` seeded
training users (``--ranker-labels one``: one held-out target edge per user instead of ~10% of every
relation's; ``--ranker-features scalar``: no embedding inputs; ``--ranker-wide``: the source-rank ranker
also gets a linear path from the log ranks to its heads), whose vectors are folded in from the feature
part (the served model saw the held-out labels; ``--no-ranker-foldin`` keeps them; ``--ranker-retrain``
fits the ranker on a model trained on the feature part alone, since folding in leaves the item vectors
that saw the labels), once on its features alone and once also reading each candidate's reciprocal rank
in every source's list (``source_features``); the graph source's own top 10 is the reference. Latency
per user (p50/p99, in process, one user at a time, one thread as the server runs queries; elapsed and
the thread's CPU time, which a busy machine does not inflate) of every query with the table and with
the graph source computed, in rotating order per user; the run stops if the table changes any user's
candidates or scores.

``--graph-only`` trains no mixture and times the graph source alone (the funnel's ``graph(k)``, k the
largest quota) per user, in process, one thread, in alternating order: with the filters' dense route
forced (``SPARSE_SHARE = 0``: every walk step two products over all nonzeros, as before the sparse route
existed), with the default route, and read from the table; all must return the same items and scores.
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

from blend_rank import LABELS, VALUE, fit_blend_ranker, list_metrics, percentiles, timed_runs  # noqa: E402
from quality import DATA, DATASETS, Bench  # noqa: E402

from mixrec.config import Config  # noqa: E402
from mixrec.csr import csr_from_pairs, csr_rows  # noqa: E402
from mixrec.filters import base as filter_base  # noqa: E402
from mixrec.filters import load_filter, make_filter  # noqa: E402
from mixrec.funnel import Funnel, Query  # noqa: E402
from mixrec.funnel.contrib import as_table, contributions  # noqa: E402
from mixrec.funnel.features import RANKER_FEATURE_SETS  # noqa: E402
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
    """Seconds per user of the graph source with the dense route forced, the default one and (when the filter
    has one) its table, interleaved. Raises if the routes return different items or scores for any user."""
    share, table = filter_base.SPARSE_SHARE, filt.table
    routes = {"dense": (0.0, None), "default": (share, None)}
    if table is not None and table.k >= k:
        routes["table"] = (share, table)
    lat = {r: np.zeros(len(users)) for r in routes}
    try:
        for r, (v, t) in routes.items():  # warm every route
            filter_base.SPARSE_SHARE, filt.table = v, t
            graph_source(filt, int(users[0]), k)
        for j, u in enumerate(users):
            got = {}
            for r in (list(routes) if j % 2 == 0 else list(routes)[::-1]):
                filter_base.SPARSE_SHARE, filt.table = routes[r]
                t0 = time.perf_counter()
                got[r] = graph_source(filt, int(u), k)
                lat[r][j] = time.perf_counter() - t0
            for r in routes:
                if not (np.array_equal(got["dense"].items, got[r].items)
                        and np.array_equal(got["dense"].scores, got[r].scores)):
                    raise AssertionError(f"user {u}: the {r} route changed the graph source's candidates")
    finally:
        filter_base.SPARSE_SHARE, filt.table = share, table
    return lat


def show_graph_only(a: argparse.Namespace, filt, users: np.ndarray, fit_s: float) -> None:
    """--graph-only: print (and write with --rows) the graph source's latency percentiles on every route."""
    k = max(a.quotas)
    figs = {r: percentiles(v) for r, v in graph_latency(filt, users, k).items()}
    print(f"{a.dataset}: graph source alone ({filt.kind}, k {k}, fitted {fit_s:.1f}s {filt.params}), "
          f"{len(users):,} users, one at a time, same candidates on every route")
    for r, f in figs.items():
        print(f"  {r + ' route':<14} " + ", ".join(f"{q[:-3]} {v:.2f} ms" for q, v in f.items()))
    write_rows(a.rows, {"users": len(users), "k": k, "graph_only": figs, "sparse_share": filter_base.SPARSE_SHARE})


def write_rows(path: str | None, rows: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(rows, indent=1))


def mixture_model(a: argparse.Namespace, b: Bench) -> MixtureModel | None:
    """--model (checked against the dataset's ids), or mixrec's defaults trained for --epochs."""
    if a.graph_only:
        return None
    if not a.model:
        return train(b.eval_data, Config().with_overrides({"epochs": a.epochs}), b.work / "mixture", progress=False)
    model = MixtureModel.load(a.model)
    for t in ("user", "item"):
        if not np.array_equal(np.asarray(model.ids[t]).astype(str), np.asarray(b.data.ids[t]).astype(str)):
            raise SystemExit(f"--model {a.model}: its {t} ids differ from {a.dataset}'s as ingested here; "
                             "train it on this dataset")
    return model


def graph_filter(a: argparse.Namespace, b: Bench):
    """(the fitted or loaded filter with a top --table-k table, fit seconds, table seconds)."""
    t0 = time.perf_counter()
    if a.filter:
        filt = load_filter(a.filter)
    else:
        kind, params = ("cascade", json.loads(a.filter_params)) if a.dataset == "tmall_mb" else ("gfcf", {})
        rels = ["view", "cart", "buy"] if kind == "cascade" else [r.name for r in b.data.relations]
        filt = make_filter(kind, **params).fit(b.eval_data, relations=rels, target=b.target)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if a.table_k and (filt.table is None or filt.table.k < a.table_k):
        filt.build_table(a.table_k, progress=True)
    elif not a.table_k:
        filt.table = None
    return filt, fit_s, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="tmall_mb", choices=["tmall_mb", "ml1m"])
    p.add_argument("--quotas", type=int, nargs=4, default=[50, 50, 30, 10], metavar=NAMES)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--model", default=None, help="a trained mixrec model directory (default: train one)")
    p.add_argument("--filter", default=None, help="a fitted graph-filter directory (default: fit one)")
    p.add_argument("--filter-params", default='{"restart": 0.5, "carry": 0.6, "own": 4.0, "stage_bonus": 0.0, "conv_exp": 0.5, "smoothing": 2.0}')
    p.add_argument("--table-k", type=int, default=100,
                   help="per-user top-k table of the graph filter (>= the graph quota to be used; 0: none)")
    p.add_argument("--ranker", action="store_true", help="also order the blend with the funnel's ranker")
    p.add_argument("--ranker-users", type=int, default=1000, help="seeded training users the ranker learns from")
    p.add_argument("--ranker-epochs", type=int, default=3)
    p.add_argument("--ranker-features", default="full", choices=list(RANKER_FEATURE_SETS),
                   help="the ranker's features: with the embeddings, or cosines and counts only")
    p.add_argument("--ranker-retrain", action="store_true",
                   help="fit the ranker on a model trained on its feature part alone (WORK/ranker-model-...) "
                        "instead of folding users into the served model, whose item vectors saw the labels")
    p.add_argument("--ranker-wide", action="store_true",
                   help="the source-rank ranker also gets a linear path from the log ranks to its heads")
    p.add_argument("--ranker-labels", default="random", choices=list(LABELS),
                   help="held-out labels: ~10%% of each user's edges per relation, or one target edge per user")
    p.add_argument("--no-ranker-foldin", dest="ranker_foldin", action="store_false",
                   help="train the ranker on the served user vectors, which saw its labels (faster, leaks)")
    p.add_argument("--value", default=json.dumps(VALUE), help="the ranker's value weights per relation (JSON)")
    p.add_argument("--seed", type=int, default=0, help="the ranker's hold-out, users and training")
    p.add_argument("--users", type=int, default=None, help="a seeded sample of test users (default: all)")
    p.add_argument("--work", default=str(ROOT / "runs" / "blend"))
    p.add_argument("--rows", default=None, help="write the figures as JSON")
    p.add_argument("--graph-only", action="store_true",
                   help="no mixture: time the graph source alone on every route (see above)")
    a = p.parse_args()
    print("command: python bench/blend.py " + " ".join(sys.argv[1:]), flush=True)
    if not a.graph_only and a.table_k < max(a.quotas):
        raise SystemExit(f"--table-k {a.table_k}: the blend is timed with and without the table; give --table-k >= "
                         f"{max(a.quotas)} (the graph quota)")
    if not (DATA / DATASETS[a.dataset]["file"]).is_file():
        print(f"skipping {a.dataset}: not found")
        return
    b = Bench(a.dataset, Path(a.work))
    t0 = time.perf_counter()
    model = mixture_model(a, b)
    train_s = time.perf_counter() - t0
    filt, fit_s, table_s = graph_filter(a, b)
    users = b.users if a.users is None else np.sort(np.random.default_rng(0).choice(b.users, a.users, False))
    seen = [b.target] if b.spec["exclude"] == "relation" else True
    q, width = blend_query(a.quotas, seen), sum(a.quotas)
    queries, rankers = {"blend": q}, {}
    if a.ranker and not a.graph_only:
        fitted = fit_blend_ranker(model, b.eval_data, filt, q, a.ranker_users, epochs=a.ranker_epochs,
                                  value=json.loads(a.value), foldin=a.ranker_foldin, seed=a.seed,
                                  source_features=(False, True), feature_set=a.ranker_features,
                                  labels=a.ranker_labels, wide=a.ranker_wide,
                                  retrain=(b.work / f"ranker-model-{a.ranker_labels}-s{a.seed}-m{model.config.seed}")
                                  if a.ranker_retrain else None)
        rankers = {"default": fitted[False], "sources": fitted[True]}
        queries["blend + ranker"] = q.rank(keep=[width], stages=["final"])
        queries["blend + ranker, source ranks"] = q.rank(ranker="sources", keep=[width], stages=["final"])
    configure_threads()  # one thread per query, as the server runs them (FAISS's OpenMP pool costs 20x at p50 under load)
    if a.graph_only:
        show_graph_only(a, filt, users, fit_s)
        return
    funnel = Funnel(model, filters={"default": filt}, rankers=rankers)
    lat, lists = timed_runs(funnel, filt, queries, users, width)
    report(a, b, filt, users, lists, lat, {"train_s": train_s, "fit_s": fit_s, "table_s": table_s})


def report(a, b: Bench, filt, users: np.ndarray, lists: dict, lat: dict, times: dict) -> None:
    """Print (and write with --rows) the contributions, the ordered lists' metrics and the latencies."""
    items, via, _ = lists["blend"]
    remap = np.zeros_like(via)  # funnel via bits are SOURCE_CODE positions; contributions reads bit s as NAMES[s]
    for s, n in enumerate(NAMES):
        remap |= ((via >> SOURCE_CODE[n]) & 1) << s
    rows = np.searchsorted(b.users, users)
    truth = csr_from_pairs(*csr_rows(*b.truth, rows), len(rows))
    stats = contributions(items, remap, NAMES, truth)
    n, width = len(users), sum(a.quotas)
    table = f"top-{filt.table.k} table of {filt.n_users:,} users in {times['table_s']:.1f}s"
    print(f"{a.dataset}: {n:,} test users, quotas {dict(zip(NAMES, a.quotas))} (<= {width} candidates), "
          f"mixture trained {times['train_s']:.0f}s, {filt.kind} fitted {times['fit_s']:.1f}s {filt.params}, {table}")
    print(as_table(stats, n))
    best = max(NAMES, key=lambda s: stats[s]["users_alone"])
    print(f"  blend candidate HR {stats['blend']['users_alone'] / n:.4f} = "
          f"x{stats['blend']['users_alone'] / max(stats[best]['users_alone'], 1):.3f} the best single source ({best})")
    p = {k: percentiles(v, (50, 99)) for k, v in lat.items()}
    wall = p["blend table wall"]
    print(f"  latency per user: p50 {wall['p50_ms']:.2f} ms, p99 {wall['p99_ms']:.2f} ms (graph source from the table)")
    ordered = {"graph source alone (its order)": list_metrics(filt.recommend(users, 10)[0], truth)}
    ordered.update({q: list_metrics(lists[q][0], truth) for q in lists})
    print(f"  {'ordered list':<32} {'HR@10':>7} {'NDCG@10':>8}")
    for q, m in ordered.items():
        print(f"  {q:<32} {m['hr@10']:>7.4f} {m['ndcg@10']:>8.4f}")
    print(f"  {'ms per user':<32} {'table p50':>9} {'p99':>7}   {'computed p50':>12} {'p99':>7}   "
          f"{'computed/table p50':>18} {'p99':>6}")
    for q in lists:
        for clock in ("wall", "cpu"):
            t, c = p[f"{q} table {clock}"], p[f"{q} computed {clock}"]
            print(f"  {q + ' (' + clock + ')':<32} {t['p50_ms']:>9.2f} {t['p99_ms']:>7.2f}   {c['p50_ms']:>12.2f} "
                  f"{c['p99_ms']:>7.2f}   {c['p50_ms'] / t['p50_ms']:>17.2f}x {c['p99_ms'] / t['p99_ms']:>5.2f}x")
    write_rows(a.rows, {"stats": stats, "users": n, "quotas": a.quotas, "table_k": filt.table.k,
                        "p50_ms": p["blend table wall"]["p50_ms"], "p99_ms": p["blend table wall"]["p99_ms"],
                        "latency": p, "ordered": ordered, "times": times,
                        "ranker_users": a.ranker_users if a.ranker else 0})


if __name__ == "__main__":
    main()
