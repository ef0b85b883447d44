"""README's examples that no other test runs: the Python API's block of verbs, run as written
but for the backbone's weights (offline: random) and a short training; the Fashion-MNIST block's
commands on a folder of idx files."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import h5py
import numpy as np
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


def _idx(path, a: np.ndarray) -> None:
    """An idx-ubyte file, gzipped, as Fashion-MNIST ships them."""
    head = bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(head + a.astype(np.uint8).tobytes())


def test_the_readmes_fashion_mnist_commands_run_on_its_idx_folder(tmp_path, monkeypatch):
    """The block's two `fne fit` commands, run as written but on a folder of idx files of the
    layout Debian installs (the real ones are 70,000 images) with random weights at 32 × 32: the
    first extracts and fits on the predefined split, the second fits the last layer from the cache."""
    from fne.cli import main

    rng = np.random.default_rng(0)
    parts = {"train": (rng.integers(0, 256, (12, 28, 28)), np.arange(12) % 10),
             "t10k": (rng.integers(0, 256, (6, 28, 28)), np.arange(6) % 10)}
    (data := tmp_path / "fashion-mnist").mkdir()
    for part, (x, y) in parts.items():
        _idx(data / f"{part}-images-idx3-ubyte.gz", x)
        _idx(data / f"{part}-labels-idx1-ubyte.gz", y)
    text = (Path(__file__).parents[1] / "README.md").read_text()
    commands = re.findall(r"^fne fit /usr/share/datasets/fashion-mnist (.*)$", text, re.M)
    assert len(commands) == 2 and "--extract" in commands[0], commands
    monkeypatch.chdir(tmp_path)
    fast = ["--weights", "random", "--image-size", "32", "--precision", "fp32", "--storage-dtype", "float32",
            "--workers", "0", "--no-progress", "--cache", str(tmp_path / "cache")]
    for args in commands:
        assert main(["fit", str(data), *args.split(), *fast]) == 0
    for run in ("fmnist-fne", "fmnist-last"):
        saved = json.loads((tmp_path / "runs" / run / "metrics.json").read_text())
        assert saved["n_train"] == 12 and saved["n_test"] == 6
    assert json.loads((tmp_path / "runs/fmnist-last/metrics.json").read_text())["features"] == "last"
