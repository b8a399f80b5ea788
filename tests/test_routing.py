"""Routing (config ``routing``): responsibilities by hand, and the routed loss against a naive per-edge loop."""
import math

import numpy as np
import pytest
import torch

from mixrec.config import Config
from mixrec.model.functional import routed_queries, routing_weights
from mixrec.train.step import Batch, batch_grads, batch_loss


def test_routing_weights_by_hand():
    m = torch.tensor([[[0.5, 0.1], [0.2, 0.3], [-0.1, 0.0]]])  # one positive, C_s = 3, C_d = 2
    q = [0.5, 0.3, 0.0]  # best match per source component
    z = [math.exp(v / 0.2) for v in q]
    assert routing_weights(m, "soft", 0.2)[0].tolist() == pytest.approx([v / sum(z) for v in z])
    assert routing_weights(m, "hard")[0].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="routing"):
        routing_weights(m, "none")


def test_routed_query_is_the_weighted_sum_and_carries_no_gradient_through_r():
    us = torch.randn(2, 3, 4, requires_grad=True)
    m = torch.randn(2, 3, 1, requires_grad=True)
    q, r = routed_queries(us, m, "soft", 0.1)
    assert q.shape == (2, 1, 4)
    assert torch.allclose(q[:, 0], torch.einsum("bc,bcn->bn", r, us))
    assert not r.requires_grad
    same, none = routed_queries(us, m, "none")
    assert same is us and none is None


def _unit(rows, c, n, seed):
    x = np.random.default_rng(seed).normal(size=(rows, c, n))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_routed_softmax_loss_equals_a_naive_loop(mode):
    """Per edge: r from the positive's per-component cosines; each negative scored by smoothmax over its
    destination components of (sum_c r_c u_c) . v_l; sampled softmax (no log-Q) over positive + negatives."""
    cfg = Config().with_overrides({"components.user": 3, "components.item": 2, "routing": mode, "gamma": 0.3,
                                   "theta": 0.2, "temperature": 0.5, "logq": False, "negatives.batch": 3,
                                   "negatives.uniform": 2})
    u, v = _unit(5, 3, 4, 0), _unit(6, 2, 4, 1)
    tables = {"user": torch.tensor(u, dtype=torch.float64), "item": torch.tensor(v, dtype=torch.float64)}
    src, dst, uni = np.array([0, 1, 3]), np.array([2, 4, 5]), np.array([0, 4])
    w = np.array([1.0, 2.0, 0.5])
    batch = Batch("user", "item", src, dst, w, uni)
    g, th, tau = cfg.gamma, cfg.theta, cfg.temperature

    def smoothmax(x):
        p = np.exp((x - x.max()) / g)
        return float((x * p).sum() / p.sum())

    negs = np.r_[dst[:3], uni]
    total = 0.0
    for b in range(3):
        m = u[src[b]] @ v[dst[b]].T  # (C_s, C_d)
        pos = th * m.mean() + (1 - th) * smoothmax(m.ravel())
        q = m.max(axis=1)
        r = np.exp(q / g) / np.exp(q / g).sum() if mode == "soft" else np.eye(3)[q.argmax()]
        query = (r[:, None] * u[src[b]]).sum(0)
        logits = [pos / tau] + [smoothmax(v[j] @ query) / tau for j in negs if j != dst[b]]
        total += w[b] * -(logits[0] - np.log(np.exp(logits).sum()))
    want = total  # the loss sums w_b * per-edge loss
    loss, _ = batch_loss(batch, tables, cfg)
    assert loss.item() == pytest.approx(want, rel=1e-9)
    assert batch_grads(batch, tables, cfg)[0] == pytest.approx(want, rel=1e-9)


def test_routing_is_validated():
    with pytest.raises(Exception, match="routing"):
        Config().with_overrides({"routing": "argmax"})
