"""Reading images one by one from HDF5 DATA in chunks of many images (`fne.data.hdf5_access.open_images`).

An HDF5 file of N images (S x S x 3 uint8, 8 distinct random images repeated so that gzip has
something to do) is written with chunks of `--chunk` images, gzip level 1. Its images are then
read one by one, as a loader worker reads them (`np.asarray(dataset[i])`), in order and in a
random order, through h5py's default chunk cache (before) and through `open_images` (now).

With `--shuffled`, the order `fne train` reads in, over a file whose chunks exceed the chunk
cache `open_images` gives (256 MB): `--reads` images in a random order read through the
`Dataset` (`array_source.get`, what a loader worker reads before it makes a PIL image), in this
process and through a DataLoader of `--workers` workers, from the file (before) and from the
copy `Dataset.read_shuffled` makes once (now; its time is printed). Each form is read once
before it is timed, so the page cache holds it: this measures the CPU of reading.

    python benchmarks/bench_hdf5.py --n 1024 --chunk 64 --size 224
    TMPDIR=/work/tmp python benchmarks/bench_hdf5.py --n 4000 --chunk 64 --size 224 --shuffled --reads 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fne.data.datasets import load_dataset  # noqa: E402
from fne.data.hdf5_access import open_images  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=64, help="images per chunk")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reads", type=int, default=256, help="images read per figure")
    ap.add_argument("--shuffled", action="store_true", help="fne train's order: from the file and from its copy")
    ap.add_argument("--workers", type=int, default=2, help="loader workers (--shuffled)")
    ap.add_argument("--photos", type=Path, help="a folder of JPEGs: its first 64, resized, in place of 8 random "
                                                "images (which gzip cannot compress)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        path = str(Path(tmp) / "images.h5")
        base = rng.integers(0, 255, (8, a.size, a.size, 3), dtype=np.uint8) if a.photos is None else _photos(a)
        with h5py.File(path, "w") as f:
            d = f.create_dataset("images", (a.n, a.size, a.size, 3), dtype=np.uint8,
                                 chunks=(a.chunk, a.size, a.size, 3), compression="gzip", compression_opts=1)
            for k in range(0, a.n, a.chunk):
                d[k:k + a.chunk] = base[(k + np.arange(min(a.chunk, a.n - k))) % len(base)]
            f["labels"] = np.arange(a.n) % 4
        chunk_mb = a.chunk * a.size ** 2 * 3 / 2**20
        print(f"{a.n} images {a.size}x{a.size}, chunks of {a.chunk} ({chunk_mb:.1f} MiB), gzip 1: "
              f"{os.path.getsize(path) / 2**20:,.0f} MiB on disk; h5py "
              f"{h5py.version.version}, HDF5 {h5py.version.hdf5_version}; load {os.getloadavg()[0]:.1f}")
        if a.shuffled:
            shuffled(path, a, rng.permutation(a.n)[:a.reads].tolist(), Path(tmp) / "cache")
            return
        print("| order | h5py's default cache, ms/img | open_images, ms/img |\n|---|---:|---:|")
        for order in ("in order", "random"):
            idx = np.arange(a.n) if order == "in order" else rng.permutation(a.n)
            figures = []
            # one at a time: HDF5 shares a dataset opened twice in a process, and its cache with it
            for opener in (lambda: h5py.File(path, "r")["images"], lambda: open_images(path)):
                images = opener()
                t0 = time.perf_counter()
                for i in idx[:a.reads]:
                    np.asarray(images[int(i)])
                figures.append(1000 * (time.perf_counter() - t0) / a.reads)
                images.file.close()
            print(f"| {order} | {figures[0]:.2f} | {figures[1]:.2f} |", flush=True)


def _photos(a) -> np.ndarray:
    """The first 64 JPEGs of `a.photos`, as `a.size` x `a.size` RGB."""
    from PIL import Image

    files = sorted(a.photos.rglob("*.jpg"))[:64]
    if not files:
        sys.exit(f"{a.photos} holds no .jpg")
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((a.size, a.size))) for f in files])


class _Read:
    """A loader's items: image i read as a worker reads it (`ArraySource.get`), its size returned."""

    def __init__(self, d):
        self.d = d

    def __len__(self) -> int:
        return len(self.d)

    def __getitem__(self, i: int) -> int:
        return self.d.array_source.get(i).nbytes


def shuffled(path: str, a, order: list[int], cache: Path) -> None:
    """ms per image in one process, and img/s through `a.workers` workers, reading `order` from
    the file and from its copy."""
    import torch

    os.environ["FNE_CACHE"] = str(cache)
    print(f"| {len(order)} images in a random order | one process, ms/img | {a.workers} workers, img/s |\n"
          "|---|---:|---:|")
    for form in ("from the file (before)", "from its copy (now)"):
        d = load_dataset(path)
        if form.endswith("(now)"):
            t0 = time.perf_counter()
            d.read_shuffled(range(a.n), progress=False)
            print(f"(the copy, once: {time.perf_counter() - t0:.2f} s: {d.array_source._copy})", flush=True)
            if d.array_source._copy is None:
                sys.exit("no copy made: the file's chunks fit in the chunk cache (give a larger --n)")
        for i in range(a.n):  # the page cache holds the file (the copy), as it would after an epoch
            d.array_source.get(i)
        d.array_source._array = None  # and this process starts with no chunk kept
        t0 = time.perf_counter()
        for i in order:
            d.array_source.get(i)
        one = 1000 * (time.perf_counter() - t0) / len(order)
        d.array_source._array = None  # each worker opens its own, as fne's (forked) workers do
        loader = torch.utils.data.DataLoader(_Read(d), batch_size=32, sampler=order, num_workers=a.workers,
                                             collate_fn=list, prefetch_factor=4, multiprocessing_context="fork")
        t0 = time.perf_counter()
        assert sum(len(b) for b in loader) == len(order)
        print(f"| {form} | {one:.3f} | {len(order) / (time.perf_counter() - t0):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
