"""Fitting a linear head in the span of its training rows, when they are fewer than the features.

With L2 regularisation the optimal weights of LinearSVC and LogisticRegression are combinations of
the training rows (the representer theorem): any part of w orthogonal to every row leaves the loss
unchanged and only adds to the penalty. So with an orthonormal basis Q (d x r) of the rows' span,
the problem over w in R^d is the same problem over a in R^r, w = Q a, on the rows X Q (n x r):
the same objective at every point, hence the same optimum, and liblinear's dual coordinate descent
(which sees the rows only through their dot products, unchanged by Q) takes the same steps.
With n rows and d features, each pass over the rows costs n·r <= n² instead of n·d.

LinearSVC regularises its intercept as one more feature of value 1 (``intercept_scaling=1``), so
its basis spans the rows with that constant appended and its reduced fit has no separate
intercept; LogisticRegression's intercept is free, so its basis spans the rows alone.

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
    if isinstance(model, LinearSVC):  # its intercept: a feature of value intercept_scaling
        ok = model.penalty == "l2" and (model.intercept_scaling == 1 or not model.fit_intercept)
    else:  # scikit-learn >= 1.8 says L2 with l1_ratio = 0 (penalty "deprecated"), older with penalty
        ok = isinstance(model, LogisticRegression) and model.penalty in ("l2", "deprecated") and not (
            model.penalty == "deprecated" and model.l1_ratio not in (0, 0.0, None))
    return ok and n_rows <= min(MAX_ROWS, MAX_ROW_RATIO * n_features)


def needs_constant(model) -> bool:
    """LinearSVC's intercept is a regularised weight of a constant feature: its basis spans it too."""
    return isinstance(model, LinearSVC) and model.fit_intercept


def gram_matrix(X: np.ndarray) -> np.ndarray:
    """X Xᵀ in float64 (exact for int8 rows)."""
    A = np.asarray(X, dtype=np.float64)
    return A @ A.T


class RowSpace:
    """An orthonormal basis of the training rows' span (with a constant column for LinearSVC).

    Parameters
    ----------
    X : ndarray
        (n, d) training rows, any numeric dtype.
    constant : bool
        Append a column of ones before taking the span (LinearSVC's regularised intercept).
    gram : ndarray, optional
        X Xᵀ when already computed (`gram_matrix`), shared by the two kinds of basis.

    Attributes
    ----------
    basis_ : ndarray
        (d [+ 1], r) float64, orthonormal columns.
    rows_ : ndarray
        (n, r) float64: X [| 1] @ basis_.
    """

    def __init__(self, X: np.ndarray, constant: bool, gram: np.ndarray | None = None):
        self.constant = constant
        A = np.asarray(X, dtype=np.float64)
        if gram is None:
            gram = A @ A.T
        lam, V = np.linalg.eigh(gram + 1.0 if constant else gram)  # + 1: the constant column's products
        keep = lam > RTOL * max(float(lam[-1]), np.finfo(float).tiny)
        lam, V = lam[keep], V[:, keep]
        root = np.sqrt(lam)
        self.rows_ = V * root
        basis = A.T @ V  # [X | 1]ᵀ V without building [X | 1]
        self.basis_ = (np.vstack([basis, V.sum(axis=0)]) if constant else basis) / root

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Other rows (validation, test) in the basis: their scores under any reduced fit are theirs
        under the mapped-back weights."""
        F = np.asarray(X, dtype=np.float64) @ self.basis_[:X.shape[1]]
        return F + self.basis_[-1] if self.constant else F

    def weights(self, coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A reduced fit's (coef (K, r), intercept (K,)) -> (coef (K, d), intercept (K,))."""
        W = coef @ self.basis_.T
        if self.constant:  # the appended column's weight is the intercept (scaling 1)
            return W[:, :-1], W[:, -1] + intercept
        return W, intercept


def reduced(model, constant: bool):
    """A clone of `model` set to be fitted on the reduced rows of a basis with or without the
    constant column (with it, the intercept is that column's weight)."""
    m = clone(model)
    if constant:
        m.set_params(fit_intercept=False)
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
        space = RowSpace(X, constant=needs_constant(model))
        inner = reduced(model, space.constant).fit(space.rows_, y)
    coef, intercept = space.weights(inner.coef_, np.broadcast_to(inner.intercept_, (len(inner.coef_),)))
    model.coef_, model.intercept_ = coef, np.array(intercept, dtype=np.float64)
    model.classes_, model.n_iter_, model.n_features_in_ = inner.classes_, inner.n_iter_, X.shape[1]
    return model
