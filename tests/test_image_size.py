"""`--image-size N` of extraction: the crop is N, the resize scaled as the weights' own; the rows
in a store of their own (the backbone's own size keeps every existing key); found by fit at the
same size; a size the network cannot run at refused in one line before any image is read."""

from __future__ import annotations

import pytest

import fne.extraction.extract as fx
from fne.cache.spec import StoreSpec, recorded_image_size
from fne.cli import main
from fne.errors import OptionError
from fne.linear.features import extract_command

from .conftest import FAST

ON_CPU = ["--precision", "fp32", "--storage-dtype", "float32", "--device", "cpu", "--no-progress"]
LITE0 = ["--arch", "efficientnet_lite0", "--weights", "random", *ON_CPU]


@pytest.mark.parametrize("arch", ["vgg16", "efficientnet_lite0", "resnet18", "vit_b_16"])
def test_the_backbones_own_size_keeps_the_store_key(arch, tmp_path):
    default = StoreSpec(arch=arch, weights="random", cache=str(tmp_path), precision="fp32")
    own = StoreSpec(arch=arch, weights="random", cache=str(tmp_path), precision="fp32",
                    image_size=default.backbone().input_size)
    assert own.open().path == default.open().path
    assert default.prep_key() == "center224-tv"  # the key every store before --image-size has


def test_another_size_scales_the_resize_and_names_the_size_in_the_key(tmp_path):
    assert StoreSpec(arch="vgg16", image_size=64).prep_key() == "center64-tv"  # resize 73: 256 × 64 / 224
    assert StoreSpec(arch="vgg16", image_size=64).preprocess().resize == 73
    p = StoreSpec(arch="resnet50", weights="IMAGENET1K_V2", image_size=112).preprocess()  # resize 232 at 224
    assert (p.size, p.resize, p.key) == (112, 116, "center112-r116-tv")
    assert StoreSpec(arch="vgg16", crop="ten", image_size=64).prep_key() == "ten64-tv"
    with pytest.raises(OptionError, match=r"^bad image_size=4: image_size must be in \[8, 4096\]$"):
        StoreSpec(arch="vgg16", image_size=4, cache=str(tmp_path / "c")).open()
    assert not (tmp_path / "c").exists()


def test_rows_at_a_size_are_extracted_found_by_fit_and_kept_apart(digits_folder, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "c"
    r = fx.extract(digits_folder, cache=str(cache), image_size=32, progress=False, workers=0, **FAST)
    assert r.n_computed == 24 and r.store.endswith("__center32-tv__fp32__float32")
    sizes = []
    real = fx.reader.ImageItems.__init__

    def seen(self, dataset, todo, prep, *a, **k):
        sizes.append(prep.size)
        real(self, dataset, todo, prep, *a, **k)

    monkeypatch.setattr(fx.reader.ImageItems, "__init__", seen)
    r = fx.extract(digits_folder, cache=str(cache), image_size=48, progress=False, workers=0, **FAST)
    assert sizes == [48] and r.n_computed == 24  # a store of its own: nothing of the 32 rows reused
    out = tmp_path / "fit"
    assert main(["fit", str(digits_folder), "--out", str(out), "--image-size", "32", "--splits", "1",
                 "--features", "last", *LITE0, "--cache", str(cache)]) == 0
    assert "center32-tv" in (out / "metrics.json").read_text()
    assert main(["fit", str(digits_folder), "--out", str(tmp_path / "fit224"), "--splits", "1", *LITE0,
                 "--cache", str(cache)]) == 2  # the backbone's own size: no rows yet
    assert "fne extract" in capsys.readouterr().err


def test_a_size_the_network_cannot_take_is_refused_before_the_loader(digits_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fx, "_loader", lambda *a, **k: pytest.fail("started the loader"))
    for arch, size, said in (("vit_b_16", 160, "Wrong image height! Expected 224 but got 160!"),
                             ("vgg16", 16, "Output size is too small")):
        assert main(["extract", str(digits_folder), "--arch", arch, "--weights", "random", "--image-size", str(size),
                     "--cache", str(tmp_path / "c"), "--workers", "0", *ON_CPU]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fne extract: error: --image-size {size}: {arch} cannot run at {size} x {size} (")
        assert said in err and err.endswith("; its own size is 224\n") and len(err.splitlines()) == 1



@pytest.mark.parametrize("error", [AttributeError("module 'sympy' has no attribute 'logic'\nmore"),
                                   RuntimeError("an op of the model's own code failed")])
def test_an_error_of_the_size_check_itself_is_no_size_refusal(error, digits_folder, tmp_path, monkeypatch, capsys):
    """The meta forward fails for a reason no size mends (a half-done import, a model's bug): one
    line saying the check failed, with the error's first line, not "cannot run at"."""
    from fne.backbones import vgg

    def broken(self, x):
        raise error

    monkeypatch.setattr(vgg.VGG, "forward", broken)
    monkeypatch.setattr(fx, "_loader", lambda *a, **k: pytest.fail("started the loader"))
    assert main(["extract", str(digits_folder), "--arch", "vgg16", "--weights", "random", "--image-size", "64",
                 "--cache", str(tmp_path / "c"), "--workers", "0", *ON_CPU]) == 2
    err = capsys.readouterr().err
    first = str(error).splitlines()[0]
    assert err == (f"fne extract: error: --image-size 64: the check that vgg16 runs at 64 x 64 failed "
                   f"({type(error).__name__}: {first}), which no other size mends\n")
    from fne.backbones.fits import refuse_size
    from fne.errors import FneError

    with pytest.raises(FneError, match="^image_size=64: the check that vgg16 runs") as e:
        refuse_size("vgg16", "random", 64)
    assert not isinstance(e.value, OptionError)


def test_the_size_is_passed_on_by_the_extract_hint_and_the_fitted_record():
    spec = StoreSpec(arch="vgg16", weights="random", image_size=64)
    assert extract_command("d", spec).endswith("--weights random --image-size 64")
    assert "--image-size" not in extract_command("d", StoreSpec(arch="vgg16"))
    assert recorded_image_size({"crop": "center", "preprocess": "center64-tv"}) == 64
    assert recorded_image_size({"crop": "ten", "preprocess": "ten112-r116-tv-devjpeg8"}) == 112
    assert recorded_image_size({"crop": "center"}) is None  # a model that records no preprocessing
    s = {"crop": "center", "preprocess": "center224-tv"}
    assert StoreSpec(arch="vgg16", image_size=recorded_image_size(s)).prep_key() == s["preprocess"]


def test_predict_and_advise_work_at_the_size(digits_folder, tmp_path, capsys):
    """A model fitted on rows at a size is applied at that size (its store found, no earlier-pixels
    refusal); advise measures at the size given and its advised commands carry it."""
    cache = str(tmp_path / "c")
    out = tmp_path / "fit"
    assert main(["fit", str(digits_folder), "--out", str(out), "--image-size", "32", "--splits", "1",
                 "--features", "last", *LITE0, "--cache", cache, "--extract"]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), str(digits_folder), "--out", str(tmp_path / "p.csv")]) == 0
    assert "wrote 24 predictions" in capsys.readouterr().out
    assert main(["advise", str(digits_folder), "--image-size", "32", *LITE0, "--cache", cache]) == 0
    said = capsys.readouterr().out
    stores = sorted(p.name for p in (tmp_path / "c").iterdir() if "efficientnet_lite0" in p.name)
    assert stores and all("center32-tv" in s for s in stores), stores
    advised = [line for line in said.splitlines() if line.lstrip().startswith("try: fne ")]
    assert advised and all("--image-size 32" in line for line in advised), said
