"""Evaluation: full-ranking accuracy and diversity, from exact scores and from round-robin retrieval."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mixrec.data.dataset import Dataset
from mixrec.evaluate.diagnostics import (component_cosine, dead_components, dominant_labels, effective_components,
                                         hit_component_share, minority_recall)
from mixrec.evaluate.diversity import diversity_metrics
from mixrec.evaluate.exact import csr_rows, exact_topk
from mixrec.evaluate.labels import ItemLabels, load_item_labels
from mixrec.evaluate.metrics import csr_from_pairs, ranking_metrics

METHODS = ("exact", "retrieval")
EXCLUDE = ("all", "relation", "none")

__all__ = ["evaluate", "evaluate_topk", "model_diagnostics", "ItemLabels", "load_item_labels", "ranking_metrics",
           "diversity_metrics"]


def evaluate_topk(topk: np.ndarray, truth: tuple[np.ndarray, np.ndarray], ks: Sequence[int], n_items: int,
                  labels: ItemLabels | None = None, dominant: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy and diversity metrics of ranked lists against a CSR of relevant items.

    With ``labels`` and ``dominant`` (each row's dominant labels, :func:`~mixrec.evaluate.diagnostics.
    dominant_labels`) also ``minority_recall@K``.
    """
    out = ranking_metrics(topk, truth[0], truth[1], ks)
    out.update(diversity_metrics(topk, labels, ks, n_items))
    if labels is not None and dominant is not None:
        out.update(minority_recall(topk, truth[0], truth[1], dominant, labels, ks))
    return out


def model_diagnostics(model, weight_set: str = "all") -> dict[str, float]:
    """Means over all source nodes: pairwise cosine of a node's components and the effective number of
    components (exp of the entropy of its eq. 5 weights); the share of components with weight below
    :data:`~mixrec.evaluate.diagnostics.DEAD_WEIGHT`."""
    t = model.source_type
    w = model.mixture_weights(t, weight_set)
    return {"components": int(w.shape[1]),
            "component_cosine": float(np.nanmean(component_cosine(model.vectors(t).numpy())))
            if w.shape[1] > 1 else float("nan"),
            "effective_components": float(effective_components(w).mean()),
            "dead_weight": dead_components(w)["dead_weight"]}


def evaluate(model, dataset: Dataset | str | Path, ks: Sequence[int] = (20, 50), *, split: str = "test",
             relation: str | None = None, exclude_seen: str = "all", labels: ItemLabels | None = None,
             methods: Sequence[str] = METHODS, weight_set: str = "all", max_users: int | None = None,
             seed: int = 0, retriever=None, progress: bool = False, index_config=None) -> dict:
    """Evaluate every relation (or one) of ``split``, each with full ranking over its own destination type.

    ``exclude_seen``: 'all' removes every training destination of the source within the relation's
    destination type (all relations between the same two types), 'relation' only the evaluated
    relation's training destinations (the multi-behaviour protocol), 'none' nothing. Returns
    ``{"relations": {name: {"source_type", "target_type", "users", method: metrics}}, "settings": {...}}``;
    ``method`` is 'exact' (all destinations ranked by the pooled score) and/or 'retrieval' (the served KNN
    output, merged as ``index_config`` says, default the model's index config). ``labels`` describe the model's
    default target type and apply to relations ending there.
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
    names = [relation] if relation else [r.name for r in dataset.relations]
    report: dict = {"relations": {}, "settings": {"ks": ks, "split": split, "exclude_seen": exclude_seen,
                                                  "weight_set": weight_set, "methods": list(methods)},
                    "diagnostics": {"model": model_diagnostics(model, weight_set), "relations": {}}}
    retrievers = {} if retriever is None else {(retriever.source_type, retriever.target_type): retriever}
    for name in names:
        rel = dataset.relation(name)
        s_t, d_t = rel.source_type, rel.target_type
        n_items = model.num(d_t)
        e = dataset.split(split, relations=[name])
        users = np.unique(e.src)
        if max_users and len(users) > max_users:
            users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
        if len(users) == 0:
            continue
        keep = np.isin(e.src, users)
        truth = csr_from_pairs(np.searchsorted(users, e.src[keep]), e.dst[keep], len(users))
        excl = {"all": True, "relation": [name], "none": False}[exclude_seen]
        res: dict = {"source_type": s_t, "target_type": d_t, "users": int(len(users))}
        labelled = labels if d_t == model.target_type else None  # labels describe the model's target type
        dominant = None
        if labelled is not None:  # from every training item of the user, whatever the relation
            seen_all = model.seen(source_type=s_t, target_type=d_t)
            dominant = dominant_labels(*csr_from_pairs(*csr_rows(*seen_all, users), len(users)), labels)
        for method in methods:
            t0 = time.perf_counter()
            if method == "exact":
                seen = None if excl is False else model.seen(None if excl is True else excl, source_type=s_t,
                                                              target_type=d_t)
                top, _ = exact_topk(model, users, kmax, seen, progress=progress, source_type=s_t, target_type=d_t)
            else:
                if (s_t, d_t) not in retrievers:
                    retrievers[(s_t, d_t)] = Retriever(model, weight_set, index_config=index_config, source_type=s_t,
                                                       target_type=d_t)
                _, cands = retrievers[(s_t, d_t)].recommend_all(kmax, users=users, exclude_seen=excl,
                                                                progress=progress)
                top = cands.items
                w_src = retrievers[(s_t, d_t)].w_src  # the weight set the retriever already holds
                report["diagnostics"]["relations"][name] = _retrieval_diagnostics(cands, truth, ks, w_src[users])
            metrics = evaluate_topk(top, truth, ks, n_items, labelled, dominant)
            metrics["seconds"] = time.perf_counter() - t0
            res[method] = metrics
        report["relations"][name] = res
    return report


def _retrieval_diagnostics(cands, truth: tuple[np.ndarray, np.ndarray], ks: Sequence[int],
                           weights: np.ndarray) -> dict:
    """Per K: each source component's share of the round-robin hits and the dead components of the users."""
    out: dict = {}
    for k in ks:
        share = hit_component_share(cands.items, cands.components, truth[0], truth[1], k, weights.shape[1])
        out[f"component_hit_share@{k}"] = [float(x) for x in share]
        out.update({f"{key}@{k}": v for key, v in dead_components(weights, cands.components, k).items()
                    if key != "dead_weight"})
    out["dead_weight"] = dead_components(weights)["dead_weight"]
    return out


def format_diagnostics(report: dict) -> str:
    """Plain-text lines of the report's mixture diagnostics (empty when it has none)."""
    diag = report.get("diagnostics")
    if not diag:
        return ""
    m = diag["model"]
    lines = [f"mixture diagnostics ({m['components']} components per user): mean pairwise component cosine "
             f"{_fmt(m['component_cosine'])}, effective components (exp entropy of eq. 5 weights) "
             f"{_fmt(m['effective_components'])}, components with weight < 0.01: {_fmt(m['dead_weight'])}"]
    for rel, d in diag["relations"].items():
        for k in report["settings"]["ks"]:
            share = " ".join(f"c{i}={_fmt(x)}" for i, x in enumerate(d[f"component_hit_share@{k}"]))
            lines.append(f"  {rel} retrieval @{k}: hits found by component {share}; dead (weight < 0.01 or no "
                         f"slot won) {_fmt(d[f'dead@{k}'])}, unused {_fmt(d[f'dead_unused@{k}'])}")
    return "\n".join(lines)


def format_report(report: dict, keys: Sequence[str] | None = None) -> str:
    """A plain-text table: one row per relation (with the types it ranks) and method, then the mixture
    diagnostics."""
    ks = report["settings"]["ks"]
    keys = keys or [f"{m}@{k}" for m in ("recall", "ndcg", "hit_rate", "mrr", "div", "label_coverage",
                                          "catalog_coverage", "minority_recall") for k in ks]
    rows = []
    for rel, res in report["relations"].items():
        for method in report["settings"]["methods"]:
            if method in res:
                types = f"{res.get('source_type', '?')}->{res.get('target_type', '?')}"
                rows.append([rel, types, method] + [_fmt(res[method].get(key)) for key in keys])
    header = ["relation", "types", "method"] + list(keys)
    present = [i for i in range(len(header)) if i < 3 or any(r[i] != "-" for r in rows)]
    header = [header[i] for i in present]
    rows = [[r[i] for i in present] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    diag = format_diagnostics(report)
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows] + ([diag] * bool(diag)))


def _fmt(v) -> str:
    if v is None:
        return "-"
    return "nan" if v != v else f"{v:.4f}"
