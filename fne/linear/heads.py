"""Linear heads on top of an embedding: LinearSVC (the FNE paper's), logistic regression, and
SGD variants that learn with `partial_fit` for data that does not fit in memory."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.svm import LinearSVC

from fne.linear.solver import TorchHead
from fne.names import HEADS
from fne.option_handling import named, refusal

# --C auto's grid (fne.linear.selection): decades 10^-3 .. 10^3, centred on the default C = 1. L2-normalised
# rows (norm 1) want C >= 1, FNE's {-1, 0, 1} rows (squared norm in the thousands) want C <= 1.
C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 7))
SGD_STEP = 0.3  # eta0 = SGD_STEP / (features + 1) on standardised rows; see make_head


def make_head(kind: str, C: float = 1.0, seed: int = 0, n_samples: int | None = None,
              n_features: int | None = None, solver: str = "sklearn", device: str = "auto"):
    """An unfitted head; the SGD ones need the number of training rows and of (standardised) features.

    solver "torch" gives svm and logreg as fne.linear.solver.TorchHead (same objective, solved by
    L-BFGS over streamed chunks on `device`); resolve "auto" first with solver.resolve_solver.

    SGD heads take the penalty of their batch twins, alpha = 1 / (C · n_samples), and run
    averaged SGD (Polyak–Juditsky) with a constant step below 1 / ||x||² on standardised rows.
    sklearn's default 'optimal' step (∝ 1 / (alpha · t)) is huge at this alpha: on raw
    L2-normalised rows it stayed at chance where LinearSVC reached 0.98 (tests/test_fit.py).
    """
    if solver == "torch" and kind in ("svm", "logreg"):
        return TorchHead(kind, C, device=device)
    if kind == "svm":
        return LinearSVC(C=C, max_iter=5000, random_state=seed)
    if kind == "logreg":
        return LogisticRegression(C=C, max_iter=2000, solver="lbfgs", random_state=seed)
    if kind in ("sgd-svm", "sgd-logreg"):
        if not n_samples or not n_features:
            raise ValueError("SGD heads need n_samples and n_features")
        loss = "hinge" if kind == "sgd-svm" else "log_loss"
        return SGDClassifier(loss=loss, alpha=1.0 / (C * n_samples), learning_rate="constant",
                             eta0=SGD_STEP / (n_features + 1), average=True, random_state=seed)
    raise refusal(lambda py: f"unknown {named('head', py, kind)}; choose from {', '.join(HEADS)}")


def parse_C(C: str | float) -> float | str:
    """`--C` as a float > 0, or "auto" (chosen by cross-validation); `OptionError` otherwise."""
    if isinstance(C, str) and C.lower() == "auto":  # chosen by cross-validation: fne.linear.selection
        return "auto"
    try:
        value = float(C)
    except (TypeError, ValueError):
        raise refusal(lambda py: f"bad {named('C', py, C)}; give a positive number or 'auto'") from None
    if not value > 0:  # nan too
        raise refusal(lambda py: f"bad {named('C', py, C)}; must be > 0")
    if value == float("inf"):  # no regularisation: the solvers refuse it
        raise refusal(lambda py: f"bad {named('C', py, C)}; must be finite (a large C, 1e6, regularises little)")
    return value
