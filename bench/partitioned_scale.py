"""Scale benchmark of partitioned, disk-backed training: edges/s, bucket I/O and peak memory on a big graph.

    # the graph: 10M users x 1M items x ~100M edges, written chunk by chunk as a dataset directory
    mixrec generate --stream --layout dataset --out runs/scale/data --users 10000000 --items 1000000 \\
        --clusters 1000 --edges-per-user 5 15 --relations click
    # one epoch (or, with --budget, the first buckets until the time budget is spent, then extrapolated)
    OMP_NUM_THREADS=1 python bench/partitioned_scale.py runs/scale/data --work runs/scale/work \\
        --set partitions.user=8 --set partitions.item=2 --budget 900 --json runs/scale/result.json

Prints the bucketing pass (edges/s), table initialisation, training edges/s (measured over the edges
actually trained; also per CPU second of this process, which holds on a shared machine), partition swap time, the peak resident memory of this process, and, when the budget
stopped the epoch early, the extrapolated time of a full epoch from the measured rates.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixrec.config import Config  # noqa: E402
from mixrec.train.graph_source import GraphSource  # noqa: E402
from mixrec.train.partitioned import PartitionedTrainer  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def run(data: Path, work: Path, cfg: Config, budget: float, per_bucket: int | None) -> dict:
    source = GraphSource.open(data)
    trainer = PartitionedTrainer(source, cfg, work, progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.prepare()
    prep, prep_cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"edges": source.n_train, "entities": source.entities, "partitions": cfg.partitions,
           "prepare_s": prep, "prepare_cpu_s": prep_cpu, "prepare_edges_per_s": source.n_train / prep,
           "peak_rss_after_prepare_gib": peak_rss_gib()}
    print(json.dumps(out), flush=True)
    plan = trainer.plan()
    trained, loss, t_train, io0, visited = 0, 0.0, time.perf_counter(), trainer.store.io_seconds, 0
    cpu0 = time.process_time()
    for pair, i, j in plan:
        if time.perf_counter() - t_train > budget:
            break
        b_loss, b_edges = trainer.run_bucket(0, pair, i, j, limit=per_bucket)
        trained, loss, visited = trained + b_edges, loss + b_loss, visited + 1
        print(json.dumps({"bucket": [i, j], "edges": b_edges, "elapsed_s": time.perf_counter() - t_train,
                          "io_s": trainer.store.io_seconds - io0, "peak_rss_gib": peak_rss_gib()}), flush=True)
    trainer.store.release()
    secs, cpu = time.perf_counter() - t_train, time.process_time() - cpu0
    io = trainer.store.io_seconds - io0
    rate = trained / max(secs - io, 1e-9)
    io_per_bucket = io / max(visited, 1)
    out.update({"buckets": len(plan), "buckets_visited": visited, "edges_trained": trained,
                "train_s": secs, "io_s": io, "edges_per_s": trained / secs, "edges_per_s_compute": rate,
                "cpu_s": cpu, "edges_per_cpu_s": trained / max(cpu, 1e-9), "loss_per_edge": loss / max(trained, 1), "peak_rss_gib": peak_rss_gib(),
                "complete_epoch": trained == source.n_train,
                "extrapolated_epoch_s": source.n_train / rate + io_per_bucket * len(plan)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="dataset directory (streamed, never loaded whole)")
    p.add_argument("--work", type=Path, required=True, help="where buckets and partition files go")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--budget", type=float, default=float("inf"), help="stop starting new buckets after this many s")
    p.add_argument("--per-bucket", type=int, default=None, help="train at most this many edges per bucket")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = Config().with_overrides(["early_stopping.patience=0", "epochs=1", *a.set])
    out = run(a.data, a.work, cfg, a.budget, a.per_bucket)
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
