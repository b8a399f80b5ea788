"""The ingest step: read interaction logs, validate them, build dictionaries, deduplicate, split and write a Dataset."""
from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixrec.data.dataset import MANIFEST, SPLITS, Dataset, Edges, Relation
from mixrec.data.readers import SOURCES_KEY, IngestError, _require, read_log
from mixrec.data.split import STRATEGIES, SplitError, make_split

_CANONICAL_INT = r"^(0|-?[1-9][0-9]{0,17})$"


@dataclass
class IngestReport:
    """What an ingest read and produced."""

    files: list[str]
    rows_read: int
    duplicates_removed: int
    entities: dict[str, int]  # dictionary size per entity type
    num_sources: int  # distinct ids in the source column
    num_targets: int  # distinct ids in the target column
    edges: dict[str, dict[str, int]]  # relation -> split -> count
    split: str
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    train_test_pairs: int = 0  # distinct (source, target, relation) in both train and test

    def to_dict(self) -> dict:
        """Plain JSON-able form (stored in ``Dataset.info['ingest']``)."""
        return asdict(self)

    def summary(self) -> str:
        """One line: rows, duplicates, entities and edges per relation and split."""
        ents = ", ".join(f"{n:,} {t}" for t, n in self.entities.items())
        rels = "; ".join(f"{r}: " + " ".join(f"{s} {n:,}" for s, n in c.items()) for r, c in self.edges.items())
        return (f"ingested {self.rows_read:,} rows ({self.duplicates_removed:,} duplicates removed) -> "
                f"{ents}; split {self.split}; {rels} [{self.seconds:.1f}s]")


class _Origin:
    """Maps a global row index back to (file, 1-based data row)."""

    def __init__(self, sources: Sequence[Sequence]):
        self.names = [str(s[0]) for s in sources]
        self.starts = np.cumsum([0] + [int(s[1]) for s in sources])

    @classmethod
    def of(cls, table: pa.Table, sources: Sequence[Sequence] | None) -> "_Origin":
        meta = (table.schema.metadata or {}).get(SOURCES_KEY)
        sources = sources if sources is not None or meta is None else json.loads(meta)
        if sources is None or sum(int(s[1]) for s in sources) != table.num_rows:
            sources = [("<table>", table.num_rows)]
        return cls(sources)

    @property
    def label(self) -> str:
        return ", ".join(self.names)

    def at(self, row: int, column: str | None = None) -> str:
        f = int(np.searchsorted(self.starts, row, side="right")) - 1
        col = f", column {column!r}" if column else ""
        return f"{self.names[f]}: data row {row - self.starts[f] + 1}{col}"


def _first(mask: np.ndarray) -> int | None:
    return int(mask.argmax()) if mask.any() else None


def _first_failing(arr: pa.Array, fn: Callable[[pa.Array], Any]) -> int:
    """Index of the first element on which ``fn`` fails (bisection; only used on the error path)."""
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            fn(arr.slice(lo, mid - lo))
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


def _array(table: pa.Table, name: str, text: bool = False) -> pa.Array:
    """One column as a single array (dictionaries decoded; as ``string`` if ``text``, or if large_string)."""
    col = table.column(name).combine_chunks()
    col = col.dictionary_decode() if pa.types.is_dictionary(col.type) else col
    return col.cast(pa.string()) if (text or pa.types.is_large_string(col.type)) and col.type != pa.string() else col


def _no_nulls(arr: pa.Array, origin: _Origin, col: str, what: str) -> None:
    bad = pc.is_null(arr)
    if pa.types.is_string(arr.type):
        bad = pc.or_kleene(bad, pc.equal(pc.utf8_trim_whitespace(arr), ""))
    row = _first(bad.to_numpy(zero_copy_only=False))
    if row is not None:
        raise IngestError(f"{origin.at(row, col)}: empty {what}; every row needs one (remove or fix the row)")


def _no_nan(arr: pa.Array, origin: _Origin, col: str) -> None:
    """Refuse NaN ids (float NaN, or the text 'nan' in any case): a missing value, not an id."""
    if pa.types.is_floating(arr.type):
        bad = pc.is_nan(arr)
    elif pa.types.is_string(arr.type):
        bad = pc.equal(pc.utf8_lower(pc.utf8_trim_whitespace(arr)), "nan")
    else:
        return
    row = _first(bad.to_numpy(zero_copy_only=False))
    if row is not None:
        raise IngestError(f"{origin.at(row, col)}: id {arr[row].as_py()!r} is NaN, a missing value rather than "
                          "an id (remove or fix the row)")


def _ids(arr: pa.Array, origin: _Origin, col: str) -> pa.Array:
    """Integer ids as int64; text that is all canonical integers becomes int64; anything else text."""
    _no_nulls(arr, origin, col, "id")
    _no_nan(arr, origin, col)
    if pa.types.is_integer(arr.type):
        return arr.cast(pa.int64())
    if pa.types.is_floating(arr.type) and pc.all(pc.equal(pc.floor(arr), arr)).as_py():
        with contextlib.suppress(pa.ArrowInvalid):  # integral floats (e.g. from pandas) that fit int64
            return arr.cast(pa.int64())
    text = arr.cast(pa.string()) if arr.type != pa.string() else arr
    if pc.all(pc.match_substring_regex(text, _CANONICAL_INT)).as_py():
        return text.cast(pa.int64())
    return text


def _encode(cols: list[pa.Array]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One dictionary over several columns: sorted raw values and each column's dense codes."""
    if len({c.type for c in cols}) > 1:
        cols = [c.cast(pa.string()) for c in cols]
    enc = pa.concat_arrays(cols).dictionary_encode()
    order = pc.array_sort_indices(enc.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = rank[enc.indices.to_numpy(zero_copy_only=False)]
    values = enc.dictionary.take(pa.array(order)).to_numpy(zero_copy_only=False)
    bounds = np.cumsum([0] + [len(c) for c in cols])
    return values, [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _weights(arr: pa.Array, origin: _Origin, col: str) -> np.ndarray:
    _no_nulls(arr, origin, col, "weight")
    try:
        w = arr.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row = _first_failing(arr, lambda a: a.cast(pa.float64()))
        raise IngestError(f"{origin.at(row, col)}: weight {arr[row].as_py()!r} is not a number; "
                          f"fix the row or drop weight_col") from None
    w = w.to_numpy(zero_copy_only=False)
    bad = _first(~np.isfinite(w.astype(np.float32)) | (w < 0))
    if bad is not None:
        raise IngestError(f"{origin.at(bad, col)}: weight {float(w[bad])!r} is invalid; weights must be finite, "
                          f">= 0 and fit in float32 (fix the row or drop weight_col)")
    return w


def _timestamps(arr: pa.Array, origin: _Origin, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps as int64 (numbers as is, times in their unit) and a null mask."""
    t = arr.type
    if pa.types.is_string(t):
        arr = pc.if_else(pc.equal(pc.utf8_trim_whitespace(arr), ""), pa.scalar(None, pa.string()), arr)
        arr = _cast_time_text(arr, origin, col)
    elif pa.types.is_floating(t):
        arr = pc.floor(pc.if_else(pc.is_nan(arr), pa.scalar(None, t), arr)).cast(pa.int64())
    elif pa.types.is_date(t) or pa.types.is_time(t):
        arr = arr.cast(pa.int32() if t.bit_width == 32 else pa.int64())
    elif not (pa.types.is_integer(t) or pa.types.is_timestamp(t) or pa.types.is_duration(t)):
        raise IngestError(f"{origin.label}: column {col!r} has type {t}; timestamps must be numbers or times")
    values = arr.cast(pa.int64())
    return values.fill_null(0).to_numpy().astype(np.int64), pc.is_null(values).to_numpy(zero_copy_only=False)


def _cast_time_text(arr: pa.Array, origin: _Origin, col: str) -> pa.Array:
    """Text timestamps: integers or ISO-8601 times, in the form of the column's first value."""
    present = arr.drop_null()
    if len(present) == 0:
        return arr.cast(pa.int64())
    target = pa.int64()
    try:
        present.slice(0, 1).cast(target)
    except pa.ArrowInvalid:
        target = pa.timestamp("us")
    try:
        return arr.cast(target)
    except pa.ArrowInvalid:
        row = _first_failing(arr, lambda a: a.cast(target))
    form = "an integer" if target == pa.int64() else "an ISO-8601 time"
    raise IngestError(f"{origin.at(row, col)}: timestamp {arr[row].as_py()!r} is not {form} like the column's "
                      f"first value {present[0].as_py()!r}; fix the row (one form per column)")


def _entities(table: pa.Table, origin: _Origin, source_col: str, target_col: str, source_type: str,
              target_type: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Dictionaries (one per entity type; shared when both columns hold the same type) and dense codes."""
    src_raw = _ids(_array(table, source_col), origin, source_col)
    dst_raw = _ids(_array(table, target_col), origin, target_col)
    if source_type == target_type:
        values, (src, dst) = _encode([src_raw, dst_raw])
        return {source_type: values}, src, dst
    (sv, (src,)), (dv, (dst,)) = _encode([src_raw]), _encode([dst_raw])
    return {source_type: sv, target_type: dv}, src, dst


def _relations(table: pa.Table, origin: _Origin, relation_col: str | None,
               default_relation: str) -> tuple[list[str], np.ndarray]:
    """Relation names (sorted) and codes; one ``default_relation`` without a relation column."""
    if not relation_col:
        return [default_relation], np.zeros(table.num_rows, dtype=np.int64)
    arr = _array(table, relation_col, text=True)
    _no_nulls(arr, origin, relation_col, "relation")
    names, (rel,) = _encode([arr])
    return [str(r) for r in names], rel


def _column_split(table: pa.Table, origin: _Origin, split_col: str) -> np.ndarray:
    arr = _array(table, split_col, text=True)
    _no_nulls(arr, origin, split_col, "split value")
    enc = arr.dictionary_encode()
    try:
        return make_split("column", np.zeros(0, dtype=np.int64), labels=enc.indices.to_numpy(zero_copy_only=False),
                          vocabulary=enc.dictionary.to_pylist())
    except SplitError as err:
        raise IngestError(f"{origin.at(err.row, split_col)}: {err}") from None


def _dedup(keys: list[np.ndarray]) -> np.ndarray:
    """Sorted indices of the first occurrence of every distinct key tuple."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort(keys[::-1])  # stable: the first row of each group is the earliest
    same = np.ones(n - 1, dtype=bool)
    for k in keys:  # a loop over the few key columns, not rows
        ks = k[order]
        same &= ks[1:] == ks[:-1]
    return np.sort(order[np.r_[True, ~same]])


def _held_out(strategy: str, src: np.ndarray, ts: np.ndarray | None, ts_null: np.ndarray | None, rows: np.ndarray,
              origin: _Origin, timestamp_col: str | None, **fractions: Any) -> np.ndarray:
    """Split codes of a computed strategy (random/temporal/leave-last-out) over deduplicated edges."""
    if ts is not None and strategy != "random":
        bad = _first(ts_null)
        if bad is not None:
            raise IngestError(f"{origin.at(int(rows[bad]), timestamp_col)}: empty timestamp; split "
                              f"{strategy!r} needs a time on every row (fill it, or use split='random')")
    try:
        return make_split(strategy, src, timestamps=ts, **fractions)
    except SplitError as err:
        raise IngestError(f"{origin.label}: {err}") from None


def _check_options(where: str, split: str, split_col: str | None, timestamp_col: str | None,
                   test_fraction: float, valid_fraction: float) -> None:
    """Fail fast (before reading) on options that cannot work; ``where`` names the input."""
    problem = None
    if split not in STRATEGIES:
        problem = f"unknown split strategy {split!r}; choose one of {', '.join(STRATEGIES)}"
    elif split == "column" and not split_col:
        problem = "split='column' needs split_col (--split-col) naming a column of train/valid/test"
    elif split in ("temporal", "leave-last-out") and not timestamp_col:
        problem = (f"split {split!r} needs a timestamp column, and none was given; pass timestamp_col= "
                   f"(--timestamp-col) or use split='random'")
    elif not (0 <= test_fraction < 1 and 0 <= valid_fraction < 1 and test_fraction + valid_fraction < 1):
        problem = (f"test_fraction ({test_fraction}) and valid_fraction ({valid_fraction}) must be in [0, 1) "
                   f"with a sum below 1")
    if problem:
        raise IngestError(f"{where}: {problem}")


def _wanted(source_col: str, target_col: str, split: str, *optional: str | None) -> list[str]:
    """Columns an ingest reads: ids, the optional ones given, and ``optional[-1]`` (split) only for 'column'."""
    *rest, split_col = optional
    return list(dict.fromkeys(c for c in (source_col, target_col, *rest, split_col if split == "column" else None)
                              if c))


def _as_table(table: pa.Table | Mapping[str, Sequence]) -> pa.Table:
    if isinstance(table, pa.Table):
        return table
    try:
        return pa.table(table)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
        raise IngestError(f"<table>: could not build a table from the columns: {err}") from None


def build_dataset(table: pa.Table | Mapping[str, Sequence], *, source_col: str = "user_id",
                  target_col: str = "item_id", relation_col: str | None = None, weight_col: str | None = None,
                  timestamp_col: str | None = None, split_col: str | None = None, split: str | None = None,
                  test_fraction: float = 0.2, valid_fraction: float = 0.0, seed: int = 0,
                  source_type: str = "user", target_type: str = "item", default_relation: str = "interaction",
                  sources: Sequence[Sequence] | None = None) -> tuple[Dataset, IngestReport]:
    """Validate an interaction table, build dictionaries, deduplicate and split it into a :class:`Dataset`.

    ``table`` is a pyarrow Table (e.g. from :func:`read_log`) or a mapping of column name to values.
    ``sources`` lists ``(name, rows)`` per input file for error messages (default: from the table metadata).
    Ids that are integers (or text that is all canonical integers) are kept as int64, others as text.
    Nothing is written; raises :class:`IngestError` on bad input.
    """
    start = time.perf_counter()
    split = split or ("column" if split_col else "random")
    table = _as_table(table)
    origin = _Origin.of(table, sources)
    _check_options(origin.label, split, split_col, timestamp_col, test_fraction, valid_fraction)
    _require(origin.label, _wanted(source_col, target_col, split, relation_col, weight_col, timestamp_col,
                                   split_col), table.column_names)
    if (n := table.num_rows) == 0:
        raise IngestError(f"{origin.label}: no data rows")
    ids, src, dst = _entities(table, origin, source_col, target_col, source_type, target_type)
    rel_names, rel = _relations(table, origin, relation_col, default_relation)
    weight = _weights(_array(table, weight_col), origin, weight_col) if weight_col else np.ones(n)
    ts, ts_null = _timestamps(_array(table, timestamp_col), origin, timestamp_col) if timestamp_col else (None, None)
    codes = _column_split(table, origin, split_col) if split == "column" else None
    keep = _dedup([k for k in (src, dst, rel, (weight + 0.0).view(np.int64), codes, ts, ts_null) if k is not None])
    src, dst, rel, weight = src[keep], dst[keep], rel[keep], weight[keep]  # (+ 0.0 above folds -0.0 into 0.0)
    ts, ts_null = (None, None) if ts is None else (ts[keep], ts_null[keep])
    codes = codes[keep] if codes is not None else _held_out(
        split, src, ts, ts_null, keep, origin, timestamp_col, test_fraction=test_fraction,
        valid_fraction=valid_fraction, seed=seed)
    counts = _check_train(rel, codes, rel_names, origin)
    edges = {s: Edges(src[m], dst[m], rel[m], weight[m].astype(np.float32))
             for i, s in enumerate(SPLITS) if (m := codes == i).any()}
    options = dict(source_col=source_col, target_col=target_col, relation_col=relation_col, weight_col=weight_col,
                   timestamp_col=timestamp_col, split_col=split_col, test_fraction=test_fraction,
                   valid_fraction=valid_fraction, seed=seed)
    report = IngestReport(origin.names, n, n - len(keep), {t: len(v) for t, v in ids.items()},
                          int(np.count_nonzero(np.bincount(src))), int(np.count_nonzero(np.bincount(dst))), counts,
                          split, options, time.perf_counter() - start)
    report.train_test_pairs = _warn_overlap(edges, origin)
    relations = [Relation(r, source_type, target_type) for r in rel_names]
    return Dataset(ids=ids, relations=relations, edges=edges, info={"ingest": report.to_dict()}), report


def _warn_overlap(edges: dict[str, Edges], origin: _Origin) -> int:
    """Count (and warn about) distinct (source, target, relation) triples in both train and test."""
    if "train" not in edges or "test" not in edges:
        return 0
    def rows(e: Edges) -> np.ndarray:  # one opaque value per (src, dst, rel) row: no overflow on any count
        return np.unique(np.ascontiguousarray(np.stack([e.src, e.dst, e.rel], 1).astype(np.int64)).view("V24").ravel())
    n = int(np.isin(rows(edges["test"]), rows(edges["train"])).sum())
    if n:
        warnings.warn(f"{origin.label}: {n:,} (user, item) pairs (same relation) are both in train and in test; "
                      "evaluation with exclude-seen never counts them and without it they leak the answer",
                      UserWarning, stacklevel=3)
    return n


def _check_train(rel: np.ndarray, codes: np.ndarray, rel_names: list[str], origin: _Origin) -> dict:
    """Edges per relation and split; every relation must have training edges."""
    table = np.bincount(rel * 3 + codes, minlength=3 * len(rel_names)).reshape(-1, 3)
    for r, name in enumerate(rel_names):
        if table[r, 0] == 0:
            raise IngestError(f"{origin.label}: relation {name!r} has no edges in train "
                              f"({table[r, 1]} in valid, {table[r, 2]} in test); every relation needs training "
                              f"edges: fix the split column, lower the held-out fractions or drop that relation")
    return {name: {s: int(table[r, i]) for i, s in enumerate(SPLITS)} for r, name in enumerate(rel_names)}


def check_out(out: Path, overwrite: bool | None) -> None:
    """Refuse to replace what is at ``out`` unless allowed (see :func:`ingest`'s ``overwrite``)."""
    if overwrite or not out.exists():
        return
    if overwrite is None and out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir())):
        return
    what = "exists" if overwrite is False else "exists and is not a mixrec dataset directory (no manifest.json)"
    raise FileExistsError(f"{out} {what}; its content would be replaced: choose another output path, or pass "
                          "overwrite=True (--overwrite) to replace it")


def ingest(paths: str | Path | Sequence[str | Path], out: str | Path, *, source_col: str = "user_id",
           target_col: str = "item_id", relation_col: str | None = None, weight_col: str | None = None,
           timestamp_col: str | None = None, split_col: str | None = None, split: str | None = None,
           test_fraction: float = 0.2, valid_fraction: float = 0.0, seed: int = 0,
           source_type: str = "user", target_type: str = "item", default_relation: str = "interaction",
           delimiter: str | None = None, overwrite: bool | None = None, progress: bool = True) -> IngestReport:
    """Read interaction logs and write a dataset directory at ``out`` (atomically, only after validation).

    ``split`` is one of column/random/temporal/leave-last-out (default: column if ``split_col`` else random);
    ``split_col`` is only read for 'column'. See :func:`build_dataset` for ids, dedup and validation.
    Raises :class:`IngestError` on bad input, leaving any existing ``out`` untouched.
    ``overwrite``: None (default) replaces an existing dataset directory or fills an empty folder and refuses
    anything else; True replaces whatever is at ``out``; False refuses any existing ``out``.
    """
    start = time.perf_counter()
    split = split or ("column" if split_col else "random")
    names = [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]
    _check_options(", ".join(names), split, split_col, timestamp_col, test_fraction, valid_fraction)
    out = Path(out)
    check_out(out, overwrite)
    wanted = _wanted(source_col, target_col, split, relation_col, weight_col, timestamp_col, split_col)
    table = read_log(paths, columns=wanted, delimiter=delimiter,
                     string_columns=[c for c in (source_col, target_col, relation_col, split_col) if c])
    dataset, report = build_dataset(
        table, source_col=source_col, target_col=target_col, relation_col=relation_col, weight_col=weight_col,
        timestamp_col=timestamp_col, split_col=split_col, split=split, test_fraction=test_fraction,
        valid_fraction=valid_fraction, seed=seed, source_type=source_type, target_type=target_type,
        default_relation=default_relation)
    report.seconds = time.perf_counter() - start
    dataset.info = {"ingest": report.to_dict()}  # with the total time, reading included
    dataset.save(out, overwrite=True)  # check_out allowed it
    if progress:
        print(report.summary(), file=sys.stderr)
    return report
