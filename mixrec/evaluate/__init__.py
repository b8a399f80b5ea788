"""Evaluation: full-ranking accuracy and diversity, from exact scores and from round-robin retrieval."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mixrec.data.dataset import Dataset
from mixrec.evaluate.diversity import diversity_metrics
from mixrec.evaluate.exact import exact_topk
from mixrec.evaluate.labels import ItemLabels, load_item_labels
from mixrec.evaluate.metrics import csr_from_pairs, ranking_metrics

METHODS = ("exact", "retrieval")
EXCLUDE = ("all", "relation", "none")

__all__ = ["evaluate", "evaluate_topk", "ItemLabels", "load_item_labels", "ranking_metrics", "diversity_metrics"]


def evaluate_topk(topk: np.ndarray, truth: tuple[np.ndarray, np.ndarray], ks: Sequence[int], n_items: int,
                  labels: ItemLabels | None = None) -> dict[str, float]:
    """Accuracy and diversity metrics of ranked lists against a CSR of relevant items."""
    out = ranking_metrics(topk, truth[0], truth[1], ks)
    out.update(diversity_metrics(topk, labels, ks, n_items))
    return out


def evaluate(model, dataset: Dataset | str | Path, ks: Sequence[int] = (20, 50), *, split: str = "test",
             relation: str | None = None, exclude_seen: str = "all", labels: ItemLabels | None = None,
             methods: Sequence[str] = METHODS, weight_set: str = "all", max_users: int | None = None,
             seed: int = 0, retriever=None, progress: bool = False) -> dict:
    """Evaluate every relation (or one) of ``split`` with full ranking over all items.

    ``exclude_seen``: 'all' removes every training item of the user, 'relation' only the evaluated
    relation's training items (the multi-behaviour protocol), 'none' nothing. Returns
    ``{"relations": {name: {method: metrics}}, "settings": {...}}``; ``method`` is 'exact' (all items
    ranked by the pooled score) and/or 'retrieval' (round-robin KNN output).
    """
    from mixrec.retrieve import Retriever

    if not isinstance(dataset, Dataset):
        dataset = Dataset.load(dataset)
    if exclude_seen not in EXCLUDE:
        raise ValueError(f"exclude_seen must be one of {EXCLUDE}, got {exclude_seen!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown evaluation method(s) {bad}; choose from {METHODS}")
    ks = sorted({int(k) for k in ks})
    kmax = ks[-1]
    n_items = model.num(model.target_type)
    names = [relation] if relation else [r.name for r in dataset.relations]
    report: dict = {"relations": {}, "settings": {"ks": ks, "split": split, "exclude_seen": exclude_seen,
                                                  "weight_set": weight_set, "methods": list(methods)}}
    if "retrieval" in methods and retriever is None:
        retriever = Retriever(model, weight_set)
    for name in names:
        e = dataset.split(split, relations=[name])
        users = np.unique(e.src)
        if max_users and len(users) > max_users:
            users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
        if len(users) == 0:
            continue
        keep = np.isin(e.src, users)
        truth = csr_from_pairs(np.searchsorted(users, e.src[keep]), e.dst[keep], len(users))
        excl = {"all": True, "relation": [name], "none": False}[exclude_seen]
        res: dict = {"users": int(len(users))}
        for method in methods:
            t0 = time.perf_counter()
            if method == "exact":
                seen = None if excl is False else model.seen(None if excl is True else excl)
                top, _ = exact_topk(model, users, kmax, seen, progress=progress)
            else:
                _, cands = retriever.recommend_all(kmax, users=users, exclude_seen=excl, progress=progress)
                top = cands.items
            metrics = evaluate_topk(top, truth, ks, n_items, labels)
            metrics["seconds"] = time.perf_counter() - t0
            res[method] = metrics
        report["relations"][name] = res
    return report


def format_report(report: dict, keys: Sequence[str] | None = None) -> str:
    """A plain-text table: one row per relation and method."""
    ks = report["settings"]["ks"]
    keys = keys or [f"{m}@{k}" for m in ("recall", "ndcg", "hit_rate", "mrr", "div", "label_coverage",
                                          "catalog_coverage") for k in ks]
    rows = []
    for rel, res in report["relations"].items():
        for method in report["settings"]["methods"]:
            if method in res:
                rows.append([rel, method] + [_fmt(res[method].get(key)) for key in keys])
    header = ["relation", "method"] + list(keys)
    present = [i for i in range(len(header)) if i < 2 or any(r[i] != "-" for r in rows)]
    header = [header[i] for i in present]
    rows = [[r[i] for i in present] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _fmt(v) -> str:
    if v is None:
        return "-"
    return "nan" if v != v else f"{v:.4f}"
