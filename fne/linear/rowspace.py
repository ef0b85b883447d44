"""Fitting a linear head in the span of its training rows, when they are fewer than the features.

With L2 regularisation the optimal weights of LinearSVC and LogisticRegression are combinations of
the training rows (the representer theorem): any part of w orthogonal to every row leaves the loss
unchanged and only adds to the penalty. So with an orthonormal basis Q (d x r) of the rows' span,
the problem over w in R^d is the same problem over a in R^r, w = Q a, on the rows X Q (n x r):
the same objective at every point, hence the same optimum, and liblinear's dual coordinate descent
(which sees the rows only through their dot products, unchanged by Q) takes the same steps.
With n rows and d features, each pass over the rows costs n·r <= n² instead of n·d.

One basis serves both heads. LogisticRegression's intercept is free. LinearSVC regularises its
intercept as the weight of one more feature of constant value (``intercept_scaling``): the
reduced fit keeps that feature as LinearSVC's own intercept, and the optimum's weights on the
real features are still a combination of the rows (w = Σ α y x), so they lie in the same span.

Q comes from the Gram matrix X Xᵀ (n x n, exact in float64 for int8 FNE rows) and its
eigendecomposition: Q = Xᵀ V Λ^-1/2, X Q = V Λ^1/2. Directions with an eigenvalue below
`RTOL` of the largest carry no row (duplicates, constant features) and are dropped.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from threadpoolctl import ThreadpoolController

RTOL = 1e-10
# Reduce only when the span is much smaller than the features: below that the Gram matrix and
# its eigendecomposition (n²·d and n³) cost about what they save. And only up to MAX_ROWS rows:
# the reduced rows are float64 n x n (32 MiB at 2,048 rows; --C auto holds two per fold).
MAX_ROW_RATIO = 0.5
MAX_ROWS = 2048


def one_thread():
    """A context for the reduction and the reduced (n x n) fits on one BLAS thread: at pets37's size
    (222 x 222, 37 classes) LogisticRegression's fit took 0.03 s on one thread against 0.13 s on
    two, where each small matmul paid for waking the other thread."""
    return _controller().limit(limits=1, user_api="blas")


@cache
def _controller() -> ThreadpoolController:
    """Found once: threadpool_limits looks up every loaded library on each call (4 ms in fne's process)."""
    return ThreadpoolController()


def worth_it(model, n_rows: int, n_features: int) -> bool:
    """True when `model` (scikit-learn's LinearSVC or LogisticRegression) gains from the reduction."""
    if isinstance(model, LinearSVC):
        ok = model.penalty == "l2"
    else:  # scikit-learn >= 1.8 says L2 with l1_ratio = 0 (penalty "deprecated"), older with penalty
        ok = isinstance(model, LogisticRegression) and model.penalty in ("l2", "deprecated") and not (
            model.penalty == "deprecated" and model.l1_ratio not in (0, 0.0, None))
    return ok and n_rows <= min(MAX_ROWS, MAX_ROW_RATIO * n_features)


class RowSpace:
    """An orthonormal basis of the training rows' span.

    Parameters
    ----------
    X : ndarray
        (n, d) training rows, any numeric dtype (int8 rows' Gram matrix is exact in float64).

    Attributes
    ----------
    basis_ : ndarray
        (d, r) float64, orthonormal columns.
    rows_ : ndarray
        (n, r) float64: X @ basis_.
    """

    def __init__(self, X: np.ndarray):
        A = np.asarray(X, dtype=np.float64)
        lam, V = np.linalg.eigh(A @ A.T)
        keep = lam > RTOL * max(float(lam[-1]), np.finfo(float).tiny)
        lam, V = lam[keep], V[:, keep]
        root = np.sqrt(lam)
        self.rows_ = V * root
        self.basis_ = (A.T @ V) / root

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Other rows (validation, test) in the basis: their scores under any reduced fit are theirs
        under the mapped-back weights."""
        return np.asarray(X, dtype=np.float64) @ self.basis_

    def weights(self, coef: np.ndarray) -> np.ndarray:
        """A reduced fit's coef (K, r) -> coef (K, d); the intercept is the same."""
        return coef @ self.basis_.T


def reduced(model):
    """A clone of `model` set to be fitted on the reduced rows."""
    m = clone(model)
    if isinstance(m, LinearSVC) and m.dual == "auto":  # what "auto" picks on the full rows (n < d);
        m.set_params(dual=True)  # on the n x r reduced rows it would take the (slower) primal
    return m


def fit(model, X: np.ndarray, y: np.ndarray):
    """Fit `model` (LinearSVC or LogisticRegression with L2) on X, y through the rows' span; return
    the same estimator class fitted as if on X directly (coef_ (K, d), intercept_, classes_).

    Parameters
    ----------
    model : LinearSVC or LogisticRegression
        Unfitted; its settings (C, tol, ...) are kept.
    X, y : ndarray
        Training rows (n, d) and labels.

    Returns
    -------
    estimator
        `model`, fitted: what scikit-learn would give on X up to its own stopping tolerance.
    """
    with one_thread():
        space = RowSpace(X)
        inner = reduced(model).fit(space.rows_, y)
    model.coef_ = space.weights(inner.coef_)
    model.intercept_ = np.array(np.broadcast_to(inner.intercept_, (len(inner.coef_),)), dtype=np.float64)
    model.classes_, model.n_iter_, model.n_features_in_ = inner.classes_, inner.n_iter_, X.shape[1]
    return model
