"""Train PyTorch-BigGraph on a graph written by bench/train_speed.py; runs inside PBG's own virtual environment.

    python bench/pbg_run.py WORK_DIR --model single|mixture --epochs 5 --workers 2 [-p key=value ...]

Reads ``WORK_DIR/graph/{train_src,train_dst}.npy`` and ``counts.json``, converts them with PBG's own storages,
trains from ``bench/pbg_config.py``, then writes ``WORK_DIR/pbg-MODEL/{user,item}.npy`` (the embeddings) and
``result.json`` (per-epoch training seconds as PBG logs them, wall time).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torchbiggraph.config import ConfigFileLoader
from torchbiggraph.edgelist import EdgeList
from torchbiggraph.entitylist import EntityList
from torchbiggraph.graph_storages import EDGE_STORAGES, ENTITY_STORAGES
from torchbiggraph.train import train
from torchbiggraph.util import SubprocessInitializer, setup_logging

import pbg_smoothmax
from proc_stats import tree_cpu_seconds

HERE = Path(__file__).resolve().parent
PROCESSED = re.compile(r"Processed (\d+) edges in ([\d.]+) s")


class _Epochs(logging.Handler):
    """Collects PBG's per-epoch training time and the process tree's CPU seconds at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self.cpu: list[float] = [tree_cpu_seconds()]

    def emit(self, record):
        m = PROCESSED.search(record.getMessage())
        if m:
            self.seconds.append(float(m.group(2)))
            self.cpu.append(tree_cpu_seconds())


def convert(graph: Path, out: Path) -> int:
    counts = json.loads((graph / "counts.json").read_text())
    ents = ENTITY_STORAGES.make_instance(str(out / "entities"))
    ents.prepare()
    for t in ("user", "item"):
        ents.save_count(t, 0, counts[t])
    edges = EDGE_STORAGES.make_instance(str(out / "edges"))
    edges.prepare()
    src = torch.from_numpy(np.load(graph / "train_src.npy"))
    dst = torch.from_numpy(np.load(graph / "train_dst.npy"))
    edges.save_edges(0, 0, EdgeList(EntityList.from_tensor(src), EntityList.from_tensor(dst),
                                    torch.zeros(len(src), dtype=torch.long)))
    return len(src)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--model", choices=["single", "mixture"], default="single")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("-p", "--param", action="append", default=[])
    args = ap.parse_args()
    out = args.work / f"pbg-{args.model}"
    shutil.rmtree(out / "ckpt", ignore_errors=True)  # PBG resumes from a checkpoint it finds: start fresh
    n_edges = convert(args.work / "graph", out)
    over = [f"entity_path={out / 'entities'}", f"edge_paths={out / 'edges'}",
            f"checkpoint_path={out / 'ckpt'}", f"num_epochs={args.epochs}", f"workers={args.workers}"]
    if args.model == "mixture":
        over += [f"dimension={pbg_smoothmax.COMPONENTS * pbg_smoothmax.DIM}", "comparator=smoothmax_mixture"]
    loader = ConfigFileLoader()
    config = loader.load_config(str(HERE / "pbg_config.py"), over + args.param)
    setup_logging()
    handler = _Epochs()
    logging.getLogger("torchbiggraph").addHandler(handler)
    init = SubprocessInitializer()
    init.register(setup_logging, config.verbose)
    t0 = time.perf_counter()
    train(config, subprocess_init=init)
    wall = time.perf_counter() - t0
    ckpt = out / "ckpt"
    import h5py
    for t in ("user", "item"):
        with h5py.File(ckpt / f"embeddings_{t}_0.v{args.epochs}.h5", "r") as hf:
            np.save(out / f"{t}.npy", hf["embeddings"][...].astype(np.float32))
    res = {"edges": n_edges, "epoch_seconds": handler.seconds, "wall_seconds": wall,
           "epoch_cpu_seconds": list(np.diff(handler.cpu)), "torch": torch.__version__}
    (out / "result.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
