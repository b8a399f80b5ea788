"""`mixrec tune`: hyper-parameter search (Optuna) on the validation split, never the test split."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixrec.config import Config
from mixrec.data.dataset import Dataset
from mixrec.registry import LOSSES

log = logging.getLogger("mixrec.tune")

# name -> (kind, low, high[, choices]); kinds: 'log' (log-uniform float), 'float', 'int', 'choice'
DEFAULT_SPACE: dict[str, tuple] = {
    "lr": ("log", 0.02, 1.0),
    "gamma": ("log", 0.03, 0.5),
    "theta": ("float", 0.0, 0.5),
    "negatives.uniform": ("choice", [256, 512, 1024, 2048]),
}


POOLING_KNOBS = ("gamma", "theta")  # act only where a node has several components


def default_space(config: Config) -> dict[str, tuple]:
    """The search space for ``config``: the shared knobs plus its loss's own (margin or temperature).

    With one component everywhere the pooling is the identity, so gamma and theta are left out.
    """
    space = {**DEFAULT_SPACE, **LOSSES.get(config.loss).space}
    if max(config.components.values(), default=1) <= 1:
        space = {k: v for k, v in space.items() if k not in POOLING_KNOBS}
    return space


@dataclass
class TuneResult:
    """The best configuration found, its validation recall and every trial's parameters and value."""

    config: Config
    value: float
    metric: str
    trials: list[dict] = field(default_factory=list)
    default_value: float | None = None  # the base configuration's validation recall (trial 0), when it was run

    @property
    def default_ratio(self) -> float | None:
        """The base configuration's validation recall as a fraction of the best trial's."""
        return None if self.default_value is None or self.value <= 0 else self.default_value / self.value


def with_validation(dataset: Dataset, fraction: float = 0.1, seed: int = 0, relation: str | None = None) -> Dataset:
    """The dataset restricted to train (+ valid); when no valid split ships, a seeded per-user hold-out of train.

    With ``relation`` the validation edges are that relation's only (a target task such as ``buy``): the
    shipped valid split is filtered, or the hold-out is drawn from that relation's training edges. The test
    split is dropped, so nothing downstream can look at it.
    """
    from mixrec.baselines import holdout_split

    code = None if relation is None else dataset.relation_code(relation)  # an unknown one fails, naming the known
    if dataset.has_split("valid"):
        valid = dataset.split("valid", relations=None if relation is None else [relation])
        edges = {"train": dataset.split("train"), "valid": valid}
    else:
        train = dataset.split("train")
        pool = np.arange(len(train)) if code is None else np.flatnonzero(train.rel == code)
        hold = np.zeros(len(train), dtype=bool)
        hold[pool[holdout_split(train.src[pool], train.dst[pool], fraction, seed)]] = True
        edges = {"train": train.select(~hold), "valid": train.select(hold)}
    return Dataset(ids=dict(dataset.ids), relations=list(dataset.relations), edges=edges, info=dict(dataset.info))


def suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    """Draw one value per search-space entry from an Optuna trial."""
    out: dict[str, Any] = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "log":
            out[name] = trial.suggest_float(name, spec[1], spec[2], log=True)
        elif kind == "float":
            out[name] = trial.suggest_float(name, spec[1], spec[2])
        elif kind == "int":
            out[name] = trial.suggest_int(name, spec[1], spec[2])
        elif kind == "choice":
            out[name] = trial.suggest_categorical(name, list(spec[1]))
        else:
            raise ValueError(f"search space {name!r}: unknown kind {kind!r} (log, float, int, choice)")
    return out


def base_params(config: Config, space: dict[str, tuple]) -> dict[str, Any] | None:
    """The search-space values of ``config`` itself, or None where one lies outside the space."""
    out: dict[str, Any] = {}
    for name, spec in space.items():
        value = config.value_at(name)
        inside = value in spec[1] if spec[0] == "choice" else spec[1] <= value <= spec[2]
        if not inside:
            return None
        out[name] = value
    return out


def validation_score(history: list[dict], metric: str) -> float:
    """Best value of ``metric`` over the epochs (the trainer keeps the best epoch's weights)."""
    values = [h[metric] for h in history if metric in h]
    return float(max(values)) if values else float("nan")


def tune(dataset: Dataset | str | Path, trials: int, base: Config | None = None,
         space: dict[str, tuple] | None = None, *, seed: int = 0, timeout: float | None = None,
         holdout: float = 0.1, relation: str | None = None, try_base: bool = True) -> TuneResult:
    """Run ``trials`` Optuna (TPE) trials; each trains on train and scores Recall@K on the validation split.

    With ``try_base`` the base configuration's own values are trial 0 (when they lie in the space), so the
    result says how far the defaults are from the best configuration found. ``relation`` validates on that
    relation's edges only (see :func:`with_validation`).
    """
    import optuna

    from mixrec.train import train

    if not isinstance(dataset, Dataset):
        dataset = Dataset.load(dataset)
    base = base or Config()
    data = with_validation(dataset, holdout, seed, relation)
    space = space or default_space(base)
    metric = f"valid_recall@{base.early_stopping.k}"
    run_base = base if (base.early_stopping.patience or base.eval_every) else base.with_overrides({"eval_every": 1})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    start = base_params(base, space) if try_base else None
    if start is not None:
        study.enqueue_trial(start)

    def objective(trial) -> float:
        params = suggest(trial, space)
        model = train(data, run_base.with_overrides(params), None, progress=False)
        value = validation_score(model.info["history"], metric)
        log.info("trial %d: %s -> %s %.4f", trial.number, params, metric, value)
        return value if np.isfinite(value) else -1.0

    study.optimize(objective, n_trials=trials, timeout=timeout)
    best = study.best_trial
    records = [{"number": t.number, "value": t.value, **t.params} for t in study.trials]
    default = study.trials[0].value if start is not None else None  # the enqueued trial runs first
    return TuneResult(base.with_overrides(dict(best.params)), float(best.value), metric, records, default)


def add_parser(sub) -> None:
    """The `mixrec tune` subcommand."""
    p = sub.add_parser("tune", help="search hyper-parameters (Optuna) on the validation split; write the best config")
    p.add_argument("data", help="dataset directory (a valid split is used; else 10%% of train is held out)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--out", required=True, help="TOML file for the best config (loadable by train --config)")
    p.add_argument("--config", default=None, help="base config file; the search overrides some of its keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base config key (repeatable)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relation", default=None,
                   help="validate on this relation's edges only (the target task, e.g. buy)")
    p.add_argument("--no-base-trial", dest="try_base", action="store_false",
                   help="do not run the base configuration's own values as trial 0")
    p.add_argument("--trials-json", default=None, help="also write every trial's parameters and value here")
    p.set_defaults(func=cmd_tune)


def cmd_tune(a) -> int:
    base = Config.load(a.config) if a.config else Config()
    base = base.with_overrides(a.set or [])
    res = tune(a.data, a.trials, base, seed=a.seed, timeout=a.timeout, relation=a.relation, try_base=a.try_base)
    res.config.save(a.out)
    print(f"best {res.metric} {res.value:.4f} after {len(res.trials)} trials; config written to {a.out}")
    if res.default_ratio is not None:
        print(f"base configuration (trial 0): {res.default_value:.4f} = {res.default_ratio:.3f} of the best")
    if a.trials_json:
        from mixrec.io import save_json
        save_json(a.trials_json, {"metric": res.metric, "best": res.value, "base": res.default_value,
                                  "trials": res.trials})
    return 0
