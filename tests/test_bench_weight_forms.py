"""bench/weight_forms.py: re-weighting a trained mixture reproduces its stored weights at its own form and
gamma_T, and another form or temperature changes them as eq. 5 says (oracle: mixrec.weights on the edges)."""
import sys
from pathlib import Path

import numpy as np
import torch

from conftest import small_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from weight_forms import reweighted  # noqa: E402

from mixrec.model.mixture import MixtureModel  # noqa: E402
from mixrec.train import train  # noqa: E402
from mixrec.weights import mixture_weights  # noqa: E402


def test_reweighted_reproduces_and_follows_eq5(planted, tmp_path):
    ds, _ = planted
    model = train(ds, small_config(1), tmp_path / "m", progress=False)
    stored = model.mixture_weights("user").copy()
    again = reweighted(MixtureModel.load(tmp_path / "m"), "sum", model.config.weight_sets["all"].gamma)
    np.testing.assert_allclose(again.mixture_weights("user"), stored, rtol=1e-5, atol=1e-6)

    hot = reweighted(MixtureModel.load(tmp_path / "m"), "responsibility", 0.5)
    e = hot.train_edges
    want, _ = mixture_weights(hot.tables["user"], hot.tables["item"], e["src"], e["dst"], 0.5, "responsibility")
    np.testing.assert_allclose(hot.mixture_weights("user"), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(hot.mixture_weights("user"), stored, atol=1e-3)
    assert hot.config.weight_sets["all"].form == "responsibility"
    assert isinstance(hot.tables["user"], torch.Tensor)


def test_pruned_zeroes_small_components_like_the_trained_prune(planted, tmp_path):
    from weight_forms import pruned
    ds, _ = planted
    model = train(ds, small_config(1), tmp_path / "m", progress=False)
    w = model.mixture_weights("user")
    cut = float(np.quantile(w, 0.3))
    got = pruned(MixtureModel.load(tmp_path / "m"), cut, 1.0).mixture_weights("user")
    small = w < cut
    keep_any = (~small).any(axis=1)
    assert (got[small & keep_any[:, None]] == 0).all()  # every small component of a user with a kept one is gone
    renorm = np.where(small, 0, w)[keep_any]
    np.testing.assert_allclose(got[keep_any], renorm / renorm.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
