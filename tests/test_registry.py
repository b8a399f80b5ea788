"""Registries: a loss, a pooling and an index backend registered here (one place) work through config
validation, training, tuning, the CLI and search."""
import faiss
import numpy as np
import pytest
import torch

from mixrec.cli import build_parser
from mixrec.config import Config, ConfigError, IndexConfig
from mixrec.funnel import Funnel, Query, QueryError
from mixrec.funnel.ops import Operation
from mixrec.funnel.query import _int
from mixrec.funnel.service import check_limits
from mixrec.index import IndexBackend
from mixrec.model.functional import LossSpec, PoolingSpec, pool, product
from mixrec.registry import FUNNEL_OPS, INDEX_BACKENDS, LOSSES, POOLINGS, Registry
from mixrec.retrieve import Retriever
from mixrec.serve.settings import ServeSettings
from mixrec.train import train
from mixrec.train.step import Batch, batch_grads, batch_loss, train_step
from mixrec.tune import default_space

FAST = {"dim": 8, "epochs": 2, "batch_size": 256, "negatives.batch": 32, "negatives.uniform": 32, "lr": 0.5}


def squared_hinge(pos, neg, margin, weight=None, mask=None, pos_logq=None, neg_logq=None):
    viol = torch.relu(neg + margin - pos.unsqueeze(-1)).square()
    if mask is not None:
        viol = viol * mask
    per_pos = viol.sum(-1)
    return (per_pos if weight is None else per_pos * weight).sum()


TOY_LOSS = LossSpec(squared_hinge, None, "margin", space={"margin": ("float", 0.05, 0.5)})
TOY_POOLING = PoolingSpec(lambda m, dims=(-2, -1), **_: m.amin(dim=dims))
TOY_INDEX = IndexBackend(lambda flat, config: faiss.index_factory(flat.shape[1], "Flat", faiss.METRIC_INNER_PRODUCT),
                         exact=True)


def test_registry_names_lookups_and_errors():
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)
    reg.register_as("b")(2)
    assert reg.names() == ["a", "b"] and reg.get("b") == 2 and "a" in reg
    with pytest.raises(KeyError, match="unknown widget 'c'; choose one of a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 3)
    with reg.temporarily("a", 9):
        assert reg.get("a") == 9
    with reg.temporarily("z", 5):
        assert reg.names() == ["a", "b", "z"]
    assert reg.get("a") == 1 and reg.names() == ["a", "b"]


def test_config_rejects_unregistered_names_and_lists_the_valid_ones():
    for key, value in (("loss", "hinge"), ("pooling", "median"), ("score_pooling", "median"),
                       ("index.kind", "annoy")):
        with pytest.raises(ConfigError, match=f"{key.split('.')[-1]}: .*{value!r}; choose one of .*"):
            Config().with_overrides({key: value})
    with pytest.raises(ValueError, match="choose one of flat, hnsw, ivf"):
        ServeSettings(model_dir="m", index_kind="annoy")


def test_toy_loss_and_pooling_train_through_autograd(planted):
    with LOSSES.temporarily("toy_sq", TOY_LOSS), POOLINGS.temporarily("toy_min", TOY_POOLING):
        cfg = Config().with_overrides({"loss": "toy_sq", "pooling": "toy_min", "negative_pooling": "toy_min",
                                       "margin": 0.3, "components.user": 2, "negatives.batch": 2,
                                       "negatives.uniform": 2})
        assert not cfg.applies_log_q and default_space(cfg)["margin"] == ("float", 0.05, 0.5)
        g = torch.Generator().manual_seed(0)
        tables = {"user": torch.randn(5, 2, 4, generator=g, dtype=torch.float64),
                  "item": torch.randn(6, 1, 4, generator=g, dtype=torch.float64)}
        b = Batch("user", "item", np.array([0, 1, 4]), np.array([2, 3, 4]), np.array([1.0, 2.0, 0.5]), np.array([2, 5]))
        want = 0.0  # naive loop: min over component pairs, squared hinge, own item skipped
        for i in range(3):
            pos = product(tables["user"][b.src[i]], tables["item"][b.dst[i]]).min()
            for d in [2, 3, 2, 5]:
                if d != b.dst[i]:
                    neg = product(tables["user"][b.src[i]], tables["item"][d]).min()
                    want += b.weight[i] * max(neg.item() + 0.3 - pos.item(), 0.0) ** 2
        assert batch_loss(b, tables, cfg)[0].item() == pytest.approx(want)
        assert batch_grads(b, tables, cfg) is None  # no closed form declared: autograd
        states = {k: torch.zeros(len(v), dtype=v.dtype) for k, v in tables.items()}
        assert train_step(b, tables, states, cfg) == pytest.approx(want)
        assert pool(torch.tensor([[[0.1, 0.7], [0.3, -0.2]]]), "toy_min").item() == pytest.approx(-0.2)

        ds, _ = planted
        model = train(ds, cfg.with_overrides({**FAST, "negatives.batch": 32, "negatives.uniform": 32}),
                      progress=False)
        losses = [h["loss"] for h in model.info["history"]]
        assert len(losses) == 2 and np.isfinite(losses).all() and losses[-1] < losses[0]


@pytest.fixture(scope="module")
def model(planted):
    return train(planted[0], Config().with_overrides({**FAST, "epochs": 1}), progress=False)


def test_toy_index_backend_serves_the_search_path(model):
    with INDEX_BACKENDS.temporarily("toy_flat", TOY_INDEX):
        config = IndexConfig(kind="toy_flat")
        assert Config().with_overrides({"index.kind": "toy_flat"}).index == config
        args = build_parser().parse_args(["retrieve", "model", "--out", "x.parquet", "--index", "toy_flat"])
        assert args.index == "toy_flat"
        assert ServeSettings(model_dir="m", index_kind="toy_flat").index_kind == "toy_flat"
        users = np.arange(50)
        got = Retriever(model, index_config=config).recommend(users, 20)
        want = Retriever(model, index_config=IndexConfig(kind="flat")).recommend(users, 20)
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_allclose(got.scores, want.scores)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["retrieve", "model", "--out", "x.parquet", "--index", "toy_flat"])


def _reverse_limits(a: dict, max_k: int, where: str) -> None:
    if a["n"] > max_k // 10:
        raise QueryError(where, "n", f"at most {max_k // 10} on this server")


TOY_OP = Operation({"n": (_int(1, 100), 5)}, lambda f, a, cs, user, sub: cs.take(np.arange(len(cs))[::-1][:a["n"]]),
                   limits=_reverse_limits)


def test_toy_funnel_operation_validates_runs_and_limits(model):
    with FUNNEL_OPS.temporarily("reverse", TOY_OP):
        q = Query.user(model.ids["user"][0]).mixture(k=20, exclude_seen=False).reverse(n=4)
        assert Query.from_dict(q.to_dict()) == q
        with pytest.raises(QueryError, match="argument 'n'"):
            q.reverse(n=0)
        with pytest.raises(QueryError, match="must start with a source"):
            Query.source().reverse()
        funnel = Funnel(model)
        top = funnel.run(Query.user(model.ids["user"][0]).mixture(k=20, exclude_seen=False)).candidates
        got = funnel.run(q).candidates
        np.testing.assert_array_equal(got.items, top.items[::-1][:4])
        check_limits(q, max_k=40)
        with pytest.raises(QueryError, match="at most 3 on this server"):
            check_limits(q, max_k=39)
    with pytest.raises(QueryError, match="unknown operation 'reverse'"):
        Query.from_dict(q.to_dict())
