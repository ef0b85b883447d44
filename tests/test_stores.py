"""Rows that follow the user: found whatever precision computed them, pinned by a fitted model,
keyed through a manifest that spares unchanged folders, sharded without reading every file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fne.data.datasets
import fne.devices
import fne.extraction.extract as fx
import fne.extraction.plan as turns
from fne.backbones import registry as backbones
from fne.cache.store import list_stores, lock_file
from fne.cache.upkeep import verify
from fne.cli import main
from fne.errors import FneError, OptionError
from fne.linear.fit import fit
from fne.linear.predict import predict

from .conftest import FAST, FAST32, age, says_it_waits, write_digits

ARCH = FAST["arch"]


def test_store_extracted_at_fp32_is_found_by_a_default_fit(digits_folder, tmp_path, monkeypatch, capsys, forward_images):
    cache = str(tmp_path / "cache")
    fx.extract(digits_folder, arch=ARCH, weights="random", cache=cache, precision="fp32", progress=False)
    # Another machine, where `auto` means bf16: the rows are still found, nothing is recomputed.
    monkeypatch.setattr(fne.devices, "cpu_bf16_native", lambda: True)
    before = forward_images.n
    m = fit(digits_folder, out=tmp_path / "run", cache=cache, arch=ARCH, weights="random", splits=2)
    assert forward_images.n == before
    assert m["precision"] == "fp32" and m["storage_dtype"] == "float16" and m["rows"] == "cached"
    # An explicit precision pins: bf16 rows do not exist, so it says how to make them.
    with pytest.raises(FneError, match="are not in the cache"):
        fit(digits_folder, out=tmp_path / "run2", cache=cache, arch=ARCH, weights="random", precision="bf16")


def test_several_stores_most_rows_then_highest_precision(digits_folder, tmp_path, capsys):
    cache = str(tmp_path / "cache")  # at 32 x 32 throughout: the store chosen does not depend on the size
    fx.extract(digits_folder, arch=ARCH, weights="random", cache=cache, precision="bf16", progress=False, image_size=32)
    fx.extract(digits_folder, arch=ARCH, weights="random", cache=cache, precision="fp32", progress=False, image_size=32)
    m = fit(digits_folder, out=tmp_path / "run", cache=cache, arch=ARCH, weights="random", splits=2, image_size=32)
    assert m["precision"] == "fp32"  # both hold every row: the higher precision wins
    assert "reading 24 rows from store" in capsys.readouterr().err
    fit(digits_folder, out=tmp_path / "quiet", cache=cache, arch=ARCH, weights="random", splits=2, progress=False, image_size=32)
    assert "reading" not in capsys.readouterr().err  # progress=False: which store, a progress line, is not said
    # A store holding more of the requested rows wins over a higher precision.
    extra = write_digits(tmp_path / "more", per_class=8, classes=4)
    fx.extract(extra, arch=ARCH, weights="random", cache=cache, precision="bf16", progress=False, image_size=32)
    m = fit(extra, out=tmp_path / "run2", cache=cache, arch=ARCH, weights="random", splits=2,
            extract_missing=True, image_size=32)
    assert m["precision"] == "bf16" and m["rows"] == "cached"


def test_fit_extract_fills_the_store_it_reads(digits_folder, tmp_path):
    """Missing rows are extracted into the store already holding the others, whatever `auto`
    means here, so a dataset never ends split across two stores."""
    cache = str(tmp_path / "cache")
    first = fne.data.datasets.load_dataset(digits_folder).subset(range(12))
    fx.extract(first, arch=ARCH, weights="random", cache=cache, precision="fp32", progress=False)
    m = fit(digits_folder, out=tmp_path / "run", cache=cache, arch=ARCH, weights="random", splits=2,
            extract_missing=True)
    assert m["precision"] == "fp32" and m["rows"] == "extracted"
    assert [len(s) for s in list_stores(cache)] == [24]


def test_predict_refuses_weights_that_changed(digits_split, tmp_path, capsys):
    weights = tmp_path / "w.pt"
    torch.save(backbones.load_backbone(ARCH, "random", seed=1).state_dict(), weights)
    cache = str(tmp_path / "cache")
    kw = dict(arch=ARCH, weights=str(weights), precision="fp32", cache=cache)
    fit(digits_split, out=tmp_path / "run", extract_missing=True, **kw)
    ok = predict(tmp_path / "run", digits_split, out=tmp_path / "p.csv")
    assert ok["n"] == 27
    # The same path now holds other weights (a rerun of `fne train` into the same folder).
    torch.save(backbones.load_backbone(ARCH, "random", seed=2).state_dict(), weights)
    with pytest.raises(FneError, match="changed since") as e:
        predict(tmp_path / "run", digits_split, out=tmp_path / "p2.csv")
    new_fp = backbones.fingerprint(ARCH, str(weights))
    assert new_fp in str(e.value) and "fit again" in str(e.value)
    assert not (tmp_path / "p2.csv").exists()
    code = main(["predict", str(tmp_path / "run"), str(digits_split), "--out", str(tmp_path / "p3.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "changed since" in err and "Traceback" not in err


def test_predict_with_a_moved_weights_that_moved(digits_split, tmp_path, capsys):
    """A model fitted on a weights file, copied to another machine (or its weights folder moved):
    `fne predict` stopped at the recorded path, with no way to name the new one. --moved-weights
    names it, checked against the model's fingerprint; the rows are read from the same store."""
    weights = tmp_path / "w.pt"
    torch.save(backbones.load_backbone(ARCH, "random", seed=1).state_dict(), weights)
    cache = str(tmp_path / "cache")
    fit(digits_split, out=tmp_path / "run", extract_missing=True, arch=ARCH, weights=str(weights), precision="fp32",
        cache=cache, progress=False)
    before = predict(tmp_path / "run", digits_split, out=tmp_path / "p.csv")
    weights.rename(tmp_path / "moved.pt")
    code = main(["predict", str(tmp_path / "run"), str(digits_split), "--out", str(tmp_path / "p2.csv")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"fne predict: error: {tmp_path / 'run'} was fitted on weights {weights}")
    assert err.rstrip().endswith("; where the file moved, give its path: --moved-weights PATH") and len(err.splitlines()) == 1
    after = predict(tmp_path / "run", digits_split, out=tmp_path / "p2.csv", moved_weights=str(tmp_path / "moved.pt"))
    assert after["store"] == before["store"] and (tmp_path / "p.csv").read_bytes() == (tmp_path / "p2.csv").read_bytes()
    torch.save(backbones.load_backbone(ARCH, "random", seed=2).state_dict(), tmp_path / "other.pt")
    code = main(["predict", str(tmp_path / "run"), str(digits_split), "--out", str(tmp_path / "p3.csv"),
                 "--moved-weights", str(tmp_path / "other.pt")])
    err = capsys.readouterr().err
    assert code == 2 and f"--moved-weights '{tmp_path / 'other.pt'}' is not the weights" in err
    assert not (tmp_path / "p3.csv").exists()


def test_second_fit_over_an_unchanged_folder_opens_no_image(tmp_path, image_opens):
    data = age(write_digits(tmp_path / "data", per_class=5, classes=3))
    cache = str(tmp_path / "cache")
    image_opens.clear()  # writing the images opened them
    fx.extract(data, cache=cache, progress=False, workers=0, **FAST)
    assert sum(image_opens.values()) == 15 and set(image_opens.values()) == {1}  # read once each
    image_opens.clear()
    fit(data, out=tmp_path / "run", cache=cache, splits=2, **{k: v for k, v in FAST.items()})
    fit(data, out=tmp_path / "run2", cache=cache, splits=2, head="logreg", **FAST)
    assert sum(image_opens.values()) == 0
    # A changed file is hashed again, and only that one.
    victim, other = sorted(data.rglob("*.png"))[0], sorted(data.rglob("*.png"))[-1]
    victim.write_bytes(other.read_bytes())  # new content (a copy of another image), new mtime
    past = time.time() - 1800
    os.utime(victim, (past, past))
    image_opens.clear()
    fit(data, out=tmp_path / "run3", cache=cache, splits=2, **FAST)
    assert list(image_opens) == [str(victim)]


def test_four_shards_open_each_image_once_in_total(tmp_path, image_opens):
    data = write_digits(tmp_path / "data", per_class=6, classes=4)
    cache = str(tmp_path / "cache")
    image_opens.clear()  # writing the images opened them
    computed = 0
    for i in range(4):
        r = fx.extract(data, cache=cache, shard=f"{i}/4", progress=False, workers=0, **FAST)
        computed += r.n_computed
        assert r.shard_marker is not None
    files = sorted(str(p) for p in data.rglob("*.png"))
    assert sorted(image_opens) == files and set(image_opens.values()) == {1}
    assert computed == 24
    (store,) = list_stores(cache)
    assert len(store) == 24 and verify(store).problems == [] and verify(store).duplicates == 0



@pytest.mark.parametrize("shard", [(0.5, 2), ("0", "2"), (True, 2)])
def test_a_shard_tuple_of_other_than_integers_is_refused_before_anything_is_written(shard, digits_folder, tmp_path):
    """(0.5, 2) computed no image and wrote a finished marker for shard "0.5/2"; ("0", "2") was a
    TypeError from a comparison."""
    with pytest.raises(OptionError, match=r"^bad shard=.*; expected \(I, N\), e.g. \(0, 4\)$"):
        fx.extract(digits_folder, cache=str(tmp_path / "cache"), shard=shard, progress=False, **FAST)
    assert not (tmp_path / "cache").exists()


def test_a_shard_tuple_of_numpy_integers_is_that_shard(tmp_path):
    """np.arange's integers (a job array's index) were an OverflowError deep in the sharding."""
    data, cache = age(write_digits(tmp_path / "data")), str(tmp_path / "cache")
    r = fx.extract(data, cache=cache, shard=(np.int64(1), np.int64(2)), progress=False, workers=0, **FAST)
    again = fx.extract(data, cache=cache, shard="1/2", progress=False, workers=0, **FAST)
    assert r.shard == again.shard == "1/2" and r.n_computed > 0 and again.n_computed == 0
    assert r.n_images == again.n_images < 24 and r.shard_marker == again.shard_marker

def test_fit_extract_under_torchrun_variables_computes_every_image(digits_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cache = str(tmp_path / "cache")
    m = fit(digits_folder, out=tmp_path / "run", cache=cache, extract_missing=True, splits=2, **FAST)
    assert m["n_images"] == 24 and m["rows"] == "extracted"
    (store,) = list_stores(cache)
    assert len(store) == 24
    assert all(r["shard"] is None for r in store.records())


HOLD = """
import sys
from pathlib import Path
from fne.data.sidecar import locked
with locked(Path(sys.argv[1]), process=True):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_extraction_of_the_same_images_waits_and_computes_nothing(tmp_path, capsys, forward_images):
    """Two processes extracting the same DATA into one store: the second waits for the first
    (here: the test holding the lock while it puts the first's rows and manifest in place), then
    computes only what is missing, which is nothing."""
    import shutil
    import subprocess
    import sys
    import threading

    from fne.cache.spec import StoreSpec
    from fne.data.datasets import load_dataset

    data = age(write_digits(tmp_path / "data", per_class=3, classes=2))
    first = tmp_path / "first"
    fx.extract(data, cache=str(first), progress=False, **FAST)
    n_first, cache, results = forward_images.n, tmp_path / "cache", []
    lock = turns.lock_file(StoreSpec(**FAST, cache=str(cache)).open(), load_dataset(data), None)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # the first process
    assert holder.stdout.readline() == "held\n"
    worker = threading.Thread(target=lambda: results.append(
        fx.extract(data, cache=str(cache), **{**FAST, "progress": True})))
    worker.start()
    says_it_waits(capsys, "the second extraction")
    assert worker.is_alive() and forward_images.n == n_first == 6
    shutil.copytree(first, cache, dirs_exist_ok=True)  # what the first process leaves
    holder.communicate("done\n", timeout=60)  # it ends
    worker.join(timeout=120)
    assert results[0].n_computed == 0 and results[0].n_cached == 6 and forward_images.n == n_first


def test_the_wait_for_another_extraction_is_a_progress_line(tmp_path, monkeypatch, capsys):
    """"note: another process is computing rows ..." printed under progress=False, which promises a
    Python caller silence but for notes, warnings and errors: the wait, like "extracting N images
    missing from the cache", says how the work goes. It is a progress line now."""
    import contextlib

    from fne.cache.spec import StoreSpec
    from fne.data.datasets import load_dataset

    @contextlib.contextmanager
    def held_by_another(lockfile, on_wait=None, process=False, **kwargs):
        if on_wait is not None:  # the DATA's lock (the store's, taken shared, waits without a word)
            on_wait()
        yield True

    monkeypatch.setattr(turns.sidecar, "locked", held_by_another)
    store, data = StoreSpec(**FAST, cache=str(tmp_path / "cache")).open(), load_dataset("digits")
    for progress, said in ((False, ""), (True, "fne extract: another process is computing rows of digits into ")):
        with turns.one_at_a_time(store, data, None, progress) as waited:
            assert waited
        err = capsys.readouterr().err
        assert err.startswith(said) and "computing rows" in err if progress else err == ""


def test_a_failed_extraction_removes_the_cache_folder_it_made_not_one_that_was_there(tmp_path, capsys):
    """`fne extract` failing before its first row (weights it cannot read) into a cache folder it
    made leaves no folder (it held DATA's manifest and the weights' hash); into a
    folder that was there, what it wrote stays. A run that committed rows keeps its cache
    (test_faults' full disk)."""
    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    (tmp_path / "bad.pt").write_text("not a state dict")
    args = ["extract", str(data), "--arch", ARCH, "--weights", str(tmp_path / "bad.pt"), "--no-progress"]
    assert main([*args, "--cache", str(tmp_path / "new")]) == 2
    assert "torch.load cannot read it" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "data"]  # nor a trash folder beside it
    (tmp_path / "old").mkdir()
    assert main([*args, "--cache", str(tmp_path / "old")]) == 2
    # refused before the extraction's lock (`fne.backbones.fits`): DATA's manifest and the weights' hash stay
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["manifests"]


@pytest.mark.parametrize("verb", ["fit", "export"])
def test_fit_or_export_extracting_into_a_new_cache_that_fails_leaves_no_folder(verb, tmp_path, capsys):
    """`fne fit/export --extract` saved DATA's manifest (making the cache folder) before extracting,
    so a failure (weights it cannot read) left the new folder behind; now it goes as `fne
    extract`'s does, and a folder that was there keeps what the call wrote."""
    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    (tmp_path / "bad.pt").write_text("not a state dict")
    args = [verb, str(data), "--out", str(tmp_path / ("r" if verb == "fit" else "r.h5")), "--extract", "--arch",
            ARCH, "--weights", str(tmp_path / "bad.pt"), "--no-progress"]
    assert main([*args, "--cache", str(tmp_path / "new")]) == 2
    assert "torch.load cannot read it" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "data"]
    (tmp_path / "old").mkdir()
    assert main([*args, "--cache", str(tmp_path / "old")]) == 2
    # refused before the extraction's lock (`fne.backbones.fits`): DATA's manifest and the weights' hash stay
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["manifests"]


def test_predict_interrupted_while_extracting_into_a_new_cache_leaves_no_folder(digits_folder, warm_cache, tmp_path,
                                                                               monkeypatch):
    """fne.predict extracts DATA's rows where the cache lacks them: Ctrl-C before the first row,
    in a cache folder the call made, takes the folder away with it."""
    run = tmp_path / "run"
    fit(digits_folder, run, cache=str(warm_cache), splits=1, progress=False, **FAST)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fx, "_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(run, digits_folder, tmp_path / "p.csv", cache=str(tmp_path / "new"), progress=False)
    assert not (tmp_path / "new").exists() and not (tmp_path / "p.csv").exists()


def test_a_new_cache_goes_only_when_it_holds_what_a_failed_first_run_leaves(tmp_path):
    """`remove_failed_new_cache`: lock files and the manifests of folders and weights go; a store,
    a download, a container listing or a lock another process holds keep the folder whole."""
    import subprocess
    import sys

    from fne.cache.upkeep import remove_failed_new_cache

    def made(name: str, *files: str) -> Path:
        for f in files:
            (tmp_path / name / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / f).write_text("{}")
        return tmp_path / name

    leaves = ("locks/s--1.lock", "manifests/033a.json", "manifests/033a.json.lock", "manifests/weights-80.json")
    assert remove_failed_new_cache(made("plain", *leaves)) and not (tmp_path / "plain").exists()
    for name, more in (("rows", "s/store.json"), ("download", "hf/x/default/a.parquet"),
                       ("listing", "manifests/containers/9f.json")):
        root = made(name, *leaves, more)
        assert not remove_failed_new_cache(root) and (root / more).is_file() and (root / leaves[1]).is_file()
    root = made("busy", *leaves)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root / leaves[0])], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # an extraction at work
    assert holder.stdout.readline() == "held\n"
    try:
        assert not remove_failed_new_cache(root) and (root / leaves[0]).is_file()
    finally:
        holder.communicate("done\n", timeout=60)
    assert remove_failed_new_cache(root) and sorted(p.name for p in tmp_path.iterdir()) == [
        "download", "listing", "rows"]


def test_cache_info_prints_the_root(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FNE_CACHE", raising=False)
    assert main(["cache", "info", "--cache", str(tmp_path / "c")]) == 0
    assert f"cache root: {tmp_path / 'c'}" in capsys.readouterr().out
    assert main(["cache", "verify", "--cache", str(tmp_path / "c")]) == 0  # nothing to verify: said
    assert capsys.readouterr().out.strip() == f"no stores in {tmp_path / 'c'}"


def test_default_cache_outside_a_checkout_is_the_user_cache_dir(monkeypatch, tmp_path):
    import platformdirs

    import fne.cache.store as fc

    monkeypatch.setattr(fc, "_CHECKOUT", tmp_path / "venv" / "lib" / "site-packages")
    assert fc.default_cache() == Path(platformdirs.user_cache_dir("fne", appauthor=False))
    assert "site-packages" not in str(fc.default_cache())


_SAVER = """
import sys, time
from fne.data.manifest import Manifest
root, cache, who, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
while time.time() < start:
    pass
for j in range(25):  # many saves, each racing the other processes' read-merge-replace
    m = Manifest(root, cache)
    m.add(f"{root}/{who}-{j}.png", 1, 1, f"key-{who}-{j}", 10**19)
    m.save()
"""


def test_ranks_saving_one_manifest_at_once_lose_no_entry(tmp_path):
    import subprocess
    import sys

    from fne.data.manifest import Manifest

    root, cache = tmp_path / "images", tmp_path / "cache"
    root.mkdir()
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _SAVER, str(root), str(cache), str(w), str(start)])
             for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    entries = Manifest(root, cache).entries
    assert sorted(entries) == sorted(f"{w}-{j}.png" for w in range(4) for j in range(25))
    assert entries["3-7.png"][2] == "key-3-7"


def test_an_empty_manifest_stats_no_file_and_a_kept_one_finds_every_key(digits_folder, tmp_path, monkeypatch):
    """A folder never extracted into the cache: nothing is known, and no file is stat'ed for it
    (a fresh run over 32,768 files spent 0.08 s here in stats it could not use); once extracted,
    a rerun finds every key by its stat."""
    from fne.data.dataset import Dataset
    from fne.data.manifest import Manifest, known_keys

    dataset = fne.data.datasets.load_dataset(digits_folder)
    calls = []
    real = Dataset.stats
    monkeypatch.setattr(Dataset, "stats", lambda self: (calls.append(1), real(self))[1])
    cache = tmp_path / "cache"
    assert known_keys(dataset, Manifest(dataset.root, cache)) == [None] * len(dataset) and not calls
    age(digits_folder)
    fx.extract(digits_folder, cache=str(cache), progress=False, **FAST)
    dataset = fne.data.datasets.load_dataset(digits_folder)
    keys = known_keys(dataset, Manifest(dataset.root, cache))
    assert calls and None not in keys and keys == dataset.keys()


@pytest.mark.parametrize("given", ["afile", "afile/sub", "file://{tmp}/afile", "$FNE_CACHE"])
def test_a_cache_that_is_a_file_is_one_clear_error(digits_folder, tmp_path, monkeypatch, capsys, given):
    (tmp_path / "afile").write_text("mine")
    monkeypatch.chdir(tmp_path)
    args = ["extract", str(digits_folder), "--arch", ARCH, "--weights", "random", "--no-progress"]
    if given == "$FNE_CACHE":
        monkeypatch.setenv("FNE_CACHE", "afile")
        says = "$FNE_CACHE afile: is a file, not a folder"
    else:
        cache = given.format(tmp=tmp_path)
        args += ["--cache", cache]
        says = f"--cache '{cache}': " + ("afile is a file" if given.endswith("sub") else "is a file")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and (tmp_path / "afile").read_text() == "mine"


def test_a_new_cache_is_kept_while_a_thread_of_this_process_holds_its_lock(tmp_path):
    """Two extractions in threads of one process into one new cache, one failing while the other
    holds its store's lock before its first commit: asking the lock (a POSIX record lock, which
    this process owns) took it for free, and closing the file released it, so the folder went
    from under the working one. This process's own locks count as held, and stay held."""
    import threading

    from fne.cache.upkeep import remove_failed_new_cache
    from fne.data.sidecar import locked

    root = tmp_path / "new"
    lock = root / "locks" / "s--1.lock"
    got, done = threading.Event(), threading.Event()

    def working():
        with locked(lock, process=True):
            got.set()
            done.wait(30)

    worker = threading.Thread(target=working)
    worker.start()
    try:
        assert got.wait(30)
        assert not remove_failed_new_cache(root) and lock.is_file()
        probe = subprocess.run([sys.executable, "-c", "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
                                "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n"
                                "    sys.exit(3)", str(lock)])
        assert probe.returncode == 3  # still held: another process cannot take it
    finally:
        done.set()
        worker.join(30)
    assert remove_failed_new_cache(root) and not root.exists()  # released: the folder goes


@pytest.mark.parametrize("given", ["gone", "gone/sub"])
def test_a_cache_through_a_link_to_nothing_is_one_clear_error(digits_folder, tmp_path, monkeypatch, capsys, given):
    """--cache through a symbolic link whose target is gone (an unmounted drive): one line before
    any image is read, not a traceback from mkdir when the first rows are committed."""
    os.symlink(tmp_path / "unmounted" / "cache", tmp_path / "gone")
    monkeypatch.chdir(tmp_path)
    assert main(["extract", str(digits_folder), "--arch", ARCH, "--weights", "random", "--no-progress",
                 "--cache", given]) == 2
    err = capsys.readouterr().err
    assert f"--cache '{given}': gone is a link to {tmp_path / 'unmounted' / 'cache'}, which does not exist" in err
    assert "Traceback" not in err and "computed" not in err and not (tmp_path / "unmounted").exists()


def test_model_records_a_moved_weights_and_its_cache_by_absolute_paths(digits_split, tmp_path, monkeypatch):
    import joblib

    (tmp_path / "ckpt").mkdir()
    torch.save(backbones.load_backbone(ARCH, "random", seed=1).state_dict(), tmp_path / "ckpt" / "model.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    cache = str(tmp_path / "cache")
    m = fit(digits_split, out=tmp_path / "run", cache="cache", arch=ARCH, weights="ckpt/model.pt",
            precision="fp32", extract_missing=True, image_size=32)  # predict takes the model's size
    assert m["weights"] == "ckpt/model.pt" and m["cache"] == "cache"  # metrics.json: as given
    saved = joblib.load(tmp_path / "run" / "model.joblib")
    assert saved["store"]["weights"] == str(tmp_path / "ckpt" / "model.pt")
    assert saved["store"]["cache"] == cache
    monkeypatch.chdir(elsewhere)  # predicted from another folder: the file and the rows are found
    assert predict(tmp_path / "run", digits_split, out=tmp_path / "p.csv")["n"] == 27
    assert not (elsewhere / "cache").exists()  # nothing extracted again into a cache of its own
    # A model saved before recorded the path as given: it still loads, relative to the folder run in.
    saved["store"]["weights"] = "ckpt/model.pt"
    joblib.dump(saved, tmp_path / "run" / "model.joblib")
    with pytest.raises(FneError, match="no such file"):
        predict(tmp_path / "run", digits_split, out=tmp_path / "q.csv", cache=cache)
    monkeypatch.chdir(tmp_path)
    assert predict(tmp_path / "run", digits_split, out=tmp_path / "q.csv", cache=cache)["n"] == 27


def _two_stores(warm_cache: Path, tmp_path: Path) -> tuple[Path, str, str]:
    """A copy of warm_cache with a second store (the first's rows under another name)."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    (first,) = [s.path.name for s in list_stores(cache)]
    shutil.copytree(cache / first, cache / f"zz-{first}")
    return cache, first, f"zz-{first}"


def test_cache_rm_removes_the_stores_named_and_no_other(warm_cache, tmp_path, capsys):
    cache, first, second = _two_stores(warm_cache, tmp_path)
    rows = len(list_stores(cache)[0])
    assert main(["cache", "rm", "zz-*", "--cache", str(cache), "--dry-run"]) == 0  # removes nothing
    assert f"would remove {second} ({rows} rows" in capsys.readouterr().out
    assert sorted(s.path.name for s in list_stores(cache)) == [first, second]
    assert main(["cache", "rm", "zz-*", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"removed {second} ({rows} rows" in out and f"in {cache}" in out.splitlines()[-1]
    assert [s.path.name for s in list_stores(cache)] == [first] and not (cache / second).exists()
    assert len(list_stores(cache)[0]) == rows  # the other store is whole
    assert verify(list_stores(cache)[0]).ok


def test_cache_rm_of_an_unknown_name_is_one_line_and_removes_nothing(warm_cache, tmp_path, capsys):
    cache, first, second = _two_stores(warm_cache, tmp_path)
    assert main(["cache", "rm", second, "vgg99*", "--cache", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"fne cache rm: error: no store in {cache} is named 'vgg99*' (`fne cache info` lists them)"
    assert sorted(s.path.name for s in list_stores(cache)) == [first, second]
    # --dry-run says what the removal would: the same line and status, so a typo shows before the real rm
    assert main(["cache", "rm", second, "vgg99*", "--cache", str(cache), "--dry-run"]) == 2
    assert capsys.readouterr().err == err


def test_cache_rm_refuses_a_store_a_running_extraction_writes(warm_cache, tmp_path, capsys):
    """A store whose lock another process holds (`fne extract` computing rows) is not removed."""
    import subprocess
    import sys

    cache, first, _ = _two_stores(warm_cache, tmp_path)
    lock = lock_file(list_stores(cache)[0], "0123")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["cache", "rm", first, "--cache", str(cache)]) == 2
        assert "a running extraction is writing to it" in capsys.readouterr().err
        assert (cache / first / "store.json").exists()
    finally:
        holder.communicate("done\n", timeout=60)
    assert main(["cache", "rm", first, "--cache", str(cache)]) == 0  # once it has ended
    assert not (cache / first).exists() and not lock.exists()


def test_an_interrupted_cache_rm_leaves_no_store_and_the_next_finishes_it(warm_cache, tmp_path, monkeypatch):
    import fne.cache.upkeep as upkeep

    cache, first, second = _two_stores(warm_cache, tmp_path)
    monkeypatch.setattr(upkeep.shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        upkeep.remove(list_stores(cache)[1])
    monkeypatch.undo()
    assert [s.path.name for s in list_stores(cache)] == [first]  # the half-removed one is no store
    assert [p.name for p in cache.glob(".removing-*")]
    assert main(["cache", "rm", first, "--cache", str(cache)]) == 0
    assert not list(cache.glob(".removing-*")) and not list_stores(cache)


def test_a_removal_that_stops_part_way_is_a_warning_and_verify_clean_or_an_extraction_finishes_it(
        warm_cache, digits_folder, tmp_path, monkeypatch, capsys):
    """`fne cache rm` whose deletion failed part-way (a busy file on NFS) was a traceback (OSError),
    and its `.removing-*` folder stayed until another `fne cache rm`. The store is gone either way:
    now a warning says what is left and who deletes it; `fne cache verify --clean` does, and so does
    the next extraction into the cache, also for a new cache that a failed run renamed away."""
    import shutil

    import fne.cache.upkeep as upkeep

    real = shutil.rmtree

    def busy(path, *a, **k):
        for f in sorted(p for p in Path(path).rglob("*") if p.is_file())[:3]:
            f.unlink()
        raise OSError(16, "Device or resource busy", str(path))

    cache, first, second = _two_stores(warm_cache, tmp_path)
    monkeypatch.setattr(upkeep.shutil, "rmtree", busy)
    assert main(["cache", "rm", second, "--cache", str(cache)]) == 0
    monkeypatch.setattr(upkeep.shutil, "rmtree", real)
    err = capsys.readouterr().err
    (left,) = cache.glob(".removing-*")
    assert f"fne: warning: {second}: removed, but not every file of it could be deleted (Device or resource busy" in err
    assert f"what is left, {left}, is deleted by the next `fne cache rm`, `fne cache verify --clean`" in err
    assert [s.path.name for s in list_stores(cache)] == [first]
    assert main(["cache", "verify", "--cache", str(cache), "--clean"]) == 0
    assert f"deleted {left}, left by a removal that stopped part-way" in capsys.readouterr().out
    assert not left.exists() and [s.path.name for s in list_stores(cache)] == [first]
    # left in the cache, and beside it (a new cache a failed run renamed away): the next extraction deletes both
    inside, beside = cache / f".removing-{second}-1", cache.parent / f".removing-{cache.name}-2"
    for trash in (inside, beside):
        shutil.copytree(cache / first, trash)
    other = cache.parent / f".removing-{cache.name}x-3"  # another cache's: not this one's to delete
    other.mkdir()
    fx.extract(str(digits_folder), cache=str(cache), progress=False, **FAST)
    assert not inside.exists() and not beside.exists() and other.exists()


def test_cache_info_of_data_says_how_many_of_its_images_each_store_holds(warm_cache, digits_folder, tmp_path,
                                                                         capsys):
    import shutil

    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    cls = sorted(p for p in data.iterdir() if p.is_dir())[0]
    Image.new("RGB", (8, 8), (1, 2, 3)).save(cls / "new.png")  # not in the cache
    n = len([p for p in data.rglob("*") if p.is_file()])
    assert main(["cache", "info", str(data), "--cache", str(warm_cache)]) == 0
    assert f"  data: {n - 1} of {n} distinct images cached" in capsys.readouterr().out.splitlines()


def test_cache_info_names_the_weights_file_each_store_was_read_from(tmp_path, digits_folder, capsys):
    """`fne cache info` listed a weights file's store as `weights file-0614379ab0683fc4` only:
    with two fine-tuned networks cached, nothing said which was which. Each store now names the
    file(s) its extractions read, by absolute path; two files are two stores."""
    from fne.cache.verbs import cache_info

    files = []
    for seed in (1, 2):
        files.append(tmp_path / f"run{seed}" / "model.pt")
        files[-1].parent.mkdir()
        torch.save(backbones.load_backbone("efficientnet_lite0", "random", seed=seed).state_dict(), files[-1])
    cache = tmp_path / "cache"
    for f in files:
        fx.extract(digits_folder, cache=str(cache), batch_size=8, progress=False, image_size=32,
                   **{**FAST, "weights": str(f)})
    # at 32 x 32: which file a store was read from does not depend on the size
    fx.extract(digits_folder, cache=str(cache), batch_size=8, progress=False, image_size=32, **FAST)
    stores = {s.weights: s for s in cache_info(cache=str(cache)).stores}
    assert len(stores) == 3 and stores["random-seed0"].weights_files == []
    assert sorted(s.weights_files for w, s in stores.items() if w.startswith("file-")) == [[str(f)] for f in files]
    assert main(["cache", "info", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    for f in files:
        fp = backbones.fingerprint("efficientnet_lite0", str(f))
        assert f"  arch efficientnet_lite0  weights {fp} (read from {f})  preprocess" in out


def test_a_manifest_entry_older_fne_keyed_under_a_symlinked_root_is_used_not_hashed_again(digits_folder, tmp_path,
                                                                                       monkeypatch):
    """Older fne keyed a file under DATA given through a symlink by its path relative to the
    resolved root (``../link/0/a.png``); the manifest now keys it as under the resolved root
    (``0/a.png``), so those entries were not found: every file of DATA was read and hashed once
    more, and the old entries stayed beside the new. An old entry is now taken up under its key
    now: nothing is hashed, and the saved manifest holds each file once, under its key now."""
    import json
    import shutil

    import fne.data.manifest as mf

    real = shutil.copytree(digits_folder, tmp_path / "real")
    age(real)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    cache = tmp_path / "cache"
    dataset = fne.data.datasets.load_dataset(tmp_path / "link")
    old = mf.Manifest(dataset.root, cache)
    for i, path in enumerate(dataset.sources):  # the entries as older fne wrote them
        key, (size, mtime_ns, hashed_at) = mf._hash(dataset, i)
        old.entries[rel := os.path.relpath(os.path.abspath(path), old.root)] = old._new[rel] = [size, mtime_ns, key,
                                                                                            hashed_at]
    old.save()
    assert all(k.startswith("../link/") for k in json.loads(old.path.read_text())["files"])
    hashed = []
    monkeypatch.setattr(mf, "_hash", lambda d, i: hashed.append(i) or pytest.fail("hashed a file again"))
    keys = mf.attach_keys(fne.data.datasets.load_dataset(tmp_path / "link"), cache).keys()
    assert not hashed and None not in keys and len(keys) == len(dataset)
    files = json.loads(old.path.read_text())["files"]
    assert sorted(files) == sorted(os.path.relpath(p, tmp_path / "link") for p in dataset.sources)
    assert [files[os.path.relpath(p, tmp_path / "link")][2] for p in dataset.sources] == keys
    assert mf.attach_keys(fne.data.datasets.load_dataset(real), cache).keys() == keys  # the resolved root's too


def test_a_store_removed_before_an_extraction_takes_its_lock_is_made_anew_whole(warm_cache32, tmp_path, monkeypatch):
    """`fne cache rm` refuses a store whose lock an extraction holds, but an extraction opens the
    store and plans from its rows before it takes the lock (its network loads in between). A removal
    there made the extraction commit its part into a folder without store.json, which no read and no
    `fne cache verify` saw, and say that the removed rows were cached: now it plans again and
    writes the store anew, every row of DATA in it."""
    import contextlib
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(warm_cache32, cache)
    (name,) = [s.path.name for s in list_stores(cache)]
    data = write_digits(tmp_path / "more", per_class=8, classes=4)  # 24 of its 32 images are cached
    real = fx.one_at_a_time

    @contextlib.contextmanager
    def removed_first(store, *args, **kwargs):  # another process's `fne cache rm`, before this one's lock
        assert main(["cache", "rm", name, "--cache", str(cache)]) == 0 and not (cache / name).exists()
        with real(store, *args, **kwargs) as waited:
            yield waited

    monkeypatch.setattr(fx, "one_at_a_time", removed_first)
    r = fx.extract(str(data), cache=str(cache), progress=False, **FAST32)
    assert (r.n_cached, r.n_computed) == (0, 32)
    (store,) = list_stores(cache)
    assert store.path.name == name and len(store) == 32 and verify(store).ok


def test_two_cache_rm_of_one_store_at_once_say_so_not_that_a_part_is_damaged(warm_cache, tmp_path, monkeypatch,
                                                                            capsys):
    """Two `fne cache rm` of a store: the second, which had listed it, read its parts as the first
    renamed it away and said `part … is damaged (FileNotFoundError …)`, which it was not."""
    import fne.cache.upkeep as upkeep
    import fne.cache.verbs as verbs

    cache, first, second = _two_stores(warm_cache, tmp_path)
    real = verbs._info

    def other_rm_first(store):  # the other process's removal, between this one's listing and its own
        upkeep.remove(list_stores(cache)[1])
        return real(store)

    monkeypatch.setattr(verbs, "_info", other_rm_first)
    assert main(["cache", "rm", second, "--cache", str(cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fne cache rm: error: {second}: another process removed it while this one was (another `fne "
                   f"cache rm` of it?); nothing of it is left")
    assert [s.path.name for s in list_stores(cache)] == [first] and verify(list_stores(cache)[0]).ok


# An extraction of argv[1] into the cache argv[2] (FAST32) that says "blocked" as it starts waiting
# for another process's lock, then prints its (cached, computed) counts.
BLOCKED_EXTRACTION = """
import fcntl, sys
real = fcntl.lockf
def lockf(fd, op, *args):
    if not op & fcntl.LOCK_NB:
        print("blocked", flush=True)
    return real(fd, op, *args)
fcntl.lockf = lockf
import fne.extraction.extract as fx
r = fx.extract(sys.argv[1], cache=sys.argv[2], progress=False, arch="efficientnet_lite0", weights="random",
               precision="fp32", storage_dtype="float32", image_size=32)
print(r.n_cached, r.n_computed, flush=True)
"""


def test_an_extraction_starting_while_cache_rm_renames_its_store_waits_and_plans_from_none_of_its_rows(
        warm_cache32, tmp_path, monkeypatch):
    """`fne cache rm` checked the store's locks, then renamed it: an extraction taking its lock in
    between planned from rows about to go and called them cached. The removal now holds the
    store's locks (the store's own, which every extraction holds shared, too) from the check to
    the rename: an extraction (a real process) starting then waits, and then computes every row."""
    import os
    import shutil

    import fne.cache.upkeep as upkeep

    cache = tmp_path / "cache"
    shutil.copytree(warm_cache32, cache)
    (name,) = [s.path.name for s in list_stores(cache)]
    data = write_digits(tmp_path / "more", per_class=8, classes=4)  # 24 of its 32 images are cached
    other = []

    class RenameOnceTheExtractionWaits:
        def __getattr__(self, attr):
            return getattr(os, attr)

        @staticmethod
        def replace(src, dst):
            other.append(subprocess.Popen([sys.executable, "-c", BLOCKED_EXTRACTION, str(data), str(cache)],
                                          stdout=subprocess.PIPE, text=True))
            assert other[0].stdout.readline() == "blocked\n"  # it planned 8 to compute, and waits for the lock
            os.replace(src, dst)

    monkeypatch.setattr(upkeep, "os", RenameOnceTheExtractionWaits())
    assert main(["cache", "rm", name, "--cache", str(cache)]) == 0
    out, _ = other[0].communicate(timeout=300)
    assert out.split() == ["0", "32"]
    (store,) = list_stores(cache)
    assert store.path.name == name and len(store) == 32 and verify(store).ok
