"""The funnel's two-hop source (consumer -> creators -> their media through 'authored'), against a naive loop."""
import numpy as np
import pytest

from mixrec.config import Config
from mixrec.data.explore import ExploreSpec, write_explore
from mixrec.data.schema import ingest_graph
from mixrec.funnel import Funnel, Query
from mixrec.funnel.query import QueryError
from mixrec.funnel.sources import SOURCE_CODE
from mixrec.retrieve import Retriever
from mixrec.train import train

TRAIN = {"dim": 8, "epochs": 2, "batch_size": 256, "negatives.batch": 32, "negatives.uniform": 32,
         "components.consumer": 2, "components.creator": 1, "components.media": 1, "early_stopping.patience": 0}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    ds = ingest_graph(write_explore(ExploreSpec(n_accounts=120, n_creators=24, seed=1), root / "raw"), root / "data",
                      progress=False)
    return train(ds, Config().with_overrides(TRAIN), root / "model", progress=False)


def naive_two_hop(model, user, k_via, per_via, k):
    """Per retrieved creator (best first), its latest distinct authored media; score s_v / (j + 1); best kept."""
    creators = Retriever(model, source_type="consumer", target_type="creator").recommend(
        [user], k=k_via, exclude_seen=False)
    e, code = model.train_edges, model.relation_code("authored")
    authored = [(int(s), int(d)) for s, d, r in zip(e["src"], e["dst"], e["rel"]) if r == code]
    best = {}  # item -> (score, seed, component)
    for c, s, comp in zip(creators.items[0], creators.scores[0], creators.components[0]):
        if c < 0:
            continue
        latest = []
        for src, dst in reversed(authored):  # latest first, each medium once
            if src == c and dst not in latest:
                latest.append(dst)
        for j, m in enumerate(latest[:per_via]):
            score = float(s) / (j + 1)
            if m not in best or score > best[m][0]:
                best[m] = (score, int(c), int(comp))
    rows = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:k]
    return [m for m, _ in rows], [v for _, v in rows]


@pytest.mark.parametrize("k_via,per_via,k", [(20, 5, 100), (6, 2, 7), (24, 1, 100)])
def test_two_hop_matches_a_naive_loop_and_every_item_was_authored_by_its_seed(model, k_via, per_via, k):
    f = Funnel(model, target_type="media")
    q = Query.source().two_hop(via="creator", relation="authored", k_via=k_via, per_via=per_via, k=k)
    e, code = model.train_edges, model.relation_code("authored")
    authored = {(int(s), int(d)) for s, d, r in zip(e["src"], e["dst"], e["rel"]) if r == code}
    checked = 0
    for user in range(0, model.num("consumer"), 7):
        c = f.run(q, user).candidates
        items, rows = naive_two_hop(model, user, k_via, per_via, k)
        assert c.items.tolist() == items
        np.testing.assert_allclose(c.scores, [r[0] for r in rows], rtol=1e-12)
        assert c.seed.tolist() == [r[1] for r in rows]
        assert c.component.tolist() == [r[2] for r in rows]
        assert all((int(s), int(m)) in authored for s, m in zip(c.seed, c.items))
        assert (c.via == 1 << SOURCE_CODE["two_hop"]).all() and c.sources_of(0) == ["two_hop"]
        checked += len(c)
    assert checked > 0


def test_two_hop_errors_name_what_is_wrong(model):
    def run(f, **kw):
        f.run(Query.source().two_hop(**{"via": "creator", "relation": "authored", **kw}), 0)

    media = Funnel(model, target_type="media")
    with pytest.raises(QueryError, match="items are 'creator'.*target_type='media'"):
        run(Funnel(model))  # the default funnel retrieves creators, not media
    with pytest.raises(QueryError, match="unknown entity type 'artist'"):
        run(media, via="artist")
    with pytest.raises(QueryError, match="unknown relation 'wrote'"):
        run(media, relation="wrote")
    with pytest.raises(QueryError, match="'like' goes consumer -> media, not from via='creator'"):
        run(media, relation="like")
    with pytest.raises(QueryError, match="argument 'per_via'"):
        run(media, per_via=0)
