"""Graph-filter models against dense numpy formulas on a small random matrix; storage, fold-in, exclusion."""
from __future__ import annotations

import numpy as np
import pytest

from mixrec.data.dataset import Dataset, Edges, Relation
from mixrec.filters import KINDS, load_filter, make_filter
from mixrec.filters.spectral import SpectralFilter, chebyshev_coefficients, randomized_svd

N_U, N_I = 30, 20


def _dense(seed=0, p=0.2, n_u=N_U, n_i=N_I):
    rng = np.random.default_rng(seed)
    r = (rng.random((n_u, n_i)) < p).astype(np.float64)
    r[np.arange(n_u), rng.integers(0, n_i, n_u)] = 1  # every user has an item
    return r


def _dataset(mats: dict[str, np.ndarray]) -> Dataset:
    rels = list(mats)
    parts = []
    for code, m in enumerate(mats.values()):
        u, i = np.nonzero(m)
        parts.append((u, i, np.full(len(u), code)))
    src, dst, rel = (np.concatenate([p[j] for p in parts]) for j in range(3))
    n_u, n_i = next(iter(mats.values())).shape
    edges = Edges(src.astype(np.int64), dst.astype(np.int64), rel.astype(np.int64), np.ones(len(src), np.float32))
    return Dataset(ids={"user": np.arange(n_u), "item": np.arange(n_i)}, relations=[Relation(r) for r in rels],
                   edges={"train": edges})


def _norm(r):
    du, di = r.sum(1), r.sum(0)
    return r / np.sqrt(np.where(du > 0, du, np.inf))[:, None] / np.sqrt(np.where(di > 0, di, np.inf))[None, :]


@pytest.fixture(params=[True, False], ids=["dense-operator", "factored"])
def dense_mode(request, monkeypatch):
    monkeypatch.setattr(SpectralFilter, "dense_items", 10_000 if request.param else 0)
    return request.param


def test_linear_matches_numpy(dense_mode):
    r = _dense()
    m = make_filter("linear").fit(_dataset({"click": r}))
    rn = _norm(r)
    np.testing.assert_allclose(m.score_users(np.arange(N_U)), r @ rn.T @ rn, rtol=1e-4, atol=1e-6)


def test_gfcf_and_lowpass_match_numpy(dense_mode):
    r = _dense(1)
    k = 5
    rn = _norm(r)
    _, _, vt = np.linalg.svd(rn)
    v = vt[:k]
    di = r.sum(0)
    ideal = np.diag(di ** -0.5) @ v.T @ v @ np.diag(di ** 0.5)
    lp = make_filter("lowpass", rank=k).fit(_dataset({"click": r}))
    np.testing.assert_allclose(lp.score_users(np.arange(N_U)), r @ ideal, rtol=1e-4, atol=1e-5)
    g = make_filter("gfcf", rank=k, alpha=0.3).fit(_dataset({"click": r}))
    np.testing.assert_allclose(g.score_users(np.arange(N_U)), r @ (rn.T @ rn + 0.3 * ideal), rtol=1e-4, atol=1e-5)


def test_chebyshev_matches_numpy_polynomial(dense_mode):
    r = _dense(2)
    order, cut, beta = 5, 0.4, 0.3
    m = make_filter("chebyshev", order=order, cutoff=cut, beta=beta).fit(_dataset({"click": r}))
    rn = _norm(r)
    lap = np.eye(N_I) - rn.T @ rn
    x = 2 * lap - np.eye(N_I)
    # naive: T_k(X) from the recurrence on dense matrices, coefficients from the interpolation formula
    nodes = np.cos(np.pi * (np.arange(order + 1) + 0.5) / (order + 1))
    vals = ((nodes + 1) / 2 <= cut).astype(float)
    t = [np.eye(N_I), x]
    for _ in range(order - 1):
        t.append(2 * x @ t[-1] - t[-2])
    c = [(2 - (k == 0)) / (order + 1) * sum(vals[j] * np.cos(k * np.arccos(nodes[j])) for j in range(order + 1))
         for k in range(order + 1)]
    poly = sum(ck * tk for ck, tk in zip(c, t))
    di = r.sum(0)
    f = np.diag(di ** -beta) @ poly @ np.diag(di ** beta)
    np.testing.assert_allclose(m.score_users(np.arange(N_U)), r @ f, rtol=1e-3, atol=1e-4)


def test_chebyshev_plateau_matches_an_eigendecomposition(dense_mode):
    r = _dense(3)
    order, flat, beta = 6, 1.5, 0.4
    m = make_filter("chebyshev", order=order, flatness=flat, beta=beta).fit(_dataset({"click": r}))
    rn = _norm(r)
    mu, q = np.linalg.eigh(2 * (np.eye(N_I) - rn.T @ rn) - np.eye(N_I))
    nodes = np.cos(np.pi * (np.arange(order + 1) + 0.5) / (order + 1))
    plateau = np.where(nodes < 0, 0.5 + 0.5 * np.abs(nodes) ** flat, 0.5 - 0.5 * np.abs(nodes) ** flat)
    c = np.polynomial.chebyshev.chebfit(nodes, plateau, order)  # exact interpolation through K + 1 nodes
    di = r.sum(0)
    f = np.diag(di ** -beta) @ q @ np.diag(np.polynomial.chebyshev.chebval(mu, c)) @ q.T @ np.diag(di ** beta)
    np.testing.assert_allclose(m.score_users(np.arange(N_U)), r @ f, rtol=1e-4, atol=1e-5)


def test_chebyshev_plateau_of_flatness_one_is_the_linear_filter(dense_mode):
    r = _dense(4)
    m = make_filter("chebyshev", order=4, flatness=1.0).fit(_dataset({"click": r}))
    rn = _norm(r)
    np.testing.assert_allclose(m.score_users(np.arange(N_U)), r @ rn.T @ rn, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="flatness"):
        make_filter("chebyshev", flatness=-1)


def test_chebyshev_interpolates_at_nodes():
    c = chebyshev_coefficients(np.exp, 6)
    nodes = np.cos(np.pi * (np.arange(7) + 0.5) / 7)
    np.testing.assert_allclose(np.polynomial.chebyshev.chebval(nodes, c), np.exp(nodes), rtol=1e-12)


def test_randomized_svd_recovers_top_singular_vectors():
    import scipy.sparse as sp
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((400, 50)))
    v, _ = np.linalg.qr(rng.standard_normal((300, 50)))
    s = np.r_[np.linspace(10, 5, 8), np.linspace(1, 0.1, 42)]
    a = sp.csr_matrix(u * s @ v.T)
    _, s_hat, vt_hat = randomized_svd(a, 8, oversample=10, n_iter=4)
    np.testing.assert_allclose(s_hat, s[:8], rtol=1e-6)
    np.testing.assert_allclose(vt_hat.T @ vt_hat, v[:, :8] @ v[:, :8].T, atol=1e-6)  # same subspace


def test_cascade_matches_numpy():
    rng = np.random.default_rng(3)
    mats = {b: _dense(s, p) for b, s, p in (("view", 4, 0.4), ("cart", 5, 0.2), ("buy", 6, 0.1))}
    c, beta, steps = 0.4, 0.6, 3
    m = make_filter("cascade", restart=c, carry=beta, steps=steps).fit(_dataset(mats), relations=list(mats))
    assert m.target == "buy"
    l1 = lambda x: x / np.maximum(np.abs(x).sum(1, keepdims=True), 1e-300)  # noqa: E731
    s = None
    for b, r in mats.items():
        q = l1(r) if s is None else (1 - beta) * l1(r) + beta * l1(s)
        p = _norm(r).T @ _norm(r)
        s = sum(c * (1 - c) ** t * q @ np.linalg.matrix_power(p, t) for t in range(steps + 1))
    np.testing.assert_allclose(m.score_users(np.arange(N_U)), s, rtol=1e-4, atol=1e-7)
    del rng
    # own earlier-behaviour items weighted by smoothed conversion, added to the max-scaled cascade
    own, bonus, p_exp, k = 0.7, -0.4, 0.5, 3.0
    m2 = make_filter("cascade", restart=c, carry=beta, steps=steps, own=own, stage_bonus=bonus, conv_exp=p_exp,
                     smoothing=k).fit(_dataset(mats), relations=list(mats))
    conv = (mats["buy"].sum(0) + 1) / (mats["view"].sum(0) + mats["cart"].sum(0) + k)
    o = ((mats["view"] + mats["cart"]) > 0).astype(float)
    ref = s / s.max(1, keepdims=True) + own * o * (1 + bonus * mats["cart"]) * (conv / conv.max()) ** p_exp
    np.testing.assert_allclose(m2.score_users(np.arange(N_U)), ref, rtol=1e-4, atol=1e-6)


def _fitted(kind):
    if kind == "cascade":
        mats = {"view": _dense(4, 0.4), "cart": _dense(5, 0.2), "buy": _dense(6, 0.1)}
        return make_filter(kind, own=0.5, stage_bonus=0.2).fit(_dataset(mats)), mats["buy"]
    r = _dense(7)
    return make_filter(kind, **({"rank": 4} if kind in ("lowpass", "gfcf") else {})).fit(_dataset({"click": r})), r


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_save_load_round_trip(kind, tmp_path):
    m, _ = _fitted(kind)
    m.save(tmp_path / "m")
    back = load_filter(tmp_path / "m")
    assert type(back) is type(m) and back.params == m.params
    np.testing.assert_array_equal(back.score_users(np.arange(N_U)), m.score_users(np.arange(N_U)))
    arr = tmp_path / "m" / "arrays.npz"
    raw = bytearray(arr.read_bytes())
    raw[-1] ^= 0xFF
    arr.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        load_filter(tmp_path / "m")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_history_equals_training_user_and_exclusion(kind):
    m, target = _fitted(kind)
    users = np.arange(N_U)
    items, scores = m.recommend(users, k=5)
    hist = {r: [np.flatnonzero(m.history[r][u].toarray()) for u in users] for r in m.relations}
    items_h, scores_h = m.recommend_from_history(hist if kind == "cascade" else hist[m.relations[0]], k=5)
    np.testing.assert_allclose(scores_h, scores, rtol=1e-5)
    np.testing.assert_array_equal(items_h[np.isfinite(scores)], items[np.isfinite(scores)])
    # exclusion: no seen target item is returned, and the list is the top of the unexcluded scores
    full = m.score_users(users)
    for u in users:
        seen = set(np.flatnonzero(target[u]).tolist())
        got = [i for i in items[u] if i >= 0]
        assert not seen & set(got)
        ref = [i for i in np.argsort(-full[u], kind="stable") if i not in seen][:5]
        np.testing.assert_allclose(full[u, got], full[u, ref[:len(got)]], rtol=1e-6)
    _, with_seen = m.recommend(users, k=5, exclude_seen=False)
    np.testing.assert_allclose(with_seen[:, 0], full.max(1), rtol=1e-6)


def test_similar_is_one_item_history():
    m, _ = _fitted("gfcf")
    items, scores = m.similar([3, 5], k=4)
    onehot = np.zeros((2, N_I), np.float32)
    onehot[[0, 1], [3, 5]] = 1
    full = m._apply({"click": onehot})
    for row, q in enumerate([3, 5]):
        assert q not in items[row]
        ref = np.sort(np.delete(full[row], q))[::-1][:4]
        np.testing.assert_allclose(scores[row], ref, rtol=1e-5)


def test_cli_fit_filter_and_evaluate(tmp_path):
    import json

    from mixrec.cli import main
    r = _dense(8)
    rng = np.random.default_rng(8)
    test = np.zeros_like(r)
    test[np.arange(N_U), rng.integers(0, N_I, N_U)] = 1
    test[r > 0] = 0
    data = _dataset({"click": r})
    u, i = np.nonzero(test)
    data.edges["test"] = Edges(u.astype(np.int64), i.astype(np.int64), np.zeros(len(u), np.int64),
                               np.ones(len(u), np.float32))
    data.save(tmp_path / "d")
    assert main(["fit-filter", str(tmp_path / "d"), "--out", str(tmp_path / "m"), "--kind", "linear"]) == 0
    assert main(["evaluate", str(tmp_path / "m"), str(tmp_path / "d"), "--k", "5", "--json",
                 str(tmp_path / "e.json")]) == 0
    got = json.loads((tmp_path / "e.json").read_text())["relations"]["click"]
    # oracle: numpy scores, seen items masked, hand-counted recall over users with a test item
    s = r @ _norm(r).T @ _norm(r)
    s[r > 0] = -np.inf
    hits = [len(set(np.argsort(-s[x], kind="stable")[:5]) & set(np.flatnonzero(test[x]))) / test[x].sum()
            for x in range(N_U) if test[x].sum()]
    assert got["users"] == len(hits)
    np.testing.assert_allclose(got["exact"]["recall@5"], np.mean(hits), rtol=1e-6)


def test_cli_retrieve_and_similar_read_a_filter_dir(tmp_path, capsys):
    import pyarrow.parquet as pq

    from mixrec.cli import main
    r = _dense(9)
    _dataset({"click": r}).save(tmp_path / "d")
    assert main(["fit-filter", str(tmp_path / "d"), "--out", str(tmp_path / "m"), "--kind", "linear"]) == 0
    assert main(["retrieve", str(tmp_path / "m"), "--k", "4", "--out", str(tmp_path / "c.parquet"), "--quiet"]) == 0
    t = pq.read_table(tmp_path / "c.parquet").to_pydict()
    s = r @ _norm(r).T @ _norm(r)  # oracle: numpy scores with seen items masked
    s[r > 0] = -np.inf
    for u in range(N_U):
        got = [i for uu, i in zip(t["user"], t["item"]) if uu == u]
        want = [i for i in np.argsort(-s[u], kind="stable")[:4] if np.isfinite(s[u, i])]
        np.testing.assert_allclose(s[u, got], s[u, want], rtol=1e-5)
    capsys.readouterr()
    assert main(["similar", str(tmp_path / "m"), "3", "--k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    one = (np.eye(N_I)[3] @ _norm(r).T @ _norm(r))
    one[3] = -np.inf
    want = np.argsort(-one, kind="stable")[:2]
    assert line.startswith("3: ") and [int(x.split(" ")[0]) for x in line[3:].split(", ")] == want.tolist()


# ---------------------------------------------------------------- sparse and dense routes of x @ R~^T @ R~
def _through_users_dense(x, rn, rn_t):
    """The dense route as it was: two sparse x dense products over every nonzero (the exactness reference)."""
    return np.ascontiguousarray((rn_t @ (rn @ np.ascontiguousarray(x.T))).T, dtype=np.float32)


def _walk_inputs(seed):
    """(R~ as CSR, R~ dense, {name: x}): one- and several-row inputs, few nonzeros and dense, plus zeros."""
    import scipy.sparse as sp

    from mixrec.filters.base import normalise
    rng = np.random.default_rng(seed)
    r = (rng.random((60, 40)) < 0.08).astype(np.float32)
    r[:, 7] = 0  # an item nobody has
    rn = normalise(sp.csr_matrix(r))
    x_sparse = np.zeros((4, 40), np.float32)
    x_sparse[[0, 0, 1, 2, 3], [3, 7, 11, 3, 25]] = rng.random(5).astype(np.float32) + 0.1
    x_dense = rng.random((3, 40)).astype(np.float32)
    return rn, rn.toarray().astype(np.float64), {
        "one sparse": x_sparse[:1], "batch sparse": x_sparse, "one dense": x_dense[:1], "batch dense": x_dense,
        "only an unseen item": np.eye(40, dtype=np.float32)[[7]], "zeros": np.zeros((2, 40), np.float32)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_through_users_routes_equal_the_dense_products_exactly(seed):
    from mixrec.filters.base import item_side, through_users, user_side
    rn, rd, xs = _walk_inputs(seed)
    rn_t = rn.T.tocsr()
    big = float(rn.nnz)
    for name, x in xs.items():
        ref = _through_users_dense(x, rn, rn_t)
        np.testing.assert_allclose(ref, x.astype(np.float64) @ rd.T @ rd, rtol=1e-5, atol=1e-7, err_msg=name)
        for share in (0.0, 0.25, 1.0, None):
            np.testing.assert_array_equal(through_users(x, rn, rn_t, share), ref, err_msg=f"{name}, share {share}")
        mid, users = user_side(x, rn, rn_t, big)  # every route open: the sparse ones are taken
        np.testing.assert_array_equal(users, np.flatnonzero(rd @ np.abs(x).sum(0)), err_msg=name)
        np.testing.assert_array_equal(mid, rn @ np.ascontiguousarray(x.T), err_msg=name)
        for u in (users, None):  # sparse or dense second product after a sparse first one
            np.testing.assert_array_equal(item_side(mid, u, rn, rn_t, big), ref, err_msg=name)
        if np.any(rd @ np.abs(x).sum(0)):
            assert user_side(x, rn, rn_t, 0.0)[1] is None, name  # share 0: always dense


def test_routes_give_up_past_the_budget():
    from mixrec.filters.base import item_side, nnz_of_rows, user_side
    rn, rd, xs = _walk_inputs(3)
    rn_t = rn.T.tocsr()
    x = xs["one sparse"]
    cols_nnz = int((rd[:, x[0] != 0] != 0).sum())
    assert user_side(x, rn, rn_t, cols_nnz)[1] is not None
    assert user_side(x, rn, rn_t, cols_nnz - 0.5)[1] is None
    mid, users = user_side(x, rn, rn_t, cols_nnz)
    assert nnz_of_rows(rn, users) == int((rd[users] != 0).sum())
    class Unread:
        def __matmul__(self, other):
            raise AssertionError("rn_t was read")

    item_side(mid, users, rn, Unread(), nnz_of_rows(rn, users))  # within budget: only the users' rows
    with pytest.raises(AssertionError, match="rn_t was read"):
        item_side(mid, users, rn, Unread(), nnz_of_rows(rn, users) - 0.5)


def test_dense_rows_and_row_entries_match_scipy():
    from mixrec.filters.base import binary_matrix, dense_rows, row_entries
    rng = np.random.default_rng(5)
    m = binary_matrix(rng.integers(0, 9, 40), rng.integers(0, 12, 40), 9, 12)
    for rows in ([4], [0, 8, 4, 4], [], list(range(9))):
        rows = np.asarray(rows, dtype=np.int64)
        np.testing.assert_array_equal(dense_rows(m, rows), m[rows].toarray())
        r, c, pos = row_entries(m, rows)
        sub = m[rows].tocoo()
        assert sorted(zip(r.tolist(), c.tolist())) == sorted(zip(sub.row.tolist(), sub.col.tolist()))
        np.testing.assert_array_equal(m.data[pos], 1.0)


@pytest.mark.parametrize("own", [0.0, 0.7])
def test_cascade_serves_one_user_exactly_as_the_dense_route(own, monkeypatch):
    from mixrec.filters import base
    mats = {"view": _dense(4, 0.15), "cart": _dense(5, 0.08), "buy": _dense(6, 0.05)}
    m = make_filter("cascade", own=own, stage_bonus=0.2).fit(_dataset(mats))
    users = np.arange(N_U)
    monkeypatch.setattr(base, "SPARSE_SHARE", 0.0)
    dense = [m.recommend([u], k=6) for u in users] + [m.recommend(users[:5], k=6)]
    full = m.score_users(users)
    monkeypatch.setattr(base, "SPARSE_SHARE", 1.0)
    taken = []
    real = base.user_side
    monkeypatch.setattr(base, "user_side", lambda *a: taken.append(real(*a)) or taken[-1])
    sparse = [m.recommend([u], k=6) for u in users] + [m.recommend(users[:5], k=6)]
    assert all(users is not None for _, users in taken)
    for (i_d, s_d), (i_s, s_s) in zip(dense, sparse):
        np.testing.assert_array_equal(i_s, i_d)
        np.testing.assert_array_equal(s_s, s_d)
    np.testing.assert_array_equal(m.score_users(users), full)
