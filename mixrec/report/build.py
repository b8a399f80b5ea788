"""`mixrec report`: one self-contained HTML page about a trained model (no scripts, no network)."""
from __future__ import annotations

import datetime as dt
import json
from html import escape
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow.csv as pacsv
import torch

from mixrec.evaluate.diagnostics import component_cosine, effective_components
from mixrec.evaluate.labels import ItemLabels, load_item_labels
from mixrec.io import atomic_file
from mixrec.model.mixture import MixtureModel
from mixrec.report.svg import bar_chart, histogram, line_chart, scatter_chart

CSS = """body{font-family:sans-serif;margin:24px;max-width:1150px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
.charts{display:flex;flex-wrap:wrap;gap:12px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}.user{border:1px solid #ccc;border-radius:6px;
padding:8px 12px;margin:10px 0}.comp{display:inline-block;vertical-align:top;width:260px;margin:4px 12px 4px 0}
.w{font-weight:bold}.lab{color:#666;font-size:12px}.empty{color:#999}"""


def component_top_items(user_vecs: torch.Tensor, item_vecs: torch.Tensor, k: int,
                        exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each user component (C_s, n) the ``k`` items whose best item component is most similar.

    ``item_vecs`` is (N, C_d, n), unit rows. Returns (items (C_s, k), cosine (C_s, k)); ``exclude`` items
    (e.g. already seen) are skipped.
    """
    sims = torch.einsum("cn,idn->cid", user_vecs, item_vecs).amax(-1)  # (C_s, N)
    if exclude is not None and len(exclude):
        sims[:, torch.as_tensor(exclude)] = -torch.inf
    val, idx = torch.topk(sims, min(k, sims.shape[1]), dim=1)
    return idx.numpy(), val.numpy()


weight_entropy = effective_components  # exp of the entropy of a node's mixture weights (N, C) -> (N,)


def _section(title: str, body: str, sid: str) -> str:
    return f'<section id="{sid}"><h2>{escape(title)}</h2>\n{body}\n</section>'


def _training(info: dict) -> str:
    hist = info.get("history") or []
    if not hist:
        return '<p class="empty">No training history saved with this model.</p>'
    ep = [h["epoch"] for h in hist]
    charts = [line_chart({"loss": (ep, [h["loss"] for h in hist])}, "Training loss per edge", "epoch", "loss")]
    for key in sorted({k for h in hist for k in h if k.startswith("valid_")}):
        charts.append(line_chart({key: (ep, [h.get(key, float("nan")) for h in hist])}, f"Validation {key}",
                                 "epoch", key))
    speed = line_chart({"edges/s": (ep, [h.get("edges_per_s", float("nan")) for h in hist])},
                       "Training throughput", "epoch", "edges/s")
    best = info.get("best_epoch")
    note = f"<p>{len(hist)} epochs" + (f"; best validation epoch {best} (weights kept from it)" if best else "") \
        + "</p>"
    return note + '<div class="charts">' + "".join(charts + [speed]) + "</div>"


def _evaluations(evals: dict[str, dict]) -> str:
    if not evals:
        return '<p class="empty">No evaluation given; pass <code>--evaluation FILE</code> (from ' \
               '<code>mixrec evaluate --json</code>).</p>'
    curves, points, rows = {}, {}, []
    for name, rep in evals.items():
        for rel, res in rep.get("relations", {}).items():
            for method, m in res.items():
                if not isinstance(m, dict):
                    continue
                label = f"{name} / {rel} / {method}"
                ks = sorted(int(k.split("@")[1]) for k in m if k.startswith("recall@"))
                curves[label] = (ks, [m[f"recall@{k}"] for k in ks])
                div = sorted(int(k.split("@")[1]) for k in m if k.startswith("div@"))
                if div and ks:
                    points[label] = (m[f"div@{div[-1]}"], m[f"recall@{ks[0]}"])
                rows.append(f"<tr><td>{escape(label)}</td>" + "".join(
                    f"<td>{m[f'recall@{k}']:.4f}</td>" for k in ks) + "</tr>")
    ks_head = sorted({k for c in curves.values() for k in c[0]})
    table = "<table><tr><th>model / relation / method</th>" + "".join(f"<th>recall@{k}</th>" for k in ks_head) \
        + "</tr>" + "".join(rows) + "</table>"
    charts = [line_chart(curves, "Recall@K", "K", "recall", xlog=True)]
    if points:
        charts.append(scatter_chart(points, "Recall vs diversity", "Div@K (largest K)", "Recall@K (smallest K)"))
    return '<div class="charts">' + "".join(charts) + "</div>" + table


def _diagnostics(model, evals: dict[str, dict]) -> str:
    """Component cosine per user, each evaluation's hit share per component, minority-interest recall."""
    t = model.source_type
    c = model.components(t)
    charts = []
    if c > 1:
        charts.append(histogram(component_cosine(model.vectors(t).numpy()), 20,
                                f"Mean pairwise cosine of a {t}'s components", "cosine", -1.0, 1.0))
    shares, minority, rows = {}, {}, []
    for name, rep in evals.items():
        diag = rep.get("diagnostics") or {}
        m = diag.get("model")
        if m:
            rows.append(f"<tr><td>{escape(name)}</td><td>{m['components']}</td><td>{m['component_cosine']:.3f}</td>"
                        f"<td>{m['effective_components']:.2f}</td><td>{m['dead_weight']:.3f}</td></tr>")
        for rel, d in diag.get("relations", {}).items():
            ks = sorted(int(k.split("@")[1]) for k in d if k.startswith("component_hit_share@"))
            if ks:
                shares[f"{name} / {rel} @{ks[-1]}"] = d[f"component_hit_share@{ks[-1]}"]
        for rel, res in rep.get("relations", {}).items():
            for method, mm in res.items():
                ks = sorted(int(k.split("@")[1]) for k in mm if k.startswith("minority_recall@")) \
                    if isinstance(mm, dict) else []
                if ks:
                    minority[f"{name} / {rel} / {method}"] = (ks, [mm[f"minority_recall@{k}"] for k in ks])
    if shares:
        n = max(len(v) for v in shares.values())
        charts.append(bar_chart(shares, [f"c{i}" for i in range(n)], "Share of retrieved hits per component",
                                "source component (round-robin winner)", "share of hits"))
    if minority:
        charts.append(line_chart(minority, "Minority-interest recall@K", "K", "recall", xlog=True))
    table = ("<table><tr><th>evaluation</th><th>C</th><th>mean component cosine</th><th>effective components "
             "(exp entropy)</th><th>share of weights &lt; 0.01</th></tr>" + "".join(rows) + "</table>") if rows else ""
    if not charts and not table:
        return '<p class="empty">A single component and no evaluation with diagnostics.</p>'
    return '<div class="charts">' + "".join(charts) + "</div>" + table


def _weights(model, weight_set: str) -> str:
    t = model.source_type
    c = model.components(t)
    if c == 1:
        return "<p>Sources have a single component: every mixture weight is 1.</p>"
    w = model.mixture_weights(t, weight_set)
    charts = [histogram(w.max(1), 20, f"Largest mixture weight per {t}", "max_c w", 1.0 / c, 1.0),
              histogram(weight_entropy(w), 20, f"Effective number of components per {t}", "exp(entropy)", 1.0,
                        float(c)),
              histogram(w.ravel(), 20, "All mixture weights", "w", 0.0, 1.0)]
    return f"<p>Weight set <code>{escape(weight_set)}</code>, {c} components per {t}.</p>" \
        + '<div class="charts">' + "".join(charts) + "</div>"


def _item_text(i: int, model, labels: ItemLabels | None, titles: dict | None) -> str:
    raw = model.ids[model.target_type][i]
    text = escape(str(titles.get(str(raw), raw)) if titles else str(raw))
    if labels is not None:
        names = [labels.names[j] for j in labels.indices[labels.indptr[i]:labels.indptr[i + 1]]]
        text += f' <span class="lab">{escape(", ".join(names))}</span>'
    return text


def _users(model, users: Sequence[int], weight_set: str, top: int, labels: ItemLabels | None,
           titles: dict | None) -> str:
    src_t = model.source_type
    us, items = model.vectors(src_t), model.vectors(model.target_type)
    w = model.mixture_weights(src_t, weight_set)
    indptr, seen = model.seen()
    out = []
    for u in users:
        mine = seen[indptr[u]:indptr[u + 1]]
        idx, sim = component_top_items(us[u], items, top, mine)
        comps = []
        for c in np.argsort(-w[u]):
            lis = "".join(f"<li>{_item_text(int(i), model, labels, titles)} <small>({s:.2f})</small></li>"
                          for i, s in zip(idx[c], sim[c]))
            comps.append(f'<div class="comp"><span class="w">component {c}: weight {w[u, c]:.2f}</span>'
                         f"<ol>{lis}</ol></div>")
        hist = ", ".join(_item_text(int(i), model, labels, titles) for i in mine[:8])
        out.append(f'<div class="user" data-user="{escape(str(model.ids[src_t][u]))}"><b>{escape(src_t)} '
                   f'{escape(str(model.ids[src_t][u]))}</b> ({len(mine)} training items; some: {hist})<br>'
                   + "".join(comps) + "</div>")
    return "<p>Each component's nearest items (training items excluded), components by weight.</p>" + "".join(out)


def build_report(model, *, evaluations: dict[str, dict] | None = None, labels: ItemLabels | None = None,
                 titles: dict | None = None, n_users: int = 5, top: int = 5, weight_set: str = "all",
                 seed: int = 0) -> str:
    """The report's HTML text: summary, training curves, evaluations, mixture weights, sampled users."""
    cfg = model.config
    ents = ", ".join(f"{model.num(t):,} {t} x {model.components(t)} components" for t in model.tables)
    summary = (f"<p>{ents}; dim {cfg.dim}; relations {', '.join(r.name for r in model.relations)}; "
               f"{model.info.get('edges', 0):,} training edges per epoch; pooling {cfg.pooling}, "
               f"lr {cfg.lr}, margin {cfg.margin}.</p>")
    indptr = model.seen()[0]
    active = np.flatnonzero(np.diff(indptr) > 0)
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(active, min(n_users, len(active)), replace=False)) if len(active) else []
    name = escape(str(model.path or "model"))
    parts = [f"<h1>mixrec model report: {name}</h1>", f"<p>Generated {dt.datetime.now():%Y-%m-%d %H:%M}.</p>",
             _section("Model", summary, "summary"),
             _section("Training", _training(model.info), "training"),
             _section("Evaluation", _evaluations(evaluations or {}), "evaluation"),
             _section("Mixture weights", _weights(model, weight_set), "weights"),
             _section("Mixture diagnostics", _diagnostics(model, evaluations or {}), "diagnostics"),
             _section("Sampled users and their components", _users(model, users, weight_set, top, labels, titles),
                      "users")]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>mixrec report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(model_dir: str | Path, out: str | Path | None = None, *, evaluations: Sequence[str | Path] = (),
                 item_labels: str | Path | None = None, label_col: str = "genres", title_col: str | None = None,
                 n_users: int = 5, top: int = 5, seed: int = 0) -> Path:
    """Load a model directory (and optional evaluation JSONs and an item label file) and write the HTML."""
    model = MixtureModel.load(model_dir)
    paths = [Path(p) for p in evaluations]
    stems = [p.stem for p in paths]
    names = [("model" if len(paths) == 1 else s if stems.count(s) == 1 else f"{p.parent.name}/{s}")
             for p, s in zip(paths, stems)]
    evals = {n: json.loads(p.read_text()) for n, p in zip(names, paths)}
    labels = titles = None
    if item_labels:
        labels = load_item_labels(item_labels, model.ids[model.target_type], label_col=label_col)
        if title_col:
            titles = read_titles(item_labels, title_col)
    html = build_report(model, evaluations=evals, labels=labels, titles=titles, n_users=n_users, top=top, seed=seed)
    out = Path(out) if out else Path(model_dir) / "report.html"
    with atomic_file(out, "w") as fh:
        fh.write(html)
    return out


def read_titles(path: str | Path, title_col: str, id_col: str = "item_id") -> dict[str, str]:
    """raw item id (as text) -> display title, from the same delimited file as the labels."""
    delim = "," if str(path).endswith((".csv", ".csv.gz")) else "\t"
    t = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delim),
                       convert_options=pacsv.ConvertOptions(column_types={id_col: "string", title_col: "string"},
                                                            include_columns=[id_col, title_col]))
    return dict(zip(t.column(id_col).to_pylist(), t.column(title_col).to_pylist()))
