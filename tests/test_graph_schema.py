"""The Explore-like typed generator, the graph schema ingest, and training/retrieval on the typed graph."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from mixrec.cli import main
from mixrec.config import Config, ConfigError
from mixrec.data.dataset import Dataset
from mixrec.data.explore import ExploreSpec, generate_explore, write_explore
from mixrec.data.schema import GraphSchema, ingest_graph
from mixrec.retrieve import Retriever
from mixrec.train import train
from mixrec.train.sampler import make_batches, training_edges

SPEC = ExploreSpec(n_accounts=300, n_creators=60, n_topics=6, seed=1)
TRAIN = {"dim": 16, "epochs": 4, "batch_size": 256, "negatives.batch": 64, "negatives.uniform": 64,
         "components.consumer": 3, "components.creator": 1, "components.media": 1, "early_stopping.patience": 0}


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    schema = write_explore(SPEC, root / "raw")
    return schema, ingest_graph(schema, root / "data", progress=False)


def test_generator_plants_interests_exactly_without_noise():
    tables, truth = generate_explore(ExploreSpec(n_accounts=80, n_creators=20, n_topics=4, noise=0.0, seed=2))
    for name, topic in (("follow", truth.creator_topic), ("like", truth.media_topic)):
        t = tables[name]
        cons = [int(x[1:]) for x in t.column("consumer_id").to_pylist()]
        dst = [int(x[1:]) for x in t.column(t.column_names[1]).to_pylist()]
        for c, d in zip(cons, dst):  # every engagement lies in one of the consumer's planted topics
            assert topic[d] in set(truth.interests[c][truth.interests[c] >= 0].tolist())
    authored = tables["authored"]
    for c, m in zip(authored.column("creator_id").to_pylist(), authored.column("media_id").to_pylist()):
        assert truth.media_author[int(m[1:])] == int(c[1:])


def test_schema_ingest_keeps_every_raw_edge_with_ids_per_type(graph, tmp_path):
    schema_path, ds = graph
    schema = GraphSchema.load(schema_path)
    assert [(r.name, r.source_type, r.target_type) for r in ds.relations] == \
        [("follow", "consumer", "creator"), ("like", "consumer", "media"), ("authored", "creator", "media")]
    for r in schema.relations:
        raw = pq.read_table(schema_path.parent / r.file).to_pylist()
        want = {(row[r.source_col], row[r.target_col], row["split"]) for row in raw}
        got = set()
        for split in ("train", "test"):
            e = ds.split(split, relations=[r.name])
            got |= {(ds.ids[r.source][s], ds.ids[r.target][d], split) for s, d in zip(e.src, e.dst)}
        assert got == want, r.name
    # a persona: the same raw id is a consumer and a creator, with its own dense index in each type
    assert set(ds.ids["creator"].tolist()) <= set(ds.ids["consumer"].tolist())
    assert ds.info["task_weights"] == {"follow": 1.0, "like": 1.0, "authored": 0.5}
    # the CLI writes the same dataset
    assert main(["ingest", "--schema", str(schema_path), "--out", str(tmp_path / "cli")]) == 0
    back = Dataset.load(tmp_path / "cli")
    for t in ds.ids:
        np.testing.assert_array_equal(back.ids[t], ds.ids[t])
    for s in ds.edges:
        np.testing.assert_array_equal(back.edges[s].src, ds.edges[s].src)
        np.testing.assert_array_equal(back.edges[s].rel, ds.edges[s].rel)


def test_schema_errors_name_the_field(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text('[entities.user]\n[[relations]]\nname="x"\nsource="user"\ntarget="item"\nfile="f.csv"\n'
                 'source_col="a"\ntarget_col="b"\n')
    with pytest.raises(ConfigError, match="'item' is not a declared entity type"):
        GraphSchema.load(p)


def test_negatives_come_from_the_destination_type(graph):
    _, ds = graph
    cfg = Config().with_overrides(TRAIN)
    edges = training_edges(ds, cfg)
    seen = set()
    for b in make_batches(edges, cfg, 0):
        n = ds.num(b.target_type)
        assert b.uniform.max() < n and b.dst.max() < n
        seen.add(b.target_type)
    assert seen == {"creator", "media"}


def planted_precision(model, truth, k=10) -> tuple[float, float]:
    """Share of retrieved creators whose planted topic is one of the consumer's interests, and the same share
    for a uniform draw (the chance level)."""
    r = Retriever(model, source_type="consumer", target_type="creator")
    cons = np.arange(model.num("consumer"))
    got = r.recommend(cons, k=k, exclude_seen=False).items
    raw_cons = np.array([int(x[1:]) for x in model.ids["consumer"]])
    raw_cre = np.array([int(x[1:]) for x in model.ids["creator"]])
    topic = truth.creator_topic[raw_cre]
    hits = [np.isin(topic[row[row >= 0]], truth.interests[raw_cons[i]]).mean() for i, row in enumerate(got)]
    chance = [np.isin(topic, truth.interests[c]).mean() for c in raw_cons]
    return float(np.mean(hits)), float(np.mean(chance))


@pytest.fixture(scope="module")
def trained(graph, tmp_path_factory):
    return train(graph[1], Config().with_overrides(TRAIN), tmp_path_factory.mktemp("m") / "model", progress=False)


def test_in_memory_training_recovers_planted_interests(trained):
    model = trained
    assert {t: model.components(t) for t in model.tables} == {"consumer": 3, "creator": 1, "media": 1}
    assert model.config.relations["authored"].weight == 0.5  # the schema's task weight
    precision, chance = planted_precision(model, generate_explore(SPEC)[1])
    assert precision > 0.75 and precision > 2 * chance, (precision, chance)


def test_partitioned_training_accepts_the_typed_graph(graph, tmp_path):
    _, ds = graph
    cfg = Config().with_overrides({**TRAIN, "partitions.consumer": 2, "partitions.media": 2})
    model = train(ds.path, cfg, tmp_path / "p", progress=False)
    assert {t: model.components(t) for t in model.tables} == {"consumer": 3, "creator": 1, "media": 1}
    precision, chance = planted_precision(model, generate_explore(SPEC)[1])
    assert precision > 2 * chance, (precision, chance)


def test_retrieve_between_any_two_types_cli_and_library(trained, tmp_path):
    model = trained
    out = tmp_path / "c.parquet"
    assert main(["retrieve", str(model.path), "--from", "consumer", "--to", "creator", "--k", "5",
                 "--out", str(out), "--quiet"]) == 0
    table = pq.read_table(out).to_pydict()
    r = Retriever(model, source_type="consumer", target_type="creator")
    cands = r.recommend(np.arange(model.num("consumer")), k=5)
    want = r.to_table(np.arange(model.num("consumer")), cands).to_pydict()
    assert table["user"] == want["user"] and table["item"] == want["item"]
    assert set(table["user"]) <= set(model.ids["consumer"].tolist())
    followed = model.seen(source_type="consumer", target_type="creator")
    for u in range(model.num("consumer")):  # seen-exclusion within creators
        assert not set(cands.items[u].tolist()) & set(followed[1][followed[0][u]:followed[0][u + 1]].tolist())


@pytest.mark.parametrize("t", ["consumer", "media"])
def test_same_type_retrieval_never_returns_the_query(trained, t):
    r = Retriever(trained, source_type=t, target_type=t)
    q = np.arange(min(50, trained.num(t)))
    got = r.recommend(q, k=8).items
    assert (got >= 0).all() and not (got == q[:, None]).any()


def test_explore_generator_holds_out_distinct_pairs():
    """No (consumer, creator) or (consumer, medium) pair is both in train and in test (naive set check)."""
    tables, _ = generate_explore(ExploreSpec(n_accounts=200, n_creators=40, seed=3))
    for name, cols in (("follow", ("consumer_id", "creator_id")), ("like", ("consumer_id", "media_id"))):
        t = tables[name].to_pydict()
        pairs = list(zip(t[cols[0]], t[cols[1]]))
        assert len(pairs) == len(set(pairs)), name
        train = {p for p, s in zip(pairs, t["split"]) if s == "train"}
        test = {p for p, s in zip(pairs, t["split"]) if s == "test"}
        assert test and not (train & test), name


def test_schema_ingest_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    """`ingest --schema` guards --out as plain ingest does: a foreign folder is kept unless overwrite is given."""
    schema = write_explore(ExploreSpec(n_accounts=60, n_creators=12, seed=2), tmp_path / "raw")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a mixrec dataset"):
        ingest_graph(schema, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert main(["ingest", "--schema", str(schema), "--out", str(foreign)]) == 2
    assert (foreign / "notes.txt").is_file()
    ingest_graph(schema, tmp_path / "data", progress=False)
    ingest_graph(schema, tmp_path / "data", progress=False)  # a dataset directory is replaced
    ingest_graph(schema, foreign, overwrite=True, progress=False)
    assert not (foreign / "notes.txt").exists()
