"""Extraction throughput and memory, measured by hand (not a test).

In one run, on the same JPEG files, with the same backbone, batch size and precision:

* bare forward: the network alone on a batch already in memory (no decoding, no hooks, no
  writes): the ceiling. Also the same with fne's taps (hooks + pooling) and, with --compile,
  compiled;
* `fne extract` end to end, as a subprocess: files on disk -> committed cache rows. Reported
  as run-phase img/s (first batch request to last commit), steady img/s (after the first
  batch) and wall img/s (whole process: Python start, imports, hashing, model build);
* the HPAI-BSC `fne` package (the authors' implementation) in its own venv, same images, same
  VGG-16 architecture with random weights (its model loading is ours to choose: it takes a
  torch module), fp32 (it has no other precision);
* peak RSS of `fne extract` at N and 2N images (os.wait4's ru_maxrss: the process and its
  DataLoader workers, the largest of them).

Variants alternate (A, B, A, B, ...) so that other jobs on the machine hit all of them alike,
and the load average is printed next to every figure. Example (about 6-8 min on 2 idle cores):

    python benchmarks/bench_extract.py --data ../shared/datasets/pets37 --n 96 --reps 2 \
        --hpai-python /work/hpai-venv/bin/python --json benchmarks/extract.json
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fne.backbones import registry as backbones  # noqa: E402
from fne.backbones.normalize import Normalize  # noqa: E402
from fne.cache.spec import StoreSpec  # noqa: E402
from fne.data.datasets import IMAGE_EXTENSIONS  # noqa: E402
from fne.devices import autocast, tune_allocator  # noqa: E402
from fne.extraction.taps import build_tap_model  # noqa: E402

HPAI_SCRIPT = r"""
import json, resource, sys, time
import torch, torchvision
from torchvision import transforms
from sklearn.dummy import DummyClassifier
from fne.fne_torch import FullNetworkEmbedding

data, batch, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = torchvision.models.vgg16(weights=None).eval()  # same architecture, random weights (offline)
layers = ['features.0', 'features.2', 'features.5', 'features.7', 'features.10', 'features.12',
          'features.14', 'features.17', 'features.19', 'features.21', 'features.24', 'features.26',
          'features.28', 'classifier.0', 'classifier.3']  # the package README's VGG-16 list
tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                         transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
ds = torchvision.datasets.ImageFolder(data, transform=tf)
loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False)
fne = FullNetworkEmbedding(model, layers, DummyClassifier())  # a free classifier: time the FNE
def cpu():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
t0, c0 = time.perf_counter(), cpu()
fne.fit(loader)
wall = time.perf_counter() - t0
print(json.dumps({"n": len(ds), "seconds": wall, "images_per_s": len(ds) / wall,
                  "cpu_s_per_image": (cpu() - c0) / len(ds),
                  "maxrss_mib": [int(l.split()[1]) for l in open("/proc/self/status")
                                 if l.startswith("VmHWM:")][0] / 1024}))
"""


# `fne extract` through its CLI entry point, reporting its own peak RSS. VmHWM is the peak of
# this process's memory since its exec; ru_maxrss from wait4 is not: Linux folds the RSS of
# the (large) benchmark process at fork time into the child's ru_maxrss.
CLI_RUNNER = r"""
import json, resource, sys
from fne.cli import main
rc = main(sys.argv[1:])
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0] / 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print("RSS " + json.dumps({"peak_rss_mib": hwm, "worker_peak_rss_mib": kids}))
sys.exit(rc)
"""


def vm_hwm_mib() -> float:
    return [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0] / 1024


def load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def subset(data: Path, n: int, dest: Path) -> Path:
    """First n images, taken round-robin over the class folders, as symlinks (same files)."""
    classes = sorted(d for d in data.iterdir() if d.is_dir())
    if (data / "train").is_dir():
        classes = sorted(d for d in (data / "train").iterdir() if d.is_dir())
    per = [sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS) for d in classes]
    picked, k = [], 0
    while len(picked) < n and any(k < len(p) for p in per):
        picked += [(d, p[k]) for d, p in zip(classes, per, strict=True) if k < len(p)]
        k += 1
    if len(picked) < n:
        raise SystemExit(f"{data} has only {len(picked)} images, asked for {n}")
    for d, f in picked[:n]:
        (dest / d.name).mkdir(parents=True, exist_ok=True)
        (dest / d.name / f.name).symlink_to(f.resolve())
    return dest


def real_batch(folder: Path, arch: str, batch: int) -> torch.Tensor:
    from fne.data.datasets import load_dataset

    ds = load_dataset(folder)
    prep = StoreSpec(arch=arch).preprocess()
    xs = [prep(ds.load(i % len(ds))) for i in range(batch)]
    return torch.stack(xs)[:, 0]


def bare_forward(arch: str, precision: str, x: torch.Tensor, batches: int, taps: bool,
                 compile: bool = False) -> dict:
    """img/s of the network alone on a resident uint8 batch (normalisation included)."""
    dev = torch.device("cpu")
    if taps:
        model = build_tap_model(StoreSpec(arch=arch, weights="random"), dev, compile)

        def fwd():
            return model(x)
    else:
        b = backbones.get(arch)
        net = backbones.load_backbone(arch, "random").to(memory_format=torch.channels_last)
        norm = Normalize(b.mean, b.std)
        if compile:
            net = torch.compile(net, dynamic=False)

        def fwd():
            return net(norm(x).contiguous(memory_format=torch.channels_last))
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast(dev, precision):
        fwd()  # warm-up: oneDNN set-up, compilation
        setup = time.perf_counter() - t0
        rates, cpu0, t1 = [], time.process_time(), time.perf_counter()
        for _ in range(batches):
            t = time.perf_counter()
            fwd()
            rates.append(len(x) / (time.perf_counter() - t))
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - t1
    return {"images_per_s": len(x) * batches / wall, "best_batch_images_per_s": max(rates),
            "cpu_s_per_image": cpu / (len(x) * batches), "setup_s": setup, "load": load()}


def bare_forward_subprocess(folder: Path, arch: str, precision: str, batch: int, batches: int,
                            env: dict) -> dict:
    """The bare forward in a fresh process (e.g. with FNE_MALLOC_TUNING=0)."""
    cmd = [sys.executable, __file__, "--child-bare", str(folder), "--arch", arch, "--batch-size",
           str(batch), "--batches", str(batches), "--child-precision", precision]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fne_extract(folder: Path, arch: str, precision: str, batch: int, extra: list[str],
                env: dict | None = None, weights: str = "random", tree: Path | None = None) -> dict:
    """`fne extract` in a fresh cache, as its own process: wall, peak RSS, its run record.
    tree: run the fne package found there (e.g. an older commit's) instead of this one."""
    with tempfile.TemporaryDirectory() as cache:
        cmd = [sys.executable, "-c", CLI_RUNNER, "extract", str(folder), "--arch", arch,
               "--weights", weights, "--precision", precision, "--cache", cache,
               "--batch-size", str(batch), *extra]
        t0 = time.perf_counter()
        env = {**os.environ, "TQDM_DISABLE": "1", **(env or {})}
        if tree is not None:  # its own fne first; run from there so that `-c`'s '' finds it
            env["PYTHONPATH"] = str(tree)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                cwd=tree or None)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out = proc.stdout.read().decode()
        if status != 0:
            raise SystemExit(f"fne extract failed ({status}): {' '.join(cmd)}\n{out}")
        (rec,) = [json.loads(p.read_text()) for p in Path(cache).glob("*/records/*.json")]
    rss = json.loads([line for line in out.splitlines() if line.startswith("RSS ")][-1][4:])
    n = rec["n_computed"]
    return {"n": n, "wall_images_per_s": n / wall, "run_images_per_s": rec["images_per_s"],
            "steady_images_per_s": rec.get("steady_images_per_s"), "stage_seconds": rec["stage_seconds"],
            "cpu_s_per_image": rec["stage_seconds"].get("cpu_run", 0.0) / n,
            "process_cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_mib": rss["peak_rss_mib"],
            "worker_maxrss_mib": rss["worker_peak_rss_mib"],
            "wall_s": wall, "load": load()}


def old_tree(rev: str, into: Path) -> Path:
    """The fne package at git revision `rev`, unpacked under `into` (once)."""
    if not (into / "fne").is_dir():
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "fne"], check=True,
                              capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as t:
            t.extractall(into, filter="data")
    return into


def hpai(python: str, folder: Path, batch: int, workers: int) -> dict | None:
    # cwd away from this repository: its own `fne` folder would shadow the package.
    proc = subprocess.run([python, "-c", HPAI_SCRIPT, str(folder), str(batch), str(workers)],
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        print(f"HPAI run failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load": load()}


def grid(a, n_dir: Path, x: torch.Tensor, workers: list[str], add) -> None:
    """bf16 vs fp32 and the extraction batch size, side by side: per repetition, the bare forward in
    both precisions, then `fne extract` at every batch of `a.grid` in bf16 and at `a.batch_size` in
    fp32. CPU-seconds per image (the run record's) is the figure other jobs disturb least."""
    for _rep in range(a.reps):
        for prec in ("bf16", "fp32"):
            add(f"bare {prec} batch {len(x)}", bare_forward(a.arch, prec, x, a.batches, taps=False))
        for batch in a.grid:
            add(f"extract bf16 batch {batch}", fne_extract(n_dir, a.arch, "bf16", batch, workers))
        add(f"extract fp32 batch {a.batch_size}", fne_extract(n_dir, a.arch, "fp32", a.batch_size, workers))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "pets37"))
    p.add_argument("--arch", default="vgg16")
    p.add_argument("--n", type=int, default=96, help="images per throughput run (RSS also at 2N)")
    p.add_argument("--n-fp32", type=int, default=64, help="images per fp32 run (0: skip fp32)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=3, help="timed batches per bare-forward measurement")
    p.add_argument("--reps", type=int, default=2, help="interleaved repetitions")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (adds minutes)")
    p.add_argument("--rss", action="store_true",
                   help="only peak RSS at N, 2N, 4N images, with and without the allocator set-up")
    p.add_argument("--startup", default=None, metavar="PRECISION",
                   help="only: bare forward vs `fne extract` wall rate (process start included) at "
                        "PRECISION on N images, interleaved --reps times")
    p.add_argument("--old", default=None, metavar="REV",
                   help="with --startup: also run `fne extract` of git revision REV, interleaved")
    p.add_argument("--sweep", action="store_true",
                   help="only compare decoding workers 0/1/2 and compute threads (interleaved)")
    p.add_argument("--grid", type=int, nargs="+", default=None, metavar="BATCH",
                   help="only: bare forward at --batch-size vs `fne extract` of N images at each BATCH "
                        "(bf16) and at --batch-size (fp32), interleaved --reps times")
    p.add_argument("--hpai-python", default="/work/hpai-venv/bin/python")
    p.add_argument("--hpai-n", type=int, default=64)
    p.add_argument("--json", default=None)
    p.add_argument("--child-bare", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-precision", default="bf16", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child_bare:
        tune_allocator()
        x = real_batch(Path(a.child_bare), a.arch, a.batch_size)
        print(json.dumps(bare_forward(a.arch, a.child_precision, x, a.batches, taps=False)))
        return 0

    # The bare forward gets the same allocator set-up as `fne extract` (its best case); without
    # it, both lose ~15% (see RESULTS.md).
    tuned = tune_allocator()
    res: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "malloc_tuned": tuned,
                             "threads": torch.get_num_threads(), "load_start": load()},
                 "args": vars(a), "runs": {}}

    def add(name, r):
        res["runs"].setdefault(name, []).append(r)
        if r is not None:
            shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items() if k != "stage_seconds"}
            print(f"{name:28s} {shown}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="fne-bench-"))
    data = Path(a.data)
    n_dir = subset(data, a.n, tmp / f"n{a.n}")
    if not (a.startup or a.grid):  # the other modes' image sets
        n2_dir = subset(data, 2 * a.n, tmp / f"n{2 * a.n}")
        fp32_dir = subset(data, a.n_fp32, tmp / f"fp32_{a.n_fp32}") if a.n_fp32 else None
        hpai_dir = subset(data, a.hpai_n, tmp / f"hpai{a.hpai_n}")
    workers = ["--workers", "1"]
    x = None if a.rss else real_batch(n_dir, a.arch, a.batch_size)
    print(f"load average at start: {load()}  ({os.cpu_count()} CPUs, torch {torch.__version__})")

    if a.rss:  # peak RSS at N, 2N, 4N, with and without the allocator set-up, interleaved
        n4_dir = subset(data, 4 * a.n, tmp / f"n{4 * a.n}")
        for _rep in range(a.reps):
            for k, d in ((1, n_dir), (2, n2_dir), (4, n4_dir)):
                add(f"extract bf16 {k}N", fne_extract(d, a.arch, "bf16", a.batch_size, workers))
                add(f"extract bf16 {k}N default malloc", fne_extract(
                    d, a.arch, "bf16", a.batch_size, workers, {"FNE_MALLOC_TUNING": "0"}))
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return 0
    if a.startup:  # issue #9: end to end, Python start and model build included, vs the bare forward
        # a weights file, as users pass one: built on the meta device and loaded, not initialised
        wfile = tmp / "weights.pt"
        torch.save(backbones.load_backbone(a.arch, "random").state_dict(), wfile)
        for _rep in range(a.reps):
            bare = bare_forward(a.arch, a.startup, x, a.batches, taps=False)
            add(f"bare {a.startup}", bare)
            r = fne_extract(n_dir, a.arch, a.startup, a.batch_size, workers, weights=str(wfile))
            r["wall_over_bare"] = r["wall_images_per_s"] / bare["images_per_s"]
            r["run_over_bare"] = r["run_images_per_s"] / bare["images_per_s"]
            add(f"extract {a.startup} (wall: process start included)", r)
            if a.old:
                r = fne_extract(n_dir, a.arch, a.startup, a.batch_size, workers, weights=str(wfile),
                                tree=old_tree(a.old, tmp / "old"))
                r["wall_over_bare"] = r["wall_images_per_s"] / bare["images_per_s"]
                r["run_over_bare"] = r["run_images_per_s"] / bare["images_per_s"]
                add(f"extract {a.startup} at {a.old} (wall: process start included)", r)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return 0
    if a.grid:
        grid(a, n_dir, x, workers, add)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return 0
    if a.sweep:
        variants = {"workers 0": (["--workers", "0"], None), "workers 1": (["--workers", "1"], None),
                    "workers 2": (["--workers", "2"], None),
                    "workers 1, 1 thread": (["--workers", "1"], {"OMP_NUM_THREADS": "1"})}
        for _rep in range(a.reps):
            add("bare bf16", bare_forward(a.arch, "bf16", x, a.batches, taps=False))
            for name, (extra, env) in variants.items():
                add(f"extract bf16 {name}", fne_extract(n_dir, a.arch, "bf16", a.batch_size, extra, env))
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return 0

    has_hpai = Path(a.hpai_python).exists()
    if not has_hpai:
        print(f"HPAI package not measured: no {a.hpai_python} (python3 -m venv /work/hpai-venv && "
              f"/work/hpai-venv/bin/pip install fne==1.6.5)")
    for _rep in range(a.reps):
        add("bare bf16", bare_forward(a.arch, "bf16", x, a.batches, taps=False))
        add("bare bf16 default malloc", bare_forward_subprocess(
            n_dir, a.arch, "bf16", a.batch_size, a.batches, {"FNE_MALLOC_TUNING": "0"}))
        add("extract bf16", fne_extract(n_dir, a.arch, "bf16", a.batch_size, workers))
        add("bare+taps bf16", bare_forward(a.arch, "bf16", x, a.batches, taps=True))
        add("extract bf16 2N", fne_extract(n2_dir, a.arch, "bf16", a.batch_size, workers))
        if fp32_dir is not None:
            add("bare fp32", bare_forward(a.arch, "fp32", x, max(1, a.batches - 1), taps=False))
            add("extract fp32", fne_extract(fp32_dir, a.arch, "fp32", a.batch_size, workers))
        if has_hpai:
            add("hpai fne 1.6.5 fp32", hpai(a.hpai_python, hpai_dir, a.batch_size, 1))
            add("extract bf16 (HPAI's images)", fne_extract(hpai_dir, a.arch, "bf16", a.batch_size, workers))
    if a.compile:
        add("bare bf16", bare_forward(a.arch, "bf16", x, a.batches, taps=False))
        add("bare compiled bf16", bare_forward(a.arch, "bf16", x, a.batches, taps=False, compile=True))
        add("bare+taps compiled bf16", bare_forward(a.arch, "bf16", x, a.batches, taps=True, compile=True))
        add("extract --compile bf16", fne_extract(n2_dir, a.arch, "bf16", a.batch_size, [*workers, "--compile", "on"]))

    # ---------------------------------------------------------------- summary
    def best(name, key):
        vals = [r[key] for r in res["runs"].get(name, []) if r is not None and r.get(key)]
        if name.startswith("bare ") and key == "images_per_s":  # best of every bare variant
            vals += [r[key] for n, rs in res["runs"].items() if n.startswith(name + " default")
                     for r in rs if r is not None]
        if not vals:
            return None
        return min(vals) if key.startswith("cpu") else max(vals)  # CPU per image: lower is better

    s = {}
    for prec in ("bf16", "fp32"):
        bare = best(f"bare {prec}", "images_per_s")
        for key in ("run_images_per_s", "steady_images_per_s", "wall_images_per_s"):
            e = best(f"extract {prec}", key)
            if bare and e:
                s[f"extract/bare {prec} ({key})"] = e / bare
        cb, ce = best(f"bare {prec}", "cpu_s_per_image"), best(f"extract {prec}", "cpu_s_per_image")
        if cb and ce:
            s[f"bare/extract CPU-seconds per image {prec}"] = cb / ce
    h = best("hpai fne 1.6.5 fp32", "images_per_s")
    hc = best("hpai fne 1.6.5 fp32", "cpu_s_per_image")
    if h:
        for name in ("extract bf16", "extract fp32", "extract --compile bf16"):
            e = best(name, "steady_images_per_s" if "compile" in name else "run_images_per_s")
            ec = best(name, "cpu_s_per_image")
            if e:
                s[f"{name} / HPAI fp32 (img/s)"] = e / h
            if ec and hc:
                s[f"{name} / HPAI fp32 (CPU-seconds per image)"] = hc / ec
    if best("bare compiled bf16", "images_per_s"):
        e = best("extract --compile bf16", "steady_images_per_s")
        if e:
            s["extract --compile / bare compiled bf16 (steady)"] = e / best("bare compiled bf16", "images_per_s")
    r1 = [r["maxrss_mib"] for r in res["runs"].get("extract bf16", [])]
    r2 = [r["maxrss_mib"] for r in res["runs"].get("extract bf16 2N", [])]
    if r1 and r2:
        s["peak RSS MiB at N"] = max(r1)
        s["peak RSS MiB at 2N"] = max(r2)
    res["summary"] = s
    res["machine"]["load_end"] = load()
    print("\nsummary (best of the interleaved runs):")
    for k, v in s.items():
        print(f"  {k:52s} {v:8.3f}")
    print(f"load average at end: {load()}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
