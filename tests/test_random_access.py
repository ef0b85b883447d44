"""Parquet read in a shuffled order (`fne train`'s) from a copy in the cache (`fne.data.random_access`)."""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path

import pytest

import fne
import fne.cli
import fne.data.containers
import fne.data.random_access as random_access
from fne.data.datasets import load_dataset

from .conftest import trains_alike_from_one_copy, write_digits
from .test_containers import _Decoded, _files, write_parquet

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test's own cache; files this small are copied as a file over GROUP_CACHE_BYTES is."""
    monkeypatch.setenv("FNE_CACHE", str(tmp_path / "fne-cache"))
    monkeypatch.setattr(fne.data.containers, "GROUP_CACHE_BYTES", 0)


def _copies(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "fne-cache" / "manifests" / "shuffled").glob("*"))


def _data(tmp_path: Path, rows_per_group: int = 4) -> tuple[Path, list[bytes]]:
    src = write_digits(tmp_path / "digits", per_class=6, classes=3)
    write_parquet(src, tmp_path / "pq", rows_per_group=rows_per_group)  # {bytes, path} cells, as the Hub's
    return tmp_path / "pq", [f.read_bytes() for f, _, _ in _files(src)]


def test_shuffled_rows_come_from_one_copy_not_from_row_groups(tmp_path, monkeypatch):
    """Each image read out of order cost its row group's decode (7 ms per image at 1,000-row groups
    over the reading process's cache); after `read_shuffled` the file is read once, in order, and
    every image in any order, in this process and in a loader's workers, comes from the copy."""
    import torch

    data, rows = _data(tmp_path)
    d = load_dataset(data)
    spy = _Decoded(monkeypatch)
    d.read_shuffled(range(len(d)), progress=False)
    assert spy.total == len(rows) and [p.suffix for p in _copies(tmp_path)] == [".arrow"]
    order = list(range(len(d))) * 3
    random.Random(0).shuffle(order)
    assert [d.read_bytes(i)[0] for i in order] == [rows[i] for i in order]
    assert spy.total == len(rows) and not d.container._groups  # no row group read again
    loader = torch.utils.data.DataLoader(order, batch_size=5, num_workers=2, collate_fn=lambda b: [
        (i, d.read_bytes(i)[0]) for i in b], multiprocessing_context="fork")
    assert all(data == rows[i] for batch in loader for i, data in batch)
    spawned = pickle.loads(pickle.dumps(d))  # as a spawned worker gets it (macOS, Windows)
    assert spawned.container._copies == d.container._copies and spawned.read_bytes(order[0])[0] == rows[order[0]]
    d2 = load_dataset(data)
    d2.read_shuffled(range(len(d2)), progress=False)  # the copy is found, not made again
    assert spy.total == len(rows) and d2.read_bytes(5)[0] == rows[5]


def test_row_groups_a_reading_process_can_keep_are_not_copied(tmp_path, monkeypatch):
    """A file whose row groups the shuffled images are in fit under GROUP_CACHE_BYTES (each
    reading process keeps them once read) is read as it is; the copy is for those that do not."""
    data, rows = _data(tmp_path)
    d = load_dataset(data)
    f = str(next(data.glob("*.parquet")).resolve())
    few = [i for i in range(len(d)) if d.sources[i].a in (0, 2)]  # in row groups 0 and 2 (of 4 rows each)
    two_groups = random_access.column_bytes(f, "image", {0, 2})[1]
    monkeypatch.setattr(fne.data.containers, "GROUP_CACHE_BYTES", two_groups)
    d.read_shuffled(few, progress=False)
    assert not _copies(tmp_path)
    d.read_shuffled(few + [i for i in range(len(d)) if d.sources[i].a == 1], progress=False)
    assert len(_copies(tmp_path)) == 1 and d.read_bytes(few[-1])[0] == rows[few[-1]]


def test_a_changed_file_gets_a_new_copy_and_the_old_one_goes(tmp_path):
    data, rows = _data(tmp_path)
    d = load_dataset(data)
    d.read_shuffled(range(len(d)), progress=False)
    (old,) = _copies(tmp_path)
    f = next(data.glob("*.parquet"))
    table = pq.read_table(f)
    pq.write_table(table.slice(0, 10), f, row_group_size=4)  # another version: 10 rows
    os.utime(f, ns=(os.stat(f).st_mtime_ns + 10**9,) * 2)
    d = load_dataset(data)
    d.read_shuffled(range(len(d)), progress=False)
    (new,) = _copies(tmp_path)
    assert new != old and len(d) == 10 and [d.read_bytes(i)[0] for i in (9, 0, 4)] == [rows[9], rows[0], rows[4]]


def test_a_damaged_or_removed_copy_is_never_read(tmp_path, recwarn):
    data, rows = _data(tmp_path)
    d = load_dataset(data)
    d.read_shuffled(range(len(d)), progress=False)
    (copy,) = _copies(tmp_path)
    copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])  # cut short on disk
    d = load_dataset(data)
    d.read_shuffled(range(len(d)), progress=False)  # made again
    assert pa.ipc.open_file(str(copy)).read_all().num_rows == len(rows) and not recwarn.list
    d = load_dataset(data)
    d.read_shuffled(range(len(d)), progress=False)
    copy.unlink()  # removed after the loader was prepared: the file is read, with one warning
    with pytest.warns(UserWarning, match=f"cannot read {copy}, the copy of .*each image is read from its row group"):
        assert d.read_bytes(7)[0] == rows[7]
    assert d.read_bytes(3)[0] == rows[3]


def test_no_room_or_a_failed_copy_reads_the_file_and_says_so(tmp_path, monkeypatch):
    data, rows = _data(tmp_path)
    d = load_dataset(data)
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**6, 10**6 - 1000, 1000))
    with pytest.warns(UserWarning, match=r"no copy of .*train-00000-of-00001.parquet for reading it shuffled "
                                         r"\(\d+ MB, and .*shuffled has 0 MB free\)"):
        d.read_shuffled(range(len(d)), progress=False)
    assert not _copies(tmp_path) and d.read_bytes(11)[0] == rows[11]
    monkeypatch.setattr(shutil, "disk_usage", real_usage)

    def full(listing, tmp, rows, enabled):
        tmp.write_bytes(b"part of a copy")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(random_access, "_write", full)
    d = load_dataset(data)
    with pytest.warns(UserWarning, match="No space left on device.*read from its row group"):
        d.read_shuffled(range(len(d)), progress=False)
    assert not _copies(tmp_path) and d.read_bytes(2)[0] == rows[2]  # no copy, no temporary file left


def test_a_file_rewritten_while_it_is_copied_keeps_no_copy(tmp_path, monkeypatch):
    """The copy is named by the file's size and mtime before copying: one that may hold the new
    version, or part of each, is dropped, and the images are read from the file."""
    data, rows = _data(tmp_path)
    d = load_dataset(data)
    real = random_access._write

    def rewritten(listing, *a, **k):
        real(listing, *a, **k)
        st = os.stat(listing.path)
        os.utime(listing.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    monkeypatch.setattr(random_access, "_write", rewritten)
    with pytest.warns(UserWarning, match=r"no copy of .*parquet for reading it shuffled \(it changed while it "
                                         r"was copied\): each image is read from its row group"):
        d.read_shuffled(range(len(d)), progress=False)
    assert not _copies(tmp_path) and d.read_bytes(5)[0] == rows[5]


def test_a_copy_interrupted_leaves_nothing_and_an_older_runs_leftover_goes(tmp_path, monkeypatch):
    data, rows = _data(tmp_path)
    d = load_dataset(data)
    listing = d.container.listings[str(next(data.glob("*.parquet")).resolve())]
    target = random_access.copy_path(listing, tmp_path / "fne-cache" / "manifests" / "shuffled")
    target.parent.mkdir(parents=True)
    dead = target.with_name(f"{target.name}.tmp-{random_access.socket.gethostname()}-999999999")
    dead.write_bytes(b"half")  # left by a run killed mid-copy
    real = random_access._write

    def interrupted(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(random_access, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        d.read_shuffled(range(len(d)), progress=False)
    assert not _copies(tmp_path)  # neither the leftover nor this run's temporary file
    monkeypatch.setattr(random_access, "_write", real)
    d.read_shuffled(range(len(d)), progress=False)
    assert _copies(tmp_path) == [target] and d.read_bytes(0)[0] == rows[0]


def test_fne_train_over_parquet_copies_it_once_and_trains_as_over_the_files(tmp_path, capsys):
    """The copy changes nothing of a run but its speed: the same scores as the same images loose."""
    src = write_digits(tmp_path / "digits", per_class=6, classes=2)
    write_parquet(src, tmp_path / "pq", rows_per_group=3)
    trains_alike_from_one_copy(src, tmp_path / "pq", tmp_path, capsys)
