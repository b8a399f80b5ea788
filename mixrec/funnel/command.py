"""``mixrec funnel``: run a query document for some users, print the funnel, write the candidates."""
from __future__ import annotations

from pathlib import Path


def run_command(a) -> int:
    """Implementation of the ``mixrec funnel`` subcommand (arguments defined in :mod:`mixrec.cli`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mixrec.evaluate import load_item_labels
    from mixrec.filters import load_filter
    from mixrec.funnel.engine import Funnel
    from mixrec.funnel.query import Query
    from mixrec.funnel.rank import FunnelRanker
    from mixrec.io import atomic_file
    from mixrec.model import MixtureModel

    query = Query.load(a.query)  # validated before the model is even loaded
    model = MixtureModel.load(a.model)
    source, target = a.from_type or model.source_type, a.to_type or model.target_type
    for t in (source, target):
        if t not in model.tables:
            raise ValueError(f"--from/--to {t!r}: not an entity type of the model; it has {sorted(model.tables)}")
    history = None
    if a.data:  # the dataset's training edges between the two types
        from mixrec.data.dataset import Dataset
        tr = Dataset.load(a.data).split("train", relations=model.relations_between(source, target))
        history = (tr.src, tr.dst, tr.rel)
    labels = None
    if a.item_labels:
        labels = load_item_labels(a.item_labels, model.ids[target], label_col=a.label_col)
    rankers = {name: FunnelRanker.load(path) for name, path in (_named(r) for r in a.ranker or [])}
    filters = {name: load_filter(path) for name, path in (_named(f) for f in a.filter or [])}
    funnel = Funnel(model, history=history, labels=labels, rankers=rankers, filters=filters, source_type=source,
                    target_type=target)
    raw_users = list(a.user or [])
    if query.user is not None and not raw_users:
        raw_users = [query.user]
    if not raw_users:
        raise ValueError("no user: pass --user ID (repeatable) or set 'user' in the query document")
    dense = model.lookup(source).require(raw_users, "--user", "user")
    funnel.check(query)
    item_ids = model.ids[target]
    cols: dict[str, list] = {k: [] for k in ("user", "rank", "item", "score", "source", "via", "seed", "seed_type",
                                             "component")}
    for raw, user in zip(raw_users, dense):
        res = funnel.run(query, int(user), validate=False)
        if a.explain:
            print(res.explain(item_ids, ids=model.ids))
        c = res.candidates
        seeds, seed_types = funnel.seed_ids(c)
        for r in range(len(c)):
            cols["user"].append(str(raw))
            cols["rank"].append(r + 1)
            cols["item"].append(str(item_ids[c.items[r]]))
            cols["score"].append(float(c.scores[r]))
            cols["source"].append(_source_name(int(c.source[r])))
            cols["via"].append("+".join(c.sources_of(r)))
            cols["seed"].append("" if seeds[r] is None else str(seeds[r]))
            cols["seed_type"].append(seed_types[r] or "")
            cols["component"].append(int(c.component[r]))
    table = pa.table({**cols, "rank": pa.array(cols["rank"], pa.int32()),
                      "component": pa.array(cols["component"], pa.int16())})
    if a.out:
        with atomic_file(a.out) as fh:
            pq.write_table(table, fh)
        print(f"{table.num_rows:,} candidates for {len(raw_users):,} users written to {a.out}")
    elif not a.explain:
        for row in table.to_pylist()[:200]:
            print(f"{row['user']}\t{row['rank']}\t{row['item']}\t{row['score']:.4f}\t{row['via']}")
    return 0


def _named(spec: str) -> tuple[str, Path]:
    """``NAME=DIR`` or just ``DIR`` (named ``default``)."""
    name, sep, path = spec.partition("=")
    return (name, Path(path)) if sep else ("default", Path(spec))


def _source_name(code: int) -> str:
    from mixrec.funnel.sources import SOURCES
    return SOURCES[code] if 0 <= code < len(SOURCES) else ""
