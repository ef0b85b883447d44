"""Where `fne extract`'s threads spend a run, measured by hand (not a test): prints one profile per run.

A sampler thread reads every thread's Python stack every 2 ms (``sys._current_frames``) and
counts, per thread, the innermost frame and the innermost frame in fne. A thread blocked in a
call that releases the GIL (a decode on the device, a stream synchronisation) is counted where
it waits, so the reader thread's share inside the decoder shows whether the decoder bounds the
run. On the same JPEGs (`bench_gpu.make_images`):

* ``defaults``: `fne extract` with its defaults, the first extraction in the process;
* ``rerun``: the same again, every row cached;
* ``high-priority``: the reader thread's CUDA stream at high priority (a stand-in: every
  `torch.cuda.Stream` made during the run is);
* ``ahead4``: four batches decoded ahead on the reader thread instead of two;
* ``pil``: `--decode pil`, PIL in the workers (on the H200 its model load took 6.39 s, the
  device path's 0.17 s);
* ``fresh-rerun``: a fresh process imports torch and fne and runs the cached rerun, each phase
  timed (the process start that `bench_gpu.py`'s walls include), then says whether the rerun
  imported torchvision and what importing it afterwards took;
* ``fresh``: the `fne extract` command in a fresh process on a fresh cache, its wall cut into
  the interpreter's start, the imports of torch and fne, the plan, the run (the model's load,
  warm-up and the first forward's wait in it), and the end after the verb returned; and whether
  the process held a CUDA context as it forked the loader's workers (the batch sized from free
  memory makes one);
* ``fresh-given-batch``: the same with ``--batch-size`` given, the size ``fresh`` chose (256
  without it): nothing is sized, so no context is made before the fork; set against ``fresh``,
  the ``device``, ``workers_start`` and ``model_start`` steps and the wall say what forking the
  workers from a process with a context costs.

    python3 benchmarks/prof_extract.py                          # CUDA: 32,768 JPEGs, VGG-16 bf16
    python3 benchmarks/prof_extract.py --images 64 --arch mobilenet_v3_small --precision fp32   # a CPU

The profiles are appended to `--out` (default `$OUT/prof.txt` where `$OUT` is set).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gpu  # noqa: E402
import torch  # noqa: E402

IDLE = ("threading.py:wait:", "thread.py:_worker:", "selectors.py:select:", "queues.py:_feed:")


def _where(frame) -> tuple[str, str | None]:
    """(innermost frame, innermost frame in fne) as file:function:line."""
    def name(f):
        return f"{Path(f.f_code.co_filename).name}:{f.f_code.co_name}:{f.f_lineno}"

    inner, f = name(frame), frame
    while f is not None and f"{os.sep}fne{os.sep}" not in f.f_code.co_filename:
        f = f.f_back
    return inner, name(f) if f is not None else None


def sampled(label: str, fn, out: Path | None, every: float = 0.002):
    """Run fn() while sampling every thread's stack; print (and append to `out`) the profile."""
    inner, ours, total = collections.Counter(), collections.Counter(), collections.Counter()
    stop = threading.Event()

    def sampler():
        me = threading.get_ident()
        while not stop.is_set():
            names = {th.ident: th.name for th in threading.enumerate()}
            for tid, frame in sys._current_frames().items():
                if tid != me:
                    thread = names.get(tid, str(tid))
                    thread = "pin_memory" if "pin_memory" in thread else thread
                    a, b = _where(frame)
                    inner[thread, a] += 1
                    ours[thread, b] += 1
                    total[thread] += 1
            time.sleep(every)

    th = threading.Thread(target=sampler, daemon=True, name="sampler")
    th.start()
    t0 = time.perf_counter()
    try:
        r = fn()
    finally:
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
    lines = [f"== {label}: wall {wall:.2f} s, computed {r.n_computed}, cached {r.n_cached}, "
             f"run {r.images_per_s:,.0f} img/s, steady {r.steady_images_per_s:,.0f}",
             "stages " + json.dumps({k: round(v, 3) for k, v in r.stage_seconds.items()})]
    for thread, n in total.most_common():
        busy = sum(c for (t, f), c in inner.items() if t == thread and not f.startswith(IDLE))
        if busy < 0.03 * n and thread != "MainThread":
            continue
        lines.append(f"-- {thread}: {n} samples, {100 * busy / n:.0f} % not idle; innermost | innermost in fne")
        top = [sorted(((f, c) for (t, f), c in counts.items() if t == thread), key=lambda x: -x[1])[:8]
               for counts in (inner, ours)]
        for (a, ca), (b, cb) in zip(top[0], top[1] + [("", 0)] * 8):
            lines.append(f"   {100 * ca / n:5.1f} % {a:<58} | {100 * cb / n:5.1f} % {b}")
    _report("\n".join(lines), out)
    return r


def _report(text: str, out: Path | None) -> None:
    """Print `text` and append it to `out`."""
    print(text, flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(text + "\n")


@contextlib.contextmanager
def high_priority_streams():
    """Every `torch.cuda.Stream` made inside is at high priority (the reader thread's among them)."""
    made = torch.cuda.Stream

    class HighPriority(made):
        def __new__(cls, device=None, priority=0, **kw):
            return made.__new__(cls, device, priority=-1, **kw)

    torch.cuda.Stream = HighPriority
    try:
        yield
    finally:
        torch.cuda.Stream = made


@contextlib.contextmanager
def ahead(n: int):
    """The reader thread decodes `n` batches ahead (where it decodes ahead at all)."""
    from fne.extraction import reader

    made = reader.assembled
    reader.assembled = lambda batches, dev, prep, ahead=0, **kw: made(batches, dev, prep, n if ahead else 0, **kw)
    try:
        yield
    finally:
        reader.assembled = made


FRESH = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from fne.extraction.extract import extract
t2 = time.perf_counter()
data, cache, kw = json.loads(sys.argv[1])
r = extract(data, cache=cache, progress=False, **kw)
t3 = time.perf_counter()
tv_before = "torchvision" in sys.modules
import torchvision  # after the rerun, which does not import it: what it would have cost
t4 = time.perf_counter()
print(json.dumps({"import torch s": round(t1 - t0, 2), "import fne s": round(t2 - t1, 2),
                  "extract s": round(t3 - t2, 2), "cached": r.n_cached, "computed": r.n_computed,
                  "torchvision imported by the rerun": tv_before,
                  "import torchvision afterwards s": round(t4 - t3, 2),
                  "cuda initialised": torch.cuda.is_available() and torch.cuda.is_initialized()}))
'''


FRESH_RUN = r'''
import atexit, json, sys, time
marks = {"start": time.time()}
import torch
marks["torch"] = time.time()
import fne.cli
from fne.extraction import extract
marks["fne"] = time.time()
made = extract._loader
def loader(*a, **k):  # whether the workers fork from a process with a CUDA context
    marks["context"] = torch.cuda.is_initialized() and torch._C._cuda_hasPrimaryContext(torch.cuda.current_device())
    return made(*a, **k)
extract._loader = loader
atexit.register(lambda: print("MARKS " + json.dumps({**marks, "returned": time.time()}), flush=True))
sys.argv = ["fne", "extract", *json.loads(sys.argv[1])]
fne.cli.run()
'''


# `fne extract`'s steps before its run (`ExtractResult.stage_seconds`), in order
SETUP = ("list", "open", "plan", "device", "workers_start", "model_start", "writer_start")


def _child_env() -> dict:
    """A child process's environment: this checkout's fne first on its path."""
    return {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}


def fresh_run(imgs: Path, where: str, kw: dict) -> str:
    """`fne extract` (`fne.cli.run`) in a fresh process: where its wall goes, as one line."""
    args = [str(imgs), "--cache", where, "--no-progress",
            *[f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]]
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", FRESH_RUN, json.dumps(args)], capture_output=True, text=True,
                       env=_child_env())
    wall = time.time() - t0
    if p.returncode != 0:
        return p.stderr[-2000:]
    m = json.loads([line for line in p.stdout.splitlines() if line.startswith("MARKS ")][-1][6:])
    (rec,) = [json.loads(f.read_text()) for f in Path(where).glob("*/records/*.json")]
    st = rec["stage_seconds"]
    verb = m["returned"] - m["fne"]
    parts = {"interpreter start": m["start"] - t0, "import torch": m["torch"] - m["start"],
             "import fne": m["fne"] - m["torch"], "extract() outside its run (key, plan, record)": verb - st["run"],
             "run": st["run"], "end (after the verb returned)": t0 + wall - m["returned"]}
    return (f"wall {wall:.2f} s for {rec['n_computed']:,} images: "
            + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
            + f"; in the run: model load {st['model_load']:.2f}, warm-up {st.get('warm_up', 0.0):.2f}, "
            f"first forward waited {st.get('model_wait', 0.0):.2f}, first forward {st['first_forward']:.2f}, "
            f"read wait {st['read_wait']:.2f}, after the last batch {st.get('finish', 0.0):.2f}; "
            f"batch {rec['batch_size']}, a CUDA context as the workers forked: {'yes' if m.get('context') else 'no'}; "
            "before the run: "
            + ", ".join(f"{k} {st[k]:.2f}" for k in SETUP if k in st)
            + f"; after it (manifest, counts, record): {verb - st['run'] - sum(st.get(k, 0.0) for k in SETUP):.2f}")


def _chosen_batch(cache: Path) -> int:
    """The batch size the ``fresh`` run's record shows (256, the CUDA default, without one)."""
    recs = sorted(cache.glob("*/records/*.json"))
    return json.loads(recs[-1].read_text())["batch_size"] if recs else 256


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=32_768)
    ap.add_argument("--arch", default="vgg16")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--runs", default="defaults,rerun,high-priority,ahead4,pil,fresh-rerun,fresh,fresh-given-batch",
                    help="which runs, in order (default: all)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=None, help="append the profiles here (default: $OUT/prof.txt where set)")
    a = ap.parse_args(argv)
    from fne.extraction.extract import extract

    work = Path(a.work or tempfile.mkdtemp(prefix="prof_extract_"))
    imgs = work / "images"
    out = Path(a.out) if a.out else Path(os.environ["OUT"], "prof.txt") if os.environ.get("OUT") else None
    t = time.perf_counter()
    if not imgs.is_dir():
        bench_gpu.make_images(imgs, a.images, 37)
    print(f"{a.images:,} images in {time.perf_counter() - t:.1f} s", flush=True)
    kw = dict(arch=a.arch, weights="random", precision=a.precision)
    cache = {"defaults": "cache", "rerun": "cache", "fresh-rerun": "cache", "high-priority": "cache_hp",
             "ahead4": "cache_a4", "pil": "cache_pil", "fresh": "cache_fresh", "fresh-given-batch": "cache_given"}
    setting = {"high-priority": high_priority_streams, "ahead4": lambda: ahead(4)}
    for run in a.runs.split(","):
        if run not in cache:
            ap.error(f"unknown run {run!r}; choose from {', '.join(cache)}")
        where = str(work / cache[run])
        if run in ("fresh", "fresh-given-batch"):
            shutil.rmtree(where, ignore_errors=True)
            given = {"batch_size": _chosen_batch(work / cache["fresh"])} if run == "fresh-given-batch" else {}
            _report(f"== {run}: {fresh_run(imgs, where, {**kw, **given})}", out)
            continue
        if run == "fresh-rerun":
            p = subprocess.run([sys.executable, "-c", FRESH, json.dumps([str(imgs), where, kw])], capture_output=True,
                               text=True, env=_child_env())
            _report(f"== fresh-rerun: {p.stdout.strip().splitlines()[-1] if p.returncode == 0 else p.stderr[-2000:]}", out)
            continue
        with setting.get(run, contextlib.nullcontext)():
            decode = {"decode": "pil"} if run == "pil" else {}
            sampled(run, lambda where=where, decode=decode: extract(str(imgs), cache=where, progress=False, **kw, **decode),
                    out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
