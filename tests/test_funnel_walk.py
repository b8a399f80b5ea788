"""Random walks with restart: vectorised walkers against a per-walker loop, the exact expectation, early stopping."""
import numpy as np

from mixrec.funnel.sources import CandidateSet
from mixrec.funnel.walk import BipartiteGraph, allocate_walkers, random_walk, walk_expand

# users 0..3, items 0..5; item 5 has no users (a walker there is stuck and goes home)
USERS = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3])
ITEMS = np.array([0, 1, 1, 2, 3, 3, 4, 0, 4])


def graph() -> BipartiteGraph:
    return BipartiteGraph.from_edges(USERS, ITEMS, 4, 6)


def naive_walk(g, seeds, per_seed, restart, steps, rng):
    """One walker at a time, same draws as the vectorised version."""
    home_idx = np.repeat(np.arange(len(seeds)), per_seed)
    pos = list(np.asarray(seeds)[home_idx])
    counts = {}
    for _ in range(steps):
        u = rng.random((3, len(pos)))
        for w in range(len(pos)):
            home = seeds[home_idx[w]]
            users = g.item_users[g.item_ptr[pos[w]]:g.item_ptr[pos[w] + 1]]
            if len(users) == 0:
                pos[w] = home
                continue
            user = users[min(int(u[1, w] * len(users)), len(users) - 1)]
            items = g.user_items[g.user_ptr[user]:g.user_ptr[user + 1]]
            arrive = items[min(int(u[2, w] * len(items)), len(items) - 1)]
            counts[(home_idx[w], arrive)] = counts.get((home_idx[w], arrive), 0) + 1
            pos[w] = home if u[0, w] < restart else arrive
    return counts


def exact_visits(g, seed, restart, steps):
    """Expected arrivals per item of one walker (dense Markov chain, loops; the reference)."""
    n = g.n_items
    p = np.zeros((n, n))
    for i in range(n):
        us = g.item_users[g.item_ptr[i]:g.item_ptr[i + 1]]
        for u in us:
            its = g.user_items[g.user_ptr[u]:g.user_ptr[u + 1]]
            for j in its:
                p[i, j] += 1.0 / len(us) / len(its)
    x = np.zeros(n)
    x[seed] = 1.0
    out = np.zeros(n)
    for _ in range(steps):
        arrive = x @ p
        out += arrive
        stuck = x.sum() - arrive.sum()
        x = (1 - restart) * arrive
        x[seed] += restart * arrive.sum() + stuck
    return out


def test_vectorised_walk_equals_the_per_walker_loop():
    g = graph()
    seeds, per = np.array([0, 3, 5]), np.array([7, 4, 2])
    res = random_walk(g, seeds, per, restart=0.3, max_steps=12, rng=np.random.default_rng(5))
    ref = naive_walk(g, seeds, per, 0.3, 12, np.random.default_rng(5))
    got = {(int(s), int(i)): int(c) for s, i, c in zip(res.seed_idx, res.items, res.visits)}
    assert got == ref
    assert res.steps == 12 and not res.early_stopped
    assert not np.any(res.seed_idx == 2)  # the walkers from item 5 never arrive anywhere


def test_visit_shares_converge_to_the_exact_expectation():
    g = graph()
    walkers, steps = 20000, 6
    res = random_walk(g, np.array([1]), np.array([walkers]), restart=0.4, max_steps=steps,
                      rng=np.random.default_rng(0))
    got = res.totals(g.n_items) / walkers
    want = exact_visits(g, 1, 0.4, steps)
    np.testing.assert_allclose(got, want, atol=0.04)
    assert got.sum() == steps  # every walker arrives somewhere at every step (no stuck items reached)


def test_early_stopping_as_in_pixie():
    g = graph()
    res = random_walk(g, np.array([1]), np.array([500]), restart=0.5, max_steps=100, n_p=3, n_v=50,
                      rng=np.random.default_rng(0))
    assert res.early_stopped and res.steps < 100
    assert (res.totals(g.n_items) >= 50).sum() >= 3
    full = random_walk(g, np.array([1]), np.array([500]), restart=0.5, max_steps=100, rng=np.random.default_rng(0))
    assert not full.early_stopped and full.steps == 100


def test_allocation_and_expand_provenance():
    np.testing.assert_array_equal(allocate_walkers(np.array([1.0, 1.0]), np.array([1, 4]), 30), [10, 20])
    assert allocate_walkers(np.array([1.0, 0.0]), np.array([1, 1]), 10).tolist() == [10, 1]
    g = graph()
    parent = CandidateSet.make([0, 2], [1.0, 1.0], "history", seed=[0, 2])
    out, res = walk_expand(g, parent, k=10, walkers=400, restart=0.3, max_steps=5, rng=np.random.default_rng(1))
    assert not np.isin(out.items, [0, 2]).any()  # seeds are excluded by default
    assert set(out.seed.tolist()) <= {0, 2}
    np.testing.assert_allclose(out.scores.sum(), res.visits[~np.isin(res.items, [0, 2])].sum() / res.visits.sum())
    assert np.all(np.diff(out.scores) <= 0)
