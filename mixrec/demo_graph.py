"""The demo's typed-graph section: an Explore-like graph (consumers, creators, media) -> consumer->creator candidates."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixrec.config import Config
from mixrec.data.explore import ExploreSpec, generate_explore, write_explore
from mixrec.data.schema import ingest_graph
from mixrec.retrieve import Retriever
from mixrec.train import train

SPEC = ExploreSpec(n_accounts=300, n_creators=60, n_topics=6, seed=1)
EPOCHS = 3
TRAIN = {"dim": 16, "epochs": EPOCHS, "batch_size": 256, "negatives.batch": 64, "negatives.uniform": 64,
         "components.consumer": 3, "components.creator": 1, "components.media": 1}


def consumer_creator_lines(model, truth, consumer: int, k: int = 10) -> list[str]:
    """One consumer's planted topics, followed-creator topics and its top ``k`` creators with their topics."""
    raw = model.ids["consumer"][consumer]
    topic = truth.creator_topic[np.array([int(x[1:]) for x in model.ids["creator"]])]
    planted = sorted(int(t) for t in truth.interests[int(raw[1:])] if t >= 0)
    got = Retriever(model, source_type="consumer", target_type="creator").recommend([consumer], k, exclude_seen=False).items[0]
    got = got[got >= 0]
    inside = np.isin(topic[got], planted).sum()
    tops = " ".join(f"t{t} x{n}" for t, n in Counter(topic[got].tolist()).most_common())
    return [f"   consumer {raw}: planted topics {' '.join(f't{t}' for t in planted)}",
            f"     top {k} creators (followed ones included): topics {tops}; {inside} of {len(got)} in a "
            f"planted topic; e.g. " + ", ".join(str(model.ids['creator'][c]) for c in got[:4])]


def typed_graph_section(work: Path, echo: Callable[[str], None] = print) -> dict:
    """Generate a small Explore-like graph, train a few epochs with per-type components, show one consumer's
    creator candidates against its planted topics."""
    t0 = time.perf_counter()
    root = Path(work) / "graph"
    schema = write_explore(SPEC, root / "raw")
    ds = ingest_graph(schema, root / "data", progress=False)
    echo(f"\n5. typed graph (docs/graphs.md): {schema} declares {', '.join(ds.entity_types)} and relations "
         + ", ".join(f"{r.name} {r.source_type}->{r.target_type}" for r in ds.relations))
    model = train(ds, Config().with_overrides(TRAIN), root / "model", progress=False)
    truth = generate_explore(SPEC)[1]
    degree = np.bincount(ds.split("train", relations=["follow"]).src, minlength=ds.num("consumer"))
    consumer = int(np.argmax(degree))
    for line in consumer_creator_lines(model, truth, consumer):
        echo(line)
    echo(f"   trained {EPOCHS} epochs with 3 components per consumer, 1 per creator and medium in "
         f"{time.perf_counter() - t0:.1f}s; then: mixrec retrieve {root / 'model'} --from consumer --to creator")
    return {"consumer": consumer}
