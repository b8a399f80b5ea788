"""The graph-filter funnel source, the quota union and per-source contributions against naive loops."""
import numpy as np
import pytest

from mixrec.filters import make_filter
from mixrec.funnel import Funnel, Query, QueryError
from mixrec.funnel.contrib import contributions, quota_union
from mixrec.funnel.sources import SOURCE_CODE
from mixrec.train import train
from tests.conftest import small_config


def _lists(rng, b, ks, n_items):
    out = []
    for k in ks:
        l_ = rng.integers(0, n_items, (b, k))
        l_[rng.random((b, k)) < 0.15] = -1
        out.append(l_)
    return out


def _naive_union(lists, quotas):
    rows = []
    for u in range(lists[0].shape[0]):
        seen, row = {}, []
        for s, (l_, q) in enumerate(zip(lists, quotas)):
            for it in l_[u, :q]:
                it = int(it)
                if it >= 0:
                    seen[it] = seen.get(it, 0) | (1 << s)
                if it >= 0 and it not in [r for r, _ in row]:
                    row.append((it, None))
        rows.append([(it, seen[it]) for it, _ in row])
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quota_union_matches_a_loop(seed):
    rng = np.random.default_rng(seed)
    lists, quotas = _lists(rng, 7, (6, 4, 5), 9), (4, 4, 2)
    items, via = quota_union(lists, quotas)
    for u, want in enumerate(_naive_union(lists, quotas)):
        keep = items[u] >= 0
        assert list(zip(items[u][keep].tolist(), via[u][keep].tolist())) == want
        assert (via[u][~keep] == 0).all()


@pytest.mark.parametrize("seed", [0, 3])
def test_contributions_match_a_loop(seed):
    rng = np.random.default_rng(seed)
    lists, quotas = _lists(rng, 9, (6, 5, 4), 12), (5, 5, 3)
    items, via = quota_union(lists, quotas)
    truth_rows = [sorted(set(rng.integers(0, 12, rng.integers(0, 4)).tolist())) for _ in range(9)]
    indptr = np.r_[0, np.cumsum([len(t) for t in truth_rows])]
    t_items = np.array([i for t in truth_rows for i in t], np.int64)
    got = contributions(items, via, ["a", "b", "c"], (indptr, t_items))
    for s, name in enumerate("abc"):
        members = [set(int(x) for x in lists[s][u, :quotas[s]] if x >= 0) for u in range(9)]
        others = [set().union(*(set(int(x) for x in lists[o][u, :quotas[o]] if x >= 0) for o in range(3) if o != s))
                  for u in range(9)]
        alone = sum(len(set(truth_rows[u]) & members[u]) for u in range(9))
        only = sum(len(set(truth_rows[u]) & (members[u] - others[u])) for u in range(9))
        users = sum(bool(set(truth_rows[u]) & members[u]) for u in range(9))
        assert got[name] == {"alone": alone, "only": only, "users_alone": users}
    union = [set(int(x) for s in range(3) for x in lists[s][u, :quotas[s]] if x >= 0) for u in range(9)]
    assert got["blend"]["alone"] == sum(len(set(truth_rows[u]) & union[u]) for u in range(9))


@pytest.fixture(scope="module")
def funnel(planted, tmp_path_factory):
    ds, _ = planted
    model = train(ds, small_config(1), tmp_path_factory.mktemp("blend") / "m", progress=False)
    rels = [r.name for r in ds.relations]
    filt = make_filter("linear").fit(ds, relations=rels, target=rels[-1])
    return Funnel(model, filters={"default": filt}), filt


def test_graph_source_is_the_filter_models_top_k(funnel):
    f, filt = funnel
    res = f.run(Query.source().graph(k=12), 5).candidates
    items, scores = filt.recommend([5], k=12)
    keep = items[0] >= 0
    assert res.items.tolist() == items[0][keep].tolist()
    np.testing.assert_allclose(res.scores, scores[0][keep], rtol=1e-6)
    assert all(res.sources_of(i) == ["graph"] for i in range(len(res)))


def test_funnel_blend_equals_the_quota_union(funnel):
    f, _ = funnel
    subs = {"mixture": Query.source().mixture(k=20), "graph": Query.source().graph(k=20),
            "history": Query.source().history(n=10), "popular": Query.source().popular(k=20)}
    quotas = (8, 8, 5, 4)
    names = list(subs)
    q = subs["mixture"].union(*(subs[n] for n in names[1:]), weights=[1.0] * 4, quotas=list(quotas))
    for user in (0, 3, 11):
        got = f.run(q, user).candidates
        lists = []
        for n in names:
            c = f.run(subs[n], user).candidates.sorted()
            lists.append(np.pad(c.items, (0, 20 - len(c)), constant_values=-1)[None, :])
        items, via = quota_union(lists, quotas)
        keep = items[0] >= 0
        want = dict(zip(items[0][keep].tolist(), via[0][keep].tolist()))
        code = {s: SOURCE_CODE[n] for s, n in enumerate(names)}
        want = {it: sum(1 << code[s] for s in range(4) if v >> s & 1) for it, v in want.items()}
        assert dict(zip(got.items.tolist(), got.via.tolist())) == want


def test_graph_op_names_a_missing_model(funnel):
    f, _ = funnel
    with pytest.raises(QueryError, match="no graph-filter model named 'other'"):
        f.run(Query.source().graph(model="other"), 0)
