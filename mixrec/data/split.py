"""Train/valid/test split strategies: pure, vectorised numpy functions returning int8 split codes."""
from __future__ import annotations

from typing import Sequence

import numpy as np

TRAIN, VALID, TEST = 0, 1, 2
STRATEGIES = ("column", "random", "temporal", "leave-last-out")
LABELS = {
    "train": TRAIN, "training": TRAIN,
    "valid": VALID, "validation": VALID, "val": VALID, "eval": VALID, "dev": VALID,
    "test": TEST, "testing": TEST,
}


class SplitError(ValueError):
    """A split could not be made; ``row`` is the 0-based index of the offending row when there is one."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


def column_split(labels: np.ndarray, vocabulary: Sequence[str] | None = None) -> np.ndarray:
    """Split codes read from split labels (train/valid/test, case-insensitive, also validation/val/eval/dev).

    ``labels`` holds the label strings, or, when ``vocabulary`` is given, integer codes into it
    (a dictionary-encoded column). Raises :class:`SplitError` naming the first unknown label.
    """
    if vocabulary is None:
        vocabulary, labels = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    # A loop over the (few) distinct labels, never over rows.
    table = np.array([LABELS.get(str(v).strip().lower(), -1) for v in vocabulary], dtype=np.int8)
    codes = table[labels] if len(labels) else np.zeros(0, dtype=np.int8)
    bad = np.flatnonzero(codes < 0)
    if len(bad):
        row = int(bad[0])
        raise SplitError(f"unknown split value {str(vocabulary[labels[row]])!r}; "
                         f"use train, valid (or validation/val/eval/dev) or test", row=row)
    return codes.astype(np.int8)


def random_split(users: np.ndarray, test_fraction: float, valid_fraction: float = 0.0, seed: int = 0) -> np.ndarray:
    """Per user, a random ``test_fraction`` (and ``valid_fraction``) of that user's edges to test (and valid).

    Per-user counts are ``fraction * n`` rounded up or down at random (seeded), so every user is within one
    edge of the fraction and the expected totals match it exactly; each user keeps at least one edge in
    train, so users with a single edge keep it in train.
    """
    users = _check(users, test_fraction, valid_fraction)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(users)), users))
    return _assign_tail(users, order, test_fraction, valid_fraction, rng)


def temporal_split(users: np.ndarray, timestamps: np.ndarray, test_fraction: float, valid_fraction: float = 0.0,
                   seed: int = 0) -> np.ndarray:
    """Per user, the latest ``test_fraction`` of edges by time to test, the ``valid_fraction`` before them to valid.

    Ties in time are broken by row order (a later row counts as later). Per-user counts are rounded as in
    :func:`random_split` (the seed only affects that rounding); each user keeps at least one train edge.
    """
    users = _check(users, test_fraction, valid_fraction)
    order = np.lexsort((np.arange(len(users)), _times(timestamps, users), users))
    return _assign_tail(users, order, test_fraction, valid_fraction, np.random.default_rng(seed))


def leave_last_out(users: np.ndarray, timestamps: np.ndarray, valid: bool = False) -> np.ndarray:
    """Per user the latest edge to test (and, if ``valid``, the one before it to valid); the rest to train.

    Ties in time are broken by row order. Users with fewer than 2 edges (3 with ``valid``) keep all in train.
    """
    users = _check(users, 0.0, 0.0)
    order = np.lexsort((np.arange(len(users)), _times(timestamps, users), users))
    n = np.bincount(users)[users[order]] if len(users) else np.zeros(0, dtype=np.int64)
    from_end = _rank_from_end(users[order])
    codes_sorted = np.full(len(users), TRAIN, dtype=np.int8)
    eligible = n >= (3 if valid else 2)
    codes_sorted[eligible & (from_end == 0)] = TEST
    if valid:
        codes_sorted[eligible & (from_end == 1)] = VALID
    out = np.empty(len(users), dtype=np.int8)
    out[order] = codes_sorted
    return out


def holdout_mask(groups: np.ndarray, fraction: float, seed: int = 0, at_least_one: bool = False) -> np.ndarray:
    """Boolean mask holding out ``floor(fraction * n)`` random edges of each group of ``n`` edges (at least one
    where ``at_least_one`` and ``n >= 2``), never a group's last edge: the per-user (or per user and relation)
    hold-out that tuning and ranker fitting carve out of a training split."""
    groups = np.asarray(groups, np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    n = len(groups)
    order = np.lexsort((rng.random(n), groups))
    g = groups[order]
    first = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1] if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[first, n])
    take = np.floor(sizes * fraction).astype(np.int64)
    if at_least_one:
        take = np.maximum(take, 1)
    take = np.minimum(take, sizes - 1)
    mask = np.zeros(n, dtype=bool)
    mask[order] = (np.arange(n) - np.repeat(first, sizes)) < np.repeat(take, sizes)
    return mask


def make_split(strategy: str, users: np.ndarray, *, timestamps: np.ndarray | None = None,
               labels: np.ndarray | None = None, vocabulary: Sequence[str] | None = None,
               test_fraction: float = 0.2, valid_fraction: float = 0.0, seed: int = 0) -> np.ndarray:
    """Dispatch to one strategy of :data:`STRATEGIES` by name."""
    if strategy == "column":
        if labels is None:
            raise SplitError("split 'column' needs a split column")
        return column_split(labels, vocabulary)
    if strategy == "random":
        return random_split(users, test_fraction, valid_fraction, seed)
    if strategy in ("temporal", "leave-last-out"):
        if timestamps is None:
            raise SplitError(f"split {strategy!r} needs a timestamp column")
        if strategy == "temporal":
            return temporal_split(users, timestamps, test_fraction, valid_fraction, seed)
        return leave_last_out(users, timestamps, valid=valid_fraction > 0)
    raise SplitError(f"unknown split strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


# ---------------------------------------------------------------------------------------------- helpers
def _check(users: np.ndarray, test_fraction: float, valid_fraction: float) -> np.ndarray:
    users = np.asarray(users).reshape(-1)
    if users.dtype.kind not in "iu" or (len(users) and users.min() < 0):
        raise SplitError("users must be dense non-negative integer indices")
    for name, f in (("test_fraction", test_fraction), ("valid_fraction", valid_fraction)):
        if not 0.0 <= f < 1.0:
            raise SplitError(f"{name} must be in [0, 1), got {f}")
    if test_fraction + valid_fraction >= 1.0:
        raise SplitError(f"test_fraction + valid_fraction must be < 1, got {test_fraction + valid_fraction}")
    return users.astype(np.int64)


def _times(timestamps: np.ndarray, users: np.ndarray) -> np.ndarray:
    t = np.asarray(timestamps).reshape(-1)
    if len(t) != len(users):
        raise SplitError(f"{len(t)} timestamps for {len(users)} edges")
    return t


def _rank_from_end(sorted_users: np.ndarray) -> np.ndarray:
    """For users sorted in groups, each row's distance from the end of its group (0 = last)."""
    n = len(sorted_users)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    last = np.flatnonzero(np.r_[sorted_users[1:] != sorted_users[:-1], True])
    group_end = np.repeat(last, np.diff(np.r_[-1, last]))
    return group_end - np.arange(n)


def _assign_tail(users: np.ndarray, order: np.ndarray, test_fraction: float, valid_fraction: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Give the last ``n_test`` rows of each user's group in ``order`` to test and the ``n_valid`` before to valid."""
    counts = np.bincount(users) if len(users) else np.zeros(0, dtype=np.int64)
    n_test = np.floor(counts * test_fraction + rng.random(len(counts))).astype(np.int64)
    n_valid = np.floor(counts * valid_fraction + rng.random(len(counts))).astype(np.int64)
    room = np.maximum(counts - 1, 0)
    n_test = np.minimum(n_test, room)
    n_valid = np.minimum(n_valid, room - n_test)
    su = users[order]
    from_end = _rank_from_end(su)
    codes_sorted = np.where(from_end < n_test[su], TEST,
                            np.where(from_end < n_test[su] + n_valid[su], VALID, TRAIN)).astype(np.int8)
    out = np.empty(len(users), dtype=np.int8)
    out[order] = codes_sorted
    return out
