"""The pieces of metrics.json that `fne fit` and `fne train` share, computed one way."""

from __future__ import annotations

import platform
import warnings
from datetime import UTC, datetime

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix


def split_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[dict, np.ndarray]:
    """Accuracy and mean per-class accuracy of one test split, and its confusion matrix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        mca = float(balanced_accuracy_score(y_true, y_pred))
    scores = {"accuracy": float(accuracy_score(y_true, y_pred)), "mean_class_accuracy": mca}
    return scores, confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))


def predictions_csv(dataset, idx, predicted: list[str], score_cols: list[str], scores: np.ndarray):
    """The writer (`fne.cache.fs.replace_file` / `replace_files`) of the predictions CSV that
    `fne predict` and `fne train` write: path, predicted, score_<class>..., true (when DATA has
    labels); one row per image `idx[j]` of `dataset`, with `predicted[j]` and `scores[j]`."""
    from fne.cache.fs import csv_writer

    labels = dataset.labels
    return csv_writer(["path", "predicted", *score_cols] + (["true"] if labels else []),
                      ([dataset.ids[i], predicted[j], *(f"{v:.6g}" for v in scores[j])]
                       + ([labels[i]] if labels else []) for j, i in enumerate(idx)))


def provenance() -> dict:
    """Where and when a result was measured."""
    return {
        "machine": f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'})",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
