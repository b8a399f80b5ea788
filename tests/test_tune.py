"""`mixrec tune`: Optuna search on the validation split (test never used), best config loadable by train."""
import numpy as np
import pytest

from mixrec.cli import main
from mixrec.config import Config
from mixrec.data.synthetic import write
from mixrec.tune import validation_score, with_validation
from tests.conftest import small_spec

SMALL = ["--set", "dim=8", "--set", "epochs=2", "--set", "batch_size=256", "--set", "negatives.batch=32",
         "--set", "components.user=2"]


def test_with_validation_drops_test_and_holds_out_train(planted):
    ds, _ = planted
    v = with_validation(ds, 0.2, seed=0)
    assert set(v.edges) == {"train", "valid"}
    train = ds.split("train")
    assert len(v.split("train")) + len(v.split("valid")) == len(train)
    pairs = lambda e: set(zip(e.src.tolist(), e.dst.tolist(), e.rel.tolist()))  # noqa: E731
    assert pairs(v.split("train")) | pairs(v.split("valid")) == pairs(train)
    assert not pairs(v.split("valid")) & pairs(ds.split("test"))


def test_validation_score_is_the_best_epoch():
    hist = [{"valid_recall@20": 0.1}, {"valid_recall@20": 0.3}, {"valid_recall@20": 0.2}]
    assert validation_score(hist, "valid_recall@20") == 0.3
    assert np.isnan(validation_score([{"loss": 1.0}], "valid_recall@20"))


def test_tune_cli_writes_a_config_that_train_loads(tmp_path):
    pytest.importorskip("optuna")
    files = write(small_spec(), tmp_path / "raw")
    assert main(["ingest", str(files["events"]), "--out", str(tmp_path / "data"), "--relation-col", "event",
                 "--split-col", "split"]) == 0
    out = tmp_path / "best.toml"
    assert main(["tune", str(tmp_path / "data"), "--trials", "2", "--out", str(out)] + SMALL) == 0
    best = Config.load(out)
    assert best.dim == 8 and best.components_of("user") == 2 and best.epochs == 2  # the base is kept
    assert best.lr != Config().lr and 0.02 <= best.lr <= 1.0  # a searched value was written
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "model"), "--config", str(out),
                 "--quiet"]) == 0


def test_default_space_tunes_the_knob_of_the_chosen_loss():
    from mixrec.tune import default_space
    soft = default_space(Config())
    assert "temperature" in soft and "margin" not in soft and "lr" in soft
    margin = default_space(Config().with_overrides({"loss": "margin"}))
    assert "margin" in margin and "temperature" not in margin
