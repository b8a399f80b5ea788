"""Registries: a loss, a pooling and an index backend registered here (one place) work through config
validation, training, tuning, the CLI and search."""
import faiss
import numpy as np
import pytest
import torch

from mixrec.cli import build_parser
from mixrec.config import Config, ConfigError, IndexConfig
from mixrec.index import IndexBackend
from mixrec.model.functional import LossSpec, PoolingSpec, pool, product
from mixrec.registry import INDEX_BACKENDS, LOSSES, POOLINGS, Registry
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


def test_toy_index_backend_serves_the_search_path(planted):
    ds, _ = planted
    model = train(ds, Config().with_overrides({**FAST, "epochs": 1}), progress=False)
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
