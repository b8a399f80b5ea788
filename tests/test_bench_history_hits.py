"""bench/history_hits.py: recall split by whether the test item is in the user's history, against a naive loop."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_bench


@pytest.fixture()
def hh(monkeypatch):
    yield from load_bench(monkeypatch, "history_hits")


def _naive(users, topk, test_src, test_dst, hist_src, hist_dst):
    lists = {int(u): {int(i) for i in row if i >= 0} for u, row in zip(users, topk)}
    hist = set(zip(hist_src.tolist(), hist_dst.tolist()))
    rep = [(s, d) in hist for s, d in zip(test_src.tolist(), test_dst.tolist())]
    hit = [d in lists[s] for s, d in zip(test_src.tolist(), test_dst.tolist())]
    slots = [(int(u), int(i)) in hist for u, row in zip(users, topk) for i in row if i >= 0]
    r = [h for h, p in zip(hit, rep) if p]
    n = [h for h, p in zip(hit, rep) if not p]
    return {"test_pairs": len(hit), "repeat_share": np.mean(rep), "recall": np.mean(hit),
            "recall_repeat": np.mean(r), "recall_new": np.mean(n),
            "hits_from_repeats": sum(r) / max(1, sum(hit)), "history_slots": np.mean(slots)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_hits_matches_a_naive_loop(hh, seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, k = 30, 40, 6
    users = np.sort(rng.choice(n_users, 20, replace=False))
    topk = np.stack([rng.choice(n_items, k, replace=False) for _ in users])
    topk[0, -2:] = -1  # an unfilled list
    test_src = rng.choice(users, 50)
    test_dst = rng.integers(0, n_items, 50)
    hist_src = rng.integers(0, n_users, 400)
    hist_dst = rng.integers(0, n_items, 400)
    hist_src[:10], hist_dst[:10] = test_src[:10], test_dst[:10]  # some repeats for sure
    got = hh.split_hits(users, topk, test_src, test_dst, hist_src, hist_dst, n_items)
    want = _naive(users, topk, test_src, test_dst, hist_src, hist_dst)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key]), key
