"""Tests of item label loading and diversity metrics against hand-computed values and naive loops."""
import gzip
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mixrec.evaluate import diversity
from mixrec.evaluate.diversity import diversity_metrics
from mixrec.evaluate.labels import ItemLabels, load_item_labels


def labels_from_sets(sets, n_labels):
    items = [i for i, s in enumerate(sets) for _ in s]
    labs = [g for s in sets for g in s]
    return ItemLabels.from_pairs(np.array(items, dtype=np.int64), np.array(labs, dtype=np.int64),
                                 len(sets), [f"g{g}" for g in range(n_labels)])


def naive_diversity(topk, sets, n_labels, ks, n_items):
    out = {}
    for k in ks:
        divs, covers, seen_items = [], [], set()
        for row in topk.tolist():
            head = row[:k]
            seen_items.update(i for i in head if i >= 0)
            pairs = diff = 0
            for a in range(len(head)):
                for b in range(a + 1, len(head)):
                    i, j = head[a], head[b]
                    if i < 0 or j < 0 or not sets[i] or not sets[j]:
                        continue
                    pairs += 1
                    diff += not (sets[i] & sets[j])
            if pairs:
                divs.append(diff / pairs)
            labs = set().union(*(sets[i] for i in head if i >= 0))
            covers.append(len(labs) / n_labels if n_labels else float("nan"))
        out[f"div@{k}"] = sum(divs) / len(divs) if divs else float("nan")
        out[f"label_coverage@{k}"] = sum(covers) / len(covers) if covers else float("nan")
        out[f"catalog_coverage@{k}"] = len(seen_items) / n_items
    return out


def assert_close(got, want):
    assert set(got) == set(want)
    for key, val in want.items():
        if math.isnan(val):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(val, abs=1e-12), key


# ---------------------------------------------------------------- ItemLabels
def test_item_labels_dense_and_dedup():
    lab = ItemLabels.from_pairs(np.array([2, 0, 2, 2]), np.array([1, 0, 1, 0]), 3, ["a", "b"])
    np.testing.assert_array_equal(lab.dense(), [[True, False], [False, False], [True, True]])
    np.testing.assert_array_equal(lab.counts(), [1, 0, 2])
    with pytest.raises(ValueError):
        ItemLabels.from_pairs(np.array([0]), np.array([2]), 1, ["a", "b"])


# ---------------------------------------------------------------- diversity
def test_hand_worked_example():
    # items: 0 {A}, 1 {B}, 2 {A, B}, 3 {} (unlabelled), 4 {C}
    sets = [{0}, {1}, {0, 1}, set(), {2}]
    lab = labels_from_sets(sets, 3)
    topk = np.array([[0, 1, 2, 3], [0, 4, -1, -1], [3, -1, -1, -1]])
    got = diversity_metrics(topk, lab, [2, 4], n_items=5)
    # user 0, K=2: pair (0,1) differs -> 1; K=4: pairs among 0,1,2: (0,1) differ, (0,2) and (1,2) share -> 1/3
    # user 1: pair (0,4) differs -> 1 at both K; user 2 has no pair -> left out
    assert got["div@2"] == pytest.approx(1.0)
    assert got["div@4"] == pytest.approx((1 / 3 + 1) / 2)
    assert got["label_coverage@2"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert got["label_coverage@4"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert got["catalog_coverage@2"] == pytest.approx(4 / 5)
    assert got["catalog_coverage@4"] == pytest.approx(1.0)


def test_without_labels_only_catalog_coverage():
    got = diversity_metrics(np.array([[0, 1], [2, -1], [0, 0]]), None, [1, 2], n_items=4)
    assert got == {"catalog_coverage@1": 0.5, "catalog_coverage@2": 0.75}


def test_no_labelled_pairs_gives_nan_div():
    lab = labels_from_sets([set(), {0}], 1)
    got = diversity_metrics(np.array([[0, 1], [1, -1]]), lab, [2], n_items=2)
    assert math.isnan(got["div@2"])
    assert got["label_coverage@2"] == pytest.approx(1.0)


def test_repeated_item_pair_shares_labels():
    lab = labels_from_sets([{0}, {1}], 2)
    got = diversity_metrics(np.array([[0, 0, 1]]), lab, [3], n_items=2)
    assert got["div@3"] == pytest.approx(2 / 3)


def test_bad_inputs_raise():
    lab = labels_from_sets([{0}, {1}], 2)
    with pytest.raises(ValueError, match="cutoffs"):
        diversity_metrics(np.array([[0, 1]]), lab, [3], n_items=2)
    with pytest.raises(ValueError, match="n_items"):
        diversity_metrics(np.array([[0, 5]]), lab, [1], n_items=2)
    with pytest.raises(ValueError, match="labels cover"):
        diversity_metrics(np.array([[0, 1]]), lab, [1], n_items=3)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_matches_naive_loop(seed):
    rng = np.random.default_rng(seed)
    n_items, n_labels, kmax = rng.integers(1, 30), rng.integers(1, 6), rng.integers(1, 9)
    sets = [set(rng.choice(n_labels, rng.integers(0, 3), replace=True).tolist()) for _ in range(n_items)]
    topk = rng.integers(-1, n_items, size=(rng.integers(1, 20), kmax))
    ks = sorted(set(rng.integers(1, kmax + 1, 3).tolist()))
    got = diversity_metrics(topk, labels_from_sets(sets, n_labels), ks, n_items)
    assert_close(got, naive_diversity(topk, sets, n_labels, ks, n_items))


def test_batches_give_same_result(monkeypatch):
    rng = np.random.default_rng(7)
    sets = [set(rng.choice(4, rng.integers(0, 3)).tolist()) for _ in range(40)]
    topk = rng.integers(-1, 40, size=(57, 6))
    want = naive_diversity(topk, sets, 4, [3, 6], 40)
    monkeypatch.setattr(diversity, "_BATCH_BYTES", 4 * 6 * 6 * 5)  # 5 users per batch
    assert_close(diversity_metrics(topk, labels_from_sets(sets, 4), [3, 6], 40), want)


# ---------------------------------------------------------------- load_item_labels
def test_load_one_row_per_item_tsv(tmp_path):
    p = tmp_path / "items.tsv"
    p.write_text("item_id\tgenres\n10\tDrama|Comedy\n30\t\n20\t Comedy \n99\tHorror\n")
    lab = load_item_labels(p, np.array([20, 10, 30, 40]))
    assert lab.names == ["Comedy", "Drama"]
    np.testing.assert_array_equal(lab.dense(), [[1, 0], [1, 1], [0, 0], [0, 0]])
    assert lab.n_unknown_items == 1


def test_load_several_rows_per_item_csv_gz_string_ids(tmp_path):
    p = tmp_path / "labels.csv.gz"
    with gzip.open(p, "wt") as fh:
        fh.write("sku,cat\nb,x\na,y\nb,z\nb,x\nzz,x\nzz,y\n")
    lab = load_item_labels(p, np.array(["a", "b", "c"], dtype=object), id_col="sku", label_col="cat")
    assert lab.names == ["x", "y", "z"]
    np.testing.assert_array_equal(lab.dense(), [[0, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert lab.n_unknown_items == 1


def test_load_matches_int_file_ids_to_string_dataset_ids(tmp_path):
    p = tmp_path / "items.tsv"
    p.write_text("item_id\tgenres\n7\tA\n8\tB\n")
    lab = load_item_labels(p, np.array(["8", "7", "9"]))
    np.testing.assert_array_equal(lab.dense(), [[0, 1], [1, 0], [0, 0]])


def test_load_matches_string_file_ids_to_int_dataset_ids(tmp_path):
    p = tmp_path / "items.tsv"
    p.write_text("item_id\tgenres\n007\tA\nx1\tB\n8\tB\n")
    lab = load_item_labels(p, np.array([8, 7], dtype=np.int64))  # "x1" forces string matching
    assert lab.names == ["B"]  # labels only carried by unknown items are dropped
    np.testing.assert_array_equal(lab.dense(), [[1], [0]])
    assert lab.n_unknown_items == 2
    p.write_text("item_id\tgenres\n007\tA\n8\tB\n")  # all numeric: compared as integers
    np.testing.assert_array_equal(load_item_labels(p, np.array([8, 7])).dense(), [[0, 1], [1, 0]])


def test_load_errors_name_file_and_column(tmp_path):
    p = tmp_path / "items.tsv"
    p.write_text("item_id\tcategory\n1\tA\n")
    with pytest.raises(ValueError, match=r"items\.tsv.*genres.*label_col"):
        load_item_labels(p, np.array([1]))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv.*empty"):
        load_item_labels(empty, np.array([1]))
    header = tmp_path / "header.csv"
    header.write_text("item_id,genres\n")
    with pytest.raises(ValueError, match=r"header\.csv.*no rows"):
        load_item_labels(header, np.array([1]))
    with pytest.raises(ValueError, match="delimiter"):
        load_item_labels(tmp_path / "x.dat", np.array([1]))
    with pytest.raises(FileNotFoundError):
        load_item_labels(tmp_path / "missing.tsv", np.array([1]))
