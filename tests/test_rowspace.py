"""Linear heads fitted in the span of their training rows (fne.linear.rowspace): the same optimum."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.svm import LinearSVC

from fne.linear import rowspace, selection
from fne.linear.solver import primal_objective


def _rows(n=60, d=400, k=4, seed=0):
    """int8 {-1, 0, 1} rows, fewer than their features, with some class signal and duplicates."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    z = rng.normal(0, 0.4, (k, d))[y] + rng.standard_normal((n, d))
    X = ((z > 0.5).astype(np.int8) - (z < -0.5).astype(np.int8))
    X[-1] = X[0]  # a duplicate row: the Gram matrix is singular
    y[-1] = y[0]
    return X, y


HEADS = [("svm", lambda: LinearSVC(C=0.5, tol=1e-9, max_iter=100000)),
         ("logreg", lambda: LogisticRegression(C=0.5, tol=1e-10, max_iter=20000))]


@pytest.mark.parametrize("head,make", HEADS)
@pytest.mark.parametrize("k", [2, 4])
def test_same_optimum_as_the_direct_fit(head, make, k):
    X, y = _rows(k=k)
    direct = make().fit(X, y)
    reduced = rowspace.fit(make(), X, y)
    assert type(reduced) is type(direct)
    assert reduced.coef_.shape == direct.coef_.shape == ((1 if k == 2 else k), X.shape[1])
    assert reduced.intercept_.shape == direct.intercept_.shape
    o_direct = primal_objective(head, 0.5, direct.coef_, direct.intercept_, X, y)
    o_reduced = primal_objective(head, 0.5, reduced.coef_, reduced.intercept_, X, y)
    assert abs(o_reduced - o_direct) <= 1e-6 * o_direct
    np.testing.assert_allclose(reduced.coef_, direct.coef_, atol=1e-4)
    X_new, _ = _rows(n=30, seed=1)
    np.testing.assert_array_equal(reduced.predict(X_new), direct.predict(X_new))
    np.testing.assert_allclose(reduced.decision_function(X_new), direct.decision_function(X_new), atol=1e-3)


def test_weights_lie_in_the_rows_span():
    """What makes the reduction exact: the direct optimum has no part orthogonal to the rows."""
    X, y = _rows()
    space = rowspace.RowSpace(X)
    assert np.allclose(space.basis_.T @ space.basis_, np.eye(space.basis_.shape[1]), atol=1e-8)
    Xf = X.astype(np.float64)
    np.testing.assert_allclose(space.rows_ @ space.rows_.T, Xf @ Xf.T, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(space.transform(X), space.rows_, atol=1e-8)
    assert space.basis_.shape[1] == len(X) - 1  # the duplicate row adds no direction


def test_linearsvc_keeps_its_own_regularised_intercept_column():
    """LinearSVC's intercept is the weight of a constant feature of value intercept_scaling: the
    reduced fit keeps that feature, and the weights on the real ones stay in the rows' span."""
    X, y = _rows(k=4)
    for scaling in (1.0, 10.0):
        kw = dict(C=0.5, tol=1e-9, max_iter=100000, intercept_scaling=scaling)
        direct, reduced = LinearSVC(**kw).fit(X, y), rowspace.fit(LinearSVC(**kw), X, y)
        np.testing.assert_allclose(reduced.coef_, direct.coef_, atol=1e-4)
        np.testing.assert_allclose(reduced.intercept_, direct.intercept_, atol=1e-4)


def test_only_where_it_pays():
    assert rowspace.worth_it(LinearSVC(), 100, 1000)
    assert rowspace.worth_it(LogisticRegression(), 100, 1000)
    assert not rowspace.worth_it(LinearSVC(), 800, 1000)  # about as many rows as features
    assert not rowspace.worth_it(LinearSVC(), rowspace.MAX_ROWS + 1, 100_000)  # n x n rows too big to hold
    assert rowspace.worth_it(LinearSVC(intercept_scaling=10), 100, 1000)  # its own constant feature
    assert not rowspace.worth_it(LinearSVC(penalty="l1", dual=False), 100, 1000)
    assert not rowspace.worth_it(SGDClassifier(), 100, 1000)
    # L1: l1_ratio=1 from scikit-learn 1.8 (penalty "deprecated"); before, penalty="l1" (l1_ratio ignored)
    l1 = dict(l1_ratio=1.0) if LogisticRegression().penalty == "deprecated" else dict(penalty="l1")
    assert not rowspace.worth_it(LogisticRegression(solver="saga", **l1), 100, 1000)


def test_cross_validation_scores_the_same_in_the_span():
    """A fold scores every head and C as the direct fit does (same folds, same optimum)."""
    X, y = _rows(n=80, k=4)
    Xv, yv = _rows(n=40, k=4, seed=2)
    fold = selection._Fold(X, y, Xv, yv, 1)
    for head in ("svm", "logreg"):
        for C in (0.01, 1.0):
            got = fold.score(head, C, 0)
            direct = (LinearSVC(C=C, tol=selection.CV_SVM_TOL, max_iter=5000) if head == "svm"
                      else LogisticRegression(C=C, max_iter=2000)).fit(X, y)
            assert got == pytest.approx(float(np.mean(direct.predict(Xv) == yv)), abs=1.5 / len(yv))
    assert fold.space is not None and fold.space[0].shape == (len(X), len(X) - 1)  # one basis for every head and C
