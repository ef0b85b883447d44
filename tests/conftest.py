"""Shared fixtures: small real image folders made from scikit-learn's digits, and one warm cache.

Extraction in tests uses efficientnet_lite0 with seeded random weights in fp32: cheap on a
CPU and deterministic, with no network.
"""

from __future__ import annotations

import builtins
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FAST = dict(arch="efficientnet_lite0", weights="random", precision="fp32", storage_dtype="float32")
# FAST at 32 x 32 (a forward ~50 times cheaper than at the backbone's 224, its rows in a store of
# their own): for the tests whose behaviour does not depend on the input size.
FAST32 = {**FAST, "image_size": 32}
# The checkout's cache/ is where fne run from it keeps rows by default: the user's, which a test
# must never write to (each passes a cache of its own, or sets $FNE_CACHE).
CHECKOUT_CACHE = Path(__file__).resolve().parents[1] / "cache"


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.is_dir() else set()


def pytest_sessionstart(session) -> None:
    session.config.checkout_cache = _listing(CHECKOUT_CACHE)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the run when a test wrote into the checkout's cache/ (it would also leave files in a
    user's cache): name what it wrote."""
    new = sorted(_listing(CHECKOUT_CACHE) - getattr(session.config, "checkout_cache", set()))
    if new:
        print(f"\ntests wrote into {CHECKOUT_CACHE} (give them a cache of their own): {', '.join(new[:5])}")
        session.exitstatus = 1


def write_digits(root: Path, per_class: int = 6, classes: int = 4, split: bool = False,
                 test_counts: tuple[int, ...] | None = None) -> Path:
    """A class-per-folder (optionally train/test) image folder of real handwritten digits; with
    `test_counts`, a train/test folder of `per_class` training images and test_counts[c] test
    images of class c (an unbalanced test set)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in range(classes):
        idx = np.flatnonzero(d.target == c)[:per_class + (test_counts[c] if test_counts else 0)]
        for j, i in enumerate(idx):
            part = (("train" if j < per_class else "test") if test_counts
                    else ("train" if j < per_class * 2 // 3 else "test") if split else None)
            folder = root / part / str(c) if part else root / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(np.clip(d.images[i] * 16, 0, 255).astype(np.uint8)).resize((32, 32))
            img.save(folder / f"d{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits") / "data", per_class=6, classes=4)


@pytest.fixture(scope="session")
def digits_split(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits_split") / "data", per_class=9, classes=3, split=True)


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory, digits_folder) -> Path:
    """A cache that already holds digits_folder's rows."""
    from fne.extraction.extract import extract

    cache = tmp_path_factory.mktemp("cache")
    extract(digits_folder, cache=str(cache), batch_size=8, progress=False, **FAST)
    return cache


@pytest.fixture(scope="session")
def warm_cache32(tmp_path_factory, digits_folder) -> Path:
    """A cache that already holds digits_folder's rows at 32 x 32 (FAST32): for tests that extract
    more rows into a copy of it."""
    from fne.extraction.extract import extract

    cache = tmp_path_factory.mktemp("cache32")
    extract(digits_folder, cache=str(cache), batch_size=8, progress=False, **FAST32)
    return cache


@pytest.fixture(scope="module")
def one_torch_thread():
    """On a shared, busy CPU one thread is several times faster than OpenMP threads that wait."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def file_size_limit():
    """A file-size limit (ulimit -f) of 64 KiB set around the calls under it: a real refusal
    (EFBIG) in the middle of a file, as a full disk (ENOSPC) refuses it; Python ignores SIGXFSZ."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    class Limit:
        def __enter__(self):
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))

        def __exit__(self, *exc):
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    return Limit()


@pytest.fixture
def store_reads(monkeypatch) -> list[int]:
    """The number of rows of every read of a store made during the test, in order
    (`Store.read_rows`, which `Store.read` goes through)."""
    from fne.cache.store import Store

    sizes: list[int] = []
    real_read = Store.read_rows

    def counting_read(self, keys, layers):
        sizes.append(len(keys))
        return real_read(self, keys, layers)

    monkeypatch.setattr(Store, "read_rows", counting_read)
    return sizes


class _Counter:
    n = 0


@pytest.fixture
def forward_images(monkeypatch) -> _Counter:
    """Counts the images that go through the tap model during the test (`.n`)."""
    from fne.extraction.taps import TapRunner

    counter = _Counter()
    real_call = TapRunner.__call__

    def counting_call(self, x):
        counter.n += x.shape[0]
        return real_call(self, x)

    monkeypatch.setattr(TapRunner, "__call__", counting_call)
    return counter


IMAGE_SUFFIXES = (".png", ".jpg")


def age(root: Path, seconds: float = 3600) -> Path:
    """Files last modified an hour ago, as a folder of a real dataset is (the manifest trusts
    an entry only for files older than the moment they were hashed)."""
    past = time.time() - seconds
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (past, past))
    return root


@pytest.fixture
def image_opens(monkeypatch) -> Counter:
    """Path -> times an image file was opened by `open()` in this process."""
    opened: Counter = Counter()
    real_open = builtins.open

    def counting_open(file, *a, **k):
        if isinstance(file, (str, os.PathLike)) and str(file).lower().endswith(IMAGE_SUFFIXES):
            opened[str(file)] += 1
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", counting_open)
    return opened


def says_it_waits(capsys, what: str = "the extraction", line: str = "another process is computing rows") -> None:
    """Until an extraction (a verb whose progress line holds `line`) on another thread says it
    waits for another process's lock (its progress line on stderr), for up to 10 s; else the test
    fails naming `what`."""
    for _ in range(200):
        time.sleep(0.05)
        if line in capsys.readouterr().err:
            return
    raise AssertionError(f"{what} did not wait for the other process")


def trains_alike_from_one_copy(loose_data: Path, packed_data: Path, tmp_path: Path, capsys) -> None:
    """`fne train` over `packed_data` (the images of `loose_data` in a container) copies it once,
    with a line saying so, scores as over the loose files, and `fne cache info` lists the copy."""
    import fne
    import fne.cli

    common = dict(arch="efficientnet_lite0", weights="random", epochs=2, image_size=32, workers=0,
                  val_fraction=0, batch_size=4, progress=True)
    loose = fne.train(loose_data, "frozen", tmp_path / "run-files", **common)
    capsys.readouterr()
    packed = fne.train(packed_data, "frozen", tmp_path / "run-packed", **common)
    out = capsys.readouterr().out
    assert out.count("copying the images of") == 1 and "for reading them shuffled" in out
    assert len(shuffled_copies(tmp_path)) == 1
    assert packed["accuracy"] == loose["accuracy"] and packed["n_train"] == loose["n_train"] == 9
    fne.train(packed_data, "frozen", tmp_path / "run-packed2", **{**common, "progress": False})
    assert "copying" not in capsys.readouterr().out and len(shuffled_copies(tmp_path)) == 1
    (copy,) = shuffled_copies(tmp_path)
    info = fne.cache_info()
    assert info.shuffled_copies == [str(copy)] and info.shuffled_bytes == copy.stat().st_size > 0
    assert fne.cli.main(["cache", "info"]) == 0
    assert (f"1 Parquet or HDF5 file(s) copied for fne train's shuffled reading: {copy.stat().st_size / 2**20:.1f} MiB "
            f"in {copy.parent} (deleting them frees it") in capsys.readouterr().out


def shuffled_copies(tmp_path: Path) -> list[Path]:
    """The copies for shuffled reading in the cache `tmp_path / "fne-cache"`."""
    return sorted((tmp_path / "fne-cache" / "manifests" / "shuffled").glob("*"))


def main_thread_at(function, local: str) -> object:
    """The local `local` of `function` as the main thread runs it now (its innermost call), else
    None: a test's helper thread waits on it for the moment to act (`until`), not on a time."""
    import sys
    import threading

    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None and frame.f_code is not function.__code__:
        frame = frame.f_back
    return None if frame is None else frame.f_locals.get(local)


def until(condition, what: str, seconds: float = 300) -> None:
    """Wait for `condition()` (a generous bound: the tests run on busy machines); AssertionError
    saying `what` did not happen where it does not."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (not within {seconds:.0f} s)")
        time.sleep(0.01)
