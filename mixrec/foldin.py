"""Fold-in: mixture components and weights for a user the model never saw, from its item history alone."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mixrec.config import Config
from mixrec.model.functional import ALL_DIMS, PAIR_DIMS, normalize, pool, product, product_all
from mixrec.registry import LOSSES
from mixrec.train.step import rowwise_adagrad_
from mixrec.weights import OnlineWeights, component_logits

DEFAULT_STEPS = 100
DEFAULT_NEGATIVES = 256


@dataclass
class FoldInSettings:
    """How a new user is fitted: ``steps`` full-history Adagrad steps against ``negatives`` uniform items each.

    ``init``: ``"kmeans"`` starts the components at a spherical k-means of the history's item vectors (the
    closed-form guess of "one component per interest", after which few steps are needed); ``"random"`` at
    seeded random vectors of the model's ``init_scale``, as training does.
    """

    steps: int = DEFAULT_STEPS
    negatives: int = DEFAULT_NEGATIVES
    init: str = "kmeans"
    kmeans_iters: int = 10
    lr: float | None = None  # None: the model's training learning rate
    seed: int | None = None  # None: the model's seed


@dataclass
class FoldedUsers:
    """Folded-in users: unit components (B, C_s, n), mixture weights (B, C_s) and the final loss per user."""

    vectors: np.ndarray
    weights: np.ndarray
    loss: np.ndarray


def pad_histories(histories: Sequence[np.ndarray], values: Sequence[np.ndarray] | None = None,
                  fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged item lists into (B, H) int64 (padding 0) and per-edge values (B, H) (padding ``fill``)."""
    h = max((len(x) for x in histories), default=0)
    items = np.zeros((len(histories), max(h, 1)), np.int64)
    vals = np.full((len(histories), max(h, 1)), fill, np.float32)
    for i, x in enumerate(histories):
        items[i, :len(x)] = x
        vals[i, :len(x)] = 1.0 if values is None else values[i]
    return items, vals


def foldin_loss(u: torch.Tensor, items: torch.Tensor, hist: torch.Tensor, edge_w: torch.Tensor,
                neg: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Eq. 3/4 for new users against frozen items: the training loss with only the user side free.

    ``u`` (B, C_s, n) raw components, ``items`` (N, C_d, n) unit item components, ``hist`` (B, H) item
    indices, ``edge_w`` (B, H) omega per history edge (0 for padding), ``neg`` (M,) uniform negatives.
    A negative equal to the positive's own item is masked, as in training.
    """
    kw = dict(gamma=cfg.gamma, theta=cfg.theta, theta_form=cfg.theta_form)
    us = normalize(u)
    m_pos = product(us.unsqueeze(1), items[hist], normalized=True)  # (B, H, C_s, C_d)
    pos = pool(m_pos, cfg.pooling, dims=PAIR_DIMS, **kw)  # (B, H)
    negs = pool(product_all(us, items[neg], normalized=True), cfg.neg_pooling(), dims=ALL_DIMS, **kw)  # (B, M)
    b, h = hist.shape
    mask = (neg.view(1, 1, -1) != hist.unsqueeze(-1)).to(negs.dtype)  # (B, H, M)
    negs = negs.unsqueeze(1).expand(b, h, -1)
    spec = LOSSES.get(cfg.loss)  # uniform negatives only: log-Q is one constant and cancels
    return spec.loss(pos.reshape(-1), negs.reshape(b * h, -1), getattr(cfg, spec.param), weight=edge_w.reshape(-1),
                     mask=mask.reshape(b * h, -1))


def foldin_weights(us: torch.Tensor, items: torch.Tensor, hist: np.ndarray, edge_mask: np.ndarray,
                   gamma: float, form: str = "sum") -> np.ndarray:
    """Eq. 5 mixture weights (B, C_s) of folded users from their history edges where ``edge_mask`` is true.

    Users without such edges get uniform weights (as trained users without edges do).
    """
    b, cs = us.shape[0], us.shape[1]
    rows, cols = np.nonzero(edge_mask)
    node = torch.as_tensor(rows, dtype=torch.int64)
    with torch.no_grad():
        m = product(normalize(us[node]), items[torch.as_tensor(hist[rows, cols])], normalized=True)
        acc = OnlineWeights(b, cs)
        acc.add(node, component_logits(m, gamma, "source", form))
    return acc.result()


def kmeans_init(points: torch.Tensor, mask: torch.Tensor, k: int, iters: int = 10) -> torch.Tensor:
    """Spherical k-means per row: ``points`` (B, P, n) unit vectors, ``mask`` (B, P) valid; returns (B, k, n) unit.

    Seeding is deterministic farthest-point (first valid point, then the point least similar to the chosen
    ones); an emptied cluster keeps its centre. Rows with fewer distinct points than ``k`` repeat centres.
    """
    b, p, n = points.shape
    neg_inf = torch.tensor(-torch.inf)
    first = mask.float().argmax(1)  # the first valid point of each row
    centres = [points[torch.arange(b), first]]
    best = torch.full((b, p), -torch.inf)
    for _ in range(1, k):
        sim = torch.einsum("bpn,bn->bp", points, centres[-1])
        best = torch.maximum(best, sim)
        far = torch.where(mask, best, torch.full_like(best, torch.inf)).argmin(1)
        centres.append(points[torch.arange(b), far])
    c = torch.stack(centres, 1)  # (B, k, n)
    for _ in range(iters):
        sim = torch.einsum("bpn,bkn->bpk", points, c)
        assign = torch.where(mask.unsqueeze(-1), sim, neg_inf).argmax(-1)  # (B, P)
        onehot = torch.nn.functional.one_hot(assign, k).to(points.dtype) * mask.unsqueeze(-1)
        sums = torch.einsum("bpk,bpn->bkn", onehot, points)
        empty = sums.norm(dim=-1, keepdim=True) < 1e-12
        c = torch.where(empty, c, normalize(sums))
    return c


def fold_in(items: torch.Tensor, histories: Sequence[np.ndarray], cfg: Config, components: int, *,
            edge_weights: Sequence[np.ndarray] | None = None, weight_edges: Sequence[np.ndarray] | None = None,
            weight_gamma: float = 0.1, weight_form: str = "sum", uniform_weights: bool = False,
            settings: FoldInSettings | None = None) -> FoldedUsers:
    """Fit ``components`` unit vectors per new user by the training loss with ``items`` (N, C_d, n) frozen.

    ``histories``: one array of item indices per user (non-empty). ``edge_weights``: omega per history
    edge (default 1). ``weight_edges``: boolean per edge, the edges eq. 5 uses (default all);
    ``uniform_weights`` skips eq. 5. Deterministic: every user starts from the same seeded components and
    all users of a call share the seeded negatives, so a user's result does not depend on its batch mates.
    """
    s = settings or FoldInSettings()
    if not histories:
        n = items.shape[-1]
        return FoldedUsers(np.zeros((0, components, n), np.float32), np.zeros((0, components), np.float32),
                           np.zeros(0, np.float32))
    if any(len(h) == 0 for h in histories):
        raise ValueError("every history needs at least one item to fold a user in")
    seed = cfg.seed if s.seed is None else s.seed
    lr = cfg.lr if s.lr is None else s.lr
    n_items, _, dim = items.shape
    hist_np, w_np = pad_histories(histories, edge_weights)
    hist, edge_w = torch.from_numpy(hist_np), torch.from_numpy(w_np)
    b = len(histories)
    g = torch.Generator().manual_seed(int(seed))
    start = torch.randn(components, dim, generator=g) * cfg.init_scale
    if s.init == "kmeans":  # one component per cluster of the history's item components, at the init scale
        cd = items.shape[1]
        points = items[hist].reshape(b, -1, dim)
        valid = (edge_w > 0).repeat_interleave(cd, dim=1)
        u = kmeans_init(points, valid, components, s.kmeans_iters) * start.norm(dim=-1).mean()
    elif s.init == "random":
        u = start.unsqueeze(0).repeat(b, 1, 1)
    else:
        raise ValueError(f"unknown fold-in init {s.init!r}; use 'kmeans' or 'random'")
    state = torch.zeros(b)
    rows = torch.arange(b)
    m = min(s.negatives, n_items)
    loss = torch.zeros(b)
    for _ in range(s.steps):
        neg = torch.randint(0, n_items, (m,), generator=g)
        leaf = u.clone().requires_grad_(True)
        total = foldin_loss(leaf, items, hist, edge_w, neg, cfg)
        total.backward()
        with torch.no_grad():
            rowwise_adagrad_(u, state, rows, leaf.grad, lr)
    with torch.no_grad():  # final per-user loss, on fresh negatives (for diagnostics)
        neg = torch.randint(0, n_items, (m,), generator=g)
        loss = torch.stack([foldin_loss(u[i:i + 1], items, hist[i:i + 1], edge_w[i:i + 1], neg, cfg)
                            for i in range(b)]) / edge_w.sum(1).clamp_min(1e-9)
    if uniform_weights:
        w = np.full((b, components), 1.0 / components, np.float32)
    else:
        mask = w_np > 0 if weight_edges is None else pad_histories(histories, weight_edges)[1] > 0
        w = foldin_weights(u, items, hist_np, mask, weight_gamma, weight_form)
    return FoldedUsers(normalize(u).numpy().astype(np.float32), w, loss.numpy().astype(np.float32))


def fold_in_model(model, histories: Sequence[np.ndarray], relations: Sequence[np.ndarray] | None = None, *,
                  weight_set: str = "all", target_type: str | None = None, source_type: str | None = None,
                  settings: FoldInSettings | None = None, items: torch.Tensor | None = None) -> FoldedUsers:
    """Fold new nodes of ``source_type`` (default the model's) into a trained :class:`MixtureModel` from dense
    histories of ``target_type`` nodes (default the model's), e.g. a new creator from the media it authored.

    ``relations``: per node, a relation code per history edge, each a relation from ``source_type`` to
    ``target_type`` (default: the model's first such relation). Edges are weighted by
    ``relations.<name>.weight`` (the degree term of training is not applied); mixture weights use the edges of
    ``weight_set``'s relations (uniform when the model has no such set). The folded node gets
    ``components(source_type)`` components. ``items``: the target type's unit vectors, if already at hand.
    """
    cfg = model.config
    s_type, t_type = source_type or model.source_type, target_type or model.target_type
    codes_ok = fold_in_relations(model, s_type, t_type)
    if relations is None:
        relations = [np.full(len(h), codes_ok[0], np.int64) for h in histories]
    for h, r in zip(histories, relations):
        if len(h) != len(r):
            raise ValueError("give one relation per history item")
        bad = sorted(set(np.asarray(r).tolist()) - set(codes_ok))
        if bad:
            names = [model.relations[c].name if 0 <= c < len(model.relations) else str(c) for c in bad]
            raise ValueError(f"relation(s) {names} do not go from {s_type!r} to {t_type!r}; "
                             f"use one of {[model.relations[c].name for c in codes_ok]}")
    omega = np.array([cfg.relation(r.name).weight for r in model.relations], np.float32)
    edge_w = [omega[np.asarray(r, np.int64)] for r in relations]
    ws = cfg.weight_sets.get(weight_set)
    uniform = weight_set not in model.weights
    if ws is not None and not uniform:
        names = ws.relations or [r.name for r in model.relations]
        use = [model.relation_code(n) for n in names]
        weight_edges = [np.isin(np.asarray(r), use) for r in relations]
        gamma, form = ws.gamma, ws.form
    else:
        weight_edges, gamma, form = None, 0.1, "sum"
    if items is None:
        items = model.vectors(t_type)
    with torch.no_grad():
        items = items.detach()
    return fold_in(items, [np.asarray(h, np.int64) for h in histories], cfg, model.components(s_type),
                   edge_weights=edge_w, weight_edges=weight_edges, weight_gamma=gamma, weight_form=form,
                   uniform_weights=uniform, settings=settings)


def fold_in_relations(model, source_type: str, target_type: str) -> list[int]:
    """Codes of the model's relations from ``source_type`` to ``target_type``; ValueError naming the types and
    the relations there are when the types are unknown or no relation joins them."""
    types = sorted(model.tables)
    for t in (source_type, target_type):
        if t not in types:
            raise ValueError(f"unknown entity type {t!r} to fold in with; the model has {types}")
    codes = [i for i, r in enumerate(model.relations) if (r.source_type, r.target_type) == (source_type, target_type)]
    if not codes:
        have = ", ".join(f"{r.name} ({r.source_type} -> {r.target_type})" for r in model.relations)
        raise ValueError(f"the model has no relation from {source_type!r} to {target_type!r} to fold in with; "
                         f"fold in along one of its relations: {have}")
    return codes


def read_histories(path: str | Path) -> tuple[list, list[np.ndarray], list[np.ndarray | None]]:
    """Read a history file (Parquet, CSV or TSV with columns ``user``, ``item`` and optional ``relation``).

    Returns (raw user ids in first-seen order, raw item ids per user, raw relation names per user or None).
    """
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix == ".parquet":
        table = pq.read_table(path)
    else:
        delim = "\t" if path.suffix in (".tsv", ".txt") or path.name.endswith(".tsv.gz") else ","
        table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delim),
                              convert_options=pcsv.ConvertOptions(column_types={"user": "string", "item": "string",
                                                                                "relation": "string"}))
    missing = {"user", "item"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: history file needs columns 'user' and 'item' (optional 'relation'); "
                         f"missing {sorted(missing)}, found {table.column_names}")
    users = np.array([str(v) for v in table.column("user").to_pylist()], dtype=object)
    items = np.array([str(v) for v in table.column("item").to_pylist()], dtype=object)
    rels = (np.array([str(v) for v in table.column("relation").to_pylist()], dtype=object)
            if "relation" in table.column_names else None)
    uniq, first, inv = np.unique(users, return_index=True, return_inverse=True)
    by_user = np.split(np.argsort(inv, kind="stable"), np.cumsum(np.bincount(inv, minlength=len(uniq)))[:-1])
    order = np.argsort(first, kind="stable")
    groups = [by_user[g] for g in order]
    return ([uniq[g] for g in order], [items[g] for g in groups],
            [None if rels is None else rels[g] for g in groups])
