"""README's examples that no other test runs: the Python API's block of verbs, run as written
but for the backbone's weights (offline: random) and a short training."""

from __future__ import annotations

import json

import h5py
import pandas as pd

from .conftest import FAST
from .test_api import _readme_python

STORE = ", ".join(f"{k}={v!r}" for k, v in FAST.items())  # the rows warm_cache holds


def _swapped(code: str, swaps: list[tuple[str, str]]) -> str:
    for old, new in swaps:
        assert old in code, f"README's block no longer holds {old!r}: update this test with it"
        code = code.replace(old, new)
    return code


def test_the_readmes_python_api_block_runs(digits_folder, warm_cache, tmp_path, monkeypatch, capsys):
    code = _swapped(_readme_python("fne.extract(\"images/\""), [
        ('arch="vgg16", weights="imagenet"', STORE),
        ('head="svm", out="runs/fne")', f'head="svm", out="runs/fne", {STORE})'),
        ('StoreSpec(arch="efficientnet_lite0", weights="imagenet")', f"StoreSpec({STORE})"),
        ('out="images-fne.h5")', f'out="images-fne.h5", {STORE})'),
        ('arch="efficientnet_lite0", out="runs/frozen")',
         'arch="efficientnet_lite0", weights="random", out="runs/frozen", epochs=1, val_fraction=0.25, workers=0)'),
        ('fne.advise("images/", arch="efficientnet_lite0")',
         'fne.advise("images/", arch="efficientnet_lite0", weights="random", precision="fp32")'),
        ('"images/"', repr(str(digits_folder))), ('"new_images/"', repr(str(digits_folder)))])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FNE_CACHE", str(warm_cache))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["r"].n_images == 24 and scope["r"].n_computed == 0  # every row already cached
    assert scope["m"]["features"] == "last" and scope["m"]["head"] == "logreg"
    assert json.loads((tmp_path / "runs/fne/metrics.json").read_text())["features"] == "fne"
    p = pd.read_csv(tmp_path / "predictions.csv", dtype=str)
    assert len(p) == 24 and {"predicted", "predicted_2", "predicted_3", "true"} <= set(p.columns)  # top=3
    with h5py.File(tmp_path / "images-fne.h5") as f:
        assert f["embedding"].shape[0] == 24 and f["embedding"].attrs["kind"] == "fne"
    assert json.loads((tmp_path / "runs/frozen/metrics.json").read_text())["mode"] == "frozen"
