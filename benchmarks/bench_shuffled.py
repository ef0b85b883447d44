"""Reading images in a shuffled order (`fne train`'s) from loose files, tar shards and Parquet.

N distinct JPEGs (default 10,000 of 436x383, ~44 KB each: `bench_gpu.make_images`, from pets37,
or the JPEGs of `--images DIR`) are written as one Parquet file (row groups of `--group-rows`)
and as tar shards of 1,000; the loose files are the third form. Then `Dataset.read_bytes` reads
every image once in a random order, in this process, and again through a DataLoader of
`--workers` workers (what `fne train`'s loader does before it decodes), for:

* files, tar: read as they always are;
* parquet, from the file: what `fne train` did before `Dataset.read_shuffled` (row groups kept
  by each reading process under `containers.GROUP_CACHE_BYTES`);
* parquet, from its copy: `Dataset.read_shuffled` first (its time, once, is printed), then the
  same order.

The page cache holds every form (each is read once before it is timed), so this measures the
CPU of reading, not the disk.

    python benchmarks/bench_shuffled.py --n 10000 --group-rows 1000 --workers 2
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import fne.data.containers  # noqa: E402
from fne.data.datasets import load_dataset  # noqa: E402


def build(images: Path, n: int, group_rows: int, work: Path) -> dict[str, Path]:
    """-> {form: DATA} holding the same n JPEGs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(images.rglob("*.jpg"))[:n]
    if len(files) < n:
        sys.exit(f"{images} holds {len(files)} JPEGs, not {n}")
    folder = work / "files"
    for f in files:
        (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, folder / f.parent.name / f.name)
    tars, pqs = work / "tar", work / "parquet"
    tars.mkdir()
    pqs.mkdir()
    for k in range(0, n, 1000):
        with tarfile.open(tars / f"data-{k // 1000:06d}.tar", "w") as tf:
            for j, f in enumerate(files[k:k + 1000]):
                for ext, payload in ((".jpg", f.read_bytes()), (".cls", f.parent.name.encode())):
                    info = tarfile.TarInfo(f"{k + j:07d}{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    schema = pa.schema([("image", pa.binary()), ("label", pa.string())])
    with pq.ParquetWriter(pqs / "train-00000-of-00001.parquet", schema) as w:
        for k in range(0, n, group_rows):
            part = files[k:k + group_rows]
            w.write_table(pa.table({"image": [f.read_bytes() for f in part],
                                    "label": [f.parent.name for f in part]}, schema=schema),
                          row_group_size=group_rows)
    return {"files": folder, "tar": tars, "parquet": pqs}


class _Bytes(torch.utils.data.Dataset):
    def __init__(self, d):
        self.d = d

    def __len__(self) -> int:
        return len(self.d)

    def __getitem__(self, i: int) -> int:
        return len(self.d.read_bytes(i)[0])


def _one_process(d, order: list[int]) -> float:
    t0 = time.perf_counter()
    for i in order:
        d.read_bytes(i)
    return time.perf_counter() - t0


def _workers(d, order: list[int], workers: int) -> float:
    loader = torch.utils.data.DataLoader(_Bytes(d), batch_size=32, sampler=order, num_workers=workers,
                                         collate_fn=list, prefetch_factor=4)
    t0 = time.perf_counter()
    n = sum(len(b) for b in loader)
    assert n == len(order)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--group-rows", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--images", type=Path, help="a folder of JPEGs (default: made from pets37)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        os.environ["FNE_CACHE"] = str(work / "cache")
        images = a.images
        if images is None:
            from bench_gpu import make_images

            images = work / "made"
            make_images(images, a.n)
        forms = build(images, a.n, a.group_rows, work)
        pq_mb = sum(p.stat().st_size for p in forms["parquet"].iterdir()) / 2**20
        print(f"{a.n} JPEGs; Parquet {pq_mb:,.0f} MB in row groups of {a.group_rows}; "
              f"GROUP_CACHE_BYTES {fne.data.containers.GROUP_CACHE_BYTES / 2**20:.0f} MB; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        order = list(range(a.n))
        random.Random(0).shuffle(order)
        print("| form | one process, ms/img | "
              f"{a.workers} workers, img/s |\n|---|---:|---:|")
        for name, data in (("files", forms["files"]), ("tar", forms["tar"]),
                           ("parquet, in order", forms["parquet"]), ("parquet, from the file", forms["parquet"]),
                           ("parquet, from its copy", forms["parquet"])):
            d = load_dataset(data)
            _one_process(d, list(range(a.n)))  # the page cache holds it; a fresh Dataset after
            if name.endswith("copy"):
                t0 = time.perf_counter()
                d.read_shuffled(range(a.n), progress=False)
                print(f"(the copy, once: {time.perf_counter() - t0:.2f} s)", flush=True)
            else:
                d = load_dataset(data)
            walk = list(range(a.n)) if name.endswith("order") else order
            one = _one_process(d, walk)
            d2 = load_dataset(data)
            if name.endswith("copy"):
                d2.read_shuffled(range(a.n), progress=False)
            # in order, extract deals whole row groups to its workers (`lanes`), which this loader does not
            many = "—" if name.endswith("order") else f"{a.n / _workers(d2, walk, a.workers):,.0f}"
            print(f"| {name} | {1000 * one / a.n:.3f} | {many} |", flush=True)


if __name__ == "__main__":
    main()
