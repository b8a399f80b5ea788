"""Tests for mixrec.data.split: column/random/temporal/leave-last-out split strategies."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixrec.data.split import (TEST, TRAIN, VALID, SplitError, column_split, leave_last_out, make_split,
                               random_split, temporal_split)

users_st = st.lists(st.integers(0, 12), min_size=1, max_size=200).map(lambda v: np.array(v, dtype=np.int64))


def _per_user(users: np.ndarray, codes: np.ndarray, code: int) -> np.ndarray:
    return np.bincount(users, weights=(codes == code), minlength=users.max() + 1).astype(int)


# ----------------------------------------------------------------------------------------------- column
def test_column_split_labels_case_insensitive():
    labels = np.array(["train", "TEST", "Valid", "validation", "val", "eval", "Train ", "test"], dtype=object)
    assert column_split(labels).tolist() == [TRAIN, TEST, VALID, VALID, VALID, VALID, TRAIN, TEST]


def test_column_split_with_vocabulary_codes():
    codes = np.array([2, 0, 1, 1, 0])
    assert column_split(codes, ["test", "train", "valid"]).tolist() == [VALID, TEST, TRAIN, TRAIN, TEST]


def test_column_split_unknown_label_names_first_row():
    with pytest.raises(SplitError, match="'holdout'") as info:
        column_split(np.array(["train", "test", "holdout", "nope"], dtype=object))
    assert info.value.row == 2


# ----------------------------------------------------------------------------------------------- random
@settings(max_examples=60, deadline=None)
@given(users=users_st, test=st.floats(0.0, 0.6), valid=st.floats(0.0, 0.3), seed=st.integers(0, 2**31))
def test_random_split_per_user_counts(users, test, valid, seed):
    codes = random_split(users, test, valid, seed)
    assert codes.dtype == np.int8 and len(codes) == len(users)
    n = np.bincount(users)
    n_test, n_valid, n_train = (_per_user(users, codes, c) for c in (TEST, VALID, TRAIN))
    present = n > 0
    assert (n_train[present] >= 1).all()  # every user keeps a training edge
    assert (n_test[n == 1] == 0).all() and (n_valid[n == 1] == 0).all()
    # counts are fraction * n rounded down or up, except where capped to keep a train edge
    assert (n_test <= np.ceil(n * test)).all() and (n_valid <= np.ceil(n * valid)).all()
    uncapped = present & (np.ceil(n * test) + np.ceil(n * valid) <= n - 1)
    assert (n_test[uncapped] >= np.floor(n[uncapped] * test)).all()
    assert (n_valid[uncapped] >= np.floor(n[uncapped] * valid)).all()
    np.testing.assert_array_equal(codes, random_split(users, test, valid, seed))  # deterministic


def test_random_split_is_per_user_and_unbiased():
    users = np.repeat(np.arange(2000), 10)  # every user has 10 edges
    codes = random_split(users, 0.2, 0.1, seed=3)
    np.testing.assert_array_equal(_per_user(users, codes, TEST), 2)
    np.testing.assert_array_equal(_per_user(users, codes, VALID), 1)
    users = np.repeat(np.arange(4000), 3)  # 3 * 0.25 = 0.75: rounded up or down, 25 % overall
    frac = (random_split(users, 0.25, 0.0, seed=1) == TEST).mean()
    assert abs(frac - 0.25) < 0.02


def test_random_split_seeds_differ_and_rows_random():
    users = np.repeat(np.arange(50), 20)
    a, b = random_split(users, 0.2, 0.0, seed=0), random_split(users, 0.2, 0.0, seed=1)
    assert (a != b).any()
    # the held-out edges are not simply the first or last rows of each user
    pos = np.tile(np.arange(20), 50)
    assert len(np.unique(pos[a == TEST])) > 10


def test_single_edge_users_stay_in_train():
    users = np.array([0, 1, 2, 2, 2, 2, 2, 3])
    for seed in range(20):
        codes = random_split(users, 0.5, 0.3, seed)
        assert codes[[0, 1, 7]].tolist() == [TRAIN] * 3


# --------------------------------------------------------------------------------------------- temporal
@settings(max_examples=60, deadline=None)
@given(users=users_st, data=st.data(), test=st.floats(0.05, 0.6), seed=st.integers(0, 100))
def test_temporal_split_takes_latest(users, data, test, seed):
    ts = np.array(data.draw(st.lists(st.integers(0, 20), min_size=len(users), max_size=len(users))))
    codes = temporal_split(users, ts, test, 0.1, seed)
    rows = np.arange(len(users))
    for u in np.unique(users):  # per user: every held-out edge is later than every train edge
        m = users == u
        key = ts[m] * len(users) + rows[m]  # time, then row order
        c = codes[m]
        assert (c == TRAIN).any()
        for later, earlier in ((TEST, VALID), (TEST, TRAIN), (VALID, TRAIN)):
            if (c == later).any() and (c == earlier).any():
                assert key[c == later].min() > key[c == earlier].max()
    np.testing.assert_array_equal(codes, temporal_split(users, ts, test, 0.1, seed))


def test_temporal_split_fractions_and_ties():
    users = np.repeat(np.arange(3), 10)
    ts = np.tile(np.arange(10)[::-1], 3)  # rows in reverse time order
    codes = temporal_split(users, ts, 0.3, 0.2, seed=0)
    np.testing.assert_array_equal(codes[:10], [TEST] * 3 + [VALID] * 2 + [TRAIN] * 5)
    same_time = temporal_split(np.zeros(4, dtype=np.int64), np.zeros(4), 0.5)
    assert same_time.tolist() == [TRAIN, TRAIN, TEST, TEST]  # ties: later rows count as later


# ------------------------------------------------------------------------------------------ leave-last-out
def test_leave_last_out_picks_latest():
    users = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    ts = np.array([5, 9, 1, 3, 2, 7, 4, 4, 1, 0])
    assert leave_last_out(users, ts).tolist() == [0, 2, 0, 2, 0, 0, 0, 2, 0, 0]
    assert leave_last_out(users, ts, valid=True).tolist() == [1, 2, 0, 0, 0, 0, 1, 2, 0, 0]


@settings(max_examples=60, deadline=None)
@given(users=users_st, data=st.data(), valid=st.booleans())
def test_leave_last_out_properties(users, data, valid):
    ts = np.array(data.draw(st.lists(st.integers(0, 5), min_size=len(users), max_size=len(users))))
    codes = leave_last_out(users, ts, valid)
    n = np.bincount(users)
    n_test, n_valid = _per_user(users, codes, TEST), _per_user(users, codes, VALID)
    need = 3 if valid else 2
    np.testing.assert_array_equal(n_test, (n >= need).astype(int))
    np.testing.assert_array_equal(n_valid, ((n >= need) & valid).astype(int))
    order = np.lexsort((np.arange(len(users)), ts, users))
    last = order[np.r_[users[order][1:] != users[order][:-1], True]]
    big = n[users[last]] >= need
    assert (codes[last[big]] == TEST).all()


# --------------------------------------------------------------------------------------------- dispatch
def test_make_split_dispatch_and_errors():
    users = np.repeat(np.arange(5), 4)
    ts = np.arange(20)
    np.testing.assert_array_equal(make_split("leave-last-out", users, timestamps=ts), leave_last_out(users, ts))
    np.testing.assert_array_equal(make_split("random", users, seed=4, test_fraction=0.25),
                                  random_split(users, 0.25, 0.0, 4))
    with pytest.raises(SplitError, match="timestamp"):
        make_split("temporal", users)
    with pytest.raises(SplitError, match="unknown split strategy"):
        make_split("by-phase-of-moon", users)
    with pytest.raises(SplitError, match="< 1"):
        random_split(users, 0.6, 0.5)
    with pytest.raises(SplitError, match="test_fraction"):
        random_split(users, 1.2)
    assert random_split(np.zeros(0, dtype=np.int64), 0.2).shape == (0,)
