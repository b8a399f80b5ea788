"""Where one training step spends its time: the autograd path, the closed-form (fused) path, compiled or not.

    python bench/train_profile.py                      # single and mixture, 100 batches each
    python bench/train_profile.py --models mixture --batches 200 --rows 15
    python bench/train_profile.py --models mixture --kernels   # the compiled step kernel by kernel

Same graph and settings as bench/train_speed.py (dim 64, batches of 1000, 50 + 50 negatives), one thread.
"autograd" is the step as it was first written (eq. 3 through autograd, then row-wise Adagrad);
"fused" is :func:`mixrec.train.step.train_step` (closed-form gradients); "compiled" the same step with
``compile = true`` (torch.compile of :func:`mixrec.train.fused.fused_grads`, compiled before timing). All run
over the same batches, interleaved, from the same initial tables; the report gives edges per CPU-second (process time, less
sensitive to other processes on a shared machine than wall time), their ratio, and a torch.profiler table
of each path's operators by self CPU time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mixrec.model.mixture import MixtureModel  # noqa: E402
from mixrec.train.sampler import make_batches, training_edges  # noqa: E402
from mixrec.train.step import batch_loss, rowwise_adagrad_, train_step  # noqa: E402
from train_speed import DEFAULT_SHAPES, ROOT, build_graph, load_dataset, mixrec_config, parse_shapes  # noqa: E402


def autograd_step(batch, tables, states, cfg) -> float:
    """The step through autograd: loss graph, backward, then the same row-wise Adagrad update."""
    loss, groups = batch_loss(batch, tables, cfg)
    loss.backward()
    with torch.no_grad():
        for t, rows, leaf in groups:
            rowwise_adagrad_(tables[t], states[t], rows, leaf.grad, cfg.lr)
    return float(loss.detach())


PATHS = {"autograd": autograd_step, "fused": train_step, "compiled": train_step}


def run(step, ds, cfg, batches) -> float:
    model = MixtureModel.initialise(ds, cfg)
    states = {t: torch.zeros(len(v)) for t, v in model.tables.items()}
    t0 = time.process_time()
    for b in batches:
        step(b, model.tables, states, cfg)
    return sum(len(b.src) for b in batches) / (time.process_time() - t0)


def profile_path(step, ds, cfg, batches, rows: int) -> str:
    model = MixtureModel.initialise(ds, cfg)
    states = {t: torch.zeros(len(v)) for t, v in model.tables.items()}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches:
            step(b, model.tables, states, cfg)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["single", "mixture"], choices=["single", "mixture"])
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds; the best is kept")
    ap.add_argument("--rows", type=int, default=12, help="operators shown per profile")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "train_speed")
    ap.add_argument("--defaults", action="store_true",
                    help="Config() defaults (softmax, 256 + 1024 negatives, batches of 1024): single 1 x 64, "
                         "mixture 4 x 32 (bench/train_speed.py --defaults)")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS), help="step paths to time")
    ap.add_argument("--kernels", action="store_true",
                    help="name each compiled kernel in the compiled path's profile (inductor's kernel profile)")
    ap.add_argument("--shapes", nargs="+", default=[], metavar="MODEL=CSxCDxDIM",
                    help="with --defaults, other shapes (bench/train_speed.py --shapes), e.g. mixture=2x1x128")
    args = ap.parse_args()
    DEFAULT_SHAPES.update(parse_shapes(args.shapes))
    torch.set_num_threads(1)
    if args.kernels:
        import torch._inductor.config as inductor_config
        inductor_config.cpp.enable_kernel_profile = True
    ds = load_dataset(build_graph(args.work))
    for name in args.models:
        cfg = mixrec_config(name, 1, 1, defaults=args.defaults)
        paths = {p: PATHS[p] for p in args.paths}
        cfgs = {p: cfg.with_overrides({"compile": p == "compiled"}) for p in paths}
        batches = list(make_batches(training_edges(ds, cfg), cfg, 0))[:args.batches]
        if "compiled" in paths:
            t0 = time.perf_counter()
            run(train_step, ds, cfgs["compiled"], batches[:4])
            print(f"{name}: compiling the step took {time.perf_counter() - t0:.1f} s", flush=True)
        best = {p: 0.0 for p in paths}
        for _ in range(args.repeats):
            for p, step in paths.items():
                best[p] = max(best[p], run(step, ds, cfgs[p], batches))
        ratios = [f"{a} / {b} = {best[a] / best[b]:.2f}x" for a, b in (("fused", "autograd"), ("compiled", "fused"))
                  if a in best and b in best]
        print(f"\n== {name}: edges per CPU-second, one thread: "
              + ", ".join(f"{p} {v:,.0f}" for p, v in best.items()) + "".join(f"; {r}" for r in ratios), flush=True)
        for p, step in paths.items():
            print(f"\n-- {name}, {p}: top operators by self CPU time over {len(batches)} batches")
            print(profile_path(step, ds, cfgs[p], batches, args.rows))


if __name__ == "__main__":
    main()
