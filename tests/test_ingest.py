"""Tests for mixrec.data.ingest: formats, dictionaries, dedup, splits, reports and input errors."""
from __future__ import annotations

import gzip
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixrec.data.dataset import Dataset
from mixrec.data.ingest import IngestError, IngestReport, build_dataset, ingest, read_log

LOG = {
    "user_id": ["u2", "u1", "u1", "u3", "u2", "u1", "u2", "u3", "u1", "u2"],
    "item_id": [10, 11, 12, 10, 13, 10, 11, 11, 14, 12],
    "behavior": ["view", "view", "buy", "view", "buy", "view", "view", "buy", "view", "view"],
    "weight": [1.0, 2.5, 1.0, 0.5, 3.0, 1.0, 1.0, 2.0, 1.0, 4.0],
    "ts": [5, 1, 2, 3, 4, 6, 7, 8, 9, 10],
    "split": ["train", "train", "train", "train", "train", "test", "valid", "train", "TEST", "Validation"],
}
KW = dict(relation_col="behavior", weight_col="weight", timestamp_col="ts", split_col="split", progress=False)


def write(table: pa.Table | dict, path: Path) -> Path:
    """Write a table as the format named by ``path``'s extension."""
    table = table if isinstance(table, pa.Table) else pa.table(table)
    name = path.name
    if name.endswith((".parquet", ".pq")):
        pq.write_table(table, path)
        return path
    delim = "\t" if ".tsv" in name else ","
    buf = pa.BufferOutputStream()
    pcsv.write_csv(table, buf, pcsv.WriteOptions(delimiter=delim, quoting_style="needed"))
    data = buf.getvalue().to_pybytes()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def text(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def rows(ds: Dataset) -> list[tuple]:
    """The dataset as sorted (raw src, raw dst, relation, split, weight) tuples."""
    out = []
    for s, e in ds.edges.items():
        st_, tt = ds.relations[0].source_type, ds.relations[0].target_type
        src, dst = ds.ids[st_][e.src].tolist(), ds.ids[tt][e.dst].tolist()
        rel = [ds.relations[r].name for r in e.rel.tolist()]
        out += list(zip(src, dst, rel, [s] * len(e), e.weight.tolist()))
    return sorted(out, key=repr)


def same(a: Dataset, b: Dataset) -> None:
    assert a.relations == b.relations and list(a.ids) == list(b.ids) and list(a.edges) == list(b.edges)
    for t in a.ids:
        np.testing.assert_array_equal(a.ids[t], b.ids[t])
    for s in a.edges:
        for f in ("src", "dst", "rel", "weight"):
            np.testing.assert_array_equal(getattr(a.edges[s], f), getattr(b.edges[s], f))


# ------------------------------------------------------------------------------------------------ round trip
ids_int = st.integers(-5, 40)
ids_str = st.text("abcxyz019", min_size=0, max_size=4).map(lambda s: "k" + s)
SPLIT_LABEL = {"train": "train", "Train": "train", "valid": "valid", "VAL": "valid", "test": "test", "eval": "valid"}


@st.composite
def logs(draw):
    ids = draw(st.sampled_from([ids_int, ids_str]))
    n = draw(st.integers(1, 40))
    row = st.tuples(ids, ids, st.sampled_from(["a", "b", "c"]), st.sampled_from(list(SPLIT_LABEL)),
                    st.sampled_from([0.0, 0.5, 1.0, 2.25, 7.0]))
    data = draw(st.lists(row, min_size=n, max_size=n))
    data += draw(st.lists(st.sampled_from(data), max_size=5))  # some exact duplicates
    data = [r if i else (r[0], r[1], r[2], "train", r[4]) for i, r in enumerate(data)]
    seen = set()  # every relation needs a training edge: make the first row of each relation train
    data = [(r[0], r[1], r[2], "train" if r[2] not in seen and not seen.add(r[2]) else r[3], r[4]) for r in data]
    return data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=logs(), fmt=st.sampled_from(["csv", "tsv.gz", "parquet"]))
def test_round_trip(data, fmt):
    cols = dict(zip(("user_id", "item_id", "rel", "split", "w"), map(list, zip(*data))))
    with tempfile.TemporaryDirectory() as tmp:
        path = write(cols, Path(tmp) / f"log.{fmt}")
        report = ingest(path, Path(tmp) / "ds", relation_col="rel", weight_col="w", split_col="split",
                        progress=False)
        ds = Dataset.load(Path(tmp) / "ds")
    expected = {(s, d, r, SPLIT_LABEL[sp], w) for s, d, r, sp, w in data}
    got = rows(ds)
    assert len(got) == len(set(got)) == len(expected)  # duplicates removed, nothing else
    assert set(got) == expected
    assert report.duplicates_removed == len(data) - len({(s, d, r, SPLIT_LABEL[sp], w) for s, d, r, sp, w in data})
    assert report.rows_read == len(data)
    for t, v in ds.ids.items():  # dense, sorted dictionaries
        assert list(v) == sorted(set(v.tolist()))


# ------------------------------------------------------------------------------------------------ formats
def test_formats_give_identical_datasets(tmp_path):
    built = {}
    for fmt in ("csv", "tsv", "tsv.gz", "csv.gz", "parquet", "pq", "txt"):
        path = write(LOG, tmp_path / f"log.{fmt}")
        ingest(path, tmp_path / f"ds-{fmt}", **KW)
        built[fmt] = Dataset.load(tmp_path / f"ds-{fmt}")
    for fmt, ds in built.items():
        same(built["csv"], ds)
    ds = built["csv"]
    assert [r.name for r in ds.relations] == ["buy", "view"]
    assert ds.ids["user"].tolist() == ["u1", "u2", "u3"] and ds.ids["item"].tolist() == [10, 11, 12, 13, 14]
    assert ds.counts() == {"buy": {"train": 3}, "view": {"train": 3, "valid": 2, "test": 2}}


def test_several_files_and_delimiter_override(tmp_path):
    table = pa.table(LOG)
    a, b = write(table.slice(0, 4), tmp_path / "a.csv"), write(table.slice(4), tmp_path / "b.parquet")
    ingest([a, b], tmp_path / "two", **KW)
    ingest(write(table, tmp_path / "all.csv"), tmp_path / "one", **KW)
    same(Dataset.load(tmp_path / "one"), Dataset.load(tmp_path / "two"))
    semi = text(tmp_path / "log.dat", "user_id;item_id\n1;2\n3;4\n")
    ingest(semi, tmp_path / "semi", delimiter=";", progress=False, test_fraction=0.0)
    assert Dataset.load(tmp_path / "semi").ids["item"].tolist() == [2, 4]


def test_in_memory_table_and_dict(tmp_path):
    ds1, rep = build_dataset(pa.table(LOG), **{k: v for k, v in KW.items() if k != "progress"})
    ds2, _ = build_dataset(LOG, **{k: v for k, v in KW.items() if k != "progress"})
    same(ds1, ds2)
    odd = pa.table(LOG).set_column(0, "user_id", pa.array(LOG["user_id"], pa.large_string()))
    odd = odd.set_column(2, "behavior", pa.array(LOG["behavior"]).dictionary_encode())
    same(ds1, build_dataset(odd, **{k: v for k, v in KW.items() if k != "progress"})[0])
    assert isinstance(rep, IngestReport) and rep.rows_read == 10 and rep.num_sources == 3 and rep.num_targets == 5
    assert "10 rows" in rep.summary() and "view" in rep.summary()


# --------------------------------------------------------------------------------------- ids and dictionaries
def test_duplicates_counted_and_timestamp_distinguishes(tmp_path):
    log = {"user_id": [1, 1, 1, 1, 2, 2], "item_id": [5, 5, 5, 6, 5, 5], "t": [1, 1, 2, 1, 1, 1]}
    ds, rep = build_dataset(log, timestamp_col="t", test_fraction=0.0)
    assert rep.duplicates_removed == 2 and len(ds.split("train")) == 4
    ds, rep = build_dataset(log, test_fraction=0.0)  # without the timestamp, (1, 5) appears 3 times
    assert rep.duplicates_removed == 3 and rep.edges == {"interaction": {"train": 3, "valid": 0, "test": 0}}


def test_dictionaries_dense_sorted_and_order_independent(tmp_path):
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 300, 2000) * 7, rng.integers(-50, 50, 2000)
    ds, _ = build_dataset({"user_id": users, "item_id": items}, test_fraction=0.0)
    perm = rng.permutation(2000)
    ds2, _ = build_dataset({"user_id": users[perm], "item_id": items[perm]}, test_fraction=0.0)
    for t in ("user", "item"):
        np.testing.assert_array_equal(ds.ids[t], ds2.ids[t])
    np.testing.assert_array_equal(ds.ids["user"], np.unique(users))
    e = ds.split("train")
    assert set(e.src.tolist()) == set(range(ds.num("user"))) and set(e.dst.tolist()) == set(range(ds.num("item")))
    first = np.sort(np.unique(np.c_[users, items], axis=0, return_index=True)[1])
    np.testing.assert_array_equal(ds.ids["user"][e.src], users[first])  # first occurrences, in row order
    np.testing.assert_array_equal(ds.ids["item"][e.dst], items[first])
    assert ds.ids["user"].dtype == np.int64


def test_id_types(tmp_path):
    path = text(tmp_path / "l.csv", "user_id,item_id\n007,12\n7,-3\n8,12\n")
    ingest(path, tmp_path / "ds", progress=False, test_fraction=0.0)
    ds = Dataset.load(tmp_path / "ds")
    assert ds.ids["user"].tolist() == ["007", "7", "8"]  # leading zero: kept as text
    assert ds.ids["item"].tolist() == [-3, 12] and ds.ids["item"].dtype == np.int64


def test_shared_entity_type(tmp_path):
    path = text(tmp_path / "friends.tsv", "a\tb\nann\tbob\nbob\tann\ncid\tann\n")
    ingest(path, tmp_path / "ds", source_col="a", target_col="b", target_type="user", default_relation="friend",
           progress=False, test_fraction=0.0)
    ds = Dataset.load(tmp_path / "ds")
    assert list(ds.ids) == ["user"] and ds.ids["user"].tolist() == ["ann", "bob", "cid"]
    assert ds.relations[0].name == "friend" and ds.relations[0].target_type == "user"
    e = ds.split("train")
    assert list(zip(e.src.tolist(), e.dst.tolist())) == [(0, 1), (1, 0), (2, 0)]


# ------------------------------------------------------------------------------------------------ splits
def test_random_split_per_user(tmp_path):
    users = np.repeat(np.arange(100), 10)
    items = np.tile(np.arange(10), 100)
    log = {"user_id": users, "item_id": items}
    ds, rep = build_dataset(log, test_fraction=0.2, valid_fraction=0.1, seed=5)
    for s, k in (("test", 2), ("valid", 1)):
        np.testing.assert_array_equal(np.bincount(ds.split(s).src, minlength=100), k)
    again, _ = build_dataset(log, test_fraction=0.2, valid_fraction=0.1, seed=5)
    other, _ = build_dataset(log, test_fraction=0.2, valid_fraction=0.1, seed=6)
    same(ds, again)
    assert not np.array_equal(ds.split("test").dst, other.split("test").dst)
    assert rep.split == "random"


def test_temporal_and_leave_last_out(tmp_path):
    # user 1 has 5 edges (item = time order), user 2 a single edge, ISO timestamps in a csv
    lines = ["user_id,item_id,t", *(f"1,{i},2024-01-0{6 - i}T10:00:00" for i in range(1, 6)), "2,9,2024-01-01 00:00:00"]
    path = text(tmp_path / "t.csv", "\n".join(lines) + "\n")
    ingest(path, tmp_path / "tmp", timestamp_col="t", split="temporal", test_fraction=0.4, progress=False)
    ds = Dataset.load(tmp_path / "tmp")
    assert sorted(ds.ids["item"][ds.split("test").dst].tolist()) == [1, 2]  # latest two of user 1
    assert ds.ids["user"][ds.split("train").src].tolist().count(2) == 1
    ingest(path, tmp_path / "llo", timestamp_col="t", split="leave-last-out", valid_fraction=0.1, progress=False)
    ds = Dataset.load(tmp_path / "llo")
    assert ds.ids["item"][ds.split("test").dst].tolist() == [1]
    assert ds.ids["item"][ds.split("valid").dst].tolist() == [2]
    assert ds.info["ingest"]["split"] == "leave-last-out"


def test_report_in_manifest_and_progress(tmp_path, capsys):
    rep = ingest(write(LOG, tmp_path / "l.csv"), tmp_path / "ds", **{**KW, "progress": True})
    assert rep.summary() in capsys.readouterr().err
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["info"]["ingest"]["duplicates_removed"] == 0
    assert manifest["info"]["ingest"]["edges"]["view"] == {"train": 3, "valid": 2, "test": 2}


def test_overwrite_false(tmp_path):
    path = write(LOG, tmp_path / "l.csv")
    ingest(path, tmp_path / "ds", **KW)
    with pytest.raises(FileExistsError):
        ingest(path, tmp_path / "ds", overwrite=False, **KW)


# ------------------------------------------------------------------------------------------------ errors
def bad_cases(tmp: Path) -> list[tuple]:
    """(paths, kwargs, patterns the message must contain)."""
    good = "user_id,item_id,w,split\n1,2,1.0,train\n"
    return [
        (text(tmp / "cols.csv", "user,item\n1,2\n"), {}, ["cols.csv", "'user_id'", "['user', 'item']"]),
        (text(tmp / "empty.csv", ""), {}, ["empty.csv", "no data rows"]),
        (text(tmp / "header.tsv", "user_id\titem_id\n"), {}, ["header.tsv", "no data rows"]),
        (text(tmp / "ragged.csv", good + "3,4,1.0,train\n5,6\n"), {}, ["ragged.csv", "data row 3", "delimiter"]),
        (text(tmp / "nan.csv", good + "3,4,nan,train\n"), {"weight_col": "w"}, ["nan.csv", "data row 2", "'w'"]),
        (text(tmp / "inf.csv", good + "3,4,2,train\n3,5,inf,train\n"), {"weight_col": "w"}, ["inf.csv", "data row 3"]),
        (text(tmp / "neg.csv", good + "3,4,-1,train\n"), {"weight_col": "w"}, ["neg.csv", "data row 2", ">= 0"]),
        (text(tmp / "txtw.csv", "user_id,item_id,w\n1,2,abc\n1,3,1\n"), {"weight_col": "w"},
         ["txtw.csv", "data row 1", "'abc'"]),
        (text(tmp / "nullid.csv", good + "3,,1.0,train\n"), {}, ["nullid.csv", "data row 2", "'item_id'", "empty id"]),
        (text(tmp / "split.csv", good + "3,4,1.0,holdout\n"), {"split_col": "split"},
         ["split.csv", "data row 2", "'split'", "'holdout'"]),
        (text(tmp / "onlytest.csv", "user_id,item_id,r,split\n1,2,a,train\n1,3,b,test\n"),
         {"split_col": "split", "relation_col": "r"}, ["onlytest.csv", "relation 'b'", "no edges in train"]),
        (text(tmp / "nots.csv", good), {"split": "temporal"}, ["nots.csv", "temporal", "timestamp column"]),
        (text(tmp / "nullts.csv", "user_id,item_id,t\n1,2,5\n1,3,\n"),
         {"split": "leave-last-out", "timestamp_col": "t"},
         ["nullts.csv", "data row 2", "'t'", "empty timestamp"]),
        (text(tmp / "log.json", good), {}, ["log.json", "unknown file type"]),
        (tmp / "missing.csv", {}, ["missing.csv", "no such file"]),
        (text(tmp / "junk.parquet", "not parquet"), {}, ["junk.parquet", "Parquet"]),
        (text(tmp / "badts.csv", "user_id,item_id,t\n1,2,5\n1,3,soon\n"), {"split": "temporal", "timestamp_col": "t"},
         ["badts.csv", "data row 2", "'t'", "'soon'"]),
    ]


def test_errors_name_file_row_column_and_keep_output(tmp_path):
    out = tmp_path / "out"
    ingest(write(LOG, tmp_path / "good.csv"), out, **KW)
    before = snapshot(out)
    for path, kwargs, patterns in bad_cases(tmp_path):
        with pytest.raises(IngestError) as info:
            ingest(path, out, progress=False, **kwargs)
        for p in patterns:
            assert p in str(info.value), (path.name, p, str(info.value))
        assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp dirs left


def test_error_row_counts_within_its_own_file(tmp_path):
    a = text(tmp_path / "a.csv", "user_id,item_id,w\n1,2,1\n1,3,1\n1,4,1\n")
    b = text(tmp_path / "b.csv", "user_id,item_id,w\n2,2,1\n2,3,-5\n")
    with pytest.raises(IngestError, match=r"b\.csv: data row 2, column 'w'"):
        ingest([a, b], tmp_path / "ds", weight_col="w", progress=False)
    with pytest.raises(IngestError, match=r"c\.csv: missing column\(s\) 'item_id'; the columns present are "
                                          r"\['user_id', 'x'\]"):
        read_log([a, text(tmp_path / "c.csv", "user_id,x\n1,2\n")], columns=["user_id", "item_id"])


def test_bad_options():
    with pytest.raises(IngestError, match="unknown split strategy"):
        build_dataset(LOG, split="sometimes")
    with pytest.raises(IngestError, match="split_col"):
        build_dataset(LOG, split="column")
    with pytest.raises(IngestError, match="valid_fraction"):
        build_dataset(LOG, test_fraction=0.7, valid_fraction=0.4)
    with pytest.raises(IngestError, match="<table>"):
        build_dataset({"user_id": [1, "a"], "item_id": [1, 2]})
