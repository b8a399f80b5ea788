"""The GPU check (a few minutes): train with device="cuda", build the FAISS GPU index, serve, record the figures.

    python bench/gpu_check.py --out runs/gpu_check.json     # on a machine with a CUDA GPU

Without CUDA it prints why and exits 0 having measured nothing. Each step runs on its own (a failing step is
recorded with its error and the next one still runs):
  1. train the planted synthetic log (4,000 users x 3,000 items, 2 relations) for --epochs on the GPU and
     one epoch on the CPU in the same run (edges/s, ratio GPU/CPU), with each model's exact Recall@20;
  2. build a flat index with index.device="cuda" (needs a GPU build of FAISS; faiss-cpu refuses it with a
     message, which is recorded) and compare its candidates with the CPU index's (overlap@100, time);
  3. serve the GPU-trained model with `mixrec serve` and time 300 sequential GET requests (p50/p99).
The JSON written to --out holds every figure, the versions and the device name.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def step(record: dict, name: str, fn) -> None:
    t0 = time.perf_counter()
    try:
        record[name] = {**fn(), "wall_s": round(time.perf_counter() - t0, 2)}
    except Exception as e:  # record and continue with the next step
        record[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
    print(name, json.dumps(record[name], indent=1), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu_check.json")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--requests", type=int, default=300)
    a = p.parse_args(argv)
    import faiss
    import torch
    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; skipped (nothing measured, nothing written)")
        return 0
    from mixrec.config import Config
    from mixrec.data.dataset import Dataset
    from mixrec.data.ingest import ingest
    from mixrec.data.synthetic import SyntheticSpec, write
    from mixrec.evaluate import evaluate
    from mixrec.retrieve import Retriever
    from mixrec.train import train

    rec: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "faiss": faiss.__version__,
                 "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0}
    work = Path(tempfile.mkdtemp(prefix="mixrec-gpu-"))
    files = write(SyntheticSpec(seed=0), work / "raw")
    ingest(files["events"], work / "data", source_col="user_id", target_col="item_id", relation_col="event",
           timestamp_col="timestamp", split_col="split", progress=False)
    data = Dataset.load(work / "data")
    rel = data.relations[0].name
    models: dict = {}

    def train_on(device: str, epochs: int) -> dict:
        cfg = Config().with_overrides({"device": device, "epochs": epochs})
        m = train(data, cfg, work / f"model-{device}", progress=False)
        models[device] = m
        hist = m.info["history"]
        recall = evaluate(m, data, [20], relation=rel)["relations"][rel]["exact"]["recall@20"]
        return {"epochs": epochs, "edges_per_s": round(float(np.median([h["edges_per_s"] for h in hist]))),
                "recall@20": round(recall, 4)}

    step(rec, "train_cuda", lambda: train_on("cuda", a.epochs))
    step(rec, "train_cpu", lambda: train_on("cpu", 1))
    if "edges_per_s" in rec["train_cuda"] and "edges_per_s" in rec["train_cpu"]:
        rec["train_speedup_gpu_over_cpu"] = round(rec["train_cuda"]["edges_per_s"] / rec["train_cpu"]["edges_per_s"], 2)

    def gpu_index() -> dict:
        from mixrec.config import IndexConfig
        model = models.get("cuda") or models["cpu"]
        users = np.arange(min(2000, model.num("user")))
        out = {}
        for device in ("cpu", "cuda"):
            r = Retriever(model, index_config=IndexConfig(kind="flat", device=device))
            t0 = time.perf_counter()
            _, c = r.recommend_all(100, users=users, progress=False)
            out[device] = {"seconds": round(time.perf_counter() - t0, 3), "items": c.items}
        overlap = np.mean([len(np.intersect1d(a_, b_)) / 100 for a_, b_ in zip(out["cpu"]["items"], out["cuda"]["items"])])
        return {"users": len(users), "cpu_s": out["cpu"]["seconds"], "cuda_s": out["cuda"]["seconds"],
                "overlap@100_cuda_vs_cpu": round(float(overlap), 4)}

    step(rec, "faiss_gpu_index", gpu_index)
    step(rec, "serve", lambda: serve(work / ("model-cuda" if "cuda" in models else "model-cpu"), a.requests))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rec, indent=2, default=str))
    print(f"wrote {a.out}")
    return 0


def serve(model_dir: Path, n: int) -> dict:
    """Start `mixrec serve` on the model and time ``n`` sequential single-user requests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mixrec.cli", "serve", str(model_dir), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"mixrec serve exited: {proc.stderr.read()[-2000:]}")
            try:
                urllib.request.urlopen(url + "/readyz", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        users = json.loads(urllib.request.urlopen(url + "/v1/model", timeout=10).read())
        lat = []
        for i in range(n):
            t0 = time.perf_counter()
            urllib.request.urlopen(f"{url}/v1/users/u{i % 4000:06d}/candidates?k=100", timeout=10).read()
            lat.append((time.perf_counter() - t0) * 1000)
        return {"model": users, "requests": n, "p50_ms": round(float(np.percentile(lat, 50)), 2),
                "p99_ms": round(float(np.percentile(lat, 99)), 2)}
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    sys.exit(main())
