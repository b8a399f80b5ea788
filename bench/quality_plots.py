"""PNG plots of bench/quality.py rows (matplotlib, Agg backend)."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _label(r: dict) -> str:
    return r["model"] + (f" [{r['variant']}]" if r.get("variant") else "") + \
        (f", {r['epochs']} ep" if r.get("epochs") else "") + ("" if r["ranking"] == "exact" else f" ({r['ranking']})")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def recall_at_k(rows: list[dict], ds: str, path: Path) -> Path | None:
    part = [r for r in rows if r["dataset"] == ds and r.get("section", "main") == "main" and r["ranking"] != "probe"]
    if not part:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in part:
        ks = sorted(int(k.split("@")[1]) for k in r["metrics"] if k.startswith("recall@"))
        ax.plot(ks, [r["metrics"][f"recall@{k}"] for k in ks], marker="o", label=_label(r),
                linestyle="-" if r["ranking"] == "exact" else "--")
    ax.set(xscale="log", xlabel="K", ylabel="Recall@K", title=f"{ds}: Recall@K (test, full ranking)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def recall_diversity(rows: list[dict], ds: str, path: Path) -> Path | None:
    part = [r for r in rows if r["dataset"] == ds and r["ranking"] != "probe" and "div@50" in r["metrics"]
            and r["metrics"]["div@50"] == r["metrics"]["div@50"]]
    if not part:
        return None
    k = part[0]["k"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in part:
        ax.scatter(r["metrics"]["div@50"], r["metrics"][f"recall@{k}"],
                   marker="o" if r["ranking"] == "exact" else "^")
        ax.annotate(_label(r), (r["metrics"]["div@50"], r["metrics"][f"recall@{k}"]), fontsize=6)
    ax.set(xlabel="Div@50 (genre diversity)", ylabel=f"Recall@{k}", title=f"{ds}: recall vs diversity")
    return _save(fig, path)


def learning_curves(rows: list[dict], ds: str, path: Path) -> Path | None:
    part = [r for r in rows if r["dataset"] == ds and r.get("history") and r["ranking"] == "exact"
            and r.get("section", "main") == "main"]
    if not part:
        return None
    has_valid = any(any(k.startswith("valid_") for k in r["history"][0]) for r in part)
    fig, axes = plt.subplots(1, 2 if has_valid else 1, figsize=(10 if has_valid else 6, 4), squeeze=False)
    for r in part:
        ep = [h["epoch"] for h in r["history"]]
        axes[0, 0].plot(ep, [h["loss"] for h in r["history"]], marker=".", label=_label(r))
        vk = next((k for k in r["history"][0] if k.startswith("valid_")), None)
        if has_valid and vk:
            axes[0, 1].plot(ep, [h[vk] for h in r["history"]], marker=".", label=_label(r))
            axes[0, 1].set(xlabel="epoch", ylabel=vk, title=f"{ds}: validation")
    axes[0, 0].set(xlabel="epoch", ylabel="training loss per edge", title=f"{ds}: training loss")
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)


def ablation(rows: list[dict], ds: str, section: str, path: Path) -> Path | None:
    part = [r for r in rows if r["dataset"] == ds and r.get("section") == section]
    if not part:
        return None
    k = part[0]["k"]
    names = list(dict.fromkeys(r["model"].split(": ", 1)[-1] for r in part))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax2 = ax.twinx()
    for ranking, style in (("exact", "-"), ("round-robin", "--")):
        sel = {r["model"].split(": ", 1)[-1]: r["metrics"] for r in part if r["ranking"] == ranking}
        xs = [n for n in names if n in sel]
        ax.plot(xs, [sel[n][f"recall@{k}"] for n in xs], "o" + style, color="C0", label=f"recall@{k} {ranking}")
        if "div@50" in sel[xs[0]]:
            ax2.plot(xs, [sel[n]["div@50"] for n in xs], "s" + style, color="C1", label=f"div@50 {ranking}")
    ax.set(ylabel=f"Recall@{k}", title=f"{ds}: {section}")
    ax2.set_ylabel("Div@50")
    ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7)
    return _save(fig, path)


def make_plots(rows: list[dict], out_dir: Path) -> list[Path]:
    """Every plot the rows allow; returns the written files."""
    made = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        slug = re.sub(r"[^A-Za-z0-9]+", "_", ds).strip("_")
        made += [recall_at_k(rows, ds, out_dir / f"{slug}_recall_at_k.png"),
                 recall_diversity(rows, ds, out_dir / f"{slug}_recall_diversity.png"),
                 learning_curves(rows, ds, out_dir / f"{slug}_learning_curves.png")]
        for sec in dict.fromkeys(r.get("section") for r in rows if r["dataset"] == ds
                                 and str(r.get("section", "")).startswith("ablation")):
            made.append(ablation(rows, ds, sec, out_dir / f"{slug}_{sec.replace(' ', '_')}.png"))
    return [p for p in made if p is not None]
