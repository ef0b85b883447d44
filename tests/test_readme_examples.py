"""README's examples that no other test runs: the Python API's block of verbs, run as written
but for the backbone's weights (offline: random) and a short training; the Fashion-MNIST block's
idx reader."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from fne.data.datasets import load_dataset

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


def test_the_readmes_fashion_mnist_block_writes_an_npz_fne_reads(tmp_path, monkeypatch):
    """The block's idx reader and `np.savez` give DATA of its predefined split and class names,
    on idx files of the layout it reads (the real ones need Debian's package)."""
    rng = np.random.default_rng(0)
    parts = {"train": (rng.integers(0, 256, (12, 28, 28)), np.arange(12) % 10),
             "t10k": (rng.integers(0, 256, (6, 28, 28)), np.arange(6) % 10)}
    for part, (x, y) in parts.items():
        _idx(tmp_path / f"{part}-images-idx3-ubyte.gz", x)
        _idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", y)
    text = (Path(__file__).parents[1] / "README.md").read_text()
    (code,) = re.findall(r"^python - <<'EOF'\n(.*?)^EOF$", text, re.S | re.M)
    code = _swapped(code, [('"/usr/share/datasets/fashion-mnist", 1500, 500', f"{str(tmp_path)!r}, 10, 5")])
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    with np.load(tmp_path / "fashion-mnist.npz") as f:
        assert np.array_equal(f["x_train"], parts["train"][0][:10]) and np.array_equal(f["y_test"], parts["t10k"][1][:5])
    d = load_dataset(tmp_path / "fashion-mnist.npz")
    assert len(d) == 15 and sorted(set(d.splits)) == ["test", "train"]
    assert set(d.labels) <= {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                             "Bag", "Ankle boot"} and "Trouser" in d.labels
