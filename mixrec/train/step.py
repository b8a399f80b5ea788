"""One training step: batched positives and one-sided negatives scored at once, then a row-wise Adagrad update."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mixrec.config import Config
from mixrec.model.functional import (ALL_DIMS, equal_pairs, has_closed_form, normalize, pool, product, product_all,
                                     routed_queries)
from mixrec.registry import LOSSES
from mixrec.train.fused import run_fused

ADAGRAD_EPS = 1e-10


@dataclass
class Batch:
    """Positive edges of one relation plus the uniform negatives drawn for them."""

    source_type: str
    target_type: str
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    uniform: np.ndarray  # destination indices drawn uniformly from the target type
    uniform_src: np.ndarray | None = None  # source indices drawn uniformly (two-sided negatives only)
    src_prob: np.ndarray | None = None  # (N_src,) share of the relation's training edges per source (log-Q)
    dst_prob: np.ndarray | None = None  # (N_dst,) the same per destination
    dst_uniform_prob: np.ndarray | None = None  # (N_dst,) each destination's chance per uniform draw (None: 1/N_dst)


def rowwise_adagrad_(table: torch.Tensor, state: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
                     lr: float) -> None:
    """In place: state[r] += mean(g_r^2); table[r] -= lr * g_r / sqrt(state[r]) (PyTorch-BigGraph's rule).

    ``rows`` must be unique, so the updates touch each row once and never copy the whole table.
    """
    new_state = state.index_select(0, rows).add_(grad.square().flatten(1).mean(1))
    state.index_copy_(0, rows, new_state)
    inv = new_state.sqrt_().add_(ADAGRAD_EPS).reciprocal_().view(-1, *([1] * (grad.dim() - 1)))
    table.index_add_(0, rows, grad * inv, alpha=-lr)


def _gather_roles(tables: dict[str, torch.Tensor], roles: list[tuple[str, torch.Tensor]]):
    """Unit vectors for each ``(type, ids)`` role, gathered once per type as leaves that autograd reaches.

    Returns ``([unit vectors per role], [(type, unique_rows, leaf)])``.
    """
    units: list = [None] * len(roles)
    groups = []
    for t in dict.fromkeys(t for t, _ in roles):
        mine = [i for i, (rt, _) in enumerate(roles) if rt == t]
        uniq, inv = torch.unique(torch.cat([roles[i][1] for i in mine]), return_inverse=True)
        leaf = tables[t].index_select(0, uniq).requires_grad_(True)
        unit = normalize(leaf)
        for i, part in zip(mine, torch.split(inv, [len(roles[i][1]) for i in mine])):
            units[i] = unit[part]
        groups.append((t, uniq, leaf))
    return units, groups


def _log_q(cfg: Config, prob: np.ndarray | None, pos_ids: torch.Tensor, neg_ids: torch.Tensor, n_batch: int,
           n_uniform: int, uniform_prob: np.ndarray | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """log of each positive's and negative's expected count among ``n_batch`` in-batch (by ``prob``, the share
    of edges per node) and ``n_uniform`` uniform negatives (by ``uniform_prob``, default 1/N each);
    ``(None, None)`` when no correction applies."""
    if not cfg.applies_log_q or prob is None:
        return None, None
    p = torch.from_numpy(np.asarray(prob)).to(pos_ids.device)
    u = None if uniform_prob is None else torch.from_numpy(np.asarray(uniform_prob)).to(pos_ids.device)
    return tuple(torch.log(n_batch * p[ids] + (n_uniform / len(prob) if u is None else n_uniform * u[ids]))
                 for ids in (pos_ids, neg_ids))


def _side_loss(pos, negs, mask, weight, cfg: Config, prob, pos_ids, neg_ids, n_batch, n_uniform, uniform_prob=None):
    spec = LOSSES.get(cfg.loss)
    pos_logq, neg_logq = _log_q(cfg, prob, pos_ids, neg_ids, n_batch, n_uniform, uniform_prob)
    return spec.loss(pos, negs, getattr(cfg, spec.param), weight=weight, mask=mask.to(negs.dtype), pos_logq=pos_logq,
                     neg_logq=neg_logq)


def batch_loss(batch: Batch, tables: dict[str, torch.Tensor], cfg: Config):
    """Loss of eq. 3/4 (or the sampled softmax) for one batch and the gathered leaf rows it depends on.

    Negatives are the batch's other destinations plus the uniform ones; with ``negatives.two_sided`` the
    batch's other sources and uniform sources are scored against each positive's destination too.
    Returns ``(loss, [(type, unique_rows, leaf)])``; call ``loss.backward()`` then update each leaf's rows.
    """
    device = tables[batch.source_type].device
    src, dst, uniform = (_ids(a, device) for a in (batch.src, batch.dst, batch.uniform))
    s_t, d_t = batch.source_type, batch.target_type
    two = cfg.negatives.two_sided
    u_src = _ids(batch.uniform_src if batch.uniform_src is not None else np.empty(0, np.int64), device)
    roles = [(s_t, src), (d_t, dst), (d_t, uniform)] + ([(s_t, u_src)] if two else [])
    units, groups = _gather_roles(tables, roles)
    us, ud, uu = units[:3]
    nb = min(cfg.negatives.batch, len(dst))
    neg, un = torch.cat([dst[:nb], uniform]), torch.cat([ud[:nb], uu])
    kw = dict(gamma=cfg.gamma, theta=cfg.theta, theta_form=cfg.theta_form)
    weight = torch.from_numpy(np.asarray(batch.weight)).to(device, us.dtype)
    m_pos = product(us, ud, normalized=True)
    pos = pool(m_pos, cfg.pooling, **kw)
    query, _ = routed_queries(us, m_pos, cfg.routing, cfg.gamma)  # routing: the positive's components score negatives
    negs = pool(product_all(query, un, normalized=True), cfg.neg_pooling(), dims=ALL_DIMS, **kw)
    mask = neg.unsqueeze(0) != dst.unsqueeze(1)
    loss = _side_loss(pos, negs, mask, weight, cfg, batch.dst_prob, dst, neg, nb, len(uniform),
                      batch.dst_uniform_prob)
    if two:
        sneg, usn = torch.cat([src[:nb], u_src]), torch.cat([us[:nb], units[3]])
        negs_s = pool(product_all(usn, ud, normalized=True), cfg.neg_pooling(), dims=ALL_DIMS, **kw).T
        mask_s = sneg.unsqueeze(0) != src.unsqueeze(1)
        loss = loss + _side_loss(pos, negs_s, mask_s, weight, cfg, batch.src_prob, src, sneg, nb, len(u_src))
    return loss, groups


def _ids(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device, non_blocking=True)


def batch_grads(batch: Batch, tables: dict[str, torch.Tensor], cfg: Config):
    """The loss of :func:`batch_loss` and its gradient per touched row, in closed form (no autograd graph).

    The touched rows are found (``torch.unique``) and gathered once per table; scoring, pooling, the loss,
    their derivatives and the sums over repeated rows are one pure function, :func:`mixrec.train.fused.
    fused_grads` (compiled with ``torch.compile`` when ``compile = true``). Returns ``(loss, [(type,
    unique_rows, grad)])``, or None when a pooling or the loss declares no closed-form gradient, or when
    negatives are two-sided (autograd).
    """
    if (cfg.negatives.two_sided or LOSSES.get(cfg.loss).with_grad is None
            or not (has_closed_form(cfg.pooling) and has_closed_form(cfg.neg_pooling()))):
        return None
    s_t, d_t = batch.source_type, batch.target_type
    device = tables[s_t].device
    src, dst, uniform = (_ids(a, device) for a in (batch.src, batch.dst, batch.uniform))
    n_b, n_d = len(src), len(dst)
    nb = min(cfg.negatives.batch, n_d)
    neg_ids = torch.cat([dst[:nb], uniform])
    if s_t == d_t:
        rows, inv = torch.unique(torch.cat([src, dst, uniform]), return_inverse=True)
        x_s = x_d = tables[s_t].index_select(0, rows)
        inv_s, inv_d, inv_u = inv[:n_b], inv[n_b:n_b + n_d], inv[n_b + n_d:]
        sides = [(s_t, rows)]
    else:
        rows_s, inv_s = torch.unique(src, return_inverse=True)
        rows_d, inv = torch.unique(torch.cat([dst, uniform]), return_inverse=True)
        x_s, x_d = tables[s_t].index_select(0, rows_s), tables[d_t].index_select(0, rows_d)
        inv_d, inv_u = inv[:n_d], inv[n_d:]
        sides = [(s_t, rows_s), (d_t, rows_d)]
    own_b, own_j = equal_pairs(dst, neg_ids)  # a positive's own item is no negative
    weight = torch.from_numpy(np.asarray(batch.weight)).to(device, x_s.dtype)
    loss, g_s, g_d = run_fused(
        cfg.compile, x_s, x_d, inv_s, inv_d, torch.cat([inv_d[:nb], inv_u]), own_b, own_j, weight,
        *_log_q(cfg, batch.dst_prob, dst, neg_ids, nb, len(uniform), batch.dst_uniform_prob),
        pooling=cfg.pooling, neg_pooling=cfg.neg_pooling(), loss=cfg.loss, routing=cfg.routing,
        loss_param=getattr(cfg, LOSSES.get(cfg.loss).param), gamma=cfg.gamma, theta=cfg.theta, theta_form=cfg.theta_form,
        shared=s_t == d_t)
    return float(loss), [(t, rows, g) for (t, rows), g in zip(sides, (g_s, g_d))]


def train_step(batch: Batch, tables: dict[str, torch.Tensor], states: dict[str, torch.Tensor], cfg: Config) -> float:
    """Score, differentiate and update the touched rows with row-wise Adagrad; returns the batch loss.

    Uses the closed-form :func:`batch_grads`; falls back to autograd on :func:`batch_loss` for registered poolings.
    """
    fused = batch_grads(batch, tables, cfg)
    if fused is None:
        loss_t, leaves = batch_loss(batch, tables, cfg)
        loss_t.backward()
        fused = float(loss_t.detach()), [(t, rows, leaf.grad) for t, rows, leaf in leaves]
    loss, groups = fused
    with torch.no_grad():
        for t, rows, grad in groups:
            rowwise_adagrad_(tables[t], states[t], rows, grad, cfg.lr)
    return loss
