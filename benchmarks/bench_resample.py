"""The host's share of the device path's batched resize (`fne.backbones.resample`), measured by
hand (not a test): the lines' coefficients of a batch (`line_table`) computed afresh for every
batch, against kept between batches (`memo`, as `resize_views` does), over batches of 256 drawn
from a dataset's own image sizes. This work holds the GIL on the reader's resize thread, beside
the loop and the writer of the same process.

    python benchmarks/bench_resample.py                      # pets37, 40 batches of 256
    python benchmarks/bench_resample.py --data ../shared/datasets/flowers12
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fne.backbones import resample  # noqa: E402
from fne.backbones.preprocess import Preprocess  # noqa: E402
from fne.data.datasets import load_dataset  # noqa: E402


def batch_lines(sizes: list[tuple[int, int]], prep: Preprocess) -> list[resample.Line]:
    """The distinct `Line`s of a batch of images of these (width, height), as `resize_views` makes them."""
    lines = set()
    for w, h in sizes:
        rw, rh = prep.resized_size(w, h)
        for x, y in prep.boxes(rw, rh):
            lines.add((h, h / rh, y, 1, 0.0))
            lines.add((w, w / rw, x, 1, 0.0))
    return sorted(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/datasets/pets37"))
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2, help="alternating runs of each (default 2)")
    a = ap.parse_args(argv)
    d = load_dataset(a.data)
    sizes = []
    for src in d.sources:
        with Image.open(src) as im:
            sizes.append(im.size)
    prep = Preprocess()
    rng = np.random.default_rng(0)
    batches = [batch_lines([sizes[j] for j in rng.choice(len(sizes), a.batch_size)], prep) for _ in range(a.batches)]
    print(f"{a.data}: {len(sizes)} images, {len(set(sizes))} sizes; {np.mean([len(b) for b in batches]):.0f} "
          f"distinct lines per batch of {a.batch_size}")
    best: dict[bool, float] = {}
    for _ in range(a.reps):
        for memo in (False, True):
            resample._LINES.clear()  # kept lines start empty: the first batch computes all of its own
            t = time.perf_counter()
            for lines in batches:
                resample.line_table(lines, prep.size, prep.interpolation, memo)
            ms = (time.perf_counter() - t) / len(batches) * 1e3
            best[memo] = min(best.get(memo, ms), ms)
    print(f"line_table per batch: afresh {best[False]:.2f} ms, kept between batches {best[True]:.2f} ms "
          f"({best[False] / best[True]:.1f}x; {(best[False] - best[True]) / a.batch_size * 1e3:.1f} us per image)")


if __name__ == "__main__":
    main()
