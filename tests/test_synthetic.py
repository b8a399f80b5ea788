"""Tests of the synthetic log generator: determinism, schema, planted structure, relations and splits."""
import re
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixrec.data import synthetic
from mixrec.data.synthetic import SyntheticSpec, generate, generate_planted, write
from mixrec.evaluate.labels import load_item_labels

SMALL = SyntheticSpec(n_users=600, n_items=800, n_clusters=12, seed=3)


@pytest.fixture(scope="module")
def planted():
    return generate_planted(SMALL)


def columns(log):
    return {c: log.column(c).to_pylist() for c in log.column_names}


def clicks_per_user_cluster(log, items, spec):
    """(n_users, n_clusters) click counts, from the log and the item table only."""
    cluster_of = dict(zip(items.column("item_id").to_pylist(),
                          (int(g[5:]) for g in items.column("genres").to_pylist())))
    counts = np.zeros((spec.n_users, spec.n_clusters))
    cols = columns(log)
    for u, i, e in zip(cols["user_id"], cols["item_id"], cols["event"]):
        if e == spec.relations[0]:
            counts[int(u[1:]), cluster_of[i]] += 1
    return counts


def top4_share(counts):
    return np.sort(counts, axis=1)[:, ::-1][:, :4].sum(axis=1) / counts.sum(axis=1)


def test_deterministic_in_seed():
    a_log, a_items = generate(SMALL)
    b_log, b_items = generate(SMALL)
    assert a_log.equals(b_log) and a_items.equals(b_items)
    c_log, _ = generate(SyntheticSpec(n_users=600, n_items=800, n_clusters=12, seed=4))
    assert not a_log.equals(c_log)


def test_columns_and_dtypes(planted):
    log, items, _ = planted
    assert log.schema.names == ["user_id", "item_id", "event", "timestamp", "split"]
    assert [str(t) for t in log.schema.types] == ["string", "int64", "string", "int64", "string"]
    cols = columns(log)
    assert all(re.fullmatch(r"u\d{6}", u) for u in cols["user_id"])
    assert set(cols["event"]) == {"click", "like"} and set(cols["split"]) == {"train", "test"}
    assert items.schema.names == ["item_id", "genres"] and items.schema.types[0] == pa.int64()
    ids = items.column("item_id").to_pylist()
    assert len(set(ids)) == len(ids) == SMALL.n_items
    assert set(cols["item_id"]) <= set(ids)
    assert set(items.column("genres").to_pylist()) == {f"topic{c:02d}" for c in range(12)}
    assert len({u for u in cols["user_id"]}) == SMALL.n_users


def test_timestamps_strictly_increase_per_user(planted):
    cols = columns(planted[0])
    last = {}
    for u, t in zip(cols["user_id"], cols["timestamp"]):
        assert t > last.get(u, -1)
        last[u] = t


def test_clicks_per_user_within_bounds(planted):
    log, items, _ = planted
    n = clicks_per_user_cluster(log, items, SMALL).sum(axis=1)
    assert n.max() <= SMALL.edges_per_user[1]
    assert np.mean(n >= SMALL.edges_per_user[0]) > 0.95  # repeats removed, so a few may fall short


def test_users_concentrate_in_planted_clusters(planted):
    log, items, truth = planted
    counts = clicks_per_user_cluster(log, items, SMALL)
    assert np.mean(top4_share(counts) > 0.8) > 0.97
    # every non-noise row comes from one of its user's planted interests, whose cluster holds the item
    rows = truth.edge_cluster >= 0
    assert np.mean(~rows) == pytest.approx(SMALL.noise, abs=0.03)
    item_idx = np.searchsorted(truth.item_ids, log.column("item_id").to_numpy())
    assert np.array_equal(truth.item_cluster[item_idx][rows], truth.edge_cluster[rows])
    assert all(c in set(truth.interests[u]) for u, c in zip(truth.edge_user[rows], truth.edge_cluster[rows]))
    assert ((truth.interests >= 0).sum(axis=1) >= 2).all() and truth.interests.shape[1] == 4
    assert np.allclose(truth.proportions.sum(axis=1), 1.0)
    # control: with pure noise the same statistic fails, so it measures the planted structure
    noisy = SyntheticSpec(n_users=600, n_items=800, n_clusters=12, seed=3, noise=1.0)
    log_n, items_n = generate(noisy)
    assert np.mean(top4_share(clicks_per_user_cluster(log_n, items_n, noisy)) > 0.8) < 0.1


def test_popularity_is_skewed():
    def top_decile_share(spec):
        log, _ = generate(spec)
        cols = columns(log)
        counts = defaultdict(int)
        for i, e in zip(cols["item_id"], cols["event"]):
            counts[i] += e == "click"
        c = sorted(counts.values(), reverse=True) + [0] * (spec.n_items - len(counts))
        return sum(c[: spec.n_items // 10]) / sum(c)

    skewed = top_decile_share(SyntheticSpec(n_users=1500, seed=1))
    flat = top_decile_share(SyntheticSpec(n_users=1500, seed=1, popularity_exponent=0.0, noise=1.0))
    assert skewed > 0.35
    assert flat < 0.2


def test_likes_are_subset_and_prefer_strongest_interest(planted):
    log, _, truth = planted
    cols = columns(log)
    click_time = {}
    for u, i, e, t in zip(cols["user_id"], cols["item_id"], cols["event"], cols["timestamp"]):
        if e == "click":
            click_time[(u, i)] = t
    likes = [(u, i, t) for u, i, e, t in zip(cols["user_id"], cols["item_id"], cols["event"], cols["timestamp"])
             if e == "like"]
    assert 0 < len(likes) < 0.5 * len(click_time)
    assert all((u, i) in click_time and t > click_time[(u, i)] for u, i, t in likes)
    event = np.array(cols["event"])
    strongest = truth.edge_cluster == truth.interests[truth.edge_user, 0]
    assert strongest[event == "like"].mean() > strongest[event == "click"].mean() + 0.2


def test_further_relations_are_sparser_subsets():
    spec = SyntheticSpec(n_users=400, n_items=500, n_clusters=8, relations=("view", "like", "share"))
    cols = columns(generate(spec)[0])
    pairs = defaultdict(set)
    for u, i, e in zip(cols["user_id"], cols["item_id"], cols["event"]):
        pairs[e].add((u, i))
    assert pairs["share"] <= pairs["view"] and pairs["like"] <= pairs["view"]
    assert 0 < len(pairs["share"]) < len(pairs["like"]) < len(pairs["view"])
    single = columns(generate(SyntheticSpec(n_users=50, n_items=100, n_clusters=4, relations=("buy",)))[0])
    assert set(single["event"]) == {"buy"}


def test_split_is_last_fraction_per_user(planted):
    cols = columns(planted[0])
    per_user = defaultdict(list)
    for u, t, s in zip(cols["user_id"], cols["timestamp"], cols["split"]):
        per_user[u].append((t, s))
    for rows in per_user.values():
        rows.sort()
        n = len(rows)
        n_test = max(int(n * 0.2), 1 if n >= 5 else 0)
        assert [s for _, s in rows] == ["train"] * (n - n_test) + ["test"] * n_test
    assert cols["split"].count("test") / len(cols["split"]) == pytest.approx(0.2, abs=0.03)
    none = columns(generate(SyntheticSpec(n_users=50, n_items=100, n_clusters=4, test_fraction=0.0))[0])
    assert set(none["split"]) == {"train"}


def test_small_chunks_keep_invariants(monkeypatch):
    monkeypatch.setattr(synthetic, "CHUNK_DRAWS", 500)
    spec = SyntheticSpec(n_users=300, n_items=400, n_clusters=6, seed=9)
    log, items, truth = generate_planted(spec)
    assert np.array_equal(np.unique(truth.edge_user), np.arange(spec.n_users))
    assert np.all(np.diff(truth.edge_user) >= 0)
    assert np.mean(top4_share(clicks_per_user_cluster(log, items, spec)) > 0.8) > 0.95


def test_write_round_trip(tmp_path):
    paths = write(SMALL, tmp_path / "out")
    assert set(paths) == {"events", "items"} and all(p.is_file() for p in paths.values())
    log, items = generate(SMALL)
    assert pq.read_table(paths["events"]).equals(log)
    raw_ids = items.column("item_id").to_numpy()[::-1].copy()  # any dense order of the dataset's items
    lab = load_item_labels(paths["items"], raw_ids)
    got = [lab.names[j] for j in lab.indices]
    want = dict(zip(items.column("item_id").to_pylist(), items.column("genres").to_pylist()))
    assert np.array_equal(lab.counts(), np.ones(len(raw_ids)))
    assert got == [want[i] for i in raw_ids.tolist()]


@pytest.mark.parametrize("kwargs", [dict(n_clusters=0), dict(n_clusters=900, n_items=800),
                                    dict(interests_per_user=(3, 2)), dict(edges_per_user=(0, 5)),
                                    dict(relations=()), dict(relations=("a", "a")), dict(noise=1.5),
                                    dict(test_fraction=1.0)])
def test_invalid_spec_raises(kwargs):
    with pytest.raises(ValueError):
        SyntheticSpec(**kwargs)
