"""The extraction loop's CPU cost per image (issue 18 §2), measured by hand (not a test).

The whole loop runs (reader in DataLoader workers -> tap model -> writer thread) on JPEGs made
from pets37 (re-encoded at quality 90, distinct contents), with the network replaced by a
stand-in that returns rows of VGG-16's tap widths at once: what remains is the CPU path around
the network. For the old code (a `git archive` of --old, the commit this work branched from)
and the new code (this tree), alternating, in subprocesses of one run:

* img/s of the loop (first batch to last commit) and CPU-ms per image, all processes counted
  (the extracting process's threads and its finished DataLoader workers, via getrusage); of the
  main process's, the share in its loop (first batch in hand to the last one's end, per image
  after the first batch: what caps the steady rate; the rest, step by step, is the listing, the
  pools' shared memory, the last commit, the manifest and the provenance, paid once per run);
* a single-process breakdown of the new reader's per-image CPU by stage (read, hash, decode,
  resize + crop, collate), and the floor: decoding plus resizing alone.

The old code's DataLoader workers collate every batch into fresh shared memory; the new code's
reuse a `SlotPool` that the loop gives back after the forward.

The stand-in is a benchmark-only hook: `fne.extraction.taps.build_tap_model` is replaced in
the subprocess, so nothing in fne knows about it. Example (about 1.5 min on 2 cores):

    python benchmarks/bench_pipeline.py --quick
    python benchmarks/bench_pipeline.py --n 2000 --reps 3 --json benchmarks/pipeline.json
    python benchmarks/bench_pipeline.py --decode device --n 8192 --old 44f5cc8

`--decode rgb` measures the host's share of `--decode pil` on a GPU that resizes (`fne.devices.
resize_on_device`): the workers decode and hand each image over whole, a stand-in takes the
resize (`--old HEAD` before that change: the workers' own resize). `--decode device` measures the host's share of the GPU path on a CPU: the workers read, key and
check each JPEG and hand its bytes over, the main process runs the loop and the writer, and a
stand-in takes the place of the device decoder (nothing is decoded); then `fne train`'s loader
with `--augment-on device` alone. Its last line is the rate 15 workers and the main process could
feed a GPU at, on this CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_DEFAULT = "f9734fb"  # main when the slot pool and the two-pass center crop began

RUNNER = r"""
import json, resource, sys, time
import torch
from fne.extraction import taps
from fne.extraction.extract import extract

data, cache, batch, workers, decode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(1)


class StandIn(torch.nn.Module):
    # VGG-16's tap widths, rows at once: the network costs nothing.
    def __init__(self, widths):
        super().__init__()
        self.widths = widths
        self.block = torch.rand(256, sum(widths))

    def forward(self, x):
        n = x.shape[0]
        rows = self.block[torch.arange(n) % self.block.shape[0]]
        return list(rows.split(self.widths, dim=1))


def build(spec, device, compile=False):
    return StandIn([t.channels for t in spec.backbone().taps])


taps.build_tap_model = build
if decode == "device":  # the host's share of device decoding: JPEG bytes travel, nothing decodes them
    from fne.extraction import reader

    view = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)  # pixels stay on the GPU: none to copy here
    rate = float(sys.argv[6])  # > 0: block as nvjpeg's call does (GIL released) for len(raw) / rate s

    def stand_in(raw, dev, *a):
        if rate > 0:
            time.sleep(len(raw) / rate)
        return [view] * len(raw)

    if hasattr(reader, "resized"):  # decoding and resizing in two stages: both stood in
        reader.decode_jpegs, reader.resized = stand_in, lambda raw, imgs, dev, prep, dtype=None: [view] * len(raw)
    else:  # the older tree's one step
        reader.decode_raw = stand_in


if decode == "rgb":  # --decode pil where the GPU resizes: the workers decode, a stand-in takes the resize
    from fne.extraction import extract as ex
    from fne.extraction import reader

    crop = torch.zeros(1, 3, 224, 224, dtype=torch.uint8)  # the views a GPU would make: stacked with the workers'
    ex.resize_on_device = lambda dev: True
    reader.resized = lambda raw, imgs, dev, prep, dtype=None: [crop] * len(raw)
    decode = "pil"


def cpu():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


from fne.extraction import reader as _reader  # noqa: E402

loop = {"cpu": 0.0, "n": 0}  # the main process in the loop: first batch in hand to the last one's end


class InLoop:
    # `reader.assembled`'s stages, the main process's CPU counted from the first batch to the loop's end
    def __init__(self, inner):
        self.inner = inner

    def __iter__(self):
        for item in self.inner:
            if "c0" not in loop:
                loop["c0"] = cpu()[0]
            else:
                loop["n"] += len(item[1][1])
            yield item
        loop["cpu"] = cpu()[0] - loop.get("c0", 0.0)

    def close(self):
        if not loop["cpu"] and "c0" in loop:
            loop["cpu"] = cpu()[0] - loop["c0"]
        self.inner.close()


_stages = getattr(_reader, "assembled", None)  # an older tree without it: no loop figure (0)
if _stages is not None:
    _reader.assembled = lambda *a, **k: InLoop(_stages(*a, **k))
phases = {}  # the main process's CPU outside the loop, step by step (those the tree has)


def timed(owner, name, label):
    f = getattr(owner, name, None)
    if f is None:
        return

    def step(*a, **k):
        c = cpu()[0]
        try:
            return f(*a, **k)
        finally:
            phases[label] = phases.get(label, 0.0) + cpu()[0] - c

    setattr(owner, name, step)


from fne.extraction import extract as _ex  # noqa: E402
from fne.extraction import writer as _writer  # noqa: E402

for _owner, _name, _label in [(_ex, "load_dataset", "listing"), (_ex, "_plan", "plan"),
                              (_ex, "_loader", "pools+loader"), (_reader.ImageItems, "unshare", "pools freed"),
                              (_writer.Writer, "close", "last commit"), (_ex, "_remember", "manifest"),
                              (_ex, "provenance", "provenance")]:
    timed(_owner, _name, _label)
t0, (m0, k0) = time.perf_counter(), cpu()
r = extract(data, arch="vgg16", weights="random", cache=cache, batch_size=batch, workers=workers, progress=False,
            precision="fp32", decode=decode)
wall, (m1, k1) = time.perf_counter() - t0, cpu()
print(json.dumps({"n": r.n_computed, "wall": wall, "run": r.stage_seconds.get("run"),
                  "main_cpu": m1 - m0, "worker_cpu": k1 - k0, "write": r.stage_seconds.get("write"),
                  "skipped": r.n_skipped, "loop_cpu": loop["cpu"], "loop_n": loop["n"], "phases": phases}))
"""


TRAIN_RUNNER = r"""
import json, resource, sys, time
import numpy as np, torch
from fne.data.datasets import load_dataset
from fne.training import augment, epochs

torch.set_num_threads(1)
data, batch, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
d = load_dataset(data)
ctx = epochs.Ctx(d, d.label_indices(), torch.device("cpu"), "fp32", None, None, False, {})
train_tf, _ = epochs.transforms(224, True, None, True)  # --augment-on device: workers send JPEG bytes
loader = epochs.loader(ctx, np.arange(len(d)), train_tf, batch, workers, torch.Generator().manual_seed(0))
r0, t, n = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
for b in loader:
    n += len(b["idx"])
wall, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"n": n, "img_s": n / wall, "main_ms": 1000 * (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / n,
                  "worker_ms": 1000 * (kids.ru_utime + kids.ru_stime) / n}))
"""


def train_loader(tree: Path, data: Path, batch: int, workers: int) -> dict:
    """`fne train`'s loader with `--augment-on device` alone (what reaches the main process per
    image: JPEG bytes, keys, aspect ratios), under `tree`'s code."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", TRAIN_RUNNER, str(data), str(batch), str(workers)],
                         env=env, capture_output=True, text=True, cwd=tree)
    if out.returncode:
        sys.exit(f"bench_pipeline: the train loader failed under {tree}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_images(src: Path, out: Path, n: int) -> list[Path]:
    """n distinct JPEGs (quality 90) from the photos under src: each photo as is, mirrored, and
    with a few pixels cropped off an edge, until n are made."""
    from PIL import Image, ImageOps

    photos = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        sys.exit(f"bench_pipeline: no images under {src}")
    out.mkdir(parents=True, exist_ok=True)
    made = sorted(out.glob("*.jpg"))
    if len(made) >= n:
        return made[:n]
    files = []
    for j in range(n):
        p, variant = photos[j % len(photos)], j // len(photos)
        with Image.open(p) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
        if variant % 2:
            img = ImageOps.mirror(img)
        if variant // 2:
            img = img.crop((variant // 2, 0, img.width, img.height))
        f = out / f"img{j:05d}.jpg"
        img.save(f, quality=90)
        files.append(f)
    return files


def old_tree(rev: str, into: Path) -> Path:
    """The fne package at git revision `rev`, unpacked under `into`."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "fne"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as t:
        t.extractall(into, filter="data")
    return into


def run_loop(tree: Path, data: Path, batch: int, workers: int, decode: str = "pil", rate: float = 0) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(tree), "FNE_CACHE": cache}
        out = subprocess.run([sys.executable, "-c", RUNNER, str(data), cache, str(batch), str(workers), decode,
                              str(rate)],
                             env=env, capture_output=True, text=True, cwd=tree)
    if out.returncode:
        sys.exit(f"bench_pipeline: the loop failed under {tree}:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["cpu_ms"] = 1000 * (r["main_cpu"] + r["worker_cpu"]) / max(r["n"], 1)
    r["main_ms"] = 1000 * r["main_cpu"] / max(r["n"], 1)
    r["worker_ms"] = 1000 * r["worker_cpu"] / max(r["n"], 1)
    r["loop_ms"] = 1000 * r["loop_cpu"] / max(r["loop_n"], 1)
    r["img_s"] = r["n"] / r["run"] if r.get("run") else r["n"] / r["wall"]
    return r


def breakdown(data: Path, n: int) -> dict[str, float]:
    """CPU-ms per image, in this process on one thread: the new reader (read, hash, decode,
    resize, crop, collate), and its parts (resize: the whole image, as torchvision does;
    resize_crop: what the center crop resizes now); the floor is decoding plus resizing the
    whole image alone."""
    sys.path.insert(0, str(ROOT))
    import torch
    from PIL import Image

    from fne.backbones import registry as backbones
    from fne.backbones.preprocess import resize_crop
    from fne.data.dataset import content_key
    from fne.data.datasets import load_dataset, read_image
    from fne.extraction import reader

    torch.set_num_threads(1)
    dataset = load_dataset(data)
    n = min(n, len(dataset))
    prep = backbones.get("vgg16").preprocess()
    items = reader.ImageItems(dataset, list(range(n)), prep)
    datas = [dataset.read_bytes(i)[0] for i in range(n)]
    t: dict[str, float] = {}
    c = time.process_time()
    for j in range(0, n, 32):
        reader.collate([items[i] for i in range(j, min(n, j + 32))])
    t["reader"] = time.process_time() - c
    c = time.process_time()
    for d in datas:
        content_key(d)
    t["hash"] = time.process_time() - c
    c = time.process_time()
    imgs = [read_image(io.BytesIO(d)) for d in datas]
    t["decode"] = time.process_time() - c
    c = time.process_time()
    for img in imgs:
        img.resize(prep.resized_size(*img.size), Image.BILINEAR)
    t["resize"] = time.process_time() - c
    c = time.process_time()
    for img in imgs:  # what the center crop resizes: the second pass over the crop only
        w, h = prep.resized_size(*img.size)
        resize_crop(img, (w, h), prep.boxes(w, h)[0], prep.size, Image.BILINEAR)
    t["resize_crop"] = time.process_time() - c
    c = time.process_time()
    for d in datas:  # the floor: decode + resize only, no hash, no crop, no tensor
        with Image.open(io.BytesIO(d)) as img:
            img.load()
            img.resize(prep.resized_size(*img.size), Image.BILINEAR)
    t["floor_decode_resize"] = time.process_time() - c
    return {k: 1000 * v / n for k, v in t.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/datasets/pets37"),
                    help="photos to re-encode (default /work/shared/datasets/pets37)")
    ap.add_argument("--images", help="folder for the re-encoded JPEGs (kept; default a temp dir)")
    ap.add_argument("--n", type=int, default=2000, help="images (default 2000)")
    ap.add_argument("--reps", type=int, default=2, help="runs of each variant, alternating (default 2)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 32 (pil), 256 (device: a GPU's)")
    ap.add_argument("--decode", choices=["pil", "device", "rgb"], default="pil",
                    help="pil: the CPU path; device: the host's share of the GPU path (JPEG bytes read, "
                         "keyed and handed over; a stand-in returns the device decoder's pixels); rgb: the "
                         "host's share of --decode pil where the GPU resizes (decoded in the workers, handed "
                         "over whole; a stand-in resizes)")
    ap.add_argument("--decoder-rate", type=float, default=0,
                    help="device: the stand-in decoder blocks its caller for images / RATE seconds, GIL "
                         "released, as torchvision's nvjpeg call does (18079: its rate on the H200); 0: never")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    ap.add_argument("--old", default=OLD_DEFAULT, help=f"git revision of the old code (default {OLD_DEFAULT})")
    ap.add_argument("--quick", action="store_true", help="1000 images, 1 rep each: under two minutes")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.reps = 1000, 1
    a.batch_size = a.batch_size or (256 if a.decode == "device" else 32)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(a.images) if a.images else Path(tmp) / "images"
        files = make_images(Path(a.data), images / "all", a.n)
        trees = {"old": old_tree(a.old, Path(tmp) / "old"), "new": ROOT}
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        for rep in range(a.reps):
            for name, tree in trees.items():
                r = run_loop(tree, images, a.batch_size, a.workers, a.decode, a.decoder_rate)
                runs[name].append(r)
                print(f"{name} rep {rep}: {r['img_s']:.0f} img/s, {r['cpu_ms']:.2f} CPU-ms/image "
                      f"(main {r['main_ms']:.3f}, in the loop {r['loop_ms']:.3f}), load {os.getloadavg()[0]:.1f}",
                      flush=True)
        parts = breakdown(images, 400) if a.decode == "pil" else {}
        loaders = {name: train_loader(tree, images, a.batch_size, a.workers) for name in trees
                   for tree in [trees[name]]} if a.decode == "device" else {}
    best = {k: min(v, key=lambda r: r["cpu_ms"]) for k, v in runs.items()}
    print(f"\n{len(files)} JPEGs (pets37 at q90), decode {a.decode}, batch {a.batch_size}, {a.workers} workers, "
          f"VGG-16 widths, stand-in network; best of {a.reps}:")
    print("| code | img/s | CPU-ms/image (all) | of which main process | in its loop | workers |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, r in best.items():
        loop_ms = min(x["loop_ms"] for x in runs[k])
        print(f"| {k} | {r['img_s']:.0f} | {r['cpu_ms']:.3f} | {r['main_ms']:.3f} | "
              f"{f'{loop_ms:.3f}' if loop_ms else 'n/a'} | {r['worker_ms']:.3f} |")
    for k, r in best.items():
        outside = ", ".join(f"{p} {1000 * v / max(r['n'], 1):.3f}" for p, v in r["phases"].items())
        print(f"{k}: the main process outside its loop, CPU-ms per image: {outside}")
    if parts:
        print("\nnew reader in one process, one thread, CPU-ms per image: "
              + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    else:  # what 15 workers and one main process could feed, were nothing else slower
        if loaders:
            print("\nfne train's loader alone, --augment-on device (JPEG bytes to the main process):")
            print("| code | img/s | main process CPU-ms/image | workers |")
            print("|---|---:|---:|---:|")
        for k, r in loaders.items():
            print(f"| {k} | {r['img_s']:.0f} | {r['main_ms']:.3f} | {r['worker_ms']:.3f} |")
        r, loop_ms = best["new"], min(x["loop_ms"] for x in runs["new"])
        print(f"\nhost ceiling with 15 workers: {min(15 / r['worker_ms'], 1 / r['main_ms']) * 1000:,.0f} img/s "
              f"(workers {15 / r['worker_ms'] * 1000:,.0f}, main process {1000 / r['main_ms']:,.0f}); steady, "
              f"the main process's loop alone: {min(15 / r['worker_ms'], 1 / loop_ms) * 1000:,.0f} img/s "
              f"(its loop {1000 / loop_ms:,.0f})")
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": runs, "breakdown": parts, "train_loader": loaders,
                                            "n": len(files)}, indent=1))
    print(f"pipeline: {best['new']['cpu_ms']:.2f} CPU-ms per image")


if __name__ == "__main__":
    main()
