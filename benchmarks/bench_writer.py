"""The writer and the reader of the activation cache, layout by layout, in one run (issue 18 §1).

The `Writer` thread is fed synthetic VGG-16 rows (12,416 float16 values over 15 taps: ReLU'd
Gaussians, about half zeros like pooled post-ReLU activations) in batches of 32, as
`fne extract` feeds it, and commits them in parts. For each layout it prints rows/s and MB/s
committed (the process pinned to one core), the size on disk, and the time to read the rows
back the way `fne fit` reads them (`Rows.chunks`, 1,024 rows at a time): one layer (fc7) and all
layers (fne). Layouts:

- today: the format-1 layout (one zstd-compressed array per tap, 256-row parts), written by
  the previous `Store.commit` code kept here;
- rows-256: one uncompressed array per part, every tap side by side, in 256-row parts;
- rows: the shipped layout: the same in 1,024-row parts (`fne extract`'s default chunk);
- rows+zstd1: 1,024-row parts of one array compressed with zstd level 1 (what compression costs).

Reading right after writing finds the rows in the page cache for every layout alike.

    python benchmarks/bench_writer.py            # 32,768 rows per layout, best of 3 rounds
    python benchmarks/bench_writer.py --quick    # 8,192 rows, 2 rounds: under two minutes
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fne.backbones import registry as backbones  # noqa: E402
from fne.cache import parts  # noqa: E402
from fne.cache.store import Store, StoreKey  # noqa: E402
from fne.extraction.writer import Writer  # noqa: E402
from fne.linear.features import Rows  # noqa: E402

BATCH = 32


class TodayStore(Store):
    """The store as fne wrote it before this layout: one zstd array per tap (format 1)."""

    def commit(self, keys, arrays, bad=None):  # the previous Store.commit + _write_part
        name = f"{time.time_ns():020d}-{os.getpid()}-00000000-{os.urandom(4).hex()}"
        rel = f"parts/.tmp-{name}"
        cuts = np.cumsum([c for _, c in self.taps])[:-1]
        group = zarr.open_group(str(self.path / rel), mode="w")
        k = parts.key_bytes(keys)  # shape and dtype, then the values: zarr 3.0 has no create_array(data=)
        group.create_array("keys", shape=k.shape, dtype=k.dtype)[...] = k
        for (tap, c), a in zip(self.taps, np.split(arrays, cuts, axis=2), strict=True):
            group.create_array(tap, shape=a.shape, dtype=self.meta["dtype"],
                               chunks=(len(keys), self.views, c))[...] = a.astype(self.meta["dtype"])
        os.replace(self.path / rel, self.path / "parts" / name)
        self.refresh()
        return name


class ZstdStore(Store):
    """One array per part like the shipped layout, compressed with zstd level 1."""

    def commit(self, keys, arrays, bad=None):
        name = f"{time.time_ns():020d}-{os.getpid()}-00000000-{os.urandom(4).hex()}"
        rel = f"parts/.tmp-{name}"
        group = zarr.open_group(str(self.path / rel), mode="w")
        k = parts.key_bytes(keys)
        group.create_array("keys", shape=k.shape, dtype=k.dtype, attributes={"layout": parts.ROWS})[...] = k
        group.create_array(parts.ROWS, shape=arrays.shape, dtype=self.meta["dtype"], chunks=arrays.shape,
                           compressors=zarr.codecs.ZstdCodec(level=1))[...] = arrays
        os.replace(self.path / rel, self.path / "parts" / name)
        self.refresh()
        return name


def synthetic_batches(taps: list[tuple[str, int]], n_distinct: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    d = sum(c for _, c in taps)
    return [np.maximum(rng.standard_normal((BATCH, 1, d), dtype=np.float32), 0).astype(np.float16)
            for _ in range(n_distinct)]


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t0: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) since t0."""
    t1 = _clock()
    return t1[0] - t0[0], t1[1] - t0[1]


def write(store: Store, n: int, chunk: int, batches: list[np.ndarray]) -> tuple[float, float]:
    """(wall, CPU) seconds for the Writer to commit n rows fed in batches of 32."""
    w = Writer(store, chunk, store.taps)
    t = _clock()
    w.start()
    for i in range(0, n, BATCH):
        keys = [f"{j:032x}" for j in range(i, i + BATCH)]
        w.put(keys, batches[(i // BATCH) % len(batches)], {})
    w.close()
    return _since(t)


def read(store: Store, n: int, layers: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds to read every row of `layers` as `fne fit` does (Rows.chunks, 1,024 rows
    a chunk)."""
    store.refresh()
    keys = [f"{j:032x}" for j in range(n)]
    t = _clock()
    rows = Rows(store, keys, layers, chunk=1024)
    total = sum(len(b) for b, _ in rows.chunks(np.arange(n)))
    assert total == n
    return _since(t)


def run_layout(name: str, base: Path, n: int, taps: list[tuple[str, int]], batches: list[np.ndarray]) -> dict:
    """One round of one layout: write n rows, read fc7, read all; the store is removed after."""
    cls, chunk, fmt = KINDS[name]
    root = base / name
    shutil.rmtree(root, ignore_errors=True)
    store = cls.open(root, StoreKey("vgg16", "synthetic", "center224", "bf16", "float16"), taps, 1)
    if fmt == 1:
        store.write_json("store.json", {**{k: v for k, v in store.meta.items() if k != "columns"}, "format": 1})
        store.meta["format"] = 1
    out = {"write": write(store, n, chunk, batches), "size": store.size_bytes(),
           "fc7": read(store, n, ["fc7"]), "all": read(store, n, [t for t, _ in taps])}
    shutil.rmtree(root, ignore_errors=True)
    return out


KINDS = {"today": (TodayStore, 256, 1), "rows-256": (Store, 256, 2), "rows": (Store, 1024, 2),
         "rows+zstd1": (ZstdStore, 1024, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8,192 rows per layout, 2 rounds (under two minutes)")
    ap.add_argument("--rows", type=int, default=None, help="rows per layout (default 32,768)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds, layouts interleaved (default 3; best kept)")
    ap.add_argument("--dir", default=None, help="where to write the stores (default: a temporary folder)")
    ap.add_argument("--layouts", nargs="*", default=list(KINDS), choices=list(KINDS))
    a = ap.parse_args()
    n = a.rows or (8192 if a.quick else 32768)
    n -= n % BATCH
    rounds = a.rounds or (2 if a.quick else 3)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # the writer's goal is for one core
    taps = [(t.name, t.channels) for t in backbones.get("vgg16", "random").taps]
    batches = synthetic_batches(taps)
    mb_row = sum(c for _, c in taps) * 2 / 1e6
    base = Path(a.dir or tempfile.mkdtemp(prefix="bench-writer-"))
    print(f"{n} rows of {sum(c for _, c in taps)} float16 values ({mb_row * 1e3:.1f} kB/row) per layout; "
          f"process pinned to one core; batches of {BATCH}; best of {rounds} interleaved rounds.\n"
          f"rows/s: wall clock; per CPU-s: rows per CPU-second of the process (robust to a loaded machine)\n")
    best: dict[str, dict] = {}
    try:
        for _ in range(rounds):
            for name in a.layouts:
                r = run_layout(name, base, n, taps, batches)
                b = best.setdefault(name, {"size": r["size"]})
                for k in ("write", "fc7", "all"):
                    b[k] = (min(b.get(k, r[k])[0], r[k][0]), min(b.get(k, r[k])[1], r[k][1]))
    finally:
        if a.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{'layout':11s} {'write rows/s':>12s} {'per CPU-s':>10s} {'MB/s':>6s} {'disk B/row':>10s} "
          f"{'fc7 rows/s':>10s} {'per CPU-s':>10s} {'all rows/s':>10s} {'per CPU-s':>10s}")
    for name, b in best.items():
        w, f, al = b["write"], b["fc7"], b["all"]
        print(f"{name:11s} {n / w[0]:12.0f} {n / w[1]:10.0f} {n / w[0] * mb_row:6.0f} {b['size'] / n:10.0f} "
              f"{n / f[0]:10.0f} {n / f[1]:10.0f} {n / al[0]:10.0f} {n / al[1]:10.0f}")
    if "rows" in best:
        print(f"writer: {n / best['rows']['write'][0]:.0f} rows/s")


if __name__ == "__main__":
    main()
