"""Retrieval quality on the shared datasets: mixrec against popularity, implicit ALS and the single embedding.

    python bench/quality.py                                   # every dataset found, main models and baselines
    python bench/quality.py --datasets ml1m --rows runs/q/ml1m.json --no-doc
    python bench/quality.py --datasets ml1m --models --baselines --ablations C pooling --epochs 5
    python bench/quality.py --merge runs/q/*.json             # write docs/quality.md and plots from row files

Reads ../shared/data (a missing dataset is skipped, nothing is copied). Full ranking over all items with
the user's training items excluded (tmall_mb: only the user's *buy* training items, target buy). Baselines
are tuned on the validation split where one ships (gowalla) and otherwise on a seeded 10% hold-out of the
training edges; the test split is only used for the reported numbers. Where a valid split ships, the
default ``--valid-protocol refit`` is the published one: the valid split picks the epochs (mixrec's early
stopping) and ALS's settings, then every model is refitted on train + valid, whose items are all excluded
from the test ranking (gowalla's train + valid is LightGCN's original training set); ``hold-out`` trains
on train only and excludes train items only.
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

from mixrec.baselines import (ALSParams, factor_topk, fit_als, holdout_split, popularity_topk,  # noqa: E402
                              tune_als)
from mixrec.config import Config, parse_overrides  # noqa: E402
from mixrec.data.dataset import Dataset  # noqa: E402
from mixrec.data.ingest import ingest  # noqa: E402
from mixrec.evaluate import evaluate, evaluate_topk, load_item_labels  # noqa: E402
from mixrec.evaluate.metrics import csr_from_pairs, ranking_metrics  # noqa: E402
from mixrec.evaluate.probe import label_probe  # noqa: E402
from mixrec.io import save_json  # noqa: E402
from mixrec.train import train  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DATASETS = {
    "ml1m": {"file": "ml1m/interactions.tsv.gz", "labels": ("ml1m/items.tsv", "genres"), "k": 20,
             "ks": [10, 20, 50, 100], "target": None, "exclude": "all"},
    "gowalla": {"file": "gowalla/interactions.tsv.gz", "labels": None, "k": 20, "ks": [10, 20, 50, 100],
                "target": None, "exclude": "all"},
    "tmall_mb": {"file": "tmall_mb/interactions.tsv.gz", "labels": None, "k": 10, "ks": [10, 20, 50, 100],
                 "target": "buy", "relation_col": "behavior", "exclude": "relation"},
    "yelp_cat": {"file": "yelp_cat/interactions.tsv.gz", "labels": ("yelp_cat/item_categories.tsv.gz", "category_id"),
                 "k": 20, "ks": [10, 20, 50, 100], "target": None, "exclude": "all"},
}
MODELS = {
    "single 1x64": {"components.user": 1, "components.item": 1, "dim": 64},
    "single 1x128": {"components.user": 1, "components.item": 1, "dim": 128},
    "single 1x256": {"components.user": 1, "components.item": 1, "dim": 256},
    "mixture 4x16": {"components.user": 4, "components.item": 1, "dim": 16},
    "mixture 4x64": {"components.user": 4, "components.item": 1, "dim": 64},
    "mixture 4x32": {"components.user": 4, "components.item": 1, "dim": 32, "routing": "none"},
    "mixture 4x32 soft routing": {"components.user": 4, "components.item": 1, "dim": 32, "routing": "soft"},
    "mixture 4x32 hard routing": {"components.user": 4, "components.item": 1, "dim": 32, "routing": "hard"},
    "mixture 4x32 cluster init": {"components.user": 4, "components.item": 1, "dim": 32,
                                  "init.user_components": "clusters"},
    "mixture 4x64 cluster init": {"components.user": 4, "components.item": 1, "dim": 64,
                                  "init.user_components": "clusters"},
    "mixture 2x128 cluster init": {"components.user": 2, "components.item": 1, "dim": 128,
                                   "init.user_components": "clusters"},
    "mixture 4x128 cluster init": {"components.user": 4, "components.item": 1, "dim": 128,
                                   "init.user_components": "clusters"},
    "mixture 4x64 soft routing": {"components.user": 4, "components.item": 1, "dim": 64, "routing": "soft"},
    "mixture 4x16 (items 4x16)": {"components.user": 4, "components.item": 4, "dim": 16},
}
C_SHAPES = ((1, 64), (2, 32), (3, 21), (5, 13), (8, 8))  # C x dim = 64
ABLATIONS = {  # on ml1m, mixture at fixed C x dim = 64 unless the row says otherwise; margin: the paper's loss
    "C": {f"C={c} ({c}x{d})": {"components.user": c, "components.item": 1, "dim": d, "loss": "margin"}
          for c, d in C_SHAPES},
    "C-softmax": {f"C={c} ({c}x{d})": {"components.user": c, "components.item": 1, "dim": d}
                  for c, d in C_SHAPES},
    "pooling": {name: {"components.user": 4, "components.item": 1, "dim": 16, "loss": "margin", **over}
                for name, over in (
        ("max", {"pooling": "max"}), ("smoothmax", {"pooling": "smoothmax"}),
        ("regsmoothmax theta=0", {"pooling": "regsmoothmax", "theta": 0.0}),
        ("regsmoothmax theta=0.1", {"pooling": "regsmoothmax", "theta": 0.1}),
        ("regsmoothmax theta=0.3", {"pooling": "regsmoothmax", "theta": 0.3}))},
    "loss": {name: {"components.user": 4, "components.item": 1, "dim": 16, **over} for name, over in (
        ("margin (paper)", {"loss": "margin"}),
        ("softmax T=0.1, log-Q, mixed negatives", {"loss": "softmax", "temperature": 0.1}),
        ("softmax T=0.05, log-Q, mixed negatives", {"loss": "softmax", "temperature": 0.05}),
        ("softmax T=0.1, no log-Q", {"loss": "softmax", "temperature": 0.1, "logq": False}),
        ("softmax T=0.1, log-Q, uniform negatives only", {"loss": "softmax", "temperature": 0.1,
                                                          "negatives.batch": 0}))},
    "sides": {name: {"components.user": 4, "components.item": 1, "dim": 16, "loss": "margin", **over}
              for name, over in (
        ("one-sided (paper)", {}), ("two-sided", {"negatives.two_sided": True}))},
    "sides-softmax": {name: {"components.user": 4, "components.item": 1, "dim": 16, "loss": "softmax", **over}
                      for name, over in (("one-sided", {}), ("two-sided", {"negatives.two_sided": True}))},
}
ALS_GRID = [ALSParams(factors=f, regularization=r, alpha=a) for f in (64, 128) for r in (0.1, 1.0, 10.0)
            for a in (10.0, 40.0)]
ALS_GRID_SMALL = [ALSParams(factors=f, regularization=r, alpha=10.0) for f in (64, 128) for r in (1.0, 10.0)]


class Bench:
    """One dataset prepared for evaluation: ingested dataset(s), test truth, exclusion CSR, labels."""

    def __init__(self, name: str, work: Path, variant: str | None = None, sample_users: int | None = None,
                 protocol: str = "refit"):
        self.name, self.spec, self.variant, self.sample_users = name, DATASETS[name], variant, sample_users
        self.work = work / (name if variant is None else f"{name}-{variant}")
        t0 = time.perf_counter()
        src = DATA / self.spec["file"]
        if variant == "buy-only":
            src = _filtered_copy(src, self.work.parent / f"{name}-buy.tsv", "buy", column=self.spec["relation_col"])
        if sample_users:
            src = _filtered_copy(src, self.work.parent / f"{name}-{sample_users}u.tsv", sample_users=sample_users)
        ingest(src, self.work / "data", split_col="split", relation_col=self.spec.get("relation_col"),
               progress=False)
        self.data = Dataset.load(self.work / "data")
        self.refit = protocol == "refit" and self.data.has_split("valid")
        self.eval_data = _merge_valid(self.data) if self.refit else self.data  # what the final models fit
        self.ingest_s = time.perf_counter() - t0
        self.target = self.spec["target"] or self.data.relations[0].name
        self.n_users, self.n_items = self.data.num("user"), self.data.num("item")
        test = self.data.split("test", relations=[self.target])
        self.users = np.unique(test.src)
        self.truth = csr_from_pairs(np.searchsorted(self.users, test.src), test.dst, len(self.users))
        rels = [self.target] if self.spec["exclude"] == "relation" else None
        seen = self.eval_data.split("train", relations=rels)
        self.exclude = csr_from_pairs(seen.src, seen.dst, self.n_users)
        self.labels, self.resume = None, False
        if self.spec["labels"]:
            f, col = self.spec["labels"]
            self.labels = load_item_labels(DATA / f, self.data.ids["item"], label_col=col)

    def row(self, model: str, ranking: str, metrics: dict, **extra) -> dict:
        return {"dataset": self.name + (f" ({self.sample_users} users)" if self.sample_users else ""),
                "variant": self.variant, "model": model, "ranking": ranking,
                **({"protocol": "refit"} if self.refit else {}),
                "k": self.spec["k"], "metrics": metrics, **extra}

    def score_topk(self, top: np.ndarray, label: str) -> dict:
        """Metrics of a baseline's lists; also saved like `mixrec evaluate --json` for `mixrec report`."""
        metrics = evaluate_topk(top, self.truth, self.spec["ks"], self.n_items, self.labels)
        rep = {"relations": {self.target: {"users": len(self.users), "exact": metrics}},
               "settings": {"ks": self.spec["ks"], "split": "test", "exclude_seen": self.spec["exclude"],
                            "methods": ["exact"]}}
        save_json(self.work / f"evaluation-{label.split(' ')[0]}.json", rep)
        return metrics

    # ------------------------------------------------------------------ baselines
    def popularity(self) -> dict:
        t0 = time.perf_counter()
        train_dst = self.eval_data.split("train", relations=[self.target]).dst
        top = popularity_topk(train_dst, self.n_items, self.users, max(self.spec["ks"]), self.exclude)
        return self.row("popularity", "exact", self.score_topk(top, "popularity"), train_s=time.perf_counter() - t0)

    def als(self, label: str, grid: list[ALSParams]) -> dict:
        """implicit ALS on all training edges of the dataset, tuned on valid or a 10% hold-out of train."""
        t0 = time.perf_counter()
        train_e = self.data.split("train")
        target_code = self.data.relation_code(self.target)
        if self.data.has_split("valid"):
            fit, val = train_e, self.data.split("valid", relations=[self.target])
        else:
            hold = holdout_split(train_e.src, train_e.dst, 0.1, seed=0) & (train_e.rel == target_code)
            fit, val = train_e.select(~hold), train_e.select(hold)
        excl = fit if self.spec["exclude"] == "all" else fit.select(fit.rel == target_code)
        val_excl = csr_from_pairs(excl.src, excl.dst, self.n_users)
        fit_src, fit_dst, val_src, val_dst = fit.src, fit.dst, val.src, val.dst
        k = self.spec["k"]
        val_users = np.unique(val_src)
        if len(val_users) > 5000:
            val_users = np.sort(np.random.default_rng(0).choice(val_users, 5000, replace=False))
        keep_v = np.isin(val_src, val_users)
        vt = csr_from_pairs(np.searchsorted(val_users, val_src[keep_v]), val_dst[keep_v], len(val_users))

        def valid_recall(uf, itf):
            top = factor_topk(uf, itf, val_users, k, val_excl)
            return ranking_metrics(top, vt[0], vt[1], [k])[f"recall@{k}"]

        best, trials = tune_als((fit_src, fit_dst), valid_recall, self.n_users, self.n_items, grid)
        t1 = time.perf_counter()
        final = self.eval_data.split("train")  # train (+ valid with the refit protocol)
        uf, itf = fit_als(final.src, final.dst, self.n_users, self.n_items, best)
        fit_s = time.perf_counter() - t1
        top = factor_topk(uf, itf, self.users, max(self.spec["ks"]), self.exclude)
        print(f"  ALS best {best.__dict__} (tuning {time.perf_counter() - t0:.0f}s)", flush=True)
        return self.row(label, "exact", self.score_topk(top, label), train_s=fit_s, config=best.__dict__,
                        tuning=trials, tuning_s=t1 - t0)

    # ------------------------------------------------------------------ mixrec
    def mixrec(self, label: str, over: dict, section: str = "main") -> list[dict]:
        cfg = Config().with_overrides(over)
        out = self.work / _dir_name(label)
        t0 = time.perf_counter()
        select = out.with_name(out.name + "-select") if self.refit else out
        model = train(self.data, cfg, select, progress=False, resume=self.resume)
        hist = model.info["history"]
        refit = {}
        if self.refit:  # the epochs early stopping chose on valid, then train + valid from scratch
            epochs = model.info.get("best_epoch") or len(hist)
            cfg = cfg.with_overrides({"epochs": epochs, "early_stopping.patience": 0})
            model = train(self.eval_data, cfg, out, progress=False, resume=self.resume)
            refit = {"refit_epochs": epochs}
        train_s = time.perf_counter() - t0
        rep = evaluate(model, self.eval_data, self.spec["ks"], relation=self.target,
                       exclude_seen=self.spec["exclude"], labels=self.labels,
                       index_config=model.config.index.model_copy(update={"merge": "round_robin"}))
        save_json(out / "evaluation.json", rep)
        res = rep["relations"][self.target]
        extra = {"train_s": train_s, "config": over, "section": section, "epochs": len(hist),
                 "history": hist, "model_dir": str(out), **refit}
        rows = [self.row(label, name, res[m], **extra) for m, name in (("exact", "exact"),
                                                                       ("retrieval", "round-robin"))]
        if model.components(model.source_type) > 1:  # the same index, lists merged by the exact pooled score
            resc = evaluate(model, self.eval_data, self.spec["ks"], relation=self.target, methods=["retrieval"],
                            exclude_seen=self.spec["exclude"], labels=self.labels,
                            index_config=model.config.index.model_copy(update={"merge": "rescore"}))
            rows.append(self.row(label, "rescore", resc["relations"][self.target]["retrieval"], **extra))
        if self.labels is not None and section == "main":
            probe = label_probe(model.vectors("item").flatten(1).numpy(), self.labels.dense(), seed=0)
            rows.append(self.row(label, "probe", probe, section="probe", config=over, epochs=len(hist)))
        return rows


def _merge_valid(data: Dataset) -> Dataset:
    """The dataset with its valid edges moved into train (and no valid split)."""
    from mixrec.data.dataset import Edges
    tr, va = data.edges["train"], data.edges["valid"]
    merged = Edges(*(np.concatenate([getattr(tr, f), getattr(va, f)]) for f in ("src", "dst", "rel", "weight")))
    edges = {k: v for k, v in data.edges.items() if k != "valid"}
    return Dataset(ids=data.ids, relations=data.relations, edges={**edges, "train": merged})


def _dir_name(label: str) -> str:
    return "model-" + label.replace(" ", "_").replace("=", "").replace("(", "").replace(")", "")


def collect(work: Path, dataset: str, k: int) -> list[dict]:
    """Rows rebuilt from the model directories of a stopped run (their evaluation.json and model.json)."""
    labels = {_dir_name(m): (m, over, "main") for m, over in MODELS.items()}
    labels.update({_dir_name(f"{abl}: {m}"): (f"{abl}: {m}", over, f"ablation {abl}")
                   for abl, models in ABLATIONS.items() for m, over in models.items()})
    rows = []
    for d in sorted(work.glob("model-*")):
        if d.name not in labels or not (d / "evaluation.json").is_file() or not (d / "model.json").is_file():
            continue
        label, over, section = labels[d.name]
        rep = json.loads((d / "evaluation.json").read_text())
        hist = json.loads((d / "model.json").read_text())["info"]["history"]
        res = next(iter(rep["relations"].values()))
        for m, name in (("exact", "exact"), ("retrieval", "round-robin")):
            rows.append({"dataset": dataset, "variant": None, "model": label, "ranking": name, "k": k,
                         "metrics": res[m], "train_s": sum(h["seconds"] for h in hist), "config": over,
                         "section": section, "epochs": len(hist), "history": hist, "model_dir": str(d)})
    return rows


def _filtered_copy(src: Path, dst: Path, value: str | None = None, *, column: str | None = None,
                   sample_users: int | None = None) -> Path:
    """A TSV copy of ``src`` in the work folder: rows where ``column == value`` and/or a seeded user sample."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(src, parse_options=pacsv.ParseOptions(delimiter="\t"))
    if column is not None:
        table = table.filter(pc.equal(table[column], value))
    if sample_users:
        users = np.unique(table["user_id"].to_numpy())
        keep = np.random.default_rng(0).choice(users, min(sample_users, len(users)), replace=False)
        table = table.filter(pc.is_in(table["user_id"], value_set=pa.array(keep)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(table, dst, pacsv.WriteOptions(delimiter="\t"))
    return dst


def run(a) -> list[dict]:
    rows: list[dict] = []
    for name in a.datasets:
        if not (DATA / DATASETS[name]["file"]).is_file():
            print(f"skipping {name}: {DATA / DATASETS[name]['file']} not found", flush=True)
            continue
        variants = [None, "buy-only"] if DATASETS[name]["target"] == "buy" else [None]
        variants = [v for v in variants if (v or "main") in a.variants]
        for variant in variants:
            b = Bench(name, Path(a.work), variant, a.sample_users, a.valid_protocol)
            b.resume = a.resume
            tag = "" if variant is None else f" ({variant})"
            print(f"{name}{tag}: {b.n_users:,} users, {b.n_items:,} items, {len(b.users):,} test users", flush=True)
            if "popularity" in a.baselines:
                rows.append(b.popularity())
                _report(rows, a.rows, a.command)
            if "als" in a.baselines:
                grid = ALS_GRID if a.als_grid == "full" else ALS_GRID_SMALL
                rows.append(b.als("ALS" + (" (all behaviours)" if name == "tmall_mb" and variant is None else ""),
                                  grid))
                _report(rows, a.rows, a.command)
            for m in a.models if variant is None else a.variant_models:
                epochs = a.epochs if variant is None else a.variant_epochs
                over = dict(MODELS[m], **({"epochs": epochs} if epochs else {}), **a.overrides)
                rows += b.mixrec(m + a.label_suffix, over)
                _report(rows, a.rows, a.command)
            for abl in a.ablations if variant is None else []:
                for label, over in ABLATIONS[abl].items():
                    over = dict(over, **({"epochs": a.ablation_epochs} if a.ablation_epochs else {}))
                    rows += b.mixrec(f"{abl}: {label}", over, section=f"ablation {abl}")
                    _report(rows, a.rows, a.command)
            _report(rows, a.rows, a.command)
    return rows


def _report(rows: list[dict], path: str | None, command: str) -> None:
    """Print the rows not printed yet and rewrite the JSON file (so a stopped run keeps what it measured)."""
    for r in rows:
        if "printed" not in r:
            r["printed"], r["command"] = True, command
            k = r["k"]
            print(f"  {r['model']:<28} {r['ranking']:<11} "
                  + " ".join(f"{m}={v:.4f}" for m, v in r["metrics"].items()
                             if m.split("@")[0] in ("recall", "ndcg", "div", "micro_f1", "macro_auc")
                             and (m.endswith(f"@{k}") or m.endswith("@50") or "@" not in m)), flush=True)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(rows, indent=1, default=float))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--models", nargs="*", default=["single 1x64", "mixture 4x16"], choices=list(MODELS))
    p.add_argument("--variant-models", nargs="*", default=["mixture 4x16"],
                   help="mixrec models trained on the buy-only variant of tmall_mb")
    p.add_argument("--baselines", nargs="*", default=["popularity", "als"], choices=["popularity", "als"])
    p.add_argument("--als-grid", default="full", choices=["full", "small"],
                   help="ALS tuning grid: full (12 points) or small (factors 64/128 x reg 1/10, alpha 10)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the main models (e.g. loss=softmax); appended to their labels")
    p.add_argument("--ablations", nargs="*", default=[], choices=list(ABLATIONS))
    p.add_argument("--epochs", type=int, default=None, help="override the default epochs of the main models")
    p.add_argument("--variants", nargs="+", default=["main", "buy-only"], choices=["main", "buy-only"],
                   help="tmall_mb: train on all behaviours (main) and/or on buy only")
    p.add_argument("--variant-epochs", type=int, default=None, help="epochs of the buy-only variant's models")
    p.add_argument("--ablation-epochs", type=int, default=None, help="epochs of the ablation runs")
    p.add_argument("--valid-protocol", default="refit", choices=["refit", "hold-out"],
                   help="where a valid split ships: pick epochs/settings on it, then refit on train + valid and "
                        "exclude those items (refit, the published protocol), or train on train only (hold-out)")
    p.add_argument("--resume", action="store_true",
                   help="continue mixrec models from their checkpoints in --work (e.g. a stopped run, fewer epochs)")
    p.add_argument("--sample-users", type=int, default=None,
                   help="keep a seeded random sample of this many users (cheaper ablations)")
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"))
    p.add_argument("--rows", default=None, help="write the raw rows as JSON (merge them later with --merge)")
    p.add_argument("--merge", nargs="+", default=None, help="build the docs from JSON row files instead of running")
    p.add_argument("--collect", nargs=2, metavar=("WORK_DIR", "DATASET_LABEL"), default=None,
                   help="rebuild --rows from the model directories of a stopped run")
    p.add_argument("--out", default=str(ROOT / "docs" / "quality.md"))
    p.add_argument("--title", default=None, help="the page's title (default: the quality page's)")
    p.add_argument("--no-doc", action="store_true", help="do not write --out and the plots")
    a = p.parse_args()
    from quality_doc import write_doc  # noqa: E402  (bench/ is on sys.path when run as a script)

    t0 = time.perf_counter()
    a.overrides = parse_overrides(a.set)
    a.label_suffix = "".join(f" {k}={v}" for k, v in a.overrides.items())
    command = a.command = "python bench/quality.py " + " ".join(f"'{x}'" if " " in x else x for x in sys.argv[1:])
    if a.collect:
        rows = collect(Path(a.collect[0]), a.collect[1], DATASETS[a.collect[1].split(" ")[0]]["k"])
        Path(a.rows).write_text(json.dumps(rows, indent=1, default=float))
        print(f"collected {len(rows)} rows into {a.rows}")
        return
    if a.merge:
        from quality_doc import dedup_baselines

        rows = dedup_baselines([r for f in a.merge for r in json.loads(Path(f).read_text())])
        write_doc(Path(a.out), rows, [command] + sorted({r.get("command", "") for r in rows} - {""}), None,
                  title=a.title)
        return
    rows = run(a)
    if a.rows:
        Path(a.rows).write_text(json.dumps(rows, indent=1, default=float))
    if rows and not a.no_doc:
        write_doc(Path(a.out), rows, [command], time.perf_counter() - t0, title=a.title)


if __name__ == "__main__":
    main()
