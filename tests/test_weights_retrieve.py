"""Mixture weights (eq. 5), the round-robin merge (section 3.5) and the FAISS index against naive references."""
import math

import numpy as np
import pytest
import torch

from mixrec.config import IndexConfig
from mixrec.index import ComponentIndex
from mixrec.model.functional import normalize, product
from mixrec.retrieve import round_robin_merge
from mixrec.weights import mixture_weights


def naive_weights(us, ud, src, dst, gamma, form):
    n_s, cs = us.shape[:2]
    n_d, cd = ud.shape[:2]
    ws, wd = np.zeros((n_s, cs)), np.zeros((n_d, cd))
    for s, d in zip(src, dst):
        m = product(us[s], ud[d]).double().numpy()
        e = np.exp(m / gamma)
        for c in range(cs):
            ws[s, c] += e[c].sum() / (e.sum() if form == "responsibility" else 1)
        for lc in range(cd):
            wd[d, lc] += e[:, lc].sum() / (e.sum() if form == "responsibility" else 1)
    for w in (ws, wd):
        empty = w.sum(1) == 0
        w[empty] = 1.0 / w.shape[1]
        w /= w.sum(1, keepdims=True)
    return ws, wd


@pytest.mark.parametrize("form", ["sum", "responsibility"])
@pytest.mark.parametrize("gamma", [0.05, 0.5])
def test_mixture_weights_match_naive_eq5(form, gamma):
    g = torch.Generator().manual_seed(0)
    us, ud = torch.randn(6, 3, 4, generator=g), torch.randn(5, 2, 4, generator=g)
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 5, 30), rng.integers(0, 5, 30)  # source 5 never has an edge
    ws, wd = mixture_weights(us, ud, src, dst, gamma, form, chunk=7)
    rs, rd = naive_weights(us, ud, src, dst, gamma, form)
    np.testing.assert_allclose(ws, rs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(wd, rd, rtol=1e-5, atol=1e-6)
    assert np.allclose(ws[5], 1 / 3)  # no edges: uniform
    assert np.allclose(ws.sum(1), 1) and np.allclose(wd.sum(1), 1)


def test_mixture_weights_favour_the_component_that_explains_the_edges():
    us = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one user, two components
    ud = torch.tensor([[[1.0, 0.1]], [[0.9, 0.2]], [[0.0, 1.0]]])
    ws, _ = mixture_weights(us, ud, np.array([0, 0, 0]), np.array([0, 1, 2]), 0.1)
    assert ws[0, 0] > 0.6 > ws[0, 1]


def test_mixture_weights_stay_finite_at_tiny_temperature():
    g = torch.Generator().manual_seed(1)
    us, ud = torch.randn(3, 2, 4, generator=g), torch.randn(3, 1, 4, generator=g)
    ws, wd = mixture_weights(us, ud, np.array([0, 1, 2]), np.array([0, 1, 2]), 1e-4)
    assert np.isfinite(ws).all() and np.isfinite(wd).all()


def naive_round_robin(sims, ids, w_src, w_dst, k, exclude=frozenset()):
    """Section 3.5 literally, one query row at a time."""
    cs = sims.shape[0]
    cd = w_dst.shape[1]
    best = {}
    for c in range(cs):
        alpha = {}
        for sim, fid in zip(sims[c], ids[c]):
            if fid < 0 or fid // cd in exclude:
                continue
            d, lc = divmod(int(fid), cd)
            alpha[d] = alpha.get(d, 0.0) + w_dst[d, lc] * sim
        ranked = sorted(alpha, key=lambda d: (-alpha[d], d))
        for r, d in enumerate(ranked, start=1):
            score = w_src[c] / r
            key = (-score, -alpha[d], d)
            if d not in best or key < best[d][0]:
                best[d] = (key, c)
    order = sorted(best, key=lambda d: best[d][0])[:k]
    return order, [-best[d][0][0] for d in order], [best[d][1] for d in order]


@pytest.mark.parametrize("seed", range(5))
def test_round_robin_merge_matches_naive(seed):
    rng = np.random.default_rng(seed)
    b, cs, cd, n, m, k = 4, 3, 2, 12, 8, 5
    ids = np.stack([np.stack([rng.choice(n * cd, m, replace=False) for _ in range(cs)]) for _ in range(b)])
    ids[0, 0, -2:] = -1  # fewer than m found
    sims = rng.uniform(-1, 1, size=ids.shape).astype(np.float32)
    w_src = rng.dirichlet(np.ones(cs), b).astype(np.float32)
    w_dst = rng.dirichlet(np.ones(cd), n).astype(np.float32)
    excl_rows, excl_items = np.array([1, 1, 2]), np.array([3, 7, 0])
    out = round_robin_merge(sims, ids, w_src, w_dst, k, (excl_rows, excl_items))
    for row in range(b):
        ex = set(excl_items[excl_rows == row].tolist())
        items, scores, comps = naive_round_robin(sims[row], ids[row], w_src[row], w_dst, k, ex)
        got = out.items[row][out.items[row] >= 0].tolist()
        assert got == items
        np.testing.assert_allclose(out.scores[row, :len(items)], scores, rtol=1e-6)
        assert out.components[row, :len(items)].tolist() == comps


def test_round_robin_hand_example():
    # Two source components with weights 0.7 / 0.3, one destination component each (C_d = 1).
    ids = np.array([[[0, 1, 2], [3, 2, 4]]])
    sims = np.array([[[0.9, 0.8, 0.1], [0.95, 0.5, 0.4]]], dtype=np.float32)
    out = round_robin_merge(sims, ids, np.array([[0.7, 0.3]]), np.ones((5, 1)), k=4)
    # scores: item0 0.7/1, item1 0.7/2, item3 0.3/1, item2 max(0.7/3, 0.3/2) = 0.233
    assert out.items[0].tolist() == [0, 1, 3, 2]
    np.testing.assert_allclose(out.scores[0], [0.7, 0.35, 0.3, 0.7 / 3], rtol=1e-6)
    assert out.components[0].tolist() == [0, 0, 1, 0]


def test_round_robin_pads_when_too_few():
    out = round_robin_merge(np.array([[[0.5]]], np.float32), np.array([[[2]]]), np.ones((1, 1)), np.ones((3, 1)), 3)
    assert out.items[0].tolist() == [2, -1, -1]


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 16))
    v = centers[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 16))
    v = normalize(torch.tensor(v, dtype=torch.float32)).numpy().reshape(1500, 2, 16)
    q = normalize(torch.tensor(rng.normal(size=(30, 16)), dtype=torch.float32)).numpy()
    return v, q


def test_flat_index_matches_numpy_oracle(clustered):
    v, q = clustered
    idx = ComponentIndex.build(v, IndexConfig(kind="flat"))
    sims, ids = idx.search(q, 10)
    oracle = np.argsort(-(q @ v.reshape(-1, 16).T), axis=1)[:, :10]
    assert (ids == oracle).mean() > 0.99
    np.testing.assert_allclose(sims, np.take_along_axis(q @ v.reshape(-1, 16).T, ids, 1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_have_high_recall_and_round_trip(kind, clustered, tmp_path):
    v, q = clustered
    idx = ComponentIndex.build(v, IndexConfig(kind=kind, nprobe=32))
    _, ids = idx.search(q, 50)
    oracle = np.argsort(-(q @ v.reshape(-1, 16).T), axis=1)[:, :50]
    recall = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(ids, oracle)])
    assert recall > 0.9
    idx.save(tmp_path / "i.faiss")
    back = ComponentIndex.load(tmp_path / "i.faiss")
    assert back.config == idx.config and back.components == 2 and back.n_items == 1500
    np.testing.assert_array_equal(back.search(q, 50)[1], ids)


def test_hand_cosine_sanity():
    assert math.isclose(float(product(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))), 1 / math.sqrt(2),
                        rel_tol=1e-6)

