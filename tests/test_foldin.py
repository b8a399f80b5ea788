"""Fold-in of unseen users: the same loss as training, deterministic, close to trained users, and `retrieve --history`."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mixrec.cli import main
from mixrec.foldin import (FoldInSettings, fold_in, fold_in_model, foldin_loss, foldin_weights, kmeans_init,
                           pad_histories, read_histories)
from mixrec.model.functional import ALL_DIMS, normalize, pool, product_all
from mixrec.retrieve import Retriever
from mixrec.train import train
from mixrec.train.step import Batch, batch_loss
from tests.conftest import small_config


@pytest.fixture(scope="module")
def model(planted, tmp_path_factory):
    ds, _ = planted
    return train(ds, small_config(3), tmp_path_factory.mktemp("fold") / "model", progress=False)


def _histories(model, users):
    e = model.train_edges
    return [e["dst"][e["src"] == u] for u in users], [e["rel"][e["src"] == u] for u in users]


def test_pad_histories_shapes_and_padding():
    items, w = pad_histories([np.array([3, 4, 5]), np.array([7])], [np.ones(3) * 2, np.ones(1)])
    assert items.shape == (2, 3) and items[1].tolist() == [7, 0, 0]
    assert w.tolist() == [[2, 2, 2], [1, 0, 0]]


def test_foldin_loss_is_the_training_loss(model):
    """For one user, the fold-in objective equals the training step's loss with the same negatives."""
    cfg = model.config.with_overrides({"negatives.batch": 0})
    hist, _ = _histories(model, [5])
    neg = np.arange(0, 60, 3, dtype=np.int64)
    batch = Batch("user", "item", np.full(len(hist[0]), 5), hist[0], np.ones(len(hist[0]), np.float32), neg)
    expected, _ = batch_loss(batch, model.tables, cfg)
    got = foldin_loss(model.tables["user"][5:6], normalize(model.tables["item"]), torch.from_numpy(hist[0][None]),
                      torch.ones(1, len(hist[0])), torch.from_numpy(neg), cfg)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_foldin_weights_match_eq5_of_trained_users(model):
    """Given a trained user's own components and training edges, the fold-in weights are the model's eq. 5 weights."""
    users = np.array([0, 1, 2, 3])
    hist, _ = _histories(model, users)
    items, mask = pad_histories(hist)
    ws = model.config.weight_sets["all"]
    w = foldin_weights(model.tables["user"][users], model.vectors("item"), items, mask > 0, ws.gamma, ws.form)
    np.testing.assert_allclose(w, model.mixture_weights("user", "all")[users], atol=1e-5)


def test_fold_in_is_deterministic_and_independent_of_batch_mates(model):
    hist, rels = _histories(model, [7, 8, 9])
    s = FoldInSettings(steps=30)
    alone = fold_in_model(model, hist[:1], rels[:1], settings=s)
    again = fold_in_model(model, hist[:1], rels[:1], settings=s)
    batch = fold_in_model(model, hist, rels, settings=s)
    np.testing.assert_array_equal(alone.vectors, again.vectors)
    np.testing.assert_allclose(alone.vectors[0], batch.vectors[0], atol=1e-4)
    np.testing.assert_allclose(alone.weights[0], batch.weights[0], atol=1e-4)
    assert batch.vectors.shape == (3, 3, 8)
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(batch.weights.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("init,steps", [("random", 100), ("kmeans", 100), ("kmeans", 20)])
def test_folded_users_land_near_their_trained_selves(model, init, steps):
    """Folded in from its own training items, a user scores items like its trained self and shares candidates."""
    users = np.arange(40)
    hist, rels = _histories(model, users)
    f = fold_in_model(model, hist, rels, settings=FoldInSettings(steps=steps, init=init))
    cfg = model.config

    def scores(u):
        m = product_all(torch.as_tensor(u), model.vectors("item"), normalized=True)
        return pool(m, cfg.score_pooling, gamma=cfg.gamma, dims=ALL_DIMS).numpy()
    sf, st = scores(f.vectors), scores(model.vectors("user")[users].numpy())
    own = np.mean([np.corrcoef(sf[i], st[i])[0, 1] for i in range(len(users))])
    other = np.mean([np.corrcoef(sf[i], st[(i + 7) % len(users)])[0, 1] for i in range(len(users))])
    assert own > 0.5 and own > other + 0.3
    r = Retriever(model)
    trained = r.recommend(users, 20).items
    excl = (np.repeat(np.arange(len(users)), [len(h) for h in hist]), np.concatenate(hist))
    folded = r.search_vectors(f.vectors, f.weights, 20, excl, extra=max(len(h) for h in hist)).items
    ov_own = np.mean([len(set(trained[i]) & set(folded[i])) / 20 for i in range(len(users))])
    ov_other = np.mean([len(set(trained[(i + 7) % len(users)]) & set(folded[i])) / 20 for i in range(len(users))])
    assert ov_own > 0.4 and ov_own > 2 * ov_other
    assert not set(folded[0]) & set(hist[0].tolist())  # history items excluded


def test_fold_in_rejects_bad_input(model):
    with pytest.raises(ValueError, match="at least one item"):
        fold_in(model.vectors("item"), [np.array([], np.int64)], model.config, 3)
    with pytest.raises(ValueError, match="one relation per history item"):
        fold_in_model(model, [np.array([1, 2])], [np.array([0])])
    with pytest.raises(ValueError, match="do not go from"):
        fold_in_model(model, [np.array([1, 2])], [np.array([0, 9])])
    assert fold_in(model.vectors("item"), [], model.config, 3).vectors.shape == (0, 3, 8)


def test_read_histories_groups_users_in_file_order(tmp_path):
    f = tmp_path / "h.tsv"
    f.write_text("user\titem\trelation\nb\t1\tclick\na\t2\tlike\nb\t3\tclick\n")
    users, items, rels = read_histories(f)
    assert users == ["b", "a"] and items[0].tolist() == ["1", "3"] and rels[1].tolist() == ["like"]
    bad = tmp_path / "bad.csv"
    bad.write_text("u,i\n1,2\n")
    with pytest.raises(ValueError, match="needs columns 'user' and 'item'"):
        read_histories(bad)


def test_cli_retrieve_history(model, tmp_path, capsys):
    hist, _ = _histories(model, [0, 1])
    ids = model.ids["item"]
    lines = ["user,item"] + [f"new{u},{ids[i]}" for u, h in enumerate(hist) for i in h]
    f = tmp_path / "hist.csv"
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "c.parquet"
    assert main(["retrieve", str(model.path), "--history", str(f), "--k", "7", "--out", str(out),
                 "--foldin-steps", "20", "--quiet"]) == 0
    t = pq.read_table(out).to_pydict()
    assert sorted(set(t["user"])) == ["new0", "new1"] and len(t["user"]) == 14
    got0 = {i for u, i in zip(t["user"], t["item"]) if u == "new0"}
    assert not got0 & set(ids[hist[0]].tolist())
    assert "folded-in users" in capsys.readouterr().out
    f.write_text("user,item\nx,not-an-item\n")
    assert main(["retrieve", str(model.path), "--history", str(f), "--out", str(out)]) == 2
    assert "unknown item id" in capsys.readouterr().err


def naive_kmeans(points, mask, k, iters):
    out = []
    for x, m in zip(points.numpy().astype(np.float64), mask.numpy()):
        idx = list(np.flatnonzero(m))
        centres = [x[idx[0]]]
        best = np.full(len(x), -np.inf)
        for _ in range(1, k):
            best = np.maximum(best, x @ centres[-1])
            cand = np.where(m, best, np.inf)
            centres.append(x[int(np.argmin(cand))])
        c = np.array(centres)
        for _ in range(iters):
            assign = [int(np.argmax(c @ x[i])) for i in idx]
            for j in range(k):
                members = [x[i] for i, a in zip(idx, assign) if a == j]
                if members:
                    v = np.sum(members, 0)
                    c[j] = v / np.linalg.norm(v)
        out.append(c)
    return np.array(out)


def test_kmeans_init_matches_a_naive_loop():
    g = torch.Generator().manual_seed(3)
    points = normalize(torch.randn(4, 15, 6, generator=g))
    mask = torch.ones(4, 15, dtype=torch.bool)
    mask[1, 9:] = False
    mask[2, 2:] = False  # two points for three centres: centres repeat
    got = kmeans_init(points, mask, 3, iters=5).numpy()
    np.testing.assert_allclose(got, naive_kmeans(points, mask, 3, 5), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-5)


def test_kmeans_init_recovers_planted_interests():
    """Three tight clusters in the history: each centre lands on one cluster's direction."""
    g = torch.Generator().manual_seed(0)
    axes = torch.eye(8)[:3]
    points = normalize(axes.repeat_interleave(10, 0) + 0.05 * torch.randn(30, 8, generator=g)).unsqueeze(0)
    c = kmeans_init(points, torch.ones(1, 30, dtype=torch.bool), 3)[0]
    cos = (c @ axes.T).numpy()
    assert sorted(cos.argmax(1).tolist()) == [0, 1, 2] and cos.max(1).min() > 0.98


def test_fold_in_rejects_unknown_init(model):
    hist, rels = _histories(model, [1])
    with pytest.raises(ValueError, match="fold-in init"):
        fold_in_model(model, hist, rels, settings=FoldInSettings(steps=1, init="nope"))
