"""The paper's math against naive reference loops and hand-computed values, including gradients."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixrec.model import functional as F



@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def naive_cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b))


def naive_smoothmax(m, gamma):
    flat = [v for row in m for v in row]
    z = sum(math.exp(v / gamma) for v in flat)
    return sum(v * math.exp(v / gamma) for v in flat) / z


def naive_regsmoothmax(m, theta, gamma, form):
    flat = [v for row in m for v in row]
    z = sum(math.exp(v / gamma) for v in flat)
    if form == "sum":  # eq. 2 exactly as printed
        return sum(v * (theta + (1 - theta) * math.exp(v / gamma) / z) for v in flat)
    return theta * sum(flat) / len(flat) + (1 - theta) * naive_smoothmax(m, gamma)


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 3, 4, generator=g), torch.randn(5, 2, 4, generator=g)


def test_product_matches_naive_cosine(pair):
    us, ud = pair
    m = F.product(us, ud)
    assert m.shape == (5, 3, 2)
    for b in range(5):
        for c in range(3):
            for lc in range(2):
                assert m[b, c, lc].item() == pytest.approx(naive_cos(us[b, c].tolist(), ud[b, lc].tolist()))


def test_product_all_is_every_pair(pair):
    us, ud = pair
    m = F.product_all(us, ud)  # (B, C_s, C_d, N)
    assert m.shape == (5, 3, 2, 5)
    for b in range(5):
        for j in range(5):
            assert torch.allclose(m[b, :, :, j], F.product(us[b], ud[j]))


def test_hand_computed_poolings():
    m = torch.tensor([[0.5, -0.5], [1.0, 0.0]])
    gamma = 0.5
    e = [math.exp(v / gamma) for v in (0.5, -0.5, 1.0, 0.0)]
    sm = (0.5 * e[0] - 0.5 * e[1] + 1.0 * e[2]) / sum(e)
    assert F.pool(m, "max").item() == pytest.approx(1.0)
    assert F.pool(m, "mean").item() == pytest.approx(0.25)
    assert F.pool(m, "smoothmax", gamma=gamma).item() == pytest.approx(sm)
    assert F.pool(m, "regsmoothmax", gamma=gamma, theta=0.2).item() == pytest.approx(0.2 * 0.25 + 0.8 * sm)
    assert F.pool(m, "regsmoothmax", gamma=gamma, theta=0.2, theta_form="sum").item() == \
        pytest.approx(0.2 * 1.0 + 0.8 * sm)


@pytest.mark.parametrize("form", ["mean", "sum"])
def test_poolings_match_naive_on_random(form):
    g = torch.Generator().manual_seed(1)
    m = torch.rand(7, 3, 4, generator=g) * 2 - 1
    for b in range(7):
        rows = m[b].tolist()
        assert F.smoothmax(m, gamma=0.3)[b].item() == pytest.approx(naive_smoothmax(rows, 0.3))
        assert F.regsmoothmax(m, gamma=0.3, theta=0.4, theta_form=form)[b].item() == \
            pytest.approx(naive_regsmoothmax(rows, 0.4, 0.3, form))


def test_printed_eq2_can_exceed_one_but_mean_form_cannot():
    m = torch.full((4, 1), 0.9)
    assert F.regsmoothmax(m, theta=0.5, theta_form="sum").item() > 1.0
    assert F.regsmoothmax(m, theta=0.5, theta_form="mean").item() == pytest.approx(0.9)


def test_all_dims_pooling_equals_pairwise(pair):
    us, ud = pair
    m = F.product_all(us, ud)
    for name in ("max", "mean", "smoothmax", "regsmoothmax"):
        got = F.pool(m, name, gamma=0.2, theta=0.3, dims=F.ALL_DIMS)
        for b in range(5):
            for j in range(5):
                want = F.pool(F.product(us[b], ud[j]), name, gamma=0.2, theta=0.3)
                assert got[b, j].item() == pytest.approx(want.item())


def test_single_pair_pooling_is_identity():
    m = torch.randn(6, 1, 1)
    for name in ("max", "mean", "smoothmax", "regsmoothmax"):
        assert torch.allclose(F.pool(m, name), m[:, 0, 0])


def test_fused_smoothmax_gradient_matches_autograd_reference():
    g = torch.Generator().manual_seed(2)
    m = (torch.rand(3, 4, 2, 5, generator=g) * 2 - 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: F.smoothmax(x, gamma=0.3, dims=F.ALL_DIMS), (m,))

    def reference(x):
        f = x.permute(0, 3, 1, 2).flatten(-2)
        return (f * torch.softmax(f / 0.3, -1)).sum(-1)

    out = F.smoothmax(m, gamma=0.3, dims=F.ALL_DIMS)
    assert torch.allclose(out, reference(m))
    w = torch.randn(out.shape, generator=g)
    (ga,) = torch.autograd.grad((out * w).sum(), m)
    (gb,) = torch.autograd.grad((reference(m) * w).sum(), m)
    assert torch.allclose(ga, gb)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=2, max_size=12))
def test_smoothmax_tends_to_max_as_gamma_goes_to_zero(values):
    m = torch.tensor(values).view(1, -1, 1)
    assert F.smoothmax(m, gamma=1e-4).item() == pytest.approx(max(values), abs=1e-3)
    assert F.smoothmax(m, gamma=1e4).item() == pytest.approx(sum(values) / len(values), abs=1e-3)
    assert min(values) - 1e-9 <= F.smoothmax(m, gamma=0.3).item() <= max(values) + 1e-9


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=1, max_size=12), st.floats(0.01, 2.0))
def test_theta_zero_gives_smoothmax(values, gamma):
    m = torch.tensor(values).view(1, -1, 1)
    for form in ("mean", "sum"):
        assert F.regsmoothmax(m, gamma=gamma, theta=0.0, theta_form=form).item() == \
            pytest.approx(F.smoothmax(m, gamma=gamma).item())


def test_margin_loss_matches_naive_loop_with_gradients():
    g = torch.Generator().manual_seed(3)
    pos = torch.randn(4, generator=g).requires_grad_(True)
    neg = torch.randn(4, 6, generator=g).requires_grad_(True)
    w = torch.rand(4, generator=g)
    mask = (torch.rand(4, 6, generator=g) > 0.3).double()
    loss = F.margin_loss(pos, neg, 0.2, w, mask)
    want = sum(w[b].item() * mask[b, j].item() * max(neg[b, j].item() + 0.2 - pos[b].item(), 0.0)
               for b in range(4) for j in range(6))
    assert loss.item() == pytest.approx(want)
    loss.backward()
    for b in range(4):
        active = [mask[b, j].item() * w[b].item() * (neg[b, j].item() + 0.2 - pos[b].item() > 0) for j in range(6)]
        assert pos.grad[b].item() == pytest.approx(-sum(active))
        assert neg.grad[b].tolist() == pytest.approx(active)


def test_unknown_pooling_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        F.pool(torch.zeros(1, 2, 2), "median")


def test_registered_pooling_is_used():
    F.register_pooling("min_test", lambda m, dims=F.PAIR_DIMS, **_: m.amin(dim=dims))
    try:
        m = torch.tensor([[[0.1, 0.7], [0.3, -0.2]]])
        assert F.pool(m, "min_test").item() == pytest.approx(-0.2)
    finally:
        F.POOLINGS.unregister("min_test")


def test_normalize_gives_unit_rows():
    x = torch.tensor(np.random.default_rng(0).normal(size=(3, 2, 5)))
    assert torch.allclose(F.normalize(x).norm(dim=-1), torch.ones(3, 2))
