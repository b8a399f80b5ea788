"""bench/filters.py's --grid overrides (values replace one grid entry on the side it already has); bench/blend.py's route timing."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture()
def bench_filters(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_filters_under_test", BENCH / "filters.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_filters_under_test", None)


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
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_blend_under_test", BENCH / "blend.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_blend_under_test", None)


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
