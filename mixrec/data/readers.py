"""Reading interaction logs: CSV/TSV (also gzip) and Parquet into one Arrow table, with file-naming errors."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

SOURCES_KEY = b"mixrec.sources"
_TEXT = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": None}
_PARQUET = (".parquet", ".pq")


class IngestError(ValueError):
    """Bad input for ``mixrec ingest``; the message names the file, row and column where they apply."""


def read_log(paths: str | Path | Sequence[str | Path], *, columns: Sequence[str] | None = None,
             string_columns: Sequence[str] = (), delimiter: str | None = None) -> pa.Table:
    """Read and concatenate CSV/TSV(.gz)/Parquet logs, keeping only ``columns`` (all must exist).

    ``string_columns`` are read as text from CSV/TSV. The files and their row counts are recorded in the
    schema metadata (key ``mixrec.sources``) so later errors can name the file and row.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise IngestError("no input files given; pass one or more .csv/.tsv/.parquet paths")
    tables = [_read_one(p, columns, string_columns, delimiter) for p in paths]
    for p, t in zip(paths[1:], tables[1:]):
        if t.column_names != tables[0].column_names:
            raise IngestError(f"{p}: columns {t.column_names} differ from {paths[0]}'s {tables[0].column_names}; "
                              f"all input files need the same columns")
    table = _concat(tables) if len(tables) > 1 else tables[0]
    sources = [[str(p), t.num_rows] for p, t in zip(paths, tables)]
    return table.replace_schema_metadata({SOURCES_KEY: json.dumps(sources)})


def _read_one(path: Path, columns: Sequence[str] | None, string_columns: Sequence[str],
              delimiter: str | None) -> pa.Table:
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith(_PARQUET):
        try:
            _require(path, columns, pq.read_schema(path).names)
            table = pq.read_table(path, columns=list(columns) if columns is not None else None)
        except (pa.ArrowInvalid, OSError) as err:
            raise IngestError(f"{path}: could not read it as Parquet: {err}") from None
    else:
        table = _read_text(path, delimiter or _delimiter_for(path), columns, string_columns)
    if table.num_rows == 0:
        raise IngestError(f"{path}: no data rows (only a header, or an empty file); check the path")
    return table


def _delimiter_for(path: Path) -> str:
    ext = Path(re.sub(r"\.(gz|bz2|zst)$", "", path.name.lower())).suffix
    if ext not in _TEXT:
        raise IngestError(f"{path}: unknown file type; use .csv, .tsv, .txt (optionally .gz), .parquet or .pq, "
                          f"or pass a delimiter")
    if _TEXT[ext] is not None:
        return _TEXT[ext]
    with pa.input_stream(str(path), compression="detect") as fh:  # .txt: sniff the header line
        head = fh.read(1 << 16).decode("utf-8", "replace").splitlines()
    first = head[0] if head else ""
    return "\t" if "\t" in first else "," if "," in first else " "


def _read_text(path: Path, delim: str, columns: Sequence[str] | None, string_columns: Sequence[str]) -> pa.Table:
    parse = pcsv.ParseOptions(delimiter=delim)
    try:
        with pcsv.open_csv(path, parse_options=parse) as reader:  # header only: check columns first
            present = reader.schema.names
    except OSError as err:
        raise IngestError(f"{path}: could not read the file: {err}") from None
    except pa.ArrowInvalid as err:
        if "Empty CSV" in str(err):
            raise IngestError(f"{path}: no data rows (the file is empty); check the path") from None
        raise _parse_error(path, parse, err) from None
    _require(path, columns, present)
    convert = pcsv.ConvertOptions(
        include_columns=list(columns) if columns is not None else None,
        column_types={c: pa.string() for c in string_columns if c in present},
        null_values=[""], strings_can_be_null=True)
    try:
        return pcsv.read_csv(path, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as err:
        # Re-read single-threaded so pyarrow reports the line number, then wrap it.
        raise _parse_error(path, parse, err, convert) from None


def _parse_error(path: Path, parse: pcsv.ParseOptions, err: Exception,
                 convert: pcsv.ConvertOptions | None = None) -> IngestError:
    try:
        pcsv.read_csv(path, read_options=pcsv.ReadOptions(use_threads=False), parse_options=parse,
                      convert_options=convert)
    except pa.ArrowInvalid as again:
        err = again
    msg = str(err)
    m = re.search(r"Row #(\d+)", msg)
    where = f" (data row {int(m.group(1)) - 1}; line {m.group(1)} counting the header)" if m else ""
    return IngestError(f"{path}: could not parse the file{where}: {msg}. Check the delimiter "
                       f"({parse.delimiter!r} was used; pass delimiter=/--delimiter to change it) and that every "
                       f"row has the same number of fields with valid values")


def _require(path: Path | str, columns: Sequence[str] | None, present: Sequence[str]) -> None:
    missing = [c for c in (columns or ()) if c not in present]
    if missing:
        raise IngestError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; the columns present are "
                          f"{list(present)}. Pass the right column names (source_col=, target_col=, ...)")


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Concatenate tables with the same columns, unifying types that differ (ints, floats, else text)."""
    cols = {}
    for name in tables[0].column_names:
        parts = [t.column(name) for t in tables]
        types = {p.type for p in parts}
        if len(types) > 1:
            ints, nums = (all(map(f, types)) for f in (pa.types.is_integer,
                                                        lambda t: pa.types.is_integer(t) or pa.types.is_floating(t)))
            parts = [p.cast(pa.int64() if ints else pa.float64() if nums else pa.string()) for p in parts]
        cols[name] = pa.chunked_array([c for p in parts for c in p.chunks], type=parts[0].type)
    return pa.table(cols)
