from __future__ import annotations

import csv
import json
import re
import shutil
import warnings

import h5py
import joblib
import numpy as np
import pytest

from fne.cache.store import list_stores
from fne.cli import main
from fne.data.datasets import load_dataset
from fne.errors import FneError
from fne.linear.export import export
from fne.linear.fit import fit

from .conftest import FAST, write_digits

STORE = dict(arch=FAST["arch"], weights="random", precision="fp32", storage_dtype="float32")


def load_features(store, dataset, layers) -> np.ndarray:
    """Every row at once, (n, views, D) float32: what fit itself must never need."""
    arrays = store.read(dataset.keys(), layers)
    return np.concatenate([arrays[la] for la in layers], axis=2)


def test_fit_writes_metrics_and_model(digits_folder, warm_cache, tmp_path):
    m = fit(digits_folder, features="fne", head="svm", splits=3, out=tmp_path / "run",
            cache=str(warm_cache), **STORE)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == m
    for key in ("accuracy", "mean_class_accuracy", "accuracy_std", "mean_class_accuracy_std", "n_train",
                "n_test", "classes", "arch", "weights", "features", "head", "C", "fit_seconds"):
        assert key in m
    assert m["n_splits"] == 3 and len(m["splits"]) == 3 and m["n_train"] + m["n_test"] == 24
    assert np.isclose(m["accuracy"], np.mean([s["accuracy"] for s in m["splits"]]))
    assert 0 <= m["mean_class_accuracy"] <= 1 and m["C"] == 1.0 and m["layers"][-1] == "head"
    assert np.array(m["confusion"]).sum() == 3 * m["n_test"]
    model = joblib.load(tmp_path / "run" / "model.joblib")
    assert model["classes"] == ["0", "1", "2", "3"] and model["thresholds"] == {"low": -0.25, "high": 0.15}
    assert model["pipeline"].named_steps["embed"].mean_.shape == (1808 + 1280,)


def test_standardisation_uses_training_split_only(digits_split, tmp_path):
    cache = str(tmp_path / "cache")
    fit(digits_split, out=tmp_path / "run", cache=cache, extract_missing=True, **STORE)
    d = load_dataset(digits_split)
    (store,) = list_stores(cache)
    X = load_features(store, d, [t for t, _ in store.taps])[:, 0]
    train = np.array(d.splits) == "train"
    embed = joblib.load(tmp_path / "run" / "model.joblib")["pipeline"].named_steps["embed"]
    assert np.allclose(embed.mean_, X[train].mean(0), rtol=1e-6)
    assert not np.allclose(embed.mean_, X.mean(0), rtol=1e-6)


def test_progress_false_extracts_missing_rows_without_a_line(digits_split, tmp_path, capsys):
    """``progress=False`` from Python: the rows extracted on the way print nothing (no bar, no
    "extracting N images" line); `fne fit --extract --no-progress` keeps that line."""
    capsys.readouterr()
    fit(digits_split, out=tmp_path / "py", cache=str(tmp_path / "py-cache"), extract_missing=True, progress=False,
        image_size=32, **STORE)  # the size changes no line
    assert capsys.readouterr() == ("", "")
    assert main(["fit", str(digits_split), "--out", str(tmp_path / "cli"), "--cache", str(tmp_path / "cli-cache"),
                 "--extract", "--no-progress", "--arch", STORE["arch"], "--weights", "random", "--precision", "fp32",
                 "--storage-dtype", "float32", "--image-size", "32"]) == 0
    assert "fne fit: extracting 27 images missing from the cache" in capsys.readouterr().err


def test_predict_round_trips_the_saved_model(digits_split, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    m = fit(digits_split, features="last", head="logreg", out=tmp_path / "run", cache=cache,
            extract_missing=True, **STORE)
    assert main(["predict", str(tmp_path / "run"), str(digits_split), "--out", str(tmp_path / "p.csv"),
                 "--cache", cache]) == 0
    # a predefined split's head learnt from its train part only: 18 of DATA's 27 images
    assert "18 of 27 images of DATA are images" in capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert len(rows) == 27
    assert list(rows[0]) == ["path", "predicted", "score_0", "score_1", "score_2", "true"]
    test_rows = [r for r in rows if r["path"].startswith("test/")]
    acc = np.mean([r["predicted"] == r["true"] for r in test_rows])
    assert np.isclose(acc, m["accuracy"])  # same model, same test images
    probs = np.array([[float(r[f"score_{c}"]) for c in "012"] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)  # logreg scores are probabilities
    assert all(r["predicted"] == "012"[int(np.argmax(p))] for r, p in zip(rows, probs))
    flat = tmp_path / "new"  # unlabelled new images: a flat folder
    flat.mkdir()
    for f in sorted(digits_split.rglob("*.png"))[:2]:
        (flat / f.name).write_bytes(f.read_bytes())
    assert main(["predict", str(tmp_path / "run"), str(flat), "--out", str(tmp_path / "q.csv"),
                 "--cache", cache]) == 0
    new = list(csv.DictReader((tmp_path / "q.csv").read_text().splitlines()))
    assert len(new) == 2 and "true" not in new[0] and new[0]["predicted"] in "012"
    # the model file given for its folder is that folder; a folder that does not exist, or another
    # file, is one line naming it
    assert main(["predict", str(tmp_path / "run" / "model.joblib"), str(flat), "--out", str(tmp_path / "q2.csv"),
                 "--cache", cache]) == 0
    assert (tmp_path / "q2.csv").read_text() == (tmp_path / "q.csv").read_text()
    capsys.readouterr()
    for run_dir, said in ((tmp_path / "rnu", "run folder {} does not exist"),
                          (tmp_path / "q.csv", "{} is a file: give the run folder that holds model.joblib")):
        assert main(["predict", str(run_dir), str(flat), "--out", str(tmp_path / "x.csv"), "--cache", cache]) == 2
        assert said.format(run_dir) in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    # Random weights are drawn where they run: a model fitted on CUDA's draw, predicted on the CPU's
    saved = joblib.load(tmp_path / "run" / "model.joblib")
    saved["store"]["weights_fingerprint"] = "random-seed0-cuda"
    joblib.dump(saved, tmp_path / "run" / "model.joblib")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(flat), "--out", str(tmp_path / "r.csv"),
                 "--cache", cache, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "fitted on random weights drawn on cuda (random-seed0-cuda)" in err and err.endswith("--device cuda")
    saved["store"]["weights_fingerprint"] = "random-seed0-cuda132x2048"  # the GPU's geometry decides the draw
    joblib.dump(saved, tmp_path / "run" / "model.joblib")
    assert main(["predict", str(tmp_path / "run"), str(flat), "--out", str(tmp_path / "r.csv"),
                 "--cache", cache, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert ("fitted on random weights drawn on a cuda GPU of 132 SMs x 2048 threads (random-seed0-cuda132x2048)"
            in err) and err.endswith("--device cuda on such a GPU")


def test_predict_says_how_many_images_the_head_was_fitted_on(digits_folder, warm_cache, tmp_path, capsys):
    """A head saved by fit on random splits learnt from every image of DATA: predict over DATA again
    gives a training accuracy, and says so (by content key: copies under other names count too)."""
    from fne.linear.predict import predict

    cache = tmp_path / "cache"  # predict extracts the 8 new images: into a copy, not the session's warm cache
    shutil.copytree(warm_cache, cache)
    fit(digits_folder, features="last", head="svm", splits=2, out=tmp_path / "run", cache=str(cache), **STORE)
    more = write_digits(tmp_path / "more", per_class=8, classes=4)  # the 24 images it learnt from, and 8 new ones
    with pytest.warns(UserWarning, match=r"24 of 32 images of DATA are images .*run was fitted on .*not a test accuracy"):
        r = predict(tmp_path / "run", more, tmp_path / "p.csv", cache=str(cache), progress=False)
    assert r["n_fitted_on"] == 24 and r["n"] == 32
    new = tmp_path / "new"  # only the 8 new ones: nothing to say
    for f in more.rglob("*.png"):
        if not (digits_folder / f.parent.name / f.name).exists():
            (new / f.parent.name).mkdir(parents=True, exist_ok=True)
            (new / f.parent.name / f.name).write_bytes(f.read_bytes())
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(new), "--out", str(tmp_path / "q.csv"),
                 "--cache", str(cache)]) == 0
    assert "fitted on" not in capsys.readouterr().err
    saved = joblib.load(tmp_path / "run" / "model.joblib")
    fitted = saved["fitted_keys"]  # 8 bytes an image, not a 32-character string
    assert fitted.dtype == np.uint64 and len(fitted) == 24
    saved["fitted_keys"] = sorted(set(load_dataset(digits_folder).keys()))  # as fit saved them before 29 Nov 16:44
    joblib.dump(saved, tmp_path / "run" / "model.joblib")
    with pytest.warns(UserWarning, match=r"24 of 32 images of DATA are images"):
        assert predict(tmp_path / "run", more, tmp_path / "p.csv", cache=str(cache), progress=False)["n_fitted_on"] == 24


def test_predict_counts_images_it_was_fitted_on_among_those_the_accuracy_is_over(digits_folder, warm_cache,
                                                                               tmp_path, recwarn):
    """The images it was fitted on filed under a class the model does not know are not in the
    accuracy: the warning said "the accuracy counts them" also where there was no accuracy at all;
    it now counts those the accuracy is over, and says nothing where there are none."""
    from fne.linear.predict import predict

    fit(digits_folder, features="last", head="svm", splits=2, out=tmp_path / "run", cache=str(warm_cache), **STORE)
    renamed = tmp_path / "renamed"  # the same 24 images: classes 0 and 1 as they were, 2 and 3 as x and y
    shutil.copytree(digits_folder, renamed)
    for old, name in (("2", "x"), ("3", "y")):
        (renamed / old).rename(renamed / name)
    r = predict(tmp_path / "run", renamed, tmp_path / "p.csv", cache=str(warm_cache), progress=False)
    said = [str(w.message) for w in recwarn]
    assert (r["n_fitted_on"], r["n_scored"], r["n"]) == (24, 12, 24)
    assert any(m.startswith("12 of 12 images of DATA whose label the model knows are images ") for m in said)
    for old, name in (("0", "v"), ("1", "w")):
        (renamed / old).rename(renamed / name)
    recwarn.clear()
    r = predict(tmp_path / "run", renamed, tmp_path / "q.csv", cache=str(warm_cache), progress=False)
    assert (r["accuracy"], r["n_scored"], r["n_fitted_on"]) == (None, 0, 24)
    assert not any("fitted on (the same bytes)" in str(w.message) for w in recwarn)


def test_predict_names_the_cache_it_extracts_into_and_the_one_the_model_was_fitted_from(
        digits_folder, warm_cache, tmp_path, monkeypatch, capsys):
    """`fne predict` extracts missing rows into the current cache ($FNE_CACHE here), which need not be
    the one the model was fitted from; its line said only "extracting 8 images missing from the
    cache". It names the cache and the store now, and the model's cache where it is another."""
    fitted_in, other = tmp_path / "cache", tmp_path / "other"
    shutil.copytree(warm_cache, fitted_in)
    monkeypatch.setenv("FNE_CACHE", str(fitted_in))
    fit(digits_folder, features="last", head="svm", splits=2, out=tmp_path / "run", **STORE)  # no cache given
    (store,) = list_stores(fitted_in)
    new = write_digits(tmp_path / "more", per_class=8, classes=4)
    for f in digits_folder.rglob("*.png"):  # the 8 images not in DATA
        (new / f.parent.name / f.name).unlink()
    capsys.readouterr()
    monkeypatch.setenv("FNE_CACHE", str(other))
    assert main(["predict", str(tmp_path / "run"), str(new), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    assert (f"fne predict: extracting 8 images missing from the cache {other} into its store {store.path.name}; "
            f"{tmp_path / 'run'} was fitted from rows of another cache, {fitted_in} (--cache {fitted_in} reads "
            f"that one)\n") in capsys.readouterr().err
    assert [s.path.name for s in list_stores(other)] == [store.path.name]  # the current cache, as documented
    monkeypatch.setenv("FNE_CACHE", str(fitted_in))  # the model's own cache: nothing more to say
    assert main(["predict", str(tmp_path / "run"), str(new), "--out", str(tmp_path / "q.csv"), "--no-progress"]) == 0
    assert (f"fne predict: extracting 8 images missing from the cache {fitted_in} into its store "
            f"{store.path.name}\n") in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # a cache given to fit as a relative path is the folder it named then
    fit(digits_folder, features="last", head="svm", splits=2, out="run2", cache="cache", **STORE)
    assert main(["predict", "run2", str(new), "--out", "r.csv", "--no-progress", "--cache", "third"]) == 0
    assert (f"fne predict: extracting 8 images missing from the cache third into its store {store.path.name}; run2 "
            f"was fitted from rows of another cache, {fitted_in} (--cache {fitted_in} reads that one)\n"
            ) in capsys.readouterr().err


def test_predict_of_a_run_whose_fit_cache_is_not_here_uses_the_cache_in_use(digits_folder, warm_cache, tmp_path,
                                                                            monkeypatch, capsys):
    """A run folder fitted with `--cache C`, copied to a machine without C (or C moved since): predict
    made C anew at the old path and extracted every row into it, ignoring $FNE_CACHE. It reads the
    cache in use now, and its line says that C is not here."""
    fitted_in, now = tmp_path / "cache", tmp_path / "now"
    shutil.copytree(warm_cache, fitted_in)
    fit(digits_folder, features="last", head="svm", splits=2, out=tmp_path / "run", cache=str(fitted_in), **STORE)
    (store,) = list_stores(fitted_in)
    shutil.move(fitted_in, now)  # the cache now lies elsewhere, and $FNE_CACHE names it
    monkeypatch.setenv("FNE_CACHE", str(now))
    new = write_digits(tmp_path / "more", per_class=8, classes=4)
    for f in digits_folder.rglob("*.png"):  # the 8 images not in DATA
        (new / f.parent.name / f.name).unlink()
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(new), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    assert (f"fne predict: extracting 8 images missing from the cache {now} into its store {store.path.name}; "
            f"{tmp_path / 'run'} was fitted from rows of another cache, {fitted_in}, which is not here\n"
            ) in capsys.readouterr().err
    assert not fitted_in.exists() and len((tmp_path / "p.csv").read_text().splitlines()) == 9


def test_predict_and_export_out_that_is_a_run_folders_own_file_are_refused(digits_folder, warm_cache, tmp_path,
                                                                            capsys):
    """`fne predict RUN new --out RUN/metrics.json` (or its predictions.csv, its model) would have
    replaced the run's own file with predictions; `fne export --out RUN/model.joblib` its model
    with HDF5. Both are one line, before any work, the run left as it was."""
    run = tmp_path / "run"
    fit(digits_folder, features="last", head="svm", splits=1, out=run, cache=str(warm_cache), progress=False,
        **STORE)
    before = {f.name: f.read_bytes() for f in run.iterdir()}
    for name in ("metrics.json", "predictions.csv", "model.joblib"):
        assert main(["predict", str(run), str(digits_folder), "--out", str(run / name), "--cache",
                     str(warm_cache), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"fne predict: error: --out '{run / name}': is the {name} of the run in {run}; writing "
                       f"predictions there would replace the run's own file: give another name")
    assert main(["export", str(digits_folder), "--out", str(run / "model.joblib"), "--cache", str(warm_cache),
                 *CLI_FAST]) == 2
    assert "fne export writes HDF5, not .joblib" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before
    # another name in the run folder, or predictions.csv in a folder that holds no run, is written
    assert main(["predict", str(run), str(digits_folder), "--out", str(run / "new.csv"), "--cache",
                 str(warm_cache), "--no-progress"]) == 0
    assert main(["predict", str(run), str(digits_folder), "--out", str(tmp_path / "p" / "predictions.csv"),
                 "--cache", str(warm_cache), "--no-progress"]) == 0
    assert (run / "new.csv").read_bytes() == (tmp_path / "p" / "predictions.csv").read_bytes()
    (tmp_path / "p" / "model.pt").write_bytes(b"a network of one's own")  # a model beside it: still no run
    assert main(["predict", str(run), str(digits_folder), "--out", str(tmp_path / "p" / "predictions.csv"),
                 "--cache", str(warm_cache), "--no-progress"]) == 0


def test_fit_predict_and_export_on_cached_rows_import_no_torch(digits_folder, warm_cache, tmp_path):
    """A head fitted on rows already in the cache, and its predictions for those images, need no
    network: `fne fit`, `fne predict` and `fne export` then import no torch (1.0 s of a 2.4 s fit on
    the 2-core development machine, 4.5 s on the H200 machine), and still write what they write."""
    import subprocess
    import sys

    run, cache, data = str(tmp_path / "run"), str(warm_cache), str(digits_folder)
    fit_args = ["fit", data, "--out", run, "--cache", cache, "--arch", FAST["arch"], "--weights", "random",
                "--device", "cpu", "--precision", "fp32", "--storage-dtype", "float32", "--splits", "2",
                "--no-progress"]
    predict_args = ["predict", run, data, "--out", str(tmp_path / "p.csv"), "--cache", cache, "--device", "cpu"]
    export_args = ["export", data, "--features", "fne", "--out", str(tmp_path / "e.h5"), *fit_args[4:-3]]
    code = ("import sys; from fne.cli import main; "
            f"print(main({fit_args!r}), main({predict_args!r}), main({export_args!r}), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-4:] == ["0", "0", "0", "False"], out.stderr
    assert (tmp_path / "e.h5").stat().st_size > 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_splits"] == 2
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 24


def test_fit_never_runs_the_network_silently(digits_folder, tmp_path, capsys):
    args = ["fit", str(digits_folder), "--arch", "efficientnet_lite0", "--weights", "random",
            "--precision", "fp32", "--cache", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the 24 images" in err and "a folder that does not exist" in err and "fne extract" in err and "--extract" in err
    assert not (tmp_path / "r" / "metrics.json").exists()
    (tmp_path / "empty").mkdir()  # a cache, holding no store
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "24 of 24 images" in err and "fne extract" in err and "--extract" in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_auto_C_and_train_per_class(digits_folder, warm_cache, tmp_path):
    m = fit(digits_folder, features="last", head="logreg", C="auto", train_per_class=3, splits=2,
            out=tmp_path / "a", cache=str(warm_cache), **STORE)
    assert m["n_train"] == 12 and m["n_test"] == 12
    from fne.linear.heads import C_GRID

    assert all(c in C_GRID for c in np.atleast_1d(m["C"]))


def test_fne_over_chosen_layers(digits_folder, warm_cache, tmp_path):
    """`--features fne:L1,L2`: the Full-Network Embedding of those layers only."""
    from fne.backbones import registry
    from fne.linear.embedding import FullNetworkEmbedding

    m = fit(digits_folder, features="fne:block3,head", splits=1, out=tmp_path / "r", cache=str(warm_cache), **STORE)
    assert (m["features"], m["layers"], m["embedding"]) == ("fne:block3,head", ["block3", "head"], "fne")
    embed = joblib.load(tmp_path / "r" / "model.joblib")["pipeline"].named_steps["embed"]
    width = {t.name: t.channels for t in registry.get(STORE["arch"]).taps}
    assert isinstance(embed, FullNetworkEmbedding) and embed.n_features_in_ == width["block3"] + width["head"]


@pytest.mark.parametrize("kwargs,msg", [
    (dict(features="fc6"), "has no layer 'fc6'"),
    (dict(features="lst"), r"^bad features='lst': \S+ has no layer 'lst' \(did you mean 'last'\?\); give fne, last "
                           r"\(here \w+\), fne:LAYER,… or layer names: "),
    (dict(features="fne,last"), r"^bad features='fne': the full-network embedding is no layer to list; give fne, "),
    (dict(features="Last"), r"has no layer 'Last' \(did you mean 'last'\?\)"),
    (dict(features="fne:"), r"^bad features='fne:'; give fne, last \(here head\), fne:LAYER,… or layer names: block0, "),
    (dict(C="abc"), r"^bad C='abc'; give a positive number or 'auto'$"),
    (dict(head="tree"), "unknown head='tree'"),
    (dict(C="-1"), "must be > 0"),
    (dict(train_per_class=6), r"^train_per_class=6: 4 of 4 classes have 6 or fewer images, none left to test: 0, 1, "
                              r"2, 3; give train_per_class=5 or less$"),
    (dict(test_size=1.5), "bad test_size=1.5"),
    (dict(stream_chunk=0), "stream_chunk must be >= 1"),
])
def test_bad_fit_arguments(digits_folder, warm_cache, tmp_path, kwargs, msg):
    with pytest.raises(FneError, match=msg):
        fit(digits_folder, out=tmp_path / "r", cache=str(warm_cache), **{**STORE, **kwargs})


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(splits="3"), TypeError, "splits must be an integer, not str '3'"),
    (dict(seed=1.5), TypeError, "seed must be an integer, not float 1.5"),
    (dict(splits=True), TypeError, "splits must be an integer"),
    (dict(extract_missing="no"), TypeError, "extract_missing must be True or False, not str 'no'"),
    (dict(store={"arch": "vgg16"}), TypeError, r"^store must be a fne\.cache\.spec\.StoreSpec or None, not dict"),
    (dict(C=-1), ValueError, r"bad C=-1; must be > 0"),
    (dict(C=float("nan")), ValueError, "must be > 0"),
    (dict(C=float("inf")), ValueError, "bad C=inf; must be finite"),
    (dict(seed=-1), ValueError, r"bad seed=-1: seed must be in \[0, 2\*\*32\)"),
    (dict(test_size=float("inf")), ValueError, "bad test_size=inf"),
    (dict(out=""), FneError, "out='': is empty"),
    (dict(head="tree"), ValueError, "unknown head='tree'"),
    (dict(out=None), TypeError, "out: expected a path"),
])
def test_api_keywords_of_a_wrong_type_or_value_name_the_keyword(tmp_path, kwargs, exc, msg):
    """What a scikit-learn user expects of a Python call: a TypeError or ValueError naming the
    keyword, raised before any data is read."""
    with pytest.raises(exc, match=msg):
        fit(tmp_path / "absent", **{"out": tmp_path / "r", **kwargs})


def test_fit_shows_its_progress_split_by_split_unless_told_not_to(digits_folder, warm_cache, tmp_path, capsys):
    """A log (stderr not a terminal) gets a line of the splits done and the accuracy so far; with
    progress=False (`--no-progress`) nothing."""
    m = fit(digits_folder, out=tmp_path / "r", cache=warm_cache, splits=2, **STORE)
    err = capsys.readouterr().err
    assert "fit fne+svm: 2/2 splits (" in err and f"accuracy={m['accuracy']:.4f})" in err
    fit(digits_folder, out=tmp_path / "r", cache=warm_cache, splits=2, progress=False, **STORE)
    assert "splits" not in capsys.readouterr().err


def test_api_takes_numpy_integers_and_paths(digits_folder, warm_cache, tmp_path):
    m = fit(digits_folder, out=tmp_path / "r", cache=warm_cache, splits=np.int64(1), C=1, seed=np.int32(0),
            batch_size=np.int64(8), **STORE)  # batch_size=np.int64(8) was "must be >= 1 or auto"
    assert m["n_splits"] == 1 and m["options"]["batch_size"] == 8 and type(m["options"]["batch_size"]) is int



def test_export_h5(digits_folder, warm_cache, tmp_path):
    from fne.linear.embedding import FullNetworkEmbedding

    r = export(digits_folder, features="fne", out=tmp_path / "f.h5", cache=str(warm_cache), stream_chunk=5,
               **STORE)
    assert r["n"] == 24
    (store,) = list_stores(warm_cache)
    X = load_features(store, load_dataset(digits_folder), [t for t, _ in store.taps])[:, 0]
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["layers/head"].shape == (24, 1280) and f["embedding"].shape == (24, 3088)
        assert f["embedding"].dtype == np.int8 and set(np.unique(f["embedding"][()])) <= {-1, 0, 1}
        # written in chunks of 5, in store order: every row lands at its image's position
        assert np.array_equal(f["layers/head"][()], X[:, -1280:])
        assert np.array_equal(f["embedding"][()], FullNetworkEmbedding().fit(X).transform(X))
        assert f["paths"].asstr()[0] == "0/" + sorted((digits_folder / "0").iterdir())[0].name
        assert list(f.attrs["classes"]) == ["0", "1", "2", "3"]


def test_an_interrupted_export_leaves_neither_file(digits_folder, warm_cache, tmp_path, monkeypatch):
    import fne.linear.export as ex

    def interrupted(f, dataset):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "_write_labels", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(digits_folder, features="fne", out=tmp_path / "f.h5", cache=str(warm_cache), **STORE)
    assert list(tmp_path.iterdir()) == []  # no f.h5, no .tmp-f.h5


@pytest.mark.parametrize("extra, said", [([], "nothing was written (--out is as it was); rerun the same command"),
                                          (["--extract"], "rows extracted so far are kept in the cache")])
def test_an_interrupted_fit_says_what_it_kept(tmp_path, monkeypatch, capsys, extra, said):
    """Ctrl-C in `fne fit` said "rows extracted so far are kept" though without --extract it
    extracts nothing."""
    import fne.linear.fit as fit_module

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "fit", interrupted)
    assert main(["fit", str(tmp_path), "--out", str(tmp_path / "run"), *extra]) == 130
    assert capsys.readouterr().err.strip() == f"fne fit: interrupted; {said}" + (
        "; rerun the same command to go on" if extra else "")


def test_an_unknown_train_keyword_is_named_before_any_work(tmp_path):
    """...with the declared keyword nearest to it, as a pipeline file's unknown key is."""
    from fne.training.train import train

    with pytest.raises(TypeError, match=r"unexpected keyword argument.*: epoch \(did you mean 'epochs'\?\)$"):
        train(tmp_path / "absent", "frozen", tmp_path / "run", epoch=1)
    with pytest.raises(TypeError, match=r"argument\(s\): featurs \(did you mean 'features'\?\), zzz$"):
        fit(tmp_path / "absent", tmp_path / "run", featurs="fne", zzz=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("head", ["svm", "sgd-logreg"])
def test_fit_reads_rows_chunk_by_chunk(digits_folder, warm_cache, tmp_path, store_reads, head):
    m = fit(digits_folder, features="last", head=head, splits=2, out=tmp_path / "s",
            cache=str(warm_cache), stream_chunk=5, **STORE)
    assert store_reads and max(store_reads) <= 5 and m["n_test"] == 6
    assert set(joblib.load(tmp_path / "s" / "model.joblib")["pipeline"].classes_) == {0, 1, 2, 3}


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    """300 distinct tiny images in 4 classes whose store rows are learnable but noisy.

    Rows are non-negative like post-ReLU activations: a shared profile plus a weak
    class-specific one, so L2-normalised rows hide the classes in small differences.
    """
    from PIL import Image

    from fne.cache.spec import StoreSpec

    root, cache = tmp_path_factory.mktemp("synthetic") / "data", tmp_path_factory.mktemp("synthetic-cache")
    rng = np.random.default_rng(0)
    for i in range(300):
        (root / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"c{i % 4}" / f"{i:04d}.png")
    ds = load_dataset(root)
    store = StoreSpec(**STORE, cache=str(cache)).open()
    y = ds.label_indices()
    rows = {}
    for tap, ch in store.taps:
        profile = rng.gamma(1.0, 1.0, (1, ch)) + 0.15 * rng.gamma(1.0, 1.0, (4, ch))
        rows[tap] = np.maximum(0, profile[y] + rng.normal(0, 1.0, (len(y), ch)))[:, None].astype(np.float32)
    store.commit(ds.keys(), rows)
    return root, str(cache)


@pytest.mark.parametrize("features", ["last", "fne"])
def test_sgd_heads_learn_what_batch_heads_learn(synthetic_store, tmp_path, features):
    data, cache = synthetic_store
    acc = {head: fit(data, features=features, head=head, splits=2, out=tmp_path / head, cache=cache,
                     stream_chunk=64, **STORE)["accuracy"]
           for head in ("svm", "logreg", "sgd-svm", "sgd-logreg")}
    assert acc["svm"] >= 0.9 and acc["logreg"] >= 0.9, acc  # the rows are learnable (chance: 0.25)
    assert acc["sgd-svm"] >= acc["svm"] - 0.05 and acc["sgd-logreg"] >= acc["logreg"] - 0.05, acc


# ---------------------------------------------------------- mistakes caught before the work
CLI_FAST = ["--arch", FAST["arch"], "--weights", "random", "--precision", "fp32", "--storage-dtype", "float32",
            "--workers", "0", "--no-progress"]


def _unreadable(folder) -> None:
    for i, f in enumerate(sorted(folder.glob("*.png"))):
        f.write_bytes(b"not an image %d" % i)


def test_fit_on_one_class_says_a_head_needs_two_before_extracting(tmp_path, capsys):
    from .conftest import write_digits

    data = write_digits(tmp_path / "one", per_class=4, classes=1)
    cache = tmp_path / "cache"
    assert main(["fit", str(data), "--extract", "--out", str(tmp_path / "r"), "--cache", str(cache),
                 *CLI_FAST]) == 2
    err = capsys.readouterr().err
    assert f"{data}: 1 class has readable images (class 0), of 1; a head needs at least 2 classes" in err
    assert "Traceback" not in err and not list_stores(cache)  # refused before any extraction


def test_fit_where_all_but_one_class_is_unreadable_says_so(tmp_path, capsys):
    from .conftest import write_digits

    data = write_digits(tmp_path / "d", per_class=3, classes=3)
    _unreadable(data / "1")
    _unreadable(data / "2")
    assert main(["fit", str(data), "--extract", "--out", str(tmp_path / "r"), "--cache", str(tmp_path / "c"),
                 *CLI_FAST]) == 2
    err = capsys.readouterr().err
    assert f"{data}: 1 class has readable images (class 0), of 3; a head needs at least 2 classes" in err
    assert not (tmp_path / "r").exists()
    split = write_digits(tmp_path / "s", per_class=6, classes=3, split=True)  # only the train part counts
    _unreadable(split / "train" / "0")
    _unreadable(split / "train" / "1")
    with pytest.raises(FneError, match=r"1 class has readable images in the train split \(class 2\), of 3"):
        fit(split, out=tmp_path / "r2", cache=str(tmp_path / "c"), extract_missing=True, **STORE)


def test_fit_out_that_is_a_file_is_refused_before_any_work(digits_folder, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    cache = tmp_path / "cache"
    for out, says in [(afile, f"--out '{afile}': is a file"), (afile / "run", f"{afile} is a file")]:
        assert main(["fit", str(digits_folder), "--extract", "--out", str(out), "--cache", str(cache),
                     *CLI_FAST]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert afile.read_text() == "mine" and not list_stores(cache)  # nothing extracted


def test_predict_and_export_out_that_is_a_folder_are_refused_before_any_work(digits_folder, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    # predict: the --out check comes before the run folder is even read
    assert main(["predict", str(tmp_path / "no-run"), str(digits_folder), "--out", str(runs)]) == 2
    assert f"--out '{runs}': is a folder; give the file to write" in capsys.readouterr().err
    # a name of another format (a CSV under it would mislead), or none: refused before the run is read
    for name, said in (("p.json", ", not .json"), ("preds", "")):
        assert main(["predict", str(tmp_path / "no-run"), str(digits_folder), "--out", str(tmp_path / name)]) == 2
        assert capsys.readouterr().err.strip() == (f"fne predict: error: --out '{tmp_path / name}': fne predict "
                                                   f"writes a CSV{said}: name the file .csv")
        assert not (tmp_path / name).exists()
    cache = tmp_path / "cache"
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out, says in [(runs, f"--out '{runs}': is a folder"), (afile / "f.h5", f"{afile} is a file"),
                      (tmp_path / "features.csv", f"--out '{tmp_path / 'features.csv'}': fne export writes HDF5, not "
                                                  f".csv: name the file .h5")]:  # a spreadsheet would not open it
        assert main(["export", str(digits_folder), "--extract", "--out", str(out), "--cache", str(cache),
                     *CLI_FAST]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert not list(runs.iterdir()) and afile.read_text() == "mine" and not list_stores(cache)
    assert not (tmp_path / "features.csv").exists()


def test_predict_top_k_names_each_images_best_classes_in_score_order(digits_folder, warm_cache, tmp_path, capsys):
    """`--top 3`: predicted, predicted_2, predicted_3 are the classes of the three highest scores,
    best first, and predicted is what a plain predict says; more than the model's classes is one line."""
    fit(digits_folder, features="last", head="logreg", splits=1, out=tmp_path / "run", cache=str(warm_cache),
        **STORE)
    run, cache = str(tmp_path / "run"), str(warm_cache)
    assert main(["predict", run, str(digits_folder), "--out", str(tmp_path / "p.csv"), "--cache", cache]) == 0
    assert main(["predict", run, str(digits_folder), "--out", str(tmp_path / "t.csv"), "--cache", cache,
                 "--top", "3"]) == 0
    plain, top = (list(csv.DictReader((tmp_path / f).read_text().splitlines())) for f in ("p.csv", "t.csv"))
    assert list(top[0])[:4] == ["path", "predicted", "predicted_2", "predicted_3"]
    assert list(top[0])[4:] == list(plain[0])[2:]  # the score columns and true, as without --top
    for p, t in zip(plain, top):
        scores = {k.removeprefix("score_"): float(v) for k, v in t.items() if k.startswith("score_")}
        best = sorted(scores, key=lambda c: -scores[c])[:3]
        assert [t["predicted"], t["predicted_2"], t["predicted_3"]] == best and t["predicted"] == p["predicted"]
    capsys.readouterr()
    assert main(["predict", run, str(digits_folder), "--out", str(tmp_path / "x.csv"), "--cache", cache,
                 "--top", "5"]) == 2
    assert capsys.readouterr().err.strip() == "fne predict: error: --top 5: the model has 4 classes"
    assert not (tmp_path / "x.csv").exists()


def test_a_class_the_head_never_learnt_is_said_and_bounds_top(digits_folder, warm_cache, tmp_path, capsys):
    """A model.joblib naming more classes than its head scores (fit left a class out of the head:
    none of its training images was readable) named the columns from the head's classes without a
    word, and took `--top` up to the names' count, writing fewer predicted_K columns than asked.
    Predict and `fne.load` now say which classes the head never learnt, and --top is bounded by
    the classes it scores."""
    import fne

    fit(digits_folder, features="last", head="logreg", splits=1, out=tmp_path / "run", cache=str(warm_cache),
        **STORE)
    model = joblib.load(tmp_path / "run" / "model.joblib")
    joblib.dump({**model, "classes": [*model["classes"], "zebra"]}, tmp_path / "run" / "model.joblib")
    run, cache = str(tmp_path / "run"), str(warm_cache)
    capsys.readouterr()
    assert main(["predict", run, str(digits_folder), "--out", str(tmp_path / "x.csv"), "--cache", cache,
                 "--top", "5"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / 'model.joblib'}: its head learnt 4 of its 5 classes (no readable training image " \
           "of 'zebra' when it was fitted): it scores no column for them and never predicts them" in err
    assert err.strip().splitlines()[-1] == "fne predict: error: --top 5: the model has 4 classes"
    assert not (tmp_path / "x.csv").exists()
    with pytest.warns(UserWarning, match="its head learnt 4 of its 5 classes"):
        loaded = fne.load(run)
    assert list(loaded.classes_) == model["classes"]


def test_predict_accuracy_covers_the_labels_the_model_knows(digits_folder, warm_cache, tmp_path, capsys):
    fit(digits_folder, features="last", head="logreg", splits=1, out=tmp_path / "run", cache=str(warm_cache),
        **STORE)
    new = tmp_path / "new"  # the model's class 0, and two classes it never saw
    for src, dst in [("0", "0"), ("1", "7"), ("2", "8")]:
        (new / dst).mkdir(parents=True)
        for f in (digits_folder / src).iterdir():
            (new / dst / f.name).write_bytes(f.read_bytes())
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(new), "--out", str(tmp_path / "p.csv"),
                 "--cache", str(warm_cache)]) == 0
    out, err = capsys.readouterr()
    assert "12 of 18 images" in err and "2 labels: 7, 8" in err and len(err.strip().splitlines()) == 2
    assert "6 of 6 images of DATA whose label the model knows are images" in err  # copies of those it was fitted on
    rows = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert len(rows) == 18 and list(rows[0])[-1] == "true"  # the CSV lists every image
    known = [r for r in rows if r["true"] == "0"]
    acc = np.mean([r["predicted"] == "0" for r in known])
    assert f"accuracy {acc:.4f} over the 6 images whose label the model knows" in out
    shutil.rmtree(new / "0")  # only classes the model never saw: no accuracy at all
    assert main(["predict", str(tmp_path / "run"), str(new), "--out", str(tmp_path / "q.csv"),
                 "--cache", str(warm_cache)]) == 0
    out, err = capsys.readouterr()
    assert "12 of 12 images" in err and "no accuracy" in err and ", accuracy" not in out
    assert "fitted on (the same bytes)" not in err  # no accuracy counts the 12 it was fitted on


def test_fit_auto_says_what_it_chose(digits_folder, warm_cache, tmp_path, capsys):
    from fne.linear.compare import choice_note

    assert main(["fit", str(digits_folder), "--features", "auto", "--head", "auto", "--splits", "1",
                 "--out", str(tmp_path / "a"), "--cache", str(warm_cache), *CLI_FAST]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert line.startswith(f"auto+auto ({choice_note(m)}) on data: accuracy ")


def test_an_out_where_nothing_can_be_written_is_refused_before_any_work(digits_folder, tmp_path, monkeypatch,
                                                                        capsys):
    """A read-only folder (or filesystem) under --out: one line before any image is read, not a
    traceback after the work."""
    import os
    from pathlib import Path

    ro, real_access = tmp_path / "ro", os.access
    ro.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != ro and real_access(p, mode))
    cache = tmp_path / "cache"
    for verb, out in [("fit", ro / "run"), ("export", ro / "x.h5")]:
        assert main([verb, str(digits_folder), "--extract", "--out", str(out), "--cache", str(cache),
                     *CLI_FAST]) == 2
        err = capsys.readouterr().err
        assert f"--out '{out}': cannot be written, {ro} is not writable" in err and "Traceback" not in err
    assert not list_stores(cache)  # nothing extracted


def test_an_out_under_a_link_to_nothing_is_refused_before_any_work(digits_folder, tmp_path, capsys):
    """--out through a symbolic link whose target is gone (an unmounted drive): one line before
    any image is read, not a traceback from mkdir once the work is done."""
    import os

    gone, target = tmp_path / "gone", tmp_path / "unmounted" / "runs"
    os.symlink(target, gone)
    cache = tmp_path / "cache"
    for verb, out in [("fit", gone), ("fit", gone / "run"), ("export", gone / "x.h5")]:
        assert main([verb, str(digits_folder), "--extract", "--out", str(out), "--cache", str(cache),
                     *CLI_FAST]) == 2
        err = capsys.readouterr().err
        assert f"--out '{out}': cannot be written, {gone} is a link to {target}, which does not exist" in err
        assert "Traceback" not in err
    assert not list_stores(cache) and gone.is_symlink() and not target.exists()  # nothing extracted, nothing made


def test_a_head_stopped_at_its_iteration_limit_is_one_warning_that_says_what_converges(digits_folder, warm_cache,
                                                                                     tmp_path, monkeypatch, capsys):
    """liblinear stopping at max_iter (FNE rows of a few images, C = 1) printed scikit-learn's
    "Liblinear failed to converge, increase the number of iterations" once per fit, advice no
    option of fne can follow; now one line, counting the fits, naming --solver torch and --C."""
    import fne.linear.fit

    real = fne.linear.fit.make_head  # liblinear with too few iterations to converge
    monkeypatch.setattr(fne.linear.fit, "make_head", lambda *a, **kw: real(*a, **kw).set_params(max_iter=2))
    assert main(["fit", str(digits_folder), "--splits", "2", "--out", str(tmp_path / "r"), "--cache",
                 str(warm_cache), *CLI_FAST]) == 0
    err = capsys.readouterr().err
    assert "Liblinear" not in err and err.count("stopped at scikit-learn's limit") == 1
    assert ("the svm head stopped at scikit-learn's limit of 2 iterations before converging in 3 of 3 fit(s) (C=1.0)"
            in err and "--solver torch" in err)
    monkeypatch.undo()  # liblinear as it is: converged on digits, no warning
    assert main(["fit", str(digits_folder), "--splits", "2", "--out", str(tmp_path / "r"), "--cache",
                 str(warm_cache), *CLI_FAST]) == 0
    assert "stopped at" not in capsys.readouterr().err


def test_the_torch_solver_stopped_at_its_iteration_limit_says_so(digits_folder, warm_cache, tmp_path, monkeypatch,
                                                                   capsys):
    """--solver torch (auto's choice from 10^8 rows x features) ending at L-BFGS's iteration limit
    said nothing, where liblinear's limit is one warning (a limit forced here: the 18,000-row
    Fashion-MNIST fit that prompted the check, 9 min, did reach its tolerance)."""
    import fne.linear.fit

    real = fne.linear.fit.make_head
    monkeypatch.setattr(fne.linear.fit, "make_head", lambda *a, **kw: real(*a, **kw).set_params(max_iter=2))
    assert main(["fit", str(digits_folder), "--splits", "2", "--solver", "torch", "--out", str(tmp_path / "r"),
                 "--cache", str(warm_cache), *CLI_FAST]) == 0
    err = capsys.readouterr().err
    assert ("the torch solver stopped at its iteration limit before its gradient tolerance in 3 of 3 fit(s) (C=1.0)"
            in err and "scikit-learn's limit" not in err)
    monkeypatch.undo()
    assert main(["fit", str(digits_folder), "--splits", "2", "--solver", "torch", "--out", str(tmp_path / "r"),
                 "--cache", str(warm_cache), *CLI_FAST]) == 0
    assert "stopped at" not in capsys.readouterr().err  # converged: nothing said


@pytest.mark.parametrize("solver", ["sklearn", "torch"])
def test_metrics_say_the_threads_the_saved_models_torch_fit_ran_on(digits_folder, warm_cache, tmp_path,
                                                                    monkeypatch, solver):
    """threads.torch is the caller's count; threads.torch_fit the torch threads the torch solver's
    fit of the saved model ran on (one below ONE_THREAD_BELOW, the caller's above it; None for
    scikit-learn's): metrics.json said 2 where a small fit ran on one."""
    import torch

    from fne.linear import solver as torch_solver

    kw = dict(cache=str(warm_cache), features="last", head="logreg", splits=1, solver=solver, device="cpu",
              progress=False, **FAST)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        small = fit(digits_folder, tmp_path / "small", **kw)
        monkeypatch.setattr(torch_solver, "ONE_THREAD_BELOW", 0)  # every fit "large": the caller's threads
        large = fit(digits_folder, tmp_path / "large", **kw)
    finally:
        torch.set_num_threads(n)
    expected = (1, 2) if solver == "torch" else (None, None)
    assert (small["threads"]["torch_fit"], large["threads"]["torch_fit"]) == expected
    assert small["threads"]["torch"] == large["threads"]["torch"] == 2
    assert json.loads((tmp_path / "small" / "metrics.json").read_text())["threads"] == small["threads"]


def test_the_iteration_limit_warning_names_the_head_and_c_of_the_fits_that_stopped():
    """With --C auto (or --head auto) each split fits its own choice: the warning named the saved
    model's head and C alone (C=1.0 beside fits that stopped at C=100, and the svm limit beside
    logreg fits); it names those of the fits that stopped."""
    from fne.linear.fit import _say_stopped

    with pytest.warns(UserWarning) as caught:
        _say_stopped([("svm", 100.0, True), ("svm", 1.0, False), ("logreg", 10.0, True), ("svm", 1.0, False)])
    assert [str(w.message) for w in caught] == [
        "the logreg and svm heads stopped at scikit-learn's limits of 2000 and 5000 iterations before converging in "
        "2 of 4 fit(s) (C=10.0, 100.0): near its optimum, not at it; --solver torch fits the same objective to "
        "convergence, and a smaller --C converges sooner"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _say_stopped([("svm", 1.0, False)])  # converged: nothing said


def test_predict_and_load_refuse_a_damaged_model_joblib_in_one_line(digits_folder, warm_cache, tmp_path):
    """A model.joblib that unpickles but lacks a field predict reads, or holds one of another type
    (a damaged or edited file): each was a KeyError, IndexError or TypeError deep in predict or
    `fne.load`; a layer its backbone has not was a KeyError reading the store's columns. Each is
    now one line naming the file and the field, before any row is read or CSV written."""
    import fne
    from fne.linear.predict import predict

    fit(digits_folder, features="last", splits=1, out=tmp_path / "r", cache=str(warm_cache), **STORE)
    model = joblib.load(tmp_path / "r" / "model.joblib")
    cases = [("pipeline", dict(pipeline=None)), ("classes", dict(classes=model["classes"][:2])),
             ("classes", dict(classes="0123456789")), ("layers", dict(layers="layer4")), ("head", dict(head=None)),
             ("store", dict(store=None)), ("store", dict(store={**model["store"], "storage_dtype": "int3"})),
             ("store", {"store": {k: v for k, v in model["store"].items() if k != "cache"}}),
             ("fitted_keys", dict(fitted_keys=5))]
    for field, changed in cases:
        joblib.dump({**model, **changed}, tmp_path / "r" / "model.joblib")
        said = (f"{tmp_path / 'r' / 'model.joblib'}: its {field} not as `fne fit` writes them (a damaged or edited "
                f"file); refit it with `fne fit`")
        with pytest.raises(FneError) as e:
            predict(tmp_path / "r", digits_folder, out=tmp_path / "p.csv")
        assert str(e.value) == said, changed
        with pytest.raises(FneError) as e:
            fne.load(tmp_path / "r")
        assert str(e.value) == said, changed
    joblib.dump({**model, "layers": ["nosuch"]}, tmp_path / "r" / "model.joblib")
    with pytest.raises(FneError, match=r"r: its model\.joblib's layers nosuch are no layers of .*; refit it with"):
        predict(tmp_path / "r", digits_folder, out=tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()
    joblib.dump(model, tmp_path / "r" / "model.joblib")  # the model as fit wrote it: predicts
    with pytest.warns(UserWarning, match="are images .* was fitted on"):
        assert predict(tmp_path / "r", digits_folder, out=tmp_path / "p.csv", progress=False)["n"] > 0


def test_rows_that_are_all_zero_are_one_line_not_a_scikit_learn_traceback(digits_folder, warm_cache, tmp_path,
                                                                            monkeypatch):
    """A dead layer (random weights, float16 underflow) gives rows of zeros: the embedding has
    nothing to learn from, which scikit-learn reported as 'Found array with 0 feature(s)'."""
    from fne.cache.store import Store

    real = Store.read_rows
    monkeypatch.setattr(Store, "read_rows", lambda self, keys, layers: np.zeros_like(real(self, keys, layers)))
    with pytest.raises(FneError, match=r"every row of .* is zero once embedded: .*storage_dtype='float32'"):
        fit(digits_folder, out=tmp_path / "r", cache=warm_cache, features="last", splits=1, **STORE)


def test_predict_refuses_a_folder_without_a_model_an_old_model_and_pinned_store_options(digits_folder, warm_cache,
                                                                                        tmp_path):
    from fne.errors import FneError
    from fne.linear.predict import predict

    kw = dict(out=tmp_path / "p.csv", cache=str(warm_cache))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FneError, match=r"empty: no model\.joblib or model\.pt \(is it a `fne fit` or `fne train` run"):
        predict(tmp_path / "empty", digits_folder, **kw)
    (tmp_path / "old").mkdir()
    joblib.dump({"format": 0}, tmp_path / "old" / "model.joblib")
    with pytest.raises(FneError, match=r"model\.joblib: not a model written by this version of fne fit \(refit it"):
        predict(tmp_path / "old", digits_folder, **kw)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "model.joblib").write_bytes(b"")  # a copy cut short: was a traceback (EOFError)
    with pytest.raises(FneError, match=r"cut/model\.joblib: cannot be read \(EOFError\); refit it with `fne fit`$"):
        predict(tmp_path / "cut", digits_folder, **kw)
    fit(digits_folder, features="last", splits=1, out=tmp_path / "r", cache=str(warm_cache), **STORE)
    with pytest.raises(FneError, match=r"r pins arch \(its head fits those rows only\); predict takes cache and device$"):
        predict(tmp_path / "r", digits_folder, arch="vgg16", **kw)
    assert not (tmp_path / "p.csv").exists()


def test_rows_of_tiny_activations_are_normalised_and_those_float16_kept_few_bits_of_are_named(tmp_path):
    """Random weights' last layer gives activations ~1e-8: scikit-learn's Normalizer left such rows
    as they were, so `--features last` called every image one class (flowers12: 8.3%, chance);
    scaled rows now fit as the rows themselves do. In float16 storage they keep a bit or two
    (subnormals), which a warning names with the way out (float32 storage)."""
    from fne.cache.spec import StoreSpec

    root = write_digits(tmp_path / "data", per_class=8, classes=3)
    ds = load_dataset(root)
    y, rng = ds.label_indices(), np.random.default_rng(0)
    rows = None
    for name, dtype, scale in (("plain", "float32", 1.0), ("tiny", "float32", 1e-8), ("faint", "float16", 1e-7)):
        store = StoreSpec(**{**STORE, "storage_dtype": dtype}, cache=str(tmp_path / name)).open()
        if rows is None:
            rows = {tap: np.maximum(0, rng.gamma(1.0, 1.0, (3, ch))[y] + rng.normal(0, 0.5, (len(y), ch)))[:, None]
                    for tap, ch in store.taps}
        store.commit(ds.keys(), {tap: (r * scale).astype(np.float32) for tap, r in rows.items()})
    kw = dict(features="last", splits=2, progress=False, **{k: v for k, v in STORE.items() if k != "storage_dtype"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of float16 storage for float32 rows
        plain = fit(root, out=tmp_path / "r-plain", cache=str(tmp_path / "plain"), storage_dtype="float32", **kw)
        tiny = fit(root, out=tmp_path / "r-tiny", cache=str(tmp_path / "tiny"), storage_dtype="float32", **kw)
    assert plain["accuracy"] > 0.6 and tiny["accuracy"] == plain["accuracy"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every one given, not only those the filters let through
        fit(root, out=tmp_path / "r-faint", cache=str(tmp_path / "faint"), storage_dtype="float16", **kw)
    faint = [str(w.message) for w in caught if "too small for float16" in str(w.message)]
    assert len(faint) == 1  # once for the fit: not once per split (2) and again for the saved model
    assert re.match(r"the activations of head \(largest \|x\| \d\.\de-0\d, \d bit\(s\)\) in .* are too small for "
                    r"float16 storage, .*extract with --storage-dtype float32", faint[0])


def test_split_options_on_a_predefined_split_are_named_in_one_warning_line(digits_split, tmp_path, capsys):
    """`fne fit DATA --splits 3 --test-size 0.3` on train/ and test/ folders fitted DATA's own
    split and said nothing of the options: one line now names them and where the split comes from."""
    cli = ["fit", str(digits_split), "--out", str(tmp_path / "cli"), "--cache", str(tmp_path / "cache"), "--extract",
           "--no-progress", "--arch", STORE["arch"], "--weights", "random", "--precision", "fp32", "--storage-dtype",
           "float32", "--features", "last", "--splits", "3", "--test-size", "0.3"]
    assert main(cli) == 0
    out, err = capsys.readouterr()
    said = [line for line in err.splitlines() if "not applied" in line]
    assert said == [f"fne: warning: DATA {digits_split}: --splits 3 and --test-size 0.3 are not applied: DATA has "
                    "its own split (its train/ and test/ folders), which is used as it is: all its training images "
                    "train, its test images test (the options draw random splits, for DATA without one)"]
    assert "(1 split(s), n_train 18, n_test 9" in out
    with pytest.warns(UserWarning, match=r"test_size=0.5 is not applied: DATA has its own split"):
        m = fit(digits_split, out=tmp_path / "py", cache=str(tmp_path / "cache"), features="last", test_size=0.5,
                **STORE)
    assert m["split_protocol"] == "predefined" and m["n_test"] == 9
    assert main(cli[:-4]) == 0 and "not applied" not in capsys.readouterr().err  # none given: nothing said


def test_a_solver_given_with_an_sgd_head_is_named_as_not_applied(digits_folder, warm_cache, tmp_path, capsys):
    """`fne fit --head sgd-svm --solver torch` fitted SGDClassifier and said nothing of --solver, which
    the user took for the solver of the figure; one line now says it is not applied."""
    with pytest.warns(UserWarning, match=r"^solver='torch' is not applied: SGD heads \(head='sgd-svm'\) are fitted "
                                         r"by scikit-learn's SGDClassifier"):
        m = fit(digits_folder, out=tmp_path / "py", head="sgd-svm", solver="torch", splits=1, features="last",
                cache=str(warm_cache), **STORE)
    assert m["solver"] == "sklearn"
    cli = ["fit", str(digits_folder), "--out", str(tmp_path / "cli"), "--cache", str(warm_cache), "--no-progress",
           "--arch", STORE["arch"], "--weights", "random", "--precision", "fp32", "--storage-dtype", "float32",
           "--features", "last", "--splits", "1", "--head", "sgd-logreg"]
    assert main([*cli, "--solver", "sklearn"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "not applied" in line]
    assert said == ["fne: warning: --solver sklearn is not applied: SGD heads (--head sgd-logreg) are fitted by "
                    "scikit-learn's SGDClassifier, chunk by chunk (the solvers fit svm and logreg)"]
    assert main(cli) == 0 and "not applied" not in capsys.readouterr().err  # the default: nothing said
