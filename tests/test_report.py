"""`mixrec report`: SVG charts, per-component top items, and the HTML rendered in headless Chromium."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mixrec.cli import main
from mixrec.config import Config
from mixrec.evaluate import evaluate
from mixrec.io import save_json
from mixrec.report import component_top_items, weight_entropy
from mixrec.report.svg import bar_chart, histogram, line_chart
from mixrec.train import train

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)


def test_weight_entropy_counts_effective_components():
    w = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(weight_entropy(w), [1.0, 4.0, 2.0], rtol=1e-6)


def test_component_top_items_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(3, 5, generator=g), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(20, 2, 5, generator=g), dim=-1)
    idx, sim = component_top_items(u, items, 4, exclude=np.array([0, 7]))
    for c in range(3):
        best = sorted(((max(float(u[c] @ items[i, d]) for d in range(2)), i) for i in range(20) if i not in (0, 7)),
                      reverse=True)[:4]
        assert list(idx[c]) == [i for _, i in best]
        np.testing.assert_allclose(sim[c], [s for s, _ in best], rtol=1e-5)


def test_svg_charts_hold_one_mark_per_series_and_bin():
    svg = line_chart({"a": ([1, 2, 3], [0.1, 0.2, 0.3]), "b": ([1, 2], [0.3, float("nan")])}, "t", "x", "y")
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 4
    h = histogram(np.array([0.1, 0.2, 0.25, 0.9]), 4, "h", "x", 0.0, 1.0)
    counts = [int(c) for c in re.findall(r'data-count="(\d+)"', h)]
    assert counts == [2, 1, 0, 1]
    b = bar_chart({"m": [0.5, 0.25, float("nan")], "s": [1.0]}, ["c0", "c1", "c2"], "b", "x", "y")
    assert re.findall(r'data-name="(\w)"[^>]*data-value="([\d.]+)"', b) == [("m", "0.5"), ("s", "1"), ("m", "0.25")]


@pytest.fixture(scope="module")
def report_files(planted, tmp_path_factory):
    ds, items = planted
    root = tmp_path_factory.mktemp("report")
    cfg = Config().with_overrides({"dim": 8, "epochs": 2, "batch_size": 256, "negatives.batch": 32,
                                   "negatives.uniform": 32, "components.user": 3, "eval_every": 1})
    model = train(ds, cfg, root / "model", progress=False)
    save_json(root / "eval.json", evaluate(model, ds, [5, 10, 20]))
    import pyarrow.csv as pacsv
    pacsv.write_csv(items, root / "items.tsv", pacsv.WriteOptions(delimiter="\t", quoting_style="none"))
    out = root / "report.html"
    assert main(["report", str(root / "model"), "--out", str(out), "--evaluation", str(root / "eval.json"),
                 "--item-labels", str(root / "items.tsv"), "--users", "3", "--top", "4"]) == 0
    return root, out, model


def test_report_html_is_self_contained_and_complete(report_files):
    _, out, model = report_files
    html = out.read_text()
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for sid in ("summary", "training", "evaluation", "weights", "diagnostics", "users"):
        assert f'<section id="{sid}">' in html
    # the diagnostics section plots each relation's hit share per component (one bar each, summing to 1)
    diag = html.split('<section id="diagnostics">')[1].split("</section>")[0]
    shares: dict = {}
    for name, v in re.findall(r'<rect class="bar" data-name="([^"]*)"[^>]*data-value="([^"]+)"', diag):
        shares.setdefault(name, []).append(float(v))
    assert len(shares) == 2  # click and like
    for vals in shares.values():
        assert len(vals) == model.components("user") and sum(vals) == pytest.approx(1.0, abs=1e-4)
    assert html.count('class="user"') == 3
    assert html.count('class="comp"') == 3 * model.components("user")
    assert html.count("<li>") == 3 * 3 * 4


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report_files, tmp_path):
    _, out, model = report_files
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}",
           "--dump-dom", out.resolve().as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert "<body>" in dom and "</html>" in dom
    # the browser parsed every chart as SVG and kept the structure the report wrote
    assert dom.count("<svg") >= 6 and dom.count("</svg>") == dom.count("<svg")
    assert len(re.findall(r'<polyline class="series"', dom)) >= 4  # loss, valid recall, speed, recall@K
    assert dom.count('class="user"') == 3
    # three 20-bin weight histograms, the 20-bin component cosine histogram, one hit-share bar per component
    assert len(re.findall(r'<rect class="bar"', dom)) == 80 + 2 * model.components("user")
    genres = json.dumps(sorted({g for line in (out.parent / "items.tsv").read_text().splitlines()[1:]
                                for g in line.split("\t")[-1].split("|")}))
    assert any(g in dom for g in json.loads(genres))
