from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fne.backbones.registry
import fne.extraction.extract as fx
from fne.cache.cost import rows_cost
from fne.cache.store import list_stores
from fne.cache.upkeep import verify
from fne.cli import main
from fne.data.datasets import load_dataset

from .conftest import FAST


def _store(cache):
    (store,) = list_stores(cache)
    return store


def test_second_task_runs_zero_forward_passes(digits_folder, warm_cache, tmp_path, monkeypatch, forward_images):
    # another task over the same images: a CSV with other labels, in another folder
    files = sorted(digits_folder.rglob("*.png"))
    csv = tmp_path / "other.csv"
    csv.write_text("path,label\n" + "".join(f"{f},{'big' if int(f.parent.name) > 1 else 'small'}\n"
                                             for f in files))
    before = forward_images.n

    def must_not_build(*a, **k):
        raise AssertionError("network built although every row is cached")

    monkeypatch.setattr(fne.backbones.registry, "load_backbone", must_not_build)
    r = fx.extract(csv, cache=str(warm_cache), progress=False, **FAST)
    assert r.n_computed == 0 and r.n_cached == len(files) and forward_images.n == before
    from fne.linear.fit import fit

    m = fit(csv, features="last", head="logreg", splits=2, out=tmp_path / "run", cache=str(warm_cache),
            arch=FAST["arch"], weights="random", precision="fp32", storage_dtype="float32")
    assert forward_images.n == before and m["classes"] == ["big", "small"]


def test_only_new_images_are_computed(digits_folder, tmp_path):
    part = tmp_path / "data"
    shutil.copytree(digits_folder, part)
    for f in sorted(part.rglob("*.png"))[::2]:
        f.unlink()
    cache = str(tmp_path / "cache")
    first = fx.extract(part, cache=cache, progress=False, **FAST)
    full = fx.extract(digits_folder, cache=cache, progress=False, **FAST)
    assert first.n_computed == 12 and full.n_cached == 12 and full.n_computed == 12
    assert len(_store(cache)) == 24


def test_unreadable_images_are_skipped_named_and_recorded(digits_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    (data / "0" / "not_image.jpg").write_text("this is text")
    good = sorted((data / "1").glob("*.png"))[0].read_bytes()
    (data / "1" / "truncated.png").write_bytes(good[: len(good) // 2])
    cache = str(tmp_path / "cache")
    with pytest.warns(UserWarning, match="not_image.jpg"):
        r = fx.extract(data, cache=cache, progress=False, **FAST)
    assert r.n_skipped == 2 and r.n_computed == 24
    assert set(r.skipped) == {"0/not_image.jpg", "1/truncated.png"}
    store = _store(cache)
    assert len(store.bad()) == 2 and store.records()[-1]["skipped"] == r.skipped
    again = fx.extract(data, cache=cache, progress=False, **FAST)  # bad files are not retried forever
    assert again.n_computed == 0


def _rows(cache, dataset):
    store = _store(cache)
    names = [t for t, _ in store.taps]
    return store.read(dataset.keys(), names)


KILL_SCRIPT = """
import sys, fne.extraction.extract as fx
fx.extract(sys.argv[1], cache=sys.argv[2], batch_size=2, chunk=4, workers=0, progress=False,
           arch="efficientnet_lite0", weights="random", precision="fp32", storage_dtype="float32")
"""


def test_killed_extraction_resumes_to_identical_rows(digits_folder, tmp_path):
    cache_killed, cache_clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(digits_folder), str(cache_killed)])
    deadline = time.time() + 120
    parts = []
    while time.time() < deadline and proc.poll() is None:
        parts = [p for d in cache_killed.glob("*/parts") for p in d.iterdir() if not p.name.startswith(".")]
        if parts:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "extraction finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = _store(cache_killed)
    committed = len(store)
    assert 0 < committed < 24 and verify(store).problems == []  # only whole parts are visible
    resumed = fx.extract(digits_folder, cache=str(cache_killed), batch_size=2, progress=False, **FAST)
    assert resumed.n_computed == 24 - committed
    fx.extract(digits_folder, cache=str(cache_clean), batch_size=2, progress=False, **FAST)
    d = load_dataset(digits_folder)
    a, b = _rows(cache_killed, d), _rows(cache_clean, d)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert main(["cache", "verify", "--cache", str(cache_killed)]) == 0
    if verify(store).leftovers:  # the part in flight when killed: reported, never read, removable
        assert main(["cache", "verify", "--clean", "--cache", str(cache_killed)]) == 0
        assert not list((store.path / "parts").glob(".tmp-*"))


def test_concurrent_extractions_do_not_corrupt(digits_folder, tmp_path):
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(digits_folder), str(cache)])
             for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    store = _store(cache)
    assert verify(store).problems == [] and len(store) == 24
    rows = _rows(cache, load_dataset(digits_folder))
    assert all(np.isfinite(v).all() for v in rows.values())
    # each committed part is named by the record of the one run that committed it: none lost, none twice
    named = [p for r in store.records() if r.get("kind") == "extract" for p in r["parts"]]
    assert sorted(named) == sorted(p.name for p in store.parts())
    cost = rows_cost(store, list(store.index()))
    assert (cost["basis"], cost["measured_images"]) == ("runs", 24)


def test_cache_info_and_verify_detect_damage(digits_folder, warm_cache, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    assert main(["cache", "info", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "rows 24" in out
    store = _store(cache)
    victim = next(p for p in (store.parts()[0] / "rows").rglob("*") if p.is_file() and p.name != "zarr.json")
    victim.write_bytes(b"garbage")
    assert main(["cache", "verify", "--cache", str(cache)]) == 1
    assert "unreadable" in capsys.readouterr().out


def test_ten_crop_rows_and_vote(digits_split, tmp_path, store_reads):
    from fne.linear.fit import fit

    cache = str(tmp_path / "cache")
    full = load_dataset(digits_split)
    idx = [i for c in full.classes for s in ("train", "test")
           for i in [j for j in range(len(full)) if full.labels[j] == c and full.splits[j] == s][:2]]
    csv = tmp_path / "small.csv"
    csv.write_text("path,label,split\n" + "".join(
        f"{full.sources[i]},{full.labels[i]},{full.splits[i]}\n" for i in idx))
    fx.extract(csv, cache=cache, crop="ten", progress=False, image_size=32, **FAST)  # views, not size, tested
    store = _store(cache)
    assert store.views == 10
    rows = store.read(load_dataset(csv).keys()[:2], ["head"])["head"]
    assert rows.shape == (2, 10, 1280) and not np.allclose(rows[:, 0], rows[:, 5], rtol=1e-3, atol=0)  # mirrored differs
    kw = dict(features="fne", head="logreg", cache=cache, crop="ten", arch=FAST["arch"], weights="random",
              precision="fp32", storage_dtype="float32", image_size=32)
    m = fit(csv, out=tmp_path / "run", **kw)
    assert m["n_train"] == 6 and m["n_test"] == 6 and 0 <= m["accuracy"] <= 1
    # --stream-chunk counts rows (views): 20 rows of a ten-crop store are 2 images per read,
    # and reading in small chunks changes nothing in the result
    store_reads.clear()
    small = fit(csv, out=tmp_path / "small", stream_chunk=20, **kw)
    assert max(store_reads) == 2
    assert small["confusion"] == m["confusion"] and small["accuracy"] == m["accuracy"]


def test_extract_cli_reports_counts(digits_folder, warm_cache, capsys):
    args = ["extract", str(digits_folder), "--arch", "efficientnet_lite0", "--weights", "random",
            "--precision", "fp32", "--storage-dtype", "float32", "--cache", str(warm_cache)]
    assert main(args) == 0
    assert "24 already cached, 0 computed" in capsys.readouterr().out
    assert main(args + ["--shard", "3/2"]) == 2
    assert "bad --shard" in capsys.readouterr().err


def test_fne_cache_env_sets_default(monkeypatch, tmp_path):
    from fne.cache.store import cache_root

    monkeypatch.setenv("FNE_CACHE", str(tmp_path / "elsewhere"))
    assert cache_root(None) == Path(tmp_path / "elsewhere")


def test_the_model_is_built_on_a_thread_of_its_own_while_the_first_batch_is_read(digits_folder, tmp_path,
                                                                                  monkeypatch):
    """`TapRunner.prepare`: the build (imports, weights, the device's set-up) runs on thread
    `fne-model` while the reader reads. Here the reader (no workers: the loop's own thread)
    waits for the build before its first image; a build made on the first batch could not end
    meanwhile, so the wait would time out."""
    import threading

    from fne.extraction import reader, taps

    built, threads, waited = threading.Event(), [], []
    real_build, real_item = taps.build_tap_model, reader.ImageItems.__getitem__

    def build(*a, **k):
        threads.append(threading.current_thread().name)
        model = real_build(*a, **k)
        built.set()
        return model

    def item(self, j):
        if not waited:
            waited.append(built.wait(timeout=30))
        return real_item(self, j)

    monkeypatch.setattr(taps, "build_tap_model", build)
    monkeypatch.setattr(reader.ImageItems, "__getitem__", item)
    r = fx.extract(digits_folder, cache=str(tmp_path / "c"), workers=0, progress=False, **FAST)
    assert waited == [True] and len(threads) == 1 and threads[0].startswith("fne-model")
    assert r.n_computed == 24 and r.stage_seconds["model_wait"] < r.stage_seconds["run"]
    assert r.stage_seconds["warm_up"] == 0.0  # on a CPU a forward on zeros would cost a real one


def test_the_steps_before_the_run_are_timed_each_and_recorded(digits_folder, tmp_path, monkeypatch):
    """The wall before the run, by step: a slow listing shows under `list` alone, and the
    store's record keeps every step."""
    real = fx.load_dataset

    def slow_listing(*a, **k):
        time.sleep(0.3)
        return real(*a, **k)

    monkeypatch.setattr(fx, "load_dataset", slow_listing)
    r = fx.extract(digits_folder, cache=str(tmp_path / "c"), workers=0, progress=False, **FAST)
    steps = ("list", "open", "plan", "device", "workers_start", "model_start", "writer_start")
    st = r.stage_seconds
    assert all(st[k] >= 0.0 for k in steps) and st["list"] >= 0.3
    assert max(st[k] for k in steps if k != "list") < 0.3 and 0.0 <= st["finish"] <= st["run"]
    (rec,) = [x for x in list_stores(str(tmp_path / "c"))[0].records() if x["kind"] == "extract"]
    assert set(steps) <= set(rec["stage_seconds"])


def test_an_error_in_the_background_build_reaches_the_caller_and_commits_nothing(digits_folder, tmp_path,
                                                                                  monkeypatch, capsys):
    """Weights that cannot be loaded stop the run before its first row, and leave no empty store
    (`fne cache info` would list it with 0 rows), nor the cache folder it made (test_stores)."""
    from fne.errors import WeightsError
    from fne.extraction import taps

    def build(*a, **k):
        raise WeightsError("--weights w.pth: does not fit --arch (test)")

    monkeypatch.setattr(taps, "build_tap_model", build)
    cache = tmp_path / "c"
    with pytest.raises(WeightsError, match="does not fit"):
        fx.extract(digits_folder, cache=str(cache), progress=False, **FAST)
    assert not cache.exists()  # it held DATA's manifest and a lock file, no store
    code = main(["extract", str(digits_folder), "--cache", str(cache), "--no-progress", "--arch", FAST["arch"],
                 "--weights", "random", "--precision", FAST["precision"]])
    assert code == 2 and "fne extract: error: --weights w.pth: does not fit" in capsys.readouterr().err


def test_an_interrupted_run_does_not_wait_for_a_stuck_build(digits_folder, tmp_path, monkeypatch):
    """A build that hangs (a download from a network that drops its packets) holds neither an
    interrupted run nor the process's exit: the run stops without waiting, and the build's
    thread is a daemon."""
    import threading

    from fne.extraction import reader, taps

    release = threading.Event()
    monkeypatch.setattr(taps, "build_tap_model", lambda *a, **k: release.wait(120))

    def ctrl_c(self, j):  # while the first batch is read
        raise KeyboardInterrupt

    monkeypatch.setattr(reader.ImageItems, "__getitem__", ctrl_c)
    t = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            fx.extract(digits_folder, cache=str(tmp_path / "c"), workers=0, progress=False, **FAST)
        assert time.perf_counter() - t < 60
        (build,) = [th for th in threading.enumerate() if th.name == "fne-model"]
        assert build.daemon and build.is_alive()
    finally:
        release.set()


def test_a_compiled_model_that_fails_to_build_runs_eager_with_a_warning():
    """--compile on where torch.compile cannot build (no C++ compiler, say): the first forward
    pass falls back to the eager model, with a warning, and hands it back for the next ones; an
    eager model's own error is raised as it is."""
    import torch

    from fne.extraction.taps import forward

    eager, cpu, x = torch.nn.Linear(3, 2), torch.device("cpu"), torch.ones(4, 3)

    class Compiled(torch.nn.Module):  # what torch.compile gives: the eager model as _orig_mod
        def __init__(self):
            super().__init__()
            self._orig_mod = eager

        def forward(self, x):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    with pytest.warns(UserWarning, match=r"^torch\.compile failed \(RuntimeError: InvalidCxxCompiler: No working C\+\+ "
                                         r"compiler found\); running eager$"):
        model, out = forward(Compiled(), x, cpu, "fp32")
    assert model is eager and torch.equal(out, eager(x))
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        forward(torch.nn.Linear(5, 2), x, cpu, "fp32")


def test_compile_is_resolved_from_the_options_spellings_in_one_place():
    """`--compile` / compile= reach `resolve_compile` as ForwardOptions holds them (True / False
    from Python become on / off); extract maps nothing itself."""
    import torch

    from fne.devices import COMPILE_AUTO_MIN_IMAGES, resolve_compile
    from fne.errors import FneError
    from fne.options import ForwardOptions

    cpu, cuda, n = torch.device("cpu"), torch.device("cuda"), COMPILE_AUTO_MIN_IMAGES["cuda"]
    assert resolve_compile("on", 1, cpu) and not resolve_compile("off", 10 * n, cpu)
    assert resolve_compile("auto", n, cuda) and not resolve_compile("auto", n - 1, cuda)
    # on a CPU the tap model compiled was never faster (RESULTS.md): auto leaves it eager at any size
    assert not resolve_compile("auto", 10 * n, cpu)
    assert [ForwardOptions(compile=c).compile for c in (True, False, "auto")] == ["on", "off", "auto"]
    with pytest.raises(FneError, match=r"^bad (--compile |compile=)'yes'; use auto, on or off$"):
        resolve_compile("yes", 1, cpu)


def test_a_batch_size_beyond_the_images_sizes_nothing_by_it(tmp_path, monkeypatch):
    """`--compile on --batch-size 1000000000` on 12 images padded each batch to 10^9 images ("the
    machine ran out of memory (could not allocate 2929687.5 MiB)"; CUDA's warm-up batch is sized
    the same way): what is sized by the batch is sized by the images, the batch asked is recorded."""
    import torch

    from fne.extraction import taps

    from .conftest import FAST32, write_digits

    seen = []

    class Compiled(torch.nn.Module):  # torch.compile's result, without the minutes of a CPU build
        def __init__(self, eager):
            super().__init__()
            self._orig_mod = eager

        def forward(self, x):
            seen.append(x.shape[0])
            return self._orig_mod(x)

    monkeypatch.setattr(taps.torch, "compile", lambda model, **k: Compiled(model))
    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    from fne.options import MAX_BATCH  # the largest batch the option takes (10^9 is refused since)

    r = fx.extract(data, cache=str(tmp_path / "c"), compile="on", batch_size=MAX_BATCH, workers=0, progress=False,
                   **FAST32)
    assert r.compiled and r.n_computed == 6 and seen == [6]
    (store,) = list_stores(tmp_path / "c")
    assert store.records()[-1]["batch_size"] == MAX_BATCH
