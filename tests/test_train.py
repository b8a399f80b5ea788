"""Training: the batch loss against a naive loop, the optimizer, learning, determinism, resume, workers."""
import numpy as np
import pytest
import torch

from mixrec.config import Config
from mixrec.data.dataset import Dataset, Edges, Relation
from mixrec.evaluate.exact import sample_recall
from mixrec.model import MixtureModel
from mixrec.model.functional import pool, product
from mixrec.train import TrainEvent, train
from mixrec.train.sampler import edge_weights, epoch_schedule, training_edges
from mixrec.train.step import Batch, batch_loss, rowwise_adagrad_

FAST = {"dim": 8, "epochs": 3, "batch_size": 256, "negatives.batch": 32, "negatives.uniform": 32, "lr": 0.5,
        "init_scale": 0.1, "margin": 0.3, "components.user": 4}


def fast(**kw) -> Config:
    return Config().with_overrides({**FAST, **kw})


def test_rowwise_adagrad_matches_naive():
    table = torch.arange(12.0).view(4, 3)
    state = torch.tensor([0.0, 1.0, 2.0, 3.0])
    grad = torch.tensor([[1.0, 2.0, 2.0], [0.5, 0.0, 1.0]])
    rows = torch.tensor([3, 1])
    want_t, want_s = table.clone(), state.clone()
    for r, g in zip(rows.tolist(), grad):
        want_s[r] += (g ** 2).mean()
        want_t[r] -= 0.1 * g / want_s[r].sqrt()
    rowwise_adagrad_(table, state, rows, grad.clone(), 0.1)
    assert torch.allclose(table, want_t) and torch.allclose(state, want_s)


def test_batch_loss_and_gradients_match_naive_loop():
    cfg = Config().with_overrides({"loss": "margin", "margin": 0.2, "gamma": 0.3, "theta": 0.25,
                                   "negatives.batch": 2,
                                   "negatives.uniform": 2, "components.user": 3, "components.item": 2})
    g = torch.Generator().manual_seed(0)
    tables = {"user": torch.randn(5, 3, 4, generator=g, dtype=torch.float64),
              "item": torch.randn(6, 2, 4, generator=g, dtype=torch.float64)}
    b = Batch("user", "item", np.array([0, 1, 1]), np.array([2, 3, 4]), np.array([1.0, 2.0, 0.5]), np.array([2, 5]))
    loss, groups = batch_loss(b, tables, cfg)
    loss.backward()
    ref = {k: v.clone().requires_grad_(True) for k, v in tables.items()}
    negs = [2, 3, 2, 5]  # the first 2 positives' destinations, then the uniform ones
    want = 0.0
    for i in range(3):
        pos = pool(product(ref["user"][b.src[i]], ref["item"][b.dst[i]]), "regsmoothmax", gamma=0.3, theta=0.25)
        for d in negs:
            if d == b.dst[i]:
                continue  # a positive's own item is never its negative
            neg = pool(product(ref["user"][b.src[i]], ref["item"][d]), "smoothmax", gamma=0.3)
            want = want + b.weight[i] * torch.relu(neg + 0.2 - pos)
    want.backward()
    assert loss.item() == pytest.approx(want.item())
    for t, rows, leaf in groups:
        assert torch.allclose(leaf.grad, ref[t].grad[rows])
        untouched = np.setdiff1d(np.arange(len(ref[t])), rows.numpy())
        assert torch.all(ref[t].grad[untouched] == 0)


def test_edge_weights_task_and_degree():
    e = Edges(np.array([0, 0, 1]), np.array([0, 1, 1]), np.zeros(3, np.int64), np.array([1.0, 2.0, 1.0], np.float32))
    assert edge_weights(e, 3.0, 0.0, 2, 2).tolist() == [3.0, 6.0, 3.0]
    w = edge_weights(e, 1.0, 1.0, 2, 2)
    raw = np.array([1 / (2 * 1), 2 / (2 * 2), 1 / (1 * 2)])
    np.testing.assert_allclose(w, raw / (np.array([1 / 2, 1 / 4, 1 / 2]).mean()), rtol=1e-6)


def test_pluggable_edge_weight_function(planted):
    from mixrec.train.sampler import EDGE_WEIGHTS, register_edge_weight
    ds, _ = planted
    register_edge_weight("half_test", lambda e, rc, ns, nd: np.full(len(e), 0.5 * rc.weight))
    try:
        edges = training_edges(ds, fast(**{"relations.like.edge_weight": "half_test", "relations.like.weight": 3}))
        assert np.allclose(edges.weight[ds.relation_code("like")], 1.5)
        assert np.allclose(edges.weight[ds.relation_code("click")], 1.0)
        with pytest.raises(ValueError, match="relations.click.edge_weight: unknown function 'nope'"):
            training_edges(ds, fast(**{"relations.click.edge_weight": "nope"}))
    finally:
        del EDGE_WEIGHTS["half_test"]


def test_schedule_covers_every_edge_once_and_skips_zero_weight(planted):
    ds, _ = planted
    cfg = fast(**{"relations.like.weight": 0.0})
    edges = training_edges(ds, cfg)
    sched = epoch_schedule(edges, cfg, 0)
    like = ds.relation_code("like")
    assert all(code != like for code, _ in sched)
    click = ds.relation_code("click")
    seen = np.sort(np.concatenate([pos for code, pos in sched if code == click]))
    np.testing.assert_array_equal(seen, np.arange(len(edges.src[click])))
    assert [p.tolist() for _, p in epoch_schedule(edges, cfg, 1)] != [p.tolist() for _, p in sched]


def test_training_learns_the_planted_structure(planted):
    ds, _ = planted
    untrained = train(ds, fast(epochs=0), progress=False)
    trained = train(ds, fast(epochs=4), progress=False)
    r0 = sample_recall(untrained, ds, "test", 20, 10_000, 0)
    r1 = sample_recall(trained, ds, "test", 20, 10_000, 0)
    assert r1 > 2 * r0 and r1 > 0.15
    losses = [h["loss"] for h in trained.info["history"]]
    assert losses[-1] < losses[0]
    w = trained.mixture_weights("user")
    assert w.shape == (ds.num("user"), 4) and np.allclose(w.sum(1), 1, atol=1e-5)


def test_same_seed_same_model_other_seed_differs(planted):
    ds, _ = planted
    a = train(ds, fast(epochs=1), progress=False)
    b = train(ds, fast(epochs=1), progress=False)
    c = train(ds, fast(epochs=1, seed=1), progress=False)
    assert torch.equal(a.tables["user"], b.tables["user"])
    assert not torch.allclose(a.tables["user"], c.tables["user"])


class Interrupt(Exception):
    pass


def _kill_at(epoch: int, batch: int):
    def cb(ev: TrainEvent):
        if ev.kind == "batch" and ev.epoch == epoch and ev.batch == batch:
            raise Interrupt()
    return cb


def test_resume_after_interrupt_equals_uninterrupted(planted, tmp_path):
    ds, _ = planted
    cfg = fast(epochs=3)
    full = train(ds, cfg, tmp_path / "full", progress=False)
    with pytest.raises(Interrupt):
        train(ds, cfg, tmp_path / "cut", progress=False, callbacks=[_kill_at(2, 3)])
    assert not (tmp_path / "cut" / "model.json").exists()
    resumed = train(ds, cfg, tmp_path / "cut", resume=True, progress=False)
    for t in full.tables:
        assert torch.allclose(full.tables[t], resumed.tables[t], atol=1e-6)
    np.testing.assert_allclose(full.weights["all"]["user"], resumed.weights["all"]["user"], atol=1e-6)
    assert [h["epoch"] for h in resumed.info["history"]] == [1, 2, 3]


def test_resume_may_switch_compilation_on(planted, tmp_path, monkeypatch):
    from mixrec.train import fused
    monkeypatch.setattr(fused, "_compiled", {"failed": True})  # the eager step, without a compiler's delay
    ds, _ = planted
    full = train(ds, fast(epochs=2), tmp_path / "full", progress=False)
    with pytest.raises(Interrupt):
        train(ds, fast(epochs=2), tmp_path / "cut", progress=False, callbacks=[_kill_at(1, 2)])
    resumed = train(ds, fast(epochs=2, compile=True), tmp_path / "cut", resume=True, progress=False)
    assert resumed.config.compile
    for t in full.tables:
        assert torch.allclose(full.tables[t], resumed.tables[t], atol=1e-6)


def test_resume_with_other_config_is_refused(planted, tmp_path):
    ds, _ = planted
    with pytest.raises(Interrupt):
        train(ds, fast(), tmp_path / "m", progress=False, callbacks=[_kill_at(2, 0)])
    with pytest.raises(ValueError, match="different configuration"):
        train(ds, fast(dim=4), tmp_path / "m", resume=True, progress=False)


def test_two_workers_resume_to_a_usable_model(planted, tmp_path):
    ds, _ = planted
    cfg = fast(epochs=4, workers=2)
    with pytest.raises(Interrupt):
        train(ds, fast(epochs=4), tmp_path / "m", progress=False, callbacks=[_kill_at(3, 2)])
    model = train(ds, cfg, tmp_path / "m", resume=True, progress=False)
    base = sample_recall(train(ds, fast(epochs=0), progress=False), ds, "test", 20, 10_000, 0)
    assert sample_recall(model, ds, "test", 20, 10_000, 0) > 2 * base
    assert MixtureModel.load(tmp_path / "m").config.workers == 2


def test_config_saved_beside_model_and_checksums_enforced(planted, tmp_path):
    ds, _ = planted
    cfg = fast(epochs=1, **{"components.user": 3})
    train(ds, cfg, tmp_path / "m", progress=False)
    loaded = MixtureModel.load(tmp_path / "m")
    assert loaded.config == cfg and loaded.components("user") == 3
    (tmp_path / "m" / "embeddings" / "user.npy").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="checksum"):
        MixtureModel.load(tmp_path / "m")


def test_early_stopping_stops_and_keeps_the_best(planted):
    ds, _ = planted
    rng = np.random.default_rng(0)
    tr = ds.edges["train"]
    valid = rng.random(len(tr)) < 0.1
    split = Dataset(ds.ids, ds.relations, {"train": tr.select(~valid), "valid": tr.select(valid),
                                          "test": ds.edges["test"]})
    model = train(split, fast(epochs=10, lr=1e-9, **{"early_stopping.patience": 2}), progress=False)
    hist = model.info["history"]
    assert len(hist) == 3 and "valid_recall@20" in hist[0]
    assert model.info["best_epoch"] == 1


def test_user_user_relation_trains(tmp_path):
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 50, 400), rng.integers(0, 50, 400)
    ds = Dataset({"user": np.arange(50)}, [Relation("friend", "user", "user")],
                 {"train": Edges(src, dst, np.zeros(400, np.int64), np.ones(400, np.float32))})
    model = train(ds, fast(epochs=1), tmp_path / "m", progress=False)
    assert model.weights["all"]["user"].shape == (50, 4)
