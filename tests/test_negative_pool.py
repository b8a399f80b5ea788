"""Cross-partition negatives: pool sampling, draws over the whole type, pool write-back, log-Q rates."""
import numpy as np
import pytest
import torch

from mixrec.config import Config
from mixrec.train.negative_pool import bucket_negatives, pool_rows
from mixrec.train.step import Batch, _log_q, rowwise_adagrad_


def _tables(sizes, c=2, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, c, n, generator=g) for s in sizes]


def test_pool_takes_every_other_row_when_it_fits_and_a_proportional_sample_otherwise():
    rng = np.random.default_rng(0)
    rows = pool_rows([5, 7, 3], own=1, size=100, rng=rng)
    assert sorted(rows) == [0, 2] and rows[0].tolist() == list(range(5)) and rows[2].tolist() == [0, 1, 2]
    rows = pool_rows([4000, 100, 2000], own=1, size=600, rng=rng)
    assert sum(len(r) for r in rows.values()) == 600 and 1 not in rows
    for p, r in rows.items():
        assert np.all(np.diff(r) > 0) and r.max() < [4000, 100, 2000][p]  # sorted, distinct, in range
    assert 330 < len(rows[0]) < 470  # about 2/3 of the sample from the partition twice as large
    assert pool_rows([10], own=0, size=100, rng=rng) == {}


def _reader(parts, states):
    return lambda p, r: (parts[p][torch.from_numpy(r)].numpy(), states[p][torch.from_numpy(r)].numpy())


def test_bucket_table_is_own_partition_then_the_other_partitions_rows():
    parts = _tables([6, 4, 5])
    states = [torch.rand(len(t)) for t in parts]
    negs = bucket_negatives(parts[1], states[1], [6, 4, 5], 1, 100, _reader(parts, states), np.random.default_rng(0))
    assert negs.local == 4 and negs.pool == 11 and negs.total == 15
    assert torch.equal(negs.table, torch.cat([parts[1], parts[0], parts[2]]))
    assert torch.equal(negs.state, torch.cat([states[1], states[0], states[2]]))
    p = negs.uniform_prob()
    assert p.sum() == pytest.approx(1.0) and np.allclose(p, 1 / 15)  # every row of the type once: uniform
    # without a pool (cross_partition = 0, or one partition) the partition itself is trained in place
    alone = bucket_negatives(parts[1], states[1], [6, 4, 5], 1, 0, None, np.random.default_rng(0))
    assert alone.table is parts[1] and alone.pool == 0 and np.allclose(alone.uniform_prob(), 1 / 15)


def test_draws_cover_the_whole_type_and_pool_changes_go_back_to_their_partitions():
    parts = _tables([300, 100])
    states = [torch.zeros(300), torch.zeros(100)]
    negs = bucket_negatives(parts[1], states[1], [300, 100], 1, 30, _reader(parts, states),
                            np.random.default_rng(1))
    draws = negs.draw(np.random.default_rng(2), 40_000)
    assert draws.min() >= 0 and draws.max() < 130
    assert abs((draws < 100).mean() - 0.25) < 0.01  # own partition holds a quarter of the type
    assert abs(negs.uniform_prob()[100:].sum() - 0.75) < 1e-6  # 30 pool rows stand in for 300
    before = negs.table.clone()
    rowwise_adagrad_(negs.table, negs.state, torch.arange(130), torch.randn(130, 2, 3), lr=0.5)
    (rows0,) = negs.pool_rows.values()
    other = parts[0].clone()
    other[torch.from_numpy(rows0)] += 1.0  # an update the rows got elsewhere meanwhile (as sources) is kept
    got = {}
    target, tstate = parts[1].clone(), states[1].clone()
    negs.write_back(target, tstate, lambda p, rows, d_tab, d_state: got.update({p: (rows, d_tab, d_state)}))
    assert torch.equal(target, negs.table[:100]) and torch.equal(tstate, negs.state[:100])
    rows, d_tab, d_state = got[0]
    assert np.array_equal(rows, rows0) and len(rows) == 30
    other[torch.from_numpy(rows)] += torch.from_numpy(d_tab)
    want = parts[0].clone()
    want[torch.from_numpy(rows)] = negs.table[100:] + 1.0
    assert torch.allclose(other, want, atol=1e-6)
    assert np.allclose(d_state, negs.state[100:].numpy()) and (d_state > 0).all()
    assert not torch.equal(negs.table[100:], before[100:])  # the pool rows were trained


def test_log_q_uses_the_per_row_uniform_rate():
    cfg = Config().with_overrides({"loss": "softmax", "logq": True})
    prob = np.array([0.5, 0.5, 0.0, 0.0], np.float32)
    uprob = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    pos, neg = torch.tensor([0, 1]), torch.tensor([0, 2, 3])
    lp, ln = _log_q(cfg, prob, pos, neg, 8, 10, uprob)
    want = [np.log(8 * prob[i] + 10 * uprob[i]) for i in (0, 2, 3)]
    assert np.allclose(ln.numpy(), want, atol=1e-6) and np.allclose(lp.numpy(), want[:1] + [np.log(4 + 2)], atol=1e-6)
    _, default = _log_q(cfg, prob, pos, neg, 8, 10)
    assert np.allclose(default.numpy(), [np.log(8 * prob[i] + 10 / 4) for i in (0, 2, 3)], atol=1e-6)
    assert Batch("u", "i", *[np.zeros(1)] * 4).dst_uniform_prob is None
