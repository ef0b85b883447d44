"""`fne.load`: a run's model loaded once, scoring images in memory as `fne predict` scores them;
and `fne predict`'s count of the images it skipped as unreadable."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import fne
import fne.extraction.taps
import fne.training.apply
from fne.backbones import registry as backbones
from fne.cache.spec import DEVICE_SUFFIXES
from fne.cli import main
from fne.devices import device_decoder
from fne.errors import DataError, FneError, OptionError

from .conftest import FAST, write_digits
from .test_api import _readme_python


def _listing(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _csv(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"path": str, "predicted": str, "true": str})


def _scores(p: pd.DataFrame, classes) -> np.ndarray:
    return p[[f"score_{c}" for c in classes]].to_numpy()


def _rgb(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """How many times a backbone's tap model was built."""
    made: list[int] = []
    real = fne.extraction.taps.build_tap_model

    def counting(*a, **k):
        made.append(1)
        return real(*a, **k)

    monkeypatch.setattr(fne.extraction.taps, "build_tap_model", counting)
    return made


@pytest.mark.parametrize(("head", "storage_dtype"), [("logreg", "float32"), ("svm", "float16")])
def test_a_fit_runs_model_scores_images_as_predict_does(head, storage_dtype, digits_folder, warm_cache, tmp_path,
                                                        builds, one_torch_thread):
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    store = dict(FAST, storage_dtype=storage_dtype)
    fne.fit(digits_folder, tmp_path / "run", features="block3,head", head=head, cache=str(cache), extract_missing=True,
            progress=False, **store)
    with pytest.warns(UserWarning, match="are images .* was fitted on"):
        fne.predict(tmp_path / "run", digits_folder, out=tmp_path / "p.csv", progress=False)
    p = _csv(tmp_path / "p.csv")
    paths = [digits_folder / x for x in p["path"]]
    before = _listing(cache)
    builds.clear()  # those of the extraction (float16 rows)
    clf = fne.load(tmp_path / "run", batch_size=5)  # batches of another size than predict's
    assert list(clf.classes_) == [c.removeprefix("score_") for c in p.columns if c.startswith("score_")]
    want = _scores(p, clf.classes_)
    assert len(np.unique(want.round(4), axis=0)) > 10  # scores that tell the images apart
    got = clf.decision_function(paths)
    assert got.shape == want.shape and np.allclose(got, want, rtol=1e-5, atol=1e-6)
    some = paths[::4]  # the other forms on a few of them
    assert list(clf.predict([str(x) for x in some])) == list(p["predicted"][::4])
    assert np.allclose(clf.decision_function([Image.open(x) for x in some]), got[::4], rtol=0, atol=1e-12)
    assert np.allclose(clf.decision_function(_rgb(some)), got[::4], rtol=0, atol=1e-12)
    assert np.allclose(clf.decision_function(_rgb(some)[..., 0]), got[::4], rtol=0, atol=1e-12)  # grey N×H×W
    assert np.allclose(clf.decision_function(paths[3]), got[3:4], rtol=0, atol=1e-12)  # one path
    assert builds == [1]  # the backbone built once, for every call
    assert _listing(cache) == before  # rows in memory: nothing written into the cache
    if head == "logreg":
        assert np.allclose(clf.predict_proba(some), got[::4]) and np.allclose(got.sum(1), 1)
    else:
        assert not hasattr(clf, "predict_proba")
        with pytest.raises(AttributeError, match="svm head gives no probabilities"):
            clf.predict_proba(paths)


def test_a_train_runs_network_scores_images_as_predict_does(tmp_path, monkeypatch):
    data = write_digits(tmp_path / "data", per_class=8, classes=3)
    fne.train(data, "frozen", tmp_path / "run", arch="resnet18", weights="random", epochs=1, image_size=40,
              batch_size=8, val_fraction=0.2, precision="fp32", workers=0, progress=False)
    fne.predict(tmp_path / "run", data, out=tmp_path / "p.csv", workers=0, progress=False)
    p = _csv(tmp_path / "p.csv")
    paths = [data / x for x in p["path"]]
    built: list[int] = []
    real = fne.training.apply.network
    monkeypatch.setattr(fne.training.apply, "network", lambda *a: built.append(1) or real(*a))
    clf = fne.load(tmp_path / "run")
    assert list(clf.classes_) == ["0", "1", "2"] and clf.kind == "train"
    want = _scores(p, clf.classes_)
    assert len(np.unique(want.round(4), axis=0)) > 10
    got = clf.predict_proba(paths)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6) and np.allclose(clf.decision_function(paths), got)
    assert list(clf.predict(paths)) == list(p["predicted"])
    some = paths[::4]
    assert np.allclose(clf.predict_proba([Image.open(x) for x in some]), got[::4], rtol=0, atol=1e-6)
    assert np.allclose(clf.predict_proba(_rgb(some)), got[::4], rtol=0, atol=1e-6)
    assert built == [1]
    with pytest.raises(FneError, match="moved_weights: .* is a `fne train` run"):
        fne.load(tmp_path / "run", moved_weights=str(tmp_path / "w.pt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, where this runs on a GPU one
    for device, said in [("cuda", "CUDA is not"), ("cuda:1", "CUDA is not"), ("mps", "MPS .Apple's GPU. is not")]:
        with pytest.raises(OptionError, match=f"^device='{device}': {said} available on this machine") as e:
            fne.load(tmp_path / "run", device=device)  # a train run's network, built at load
        assert len(str(e.value).splitlines()) == 1



def test_a_torchvision_models_weights_file_gone_is_said_without_offering_weights(digits_folder, tmp_path, capsys):
    """A model fitted on a weights file for a torchvision backbone, the file gone: `fne predict`
    said "--weights 'W': no such file or squeezenet1_1 weights name; give imagenet, random, a
    state dict path or one of: ...", offering the --weights it does not take (and no
    --moved-weights); fne.load said it with weights=. Both name the file and moved_weights now."""
    import torchvision

    weights = tmp_path / "w.pth"
    torch.save(torchvision.models.get_model("squeezenet1_1", weights=None).state_dict(), weights)
    fne.fit(digits_folder, tmp_path / "run", features="last", arch="squeezenet1_1", weights=str(weights),
            image_size=64, precision="fp32", cache=str(tmp_path / "c"), extract_missing=True, progress=False)
    weights.unlink()
    out = ["--out", str(tmp_path / "p.csv")]
    assert main(["predict", str(tmp_path / "run"), str(digits_folder), *out]) == 2
    err = capsys.readouterr().err.strip()
    fitted = f"{tmp_path / 'run'} was fitted on weights {weights} (fingerprint file-"
    assert err.startswith(f"fne predict: error: {fitted}") and len(err.splitlines()) == 1, err
    assert err.endswith("which cannot be read now: no such file; where the file moved, give its path: "
                        "--moved-weights PATH") and "--weights" not in err and "random" not in err
    assert main(["predict", str(tmp_path / "run"), str(digits_folder), *out, "--moved-weights",
                 str(tmp_path / "gone.pth")]) == 2
    assert capsys.readouterr().err.strip() == f"fne predict: error: --moved-weights '{tmp_path / 'gone.pth'}': no such file"
    with pytest.raises(FneError) as e:
        fne.load(tmp_path / "run")
    assert str(e.value).startswith(fitted) and str(e.value).endswith(
        "which cannot be read now: no such file; where the file moved, give its path: moved_weights='PATH'")
    assert not (tmp_path / "p.csv").exists()

def test_load_refuses_a_model_as_predict_does(digits_split, tmp_path):
    """Weights that moved (named by moved_weights=), weights that changed, an earlier fne's pixels."""
    weights = tmp_path / "w.pt"
    torch.save(backbones.load_backbone(FAST["arch"], "random", seed=1).state_dict(), weights)
    fne.fit(digits_split, tmp_path / "run", features="last", extract_missing=True, arch=FAST["arch"],
            weights=str(weights), precision="fp32", cache=str(tmp_path / "cache"), progress=False)
    fne.predict(tmp_path / "run", digits_split, out=tmp_path / "p.csv", progress=False)
    p = _csv(tmp_path / "p.csv")
    paths = [digits_split / x for x in p["path"]]
    weights.rename(tmp_path / "moved.pt")
    with pytest.raises(FneError, match=r"run was fitted on weights .*w\.pt .*where the file moved, give its path: "
                                       r"moved_weights='PATH'$"):
        fne.load(tmp_path / "run")
    clf = fne.load(tmp_path / "run", moved_weights=str(tmp_path / "moved.pt"))
    assert np.allclose(clf.decision_function(paths), _scores(p, clf.classes_), rtol=1e-5, atol=1e-6)
    torch.save(backbones.load_backbone(FAST["arch"], "random", seed=2).state_dict(), weights)
    with pytest.raises(FneError, match="changed since"):
        fne.load(tmp_path / "run")
    with pytest.raises(FneError, match="moved_weights='.*other.pt' is not the weights"):
        shutil.copy(weights, tmp_path / "other.pt")
        fne.load(tmp_path / "run", moved_weights=str(tmp_path / "other.pt"))
    weights.unlink()
    (tmp_path / "moved.pt").rename(weights)
    model = joblib.load(tmp_path / "run" / "model.joblib")
    model["store"]["preprocess"] = "center224"
    joblib.dump(model, tmp_path / "run" / "model.joblib")
    with pytest.raises(FneError, match="an earlier fne's pixels, which this fne no longer makes"):
        fne.load(tmp_path / "run")
    here = device_decoder() or "torchvision"  # prep_key's where none decodes
    other = next(s for lib, s in DEVICE_SUFFIXES.items() if lib != here)
    model["store"].update(preprocess="center224-tv" + other, decode="device")  # nvJPEG's pixels, another library's
    joblib.dump(model, tmp_path / "run" / "model.joblib")
    with pytest.raises(FneError, match=f"decoded on the device by another library than this machine's "
                                       f"\\(center224-tv{other}, here center224-tv{DEVICE_SUFFIXES[here]}\\)"):
        fne.load(tmp_path / "run")


def test_images_it_cannot_score_are_refused_in_one_line(digits_folder, warm_cache, tmp_path):
    fne.fit(digits_folder, tmp_path / "run", features="last", cache=str(warm_cache), progress=False, **FAST)
    clf = fne.load(tmp_path / "run")
    good = sorted(digits_folder.rglob("*.png"))[:2]
    (tmp_path / "bad.png").write_text("not an image")
    cases = [(3, TypeError, "images: expected a path, a list of paths, a PIL image"),
             ([good[0], 3], TypeError, r"images\[1\]: expected a path, a PIL image or a uint8 array H×W×3, not int"),
             ([good[0], [good[1]]], TypeError, r"images\[1\]: expected a path.*not list"),
             ([_rgb(good)], ValueError, r"images\[0\]: an array in a list is one image, H×W×3 .*not of shape "
                                        r"\(2, \d+, \d+, 3\); give several images as one array N×H×W×3"),
             ([good[0], _rgb(good)[0].astype(np.float32)], ValueError, r"images\[1\]: images must be uint8"),
             (_rgb(good).astype(np.float32), ValueError, "images: images must be uint8"),
             (_rgb(good).transpose(0, 3, 1, 2), ValueError, "images: images must be N×H×W.*channels first"),
             ([tmp_path / "absent.png"], DataError, "absent.png: no such file$"),  # none there: no scores
             ([tmp_path / "absent.png", tmp_path / "gone.png"], DataError,
              r"absent.png: no such file \(none of the 2 images is there\)$"),
             ([digits_folder], DataError, "is a folder; give image files"),
             (_rgb(good)[0], ValueError, r"images: an array of shape \(\d+, \d+, 3\) reads as \d+ grey images 3 "
                                         r"pixels wide; give one colour image as images\[None\]"),
             ([good[0], tmp_path / "bad.png"], DataError, r"1 of 2 image\(s\) could not be read: "
                                                          r".*bad.png \(not an image file\); the error's `scores`")]
    for images, exc, said in cases:
        with pytest.raises(exc, match=said) as e:
            clf.predict(images)
        assert len(str(e.value).splitlines()) == 1
    assert clf.predict([]).shape == (0,) and clf.decision_function([]).shape == (0, 4)
    Image.fromarray(np.full((32, 32), 0.5, dtype=np.float32), mode="F").save(tmp_path / "float.tif")
    with pytest.warns(UserWarning, match="float.tif: a float image with values in 0-1 is read as 0-255"):
        assert clf.predict([tmp_path / "float.tif"]).shape == (1,)  # scored, and said, as fne extract says it
    with pytest.raises(FneError, match="does not exist"):
        fne.load(tmp_path / "absent")
    with pytest.raises(TypeError, match="unexpected keyword argument.*arch"):
        fne.load(tmp_path / "run", arch="vgg16")
    with pytest.raises(TypeError, match="device must be a string, not NoneType"):
        fne.load(tmp_path / "run", device=None)
    with pytest.raises(OptionError, match=r"bad batch_size=0: batch_size must be in \[1, 65536\] or auto"):
        fne.load(tmp_path / "run", batch_size=0)
    with pytest.raises(OptionError, match="bad device='tpu'"):
        fne.load(tmp_path / "run", device="tpu")


def test_predicts_summary_counts_the_images_it_skipped_as_unreadable(digits_folder, warm_cache, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    fne.fit(data, tmp_path / "run", features="last", cache=str(cache), progress=False, **FAST)
    (data / "0" / "bad.png").write_text("not an image")
    (data / "1" / "empty.png").write_bytes(b"")
    for _ in range(2):  # extracted, then recorded as unreadable in the store
        assert main(["predict", str(tmp_path / "run"), str(data), "--out", str(tmp_path / "p.csv"),
                     "--no-progress"]) == 0
        out, err = capsys.readouterr()
        assert out.rstrip().endswith(", 2 skipped (unreadable)") and "wrote 24 predictions" in out
        assert "0/bad.png" in err and "1/empty.png" in err
    (data / "0" / "bad.png").unlink()
    (data / "1" / "empty.png").unlink()
    r = fne.predict(tmp_path / "run", data, out=tmp_path / "p.csv", progress=False)
    assert r["n_skipped"] == 0
    main(["predict", str(tmp_path / "run"), str(data), "--out", str(tmp_path / "p.csv"), "--no-progress"])
    assert "skipped" not in capsys.readouterr().out


def test_a_train_runs_predict_counts_the_images_it_skipped(tmp_path, capsys):
    data = write_digits(tmp_path / "data", per_class=4, classes=2)
    fne.train(data, "frozen", tmp_path / "run", arch="resnet18", weights="random", epochs=1, image_size=32,
              batch_size=4, val_fraction=0.25, precision="fp32", workers=0, progress=False)
    (data / "0" / "bad.png").write_text("not an image")
    assert main(["predict", str(tmp_path / "run"), str(data), "--out", str(tmp_path / "p.csv"), "--workers", "0",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "wrote 8 predictions" in out and out.rstrip().endswith(", 1 skipped (unreadable)")


@pytest.mark.parametrize("kind", ["fit", "train"])
def test_the_readmes_load_block_runs_as_written(kind, digits_folder, warm_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if kind == "fit":
        fne.fit(digits_folder, "runs/fne", features="fne", head="svm", cache=str(warm_cache), progress=False, **FAST)
    else:
        fne.train(digits_folder, "frozen", "runs/fne", arch="resnet18", weights="random", epochs=1, image_size=32,
                  batch_size=8, val_fraction=0.25, precision="fp32", workers=0, progress=False)
    a, b = sorted(digits_folder.rglob("*.png"))[:2]
    code = _readme_python("fne.load(").replace('"new/a.png"', repr(str(a))).replace('"new/b.png"', repr(str(b)))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    clf = scope["clf"]
    assert scope["scores"].shape == (2, 4) and np.allclose(clf.decision_function(scope["pixels"]), scope["scores"])
    assert ("proba" in scope) == (kind == "train")


def _odd_images(folder) -> list:
    """Images whose decoding has rules: EXIF orientation, alpha, palette transparency, 16-bit grey, CMYK."""
    from sklearn.datasets import load_digits

    folder.mkdir()
    d = load_digits().images
    grey = [np.kron(np.clip(d[i] * 16, 0, 255).astype(np.uint8), np.ones((5, 4), np.uint8)) for i in range(6)]
    rgb = Image.fromarray(np.stack([grey[0], grey[1], 255 - grey[0]], axis=2))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°
    rgb.save(folder / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(np.stack([grey[1], grey[2], grey[3], grey[4]], axis=2), "RGBA").save(folder / "alpha.png")
    p = Image.fromarray(grey[2]).convert("P")
    p.info["transparency"] = 0
    p.save(folder / "palette.png", transparency=0)
    Image.fromarray(grey[3].astype(np.uint16) * 257).save(folder / "grey16.png")
    Image.fromarray(grey[4]).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(grey[5]).save(folder / "grey.jpg")
    return sorted(folder.iterdir())


def test_decoding_rules_apply_to_paths_and_pil_images_as_to_predicts_files(digits_folder, warm_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    fne.fit(digits_folder, tmp_path / "run", features="block3,head", head="logreg", cache=str(cache), progress=False,
            **FAST)
    _odd_images(tmp_path / "odd")
    fne.predict(tmp_path / "run", tmp_path / "odd", out=tmp_path / "p.csv", progress=False)
    p = _csv(tmp_path / "p.csv")
    paths = [tmp_path / "odd" / x for x in p["path"]]
    assert len(paths) == 6
    clf = fne.load(tmp_path / "run")
    want = _scores(p, clf.classes_)
    assert np.allclose(clf.decision_function(paths), want, rtol=1e-5, atol=1e-6)
    assert np.allclose(clf.decision_function([Image.open(x) for x in paths]), want, rtol=1e-5, atol=1e-6)
    rotated = p["path"].tolist().index("rotated.jpg")
    raw = Image.open(paths[rotated]).convert("RGB")  # its pixels as stored, not turned upright
    assert raw.size == (32, 40) and not np.allclose(clf.decision_function(np.asarray(raw)[None]), want[rotated:rotated + 1],
                                                    rtol=1e-5, atol=1e-6)
    turned = np.asarray(raw.transpose(Image.Transpose.ROTATE_270))[None]  # EXIF orientation 6: 90° clockwise
    assert np.allclose(clf.decision_function(turned), want[rotated:rotated + 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["fit", "train"])
def test_unreadable_images_are_named_and_the_others_scored(kind, digits_folder, warm_cache, tmp_path):
    if kind == "fit":
        fne.fit(digits_folder, tmp_path / "run", features="last", cache=str(warm_cache), progress=False, **FAST)
    else:
        fne.train(digits_folder, "frozen", tmp_path / "run", arch="resnet18", weights="random", epochs=1,
                  image_size=32, batch_size=8, val_fraction=0.25, precision="fp32", workers=0, progress=False)
    clf = fne.load(tmp_path / "run", batch_size=2)  # the bad ones in batches of their own and beside good ones
    good = sorted(digits_folder.rglob("*.png"))[:3]
    (tmp_path / "bad.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(good[0].read_bytes()[:60])
    want = clf.decision_function(good)
    with pytest.raises(DataError, match=r"^3 of 6 image\(s\) could not be read: .*bad.png .*cut.png .*"
                                         r"absent.png \(no such file\); the error's `scores`") as e:
        clf.predict([good[0], tmp_path / "bad.png", tmp_path / "cut.png", good[1], tmp_path / "absent.png", good[2]])
    assert e.value.unreadable == [1, 2, 4] and e.value.scores.shape == (6, 4)
    assert np.isnan(e.value.scores[[1, 2, 4]]).all()
    assert np.allclose(e.value.scores[[0, 3, 5]], want, rtol=0, atol=1e-6)
    with pytest.raises(DataError, match=r"^1 of 2 image\(s\) could not be read: .*absent.png \(no such file\)") as e:
        clf.predict([tmp_path / "absent.png", good[1]])  # a file that is not there, alone in its batch
    assert e.value.unreadable == [0] and np.allclose(e.value.scores[1], want[1], rtol=0, atol=1e-6)
    with pytest.raises(DataError, match=r"^1 of 1 image") as e:
        clf.decision_function(tmp_path / "bad.png")
    assert e.value.unreadable == [0] and np.isnan(e.value.scores).all()


def test_a_list_mixes_paths_pil_images_and_arrays_each_read_as_alone(digits_folder, warm_cache, tmp_path):
    fne.fit(digits_folder, tmp_path / "run", features="last", cache=str(warm_cache), progress=False, **FAST)
    clf = fne.load(tmp_path / "run", batch_size=2)
    paths = sorted(digits_folder.rglob("*.png"))[:5]
    grey = np.asarray(Image.open(paths[3]).convert("L"))
    images = [paths[0], Image.open(paths[1]), _rgb(paths[2:3])[0], grey, grey[:, :, None], str(paths[4])]
    alone = [clf.decision_function(paths[0]), clf.decision_function(Image.open(paths[1])),
             clf.decision_function(_rgb(paths[2:3])), clf.decision_function(grey[None]),
             clf.decision_function(grey[None, :, :, None]), clf.decision_function(str(paths[4]))]
    got = clf.decision_function(images)
    assert got.shape == (6, 4) and np.allclose(got, np.concatenate(alone), rtol=0, atol=1e-6)
    assert list(clf.predict(images)) == list(clf.classes_[np.argmax(got, axis=1)])
    assert np.allclose(clf.decision_function(list(_rgb(paths))), clf.decision_function(_rgb(paths)), rtol=0, atol=1e-6)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(DataError, match=r"^2 of 4 image\(s\) could not be read: .*absent.png \(no such file\), "
                                        r".*bad.png \(not an image file\);") as e:
        clf.predict([tmp_path / "absent.png", grey, tmp_path / "bad.png", Image.open(paths[1])])
    assert e.value.unreadable == [0, 2]  # a path not there beside arrays: not every image is missing
    assert np.allclose(e.value.scores[[1, 3]], got[[3, 1]], rtol=0, atol=1e-6)


def test_a_pil_images_depth_note_names_its_position(digits_folder, warm_cache, tmp_path):
    """A PIL image given in memory that comes out dark (a 32-bit label mask) is warned of as a
    file is, naming it: ``images[1]: ...`` (it was the note alone, naming no image)."""
    fne.fit(digits_folder, tmp_path / "run", features="last", cache=str(warm_cache), progress=False, **FAST)
    clf = fne.load(tmp_path / "run", batch_size=2)
    mask = Image.fromarray((np.arange(32 * 32) % 16).reshape(32, 32).astype(np.int32), mode="I")
    plain = Image.open(sorted(digits_folder.rglob("*.png"))[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.predict([plain, mask])
    said = [str(w.message) for w in caught if "below 64" in str(w.message)]
    assert said == ["images[1]: a 32-bit or float image with values all below 64 (a label mask or a count image?) is "
                    "read as 0-255, so it comes out dark; rescale its values to 0-255 first"]


def test_score_is_the_mean_accuracy_with_labels_compared_as_the_classes_are(digits_folder, warm_cache, tmp_path):
    fne.fit(digits_folder, tmp_path / "run", features="last", cache=str(warm_cache), progress=False, **FAST)
    clf = fne.load(tmp_path / "run")
    paths = sorted(digits_folder.rglob("*.png"))
    truth = [p.parent.name for p in paths]  # the class folders: 0 1 2 3
    right = clf.predict(paths) == np.array(truth)
    assert 0 < right.mean() < 1  # random weights: some right, some wrong, so a wrong comparison would show
    assert clf.score(paths, truth) == pytest.approx(right.mean())
    assert clf.score(paths, [int(t) for t in truth]) == pytest.approx(right.mean())  # 3 is class "3"
    assert clf.score(paths, np.array(truth, dtype=float)[:, None]) == pytest.approx(right.mean())  # 3.0, N×1
    w = np.arange(1, len(paths) + 1, dtype=float)
    assert clf.score(paths, pd.Series(truth), sample_weight=w) == pytest.approx((w * right).sum() / w.sum())
    assert clf.score(paths[:2], ["9", "9"]) == 0.0  # a label that is no class: a miss
    with pytest.raises(ValueError, match=r"^y: 3 label\(s\) for 2 image\(s\); give one label per image$"):
        clf.score(paths[:2], truth[:3])
    with pytest.raises(ValueError, match=r"^y\[1\]: no label \(nan\); give each image its class$"):
        clf.score(paths[:2], [1.0, float("nan")])
    with pytest.raises(ValueError, match=r"^y: expected one label per image \(shape N or N×1\), got shape \(2, 2\)$"):
        clf.score(paths[:2], [[0, 1], [1, 0]])


def test_it_pickles_as_its_run_folder_and_takes_paths_in_an_array_or_a_series(digits_folder, warm_cache, tmp_path,
                                                                               monkeypatch):
    import pickle
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    fne.fit(digits_folder, "run", features="last", head="logreg", cache=str(warm_cache), progress=False, **FAST)
    clf = fne.load("run", batch_size=5)  # a relative folder: pickled absolute
    paths = [str(p) for p in sorted(digits_folder.rglob("*.png"))[:6]]
    want = clf.decision_function(paths)  # its backbone built
    assert np.allclose(clf.decision_function(np.array(paths)), want, rtol=0, atol=1e-12)
    assert np.allclose(clf.decision_function(pd.Series(paths)), want, rtol=0, atol=1e-12)
    again = pickle.loads(pickle.dumps(clf))
    assert again._scorer.batch == 5 and repr(again) == repr(clf).replace("'run'", repr(str(tmp_path / "run")))
    assert np.allclose(again.predict_proba(paths), want, rtol=0, atol=1e-12)
    (tmp_path / "clf.pkl").write_bytes(pickle.dumps(again))
    code = ("import pickle, sys, numpy as np; clf = pickle.load(open('../clf.pkl', 'rb')); "
            "np.save('got.npy', clf.decision_function(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(Path(fne.__file__).parents[1])}
    subprocess.run([sys.executable, "-c", code, *paths], check=True, cwd=tmp_path / "run", env=env)  # another folder
    assert np.allclose(np.load(tmp_path / "run" / "got.npy"), want, rtol=1e-6, atol=1e-7)


def test_a_fit_run_at_another_image_size_scores_at_that_size(digits_folder, tmp_path):
    fne.fit(digits_folder, tmp_path / "run", features="last", image_size=64, cache=str(tmp_path / "cache"),
            extract_missing=True, progress=False, **FAST)
    fne.predict(tmp_path / "run", digits_folder, out=tmp_path / "p.csv", progress=False)
    p = _csv(tmp_path / "p.csv")
    clf = fne.load(tmp_path / "run")
    assert clf._scorer.prep.size == 64
    got = clf.decision_function([digits_folder / x for x in p["path"]])
    assert np.allclose(got, _scores(p, clf.classes_), rtol=1e-5, atol=1e-6)


def test_a_loaded_model_clones_and_sets_its_params_as_scikit_learn_does(digits_folder, warm_cache, tmp_path,
                                                                        monkeypatch):
    from sklearn.base import clone, is_classifier
    from sklearn.metrics import get_scorer

    for head in ("svm", "logreg"):
        fne.fit(digits_folder, tmp_path / head, features="last", head=head, cache=str(warm_cache), progress=False,
                **FAST)
    clf = fne.load(tmp_path / "svm", batch_size=5)
    assert clf.get_params() == {"run_dir": tmp_path / "svm", "device": "auto", "batch_size": 5, "moved_weights": None}
    assert repr(clf) == f"fne.load({str(tmp_path / 'svm')!r}, batch_size=5): a `fne fit` run's last+svm head, " \
                        f"4 classes"
    paths = sorted(digits_folder.rglob("*.png"))[::3]
    want = clf.decision_function(paths)
    twin = clone(clf)  # loaded again: an object of its own, scoring alike
    assert twin is not clf and twin._scorer is not clf._scorer and twin.get_params() == clf.get_params()
    assert np.allclose(twin.decision_function(paths), want, rtol=0, atol=1e-12)
    assert is_classifier(clf)
    truth = [p.parent.name for p in paths]
    assert get_scorer("accuracy")(clf, paths, truth) == clf.score(paths, truth)
    assert clf.set_params(run_dir=tmp_path / "logreg") is clf
    assert "last+logreg head" in repr(clf) and clf._scorer.batch == 5 and hasattr(clf, "predict_proba")
    assert not hasattr(twin, "predict_proba")  # the clone is still the svm head
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    absent = r"^device='cuda': CUDA is not available on this machine \(.+\); use device='cpu' or 'auto'$"
    with pytest.raises(OptionError, match=absent):
        clf.set_params(device="cuda")
    assert clf.get_params()["device"] == "auto" and "last+logreg" in repr(clf)  # refused: left as it was
    with pytest.raises(ValueError, match="invalid parameter.*'C'.*valid: run_dir, device, batch_size, moved_weights"):
        clf.set_params(C=2.0)
    with pytest.raises(OptionError, match=absent):
        fne.load(tmp_path / "svm", device="cuda")


def test_a_run_a_newer_fne_wrote_is_refused_in_one_line_naming_both_formats(tmp_path, capsys):
    """A train run's metrics.json, or a fit run's model.joblib, of a format a newer fne writes: a
    train run was read as one of this fne's (its network rebuilt from fields that may mean other
    things now), a fit run's model refused with "refit it", which would replace the newer fne's run.
    fne.load and fne predict refuse both in one line naming the file and both formats (exit 2)."""
    import json

    from fne.linear.predict import MODEL_FORMAT
    from fne.metrics import METRICS_FORMAT

    data = write_digits(tmp_path / "data", per_class=2, classes=2)
    train, fit = tmp_path / "train", tmp_path / "fit"
    train.mkdir(), fit.mkdir()
    (train / "model.pt").write_bytes(b"")
    (train / "metrics.json").write_text(json.dumps({
        "format": METRICS_FORMAT + 1, "kind": "train", "mode": "frozen", "arch": "resnet18", "weights": "random",
        "classes": ["0", "1"], "image_size": 32, "precision": "fp32", "data_resolved": str(data)}))
    joblib.dump({"format": MODEL_FORMAT + 1}, fit / "model.joblib")
    for run, said in ((train, f"{train / 'metrics.json'}: written by a newer fne: format {METRICS_FORMAT + 1}, this "
                              f"fne reads up to {METRICS_FORMAT}; upgrade fne"),
                      (fit, f"{fit / 'model.joblib'}: written by a newer fne: model format {MODEL_FORMAT + 1}, this "
                            f"fne reads {MODEL_FORMAT}; upgrade fne")):
        with pytest.raises(FneError) as e:
            fne.load(run)
        assert str(e.value) == said
        capsys.readouterr()
        assert main(["predict", str(run), str(data), "--out", str(tmp_path / "p.csv")]) == 2
        assert capsys.readouterr().err == f"fne predict: error: {said}\n" and not (tmp_path / "p.csv").exists()
