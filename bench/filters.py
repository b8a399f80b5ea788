"""Closed-form graph filters (mixrec.filters) on gowalla, tmall_mb and ml1m against implicit ALS in the same run.

    python bench/filters.py                                  # every dataset found
    python bench/filters.py --datasets gowalla --kinds gfcf linear --rows runs/filters/gowalla.json

Protocols and data handling are bench/quality.py's (its Bench class): full ranking over all items,
the user's training items excluded (tmall_mb: only buy-train, target buy), ALL test users, metrics by
mixrec.evaluate. gowalla: tuned on the shipped valid split (fit on train), then refitted on train + valid
(LightGCN's training set). tmall_mb: tuned on a split that mimics its test split (per user one buy-train
edge held out at random, seeded; the user's view and cart edges stay, as they do for the test buy: 79%
of buy-train edges are also view edges, 80% of test buys). ml1m: a seeded 10% hold-out of the training edges.
The test split is used only for the reported figures.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import ALS_GRID_SMALL, DATA, DATASETS, Bench  # noqa: E402

from mixrec.baselines import holdout_split  # noqa: E402
from mixrec.data.dataset import Dataset  # noqa: E402
from mixrec.evaluate.metrics import csr_from_pairs, ranking_metrics  # noqa: E402
from mixrec.filters import make_filter  # noqa: E402
from mixrec.filters.spectral import SpectralFilter  # noqa: E402

# hyper-parameters: those needing a refit, then those read at scoring time (tuned without refitting)
GRIDS = {
    "linear": ({"user_exp": [0.5], "item_exp": [0.5]}, {}),
    "lowpass": ({"rank": [32, 64, 96, 128]}, {}),
    "gfcf": ({"rank": [64, 256], "item_exp": [0.5]}, {"alpha": [0.3, 0.6, 1.0]}),
    "chebyshev": ({"order": [8], "alpha": [0.0], "rank": [256]},
                  {"cutoff": [0.8, 0.9, 0.95], "beta": [0.0], "flatness": [0.0]}),
    "cascade": ({}, {"restart": [0.5, 0.85], "carry": [0.6], "steps": [2], "own": [0.0, 1.0, 4.0],
                     "stage_bonus": [-0.5, 0.0], "conv_exp": [0.5], "smoothing": [10.0]}),
}
ANCHORS = {"gowalla": ("ChebyCF", 0.1941, "recall@20"), "tmall_mb": ("CascadingRank", 0.3324, "hit_rate@10"),
           "ml1m": (None, None, "recall@20"), "yelp_cat": (None, None, "recall@20")}
TARGETS = {"gowalla": 0.200, "tmall_mb": 0.34}


def validation(b: Bench) -> tuple[Dataset, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """(fit dataset, validation users, truth CSR): the valid split if shipped, else a 10% (tmall: 20%) hold-out."""
    data = b.data
    if data.has_split("valid"):
        val = data.split("valid", relations=[b.target])
        fit = data
    else:
        tr = data.split("train")
        is_target = tr.rel == data.relation_code(b.target)
        if b.spec["exclude"] == "relation":  # one held-out target edge per user, like the test split
            hold = one_per_user(tr.src, is_target, seed=0)
        else:
            hold = holdout_split(tr.src, tr.dst, 0.1, seed=0) & is_target
        fit = Dataset(ids=data.ids, relations=data.relations, edges={"train": tr.select(~hold)})
        val = tr.select(hold)
    users = np.unique(val.src)
    if len(users) > 3000:
        users = np.sort(np.random.default_rng(0).choice(users, 3000, replace=False))
    keep = np.isin(val.src, users)
    truth = csr_from_pairs(np.searchsorted(users, val.src[keep]), val.dst[keep], len(users))
    return fit, users, truth


def one_per_user(src: np.ndarray, eligible: np.ndarray, seed: int = 0) -> np.ndarray:
    """Mask holding out one ``eligible`` edge per user (uniformly at random, seeded) among users with two or more."""
    idx = np.flatnonzero(eligible)
    idx = idx[np.random.default_rng(seed).permutation(len(idx))]
    users, first, count = np.unique(src[idx], return_index=True, return_counts=True)
    mask = np.zeros(len(src), dtype=bool)
    mask[idx[first[count >= 2]]] = True
    return mask


def relations_of(b: Bench, kind: str) -> list[str]:
    names = [r.name for r in b.data.relations]
    if kind == "cascade":
        return [r for r in ("view", "cart", "buy") if r in names]
    return names  # single-graph filters: the union of every behaviour


def tune(b: Bench, kind: str, fit_data, users, truth) -> tuple[dict, list[dict]]:
    """Best hyper-parameters of ``kind`` by validation recall@K (HR@K for tmall), and every trial."""
    refit_grid, score_grid = GRIDS[kind]
    k, metric = b.spec["k"], ANCHORS[b.name][2].split("@")[0] + f"@{b.spec['k']}"
    trials, best = [], None
    for rp in _product(refit_grid):
        base = {**rp, **{n: v[0] for n, v in score_grid.items()}}
        m = make_filter(kind, **base).fit(fit_data, relations=relations_of(b, kind), target=b.target)
        for sp_ in _product(score_grid):
            m.params.update(sp_)
            if isinstance(m, SpectralFilter):
                m._densify()
            top, _ = m.recommend(users, k=k)
            value = ranking_metrics(top, truth[0], truth[1], [k])[metric]
            trials.append({**rp, **sp_, "valid": value})
            print(f"    {kind} {rp | sp_} valid {metric}={value:.4f}", flush=True)
            if best is None or value > best[0]:
                best = (value, {**rp, **sp_})
    return best[1], trials


def _product(grid: dict) -> list[dict]:
    return [dict(zip(grid, v)) for v in itertools.product(*grid.values())]


def run_kind(b: Bench, kind: str) -> dict:
    t0 = time.perf_counter()
    fit_data, users, truth = validation(b)
    params, trials = tune(b, kind, fit_data, users, truth)
    tune_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    m = make_filter(kind, **params).fit(b.eval_data, relations=relations_of(b, kind), target=b.target)
    fit_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    top, _ = m.recommend(b.users, k=max(b.spec["ks"]))
    score_s = time.perf_counter() - t2
    metrics = b.score_topk(top, kind)
    return b.row(kind, "exact", metrics, train_s=fit_s, score_s=score_s, tuning_s=tune_s, config=params,
                 tuning=trials)


def show(r: dict, base: dict | None, name: str) -> None:
    k = r["k"]
    met = ANCHORS[name][2]
    line = (f"  {r['model']:<10} recall@{k}={r['metrics'][f'recall@{k}']:.4f} ndcg@{k}={r['metrics'][f'ndcg@{k}']:.4f}"
            f" hr@{k}={r['metrics'][f'hit_rate@{k}']:.4f} fit {r.get('train_s', 0):.1f}s")
    if "score_s" in r:
        line += f" score {r['score_s']:.1f}s"
    if base is not None:
        line += f"  x{r['metrics'][met] / base['metrics'][met]:.3f} ALS ({met})"
    anchor, value, _ = ANCHORS[name]
    if anchor:
        line += f"  x{r['metrics'][met] / value:.3f} {anchor}"
    if r.get("config"):
        line += f"  {r['config']}"
    print(line, flush=True)


def override_grids(specs: list[str]) -> None:
    """Apply ``kind.param=v1,v2`` overrides to GRIDS (the parameter keeps its refit/scoring side)."""
    for spec in specs:
        key, _, values = spec.partition("=")
        kind, _, name = key.partition(".")
        if kind not in GRIDS or not values:
            raise SystemExit(f"--grid {spec!r}: expected KIND.PARAM=V1,V2 with KIND one of {sorted(GRIDS)}")
        try:
            vals = [json.loads(v) for v in values.split(",")]
        except ValueError as e:
            raise SystemExit(f"--grid {spec!r}: values must be numbers or JSON literals ({e})") from None
        refit, score = GRIDS[kind]
        (refit if name in refit else score)[name] = vals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--kinds", nargs="+", default=None, choices=list(GRIDS),
                   help="default: linear lowpass gfcf chebyshev (+ cascade on tmall_mb)")
    p.add_argument("--no-als", action="store_true", help="skip the ALS baseline (no ratios)")
    p.add_argument("--work", default=str(ROOT / "runs" / "filters"))
    p.add_argument("--rows", default=None, help="write the rows as JSON")
    p.add_argument("--grid", nargs="+", default=[], metavar="KIND.PARAM=V1,V2",
                   help="replace one grid's values, e.g. cascade.own=2,4,8 (new names join the scoring grid)")
    a = p.parse_args()
    override_grids(a.grid)
    print("command: python bench/filters.py " + " ".join(sys.argv[1:]), flush=True)
    rows = []
    for name in a.datasets:
        if not (DATA / DATASETS[name]["file"]).is_file():
            print(f"skipping {name}: not found", flush=True)
            continue
        b = Bench(name, Path(a.work))
        print(f"{name}: {b.n_users:,} users, {b.n_items:,} items, {len(b.users):,} test users", flush=True)
        base = None
        if not a.no_als:
            base = b.als("ALS", ALS_GRID_SMALL)
            show(base, None, name)
            rows.append(base)
        kinds = a.kinds or (["linear", "lowpass", "gfcf", "chebyshev"]
                            + (["cascade"] if "view" in [r.name for r in b.data.relations] else []))
        for kind in kinds:
            r = run_kind(b, kind)
            show(r, base, name)
            rows.append(r)
            if a.rows:
                Path(a.rows).parent.mkdir(parents=True, exist_ok=True)
                Path(a.rows).write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
