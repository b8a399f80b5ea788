"""Every registered index backend against a numpy oracle (exact inner-product top k), as TFRS tests its TopK layers.

The oracle is ``argsort(-(q @ c.T))`` in float64 with excluded items removed; results go through the same
round-robin merge every search path uses. Exact backends must return the oracle's items (where the oracle
has no near-tie); approximate ones, with parameters that make them near-exact on this data, a recall of
at least ``RECALL_FLOOR``. Saving and reloading an index must give identical results.
"""
import numpy as np
import pytest

from mixrec.config import IndexConfig
from mixrec.index import ComponentIndex
from mixrec.registry import INDEX_BACKENDS
from mixrec.retrieve import round_robin_merge

N_ITEMS, DIM = 400, 16
KS, BATCHES = (1, 10, 100), (1, 7, 64)
RECALL_FLOOR = 0.99
TIE = 1e-5  # oracle scores closer than this may come back in either order (float32 vs float64)
# search/build parameters that make the approximate backends near-exact on N_ITEMS vectors
NEAR_EXACT = {"hnsw": {"hnsw_m": 32, "ef_construction": 200, "ef_search": N_ITEMS},
              "ivf": {"nlist": 8, "nprobe": 8}}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    items = _unit(rng.normal(size=(N_ITEMS, DIM)))
    queries = _unit(rng.normal(size=(max(BATCHES), DIM)))
    return items, queries


@pytest.fixture(scope="module", params=INDEX_BACKENDS.names())
def backend(request, data):
    kind = request.param
    config = IndexConfig(kind=kind, **NEAR_EXACT.get(kind, {}))
    return kind, ComponentIndex.build(data[0][:, None, :], config)


def oracle(items: np.ndarray, queries: np.ndarray, k: int, exclude: list[np.ndarray]):
    """(top-k item ids (B, k), the full float64 score matrix with excluded items at -inf)."""
    scores = queries.astype(np.float64) @ items.astype(np.float64).T
    for row, ex in enumerate(exclude):
        scores[row, ex] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k], scores


def exclusions(scores: np.ndarray, rng) -> list[np.ndarray]:
    """Per row, 15 items drawn from its true top 40 (so excluding them changes the answer)."""
    top = np.argsort(-scores, axis=1)[:, :40]
    return [rng.choice(t, 15, replace=False) for t in top]


def search(index: ComponentIndex, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None) -> np.ndarray:
    """Top k items through the retrieval path: index search, then the round-robin merge with exclusions."""
    b = len(queries)
    extra = 0 if exclude is None else max(len(e) for e in exclude)
    sims, ids = index.search(queries, min((k + extra) * index.components, index.size))
    pairs = None if exclude is None else (np.repeat(np.arange(b), [len(e) for e in exclude]), np.concatenate(exclude))
    return round_robin_merge(sims[:, None], ids[:, None], np.ones((b, 1)), np.ones((N_ITEMS, 1)), k, pairs).items


def assert_matches(kind: str, got: np.ndarray, want: np.ndarray, scores: np.ndarray, exclude) -> None:
    k = want.shape[1]
    for row, ex in enumerate(exclude or [()]):
        assert not np.isin(got[row], ex).any(), f"{kind}: excluded item returned in row {row}"
    if INDEX_BACKENDS.get(kind).exact:
        assert (got >= 0).all()
        # the oracle's scores of what came back are its own top k (so only near-ties may swap) ...
        ranked = np.take_along_axis(scores, np.argsort(-scores, 1, kind="stable")[:, :k + 1], 1)
        np.testing.assert_allclose(np.take_along_axis(scores, got, 1), ranked[:, :k], atol=TIE)
        # ... and the items are the oracle's wherever its scores are apart from both neighbours
        after = np.abs(np.diff(ranked, axis=1))
        before = np.c_[np.full(len(after), np.inf), after[:, :-1]]
        clear = (after > TIE) & (before > TIE)
        np.testing.assert_array_equal(got[clear], want[clear])
    else:
        hits = sum(len(np.intersect1d(g, w)) for g, w in zip(got, want))
        assert hits / want.size >= RECALL_FLOOR, f"{kind}: recall {hits / want.size:.3f} < {RECALL_FLOOR}"


@pytest.mark.parametrize("with_exclusions", [False, True])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("k", KS)
def test_backend_matches_numpy_oracle(backend, data, k, batch, with_exclusions):
    kind, index = backend
    items, queries = data
    q = queries[:batch]
    exclude = exclusions(q @ items.T, np.random.default_rng(k * 100 + batch)) if with_exclusions else None
    want, scores = oracle(items, q, k, exclude or [np.empty(0, np.int64)] * batch)
    assert_matches(kind, search(index, q, k, exclude), want, scores, exclude)


def test_raw_search_returns_oracle_similarities(backend, data):
    """The index's own similarities are the inner products of the ids it returns."""
    kind, index = backend
    items, queries = data
    sims, ids = index.search(queries, 10)
    assert (ids >= 0).all()
    np.testing.assert_allclose(sims, np.einsum("bd,bkd->bk", queries, items[ids]), atol=1e-5)


def test_save_and_reload_give_identical_results(backend, data, tmp_path):
    kind, index = backend
    items, queries = data
    path = tmp_path / f"items.{kind}.faiss"
    index.save(path)
    again = ComponentIndex.load(path)
    assert again.config == index.config and again.size == index.size == N_ITEMS
    for k in KS:
        a, b = index.search(queries, k), again.search(queries, k)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    exclude = exclusions(queries @ items.T, np.random.default_rng(1))
    np.testing.assert_array_equal(search(index, queries, 10, exclude), search(again, queries, 10, exclude))


def test_every_builtin_kind_is_registered():
    assert {"flat", "hnsw", "ivf"} <= set(INDEX_BACKENDS.names())
    assert INDEX_BACKENDS.get("flat").exact and not INDEX_BACKENDS.get("hnsw").gpu
