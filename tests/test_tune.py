"""`mixrec tune`: Optuna search on the validation split (test never used), best config loadable by train."""
import json

import numpy as np
import pytest

from mixrec.cli import main
from mixrec.config import Config
from mixrec.data.synthetic import write
from mixrec.tune import base_params, default_space, validation_score, with_validation
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
    out, trials = tmp_path / "best.toml", tmp_path / "trials.json"
    assert main(["tune", str(tmp_path / "data"), "--trials", "3", "--out", str(out), "--trials-json", str(trials)]
                + SMALL) == 0
    best = Config.load(out)
    assert best.dim == 8 and best.components_of("user") == 2 and best.epochs == 2  # the base is kept
    record = json.loads(trials.read_text())
    first = record["trials"][0]
    assert first["lr"] == Config().lr and first["temperature"] == Config().temperature  # trial 0 is the base
    assert record["base"] == first["value"]
    top = max(record["trials"], key=lambda t: t["value"])
    assert record["best"] == top["value"] and best.lr == top["lr"]  # the best trial's values were written
    assert len({t["lr"] for t in record["trials"]}) == 3  # the others were searched
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "model"), "--config", str(out),
                 "--quiet"]) == 0


def test_with_validation_on_one_relation_holds_out_only_its_edges(planted):
    ds, _ = planted
    name = ds.relations[1].name
    v = with_validation(ds, 0.3, seed=0, relation=name)
    train, valid = ds.split("train"), v.split("valid")
    assert len(valid) > 0 and set(valid.rel.tolist()) == {ds.relation_code(name)}
    assert len(v.split("train")) + len(valid) == len(train)
    other = ds.split("train", relations=[ds.relations[0].name])
    assert len(v.split("train", relations=[ds.relations[0].name])) == len(other)  # other relations all kept
    with pytest.raises(Exception, match="nope"):
        with_validation(ds, 0.3, relation="nope")


def test_base_params_reads_the_config_and_rejects_values_outside_the_space():
    cfg = Config().with_overrides({"components.user": 4})  # a mixture: gamma and theta are tuned too
    start = base_params(cfg, default_space(cfg))
    assert start == {"lr": cfg.lr, "gamma": cfg.gamma, "theta": cfg.theta,
                     "negatives.uniform": cfg.negatives.uniform, "temperature": cfg.temperature}
    assert cfg.value_at("components.user") == cfg.components_of("user") and cfg.value_at("lr") == cfg.lr
    assert base_params(cfg.with_overrides({"lr": 5.0}), default_space(cfg)) is None
    assert base_params(cfg.with_overrides({"negatives.uniform": 3}), default_space(cfg)) is None


def test_default_space_tunes_the_knob_of_the_chosen_loss():
    soft = default_space(Config())
    assert "temperature" in soft and "margin" not in soft and "lr" in soft
    margin = default_space(Config().with_overrides({"loss": "margin"}))
    assert "margin" in margin and "temperature" not in margin
    single = default_space(Config().with_overrides({"components.user": 1, "components.item": 1}))
    assert "gamma" not in single and "theta" not in single and "lr" in single  # pooling is the identity
    assert "gamma" in default_space(Config().with_overrides({"components.user": 1, "components.item": 3}))


def _recall_at_10(model, valid, seen) -> float:
    """Recall@10 of every valid user with ``seen`` excluded: the naive counterpart of sample_recall."""
    from mixrec.evaluate.exact import exact_topk
    from mixrec.evaluate.metrics import csr_from_pairs, ranking_metrics

    users = np.unique(valid.src)
    truth = csr_from_pairs(np.searchsorted(users, valid.src), valid.dst, len(users))
    return ranking_metrics(exact_topk(model, users, 10, seen)[0], *truth, [10])["recall@10"]


def test_validation_on_one_relation_excludes_only_that_relations_training_items(planted):
    from mixrec.evaluate.exact import sample_recall
    from mixrec.train import train
    from tests.conftest import small_config

    ds, _ = planted
    name = ds.relations[1].name
    v = with_validation(ds, 0.3, seed=0, relation=name)
    model = train(v, small_config(1), None, progress=False)
    got = sample_recall(model, v, "valid", 10, 10_000, 0)
    assert got == pytest.approx(_recall_at_10(model, v.split("valid"), model.seen([name])))
    # items seen only in the other relation stay rankable
    assert got != pytest.approx(_recall_at_10(model, v.split("valid"), model.seen()))
    both = with_validation(ds, 0.3, seed=0)  # every relation held out: everything seen is excluded
    assert sample_recall(model, both, "valid", 10, 10_000, 0) == pytest.approx(
        _recall_at_10(model, both.split("valid"), model.seen()))
