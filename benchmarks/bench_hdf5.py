"""Reading images one by one from HDF5 DATA in chunks of many images (`fne.data.hdf5.open_images`).

An HDF5 file of N images (S x S x 3 uint8, 8 distinct random images repeated so that gzip has
something to do) is written with chunks of `--chunk` images, gzip level 1. Its images are then
read one by one, as a loader worker reads them (`np.asarray(dataset[i])`), in order and in a
random order, through h5py's default chunk cache (before) and through `open_images` (now).

    python benchmarks/bench_hdf5.py --n 1024 --chunk 64 --size 224
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

from fne.data.hdf5 import open_images  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=64, help="images per chunk")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reads", type=int, default=256, help="images read per figure")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        path = str(Path(tmp) / "images.h5")
        base = rng.integers(0, 255, (8, a.size, a.size, 3), dtype=np.uint8)
        with h5py.File(path, "w") as f:
            d = f.create_dataset("images", (a.n, a.size, a.size, 3), dtype=np.uint8,
                                 chunks=(a.chunk, a.size, a.size, 3), compression="gzip", compression_opts=1)
            for k in range(0, a.n, a.chunk):
                d[k:k + a.chunk] = base[np.arange(min(a.chunk, a.n - k)) % 8]
            f["labels"] = np.arange(a.n) % 4
        chunk_mb = a.chunk * a.size ** 2 * 3 / 2**20
        print(f"{a.n} images {a.size}x{a.size}, chunks of {a.chunk} ({chunk_mb:.1f} MiB), gzip 1; h5py "
              f"{h5py.version.version}, HDF5 {h5py.version.hdf5_version}; load {os.getloadavg()[0]:.1f}")
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


if __name__ == "__main__":
    main()
