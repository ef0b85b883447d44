"""HDF5 DATA read in a shuffled order (`fne train`'s) from a copy in the cache (`fne.data.hdf5_access`)."""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fne.data.hdf5_access as hdf5_access
import fne.data.random_access as random_access
from fne.data.containers import shuffled_dir
from fne.data.datasets import load_dataset

from .conftest import trains_alike_from_one_copy, write_digits

h5py = pytest.importorskip("h5py")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test's own cache; files this small are copied as a file whose chunks exceed the chunk
    cache is (`kept_bytes`: what a reading process keeps of the file's decoded chunks)."""
    monkeypatch.setenv("FNE_CACHE", str(tmp_path / "fne-cache"))
    monkeypatch.setattr(hdf5_access, "kept_bytes", lambda images: 0)


def _copies(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "fne-cache" / "manifests" / "shuffled").glob("*"))


def _h5(path: Path, n: int = 24, chunks: tuple | None = (4, 16, 16, 3), seed: int = 0, **kw) -> np.ndarray:
    """HDF5 DATA of `n` random 16x16 RGB images in `chunks`, gzip (unless chunks is None); its images."""
    images = np.random.default_rng(seed).integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=chunks, **({"compression": "gzip"} if chunks else {}), **kw)
        f["labels"] = np.arange(n) % 3
    return images


class _Writes:
    """Counts the copies `hdf5_access._write` makes."""

    def __init__(self, monkeypatch):
        self.n, real = 0, hdf5_access._write

        def counting(*a, **k):
            self.n += 1
            return real(*a, **k)

        monkeypatch.setattr(hdf5_access, "_write", counting)


def test_shuffled_images_come_from_one_copy_not_from_chunks(tmp_path, monkeypatch):
    """In a random order each image read cost its chunk's decode where a reading process cannot
    keep the chunks; after `read_shuffled` the file is read once, in order, and every image in any
    order, in this process and in a loader's workers, comes from the copy, equal to the file's."""
    import torch

    images = _h5(tmp_path / "a.h5")
    writes = _Writes(monkeypatch)
    plain = load_dataset(tmp_path / "a.h5")
    d = load_dataset(tmp_path / "a.h5")
    d.read_shuffled(range(len(d)), progress=False)
    (copy,) = _copies(tmp_path)
    assert writes.n == 1 and copy.suffix == ".npy" and isinstance(d.array_source._data(), np.memmap)
    order = list(range(len(d))) * 3
    random.Random(0).shuffle(order)
    assert all(np.array_equal(d.array_source.get(i), images[i]) for i in order)
    assert all(np.array_equal(np.asarray(d.load(i)), images[i]) for i in order[:5])
    assert d.keys() == plain.keys()  # the same content keys (and activation cache rows) as from the file
    loader = torch.utils.data.DataLoader(order, batch_size=5, num_workers=2, multiprocessing_context="fork",
                                         collate_fn=lambda b: [(i, d.array_source.get(i),
                                                                isinstance(d.array_source._data(), np.memmap))
                                                               for i in b])
    assert all(mapped and np.array_equal(a, images[i]) for batch in loader for i, a, mapped in batch)
    spawned = pickle.loads(pickle.dumps(d))  # as a spawned worker gets it (macOS, Windows)
    assert spawned.array_source._copy == str(copy) and spawned.array_source._array is None
    assert np.array_equal(spawned.array_source.get(order[0]), images[order[0]])
    assert isinstance(spawned.array_source._array, np.memmap)
    d2 = load_dataset(tmp_path / "a.h5")
    d2.read_shuffled(range(len(d2)), progress=False)  # the copy is found, not made again
    assert writes.n == 1 and d2.array_source._copy == str(copy) and np.array_equal(d2.array_source.get(5), images[5])


def test_train_and_test_files_each_get_their_copy(tmp_path):
    train, test = _h5(tmp_path / "d" / "train.h5", 12), _h5(tmp_path / "d" / "test.h5", 8, seed=1)
    d = load_dataset(tmp_path / "d")
    d.read_shuffled([i for i in range(len(d)) if d.splits[i] == "train"], progress=False)
    assert len(_copies(tmp_path)) == 1  # the test file's images are not read shuffled
    d.read_shuffled(range(len(d)), progress=False)
    assert len(_copies(tmp_path)) == 2
    both = np.concatenate([train, test])
    assert all(np.array_equal(d.array_source.get(i), both[i]) for i in (19, 0, 12, 11))


def test_files_whose_chunks_decode_one_image_or_are_kept_are_not_copied(tmp_path, monkeypatch):
    """A contiguous dataset, or one an image a chunk, decodes only the image read; chunks of many
    images are copied only where those the shuffled images are in exceed the chunk cache."""
    for name, chunks in (("contiguous.h5", None), ("per-image.h5", (1, 16, 16, 3)), ("halves.h5", (1, 8, 16, 3))):
        images = _h5(tmp_path / name, chunks=chunks)
        d = load_dataset(tmp_path / name)
        d.read_shuffled(range(len(d)), progress=False)
        assert not _copies(tmp_path) and np.array_equal(d.array_source.get(9), images[9]), name
    images = _h5(tmp_path / "a.h5")  # chunks of 4 images of 768 bytes
    d = load_dataset(tmp_path / "a.h5")
    monkeypatch.setattr(hdf5_access, "kept_bytes", lambda images: 2 * 4 * 768)  # two chunks
    few = [0, 3, 9, 10]  # in chunks 0 and 2
    d.read_shuffled(few, progress=False)
    assert not _copies(tmp_path)
    d.read_shuffled(few + [5], progress=False)  # and chunk 1
    assert len(_copies(tmp_path)) == 1 and np.array_equal(d.array_source.get(5), images[5])
    monkeypatch.undo()  # HDF5's own chunk cache (1 or 8 MiB) keeps this file's 18 KiB
    monkeypatch.setenv("FNE_CACHE", str(tmp_path / "other-cache"))
    d = load_dataset(tmp_path / "a.h5")
    d.read_shuffled(range(len(d)), progress=False)
    assert d.array_source._copy is None and not (tmp_path / "other-cache" / "manifests" / "shuffled").exists()


def test_a_changed_file_gets_a_new_copy_and_the_old_one_goes(tmp_path):
    _h5(tmp_path / "a.h5")
    d = load_dataset(tmp_path / "a.h5")
    d.read_shuffled(range(len(d)), progress=False)
    (old,) = _copies(tmp_path)
    images = _h5(tmp_path / "a.h5", n=10, seed=2)  # another version: 10 other images
    os.utime(tmp_path / "a.h5", ns=(os.stat(tmp_path / "a.h5").st_mtime_ns + 10**9,) * 2)
    d = load_dataset(tmp_path / "a.h5")
    d.read_shuffled(range(len(d)), progress=False)
    (new,) = _copies(tmp_path)
    assert new != old and len(d) == 10 and all(np.array_equal(d.array_source.get(i), images[i]) for i in (9, 0, 4))


def test_a_damaged_or_removed_copy_is_never_read(tmp_path, recwarn):
    images = _h5(tmp_path / "a.h5")
    d = load_dataset(tmp_path / "a.h5")
    d.read_shuffled(range(len(d)), progress=False)
    (copy,) = _copies(tmp_path)
    copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])  # cut short on disk
    d = load_dataset(tmp_path / "a.h5")
    d.read_shuffled(range(len(d)), progress=False)  # made again
    assert np.array_equal(np.load(copy), images) and not recwarn.list
    d = load_dataset(tmp_path / "a.h5")
    d.read_shuffled(range(len(d)), progress=False)
    copy.unlink()  # removed after the loader was prepared: the file is read, with one warning
    with pytest.warns(UserWarning, match=f"cannot read {copy}, the copy of .*a.h5 .*each image is read from its chunk"):
        assert np.array_equal(d.array_source.get(7), images[7])
    assert np.array_equal(d.array_source.get(3), images[3]) and not isinstance(d.array_source._data(), np.memmap)


def test_no_room_or_a_failed_copy_reads_the_file_and_says_so(tmp_path, monkeypatch):
    images = _h5(tmp_path / "a.h5")
    d = load_dataset(tmp_path / "a.h5")
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**6, 10**6 - 1000, 1000))
    with pytest.warns(UserWarning, match=r"no copy of .*a.h5 for reading it shuffled \(0 MB, and .*shuffled has "
                                         r"0 MB free\): each image is read from its chunk, slowly"):
        d.read_shuffled(range(len(d)), progress=False)
    assert not _copies(tmp_path) and np.array_equal(d.array_source.get(11), images[11])
    monkeypatch.setattr(shutil, "disk_usage", real_usage)

    def full(path, tmp, enabled):
        tmp.write_bytes(b"part of a copy")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hdf5_access, "_write", full)
    d = load_dataset(tmp_path / "a.h5")
    with pytest.warns(UserWarning, match="No space left on device.*read from its chunk"):
        d.read_shuffled(range(len(d)), progress=False)
    assert not _copies(tmp_path) and np.array_equal(d.array_source.get(2), images[2])  # no temporary file left


def test_a_file_rewritten_while_it_is_copied_keeps_no_copy(tmp_path, monkeypatch):
    images = _h5(tmp_path / "a.h5")
    d = load_dataset(tmp_path / "a.h5")
    real = hdf5_access._write

    def rewritten(path, *a, **k):
        real(path, *a, **k)
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    monkeypatch.setattr(hdf5_access, "_write", rewritten)
    with pytest.warns(UserWarning, match=r"no copy of .*a.h5 for reading it shuffled \(it changed while it was "
                                         r"copied\): each image is read from its chunk"):
        d.read_shuffled(range(len(d)), progress=False)
    assert not _copies(tmp_path) and np.array_equal(d.array_source.get(3), images[3])


def test_a_copy_interrupted_leaves_nothing_and_an_older_runs_leftover_goes(tmp_path, monkeypatch):
    images = _h5(tmp_path / "a.h5")
    d = load_dataset(tmp_path / "a.h5")
    st = os.stat(tmp_path / "a.h5")
    target = random_access.copy_name(shuffled_dir(), os.path.realpath(tmp_path / "a.h5"), st.st_size,
                                     st.st_mtime_ns, "images", ".npy")
    target.parent.mkdir(parents=True)
    dead = target.with_name(f"{target.name}.tmp-{random_access.socket.gethostname()}-999999999")
    dead.write_bytes(b"half")  # left by a run killed mid-copy
    real = hdf5_access._write

    def interrupted(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(hdf5_access, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        d.read_shuffled(range(len(d)), progress=False)
    assert not _copies(tmp_path) and d.array_source._copy is None  # neither the leftover nor this run's file
    monkeypatch.setattr(hdf5_access, "_write", real)
    d.read_shuffled(range(len(d)), progress=False)
    assert _copies(tmp_path) == [target] and np.array_equal(d.array_source.get(0), images[0])


def test_fne_train_over_hdf5_copies_it_once_and_trains_as_over_the_files(tmp_path, capsys):
    """The copy changes nothing of a run but its speed: the same scores as the same images loose."""
    src = write_digits(tmp_path / "digits", per_class=6, classes=2)
    loose_d = load_dataset(src)
    with h5py.File(tmp_path / "digits.h5", "w") as f:
        f.create_dataset("images", data=np.stack([np.asarray(Image.open(p)) for p in loose_d.sources]),
                         chunks=(3, 32, 32), compression="gzip")
        f["labels"] = np.array(loose_d.labels, dtype="S")
    trains_alike_from_one_copy(src, tmp_path / "digits.h5", tmp_path, capsys)
