from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC

from fne.linear.embedding import FullNetworkEmbedding, L2Normalizer, make_transform


def test_discretization_boundaries():
    # column 0 has mean 0 and population std 1 on these rows: z equals the value
    base = np.array([-1.0, 1.0, -1.0, 1.0])
    X = np.stack([base, base * 2 + 5, np.full(4, 3.0)], axis=1)
    fne = FullNetworkEmbedding().fit(X)
    assert np.allclose(fne.mean_, [0, 5, 3]) and np.allclose(fne.std_, [1, 2, 0])
    z = np.array([0.15, 0.1500001, -0.25, -0.2500001, 0.0, 2.0, -2.0])
    probe = np.stack([z, np.full_like(z, 5.0), np.full_like(z, 99.0)], axis=1)
    out = fne.transform(probe)
    assert out.dtype == np.int8
    assert out[:, 0].tolist() == [0, 1, 0, -1, 0, 1, -1]
    assert (out[:, 2] == 0).all()  # zero-std feature carries nothing, whatever the value


def test_thresholds_are_configurable():
    X = np.array([[-1.0], [1.0]])
    out = FullNetworkEmbedding(low=-0.5, high=0.5).fit(X).transform(np.array([[0.4], [0.6], [-0.6]]))
    assert out[:, 0].tolist() == [0, 1, -1]
    with pytest.raises(ValueError, match="low"):
        FullNetworkEmbedding(low=1.0, high=0.0).fit(X)


def test_statistics_come_from_training_rows_only():
    rng = np.random.default_rng(0)
    train, test = rng.normal(0, 1, (50, 4)), rng.normal(10, 5, (30, 4))
    fne = FullNetworkEmbedding().fit(train)
    assert np.allclose(fne.mean_, train.mean(0)) and np.allclose(fne.std_, train.std(0))  # population std
    out = fne.transform(test)
    assert np.allclose(fne.mean_, train.mean(0))  # transform never refits
    assert (out == 1).mean() > 0.9  # test rows far above the training mean


def test_partial_fit_matches_fit_and_chunks_do_not_matter():
    rng = np.random.default_rng(1)
    X = rng.normal(3, 2, (103, 6))
    full = FullNetworkEmbedding().fit(X)
    streamed = FullNetworkEmbedding()
    for s in range(0, 103, 17):
        streamed.partial_fit(X[s:s + 17])
    assert np.allclose(full.mean_, streamed.mean_) and np.allclose(full.std_, streamed.std_)
    assert np.array_equal(FullNetworkEmbedding(chunk=7).fit(X).transform(X), full.transform(X))


def test_works_in_a_sklearn_pipeline():
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(0, 1, (40, 8)), rng.normal(1.5, 1, (40, 8))])
    y = np.repeat([0, 1], 40)
    pipe = make_pipeline(clone(FullNetworkEmbedding(high=0.3)), LinearSVC())
    assert pipe.fit(X, y).score(X, y) > 0.8
    assert pipe.get_params()["fullnetworkembedding__high"] == 0.3


def test_streamed_statistics_and_parameters_are_checked():
    rng = np.random.default_rng(3)
    emb = FullNetworkEmbedding().partial_fit(rng.normal(size=(10, 4)))
    with pytest.raises(ValueError, match="4 features"):
        emb.partial_fit(rng.normal(size=(10, 5)))
    with pytest.raises(ValueError, match="NaN"):
        emb.partial_fit(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="2D array"):
        FullNetworkEmbedding().partial_fit(np.ones(4))
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        FullNetworkEmbedding(chunk=0).fit(rng.normal(size=(10, 4)))
    names = FullNetworkEmbedding().fit(rng.normal(size=(10, 2))).get_feature_names_out(["a", "b"])
    assert list(names) == ["a", "b"]


def test_thresholds_are_searched_by_grid_search_and_the_fit_pickles():
    import pickle

    from sklearn.model_selection import GridSearchCV

    rng = np.random.default_rng(5)
    X = np.concatenate([rng.normal(0, 1, (30, 6)), rng.normal(1, 1, (30, 6))]).astype(np.float32)
    y = np.repeat(["a", "b"], 30)
    pipe = make_pipeline(FullNetworkEmbedding(), LinearSVC())
    grid = {"fullnetworkembedding__low": [-0.5, -0.25], "fullnetworkembedding__high": [0.15, 0.5]}
    search = GridSearchCV(pipe, grid, cv=3).fit(X, y)
    assert len(search.cv_results_["params"]) == 4 and search.best_score_ > 0.6
    again = pickle.loads(pickle.dumps(search.best_estimator_))
    assert np.array_equal(again.predict(X), search.predict(X))
    assert np.array_equal(again[0].mean_, search.best_estimator_[0].mean_)


def test_l2_rows_of_tiny_norm_are_normalised_too():
    """scikit-learn's Normalizer leaves a float32 row of norm below 1.2e-6 as it is: random
    weights' last layer (norms ~1e-7) reached the head unnormalised, and `fne fit --features last`
    called every image one class. Every row but an all-zero one now has norm 1; a row of ordinary
    norm is scikit-learn's, bit for bit."""
    from sklearn.preprocessing import Normalizer

    rng = np.random.default_rng(0)
    X = rng.random((6, 40), dtype=np.float32)
    X[5] = 0
    l2 = make_transform("l2")
    assert isinstance(l2, L2Normalizer) and isinstance(l2, Normalizer)
    big = l2.fit(X).transform(X)
    assert big.dtype == np.float32 and np.array_equal(big, Normalizer().fit(X).transform(X))
    for dtype in (np.float32, np.float16):
        tiny = (X * 1e-8).astype(np.float32).astype(dtype) if dtype == np.float32 else (X * 1e-3).astype(dtype)
        assert not np.allclose(Normalizer().fit(tiny).transform(tiny)[:5], big[:5], atol=1e-2)  # sklearn's: as they were
        out = l2.transform(tiny)
        assert out.dtype == dtype and np.allclose(out[:5], big[:5], rtol=1e-2, atol=2e-3) and not out[5].any()


def test_values_are_standardised_about_the_training_mean_and_low_may_equal_high():
    """Worked by hand: training values 8 and 12 have mean 10 and population std 2, so a value v
    is z = (v - 10) / 2 against -0.25 and 0.15 (values exact in binary); 3 training rows in chunks of 2 leave one row in a
    last chunk, and every row counts (0, 0, 3: mean 1, population std sqrt(2)). low == high is a
    valid setting: the sign of z."""
    fne = FullNetworkEmbedding().fit(np.array([[8.0], [12.0]]))
    probe = np.array([[10.25], [10.5], [9.5], [9.25], [10.0], [20.0], [0.0]])  # z: 0.125, 0.25, -0.25, ...
    assert fne.transform(probe)[:, 0].tolist() == [0, 1, 0, -1, 0, 1, -1]
    chunked = FullNetworkEmbedding(chunk=2).fit(np.array([[0.0], [0.0], [3.0]]))
    assert np.allclose(chunked.mean_, [1.0]) and np.allclose(chunked.std_, [np.sqrt(2.0)])
    sign = FullNetworkEmbedding(low=0.0, high=0.0).fit(np.array([[-1.0], [1.0]]))
    assert sign.transform(np.array([[-0.5], [0.0], [0.5]]))[:, 0].tolist() == [-1, 0, 1]
