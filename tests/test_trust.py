"""Silent wrong answers refused: stale or tampered indexes, non-finite configs and losses, unknown config
keys, ingest over foreign folders, unverified models, and bad inputs that must name their file."""
import json
import logging
import shutil

import numpy as np
import pytest

import importlib
from mixrec.cli import main
from mixrec.config import Config, ConfigError, RelationConfig, WeightSetConfig
from mixrec.data.dataset import Dataset
from mixrec.data.ingest import build_dataset, ingest
from mixrec.data.readers import IngestError
from mixrec.index import ComponentIndex, IndexFileError
from mixrec.io import sha256
from mixrec.model import MixtureModel
from mixrec.retrieve import Retriever
from mixrec.serve.state import Snapshot
from mixrec.train import train
from mixrec.train.sampler import training_edges
from mixrec.train.trainer import TrainingDiverged

trainer_mod = importlib.import_module("mixrec.train.trainer")
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


# ------------------------------------------------------------------ item 2: non-finite values
FLOAT_KEYS = ["lr", "margin", "temperature", "gamma", "theta", "init_scale", "weight_sets.all.gamma",
              "relations.click.weight", "relations.click.degree_exponent"]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", ".inf", ".nan"])
def test_non_finite_config_values_are_refused_naming_the_field(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config().with_overrides([f"{key}={value}"])


def test_config_floats_are_all_covered():
    """Every float field of the schema is in FLOAT_KEYS (or a new one must be added there)."""
    def floats(model, prefix):
        for name, f in model.model_fields.items():
            if f.annotation is float:
                yield prefix + name
    found = set(floats(Config, "")) | {"weight_sets.all." + k for k in floats(WeightSetConfig, "")} | \
        {"relations.click." + k for k in floats(RelationConfig, "")}
    assert found == set(FLOAT_KEYS)


def test_a_diverging_run_stops_with_a_clear_error_and_writes_no_model(planted, tmp_path):
    ds, _ = planted
    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch 1\b.*temperature"):
        train(ds, small_config(2, temperature=1e-40), tmp_path / "m", progress=False)
    assert not (tmp_path / "m" / "model.json").exists()


def test_divergence_keeps_the_last_good_checkpoint(planted, tmp_path, monkeypatch):
    """Epoch 2 turns the tables to NaN at its 3rd batch: the checkpoint stays the one after epoch 1,
    equal to a run of 1 epoch (the oracle), and no model is written."""
    ds, _ = planted
    good = train(ds, small_config(1), tmp_path / "one", progress=False)
    real = trainer_mod.train_step
    calls = {"n": 0, "per_epoch": None}

    def poisoned(batch, tables, states, cfg):
        calls["n"] += 1
        loss = real(batch, tables, states, cfg)
        if calls["per_epoch"] is not None and calls["n"] == calls["per_epoch"] + 3:
            for t in tables.values():
                t.fill_(float("nan"))
            return float("nan")
        return loss

    calls["per_epoch"] = sum(1 for _ in trainer_mod.make_batches(training_edges(ds, small_config(2)), small_config(2), 0))
    monkeypatch.setattr(trainer_mod, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 3\b"):
        train(ds, small_config(2), tmp_path / "m", progress=False)
    assert not (tmp_path / "m" / "model.json").exists()
    state = json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())
    assert state["epochs_done"] == 1
    for t in good.tables:
        ck = np.load(tmp_path / "m" / "checkpoint" / f"{t}.npy")
        one = np.load(tmp_path / "one" / "checkpoint" / f"{t}.npy")
        np.testing.assert_array_equal(ck, one)


def test_loading_a_model_with_non_finite_embeddings_is_refused(planted, tmp_path):
    ds, _ = planted
    train(ds, small_config(1), tmp_path / "m", progress=False)
    emb = tmp_path / "m" / "embeddings" / "item.npy"
    arr = np.load(emb)
    arr[3, 0, 1] = np.nan
    np.save(emb, arr)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["checksums"]["embeddings/item.npy"] = sha256(emb)  # checksums pass: the values themselves are refused
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"item\.npy.*non-finite"):
        MixtureModel.load(tmp_path / "m")
    with pytest.raises(ValueError, match=r"item\.npy.*non-finite"):
        Snapshot.load(tmp_path / "m")


# ------------------------------------------------------------------ item 3: keys naming nothing
@pytest.mark.parametrize("key, valid", [("components.users", r"\['item', 'user'\]"),
                                        ("partitions.itme", r"\['item', 'user'\]"),
                                        ("relations.clik.weight", r"\['click', 'like'\]")])
def test_config_keys_naming_no_type_or_relation_are_refused(planted, tmp_path, key, valid):
    ds, _ = planted
    cfg = small_config(1).with_overrides([f"{key}=2"])
    with pytest.raises(ConfigError, match=key.split(".")[0] + r"\." + key.split(".")[1] + ".*" + valid):
        train(ds, cfg, tmp_path / "m", progress=False)
    ds.save(tmp_path / "data")
    with pytest.raises(ConfigError, match=valid):  # from a dataset directory too
        train(tmp_path / "data", cfg, tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


def test_cli_refuses_a_typo_in_components(planted, tmp_path, capsys):
    ds, _ = planted
    ds.save(tmp_path / "data")
    rc = main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "m"), "--set", "components.users=7",
               "--set", "epochs=1", "--quiet"])
    assert rc == 2 and "components.users" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_default_components_do_not_block_other_entity_types(tmp_path):
    """The default components.user / components.item are not the user's keys: a dataset of customers and
    products trains with the default config, each type with 1 component."""
    log = {"user_id": [f"c{i % 7}" for i in range(60)], "item_id": [f"p{i % 11}" for i in range(60)]}
    ds, _ = build_dataset(log, source_type="customer", target_type="product", test_fraction=0.0)
    model = train(ds, small_config(1).with_overrides({"components": {}}), progress=False)
    assert model.components("customer") == 1
    model = train(ds, Config().with_overrides({"epochs": 1, "dim": 4}), progress=False)
    assert model.components("customer") == 1 and model.components("product") == 1


# ------------------------------------------------------------------ item 4: ingest over a foreign folder
def _log_csv(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u in range(5) for i in range(u, u + 4)))
    return path


def test_ingest_refuses_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    log_path = _log_csv(tmp_path)
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    assert main(["ingest", str(log_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "notes" in err and "--overwrite" in err
    assert (out / "thesis.txt").read_text() == "years of work"
    with pytest.raises(FileExistsError, match="overwrite"):
        ingest(log_path, out)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]
    assert main(["ingest", str(log_path), "--out", str(out), "--overwrite"]) == 0
    assert (out / "manifest.json").is_file() and not (out / "thesis.txt").exists()


def test_ingest_replaces_a_dataset_or_fills_an_empty_folder(tmp_path):
    log_path = _log_csv(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["ingest", str(log_path), "--out", str(tmp_path / "empty")]) == 0
    assert main(["ingest", str(log_path), "--out", str(tmp_path / "empty"), "--seed", "3"]) == 0  # a dataset now
    assert Dataset.load(tmp_path / "empty").info["ingest"]["options"]["seed"] == 3


# ------------------------------------------------------------------ item 5: verification
@pytest.fixture(scope="module")
def model_dir(planted, tmp_path_factory):
    ds, _ = planted
    root = tmp_path_factory.mktemp("verify")
    train(ds, small_config(1), root / "m", progress=False)
    return root / "m"


def test_a_model_without_checksums_is_refused_unless_opted_out(model_dir, tmp_path, capsys):
    m = tmp_path / "m"
    shutil.copytree(model_dir, m)
    meta = json.loads((m / "model.json").read_text())
    del meta["checksums"]
    (m / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model\.json.*no checksums.*verify=False"):
        MixtureModel.load(m)
    with pytest.raises(ValueError, match="no checksums"):
        Snapshot.load(m)
    assert main(["retrieve", str(m), "--out", str(tmp_path / "c.parquet"), "--quiet"]) == 2
    assert "--no-verify" in capsys.readouterr().err
    unverified = MixtureModel.load(m, verify=False)
    np.testing.assert_array_equal(unverified.tables["item"], MixtureModel.load(model_dir).tables["item"])
    assert main(["retrieve", str(m), "--out", str(tmp_path / "c.parquet"), "--quiet", "--no-verify"]) == 0


def _flip(path, at: float):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "garbage", "no_checksum"])
def test_a_tampered_or_garbage_index_is_refused_on_load_and_rebuilt_for_retrieval(model_dir, tmp_path, caplog,
                                                                                   damage):
    m = tmp_path / "m"
    shutil.copytree(model_dir, m)
    model = MixtureModel.load(m)
    Retriever(model).recommend([0], 5)  # saves index/
    path = m / "index" / f"{model.target_type}.flat.faiss"
    if damage == "flip":
        _flip(path, 0.6)
    elif damage == "garbage":
        path.write_bytes(b"not a faiss index at all" * 10)
    else:  # an index saved before the sidecar listed checksums
        side = path.with_suffix(".json")
        side.write_text(json.dumps({k: v for k, v in json.loads(side.read_text()).items() if k != "sha256"}))
    with pytest.raises(IndexFileError, match=str(path.name)):
        ComponentIndex.load(path)
    with caplog.at_level(logging.WARNING, logger="mixrec"):
        got = Retriever(MixtureModel.load(m)).recommend(np.arange(model.num(model.source_type)), 10).items
    assert path.name in caplog.text and "rebuilding" in caplog.text
    np.testing.assert_array_equal(got, fresh_candidates(model))
    ComponentIndex.load(path)  # the rebuilt one is intact


# ------------------------------------------------------------------ item 9 (library and CLI parts)
@pytest.mark.parametrize("column", ["user_id", "item_id"])
def test_nan_ids_are_refused_naming_row_and_column(column):
    log = {"user_id": [1.0, 2.0, 3.0, 4.0], "item_id": [5.0, 6.0, 7.0, 8.0]}
    log[column][2] = float("nan")
    with pytest.raises(IngestError, match=rf"data row 3, column '{column}'.*NaN"):
        build_dataset(log, test_fraction=0.0)
    text = {"user_id": ["a", "b", "c"], "item_id": ["x", "y", "z"]}
    text[column][1] = "NaN"
    with pytest.raises(IngestError, match=rf"data row 2, column '{column}'.*NaN"):
        build_dataset(text, test_fraction=0.0)


def test_pairs_in_train_and_test_are_counted_and_warned():
    log = {"user_id": [1, 1, 2, 2, 3, 3, 3], "item_id": [10, 10, 20, 21, 30, 30, 31],
           "split": ["train", "test", "train", "test", "train", "test", "valid"]}
    with pytest.warns(UserWarning, match=r"2 \(user, item\) pairs .* train and in test"):
        _, report = build_dataset(log, split_col="split")
    assert report.train_test_pairs == 2  # (1, 10) and (3, 30); (2, 21) and (3, 31) are only held out


def test_cli_train_with_zero_epochs_writes_nothing(planted, tmp_path, capsys):
    ds, _ = planted
    ds.save(tmp_path / "data")
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "m"), "--set", "epochs=0", "--quiet"]) == 2
    assert "epochs" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_a_huge_dim_is_refused_before_allocating(planted, tmp_path):
    ds, _ = planted
    with pytest.raises(ConfigError, match=r"dim=100000000.*GiB"):
        train(ds, small_config(1, dim=100_000_000), tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


def test_a_broken_manifest_is_named(planted, tmp_path):
    ds, _ = planted
    ds.save(tmp_path / "d")
    (tmp_path / "d" / "manifest.json").write_text('{"format": 1, "entities": ')
    with pytest.raises(ValueError, match=r"manifest\.json"):
        Dataset.load(tmp_path / "d")
    with pytest.raises(ValueError, match=r"manifest\.json"):
        train(tmp_path / "d", small_config(1), progress=False)


@pytest.mark.parametrize("at", [0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 0.999])
def test_a_byte_flipped_edges_file_is_named_or_harmless(planted, tmp_path, at):
    """Oracle: the load either fails naming edges.parquet, or returns exactly the saved edges."""
    ds, _ = planted
    ds.save(tmp_path / "d")
    _flip(tmp_path / "d" / "edges.parquet", at)
    try:
        back = Dataset.load(tmp_path / "d")
    except ValueError as e:
        assert "edges.parquet" in str(e)
        return
    for s, e in ds.edges.items():
        for f in ("src", "dst", "rel", "weight"):
            np.testing.assert_array_equal(getattr(back.edges[s], f), getattr(e, f))


def test_the_index_built_from_a_freshly_trained_model_is_reused_after_loading(planted, tmp_path, caplog):
    """The model ``train`` returns and the one loaded from its directory have bit-identical vectors, so the
    index saved from the first is reused by the second (it used to be rebuilt once, as if stale)."""
    ds, _ = planted
    model = train(ds, small_config(1), tmp_path / "m", progress=False)
    first = Retriever(model).recommend(np.arange(20), k=10)
    saved = tmp_path / "m" / "index" / f"{model.target_type}.flat.faiss"
    stamp = saved.stat().st_mtime_ns
    loaded = MixtureModel.load(tmp_path / "m")
    for t in model.tables:
        assert np.array_equal(loaded.vectors(t).numpy(), model.vectors(t).numpy())
    with caplog.at_level(logging.WARNING, logger="mixrec.retrieve"):
        again = Retriever(loaded).recommend(np.arange(20), k=10)
    assert "rebuilding" not in caplog.text and saved.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.items, first.items)


def test_a_report_written_into_the_model_directory_is_not_part_of_the_model(model_dir, tmp_path):
    """Checksums cover the model's artifacts only: an evaluation report saved beside them and rewritten after a
    re-save must not make the model unloadable, while a changed artifact still is refused."""
    m = tmp_path / "m"
    shutil.copytree(model_dir, m)
    (m / "evaluation.json").write_text('{"recall@20": 0.1}')
    (m / "notes").mkdir()
    (m / "notes" / "run.txt").write_text("first run")
    MixtureModel.load(m).save(m)  # a re-save (resume, reweighting) with the foreign files present
    assert set(json.loads((m / "model.json").read_text())["checksums"]) == {
        str(p.relative_to(m)) for p in m.rglob("*") if p.is_file()
        and p.relative_to(m).parts[0] in ("embeddings", "ids", "train", "weights", "config.toml")}
    (m / "evaluation.json").write_text('{"recall@20": 0.2}')
    (m / "notes" / "run.txt").write_text("second run")
    MixtureModel.load(m)
    (m / "weights" / "all" / "user.npy").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="checksum"):
        MixtureModel.load(m)


def test_a_manifest_that_lists_a_foreign_file_still_loads_when_that_file_changes(model_dir, tmp_path):
    """Manifests written before the artifact list (they hashed every file, reports included) verify the
    artifacts and ignore the rest."""
    m = tmp_path / "m"
    shutil.copytree(model_dir, m)
    (m / "evaluation.json").write_text('{"recall@20": 0.1}')
    meta = json.loads((m / "model.json").read_text())
    meta["checksums"]["evaluation.json"] = "0" * 64
    (m / "model.json").write_text(json.dumps(meta))
    MixtureModel.load(m)
    meta["checksums"]["embeddings/user.npy"] = "0" * 64
    (m / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="checksum"):
        MixtureModel.load(m)
