"""Progress output: a bar only on a terminal; in a log file one line per epoch/loop and no carriage returns."""
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import small_spec

from mixrec.data.synthetic import write
from mixrec.progress import LineProgress, progress_bar

ROOT = Path(__file__).resolve().parents[1]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_line_otherwise(caplog):
    tty = _Tty()
    bar = progress_bar(total=5, desc="work", unit="row", stream=tty, mininterval=0)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert "\r" in tty.getvalue() and "5/5" in tty.getvalue()

    log_file = io.StringIO()
    with caplog.at_level(logging.INFO, logger="mixrec.progress"):
        bar = progress_bar(total=5, desc="work", unit="row", stream=log_file)
        assert isinstance(bar, LineProgress)
        for _ in range(3):
            bar.update(2)
        bar.set_postfix(loss="0.5")
        bar.close()
        bar.close()  # a second close logs nothing more
        quiet = progress_bar(range(4), desc="silent", stream=log_file, disable=True)
        assert list(quiet) == [0, 1, 2, 3]
    assert log_file.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "mixrec.progress"]
    assert len(lines) == 1 and lines[0].startswith("work: 6 row in ") and lines[0].endswith(", loss 0.5")


def test_cli_training_logs_one_line_per_epoch_without_carriage_returns(tmp_path):
    files = write(small_spec(), tmp_path / "raw")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda *args: subprocess.run([sys.executable, "-m", "mixrec.cli", *args], env=env,  # noqa: E731
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
    run("ingest", str(files["events"]), "--out", str(tmp_path / "data"), "--relation-col", "event",
        "--valid-fraction", "0.1")
    epochs = 3
    proc = run("train", str(tmp_path / "data"), "--out", str(tmp_path / "m"), "--set", f"epochs={epochs}",
               "--set", "dim=8", "--set", "eval_every=1")
    assert "\r" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if re.search(r"epoch \d+/\d+", ln)]
    assert len(lines) == epochs, proc.stderr
    history = json.loads((tmp_path / "m" / "model.json").read_text())["info"]["history"]
    for line, rec in zip(lines, history):
        m = re.search(r"epoch (\d+)/(\d+), loss ([0-9.e+-]+), ([0-9,]+) edges/s", line)
        assert m, line
        assert (int(m[1]), int(m[2])) == (rec["epoch"], epochs)
        assert abs(float(m[3]) - rec["loss"]) <= 1e-5 * abs(rec["loss"])
        assert abs(int(m[4].replace(",", "")) - rec["edges_per_s"]) <= 1
        for key, value in rec.items():
            if key.startswith("valid_"):
                assert f"{key} {value:.4f}" in line
        assert any(k.startswith("valid_") for k in rec)
