"""Running queries end to end on the planted data: sources, filters, ranking stages, traces, validation, CLI."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from mixrec.cli import main
from mixrec.funnel import Funnel, Query, QueryError
from mixrec.funnel.fit import candidate_lists, fit_ranker, holdout_split
from mixrec.retrieve import Retriever
from mixrec.train import train
from tests.conftest import small_config


@pytest.fixture(scope="module")
def setup(planted, tmp_path_factory):
    ds, _ = planted
    model = train(ds, small_config(2), tmp_path_factory.mktemp("funnel") / "m", progress=False)
    tr = ds.split("train")
    hold = holdout_split(tr.src, tr.dst, tr.rel, 0.2, seed=0)
    fit = Funnel(model, history=(tr.src[~hold], tr.dst[~hold], tr.rel[~hold]))
    cq = Query.source().mixture(k=40).union(Query.source().history(n=10).similar(k=5),
                                            Query.source().popular(k=10))
    lists = candidate_lists(fit, cq, np.arange(120), (tr.src[hold], tr.dst[hold], tr.rel[hold]))
    ranker = fit_ranker(fit, lists, {"click": 0.3, "like": 1.0}, epochs=2, distill_epochs=3)
    return ds, model, Funnel(model, rankers={"default": ranker}), cq, lists


def test_holdout_split_takes_a_share_of_each_group():
    src = np.repeat(np.arange(4), [1, 2, 10, 30])
    rel = np.zeros(len(src), np.int64)
    m = holdout_split(src, np.arange(len(src)), rel, 0.1, seed=1)
    assert [int(m[src == u].sum()) for u in range(4)] == [0, 1, 1, 3]


def test_candidate_lists_label_held_out_edges(setup):
    ds, model, funnel, cq, lists = setup
    assert lists.labels.shape == (len(lists.items), 2) and lists.labels.sum() > 0
    assert np.all(np.diff(lists.offsets) > 0)


def test_mixture_step_equals_the_retriever(setup):
    ds, model, funnel, _, _ = setup
    res = funnel.run(Query.source().mixture(k=15), 4)
    want = Retriever(model).recommend([4], 15)
    assert res.candidates.items.tolist() == want.items[0].tolist()
    assert res.candidates.component.tolist() == want.components[0].tolist()
    assert all(res.candidates.sources_of(i) == ["mixture"] for i in range(15))


def test_full_query_trace_filters_and_stages(setup):
    ds, model, funnel, cq, _ = setup
    q = cq.filter(exclude_seen=True).rank(keep=[30, 12]).diversify(by="origin", method="penalty", penalty=0.05) \
        .take(8)
    res = funnel.run(q, 7)
    c = res.candidates
    assert len(c) == 8 and len(set(c.items.tolist())) == 8
    seen = model.train_edges["dst"][model.train_edges["src"] == 7]
    assert not np.isin(c.items, seen).any()
    steps = [t.step.split("(")[0] for t in res.trace]
    assert steps == ["mixture", "union", "history", "similar", "popular", "filter", "rank", "diversify", "take"]
    top = [t for t in res.trace if t.depth == 0]
    for a, b in zip(top, top[1:]):
        assert b.n_in == a.n_out
    rank = top[3]
    assert rank.n_out == 12 and len(rank.dropped) == rank.n_in - 12
    assert len(top[1].dropped) == 0  # a union only adds
    text = res.explain(model.ids["item"])
    assert "funnel for user 7" in text and "rank(ranker='default'" in text and "via " in text


def test_rank_stages_order_by_the_value_model(setup):
    _, _, funnel, cq, _ = setup
    res = funnel.run(cq.rank(keep=[20], stages=["final"]), 3)
    ranker = funnel.rankers["default"]
    users = np.full(len(res.candidates), 3)
    np.testing.assert_allclose(res.candidates.scores, ranker.values(funnel.features.full(users, res.candidates.items)))
    assert np.all(np.diff(res.candidates.scores) <= 0)


def test_filter_exclude_items_and_min_score(setup):
    _, model, funnel, _, _ = setup
    base = funnel.run(Query.source().popular(k=10), 0).candidates
    raw = model.ids["item"][base.items[:3]].tolist()
    out = funnel.run(Query.source().popular(k=10).filter(exclude_items=raw + ["no-such-item"]), 0).candidates
    assert out.items.tolist() == base.items[3:].tolist()
    cut = funnel.run(Query.source().popular(k=10).filter(min_score=0.5), 0).candidates
    assert np.all(cut.scores >= 0.5) and len(cut) == int((base.scores >= 0.5).sum())


def test_walk_and_round_robin_by_component(setup):
    _, _, funnel, _, _ = setup
    res = funnel.run(Query.source().history(n=5).walk(k=20, walkers=300, max_steps=5), 2).candidates
    assert 0 < len(res) <= 20 and all(res.sources_of(i) == ["walk"] for i in range(len(res)))
    rr = funnel.run(Query.source().mixture(k=30).diversify(by="component", method="round_robin"), 2).candidates
    comps = rr.component[:3]
    assert len(set(comps.tolist())) == min(3, len(set(rr.component.tolist())))


@pytest.mark.parametrize("query, where, arg", [
    (Query.source().mixture(weights="nope"), "step 1 (mixture)", "weights"),
    (Query.source().history(relation="colour"), "step 1 (history)", "relation"),
    (Query.source().mixture().rank(ranker="other"), "step 2 (rank)", "ranker"),
    (Query.source().mixture().diversify(by="label"), "step 2 (diversify)", "by"),
    (Query.source().mixture().union(Query.source().popular(relation=["x"])),
     "step 2 (union) > queries[0] > step 1 (popular)", "relation"),
])
def test_validation_against_the_funnel(setup, query, where, arg):
    _, _, funnel, _, _ = setup
    with pytest.raises(QueryError) as e:
        funnel.run(query, 0)
    assert e.value.where == where and e.value.arg == arg
    with pytest.raises(QueryError, match="outside"):
        funnel.run(Query.source().mixture(), 10**6)
    with pytest.raises(QueryError, match="no user"):
        funnel.run(Query.source().mixture())
    with pytest.raises(QueryError, match="unknown user id"):
        funnel.run(Query.user("no-such-user").mixture())


def test_run_resolves_the_query_user(setup):
    _, model, funnel, _, _ = setup
    raw = model.ids["user"][6]
    a = funnel.run(Query.user(raw).mixture(k=5))
    b = funnel.run(Query.source().mixture(k=5), 6)
    assert a.user == 6 and a.candidates.items.tolist() == b.candidates.items.tolist()


def test_cli_funnel_runs_a_query_file(setup, tmp_path, capsys):
    ds, model, funnel, cq, _ = setup
    (tmp_path / "q.toml").write_text(cq.take(5).to_toml())
    user = str(model.ids["user"][3])
    rc = main(["funnel", str(model.path), "--query", str(tmp_path / "q.toml"), "--user", user, "--explain",
               "--out", str(tmp_path / "out.parquet")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "funnel for user 3" in out
    t = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(t) == 5 and t[0]["rank"] == 1 and t[0]["user"] == user and "via" in t[0]
    funnel.rankers["default"].save(tmp_path / "ranker")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cq.rank(keep=[20, 6]).to_dict()))
    assert main(["funnel", str(model.path), "--query", str(tmp_path / "r.yaml"), "--user", user,
                 "--ranker", f"default={tmp_path / 'ranker'}", "--out", str(tmp_path / "r.parquet")]) == 0
    ranked = pq.read_table(tmp_path / "r.parquet").column("item").to_pylist()
    want = funnel.run(cq.rank(keep=[20, 6]), 3).candidates.items
    assert ranked == [str(x) for x in model.ids["item"][want]]
    (tmp_path / "bad.toml").write_text('[[steps]]\nop = "mixture"\nk = 0\n')
    assert main(["funnel", str(model.path), "--query", str(tmp_path / "bad.toml"), "--user", user]) == 2
    assert "step 1 (mixture): argument 'k'" in capsys.readouterr().err


def test_three_stage_rank_cuts_in_order_and_ends_on_the_value_model(setup):
    """keep=[150, 50, 25]-style: first pass (cheap features) -> second pass (full features) -> final ranker."""
    _, _, funnel, cq, _ = setup
    q = cq.rank(keep=[30, 15, 6])
    assert q.steps[-1].args["stages"] == ["first_pass", "second_pass", "final"]
    res = funnel.run(q, 3)
    ranker = funnel.rankers["default"]
    assert ranker.second_pass is not None and len(res.candidates) == 6
    users = np.full(6, 3)
    np.testing.assert_allclose(res.candidates.scores, ranker.values(funnel.features.full(users, res.candidates.items)),
                               rtol=1e-5)
    before = funnel.run(cq, 3).candidates  # the union the ranker starts from
    full = funnel.features.full(np.full(len(before), 3), before.items)
    light = funnel.features.light(np.full(len(before), 3), before.items)
    first = before.items[np.argsort(-ranker.first_pass.score(light), kind="stable")[:30]]
    second_scores = ranker.second_pass.score(funnel.features.full(np.full(30, 3), first))
    second = first[np.argsort(-second_scores, kind="stable")[:15]]
    assert set(res.candidates.items.tolist()) <= set(second.tolist())
    teacher = ranker.values(full)
    rho = np.corrcoef(np.argsort(np.argsort(ranker.second_pass.score(full))), np.argsort(np.argsort(teacher)))[0, 1]
    assert rho > 0.5  # the distilled second pass orders like the final ranker


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    pos, neg = score[label > 0], score[label == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_source_features_let_the_ranker_learn_a_sources_order(setup, tmp_path):
    """Labels planted on the `similar` source's own order (its top 3): only a ranker that reads each
    candidate's per-source rank can find them; it saves, loads and ranks with those features."""
    from mixrec.funnel.fit import CandidateLists
    from mixrec.funnel.rank import FunnelRanker
    from mixrec.funnel.sources import SOURCE_CODE, SOURCES
    ds, model, funnel, cq, lists = setup
    sim = lists.rank_in[:, SOURCE_CODE["similar"]]
    planted = np.repeat((sim >= 1 / 3).astype(np.float32)[:, None], 2, 1)
    assert 0 < planted[:, 0].sum() < len(planted)
    lab = CandidateLists(lists.users, lists.offsets, lists.items, planted, lists.rank_in)
    plain = fit_ranker(funnel, lab, {"like": 1.0}, epochs=8, distill=False)
    aware = fit_ranker(funnel, lab, {"like": 1.0}, epochs=8, distill=False, source_features=True)
    x = funnel.features.full(lab.row_users(), lab.items)
    assert aware.final.n_in == x.shape[1] + len(SOURCES) and plain.final.n_in == x.shape[1]
    auc_plain = _auc(plain.values(x), planted[:, 0])
    auc_aware = _auc(aware.values(np.concatenate([x, lab.rank_in.astype(np.float32)], 1)), planted[:, 0])
    assert auc_aware > 0.95 and auc_aware > auc_plain + 0.1, (auc_aware, auc_plain)
    loaded = FunnelRanker.load(aware.save(tmp_path / "r"))
    assert loaded.source_features
    f = Funnel(model, rankers={"aware": loaded})
    res = f.run(cq.rank(ranker="aware", keep=[20]), 5)
    c = res.candidates
    want = loaded.values(np.concatenate([f.features.full(np.full(len(c), 5), c.items), c.rank_in], 1))
    np.testing.assert_allclose(c.scores, want, rtol=1e-6)
    wide = fit_ranker(funnel, lab, {"like": 1.0}, epochs=8, distill=False, source_features=True, wide=True)
    assert wide.final.wide_n == len(SOURCES)
    assert _auc(wide.values(np.concatenate([x, lab.rank_in.astype(np.float32)], 1)), planted[:, 0]) > 0.95
    with pytest.raises(ValueError, match="source_features"):
        fit_ranker(funnel, lab, {"like": 1.0}, wide=True)
    with pytest.raises(ValueError, match="rank_in"):
        fit_ranker(funnel, CandidateLists(lists.users, lists.offsets, lists.items, planted), {"like": 1.0},
                   source_features=True)


def test_scalar_feature_set_is_the_full_set_without_embeddings_and_ranks_with_it(setup, tmp_path):
    from mixrec.funnel.rank import FunnelRanker
    ds, model, funnel, cq, lists = setup
    users, items = lists.row_users(), lists.items
    full, scalar = funnel.features.full(users, items), funnel.features.scalar(users, items)
    d = funnel.features.user_comp.shape[-1]
    np.testing.assert_array_equal(scalar, full[:, 3 * d:])
    assert scalar.shape[1] == 2 + 3 * len(funnel.relations)
    r = fit_ranker(funnel, lists, {"like": 1.0}, epochs=1, distill_epochs=2, feature_set="scalar",
                   source_features=True)
    r = FunnelRanker.load(r.save(tmp_path / "r"))
    assert r.feature_set == "scalar" and r.final.n_in == scalar.shape[1] + lists.rank_in.shape[1]
    f = Funnel(model, rankers={"s": r})
    c = f.run(cq.rank(ranker="s", keep=[40, 12, 6], stages=["first_pass", "second_pass", "final"]), 9).candidates
    x = np.concatenate([f.features.scalar(np.full(len(c), 9), c.items), c.rank_in], 1)
    np.testing.assert_allclose(c.scores, r.values(x), rtol=1e-6)
    with pytest.raises(ValueError, match="feature_set"):
        fit_ranker(funnel, lists, {"like": 1.0}, feature_set="embeddings")
