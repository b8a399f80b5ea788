"""Retrieval alone vs retrieval + ranking vs the full funnel on tmall_mb (target buy) and ml1m; writes docs/funnel.md.

    python bench/funnel.py                                   # both datasets, defaults below
    python bench/funnel.py --datasets ml1m --eval-users 500 --epochs 2 --out /tmp/funnel.md

Protocol (training data only for everything that is learned): the shipped train split is cut into
a *feature* part and a *label* part (about 10% of each user's edges per relation); the mixture model
and every feature are built from the feature part, and the ranker learns to predict the label part.
The test split is then scored with the full training history as features and exclusions. Reads
../shared/data and never copies it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mixrec.config import Config  # noqa: E402
from mixrec.data.dataset import Dataset  # noqa: E402
from mixrec.data.ingest import ingest  # noqa: E402
from mixrec.evaluate import load_item_labels  # noqa: E402
from mixrec.evaluate.diversity import diversity_metrics  # noqa: E402
from mixrec.evaluate.metrics import csr_from_pairs, per_user_metrics  # noqa: E402
from mixrec.funnel import Funnel, Query  # noqa: E402
from mixrec.funnel.fit import candidate_lists, fit_ranker, holdout_split  # noqa: E402
from mixrec.funnel.optimize import evaluate_weights, record_replay, tune_value_weights  # noqa: E402
from mixrec.funnel.query import make_step  # noqa: E402
from mixrec.io import atomic_file, save_json  # noqa: E402
from mixrec.train import train  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
NOTES_MARKER = "<!-- notes: kept across re-runs -->"
DATASETS = {
    "tmall_mb": {"file": "tmall_mb/interactions.tsv.gz", "relation_col": "behavior", "target": "buy",
                 "exclude": ["buy"], "labels": None, "value": {"buy": 1.0, "cart": 0.3, "view": 0.1},
                 "own_history": ["view", "cart"]},
    "ml1m": {"file": "ml1m/interactions.tsv.gz", "relation_col": None, "target": "interaction",
             "exclude": True, "labels": "ml1m/items.tsv", "value": {"interaction": 1.0}, "own_history": None},
}


def candidate_query(spec: dict) -> Query:
    """The sourcing stage of the full funnel: mixture + the user's own items + item-to-item + walks + popular."""
    excl = spec["exclude"]
    subs = [Query.source().history(n=30).similar(k=10), Query.source().history(n=20).walk(k=100, n_p=100, n_v=4),
            Query.source().popular(k=50, relation=spec["target"])]
    quotas = [200, 150, 100, 50]
    if spec["own_history"]:
        subs.append(Query.source().history(relation=spec["own_history"], n=50))
        quotas.append(50)
    return Query.source().mixture(k=200, exclude_seen=excl).union(*subs, quotas=quotas).filter(exclude_seen=excl)


def queries(spec: dict) -> dict[str, Query]:
    excl = spec["exclude"]
    return {
        "retrieval (model alone)": Query.source().mixture(k=25, exclude_seen=excl).filter(exclude_seen=excl),
        "retrieval + ranking": Query.source().mixture(k=300, exclude_seen=excl).filter(exclude_seen=excl)
        .rank(keep=[25], stages=["final"]),
        "full funnel (before diversity)": candidate_query(spec).rank(keep=[150, 50]),
    }


def split_dataset(data: Dataset, seed: int) -> tuple[Dataset, np.ndarray, tuple]:
    tr = data.split("train")
    hold = holdout_split(tr.src, tr.dst, tr.rel, 0.1, seed)
    edges = dict(data.edges)
    edges["train"] = tr.select(~hold)
    return (Dataset(ids=data.ids, relations=data.relations, edges=edges, info=data.info), hold,
            (tr.src[hold], tr.dst[hold], tr.rel[hold]))


def run_dataset(name: str, a, log) -> dict:
    spec = DATASETS[name]
    work = Path(a.work) / name
    t0 = time.perf_counter()
    if not (work / "data" / "manifest.json").is_file():
        ingest(DATA / spec["file"], work / "data", split_col="split", relation_col=spec["relation_col"], progress=False)
    data = Dataset.load(work / "data")
    labels = None
    if spec["labels"]:
        labels = load_item_labels(DATA / spec["labels"], data.ids["item"], label_col="genres")
    fdata, hold, label_edges = split_dataset(data, a.seed)
    base = Config()
    cfg = base.with_overrides({"components.user": a.components or base.components.get("user", 1),
                               "components.item": 1, "dim": a.dim or base.dim,
                               "epochs": a.epochs, "seed": a.seed, **dict(kv.split("=", 1) for kv in a.set)})
    t1 = time.perf_counter()
    model = train(fdata, cfg, None, progress=False)
    times = {"train_model_s": time.perf_counter() - t1}
    log(f"{name}: model trained in {times['train_model_s']:.0f} s")
    ftr = fdata.split("train")
    fit_funnel = Funnel(model, history=(ftr.src, ftr.dst, ftr.rel), labels=labels)
    rng = np.random.default_rng(a.seed)
    target = data.relation_code(spec["target"])
    label_users = np.unique(label_edges[0][label_edges[2] == target])
    picked = rng.choice(label_users, min(len(label_users), a.train_users + a.valid_users), replace=False)
    train_users, valid_users = picked[:a.train_users], picked[a.train_users:]
    cq = candidate_query(spec)
    t1 = time.perf_counter()
    lists = candidate_lists(fit_funnel, cq, train_users, label_edges)
    ranker = fit_ranker(fit_funnel, lists, spec["value"], epochs=a.ranker_epochs, distill_epochs=a.distill_epochs,
                        seed=a.seed)
    fit_funnel.rankers["default"] = ranker
    times["fit_ranker_s"] = time.perf_counter() - t1
    log(f"{name}: ranker fitted on {len(lists.items):,} rows in {times['fit_ranker_s']:.0f} s")
    tuning = None
    if len(ranker.relations) > 1 and len(valid_users):
        t1 = time.perf_counter()
        vlists = candidate_lists(fit_funnel, cq, valid_users, label_edges, add_positives=False)
        replay = record_replay(fit_funnel, "default", vlists, spec["target"])
        before = evaluate_weights(replay, spec["value"])
        best, _, study = tune_value_weights(replay, spec["target"], n_trials=a.trials, start=spec["value"],
                                            seed=a.seed)
        ranker.value.weights = best
        tuning = {"start": spec["value"], "start_replay": before, "best": best,
                  "best_replay": evaluate_weights(replay, best), "trials": len(study.trials),
                  "seconds": time.perf_counter() - t1}
        log(f"{name}: value weights {best} (replay {tuning['best_replay']} from {before})")
    full = data.split("train")
    funnel = Funnel(model, index=fit_funnel.index, history=(full.src, full.dst, full.rel), labels=labels,
                    rankers={"default": ranker})
    test = data.split("test", relations=[spec["target"]])
    users = np.unique(test.src)
    users = np.sort(rng.choice(users, min(len(users), a.eval_users), replace=False))
    keep = np.isin(test.src, users)
    truth = csr_from_pairs(np.searchsorted(users, test.src[keep]), test.dst[keep], len(users))
    rows = evaluate_queries(funnel, spec, users, truth, labels, log, name)
    return {"dataset": name, "users_eval": int(len(users)), "users_train": int(len(train_users)),
            "users_valid": int(len(valid_users)), "rows": rows, "times": times, "tuning": tuning,
            "ranker": ranker.info, "seconds": time.perf_counter() - t0, "model": cfg.model_dump(mode="json")}


def evaluate_queries(funnel: Funnel, spec: dict, users: np.ndarray, truth, labels, log, name: str) -> list[dict]:
    rows = []
    div_steps = {f"full funnel + {m} by {by}" + (f" ({p})" if p is not None else ""):
                 make_step("diversify", dict(by=by, method=m, **({} if p is None else
                                                               {"penalty" if m == "penalty" else "beta": p})), "bench")
                 for by, m, p in diversity_variants(spec)}
    for q in queries(spec).values():  # warm-up: builds the cached graph, history and feature tables
        funnel.run(q, int(users[0]))
    for qname, q in queries(spec).items():
        tops, lat = [], []
        ranked = []
        for u in users:
            t = time.perf_counter()
            res = funnel.run(q, int(u), validate=False)
            lat.append(time.perf_counter() - t)
            tops.append(res.candidates.items[:25])
            ranked.append(res.candidates)
        rows.append(score_row(qname, tops, lat, truth, labels, funnel, spec))
        log(f"{name}: {json.dumps(rows[-1])}")
        if qname.startswith("full funnel"):
            for dname, step in div_steps.items():
                tops, extra = [], []
                for u, cs in zip(users, ranked):
                    t = time.perf_counter()
                    tops.append(funnel.apply(step, cs, int(u)).items[:25])
                    extra.append(time.perf_counter() - t)
                row = score_row(dname, tops, np.array(lat) + np.array(extra), truth, labels, funnel, spec)
                rows.append(row)
                log(f"{name}: {json.dumps(row)}")
    return rows


def diversity_variants(spec: dict) -> list[tuple]:
    by = "label" if spec["labels"] else "origin"
    return [(by, "penalty", 0.02), (by, "penalty", 0.05), (by, "penalty", 0.1), (by, "mmr", 0.3),
            ("origin", "round_robin", None)]


def score_row(name: str, tops: list, lat: list, truth, labels, funnel: Funnel, spec: dict) -> dict:
    top = np.full((len(tops), 25), -1, np.int64)
    for i, t in enumerate(tops):
        top[i, :len(t)] = t
    m = per_user_metrics(top, truth[0], truth[1], [10, 25])
    row = {"method": name, "hr@10": float(m["hit_rate@10"].mean()), "ndcg@10": float(m["ndcg@10"].mean()),
           "recall@25": float(m["recall@25"].mean())}
    d = diversity_metrics(top, labels, [25], funnel.n_items)
    row["div@25"] = d.get("div@25", float("nan"))
    row["coverage@25"] = d["catalog_coverage@25"]
    row["ild@25"] = intra_list_distance(top, funnel)
    lat_ms = np.asarray(lat) * 1e3
    row["ms_mean"], row["ms_p95"] = float(lat_ms.mean()), float(np.percentile(lat_ms, 95))
    return row


def intra_list_distance(top: np.ndarray, funnel: Funnel) -> float:
    """Mean over users of 1 - mean pairwise cosine of the items' (mixture-weighted) embeddings."""
    w = funnel.weights("all")[1]
    v = (funnel.item_vectors * w[:, :, None]).sum(1)
    v /= np.linalg.norm(v, axis=1, keepdims=True).clip(1e-12)
    x = np.where((top >= 0)[:, :, None], v[top.clip(0)], 0)
    n = (top >= 0).sum(1)
    s = np.einsum("bkd,bld->b", x, x) - n
    pairs = n * (n - 1)
    return float(np.mean(1 - s[pairs > 0] / pairs[pairs > 0]))


def to_markdown(results: list[dict], command: str, seconds: float, a) -> str:
    lines = ["# The Explore funnel: retrieval vs retrieval + ranking vs the full funnel", "",
             f"Generated by `bench/funnel.py` on {dt.date.today().isoformat()}, {platform.machine()}, "
             f"{a.cpus}, total run time {seconds / 60:.1f} min.", "", "```bash", command, "```", ""]
    for r in results:
        lines += [f"## {r['dataset']}", "",
                  f"{r['users_eval']:,} sampled test users; ranker trained on {r['users_train']:,} users' held-out "
                  f"training edges ({r['ranker'].get('rows', 0):,} candidate rows); "
                  + (f"value weights tuned on {r['users_valid']:,} other users; " if r["tuning"] else
                     "one relation, so the value model is that head's probability (nothing to tune); ")
                  + f"model trained {r['times']['train_model_s']:.0f} s, ranker {r['times']['fit_ranker_s']:.0f} s "
                  f"(wall time on the shared machine).", "",
                  "| method | HR@10 | NDCG@10 | Recall@25 | Div@25 | ILD@25 | coverage@25 | ms/user (mean) "
                  "| ms/user (p95) | HR@10 vs retrieval |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        base = r["rows"][0]["hr@10"]
        for row in r["rows"]:
            div = "n/a" if row["div@25"] != row["div@25"] else f"{row['div@25']:.4f}"
            lines.append(f"| {row['method']} | {row['hr@10']:.4f} | {row['ndcg@10']:.4f} | {row['recall@25']:.4f} | "
                         f"{div} | {row['ild@25']:.4f} | {row['coverage@25']:.4f} | {row['ms_mean']:.1f} | "
                         f"{row['ms_p95']:.1f} | {row['hr@10'] / base if base else float('nan'):.2f}x |")
        if r["tuning"]:
            t = r["tuning"]
            lines += ["", f"Value model: start weights {t['start']} gave replay NDCG@10 "
                          f"{t['start_replay']['ndcg@10']:.4f}; {t['trials']} Optuna trials chose "
                          f"{ {k: round(v, 3) for k, v in t['best'].items()} } with replay NDCG@10 "
                          f"{t['best_replay']['ndcg@10']:.4f} ({t['seconds']:.0f} s)."]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--work", default="runs/funnel")
    p.add_argument("--out", default=str(ROOT / "docs" / "funnel.md"))
    p.add_argument("--json", default=None, help="also write the raw results as JSON")
    p.add_argument("--eval-users", type=int, default=2000)
    p.add_argument("--train-users", type=int, default=1500)
    p.add_argument("--valid-users", type=int, default=500)
    p.add_argument("--epochs", type=int, default=5, help="mixture-model epochs")
    p.add_argument("--components", type=int, default=None, help="user components (default: today's default)")
    p.add_argument("--dim", type=int, default=None, help="dimension (default: today's default)")
    p.add_argument("--ranker-epochs", type=int, default=3)
    p.add_argument("--distill-epochs", type=int, default=10)
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=["negatives.batch=128", "negatives.uniform=256"],
                   metavar="KEY=VALUE", help="mixture-model config overrides (default: fewer negatives, for speed)")
    p.add_argument("--cpus", default="2 shared CPU cores, one thread")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="only merge the --json outputs of earlier runs (e.g. one per dataset) into --out")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:7.0f}s] {s}", flush=True)  # noqa: E731
    if a.merge:
        results = [r for f in a.merge for r in json.loads(Path(f).read_text())]
        for r in results:  # runs before the label said what it is (the model's served merge, any components)
            for row in r["rows"]:
                if row["method"] == "retrieval (mixture round-robin)":
                    row["method"] = "retrieval (model alone)"
        seconds = max(r["seconds"] for r in results)
    else:
        results = [run_dataset(n, a, log) for n in a.datasets if (DATA / DATASETS[n]["file"]).is_file()]
        seconds = time.perf_counter() - t0
    command = "OMP_NUM_THREADS=1 python bench/funnel.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = to_markdown(results, command.strip(), seconds, a)
    old = Path(a.out).read_text() if Path(a.out).is_file() else ""
    if NOTES_MARKER in old:  # hand-written analysis below the marker survives re-runs
        md += "\n" + NOTES_MARKER + old.split(NOTES_MARKER, 1)[1]
    with atomic_file(a.out, "w") as fh:
        fh.write(md)
    if a.json:
        save_json(a.json, results)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
