"""One training step: batched positives and one-sided negatives scored at once, then a row-wise Adagrad update."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mixrec.config import Config
from mixrec.model.functional import ALL_DIMS, margin_loss, normalize, pool, product, product_all

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
    g2 = grad.pow(2).flatten(1).mean(1)
    new_state = state.index_select(0, rows) + g2
    state.index_copy_(0, rows, new_state)
    step = grad * (lr / (new_state.sqrt() + ADAGRAD_EPS)).view(-1, *([1] * (grad.dim() - 1)))
    table.index_add_(0, rows, -step)


def _gather(table: torch.Tensor, ids: torch.Tensor):
    uniq, inv = torch.unique(ids, return_inverse=True)
    leaf = table.index_select(0, uniq).requires_grad_(True)
    return uniq, inv, leaf, normalize(leaf)


def batch_loss(batch: Batch, tables: dict[str, torch.Tensor], cfg: Config,
               same_type: bool | None = None):
    """Loss of eq. 3/4 for one batch and the gathered leaf rows it depends on.

    Returns ``(loss, [(type, unique_rows, leaf)])``; call ``loss.backward()`` then update each leaf's rows.
    """
    src = torch.from_numpy(batch.src)
    dst = torch.from_numpy(batch.dst)
    nb = min(cfg.negatives.batch, len(dst))
    neg = torch.cat([dst[:nb], torch.from_numpy(batch.uniform)])
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
    loss = margin_loss(pos, negs, cfg.margin, torch.from_numpy(batch.weight), mask)
    return loss, groups


def train_step(batch: Batch, tables: dict[str, torch.Tensor], states: dict[str, torch.Tensor], cfg: Config) -> float:
    """Score, backpropagate and update the touched rows; returns the batch loss."""
    loss, groups = batch_loss(batch, tables, cfg)
    loss.backward()
    with torch.no_grad():
        for t, rows, leaf in groups:
            rowwise_adagrad_(tables[t], states[t], rows, leaf.grad, cfg.lr)
    return float(loss.detach())
