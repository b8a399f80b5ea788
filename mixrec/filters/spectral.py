"""Single-relation graph filters: GF-CF's linear filter, the ideal low-pass, GF-CF, and a Chebyshev low-pass."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mixrec.filters.base import FilterModel, inv_power, normalise, through_users


def randomized_svd(a: sp.spmatrix, k: int, oversample: int = 32, n_iter: int = 4,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` (U, s, Vt) of a sparse matrix by the randomized range finder with power iterations.

    Halko, Martinsson & Tropp (SIAM Review 2011), algorithms 4.4 and 5.1; falls back to a dense SVD
    when the sketch would cover the smaller side anyway.
    """
    n_rows, n_cols = a.shape
    k = min(k, n_rows, n_cols)
    ell = k + oversample
    if ell >= min(n_rows, n_cols):
        u, s, vt = np.linalg.svd(a.toarray().astype(np.float64), full_matrices=False)
        return u[:, :k], s[:k], vt[:k]
    rng = np.random.default_rng(seed)
    at = a.T.tocsr()
    q, _ = np.linalg.qr(a @ rng.standard_normal((n_cols, ell)))
    for _ in range(n_iter):
        z, _ = np.linalg.qr(at @ q)
        q, _ = np.linalg.qr(a @ z)
    b = np.asarray((at @ q).T)  # (ell, n_cols) == Q^T A
    ub, s, vt = np.linalg.svd(b, full_matrices=False)
    return (q @ ub)[:, :k], s[:k], vt[:k]


class SpectralFilter(FilterModel):
    """A filter on one graph (the union of the input relations): a history row x scores x @ F, F item x item.

    Item sets up to ``dense_items`` keep F densely in memory (built on fit/load, never saved);
    larger ones apply F in factored form, batch by batch.
    """

    dense_items = 12_000

    def _fit(self) -> None:
        union = sum(self.history[r] for r in self.relations).tocsr()
        union.data[:] = 1.0  # several input relations: one graph of their union
        self._fit_filter(union)
        self._densify()

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._restore_filter(arrays)
        self._densify()

    def _densify(self, block: int = 1024) -> None:
        self._dense = None
        if self.n_items > self.dense_items:
            return
        eye = np.eye(self.n_items, dtype=np.float32)
        self._dense = np.concatenate([self._filter(eye[lo:lo + block]) for lo in range(0, self.n_items, block)])

    def _apply(self, x: dict[str, np.ndarray]) -> np.ndarray:
        h = np.minimum(sum(x[r] for r in self.relations), 1).astype(np.float32)
        return h @ self._dense if getattr(self, "_dense", None) is not None else self._filter(h)

    def _fit_filter(self, r: sp.csr_matrix) -> None:
        raise NotImplementedError

    def _restore_filter(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _filter(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _NormalisedMixin:
    """Keeps R~ (CSR user x item) and its transpose; saves R~ as CSR arrays."""

    def _set_rn(self, rn: sp.csr_matrix) -> None:
        self.rn, self.rn_t = rn, rn.T.tocsr()

    def _rn_arrays(self) -> dict[str, np.ndarray]:
        return {"rn_indptr": self.rn.indptr.astype(np.int64), "rn_indices": self.rn.indices.astype(np.int32),
                "rn_data": self.rn.data.astype(np.float32)}

    def _rn_restore(self, a: dict[str, np.ndarray]) -> None:
        self._set_rn(sp.csr_matrix((a["rn_data"], a["rn_indices"], a["rn_indptr"]),
                                   shape=(self.n_users, self.n_items)))

    def _linear(self, x: np.ndarray) -> np.ndarray:
        """x @ P~ with P~ = R~^T R~, without forming P~."""
        return through_users(x, self.rn, self.rn_t)


class LinearFilter(_NormalisedMixin, SpectralFilter):
    """GF-CF's linear filter: F = P~ = R~^T R~, R~ = D_u^{-a} R D_i^{-b} (Shen et al., CIKM 2021, eq. 9; a = b = 1/2)."""

    kind = "linear"

    def __init__(self, user_exp: float = 0.5, item_exp: float = 0.5):
        super().__init__(user_exp=user_exp, item_exp=item_exp)

    def _fit_filter(self, r):
        self._set_rn(normalise(r, self.params["user_exp"], self.params["item_exp"]))

    def _arrays(self):
        return self._rn_arrays()

    def _restore_filter(self, a):
        self._rn_restore(a)

    def _filter(self, x):
        return self._linear(x)


class IdealLowPass(SpectralFilter):
    """Ideal low-pass: F = D_i^{-1/2} V_k^T V_k D_i^{1/2}, V_k the top-k right singular vectors of R~ (GF-CF's second term)."""

    kind = "lowpass"

    def __init__(self, rank: int = 256, user_exp: float = 0.5, item_exp: float = 0.5, seed: int = 0):
        super().__init__(rank=rank, user_exp=user_exp, item_exp=item_exp, seed=seed)

    def _fit_lowpass(self, r: sp.csr_matrix) -> sp.csr_matrix:
        p = self.params
        rn = normalise(r, p["user_exp"], p["item_exp"])
        _, self.sigma, self.vt = randomized_svd(rn, p["rank"], seed=p["seed"])
        self.vt = self.vt.astype(np.float32)
        self.d_item = np.asarray(r.sum(axis=0), dtype=np.float64).ravel()
        return rn

    def _fit_filter(self, r):
        self._fit_lowpass(r)

    def _lowpass_arrays(self):
        return {"vt": self.vt, "sigma": np.asarray(self.sigma, dtype=np.float64), "d_item": self.d_item}

    def _lowpass_restore(self, a):
        self.vt, self.sigma, self.d_item = a["vt"], a["sigma"], a["d_item"]

    _arrays = _lowpass_arrays
    _restore_filter = _lowpass_restore

    def _lowpass(self, x: np.ndarray) -> np.ndarray:
        pre = inv_power(self.d_item, 0.5).astype(np.float32)
        post = np.sqrt(self.d_item).astype(np.float32)
        return (((x * pre) @ self.vt.T) @ self.vt) * post

    def _filter(self, x):
        return self._lowpass(x)


class GFCF(_NormalisedMixin, IdealLowPass):
    """GF-CF (Shen et al., CIKM 2021): F = R~^T R~ + alpha * D_i^{-1/2} V_k^T V_k D_i^{1/2} (alpha 0.3, k 256 there)."""

    kind = "gfcf"

    def __init__(self, alpha: float = 0.3, rank: int = 256, user_exp: float = 0.5, item_exp: float = 0.5,
                 seed: int = 0):
        FilterModel.__init__(self, alpha=alpha, rank=rank, user_exp=user_exp, item_exp=item_exp, seed=seed)

    def _fit_filter(self, r):
        self._set_rn(self._fit_lowpass(r))

    def _arrays(self):
        return {**self._rn_arrays(), **self._lowpass_arrays()}

    def _restore_filter(self, a):
        self._rn_restore(a)
        self._lowpass_restore(a)

    def _filter(self, x):
        return self._linear(x) + self.params["alpha"] * self._lowpass(x)


def chebyshev_coefficients(response, order: int) -> np.ndarray:
    """Coefficients c_0..c_K of the Chebyshev interpolant of ``response`` on [-1, 1] (nodes of the first kind).

    p(x) = sum_k c_k T_k(x) with c_k = (2 - [k = 0]) / (K + 1) * sum_j response(x_j) T_k(x_j),
    x_j = cos(pi (j + 1/2) / (K + 1)); p equals ``response`` at the K + 1 nodes.
    """
    n = order + 1
    theta = np.pi * (np.arange(n) + 0.5) / n
    f = np.asarray(response(np.cos(theta)), dtype=np.float64)
    c = np.array([2.0 / n * np.sum(f * np.cos(k * theta)) for k in range(n)])
    c[0] /= 2
    return c


class ChebyshevFilter(_NormalisedMixin, IdealLowPass):
    """Chebyshev low-pass in the style of ChebyCF (Kim et al., SIGIR 2025), optionally plus an ideal pass term.

    F = D_i^{-beta} [ sum_k c_k T_k(2 L~ - I) + alpha V_k^T V_k ] D_i^{beta}, with L~ = I - R~^T R~ the
    normalised item-item Laplacian (eigenvalues in [0, 1]) and c_k interpolating a response h at K + 1
    Chebyshev nodes (x = 2 lambda - 1): the ideal low-pass h = 1 if lambda <= cutoff else 0 (flatness 0),
    or ChebyCF's plateau h = 1/2 - sign(x) |x|^flatness / 2 (flatness > 0, cutoff unused; flatness 1 is
    h = 1 - lambda, the linear filter R~^T R~; larger values flatten it around lambda = 1/2). The
    T_k are applied by the three-term recurrence T_{k+1} = 2 T_k X - T_{k-1}, X = I - 2 R~^T R~,
    each step two sparse products; nothing item x item is formed unless the item set is small.
    """

    kind = "chebyshev"

    def __init__(self, order: int = 8, cutoff: float = 0.5, alpha: float = 0.0, rank: int = 256,
                 beta: float = 0.0, flatness: float = 0.0, user_exp: float = 0.5, item_exp: float = 0.5,
                 seed: int = 0):
        if flatness < 0:
            raise ValueError(f"flatness must be >= 0 (0: the ideal low-pass at cutoff), got {flatness}")
        FilterModel.__init__(self, order=order, cutoff=cutoff, alpha=alpha, rank=rank, beta=beta,
                             flatness=flatness, user_exp=user_exp, item_exp=item_exp, seed=seed)

    @property
    def coefficients(self) -> np.ndarray:
        return chebyshev_coefficients(self.response, self.params["order"])

    def response(self, x: np.ndarray) -> np.ndarray:
        """The interpolated response h at x = 2 lambda - 1 (see the class docstring)."""
        flat = self.params["flatness"]
        if flat > 0:
            return 0.5 - 0.5 * np.sign(x) * np.abs(x) ** flat
        return ((x + 1) / 2 <= self.params["cutoff"]).astype(float)

    def _fit_filter(self, r):
        if self.params["alpha"]:
            self._set_rn(self._fit_lowpass(r))
        else:
            self._set_rn(normalise(r, self.params["user_exp"], self.params["item_exp"]))
            self.d_item = np.asarray(r.sum(axis=0), dtype=np.float64).ravel()

    def _arrays(self):
        out = {**self._rn_arrays(), "d_item": self.d_item}
        return {**out, **self._lowpass_arrays()} if self.params["alpha"] else out

    def _restore_filter(self, a):
        self._rn_restore(a)
        if self.params["alpha"]:
            self._lowpass_restore(a)
        self.d_item = a["d_item"]

    def _filter(self, x):
        beta, c = self.params["beta"], self.coefficients
        pre = inv_power(self.d_item, beta).astype(np.float32)
        h = x * pre
        t_prev, t_cur = h, h - 2 * self._linear(h)  # T_0 h, T_1 h (row vectors: h T_k(X))
        out = c[0] * t_prev + (c[1] * t_cur if len(c) > 1 else 0)
        for ck in c[2:]:
            t_prev, t_cur = t_cur, 2 * (t_cur - 2 * self._linear(t_cur)) - t_prev
            out = out + ck * t_cur
        if self.params["alpha"]:
            out = out + self.params["alpha"] * ((h @ self.vt.T) @ self.vt)
        post = np.where(self.d_item > 0, self.d_item ** beta, 0).astype(np.float32)
        return (out * post).astype(np.float32)
