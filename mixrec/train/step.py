"""One training step: batched positives and one-sided negatives scored at once, then a row-wise Adagrad update."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mixrec.config import Config
from mixrec.model.functional import (ALL_DIMS, PAIR_DIMS, equal_pairs, margin_loss, margin_loss_with_grad,
                                     normalize, normalize_backward, pool, pool_with_grad, product, product_all)

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


def rowwise_adagrad_(table: torch.Tensor, state: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
                     lr: float) -> None:
    """In place: state[r] += mean(g_r^2); table[r] -= lr * g_r / sqrt(state[r]) (PyTorch-BigGraph's rule).

    ``rows`` must be unique, so the updates touch each row once and never copy the whole table.
    """
    new_state = state.index_select(0, rows).add_(grad.square().flatten(1).mean(1))
    state.index_copy_(0, rows, new_state)
    inv = new_state.sqrt_().add_(ADAGRAD_EPS).reciprocal_().view(-1, *([1] * (grad.dim() - 1)))
    table.index_add_(0, rows, grad * inv, alpha=-lr)


def _gather(table: torch.Tensor, ids: torch.Tensor):
    uniq, inv = torch.unique(ids, return_inverse=True)
    leaf = table.index_select(0, uniq).requires_grad_(True)
    return uniq, inv, leaf, normalize(leaf)


def batch_loss(batch: Batch, tables: dict[str, torch.Tensor], cfg: Config,
               same_type: bool | None = None):
    """Loss of eq. 3/4 for one batch and the gathered leaf rows it depends on.

    Returns ``(loss, [(type, unique_rows, leaf)])``; call ``loss.backward()`` then update each leaf's rows.
    """
    device = tables[batch.source_type].device
    src, dst, uniform = (_ids(a, device) for a in (batch.src, batch.dst, batch.uniform))
    nb = min(cfg.negatives.batch, len(dst))
    neg = torch.cat([dst[:nb], uniform])
    s_t, d_t = batch.source_type, batch.target_type
    if s_t == d_t:
        ids = torch.cat([src, dst, neg])
        uniq, inv, leaf, unit = _gather(tables[s_t], ids)
        n_s, n_d = len(src), len(dst)
        us, ud, un = unit[inv[:n_s]], unit[inv[n_s:n_s + n_d]], unit[inv[n_s + n_d:]]
        groups = [(s_t, uniq, leaf)]
    else:
        u_s, inv_s, leaf_s, unit_s = _gather(tables[s_t], src)
        u_d, inv_d, leaf_d, unit_d = _gather(tables[d_t], torch.cat([dst, neg]))
        us, ud, un = unit_s[inv_s], unit_d[inv_d[:len(dst)]], unit_d[inv_d[len(dst):]]
        groups = [(s_t, u_s, leaf_s), (d_t, u_d, leaf_d)]
    kw = dict(gamma=cfg.gamma, theta=cfg.theta, theta_form=cfg.theta_form)
    pos = pool(product(us, ud, normalized=True), cfg.pooling, **kw)
    negs = pool(product_all(us, un, normalized=True), cfg.neg_pooling(), dims=ALL_DIMS, **kw)
    mask = (neg.unsqueeze(0) != dst.unsqueeze(1)).to(negs.dtype)
    loss = margin_loss(pos, negs, cfg.margin, torch.from_numpy(batch.weight).to(device, negs.dtype), mask)
    return loss, groups


def _ids(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device, non_blocking=True)


def _unit_rows(table: torch.Tensor, ids: torch.Tensor):
    """Unique rows of ``ids``, the inverse map, and the gathered rows' norms (keepdim) and unit vectors."""
    uniq, inv = torch.unique(ids, return_inverse=True)
    x = table.index_select(0, uniq)
    norm = x.norm(dim=-1, keepdim=True)
    return uniq, inv, norm, x / norm.clamp_min(1e-12)


def batch_grads(batch: Batch, tables: dict[str, torch.Tensor], cfg: Config):
    """The loss of :func:`batch_loss` and its gradient per touched row, in closed form (no autograd graph).

    Positives and negatives are scored with one matrix product each way, pooling and the margin loss
    return their derivatives in the same pass, and the gradients of repeated rows are summed with
    ``index_add_``. Returns ``(loss, [(type, unique_rows, grad)])``, or None when a pooling is a
    registered function whose gradient only autograd knows.
    """
    kw = dict(gamma=cfg.gamma, theta=cfg.theta, theta_form=cfg.theta_form)
    s_t, d_t = batch.source_type, batch.target_type
    device = tables[s_t].device
    src, dst, uniform = (_ids(a, device) for a in (batch.src, batch.dst, batch.uniform))
    n_b, n_d = len(src), len(dst)
    nb = min(cfg.negatives.batch, n_d)
    if s_t == d_t:
        rows, inv, norm, unit = _unit_rows(tables[s_t], torch.cat([src, dst, uniform]))
        sides = [(s_t, rows, norm, unit)]
        inv_s, inv_d, inv_u = inv[:n_b], inv[n_b:n_b + n_d], inv[n_b + n_d:]
    else:
        rows_s, inv_s, norm_s, unit_s = _unit_rows(tables[s_t], src)
        rows_d, inv, norm_d, unit_d = _unit_rows(tables[d_t], torch.cat([dst, uniform]))
        sides = [(s_t, rows_s, norm_s, unit_s), (d_t, rows_d, norm_d, unit_d)]
        inv_d, inv_u = inv[:n_d], inv[n_d:]
    unit_s, unit_d = sides[0][3], sides[-1][3]
    inv_n = torch.cat([inv_d[:nb], inv_u])
    a, b, n = unit_s.index_select(0, inv_s), unit_d.index_select(0, inv_d), unit_d.index_select(0, inv_n)
    (_, cs, dim), cd, n_neg = a.shape, n.shape[1], len(inv_n)
    n_flat = n.transpose(0, 1).reshape(cd * n_neg, dim)
    m_pos = (a.unsqueeze(2) * b.unsqueeze(1)).sum(-1)  # (B, C_s, C_d)
    m_neg = (a.reshape(n_b * cs, dim) @ n_flat.T).view(n_b, cs, cd, n_neg)
    pos = pool_with_grad(m_pos, cfg.pooling, dims=PAIR_DIMS, **kw)
    neg = pool_with_grad(m_neg, cfg.neg_pooling(), dims=ALL_DIMS, **kw)
    if pos is None or neg is None:
        return None
    own_b, own_j = equal_pairs(dst, torch.cat([dst[:nb], uniform]))  # a positive's own item is no negative
    neg[0].index_put_((own_b, own_j), torch.tensor(float("-inf"), dtype=a.dtype, device=device))
    weight = torch.from_numpy(np.asarray(batch.weight)).to(device, a.dtype)
    loss, d_pos, d_neg = margin_loss_with_grad(pos[0], neg[0], cfg.margin, weight)
    g_pos = d_pos.view(-1, 1, 1) if pos[1] is None else pos[1].mul_(d_pos.view(-1, 1, 1))
    g_neg = d_neg if neg[1] is None else neg[1].mul_(d_neg.view(n_b, 1, 1, n_neg)).view(n_b * cs, cd * n_neg)
    d_a = (g_pos.unsqueeze(-1) * b.unsqueeze(1)).sum(2).add_((g_neg @ n_flat).view(n_b, cs, dim))
    d_b = (g_pos.unsqueeze(-1) * a.unsqueeze(2)).sum(1)
    d_n = (g_neg.T @ a.reshape(n_b * cs, dim)).view(cd, n_neg, dim).transpose(0, 1)
    grads = [torch.zeros_like(side[3]) for side in sides]
    grads[0].index_add_(0, inv_s, d_a)
    grads[-1].index_add_(0, inv_d, d_b).index_add_(0, inv_n, d_n)
    return float(loss), [(t, rows, normalize_backward(norm, unit, g))
                         for (t, rows, norm, unit), g in zip(sides, grads)]


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
