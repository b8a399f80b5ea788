"""One contract, every trainer: in memory, HOGWILD workers, partitioned from disk and data-parallel (a
one-process gloo group in this process). Each is run through ``mixrec.train.train`` on the small planted graph:
callbacks, checkpoints, resume after a kill, and validation with early stopping (or a loud refusal)."""
import contextlib
import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from mixrec.data.dataset import Dataset
from mixrec.evaluate.exact import sample_recall
from mixrec.model import MixtureModel
from mixrec.train import make_trainer, train
from mixrec.train.distributed_trainer import DistributedTrainer
from mixrec.train.partitioned import PartitionedTrainer
from mixrec.train.sampler import epoch_schedule, training_edges
from mixrec.train.trainer import Trainer
from tests.conftest import small_config

KINDS = {"memory": ({}, Trainer), "hogwild": ({"workers": 2}, Trainer),
         "partitioned": ({"partitions.user": 2, "partitions.item": 2}, PartitionedTrainer),
         "distributed": ({}, DistributedTrainer)}
DETERMINISTIC = {"memory", "partitioned", "distributed"}  # HOGWILD workers race on shared rows by design
_groups = itertools.count()


class Interrupt(Exception):
    pass


def config(kind: str, epochs: int, **over):
    return small_config(epochs, **{**KINDS[kind][0], **over})


@contextlib.contextmanager
def process_group(kind: str, tmp_path):
    """A one-process gloo group around the block for the distributed kind (nothing for the others)."""
    if kind != "distributed":
        yield
        return
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / f'rdzv{next(_groups)}'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class Recorder:
    """A callback keeping every event; ``stop_after`` raises at that epoch's event (a kill after the epoch)."""

    def __init__(self, state_file=None, stop_after: int | None = None):
        self.events, self.state_file, self.stop_after, self.checkpointed = [], state_file, stop_after, []

    def __call__(self, ev):
        self.events.append(ev)
        if ev.kind == "epoch":
            if self.state_file is not None:  # the epoch's checkpoint is on disk when its event comes
                self.checkpointed.append(json.loads(self.state_file.read_text())["epochs_done"])
            if ev.epoch == self.stop_after:
                raise Interrupt()

    def epochs(self):
        return [e for e in self.events if e.kind == "epoch"]

    def batches(self, epoch: int):
        return [e for e in self.events if e.kind == "batch" and e.epoch == epoch]


def expected_batches(kind: str, ds: Dataset, cfg, out, epoch: int) -> int:
    """Batches in one epoch: the in-memory schedule, or for partitioned training one batch per ``batch_size``
    edges of each (relation, bucket) as recorded in the checkpoint."""
    if kind == "partitioned":
        counts = json.loads((out / "checkpoint" / "state.json").read_text())["buckets"]
        return sum(math.ceil(n / cfg.batch_size) for _, n in counts)
    return len(epoch_schedule(training_edges(ds, cfg), cfg, epoch))


@pytest.fixture(scope="module")
def with_valid(planted):
    """The planted dataset with a seeded 10% of its train edges moved to a valid split."""
    ds, _ = planted
    tr = ds.edges["train"]
    valid = np.random.default_rng(0).random(len(tr)) < 0.1
    return Dataset(ds.ids, ds.relations, {"train": tr.select(~valid), "valid": tr.select(valid),
                                          "test": ds.edges["test"]})


@pytest.mark.parametrize("kind", KINDS)
def test_train_picks_the_trainer(kind, planted, tmp_path):
    ds, _ = planted
    with process_group(kind, tmp_path):
        assert type(make_trainer(ds, config(kind, 1), progress=False)) is KINDS[kind][1]


@pytest.mark.parametrize("kind", KINDS)
def test_callbacks_checkpoints_and_model_directory(kind, planted, tmp_path):
    ds, _ = planted
    cfg, out = config(kind, 2), tmp_path / "m"
    rec = Recorder(out / "checkpoint" / "state.json")
    with process_group(kind, tmp_path):
        model = train(ds, cfg, out, progress=False, callbacks=[rec])
    hist = model.info["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    # one epoch event per epoch, after its checkpoint, carrying the epoch's history record
    assert [(e.epoch, e.loss, e.metrics) for e in rec.epochs()] == [(h["epoch"], h["loss"], h) for h in hist]
    assert rec.checkpointed == [1, 2]
    n_edges = len(ds.split("train").src)
    for epoch, h in zip((1, 2), hist):
        batches = rec.batches(epoch)
        assert sorted(e.batch for e in batches) == list(range(expected_batches(kind, ds, cfg, out, epoch - 1)))
        assert sum(e.loss for e in batches) / n_edges == pytest.approx(h["loss"], rel=1e-9)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["epochs_done"] == 2 and state["history"] == json.loads(json.dumps(hist))
    loaded = MixtureModel.load(out)
    assert loaded.config == cfg and loaded.info["history"] == json.loads(json.dumps(hist))
    for t in model.tables:
        assert torch.allclose(loaded.tables[t], model.vectors(t) if kind != "partitioned" else model.tables[t],
                              atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_resume_after_a_kill_after_epoch_one(kind, planted, tmp_path):
    ds, _ = planted
    cfg = config(kind, 2)
    cut, again = Recorder(stop_after=1), Recorder()
    with process_group(kind, tmp_path):
        full = train(ds, cfg, tmp_path / "full", progress=False) if kind in DETERMINISTIC else None
        with pytest.raises(Interrupt):
            train(ds, cfg, tmp_path / "cut", progress=False, callbacks=[cut])
        assert not (tmp_path / "cut" / "model.json").exists()
        assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["epochs_done"] == 1
        resumed = train(ds, cfg, tmp_path / "cut", resume=True, progress=False, callbacks=[again])
    hist = resumed.info["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[0] == json.loads(json.dumps(cut.epochs()[0].metrics))  # epoch 1 comes from the checkpoint
    assert [e.epoch for e in again.epochs()] == [2] and {e.epoch for e in again.events} == {2}
    if full is not None:  # the same model as the uninterrupted run
        for t in full.tables:
            assert torch.allclose(full.tables[t], resumed.tables[t], atol=1e-6)
        np.testing.assert_allclose(full.weights["all"]["user"], resumed.weights["all"]["user"], atol=1e-6)
        assert [h["loss"] for h in full.info["history"]] == pytest.approx([h["loss"] for h in hist], rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_validation_and_early_stopping(kind, with_valid, tmp_path):
    cfg = config(kind, 6, lr=1e-9, **{"early_stopping.patience": 2})  # nothing improves: stop after 1 + 2
    key = "valid_recall@20"
    with process_group(kind, tmp_path):
        if kind == "partitioned":
            with pytest.raises(ValueError, match=r"early_stopping.patience=2: partitioned training cannot validate"):
                train(with_valid, cfg, tmp_path / "m", progress=False)
            with pytest.raises(ValueError, match=r"eval_every=1: partitioned"):
                train(with_valid, cfg.with_overrides({"early_stopping.patience": 0, "eval_every": 1}), progress=False)
            assert not (tmp_path / "m").exists()  # refused before anything is written
            off = cfg.with_overrides({"early_stopping.patience": 0, "epochs": 1})
            assert len(train(with_valid, off, progress=False).info["history"]) == 1
            return
        model = train(with_valid, cfg, tmp_path / "m", progress=False)
    hist = model.info["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3] and model.info["best_epoch"] == 1
    want = sample_recall(model, with_valid, "valid", 20, cfg.early_stopping.max_users, cfg.seed)
    assert hist[0][key] == pytest.approx(want, abs=1e-9) and want > 0  # the kept model is the best epoch's


def test_partitioned_training_refuses_workers_and_a_process_group(planted, tmp_path):
    ds, _ = planted
    with pytest.raises(ValueError, match="workers=2: partitioned training runs in one process"):
        train(ds, config("partitioned", 1, workers=2), progress=False)
    with process_group("distributed", tmp_path):
        with pytest.raises(ValueError, match="not in a torch.distributed group"):
            train(ds, config("partitioned", 1), progress=False)
