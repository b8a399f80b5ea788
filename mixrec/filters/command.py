"""`mixrec fit-filter` and the evaluation of a filter model directory (used by `mixrec evaluate`)."""
from __future__ import annotations

import json
import time
from typing import Sequence

import numpy as np

from mixrec.data.dataset import Dataset
from mixrec.evaluate.metrics import csr_from_pairs, ranking_metrics


def add_parser(sub) -> None:
    """Register `mixrec fit-filter DATA --out MODEL --kind KIND`."""
    from mixrec.filters import KINDS
    p = sub.add_parser("fit-filter", help="fit a closed-form graph-filter model (no training) on a dataset directory")
    p.add_argument("data")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--kind", default="gfcf", choices=sorted(KINDS))
    p.add_argument("--relations", nargs="*", default=None,
                   help="input relations (default all; cascade: in cascade order, e.g. view cart buy)")
    p.add_argument("--target", default=None, help="relation ranked (default the last of --relations)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="hyper-parameter, e.g. alpha=0.3 rank=256 (repeatable; JSON values)")
    p.set_defaults(func=cmd_fit_filter)


def cmd_fit_filter(a) -> int:
    from mixrec.filters import make_filter
    params = {}
    for item in a.param:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param {item!r}: expected NAME=VALUE")
        params[name] = json.loads(value)
    t0 = time.perf_counter()
    model = make_filter(a.kind, **params).fit(a.data, relations=a.relations, target=a.target)
    model.save(a.out)
    print(f"fitted {a.kind} in {time.perf_counter() - t0:.1f}s -> {a.out}")
    return 0


def evaluate_filter(model, data: Dataset, ks: Sequence[int], split: str = "test", relation: str | None = None,
                    exclude_seen: str = "all", batch: int = 512) -> dict:
    """Full-ranking metrics of a filter model on one relation of ``split`` (same report shape as evaluate)."""
    rel = relation or model.target
    test = data.split(split, relations=[rel])
    users = np.unique(test.src)
    truth = csr_from_pairs(np.searchsorted(users, test.src), test.dst, len(users))
    seen = None
    if exclude_seen != "none":
        tr = data.split("train", relations=None if exclude_seen == "all" else [rel])
        import scipy.sparse as sp
        seen = sp.csr_matrix((np.ones(len(tr.src), np.float32), (tr.src, tr.dst)),
                             shape=(model.n_users, model.n_items))
    top, _ = model._ranked(lambda lo, hi: model.score_users(users[lo:hi]), len(users), max(ks),
                           (lambda lo, hi: seen[users[lo:hi]]) if seen is not None else None, batch)
    metrics = ranking_metrics(top, truth[0], truth[1], ks)
    return {"relations": {rel: {"users": int(len(users)), "exact": metrics}},
            "settings": {"ks": list(ks), "split": split, "exclude_seen": exclude_seen, "methods": ["exact"]}}
