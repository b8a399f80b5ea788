"""Ranking stages: a multi-task multi-label ranker, the value model, and a distilled first pass.

- :class:`MultiTaskRanker`: a shared MLP with one logit head per relation (multi-label BCE), on the
  full feature vector (user and item embeddings, their product, cosine scores and counts).
- :class:`ValueModel`: ``sum_r w_r * P(r)``; a negative weight makes a (negative) action subtract.
- :class:`FirstPass`: a small MLP on a few cheap features, distilled from the final ranker's value
  by an approximate-NDCG listwise loss (Qin et al. 2010) so that it reproduces the teacher's order.
Models are saved as ``.npz`` arrays plus JSON (never pickled).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from mixrec.io import atomic_file


class _MLP(nn.Module):
    """Standardised input -> hidden ReLU layers -> ``n_out`` logits."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)
        self.n_in, self.hidden, self.n_out = n_in, list(hidden), n_out

    def fit_scaler(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body((x - self.mean) / self.std))


WIDE_FLOOR = 1e-3
"""The wide path reads log(max(reciprocal rank, WIDE_FLOOR)): a candidate a source did not propose counts as
rank 1,000 there."""


class MultiTaskRanker(_MLP):
    """Shared MLP trunk with one logit per relation (the heads are the rows of the last layer).

    ``wide`` > 0 adds a linear path from the log of the last ``wide`` inputs (the candidates' reciprocal ranks
    in each source's list) to every head, beside the trunk (wide & deep): following one source's order is
    then one weight, not a function the trunk has to learn from few labels. It starts at zero.
    """

    def __init__(self, n_in: int, relations: Sequence[str], hidden: Sequence[int] = (64, 32), wide: int = 0):
        super().__init__(n_in, hidden, len(relations))
        self.relations = list(relations)
        self.wide_n = int(wide)
        if not 0 <= self.wide_n <= n_in:
            raise ValueError(f"wide must lie in [0, n_in = {n_in}], got {wide}")
        self.wide = nn.Linear(self.wide_n, len(relations), bias=False) if self.wide_n else None
        if self.wide is not None:
            nn.init.zeros_(self.wide.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.wide is None:
            return out
        return out + self.wide(torch.log(x[:, -self.wide_n:].clamp_min(WIDE_FLOOR)))

    @torch.no_grad()
    def probs(self, x: np.ndarray) -> np.ndarray:
        """(n, R) probabilities of each relation."""
        self.eval()
        return torch.sigmoid(self(torch.as_tensor(x, dtype=torch.float32))).numpy().astype(np.float64)


class FirstPass(_MLP):
    """A light scorer (one small hidden layer) on the cheap features."""

    def __init__(self, n_in: int, hidden: Sequence[int] = (16,)):
        super().__init__(n_in, hidden, 1)

    @torch.no_grad()
    def score(self, x: np.ndarray) -> np.ndarray:
        self.eval()
        return self(torch.as_tensor(x, dtype=torch.float32))[:, 0].numpy().astype(np.float64)


@dataclass
class ValueModel:
    """``value = sum_r weights[r] * P(r)``; relations missing from ``weights`` count 0."""

    weights: dict[str, float]

    def vector(self, relations: Sequence[str]) -> np.ndarray:
        unknown = sorted(set(self.weights) - set(relations))
        if unknown:
            raise KeyError(f"value model weights name unknown relation(s) {unknown}; the ranker has {list(relations)}")
        return np.array([float(self.weights.get(r, 0.0)) for r in relations])

    def __call__(self, probs: np.ndarray, relations: Sequence[str]) -> np.ndarray:
        return np.asarray(probs, np.float64) @ self.vector(relations)


def stage_inputs(features, stage: str, users: np.ndarray, items: np.ndarray, rank_in: np.ndarray | None, *,
                 feature_set: str, source_features: bool) -> np.ndarray:
    """What ranking ``stage`` reads for each (user, item): the light set for the first pass, ``feature_set``
    otherwise (a :class:`~mixrec.funnel.features.FeatureTables` set), followed by the candidates'
    per-source reciprocal ranks ``rank_in`` when ``source_features``. Training and serving both call this."""
    x = features.of("light" if stage == "first_pass" else feature_set, users, items)
    return np.concatenate([x, rank_in.astype(np.float32)], 1) if source_features else x


def _minibatches(n: int, batch: int, epochs: int, seed: int):
    """Index tensors of shuffled minibatches, ``epochs`` passes over ``n`` rows, seeded."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for lo in range(0, n, batch):
            yield perm[lo:lo + batch]


def train_multitask(x: np.ndarray, y: np.ndarray, relations: Sequence[str], *, hidden: Sequence[int] = (64, 32),
                    epochs: int = 5, lr: float = 3e-3, batch: int = 1024, seed: int = 0,
                    wide: int = 0) -> MultiTaskRanker:
    """Fit the ranker with per-head binary cross-entropy on multi-hot labels ``y`` (n, R); ``wide``: see
    :class:`MultiTaskRanker`."""
    torch.manual_seed(seed)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    model = MultiTaskRanker(xt.shape[1], relations, hidden, wide)
    model.fit_scaler(xt)
    pos = yt.mean(0).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        model.head.bias.copy_(torch.log(pos / (1 - pos)))  # start at the base rates
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for idx in _minibatches(len(xt), batch, epochs, seed):
        opt.zero_grad()
        loss_fn(model(xt[idx]), yt[idx]).backward()
        opt.step()
    return model


def approx_ndcg_loss(scores: torch.Tensor, gains: torch.Tensor, mask: torch.Tensor,
                     temperature: float = 0.1) -> torch.Tensor:
    """1 - mean ApproxNDCG: ranks approximated by ``1 + sum_j sigmoid((s_j - s_i) / T)`` over valid j != i.

    ``scores``, ``gains`` (>= 0) and ``mask`` (bool) are (B, L); lists without positive gain are skipped.
    """
    m = mask.to(scores.dtype)
    diff = (scores[:, None, :] - scores[:, :, None]) / temperature  # [b, i, j] = s_j - s_i
    pair = torch.sigmoid(diff) * m[:, None, :] * m[:, :, None]
    pair = pair * (1 - torch.eye(scores.shape[1], dtype=scores.dtype))
    rank = 1 + pair.sum(-1)
    g = gains * m
    dcg = (g / torch.log2(1 + rank)).sum(-1)
    ideal = torch.sort(g, dim=-1, descending=True).values
    idcg = (ideal / torch.log2(torch.arange(2, g.shape[1] + 2, dtype=g.dtype))).sum(-1)
    ok = idcg > 0
    if not ok.any():
        return scores.sum() * 0
    return 1 - (dcg[ok] / idcg[ok]).mean()


def teacher_gains(values: torch.Tensor, mask: torch.Tensor, scale: float = 4.0) -> torch.Tensor:
    """Graded gains from teacher values: min-max normalised within each list, then ``2^(scale * v) - 1``."""
    big = torch.finfo(values.dtype).max
    lo = torch.where(mask, values, torch.full_like(values, big)).min(-1, keepdim=True).values
    hi = torch.where(mask, values, torch.full_like(values, -big)).max(-1, keepdim=True).values
    v = (values - lo) / (hi - lo).clamp_min(1e-12)
    return torch.where(mask, torch.exp2(scale * v) - 1, torch.zeros_like(v))


def distill_first_pass(x: np.ndarray, teacher: np.ndarray, mask: np.ndarray, *, hidden: Sequence[int] = (16,),
                       epochs: int = 30, lr: float = 1e-2, batch: int = 64, temperature: float = 0.1,
                       seed: int = 0) -> FirstPass:
    """Train a :class:`FirstPass` on lists ``x`` (B, L, F) to reproduce the order of ``teacher`` (B, L)."""
    torch.manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    mt = torch.as_tensor(mask, dtype=torch.bool)
    gains = teacher_gains(torch.as_tensor(teacher, dtype=torch.float32), mt)
    model = FirstPass(xt.shape[-1], hidden)
    model.fit_scaler(xt[mt])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for idx in _minibatches(len(xt), batch, epochs, seed):
        b, length, f = xt[idx].shape
        s = model(xt[idx].reshape(b * length, f)).reshape(b, length)
        opt.zero_grad()
        approx_ndcg_loss(s, gains[idx], mt[idx], temperature).backward()
        opt.step()
    return model


@dataclass
class FunnelRanker:
    """The ranking stages of a funnel: the final multi-task ranker and its value model, and optionally a
    first pass (small model on cheap features) and a second pass (small model on the full features),
    both distilled from the final ranker's values. ``feature_set`` names what the final ranker and the
    second pass read (``full``: with the embeddings; ``scalar``: cosines and counts only); the first pass
    reads the light set. With ``source_features`` every stage also reads each candidate's reciprocal rank
    in every source's list (``CandidateSet.rank_in``) after those."""

    final: MultiTaskRanker
    value: ValueModel
    first_pass: FirstPass | None = None
    info: dict = field(default_factory=dict)
    second_pass: FirstPass | None = None
    source_features: bool = False
    feature_set: str = "full"

    @property
    def relations(self) -> list[str]:
        return self.final.relations

    def inputs(self, stage: str, features, users: np.ndarray, items: np.ndarray,
               rank_in: np.ndarray | None) -> np.ndarray:
        """What ``stage`` of this ranker reads (:func:`stage_inputs` with its feature set and source ranks)."""
        return stage_inputs(features, stage, users, items, rank_in, feature_set=self.feature_set,
                            source_features=self.source_features)

    def values(self, x_full: np.ndarray) -> np.ndarray:
        return self.value(self.final.probs(x_full), self.relations)

    def save(self, path: str | Path) -> Path:
        """Write ``ranker.npz`` (parameters) and ``ranker.json`` (shapes, relations, weights) atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {f"final.{k}": v.numpy() for k, v in self.final.state_dict().items()}
        meta = {"format": 1, "relations": self.relations, "final": {"n_in": self.final.n_in,
                                                                     "hidden": self.final.hidden,
                                                                     "wide": self.final.wide_n},
                "value": self.value.weights, "info": self.info, "first_pass": None,
                "source_features": self.source_features, "feature_set": self.feature_set}
        for name, prefix in (("first_pass", "first"), ("second_pass", "second")):
            stage = getattr(self, name)
            meta[name] = None if stage is None else {"n_in": stage.n_in, "hidden": stage.hidden}
            if stage is not None:
                arrays.update({f"{prefix}.{k}": v.numpy() for k, v in stage.state_dict().items()})
        with atomic_file(path / "ranker.npz") as fh:
            np.savez(fh, **arrays)
        with atomic_file(path / "ranker.json", "w") as fh:
            json.dump(meta, fh, indent=2)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FunnelRanker":
        """Read a ranker directory written by :meth:`save` (no pickle)."""
        path = Path(path)
        if not (path / "ranker.json").is_file():
            raise FileNotFoundError(f"{path}: not a funnel ranker (no ranker.json)")
        meta = json.loads((path / "ranker.json").read_text())
        with np.load(path / "ranker.npz", allow_pickle=False) as z:
            arrays = {k: torch.from_numpy(z[k].copy()) for k in z.files}
        final = MultiTaskRanker(meta["final"]["n_in"], meta["relations"], meta["final"]["hidden"],
                                meta["final"].get("wide", 0))
        final.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("final.")})
        stages = {}
        for name, prefix in (("first_pass", "first."), ("second_pass", "second.")):
            if meta.get(name):
                stages[name] = FirstPass(meta[name]["n_in"], meta[name]["hidden"])
                stages[name].load_state_dict({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
        return cls(final, ValueModel({k: float(v) for k, v in meta["value"].items()}), info=meta.get("info", {}),
                   source_features=bool(meta.get("source_features", False)),
                   feature_set=str(meta.get("feature_set", "full")), **stages)
