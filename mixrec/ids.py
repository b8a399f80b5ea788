"""Raw entity ids -> dense indices: one sorted lookup per id array, for the CLI, the funnel and serving."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_INT = re.compile(r"0|-?[1-9][0-9]*")


class IdLookup:
    """Raw id -> dense index by binary search over a sorted copy (no per-id Python objects)."""

    def __init__(self, ids: np.ndarray):
        self.is_int = ids.dtype.kind in "iu"
        keys = ids.astype(np.int64) if self.is_int else ids.astype(str)
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]

    def find(self, raw: Sequence[str | int]) -> np.ndarray:
        """Dense indices of raw ids (-1 where unknown or not parseable as this model's id type)."""
        out = np.full(len(raw), -1, np.int64)
        if not len(raw) or not len(self.sorted):
            return out
        if self.is_int:
            keys, ok = np.zeros(len(raw), np.int64), np.zeros(len(raw), bool)
            for i, v in enumerate(raw):
                text = str(v)
                if len(text) <= 20 and _INT.fullmatch(text) and -(2 ** 63) <= (x := int(text)) < 2 ** 63:
                    keys[i], ok[i] = x, True
        else:
            keys, ok = np.array([str(v) for v in raw]), np.ones(len(raw), bool)
        pos = np.searchsorted(self.sorted, keys).clip(0, len(self.sorted) - 1)
        hit = ok & (self.sorted[pos] == keys)
        out[hit] = self.order[pos[hit]]
        return out

    def require(self, raw: Sequence[str | int], where: str, kind: str = "") -> np.ndarray:
        """Dense indices of raw ids; ValueError naming ``where``, the ``kind`` of id and the first unknown ones."""
        idx = self.find(raw)
        if (idx < 0).any():
            missing = [r for r, i in zip(raw, idx) if i < 0]
            raise ValueError(f"{where}: {len(missing)} unknown {kind + ' ' if kind else ''}id(s), e.g. {missing[:3]}")
        return idx

