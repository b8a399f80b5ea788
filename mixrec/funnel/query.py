"""A small candidate query language in the spirit of IGQL: fluent in Python, or a TOML/YAML/JSON document.

    q = (Query.user(42).history(relation="buy", n=30).similar(k=20)
         .union(Query.source().mixture(k=300))
         .filter(exclude_seen=True).rank("default", keep=[150, 25]).diversify(by="seed", method="round_robin"))

Every step is validated when it is added (and again when a document is read), with errors that
name the step, its operation and the argument at fault. ``Query.from_toml(q.to_toml()) == q``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mixrec.registry import FUNNEL_OPS

MAX_K = 10_000
MAX_STEPS = 64
MAX_DEPTH = 4
SEEN_HELP = "true, false or a list of relation names"


class QueryError(ValueError):
    """An invalid query: ``where`` names the step (e.g. ``step 3 (rank)``), ``arg`` the argument."""

    def __init__(self, where: str, arg: str | None, message: str):
        self.where, self.arg, self.reason = where, arg, message
        super().__init__(f"{where}: argument {arg!r}: {message}" if arg else f"{where}: {message}")


# ----------------------------------------------------------------------------- argument validators
def _int(lo: int, hi: int | None = None, optional: bool = False) -> Callable[[Any], Any]:
    def check(v):
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise ValueError(f"must be an integer in [{lo}, {hi if hi is not None else 'inf'}], got {v!r}")
        return int(v)
    return check


def _float(lo: float, hi: float, optional: bool = False) -> Callable[[Any], Any]:
    def check(v):
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or math.isnan(v):
            raise ValueError(f"must be a number in [{lo}, {hi}], got {v!r}")
        return float(v)
    return check


def _choice(*options: str) -> Callable[[Any], Any]:
    def check(v):
        if v not in options:
            raise ValueError(f"must be one of {list(options)}, got {v!r}")
        return v
    return check


def _name(v):
    if not isinstance(v, str) or not v or len(v) > 200:
        raise ValueError(f"must be a non-empty name, got {v!r}")
    return v


def _names(v):
    """None (every relation), one name, or a list of names -> None or a list."""
    if v is None:
        return None
    vals = [v] if isinstance(v, str) else v
    if not isinstance(vals, (list, tuple)) or not vals:
        raise ValueError(f"must be a relation name or a non-empty list of them, got {v!r}")
    return [_name(x) for x in vals]


def _seen(v):
    if isinstance(v, bool):
        return v
    try:
        return _names(v) if v is not None else False
    except ValueError:
        raise ValueError(f"must be {SEEN_HELP}, got {v!r}") from None


def _int_list(lo: int, decreasing: bool = False, max_len: int = 1000) -> Callable[[Any], Any]:
    def check(v):
        if not isinstance(v, (list, tuple)) or not v or len(v) > max_len:
            raise ValueError(f"must be a non-empty list of at most {max_len} integers, got {v!r}")
        out = [_int(lo, MAX_K)(x) for x in v]
        if decreasing and any(b > a for a, b in zip(out, out[1:])):
            raise ValueError(f"must not increase from stage to stage, got {out}")
        return out
    return check


def _optional_ints(v):
    if v is None:
        return None
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"must be a list of integers (or omitted), got {v!r}")
    return [_int(0, MAX_K)(x) if x is not None else None for x in v]


def _floats(v):
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError(f"must be a non-empty list of numbers, got {v!r}")
    return [_float(1e-9, 1e9)(x) for x in v]


STAGES = ("first_pass", "second_pass", "final")  # cheap -> expensive, as in Explore's three-stage funnel
DEFAULT_STAGES = {1: ["final"], 2: ["first_pass", "final"], 3: list(STAGES)}


def _stages(v):
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError(f"must be a non-empty list of 'first_pass'/'second_pass'/'final', got {v!r}")
    out = [_choice(*STAGES)(x) for x in v]
    if out != [s for s in STAGES if s in out] or out[-1] != "final":
        raise ValueError(f"must end with 'final', each stage at most once, in the order {list(STAGES)}; got {out}")
    return out


def _item_ids(v):
    if not isinstance(v, (list, tuple)) or len(v) > MAX_K:
        raise ValueError(f"must be a list of at most {MAX_K} item ids, got {v!r}")
    return [x if isinstance(x, (int, str)) and not isinstance(x, bool) else _name(x) for x in v]


@dataclass(frozen=True)
class Step:
    """One operation and its (validated, defaults filled) arguments."""

    op: str
    args: dict = field(default_factory=dict)

    def describe(self) -> str:
        shown = {k: (f"<{len(v)} subqueries>" if k == "queries" else v) for k, v in self.args.items()
                 if v is not None and v != []}
        return f"{self.op}(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


@dataclass(frozen=True)
class Query:
    """An immutable chain of steps; each fluent method returns a new query. ``user`` is optional
    (sub-queries and documents sent for several users leave it out)."""

    steps: tuple[Step, ...] = ()
    user: int | str | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def source(cls) -> "Query":
        """An empty query (for sub-queries of :meth:`union`)."""
        return cls()

    @classmethod
    def for_user(cls, user: int | str) -> "Query":
        return cls((), user)

    def add(self, op: str, **args) -> "Query":
        """Append a step after validating it in context (the fluent methods call this)."""
        step = make_step(op, args, f"step {len(self.steps) + 1} ({op})")
        _check_position(self.steps, step, len(self.steps) + 1)
        if len(self.steps) >= MAX_STEPS:
            raise QueryError(f"step {len(self.steps) + 1} ({op})", None, f"a query has at most {MAX_STEPS} steps")
        return Query(self.steps + (step,), self.user)

    def mixture(self, k: int = 100, weights: str = "all", exclude_seen: bool | list[str] = True) -> "Query":
        return self.add("mixture", k=k, weights=weights, exclude_seen=exclude_seen)

    def history(self, relation: str | list[str] | None = None, n: int = 30) -> "Query":
        return self.add("history", relation=relation, n=n)

    def popular(self, k: int = 100, relation: str | list[str] | None = None) -> "Query":
        return self.add("popular", k=k, relation=relation)

    def similar(self, k: int = 20, weights: str = "all") -> "Query":
        return self.add("similar", k=k, weights=weights)

    def walk(self, k: int = 100, **kw) -> "Query":
        return self.add("walk", k=k, **kw)

    def union(self, *queries: "Query", weights: Sequence[float] | None = None,
              quotas: Sequence[int | None] | None = None, k: int | None = None, combine: str = "max",
              offset: float = 0.0) -> "Query":
        """Add the candidates of ``queries``: reciprocal-rank scores ``weight / (offset + rank)`` per input,
        an item's best one (``combine="max"``, an interleave) or their sum (``"sum"``, rank fusion)."""
        return self.add("union", queries=list(queries), weights=weights, quotas=quotas, k=k, combine=combine,
                        offset=offset)

    def filter(self, exclude_seen: bool | list[str] = False, exclude_items: Sequence = (),
               min_score: float | None = None) -> "Query":
        return self.add("filter", exclude_seen=exclude_seen, exclude_items=list(exclude_items), min_score=min_score)

    def rank(self, ranker: str = "default", keep: Sequence[int] = (150, 25),
             stages: Sequence[str] | None = None) -> "Query":
        return self.add("rank", ranker=ranker, keep=list(keep), stages=None if stages is None else list(stages))

    def diversify(self, by: str = "seed", method: str = "round_robin", **kw) -> "Query":
        return self.add("diversify", by=by, method=method, **kw)

    def take(self, n: int) -> "Query":
        return self.add("take", n=n)

    def __getattr__(self, name: str):
        """``query.<op>(**args)`` for a registered operation (mixrec.funnel.ops) without its own method."""
        if name.startswith("_") or name not in FUNNEL_OPS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return lambda **args: self.add(name, **args)

    # ----------------------------------------------------------------- documents
    def to_dict(self) -> dict:
        """Plain data (None values left out, so the form is TOML-safe)."""
        out: dict = {"steps": [_step_dict(s) for s in self.steps]}
        if self.user is not None:
            out["user"] = self.user
        return out

    @classmethod
    def from_dict(cls, doc: dict, where: str = "query", depth: int = 0) -> "Query":
        """Validate a document; errors name the step and argument (e.g. ``step 2 (similar): argument 'k'``)."""
        if not isinstance(doc, dict):
            raise QueryError(where, None, f"must be a table/object with a 'steps' list, got {type(doc).__name__}")
        extra = sorted(set(doc) - {"steps", "user"})
        if extra:
            raise QueryError(where, extra[0], "unknown key; a query has 'steps' and optionally 'user'")
        steps = doc.get("steps")
        if not isinstance(steps, list) or not steps:
            raise QueryError(where, "steps", "must be a non-empty list of steps")
        if len(steps) > MAX_STEPS:
            raise QueryError(where, "steps", f"at most {MAX_STEPS} steps, got {len(steps)}")
        user = doc.get("user")
        if user is not None and (isinstance(user, bool) or not isinstance(user, (int, str))):
            raise QueryError(where, "user", f"must be a user id (integer or string), got {user!r}")
        prefix = "" if where == "query" else f"{where} > "
        out: list[Step] = []
        for i, raw in enumerate(steps, 1):
            label = f"{prefix}step {i}"
            if not isinstance(raw, dict) or not isinstance(raw.get("op"), str):
                raise QueryError(label, "op", f"each step needs an 'op' naming one of {sorted(FUNNEL_OPS)}")
            args = {k: v for k, v in raw.items() if k != "op"}
            label = f"{label} ({raw['op']})"
            if raw["op"] == "union":
                args["queries"] = _sub_queries(args.get("queries"), label, depth)
            step = make_step(raw["op"], args, label)
            _check_position(out, step, i, prefix)
            out.append(step)
        return cls(tuple(out), user)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_toml(self) -> str:
        import tomli_w
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_text(cls, text: str, fmt: str = "toml") -> "Query":
        """Parse a TOML, YAML or JSON document (``fmt``) and validate it."""
        try:
            if fmt == "toml":
                try:
                    import tomllib
                except ModuleNotFoundError:  # pragma: no cover - Python 3.10
                    import tomli as tomllib
                doc = tomllib.loads(text)
            elif fmt in ("yaml", "yml"):
                import yaml
                doc = yaml.safe_load(text)
            elif fmt == "json":
                doc = json.loads(text)
            else:
                raise QueryError("query", None, f"unknown document format {fmt!r}; use toml, yaml or json")
        except QueryError:
            raise
        except Exception as e:  # a parse error of the document itself
            raise QueryError("query", None, f"cannot parse the {fmt} document: {e}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_toml(cls, text: str) -> "Query":
        return cls.from_text(text, "toml")

    @classmethod
    def load(cls, path) -> "Query":
        """Read a query file; the format follows the extension (.toml, .yaml/.yml, .json)."""
        from pathlib import Path
        p = Path(path)
        fmt = p.suffix.lstrip(".").lower()
        return cls.from_text(p.read_text(), fmt)

    def describe(self, indent: str = "") -> str:
        """The query as one line per step (sub-queries indented)."""
        lines = []
        for i, s in enumerate(self.steps, 1):
            lines.append(f"{indent}{i}. {s.describe()}")
            for j, q in enumerate(s.args.get("queries") or []):
                lines.append(f"{indent}   queries[{j}]:")
                lines.append(q.describe(indent + "     "))
        return "\n".join(lines)


Query.user = Query.for_user  # type: ignore[assignment]  # Query.user(uid) reads like IGQL's `user`


def make_step(op: str, args: dict, where: str) -> Step:
    """Validate one step's arguments (unknown names, types, ranges) and fill in defaults."""
    if op not in FUNNEL_OPS:
        raise QueryError(where, "op", f"unknown operation {op!r}; choose from {sorted(FUNNEL_OPS)}")
    operation = FUNNEL_OPS.get(op)
    spec = operation.args
    unknown = sorted(set(args) - set(spec))
    if unknown:
        raise QueryError(where, unknown[0], f"unknown argument; {op} takes {sorted(spec)}")
    out = {}
    for name, (check, default) in spec.items():
        value = args.get(name, default)
        if check is not None:
            try:
                value = check(value)
            except ValueError as e:
                raise QueryError(where, name, str(e)) from None
        out[name] = value
    if operation.finish is not None:
        operation.finish(out, where)
    return Step(op, out)


def finish_rank(args: dict, where: str) -> None:
    """``rank``: default stages for the number of sizes in ``keep``, and one size per stage."""
    stages = args["stages"] or DEFAULT_STAGES[len(args["keep"])]
    if len(stages) != len(args["keep"]):
        raise QueryError(where, "keep", f"needs one size per stage {stages}, got {args['keep']}")
    args["stages"] = stages


def finish_union(args: dict, where: str) -> None:
    """``union``: sub-queries present; weights and quotas default to one per candidate list."""
    n = len(args["queries"] or [])
    if n == 0:
        raise QueryError(where, "queries", "needs at least one sub-query")
    for q in args["queries"]:
        if not isinstance(q, Query) or not q.steps:
            raise QueryError(where, "queries", "each sub-query must be a non-empty Query")
    if args["weights"] is None:
        args["weights"] = [1.0] * (n + 1)
    if args["quotas"] is None:
        args["quotas"] = [MAX_K] * (n + 1)
    args["quotas"] = [MAX_K if x is None else x for x in args["quotas"]]
    for name in ("weights", "quotas"):
        if len(args[name]) != n + 1:
            raise QueryError(where, name, f"needs {n + 1} entries (the current candidates first, then each of the "
                                          f"{n} sub-queries), got {len(args[name])}")


def _sub_queries(raw, where: str, depth: int) -> list[Query]:
    if depth + 1 >= MAX_DEPTH:
        raise QueryError(where, "queries", f"sub-queries nest at most {MAX_DEPTH} levels deep")
    if not isinstance(raw, list) or not raw:
        raise QueryError(where, "queries", "must be a non-empty list of sub-queries (each with 'steps')")
    return [Query.from_dict(q, f"{where} > queries[{j}]", depth + 1) for j, q in enumerate(raw)]


def _check_position(previous: Sequence[Step], step: Step, index: int, prefix: str = "") -> None:
    where = f"{prefix}step {index} ({step.op})"
    source = FUNNEL_OPS.get(step.op).source
    if not previous and not source:
        sources = [name for name, op in FUNNEL_OPS.items() if op.source]
        raise QueryError(where, None, f"a query must start with a source {sources}")
    if previous and source:
        raise QueryError(where, None, "a source can only start a query; add more sources with union(...)")


def _step_dict(s: Step) -> dict:
    out: dict = {"op": s.op}
    for k, v in s.args.items():
        if v is None:
            continue
        out[k] = [q.to_dict() for q in v] if k == "queries" else v
    return out
