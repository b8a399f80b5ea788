"""The paper's math as pure tensor functions: product, poolings (eq. 1, 2) and the losses (eq. 3, sampled softmax)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from mixrec.registry import LOSSES, POOLINGS

Tensor = torch.Tensor


def normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale every component vector (last axis) to unit length."""
    return F.normalize(x, dim=-1, eps=eps)


def product(us: Tensor, ud: Tensor, normalized: bool = False) -> Tensor:
    """Cosine similarity matrix M of paired nodes: (..., C_s, n) x (..., C_d, n) -> (..., C_s, C_d).

    ``normalized=True`` skips the normalisation when the inputs are already unit vectors.
    """
    if not normalized:
        us, ud = normalize(us), normalize(ud)
    return us @ ud.transpose(-1, -2)


def product_all(us: Tensor, ud: Tensor, normalized: bool = False) -> Tensor:
    """M for every source against every destination: (B, C_s, n) x (N, C_d, n) -> (B, C_s, C_d, N).

    One matrix product; the destination axis is last (contiguous), so pooling over the component
    axes (``dims=ALL_DIMS``) reduces over outer axes and vectorises along N.
    """
    if not normalized:
        us, ud = normalize(us), normalize(ud)
    n, cd, dim = ud.shape
    flat = ud.reshape(n, dim) if cd == 1 else ud.transpose(0, 1).reshape(cd * n, dim)
    return (us @ flat.T).view(us.shape[0], us.shape[1], cd, n)


PAIR_DIMS = (-2, -1)
ALL_DIMS = (1, 2)


def _out_shape(m: Tensor, dims) -> list[int]:
    drop = {d % m.dim() for d in dims}
    return [s for i, s in enumerate(m.shape) if i not in drop]


def pool_max(m: Tensor, dims=PAIR_DIMS, **_) -> Tensor:
    """Largest similarity over all component pairs."""
    return m.amax(dim=dims)


def pool_mean(m: Tensor, dims=PAIR_DIMS, **_) -> Tensor:
    """Average similarity over all component pairs."""
    return m.mean(dim=dims)


class _SmoothMax(torch.autograd.Function):
    """Fused eq. 1 with the closed-form gradient dS/dM = p * (1 + (M - S) / gamma), p = softmax(M / gamma)."""

    @staticmethod
    def forward(ctx, m: Tensor, gamma: float, dims: tuple) -> Tensor:
        p = (m - m.amax(dim=dims, keepdim=True)).div_(gamma).exp_()
        p.div_(p.sum(dim=dims, keepdim=True))
        s = (m * p).sum(dim=dims, keepdim=True)
        ctx.save_for_backward(m, p, s)
        ctx.gamma = gamma
        return s.reshape(_out_shape(m, dims))

    @staticmethod
    def backward(ctx, grad: Tensor):
        m, p, s = ctx.saved_tensors
        g = (m - s).div_(ctx.gamma).add_(1.0).mul_(p).mul_(grad.reshape(s.shape))
        return g, None, None


def smoothmax(m: Tensor, gamma: float = 0.1, dims=PAIR_DIMS, **_) -> Tensor:
    """Eq. 1: sum_{c,l} M_cl softmax(M / gamma)_cl; tends to the max as gamma -> 0."""
    return _SmoothMax.apply(m, gamma, tuple(dims))


def regsmoothmax(m: Tensor, gamma: float = 0.1, theta: float = 0.1, theta_form: str = "mean", dims=PAIR_DIMS,
                 **_) -> Tensor:
    """Eq. 2: theta * (mean or sum of M) + (1 - theta) * smoothmax(M; gamma).

    ``theta_form="sum"`` is eq. 2 as printed (theta weights the *sum* over the C_s x C_d pairs,
    so the score can exceed 1); ``"mean"`` weights the average, which is what the paper's text
    describes ("towards the average cosine similarity") and keeps the score in [-1, 1].
    """
    reg = m.mean(dim=dims) if theta_form == "mean" else m.sum(dim=dims)
    return theta * reg + (1.0 - theta) * smoothmax(m, gamma=gamma, dims=dims)


@dataclass(frozen=True)
class PoolingSpec:
    """A registered pooling: ``fn(M, gamma=, theta=, theta_form=, dims=) -> scores`` and, optionally, its
    closed-form value and local derivative ``with_grad(flat, axis, gamma, theta, theta_form) -> (pooled, d/dflat)``
    over the pooled axes flattened into ``axis`` (the training hot path; without it training uses autograd).
    ``identity_on_one``: with one component pair the pooling is the identity (skipped)."""

    fn: Callable[..., Tensor]
    with_grad: Optional[Callable[..., tuple[Tensor, Tensor]]] = None
    identity_on_one: bool = False


def register_pooling(name: str, fn: Callable[..., Tensor], with_grad: Optional[Callable] = None,
                     replace: bool = True) -> PoolingSpec:
    """Add (or replace) a pooling ``fn(M, gamma=, theta=, theta_form=, dims=) -> scores`` under ``name``.

    Without ``with_grad`` the training step differentiates it with autograd.
    """
    return POOLINGS.register(name, PoolingSpec(fn, with_grad), replace=replace)


def pool(m: Tensor, name: str, gamma: float = 0.1, theta: float = 0.1, theta_form: str = "mean",
         dims=PAIR_DIMS) -> Tensor:
    """Pool the component axes ``dims`` (C_s, C_d) of ``m`` with the named pooling."""
    if name not in POOLINGS:
        raise ValueError(POOLINGS.unknown(name))
    spec = POOLINGS.get(name)
    if spec.identity_on_one and all(m.shape[d] == 1 for d in dims):
        return m.reshape(_out_shape(m, dims))  # one component pair: the pooling is the identity
    return spec.fn(m, gamma=gamma, theta=theta, theta_form=theta_form, dims=dims)


def margin_loss(pos: Tensor, neg: Tensor, margin: float, weight: Tensor | None = None,
                mask: Tensor | None = None, pos_logq: None = None, neg_logq: None = None) -> Tensor:
    """Eq. 3 summed as in eq. 4: sum_b w_b sum_j max(neg_bj + margin - pos_b, 0).

    ``pos`` (B,), ``neg`` (B, N); ``mask`` (B, N) drops negatives (e.g. a positive's own item);
    ``weight`` (B,) is omega(e, e') per positive. The margin loss applies no log-Q (``*_logq`` must be None).
    """
    viol = torch.relu(neg + margin - pos.unsqueeze(-1))
    if mask is not None:
        viol = viol * mask
    per_pos = viol.sum(-1)
    if weight is not None:
        per_pos = per_pos * weight
    return per_pos.sum()


def sampled_softmax_loss(pos: Tensor, neg: Tensor, temperature: float, weight: Tensor | None = None,
                         mask: Tensor | None = None, pos_logq: Tensor | None = None,
                         neg_logq: Tensor | None = None) -> Tensor:
    """Sampled softmax with log-Q correction: sum_b w_b * -log softmax([pos_b, neg_b.] / T - log Q)[0].

    ``pos`` (B,) and ``neg`` (B, N) are pooled scores; ``pos_logq`` (B,) and ``neg_logq`` (N,) or (B, N) the
    log of each candidate's expected count among the sampled negatives (Yi et al. 2019; mixed negative
    sampling); ``mask`` (B, N) drops negatives (a positive's own item, accidental hits).
    """
    lp = pos / temperature
    ln = neg / temperature
    if pos_logq is not None:
        lp = lp - pos_logq
    if neg_logq is not None:
        ln = ln - neg_logq
    if mask is not None:
        ln = ln.masked_fill(~mask.bool(), float("-inf"))
    per_pos = torch.logsumexp(torch.cat([lp.unsqueeze(-1), ln], dim=-1), dim=-1) - lp
    if weight is not None:
        per_pos = per_pos * weight
    return per_pos.sum()


# --------------------------------------------------------------------- closed-form gradients (training hot path)
def pool_with_grad(m: Tensor, name: str, gamma: float = 0.1, theta: float = 0.1, theta_form: str = "mean",
                   dims=PAIR_DIMS, inplace: bool = False) -> tuple[Tensor, Tensor | None] | None:
    """A built-in pooling and its local derivative d pooled / d m (same shape as ``m``), without autograd.

    Every pooled value depends only on its own slice of ``m``, so the gradient of any loss with respect to
    ``m`` is this derivative times the upstream gradient broadcast over ``dims`` (which must be adjacent).
    The derivative is None where the pooling is the identity (one component pair).
    Returns None for a registered (non built-in) pooling, whose gradient only autograd knows.
    ``inplace=True`` may write the (smoothmax, regsmoothmax) derivative into ``m``'s memory: the training
    step's negative scores are its largest tensor, and a second buffer of that size costs page faults.
    """
    spec = POOLINGS.get(name) if name in POOLINGS else None
    if spec is None or spec.with_grad is None:
        return None
    lo, hi = sorted(d % m.dim() for d in dims)
    if hi - lo != len(dims) - 1:
        raise ValueError(f"pool_with_grad pools adjacent axes only, got {dims}")
    flat = m.flatten(lo, hi)  # the pooled axes as one axis ``lo``
    if flat.shape[lo] == 1:
        return flat.squeeze(lo), None
    extra = {"inplace": True} if inplace and spec.with_grad in _IN_PLACE else {}
    pooled, grad = spec.with_grad(flat, lo, gamma=gamma, theta=theta, theta_form=theta_form, **extra)
    return pooled, grad.view_as(m)


def _mean_with_grad(flat: Tensor, lo: int, **_) -> tuple[Tensor, Tensor]:
    return flat.mean(lo), torch.full_like(flat, 1.0 / flat.shape[lo])


def _max_with_grad(flat: Tensor, lo: int, **_) -> tuple[Tensor, Tensor]:
    top = flat.amax(lo, keepdim=True)
    hit = (flat == top).to(flat.dtype)
    return top.squeeze(lo), hit.div_(hit.sum(lo, keepdim=True))


def _smoothmax_with_grad(flat: Tensor, lo: int, gamma: float = 0.1, inplace: bool = False,
                         **_) -> tuple[Tensor, Tensor]:
    """With t = m / gamma and p = softmax(t): pooled s = gamma * sum p t, derivative p (1 + t - s / gamma).

    One fused softmax pass and one buffer of m's size besides ``p`` (the reductions over the short component
    axis leave (..., 1, ...) tensors); ``inplace`` scales ``flat`` in place and writes the derivative there.
    """
    t = flat.mul_(1.0 / gamma) if inplace else flat * (1.0 / gamma)
    p = torch.softmax(t, lo)
    u = _dot_along(t, p, lo)  # s / gamma, keepdim
    grad = t.sub_(u.sub(1.0)).mul_(p)
    return u.squeeze(lo).mul_(gamma), grad


def _dot_along(a: Tensor, b: Tensor, axis: int) -> Tensor:
    """sum(a * b, axis, keepdim=True) without a temporary of ``a``'s size when the axis is short."""
    if a.shape[axis] > 16:
        return (a * b).sum(axis, keepdim=True)
    out = a.select(axis, 0) * b.select(axis, 0)
    for i in range(1, a.shape[axis]):
        out.addcmul_(a.select(axis, i), b.select(axis, i))
    return out.unsqueeze(axis)


def _regsmoothmax_with_grad(flat: Tensor, lo: int, gamma: float = 0.1, theta: float = 0.1, theta_form: str = "mean",
                            inplace: bool = False, **_) -> tuple[Tensor, Tensor]:
    reg, dreg = (flat.mean(lo), 1.0 / flat.shape[lo]) if theta_form == "mean" else (flat.sum(lo), 1.0)
    s, grad = _smoothmax_with_grad(flat, lo, gamma, inplace)  # after the mean: ``flat`` may be overwritten
    return theta * reg + (1.0 - theta) * s, grad.mul_(1.0 - theta).add_(theta * dreg)


for _name, _fn, _grad in (("max", pool_max, _max_with_grad), ("mean", pool_mean, _mean_with_grad),
                          ("smoothmax", smoothmax, _smoothmax_with_grad),
                          ("regsmoothmax", regsmoothmax, _regsmoothmax_with_grad)):
    POOLINGS.register(_name, PoolingSpec(_fn, _grad, identity_on_one=True))
_IN_PLACE = (_smoothmax_with_grad, _regsmoothmax_with_grad)


def has_closed_form(name: str) -> bool:
    """True when the pooling ``name`` declares a closed-form gradient (every built-in one does)."""
    return name in POOLINGS and POOLINGS.get(name).with_grad is not None


def margin_loss_with_grad(pos: Tensor, neg: Tensor, margin: float, weight: Tensor | None = None,
                          mask: Tensor | None = None, pos_logq: None = None, neg_logq: None = None
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`margin_loss` and its gradients ``(loss, dloss/dpos (B,), dloss/dneg (B, N))`` in one pass.

    A negative score of -inf contributes nothing, like a zero in ``mask`` (cheaper than a dense mask).
    """
    viol = (neg - (pos - margin).unsqueeze(-1)).relu_()
    if mask is not None:
        viol.mul_(mask)
    coef = viol.sign()
    per_pos = viol.sum(-1)
    if weight is not None:
        per_pos = per_pos * weight
        coef.mul_(weight.unsqueeze(-1))
    return per_pos.sum(), -coef.sum(-1), coef


def sampled_softmax_loss_with_grad(pos: Tensor, neg: Tensor, temperature: float, weight: Tensor | None = None,
                                   pos_logq: Tensor | None = None, neg_logq: Tensor | None = None
                                   ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`sampled_softmax_loss` and ``(loss, dloss/dpos (B,), dloss/dneg (B, N))`` in one pass.

    A negative score of -inf drops that candidate (its probability and gradient are 0), as a mask would.
    """
    inv_t = 1.0 / temperature
    z_pos, z_neg = pos * inv_t, neg * inv_t
    if pos_logq is not None:
        z_pos = z_pos - pos_logq
    if neg_logq is not None:
        z_neg = z_neg - neg_logq
    top = torch.maximum(z_pos, z_neg.amax(-1))  # shift by the row max (the positive is finite)
    e_pos, e_neg = torch.exp(z_pos - top), torch.exp(z_neg - top.unsqueeze(-1))
    total = e_pos + e_neg.sum(-1)
    per_pos = torch.log(total) - (z_pos - top)  # logsumexp - the positive's logit
    d_pos, d_neg = e_pos / total - 1.0, e_neg / total.unsqueeze(-1)  # softmax - one-hot
    if weight is not None:
        per_pos = per_pos * weight
        d_pos, d_neg = d_pos * weight, d_neg * weight.unsqueeze(-1)
    return per_pos.sum(), d_pos * inv_t, d_neg * inv_t


@dataclass(frozen=True)
class LossSpec:
    """A registered loss over pooled scores: ``loss(pos (B,), neg (B, N), param, weight=, mask=, pos_logq=,
    neg_logq=) -> scalar`` (autograd) and its closed-form twin ``with_grad(pos, neg, param, weight=, pos_logq=,
    neg_logq=) -> (loss, dloss/dpos, dloss/dneg)``, where a -inf negative is dropped (None: training uses
    autograd). ``param`` names the Config field passed as ``param`` (its one knob); ``log_q``: the loss
    subtracts log Q when ``Config.logq`` is on; ``space``: its knobs' tuning ranges (``mixrec.tune`` format)."""

    loss: Callable[..., Tensor]
    with_grad: Optional[Callable[..., tuple[Tensor, Tensor, Tensor]]]
    param: str
    log_q: bool = False
    space: dict[str, tuple] = field(default_factory=dict)


LOSSES.register("softmax", LossSpec(sampled_softmax_loss, sampled_softmax_loss_with_grad, "temperature", log_q=True,
                                    space={"temperature": ("log", 0.03, 0.5)}))
LOSSES.register("margin", LossSpec(margin_loss, margin_loss_with_grad, "margin",
                                   space={"margin": ("float", 0.1, 1.0)}))


ROUTINGS = ("none", "soft", "hard")


def routing_weights(m_pos: Tensor, mode: str, gamma: float = 0.1) -> Tensor:
    """Responsibilities r (B, C_s) of each source component for its positive, from M (B, C_s, C_d).

    q_c = max_l M_cl (the component's best match in the positive); 'soft': r = softmax(q / gamma), the
    weights smoothmax (eq. 1) gives the components; 'hard': one-hot of argmax_c q_c (first on ties).
    Returned without gradient: the routed query sum_c r_c u_c scores the negatives with r held constant.
    """
    q = m_pos.detach().amax(dim=-1)
    if mode == "soft":
        return torch.softmax(q / gamma, dim=-1)
    if mode == "hard":
        return F.one_hot(q.argmax(dim=-1), q.shape[-1]).to(q.dtype)
    raise ValueError(f"routing must be one of {ROUTINGS[1:]} here, not {mode!r}")


def routed_queries(us: Tensor, m_pos: Tensor, mode: str, gamma: float = 0.1) -> tuple[Tensor, Tensor | None]:
    """The source vectors that score negatives: ``us`` (B, C_s, n) itself for 'none', else the routed query
    (B, 1, n) = sum_c r_c u_c; also returns r (None for 'none')."""
    if mode == "none":
        return us, None
    r = routing_weights(m_pos, mode, gamma)
    return (r.unsqueeze(-1) * us).sum(1, keepdim=True), r


def equal_pairs(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """All ``(i, j)`` with ``a[i] == b[j]`` as two index vectors, without a dense len(a) x len(b) comparison."""
    sb, order = torch.sort(b)
    lo = torch.searchsorted(sb, a)
    cnt = torch.searchsorted(sb, a, right=True) - lo
    i = torch.repeat_interleave(torch.arange(len(a), device=a.device), cnt)
    start = torch.cumsum(cnt, 0) - cnt
    k = torch.arange(len(i), device=a.device) - start[i] + lo[i]
    return i, order[k]


def normalize_backward(x_norm: Tensor, unit: Tensor, grad_unit: Tensor, eps: float = 1e-12) -> Tensor:
    """Gradient through :func:`normalize` given ``|x|`` (keepdim) and the unit vectors: (g - u (u . g)) / |x|.

    Rows shorter than ``eps`` were divided by ``eps``, a constant: their gradient is g / eps.
    """
    dot = (unit * grad_unit).sum(-1, keepdim=True).mul_(x_norm > eps)
    return (grad_unit - unit * dot).div_(x_norm.clamp_min(eps))
