"""The sampled-softmax loss with log-Q correction and two-sided negatives, against naive loops."""
import math

import numpy as np
import pytest
import torch

from mixrec.config import Config
from mixrec.evaluate.exact import sample_recall
from mixrec.model.functional import pool, product, sampled_softmax_loss
from mixrec.train import train
from mixrec.train.sampler import edge_shares, make_batches, training_edges
from mixrec.train.step import Batch, batch_loss, batch_grads


def test_sampled_softmax_loss_matches_naive_loop():
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.rand(3, generator=g, dtype=torch.float64), torch.rand(3, 4, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    pq = torch.tensor([-1.0, 0.2, 0.0], dtype=torch.float64)
    nq = torch.tensor([0.3, -2.0, 1.0, 0.0], dtype=torch.float64)
    got = sampled_softmax_loss(pos, neg, 0.2, w, mask, pq, nq)
    want = 0.0
    for b in range(3):
        lp = pos[b].item() / 0.2 - pq[b].item()
        terms = [math.exp(lp)] + [math.exp(neg[b, j].item() / 0.2 - nq[j].item()) for j in range(4) if mask[b, j]]
        want += w[b].item() * (math.log(sum(terms)) - lp)
    assert got.item() == pytest.approx(want, rel=1e-10)
    # no correction and no mask: plain cross-entropy with the positive as class 0
    ce = torch.nn.functional.cross_entropy(torch.cat([pos[:, None], neg], 1) / 0.5, torch.zeros(3, dtype=torch.long),
                                           reduction="sum")
    assert sampled_softmax_loss(pos, neg, 0.5).item() == pytest.approx(ce.item())


def _tables(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"user": torch.randn(5, 3, 4, generator=g, dtype=torch.float64),
            "item": torch.randn(6, 2, 4, generator=g, dtype=torch.float64)}


def _cfg(**kw) -> Config:
    return Config().with_overrides({"loss": "margin", "margin": 0.2, "gamma": 0.3, "theta": 0.25, "negatives.batch": 2,
                                    "negatives.uniform": 2, "components.user": 3, "components.item": 2, **kw})


def _score(u, i, name):
    return pool(product(u, i), name, gamma=0.3, theta=0.25)


def test_softmax_batch_loss_with_logq_matches_naive_loop():
    cfg = _cfg(loss="softmax", temperature=0.2)
    tables = _tables()
    p_dst = np.array([0.1, 0.0, 0.3, 0.2, 0.25, 0.15], np.float32)
    b = Batch("user", "item", np.array([0, 1, 1]), np.array([2, 3, 4]), np.array([1.0, 2.0, 0.5]),
              np.array([2, 5]), dst_prob=p_dst)
    loss, groups = batch_loss(b, tables, cfg)
    loss.backward()
    ref = {k: v.clone().requires_grad_(True) for k, v in tables.items()}
    negs = [2, 3, 2, 5]  # the first 2 positives' destinations, then the uniform ones

    def log_q(d):  # expected count among 2 in-batch (by popularity) and 2 uniform negatives
        return math.log(2 * float(p_dst[d]) + 2 / 6)

    want = 0.0
    for i in range(3):
        u = ref["user"][b.src[i]]
        lp = _score(u, ref["item"][b.dst[i]], "regsmoothmax") / 0.2 - log_q(b.dst[i])
        logits = [lp] + [_score(u, ref["item"][d], "smoothmax") / 0.2 - log_q(d) for d in negs if d != b.dst[i]]
        want = want + b.weight[i] * (torch.logsumexp(torch.stack(logits), 0) - lp)
    want.backward()
    assert loss.item() == pytest.approx(want.item())
    for t, rows, leaf in groups:
        assert torch.allclose(leaf.grad, ref[t].grad[rows])
    closed_loss, closed = batch_grads(b, tables, cfg)  # the closed form gives the same loss and gradients
    assert closed_loss == pytest.approx(loss.item())
    for (_, _, g), (_, _, leaf) in zip(closed, groups):
        assert torch.allclose(g, leaf.grad)


def test_two_sided_margin_loss_matches_naive_loop():
    cfg = _cfg(**{"negatives.two_sided": True})
    tables = _tables(3)
    b = Batch("user", "item", np.array([0, 1, 4]), np.array([2, 3, 4]), np.array([1.0, 2.0, 0.5]),
              np.array([2, 5]), uniform_src=np.array([3, 1]))
    loss, groups = batch_loss(b, tables, cfg)
    loss.backward()
    ref = {k: v.clone().requires_grad_(True) for k, v in tables.items()}
    want = 0.0
    for i in range(3):
        u, it = ref["user"][b.src[i]], ref["item"][b.dst[i]]
        pos = _score(u, it, "regsmoothmax")
        for d in [2, 3, 2, 5]:  # destination side, as in the paper
            if d != b.dst[i]:
                want = want + b.weight[i] * torch.relu(_score(u, ref["item"][d], "smoothmax") + 0.2 - pos)
        for s in [0, 1, 3, 1]:  # source side: the first 2 positives' sources, then the uniform ones
            if s != b.src[i]:
                want = want + b.weight[i] * torch.relu(_score(ref["user"][s], it, "smoothmax") + 0.2 - pos)
    want.backward()
    assert loss.item() == pytest.approx(want.item())
    for t, rows, leaf in groups:
        assert torch.allclose(leaf.grad, ref[t].grad[rows])
    assert batch_grads(b, tables, cfg) is None  # two-sided negatives go through autograd
    one_sided, _ = batch_loss(b, tables, _cfg())
    assert one_sided.item() < loss.item()


def test_edge_shares_and_batches_carry_what_the_loss_needs(planted):
    ds, _ = planted
    assert edge_shares(np.array([0, 2, 2, 2]), 4).tolist() == [0.25, 0.0, 0.75, 0.0]
    cfg = Config().with_overrides({"loss": "softmax", "negatives.two_sided": True, "negatives.uniform": 7})
    edges = training_edges(ds, cfg)
    b = next(make_batches(edges, cfg, 0))
    code = [r.source_type for r in edges.relations].index(b.source_type)
    assert len(b.uniform_src) == 7 and b.uniform_src.max() < edges.num_sources[code]
    assert b.dst_prob.sum() == pytest.approx(1.0, abs=1e-5) and len(b.dst_prob) == edges.num_targets[code]
    margin = Config().with_overrides({"loss": "margin"})
    plain = next(make_batches(training_edges(ds, margin), margin, 0))
    assert plain.uniform_src is None and plain.dst_prob is None


@pytest.mark.parametrize("over", [{"loss": "softmax"}, {"loss": "softmax", "logq": False},
                                  {"negatives.two_sided": True}])
def test_alternative_objectives_learn_the_planted_structure(planted, over):
    ds, _ = planted
    base = {"dim": 8, "batch_size": 256, "negatives.batch": 32, "negatives.uniform": 32, "lr": 0.5,
            "margin": 0.3, **over}
    r0 = sample_recall(train(ds, Config().with_overrides({**base, "epochs": 0}), progress=False),
                       ds, "test", 20, 10_000, 0)
    model = train(ds, Config().with_overrides({**base, "epochs": 4}), progress=False)
    r1 = sample_recall(model, ds, "test", 20, 10_000, 0)
    assert r1 > 1.6 * r0 and r1 > 0.15  # untrained 0.10; margin 0.26, softmax 0.22, without log-Q 0.19
    losses = [h["loss"] for h in model.info["history"]]
    assert losses[-1] < losses[0]
