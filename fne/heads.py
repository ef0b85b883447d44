"""Linear heads on top of an embedding: LinearSVC (the FNE paper's), logistic regression, and
SGD variants that learn with `partial_fit` for data that does not fit in memory."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import GridSearchCV, StratifiedShuffleSplit
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from fne.errors import FneError

HEADS = ("svm", "logreg", "sgd-svm", "sgd-logreg")
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))


def make_head(kind: str, C: float = 1.0, seed: int = 0, n_samples: int | None = None):
    if kind == "svm":
        return LinearSVC(C=C, max_iter=5000, random_state=seed)
    if kind == "logreg":
        return LogisticRegression(C=C, max_iter=2000, solver="lbfgs", random_state=seed)
    if kind in ("sgd-svm", "sgd-logreg"):
        # SGD's alpha and C are the same penalty: alpha = 1 / (C · n_samples).
        loss = "hinge" if kind == "sgd-svm" else "log_loss"
        alpha = 1.0 / (C * n_samples) if n_samples else 1e-4
        return SGDClassifier(loss=loss, alpha=alpha, random_state=seed)
    raise FneError(f"unknown --head {kind!r}; choose from {', '.join(HEADS)}")


def parse_C(C: str | float) -> float | str:
    if isinstance(C, (int, float)):
        return float(C)
    if str(C).lower() == "auto":
        return "auto"
    try:
        value = float(C)
    except ValueError:
        raise FneError(f"bad --C {C!r}; give a positive number or 'auto'") from None
    if value <= 0:
        raise FneError(f"bad --C {C!r}; must be > 0")
    return value


def fit_pipeline(transform, head: str, C: float | str, X: np.ndarray, y: np.ndarray, seed: int = 0):
    """Fit transform+head on training rows; with C='auto' pick C on a validation part of them.

    The validation part is carved from the training rows only (Kornblith et al. 2019's linear
    probe protocol), and the chosen C is refitted on all training rows.
    Returns (pipeline, C used).
    """
    if C != "auto":
        pipe = Pipeline([("embed", transform), ("head", make_head(head, C, seed))])
        return pipe.fit(X, y), C
    counts = np.bincount(y)
    counts = counts[counts > 0]
    if counts.min() < 2:
        raise FneError("--C auto needs at least 2 training images per class")
    pipe = Pipeline([("embed", transform), ("head", make_head(head, 1.0, seed))])
    val = StratifiedShuffleSplit(n_splits=1, test_size=max(0.2, len(counts) / len(y)), random_state=seed)
    search = GridSearchCV(pipe, {"head__C": list(C_GRID)}, cv=val, refit=True, n_jobs=1)
    search.fit(X, y)
    return search.best_estimator_, float(search.best_params_["head__C"])
