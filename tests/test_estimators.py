"""fne's scikit-learn estimators (every `BaseEstimator` in fne/) as a scikit-learn user uses them:
scikit-learn's own estimator checks, and `clone`, grid search, cross-validation and pickling
over the rows `fne.load_rows` gives."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import fne
from fne.linear.embedding import FullNetworkEmbedding, L2Normalizer
from fne.linear.solver import TorchHead

from .conftest import FAST

# Small max_iter: the checks fit dozens of times on toy data, where 50 L-BFGS steps are plenty.
ESTIMATORS = [FullNetworkEmbedding(), L2Normalizer(), TorchHead("svm", max_iter=50, device="cpu"),
              TorchHead("logreg", max_iter=50, device="cpu")]


def test_torch_head_reads_read_only_rows_quietly(one_torch_thread):
    """GridSearchCV(n_jobs=...) hands workers read-only memmaps: no torch warning about them.
    (torch warns once per process: this test comes before the checks, which fit read-only rows.)"""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), np.repeat([0, 1], 20)
    X.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head = TorchHead("svm", device="cpu", max_iter=20).fit(X, y)
    assert head.coef_.shape == (1, 4) and not X.flags.writeable


def test_wrong_input_is_a_clear_value_error(rows, one_torch_thread):
    d = rows.X.shape[1]
    emb = FullNetworkEmbedding().fit(rows.X)
    head = TorchHead("svm", device="cpu", max_iter=20).fit(emb.transform(rows.X), rows.y)
    for est in (emb.transform, head.predict, head.decision_function):
        with pytest.raises(ValueError, match=f"X has {d - 1} features, but .* is expecting {d} features"):
            est(rows.X[:, 1:])
    with pytest.raises(ValueError, match="at least two classes .*got 1 class"):
        TorchHead(device="cpu").fit(rows.X[:4], ["a"] * 4)
    with pytest.raises(ValueError, match="Unknown label type"):
        TorchHead(device="cpu").fit(rows.X[:4], [0.5, 1.5, 2.5, 3.5])
    with pytest.raises(ValueError, match="svm and logreg heads, not 'sgd'"):
        TorchHead("sgd").fit(rows.X[:4], ["a", "b"] * 2)
    for bad in (dict(C=0), dict(C=-1.0), dict(max_iter=0), dict(tol="1e-4")):
        with pytest.raises(ValueError, match=f"TorchHead's {next(iter(bad))} must be a number > 0"):
            TorchHead(device="cpu", **bad).fit(rows.X[:4], ["a", "b"] * 2)


@parametrize_with_checks(ESTIMATORS)
def test_scikit_learns_estimator_checks(estimator, check, one_torch_thread):
    """Input checked in every method (a 1-D array, a wrong width, NaN, sparse, complex, one class:
    scikit-learn's errors), fit returns self, clone / get_params round-trip, pickling,
    `n_features_in_`, `classes_`, the int8 output declared in the embedding's tags."""
    check(estimator)


@pytest.fixture(scope="module")
def rows(tmp_path_factory, digits_folder):
    cache = tmp_path_factory.mktemp("cache")
    fne.extract(digits_folder, cache=str(cache), batch_size=8, progress=False, **FAST)
    return fne.load_rows(digits_folder, cache=str(cache), **FAST)


def test_the_embedding_and_the_torch_head_in_a_grid_search_over_load_rows(rows, one_torch_thread):
    pipe = make_pipeline(FullNetworkEmbedding(), TorchHead("logreg", device="cpu", max_iter=200))
    grid = {"fullnetworkembedding__high": [0.15, 0.5], "torchhead__C": [0.01, 1.0]}
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    search = GridSearchCV(pipe, grid, cv=cv).fit(rows.X, rows.y)
    assert len(search.cv_results_["params"]) == 4 and set(search.best_params_) == set(grid)
    best = search.best_estimator_
    assert best[0].n_features_in_ == rows.X.shape[1] and list(best[-1].classes_) == rows.classes
    assert np.allclose(best[0].mean_, rows.X.mean(0))  # refit on every row: their statistics
    scores = cross_val_score(clone(best), rows.X, rows.y, cv=cv)
    assert scores.shape == (3,) and ((0 <= scores) & (scores <= 1)).all()
    again = pickle.loads(pickle.dumps(best))
    assert np.array_equal(again.predict(rows.X), best.predict(rows.X))
    assert np.allclose(again.predict_proba(rows.X).sum(1), 1)


def test_torch_head_probabilities_are_those_of_the_model_fne_fit_saves(one_torch_thread):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)) + np.repeat(np.eye(3, 5) * 3, 20, axis=0)
    y = np.repeat(["a", "b", "c"], 20)
    for Xs, ys in ((X, y), (X[:40], y[:40])):  # multinomial, and binary (one margin)
        head = TorchHead("logreg", C=0.5, device="cpu").fit(Xs, ys)
        saved = head.sklearn_model()
        assert isinstance(saved, LogisticRegression)
        assert np.allclose(head.predict_proba(Xs), saved.predict_proba(Xs), atol=1e-5)
        assert np.allclose(head.predict_log_proba(Xs), saved.predict_log_proba(Xs), atol=1e-4)
        assert np.array_equal(head.predict(Xs), saved.predict(Xs))
    assert not hasattr(TorchHead("svm"), "predict_proba")  # as LinearSVC: margins only

