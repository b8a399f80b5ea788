"""Item labels (genres, topics, categories): loading a label file and holding it as a multi-hot CSR."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mixrec.evaluate.metrics import csr_from_pairs

_COMPRESSED = (".gz", ".bz2")
_DELIMITERS = {".tsv": "\t", ".csv": ","}


@dataclass
class ItemLabels:
    """Multi-hot CSR of dense item index -> label ids; ``names[label_id]`` is the label's text.

    ``n_unknown_items`` counts distinct item ids of the source file that the dataset does not know.
    """

    indptr: np.ndarray
    indices: np.ndarray
    names: list[str]
    n_unknown_items: int = 0

    @property
    def n_items(self) -> int:
        return int(self.indptr.size - 1)

    @property
    def n_labels(self) -> int:
        return len(self.names)

    def counts(self) -> np.ndarray:
        """Number of labels of each item (n_items,)."""
        return np.diff(self.indptr)

    def dense(self) -> np.ndarray:
        """(n_items, n_labels) bool multi-hot matrix."""
        out = np.zeros((self.n_items, self.n_labels), dtype=bool)
        out[np.repeat(np.arange(self.n_items), self.counts()), self.indices] = True
        return out

    @classmethod
    def from_pairs(cls, items: np.ndarray, label_ids: np.ndarray, n_items: int, names: list[str],
                   n_unknown_items: int = 0) -> "ItemLabels":
        """Build from (item index, label id) pairs; duplicates are merged."""
        label_ids = np.asarray(label_ids, dtype=np.int64)
        if label_ids.size and (label_ids.min() < 0 or label_ids.max() >= len(names)):
            raise ValueError(f"label ids must lie in [0, {len(names)})")
        indptr, indices = csr_from_pairs(items, label_ids, n_items)
        return cls(indptr, indices, list(names), n_unknown_items)


def load_item_labels(path: str | Path, item_raw_ids: np.ndarray, *, id_col: str = "item_id",
                     label_col: str = "genres", sep: str = "|", delimiter: str | None = None) -> ItemLabels:
    """Read item labels from a TSV/CSV (optionally .gz/.bz2) and index them by the dataset's items.

    The file has either one row per item with labels joined by ``sep`` or one row per (item, label);
    labels of repeated items are united. ``item_raw_ids[i]`` is the raw id of dense item ``i``;
    file items unknown to the dataset are skipped and counted in ``n_unknown_items``. When the
    dataset ids are integers the file ids are compared as integers if they all parse, otherwise
    both sides are compared as strings. Label names are sorted; empty labels, and labels that only
    unknown items carry, are dropped (they could never be recommended).
    """
    path = Path(path)
    table = _read_table(path, id_col, label_col, _delimiter(path, delimiter))
    table = table.filter(pc.is_valid(table.column(id_col)))
    file_ids, value_set = _id_keys(table.column(id_col).combine_chunks(), np.asarray(item_raw_ids))
    item_idx = pc.index_in(file_ids, value_set=value_set)
    known = pc.is_valid(item_idx)
    n_unknown = len(pc.unique(file_ids.filter(pc.invert(known))))
    labels = table.column(label_col).combine_chunks().filter(known)
    item_idx = item_idx.filter(known)
    parts = pc.split_pattern(pc.fill_null(labels, ""), sep)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(parts))
    rows = pc.list_parent_indices(parts)
    items = pc.take(item_idx, rows).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = pc.not_equal(flat, "")
    flat, items = flat.filter(keep), items[keep.to_numpy(zero_copy_only=False)]
    encoded = pc.dictionary_encode(flat)
    names = encoded.dictionary.to_pylist()
    order = np.argsort(np.array(names, dtype=object)) if names else np.zeros(0, dtype=np.int64)
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
    return ItemLabels.from_pairs(items, codes, len(item_raw_ids), [names[i] for i in order], n_unknown)


def _delimiter(path: Path, delimiter: str | None) -> str:
    if delimiter is not None:
        return delimiter
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _DELIMITERS:
        return _DELIMITERS[suffixes[-1]]
    raise ValueError(f"{path}: cannot infer the delimiter from the extension (expected .tsv or .csv, "
                     "optionally .gz); pass delimiter= explicitly")


def _read_table(path: Path, id_col: str, label_col: str, delimiter: str) -> pa.Table:
    if not path.is_file():
        raise FileNotFoundError(f"item label file {path} does not exist")
    try:
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                               convert_options=pacsv.ConvertOptions(
                                   column_types={id_col: pa.string(), label_col: pa.string()}))
    except pa.ArrowInvalid as exc:
        if "empty" in str(exc).lower():
            raise ValueError(f"item label file {path} is empty; it needs a header with columns "
                             f"{id_col!r} and {label_col!r} and one row per item") from exc
        raise ValueError(f"cannot parse item label file {path} (delimiter {delimiter!r}): {exc}") from exc
    missing = [c for c in (id_col, label_col) if c not in table.column_names]
    if missing:
        raise ValueError(f"item label file {path} has no column(s) {missing}; its columns are "
                         f"{table.column_names}. Pass id_col=/label_col= (or the matching config "
                         f"options) naming the item id and label columns, or check the delimiter {delimiter!r}")
    if table.num_rows == 0:
        raise ValueError(f"item label file {path} has a header but no rows; add one row per item "
                         f"with columns {id_col!r} and {label_col!r}")
    return table.select([id_col, label_col])


def _id_keys(file_ids: pa.Array, dataset_ids: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """File ids (read as strings) and dataset ids in one comparable type: int64 if both are integers, else strings."""
    file_ids = pc.utf8_trim_whitespace(file_ids)
    if dataset_ids.dtype.kind in "iu":
        try:
            return pc.cast(file_ids, pa.int64()), pa.array(dataset_ids.astype(np.int64))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return file_ids, pa.array([str(v) for v in dataset_ids.tolist()], type=pa.string())
