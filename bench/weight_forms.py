"""Eq. 5 weight forms, gamma_T and pruning for the served merges: a trained mixture re-weighted, no retraining.

    python bench/weight_forms.py --dataset ml1m --model runs/quality/ml1m/model-mixture_4x32
    python bench/weight_forms.py --dataset tmall_mb --model runs/quality/tmall_mb/model-mixture_4x32

The mixture weights w_c of every node (eq. 5: a softmax over the components of each training edge's
component scores at temperature gamma_T, summed per node) decide two things at serving time: how
round-robin merges the per-component lists (an item's score is max_c w_sc / rank_c) and which
components are pruned. This script recomputes the model's weight sets for each form ('sum': eq. 5 as
printed; 'responsibility': each edge adds one unit of mass) and gamma_T, and evaluates the served
round-robin output and the rescore merge on the test split (bench/quality.py's Bench and protocol, all
test users), with the effective number of components per user (exp of the weights' entropy). Then it
prunes components from the weights as trained (``--prune MIN_WEIGHT:MAX_COSINE``: ``prune.min_weight``
drops components below that weight, ``prune.max_cosine`` a component too close to a kept one of the
same user) and evaluates the same way.
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

from quality import DATASETS, Bench  # noqa: E402

from mixrec.evaluate import evaluate  # noqa: E402
from mixrec.evaluate.diagnostics import effective_components  # noqa: E402
from mixrec.model.mixture import MixtureModel  # noqa: E402
from mixrec.train.levers import prune_weights  # noqa: E402
from mixrec.weights import compute_weight_sets  # noqa: E402


def reweighted(model: MixtureModel, form: str, gamma: float) -> MixtureModel:
    """``model`` with its weight set 'all' recomputed from its training edges at (form, gamma)."""
    model.config = model.config.with_overrides({"weight_sets.all.form": form, "weight_sets.all.gamma": gamma})
    model.weights = compute_weight_sets(model)
    return model


def pruned(model: MixtureModel, min_weight: float, max_cosine: float) -> MixtureModel:
    """``model`` (weights as trained) with components pruned as ``prune.min_weight`` / ``prune.max_cosine`` say."""
    model.config = model.config.with_overrides({"prune.min_weight": min_weight, "prune.max_cosine": max_cosine})
    model.weights = prune_weights(model)
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml1m", choices=list(DATASETS))
    p.add_argument("--model", required=True, help="a mixture model directory trained on the Bench's data")
    p.add_argument("--forms", nargs="*", default=["sum", "responsibility"])
    p.add_argument("--gammas", type=float, nargs="+", default=[0.02, 0.1, 0.5, 2.0])
    p.add_argument("--prune", nargs="*", default=["0.1:1.0", "0.2:1.0", "0.0:0.9", "0.0:0.7"],
                   metavar="MIN_WEIGHT:MAX_COSINE", help="pruning settings tried on the weights as trained")
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"))
    p.add_argument("--rows", default=None, help="write the figures as JSON")
    a = p.parse_args(argv)
    b = Bench(a.dataset, Path(a.work))
    model = MixtureModel.load(a.model)
    k = b.spec["k"]
    print(f"{a.dataset}: {len(b.users):,} test users; {Path(a.model).name}: "
          f"{model.components(model.source_type)} user components; metric recall@{k}", flush=True)
    print(f"{'weights':<22} {'gamma_T':>7} {'round-robin':>11} {'rescore':>8} {'eff. comps':>10} {'s':>5}")
    rows = []
    trained, stored = model.config, model.weights  # the weights as trained: what every prune variant starts from

    def as_trained() -> MixtureModel:
        model.config, model.weights = trained, stored
        return model
    variants = [(f"{form}", f"{gamma:g}", lambda f=form, g=gamma: reweighted(model, f, g))
                for form in a.forms for gamma in a.gammas]
    for spec in a.prune:
        mw, mc = (float(x) for x in spec.split(":"))
        variants.append((f"prune w<{mw:g} cos>{mc:g}", f"{trained.weight_sets['all'].gamma:g}",
                         lambda mw=mw, mc=mc: pruned(as_trained(), mw, mc)))
    for form, gamma, make in variants:
        t0 = time.perf_counter()
        m = make()
        got = {}
        for merge in ("round_robin", "rescore"):
            rep = evaluate(m, b.eval_data, b.spec["ks"], relation=b.target, methods=["retrieval"],
                           exclude_seen=b.spec["exclude"], labels=b.labels,
                           index_config=m.config.index.model_copy(update={"merge": merge}))
            got[merge] = rep["relations"][b.target]["retrieval"]
        eff = float(np.mean(effective_components(m.mixture_weights(m.source_type))))
        rows.append({"form": form, "gamma": gamma, "effective_components": eff, **got})
        print(f"{form:<22} {gamma:>7} {got['round_robin'][f'recall@{k}']:>11.4f} "
              f"{got['rescore'][f'recall@{k}']:>8.4f} {eff:>10.2f} {time.perf_counter() - t0:>5.0f}", flush=True)
    if a.rows:
        Path(a.rows).parent.mkdir(parents=True, exist_ok=True)
        Path(a.rows).write_text(json.dumps({"dataset": a.dataset, "model": a.model, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
