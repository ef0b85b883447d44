"""Embeddings as scikit-learn transformers, so they sit in a Pipeline in front of a head.

`FullNetworkEmbedding` is Garcia-Gasulla et al. 2018: per-feature standardisation with
training-set statistics, then discretisation to {-1, 0, 1}. The baselines use sklearn's
`Normalizer` (instance-wise L2), as `L2Normalizer`: every row but an all-zero one scaled to norm 1,
however small; `make_transform` picks one for a feature spec.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.preprocessing import Normalizer
from sklearn.utils.validation import check_is_fitted, validate_data

_FLOATS = [np.float32, np.float64, np.float16]  # kept as given; anything else becomes float64


class FullNetworkEmbedding(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Standardise each feature with training statistics, then map to {-1, 0, 1} (int8).

    A value above `high` becomes 1, below `low` becomes -1, anything in [low, high] becomes 0.
    Features with zero standard deviation on the training rows carry no information: 0.

    Parameters
    ----------
    low, high : float
        The thresholds on the standardised values (the paper's -0.25 and 0.15); low <= high.
    chunk : int
        Rows standardised at a time (memory stays flat in the number of rows).
    """

    def __init__(self, low: float = -0.25, high: float = 0.15, chunk: int = 4096):
        self.low = low
        self.high = high
        self.chunk = chunk

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = []  # the output is int8 whatever the input
        return tags

    def _check_params(self) -> None:
        if not (isinstance(self.chunk, numbers.Integral) and self.chunk >= 1):
            raise ValueError(f"chunk must be a positive integer, got {self.chunk!r}")
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")

    def fit(self, X, y=None):
        """Learn each feature's mean and (population) standard deviation from the rows of `X`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training rows (float16/32/64 kept as given, other dtypes read as float64).
        y : None
            Ignored (a Pipeline passes it).

        Returns
        -------
        FullNetworkEmbedding
            self, with ``mean_``, ``std_``, ``n_samples_seen_`` and ``n_features_in_``.
        """
        self._check_params()
        X = validate_data(self, X, dtype=_FLOATS, reset=True)
        # Two passes in float64 by chunks: exact population statistics, flat memory.
        n = X.shape[0]
        total = np.zeros(X.shape[1])
        for s in range(0, n, self.chunk):
            total += X[s:s + self.chunk].sum(axis=0, dtype=np.float64)
        self.mean_ = total / n
        sq = np.zeros(X.shape[1])
        for s in range(0, n, self.chunk):
            sq += ((X[s:s + self.chunk] - self.mean_) ** 2).sum(axis=0)
        self.std_ = np.sqrt(sq / n)
        self.n_samples_seen_, self._m2 = n, sq
        return self

    def partial_fit(self, X, y=None):
        """Accumulate the statistics chunk by chunk (Chan et al.'s pairwise update), for rows
        streamed from disk; after the last chunk they equal `fit`'s on all the rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            One chunk of training rows (the same features as the earlier chunks).
        y : None
            Ignored.

        Returns
        -------
        FullNetworkEmbedding
            self.
        """
        self._check_params()
        first = not hasattr(self, "n_samples_seen_")
        X = validate_data(self, X, dtype=_FLOATS, reset=first).astype(np.float64, copy=False)
        n_b, mean_b = len(X), X.mean(axis=0)
        m2_b = ((X - mean_b) ** 2).sum(axis=0)
        if first:
            self.n_samples_seen_, self.mean_, self._m2 = n_b, mean_b, m2_b
        else:
            n_a, delta = self.n_samples_seen_, mean_b - self.mean_
            n = n_a + n_b
            self.mean_ = self.mean_ + delta * n_b / n
            self._m2 = self._m2 + m2_b + delta**2 * n_a * n_b / n
            self.n_samples_seen_ = n
        self.std_ = np.sqrt(self._m2 / self.n_samples_seen_)
        return self

    def _z(self, X: np.ndarray) -> np.ndarray:
        safe = np.where(self.std_ > 0, self.std_, 1.0)
        z = (X - self.mean_) / safe
        z[:, self.std_ == 0] = 0.0
        return z

    def transform(self, X) -> np.ndarray:
        """Each standardised value against `low` and `high`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Rows with the features the embedding was fitted on (a ValueError says when not).

        Returns
        -------
        ndarray of shape (n_samples, n_features_in_), int8
            1 above `high`, -1 below `low`, 0 in between (and for features that did not vary).
        """
        check_is_fitted(self, "mean_")
        self._check_params()
        X = validate_data(self, X, dtype=_FLOATS, reset=False)
        out = np.empty((len(X), len(self.mean_)), dtype=np.int8)
        for s in range(0, len(X), self.chunk):
            z = self._z(X[s:s + self.chunk])
            out[s:s + self.chunk] = (z > self.high).astype(np.int8) - (z < self.low).astype(np.int8)
        return out


class L2Normalizer(Normalizer):
    """scikit-learn's `Normalizer` (instance-wise L2), which leaves a row of norm below ten machine
    epsilons as it is (1.2e-6 in float32): random weights' last-layer rows (norms ~1e-7) reached
    the head unnormalised, every row almost the same, and it called every image one class. Here
    such a row is scaled to norm 1 too (in float64); only an all-zero row stays zero, and every
    other row is scikit-learn's.

    Parameters
    ----------
    norm : str, default "l2"
        As `Normalizer`'s; the rows of small norm are rescaled for ``"l2"`` only.
    copy : bool, default True
        As `Normalizer`'s.
    """

    def transform(self, X, copy=None):
        """`Normalizer.transform`, then rows of norm in (0, 10 eps) scaled to norm 1 in float64.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            The rows.
        copy : bool, optional
            As `Normalizer.transform`'s.

        Returns
        -------
        ndarray or sparse matrix
            The rows, each of norm 1 (an all-zero row stays zero), in X's float dtype.
        """
        out = super().transform(X, copy=copy)
        if self.norm != "l2" or not isinstance(out, np.ndarray) or not len(out):
            return out
        norms = np.linalg.norm(out.astype(np.float64), axis=1)
        small = (norms > 0) & (norms < 10 * np.finfo(out.dtype).eps)
        if small.any():
            out[small] = out[small].astype(np.float64) / norms[small, None]
        return out


def make_transform(kind: str):
    """`fne` -> FullNetworkEmbedding; `l2` -> instance-wise L2 normalisation (`L2Normalizer`)."""
    return FullNetworkEmbedding() if kind == "fne" else L2Normalizer(norm="l2")
