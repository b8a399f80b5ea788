"""bench/quality_doc.py: merging row files keeps one copy of a repeated baseline row, and only of an identical one."""
from __future__ import annotations

import pytest

from conftest import load_bench


@pytest.fixture()
def qd(monkeypatch):
    yield from load_bench(monkeypatch, "quality_doc")


def _row(model, recall, dataset="ml1m", ranking="exact", protocol=None):
    return {"dataset": dataset, "model": model, "ranking": ranking, "protocol": protocol,
            "metrics": {"recall@20": recall, "div@50": 0.4}}


def test_repeated_baselines_collapse_to_the_first(qd):
    rows = [_row("mixture A", 0.25), _row("popularity", 0.11), _row("ALS", 0.2585),
            _row("single B", 0.26), _row("popularity", 0.11), _row("ALS", 0.2585),
            _row("mixture A", 0.25)]  # a model row repeated is two runs, not a baseline: both stay
    out = qd.dedup_baselines(rows)
    assert [(r["model"], r["metrics"]["recall@20"]) for r in out] == [
        ("mixture A", 0.25), ("popularity", 0.11), ("ALS", 0.2585), ("single B", 0.26), ("mixture A", 0.25)]


def test_baselines_that_differ_stay(qd):
    rows = [_row("ALS", 0.2585), _row("ALS", 0.2600),                      # other figures
            _row("ALS", 0.2585, dataset="gowalla"),                         # other dataset
            _row("ALS", 0.2585, protocol="refit"),                          # other protocol
            _row("ALS (all behaviours)", 0.11, dataset="tmall_mb"),
            _row("ALS (all behaviours)", 0.11, dataset="tmall_mb")]
    out = qd.dedup_baselines(rows)
    assert len(out) == 5
    assert out[:4] == rows[:4]
