"""Component levers: interest-cluster initialisation, per-node component counts, pruning; each against a naive loop."""
import numpy as np
import pytest
import torch

from mixrec.config import Config
from mixrec.evaluate.exact import exact_topk
from mixrec.model import MixtureModel
from mixrec.model.components import (components_per_node, first_distinct, masked_pool, masked_weights, prune_mask,
                                     segment_kmeans, tie_slots)
from mixrec.model.functional import ALL_DIMS, normalize, pool, product_all
from mixrec.train import Trainer, train
from mixrec.train.step import Batch, train_step


def _segments(seed=0, n_seg=7, dim=5):
    g = torch.Generator().manual_seed(seed)
    sizes = [0, 1, 2, 3, 9, 14, 20][:n_seg]
    seg = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    x = normalize(torch.randn(len(seg), dim, generator=g, dtype=torch.float64))
    return x, seg[torch.randperm(len(seg), generator=g)], n_seg


def naive_kmeans(x, members, init, k, iters):
    """Spherical Lloyd for one segment, loops only."""
    cent = [x[i].clone() for i in init[:k]]
    for _ in range(iters):
        groups = [[] for _ in cent]
        for i in members:
            groups[max(range(len(cent)), key=lambda c: float(x[i] @ cent[c]))].append(i)
        cent = [normalize(sum(x[i] for i in g)) if g else c for g, c in zip(groups, cent)]
    return cent


def test_first_distinct_picks_distinct_members_of_each_segment():
    x, seg, n = _segments()
    pick, size = first_distinct(seg, n, 4, torch.Generator().manual_seed(1))
    for u in range(n):
        mine = set(torch.nonzero(seg == u).squeeze(1).tolist())
        got = [i for i in pick[u].tolist() if i >= 0]
        assert len(got) == len(set(got)) == min(4, len(mine)) == min(4, int(size[u]))
        assert set(got) <= mine


def test_segment_kmeans_matches_a_loop_per_user():
    x, seg, n = _segments()
    k, iters = 3, 6
    got = segment_kmeans(x, seg, n, k, iters=iters, seed=3, jitter=0.0)
    pick, _ = first_distinct(seg, n, k, torch.Generator().manual_seed(3))  # the same random start
    for u in range(n):
        members = torch.nonzero(seg == u).squeeze(1).tolist()
        if not members:
            assert got[u].abs().sum() == 0  # no edges: zeros
            continue
        init = [i for i in pick[u].tolist() if i >= 0]
        want = naive_kmeans(x, members, init, k, iters)
        for j in range(k):  # slots beyond the distinct members are copies of slot j mod m
            assert torch.allclose(got[u, j], want[j % len(want)], atol=1e-9)


def test_segment_kmeans_jitters_copies_and_takes_per_segment_k():
    x, seg, n = _segments()
    got = segment_kmeans(x, seg, n, 4, iters=3, seed=0, jitter=0.02)
    u = 2  # two members: slots 2, 3 are jittered copies of slots 0, 1
    cos = (got[u] @ got[u].T)
    assert 0.99 < cos[0, 2] < 1.0 - 1e-9 and 0.99 < cos[1, 3] < 1.0 - 1e-9
    ks = torch.tensor([1, 1, 1, 2, 1, 3, 2])
    got = segment_kmeans(x, seg, n, ks, iters=4, seed=0, jitter=0.0)
    pick, _ = first_distinct(seg, n, 3, torch.Generator().manual_seed(0))
    for u in (4, 5, 6):
        members = torch.nonzero(seg == u).squeeze(1).tolist()
        want = naive_kmeans(x, members, pick[u].tolist(), int(ks[u]), 4)
        for j in range(3):
            assert torch.allclose(got[u, j], want[j % len(want)], atol=1e-9)


def test_components_per_node_rule():
    deg = np.array([0, 3, 8, 15, 16, 23, 24, 31, 32, 100])
    got = components_per_node(deg, 4, 8)
    want = []
    for n in deg:  # largest divisor of 4 not above min(4, max(1, n // 8))
        raw = min(4, max(1, n // 8))
        want.append(max(d for d in (1, 2, 4) if d <= raw))
    assert got.tolist() == want == [1, 1, 1, 1, 2, 2, 2, 2, 4, 4]
    assert components_per_node(deg, 6, 8).tolist() == [1, 1, 1, 1, 2, 2, 3, 3, 3, 6]


@pytest.mark.parametrize("name", ["max", "mean", "smoothmax", "regsmoothmax"])
def test_tied_slots_score_as_the_active_components(name):
    g = torch.Generator().manual_seed(0)
    us = normalize(torch.randn(3, 4, 6, generator=g))
    counts = torch.tensor([1, 2, 4])
    tied = tie_slots(us, counts)
    items = normalize(torch.randn(11, 1, 6, generator=g))
    got = pool(product_all(tied, items), name, gamma=0.1, theta=0.3, dims=ALL_DIMS)
    for u, c in enumerate(counts.tolist()):
        want = pool(product_all(us[u:u + 1, :c], items), name, gamma=0.1, theta=0.3, dims=ALL_DIMS)
        assert torch.allclose(got[u], want[0], atol=1e-6)


def test_tied_slots_get_identical_updates(planted):
    ds, _ = planted
    cfg = Config().with_overrides({"dim": 8, "components.user": 4, "negatives.batch": 16, "negatives.uniform": 16})
    g = torch.Generator().manual_seed(0)
    tables = {"user": tie_slots(torch.randn(ds.num("user"), 4, 8, generator=g) * 0.1,
                                torch.full((ds.num("user"),), 2)),
              "item": torch.randn(ds.num("item"), 1, 8, generator=g) * 0.1}
    states = {t: torch.zeros(len(v)) for t, v in tables.items()}
    tr = ds.split("train")
    rng = np.random.default_rng(0)
    for _ in range(5):
        sel = rng.choice(len(tr.src), 64, replace=False)
        b = Batch("user", "item", tr.src[sel], tr.dst[sel], np.ones(64, np.float32), rng.integers(0, ds.num("item"), 16))
        train_step(b, tables, states, cfg)
    assert torch.allclose(tables["user"][:, 2:], tables["user"][:, :2], atol=1e-6)


def naive_prune(vec, w, min_w, max_cos):
    n, c = w.shape
    keep = np.zeros((n, c), bool)
    unit = vec / np.linalg.norm(vec, axis=-1, keepdims=True)
    for u in range(n):
        top = int(np.argmax(w[u]))
        for j in range(c):
            ok = w[u, j] >= min_w or j == top
            for i in range(j):
                if keep[u, i] and unit[u, i] @ unit[u, j] > max_cos:
                    ok = False
            keep[u, j] = ok
    return keep


def test_prune_mask_and_weights_match_loops():
    g = torch.Generator().manual_seed(1)
    vec = torch.randn(40, 4, 5, generator=g)
    vec[::3, 2] = vec[::3, 0] * 2.0  # duplicates
    vec[1::5, 3] = vec[1::5, 1] + 1e-4
    w = torch.softmax(torch.randn(40, 4, generator=g) * 2, 1)
    keep = prune_mask(vec, w, 0.1, 0.99)
    assert (keep.numpy() == naive_prune(vec.numpy(), w.numpy(), 0.1, 0.99)).all()
    got = masked_weights(w.numpy(), vec, keep, 0.99)
    unit = normalize(vec.double()).numpy()
    for u in range(40):
        want = np.zeros(4)
        for j in range(4):
            if keep[u, j]:
                want[j] += w[u, j]
            else:  # a duplicate passes its weight to its first kept twin, a dead one's is dropped
                twins = [i for i in range(4) if keep[u, i] and i != j and unit[u, i] @ unit[u, j] > 0.99]
                if twins:
                    want[twins[0]] += w[u, j]
        assert np.allclose(got[u], want / want.sum(), atol=1e-6)


@pytest.mark.parametrize("name", ["max", "mean", "smoothmax", "regsmoothmax"])
def test_masked_pool_equals_pooling_the_kept_components(name):
    g = torch.Generator().manual_seed(2)
    m = torch.rand(5, 4, 1, 9, generator=g) * 2 - 1
    keep = torch.rand(5, 4, generator=g) > 0.4
    keep[:, 1] = True
    got = masked_pool(m, keep, name, gamma=0.1, theta=0.2)
    for b in range(5):
        want = pool(m[b:b + 1, keep[b]], name, gamma=0.1, theta=0.2, dims=ALL_DIMS)
        assert torch.allclose(got[b], want[0], atol=1e-6)


def test_pruned_components_leave_exact_scoring_and_retrieval(planted):
    ds, _ = planted
    cfg = Config().with_overrides({"dim": 8, "epochs": 2, "components.user": 4, "negatives.batch": 32,
                                   "negatives.uniform": 32, "prune.min_weight": 0.2, "early_stopping.patience": 0})
    model = train(ds, cfg, progress=False)
    w = model.weights["all"]["user"]
    assert (w == 0).any() and np.allclose(w.sum(1), 1, atol=1e-5)
    users = np.arange(30)
    got, _ = exact_topk(model, users, 10)
    vec = model.vectors("user")
    for u in users:  # exact ranking with the pruned components removed
        keep = torch.from_numpy(w[u] > 0)
        s = pool(product_all(vec[u:u + 1, keep], model.vectors("item")), cfg.score_pooling, gamma=cfg.gamma,
                 theta=cfg.theta, dims=ALL_DIMS)[0]
        assert got[u].tolist() == torch.topk(s, 10).indices.tolist()
    from mixrec.retrieve import Retriever
    r = Retriever(model)
    cands = r.recommend(users, k=10, exclude_seen=False)
    for u in users:  # no candidate won by a pruned component, same list as searching the kept ones only
        assert all(w[u, c] > 0 for c in cands.components[u] if c >= 0)
    kept = [c for c in range(4) if w[0, c] > 0]
    only = r.search_vectors(r.source_vectors[:1, kept], w[:1, kept], 10)
    assert cands.items[0].tolist() == only.items[0].tolist()


def test_cluster_init_starts_at_centroids_of_the_single_models_items(planted, tmp_path):
    ds, _ = planted
    base = {"dim": 8, "epochs": 1, "negatives.batch": 32, "negatives.uniform": 32, "early_stopping.patience": 0}
    train(ds, Config().with_overrides({**base, "components.user": 1}), tmp_path / "single", progress=False)
    single = MixtureModel.load(tmp_path / "single")
    cfg = Config().with_overrides({**base, "components.user": 3, "init.user_components": "clusters",
                                   "init.from_model": str(tmp_path / "single"), "init.kmeans_iters": 4})
    t = Trainer(ds, cfg, progress=False)
    assert torch.allclose(t.model.tables["item"], single.tables["item"])  # saved unit vectors
    tr = ds.split("train")
    pairs = np.unique(np.stack([tr.src, tr.dst, tr.rel]), axis=1)
    item = normalize(single.tables["item"][:, 0])
    want = segment_kmeans(item[torch.from_numpy(pairs[1])], torch.from_numpy(pairs[0]), ds.num("user"), 3, 4, 0)
    assert torch.allclose(normalize(t.model.tables["user"]), want, atol=1e-5)
    with pytest.raises(ValueError, match="one component"):
        Trainer(ds, cfg.with_overrides({"init.from_model": str(_mixture(ds, base, tmp_path))}), progress=False)


def _mixture(ds, base, tmp_path):
    train(ds, Config().with_overrides({**base, "epochs": 0, "components.user": 2}), tmp_path / "mix", progress=False)
    return tmp_path / "mix"
