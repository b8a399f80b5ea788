"""bench/mixture_diagnostics.py: component agreement against a naive loop over edges."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from mixture_diagnostics import agreement  # noqa: E402


def _naive(users, rel, win, n_users, c, first, seed):
    half = (rel == first) & (np.random.default_rng(seed).random(len(users)) < 0.5)
    counts = [[0] * c for _ in range(n_users)]
    for u, w, h in zip(users, win, half):
        if h:
            counts[u][w] += 1
    out = {}
    for code in sorted(set(rel.tolist())):
        hit = tot = 0
        for u, r, w, h in zip(users, rel, win, half):
            if r == code and not h and sum(counts[u]) > 0:
                tot += 1
                hit += int(w == int(np.argmax(counts[u])))
        out[code] = hit / tot if tot else float("nan")
    return out


def test_agreement_matches_a_naive_loop():
    rng = np.random.default_rng(3)
    users, rel, win = rng.integers(0, 30, 2000), rng.integers(0, 3, 2000), rng.integers(0, 4, 2000)
    got, want = agreement(users, rel, win, 30, 4, 0, seed=5), _naive(users, rel, win, 30, 4, 0, 5)
    assert got.keys() == want.keys()
    for k in got:
        assert abs(got[k] - want[k]) < 1e-12


def test_agreement_is_one_when_every_user_has_one_component_and_chance_when_random():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, 20000)
    rel = rng.integers(0, 2, 20000)
    assert agreement(users, rel, users % 4, 50, 4, 0) == {0: 1.0, 1: 1.0}
    rand = agreement(users, rel, rng.integers(0, 4, 20000), 50, 4, 0)
    assert all(0.2 < v < 0.4 for v in rand.values())  # about 1/4, a little above (the mode is fitted)
