"""Which ways of running the same extraction change its rows, and by how much? Run by hand.

A subset of a class-folder dataset with a predefined split (flowers12) is copied to a folder,
written as WebDataset tars and as Parquet, and extracted into fresh caches in each of these
ways; every variant is compared row by row (matched by content key) with the reference run
(folder, defaults, fresh cache):

* a second fresh cache with the same settings, `--workers 0` and `--workers 2`,
* `--batch-size 1` and `--batch-size 7` against the default 32,
* `--shard 0/3 .. 2/3` into one cache against the whole,
* the same images as tar shards and as Parquet.

For each: max |a - b| and max |a - b| / max |a| per layer, the share of discretised FNE values
{-1, 0, 1} that differ (statistics of the reference rows), and `fne fit` (fne + svm) accuracy.

    python benchmarks/bench_reproducibility.py --data ../shared/datasets/flowers12 \
        --per-class 8 4 --classes 4 --arch efficientnet_lite0 --weights imagenet \
        --precision fp32 --storage-dtype float32
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fne  # noqa: E402
from fne.linear.embedding import FullNetworkEmbedding  # noqa: E402


def make_subset(src: Path, dst: Path, classes: int, n_train: int, n_test: int) -> list[tuple]:
    """Copy the first `classes` classes' first images into dst/{train,test}/<class>/ -> samples."""
    samples = []
    names = sorted(p.name for p in (src / "train").iterdir() if p.is_dir())[:classes]
    for split, n in (("train", n_train), ("test", n_test)):
        for c in names:
            for f in sorted((src / split / c).iterdir())[:n]:
                (dst / split / c).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dst / split / c / f.name)
                samples.append((split, c, f.name, f.read_bytes()))
    return samples


def write_tars(samples: list[tuple], dst: Path) -> None:
    dst.mkdir(parents=True)
    for split in ("train", "test"):
        with tarfile.open(dst / f"{split}-000000.tar", "w") as tf:
            for k, (_, c, _, data) in enumerate(x for x in samples if x[0] == split):
                for member, payload in ((f"{k:06d}.jpg", data), (f"{k:06d}.txt", c.encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))


def write_parquet(samples: list[tuple], dst: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dst.mkdir(parents=True)
    pq.write_table(pa.table({"image": [{"bytes": d, "path": n} for _, _, n, d in samples],
                             "label": [c for _, c, _, _ in samples], "split": [s for s, *_ in samples]}),
                   dst / "data.parquet")


def rows(data: str, cache: str, kw: dict) -> dict[str, np.ndarray]:
    """content key -> the row (every layer side by side), and the layer columns."""
    r = fne.load_rows(data, cache=cache, **kw)
    return {k: x for k, x in zip(r.keys, r.X)}, r


def compare(ref: tuple, other: tuple) -> dict:
    (a_rows, a), (b_rows, _) = ref, other
    keys = sorted(a_rows)
    assert sorted(b_rows) == keys, "the variants hold other images"
    A, B = np.stack([a_rows[k] for k in keys]), np.stack([b_rows[k] for k in keys])
    worst_abs = float(np.abs(A - B).max())
    rel = max(float(np.abs(A[:, s:e] - B[:, s:e]).max() / max(np.abs(A[:, s:e]).max(), 1e-30))
              for s, e in a.columns.values())
    emb = FullNetworkEmbedding().fit(A)  # statistics of every row: the same for both
    flips = float((emb.transform(A) != emb.transform(B)).mean())
    return {"identical": bool(np.array_equal(A, B)), "max_abs": worst_abs, "max_rel_per_layer": rel,
            "fne_values_changed": flips, "rows": len(keys)}


def accuracy(data: str, cache: str, kw: dict, out: Path) -> float:
    return fne.fit(data, out=str(out), cache=cache, features="fne", head="svm", **kw)["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--per-class", type=int, nargs=2, default=(8, 4), metavar=("TRAIN", "TEST"))
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--precision", default="auto")
    p.add_argument("--storage-dtype", default="auto")
    p.add_argument("--only", nargs="*", help="variants to run (default: all)")
    p.add_argument("--json")
    a = p.parse_args()
    kw = {"arch": a.arch, "weights": a.weights, "precision": a.precision, "storage_dtype": a.storage_dtype}
    with tempfile.TemporaryDirectory(prefix="fne-reprod-") as tmp:
        tmp = Path(tmp)
        samples = make_subset(Path(a.data), tmp / "folder", a.classes, *a.per_class)
        write_tars(samples, tmp / "tars")
        write_parquet(samples, tmp / "parquet")
        folder = str(tmp / "folder")
        variants = {  # name -> (DATA, extract keywords, list of shards or None)
            "fresh cache again": (folder, {}, None),
            "workers 0": (folder, {"workers": 0}, None),
            "workers 2": (folder, {"workers": 2}, None),
            "batch 1": (folder, {"batch_size": 1}, None),
            "batch 7": (folder, {"batch_size": 7}, None),
            "shards 3": (folder, {}, 3),
            "tar": (str(tmp / "tars"), {}, None),
            "parquet": (str(tmp / "parquet"), {}, None),
        }
        fne.extract(folder, cache=str(tmp / "ref"), progress=False, **kw)
        ref = rows(folder, str(tmp / "ref"), kw)
        results = {"reference accuracy": accuracy(folder, str(tmp / "ref"), kw, tmp / "run-ref")}
        for name, (data, extra, shards) in variants.items():
            if a.only and name not in a.only:
                continue
            cache = str(tmp / name.replace(" ", "-"))
            for i in range(shards or 1):
                fne.extract(data, cache=cache, progress=False, **({"shard": f"{i}/{shards}"} if shards else {}),
                            **extra, **kw)
            r = compare(ref, rows(data, cache, kw))
            r["accuracy"] = accuracy(data, cache, kw, tmp / f"run-{name.replace(' ', '-')}")
            results[name] = r
            print(f"{name:18s} {json.dumps(r)}", flush=True)
        print(json.dumps(results, indent=2))
        if a.json:
            Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}, indent=2))


if __name__ == "__main__":
    main()
