"""CPU per image of the reader: loose files vs WebDataset tar shards vs Parquet (issue 21).

The same N JPEGs (default 3,200: the shared flowers12 and pets37 photos, each also flipped
and cropped to make distinct images) are written as loose files (a class-folder tree), as tar
shards of 500 images and as Parquet files (row groups of 100). The reader of `fne extract`
(`fne.extraction.reader.ImageItems` in DataLoader workers, the lanes of `fne.data.lanes` for
containers, as extract runs it) then reads, hashes and crops every image of each form; the
network is left out, since it costs the same whatever the images came from. Forms alternate
(files, tar, parquet, files, ...) so that other jobs on the machine hit them alike. CPU time
is this process's plus its finished workers' (getrusage); the load average is printed beside
each figure.

    python benchmarks/bench_containers.py --n 3200 --reps 3 --workers 2
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from fne.cache.spec import StoreSpec  # noqa: E402
from fne.data.datasets import load_dataset  # noqa: E402
from fne.data.lanes import container_batches  # noqa: E402
from fne.extraction import reader  # noqa: E402

SHARED = Path(os.environ.get("FNE_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))


def _variants(img: Image.Image):
    yield img
    yield ImageOps.mirror(img)
    w, h = img.size
    yield img.crop((w // 10, h // 10, w - w // 10, h - h // 10))


def build(n: int, work: Path) -> tuple[Path, Path, Path]:
    """-> (folder, tar folder, parquet folder) holding the same n JPEGs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sources = sorted(p for name in ("flowers12", "pets37") for p in (SHARED / name).rglob("*.jpg"))
    if not sources:
        sys.exit(f"no JPEGs under {SHARED}/flowers12 or pets37 (set FNE_SHARED_DATASETS)")
    folder, tars, pqs = work / "files", work / "tar", work / "parquet"
    for d in (folder, tars, pqs):
        d.mkdir(parents=True)
    items = []  # (class, name, bytes)
    for v in range(3):
        for src in sources:
            if len(items) == n:
                break
            with Image.open(src) as img:
                out = list(_variants(img.convert("RGB")))[v]
            buf = io.BytesIO()
            out.save(buf, "JPEG", quality=90)
            items.append((src.parent.name, f"{src.stem}-v{v}.jpg", buf.getvalue()))
    if len(items) < n:
        sys.exit(f"only {len(items)} images can be made from {SHARED}")
    for cls, name, data in items:
        (folder / cls).mkdir(exist_ok=True)
        (folder / cls / name).write_bytes(data)
    for k in range(0, n, 500):
        with tarfile.open(tars / f"data-{k // 500:06d}.tar", "w") as tf:
            for j, (cls, _, data) in enumerate(items[k:k + 500]):
                for ext, payload in ((".jpg", data), (".txt", cls.encode())):
                    info = tarfile.TarInfo(f"{k + j:07d}{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    table = pa.table({"image": [{"bytes": d, "path": name} for _, name, d in items],
                      "label": [c for c, _, _ in items]})
    pq.write_table(table, pqs / "train-00000-of-00001.parquet", row_group_size=100)
    return folder, tars, pqs


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def read_all(data: Path, workers: int, batch: int) -> tuple[float, float, int]:
    """-> (CPU s, wall s, images) of loading DATA and reading every image as extract does."""
    prep = StoreSpec(arch="efficientnet_lite0", weights="random", precision="fp32", storage_dtype="float32", device="cpu", decode="pil").preprocess()
    cpu0, t0 = _cpu(), time.perf_counter()
    d = load_dataset(data)
    todo = list(range(len(d)))
    lanes = container_batches(d, todo, batch, workers)
    loader = torch.utils.data.DataLoader(
        reader.ImageItems(d, todo, prep), **({"batch_sampler": lanes} if lanes else {"batch_size": batch}),
        num_workers=workers, collate_fn=reader.collate, prefetch_factor=4 if workers else None)
    n = 0
    it = iter(loader)
    for b in it:
        n += len(b["idx"])
    del it, loader  # joins the workers: their CPU time is in RUSAGE_CHILDREN from here
    return _cpu() - cpu0, time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FNE_CACHE"] = str(Path(tmp) / "cache")  # listings go here, not the user's cache
        forms = dict(zip(("files", "tar", "parquet"), build(a.n, Path(tmp)), strict=True))
        cpu: dict[str, list[float]] = {k: [] for k in forms}
        for rep in range(a.reps):
            for name, path in forms.items():
                c, w, n = read_all(path, a.workers, a.batch)
                assert n == a.n, f"{name}: read {n} of {a.n}"
                cpu[name].append(c / n * 1000)
                print(f"rep {rep} {name:8s} CPU {c / n * 1000:6.2f} ms/img  wall {n / w:6.1f} img/s  "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
        best = {k: min(v) for k, v in cpu.items()}
        mean = {k: sum(v) / len(v) for k, v in cpu.items()}
        for k in ("tar", "parquet"):
            print(f"{k} / files CPU per image: best of {a.reps} {best[k] / best['files']:.2f} "
                  f"({best[k]:.2f} vs {best['files']:.2f} ms), mean {mean[k] / mean['files']:.2f}")


if __name__ == "__main__":
    main()
