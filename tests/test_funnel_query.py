"""The query language: fluent building, validation errors that name step and argument, document round-trips."""
import json

import pytest
import yaml

from mixrec.funnel.query import MAX_K, Query, QueryError


def example() -> Query:
    return (Query.user(42).history(relation="buy", n=30).similar(k=20)
            .union(Query.source().mixture(k=300), Query.source().history(n=5).walk(k=50, restart=0.3, n_p=20),
                   weights=[1.0, 2.0, 0.5], quotas=[None, 100, 40])
            .filter(exclude_seen=["buy"], exclude_items=[7, "x"]).rank(keep=[150, 25])
            .diversify(by="seed", method="penalty", penalty=0.2).take(10))


def test_toml_yaml_json_round_trip_to_the_same_query():
    q = example()
    assert Query.from_toml(q.to_toml()) == q
    assert Query.from_text(yaml.safe_dump(q.to_dict()), "yaml") == q
    assert Query.from_text(q.to_json(), "json") == q
    assert Query.from_dict(json.loads(q.to_json())).user == 42


def test_defaults_are_filled_and_documented_in_the_document():
    q = Query.source().mixture()
    assert q.steps[0].args == {"k": 100, "weights": "all", "exclude_seen": True}
    u = Query.source().mixture().union(Query.source().popular())
    assert u.steps[1].args["weights"] == [1.0, 1.0] and u.steps[1].args["quotas"] == [MAX_K, MAX_K]
    r = Query.source().mixture().rank(keep=[25])
    assert r.steps[1].args["stages"] == ["final"]


@pytest.mark.parametrize("build, where, arg", [
    (lambda: Query.source().mixture(k=0), "step 1 (mixture)", "k"),
    (lambda: Query.source().mixture(k=True), "step 1 (mixture)", "k"),
    (lambda: Query.source().history(n=5).similar(k=5000), "step 2 (similar)", "k"),
    (lambda: Query.source().history().walk(restart=1.5), "step 2 (walk)", "restart"),
    (lambda: Query.source().mixture().rank(keep=[25, 150]), "step 2 (rank)", "keep"),
    (lambda: Query.source().mixture().rank(keep=[150, 50, 25, 10]), "step 2 (rank)", "keep"),
    (lambda: Query.source().mixture().rank(keep=[50, 20], stages=["second_pass", "first_pass"]), "step 2 (rank)",
     "stages"),
    (lambda: Query.source().mixture().rank(keep=[50, 20], stages=["final", "final"]), "step 2 (rank)", "stages"),
    (lambda: Query.source().mixture().rank(keep=[50], stages=["first_pass", "final"]), "step 2 (rank)", "keep"),
    (lambda: Query.source().mixture().diversify(by="colour"), "step 2 (diversify)", "by"),
    (lambda: Query.source().mixture().diversify(method="mmr", beta=2), "step 2 (diversify)", "beta"),
    (lambda: Query.source().mixture().filter(exclude_seen=3), "step 2 (filter)", "exclude_seen"),
    (lambda: Query.source().mixture().union(Query.source().popular(), weights=[1.0]), "step 2 (union)", "weights"),
    (lambda: Query.source().mixture().union(Query.source().popular(), quotas=[1, 2, 3]), "step 2 (union)",
     "quotas"),
    (lambda: Query.source().mixture().union(), "step 2 (union)", "queries"),
    (lambda: Query.source().mixture().add("mixture", kk=3), "step 2 (mixture)", "kk"),
])
def test_fluent_errors_name_the_step_and_argument(build, where, arg):
    with pytest.raises(QueryError) as e:
        build()
    assert e.value.where == where and e.value.arg == arg
    assert str(e.value).startswith(f"{where}: argument {arg!r}")


def test_structure_errors():
    with pytest.raises(QueryError, match="must start with a source"):
        Query.source().similar()
    with pytest.raises(QueryError, match="only start a query"):
        Query.source().mixture().popular()


@pytest.mark.parametrize("doc, message", [
    ({"steps": []}, "'steps': must be a non-empty list"),
    ({"steps": [{"op": "mixture"}], "colour": 1}, "'colour': unknown key"),
    ({"steps": [{"k": 3}]}, "step 1: argument 'op'"),
    ({"steps": [{"op": "teleport"}]}, "step 1 (teleport): argument 'op': unknown operation"),
    ({"steps": [{"op": "mixture", "k": "ten"}]}, "step 1 (mixture): argument 'k': must be an integer"),
    ({"steps": [{"op": "mixture"}, {"op": "union", "queries": [{"steps": [{"op": "popular", "k": -1}]}]}]},
     "step 2 (union) > queries[0] > step 1 (popular): argument 'k'"),
    ({"steps": [{"op": "mixture"}, {"op": "union", "queries": "x"}]}, "step 2 (union): argument 'queries'"),
    ({"steps": [{"op": "mixture"}], "user": [1]}, "argument 'user'"),
])
def test_document_errors_name_the_step_and_argument(doc, message):
    with pytest.raises(QueryError) as e:
        Query.from_dict(doc)
    assert message in str(e.value)


def test_unparseable_document_and_nesting_limit():
    with pytest.raises(QueryError, match="cannot parse the toml document"):
        Query.from_toml("steps = [")
    doc = {"steps": [{"op": "mixture"}]}
    for _ in range(5):
        doc = {"steps": [{"op": "mixture"}, {"op": "union", "queries": [doc]}]}
    with pytest.raises(QueryError, match="nest at most"):
        Query.from_dict(doc)


def test_describe_lists_every_step_and_subquery():
    text = example().describe()
    assert text.splitlines()[0].startswith("1. history(")
    assert "queries[1]:" in text and "walk(k=50" in text and "take(n=10)" in text
