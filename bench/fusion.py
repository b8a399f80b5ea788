"""Rank fusion of a closed-form graph filter and a trained mixrec model: tuned on validation, tested on all users.

    python bench/fusion.py --dataset gowalla --model runs/quality/gowalla/model-single_1x128 \\
        --kind chebyshev --params '{"order": 8, "rank": 512, "alpha": 0.2, "cutoff": 0.9, "flatness": 1.5, "beta": 0.4}'

The two sources rank every item for a user; ``mixrec.search.rank_fusion`` adds ``w / (offset + rank)`` over
the lists that hold an item (the filter weighs 1, the model ``w``; the funnel's ``union(combine="sum")``
for one user). Protocol as bench/filters.py: the grid of (w, offset) is scored on the validation split
(the filter fitted on the fit split, the model of the epoch-selection run ``MODEL-select``, which trained
on that split, 3,000 seeded users); the chosen point is then scored once on the test split with the filter
refitted on train + valid and the refit model, ALL test users, training items excluded (bench/quality.py's
Bench). Prints each source alone and the fusion, and the fusion's ratio to the better source.

``--ranker-folds K`` (K >= 2) also orders the union of the two lists with the funnel's ranker
(bench/fusion_rank.py: ranks, scores and degrees as features): K-fold over the validation users against the
chosen fusion on the same held-out users, then fitted on every validation user (whose lists come from
sources that never saw the validation edges) and applied once to the test lists of the refitted sources.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import fusion_rank  # noqa: E402
from filters import ANCHORS, relations_of, validation  # noqa: E402
from quality import DATASETS, Bench  # noqa: E402

from mixrec.csr import csr_rows  # noqa: E402
from mixrec.evaluate.exact import exact_topk  # noqa: E402
from mixrec.evaluate.metrics import csr_from_pairs, ranking_metrics  # noqa: E402
from mixrec.filters import make_filter  # noqa: E402
from mixrec.model.mixture import MixtureModel  # noqa: E402
from mixrec.search import rank_fusion  # noqa: E402

WEIGHTS = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
OFFSETS = [0.0, 10.0, 30.0, 60.0]


def filter_lists(b: Bench, kind: str, params: dict, fit_data, users: np.ndarray, depth: int,
                 cache: Path | None) -> tuple[np.ndarray, dict]:
    """Top ``depth`` items per user of the filter fitted on ``fit_data``; read from ``cache`` when it holds them.

    The filter is deterministic (closed form, seeded SVD), so its lists depend only on the data, the users,
    the parameters and the depth: the cache file is named by a digest of those.
    """
    key = hashlib.sha256(json.dumps([b.name, kind, params, depth, int(len(fit_data.split("train").src)),
                                     users.tolist()], sort_keys=True).encode()).hexdigest()[:16]
    path = None if cache is None else cache / f"{b.name}-{kind}-{key}.npy"
    if path is not None and path.is_file():
        return np.load(path, allow_pickle=False), {"filter_cached": path.name}
    t0 = time.perf_counter()
    filt = make_filter(kind, **params).fit(fit_data, relations=relations_of(b, kind), target=b.target)
    t1 = time.perf_counter()
    top, _ = filt.recommend(users, k=depth)
    t2 = time.perf_counter()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, top)
    return top, {"filter_fit_s": t1 - t0, "filter_score_s": t2 - t1}


def source_lists(b: Bench, kind: str, params: dict, model: MixtureModel, fit_data, users: np.ndarray,
                 depth: int, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Top ``depth`` items per user of the filter fitted on ``fit_data`` and of ``model``, training items excluded."""
    f_top, times = filter_lists(b, kind, params, fit_data, users, depth, cache)
    t2 = time.perf_counter()
    rels = [b.target] if b.spec["exclude"] == "relation" else None
    seen = fit_data.split("train", relations=rels)
    m_top, _ = exact_topk(model, users, depth, csr_from_pairs(seen.src, seen.dst, b.n_users))
    t3 = time.perf_counter()
    return f_top, m_top, {**times, "model_score_s": t3 - t2}


def degrees(data, b: Bench) -> tuple[np.ndarray, np.ndarray]:
    """(item, user) training degrees of ``data``'s train split."""
    tr = data.split("train")
    return np.bincount(tr.dst, minlength=b.n_items), np.bincount(tr.src, minlength=b.n_users)


def ranker_on_validation(a, b: Bench, fit_data, vusers, vtruth, f_top, m_top, chosen: dict, select):
    """K-fold figures of the ranker against the chosen fusion on the validation users, and the ranker
    fitted on all of them."""
    k = b.spec["k"]
    u = fusion_rank.union_features(f_top, m_top, select, vusers, *degrees(fit_data, b))
    y = fusion_rank.labels_of(u, vtruth)
    fused = rank_fusion([f_top, m_top], [1.0, chosen["w"]], k, chosen["offset"]).items
    cv = []
    for i, held in enumerate(fusion_rank.folds(len(vusers), a.ranker_folds)):
        rest = np.setdiff1d(np.arange(len(vusers)), held)
        top = fusion_rank.ranked(fusion_rank.fit(u, y, rest, a.ranker_epochs), u, k)
        sub = csr_from_pairs(*csr_rows(*vtruth, held), len(held))
        got = {name: ranking_metrics(t[held], *sub, [k])[f"recall@{k}"] for name, t in (("ranker", top), ("fusion", fused))}
        cv.append(got)
        print(f"  valid fold {i}: {len(held):,} users, ranker recall@{k}={got['ranker']:.4f}, "
              f"fusion {got['fusion']:.4f}", flush=True)
    mean = {n: float(np.mean([c[n] for c in cv])) for n in ("ranker", "fusion")}
    print(f"  valid {a.ranker_folds}-fold mean: ranker {mean['ranker']:.4f}, fusion {mean['fusion']:.4f} "
          f"({mean['ranker'] / mean['fusion']:.3f}x); {u.items.shape[1]} candidates at most per user, features "
          f"{', '.join(fusion_rank.FEATURES)}", flush=True)
    return fusion_rank.fit(u, y, np.arange(len(vusers)), a.ranker_epochs), {"folds": cv, "mean": mean}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="gowalla", choices=list(DATASETS))
    p.add_argument("--model", required=True, help="a model directory written by bench/quality.py (refit)")
    p.add_argument("--kind", default="chebyshev")
    p.add_argument("--params", default="{}", help="the filter's parameters as JSON (bench/filters.py's choice)")
    p.add_argument("--depth", type=int, default=100, help="list length per source before fusion")
    p.add_argument("--weights", type=float, nargs="+", default=WEIGHTS, help="model weights to try (filter: 1)")
    p.add_argument("--offsets", type=float, nargs="+", default=OFFSETS)
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"))
    p.add_argument("--cache", default=str(ROOT / "runs" / "fusion-cache"),
                   help="folder for the filter's lists (reused by runs with another model); '' for none")
    p.add_argument("--ranker-folds", type=int, default=0,
                   help="also order the union with the funnel's ranker, checked by K-fold on validation (0: off)")
    p.add_argument("--ranker-epochs", type=int, default=5)
    p.add_argument("--rows", default=None, help="write the figures as JSON")
    a = p.parse_args(argv)
    if a.ranker_folds == 1 or a.ranker_folds < 0:
        raise SystemExit("--ranker-folds: give 0 (off) or K >= 2")
    params = json.loads(a.params)
    b = Bench(a.dataset, Path(a.work))
    k = b.spec["k"]
    metric = ANCHORS[a.dataset][2].split("@")[0] + f"@{k}"
    model_dir = Path(a.model)
    select = model_dir.with_name(model_dir.name + "-select")
    if not select.is_dir():
        raise SystemExit(f"{select} is missing: validation needs the model that trained without the valid edges "
                         f"(bench/quality.py writes MODEL-select for datasets that ship a valid split, e.g. gowalla)")
    fit_data, vusers, vtruth = validation(b)
    print(f"{a.dataset}: {len(vusers):,} validation users, {len(b.users):,} test users; {a.kind} {params}; "
          f"model {model_dir.name}", flush=True)
    cache = Path(a.cache) if a.cache else None
    select_model = MixtureModel.load(select)
    f_top, m_top, t_val = source_lists(b, a.kind, params, select_model, fit_data, vusers, a.depth, cache)

    def val(top):
        return ranking_metrics(top, vtruth[0], vtruth[1], [k])[metric]
    trials = [{"w": None, "offset": None, "source": "filter", "valid": val(f_top)},
              {"w": None, "offset": None, "source": "model", "valid": val(m_top)}]
    for w in a.weights:
        for off in a.offsets:
            trials.append({"w": w, "offset": off, "source": "fusion",
                           "valid": val(rank_fusion([f_top, m_top], [1.0, w], k, off).items)})
    for t in trials:
        print(f"  valid {t['source']:<7} w={t['w']} offset={t['offset']}: {metric}={t['valid']:.4f}", flush=True)
    best = max((t for t in trials if t["source"] == "fusion"), key=lambda t: t["valid"])
    print(f"chosen: w={best['w']} offset={best['offset']} (valid {best['valid']:.4f})", flush=True)
    ranker = None
    if a.ranker_folds:
        ranker, cv = ranker_on_validation(a, b, fit_data, vusers, vtruth, f_top, m_top, best, select_model)
        best = {**best, "ranker_cv": cv}

    model = MixtureModel.load(model_dir)
    f_top, m_top, t_test = source_lists(b, a.kind, params, model, b.eval_data, b.users,
                                        a.depth, cache)
    fused = rank_fusion([f_top, m_top], [1.0, best["w"]], max(b.spec["ks"]), best["offset"]).items
    lists = [("filter", f_top), ("model", m_top), ("fusion", fused)]
    if ranker is not None:
        u = fusion_rank.union_features(f_top, m_top, model, b.users,
                                       *degrees(b.eval_data, b))
        lists.append(("ranker", fusion_rank.ranked(ranker, u, max(b.spec["ks"]))))
    rows = {name: b.score_topk(top, f"fusion-{name}") for name, top in lists}
    anchor, value = ANCHORS[a.dataset][0], ANCHORS[a.dataset][1]
    for name, m in rows.items():
        extra = f"  {m[metric] / value:.3f}x {anchor}" if anchor else ""
        print(f"  test {name:<7} {metric}={m[metric]:.4f} ndcg@{k}={m[f'ndcg@{k}']:.4f}{extra}")
    better = max(rows["filter"][metric], rows["model"][metric])
    print(f"fusion / better source: {rows['fusion'][metric] / better:.3f}x; timings valid {t_val}, test {t_test}")
    if a.rows:
        Path(a.rows).parent.mkdir(parents=True, exist_ok=True)
        Path(a.rows).write_text(json.dumps({"dataset": a.dataset, "kind": a.kind, "params": params,
                                            "model": str(model_dir), "trials": trials, "chosen": best,
                                            "test": rows, "timings": {"valid": t_val, "test": t_test}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
