"""Extraction with any backbone vs that backbone's bare forward, measured by hand (not a test).

For each --arch, on the same images (the first N of DATA, round-robin over classes), batch size
and precision, in alternating order (bare, taps, extract, bare, ...) so that other jobs on the
machine hit all of them alike:

* bare forward: the network alone on a resident uint8 batch (normalisation included, no hooks);
* taps: the same batch through fne's TapModel (forward hooks + pooling of every tap);
* `fne extract` end to end in a fresh cache, as its own process (decode, forward, pool, write):
  its run-phase and steady (after the first batch) img/s.

Ratios are against the bare forward; the load average is printed next to every figure. Weights
are seeded random ones (offline); speed does not depend on their values. Example:

    python benchmarks/bench_backbones.py --data ../shared/datasets/pets37 --n 96 \
        --arch resnet50 --arch vit_b_16 --precision bf16 --json benchmarks/backbones.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_extract import bare_forward, fne_extract, load, real_batch, subset  # noqa: E402

from fne.backbones import registry as backbones  # noqa: E402
from fne.devices import tune_allocator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--arch", action="append", default=None, help="repeatable (default resnet50, vit_b_16)")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    tune_allocator()  # as `fne extract` does, so the bare forward runs on the same allocator
    archs = a.arch or ["resnet50", "vit_b_16"]
    results = {"torch_threads": torch.get_num_threads(), "precision": a.precision, "n": a.n,
               "batch_size": a.batch_size, "archs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = subset(a.data, a.n, Path(tmp) / "data")
        for arch in archs:
            b = backbones.get(arch)
            x = real_batch(folder, arch, a.batch_size)
            batches = max(1, a.n // a.batch_size)
            runs: dict[str, list] = {"bare": [], "taps": [], "extract": []}
            for _ in range(a.reps):
                runs["bare"].append(bare_forward(arch, a.precision, x, batches, taps=False))
                runs["taps"].append(bare_forward(arch, a.precision, x, batches, taps=True))
                runs["extract"].append(fne_extract(folder, arch, a.precision, a.batch_size, ["--compile", "off"]))
                print(f"{arch}: bare {runs['bare'][-1]['images_per_s']:.2f} img/s, "
                      f"taps {runs['taps'][-1]['images_per_s']:.2f}, extract run "
                      f"{runs['extract'][-1]['run_images_per_s']:.2f} / steady "
                      f"{runs['extract'][-1]['steady_images_per_s']:.2f} (load {load()})", flush=True)
            bare = max(r["images_per_s"] for r in runs["bare"])
            summary = {
                "taps": len(b.taps), "dim": b.dim, "bare_images_per_s": bare,
                "taps_ratio": max(r["images_per_s"] for r in runs["taps"]) / bare,
                "extract_run_ratio": max(r["run_images_per_s"] for r in runs["extract"]) / bare,
                "extract_steady_ratio": max(r["steady_images_per_s"] or 0 for r in runs["extract"]) / bare,
            }
            results["archs"][arch] = {"summary": summary, "runs": runs}
            print(f"{arch}: {json.dumps(summary)}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
