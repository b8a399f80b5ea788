"""bench/filters.py's --grid overrides (values replace one grid entry on the side it already has); bench/blend.py's
route timing, its ranker and its list metrics."""
from __future__ import annotations

import pytest

from conftest import load_bench


@pytest.fixture()
def bench_filters(monkeypatch):
    yield from load_bench(monkeypatch, "filters")


def test_override_replaces_values_on_their_side(bench_filters):
    g = bench_filters.GRIDS
    refit_before = dict(g["gfcf"][0])
    bench_filters.override_grids(["cascade.own=2,4.5", "gfcf.rank=16", "gfcf.alpha=0.25", "cascade.new_knob=1"])
    assert g["cascade"][1]["own"] == [2, 4.5]
    assert g["cascade"][1]["new_knob"] == [1] and "new_knob" not in g["cascade"][0]
    assert g["gfcf"][0] == {**refit_before, "rank": [16]}  # rank is refitted: stays on the refit side
    assert g["gfcf"][1]["alpha"] == [0.25] and "rank" not in g["gfcf"][1]
    assert bench_filters._product({"a": [1, 2], "b": [3]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]


@pytest.mark.parametrize("spec", ["nosuch.own=1", "cascade.own=", "cascade.own=x"])
def test_override_refuses_bad_specs(bench_filters, spec):
    with pytest.raises(SystemExit, match="--grid"):
        bench_filters.override_grids([spec])


@pytest.fixture()
def bench_blend(monkeypatch):
    yield from load_bench(monkeypatch, "blend")


def _tiny_cascade():
    import numpy as np

    from mixrec.filters import make_filter
    from tests.test_filters import _dataset, _dense
    mats = {"view": _dense(4, 0.15), "cart": _dense(5, 0.08), "buy": _dense(6, 0.05)}
    return make_filter("cascade", own=0.5).fit(_dataset(mats)), np.arange(12)


def test_graph_latency_times_both_routes_and_restores_the_share(bench_blend):
    from mixrec.filters import base
    filt, users = _tiny_cascade()
    share = base.SPARSE_SHARE
    lat = bench_blend.graph_latency(filt, users, 5)
    assert set(lat) == {"dense", "default"} and all(v.shape == (12,) and (v > 0).all() for v in lat.values())
    assert base.SPARSE_SHARE == share
    p = bench_blend.percentiles(lat["dense"])
    assert list(p) == ["p50_ms", "p95_ms", "p99_ms"] and p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]


def test_graph_latency_refuses_routes_that_disagree(bench_blend, monkeypatch):
    from mixrec.filters import base
    from mixrec.funnel.sources import CandidateSet
    filt, users = _tiny_cascade()
    share = base.SPARSE_SHARE
    monkeypatch.setattr(bench_blend, "graph_source", lambda m, u, k: CandidateSet.make(
        [u], [1.0 + base.SPARSE_SHARE], "graph"))  # the score depends on the route
    with pytest.raises(AssertionError, match="changed the graph source"):
        bench_blend.graph_latency(filt, users, 5)
    assert base.SPARSE_SHARE == share


def test_graph_latency_times_the_table_route_and_restores_it(bench_blend):
    from mixrec.filters import base
    filt, users = _tiny_cascade()
    table, share = filt.build_table(8), base.SPARSE_SHARE
    lat = bench_blend.graph_latency(filt, users, 5)
    assert set(lat) == {"dense", "default", "table"} and all((v > 0).all() for v in lat.values())
    assert filt.table is table and base.SPARSE_SHARE == share
    filt.build_table(4)  # shorter than the graph source's k: no table route
    assert set(bench_blend.graph_latency(filt, users, 5)) == {"dense", "default"}


def test_list_metrics_feature_part_and_table_off_by_hand(bench_blend):
    import numpy as np

    from blend_rank import feature_part, list_metrics, table_off
    from tests.test_filters import _dataset, _dense
    top = np.array([[3, 1, 2], [5, 6, 7], [0, -1, -1]])
    truth = (np.array([0, 2, 3, 4]), np.array([1, 2, 9, 0]))  # hits at ranks 2 and 3; none; rank 1
    m = list_metrics(top, truth, k=3)
    ideal = 1 + 1 / np.log2(3)
    assert m["hr@3"] == 2 / 3
    np.testing.assert_allclose(m["ndcg@3"], ((1 / np.log2(3) + 1 / np.log2(4)) / ideal + 0 + 1) / 3)
    data = _dataset({"view": _dense(4, 0.4), "buy": _dense(6, 0.1)})
    part, hold = feature_part(data, seed=0)
    tr = data.split("train")
    kept = part.split("train")
    assert 0 < hold.sum() < len(hold) and len(kept.src) == (~hold).sum()
    np.testing.assert_array_equal(kept.dst, tr.dst[~hold])
    part, hold = feature_part(data, seed=0, labels="one", target="buy")  # one buy per user, nothing else
    buy = tr.rel == data.relation_code("buy")
    assert not (hold & ~buy).any()
    per_user = np.bincount(tr.src[hold], minlength=data.num("user"))
    has_two = np.bincount(tr.src[buy], minlength=data.num("user")) >= 2
    np.testing.assert_array_equal(per_user, has_two.astype(int))
    assert len(part.split("train").src) == (~hold).sum()
    with pytest.raises(ValueError, match="labels"):
        feature_part(data, seed=0, labels="last", target="buy")
    filt, _ = _tiny_cascade()
    table = filt.build_table(3)
    with table_off(filt) as f:
        assert f.table is None
    with table_off(filt, off=False) as f:
        assert f.table is table
    assert filt.table is table


@pytest.fixture(scope="module")
def small_model(planted, tmp_path_factory):
    from mixrec.train import train
    from tests.conftest import small_config
    ds, _ = planted
    return ds, train(ds, small_config(1), tmp_path_factory.mktemp("blend") / "m", progress=False)


def test_folded_users_are_folded_in_from_the_edges_given_and_nothing_else_changes(bench_blend, small_model):
    import numpy as np
    import torch

    from blend_rank import FOLDIN_STEPS, folded_users
    from mixrec.foldin import FoldInSettings, fold_in_model
    ds, model = small_model
    before = {t: v.clone() for t, v in model.tables.items()}
    tr = ds.split("train")
    users = np.array([2, 5])
    got = folded_users(model, users, tr.src, tr.dst, tr.rel)
    hist = [(tr.dst[tr.src == u], tr.rel[tr.src == u]) for u in users]
    want = fold_in_model(model, [h for h, _ in hist], [r for _, r in hist], settings=FoldInSettings(steps=FOLDIN_STEPS))
    np.testing.assert_allclose(got.vectors("user")[users].numpy(), want.vectors, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.mixture_weights("user")[users], want.weights, rtol=1e-6)
    others = np.setdiff1d(np.arange(model.num("user")), users)
    assert torch.equal(got.tables["user"][others], model.tables["user"][others])
    assert got.tables["item"] is model.tables["item"]
    assert all(torch.equal(before[t], model.tables[t]) for t in before)  # the served model is untouched
    np.testing.assert_array_equal(np.delete(got.mixture_weights("user"), users, 0),
                                  np.delete(model.mixture_weights("user"), users, 0))
    one = folded_users(model, users, tr.src, tr.dst, tr.rel, batch=1)  # one fold-in per user
    for u, (h, r) in zip(users, hist):
        want = fold_in_model(model, [h], [r], settings=FoldInSettings(steps=FOLDIN_STEPS))
        np.testing.assert_allclose(one.vectors("user")[u].numpy(), want.vectors[0], rtol=1e-5, atol=1e-6)


def test_ranker_orders_the_blend_and_the_table_changes_nothing(bench_blend, small_model):
    import numpy as np

    from blend_rank import fit_blend_ranker, timed_runs
    from mixrec.filters import make_filter
    from mixrec.funnel import Funnel
    from mixrec.funnel.sources import SOURCES
    ds, model = small_model
    rels = [r.name for r in ds.relations]
    filt = make_filter("linear").fit(ds, relations=rels, target=rels[-1], table_k=12)
    q = bench_blend.blend_query([10, 10, 5, 4], True)
    fitted = fit_blend_ranker(model, ds, filt, q, 40, epochs=1, value={r: 1.0 for r in rels},
                              source_features=(False, True), log=lambda s: None)
    ranker, aware = fitted[False], fitted[True]
    assert ranker.info["users"] == 40 and ranker.first_pass is None
    assert aware.source_features and not ranker.source_features
    assert aware.final.n_in == ranker.final.n_in + len(SOURCES) and aware.info == ranker.info  # the same lists
    funnel = Funnel(model, filters={"default": filt}, rankers={"default": ranker, "sources": aware})
    queries = {"blend": q, "blend + ranker": q.rank(keep=[29], stages=["final"]),
               "blend + ranker, source ranks": q.rank(ranker="sources", keep=[29], stages=["final"])}
    users = np.array([2, 7, 11])
    lat, lists = timed_runs(funnel, filt, queries, users, 29)
    assert set(lat) == {f"{q} {t} {c}" for q in queries for t in ("table", "computed") for c in ("wall", "cpu")}
    assert all((v > 0).all() for v in lat.values())
    for j, u in enumerate(users):
        blend = funnel.run(q, int(u)).candidates
        items, scores = lists["blend"][0][j], lists["blend"][2][j]
        np.testing.assert_array_equal(items[:len(blend)], blend.items)
        np.testing.assert_array_equal(scores[:len(blend)], blend.scores)
        ranked = lists["blend + ranker"][0][j][:len(blend)]
        value = ranker.values(funnel.features.full(np.full(len(blend), u), blend.items))
        want = blend.items[np.lexsort((blend.items, -value))]  # the ranker's values, best first, ties by item
        np.testing.assert_array_equal(ranked, want)


def test_feature_model_trains_on_the_feature_part_alone_and_is_reused(bench_blend, small_model, tmp_path):
    import dataclasses

    import numpy as np

    from blend_rank import feature_model, feature_part
    ds, model = small_model
    part, hold = feature_part(ds, seed=0)
    said = []
    m = feature_model(model, part, tmp_path / "fm", said.append)
    e = m.train_edges
    kept = part.split("train")
    assert len(e["src"]) == len(kept.src) < len(ds.split("train").src)  # the held-out labels are not in it
    assert m.config.model_dump() == model.config.model_dump()
    again = feature_model(model, part, tmp_path / "fm", said.append)
    assert said and "reusing" in said[-1]
    np.testing.assert_array_equal(again.vectors("item").numpy(), m.vectors("item").numpy())
    other, _ = feature_part(ds, seed=1)
    said.clear()
    fresh = feature_model(model, other, tmp_path / "fm", said.append)
    assert not said and len(fresh.train_edges["src"]) == len(other.split("train").src)  # retrained in place
    reseeded = dataclasses.replace(model, config=model.config.with_overrides({"seed": 7}))
    feature_model(reseeded, other, tmp_path / "fm", said.append)
    assert not said  # another configuration on the same edges: trained afresh
    feature_model(reseeded, other, tmp_path / "fm", said.append)
    assert said and "reusing" in said[-1]
