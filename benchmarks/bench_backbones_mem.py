"""Peak memory and speed of one backbone's bare forward vs fne's TapModel, each in a process of
its own (measured by hand, not a test): the first --n images of DATA, batch --batch-size, seeded
random weights, fp32, inference mode, after one warm-up batch. Compare with `/usr/bin/time -v fne extract` on the same images.

    python benchmarks/bench_backbones_mem.py --data /tmp/f40 --n 40 --arch resnet50 --arch maxvit_t
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def child(data: str, arch: str, n: int, batch: int, taps: bool) -> dict:
    import torch

    from fne.backbones import registry as backbones
    from fne.backbones.normalize import Normalize
    from fne.cache.spec import StoreSpec
    from fne.data.datasets import load_dataset
    from fne.extraction.taps import build_tap_model

    ds = load_dataset(Path(data))
    prep = StoreSpec(arch=arch).preprocess()
    x = torch.stack([prep(ds.load(i % len(ds))) for i in range(n)])[:, 0]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dev = torch.device("cpu")
    if taps:
        model = build_tap_model(StoreSpec(arch=arch, weights="random", precision="fp32"), dev)
    else:
        b = backbones.get(arch)
        net = backbones.load_backbone(arch, "random").to(memory_format=torch.channels_last)
        norm = Normalize(b.mean, b.std)

        def model(xb):
            return net(norm(xb).contiguous(memory_format=torch.channels_last))
    with torch.inference_mode():
        model(x[:batch])  # warm-up: oneDNN's set-up, as extraction's first batch
        t = time.perf_counter()
        for i in range(0, n, batch):
            model(x[i:i + batch])
        wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"images_per_s": n / wall, "peak_rss_mib": peak / 1024, "over_images_mib": (peak - base) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--arch", action="append", required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--child", choices=["bare", "taps"])
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.data, a.arch[0], a.n, a.batch_size, a.child == "taps")))
        return
    print("| arch | bare img/s | TapModel img/s | bare peak RSS MiB | TapModel peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for arch in a.arch:
        r = {}
        for mode in ("bare", "taps"):
            out = subprocess.run([sys.executable, __file__, "--data", a.data, "--arch", arch, "--n", str(a.n),
                                  "--batch-size", str(a.batch_size), "--child", mode],
                                 capture_output=True, text=True, check=True).stdout
            r[mode] = json.loads(out.strip().splitlines()[-1])
        print(f"| {arch} | {r['bare']['images_per_s']:.2f} | {r['taps']['images_per_s']:.2f} | "
              f"{r['bare']['peak_rss_mib']:.0f} | {r['taps']['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
