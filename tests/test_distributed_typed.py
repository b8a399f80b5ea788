"""torchrun data-parallel training on the typed Explore-like graph: per-type tables, negatives and eq. 5 weights."""
import os
import subprocess
import sys

import numpy as np
import pytest

from mixrec.config import Config
from mixrec.data.explore import generate_explore, write_explore
from mixrec.data.schema import ingest_graph, with_task_weights
from mixrec.model import MixtureModel
from mixrec.train.sampler import epoch_schedule, make_batches, training_edges
from tests.test_typed_graph import literal_eq5
from tests.test_typed_graph_workers import SPEC, naive_planted_precision

TRAIN = {"dim": 16, "epochs": 4, "batch_size": 256, "negatives.batch": 64, "negatives.uniform": 64,
         "components.consumer": 3, "components.creator": 1, "components.media": 1, "early_stopping.patience": 0,
         "distributed.sync_every": 2, "seed": 0}


@pytest.fixture(scope="module")
def explore(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    return ingest_graph(write_explore(SPEC, root / "raw"), root / "data", progress=False), root / "data"


def test_each_rank_stride_draws_negatives_of_the_positive_destination_type(explore):
    """The batches rank r of 2 trains (what DistributedTrainer asks make_batches for): every relation's edges
    exactly once over both ranks, and uniform negatives indexing that relation's destination table."""
    ds, _ = explore
    cfg = with_task_weights(Config().with_overrides(TRAIN), ds)
    edges = training_edges(ds, cfg)
    schedule = epoch_schedule(edges, cfg, 0)
    train = ds.split("train")
    seen: dict[str, list] = {r.name: [] for r in ds.relations}
    for rank in range(2):
        for k, b in enumerate(make_batches(edges, cfg, 0, schedule, start=rank, stride=2)):
            rel = ds.relations[schedule[rank + 2 * k][0]]
            assert (b.source_type, b.target_type) == (rel.source_type, rel.target_type)
            assert 0 <= b.uniform.min() and b.uniform.max() < ds.num(rel.target_type), rel.name
            seen[rel.name] += list(zip(b.src.tolist(), b.dst.tolist()))
    for code, r in enumerate(ds.relations):
        mine = train.select(train.rel == code)
        assert sorted(seen[r.name]) == sorted(zip(mine.src.tolist(), mine.dst.tolist())), r.name
    assert {r.target_type for r in ds.relations} == {"creator", "media"}
    assert ds.num("creator") != ds.num("media")  # a negative drawn from the wrong table would be out of range


def test_torchrun_two_processes_train_the_typed_graph(explore, tmp_path):
    ds, data = explore
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mixrec.train.distributed", str(data), "--out", str(tmp_path / "model"), "--quiet"]
    for k, v in TRAIN.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 processes" in done.stdout
    model = MixtureModel.load(tmp_path / "model")
    hist = model.info["history"]
    assert len(hist) == 4 and hist[-1]["processes"] == 2 and hist[-1]["loss"] < hist[0]["loss"]
    # (a) every entity type, at its configured component count
    assert {t: model.components(t) for t in model.tables} == {"consumer": 3, "creator": 1, "media": 1}
    assert {t: model.num(t) for t in model.tables} == {t: len(ds.ids[t]) for t in ds.ids}
    # (b) consumer->creator retrieval finds the planted interests far above chance
    precision, chance = naive_planted_precision(model, generate_explore(SPEC)[1])
    assert precision > 2 * chance, (precision, chance)
    # (c) eq. 5 weights for every type, equal to the loop over every edge of a node across relations
    want = literal_eq5(model, list(range(len(model.relations))), model.config.weight_sets["all"].gamma)
    got = model.weights["all"]
    assert set(got) == set(want) == {"consumer", "creator", "media"}
    for t in want:
        assert got[t].shape == (model.num(t), model.components(t))
        np.testing.assert_allclose(got[t], want[t], rtol=1e-4, atol=1e-6)
    assert np.ptp(got["consumer"], axis=1).max() > 0.1  # consumers' components are weighted unequally
