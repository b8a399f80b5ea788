"""The closed-form training path against autograd, and the device setting."""
import numpy as np
import pytest
import torch

from mixrec.config import Config, ConfigError
from mixrec.data.dataset import Dataset, Edges, Relation
from mixrec.model import functional as F
from mixrec.train import train
from mixrec.train.device import on_device, resolve_device
from mixrec.train.step import Batch, batch_grads, batch_loss, train_step

POOLS = ("max", "mean", "smoothmax", "regsmoothmax")


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", POOLS)
@pytest.mark.parametrize("form", ["mean", "sum"])
@pytest.mark.parametrize("dims,shape", [(F.PAIR_DIMS, (6, 3, 2)), (F.ALL_DIMS, (4, 3, 2, 5)),
                                        (F.ALL_DIMS, (4, 1, 1, 5)), (F.ALL_DIMS, (3, 20, 1, 4))])
@pytest.mark.parametrize("inplace", [False, True])
def test_pool_with_grad_matches_autograd(name, form, dims, shape, inplace):
    m = _rand(*shape).requires_grad_(True)
    kw = dict(gamma=0.3, theta=0.2, theta_form=form, dims=dims)
    want = F.pool(m, name, **kw)
    up = _rand(*want.shape, seed=1)
    (g_want,) = torch.autograd.grad((want * up).sum(), m)
    got, local = F.pool_with_grad(m.detach().clone() if inplace else m.detach(), name, inplace=inplace, **kw)
    assert torch.allclose(got, want)
    drop = [d % m.dim() for d in dims]
    up_b = up.reshape([1 if i in drop else s for i, s in enumerate(m.shape)])
    g_got = up_b.expand_as(m) if local is None else local * up_b
    assert torch.allclose(g_got, g_want)


def test_pool_with_grad_max_splits_ties_like_autograd():
    m = torch.tensor([[0.5, 0.5], [0.1, -0.2]], dtype=torch.float64)
    _, local = F.pool_with_grad(m, "max")
    assert local.tolist() == [[0.5, 0.5], [0.0, 0.0]]


def test_pool_with_grad_declines_registered_poolings():
    F.register_pooling("min_fast_test", lambda m, dims=F.PAIR_DIMS, **_: m.amin(dim=dims))
    try:
        assert F.pool_with_grad(torch.zeros(2, 2, 2), "min_fast_test") is None
    finally:
        F.POOLINGS.unregister("min_fast_test")


def test_margin_loss_with_grad_matches_autograd_and_minus_inf_drops():
    pos, neg, w = _rand(5).requires_grad_(True), _rand(5, 7, seed=1).requires_grad_(True), _rand(5, seed=2).abs()
    mask = (_rand(5, 7, seed=3) > -0.5).double()
    want = F.margin_loss(pos, neg, 0.3, w, mask)
    gp, gn = torch.autograd.grad(want, (pos, neg))
    loss, dpos, dneg = F.margin_loss_with_grad(pos.detach(), neg.detach(), 0.3, w, mask)
    assert loss.item() == pytest.approx(want.item())
    assert torch.allclose(dpos, gp) and torch.allclose(dneg, gn)
    masked = neg.detach().masked_fill(mask == 0, float("-inf"))
    loss2, dpos2, dneg2 = F.margin_loss_with_grad(pos.detach(), masked, 0.3, w)
    assert loss2.item() == pytest.approx(want.item())
    assert torch.allclose(dpos2, gp) and torch.allclose(dneg2, gn)


def test_equal_pairs_matches_a_naive_double_loop():
    a = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    b = torch.tensor([1, 5, 1, 8, 9, 3, 3])
    i, j = F.equal_pairs(a, b)
    got = sorted(zip(i.tolist(), j.tolist()))
    want = sorted((x, y) for x in range(len(a)) for y in range(len(b)) if a[x] == b[y])
    assert got == want and len(want) == 8


def test_normalize_backward_matches_autograd():
    x = _rand(6, 2, 5).requires_grad_(True)
    g = _rand(6, 2, 5, seed=1)
    (want,) = torch.autograd.grad((F.normalize(x) * g).sum(), x)
    norm = x.detach().norm(dim=-1, keepdim=True)
    assert torch.allclose(F.normalize_backward(norm, x.detach() / norm, g), want)


CASES = [
    {},
    {"components.user": 1, "components.item": 1},
    {"pooling": "max"},
    {"pooling": "mean", "components.item": 2},
    {"theta_form": "sum", "components.item": 2},
    {"negatives.batch": 0},
    {"loss": "softmax", "temperature": 0.3},
    {"loss": "softmax", "logq": False, "pooling": "max"},
    {"loss": "softmax", "components.user": 1, "negatives.batch": 0},
    {"routing": "soft"},
    {"routing": "hard", "loss": "margin"},
    {"routing": "soft", "components.item": 2, "pooling": "smoothmax"},
    {"routing": "hard", "components.user": 1},
]


@pytest.mark.parametrize("over", CASES)
@pytest.mark.parametrize("same_type", [False, True])
def test_batch_grads_equal_autograd(over, same_type):
    cfg = Config().with_overrides({"margin": 0.4, "gamma": 0.3, "theta": 0.25, "negatives.batch": 3,
                                   "negatives.uniform": 4, "components.user": 3, **over})
    t_d = "user" if same_type else "item"
    tables = {"user": _rand(8, cfg.components_of("user"), 4), "item": _rand(9, cfg.components_of("item"), 4, seed=1)}
    b = Batch("user", t_d, np.array([0, 1, 1, 4, 6]), np.array([2, 3, 4, 3, 0]), np.array([1.0, 2.0, 0.5, 1.0, 3.0]),
              np.array([2, 5, 5, 7]), dst_prob=np.linspace(0.0, 0.2, 9 if t_d == "item" else 8).astype(np.float32))
    loss, leaves = batch_loss(b, tables, cfg)
    loss.backward()
    got_loss, got = batch_grads(b, tables, cfg)
    assert got_loss == pytest.approx(loss.item())
    assert [(t, r.tolist()) for t, r, _ in got] == [(t, r.tolist()) for t, r, _ in leaves]
    for (_, _, g), (_, _, leaf) in zip(got, leaves):
        assert torch.allclose(g, leaf.grad)


def test_train_step_falls_back_to_autograd_when_a_builtin_is_replaced():
    builtin = F.POOLINGS.get("smoothmax")
    F.register_pooling("smoothmax", lambda m, gamma=0.1, dims=F.PAIR_DIMS, **_: builtin.fn(m, gamma=2 * gamma, dims=dims))
    try:
        cfg = Config().with_overrides({"components.user": 3, "negatives.batch": 2, "negatives.uniform": 2})
        tables = {"user": _rand(5, 3, 4), "item": _rand(6, 1, 4, seed=1)}
        b = Batch("user", "item", np.array([0, 2, 3]), np.array([1, 3, 1]), np.ones(3), np.array([0, 5]))
        assert batch_grads(b, tables, cfg) is None
        want = batch_loss(b, tables, cfg)[0].item()
        states = {k: torch.zeros(len(v), dtype=v.dtype) for k, v in tables.items()}
        before = tables["user"].clone()
        assert train_step(b, tables, states, cfg) == pytest.approx(want)
        assert not torch.equal(before, tables["user"])
    finally:
        F.POOLINGS.register("smoothmax", builtin, replace=True)
    assert batch_grads(b, tables, cfg) is not None


# --------------------------------------------------------------------- device
def test_device_setting_is_validated():
    assert Config().device == "cpu"
    assert Config().with_overrides({"device": "cuda:1"}).device == "cuda:1"
    with pytest.raises(ConfigError, match="device"):
        Config().with_overrides({"device": "gpu"})


def test_resolve_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        resolve_device("cuda")
    ds = Dataset({"user": np.arange(4), "item": np.arange(3)}, [Relation("r")],
                 {"train": Edges(np.array([0, 1]), np.array([1, 2]), np.zeros(2, np.int64), np.ones(2, np.float32))})
    with pytest.raises(ValueError, match="device='cuda'"):
        train(ds, Config().with_overrides({"device": "cuda", "epochs": 1}), progress=False)


def test_on_device_cpu_yields_the_same_tensors():
    tab, st = {"a": torch.zeros(2)}, {"a": torch.ones(2)}
    with on_device(tab, st, torch.device("cpu")) as (t2, s2):
        assert t2["a"] is tab["a"] and s2["a"] is st["a"]


def test_auto_device_trains_like_cpu(planted):
    ds, _ = planted
    over = {"dim": 8, "epochs": 1, "batch_size": 256, "negatives.batch": 16, "negatives.uniform": 16}
    a = train(ds, Config().with_overrides({**over, "device": "cpu"}), progress=False)
    b = train(ds, Config().with_overrides({**over, "device": "auto"}), progress=False)
    if not torch.cuda.is_available():
        assert torch.equal(a.tables["user"], b.tables["user"])
    else:
        assert torch.allclose(a.tables["user"], b.tables["user"], atol=1e-4)


def _has_faiss_gpu() -> bool:
    from mixrec.index import gpu_resources
    return gpu_resources() is not None


def test_index_device_auto_searches_like_cpu_and_saves(tmp_path):
    from mixrec.config import IndexConfig
    from mixrec.index import ComponentIndex
    vecs = F.normalize(_rand(50, 2, 8).float()).numpy()
    q = vecs[:5, 0]
    for kind in ("flat", "ivf"):
        cpu = ComponentIndex.build(vecs, IndexConfig(kind=kind, nlist=4, nprobe=4))
        auto = ComponentIndex.build(vecs, IndexConfig(kind=kind, nlist=4, nprobe=4, device="auto"))
        assert (auto.gpu_resources is not None) == _has_faiss_gpu()
        np.testing.assert_array_equal(cpu.search(q, 7)[1], auto.search(q, 7)[1])
        auto.save(tmp_path / f"{kind}.faiss")
        back = ComponentIndex.load(tmp_path / f"{kind}.faiss")
        np.testing.assert_array_equal(back.search(q, 7)[1], cpu.search(q, 7)[1])


@pytest.mark.skipif(_has_faiss_gpu(), reason="FAISS sees a GPU")
def test_index_on_cuda_without_faiss_gpu_is_a_clear_error():
    from mixrec.config import IndexConfig
    from mixrec.index import ComponentIndex
    with pytest.raises(ValueError, match="index.device='cuda'"):
        ComponentIndex.build(F.normalize(_rand(10, 1, 4).float()).numpy(), IndexConfig(device="cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cli_train_device_cuda_without_a_gpu_fails_cleanly(planted, tmp_path, capsys):
    from mixrec.cli import main
    ds, _ = planted
    ds.save(tmp_path / "data")
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "m"), "--device", "cuda", "--quiet",
                 "--set", "epochs=1"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err
    assert not (tmp_path / "m" / "model.json").exists()


# --------------------------------------------------------------------- torch.compile of the fused step
def _compile_case():
    cfg = Config().with_overrides({"margin": 0.4, "gamma": 0.3, "theta": 0.25, "negatives.batch": 3,
                                   "negatives.uniform": 4, "components.user": 3})
    tables = {"user": _rand(8, 3, 4), "item": _rand(9, 1, 4, seed=1)}
    b = Batch("user", "item", np.array([0, 1, 1, 4, 6]), np.array([2, 3, 4, 3, 0]),
              np.array([1.0, 2.0, 0.5, 1.0, 3.0]), np.array([2, 5, 5, 7]))
    return cfg, tables, b


def test_compiled_step_equals_the_eager_step(monkeypatch):
    from mixrec.train import fused
    monkeypatch.setattr(fused, "_compiled", {})
    cfg, tables, b = _compile_case()
    want_loss, want = batch_grads(b, tables, cfg)
    got_loss, got = batch_grads(b, tables, cfg.with_overrides({"compile": True}))
    assert "fn" in fused._compiled and not fused._compiled.get("failed")
    assert got_loss == pytest.approx(want_loss)
    for (t, rows, g), (t2, rows2, g2) in zip(got, want):
        assert t == t2 and torch.equal(rows, rows2) and torch.allclose(g, g2)


def test_failed_compilation_warns_and_trains_eagerly(monkeypatch, caplog):
    from mixrec.train import fused

    def broken(fn, **_):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler found")
        return call

    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken)
    cfg, tables, b = _compile_case()
    want_loss, _ = batch_grads(b, tables, cfg)
    with caplog.at_level("WARNING", logger="mixrec.train.fused"):
        got_loss, _ = batch_grads(b, tables, cfg.with_overrides({"compile": True}))
    assert got_loss == pytest.approx(want_loss)
    assert fused._compiled.get("failed") and "no C++ compiler found" in caplog.text
    assert fused.fused_fn(True) is fused.fused_grads  # not tried again
