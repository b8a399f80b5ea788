"""Diversity metrics of top-K lists: ComiRec pairwise label diversity, label coverage, catalog coverage."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mixrec.evaluate.labels import ItemLabels

_BATCH_BYTES = 64 << 20  # bound on the float32 (B, K, max(G, K)) temporaries per user batch


def diversity_metrics(topk: np.ndarray, labels: ItemLabels | None, ks: Sequence[int],
                      n_items: int) -> dict[str, float]:
    """``div@K``, ``label_coverage@K`` (when labels are given) and ``catalog_coverage@K`` for each K.

    - ``div@K`` (ComiRec, Cen et al. 2020): per user, the share of unordered pairs of distinct
      positions in the top K whose label sets share no label; pairs involving padding (-1) or an
      item without labels are left out of numerator and denominator. Averaged over users with at
      least one such pair (NaN if none). Repeated items count as a pair with shared labels.
    - ``label_coverage@K``: distinct labels in a user's top K / number of labels, averaged over
      all rows of ``topk`` (rows of padding count 0; NaN if there are no labels).
    - ``catalog_coverage@K``: distinct items in anyone's top K / ``n_items``; needs no labels.
    """
    topk = np.asarray(topk, dtype=np.int64)
    ks = _check(topk, labels, ks, n_items)
    out = {f"catalog_coverage@{k}": catalog_coverage(topk, k, n_items) for k in ks}
    if labels is None:
        return out
    sums = {k: np.zeros(3) for k in ks}  # sum of per-user div, users with pairs, sum of label coverage
    step = _batch_size(topk.shape[1], labels.n_labels)
    for lo in range(0, topk.shape[0], step):
        batch = topk[lo:lo + step]
        for k, (div, has_pairs, cover) in _batch_stats(batch, labels, ks).items():
            sums[k] += (div[has_pairs].sum(), has_pairs.sum(), cover.sum())
    n_rows = topk.shape[0]
    for k in ks:
        div_sum, n_div, cover_sum = sums[k]
        out[f"div@{k}"] = float(div_sum / n_div) if n_div else float("nan")
        out[f"label_coverage@{k}"] = (float(cover_sum / n_rows)
                                      if n_rows and labels.n_labels else float("nan"))
    return out


def catalog_coverage(topk: np.ndarray, k: int, n_items: int) -> float:
    """Distinct items among all rows' first ``k`` entries (ignoring -1) / ``n_items``."""
    head = np.asarray(topk)[:, :k]
    return float(np.unique(head[head >= 0]).size / n_items) if n_items else float("nan")


def _check(topk: np.ndarray, labels: ItemLabels | None, ks: Sequence[int], n_items: int) -> list[int]:
    if topk.ndim != 2:
        raise ValueError(f"topk must be 2-D (users, K); got shape {topk.shape}")
    ks = [int(k) for k in ks]
    bad = [k for k in ks if k < 1 or k > topk.shape[1]]
    if not ks or bad:
        raise ValueError(f"cutoffs {ks} must be non-empty and within [1, {topk.shape[1]}]")
    if topk.size and topk.max() >= n_items:
        raise ValueError(f"topk holds item index {topk.max()} >= n_items={n_items}")
    if labels is not None and labels.n_items != n_items:
        raise ValueError(f"labels cover {labels.n_items} items but n_items={n_items}; "
                         "load the labels against the same dataset")
    return ks


def _batch_size(kmax: int, n_labels: int) -> int:
    return max(1, _BATCH_BYTES // (4 * kmax * max(kmax, n_labels, 1)))


def _multi_hot(batch: np.ndarray, labels: ItemLabels) -> np.ndarray:
    """(B, K, G) float32 multi-hot labels of the batch's items; zero rows for padding."""
    flat = batch.ravel()
    pos = np.flatnonzero(flat >= 0)
    counts = labels.counts()[flat[pos]]
    starts = labels.indptr[flat[pos]]
    rows = np.repeat(pos, counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    hot = np.zeros((flat.size, labels.n_labels), dtype=np.float32)
    hot[rows, labels.indices[np.repeat(starts, counts) + offsets]] = 1.0
    return hot.reshape(batch.shape + (labels.n_labels,))


def _batch_stats(batch: np.ndarray, labels: ItemLabels,
                 ks: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per K: (div per user, whether the user has a labelled pair, label coverage per user)."""
    hot = _multi_hot(batch, labels)
    labelled = hot.any(axis=2)  # (B, K): real item with >= 1 label
    overlap = hot @ hot.transpose(0, 2, 1) > 0  # (B, K, K)
    upper = np.triu(np.ones((batch.shape[1],) * 2, dtype=bool), k=1)
    pair = labelled[:, :, None] & labelled[:, None, :] & upper
    differ = pair & ~overlap
    seen = np.cumsum(hot, axis=1) > 0  # (B, K, G): label seen within the first r+1 positions
    out = {}
    for k in ks:
        n_pairs = pair[:, :k, :k].sum(axis=(1, 2))
        n_diff = differ[:, :k, :k].sum(axis=(1, 2))
        div = np.divide(n_diff, n_pairs, out=np.zeros(len(batch)), where=n_pairs > 0)
        cover = seen[:, k - 1].sum(axis=1) / max(labels.n_labels, 1)
        out[k] = (div, n_pairs > 0, cover)
    return out
