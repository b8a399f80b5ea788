"""Shared fixtures: a small planted multi-interest dataset, a small typed Explore-like model and the shared real
data folder (optional)."""
import importlib.util
import sys
from pathlib import Path

import pytest

from mixrec.config import Config
from mixrec.data.ingest import build_dataset
from mixrec.data.synthetic import SyntheticSpec, generate

BENCH = Path(__file__).resolve().parents[1] / "bench"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EXPLORE_TRAIN = {"dim": 8, "epochs": 2, "batch_size": 256, "negatives.batch": 32, "negatives.uniform": 32,
                 "components.consumer": 2, "components.creator": 1, "components.media": 1,
                 "early_stopping.patience": 0}


def train_explore(root: Path, **over):
    """A model of the small Explore-like graph (consumers, creators, media) trained under ``root``."""
    from mixrec.data.explore import ExploreSpec, write_explore
    from mixrec.data.schema import ingest_graph
    from mixrec.train import train

    ds = ingest_graph(write_explore(ExploreSpec(n_accounts=120, n_creators=24, seed=1), root / "raw"), root / "data",
                      progress=False)
    return train(ds, Config().with_overrides({**EXPLORE_TRAIN, **over}), root / "model", progress=False)


@pytest.fixture(scope="session")
def explore_model(tmp_path_factory):
    """The Explore-like model at EXPLORE_TRAIN, shared by the typed serving and funnel tests."""
    return train_explore(tmp_path_factory.mktemp("explore"))


def small_spec(**kw) -> SyntheticSpec:
    base = dict(n_users=300, n_items=200, n_clusters=6, edges_per_user=(15, 30), seed=0)
    base.update(kw)
    return SyntheticSpec(**base)


def small_config(epochs: int, **over) -> Config:
    """The small training configuration that the serving, fold-in and funnel tests train their models with."""
    return Config().with_overrides({"dim": 8, "epochs": epochs, "batch_size": 256, "negatives.batch": 32,
                                    "negatives.uniform": 32, "components.user": 3, **over})


@pytest.fixture(scope="session")
def planted():
    """(dataset, item label table) of a small synthetic log with two relations."""
    log, items = generate(small_spec())
    ds, _ = build_dataset(log, source_col="user_id", target_col="item_id", relation_col="event",
                          timestamp_col="timestamp", split_col="split")
    return ds, items


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("the shared datasets folder is not present")
    return SHARED_DATA


def load_bench(monkeypatch, script: str):
    """bench/<script>.py imported as a fresh module (bench/ on the path); removed from sys.modules afterwards.
    A generator for fixtures: ``yield from load_bench(monkeypatch, "fusion")``."""
    monkeypatch.syspath_prepend(str(BENCH))
    name = f"bench_{script}_under_test"
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(name, None)
