"""Does bf16 extraction (or float16 storage) change FNE features or accuracy? Run by hand.

For each dataset, rows are extracted with compute precision fp32 and bf16 and stored as
float32 and float16 (each its own store; the float16 stores are filled by rounding the float32
rows, which is what extraction does). Against fp32/float32 it reports

* the share of discretised FNE values {-1, 0, 1} that change (standardised with training-split
  statistics, thresholds -0.25 / 0.15: the FullNetworkEmbedding of `fne fit`), overall and the
  worst layer;
* the relative error of the raw pooled activations: the mean, and per tap the largest error over
  the largest value;
* `fne fit` accuracy (FNE + linear SVM) with each store, and its difference.

    python benchmarks/bench_precision.py --data ../shared/datasets/flowers12 \
        ../shared/datasets/pets37 --arch efficientnet_lite0 --weights imagenet \
        --cache /tmp/fne-precision-cache --json benchmarks/precision.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fne.cache.spec import StoreSpec  # noqa: E402
from fne.data.datasets import load_dataset  # noqa: E402
from fne.data.splits import make_splits  # noqa: E402
from fne.extraction.extract import extract  # noqa: E402
from fne.linear.embedding import FullNetworkEmbedding  # noqa: E402
from fne.linear.fit import fit  # noqa: E402

VARIANTS = [("fp32", "float32"), ("fp32", "float16"), ("bf16", "float32"), ("bf16", "float16")]


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _cast_from_float32(ds, store16, store32) -> None:
    """Fill the float16 store from the float32 one: extract computes float32 rows and rounds
    them to float16 once, so this is what `--storage-dtype float16` stores, without recomputing."""
    missing = store16.missing(ds.keys())
    have = set(store32.index())
    todo = [k for k in missing if k in have]
    taps = [t for t, _ in store32.taps]
    for s in range(0, len(todo), 512):
        keys = todo[s:s + 512]
        rows = store32.read(keys, taps)
        store16.commit(keys, {t: v.astype(np.float16) for t, v in rows.items()})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=[str(ROOT.parent / "shared" / "datasets" / d)
                                                  for d in ("flowers12", "pets37")])
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--cache", default=None, help="reuse a cache between runs (default: temporary)")
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    cache = a.cache or tempfile.mkdtemp(prefix="fne-precision-")
    out: dict = {"arch": a.arch, "weights": a.weights, "load_start": load(), "datasets": {}}
    for data in a.data:
        ds = load_dataset(data)
        keys = ds.keys()
        y = ds.label_indices()
        tr, _ = make_splits(ds, y, 1, 0.25, None, 0)[0]  # the training rows of the first split
        rows, accs = {}, {}
        for prec, dtype in VARIANTS:
            spec = StoreSpec(arch=a.arch, weights=a.weights, precision=prec, storage_dtype=dtype, cache=cache)
            store = spec.open()
            if dtype == "float16":
                _cast_from_float32(ds, store, StoreSpec(arch=a.arch, weights=a.weights, precision=prec,
                                                        storage_dtype="float32", cache=cache).open())
            r = extract(ds, spec,
                        progress=False)
            taps = [t for t, _ in store.taps]
            arrs = store.read(keys, taps)
            rows[(prec, dtype)] = {t: arrs[t][:, 0] for t in taps}
            with tempfile.TemporaryDirectory() as run:
                m = fit(data, features="fne", head="svm", splits=a.splits, out=run, arch=a.arch,
                        weights=a.weights, precision=prec, storage_dtype=dtype, cache=cache)
            accs[(prec, dtype)] = m["accuracy"]
            print(f"{Path(data).name} {prec}/{dtype}: extracted {r.n_computed} at {r.images_per_s:.1f} img/s, "
                  f"fne+svm accuracy {m['accuracy']:.4f} ({m['n_splits']} split(s))  load {load()}", flush=True)
        ref = rows[("fp32", "float32")]
        emb_ref = {t: FullNetworkEmbedding().fit(v[tr]).transform(v) for t, v in ref.items()}
        res = {"n_images": len(ds), "accuracy": {f"{p_}/{d_}": v for (p_, d_), v in accs.items()}}
        for (prec, dtype), cur in rows.items():
            if (prec, dtype) == ("fp32", "float32"):
                continue
            changed, total, worst = 0, 0, ("", 0.0)
            rel, max_rel = [], {}
            for t, v in cur.items():
                e = FullNetworkEmbedding().fit(v[tr]).transform(v)
                c = int((e != emb_ref[t]).sum())
                changed, total = changed + c, total + e.size
                if c / e.size > worst[1]:
                    worst = (t, c / e.size)
                scale = np.abs(ref[t]).mean()
                rel.append(float(np.abs(v - ref[t]).mean() / scale) if scale > 0 else 0.0)
                top = np.abs(ref[t]).max()  # the largest error against the tap's largest value
                max_rel[t] = float(np.abs(v - ref[t]).max() / top) if top > 0 else 0.0
            name = f"{prec}/{dtype}"
            res[name] = {
                "fne_values_changed": changed / total, "worst_layer": worst[0],
                "worst_layer_changed": worst[1], "mean_relative_abs_error": float(np.mean(rel)),
                "accuracy_delta": accs[(prec, dtype)] - accs[("fp32", "float32")],
                "max_relative_error_per_tap": max_rel,
            }
            worst_max = max(max_rel, key=max_rel.get)
            print(f"  vs fp32/float32, {name}: {100 * changed / total:.3f}% FNE values changed "
                  f"(worst {worst[0]} {100 * worst[1]:.3f}%), mean rel. error {np.mean(rel):.2e}, "
                  f"max rel. error {max_rel[worst_max]:.2e} ({worst_max}), "
                  f"accuracy {accs[(prec, dtype)] - accs[('fp32', 'float32')]:+.4f}", flush=True)
        out["datasets"][Path(data).name] = res
    out["load_end"] = load()
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
