"""Tuning the value model's weights by offline replay with Bayesian optimisation (Optuna's TPE).

Replay: record, once, each validation user's candidate list with the final ranker's per-relation
probabilities and which candidates the user actually acted on (held-out target edges). A trial
re-scores every list with its weights (one batched product), takes the top K and measures HR@K or
NDCG@K; Optuna searches the weights. Optuna is imported only here (``pip install 'mixrec[tune]'``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mixrec.funnel.engine import Funnel
from mixrec.funnel.fit import CandidateLists


@dataclass
class Replay:
    """Padded lists: probs (U, L, R), relevant (U, L) bool, mask (U, L) bool."""

    probs: np.ndarray
    relevant: np.ndarray
    mask: np.ndarray
    relations: list[str]


def record_replay(funnel: Funnel, ranker_name: str, lists: CandidateLists, target: str) -> Replay:
    """Score ``lists`` with the final ranker once and keep what a trial needs."""
    ranker = funnel.rankers[ranker_name]
    probs = ranker.final.probs(funnel.features.full(lists.row_users(), lists.items))
    p, mask = lists.padded(probs)
    rel, _ = lists.padded(lists.labels[:, ranker.relations.index(target)] > 0, p.shape[1])
    return Replay(p, rel, mask, list(ranker.relations))


def replay_metric(replay: Replay, weights: np.ndarray, k: int = 10, metric: str = "ndcg") -> float:
    """Mean HR@k or NDCG@k (binary gains) of the lists re-ranked by ``probs @ weights``."""
    v = np.where(replay.mask, replay.probs @ np.asarray(weights, np.float64), -np.inf)
    k = min(k, v.shape[1])
    top = np.argsort(-v, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(replay.relevant & replay.mask, top, axis=1)
    has = replay.relevant.any(1)
    if not has.any():
        return float("nan")
    if metric == "hr":
        return float(hits.any(1)[has].mean())
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * disc).sum(1)
    n_rel = np.minimum(replay.relevant.sum(1), k)
    idcg = np.cumsum(disc)[np.maximum(n_rel - 1, 0)]
    return float((dcg / idcg)[has].mean())


def tune_value_weights(replay: Replay, target: str, *, n_trials: int = 40, k: int = 10, metric: str = "ndcg",
                       bounds: tuple[float, float] = (-1.0, 2.0), seed: int = 0,
                       start: dict[str, float] | None = None) -> tuple[dict[str, float], float, object]:
    """Search the non-target weights (the target's weight is fixed to 1: the order is scale-free).

    Returns (best weights, best replay metric, the Optuna study). ``start`` is tried first.
    """
    try:
        import optuna
    except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("tuning the value model needs optuna: pip install 'mixrec[tune]'") from e
    others = [r for r in replay.relations if r != target]

    def vector(params: dict) -> np.ndarray:
        return np.array([1.0 if r == target else params[r] for r in replay.relations])

    def objective(trial) -> float:
        params = {r: trial.suggest_float(r, *bounds) for r in others}
        return replay_metric(replay, vector(params), k, metric)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    if start:
        study.enqueue_trial({r: float(np.clip(start.get(r, 0.0), *bounds)) for r in others})
    study.optimize(objective, n_trials=n_trials if others else 1)
    best = {r: float(study.best_params.get(r, 1.0)) if r != target else 1.0 for r in replay.relations}
    return best, float(study.best_value), study


def evaluate_weights(replay: Replay, weights: dict[str, float], ks: Sequence[int] = (10,)) -> dict[str, float]:
    """HR@k and NDCG@k of a weight dict on a replay."""
    w = np.array([weights.get(r, 0.0) for r in replay.relations])
    out = {}
    for k in ks:
        out[f"hr@{k}"] = replay_metric(replay, w, k, "hr")
        out[f"ndcg@{k}"] = replay_metric(replay, w, k, "ndcg")
    return out
