"""bench/filters.py's --grid overrides: values replace one grid entry on the side (refit or scoring) it already has."""
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
