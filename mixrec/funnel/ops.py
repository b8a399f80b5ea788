"""Funnel operations, each declared in one place: to add a step, register an :class:`Operation` here.

An operation declares its arguments (validator, default), its executor, its checks against a funnel, its
serving limits and its cost estimate.

Cost estimates are in work units, about one walker step or one candidate searched, scored or compared;
:func:`query_cost` adds them up over a query (sub-queries included) before it runs, from each step's
arguments and an upper bound on the candidates it receives, so a server can refuse a query over its budget."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from mixrec.funnel.query import (MAX_K, QueryError, _choice, _float, _floats, _int, _int_list, _item_ids, _name,
                                 _names, _optional_ints, _seen, _stages, finish_rank, finish_union)
from mixrec.funnel.sources import blend, expand_neighbours, graph_source, history_source, popular_source
from mixrec.funnel.walk import walk_expand
from mixrec.registry import FUNNEL_OPS

MAX_WALK_STEPS = 2_000_000  # serving limit: walkers * max_steps of one walk
SEARCH_COST = 1000  # work units of one query vector's index search, beyond the candidates it returns
Cost = tuple[int, int]  # (work units, candidates out at most)


@dataclass(frozen=True)
class Operation:
    """One funnel step.

    ``args``: argument -> (validator raising ValueError, default); ``execute(funnel, args, candidates, user,
    run_sub) -> CandidateSet`` (``run_sub(query)`` runs a sub-query for the same user); ``source``: it starts
    a query (and only then); ``finish(args, where)``: checks across arguments after each one's validator;
    ``check(funnel, args, where)``: against a funnel (rankers, labels); ``limits(args, max_k, where)``: serving
    limits beyond every ``k``/``n`` <= max_k. The checks raise :class:`QueryError`. ``cost(args, n_in) ->
    (work units, candidates out at most)`` given at most ``n_in`` candidates in (default: linear, size kept).
    """

    args: dict[str, tuple[Optional[Callable[[Any], Any]], Any]]
    execute: Callable[..., Any]
    source: bool = False
    finish: Optional[Callable[[dict, str], None]] = None
    check: Optional[Callable[[Any, dict, str], None]] = None
    limits: Optional[Callable[[dict, int, str], None]] = None
    cost: Optional[Callable[[dict, int], Cost]] = None


def query_cost(query, n_in: int = 0) -> Cost:
    """(estimated work units, candidates out at most) of running ``query`` on at most ``n_in`` candidates."""
    total, n = 0, n_in
    for step in query.steps:
        op = FUNNEL_OPS.get(step.op)
        units, n = op.cost(step.args, n) if op.cost is not None else (n + 1, n)
        total += units
    return total, n


def _union_cost(a: dict, n: int) -> Cost:
    subs = [query_cost(q) for q in a["queries"]]
    sizes = [min(q, size) for q, size in zip(a["quotas"], [n, *(out for _, out in subs)])]
    out = sum(sizes) if a["k"] is None else min(sum(sizes), a["k"])
    return sum(units for units, _ in subs) + n + sum(out for _, out in subs), out


def _rank_cost(a: dict, n: int) -> Cost:
    units, size = 0, n
    for keep in a["keep"]:
        units += 10 * size  # features and a model per candidate
        size = min(size, keep)
    return units, size


def _diversify_cost(a: dict, n: int) -> Cost:
    return (n * n if a["method"] == "mmr" else n + 1), n


def _walk(f, a: dict, cs, user: int, run_sub):
    rng = np.random.default_rng([a["seed"], user])
    out, _ = walk_expand(f.graph, cs, a["k"], a["walkers"], a["restart"], a["max_steps"], a["n_p"], a["n_v"], rng=rng)
    return out


def _walk_limits(a: dict, max_k: int, where: str) -> None:
    if a["walkers"] * a["max_steps"] > MAX_WALK_STEPS:
        raise QueryError(where, "walkers", f"walkers * max_steps must be at most {MAX_WALK_STEPS:,} on this server")


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def _graph_check(f, a: dict, where: str) -> None:
    filters = getattr(f, "filters", {})
    if a["model"] not in filters:
        raise QueryError(where, "model", f"no graph-filter model named {a['model']!r}; available: "
                                         f"{sorted(filters) or 'none (fit one with mixrec fit-filter)'}")
    m = filters[a["model"]]
    if (m.n_users, m.n_items) != (f.n_users, f.n_items):
        raise QueryError(where, "model", f"graph-filter model {a['model']!r} has {m.n_users} users x {m.n_items} "
                                         f"items, the funnel {f.n_users} x {f.n_items}; fit it on the same dataset")


def _rank_check(f, a: dict, where: str) -> None:
    if a["ranker"] not in f.rankers:
        raise QueryError(where, "ranker", f"no ranker named {a['ranker']!r}; available: "
                                          f"{sorted(f.rankers) or 'none (train one first)'}")
    for stage in ("first_pass", "second_pass"):
        if stage in a["stages"] and getattr(f.rankers[a["ranker"]], stage) is None:
            raise QueryError(where, "stages", f"ranker {a['ranker']!r} has no distilled {stage}")


def _rank_limits(a: dict, max_k: int, where: str) -> None:
    if max(a["keep"]) > max_k:
        raise QueryError(where, "keep", f"at most {max_k} on this server, got {a['keep']}")


def _two_hop_check(f, a: dict, where: str) -> None:
    types, rels = sorted(f.model.tables), {r.name: r for r in f.model.relations}
    if a["via"] not in types:
        raise QueryError(where, "via", f"unknown entity type {a['via']!r}; the model has {types}")
    r = rels.get(a["relation"])
    if r is None:
        raise QueryError(where, "relation", f"unknown relation {a['relation']!r}; the model has {sorted(rels)}")
    if r.source_type != a["via"]:
        raise QueryError(where, "relation", f"relation {r.name!r} goes {r.source_type} -> {r.target_type}, "
                                            f"not from via={a['via']!r}")
    if r.target_type != f.target_type:
        raise QueryError(where, "relation", f"relation {r.name!r} leads to {r.target_type!r} but this funnel's "
                                            f"items are {f.target_type!r}; build the funnel with "
                                            f"target_type={r.target_type!r} (mixrec funnel --to "
                                            f"{r.target_type}, or target_type in POST /v1/query)")


def _diversify_check(f, a: dict, where: str) -> None:
    if a["by"] == "label" and f.labels is None:
        raise QueryError(where, "by", "diversifying by label needs item labels (none were given)")


_register = FUNNEL_OPS.register
_register("mixture", Operation(
    {"k": (_int(1, MAX_K), 100), "weights": (_name, "all"), "exclude_seen": (_seen, True)},
    lambda f, a, cs, user, sub: f.recommend(user, a["k"], a["weights"], a["exclude_seen"]), source=True,
    cost=lambda a, n: (SEARCH_COST + a["k"], a["k"])))
_register("history", Operation(
    {"relation": (_names, None), "n": (_int(1, MAX_K), 30)},
    lambda f, a, cs, user, sub: history_source(*f.history(a["relation"]), user, a["n"]), source=True,
    cost=lambda a, n: (a["n"], a["n"])))
_register("graph", Operation(
    {"model": (_name, "default"), "k": (_int(1, MAX_K), 100), "exclude_seen": (_bool, True)},
    lambda f, a, cs, user, sub: graph_source(f.filters[a["model"]], user, a["k"], a["exclude_seen"]),
    source=True, check=_graph_check, cost=lambda a, n: (SEARCH_COST + a["k"], a["k"])))
_register("popular", Operation(
    {"k": (_int(1, MAX_K), 100), "relation": (_names, None)},
    lambda f, a, cs, user, sub: popular_source(*f.popularity(a["relation"]), a["k"]), source=True,
    cost=lambda a, n: (a["k"], a["k"])))
_register("two_hop", Operation(
    {"via": (_name, None), "relation": (_name, None), "k_via": (_int(1, 1000), 20),
     "per_via": (_int(1, 1000), 5), "k": (_int(1, MAX_K), 100), "weights": (_name, "all"),
     "exclude_seen": (_bool, False)},
    lambda f, a, cs, user, sub: f.two_hop(user, a["via"], a["relation"], a["k_via"], a["per_via"], a["k"],
                                          a["weights"], a["exclude_seen"]),
    source=True, check=_two_hop_check,
    cost=lambda a, n: (SEARCH_COST + a["k_via"] * (1 + a["per_via"]), min(a["k"], a["k_via"] * a["per_via"]))))
_register("similar", Operation(
    {"k": (_int(1, 1000), 20), "weights": (_name, "all")},
    lambda f, a, cs, user, sub: expand_neighbours(cs, f.similar(cs.items, a["k"], a["weights"]), "similar"),
    cost=lambda a, n: (n * (SEARCH_COST + a["k"]), n * a["k"])))
_register("walk", Operation(
    {"k": (_int(1, MAX_K), 100), "walkers": (_int(1, 200_000), 2000), "restart": (_float(0.0, 0.99), 0.5),
     "max_steps": (_int(1, 1000), 20), "n_p": (_int(1, MAX_K, optional=True), None),
     "n_v": (_int(1, 10**6), 4), "seed": (_int(0, 2**31), 0)},
    _walk, limits=_walk_limits, cost=lambda a, n: (a["walkers"] * a["max_steps"] + n, a["k"])))
_register("union", Operation(
    {"queries": (None, None), "weights": (_floats, None), "quotas": (_optional_ints, None),
     "k": (_int(1, MAX_K, optional=True), None), "combine": (_choice("max", "sum"), "max"),
     "offset": (_float(0.0, 1e6), 0.0)},
    lambda f, a, cs, user, sub: blend([cs, *(sub(q) for q in a["queries"])], a["weights"], a["quotas"], a["k"],
                                      a["combine"], a["offset"]),
    finish=finish_union, cost=_union_cost))
_register("filter", Operation(
    {"exclude_seen": (_seen, False), "exclude_items": (_item_ids, []),
     "min_score": (_float(-1e18, 1e18, optional=True), None)},
    lambda f, a, cs, user, sub: f._filter(cs, user, a)))
_register("rank", Operation(
    {"ranker": (_name, "default"), "keep": (_int_list(1, decreasing=True, max_len=3), [150, 25]),
     "stages": (_stages, None)},
    lambda f, a, cs, user, sub: f._rank(cs, user, a), finish=finish_rank, check=_rank_check, limits=_rank_limits,
    cost=_rank_cost))
_register("diversify", Operation(
    {"by": (_choice("seed", "component", "origin", "label", "source", "embedding"), "seed"),
     "method": (_choice("round_robin", "penalty", "mmr"), "round_robin"),
     "penalty": (_float(0.0, 1e9), 0.1), "beta": (_float(0.0, 1.0), 0.5),
     "k": (_int(1, MAX_K, optional=True), None)},
    lambda f, a, cs, user, sub: f._diversify(cs, a), check=_diversify_check, cost=_diversify_cost))
_register("take", Operation({"n": (_int(1, MAX_K), 25)}, lambda f, a, cs, user, sub: cs.head(a["n"]),
                            cost=lambda a, n: (1, min(n, a["n"]))))
