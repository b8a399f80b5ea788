"""`mixrec fit-filter` and the evaluation of a filter model directory (used by `mixrec evaluate`)."""
from __future__ import annotations

import json
import time
from typing import Sequence

import numpy as np

from mixrec.data.dataset import Dataset
from mixrec.evaluate.metrics import csr_from_pairs, ranking_metrics
from mixrec.filters.base import binary_matrix
from mixrec.ids import IdLookup


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
    p.add_argument("--table-k", type=int, default=0, metavar="K",
                   help="also rank every training user's top K now (seen target items excluded) and save it: "
                        "a request for a training user with k <= K is then a lookup (default 0: no table)")
    p.set_defaults(func=cmd_fit_filter)


def cmd_fit_filter(a) -> int:
    from mixrec.filters import make_filter
    params = {}
    for item in a.param:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param {item!r}: expected NAME=VALUE")
        params[name] = json.loads(value)
    if a.table_k < 0:
        raise SystemExit(f"--table-k {a.table_k}: expected K >= 0 (0: no per-user table)")
    t0 = time.perf_counter()
    model = make_filter(a.kind, **params).fit(a.data, relations=a.relations, target=a.target, table_k=a.table_k,
                                              progress=True)
    model.save(a.out)
    table = f", top-{a.table_k} table of {model.n_users:,} users" if a.table_k else ""
    print(f"fitted {a.kind}{table} in {time.perf_counter() - t0:.1f}s -> {a.out}")
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
        seen = binary_matrix(tr.src, tr.dst, model.n_users, model.n_items)
    top, _ = model._ranked(lambda lo, hi: model.score_users(users[lo:hi]), len(users), max(ks),
                           (seen, users) if seen is not None else None, batch)
    metrics = ranking_metrics(top, truth[0], truth[1], ks)
    return {"relations": {rel: {"users": int(len(users)), "exact": metrics}},
            "settings": {"ks": list(ks), "split": split, "exclude_seen": exclude_seen, "methods": ["exact"]}}


def _indices(ids: np.ndarray, raw: Sequence[str], where: str) -> np.ndarray:
    return IdLookup(ids).require(list(raw), where)


def retrieve_filter(model, a) -> int:
    """`mixrec retrieve FILTER_DIR`: exact top-k per user written as Parquet (user, rank, item, score, component=-1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mixrec.io import atomic_file
    if a.history:
        raise ValueError("--history with a graph-filter model: use FilterModel.recommend_from_history (no fold-in)")
    users = np.arange(model.n_users)
    if a.users:
        from pathlib import Path
        raw = [line.strip() for line in Path(a.users).read_text().splitlines() if line.strip()]
        users = _indices(model.ids["user"], raw, a.users)
    items, scores = model.recommend(users, k=a.k, exclude_seen=not a.include_seen)
    keep = items >= 0
    rows = np.broadcast_to(np.arange(items.shape[0])[:, None], items.shape)[keep]
    table = pa.table({"user": model.ids["user"][users][rows], "rank": np.nonzero(keep)[1].astype(np.int32),
                      "item": model.ids["item"][items[keep]], "score": scores[keep].astype(np.float32),
                      "component": np.full(int(keep.sum()), -1, np.int32)})
    with atomic_file(a.out) as fh:
        pq.write_table(table, fh)
    print(f"{table.num_rows:,} candidates for {len(users):,} users written to {a.out}")
    return 0


def similar_filter(model, a) -> int:
    """`mixrec similar FILTER_DIR ITEM...`: each item's one-item history through the filter."""
    idx = _indices(model.ids["item"], a.items, "items")
    items, scores = model.similar(idx, k=a.k)
    names = model.ids["item"]
    for raw, row, sc in zip(a.items, items, scores):
        print(f"{raw}: " + ", ".join(f"{names[i]} ({s:.3f})" for i, s in zip(row, sc) if i >= 0))
    return 0
