"""The demo's typed-graph section: what it prints for one consumer, against the planted truth and a retrieval."""
import re

import numpy as np

from mixrec.data.dataset import Dataset
from mixrec.data.explore import generate_explore
from mixrec.demo import SECTIONS
from mixrec.demo_graph import SPEC, typed_graph_section
from mixrec.model import MixtureModel
from mixrec.retrieve import Retriever


def test_typed_graph_section_prints_planted_topics_and_counts_them(tmp_path):
    assert typed_graph_section in SECTIONS
    lines: list[str] = []
    picked = typed_graph_section(tmp_path, lines.append)["consumer"]
    ds = Dataset.load(tmp_path / "graph" / "data")
    follows = np.bincount(ds.split("train", relations=["follow"]).src, minlength=ds.num("consumer"))
    assert picked == int(np.argmax(follows))  # the consumer with the most follows
    truth = generate_explore(SPEC)[1]
    raw = ds.ids["consumer"][picked]
    planted = sorted(int(t) for t in truth.interests[int(raw[1:])] if t >= 0)
    text = "\n".join(lines)
    assert f"consumer {raw}: planted topics {' '.join(f't{t}' for t in planted)}" in text
    model = MixtureModel.load(tmp_path / "graph" / "model")
    got = Retriever(model, source_type="consumer", target_type="creator").recommend([picked], 10, exclude_seen=False).items[0]
    topics = [int(truth.creator_topic[int(model.ids["creator"][c][1:])]) for c in got if c >= 0]
    inside = sum(t in planted for t in topics)  # naive count of the retrieved creators in a planted topic
    m = re.search(r"(\d+) of (\d+) in a planted topic", text)
    assert m and (int(m.group(1)), int(m.group(2))) == (inside, len(topics))
