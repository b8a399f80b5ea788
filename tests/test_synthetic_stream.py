"""The streaming synthetic generator: chunked output, both layouts, planted structure, bounded chunks, CLI."""
import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mixrec.cli import main
from mixrec.data import synthetic
from mixrec.data.dataset import Dataset
from mixrec.data.synthetic import SyntheticSpec
from mixrec.data.synthetic_stream import stream_chunks, write_stream

SPEC = SyntheticSpec(n_users=500, n_items=600, n_clusters=10, edges_per_user=(8, 20), seed=5)


@pytest.fixture
def small_chunks(monkeypatch):
    """Force many chunks (a few users each) so the chunked code paths are what is tested."""
    monkeypatch.setattr(synthetic, "CHUNK_DRAWS", 400)


def test_chunks_are_bounded_and_cover_every_user_once(small_chunks):
    _, _, chunks = stream_chunks(SPEC)
    chunks = list(chunks)
    assert len(chunks) > 10
    users = np.concatenate([c.user for c in chunks])
    assert np.all(np.diff(users) >= 0) and set(users.tolist()) == set(range(SPEC.n_users))
    for c in chunks:
        assert c.user.size <= 400 * 2  # a chunk never holds more rows than its draws (plus likes)


def test_events_layout_schema_and_per_user_invariants(small_chunks, tmp_path):
    paths = write_stream(SPEC, tmp_path, layout="events")
    log = pq.read_table(paths["events"])
    assert log.schema.names == ["user_id", "item_id", "event", "timestamp", "split"]
    cols = {c: log.column(c).to_numpy(zero_copy_only=False) for c in log.column_names}
    user = np.array([int(u[1:]) for u in cols["user_id"]])
    click = cols["event"] == "click"
    pairs = user[click] * 10**9 + cols["item_id"][click]
    assert len(np.unique(pairs)) == click.sum()  # no repeated (user, item) click
    n_clicks = np.bincount(user[click], minlength=SPEC.n_users)
    assert n_clicks.max() <= SPEC.edges_per_user[1] and np.mean(n_clicks >= SPEC.edges_per_user[0]) > 0.95
    for u in range(0, SPEC.n_users, 50):  # timestamps increase, test rows are each user's last ones
        m = user == u
        ts, test = cols["timestamp"][m], cols["split"][m] == "test"
        assert np.all(np.diff(ts) > 0)
        assert test.sum() >= 1 and np.all(test[np.argmax(test):])
    items = pacsv.read_csv(paths["items"], parse_options=pacsv.ParseOptions(delimiter="\t"))
    assert items.num_rows == SPEC.n_items and set(cols["item_id"].tolist()) <= set(items.column("item_id").to_pylist())


def test_clicks_concentrate_in_few_clusters_unlike_pure_noise(small_chunks, tmp_path):
    def top4_share(spec):
        item_ids, cluster, chunks = stream_chunks(spec)
        counts = np.zeros((spec.n_users, spec.n_clusters))
        for c in chunks:
            np.add.at(counts, (c.user[c.rel == 0], cluster[c.item[c.rel == 0]]), 1)
        return np.sort(counts, axis=1)[:, ::-1][:, :4].sum(axis=1) / counts.sum(axis=1)

    assert np.mean(top4_share(SPEC) > 0.8) > 0.95
    assert np.mean(top4_share(SyntheticSpec(**{**SPEC.__dict__, "noise": 1.0})) > 0.8) < 0.2


def test_dataset_layout_equals_the_events_layout(small_chunks, tmp_path):
    write_stream(SPEC, tmp_path / "ev", layout="events")
    write_stream(SPEC, tmp_path / "ds", layout="dataset")
    ds = Dataset.load(tmp_path / "ds")
    log = pq.read_table(tmp_path / "ev" / "events.parquet")
    assert ds.num("user") == SPEC.n_users and ds.num("item") == SPEC.n_items
    train = ds.split("train")
    ev_train = np.asarray(log.column("split").to_numpy(zero_copy_only=False) == "train")
    raw_items = ds.ids["item"][train.dst]
    assert np.array_equal(raw_items, log.column("item_id").to_numpy()[ev_train])
    users = np.array([int(u[1:]) for u in log.column("user_id").to_numpy(zero_copy_only=False)[ev_train]])
    assert np.array_equal(train.src, users)
    assert sum(v.get("test", 0) for v in ds.counts().values()) == (~ev_train).sum()
    assert ds.ids["user"][:2].tolist() == ["u000000", "u000001"]


def test_deterministic_and_cli(tmp_path, capsys):
    a = write_stream(SPEC, tmp_path / "a")
    b = write_stream(SPEC, tmp_path / "b")
    assert pq.read_table(a["events"]).equals(pq.read_table(b["events"]))
    assert main(["generate", "--stream", "--layout", "dataset", "--out", str(tmp_path / "c"), "--users", "50",
                 "--items", "40", "--clusters", "4", "--edges-per-user", "3", "6", "--relations", "click"]) == 0
    ds = Dataset.load(tmp_path / "c")
    assert [r.name for r in ds.relations] == ["click"] and ds.num("user") == 50
    per_user = np.bincount(ds.split(["train", "test"]).src, minlength=50)
    assert per_user.max() <= 6
    assert main(["generate", "--layout", "dataset", "--out", str(tmp_path / "d")]) == 2
