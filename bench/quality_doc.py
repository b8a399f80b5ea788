"""Tables (markdown) and plots (PNG) of bench/quality.py rows; hand-written notes below the marker survive re-runs."""
from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

NOTES_MARKER = "<!-- notes: kept across re-runs -->"
NAMES = {"tmall_mb": "tmall_mb (target buy; only buy-train items excluded)"}


def _fmt(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.4f}"


def _epochs(r: dict):
    """The epochs of the reported model (the refit's, under the refit protocol)."""
    return r.get("refit_epochs") or r.get("epochs")


def _label(r: dict) -> str:
    epochs = _epochs(r)
    return r["model"] + (f" [{r['variant']}]" if r.get("variant") else "") + \
        (" [train+valid]" if r.get("protocol") == "refit" else "") + \
        (f", {epochs} ep" if epochs and r.get("section", "main") in ("main", "probe") else "")


def _keys(rows: list[dict]) -> list[str]:
    k = rows[0]["k"]
    keys = [f"recall@{k}", f"ndcg@{k}", f"hit_rate@{k}"]
    if any(r["metrics"].get("div@50") == r["metrics"].get("div@50") and "div@50" in r["metrics"] for r in rows):
        keys += ["div@50", "label_coverage@50"]
    return keys + ["catalog_coverage@50"]


def table(rows: list[dict], ratio_to: str | None) -> list[str]:
    """One markdown table; ``ratio_to`` names the row whose recall the last column divides by."""
    keys = _keys(rows)
    k = rows[0]["k"]
    bases = {r.get("protocol"): r for r in reversed(rows) if r["model"] == ratio_to and r["ranking"] == "exact"}
    base = bases.get(None) or next(iter(bases.values()), None)
    head = "| model | ranking | " + " | ".join(keys) + " | epochs | fit s |"
    head += f" recall / {ratio_to} |" if base else ""
    out = [head, "|---" * (len(keys) + 4 + (1 if base else 0)) + "|"]
    for r in rows:
        m = r["metrics"]
        cells = f"| {_label(r)} | {r['ranking']} | " + " | ".join(_fmt(m.get(x)) for x in keys)
        cells += f" | {_epochs(r) or ''} | {r.get('train_s', 0):.0f} |"
        if base:  # against the ALS row of the same protocol where there is one
            ref = bases.get(r.get("protocol"), base)
            cells += f" {m[f'recall@{k}'] / ref['metrics'][f'recall@{k}']:.3f} |"
        out.append(cells)
    return out


BASELINES = ("popularity", "ALS")


def dedup_baselines(rows: list[dict]) -> list[dict]:
    """``rows`` without repeats of a baseline row: each row file of a merge recomputes popularity and ALS, so
    a baseline row whose dataset, model, variant, protocol, ranking and metrics equal an earlier row's is
    dropped (the first is kept where it stands); every other row, and a baseline whose figures differ, stays."""
    seen, out = set(), []
    for r in rows:
        if str(r["model"]).startswith(BASELINES):
            key = (r["dataset"], r["model"], r.get("variant"), r.get("protocol"), r["ranking"],
                   tuple(sorted((k, round(float(v), 6)) for k, v in r["metrics"].items())))
            if key in seen:
                continue
            seen.add(key)
        out.append(r)
    return out


def write_doc(out: Path, rows: list[dict], commands: list[str], seconds: float | None,
              title: str | None = None) -> None:
    """Write ``out`` (tables) and PNG plots next to it (``<stem>/``)."""
    from quality_plots import make_plots

    img_dir = out.parent / out.stem
    plots = make_plots(rows, img_dir)
    when = dt.date.today().isoformat()
    cpu = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), shared"
    title = title or "Retrieval quality: mixrec against popularity, implicit ALS and the single embedding"
    lines = [f"# {title}", "",
             f"Generated on {when} on {cpu}" + (f", {seconds / 60:.1f} min." if seconds else "."), "",
             "Commands:", "", "```bash"] + commands + ["```", "",
             "Full ranking over all items; every training item of the user excluded (tmall_mb: only the user's "
             "buy training items, as in the published protocol). `exact` ranks all items by the pooled score; "
             "`round-robin` is the retrieval output (section 3.5); `rescore` ranks the union of the same per-component "
             "neighbour lists by the exact pooled score (`index.merge=rescore`). ALS is tuned on gowalla's valid split and on a "
             "seeded 10% hold-out of the training edges elsewhere (the grid and the values are listed under each "
             "table), then refitted on all training edges. Rows marked *[train+valid]* follow the published "
             "gowalla protocol (`--valid-protocol refit`): the valid split chose mixrec's epochs (early stopping) "
             "and ALS's settings, then the model was refitted on train + valid (LightGCN's original training "
             "set) and every train and valid item is excluded from the test ranking; the other gowalla rows were "
             "trained on train only with only train items excluded. mixrec uses `Config()` defaults except the columns "
             "named in *model* and the epochs. *fit s*: single-threaded wall time of mixrec's training, of ALS's "
             "final fit, of popularity's counting and ranking, on a shared machine (see the notes).", ""]
    main = [r for r in rows if r.get("section", "main") == "main"]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        part = [r for r in main if r["dataset"] == ds]
        if part:
            ref = "ALS (all behaviours)" if ds == "tmall_mb" else "ALS"
            lines += [f"## {NAMES.get(ds, ds)}", ""] + table(part, ref) + [""]
        als = [r for r in part if r["model"].startswith("ALS")]
        for r in als:
            c = r["config"]
            tried = "; ".join(f"{t['factors']}/{t['regularization']:g}/{t['alpha']:g}: {t['valid']:.4f}"
                              for t in r.get("tuning", []))
            lines.append(f"- {_label(r)}: factors {c['factors']}, regularization {c['regularization']:g}, alpha "
                         f"{c['alpha']:g}, {c['iterations']} iterations, chosen by validation Recall@{r['k']} "
                         f"(factors/reg/alpha: value) {tried}; tuning took {r.get('tuning_s', 0):.0f} s")
        if als:
            lines.append("")
        probe = [r for r in rows if r["dataset"] == ds and r.get("section") == "probe"]
        if probe:
            lines += [f"### {ds}: label prediction probe (logistic regression on item embeddings)", "",
                      "| model | item dims | macro AUC | micro F1 |", "|---|---|---|---|"]
            lines += [f"| {_label(r)} | {r['metrics']['dims']:.0f} | {_fmt(r['metrics']['macro_auc'])} | "
                      f"{_fmt(r['metrics']['micro_f1'])} |" for r in probe]
            lines.append("")
        for sec in dict.fromkeys(r.get("section") for r in rows if r["dataset"] == ds
                                 and str(r.get("section", "")).startswith("ablation")):
            part = [r for r in rows if r["dataset"] == ds and r.get("section") == sec]
            lines += [f"### {ds}: {sec} ({part[0].get('epochs')} epochs)", ""] + table(part, None) + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({img_dir.name}/{p.name})" for p in plots] + [""]
    notes = ""
    if out.is_file() and NOTES_MARKER in out.read_text():
        notes = out.read_text().split(NOTES_MARKER, 1)[1]
    from mixrec.io import atomic_file

    with atomic_file(out, "w") as fh:
        fh.write("\n".join(lines) + "\n" + NOTES_MARKER + notes)
    print(f"wrote {out} and {len(plots)} plots in {img_dir}")
