"""HOGWILD workers (workers=2) on the typed Explore-like graph: per-type tables, planted interests recovered."""
import numpy as np
import pytest

from mixrec.config import Config
from mixrec.data.explore import ExploreSpec, generate_explore, write_explore
from mixrec.data.schema import ingest_graph
from mixrec.retrieve import Retriever
from mixrec.train import train

SPEC = ExploreSpec(n_accounts=300, n_creators=60, n_topics=6, seed=1)
TRAIN = {"dim": 16, "epochs": 4, "batch_size": 256, "negatives.batch": 64, "negatives.uniform": 64,
         "components.consumer": 3, "components.creator": 1, "components.media": 1, "early_stopping.patience": 0}


def naive_planted_precision(model, truth, k: int = 10) -> tuple[float, float]:
    """Loop over consumers: share of the top ``k`` creators in a planted topic, and the chance share."""
    r = Retriever(model, source_type="consumer", target_type="creator")
    got = r.recommend(np.arange(model.num("consumer")), k=k, exclude_seen=False).items
    hits, chance = [], []
    topics = [int(truth.creator_topic[int(c[1:])]) for c in model.ids["creator"]]
    for i, raw in enumerate(model.ids["consumer"]):
        planted = {int(t) for t in truth.interests[int(raw[1:])] if t >= 0}
        row = [c for c in got[i] if c >= 0]
        hits.append(sum(topics[c] in planted for c in row) / len(row))
        chance.append(sum(t in planted for t in topics) / len(topics))
    return float(np.mean(hits)), float(np.mean(chance))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hogwild_workers_train_the_typed_graph(tmp_path):
    ds = ingest_graph(write_explore(SPEC, tmp_path / "raw"), tmp_path / "data", progress=False)
    model = train(ds, Config().with_overrides({**TRAIN, "workers": 2}), tmp_path / "model", progress=False)
    assert {t: model.components(t) for t in model.tables} == {"consumer": 3, "creator": 1, "media": 1}
    assert {t: model.num(t) for t in model.tables} == {t: len(ds.ids[t]) for t in ds.ids}
    precision, chance = naive_planted_precision(model, generate_explore(SPEC)[1])
    assert precision > 2 * chance, (precision, chance)
