"""Ranking stages: the multi-task ranker learns a planted signal, the value model, ApproxNDCG, distillation,
saving without pickle, and value-weight tuning by offline replay."""
import numpy as np
import pytest
import torch

from mixrec.funnel.fit import CandidateLists
from mixrec.funnel.optimize import Replay, replay_metric
from mixrec.funnel.rank import (FunnelRanker, ValueModel, approx_ndcg_loss, distill_first_pass, teacher_gains,
                                train_multitask)


def auc(score, label):
    pos, neg = score[label > 0], score[label == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def planted(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    p_view = 1 / (1 + np.exp(-(2 * x[:, 0])))
    p_buy = 1 / (1 + np.exp(-(3 * x[:, 1] * x[:, 2] - 1)))  # an interaction: needs the hidden layer
    y = np.stack([rng.random(n) < p_view, rng.random(n) < p_buy], 1).astype(np.float32)
    return x, y


def test_multitask_ranker_learns_a_planted_signal_per_head():
    x, y = planted()
    model = train_multitask(x[:3000], y[:3000], ["view", "buy"], epochs=15, seed=0)
    p = model.probs(x[3000:])
    assert p.shape == (1000, 2) and np.all((p > 0) & (p < 1))
    assert auc(p[:, 0], y[3000:, 0]) > 0.8
    assert auc(p[:, 1], y[3000:, 1]) > 0.7
    assert auc(p[:, 1], y[3000:, 0]) < 0.6  # the heads are not the same prediction


def test_value_model_weights_and_negative_actions():
    probs = np.array([[0.5, 0.2, 0.1], [0.1, 0.9, 0.6]])
    v = ValueModel({"like": 1.0, "save": 2.0, "hide": -3.0})
    np.testing.assert_allclose(v(probs, ["like", "save", "hide"]), [0.5 + 0.4 - 0.3, 0.1 + 1.8 - 1.8])
    assert v.vector(["hide", "like", "save", "share"]).tolist() == [-3.0, 1.0, 2.0, 0.0]
    with pytest.raises(KeyError, match="unknown relation"):
        ValueModel({"colour": 1.0}).vector(["like"])


def test_approx_ndcg_prefers_the_right_order_and_has_gradients():
    gains = torch.tensor([[3.0, 1.0, 0.0, 0.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    good = torch.tensor([[3.0, 2.0, 1.0, 0.0]], requires_grad=True)
    bad = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    lg = approx_ndcg_loss(good, gains, mask, 0.01)
    assert lg.item() == pytest.approx(0.0, abs=1e-3)
    assert approx_ndcg_loss(bad, gains, mask, 0.01).item() > 0.3
    lg2 = approx_ndcg_loss(good, gains, mask, 1.0)
    lg2.backward()
    assert good.grad.abs().sum() > 0
    # padded entries do not count
    masked = torch.tensor([[True, True, False, False]])
    assert approx_ndcg_loss(torch.tensor([[1.0, 0.0, 9.0, 9.0]]), gains, masked, 0.01).item() == \
        pytest.approx(0.0, abs=1e-3)
    g = teacher_gains(torch.tensor([[2.0, 0.0, 1.0, 5.0]]), masked)
    np.testing.assert_allclose(g.numpy(), [[15.0, 0.0, 0.0, 0.0]])


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_distillation_preserves_the_teacher_order_better_than_chance():
    rng = np.random.default_rng(0)
    b, length, f = 120, 30, 4
    x = rng.normal(size=(b, length, f)).astype(np.float32)
    teacher = np.tanh(x[..., 0] + 0.5 * x[..., 1] ** 2 - 0.3 * x[..., 2])
    mask = np.ones((b, length), bool)
    mask[:, 25:] = rng.random((b, 5)) < 0.5
    student = distill_first_pass(x[:100], teacher[:100], mask[:100], epochs=40, seed=0)
    rho = [spearman(student.score(x[i]), teacher[i]) for i in range(100, b)]
    chance = [spearman(rng.random(length), teacher[i]) for i in range(100, b)]
    assert np.mean(rho) > 0.7 > np.mean(chance) + 0.5


def test_ranker_save_load_round_trip(tmp_path):
    x, y = planted(500)
    final = train_multitask(x, y, ["view", "buy"], epochs=1)
    first = distill_first_pass(x[:400].reshape(20, 20, 6)[..., :3], y[:400, 1].reshape(20, 20),
                               np.ones((20, 20), bool), epochs=1)
    second = distill_first_pass(x[:400].reshape(20, 20, 6), y[:400, 1].reshape(20, 20), np.ones((20, 20), bool),
                                hidden=(8,), epochs=1)
    r = FunnelRanker(final, ValueModel({"view": 0.2, "buy": 1.0}), first, {"rows": 500}, second_pass=second)
    r.save(tmp_path / "r")
    back = FunnelRanker.load(tmp_path / "r")
    np.testing.assert_allclose(back.values(x), r.values(x))
    np.testing.assert_allclose(back.first_pass.score(x[:, :3]), r.first_pass.score(x[:, :3]))
    np.testing.assert_allclose(back.second_pass.score(x), r.second_pass.score(x))
    FunnelRanker(final, ValueModel({"buy": 1.0})).save(tmp_path / "plain")
    plain = FunnelRanker.load(tmp_path / "plain")
    assert plain.first_pass is None and plain.second_pass is None
    assert back.relations == ["view", "buy"] and back.info == {"rows": 500}
    with pytest.raises(FileNotFoundError):
        FunnelRanker.load(tmp_path / "none")


def test_padded_lists_and_replay_metric_by_hand():
    lists = CandidateLists(np.array([5, 6]), np.array([0, 3, 5]), np.array([1, 2, 3, 4, 5]),
                           np.array([[0], [1], [0], [1], [0]], np.float32))
    vals, mask = lists.padded(np.arange(5.0))
    assert vals.tolist() == [[0, 1, 2], [3, 4, 0]] and mask.tolist() == [[True] * 3, [True, True, False]]
    probs = np.array([[[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], [[0.1, 0.3], [0.6, 0.2], [0, 0]]])
    rel = np.array([[False, True, False], [False, True, False]])
    rp = Replay(probs, rel, mask, ["view", "buy"])
    # weights (0, 1): user 0 ranks item 1 first (hit at 1), user 1 ranks item 0 first, item 1 second
    assert replay_metric(rp, np.array([0.0, 1.0]), k=1, metric="hr") == 0.5
    assert replay_metric(rp, np.array([0.0, 1.0]), k=2, metric="ndcg") == pytest.approx((1 + 1 / np.log2(3)) / 2)
    assert replay_metric(rp, np.array([1.0, 0.0]), k=1, metric="hr") == 0.5


def test_optuna_tuning_recovers_a_planted_weight():
    pytest.importorskip("optuna")
    from mixrec.funnel.optimize import tune_value_weights
    rng = np.random.default_rng(0)
    u, length = 200, 20
    probs = rng.random((u, length, 2))
    relevant = np.zeros((u, length), bool)
    relevant[np.arange(u), np.argmax(probs[..., 0] - 0.8 * probs[..., 1], 1)] = True  # hide counts against
    rp = Replay(probs, relevant, np.ones((u, length), bool), ["buy", "hide"])
    best, value, study = tune_value_weights(rp, "buy", n_trials=25, bounds=(-2.0, 2.0), seed=0)
    assert best["buy"] == 1.0 and best["hide"] < -0.3
    assert value > replay_metric(rp, np.array([1.0, 0.0]), 10, "ndcg")
    assert len(study.trials) == 25


def test_wide_path_is_linear_in_the_log_ranks_and_learns_a_sources_order(tmp_path):
    """Labels follow one source's order (P(buy) rises with log of its reciprocal rank); the wide path's
    logit is the trunk's plus W @ log(max(rank, 1e-3)) by hand, starts at zero, learns a positive weight on
    that source, and survives save/load."""
    from mixrec.funnel.rank import WIDE_FLOOR, MultiTaskRanker
    rng = np.random.default_rng(3)
    n = 3000
    x = rng.normal(size=(n, 4)).astype(np.float32)
    ranks = np.where(rng.random((n, 2)) < 0.6, 1.0 / rng.integers(1, 80, size=(n, 2)), 0.0).astype(np.float32)
    p = 1 / (1 + np.exp(-(1.5 * np.log(np.maximum(ranks[:, 0], WIDE_FLOOR)) + 2)))
    y = np.stack([rng.random(n) < 0.1, rng.random(n) < p], 1).astype(np.float32)
    xa = np.concatenate([x, ranks], 1)
    fresh = MultiTaskRanker(6, ["view", "buy"], (8,), wide=2)
    assert torch.count_nonzero(fresh.wide.weight) == 0
    m = train_multitask(xa, y, ["view", "buy"], hidden=(8,), epochs=20, lr=0.03, wide=2)
    with torch.no_grad():
        xt = torch.as_tensor(xa)
        deep = m.head(m.body((xt - m.mean) / m.std))
        by_hand = deep + torch.log(xt[:, -2:].clamp_min(WIDE_FLOOR)) @ m.wide.weight.T
        np.testing.assert_allclose(m(xt).numpy(), by_hand.numpy(), rtol=1e-5, atol=1e-6)
    w = m.wide.weight.detach().numpy()
    assert w[1, 0] > 0.5 and abs(w[1, 1]) < w[1, 0] / 2, w  # the buy head follows source 0, not source 1
    assert auc(m.probs(xa)[:, 1], y[:, 1]) > 0.75
    r = FunnelRanker(m, ValueModel({"buy": 1.0}), source_features=True)
    back = FunnelRanker.load(r.save(tmp_path / "r"))
    assert back.final.wide_n == 2
    np.testing.assert_allclose(back.values(xa), r.values(xa))
    with pytest.raises(ValueError, match="wide"):
        MultiTaskRanker(3, ["buy"], wide=4)
