"""Shared fixtures: a small planted multi-interest dataset and the shared real data folder (optional)."""
from pathlib import Path

import pytest

from mixrec.config import Config
from mixrec.data.ingest import build_dataset
from mixrec.data.synthetic import SyntheticSpec, generate

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
