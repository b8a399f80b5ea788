"""Closed-form graph-filter candidate models (GF-CF, low-pass, Chebyshev, cascaded ranking) on scipy.sparse."""
from __future__ import annotations

from pathlib import Path

from mixrec.filters.base import FilterModel, read_meta
from mixrec.filters.cascade import CascadeRank
from mixrec.filters.spectral import GFCF, ChebyshevFilter, IdealLowPass, LinearFilter

KINDS: dict[str, type[FilterModel]] = {m.kind: m for m in (LinearFilter, IdealLowPass, GFCF, ChebyshevFilter,
                                                             CascadeRank)}


def make_filter(kind: str, **params) -> FilterModel:
    """An unfitted filter model of ``kind`` (one of :data:`KINDS`) with its hyper-parameters."""
    if kind not in KINDS:
        raise ValueError(f"unknown filter kind {kind!r}; choose one of {sorted(KINDS)}")
    return KINDS[kind](**params)


def load_filter(path: str | Path, verify: bool = True) -> FilterModel:
    """Read a filter model directory (model.json's ``kind`` picks the class); checksums verified by default."""
    path = Path(path)
    meta = read_meta(path)
    model = make_filter(meta["kind"], **meta["params"])
    return FilterModel._load_into(model, path, meta, verify)


def is_filter_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a filter model (model.json with a ``kind`` field)."""
    try:
        read_meta(path)
    except (FileNotFoundError, ValueError):
        return False
    return True


__all__ = ["KINDS", "FilterModel", "LinearFilter", "IdealLowPass", "GFCF", "ChebyshevFilter", "CascadeRank",
           "make_filter", "load_filter", "is_filter_dir"]
