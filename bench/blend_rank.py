"""bench/blend.py's helpers: the funnel ranker fitted on held-out training edges, list metrics, interleaved timing."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from filters import one_per_user

from mixrec.data.dataset import Dataset
from mixrec.evaluate.metrics import ranking_metrics
from mixrec.filters import FilterModel, make_filter
from mixrec.foldin import FoldInSettings, fold_in_model
from mixrec.funnel import Funnel, Query
from mixrec.funnel.fit import candidate_lists, fit_ranker, holdout_split
from mixrec.funnel.rank import FunnelRanker
from mixrec.model.mixture import MixtureModel
from mixrec.train import train

VALUE = {"buy": 1.0}  # the figure is held-out buys; bench/funnel.py starts from buy 1, cart 0.3, view 0.1
FOLDIN_STEPS = 30  # one component from its k-means start: near its plateau after 10 steps (docs/serving.md)


LABELS = ("random", "one")


def feature_part(data: Dataset, seed: int, labels: str = "random",
                 target: str | None = None) -> tuple[Dataset, np.ndarray]:
    """(the dataset less its held-out label edges, the held-out mask over the train split): features come from
    the rest, labels from the held-out edges. ``labels="random"``: a seeded ~10% of each user's training edges
    per relation, as bench/funnel.py cuts it; ``"one"``: one seeded ``target`` edge per user with two or more,
    nothing else held out (shaped like tmall_mb's test split: one buy per user, every view and cart kept)."""
    tr = data.split("train")
    if labels == "one":
        hold = one_per_user(tr.src, tr.rel == data.relation_code(target), seed=seed)
    elif labels == "random":
        hold = holdout_split(tr.src, tr.dst, tr.rel, 0.1, seed)
    else:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
    return Dataset(ids=data.ids, relations=data.relations, edges={**data.edges, "train": tr.select(~hold)},
                   info=data.info), hold


def model_codes(data: Dataset, model) -> np.ndarray:
    """The model's relation code of each of the dataset's relation codes (the funnel counts in the model's)."""
    names = [r.name for r in model.relations]
    missing = [r.name for r in data.relations if r.name not in names]
    if missing:
        raise ValueError(f"the mixture model has no relation {missing}; train it on this dataset (--model)")
    return np.array([names.index(r.name) for r in data.relations], np.int64)


def folded_users(model, users: np.ndarray, src: np.ndarray, dst: np.ndarray, rel: np.ndarray,
                 steps: int = FOLDIN_STEPS, batch: int = 64):
    """A copy of ``model`` whose ``users`` are folded in afresh from the edges (src, dst, model relation codes)
    given, ``batch`` users at a time, every other vector shared: their vectors and mixture weights then know
    nothing else."""
    order = np.argsort(src, kind="stable")
    lo, hi = np.searchsorted(src[order], users), np.searchsorted(src[order], users, side="right")
    vectors, mix = [], []
    for b in range(0, len(users), batch):
        part = range(b, min(b + batch, len(users)))
        f = fold_in_model(model, [dst[order][lo[i]:hi[i]] for i in part], [rel[order][lo[i]:hi[i]] for i in part],
                          source_type=model.source_type, settings=FoldInSettings(steps=steps))
        vectors.append(f.vectors)
        mix.append(f.weights)
    s_type = model.source_type
    table = model.tables[s_type].clone()
    table[torch.as_tensor(users)] = torch.as_tensor(np.concatenate(vectors), dtype=table.dtype)
    weights = {name: dict(per_type) for name, per_type in model.weights.items()}
    for per_type in weights.values():
        if s_type in per_type:
            per_type[s_type] = per_type[s_type].copy()
            per_type[s_type][users] = np.concatenate(mix)
    return dataclasses.replace(model, tables={**model.tables, s_type: table}, weights=weights)


def feature_model(model, fdata: Dataset, out: Path, log: Callable[[str], None] = print):
    """A model of ``model``'s configuration trained on ``fdata`` into ``out``, or the one already there when it
    was trained with the same configuration on the same edges (digests recorded in ``out``.json)."""
    tr = fdata.split("train")
    key = {"edges": hashlib.sha256(np.stack([tr.src, tr.dst, tr.rel]).astype(np.int64).tobytes()).hexdigest()[:16],
           "config": hashlib.sha256(model.config.model_dump_json().encode()).hexdigest()[:16]}
    stamp = out.with_name(out.name + ".json")  # beside the model directory, whose files are checksummed
    if (out / "model.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
        log(f"ranker: reusing the feature-part model {out.name}")
        return MixtureModel.load(out)
    trained = train(fdata, model.config, out, progress=False)
    stamp.write_text(json.dumps(key))
    return trained


def fit_blend_ranker(model, data: Dataset, filt: FilterModel, query: Query, n_users: int, *, epochs: int = 3,
                     value: dict[str, float] | None = None, foldin: bool = True, seed: int = 0,
                     source_features: Sequence[bool] = (False,), feature_set: str = "full",
                     labels: str = "random", wide: bool = False, retrain: Path | None = None,
                     log: Callable[[str], None] = print) -> dict[bool, FunnelRanker]:
    """The funnel's multi-task ranker trained to order ``query``'s candidates (bench/funnel.py's protocol), one
    per ``source_features`` setting (without / with the candidates' per-source ranks, the latter with a wide
    path over them when ``wide``), on the same lists.

    Training edges are cut into a feature part and held-out labels (:func:`feature_part`); a funnel whose
    history, exclusions and graph filter (same kind, parameters and relations as ``filt``, refitted) see
    only the feature part runs ``query`` for ``n_users`` seeded training users with a held-out target edge,
    and the ranker learns each candidate's held-out relations from its features. The served mixture model
    was trained on every training edge, labels included: with ``foldin`` those users' vectors are folded in
    from their feature part (:func:`folded_users`), else the ranker learns from embeddings that saw its labels.
    Folding in leaves the *item* vectors, which did see the labels; ``retrain`` (a directory) trains a model of
    the served one's configuration on the feature part alone (reused from there when it holds one trained on
    the same feature part) and fits the ranker on its features, so that nothing it reads saw a label.
    """
    t0 = time.perf_counter()
    fdata, hold = feature_part(data, seed, labels, filt.target)
    codes = model_codes(data, model)
    tr = data.split("train")
    ffilt = make_filter(filt.kind, **filt.params).fit(fdata, relations=filt.relations, target=filt.target)
    feat = fdata.split("train")
    history = (feat.src, feat.dst, codes[feat.rel])
    held = (tr.src[hold], tr.dst[hold], codes[tr.rel[hold]])
    target = [r.name for r in model.relations].index(filt.target)
    pool = np.unique(held[0][held[2] == target])
    users = np.sort(np.random.default_rng(seed).choice(pool, min(n_users, len(pool)), replace=False))
    t1 = time.perf_counter()
    if retrain is not None:
        fit_model = feature_model(model, fdata, Path(retrain), log)
        how = f"a model trained on the feature part alone, {time.perf_counter() - t1:.0f}s"
    else:
        fit_model = folded_users(model, users, *history) if foldin else model
        how = (f"folded in from their feature part in {time.perf_counter() - t1:.0f}s" if foldin
               else "served vectors, which saw the labels")
    fit_funnel = Funnel(fit_model, history=history, filters={"default": ffilt})
    lists = candidate_lists(fit_funnel, query, users, held)
    rankers = {flag: fit_ranker(fit_funnel, lists, dict(value or VALUE), epochs=epochs, distill=False, seed=seed,
                                source_features=flag, feature_set=feature_set, wide=wide and flag)
               for flag in source_features}
    pos = next(iter(rankers.values())).info["positives"]
    log(f"ranker: {len(users):,} training users ({how}), {len(lists.items):,} candidate rows, held-out positives "
        f"{pos} ({labels} labels), {feature_set} features{', wide source ranks' if wide else ''}, {len(rankers)} "
        f"fitted in {time.perf_counter() - t0:.0f}s")
    return rankers


def list_metrics(top: np.ndarray, truth: tuple[np.ndarray, np.ndarray], k: int = 10) -> dict[str, float]:
    """HR@k and NDCG@k of ordered lists (U, >= k) against held-out items (CSR), over users with one."""
    m = ranking_metrics(top[:, :k], truth[0], truth[1], [k])
    return {f"hr@{k}": float(m[f"hit_rate@{k}"]), f"ndcg@{k}": float(m[f"ndcg@{k}"])}


@contextmanager
def table_off(filt: FilterModel, off: bool = True):
    """The filter without its per-user table (every request computed) for the duration."""
    table = filt.table
    if off:
        filt.table = None
    try:
        yield filt
    finally:
        filt.table = table


def timed_runs(funnel: Funnel, filt: FilterModel, queries: dict[str, Query], users: np.ndarray, width: int
               ) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Seconds per user of each query with the filter's table and without it (``"<query> table|computed
    wall|cpu"``: elapsed, and this thread's CPU time, which a busy machine does not inflate), one user at a
    time, every variant of a user in rotating order; and each query's candidates (items, via, scores), padded
    to ``width``. Raises if the table changes any user's candidates or scores.
    """
    variants = [(q, off) for q in queries for off in (False, True)]
    name = lambda q, off, clock: f"{q} {'computed' if off else 'table'} {clock}"  # noqa: E731
    lat = {name(q, off, c): np.zeros(len(users)) for q, off in variants for c in ("wall", "cpu")}
    out = {q: (np.full((len(users), width), -1, np.int64), np.zeros((len(users), width), np.int64),
               np.full((len(users), width), -np.inf)) for q in queries}
    for q, off in variants:  # warm: seen, history, popularity and feature tables
        with table_off(filt, off):
            funnel.run(queries[q], int(users[0]))
    for j, u in enumerate(users):
        got = {}
        shift = j % len(variants)
        for q, off in variants[shift:] + variants[:shift]:
            with table_off(filt, off):
                t, c = time.perf_counter(), time.thread_time()
                got[q, off] = funnel.run(queries[q], int(u), validate=False).candidates
                lat[name(q, off, "cpu")][j] = time.thread_time() - c
                lat[name(q, off, "wall")][j] = time.perf_counter() - t
        for q in queries:
            a, b = got[q, False], got[q, True]
            if not (np.array_equal(a.items, b.items) and np.array_equal(a.scores, b.scores)):
                raise AssertionError(f"user {u}: the table changed the candidates of {q!r}")
            n = min(len(a), width)
            out[q][0][j, :n], out[q][1][j, :n], out[q][2][j, :n] = a.items[:n], a.via[:n], a.scores[:n]
    return lat, out


def percentiles(sec: np.ndarray, qs: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    return {f"p{q}_ms": float(np.percentile(sec, q) * 1e3) for q in qs}
