"""The node-label logistic-regression probe: AUC and F1 against naive references, planted labels."""
import numpy as np

from mixrec.evaluate.probe import fit_logistic, label_probe, macro_auc, micro_f1, predict_logits


def _naive_auc(s, y):
    pos, neg = s[y], s[~y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_macro_auc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, (30, 3)).astype(float)  # many ties
    y = rng.random((30, 3)) < 0.4
    want = np.mean([_naive_auc(s[:, j], y[:, j]) for j in range(3)])
    assert abs(macro_auc(s, y) - want) < 1e-12


def test_macro_auc_skips_labels_without_both_classes():
    s = np.array([[0.1, 0.5], [0.9, 0.2], [0.4, 0.3]])
    y = np.array([[0, 1], [1, 1], [0, 1]], dtype=bool)
    assert macro_auc(s, y) == 1.0  # second label has no negatives


def test_micro_f1_hand_computed():
    pred = np.array([[1, 0], [1, 1]], dtype=bool)
    y = np.array([[1, 1], [0, 1]], dtype=bool)
    assert micro_f1(pred, y) == 2 * 2 / (3 + 3)


def test_logistic_regression_separates_a_linear_label():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0.5], 1)
    w, b = fit_logistic(x, y, l2=1e-4)
    acc = ((predict_logits(x, w, b) > 0) == y).mean()
    assert acc > 0.97


def test_probe_finds_planted_labels_and_not_random_ones():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 8))
    cluster = rng.integers(0, 5, 600)
    x = centres[cluster] + 0.3 * rng.normal(size=(600, 8))
    y = np.eye(5, dtype=bool)[cluster]
    good = label_probe(x, y, seed=0)
    assert good["macro_auc"] > 0.95 and good["micro_f1"] > 0.8 and good["dims"] == 8
    shuffled = label_probe(x, y[rng.permutation(600)], seed=0)
    assert shuffled["macro_auc"] < 0.65
