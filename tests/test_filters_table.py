"""The per-user top-k table of a graph-filter model: equal to the on-the-fly ranking, used only for the default
request, saved with checksums, read by the funnel's graph source, the served filter state and the CLI."""
from __future__ import annotations

import numpy as np
import pytest

from mixrec.filters import KINDS, FilterModel, load_filter, make_filter
from mixrec.filters.base import topk_rows
from mixrec.filters.spectral import SpectralFilter
from test_filters import N_I, N_U, _dataset, _dense

K = 8


def _fit(kind: str, table_k: int = K) -> FilterModel:
    if kind == "cascade":
        mats = {"view": _dense(4, 0.4), "cart": _dense(5, 0.2), "buy": _dense(6, 0.1)}
        return make_filter(kind, own=0.5, stage_bonus=0.2).fit(_dataset(mats), table_k=table_k)
    params = {"rank": 4} if kind in ("lowpass", "gfcf") else {}
    return make_filter(kind, **params).fit(_dataset({"click": _dense(7)}), table_k=table_k)


def _on_the_fly(m: FilterModel, users, k: int, **kw):
    table, m.table = m.table, None
    try:
        return m.recommend(users, k=k, **kw)
    finally:
        m.table = table


def _oracle(m: FilterModel, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Numpy: every user's scores, seen target items at -inf, ordered by score then item, -inf as item -1."""
    s = m.score_users(np.arange(N_U)).astype(np.float32)
    s[m.history[m.target].toarray() > 0] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(N_I), s.shape), -s), axis=1)[:, :k]
    top = np.take_along_axis(s, order, 1)
    return np.where(np.isfinite(top), order, -1), top


@pytest.fixture(params=[True, False], ids=["dense-operator", "factored"])
def dense_mode(request, monkeypatch):
    monkeypatch.setattr(SpectralFilter, "dense_items", 10_000 if request.param else 0)
    return request.param


def test_topk_rows_breaks_ties_by_item_so_every_k_is_a_prefix():
    s = np.array([[1.0, 3.0, 3.0, 3.0, 0.0, -np.inf], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]], np.float32)
    assert topk_rows(s, 2)[0].tolist() == [[1, 2], [0, 1]]
    assert topk_rows(s, 4)[0].tolist() == [[1, 2, 3, 0], [0, 1, 2, 3]]
    items, scores = topk_rows(s, 7)
    assert items.tolist() == [[1, 2, 3, 0, 4, -1, -1], [0, 1, 2, 3, 4, 5, -1]]
    assert scores[0].tolist() == [3, 3, 3, 1, 0, -np.inf, -np.inf]
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, (50, 30)).astype(np.float32)  # many ties at every cut
    s[rng.random(s.shape) < 0.2] = -np.inf
    ref = np.lexsort((np.broadcast_to(np.arange(30), s.shape), -s), axis=1)
    full, _ = topk_rows(s, 30)
    for k in (1, 5, 17, 30):
        items, scores = topk_rows(s, k)
        want = np.where(np.isfinite(np.take_along_axis(s, ref[:, :k], 1)), ref[:, :k], -1)
        np.testing.assert_array_equal(items, want, err_msg=f"k {k}")
        np.testing.assert_array_equal(items, full[:, :k])
        np.testing.assert_array_equal(scores, np.take_along_axis(s, ref[:, :k], 1))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_table_equals_the_on_the_fly_ranking(kind, dense_mode):
    m = _fit(kind)
    assert m.table is not None and m.table.k == K and m.table.items.shape == (N_U, K)
    users = np.arange(N_U)
    want_i, want_s = _oracle(m, K)
    np.testing.assert_array_equal(m.table.items, want_i)
    np.testing.assert_array_equal(m.table.scores, want_s)
    for k in (1, 3, K):
        got_i, got_s = m.recommend(users, k=k)
        assert got_i.dtype == np.int64 and got_s.dtype == np.float32
        fly_i, fly_s = _on_the_fly(m, users, k)
        np.testing.assert_array_equal(got_i, fly_i, err_msg=f"k {k}")
        np.testing.assert_array_equal(got_s, fly_s, err_msg=f"k {k}")
        for u in (0, 13, N_U - 1):  # one user at a time, as the funnel and the server ask
            one_i, one_s = _on_the_fly(m, [u], k)
            np.testing.assert_array_equal(m.recommend([u], k=k)[0], one_i)
            np.testing.assert_allclose(m.recommend([u], k=k)[1], one_s, rtol=1e-6)  # BLAS may round differently


def test_only_the_default_request_of_training_users_reads_the_table(monkeypatch):
    m = _fit("cascade")
    users = np.array([3, 0, 3, 17])
    calls = []
    real = type(m).score_users
    monkeypatch.setattr(type(m), "score_users", lambda self, u: calls.append(len(u)) or real(self, u))
    got = m.recommend(users, k=K)
    assert calls == []
    np.testing.assert_array_equal(got[0], m.table.items[users])
    for kw in ({"k": K + 1}, {"k": 3, "exclude_seen": False}):  # past the table, or seen items kept: computed
        calls.clear()
        got_i, got_s = m.recommend(users, **kw)
        assert calls == [len(users)], kw
        want_i, want_s = _on_the_fly(m, users, **kw)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_s, want_s)
    np.testing.assert_array_equal(m.recommend(users, k=K + 1)[0][:, :K], m.table.items[users])
    hist = {r: [np.flatnonzero(m.history[r][u].toarray()) for u in users] for r in m.relations}
    h_i, h_s = m.recommend_from_history(hist, k=K)  # a history is scored, never looked up
    np.testing.assert_array_equal(h_i, m.table.items[users])
    np.testing.assert_allclose(h_s, m.table.scores[users], rtol=1e-6)
    with pytest.raises(IndexError):
        m.recommend([N_U], k=2)


def test_table_k_is_checked_and_zero_builds_none():
    assert _fit("linear", table_k=0).table is None
    with pytest.raises(ValueError, match="table_k"):
        _fit("linear", table_k=-1)


@pytest.mark.parametrize("kind", ["cascade", "gfcf"])
def test_table_save_load_round_trip_and_checksum(kind, tmp_path):
    m = _fit(kind)
    m.save(tmp_path / "m")
    back = load_filter(tmp_path / "m")
    assert back.table is not None and back.table.k == K
    np.testing.assert_array_equal(back.table.items, m.table.items)
    np.testing.assert_array_equal(back.table.scores, m.table.scores)
    np.testing.assert_array_equal(back.recommend(np.arange(N_U), k=5)[0], m.recommend(np.arange(N_U), k=5)[0])
    table = tmp_path / "m" / "table.npz"
    raw = bytearray(table.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    table.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="table.npz.*checksum"):
        load_filter(tmp_path / "m")
    table.unlink()
    with pytest.raises(ValueError, match="table.npz.*checksum"):
        load_filter(tmp_path / "m")
    _fit(kind, table_k=0).save(tmp_path / "plain")
    assert not (tmp_path / "plain" / "table.npz").exists() and load_filter(tmp_path / "plain").table is None


def test_graph_source_and_served_filter_read_the_table(tmp_path, monkeypatch):
    from mixrec.funnel.sources import graph_source
    from mixrec.serve.filter_state import FilterSnapshot
    m = _fit("cascade")
    m.save(tmp_path / "m")
    snap = FilterSnapshot.load(tmp_path / "m")
    assert snap.describe()["table_k"] == K

    def refuse(self, users):
        raise AssertionError("scored on the fly")

    monkeypatch.setattr(type(m), "score_users", refuse)
    cs = graph_source(m, 5, K)
    keep = m.table.items[5] >= 0
    np.testing.assert_array_equal(cs.items, m.table.items[5][keep])
    np.testing.assert_array_equal(cs.scores, m.table.scores[5][keep].astype(np.float64))
    got = snap.recommend(np.array([5, 2]), k=4)
    np.testing.assert_array_equal(got.items, m.table.items[[5, 2], :4])
    np.testing.assert_array_equal(got.scores, m.table.scores[[5, 2], :4])
    with pytest.raises(AssertionError, match="on the fly"):
        snap.recommend(np.array([5]), k=K + 1)


def test_cli_fit_filter_writes_the_table(tmp_path):
    from mixrec.cli import main
    mats = {"view": _dense(4, 0.4), "buy": _dense(6, 0.1)}
    _dataset(mats).save(tmp_path / "d")
    assert main(["fit-filter", str(tmp_path / "d"), "--out", str(tmp_path / "m"), "--kind", "cascade",
                 "--table-k", "6"]) == 0
    m = load_filter(tmp_path / "m")
    assert m.table.k == 6
    np.testing.assert_array_equal(m.table.items, _on_the_fly(m, np.arange(N_U), 6)[0])
    assert main(["fit-filter", str(tmp_path / "d"), "--out", str(tmp_path / "m0"), "--kind", "cascade"]) == 0
    assert load_filter(tmp_path / "m0").table is None
