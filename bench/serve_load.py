"""Serving benchmarks: gowalla fold-in quality, a 1M-item HNSW model, and a bounded HTTP load generator.

    python bench/serve_load.py foldin-gowalla --work runs/serve           # fold-in vs trained Recall@20
    python bench/serve_load.py synthetic --work runs/serve                # 1M items, HNSW, ANN recall, in-process
    python bench/serve_load.py inproc runs/serve/gowalla-full             # in-process latency, no HTTP
    python bench/serve_load.py load runs/serve/synthetic --duration 10    # HTTP load at concurrency 1, 8, 32

Reads ../shared/data (never copies it); writes models and JSON reports under --work (runs/ is git-ignored).
The load generator talks raw HTTP/1.1 keep-alive over asyncio to 127.0.0.1 only, runs each (endpoint,
concurrency) for a fixed duration, then stops.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def _pct(lat: list[float]) -> dict:
    a = np.asarray(lat) * 1000
    return {"n": len(a), **({f"p{q}_ms": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)} if len(a) else {})}


def _env() -> dict:
    return {"cpus": os.cpu_count(), "loadavg_1m_at_start": os.getloadavg()[0]}


# ----------------------------------------------------------------------------- gowalla fold-in
def exact_recall(model, vectors: np.ndarray, exclude: list[np.ndarray], truth: list[np.ndarray], k: int = 20) -> float:
    """Recall@k of exact pooled-score ranking for arbitrary user vectors (B, C_s, n), history excluded."""
    import torch

    from mixrec.evaluate.exact import exact_topk
    from mixrec.evaluate.metrics import ranking_metrics
    ex_ptr = np.concatenate([[0], np.cumsum([len(e) for e in exclude])])
    top, _ = exact_topk(model, np.arange(len(vectors)), k, (ex_ptr, np.concatenate(exclude)),
                        source_vectors=torch.as_tensor(vectors))
    indptr = np.concatenate([[0], np.cumsum([len(t) for t in truth])])
    return ranking_metrics(top, indptr, np.concatenate(truth), [k])[f"recall@{k}"]


def retrieval_recall(model, vectors, weights, exclude, truth, k: int = 20) -> float:
    """Recall@k of served retrieval (today's default merge, exact flat index) for arbitrary user vectors and weights."""
    from mixrec.config import IndexConfig
    from mixrec.evaluate.metrics import ranking_metrics
    from mixrec.retrieve import Retriever
    r = Retriever(model, index_config=IndexConfig(kind="flat"))
    tops = []
    for lo in range(0, len(vectors), 256):
        ex = exclude[lo:lo + 256]
        excl = (np.repeat(np.arange(len(ex)), [len(e) for e in ex]), np.concatenate(ex))
        tops.append(r.search_vectors(vectors[lo:lo + 256], weights[lo:lo + 256], k, excl,
                                     extra=max(len(e) for e in ex)).items)
    indptr = np.concatenate([[0], np.cumsum([len(t) for t in truth])])
    return ranking_metrics(np.concatenate(tops), indptr, np.concatenate(truth), [k])[f"recall@{k}"]


def cmd_foldin_gowalla(a) -> int:
    from mixrec.config import Config, parse_overrides
    from mixrec.data.dataset import Dataset
    from mixrec.data.ingest import ingest
    from mixrec.foldin import FoldInSettings, fold_in_model
    from mixrec.model import MixtureModel
    from mixrec.train import train
    src = DATA / "gowalla" / "interactions.tsv.gz"
    if not src.is_file():
        print(f"skipped: {src} is missing", file=sys.stderr)
        return 0
    work = Path(a.work)
    data_dir = work / "gowalla-data"
    if not (data_dir / "manifest.json").is_file():
        ingest(src, data_dir, split_col="split", progress=False)
    ds = Dataset.load(data_dir)
    tr, te = ds.split("train"), ds.split("test")
    eligible = np.intersect1d(np.unique(tr.src), np.unique(te.src))
    rng = np.random.default_rng(a.seed)
    hidden = np.sort(rng.choice(eligible, a.hidden, replace=False))
    others = np.sort(rng.choice(np.setdiff1d(eligible, hidden), a.hidden, replace=False))
    base = Config()
    a.components = a.components or base.components.get("user", 1)
    a.dim = a.dim or base.dim
    cfg = base.with_overrides({"components.user": a.components, "components.item": 1, "dim": a.dim,
                               "epochs": a.epochs, **parse_overrides(a.set)})
    t0 = time.perf_counter()
    full_dir, held_dir = work / "gowalla-full", work / "gowalla-heldout"
    full = MixtureModel.load(full_dir) if (full_dir / "model.json").is_file() else \
        train(ds, cfg, full_dir, progress=False)
    keep = ~np.isin(tr.src, hidden)
    held_ds = Dataset(ids=ds.ids, relations=ds.relations, edges={**ds.edges, "train": tr.select(keep)})
    held = MixtureModel.load(held_dir) if (held_dir / "model.json").is_file() else \
        train(held_ds, cfg, held_dir, progress=False)
    t_train = time.perf_counter() - t0

    def per_user(e, users):
        order = np.argsort(e.src, kind="stable")
        s, d = e.src[order], e.dst[order]
        lo, hi = np.searchsorted(s, users), np.searchsorted(s, users, side="right")
        return [d[i:j] for i, j in zip(lo, hi)]
    hist, truth = per_user(tr, hidden), per_user(te, hidden)
    o_hist, o_truth = per_user(tr, others), per_user(te, others)
    out = {"dataset": "gowalla", "hidden_users": int(a.hidden), "config": {"components.user": a.components,
           "dim": a.dim, "epochs": a.epochs}, "train_s_both_models": round(t_train, 1), **_env()}

    def trained(model, users, h, t):
        vec = model.vectors(model.source_type).numpy()[users]
        w = model.mixture_weights(model.source_type)[users]
        return {"exact": exact_recall(model, vec, h, t), "retrieval": retrieval_recall(model, vec, w, h, t)}
    out["trained_full_model_hidden_users"] = trained(full, hidden, hist, truth)
    out["trained_heldout_model_other_users"] = trained(held, others, o_hist, o_truth)
    for variant in a.variants:
        init, steps = variant.split(":")
        steps = int(steps)
        t1 = time.perf_counter()
        order = np.argsort([len(h) for h in hist], kind="stable")  # batch similar lengths
        vec = np.zeros((len(hidden), a.components, a.dim), np.float32)
        w = np.zeros((len(hidden), a.components), np.float32)
        for lo in range(0, len(order), 128):
            idx = order[lo:lo + 128]
            f = fold_in_model(held, [hist[i] for i in idx], settings=FoldInSettings(steps=steps, init=init))
            vec[idx], w[idx] = f.vectors, f.weights
        secs = time.perf_counter() - t1
        res = {"exact": exact_recall(held, vec, hist, truth), "retrieval": retrieval_recall(held, vec, w, hist, truth),
               "foldin_s_per_user": round(secs / len(hidden), 4)}
        base = out["trained_full_model_hidden_users"]
        res["ratio_vs_trained"] = {m: round(res[m] / base[m], 3) for m in ("exact", "retrieval")}
        out[f"foldin_{init}_{steps}_steps_hidden_users"] = res
        print(json.dumps({variant: res}), flush=True)
    _write(work / "foldin_gowalla.json", out)
    return 0


# ----------------------------------------------------------------------------- synthetic 1M model
def cmd_synthetic(a) -> int:
    import torch

    from mixrec.config import Config
    from mixrec.data.dataset import Relation
    from mixrec.model import MixtureModel
    from mixrec.foldin import FoldInSettings
    from mixrec.serve.server import configure_threads
    from mixrec.serve.state import Snapshot
    out_dir = Path(a.work) / "synthetic"
    rng = np.random.default_rng(0)
    dim, cs = a.dim or Config().dim, a.components or Config().components.get("user", 1)
    if not (out_dir / "model.json").is_file():
        centers = rng.standard_normal((a.clusters, dim)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        item_c = rng.integers(0, a.clusters, a.items)
        items = centers[item_c] + a.spread * rng.standard_normal((a.items, dim)).astype(np.float32) / np.sqrt(dim)
        user_c = rng.integers(0, a.clusters, (a.users, cs))
        users = centers[user_c] + a.spread * rng.standard_normal((a.users, cs, dim)).astype(np.float32) / np.sqrt(dim)
        src = np.repeat(np.arange(a.users), 20)
        dst = rng.integers(0, a.items, len(src))
        cfg = Config().with_overrides({"components.user": cs, "components.item": 1, "dim": dim, "index.kind": "hnsw",
                                       "index.hnsw_m": a.hnsw_m, "index.ef_construction": a.ef_construction,
                                       "index.ef_search": a.ef_search})
        w_u = rng.dirichlet(np.ones(cs), a.users).astype(np.float32)
        model = MixtureModel(config=cfg, tables={"user": torch.from_numpy(users), "item": torch.from_numpy(items[:, None])},
                             relations=[Relation("interaction")],
                             ids={"user": np.arange(a.users), "item": np.arange(a.items)},
                             weights={"all": {"user": w_u, "item": np.ones((a.items, 1), np.float32)}},
                             train_edges={"src": src, "dst": dst, "rel": np.zeros(len(src), np.int64)})
        model.save(out_dir)
    t0 = time.perf_counter()
    snap = Snapshot.load(out_dir, ef_search=a.ef_search)  # builds and saves the HNSW index the first time
    t_load = time.perf_counter() - t0
    configure_threads()
    exact = Snapshot.load(out_dir, index_kind="flat")
    users = rng.choice(snap.n_users, a.eval_users, replace=False)
    k = 100
    overlap = []
    for lo in range(0, len(users), 50):
        u = users[lo:lo + 50]
        ann, ex = snap.recommend(u, k).items, exact.recommend(u, k).items
        overlap += [len(set(x) & set(y)) / k for x, y in zip(ann, ex)]
    snap.foldin = FoldInSettings(steps=30)  # as `mixrec serve` runs it by default
    lat = inprocess_latency(snap, users[:a.latency_users], k)
    res = {"items": a.items, "users": a.users, "components": cs, "dim": dim, "k": k, "index": snap.index.config.model_dump(),
           "load_s": round(t_load, 1), "ann_recall_at_100_vs_exact_round_robin": round(float(np.mean(overlap)), 4),
           "ann_recall_min": round(float(np.min(overlap)), 3), "in_process_latency_single_thread": lat, **_env()}
    print(json.dumps(res, indent=1))
    _write(Path(a.work) / "synthetic.json", res)
    return 0


def inprocess_latency(snap, users: np.ndarray, k: int = 100) -> dict:
    """Single-request latency of the snapshot's methods without HTTP, one thread (as the server runs them)."""
    indptr, seen = snap.model.seen()
    lat = {"recommend": [], "similar": [], "from_history": []}
    for u in users:
        t = time.perf_counter()
        snap.recommend(np.array([u]), k)
        lat["recommend"].append(time.perf_counter() - t)
        item = np.array([u % snap.n_items])
        t = time.perf_counter()
        snap.similar(item, 10)
        lat["similar"].append(time.perf_counter() - t)
        hist = seen[indptr[u]:indptr[u + 1]][:50]
        if len(hist) and len(lat["from_history"]) < 50:
            t = time.perf_counter()
            snap.from_history(hist, None, k)
            lat["from_history"].append(time.perf_counter() - t)
    return {n: _pct(v) for n, v in lat.items() if v}


def cmd_inproc(a) -> int:
    from mixrec.serve.server import configure_threads
    from mixrec.serve.state import Snapshot
    configure_threads()
    from mixrec.foldin import FoldInSettings
    snap = Snapshot.load(a.model, index_kind=a.index, ef_search=a.ef_search,
                         foldin=FoldInSettings(steps=a.foldin_steps), merge=a.merge)
    users = np.random.default_rng(0).choice(snap.n_users, min(a.users, snap.n_users), replace=False)
    inprocess_latency(snap, users[:20], a.k)  # warm-up
    res = {"model": str(a.model), "index": snap.index.config.kind, "merge": snap.index.config.merge, "k": a.k,
           "in_process_latency_single_thread": inprocess_latency(snap, users, a.k), **_env()}
    print(json.dumps(res, indent=1))
    _write(Path(a.out) if a.out else Path(a.model).parent / f"inproc_{Path(a.model).name}.json", res)
    return 0


# ----------------------------------------------------------------------------- HTTP load generator
class Conn:
    """One keep-alive HTTP/1.1 connection (Content-Length responses only, as uvicorn sends for JSON)."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Conn":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self.w.write(head.encode() + b"\r\n" + body)
        await self.w.drain()
        status_line = await self.r.readline()
        length = 0
        while (line := await self.r.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await self.r.readexactly(length)
        return int(status_line.split()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its direct children (the workers; Linux /proc)."""
    def one(stat: Path) -> tuple[int, float]:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid, cpu = one(stat)
        except (OSError, IndexError, ValueError):
            continue
        if stat.parent.name == str(pid) or ppid == pid:
            total += cpu
    return total


async def _run_level(port: int, make, concurrency: int, duration: float, reload_every: float = 0.0,
                     reload_dirs: tuple[str, ...] = ()) -> dict:
    """Closed-loop load: ``concurrency`` keep-alive connections for ``duration`` seconds; optionally
    ``POST /admin/reload`` every ``reload_every`` seconds, cycling through ``reload_dirs``."""
    lat, errors, reloads = [], 0, []
    end = time.perf_counter() + duration

    async def reloader():
        conn, n = await Conn.open(port), 0
        while time.perf_counter() + reload_every < end:
            await asyncio.sleep(reload_every)
            body = json.dumps({"model_dir": reload_dirs[n % len(reload_dirs)]}).encode()
            reloads.append(await conn.request("POST", "/admin/reload", body))
            n += 1
        conn.w.close()

    async def worker(w: int):
        nonlocal errors
        conn = await Conn.open(port)
        i = 0
        while time.perf_counter() < end:
            method, path, body = make(w * 100003 + i)
            t = time.perf_counter()
            try:
                status = await conn.request(method, path, body)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status, conn = -1, await Conn.open(port)
            if status == 200:
                lat.append(time.perf_counter() - t)
            else:
                errors += 1
            i += 1
        conn.w.close()
    t0 = time.perf_counter()
    extra = [reloader()] if reload_every > 0 and reload_dirs else []
    await asyncio.gather(*(worker(w) for w in range(concurrency)), *extra)
    wall = time.perf_counter() - t0
    out = {"concurrency": concurrency, "rps": round(len(lat) / wall, 1), "errors": errors, **_pct(lat)}
    if extra:
        out["reloads"] = len(reloads)
        out["reload_failures"] = sum(r != 200 for r in reloads)
    return out


def cmd_load(a) -> int:
    from mixrec.model import MixtureModel
    model = MixtureModel.load(a.model, verify=False)
    users, items = model.ids[model.source_type], model.ids[model.target_type]
    rng = np.random.default_rng(0)
    u_s, i_s = rng.choice(users, 5000).tolist(), rng.choice(items, 5000).tolist()
    seen_ptr, seen = model.seen()
    hist = [items[seen[seen_ptr[u]:seen_ptr[u + 1]][:50]].tolist() for u in rng.integers(0, len(users), 200)]
    hist = [h for h in hist if h] or [[items[0]]]
    k = a.k
    endpoints = {
        "GET /v1/users/{id}/candidates": lambda i: ("GET", f"/v1/users/{u_s[i % 5000]}/candidates?k={k}", b""),
        "POST /v1/candidates (8 users)": lambda i: ("POST", "/v1/candidates", json.dumps(
            {"users": [u_s[(i * 8 + j) % 5000] for j in range(8)], "k": k}).encode()),
        "POST /v1/candidates/from-history": lambda i: ("POST", "/v1/candidates/from-history", json.dumps(
            {"items": hist[i % len(hist)], "k": k}).encode()),
        "GET /v1/items/{id}/similar": lambda i: ("GET", f"/v1/items/{i_s[i % 5000]}/similar?k=10", b""),
    }
    selected = {n: f for n, f in endpoints.items() if not a.endpoints or any(e in n for e in a.endpoints)}
    port = a.port
    cmd = [sys.executable, "-m", "mixrec.cli", "serve", str(a.model), "--port", str(port), "--max-batch", "64",
           *a.serve_args.split()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(port, proc, workers=_workers(a.serve_args))
        report = {"model": str(a.model), "k": k, "duration_s": a.duration, "serve_args": a.serve_args, **_env(),
              "results": {}}
        for name, make in selected.items():
            asyncio.run(_run_level(port, make, 4, min(2.0, a.duration)))  # warm-up, not reported
            rows = []
            for c in a.concurrency:
                cpu0 = _cpu_seconds(proc.pid)
                row = asyncio.run(_run_level(port, make, c, a.duration))
                done = max(1, round(row["rps"] * a.duration))
                row["server_cpu_ms_per_request"] = round(1000 * (_cpu_seconds(proc.pid) - cpu0) / done, 2)
                rows.append(row)
            report["results"][name] = rows
            for r in rows:
                print(f"{name:36s} c={r['concurrency']:<3d} {r['rps']:8.1f} req/s  p50 {r.get('p50_ms')} "
                      f"p95 {r.get('p95_ms')} p99 {r.get('p99_ms')} ms  errors {r['errors']}  "
                      f"server CPU {r['server_cpu_ms_per_request']} ms/req", flush=True)
        if a.reload_every > 0:  # hot reload under load: the model swapped back and forth while requests run
            name = next(iter(selected))
            dirs = (str(Path(a.reload_to or a.model).resolve()), str(Path(a.model).resolve()))
            r = asyncio.run(_run_level(port, selected[name], 8, a.reload_duration, a.reload_every, dirs))
            report["reload_under_load"] = {"endpoint": name, **r}
            print(f"reload under load ({name}, c=8): {r['reloads']} reloads ({r['reload_failures']} failed), "
                  f"{r['errors']} failed requests, p99 {r.get('p99_ms')} ms", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    _write(Path(a.out) if a.out else Path(a.model).parent / f"load_{Path(a.model).name}.json", report)
    return 0


def _workers(serve_args: str) -> int:
    parts = serve_args.split()
    return int(parts[parts.index("--workers") + 1]) if "--workers" in parts else 1


def cmd_table(a) -> int:
    """Markdown tables from load reports (one row per endpoint and concurrency)."""
    for path in a.reports:
        r = json.loads(Path(path).read_text())
        print(f"\n`{r['model']}` {r.get('serve_args') or ''} (k={r['k']}, {r['duration_s']} s per row)\n")
        print("| endpoint | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | server CPU ms/req |")
        print("|---|---|---|---|---|---|---|---|")
        for name, rows in r["results"].items():
            for x in rows:
                print(f"| {name} | {x['concurrency']} | {x['rps']} | {x.get('p50_ms')} | {x.get('p95_ms')} | "
                      f"{x.get('p99_ms')} | {x['errors']} | {x.get('server_cpu_ms_per_request')} |")
        if "reload_under_load" in r:
            x = r["reload_under_load"]
            print(f"| hot reload under load: {x['endpoint']} | {x['concurrency']} | {x['rps']} | {x.get('p50_ms')} | "
                  f"{x.get('p95_ms')} | {x.get('p99_ms')} | {x['errors']} ({x['reloads']} reloads, "
                  f"{x['reload_failures']} failed) | |")
    return 0


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 900, workers: int = 1) -> None:
    """Wait until the server answers /readyz and, with several workers, until every one of them answers."""
    end = time.time() + timeout

    async def pids() -> set:
        seen = set()
        for _ in range(8 * workers):
            c = await Conn.open(port)
            c.w.write(b"GET /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            await c.w.drain()
            body = await c.r.read()
            c.w.close()
            seen.add(json.loads(body.split(b"\r\n\r\n", 1)[1])["pid"])
        return seen
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            async def probe():
                c = await Conn.open(port)
                s = await c.request("GET", "/readyz")
                c.w.close()
                return s
            if asyncio.run(probe()) == 200 and (workers == 1 or len(asyncio.run(pids())) >= workers):
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not become ready")


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float))
    print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from mixrec.registry import INDEX_BACKENDS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("foldin-gowalla")
    g.add_argument("--work", default="runs/serve")
    g.add_argument("--hidden", type=int, default=1000)
    g.add_argument("--components", type=int, default=None, help="user components (default: today's default)")
    g.add_argument("--dim", type=int, default=None, help="dimension (default: today's default)")
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--variants", nargs="+", default=["kmeans:0", "kmeans:10", "kmeans:30", "kmeans:100",
                                                     "random:100", "random:300"], help="INIT:STEPS fold-in settings")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (e.g. loss=margin)")
    s = sub.add_parser("synthetic")
    s.add_argument("--work", default="runs/serve")
    s.add_argument("--components", type=int, default=None, help="user components (default: today's default)")
    s.add_argument("--dim", type=int, default=None, help="dimension (default: today's default)")
    for name, default in (("items", 1_000_000), ("users", 20_000), ("clusters", 2000), ("hnsw-m", 32), ("ef-construction", 100), ("ef-search", 128),
                          ("eval-users", 200), ("latency-users", 200)):
        s.add_argument(f"--{name}", type=int, default=default)
    s.add_argument("--spread", type=float, default=0.6, help="noise around cluster centres (per unit norm)")
    ip = sub.add_parser("inproc", help="in-process latency of a model directory, no HTTP")
    ip.add_argument("model")
    ip.add_argument("--k", type=int, default=100)
    ip.add_argument("--users", type=int, default=300)
    ip.add_argument("--index", default=None, choices=INDEX_BACKENDS.names())
    ip.add_argument("--ef-search", type=int, default=None)
    ip.add_argument("--foldin-steps", type=int, default=30, help="as `mixrec serve --foldin-steps`")
    ip.add_argument("--merge", default=None, choices=["round_robin", "rescore"], help="as `mixrec serve --merge`")
    ip.add_argument("--out", default=None)
    ld = sub.add_parser("load")
    ld.add_argument("model")
    ld.add_argument("--port", type=int, default=8765)
    ld.add_argument("--k", type=int, default=100)
    ld.add_argument("--duration", type=float, default=10.0, help="seconds per (endpoint, concurrency)")
    ld.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ld.add_argument("--endpoints", nargs="*", default=None, help="substrings selecting endpoints")
    ld.add_argument("--out", default=None)
    ld.add_argument("--reload-every", type=float, default=0.0, help="also run a hot-reload-under-load phase")
    ld.add_argument("--reload-to", default=None, help="second model directory to swap to (default: the same)")
    ld.add_argument("--reload-duration", type=float, default=20.0)
    ld.add_argument("--serve-args", default="", help="extra `mixrec serve` options, e.g. '--ef-search 128'")
    tb = sub.add_parser("table", help="markdown tables from load reports")
    tb.add_argument("reports", nargs="+")
    a = p.parse_args(argv)
    return {"foldin-gowalla": cmd_foldin_gowalla, "synthetic": cmd_synthetic, "inproc": cmd_inproc,
            "load": cmd_load, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
