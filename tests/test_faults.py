"""Faults and mistakes: a full disk, a damaged part, a live writer, transient read failures,
hostile files, grey HDF5 images. Each ends in a clear message naming the file or the cache,
with nothing already computed lost."""

from __future__ import annotations

import errno
import io
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from PIL import Image

import fne.data.datasets
import fne.extraction.extract as fx
import fne.extraction.reader
from fne.cache.fs import HOST
from fne.cache.store import Store, StoreKey, list_stores
from fne.cache.upkeep import clean, verify
from fne.cli import main
from fne.errors import CacheError, FneError
from fne.linear.fit import fit

from .conftest import FAST32, write_digits

# the options other test files import (test_containers, test_images: at the backbone's own size)
CLI_FAST = ["--arch", "efficientnet_lite0", "--weights", "random", "--precision", "fp32",
            "--storage-dtype", "float32", "--workers", "0"]
# every extraction here at 32 x 32 (FAST32): no fault or mistake here depends on the input size
CLI_FAST32 = [*CLI_FAST[:-2], "--image-size", "32", *CLI_FAST[-2:]]


def _store(cache) -> Store:
    (store,) = list_stores(cache)
    return store


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


# ------------------------------------------------------------------ 1. disk full
def test_full_disk_stops_clearly_and_keeps_committed_rows(digits_folder, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    real_commit, calls = Store.commit, []

    def fills_up(self, keys, arrays, bad=None):
        calls.append(len(keys))
        if len(calls) > 1:
            _enospc()
        return real_commit(self, keys, arrays, bad)

    monkeypatch.setattr(Store, "commit", fills_up)
    with pytest.raises(CacheError, match="no space left on device") as e:
        fx.extract(digits_folder, cache=cache, batch_size=4, chunk=4, workers=0, progress=False, **FAST32)
    assert cache in str(e.value)
    monkeypatch.setattr(Store, "commit", real_commit)
    store = _store(cache)
    assert verify(store).problems == [] and len(store) == 4  # the part committed before the disk filled
    again = fx.extract(digits_folder, cache=cache, batch_size=4, workers=0, progress=False, **FAST32)
    assert again.n_computed == 20 and len(_store(cache)) == 24


def test_full_disk_with_a_full_queue_does_not_hang(digits_folder, tmp_path, monkeypatch):
    """The writer dies while the reader waits on a full queue: the process must still stop."""

    def slow_then_full(self, keys, arrays, bad=None):
        time.sleep(1.0)  # meanwhile the main thread fills the queue and blocks on it
        _enospc()

    monkeypatch.setattr(Store, "commit", slow_then_full)
    outcome: list[BaseException] = []

    def run():
        try:
            fx.extract(digits_folder, cache=str(tmp_path / "c"), batch_size=1, chunk=1, workers=0,
                       progress=False, **FAST32)
        except BaseException as e:  # noqa: BLE001 (what it raised is the assertion)
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "extraction hung after its writer failed"
    assert len(outcome) == 1 and "no space left on device" in str(outcome[0])


def test_ctrl_c_stays_the_exception_when_the_disk_filled_meanwhile(digits_folder, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the loop after the writer died of a full disk: the caller gets KeyboardInterrupt
    (the command line: 'interrupted', status 130), the writer's error a warning, and the part
    committed before the disk filled is kept (it used to be the CacheError in its place)."""
    real_commit, real_skip, calls, batches = Store.commit, fx._skip, [], []

    def fills_up(self, keys, arrays, bad=None):
        calls.append(len(keys))
        if len(calls) > 1:
            _enospc()
        return real_commit(self, keys, arrays, bad)

    def ctrl_c_at_the_third_batch(*a):
        batches.append(1)
        if len(batches) == 3:
            raise KeyboardInterrupt
        return real_skip(*a)

    monkeypatch.setattr(Store, "commit", fills_up)
    monkeypatch.setattr(fx, "_skip", ctrl_c_at_the_third_batch)
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match=f"^the cache writer had stopped: no space left on device writing to the "
                                         f"cache {cache}"), pytest.raises(KeyboardInterrupt):
        fx.extract(digits_folder, cache=str(cache), batch_size=4, chunk=4, workers=0, progress=False, **FAST32)
    assert verify(_store(cache)).problems == [] and len(_store(cache)) == 4  # the part committed before
    monkeypatch.setattr(Store, "commit", lambda *a, **k: _enospc())  # the command line's parts: 1024 rows
    batches.clear()
    assert main(["extract", str(digits_folder), "--cache", str(tmp_path / "c2"), "--batch-size", "4",
                 "--no-progress", *CLI_FAST32]) == 130
    err = capsys.readouterr().err
    assert "fne: warning: the cache writer had stopped: no space left on device" in err
    assert "fne extract: interrupted" in err


def test_a_ctrl_c_while_the_writer_is_closed_is_not_replaced_by_its_error(tmp_path):
    """Ctrl-C while `Writer.close` waits for room in the queue, the writer dying of a full disk
    meanwhile: KeyboardInterrupt is raised (the writer's error a warning), not the CacheError."""
    from fne.extraction.writer import Writer

    store = Store.open(str(tmp_path / "c"), StoreKey("a", "w", "p", "fp32", "float32"), [("t", 3)], 1)
    real_commit, calls = store.commit, []

    def fills_up(*a, **k):
        calls.append(1)
        return _enospc() if len(calls) > 1 else real_commit(*a, **k)

    store.commit = fills_up
    keys = [f"{i:032x}" for i in range(4)]  # content keys: hex digests
    w = Writer(store, chunk=2, taps=[("t", 3)])
    w.start()
    w.put(keys[:2], np.ones((2, 1, 3), np.float32), {})  # committed
    real_put = w.q.put

    def interrupted_while_waiting(item, timeout=None):  # the end of the queue, sent by close
        real_put((keys[2:], np.ones((2, 1, 3), np.float32), {}, None))  # the part the full disk refuses
        w.finished.wait(30)
        raise KeyboardInterrupt

    w.q.put = interrupted_while_waiting
    with pytest.warns(UserWarning, match="^the cache writer had stopped: no space left"), \
            pytest.raises(KeyboardInterrupt):
        w.close()
    assert not w.is_alive() and sorted(store.index()) == keys[:2]


def test_a_full_disk_is_raised_for_a_caller_handling_a_ctrl_c_of_its_own(digits_folder, tmp_path, monkeypatch):
    """extract called while its caller handles a KeyboardInterrupt of its own (``except
    KeyboardInterrupt: fne.extract(...)``): the writer's full disk is still the error raised, not
    a warning beside a return that looks like a finished extraction (the Ctrl-C the caller is
    handling is not one raised in the run)."""
    monkeypatch.setattr(Store, "commit", lambda *a, **k: _enospc())
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        with pytest.raises(CacheError, match="no space left on device"):
            fx.extract(digits_folder, cache=str(tmp_path / "c"), workers=0, progress=False, **FAST32)


def test_full_disk_cli_message(digits_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Store, "commit", lambda *a, **k: _enospc())
    code = main(["extract", str(digits_folder), "--cache", str(tmp_path / "c"), *CLI_FAST32])
    err = capsys.readouterr().err
    assert code == 2 and "no space left on device" in err and str(tmp_path / "c") in err
    assert "Traceback" not in err


def test_a_full_disk_under_out_leaves_the_run_folder_as_it_was(digits_folder, warm_cache32, tmp_path, monkeypatch,
                                                               capsys):
    """predictions.csv, metrics.json and model.joblib are written whole or not at all, together:
    the earlier run stays as it was, not new predictions beside its metrics; the error is one
    line naming the file."""
    import fne.linear.fit as fl

    out = tmp_path / "run"
    args = ["fit", str(digits_folder), "--out", str(out), "--cache", str(warm_cache32), "--splits", "1", *CLI_FAST32]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(fl.joblib, "dump", lambda obj, f: (Path(f).write_bytes(b"half"), _enospc()))
    assert main([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"fne fit: error: no space left on device writing {out / 'model.joblib'}: free space "
                                    f"there or pass --out a folder on another disk; nothing was written (--out is as it "
                                    f"was); rerun the same command")
    assert "Traceback" not in err
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(after) == set(before)  # no temporary file left
    assert after == before  # the earlier run, whole: its predictions.csv too


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not Path("/proc/self").is_dir(),
                    reason="needs root and /proc: access(2) says root may write anywhere")
def test_a_cache_under_a_folder_that_refuses_root_is_refused_before_any_image(digits_folder, capsys, forward_images):
    """As root, `--cache /proc/x` passed the writability check (access(2) lets root write
    anywhere), every row was computed, and the commit failed with a FileNotFoundError traceback:
    a folder made and removed there now decides, before the forward pass."""
    assert main(["extract", str(digits_folder), "--cache", "/proc/fne-no-such-cache", *CLI_FAST32]) == 2
    err = capsys.readouterr().err
    assert "cannot write to the cache /proc/fne-no-such-cache/" in err and "Traceback" not in err
    assert forward_images.n == 0


def test_an_unwritable_cache_is_refused_before_any_image_is_computed(digits_folder, warm_cache32, tmp_path,
                                                                      monkeypatch, capsys, forward_images):
    """A read-only cache still serves its rows (fne fit reads them); extracting new ones into it
    stops before the forward pass, naming the cache."""
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache32, cache)
    parts, real_access = _store(cache).path / "parts", os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != parts and real_access(p, mode))
    more = write_digits(tmp_path / "more", per_class=2, classes=2)
    assert main(["extract", str(more), "--cache", str(cache), *CLI_FAST32]) == 2
    err = capsys.readouterr().err
    assert f"cannot write to the cache {parts.parent}" in err and "pass --cache" in err
    assert forward_images.n == 0
    empty = tmp_path / "read-only"  # a new store, in a cache folder it cannot be made in
    empty.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != empty and real_access(p, mode))
    assert main(["extract", str(more), "--cache", str(empty), *CLI_FAST32]) == 2
    assert "cannot write to the cache" in capsys.readouterr().err and forward_images.n == 0
    assert list(empty.iterdir()) == []
    assert main(["fit", str(digits_folder), "--out", str(tmp_path / "run"), "--cache", str(cache),
                 "--splits", "1", *CLI_FAST32]) == 0


# ------------------------------------------------------------------ 2. damaged part
def test_damaged_part_is_quarantined_then_recomputed(digits_folder, warm_cache32, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache32, cache)
    store = _store(cache)
    part = store.parts()[0]
    n_part = zarr.open_array(str(part / "keys"), mode="r").shape[0]
    chunk = next(p for p in (part / "rows").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])  # truncated
    kw = dict(out=tmp_path / "run", cache=str(cache), splits=2, **FAST32)
    with pytest.raises(FneError, match=f"part {part.name} .* is damaged.*verify --clean"):
        fit(digits_folder, **kw)
    assert main(["cache", "verify", "--cache", str(cache), "--clean"]) == 0
    out = capsys.readouterr().out
    assert f"damaged part {part.name} moved to" in out
    assert (store.path / "quarantine" / part.name).is_dir() and not part.exists()  # kept, aside
    store.refresh()
    assert verify(store).problems == []
    r = fx.extract(digits_folder, cache=str(cache), progress=False, **FAST32)
    assert r.n_computed == n_part
    assert fit(digits_folder, **kw)["n_images"] == 24


# ------------------------------------------------------------------ 3. live writer
def test_clean_spares_parts_of_live_writers(digits_folder, warm_cache32, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache32, cache)
    store = _store(cache)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now, old = time.time_ns(), time.time_ns() - 2 * 3600 * 10**9
    names = {
        "live here": f".tmp-{now:020d}-{os.getpid()}-{HOST}-aaaaaaaa",
        "dead here": f".tmp-{now:020d}-{dead.pid}-{HOST}-bbbbbbbb",
        "young elsewhere": f".tmp-{now:020d}-1-0badc0de-cccccccc",
        "old elsewhere": f".tmp-{old:020d}-1-0badc0de-dddddddd",
    }
    for n in names.values():
        (store.path / "parts" / n).mkdir()
        (store.path / "bad").mkdir(exist_ok=True)
        (store.path / "bad" / f"{n}-x.json").write_text("{")  # a record's temporary file
    with pytest.warns(UserWarning, match=r"1 unfinished part.s. written on another host \(id 0badc0de\)"):
        assert clean(store) == 4  # 2 parts, 2 files
    left = {p.name for p in (store.path / "parts").glob(".tmp-*")}
    assert left == {names["live here"], names["young elsewhere"]}
    left = {p.name for p in (store.path / "bad").glob(".tmp-*")}
    assert left == {f"{names['live here']}-x.json", f"{names['young elsewhere']}-x.json"}
    assert verify(store).problems == [] and len(store) == 24



def test_clean_names_another_hosts_unfinished_parts_and_how_to_delete_them(warm_cache32, tmp_path, capsys):
    """A node that died mid-commit leaves an unfinished part that `fne cache verify --clean` on
    another node keeps for an hour (its writer's pid cannot be asked about there): it said only
    "note: 1 unfinished part(s) ... kept by --clean: a running writer's". It now names the part,
    its host, and the command that deletes what that host left, which removes it and no other."""
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache32, cache)
    store = _store(cache)
    now = time.time_ns()
    theirs = [f".tmp-{now - 300 * 10**9:020d}-1-0badc0de-cccccccc", f".tmp-{now:020d}-7-0badc0de-eeeeeeee"]
    ours = f".tmp-{now:020d}-{os.getpid()}-{HOST}-aaaaaaaa"  # a live writer here: spared, not named
    for n in [*theirs, ours]:
        (store.path / "parts" / n).mkdir()
    capsys.readouterr()
    assert main(["cache", "verify", "--cache", str(cache), "--clean"]) == 0
    err = capsys.readouterr().err
    (line,) = [s for s in err.splitlines() if "another host" in s]
    assert "2 unfinished part(s) written on another host (id 0badc0de) 0 min ago are kept" in line
    assert f"{store.path}/parts/{theirs[0]}, …" in line and ours not in line
    command = line.split("delete them now: ")[1]
    assert command == f"rm -r {store.path}/parts/.tmp-*-0badc0de-*"
    subprocess.run(command, shell=True, check=True)
    assert {p.name for p in (store.path / "parts").glob(".tmp-*")} == {ours}
    assert verify(store).problems == [] and len(store) == 24


def test_clean_counts_only_what_it_deleted_and_names_what_it_could_not(warm_cache32, tmp_path, monkeypatch, capsys):
    """On a read-only cache `fne cache verify --clean` printed "removed 1 unfinished part(s)"
    and then, for the same store, "1 unfinished part(s) left ... --clean removes them"."""
    from fne.cache.fs import LocalFiles

    cache = tmp_path / "cache"
    shutil.copytree(warm_cache32, cache)
    store = _store(cache)
    dead = f".tmp-{time.time_ns() - 2 * 3600 * 10**9:020d}-1-0badc0de-dddddddd"
    (store.path / "parts" / dead).mkdir()
    monkeypatch.setattr(LocalFiles, "remove", lambda self, rel: None)  # as on a read-only mount, even for root
    with pytest.warns(UserWarning, match=f"1 unfinished part.s. could not be deleted .*parts/{dead}"):
        assert clean(store) == 0
    assert main(["cache", "verify", "--cache", str(cache), "--clean"]) == 0
    out = capsys.readouterr().out
    assert "removed 0 unfinished" not in out and "kept by --clean" in out and "--clean removes them" not in out
    assert out.splitlines()[-1] == "1 store(s) verified, nothing removed"
    monkeypatch.undo()
    assert clean(store) == 1 and not (store.path / "parts" / dead).exists()


def test_clean_says_what_it_removed_once_and_a_clean_cache_in_one_line(warm_cache32, tmp_path, capsys):
    """`fne cache verify --clean` printed "STORE: removed 0 unfinished part(s) ..." for every store of
    a clean cache: a store's line is there only where something was removed, and one last line
    sums up."""
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache32, cache)
    store = _store(cache)
    capsys.readouterr()
    assert main(["cache", "verify", "--cache", str(cache), "--clean"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{store.path.name}: OK ({len(store)} rows)",
                                                    "1 store(s) verified, nothing to clean"]
    dead = f".tmp-{time.time_ns() - 2 * 3600 * 10**9:020d}-1-0badc0de-dddddddd"  # another host's, 2 hours old
    (store.path / "parts" / dead).mkdir()
    assert main(["cache", "verify", "--cache", str(cache), "--clean"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{store.path.name}: removed 1 unfinished part(s) or temporary file(s) of interrupted runs",
        f"{store.path.name}: OK ({len(store)} rows)",
        "1 store(s) verified, removed 1 unfinished part(s) or temporary file(s)"]

# ------------------------------------------------------------------ 9. transient failures
def test_unreadable_file_is_not_recorded_and_read_next_time(tmp_path, monkeypatch):
    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    victim = str(sorted(data.rglob("*.png"))[0])
    real_open = open

    def nfs_hiccup(file, *a, **k):
        if str(file) == victim:
            raise OSError(errno.EIO, "Input/output error")
        return real_open(file, *a, **k)

    cache = str(tmp_path / "cache")
    with monkeypatch.context() as m:
        m.setattr("builtins.open", nfs_hiccup)
        with pytest.warns(UserWarning, match="cannot read: Input/output error"):
            r = fx.extract(data, cache=cache, workers=0, progress=False, **FAST32)
    assert r.n_computed == 5 and r.n_skipped == 1 and _store(cache).bad() == {}
    assert fx.extract(data, cache=cache, workers=0, progress=False, **FAST32).n_computed == 1


def test_retry_bad_reads_recorded_images_again(tmp_path, monkeypatch, capsys):
    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    past = time.time() - 3600  # an hour old: the manifest vouches for their keys from now on
    for p in data.rglob("*.png"):
        os.utime(p, (past, past))
    victim = sorted(data.rglob("*.png"))[0]
    real_read = fne.extraction.reader.read_image

    def flaky(src):
        raise OSError("decoder hiccup")

    cache = str(tmp_path / "cache")
    with monkeypatch.context() as m:
        m.setattr(fne.extraction.reader, "read_image", lambda src: flaky(src) if _is(src, victim) else real_read(src))
        with pytest.warns(UserWarning, match="decoder hiccup"):
            fx.extract(data, cache=cache, workers=0, progress=False, **FAST32)
    assert len(_store(cache).bad()) == 1
    assert fx.extract(data, cache=cache, workers=0, progress=False, **FAST32).n_computed == 0  # recorded
    capsys.readouterr()
    # progress=False: read again without a line; the command line says how many it reads again
    assert fx.extract(data, cache=cache, workers=0, progress=False, retry_bad=True, **FAST32).n_computed == 1
    assert capsys.readouterr() == ("", "") and len(_store(cache)) == 6
    code = main(["extract", str(data), "--cache", cache, "--retry-bad", *CLI_FAST32])
    assert code == 0 and "fne extract: 0 image(s) recorded as unreadable will be read again" in capsys.readouterr().err
    m = fit(data, out=tmp_path / "run", cache=cache, splits=1, test_size=0.5, **FAST32)
    assert m["n_images"] == 6  # the old bad record no longer hides the row


def test_retry_bad_counts_each_image_once(tmp_path):
    """Runs that each met the same unreadable image each recorded it: `--retry-bad` reads it again
    once, and says one image, not one per record."""
    store = Store.open(str(tmp_path / "c"), StoreKey("a", "w", "p", "fp32", "float32"), [("t", 3)], 1)
    store.commit([], {}, bad={"k1": "cannot read", "k2": "cannot read"})
    store.commit([], {}, bad={"k1": "cannot read"})  # a second run met k1 again
    assert store.forget_bad(["k1", "k3"]) == 1
    assert store.bad() == {"k2": "cannot read"}


def _is(src, path: Path) -> bool:
    """read_image gets the file's bytes: compare them with the victim's."""
    return isinstance(src, io.BytesIO) and src.getvalue() == path.read_bytes()


# ------------------------------------------------------------------ 5. hostile files, one line each
def _png_bomb(path: Path) -> None:
    """A tiny PNG whose header claims 30000×30000 pixels: PIL refuses to open it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))


def _hostile(root: Path) -> tuple[list[str], list[str]]:
    """-> (names that must be skipped, names that must be read), in class folder `x/`."""
    d = root / "x"
    d.mkdir(parents=True)
    base = Image.fromarray((np.arange(64 * 48 * 3) % 251).astype(np.uint8).reshape(48, 64, 3))
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_text("just some text\n")
    (d / "page.jpg").write_text("<html><body>404 Not Found</body></html>")
    buf = io.BytesIO()
    base.save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "random.png").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _png_bomb(d / "bomb.png")
    base.convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20).save(d / "grey16.png")
    base.convert("P").save(d / "palette.png")
    base.convert("RGBA").save(d / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    base.save(d / "rotated.jpg", exif=exif)
    base.save(d / "png_named.jpg", "PNG")  # wrong extension
    base.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(d / "with spaces in name.png")
    bad = ["empty.jpg", "text.png", "page.jpg", "truncated.jpg", "random.png", "bomb.png"]
    good = ["cmyk.jpg", "grey16.png", "palette.png", "rgba.png", "rotated.jpg", "png_named.jpg",
            "with spaces in name.png"]
    return [f"x/{n}" for n in bad], [f"x/{n}" for n in good]


def test_hostile_files_one_clean_line_each(tmp_path, capsys):
    bad, good = _hostile(tmp_path / "data")
    for f in (tmp_path / "data").rglob("*"):  # old files: the manifest keeps their keys for the rerun
        os.utime(f, (time.time() - 60, time.time() - 60))
    code = main(["extract", str(tmp_path / "data"), "--cache", str(tmp_path / "c"), *CLI_FAST32])
    out, err = capsys.readouterr()
    assert code == 0
    warned = [line for line in err.splitlines() if line.startswith("fne: warning: ")]
    assert len(warned) == 4  # a line a reason (empty; not an image: text, page, random; truncated; bomb), not an image
    assert all(sum(f" {b}" in line for line in warned) == 1 for b in bad)  # each named, once
    assert "not an image file" in err and "Traceback" not in err and "UserWarning" not in err
    assert "fne/" not in err and ".py:" not in err  # no source locations, no lines of code
    progress_lines = [line for line in err.splitlines() if line not in warned]
    assert all(line.startswith("extract efficientnet_lite0: ") for line in progress_lines)
    assert len(progress_lines) == 1  # a log gets the final line only on a run this short
    assert f"{len(good)} computed" in out and f"{len(bad)} skipped" in out
    # a rerun does not read them again, and says so (they were missing from its counts)
    assert main(["extract", str(tmp_path / "data"), "--cache", str(tmp_path / "c"), *CLI_FAST32]) == 0
    out, err = capsys.readouterr()
    assert "fne: warning" not in err
    assert (f"{len(good)} already cached, 0 computed, 0 skipped, {len(bad)} recorded unreadable "
            "by an earlier run (--retry-bad reads them again)") in out


# ------------------------------------------------------------------ 6. HDF5 grey N×H×W×1
def test_hdf5_grey_with_a_channel_axis_works_like_without(tmp_path):
    imgs = (np.arange(6 * 16 * 16) % 255).astype(np.uint8).reshape(6, 16, 16)
    rows = {}
    for name, arr in (("flat", imgs), ("chan", imgs[..., None])):
        path = tmp_path / f"{name}.h5"
        with h5py.File(path, "w") as f:
            f["images"] = arr
            f["labels"] = np.array([0, 1, 0, 1, 0, 1])
        r = fx.extract(path, cache=str(tmp_path / "c"), workers=0, progress=False, **FAST32)
        assert r.n_computed == 6 and r.n_skipped == 0
        store = _store(tmp_path / "c")
        ds = fne.data.datasets.load_dataset(path)
        rows[name] = store.read(ds.keys(), ["head"])["head"]
    np.testing.assert_allclose(rows["flat"], rows["chan"], rtol=1e-5)


# ------------------------------------------------------------------ 7. interrupts: Ctrl-C, SIGTERM
class _Guard(Exception):
    """What SIGTERM raises in this test process unless `fne` handles it itself."""


def _guard(signum, frame):
    raise _Guard


def test_sigterm_stops_extraction_as_ctrl_c_does_keeping_its_rows(digits_folder, tmp_path, monkeypatch, capsys):
    """`kill` or a scheduler's preemption: the rows computed before it are committed, one line says
    so, and the rerun computes only the rest."""
    import signal

    from fne.extraction.taps import TapRunner

    real_call, calls = TapRunner.__call__, []

    def terminated_at_the_second_batch(self, x):
        calls.append(len(x))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_call(self, x)

    monkeypatch.setattr(TapRunner, "__call__", terminated_at_the_second_batch)
    cache = str(tmp_path / "c")
    before = signal.signal(signal.SIGTERM, _guard)
    try:
        code = main(["extract", str(digits_folder), "--cache", cache, "--batch-size", "4", *CLI_FAST32])
        assert signal.getsignal(signal.SIGTERM) is _guard  # the CLI put back what it found
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert code == 143
    assert err.splitlines()[-1] == ("fne extract: terminated; the rows computed so far are committed to the cache; "
                                    "rerun the same command to compute the rest")
    assert len(_store(cache)) == 4 and verify(_store(cache)).problems == []
    monkeypatch.setattr(TapRunner, "__call__", real_call)
    assert fx.extract(digits_folder, cache=cache, workers=0, progress=False, **FAST32).n_computed == 20


WORKER = """
import os, sys, torch
from fne.devices import worker_init

class Pids(torch.utils.data.Dataset):
    def __len__(self):
        return 10**6

    def __getitem__(self, i):
        return os.getpid()

batches = iter(torch.utils.data.DataLoader(Pids(), batch_size=1, num_workers=1, worker_init_fn=worker_init))
print(int(next(batches)), flush=True)
sys.stdin.readline()
print(int(next(batches)), flush=True)  # the worker lives on after another's SIGTERM
sys.stdin.readline()
"""  # then exits with its worker alive: multiprocessing ends the worker with SIGTERM, then waits for it


def test_a_loader_worker_leaves_a_schedulers_sigterm_to_its_parent_and_ends_on_its_parents():
    """A SIGTERM from another process (a scheduler's, to the whole job) leaves a loader worker
    running for its parent to stop in order; its parent's SIGTERM (multiprocessing's at exit)
    ends it, so the parent's exit does not wait for it forever."""
    import signal
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(p.stdout.readline())
        os.kill(worker, signal.SIGTERM)  # from this process: not the worker's parent
        time.sleep(0.5)
        p.stdin.write("\n")
        p.stdin.flush()
        assert int(p.stdout.readline()) == worker
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=60) == 0
    finally:
        p.kill()


def test_interrupted_while_the_model_builds_the_process_ends_with_its_one_line(digits_folder, tmp_path):
    """Ctrl-C while the model is still being built on its thread, inside torch: the process exits
    130 after its one line, instead of aborting in the interpreter's finalisation (exit 134,
    "terminate called without an active exception")."""
    script = f"""
import sys, threading, torch
import fne.cli
from fne.extraction import reader, taps
started = threading.Event()
def build(*a, **k):  # a build that is busy inside torch's C++ code when the run is interrupted
    started.set()
    w = torch.empty(2048, 2048)
    while True:
        torch.nn.init.kaiming_uniform_(w)
def ctrl_c(self, j):
    started.wait(60)
    raise KeyboardInterrupt
taps.build_tap_model, reader.ImageItems.__getitem__ = build, ctrl_c
sys.argv = ["fne", "extract", {str(digits_folder)!r}, "--cache", {str(tmp_path / "c")!r}, *{CLI_FAST32!r}]
fne.cli.run()
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 130, p.stderr
    assert p.stderr.splitlines()[-1].startswith("fne extract: interrupted; the rows computed so far are committed")
    assert "terminate called" not in p.stderr and "Traceback" not in p.stderr


def test_a_loader_worker_killed_by_the_system_is_one_line_and_the_rows_before_are_kept(digits_folder, tmp_path,
                                                                                        monkeypatch, capsys):
    """The out-of-memory killer ends a decoding worker (SIGKILL, here sent by the worker itself on
    one image): one line saying so and what was kept, not torch's traceback; the rerun computes
    only the rest."""
    import signal as sig

    import fne.extraction.reader as fr

    files = sorted(p for p in digits_folder.rglob("*.png"))
    victim = files[len(files) // 2].read_bytes()
    real = fr.read_image

    def read(f, *a, **k):
        if isinstance(f, io.BytesIO) and f.getvalue() == victim:
            os.kill(os.getpid(), sig.SIGKILL)
        return real(f, *a, **k)

    monkeypatch.setattr(fr, "read_image", read)
    cache = tmp_path / "c"
    args = ["extract", str(digits_folder), "--cache", str(cache), *CLI_FAST32[:-2], "--workers", "1",
            "--batch-size", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fne extract: error: a loader worker was killed (DataLoader worker (pid")
    assert "the rows computed so far are committed to the cache" in err and "Traceback" not in err
    monkeypatch.setattr(fr, "read_image", real)
    r = fx.extract(digits_folder, cache=str(cache), workers=0, progress=False, **FAST32)
    assert 0 < r.n_cached < len(files) and r.n_cached + r.n_computed == r.n_unique


def test_a_write_error_is_explained_wherever_it_lies_in_the_chain(tmp_path):
    """A read-only or denied cache, an OSError raised beneath another exception (zarr's, say), is
    one CacheError naming the cache; an error that is no disk's is left as it is."""
    from types import SimpleNamespace

    from fne.extraction.writer import _explain

    store = SimpleNamespace(path=tmp_path / "store")
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError as inner:
            raise RuntimeError("zarr could not write the chunk") from inner
    except RuntimeError as e:
        wrapped = e
    said = _explain(wrapped, store)
    assert isinstance(said, CacheError) and str(said) == (
        f"cannot write to the cache {store.path} (Read-only file system); every row committed so far is kept: "
        f"pass cache=a folder you can write to")
    assert said.cli.endswith("pass --cache a folder you can write to")
    other = ValueError("not a disk's")
    assert _explain(other, store) is other


# ------------------------------------------------------------------ running out: one line, what, where, what to do
def test_an_export_the_file_size_limit_stops_is_one_line_and_leaves_nothing(digits_folder, warm_cache32, tmp_path,
                                                                           file_size_limit, capsys):
    """h5py handed the refused write crashed the interpreter (SIGSEGV) after a traceback per open
    object, leaving its temporary file; now one line names the file, what stopped it and what to do."""
    out = tmp_path / "out" / "e.h5"
    args = ["export", str(digits_folder), "--out", str(out), "--cache", str(warm_cache32), *CLI_FAST32]
    with file_size_limit:
        code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines() == [
        f"fne export: error: the file-size limit (ulimit -f) stopped writing {out}: raise it (ulimit -f unlimited) or "
        f"pass --out a folder on another disk; nothing was written (--out is as it was); rerun the same command"]
    assert os.listdir(out.parent) == []
    assert main(args) == 0 and h5py.File(out)["embedding"].shape[0] == 24


def test_dev_shm_running_out_in_a_loader_worker_is_one_line(digits_folder, tmp_path, monkeypatch, capsys):
    """torch's error where /dev/shm is full (raised in a decoding worker, re-raised by the
    DataLoader with the worker's traceback) is one line saying what ran out and what to do; with
    --workers 0 no shared memory is used, and the extraction completes. Forked workers' reused
    pool lies outside /dev/shm: with it, a full /dev/shm stops nothing; a batch the pool cannot
    hold (here: no pool) takes fresh shared memory there."""
    import torch

    from fne.extraction import reader

    def full(size):
        raise RuntimeError(f"unable to allocate shared memory(shm) for file </torch_1234_5678_{size}>: "
                           f"No space left on device (28)")

    monkeypatch.setattr(torch.UntypedStorage, "_new_shared", staticmethod(full))
    args = ["extract", str(digits_folder), *CLI_FAST32[:-2], "--batch-size", "4"]
    assert main([*args, "--cache", str(tmp_path / "pooled"), "--workers", "1"]) == 0  # every batch in the pool
    assert len(_store(tmp_path / "pooled")) == 24
    monkeypatch.setattr(reader.ImageItems, "share_slots", lambda self, *a, **k: None)
    cache = tmp_path / "c"
    args += ["--cache", str(cache)]
    assert main([*args, "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1:] == [
        "fne extract: error: /dev/shm ran out of space for a loader worker's batch in shared memory (No space left on "
        "device): rerun with fewer --workers or a smaller --batch-size (--workers 0 uses none), or free /dev/shm (a "
        "container's: docker run --shm-size); the rows computed so far are committed to the cache; rerun the same "
        "command to compute the rest"]
    assert main([*args, "--workers", "0"]) == 0
    assert verify(_store(cache)).problems == [] and len(_store(cache)) == 24


@pytest.mark.parametrize("where, flag", [("out", "--out"), ("cache", "--cache"), ("else", None)])
def test_a_refused_write_names_the_option_that_moves_it(tmp_path, where, flag):
    """The line names the file and the option that puts it on another disk: --out for the run's
    files, --cache for the cache's, none elsewhere."""
    from types import SimpleNamespace

    from fne.stopped import ran_out

    args = SimpleNamespace(command="predict", out=str(tmp_path / "out" / "p.csv"), cache=str(tmp_path / "cache"),
                           extract_missing=False)
    path = {"out": tmp_path / "out" / "p.csv", "cache": tmp_path / "cache" / "manifests" / "m.json",
            "else": tmp_path / "x"}[where]
    line = ran_out(args, OSError(errno.ENOSPC, "No space left on device", str(path)), None)
    more = "" if flag is None else f" or pass {flag} a folder on another disk"
    assert line.startswith(f"no space left on device writing {path}: free space there{more}; ")
    denied = ran_out(args, OSError(errno.EROFS, "Read-only file system", str(path)), None)
    assert denied.startswith(f"cannot write {path} (Read-only file system)")
    refused = ran_out(args, OSError(errno.EACCES, "Permission denied", str(path)), None)  # a DATA folder: read
    assert refused.startswith(f"cannot {'access' if flag is None else 'write'} {path} (Permission denied)")
    assert ran_out(args, OSError(errno.ENOENT, "No such file or directory", str(path)), None) is None  # a bug's


def test_removing_from_a_read_only_cache_is_one_line(warm_cache32, monkeypatch, capsys):
    """`fne cache rm` on a cache mounted read-only: one line saying the cache must be writable,
    the store left as it was."""
    import fne.cache.upkeep as up

    (store,) = list_stores(warm_cache32)

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(src))

    monkeypatch.setattr(up.os, "replace", read_only)
    assert main(["cache", "rm", store.path.name, "--cache", str(warm_cache32)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"fne cache rm: error: cannot write {store.path} (Read-only file system): removing from a cache needs one you "
        f"can write to"]
    assert verify(_store(warm_cache32)).problems == []


def test_the_machine_running_out_of_memory_in_fit_is_one_line(digits_folder, warm_cache32, tmp_path, monkeypatch,
                                                              capsys):
    """numpy's MemoryError (rows too many for RAM, or `ulimit -v`) was a traceback: one line saying
    what ran out and what uses less, the run folder left as it was."""
    import fne.linear.fit as fl

    def too_large(*a, **k):
        raise MemoryError(
            "Unable to allocate 17.0 MiB for an array with shape (720, 3088) and data type float64")

    monkeypatch.setattr(fl, "open_rows", too_large)
    out = tmp_path / "run"
    assert main(["fit", str(digits_folder), "--out", str(out), "--cache", str(warm_cache32), *CLI_FAST32]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "fne fit: error: the machine ran out of memory (Unable to allocate 17.0 MiB for an array with shape (720, 3088) "
        "and data type float64): free memory or raise the limit (ulimit -v), or rerun with a smaller --stream-chunk; "
        "nothing was written (--out is as it was); rerun the same command"]
    assert not out.exists()


@pytest.mark.parametrize("error, said", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 19267584 bytes. Error code 12 (Cannot allocate memory)"),
     "the machine ran out of memory (could not allocate 18.4 MiB): free memory or raise the limit (ulimit -v), or "
     "rerun with fewer --workers or a smaller --batch-size"),
    (OSError(errno.EMFILE, "Too many open files"),
     "the open-file limit (ulimit -n N) was reached: raise it (ulimit -n 65536), or rerun with fewer --workers or a "
     "smaller --batch-size"),
    (RuntimeError("can't start new thread"),
     "the system refused a new thread (can't start new thread): raise the limits (ulimit -v, ulimit -u)"),
    (ImportError("libtorch_cpu.so: failed to map segment from shared object"),
     "the memory limit (ulimit -v) is too low to load libtorch_cpu.so: raise it"),
])
def test_the_machines_limits_are_one_line_each(error, said):
    """torch's CPU allocator, the open-file limit, the thread limit, a memory limit too low to load
    torch: what ran out and what gives more."""
    import re
    from types import SimpleNamespace

    from fne.stopped import ran_out

    args = SimpleNamespace(command="extract", workers=None, batch_size=None)
    line = re.sub(r"\(ulimit -n \d+\) was", "(ulimit -n N) was", ran_out(args, error, None))
    assert line == f"{said}; the rows computed so far are committed to the cache; rerun the same command to compute " \
                   f"the rest"


def test_a_file_size_limit_on_the_cache_names_it_and_leaves_nothing_half_written(digits_folder, tmp_path,
                                                                                   file_size_limit):
    """`ulimit -f` refusing a part (EFBIG; Python ignores SIGXFSZ) was the bare OSError, naming no
    file: one CacheError naming the cache and the limit, no unfinished part left, and the rerun
    without the limit computes the rows."""
    cache = tmp_path / "cache"
    with file_size_limit, pytest.raises(CacheError) as e:  # a part of 16 rows: 16 x 3,088 float32, past 64 KiB
        fx.extract(digits_folder, cache=str(cache), batch_size=4, chunk=16, workers=0, progress=False, **FAST32)
    assert str(e.value).startswith(f"the file-size limit (ulimit -f) stopped writing to the cache {_store(cache).path}")
    found = verify(_store(cache))
    assert found.problems == [] and found.leftovers == [] and found.rows == 0
    again = fx.extract(digits_folder, cache=str(cache), workers=0, progress=False, **FAST32)
    assert again.n_computed == 24 and len(_store(cache)) == 24
