"""The demo's user picking and per-component explanation, against naive loops on the planted fixture."""
from collections import Counter

import numpy as np

from mixrec.demo import item_label, pick_users
from mixrec.evaluate.labels import ItemLabels


def test_item_label_is_the_first_label_or_minus_one():
    labels = ItemLabels.from_pairs(np.array([0, 0, 2]), np.array([1, 0, 2]), 4, ["a", "b", "c"])
    expected = [min(labels.indices[labels.indptr[i]:labels.indptr[i + 1]], default=-1) for i in range(4)]
    assert item_label(labels).tolist() == expected == [0, -1, 2, -1]


def test_pick_users_takes_the_most_distinct_history_labels(planted):
    ds, items = planted
    raw = items.column("item_id").to_numpy()
    names = sorted(set(items.column("genres").to_pylist()))
    by_raw = dict(zip(raw.tolist(), items.column("genres").to_pylist()))
    pairs = [(i, names.index(by_raw[r])) for i, r in enumerate(ds.ids["item"].tolist())]
    labels = ItemLabels.from_pairs(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]),
                                   ds.num("item"), names)
    e = ds.split("train", [ds.relations[0].name])
    distinct = Counter()
    for u, lab in {(int(u), by_raw[int(ds.ids["item"][d])]) for u, d in zip(e.src, e.dst)}:
        distinct[u] += 1
    expected = sorted(distinct, key=lambda u: (-distinct[u], u))[:3]
    assert pick_users(ds, labels, 3) == expected
