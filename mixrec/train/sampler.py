"""Training edges, their weights omega(e) and the seeded, per-epoch batch schedule with uniform negatives."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from mixrec.config import Config, RelationConfig
from mixrec.data.dataset import Dataset, Edges, Relation
from mixrec.train.step import Batch


@dataclass
class TrainingEdges:
    """Per relation: source, destination and omega(e) of every training edge."""

    relations: list[Relation]
    src: list[np.ndarray]
    dst: list[np.ndarray]
    weight: list[np.ndarray]
    num_targets: list[int]
    num_sources: list[int]
    src_prob: list[np.ndarray | None]  # per relation: share of its edges per source (two-sided log-Q only)
    dst_prob: list[np.ndarray | None]  # per relation: share of its edges per destination (log-Q)

    @property
    def total(self) -> int:
        return int(sum(len(s) for s in self.src))


def degree_term(deg_src: np.ndarray, deg_dst: np.ndarray, exponent: float, src: np.ndarray,
                dst: np.ndarray) -> np.ndarray:
    """(deg_s * deg_d)^-exponent per edge: omega(e)'s degree factor before its normalisation to mean 1."""
    return (deg_src[src].astype(np.float64) * deg_dst[dst]) ** (-exponent)


def edge_weights(edges: Edges, rel_cfg_weight: float, degree_exponent: float,
                 n_src: int, n_dst: int) -> np.ndarray:
    """omega(e) = task weight * input weight * (deg_s * deg_d)^-exponent, the degree term normalised to mean 1
    (:meth:`mixrec.train.graph_source.GraphSource.weight_scale` streams the same factor)."""
    w = edges.weight.astype(np.float64) * rel_cfg_weight
    if degree_exponent:
        f = degree_term(np.bincount(edges.src, minlength=n_src), np.bincount(edges.dst, minlength=n_dst),
                        degree_exponent, edges.src, edges.dst)
        w = w * f / f.mean()
    return w.astype(np.float32)


EdgeWeightFn = Callable[[Edges, RelationConfig, int, int], np.ndarray]
EDGE_WEIGHTS: dict[str, EdgeWeightFn] = {
    "default": lambda e, rc, n_src, n_dst: edge_weights(e, rc.weight, rc.degree_exponent, n_src, n_dst),
}


def register_edge_weight(name: str, fn: EdgeWeightFn) -> None:
    """Plug in omega(e): ``fn(edges, relation_config, n_sources, n_targets) -> (E,) weights``;
    select it with ``relations.<name>.edge_weight = "<name>"``."""
    EDGE_WEIGHTS[name] = fn


def training_edges(dataset: Dataset, cfg: Config) -> TrainingEdges:
    """Group the train split by relation and attach omega(e) from ``relations.<name>`` settings."""
    train = dataset.split("train")
    out = TrainingEdges(list(dataset.relations), [], [], [], [], [], [], [])
    for code, r in enumerate(dataset.relations):
        e = train.select(train.rel == code)
        rc = cfg.relation(r.name)
        out.src.append(e.src)
        out.dst.append(e.dst)
        try:
            fn = EDGE_WEIGHTS[rc.edge_weight]
        except KeyError:
            raise ValueError(f"relations.{r.name}.edge_weight: unknown function {rc.edge_weight!r}; "
                             f"registered: {sorted(EDGE_WEIGHTS)}") from None
        w = np.asarray(fn(e, rc, dataset.num(r.source_type), dataset.num(r.target_type)), dtype=np.float32)
        if w.shape != (len(e),) or not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"relations.{r.name}.edge_weight {rc.edge_weight!r} must return {len(e)} finite, "
                             "non-negative weights")
        out.weight.append(w)
        n_src, n_dst = dataset.num(r.source_type), dataset.num(r.target_type)
        out.num_targets.append(n_dst)
        out.num_sources.append(n_src)
        out.src_prob.append(edge_shares(e.src, n_src) if cfg.applies_log_q and cfg.negatives.two_sided else None)
        out.dst_prob.append(edge_shares(e.dst, n_dst) if cfg.applies_log_q else None)
    return out


def edge_shares(ids: np.ndarray, n: int) -> np.ndarray:
    """Share of the edges at each node (its probability of being an in-batch negative), float32 (n,)."""
    return (np.bincount(ids, minlength=n) / max(len(ids), 1)).astype(np.float32)


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of one epoch: the same (seed, epoch) always yields the same schedule."""
    return np.random.default_rng([seed, epoch, 0x6D6978])


def epoch_schedule(edges: TrainingEdges, cfg: Config, epoch: int) -> list[tuple[int, np.ndarray]]:
    """Shuffled (relation, edge positions) batches of one epoch; relations with weight 0 are skipped."""
    rng = epoch_rng(cfg.seed, epoch)
    batches: list[tuple[int, np.ndarray]] = []
    for code, r in enumerate(edges.relations):
        n = len(edges.src[code])
        if n == 0 or cfg.relation(r.name).weight == 0:
            continue
        perm = rng.permutation(n)
        batches.extend((code, perm[i:i + cfg.batch_size]) for i in range(0, n, cfg.batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def make_batches(edges: TrainingEdges, cfg: Config, epoch: int,
                 schedule: list[tuple[int, np.ndarray]] | None = None,
                 start: int = 0, stride: int = 1) -> Iterator[Batch]:
    """Materialise batches ``start, start+stride, ...`` of an epoch's schedule (workers take a stride each)."""
    schedule = epoch_schedule(edges, cfg, epoch) if schedule is None else schedule
    for i in range(start, len(schedule), stride):
        code, pos = schedule[i]
        r = edges.relations[code]
        neg_rng = np.random.default_rng([cfg.seed, epoch, i, 0x6E6567])
        uniform = neg_rng.integers(0, edges.num_targets[code], size=cfg.negatives.uniform, dtype=np.int64)
        uniform_src = None
        if cfg.negatives.two_sided:
            uniform_src = neg_rng.integers(0, edges.num_sources[code], size=cfg.negatives.uniform, dtype=np.int64)
        yield Batch(r.source_type, r.target_type, edges.src[code][pos], edges.dst[code][pos],
                    edges.weight[code][pos], uniform, uniform_src, edges.src_prob[code], edges.dst_prob[code])
