"""The `mixrec` command line end to end on small files: ingest, train, retrieve, similar, evaluate, errors."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from mixrec.cli import main
from mixrec.data.synthetic import write
from mixrec.model import MixtureModel
from tests.conftest import small_spec

TRAIN_SET = ["--set", "dim=8", "--set", "epochs=2", "--set", "batch_size=256", "--set", "negatives.batch=32",
             "--set", "negatives.uniform=32", "--set", "components.user=3", "--quiet"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    files = write(small_spec(), root / "raw")
    assert main(["ingest", str(files["events"]), "--out", str(root / "data"), "--source-col", "user_id",
                 "--target-col", "item_id", "--relation-col", "event", "--timestamp-col", "timestamp",
                 "--split-col", "split"]) == 0
    assert main(["train", str(root / "data"), "--out", str(root / "model")] + TRAIN_SET) == 0
    return root, files


def test_train_writes_config_and_model(pipeline):
    root, _ = pipeline
    model = MixtureModel.load(root / "model")
    assert model.components("user") == 3 and model.config.dim == 8
    assert "components" in (root / "model" / "config.toml").read_text()
    assert (root / "model" / "checkpoint" / "state.json").is_file()


def test_retrieve_writes_candidates_with_raw_ids(pipeline, tmp_path):
    root, _ = pipeline
    out = tmp_path / "cands.parquet"
    assert main(["retrieve", str(root / "model"), "--k", "15", "--out", str(out), "--quiet"]) == 0
    table = pq.read_table(out)
    assert table.column_names == ["user", "rank", "item", "score", "component"]
    users = table.column("user").to_pylist()
    assert isinstance(users[0], str) and users[0].startswith("u")  # raw string ids come back
    model = MixtureModel.load(root / "model")
    per_user = np.bincount(np.searchsorted(np.sort(model.ids["user"].astype(str)), np.array(users, dtype=str)))
    assert per_user.max() == 15
    # training items are excluded by default
    seen = {(model.ids["user"][s], model.ids["item"][d]) for s, d in
            zip(model.train_edges["src"], model.train_edges["dst"])}
    pairs = set(zip(users, table.column("item").to_pylist()))
    assert not pairs & seen
    ranks = table.column("rank").to_numpy()
    assert ranks.min() == 1 and ranks.max() == 15


def test_retrieve_with_hnsw_and_user_file(pipeline, tmp_path):
    root, _ = pipeline
    model = MixtureModel.load(root / "model")
    ufile = tmp_path / "users.txt"
    ufile.write_text("\n".join(str(u) for u in model.ids["user"][:5]))
    out = tmp_path / "c.parquet"
    assert main(["retrieve", str(root / "model"), "--k", "5", "--out", str(out), "--index", "hnsw",
                 "--users", str(ufile), "--quiet"]) == 0
    assert pq.read_table(out).num_rows == 25


def test_similar_prints_neighbours(pipeline, capsys):
    root, _ = pipeline
    model = MixtureModel.load(root / "model")
    item = str(model.ids["item"][0])
    assert main(["similar", str(root / "model"), item, "--k", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{item}:") and line.count("(") == 3


def test_evaluate_json_has_both_methods_and_diversity(pipeline, tmp_path, capsys):
    root, files = pipeline
    out = tmp_path / "report.json"
    assert main(["evaluate", str(root / "model"), str(root / "data"), "--k", "10", "--k", "20",
                 "--item-labels", str(files["items"]), "--label-col", "genres", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert set(rep["relations"]) == {"click", "like"}
    for method in ("exact", "retrieval"):
        m = rep["relations"]["click"][method]
        assert 0 < m["recall@20"] <= 1 and 0 <= m["div@20"] <= 1 and "label_coverage@10" in m
        assert m["recall@20"] >= m["recall@10"]
    assert "recall@20" in capsys.readouterr().out


def test_evaluate_relation_protocol(pipeline, tmp_path):
    root, _ = pipeline
    out = tmp_path / "r.json"
    assert main(["evaluate", str(root / "model"), str(root / "data"), "--k", "10", "--relation", "like",
                 "--exclude-seen", "relation", "--method", "exact", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert list(rep["relations"]) == ["like"] and "retrieval" not in rep["relations"]["like"]


def test_bad_override_names_the_field(pipeline, capsys):
    root, _ = pipeline
    assert main(["train", str(root / "data"), "--out", str(root / "m2"), "--set", "dim=-3"]) == 2
    err = capsys.readouterr().err
    assert "dim" in err and "greater than or equal to 1" in err
    assert not (root / "m2" / "model.json").exists()


def test_unknown_key_is_rejected(pipeline, capsys):
    root, _ = pipeline
    assert main(["train", str(root / "data"), "--out", str(root / "m3"), "--set", "negatives.hard=3"]) == 2
    assert "negatives.hard" in capsys.readouterr().err


def test_ingest_error_leaves_output_untouched(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id\n")
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["ingest", str(bad), "--out", str(out), "--overwrite"]) == 2  # even where replacing is allowed
    assert "bad.csv" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"


def test_config_file_and_overrides(pipeline, tmp_path):
    root, _ = pipeline
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dim: 6\nepochs: 1\ncomponents: {user: 2}\nnegatives: {batch: 16, uniform: 16}\n")
    assert main(["train", str(root / "data"), "--out", str(tmp_path / "m"), "--config", str(cfg),
                 "--set", "components.user=5", "--quiet"]) == 0
    m = MixtureModel.load(tmp_path / "m")
    assert m.config.dim == 6 and m.components("user") == 5


def test_demo_quick_prints_side_by_side(tmp_path, capsys):
    assert main(["demo", "--quick", "--workdir", str(tmp_path / "demo"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "single" in out and "mixture" in out and "recall@20" in out and "div@50" in out


def test_killed_training_resumes_to_the_uninterrupted_model(pipeline, tmp_path):
    """SIGKILL a real `mixrec train` process mid-run, resume it, and compare with an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    root, _ = pipeline
    args = ["train", str(root / "data")] + TRAIN_SET + ["--set", "epochs=30"]
    main(args + ["--out", str(tmp_path / "full")])
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-c", "import sys; from mixrec.cli import main; sys.exit(main(sys.argv[1:]))",
           *args, "--out", str(cut)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = cut / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "model.json").exists(), "training finished before it could be killed"
    assert main(args + ["--out", str(cut), "--resume"]) == 0
    full, resumed = MixtureModel.load(tmp_path / "full"), MixtureModel.load(cut)
    for t in full.tables:
        assert torch.allclose(full.tables[t], resumed.tables[t], atol=1e-5)


def _naive_recall(model, data, relation: str, exclude: str, k: int) -> float:
    """Recall@k of exact ranking on ``relation``'s test edges, excluding training items user by user in a
    plain loop: 'relation' drops the user's training items of that relation, 'all' of any, 'none' nothing."""
    from mixrec.evaluate.exact import exact_topk
    code = data.relation_code(relation)
    test, train = data.split("test"), data.split("train")
    users = sorted({int(u) for u, r in zip(test.src, test.rel) if r == code})
    ranked, _ = exact_topk(model, np.array(users), model.num("item"))  # every item, nothing excluded
    recalls = []
    for row, u in enumerate(users):
        truth = {int(d) for s, d, r in zip(test.src, test.dst, test.rel) if s == u and r == code}
        seen = {int(d) for s, d, r in zip(train.src, train.dst, train.rel)
                if s == u and exclude != "none" and (exclude == "all" or r == code)}
        top = [int(i) for i in ranked[row] if int(i) not in seen][:k]
        recalls.append(len(truth & set(top)) / len(truth))
    return float(np.mean(recalls))


def test_evaluate_exclude_seen_relation_matches_a_naive_loop(pipeline, tmp_path):
    """--exclude-seen relation removes exactly the evaluated relation's training items (oracle: plain loop)."""
    from mixrec.data.dataset import Dataset
    root, _ = pipeline
    model, data = MixtureModel.load(root / "model"), Dataset.load(root / "data")
    want = {x: _naive_recall(model, data, "like", x, 10) for x in ("relation", "all", "none")}
    assert len({round(v, 9) for v in want.values()}) == 3  # the choice changes the figure on this data
    for x in ("relation", "all", "none"):
        out = tmp_path / f"{x}.json"
        assert main(["evaluate", str(root / "model"), str(root / "data"), "--k", "10", "--relation", "like",
                     "--exclude-seen", x, "--method", "exact", "--json", str(out)]) == 0
        got = json.loads(out.read_text())["relations"]["like"]["exact"]["recall@10"]
        assert got == pytest.approx(want[x], abs=1e-12), x
