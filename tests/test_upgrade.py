"""What an upgrade of fne keeps of a cache and of run folders an earlier fne wrote.

The fixtures are written as those fne versions wrote them (checked against stores and runs made by
commits 17e8346 and 8e45dec of 25 and 28 Nov): a store of the pixels fne made before its
preprocessing key gained `-tv` (format 1, preprocessing `center224`), a model.joblib recording that
preprocessing, and one pickled with a class from a module fne has since moved (`fne.embedding`).
"""

from __future__ import annotations

import shutil
import sys
import types

import joblib
import numpy as np
import pytest

from fne.cache.spec import StoreSpec
from fne.cache.store import Store, StoreKey, list_stores
from fne.cache.verbs import cache_info
from fne.cli import main
from fne.data.datasets import load_dataset
from fne.errors import FneError
from fne.extraction.extract import extract
from fne.linear.fit import fit
from fne.linear.predict import predict

from .conftest import FAST
from .test_store_layout import _write_format1


@pytest.fixture
def earlier_cache(digits_folder, tmp_path):
    """A cache holding digits_folder's rows in a store of an earlier fne's pixels (no `-tv`)."""
    cache = tmp_path / "cache"
    now = StoreSpec(**FAST, cache=str(cache)).open()  # makes nothing: the meta of today's store
    m = now.meta
    assert m["preprocess"] == "center224-tv"
    key = StoreKey(m["arch"], m["weights"], "center224", m["precision"], m["dtype"])
    old = Store(cache / key.dirname, {**m, "preprocess": "center224"})
    (old.path / "parts").mkdir(parents=True)
    keys = load_dataset(digits_folder).keys()
    rng = np.random.default_rng(0)
    _write_format1(old, keys, {t: rng.random((len(keys), 1, c), dtype=np.float32) for t, c in old.taps})
    return cache, old.path


def test_extract_says_why_it_computes_rows_an_earlier_fnes_store_holds(digits_folder, earlier_cache, capsys):
    """`fne extract` on a cache of an fne before 28 Nov computed its rows again in silence, and
    `fne cache info` did not say that the earlier store's rows are read no more."""
    cache, old = earlier_cache
    before = (old / "store.json").read_text()
    with pytest.warns(UserWarning, match=rf"24 images of data had no row in store \S+center224-tv\S*; store "
                                         rf"{old.name} holds 24 of them, made by an earlier fne .*preprocessing "
                                         rf"center224, now center224-tv: other pixels.*`fne cache rm {old.name}`"):
        r = extract(digits_folder, cache=str(cache), batch_size=8, progress=False, **FAST)
    assert r.n_computed == 24 and r.n_cached == 0
    assert (old / "store.json").read_text() == before  # the earlier store is left as it was
    assert sorted(s.meta["preprocess"] for s in list_stores(cache)) == ["center224", "center224-tv"]
    capsys.readouterr()
    assert main(["cache", "info", "--cache", str(cache)]) == 0
    said = capsys.readouterr().out
    assert said.count("rows of an earlier fne's pixels") == 1
    assert (f"  rows of an earlier fne's pixels (preprocessing center224): fne fit, predict and export no longer "
            f"read them; `fne cache rm {old.name}` frees them\n") in said
    assert [s.earlier for s in cache_info(cache=str(cache)).stores] == [False, True]  # -tv's name sorts first


def test_fit_on_rows_only_an_earlier_fnes_store_holds_names_it(digits_folder, earlier_cache, tmp_path):
    cache, old = earlier_cache
    with pytest.raises(FneError, match=rf"24 of 24 images of .* are not in the cache \S+center224-tv\S*; store "
                                       rf"{old.name} holds 24 of them, made by an earlier fne"):
        fit(digits_folder, out=tmp_path / "run", cache=str(cache), splits=1, **FAST)


def test_predict_refuses_a_model_fitted_on_an_earlier_fnes_pixels(digits_folder, warm_cache, tmp_path):
    """A model fitted before 28 Nov (model.joblib's store: preprocess center224) was applied to the
    rows of today's pixels (center224-tv), which it was never fitted on."""
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    fit(digits_folder, features="last", splits=1, out=tmp_path / "run", cache=str(cache), progress=False, **FAST)
    with pytest.warns(UserWarning, match="was fitted on"):  # the images it was fitted on: it predicts today
        assert predict(tmp_path / "run", digits_folder, tmp_path / "p.csv", progress=False)["n"] == 24
    model = joblib.load(tmp_path / "run" / "model.joblib")
    assert model["store"]["preprocess"] == "center224-tv"
    model["store"]["preprocess"] = "center224"
    joblib.dump(model, tmp_path / "run" / "model.joblib")
    with pytest.raises(FneError, match=r"run was fitted on rows of preprocessing center224, an earlier fne's pixels, "
                                       r"which this fne no longer makes \(center224-tv now\); .*fit it again"):
        predict(tmp_path / "run", digits_folder, tmp_path / "q.csv", progress=False)
    assert not (tmp_path / "q.csv").exists()


def test_a_model_pickled_with_a_module_fne_moved_is_named_in_one_line(digits_folder, tmp_path, monkeypatch):
    """fne 25 Nov pickled fne.embedding.FullNetworkEmbedding (now fne.linear.embedding)."""
    gone = types.ModuleType("fne.embedding")
    cls = type("FullNetworkEmbedding", (), {"__module__": "fne.embedding"})
    gone.FullNetworkEmbedding = cls
    monkeypatch.setitem(sys.modules, "fne.embedding", gone)
    (tmp_path / "run").mkdir()
    joblib.dump({"format": 2, "embedding": cls()}, tmp_path / "run" / "model.joblib")
    monkeypatch.delitem(sys.modules, "fne.embedding")
    with pytest.raises(FneError, match=r"run/model\.joblib: written by an earlier fne, whose module fne\.embedding "
                                       r"this one no longer has; refit it with `fne fit`$"):
        predict(tmp_path / "run", digits_folder, tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()


def test_a_report_of_an_earlier_fnes_fits_beside_todays_says_their_pixels_differ(tmp_path):
    """`fne run` of a pipeline an earlier fne had run, with a method added, tabulated the old
    steps' fits (rows of center224 pixels) beside the new one (center224-tv) as if alike."""
    from .test_report import _verdict_report, fake_metrics

    ds, md, _ = _verdict_report(tmp_path / "mixed", {
        "fne": fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, preprocess="center224"),
        "last": fake_metrics("last+svm", 0.8, 0.01, 0.8, 0.01, preprocess="center224"),
        "block15": fake_metrics("block15+svm", 0.85, 0.01, 0.85, 0.01, preprocess="center224-tv")})
    assert ds["protocol_note"] == (
        "The rows' features were not all computed from the same pixels (preprocessing center224 (fne+svm, "
        "last+svm); preprocessing center224-tv (block15+svm)): their differences mix the methods with the "
        "preprocessing (one without -tv is an earlier fne's: fit that run again for today's pixels).")
    assert f"**Note:** {ds['protocol_note']}" in md
    # two backbones, each of its own input size: nothing to say
    ds, _, _ = _verdict_report(tmp_path / "two", {
        "vgg": fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, preprocess="center224-tv"),
        "inc": fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01, preprocess="center299-tv", arch="inception_v3")})
    assert ds["protocol_note"] is None
