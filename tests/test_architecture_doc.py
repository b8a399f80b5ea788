"""docs/architecture.md cannot rot: every name in it resolves, its layer rules hold on the import graph, every
module has a docstring, and its "to add ..." examples run against the registries."""
import ast
import importlib
import re

import pytest

from mixrec.registry import FUNNEL_OPS, INDEX_BACKENDS, LOSSES, POOLINGS
from tests.test_imports import ROOT, import_graph, modules

DOC = (ROOT.parent / "docs" / "architecture.md").read_text()


def section(title: str) -> str:
    """The text of the ``## title`` section."""
    start = DOC.index(f"\n## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:] if end < 0 else DOC[start:end]


def resolve(dotted: str):
    """The module or attribute a dotted name stands for (the longest importable prefix, then attributes)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_name_in_the_concept_table_resolves():
    names = re.findall(r"`(mixrec(?:\.\w+)*)`", section("Where each concept lives"))
    assert len(names) > 40
    missing = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"docs/architecture.md names what the code lacks: {missing}"


def layers() -> dict[str, int]:
    """module prefix -> row of the layer table (0 = lowest)."""
    rows = [line for line in section("What may import what").splitlines() if line.startswith("| ")][2:]
    return {name: i for i, row in enumerate(rows) for name in re.findall(r"`(mixrec[\w.]*)`", row)}


def layer_of(module: str, table: dict[str, int]) -> int:
    owners = [p for p in table if module == p or module.startswith(p + ".")]
    assert owners, f"{module} is in no layer of docs/architecture.md; add it to the table"
    return table[max(owners, key=len)]


def test_layer_of_uses_the_longest_prefix():
    table = {"mixrec": 3, "mixrec.serve": 2, "mixrec.serve.server": 4}
    assert layer_of("mixrec.serve.app", table) == 2 and layer_of("mixrec.serve.server", table) == 4
    assert layer_of("mixrec.cli", table) == 3


def test_imports_follow_the_layer_table():
    table = layers()
    allowed = set(re.findall(r"- `(mixrec[\w.]*)` -> `(mixrec[\w.]*)`", section("What may import what")))
    assert allowed == {("mixrec.train.trainer", "mixrec.evaluate.exact"),
                       ("mixrec.serve", "mixrec.serve.server")}
    upward = sorted(f"{m} -> {t}" for m, deps in import_graph().items() for t in deps
                    if layer_of(t, table) > layer_of(m, table) and (m, t) not in allowed)
    assert not upward, "imports against the layers of docs/architecture.md: " + ", ".join(upward)


def summary_problem(doc: str | None) -> str | None:
    """Why ``doc`` lacks a one-line summary (a first line ending in a full stop, then a blank line), or None."""
    lines = (doc or "").strip().splitlines()
    if not lines:
        return "no docstring"
    if not lines[0].rstrip().endswith(".") or (len(lines) > 1 and lines[1].strip()):
        return "the first line is not a one-line summary followed by a blank line"
    return None


def test_summary_problem_on_hand_made_docstrings():
    assert summary_problem("Owns X.") is None and summary_problem("Owns X.\n\nMore about X.") is None
    assert summary_problem(None) == "no docstring"
    assert summary_problem("Owns X and\nY.") and summary_problem("Owns X.\nmore") and summary_problem("Owns X")


def test_every_module_says_what_it_owns_in_one_line():
    bad = {name: why for name, path in modules().items()
           if (why := summary_problem(ast.get_docstring(ast.parse(path.read_text()))))}
    assert not bad, f"modules without a one-line summary docstring: {bad}"


EXAMPLES = re.findall(r"\n### (.+?)\n.*?```python\n(.*?)```", section(
    "To add a loss, a pooling, an index backend or a funnel step, touch this file"), re.S)


def test_there_is_one_example_per_registry():
    assert [title.split(":")[0] for title, _ in EXAMPLES] == ["A loss", "A pooling", "An index backend",
                                                              "A funnel step"]


@pytest.mark.parametrize("title,code", EXAMPLES, ids=[t.split(":")[0] for t, _ in EXAMPLES])
def test_adding_example_registers_one_entry_and_runs(title, code):
    registries = (LOSSES, POOLINGS, INDEX_BACKENDS, FUNNEL_OPS)
    before = [dict(r._load()) for r in registries]
    try:
        exec(compile(code, f"docs/architecture.md ({title})", "exec"), {"__name__": "architecture_doc"})
        added = [sorted(set(r.names()) - set(b)) for r, b in zip(registries, before)]
        assert sum(map(len, added)) == 1, added  # the example registers exactly one new name
    finally:
        for r, b in zip(registries, before):
            r._entries.clear()
            r._entries.update(b)
