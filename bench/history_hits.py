"""Where a model's hits come from: test items the user already touched in training (another behaviour, not
excluded by the protocol) against items new to the user.

    python bench/history_hits.py runs/quality/tmall_mb/model-single_1x128 runs/quality/tmall_mb/model-mixture_4x64_cluster_init

Per model (exact pooled ranking, top ``--k``, only the target relation's training items excluded, as in
tmall_mb's published protocol): the share of test pairs whose item is in the user's training history (any
relation), the recall on those *repeat* pairs and on the *new* ones, and the share of the top-k slots that
hold history items.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixrec.csr import csr_from_pairs  # noqa: E402
from mixrec.data.dataset import Dataset  # noqa: E402
from mixrec.evaluate.exact import exact_topk  # noqa: E402
from mixrec.model.mixture import MixtureModel  # noqa: E402


def split_hits(users: np.ndarray, topk: np.ndarray, test_src: np.ndarray, test_dst: np.ndarray,
               hist_src: np.ndarray, hist_dst: np.ndarray, n_items: int) -> dict[str, float]:
    """Recall of the test pairs split by whether the pair is in the history; ``topk[i]`` is ``users[i]``'s list
    (-1 for an empty slot). Every test source must be in ``users``. Pairs are compared as keys user * n + item."""
    hist = np.unique(hist_src.astype(np.int64) * n_items + hist_dst)
    test_key = test_src.astype(np.int64) * n_items + test_dst
    repeat = np.isin(test_key, hist)
    rows = np.repeat(users.astype(np.int64), topk.shape[1])
    items = topk.reshape(-1)
    listed = (rows * n_items + items)[items >= 0]
    hit = np.isin(test_key, listed)
    slots = np.isin(listed, hist)
    return {"test_pairs": int(len(test_key)), "repeat_share": float(repeat.mean()),
            "recall": float(hit.mean()),
            "recall_repeat": float(hit[repeat].mean()) if repeat.any() else float("nan"),
            "recall_new": float(hit[~repeat].mean()) if (~repeat).any() else float("nan"),
            "hits_from_repeats": float(hit[repeat].sum() / max(1, hit.sum())),
            "history_slots": float(slots.mean()) if len(slots) else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model directories trained by bench/quality.py (data in ../data)")
    ap.add_argument("--relation", default="buy", help="the evaluated relation (its training items are excluded)")
    ap.add_argument("--k", type=int, default=10)
    a = ap.parse_args()
    for path in a.models:
        model = MixtureModel.load(path)
        ds = Dataset.load(Path(path).parent / "data")
        code = [r.name for r in ds.relations].index(a.relation)
        tr, te = ds.split("train"), ds.split("test")
        t = te.rel == code
        test_src, test_dst = te.src[t], te.dst[t]
        users = np.unique(test_src)
        n_items = model.num(model.target_type)
        own = tr.rel == code
        exclude = csr_from_pairs(tr.src[own], tr.dst[own], model.num(model.source_type))
        topk, _ = exact_topk(model, users, a.k, exclude=exclude)
        out = split_hits(users, topk, test_src, test_dst, tr.src, tr.dst, n_items)
        print(json.dumps({"model": path, "k": a.k, **{k: round(v, 4) if isinstance(v, float) else v
                                                      for k, v in out.items()}}), flush=True)


if __name__ == "__main__":
    main()
