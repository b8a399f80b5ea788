"""yelp_cat for bench/typed_graph.py --yelp: user->business visits alone vs visits + business->category.

Protocol (seeded). The dataset's own train/test split of visits is kept. With ``--users N`` a random sample of
N users (those with a test visit) keeps all its visits and the businesses they touch. For ``--valid-users M``
users with at least 3 training visits one random training visit moves to a 'valid' split, so the trainer's
early stopping (default patience 3, at most ``--epochs``) picks the epoch on validation, never on test. The
category relation holds every (business, category) pair of the kept businesses, all in training. Both models
are trained from the same files (the visits-only schema drops the category relation), so they rank the same
businesses. Business Recall@20 is mixrec.evaluate on relation visit (exact full ranking and the served
retrieval, lists merged by the model's index.merge; the user's training businesses excluded);
label_coverage@50 is the share of the categories whose label appears in a user's top 50 businesses
(mixrec.evaluate.diversity), printed also as the mean number of distinct categories. Popularity ranks
businesses by training visits, the user's training businesses excluded.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from mixrec.config import Config
from mixrec.csr import csr_from_pairs
from mixrec.data.schema import ingest_graph
from mixrec.evaluate import evaluate, evaluate_topk, load_item_labels

K, K_COVER = 20, 50
SCHEMA = """\
[entities.user]
[entities.business]

[split]
strategy = "column"

[[relations]]
name = "visit"
source = "user"
target = "business"
file = "visits.tsv"
source_col = "user_id"
target_col = "business_id"
split_col = "split"
"""
CATEGORY = """
[entities.category]

[[relations]]
name = "category"
source = "business"
target = "category"
file = "categories.tsv"
source_col = "business_id"
target_col = "category_id"
split_col = "split"
weight = {weight}
"""


def _read(data: Path, name: str) -> pa.Table:
    return pcsv.read_csv(data / name, parse_options=pcsv.ParseOptions(delimiter="\t"))


def valid_holdout(users: np.ndarray, train: np.ndarray, n_valid: int, rng: np.random.Generator) -> np.ndarray:
    """True for one random training row of each of ``n_valid`` random users with at least 3 training rows."""
    deg = np.bincount(users[train], minlength=users.max() + 1)
    eligible = np.flatnonzero(deg >= 3)
    chosen = rng.choice(eligible, min(n_valid, len(eligible)), replace=False)
    rows = np.flatnonzero(train & np.isin(users, chosen))
    rows = rows[rng.permutation(len(rows))]
    _, first = np.unique(users[rows], return_index=True)
    out = np.zeros(len(users), bool)
    out[rows[first]] = True
    return out


def write_yelp(data: Path, out: Path, n_users: int, n_valid: int, category_weight: float,
               seed: int) -> tuple[Path, Path, Path]:
    """Visit and category files, the two schemas (visits only; visits + categories) and the label file."""
    rng = np.random.default_rng(seed)
    t = _read(data, "interactions.tsv.gz")
    u, b = t.column("user_id").to_numpy(), t.column("item_id").to_numpy()
    split = np.array(t.column("split").to_pylist(), dtype=object)
    if n_users:
        tested = np.unique(u[split == "test"])
        keep = np.isin(u, rng.choice(tested, min(n_users, len(tested)), replace=False))
        u, b, split = u[keep], b[keep], split[keep]
    split[valid_holdout(u, split == "train", n_valid, rng)] = "valid"
    pcsv.write_csv(pa.table({"user_id": u, "business_id": b, "split": split.astype(str)}), out / "visits.tsv",
                   pcsv.WriteOptions(delimiter="\t"))
    c = _read(data, "item_categories.tsv.gz")
    cb, cc = c.column("item_id").to_numpy(), c.column("category_id").to_numpy()
    kept = np.isin(cb, np.unique(b))
    pcsv.write_csv(pa.table({"business_id": cb[kept], "category_id": cc[kept],
                             "split": np.full(kept.sum(), "train")}), out / "categories.tsv",
                   pcsv.WriteOptions(delimiter="\t"))
    (out / "visits.toml").write_text(SCHEMA)
    (out / "graph.toml").write_text(SCHEMA + CATEGORY.format(weight=category_weight))
    return out / "visits.toml", out / "graph.toml", out / "categories.tsv"


def popularity_topk(ds, users: np.ndarray, k: int) -> np.ndarray:
    """Top ``k`` businesses by training visits, each user's training businesses excluded."""
    e = ds.split("train", relations=["visit"])
    pop = np.bincount(e.dst, minlength=ds.num("business")).astype(np.float64)
    order = np.argsort(-pop, kind="stable")
    indptr, seen = csr_from_pairs(e.src, e.dst, ds.num("user"))
    out = np.empty((len(users), k), np.int64)
    for i, user in enumerate(users):
        mine = seen[indptr[user]:indptr[user + 1]]
        head = order[:k + len(mine)]
        out[i] = head[~np.isin(head, mine)][:k]
    return out


def run_yelp(args, data: Path, work: Path, train) -> None:
    visits_schema, graph_schema, cat_file = write_yelp(data, work, args.users, args.valid_users,
                                                      args.category_weight, args.seed)
    cfg = Config().with_overrides({"dim": args.dim, "epochs": args.epochs, "components.user": args.components,
                                   "components.business": 1, "seed": args.seed})
    print(f"yelp_cat: {args.users or 'all'} users sampled, {args.valid_users} validation users, "
          f"{args.eval_users or 'all'} test users evaluated, dim {args.dim}, "
          f"{args.components} components per user, 1 per business and category, at most {args.epochs} epochs "
          f"(early stopping patience {cfg.early_stopping.patience} on valid Recall@{cfg.early_stopping.k}), "
          f"category task weight {args.category_weight}, seed {args.seed}")
    rows, curves = {}, {}
    runs = (("visits only", visits_schema), ("visits + categories", graph_schema))
    for name, schema in runs[1:] if args.multi_only else runs:
        ds = ingest_graph(schema, work / f"data_{schema.stem}", progress=False)
        if not rows:
            print(f"{ds.num('user')} users, {ds.num('business')} businesses; visits train "
                  f"{len(ds.split('train', relations=['visit']).src)}, valid {len(ds.split('valid').src)}, test "
                  f"{len(ds.split('test').src)}")
        t0 = time.perf_counter()
        model = train(ds, cfg, work / f"model_{schema.stem}", progress=False)
        secs = time.perf_counter() - t0
        hist = model.info["history"]
        curves[name] = (" ".join(f"{h.get(f'valid_recall@{cfg.early_stopping.k}', float('nan')):.4f}"
                                 for h in hist), model.info.get("best_epoch"))
        labels = load_item_labels(cat_file, model.ids["business"], id_col="business_id", label_col="category_id")
        rep = evaluate(model, ds, [K, K_COVER], relation="visit", methods=["exact", "retrieval"], labels=labels,
                       max_users=args.eval_users or None, seed=args.seed)["relations"]["visit"]
        rows[name] = [(rep[m][f"recall@{K}"], rep[m][f"label_coverage@{K_COVER}"]) for m in ("exact", "retrieval")]
        rows[name].append(secs)
        if "popularity" not in rows:
            test = ds.split("test", relations=["visit"])
            users = np.unique(test.src)
            if args.eval_users and len(users) > args.eval_users:  # the users evaluate() samples
                users = np.sort(np.random.default_rng(args.seed).choice(users, args.eval_users, replace=False))
            test = test.select(np.isin(test.src, users))
            truth = csr_from_pairs(np.searchsorted(users, test.src), test.dst, len(users))
            pop = evaluate_topk(popularity_topk(ds, users, K_COVER), truth, [K, K_COVER], ds.num("business"), labels)
            rows["popularity"] = [(pop[f"recall@{K}"], pop[f"label_coverage@{K_COVER}"])] * 2 + [0.0]
    n_labels = labels.n_labels
    print("\nvalid Recall@20 per epoch (best epoch kept)")
    for name, (curve, best) in curves.items():
        print(f"{name:<20} {curve}  (best epoch {best})")
    print(f"\nbusiness Recall@{K} and category coverage@{K_COVER} (relation visit, {rep['users']} test users; "
          f"coverage = share of the {n_labels} categories in a user's top {K_COVER}, cats = mean distinct "
          "categories)")
    print(f"{'model':<20} {'R@20 exact':>10} {'cov@50':>7} {'cats':>6} {'R@20 retr':>10} {'cov@50':>7} "
          f"{'cats':>6} {'train s':>8}")
    for name in sorted(rows, key=lambda n: n != "popularity"):  # popularity first
        (re_, ce), (rr, cr), secs = rows[name]
        print(f"{name:<20} {re_:10.4f} {ce:7.4f} {ce * n_labels:6.1f} {rr:10.4f} {cr:7.4f} {cr * n_labels:6.1f} "
              f"{secs:8.1f}")
