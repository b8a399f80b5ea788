"""The `mixrec` command line: a thin veneer over the library (ingest, train, retrieve, evaluate, similar, serve)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from mixrec.config import Config, ConfigError
from mixrec.progress import show_progress_lines
from mixrec.registry import INDEX_BACKENDS


def _add_index_arg(p) -> None:
    """``--index KIND``: the choices are the registered index backends."""
    p.add_argument("--index", default=None, choices=INDEX_BACKENDS.names(),
                   help="override the index kind: " + ", ".join(INDEX_BACKENDS.names()))
    p.add_argument("--merge", default=None, choices=["round_robin", "rescore"],
                   help="override how per-component lists merge: round_robin (section 3.5) or rescore (their "
                        "union ranked by the exact pooled score)")


def _index_config(model, a):
    """The model's index config with ``--index`` / ``--merge`` applied."""
    update = {k: v for k, v in (("kind", a.index), ("merge", a.merge)) if v is not None}
    return model.config.index.model_copy(update=update)


def _add_ingest(sub) -> None:
    p = sub.add_parser("ingest", help="read an interaction log (CSV/TSV/Parquet) into a dataset directory")
    p.add_argument("paths", nargs="*", help="input files (.csv, .tsv, .gz, .parquet)")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--schema", default=None, help="graph schema (TOML): entity types and typed relations, each "
                   "with its file and columns; replaces the paths and column options")
    p.add_argument("--source-col", default="user_id")
    p.add_argument("--target-col", default="item_id")
    p.add_argument("--relation-col", default=None, help="task column (default: one relation)")
    p.add_argument("--weight-col", default=None)
    p.add_argument("--timestamp-col", default=None)
    p.add_argument("--split-col", default=None, help="column with train/valid/test")
    p.add_argument("--split", default=None, choices=["column", "random", "temporal", "leave-last-out"],
                   help="split strategy (default: column when --split-col is given, else random)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--valid-fraction", type=float, default=0.0)
    p.add_argument("--source-type", default="user")
    p.add_argument("--target-type", default="item")
    p.add_argument("--relation", default="interaction", help="relation name when there is no relation column")
    p.add_argument("--delimiter", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even when it is not a dataset directory (default: only a dataset or empty folder)")
    p.set_defaults(func=cmd_ingest)


def cmd_ingest(a) -> int:
    from mixrec.data.ingest import ingest
    if a.schema or not a.paths:
        if not a.schema or a.paths:
            raise SystemExit("mixrec ingest: give either input files or --schema graph.toml, not both or neither")
        from mixrec.data.schema import ingest_graph
        ingest_graph(a.schema, a.out, overwrite=a.overwrite or None, progress=True)
        return 0
    report = ingest(a.paths, a.out, source_col=a.source_col, target_col=a.target_col, relation_col=a.relation_col,
                    weight_col=a.weight_col, timestamp_col=a.timestamp_col, split_col=a.split_col, split=a.split,
                    test_fraction=a.test_fraction, valid_fraction=a.valid_fraction, seed=a.seed,
                    source_type=a.source_type, target_type=a.target_type, default_relation=a.relation,
                    delimiter=a.delimiter, overwrite=a.overwrite or None, progress=False)
    print(report.summary())
    return 0


def _config_from(a) -> Config:
    cfg = Config.load(a.config) if a.config else Config()
    return cfg.with_overrides(a.set or [])


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a mixture-embedding model on a dataset directory")
    p.add_argument("data", help="dataset directory (from `mixrec ingest`)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--config", default=None, help="TOML/YAML/JSON config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set components.user=5 --set dim=32 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (sets the config key device)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)


def cmd_train(a) -> int:
    from mixrec.train import train
    cfg = _config_from(a)
    if a.device:
        cfg = cfg.with_overrides({"device": a.device})
    if cfg.epochs == 0:
        raise ConfigError("epochs=0 would write an untrained model; set epochs >= 1 (the library's train() "
                          "accepts 0 for an untrained baseline)")
    model = train(a.data, cfg, a.out, resume=a.resume, progress=not a.quiet)
    hist = model.info.get("history", [])
    if hist:
        last = hist[-1]
        print(f"trained {len(hist)} epochs; last loss {last['loss']:.4f}, {last['edges_per_s']:,.0f} edges/s; "
              f"model in {a.out}")
    return 0


def _add_retrieve(sub) -> None:
    p = sub.add_parser("retrieve", help="round-robin KNN candidates for every user, written as Parquet")
    p.add_argument("model")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--out", required=True, help="output .parquet (user, rank, item, score, component)")
    p.add_argument("--weights", default="all", help="mixture weight set")
    _add_index_arg(p)
    p.add_argument("--include-seen", action="store_true", help="do not exclude training items")
    p.add_argument("--from", dest="from_type", default=None, help="entity type of the queries (default: the "
                   "first relation's source type), e.g. consumer")
    p.add_argument("--to", dest="to_type", default=None, help="entity type retrieved (default: the first "
                   "relation's destination type), e.g. creator; any pair of the model's types")
    p.add_argument("--users", default=None, help="file with one raw user id per line (default: all users)")
    p.add_argument("--history", default=None, metavar="FILE",
                   help="fold in new users from a history file (Parquet/CSV/TSV: user, item[, relation]) "
                        "and retrieve for them instead of the model's users")
    p.add_argument("--foldin-steps", type=int, default=None, help="Adagrad steps of the fold-in (default 100)")
    p.add_argument("--quiet", action="store_true")
    _add_no_verify(p)
    p.set_defaults(func=cmd_retrieve)


def cmd_retrieve(a) -> int:
    import pyarrow.parquet as pq

    from mixrec.io import atomic_file
    from mixrec.model import MixtureModel
    from mixrec.retrieve import Retriever
    from mixrec.filters import is_filter_dir, load_filter
    if is_filter_dir(a.model):  # a closed-form filter model (mixrec fit-filter): exact ranking
        from mixrec.filters.command import retrieve_filter
        return retrieve_filter(load_filter(a.model), a)
    model = MixtureModel.load(a.model, verify=not a.no_verify)
    icfg = _index_config(model, a)
    for t in (a.from_type, a.to_type):
        if t is not None and t not in model.tables:
            raise ValueError(f"--from/--to {t!r}: not an entity type of the model; it has {sorted(model.tables)}")
    r = Retriever(model, a.weights, index_config=icfg, source_type=a.from_type, target_type=a.to_type)
    if a.history:
        if a.users:
            raise ValueError("--users and --history exclude each other: --history folds in new users")
        return _retrieve_history(model, r, a)
    users = None
    if a.users:
        raw = [line.strip() for line in Path(a.users).read_text().splitlines() if line.strip()]
        users = model.lookup(r.source_type).require(raw, a.users, "user")
    users, cands = r.recommend_all(a.k, users=users, exclude_seen=not a.include_seen, progress=not a.quiet)
    table = r.to_table(users, cands)
    with atomic_file(a.out) as fh:
        pq.write_table(table, fh)
    print(f"{table.num_rows:,} candidates for {len(users):,} users written to {a.out}")
    return 0


def _retrieve_history(model, r, a) -> int:
    import pyarrow.parquet as pq

    from mixrec.foldin import FoldInSettings, read_histories
    from mixrec.io import atomic_file
    users, items, rels = read_histories(a.history)
    hist, codes = r.dense_histories(users, items, rels, str(a.history))
    settings = FoldInSettings() if a.foldin_steps is None else FoldInSettings(steps=a.foldin_steps)
    cands = r.recommend_histories(hist, codes, a.k, exclude_seen=not a.include_seen, settings=settings)
    table = r.to_table(np.arange(len(users)), cands, user_ids=np.array([str(u) for u in users], dtype=object))
    with atomic_file(a.out) as fh:
        pq.write_table(table, fh)
    print(f"{table.num_rows:,} candidates for {len(users):,} folded-in users written to {a.out}")
    return 0


def _add_no_verify(p) -> None:
    p.add_argument("--no-verify", action="store_true",
                   help="load a model whose model.json lists no checksums (its files are not verified)")


def _add_similar(sub) -> None:
    p = sub.add_parser("similar", help="item-to-item neighbours from the learned destination embeddings")
    p.add_argument("model")
    p.add_argument("items", nargs="+", help="raw item ids")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--weights", default="all")
    _add_no_verify(p)
    p.set_defaults(func=cmd_similar)


def cmd_similar(a) -> int:
    from mixrec.model import MixtureModel
    from mixrec.retrieve import Retriever
    from mixrec.filters import is_filter_dir, load_filter
    if is_filter_dir(a.model):
        from mixrec.filters.command import similar_filter
        return similar_filter(load_filter(a.model), a)
    model = MixtureModel.load(a.model, verify=not a.no_verify)
    r = Retriever(model, a.weights)
    idx = model.lookup(r.target_type).require(a.items, "items", "item")
    c = r.similar(idx, a.k)
    names = model.ids[r.target_type]
    for raw, row, sc in zip(a.items, c.items, c.scores):
        print(f"{raw}: " + ", ".join(f"{names[i]} ({s:.3f})" for i, s in zip(row, sc) if i >= 0))
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="full-ranking Recall/NDCG/HitRate/MRR and diversity on a split")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--k", type=int, action="append", help="cutoffs (repeatable; default 20 and 50)")
    p.add_argument("--split", default="test")
    p.add_argument("--relation", default=None, help="evaluate one relation (default: each)")
    p.add_argument("--exclude-seen", default="all", choices=["all", "relation", "none"])
    p.add_argument("--method", action="append", choices=["exact", "retrieval"], help="default: both")
    p.add_argument("--weights", default="all")
    _add_index_arg(p)
    p.add_argument("--item-labels", default=None, help="TSV/CSV of item labels for diversity")
    p.add_argument("--id-col", default="item_id")
    p.add_argument("--label-col", default="genres")
    p.add_argument("--label-sep", default="|")
    p.add_argument("--max-users", type=int, default=None)
    p.add_argument("--json", default=None, help="write the report as JSON")
    _add_no_verify(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(a) -> int:
    from mixrec.data.dataset import Dataset
    from mixrec.evaluate import evaluate, format_report, load_item_labels
    from mixrec.io import save_json
    from mixrec.filters import is_filter_dir
    if is_filter_dir(a.model):  # a closed-form filter model (mixrec fit-filter): exact ranking only
        from mixrec.filters import load_filter
        from mixrec.filters.command import evaluate_filter
        report = evaluate_filter(load_filter(a.model), Dataset.load(a.data), a.k or [20, 50], split=a.split,
                                 relation=a.relation, exclude_seen=a.exclude_seen)
        print(format_report(report))
        if a.json:
            save_json(a.json, report)
        return 0
    from mixrec.model import MixtureModel
    model = MixtureModel.load(a.model, verify=not a.no_verify)
    data = Dataset.load(a.data)
    labels = None
    if a.item_labels:
        labels = load_item_labels(a.item_labels, model.ids[model.target_type], id_col=a.id_col,
                                  label_col=a.label_col, sep=a.label_sep)
    report = evaluate(model, data, a.k or [20, 50], split=a.split, relation=a.relation,
                      exclude_seen=a.exclude_seen, labels=labels, methods=a.method or ["exact", "retrieval"],
                      weight_set=a.weights, max_users=a.max_users, index_config=_index_config(model, a))
    print(format_report(report))
    if a.json:
        save_json(a.json, report)
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="write a synthetic log with planted multi-interest structure")
    p.add_argument("--out", required=True, help="directory for events.parquet and items.tsv")
    p.add_argument("--users", type=int, default=4000)
    p.add_argument("--items", type=int, default=3000)
    p.add_argument("--clusters", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--edges-per-user", type=int, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="distinct clicked items per user (default 20 60)")
    p.add_argument("--relations", nargs="+", default=None, help="relation names (default: click like)")
    p.add_argument("--stream", action="store_true",
                   help="write chunk by chunk with bounded memory (for graphs of 100M+ edges)")
    p.add_argument("--layout", choices=["events", "dataset"], default="events",
                   help="with --stream: 'dataset' writes a dataset directory that `mixrec train` reads directly")
    p.set_defaults(func=cmd_generate)


def cmd_generate(a) -> int:
    from mixrec.data.synthetic import SyntheticSpec, write
    extra = {k: tuple(v) for k, v in (("edges_per_user", a.edges_per_user), ("relations", a.relations)) if v}
    spec = SyntheticSpec(n_users=a.users, n_items=a.items, n_clusters=a.clusters, seed=a.seed, **extra)
    if a.stream:
        from mixrec.data.synthetic_stream import write_stream
        paths = write_stream(spec, a.out, layout=a.layout)
    elif a.layout != "events":
        raise ValueError("--layout dataset needs --stream")
    else:
        paths = write(spec, a.out)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="generate -> ingest -> train (mixture and single) -> retrieve -> evaluate")
    p.add_argument("--workdir", default="runs/demo", help="where the demo writes its files")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="a smaller run (for tests)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(a) -> int:
    from mixrec.demo import run_demo
    run_demo(a.workdir, epochs=a.epochs, quick=a.quick)
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve candidates over HTTP (FastAPI + uvicorn); see docs/serving.md")
    p.add_argument("model", help="model directory")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    _add_index_arg(p)
    p.add_argument("--ef-search", type=int, default=None, help="HNSW efSearch (default: the model's config)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists to probe (default: the model's config)")
    p.add_argument("--threads", type=int, default=None,
                   help="requests computed at once per worker (default: one per CPU); the others wait in the event loop")
    p.add_argument("--ranker", action="append", default=[], metavar="NAME=DIR",
                   help="a funnel ranker (saved by FunnelRanker.save) for POST /v1/query's rank steps (repeatable)")
    p.add_argument("--filter", action="append", default=[], metavar="NAME=DIR",
                   help="a graph-filter model (mixrec fit-filter) for POST /v1/query's graph(model=NAME) sources "
                        "(repeatable)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (each holds a copy of the model; reloads reach all of them)")
    p.add_argument("--max-k", type=int, default=1000)
    p.add_argument("--max-batch", type=int, default=256, help="most users in one POST /v1/candidates")
    p.add_argument("--max-history", type=int, default=2000, help="most items in one fold-in request")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--foldin-steps", type=int, default=30, help="Adagrad steps per fold-in request")
    p.add_argument("--max-query-cost", type=int, default=None,
                   help="POST /v1/query: largest estimated cost in work units (default 4,000,000)")
    p.add_argument("--query-timeout", type=float, default=None,
                   help="POST /v1/query: seconds after which a query stops at its next step (default 10)")
    p.add_argument("--admin-token", default=None,
                   help="token for POST /admin/reload (default $MIXREC_ADMIN_TOKEN); required off loopback")
    p.set_defaults(func=cmd_serve)


def _named_dirs(specs: list[str], flag: str, example: str, marker: str, how: str) -> dict[str, str]:
    """``NAME=DIR`` options as {name: dir}; each dir must hold ``marker`` (``how`` says how to make one)."""
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} {spec!r}: give NAME=DIR, e.g. {flag} default={example}")
        if not (Path(path) / marker).is_file():
            raise ValueError(f"{flag} {spec!r}: {path} has no {marker} ({how})")
        out[name] = path
    return out


def _rankers(specs: list[str]) -> dict[str, str]:
    return _named_dirs(specs, "--ranker", "ranker/", "ranker.json", "save one with FunnelRanker.save")


def _filters(specs: list[str]) -> dict[str, str]:
    return _named_dirs(specs, "--filter", "cascade/", "model.json", "fit one with mixrec fit-filter")


def cmd_serve(a) -> int:
    from pydantic import ValidationError

    from mixrec.serve import ServeSettings, serve
    try:
        settings = ServeSettings(model_dir=a.model, host=a.host, port=a.port, index_kind=a.index, merge=a.merge,
                                 max_k=a.max_k,
                                 max_batch=a.max_batch, max_history=a.max_history, max_body_bytes=a.max_body_bytes,
                                 foldin_steps=a.foldin_steps, admin_token=a.admin_token,
                                 ef_search=a.ef_search, nprobe=a.nprobe, workers=a.workers,
                                 threads=a.threads, rankers=_rankers(a.ranker), filters=_filters(a.filter),
                                 **{k: v for k, v in (("max_query_cost", a.max_query_cost),
                                                      ("query_timeout_s", a.query_timeout)) if v is not None})
    except ValidationError as e:
        raise ValueError("; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None
    print(f"mixrec serve: loading {a.model}, then listening on http://{a.host}:{a.port} (docs at /docs)",
          file=sys.stderr)
    serve(settings)
    return 0


def _add_fit_filter(sub) -> None:
    from mixrec.filters.command import add_parser
    add_parser(sub)


def _add_report(sub) -> None:
    from mixrec.report.command import add_parser
    add_parser(sub)


def _add_tune(sub) -> None:
    from mixrec.tune import add_parser
    add_parser(sub)


def _add_funnel(sub) -> None:
    p = sub.add_parser("funnel", help="run a candidate funnel query (TOML/YAML/JSON) for users; docs/funnel.md")
    p.add_argument("model", help="model directory")
    p.add_argument("data", nargs="?", default=None,
                   help="dataset directory whose train split is the history (default: the model's training edges)")
    p.add_argument("--query", required=True, help="query document (.toml, .yaml/.yml or .json)")
    p.add_argument("--user", action="append", help="raw user id (repeatable; default: the document's 'user')")
    p.add_argument("--ranker", action="append", metavar="[NAME=]DIR",
                   help="a trained funnel ranker directory (name 'default' unless given; repeatable)")
    p.add_argument("--filter", action="append", metavar="[NAME=]DIR",
                   help="a graph-filter model directory (mixrec fit-filter) for graph(model=NAME) sources (name "
                        "'default' unless given; repeatable)")
    p.add_argument("--item-labels", default=None, help="TSV/CSV of item labels (for diversify by label)")
    p.add_argument("--label-col", default="genres")
    p.add_argument("--from", dest="from_type", default=None, help="entity type of the users (default: the first "
                   "relation's source type), e.g. consumer")
    p.add_argument("--to", dest="to_type", default=None, help="entity type of the candidates (default: the first "
                   "relation's destination type), e.g. media for a two_hop source through authored")
    p.add_argument("--explain", action="store_true", help="print every step's kept/dropped counts per user")
    p.add_argument("--out", default=None, help="write the candidates as Parquet")
    p.set_defaults(func=cmd_funnel)


def cmd_funnel(a) -> int:
    from mixrec.funnel.command import run_command
    return run_command(a)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixrec", description="Multi-task mixture-embedding candidate retrieval.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_ingest, _add_train, _add_retrieve, _add_similar, _add_evaluate, _add_generate, _add_demo,
                _add_serve, _add_report, _add_tune, _add_funnel, _add_fit_filter):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    show_progress_lines()  # one line per epoch/loop when stderr is not a terminal
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"mixrec {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
