"""Distributed training: touched rows averaged across processes, and a 2-process torchrun launch on loopback."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mixrec.config import Config
from mixrec.evaluate.exact import sample_recall
from mixrec.model import MixtureModel
from mixrec.retrieve import Retriever
from mixrec.train import train
from mixrec.train.distributed import backend_for, average_touched_

FAST = ["dim=8", "epochs=4", "batch_size=128", "negatives.batch=32", "negatives.uniform=32", "lr=0.5",
        "margin=0.3", "early_stopping.patience=0", "distributed.sync_every=2"]


def _sum_worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    base = {"t": torch.zeros(4, 2)}
    current = {"t": base["t"].clone()}
    current["t"][rank] += rank + 1.0  # each process changes its own row ...
    current["t"][3] += 10.0 * (rank + 1)  # ... and both change row 3
    average_touched_(current, base)
    torch.save(current["t"], os.path.join(out, f"r{rank}.pt"))
    dist.destroy_process_group()


def test_average_touched_applies_every_process_delta_once(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_sum_worker, args=(init, str(tmp_path)), nprocs=2, start_method="spawn")
    want = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [15.0, 15.0]])  # one toucher: whole; two: mean
    for r in range(2):
        assert torch.equal(torch.load(tmp_path / f"r{r}.pt"), want)


def test_backend_follows_the_device():
    assert backend_for(Config()) == "gloo"
    assert backend_for(Config().with_overrides({"device": "cuda"})) == "nccl"
    assert backend_for(Config().with_overrides({"distributed.backend": "gloo", "device": "cuda"})) == "gloo"


def test_torchrun_two_processes_on_loopback(planted, tmp_path):
    ds, _ = planted
    ds.save(tmp_path / "data")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mixrec.train.distributed", str(tmp_path / "data"), "--out", str(tmp_path / "model"), "--quiet"]
    for kv in FAST:
        cmd += ["--set", kv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 processes" in done.stdout
    model = MixtureModel.load(tmp_path / "model")  # one ordinary process reads what rank 0 wrote
    hist = model.info["history"]
    assert len(hist) == 4 and hist[-1]["processes"] == 2 and hist[-1]["loss"] < hist[0]["loss"]
    cfg = Config().with_overrides(dict(kv.split("=") for kv in FAST))
    r0 = sample_recall(train(ds, cfg.with_overrides({"epochs": 0}), progress=False), ds, "test", 20, 10_000, 0)
    r1 = sample_recall(train(ds, cfg, progress=False), ds, "test", 20, 10_000, 0)
    r2 = sample_recall(model, ds, "test", 20, 10_000, 0)
    assert r2 > 1.5 * r0 and r2 > 0.85 * r1  # learns, and about as well as one process
    cand = Retriever(model).recommend(np.arange(3), k=10)
    assert cand.items.shape == (3, 10) and (cand.items >= 0).all()
    state = json.loads((tmp_path / "model" / "checkpoint" / "state.json").read_text())
    assert state["epochs_done"] == 4


def test_one_process_group_matches_the_plain_trainer(planted, tmp_path):
    ds, _ = planted
    cfg = Config().with_overrides(dict(kv.split("=") for kv in FAST)).with_overrides({"epochs": 1})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        from mixrec.train.distributed import DistributedTrainer
        got = DistributedTrainer(ds, cfg, None, progress=False).fit()
        with pytest.raises(ValueError, match="workers=1"):
            DistributedTrainer(ds, cfg.with_overrides({"workers": 2}), None, progress=False)
    finally:
        dist.destroy_process_group()
    want = train(ds, cfg, progress=False)
    for t in want.tables:
        assert torch.allclose(got.tables[t], want.tables[t], atol=1e-3)  # float rounding of base + delta only
