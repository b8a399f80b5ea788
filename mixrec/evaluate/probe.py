"""Node label prediction: a multi-label logistic-regression probe on learned embeddings (the paper's second task)."""
from __future__ import annotations

import numpy as np
import torch


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest logistic regression, all labels at once: minimise mean BCE + ``l2``/2 * ||W||^2 with L-BFGS.

    ``x`` (N, D) features, ``y`` (N, L) {0, 1}. Returns (W (D, L), b (L,)).
    """
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64))
    w = torch.zeros(xt.shape[1], yt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(yt.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def predict_logits(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Logits (N, L) of a fitted probe."""
    return np.asarray(x, dtype=np.float64) @ w + b


def macro_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Mean over labels of ROC-AUC (Mann-Whitney U from ranks, ties averaged); labels without both classes skipped."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    n = scores.shape[0]
    order = np.argsort(scores, axis=0, kind="stable")
    sorted_s = np.take_along_axis(scores, order, 0)
    ranks_sorted = np.arange(1, n + 1, dtype=np.float64)[:, None].repeat(scores.shape[1], 1)
    # average the ranks of tied scores: group boundaries per column
    new = np.ones_like(sorted_s, dtype=bool)
    new[1:] = sorted_s[1:] != sorted_s[:-1]
    group = np.cumsum(new, axis=0)
    cols = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    key = (cols * (n + 1) + group).ravel()
    sums = np.bincount(key, weights=ranks_sorted.ravel())
    cnts = np.bincount(key)
    avg = (sums[key] / cnts[key]).reshape(scores.shape)
    ranks = np.empty_like(avg)
    np.put_along_axis(ranks, order, avg, 0)
    pos = y.sum(0).astype(np.float64)
    neg = n - pos
    u = (ranks * y).sum(0) - pos * (pos + 1) / 2
    ok = (pos > 0) & (neg > 0)
    return float(np.mean(u[ok] / (pos[ok] * neg[ok]))) if ok.any() else float("nan")


def micro_f1(pred: np.ndarray, y: np.ndarray) -> float:
    """Micro-averaged F1 of boolean predictions against boolean labels."""
    pred, y = np.asarray(pred, bool), np.asarray(y, bool)
    tp = float((pred & y).sum())
    denom = float(pred.sum() + y.sum())
    return 2 * tp / denom if denom else float("nan")


def label_probe(x: np.ndarray, y: np.ndarray, *, test_fraction: float = 0.2, seed: int = 0,
                l2: float = 1e-3) -> dict[str, float]:
    """Fit the probe on a seeded random (1 - ``test_fraction``) of rows, report held-out macro AUC and micro F1.

    Features are standardised with the training rows' mean and std. Rows without any label are dropped.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    keep = y.any(1)
    x, y = x[keep], y[keep]
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_fraction)))
    te, tr = perm[:n_test], perm[n_test:]
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-12
    w, b = fit_logistic((x[tr] - mu) / sd, y[tr], l2=l2)
    logits = predict_logits((x[te] - mu) / sd, w, b)
    return {"macro_auc": macro_auc(logits, y[te]), "micro_f1": micro_f1(logits > 0, y[te]),
            "dims": float(x.shape[1]), "items": float(len(x))}
