"""HTTP latency of `mixrec serve` measured by wrk (a C load generator, not Python threads), uvloop+httptools
against uvicorn's pure-Python stack (asyncio+h11) in the same run.

    python bench/serve_wrk.py --work runs/serve --items 1000000 --duration 10   # the 1M-item HNSW model
    python bench/serve_wrk.py --work runs/serve-200k --items 200000             # smaller: faster to build

Builds the planted synthetic HNSW model with `bench/serve_load.py synthetic` when --work has none, then
for each stack starts `mixrec serve` on 127.0.0.1, and runs `wrk --latency` at each concurrency on
GET /v1/users/{random user}/candidates?k=100. Prints p50/p99 (ms), requests/s and errors, and the ratio of
the pure-Python stack's p99 to the default's. Needs `wrk` on PATH (Debian/Ubuntu: apt-get install wrk).
The load generator shares the machine's cores with the server: figures are for this machine as loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LUA = """
math.randomseed(%(seed)d)
request = function()
  return wrk.format("GET", "/v1/users/" .. math.random(0, %(users)d - 1) .. "/candidates?k=%(k)d")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON {\\"p50_us\\": %%d, \\"p99_us\\": %%d, \\"requests\\": %%d, \\"non2xx\\": %%d, "
    .. "\\"socket_errors\\": %%d, \\"duration_us\\": %%d}\\n", latency:percentile(50), latency:percentile(99),
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout, summary.duration))
end
"""
# The same `mixrec serve` command line with uvicorn's defaults instead of uvloop and httptools.
PURE = ("import sys, mixrec.serve.server as s; s.fast_stack = lambda: {'loop': 'asyncio', 'http': 'h11'}; "
        "from mixrec.cli import main; sys.exit(main(sys.argv[1:]))")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server at {url} was not ready after {timeout:.0f}s")


def ensure_model(work: Path, items: int, components: int, dim: int) -> Path:
    """The planted 1M-item (or --items) HNSW model of bench/serve_load.py, built once under ``work``."""
    model = work / "synthetic"
    if not (model / "model.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "bench" / "serve_load.py"), "synthetic", "--work", str(work),
                        "--items", str(items), "--components", str(components), "--dim", str(dim)],
                       check=True, env=_env())
    return model


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_stack(stack: str, model: Path, users: int, a) -> list[dict]:
    """Start the server with ``stack`` ('default' or 'pure'), run wrk at every concurrency, stop the server."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    head = [sys.executable, "-m", "mixrec.cli"] if stack == "default" else [sys.executable, "-c", PURE]
    cmd = head + ["serve", str(model), "--port", str(port)] + a.serve_args.split()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows = []
    try:
        _wait_ready(url, proc)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
            fh.write(LUA % {"seed": a.seed, "users": users, "k": a.k})
        if a.warmup > 0:  # every worker process answers its first requests (page faults, lazy caches) unmeasured
            subprocess.run(["wrk", "-t", str(a.wrk_threads), "-c", str(max(a.concurrency)), "-d", f"{a.warmup}s",
                            "-s", fh.name, url], capture_output=True, text=True, check=True)
        for c in a.concurrency:
            out = subprocess.run(["wrk", "-t", str(min(c, a.wrk_threads)), "-c", str(c), "-d", f"{a.duration}s",
                                  "--latency", "-s", fh.name, url], capture_output=True, text=True, check=True)
            line = next(ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON "))
            r = json.loads(line[len("WRKJSON "):])
            rows.append({"stack": stack, "concurrency": c, "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
                         "rps": r["requests"] / max(r["duration_us"] / 1e6, 1e-9),
                         "errors": r["non2xx"] + r["socket_errors"], "requests": r["requests"]})
        os.unlink(fh.name)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/serve", help="where the synthetic model is (or is built)")
    p.add_argument("--items", type=int, default=1_000_000, help="items of the synthetic model when it is built")
    p.add_argument("--components", type=int, default=None,
                   help="user components of a model built here (default: today's Config default)")
    p.add_argument("--dim", type=int, default=None, help="dimension of a model built here (default: today's)")
    p.add_argument("--duration", type=int, default=10, help="seconds per concurrency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load before the first row")
    p.add_argument("--stacks", nargs="+", default=["default", "pure"], choices=["default", "pure"])
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--serve-args", default="", help="extra `mixrec serve` options, e.g. '--workers 2'")
    p.add_argument("--out", default=None, help="also write the rows as JSON")
    a = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk); nothing measured", file=sys.stderr)
        return 2
    from mixrec.config import Config
    cfg = Config()
    model = ensure_model(Path(a.work), a.items, a.components or cfg.components.get("user", 1), a.dim or cfg.dim)
    meta = json.loads((model / "model.json").read_text())
    users = meta["entities"]["user"]["count"]
    dim = np.load(model / "embeddings" / "item.npy", mmap_mode="r").shape[-1]
    print(f"model {model} ({users:,} users x {meta['entities']['user']['components']} components, "
          f"{meta['entities']['item']['count']:,} items, dim {dim}); {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} at start")
    rows = [r for stack in a.stacks for r in run_stack(stack, model, users, a)]
    print(f"{'stack':<8} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>6}")
    for r in rows:
        print(f"{r['stack']:<8} {r['concurrency']:>4} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['rps']:>8.0f} "
              f"{r['errors']:>6}")
    by = {(r["stack"], r["concurrency"]): r for r in rows}
    for c in a.concurrency:
        if ("default", c) in by and ("pure", c) in by:
            print(f"concurrency {c}: p99 pure-Python / uvloop+httptools = "
                  f"{by['pure', c]['p99_ms'] / max(by['default', c]['p99_ms'], 1e-9):.2f}x")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"model": str(model), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
