"""Compressed sparse rows (indptr, indices) of per-row item lists: building them and reading rows out."""
from __future__ import annotations

import numpy as np


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, n_rows: int,
                   dedupe: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A CSR (indptr, indices) of ``n_rows`` rows from (row, col) pairs; columns sorted (and, with ``dedupe``,
    deduplicated) per row."""
    rows = np.asarray(rows, dtype=np.int64).ravel()
    cols = np.asarray(cols, dtype=np.int64).ravel()
    if rows.shape != cols.shape:
        raise ValueError(f"rows and cols differ in length ({rows.size} vs {cols.size})")
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"row indices must lie in [0, {n_rows}); got [{rows.min()}, {rows.max()}]")
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    if dedupe:
        keep = np.ones(rows.size, dtype=bool)
        keep[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
        rows, cols = rows[keep], cols[keep]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols


def csr_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row position, column) pairs of the CSR restricted to ``rows`` (positions index into ``rows``)."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lens = ends - starts
    pos = np.repeat(np.arange(len(rows)), lens)
    offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    return pos, indices[np.repeat(starts, lens) + offs]
