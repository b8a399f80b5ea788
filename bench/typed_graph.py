"""Typed graphs: lastfm_hetrec2k listens + friendships, yelp_cat visits + categories, the Explore-like graph.

    python bench/typed_graph.py                      # lastfm: listens-only vs listens + friends, friend baselines
    python bench/typed_graph.py --friend-weight 0.5  # the same with another task weight of the friend relation
    python bench/typed_graph.py --explore            # synthetic Explore graph: consumer->creator planted precision
    python bench/typed_graph.py --epochs 20 --funnel # lastfm, friends also from funnels and a blend with CN
    python bench/typed_graph.py --yelp               # yelp_cat: visits vs visits + business->category (typed_yelp.py)

lastfm protocol (seeded): listens are held out per user (a random 20% of each user's artists, rounded down);
friendships are held out per undirected pair (a random 20% of pairs, both directions go to test, so a held-out
friend never leaks through the reverse edge). Listen weights are 1 + log(play count) / mean, written into the
relation's weight column and read through the graph schema. Both models are trained from the same split files
and schema (the listens-only schema drops the friend relation). Artist Recall@20 is mixrec.evaluate's
per-relation evaluation (full ranking over all artists, the user's training artists excluded). Friend Recall@20:
the model's top 20 from ``Retriever(model, source_type='user', target_type='user')``, popularity (training
friend count) and common-neighbour counts (A @ A with scipy.sparse, ties broken by popularity) all rank every
user except the query and its training friends, scored against the same held-out friends. With --funnel also:
the funnel ``history(relation='friend', n=100) -> similar(k=50) -> filter(exclude_seen)`` (each training
friend's 50 nearest users by the model, scores summed over friends), its reciprocal-rank union with the
model's top 100, and the same blend rule over the model's top 100 and the common-neighbour top 100.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mixrec.config import Config
from mixrec.csr import csr_from_pairs
from mixrec.data.schema import ingest_graph
from mixrec.evaluate import evaluate
from mixrec.evaluate.metrics import ranking_metrics
from mixrec.retrieve import Retriever
from mixrec.train import train

DATA = ROOT.parent / "shared" / "data" / "lastfm_hetrec2k"
K = 20
FRIEND_SEEDS, FRIEND_NEIGHBOURS = 100, 50  # --funnel: training friends used as seeds, nearest users of each
SCHEMA = """\
[entities.user]
[entities.artist]

[split]
strategy = "column"

[[relations]]
name = "listen"
source = "user"
target = "artist"
file = "listens.tsv"
source_col = "user_id"
target_col = "artist_id"
weight_col = "weight"
split_col = "split"
"""
FRIEND = """
[[relations]]
name = "friend"
source = "user"
target = "user"
file = "friends.tsv"
source_col = "user_id"
target_col = "friend_id"
split_col = "split"
weight = {weight}
"""


def _read(name: str) -> pa.Table:
    return pcsv.read_csv(DATA / name, parse_options=pcsv.ParseOptions(delimiter="\t"))


def per_user_holdout(users: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """True for the held-out rows: a random floor(fraction * degree) of each user's rows."""
    order = np.lexsort((rng.random(len(users)), users))
    deg = np.bincount(users)
    start = np.concatenate([[0], np.cumsum(deg)[:-1]])
    rank = np.empty(len(users), np.int64)
    rank[order] = np.arange(len(users)) - start[users[order]]
    return rank < np.floor(fraction * deg[users])


def write_split(out: Path, friend_weight: float, fraction: float, seed: int) -> tuple[Path, Path]:
    """Split files and two schemas (listens only; listens + friends) under ``out``."""
    rng = np.random.default_rng(seed)
    la = _read("user_artists.tsv")
    u = la.column("user_id").to_numpy()
    plays = la.column("weight").to_numpy().astype(np.float64)
    w = 1.0 + np.log(plays)
    test = per_user_holdout(u, fraction, rng)
    pcsv.write_csv(pa.table({"user_id": u, "artist_id": la.column("artist_id").to_numpy(), "weight": w / w.mean(),
                             "split": np.where(test, "test", "train")}), out / "listens.tsv",
                   pcsv.WriteOptions(delimiter="\t"))
    fr = _read("user_friends.tsv")
    a, b = fr.column("user_id").to_numpy(), fr.column("friend_id").to_numpy()
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pairs, inv = np.unique(lo * 10**6 + hi, return_inverse=True)
    held = rng.random(len(pairs)) < fraction
    pcsv.write_csv(pa.table({"user_id": a, "friend_id": b, "split": np.where(held[inv], "test", "train")}),
                   out / "friends.tsv", pcsv.WriteOptions(delimiter="\t"))
    (out / "listens.toml").write_text(SCHEMA)
    (out / "graph.toml").write_text(SCHEMA + FRIEND.format(weight=friend_weight))
    return out / "listens.toml", out / "graph.toml"


def topk_from_scores(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def friend_baselines(ds, users: np.ndarray, k: int = K) -> dict[str, np.ndarray]:
    """Top ``k`` by popularity and by common-neighbour count, the query and its training friends excluded."""
    n = ds.num("user")
    e = ds.split("train", relations=["friend"])
    a = sp.csr_matrix((np.ones(len(e.src)), (e.src, e.dst)), shape=(n, n))
    a.data[:] = 1.0
    pop = np.asarray(a.sum(0)).ravel()
    mask = a[users].toarray() > 0
    mask[np.arange(len(users)), users] = True
    out = {}
    for name, score in (("popularity", np.tile(pop, (len(users), 1))),
                        ("common neighbours", (a[users] @ a).toarray() + pop[None, :] / (pop.max() + 1.0))):
        score = np.where(mask, -np.inf, score.astype(np.float64))
        out[name] = topk_from_scores(score, k)
    return out


def triangle_share(ds) -> float:
    """Share of the held-out friend edges whose two users have a common training friend."""
    n = ds.num("user")
    e, t = ds.split("train", relations=["friend"]), ds.split("test", relations=["friend"])
    a = sp.csr_matrix((np.ones(len(e.src)), (e.src, e.dst)), shape=(n, n))
    a.data[:] = 1.0
    return float((np.asarray(a[t.src].multiply(a[t.dst]).sum(1)).ravel() > 0).mean())


def rr_blend(first: np.ndarray, second: np.ndarray, k: int) -> np.ndarray:
    """Per row, the funnel's reciprocal-rank blend (mixrec.funnel.sources.blend, equal weights) of two ranked
    lists (rows padded with -1): an item at rank r of a list scores 1 / r, duplicates keep their best."""
    from mixrec.funnel.sources import CandidateSet, blend

    out = np.full((len(first), k), -1, np.int64)
    for i, (a, b) in enumerate(zip(first, second)):
        sets = [CandidateSet.make(x[x >= 0], 1.0 / np.arange(1, (x >= 0).sum() + 1), src)
                for x, src in ((a, "mixture"), (b, "graph"))]
        got = blend(sets, [1.0, 1.0], [None, None], k).items
        out[i, :len(got)] = got
    return out


def friend_funnels(model, users: np.ndarray) -> dict[str, np.ndarray]:
    """Top K of two user->user funnels, the query and its training friends excluded (rows padded with -1):
    the user's training friends expanded to their nearest users by the model (summed over friends: an
    embedding version of the common-neighbour count), and a union of that with the plain mixture retrieval."""
    from mixrec.funnel import Funnel, Query

    funnel = Funnel(model, source_type="user", target_type="user")
    friends = Query().history(relation="friend", n=FRIEND_SEEDS).similar(k=FRIEND_NEIGHBOURS).filter(exclude_seen=True)
    queries = {"funnel friends+sim": friends,
               "funnel blend": Query().mixture(k=100).union(friends, weights=[1.0, 1.0])}
    out = {}
    for name, q in queries.items():
        q = q.filter(exclude_seen=True).take(K + 1)
        top = np.full((len(users), K), -1, np.int64)
        for i, u in enumerate(users):
            got = funnel.run(q, int(u)).candidates.items
            got = got[got != u][:K]  # the query itself
            top[i, :len(got)] = got
        out[name] = top
    return out


def run_lastfm(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="typed_graph_"))
    listens_schema, graph_schema = write_split(work, args.friend_weight, args.test_fraction, args.seed)
    cfg = Config().with_overrides({"dim": args.dim, "epochs": args.epochs, "components.user": args.components,
                                   "components.artist": 1, "seed": args.seed})
    print(f"lastfm_hetrec2k: dim {args.dim}, {args.components} components per user, 1 per artist, {args.epochs} "
          f"epochs, friend task weight {args.friend_weight}, hold-out {args.test_fraction}, seed {args.seed}")
    rows, friend_rows = {}, {}
    runs = (("listens only", listens_schema), ("listens + friends", graph_schema))
    for name, schema in runs[1:] if args.multi_only else runs:
        ds = ingest_graph(schema, work / f"data_{schema.stem}", progress=False)
        t0 = time.perf_counter()
        model = train(ds, cfg, work / f"model_{schema.stem}", progress=False)
        secs = time.perf_counter() - t0
        rep = evaluate(model, ds, [K], relation="listen", methods=["exact", "retrieval"])["relations"]["listen"]
        rows[name] = (rep["exact"][f"recall@{K}"], rep["retrieval"][f"recall@{K}"], secs)
        if "friend" in [r.name for r in ds.relations]:
            test = ds.split("test", relations=["friend"])
            users = np.unique(test.src)
            truth = csr_from_pairs(np.searchsorted(users, test.src), test.dst, len(users))
            tops = {"mixrec user->user": Retriever(model, source_type="user", target_type="user")
                    .recommend(users, K, exclude_seen=True).items, **friend_baselines(ds, users)}
            if args.funnel:
                tops.update(friend_funnels(model, users))
                wide = Retriever(model, source_type="user", target_type="user").recommend(users, 100).items
                tops["blend mixrec + CN"] = rr_blend(wide, friend_baselines(ds, users, 100)["common neighbours"], K)
            friend_rows = {m: ranking_metrics(t, *truth, [K])[f"recall@{K}"] for m, t in tops.items()}
            friend_users = len(users)
            closed = triangle_share(ds)
    base = rows.get("listens only", rows["listens + friends"])
    against = "listens only" if "listens only" in rows else "the row above"
    print(f"\nartist Recall@{K} (relation listen, {rep['users']} test users; ratio against {against})")
    print(f"{'model':<20} {'exact':>8} {'ratio':>6} {'retrieval':>10} {'ratio':>6} {'train s':>8}")
    for name, (ex, rt, secs) in rows.items():
        print(f"{name:<20} {ex:8.4f} {ex / base[0]:6.3f} {rt:10.4f} {rt / base[1]:6.3f} {secs:8.1f}")
    cn = friend_rows["common neighbours"]
    print(f"\nfriend Recall@{K} (relation friend, {friend_users} test users; ratio against common neighbours)")
    for name, r in friend_rows.items():
        print(f"{name:<20} {r:8.4f} {r / cn:6.3f}")
    if args.funnel:
        print(f"{closed:.1%} of the held-out friendships close a triangle (the two users share a training friend)")


def planted_precision(model, truth, k: int = 10) -> tuple[float, float]:
    """Share of the retrieved creators whose planted topic is one of the consumer's interests; chance level."""
    r = Retriever(model, source_type="consumer", target_type="creator")
    cons = np.arange(model.num("consumer"))
    got = r.recommend(cons, k=k, exclude_seen=False).items
    raw_cons = np.array([int(x[1:]) for x in model.ids["consumer"]])
    topic = truth.creator_topic[np.array([int(x[1:]) for x in model.ids["creator"]])]
    hits = [np.isin(topic[row[row >= 0]], truth.interests[raw_cons[i]]).mean() for i, row in enumerate(got)]
    chance = [np.isin(topic, truth.interests[c]).mean() for c in raw_cons]
    return float(np.mean(hits)), float(np.mean(chance))


def run_explore(args) -> None:
    from mixrec.data.explore import ExploreSpec, generate_explore, write_explore

    spec = ExploreSpec(seed=args.seed)
    work = Path(tempfile.mkdtemp(prefix="explore_"))
    ds = ingest_graph(write_explore(spec, work / "raw"), work / "data", progress=False)
    cfg = Config().with_overrides({"dim": 16, "epochs": args.epochs, "components.consumer": 3,
                                   "components.creator": 1, "components.media": 1, "seed": args.seed})
    model = train(ds, cfg, work / "model", progress=False)
    precision, chance = planted_precision(model, generate_explore(spec)[1])
    print(f"Explore-like graph: {spec.n_accounts} consumers, {spec.n_creators} creators, {ds.num('media')} media, "
          f"{spec.n_topics} topics; dim 16, 3 components per consumer, {args.epochs} epochs")
    print(f"consumer->creator planted-interest precision@10: {precision:.4f} (chance {chance:.4f}, "
          f"ratio {precision / chance:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--explore", action="store_true", help="the synthetic Explore-like graph instead of lastfm")
    ap.add_argument("--yelp", action="store_true", help="yelp_cat: user->business visits, business->category")
    ap.add_argument("--epochs", type=int, default=None, help="default 2 (lastfm), 8 (explore), 20 (yelp: the most, "
                    "with early stopping on validation)")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--components", type=int, default=4, help="components per user (lastfm)")
    ap.add_argument("--friend-weight", type=float, default=1.0, help="task weight of the friend relation")
    ap.add_argument("--multi-only", action="store_true", help="train only the multi-task model (listens + "
                    "friends, ratios then against itself; yelp: visits + categories); for task-weight ablations")
    ap.add_argument("--users", type=int, default=0, help="yelp: a random sample of this many users (0: all)")
    ap.add_argument("--valid-users", type=int, default=2000, help="yelp: users with one training visit held out "
                    "for validation")
    ap.add_argument("--eval-users", type=int, default=5000, help="yelp: a seeded sample of this many test users "
                    "is evaluated (0: all)")
    ap.add_argument("--category-weight", type=float, default=1.0, help="yelp: task weight of business->category")
    ap.add_argument("--funnel", action="store_true", help="lastfm: also rank friends with two user->user funnels "
                    "and a reciprocal-rank blend of the model with common neighbours")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.explore:
        args.epochs = args.epochs or 8
        return run_explore(args)
    if args.yelp:
        from typed_yelp import run_yelp

        data = ROOT.parent / "shared" / "data" / "yelp_cat"
        if not data.is_dir():
            sys.exit(f"{data} not found: this benchmark needs the yelp_cat files (interactions.tsv.gz, "
                     "item_categories.tsv.gz)")
        args.epochs = args.epochs or 20
        return run_yelp(args, data, Path(tempfile.mkdtemp(prefix="yelp_")), train)
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs the lastfm_hetrec2k files (user_artists.tsv, "
                 "user_friends.tsv)")
    args.epochs = args.epochs or 2
    run_lastfm(args)


if __name__ == "__main__":
    main()
