"""Silent wrong answers refused: stale or tampered indexes, non-finite configs and losses, unknown config
keys, ingest over foreign folders, unverified models, and bad inputs that must name their file."""
import logging
import shutil

import numpy as np
import pytest

from mixrec.index import ComponentIndex
from mixrec.model import MixtureModel
from mixrec.retrieve import Retriever
from mixrec.train import train
from tests.conftest import small_config


def fresh_candidates(model: MixtureModel, k: int = 10):
    """The oracle: candidates from an index built right now from the model's own target vectors."""
    idx = ComponentIndex.build(model.vectors(model.target_type).numpy(), model.config.index)
    return Retriever(model, index=idx).recommend(np.arange(model.num(model.source_type)), k).items


@pytest.fixture(scope="module")
def retrained(planted, tmp_path_factory):
    """A model directory trained twice: seed 0 / dim 8, then seed 5 / dim 12 over it; the first run's index kept."""
    ds, _ = planted
    root = tmp_path_factory.mktemp("retrain")
    first = train(ds, small_config(1), root / "m", progress=False)
    Retriever(MixtureModel.load(root / "m")).recommend([0, 1], 5)  # builds and saves index/
    shutil.copytree(root / "m" / "index", root / "old_index")
    train(ds, small_config(1, seed=5, dim=12), root / "m", progress=False)
    return root, first


def test_retraining_over_a_model_removes_its_index(retrained):
    root, _ = retrained
    assert not (root / "m" / "index").exists()
    model = MixtureModel.load(root / "m")
    got = Retriever(model).recommend(np.arange(model.num(model.source_type)), 10).items
    np.testing.assert_array_equal(got, fresh_candidates(model))


@pytest.mark.parametrize("dim", [8, 12])
def test_a_stale_index_is_rebuilt_not_reused(planted, retrained, tmp_path, caplog, dim):
    """The old run's index copied into a newer model (same or other dim) is detected by its embeddings checksum."""
    ds, _ = planted
    root, _ = retrained
    train(ds, small_config(1, seed=7, dim=dim), tmp_path / "m", progress=False)
    shutil.copytree(root / "old_index", tmp_path / "m" / "index")
    model = MixtureModel.load(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="mixrec"):
        got = Retriever(model).recommend(np.arange(model.num(model.source_type)), 10).items
    np.testing.assert_array_equal(got, fresh_candidates(model))
    assert "rebuilding" in caplog.text and "embeddings" in caplog.text
    # and the rebuilt index is saved and reused from then on
    again = Retriever(MixtureModel.load(tmp_path / "m")).recommend(np.arange(model.num(model.source_type)), 10).items
    np.testing.assert_array_equal(again, got)
