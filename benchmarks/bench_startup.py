"""`fne fit` start-up over an unchanged folder of many files: before and after the manifest.
Run by hand.

The store is filled with synthetic EfficientNet-Lite0 rows for N distinct 256x256 JPEGs (a stand-in
for extraction, which is not what is measured), the files are dated an hour back (as in a real
dataset), and `fne fit` runs as a user would, in a fresh process each time:

- cold: no manifest yet (every file is read and hashed once: the cost before the manifest, paid
  on every run by fne versions without one, and by this one on a first run);
- warm: the manifest holds every file (each file is only stat'ed).

`--old PATH` also times another checkout of fne on the same folder and store (e.g. a
`git worktree` at the commit before the manifest), whose every run is a cold one.

    python benchmarks/bench_startup.py --n 10000 --reps 3 [--old /work/wt/old]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fne.cache.spec import StoreSpec  # noqa: E402
from fne.cache.store import list_stores  # noqa: E402
from fne.data.datasets import load_dataset  # noqa: E402

FIT = ["fit", "--arch", "efficientnet_lite0", "--weights", "random", "--precision", "fp32",
       "--storage-dtype", "float16", "--features", "last", "--head", "logreg", "--splits", "1",
       "--train-per-class", "2"]
KEYS_ONLY = r"""
import os, sys, time
import fne
from fne.data.datasets import load_dataset
if os.path.exists(os.path.join(os.path.dirname(fne.__file__), "features.py")):
    from fne.linear.features import load_data
else:  # fne before the features layer: keys are file hashes
    load_data = lambda d, cache: d
t = time.perf_counter()  # imports excluded: DATA -> content keys only
load_data(load_dataset(sys.argv[1]), sys.argv[2]).keys()
print(time.perf_counter() - t)
"""


def make(root: Path, n: int, cache: str) -> Path:
    rng = np.random.default_rng(0)
    data = root / "data"
    for i in range(n):
        d = data / f"c{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        # ~256x256 JPEGs of some 40 KB: hashing them costs what hashing a photo collection costs
        img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
        Image.fromarray(img).save(d / f"{i:06d}.jpg", quality=90)
    past = time.time() - 3600
    for p in data.rglob("*.jpg"):
        os.utime(p, (past, past))
    keys = load_dataset(data).keys()
    store = StoreSpec(arch="efficientnet_lite0", weights="random", precision="fp32", storage_dtype="float16", cache=cache).open()
    for s in range(0, n, 2000):
        k = keys[s:s + 2000]
        store.commit(k, {t: rng.random((len(k), 1, c), dtype=np.float32) for t, c in store.taps})
    return data


def drop_caches(on: bool) -> None:
    """Empty the page cache (root only): files are then read from disk, as a dataset larger than
    memory, or one on a network filesystem, is."""
    if on:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(cmd: list[str], env: dict, cwd: str) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if r.returncode:
        raise SystemExit(r.stdout + r.stderr)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--old", default=None, help="another fne checkout to time on the same data")
    ap.add_argument("--drop-caches", action="store_true", help="empty the page cache before every run (root)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fne-startup-"))
    cache = str(work / "cache")
    data = make(work, a.n, cache)
    (store,) = list_stores(cache)
    print(f"{a.n} files, store {store.path.name} with {len(store)} rows; load {os.getloadavg()[0]:.2f}; "
          f"page cache {'dropped before every run' if a.drop_caches else 'warm'}")
    variants = [("this fne", str(ROOT))] + ([("old fne", a.old)] if a.old else [])
    for label, src in variants:
        # run from the checkout itself: `python -c` / `-m` put the current folder ahead of PYTHONPATH
        env = {**os.environ, "PYTHONPATH": src}
        fit = [sys.executable, "-m", "fne.cli", *FIT, str(data), "--cache", cache]
        keys = [sys.executable, "-c", KEYS_ONLY, str(data), cache]
        for phase in ("cold", "warm"):
            fit_s, key_s = [], []
            for r in range(a.reps):
                if phase == "cold":
                    shutil.rmtree(Path(cache) / "manifests", ignore_errors=True)
                drop_caches(a.drop_caches)
                key_s.append(float(subprocess.run(keys, capture_output=True, text=True, env=env, cwd=src,
                                                  check=True).stdout.split()[-1]))
                if phase == "cold":
                    shutil.rmtree(Path(cache) / "manifests", ignore_errors=True)
                drop_caches(a.drop_caches)
                fit_s.append(timed(fit + ["--out", str(work / f"run-{label}-{phase}-{r}")], env, src))
            print(f"{label:9s} {phase}: fne fit {min(fit_s):6.2f} s (min of {a.reps}: "
                  f"{', '.join(f'{x:.2f}' for x in fit_s)}); DATA -> keys {min(key_s):6.2f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
