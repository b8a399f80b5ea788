"""The closed-form loss and row gradients of one batch as one pure tensor function, optionally compiled."""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
from torch import Tensor

from mixrec.model.functional import ALL_DIMS, PAIR_DIMS, normalize_backward, pool_with_grad, routed_queries
from mixrec.registry import LOSSES
from mixrec.train.memory import keep_freed_heap

log = logging.getLogger(__name__)


def fused_grads(x_s: Tensor, x_d: Tensor, inv_s: Tensor, inv_d: Tensor, inv_n: Tensor, own_b: Tensor,
                own_j: Tensor, weight: Tensor, pos_logq: Optional[Tensor], neg_logq: Optional[Tensor], *,
                pooling: str, neg_pooling: str, loss: str, loss_param: float, gamma: float,
                theta: float, theta_form: str, shared: bool, routing: str = "none") -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Loss and gradients of the raw gathered rows ``x_s`` (sources) and ``x_d`` (destinations).

    ``inv_s``/``inv_d``/``inv_n`` map positives' sources, positives' destinations and negatives to rows;
    ``(own_b, own_j)`` are the (positive, negative) pairs that hold the positive's own destination.
    With ``shared`` both sides index one table (``x_d`` is ``x_s``) and the one gradient is returned first.
    ``loss`` names a registered loss with a closed-form gradient, ``loss_param`` its knob (margin or
    temperature); poolings with one too (``functional.pool_with_grad``). ``routing`` ('none', 'soft', 'hard')
    scores the negatives with the routed query sum_c r_c a_c (r constant; ``functional.routed_queries``). Returns ``(loss, grad_s, grad_d or None)``.
    """
    kw = dict(gamma=gamma, theta=theta, theta_form=theta_form)
    norm_s = x_s.norm(dim=-1, keepdim=True)
    unit_s = x_s / norm_s.clamp_min(1e-12)
    norm_d, unit_d = (norm_s, unit_s) if shared else (x_d.norm(dim=-1, keepdim=True), None)
    if unit_d is None:
        unit_d = x_d / norm_d.clamp_min(1e-12)
    a, b, n = unit_s.index_select(0, inv_s), unit_d.index_select(0, inv_d), unit_d.index_select(0, inv_n)
    n_b, cs, dim = a.shape
    cd, n_neg = n.shape[1], n.shape[0]
    n_flat = n.transpose(0, 1).reshape(cd * n_neg, dim)
    m_pos = (a.unsqueeze(2) * b.unsqueeze(1)).sum(-1)  # (B, C_s, C_d)
    query, r = routed_queries(a, m_pos, routing, gamma)  # (B, C_q, n): C_q = C_s, or 1 when routed
    cq = query.shape[1]
    m_neg = (query.reshape(n_b * cq, dim) @ n_flat.T).view(n_b, cq, cd, n_neg)
    pos, g_pos = pool_with_grad(m_pos, pooling, dims=PAIR_DIMS, inplace=True, **kw)
    neg, g_neg = pool_with_grad(m_neg, neg_pooling, dims=ALL_DIMS, inplace=True, **kw)  # m_neg becomes g_neg
    neg = neg.index_put((own_b, own_j), torch.tensor(float("-inf"), dtype=neg.dtype, device=neg.device))
    total, d_pos, d_neg = LOSSES.get(loss).with_grad(pos, neg, loss_param, weight=weight, pos_logq=pos_logq,
                                                     neg_logq=neg_logq)
    g_pos = d_pos.view(-1, 1, 1) if g_pos is None else g_pos.mul_(d_pos.view(-1, 1, 1))
    g_neg = d_neg if g_neg is None else g_neg.mul_(d_neg.view(n_b, 1, 1, n_neg)).view(n_b * cq, cd * n_neg)
    d_query = (g_neg @ n_flat).view(n_b, cq, dim)
    d_a = (g_pos.unsqueeze(-1) * b.unsqueeze(1)).sum(2).add_(d_query if r is None else r.unsqueeze(-1) * d_query)
    d_b = (g_pos.unsqueeze(-1) * a.unsqueeze(2)).sum(1)
    d_n = (g_neg.T @ query.reshape(n_b * cq, dim)).view(cd, n_neg, dim).transpose(0, 1)
    grad_s = torch.zeros_like(unit_s).index_add_(0, inv_s, d_a)
    grad_d = grad_s if shared else torch.zeros_like(unit_d)
    grad_d.index_add_(0, inv_d, d_b).index_add_(0, inv_n, d_n)
    if shared:
        return total, normalize_backward(norm_s, unit_s, grad_s), None
    return total, normalize_backward(norm_s, unit_s, grad_s), normalize_backward(norm_d, unit_d, grad_d)


_compiled: dict[str, Callable] = {}
_heap: dict[str, bool] = {}


def fused_fn(compile_step: bool) -> Callable:
    """:func:`fused_grads`, or its ``torch.compile`` version (built once per process) when asked for."""
    if not compile_step or _compiled.get("failed"):
        return fused_grads
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(fused_grads, dynamic=False)
    return _compiled["fn"]


def _mark_varying(tensors) -> None:
    """Row and batch counts change from batch to batch; components and dim stay fixed (and specialised)."""
    for t in tensors:
        if t is not None:
            torch._dynamo.maybe_mark_dynamic(t, 0)


def run_fused(compile_step: bool, *args, **kwargs):
    """Call :func:`fused_fn`; a compilation that fails (no C++ compiler, ...) warns once and runs eagerly.

    The first call keeps glibc from returning freed heap to the OS: a mixture's (batch, C, negatives) score
    and gradient buffers (20 MB at the defaults) were otherwise unmapped after every step and faulted in
    again at the next, 40% of the default mixture's step time.
    """
    if "kept" not in _heap:
        _heap["kept"] = keep_freed_heap()
    fn = fused_fn(compile_step)
    if fn is fused_grads:
        return fn(*args, **kwargs)
    try:
        _mark_varying(args)
        return fn(*args, **kwargs)
    except Exception as e:  # torch.compile raises at the first call when the backend cannot build
        _compiled["failed"] = True
        log.warning("compile=true: torch.compile of the training step failed (%s: %s); training without it",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return fused_grads(*args, **kwargs)
