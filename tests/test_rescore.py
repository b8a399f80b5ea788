"""The rescore merge (index.merge = 'rescore'): against a naive loop, and equal to the exact ranking."""
import numpy as np
import pytest

from mixrec.config import IndexConfig
from mixrec.evaluate.exact import exact_topk
from mixrec.search import Searcher, rescore_merge
from mixrec.train import train
from tests.conftest import small_config


def _unit(shape, seed):
    x = np.random.default_rng(seed).normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _naive(queries, w, ids, targets, k, exclude, pooling, gamma, theta):
    """Per row: the union of the candidates' items, minus the excluded, scored over the kept components."""
    b, cs, _ = ids.shape
    cd = targets.shape[1]
    bad = set(zip(*exclude))
    items = np.full((b, k), -1)
    scores = np.zeros((b, k), np.float32)
    comps = np.full((b, k), -1)
    for r in range(b):
        kept = [c for c in range(cs) if w[r, c] > 0]
        cands = sorted({int(f) // cd for f in ids[r].ravel() if f >= 0} - {i for rr, i in bad if rr == r})
        rows = []
        for d in cands:
            m = np.array([[queries[r, c] @ targets[d, l] for l in range(cd)] for c in kept], np.float64)
            if pooling == "max":
                s = m.max()
            else:
                p = np.exp((m - m.max()) / gamma)
                sm = (m * p).sum() / p.sum()
                s = sm if pooling == "smoothmax" else theta * m.mean() + (1 - theta) * sm
            rows.append((-s, d, kept[int(m.max(axis=1).argmax())]))
        for j, (s, d, c) in enumerate(sorted(rows)[:k]):
            items[r, j], scores[r, j], comps[r, j] = d, -s, c
    return items, scores, comps


@pytest.mark.parametrize("pooling", ["max", "smoothmax", "regsmoothmax"])
def test_rescore_merge_equals_a_naive_loop(pooling):
    b, cs, cd, n, dim, m, k = 4, 3, 2, 15, 5, 6, 5
    q, t = _unit((b, cs, dim), 0), _unit((n, cd, dim), 1)
    rng = np.random.default_rng(2)
    ids = rng.integers(-1, n * cd, size=(b, cs, m))
    w = rng.uniform(0.1, 1, size=(b, cs))
    w[1, 2] = w[3, 0] = 0.0  # pruned components stay out of the score
    exclude = (np.array([0, 2, 2]), np.array([int(ids[0, 0, 1]) // cd, int(ids[2, 1, 0]) // cd, 3]))
    got = rescore_merge(q, w, ids, t, k, exclude, pooling=pooling, gamma=0.2, theta=0.3)
    want = _naive(q, w, ids, t, k, exclude, pooling, 0.2, 0.3)
    assert got.items.tolist() == want[0].tolist()
    np.testing.assert_allclose(got.scores, want[1], rtol=1e-5, atol=1e-6)
    assert got.components.tolist() == want[2].tolist()


@pytest.fixture(scope="module")
def model(planted, tmp_path_factory):
    ds, _ = planted
    return train(ds, small_config(3, score_pooling="max"), tmp_path_factory.mktemp("m"), progress=False)


def test_rescore_over_a_flat_index_is_the_exact_ranking(model):
    """With max pooling every exact top-k item is some component's neighbour: the merge is exact."""
    users = np.arange(0, model.num("user"), 7)
    s = Searcher.for_model(model, IndexConfig(kind="flat", merge="rescore"))
    got = s.recommend(users, 10)
    want, scores = exact_topk(model, users, 10, model.seen(None))
    assert got.items.tolist() == want.tolist()
    np.testing.assert_allclose(got.scores, scores, rtol=1e-5)
    rr = Searcher.for_model(model, IndexConfig(kind="flat", merge="round_robin")).recommend(users, 10)
    assert rr.items.tolist() != want.tolist()  # round-robin is not the exact ranking here


def test_cli_retrieve_and_serving_snapshot_take_the_merge(model, tmp_path):
    import pyarrow.parquet as pq

    from mixrec.cli import main
    from mixrec.serve.state import Snapshot

    want, _ = exact_topk(model, np.arange(model.num("user")), 10, model.seen(None))
    out = tmp_path / "c.parquet"
    assert main(["retrieve", str(model.path), "--k", "10", "--merge", "rescore", "--out", str(out), "--quiet"]) == 0
    t = pq.read_table(out).to_pydict()
    u0 = model.ids["user"][0]
    first = sorted((r, i) for u, r, i in zip(t["user"], t["rank"], t["item"]) if u == u0)
    assert model.lookup("item").find([i for _, i in first]).tolist() == want[0].tolist()
    snap = Snapshot.load(model.path, merge="rescore")
    assert snap.searcher.index.config.merge == "rescore"
    assert snap.searcher.recommend(np.arange(5), 10).items.tolist() == want[:5].tolist()
