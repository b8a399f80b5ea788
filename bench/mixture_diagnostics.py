"""Do a trained mixture's components hold distinct interests? Diagnostics of model directories.

    python bench/mixture_diagnostics.py runs/quality/tmall_mb/model-mixture_4x32 runs/quality/ml1m/model-mixture_4x32

Per model: the mean pairwise cosine of a user's components, the effective number of components (exp of
the entropy of the eq. 5 weights), the dead weight share (``mixrec.evaluate.model_diagnostics``), and
*agreement*: each training edge (a seeded sample) is assigned to the user component closest to its
item; half of every user's edges of the first relation pick that user's most frequent component, and
agreement is the share of the other edges (per relation) that the same component wins. Components that
hold distinct interests give agreement well above 1 / C (edges of one interest go to one component);
components that are copies of one another give about 1 / C, whatever the pooled score's recall.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixrec.data.dataset import Dataset  # noqa: E402
from mixrec.evaluate import model_diagnostics  # noqa: E402
from mixrec.model.mixture import MixtureModel  # noqa: E402


def winning_components(model: MixtureModel, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """argmax_c max_l cos(u_c, v_l) per edge (vectorised over the edges)."""
    u, v = model.vectors(model.source_type), model.vectors(model.target_type)
    with torch.no_grad():
        sims = torch.einsum("ecn,eln->ecl", u[torch.from_numpy(src)], v[torch.from_numpy(dst)])
    return sims.amax(-1).argmax(-1).numpy()


def agreement(users: np.ndarray, rel: np.ndarray, win: np.ndarray, n_users: int, c: int, first: int,
              seed: int = 0) -> dict[int, float]:
    """Share of held-aside edges, per relation code, won by the user's modal component on half of ``first``."""
    rng = np.random.default_rng(seed)
    half = (rel == first) & (rng.random(len(users)) < 0.5)
    counts = np.zeros((n_users, c), np.int64)
    np.add.at(counts, (users[half], win[half]), 1)
    top, has = counts.argmax(1), counts.sum(1) > 0
    out = {}
    for code in np.unique(rel):
        keep = (rel == code) & ~half & has[users]
        out[int(code)] = float((win[keep] == top[users[keep]]).mean()) if keep.any() else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model directories trained by bench/quality.py (data in ../data)")
    ap.add_argument("--edges", type=int, default=300_000, help="training edges sampled per model")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    for path in a.models:
        model = MixtureModel.load(path)
        ds = Dataset.load(Path(path).parent / "data")
        tr = ds.split("train")
        pick = np.random.default_rng(a.seed).choice(len(tr.src), min(a.edges, len(tr.src)), replace=False)
        src, dst, rel = tr.src[pick], tr.dst[pick], tr.rel[pick]
        c = model.components(model.source_type)
        win = winning_components(model, src, dst)
        first = int(np.bincount(rel).argmax())
        agree = agreement(src, rel, win, model.num(model.source_type), c, first, a.seed)
        diag = model_diagnostics(model)
        print(json.dumps({"model": path, **{k: round(v, 4) if isinstance(v, float) else v for k, v in diag.items()},
                          "chance": round(1 / c, 4),
                          "agreement": {ds.relations[k].name: round(v, 4) for k, v in agree.items()}}))


if __name__ == "__main__":
    main()
