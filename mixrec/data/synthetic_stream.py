"""Streaming synthetic logs: the planted-cluster generator of :mod:`mixrec.data.synthetic`, written chunk by chunk.

Memory stays bounded by one chunk of users (about ``CHUNK_DRAWS`` item draws) plus per-entity arrays
(item sampler, edges per user), so a 10M-user x 1M-item x 100M-edge graph fits in a few hundred MB.
Two layouts:

* ``"events"``: ``events.parquet`` (user_id, item_id, event, timestamp, split) and ``items.tsv``, the same
  schema as :func:`mixrec.data.synthetic.write`; ingest it with ``mixrec ingest``.
* ``"dataset"``: a mixrec dataset directory (``manifest.json``, ``entities/``, ``edges.parquet``) that
  ``mixrec train`` reads directly (users and items are already dense: user ``u0000042`` is index 42),
  plus ``items.tsv``. This skips ingestion, which holds the whole log in memory.

The stream draws from the same distributions as :func:`~mixrec.data.synthetic.generate` but consumes the
random generator in a different order, so for one seed the two produce different (equally valid) logs.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mixrec.data.dataset import EDGES, FORMAT_VERSION, MANIFEST, SPLITS
from mixrec.data.synthetic import (SyntheticSpec, _clicks, _interests, _items, _test_mask, _timestamps,
                                   _user_chunks, _with_relations, user_names)
from mixrec.io import atomic_dir, atomic_file

INTEREST_CELLS = 1 << 22  # bound on (users x clusters) Gumbel keys drawn at once
Layout = Literal["events", "dataset"]


@dataclasses.dataclass
class Chunk:
    """The rows of one chunk of consecutive users (grouped by user, in event order)."""

    user: np.ndarray  # dense user index
    item: np.ndarray  # dense item index
    rel: np.ndarray  # relation code into spec.relations
    timestamp: np.ndarray
    test: np.ndarray  # bool


def stream_chunks(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray, Iterator[Chunk]]:
    """(raw item ids, item clusters, iterator of :class:`Chunk`); deterministic in ``spec.seed``."""
    rng = np.random.default_rng(spec.seed)
    item_ids, cluster, sampler = _items(spec, rng)
    n_edges = rng.integers(spec.edges_per_user[0], spec.edges_per_user[1] + 1, spec.n_users)

    def chunks() -> Iterator[Chunk]:
        for lo, hi in _user_chunks(n_edges):
            interests, props = _chunk_interests(spec, rng, hi - lo)
            user, item, clus = _clicks(spec, rng, sampler, interests, props, n_edges[lo:hi])
            user, item, _, rel = _with_relations(spec, rng, user, item, clus, interests[:, 0][user])
            ts = _timestamps(rng, user, hi - lo)
            test = _test_mask(user, hi - lo, spec.test_fraction)
            yield Chunk(user + lo, item, rel, ts, test)

    return item_ids, cluster, chunks()


def write_stream(spec: SyntheticSpec, out_dir: str | Path, layout: Layout = "events") -> dict[str, Path]:
    """Write ``spec``'s log chunk by chunk into ``out_dir`` (see the module docstring); returns the paths."""
    if layout not in ("events", "dataset"):
        raise ValueError(f"layout must be 'events' or 'dataset'; got {layout!r}")
    out_dir = Path(out_dir)
    item_ids, cluster, chunks = stream_chunks(spec)
    paths = {"items": out_dir / "items.tsv"}
    if layout == "events":
        paths["events"] = out_dir / "events.parquet"
        with atomic_file(paths["events"]) as fh:
            _write_events(spec, item_ids, chunks, fh)
    else:
        paths["dataset"] = out_dir
        _write_dataset(spec, item_ids, chunks, out_dir)
    width = max(2, len(str(spec.n_clusters - 1)))
    labels = pc.take(pa.array([f"topic{c:0{width}d}" for c in range(spec.n_clusters)]), pa.array(cluster))
    with atomic_file(paths["items"]) as fh:
        pacsv.write_csv(pa.table({"item_id": pa.array(item_ids), "genres": labels}), fh,
                        pacsv.WriteOptions(delimiter="\t", quoting_style="none"))
    return paths


# ---------------------------------------------------------------- layouts
def _write_events(spec: SyntheticSpec, item_ids: np.ndarray, chunks: Iterator[Chunk], fh) -> None:
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.int64()), ("event", pa.string()),
                        ("timestamp", pa.int64()), ("split", pa.string())])
    width = max(6, len(str(spec.n_users - 1)))
    relations, splits = pa.array(list(spec.relations)), pa.array(["train", "test"])
    with pq.ParquetWriter(fh, schema) as writer:
        for c in chunks:
            digits = pc.utf8_lpad(pc.cast(pa.array(c.user), pa.string()), width, "0")
            writer.write_table(pa.table({
                "user_id": pc.binary_join_element_wise("u", digits, ""),
                "item_id": pa.array(item_ids[c.item]),
                "event": pc.take(relations, pa.array(c.rel)),
                "timestamp": pa.array(c.timestamp),
                "split": pc.take(splits, pa.array(c.test.astype(np.int64))),
            }, schema=schema))


def _write_dataset(spec: SyntheticSpec, item_ids: np.ndarray, chunks: Iterator[Chunk], out_dir: Path) -> None:
    schema = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("rel", pa.int16()), ("weight", pa.float32()),
                        ("split", pa.int8())])
    counts = np.zeros((len(spec.relations), len(SPLITS)), dtype=np.int64)
    test_code = SPLITS.index("test")
    with atomic_dir(out_dir) as tmp:
        (tmp / "entities").mkdir()
        pq.write_table(pa.table({"index": np.arange(spec.n_users, dtype=np.int64), "id": user_names(spec.n_users)}),
                       tmp / "entities" / "user.parquet")
        pq.write_table(pa.table({"index": np.arange(spec.n_items, dtype=np.int64), "id": pa.array(item_ids)}),
                       tmp / "entities" / "item.parquet")
        with pq.ParquetWriter(tmp / EDGES, schema) as writer:
            for c in chunks:
                split = np.where(c.test, test_code, 0).astype(np.int8)
                np.add.at(counts, (c.rel, split), 1)
                writer.write_table(pa.table({
                    "src": c.user.astype(np.int64), "dst": c.item.astype(np.int64), "rel": c.rel.astype(np.int16),
                    "weight": np.ones(len(c.user), dtype=np.float32), "split": split}, schema=schema))
        manifest = {
            "format": FORMAT_VERSION,
            "entities": {"user": spec.n_users, "item": spec.n_items},
            "relations": [{"name": r, "source_type": "user", "target_type": "item"} for r in spec.relations],
            "counts": {r: {s: int(counts[i, j]) for j, s in enumerate(SPLITS) if counts[i, j]}
                       for i, r in enumerate(spec.relations)},
            "info": {"synthetic": dataclasses.asdict(spec)},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))


def _chunk_interests(spec: SyntheticSpec, rng: np.random.Generator, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Interests of ``n_users`` users, drawn in sub-chunks so the Gumbel keys stay under INTEREST_CELLS."""
    step = max(1, INTEREST_CELLS // spec.n_clusters)
    parts = [_interests(dataclasses.replace(spec, n_users=min(step, n_users - lo)), rng)
             for lo in range(0, n_users, step)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
