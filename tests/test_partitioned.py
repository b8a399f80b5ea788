"""Partitioned, disk-backed training: partitions, buckets, streamed eq. 5 weights, export, learning and resume."""
import numpy as np
import pytest
import torch

from mixrec.config import Config, ConfigError
from mixrec.data.dataset import Dataset, Edges, Relation
from mixrec.evaluate.exact import sample_recall
from mixrec.io import load_array
from mixrec.model import MixtureModel
from mixrec.retrieve import Retriever
from mixrec.train import partitioned as part
from mixrec.train import train
from mixrec.train.graph_source import GraphSource
from mixrec.train.sampler import edge_weights
from mixrec.weights import OnlineWeights, compute_weight_sets

FAST = {"dim": 8, "epochs": 3, "batch_size": 256, "negatives.batch": 32, "negatives.uniform": 32, "lr": 0.5,
        "margin": 0.3, "early_stopping.patience": 0, "components.user": 4}


def fast(**kw) -> Config:
    return Config().with_overrides({**FAST, **kw})


def test_partition_bounds_and_lookup_match_a_naive_loop():
    bounds = part.partition_bounds(10, 3)
    assert bounds.tolist() == [0, 3, 6, 10]
    idx = np.arange(10)
    naive = [next(p for p in range(3) if bounds[p] <= i < bounds[p + 1]) for i in idx]
    assert part.partition_of(idx, bounds).tolist() == naive
    assert part.snake_order(2, 3) == [(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]


def test_config_partitions_validated_and_default_is_in_memory():
    assert not Config().partitioned and Config().partitions_of("user") == 1
    assert Config().with_overrides({"partitions.user": 3}).partitioned
    with pytest.raises(ConfigError, match="partitions.user"):
        Config().with_overrides({"partitions.user": 0})


def test_every_train_edge_lands_once_in_its_bucket_with_its_weight(planted, tmp_path):
    ds, _ = planted
    cfg = fast(**{"partitions.user": 3, "partitions.item": 2, "relations.like.weight": 2.0,
                  "relations.like.degree_exponent": 0.5})
    source = GraphSource.open(ds)
    index = part.bucket_edges(source, cfg, tmp_path)
    b_user, b_item = part.partition_bounds(ds.num("user"), 3), part.partition_bounds(ds.num("item"), 2)
    got = []
    for (code, i, j), n in index.counts.items():
        rec = index.read(code, i, j)
        assert len(rec) == n and (rec["src"] < b_user[i + 1] - b_user[i]).all() and (rec["dst"] >= 0).all()
        got += zip([code] * n, (rec["src"] + b_user[i]).tolist(), (rec["dst"] + b_item[j]).tolist(),
                   rec["weight"].round(5).tolist())
    train_e = ds.split("train")
    want = []
    for code, r in enumerate(ds.relations):
        e = train_e.select(train_e.rel == code)
        rc = cfg.relation(r.name)
        w = edge_weights(e, rc.weight, rc.degree_exponent, ds.num("user"), ds.num("item"))
        want += zip([code] * len(e), e.src.tolist(), e.dst.tolist(), w.round(5).tolist())
    assert sorted(got) == sorted(want)


def two_pass_weights(blocks, n_nodes: int, n_components: int) -> np.ndarray:
    """Reference for eq. 5's normalisation: a max pass, then a shifted sum pass over the same blocks."""
    peak = torch.full((n_nodes,), -torch.inf, dtype=torch.float64)
    for node, x in blocks:
        peak.scatter_reduce_(0, node, x.amax(1), reduce="amax")
    acc = torch.zeros(n_nodes, n_components, dtype=torch.float64)
    for node, x in blocks:
        acc.index_add_(0, node, torch.exp(x - peak[node].unsqueeze(1)))
    total = acc.sum(1, keepdim=True)
    return torch.where(total > 0, acc / total.clamp_min(1e-300), torch.full_like(acc, 1 / n_components)).numpy()


def test_online_weights_equal_the_two_pass_reference():
    rng = np.random.default_rng(0)
    node = torch.from_numpy(rng.integers(0, 7, 300))
    x = torch.from_numpy(rng.normal(size=(300, 3)) * 40)  # wide range: exp would overflow without shifting
    x[node == 2] -= 900  # a node whose contributions all underflow a global shift
    ref = two_pass_weights([(node[:100], x[:100]), (node[100:], x[100:])], 8, 3)
    online = OnlineWeights(8, 3)
    for k in range(0, 300, 37):
        online.add(node[k:k + 37], x[k:k + 37])
    got = online.result()
    assert np.allclose(got, ref, atol=1e-6) and np.allclose(got[7], 1 / 3)  # node 7 has no edges: uniform


def test_exported_model_matches_an_in_memory_model_of_the_same_tables(planted, tmp_path):
    ds, _ = planted
    cfg = fast(**{"partitions.user": 3, "partitions.item": 2, "epochs": 1})
    trainer = part.PartitionedTrainer(GraphSource.open(ds), cfg, tmp_path / "work", progress=False)
    trainer.prepare()
    trainer.run_epoch(0)
    from mixrec.train.partition_export import export_model
    export_model(trainer, tmp_path / "model")
    got = MixtureModel.load(tmp_path / "model")
    tables = {t: torch.cat([torch.from_numpy(np.array(trainer.store.read(t, p)))
                            for p in range(cfg.partitions_of(t))]) for t in ds.entity_types}
    ref = MixtureModel.initialise(ds, cfg)
    ref.tables = tables
    ref_weights = compute_weight_sets(ref)
    for t in ds.entity_types:
        assert torch.allclose(got.tables[t], ref.vectors(t), atol=1e-6)
        assert np.allclose(got.weights["all"][t], ref_weights["all"][t], atol=1e-5)
        assert got.ids[t].tolist() == ds.ids[t].tolist()
    for k in ("src", "dst", "rel"):
        assert np.array_equal(np.sort(got.train_edges[k]), np.sort(getattr(ds.split("train"), k)))
    assert got.info["partitions"] == {"user": 3, "item": 2}


@pytest.mark.parametrize("cross", [0, 10_000])
def test_buckets_hold_two_partitions_and_draw_negatives_over_the_destination_type(planted, tmp_path, monkeypatch,
                                                                                  cross):
    ds, _ = planted
    cfg = fast(**{"partitions.user": 3, "partitions.item": 2, "epochs": 1, "negatives.cross_partition": cross})
    trainer = part.PartitionedTrainer(GraphSource.open(ds), cfg, tmp_path, progress=False)
    trainer.prepare()
    seen = []
    real_step = part.train_step

    def spy(batch, tables, states, c):
        (_, i), = [k for k in trainer.store.loaded if k[0] == "user"]
        (_, j), = [k for k in trainer.store.loaded if k[0] == "item"]
        seen.append((i, j, tables["src"].shape[0], tables["dst"].shape[0], batch.src.max(), batch.dst.max(),
                     batch.uniform.max(), len(states["dst"])))
        return real_step(batch, tables, states, c)

    monkeypatch.setattr(part, "train_step", spy)
    rec = trainer.run_epoch(0)
    assert rec["buckets"] == 6 and len(trainer.store.loaded) == 0
    assert {(i, j) for i, j, *_ in seen} == {(i, j) for i in range(3) for j in range(2)}
    n_items = ds.num("item")
    for i, j, n_s, n_d, s, d, u, n_state in seen:
        local = trainer.store.size("item", j)
        assert n_s == trainer.store.size("user", i) and s < n_s and d < local and n_state == n_d
        if cross:  # the whole item type: own rows, then the other partition's rows
            assert n_d == n_items and u < n_d
        else:
            assert n_d == local and u < local
    if cross:
        assert any(u >= trainer.store.size("item", j) for _, j, *_, u, _ in seen)


@pytest.mark.parametrize("cross", [0, 10_000])
def test_a_bucket_updates_the_other_destination_partition_only_through_the_pool(planted, tmp_path, cross):
    ds, _ = planted
    cfg = fast(**{"partitions.item": 2, "epochs": 1, "negatives.cross_partition": cross})
    trainer = part.PartitionedTrainer(GraphSource.open(ds), cfg, tmp_path, progress=False)
    trainer.prepare()
    other = np.array(trainer.store.read("item", 1))
    own = np.array(trainer.store.read("item", 0))
    _, done = trainer.run_bucket(0, ("user", "item"), 0, 0)
    trainer.store.release()
    assert done > 0 and not np.array_equal(np.array(trainer.store.read("item", 0)), own)
    changed = np.abs(np.array(trainer.store.read("item", 1)) - other).max(axis=(1, 2)) > 0
    state = np.array(load_array(trainer.store.paths("item", 1)[1]))
    if cross:  # negatives from partition 1 were trained and their changes (and Adagrad state) written back
        assert changed.mean() > 0.5 and np.array_equal(state > 0, changed)
    else:
        assert not changed.any() and not state.any()


def test_partitioned_training_learns_and_serves(planted, tmp_path):
    ds, _ = planted
    ds.save(tmp_path / "data")
    cfg = fast(epochs=4, **{"partitions.user": 2, "partitions.item": 2})
    untrained = train(tmp_path / "data", cfg.with_overrides({"epochs": 0}), tmp_path / "m0", progress=False)
    model = train(tmp_path / "data", cfg, tmp_path / "m", progress=False)  # streamed from the directory
    r0 = sample_recall(untrained, ds, "test", 20, 10_000, 0)
    r1 = sample_recall(model, ds, "test", 20, 10_000, 0)
    assert r1 > 2 * r0 and r1 > 0.15
    losses = [h["loss"] for h in model.info["history"]]
    assert losses[-1] < losses[0]
    cand = Retriever(MixtureModel.load(tmp_path / "m")).recommend([0, 1], k=10)
    assert cand.items.shape == (2, 10)


def test_resume_continues_to_the_same_model(planted, tmp_path):
    ds, _ = planted
    cfg = fast(epochs=2, **{"partitions.user": 2})
    straight = train(ds, cfg, tmp_path / "a", progress=False)
    train(ds, cfg.with_overrides({"epochs": 1}), tmp_path / "b", progress=False)
    resumed = train(ds, cfg, tmp_path / "b", resume=True, progress=False)
    for t in straight.tables:
        assert torch.equal(straight.tables[t], resumed.tables[t])
    with pytest.raises(ValueError, match="different configuration"):
        train(ds, cfg.with_overrides({"dim": 4}), tmp_path / "b", resume=True, progress=False)


def test_same_type_relation_and_unsupported_edge_weight(tmp_path):
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 40, 300), rng.integers(0, 40, 300)
    ds = Dataset({"user": np.arange(40)}, [Relation("friend", "user", "user")],
                 {"train": Edges(src, dst, np.zeros(300, np.int64), np.ones(300, np.float32))})
    model = train(ds, fast(epochs=1, **{"partitions.user": 2}), tmp_path / "m", progress=False)
    assert model.tables["user"].shape == (40, 4, 8) and model.weights["all"]["user"].shape == (40, 4)
    with pytest.raises(ValueError, match="only the 'default' edge weight"):
        train(ds, fast(**{"partitions.user": 2, "relations.friend.edge_weight": "other"}), tmp_path / "n",
              progress=False)


def test_edge_chunks_split_each_bucket_into_disjoint_parts_visited_in_rounds(planted, tmp_path, monkeypatch):
    rec = np.arange(103)
    parts = [part._chunk(rec, c, 4, [0, 1]) for c in range(4)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(103)) and {len(p) for p in parts} == {25, 26}
    assert not np.array_equal(parts[0], np.arange(25))  # random parts, not the file's order
    assert part._chunk(rec, 0, 1, [0]) is rec
    ds, _ = planted
    cfg = fast(**{"partitions.user": 2, "partitions.item": 2, "epochs": 1, "edge_chunks": 3})
    trainer = part.PartitionedTrainer(GraphSource.open(ds), cfg, tmp_path, progress=False)
    trainer.prepare()
    visits = []
    real = trainer.run_bucket
    monkeypatch.setattr(trainer, "run_bucket", lambda e, pair, i, j, chunk=0: visits.append((chunk, i, j))
                        or real(e, pair, i, j, chunk=chunk))
    rec = trainer.run_epoch(0)
    assert [v[0] for v in visits] == [0] * 4 + [1] * 4 + [2] * 4  # every bucket's first part, then the second
    assert rec["loss"] > 0
    trained = sum(real(0, ("user", "item"), i, j, chunk=c)[1] for c in range(3) for i in range(2) for j in range(2))
    assert trained == len(ds.split("train"))


def test_heap_settings_apply_where_glibc_is_present():
    import ctypes.util

    from mixrec.train.memory import keep_freed_heap
    assert keep_freed_heap() == bool(ctypes.util.find_library("c") and _is_glibc())


def _is_glibc() -> bool:
    import platform
    return platform.libc_ver()[0] == "glibc"


def test_store_adds_row_changes_in_memory_and_on_disk(tmp_path):
    cfg = fast(**{"partitions.item": 2})
    store = part.PartitionStore(tmp_path, cfg, {"item": 10})
    store.initialise()
    rows, d_tab, d_state = np.array([0, 3]), np.ones((2, 1, 8), np.float32), np.array([2.0, 5.0], np.float32)
    on_disk = np.array(store.read("item", 1))
    store.add_rows("item", 1, rows, d_tab, d_state)  # not loaded: rewritten on disk
    got = np.array(store.read("item", 1))
    assert np.allclose(got[rows], on_disk[rows] + 1) and np.array_equal(np.delete(got, rows, 0),
                                                                        np.delete(on_disk, rows, 0))
    assert np.array_equal(np.array(load_array(store.paths("item", 1)[1]))[rows], d_state)
    tab, state = store.get("item", 0)  # loaded: changed in memory (and written back on release)
    before = tab.clone()
    store.add_rows("item", 0, rows, d_tab, d_state)
    assert torch.allclose(tab[rows], before[rows] + 1) and torch.equal(state[rows], torch.from_numpy(d_state))
    tab_rows, state_rows = store.read_rows("item", 0, rows)
    assert np.allclose(tab_rows, tab[rows].numpy()) and np.array_equal(state_rows, d_state)
