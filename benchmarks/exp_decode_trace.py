"""What the device decode waits for beside the forward (a measurement for issue 19; run by hand
on a GPU, ~60 s): `exp_decode_streams.py` found the batched JPEG decode 12x slower once the tap
model keeps the GPU busy, whatever the stream priority, and the forward losing nothing. This
asks why, in one call:

* ``trace``: torch.profiler (CUPTI) over decode calls alone and beside the forward. Per decode
  call: its wall time, the CUDA runtime / driver calls the decoding thread made (count and time,
  by name: a ``cudaFree`` or ``cudaDeviceSynchronize`` waits for the whole device), and the
  kernels and copies those calls launched (count, time on the GPU, and the delay from the launch
  to the kernel's start: a kernel queued behind the forward's). The Chrome traces go to `$OUT`.
* ``rates``: decode img/s beside other loads: the forward in this process (the case fne runs),
  a load of short elementwise kernels in this process (no long conv kernels to wait behind), and
  the forward in another process (the GPU time-sliced between two contexts, but no wait of one
  process's calls for the other's work); and calls of 64, 256 and 1,024 JPEGs beside the forward
  (a cost per call or per image).
* ``threads``: 1, 2 and 4 threads decoding at once, each with a stream of its own, alone and
  beside the forward: if each call waits for the device (the forward's kernels) rather than for
  decoding work, the calls of several threads wait together and the total rate grows with the
  threads. torchvision's calls take one lock (`decoderMutex` in `decode_jpegs_cuda.cpp`), so
  there its rate can only stay; whether TorchCodec's calls overlap is what this shows.
* ``green``: the forward confined to all but about 4, 12, 20 or 36 of the multiprocessors (a CUDA green
  context), the decode beside it on the whole GPU: whether room kept free lets the decode run
  at its own pace, and what the forward loses.

    python3 benchmarks/exp_decode_trace.py [--parts trace,rates,threads,green] [--seconds 3]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_gpu import green_stream  # noqa: E402

# the kinds of trace events summarised (torch.profiler's Chrome trace names them "cat")
API = ("cuda_runtime", "cuda_driver")
GPU = ("kernel", "gpu_memcpy", "gpu_memset")


def summarise(events: list[dict], label: str, marker: str = "fne_decode") -> list[str]:
    """Lines describing each `marker` range of a Chrome trace's events: what its thread called
    and what those calls ran on the GPU (averaged over the ranges)."""
    calls = [e for e in events if e.get("name") == marker and e.get("ph") == "X"]
    if not calls:
        return [f"{label}: no '{marker}' range in the trace"]
    api = [e for e in events if e.get("cat") in API and e.get("ph") == "X"]
    gpu = {}
    for e in events:
        if e.get("cat") in GPU and e.get("ph") == "X":
            c = (e.get("args") or {}).get("correlation")
            if c is not None:
                gpu[c] = e
    by_api, n_api_time = collections.Counter(), collections.Counter()
    kernels, delays, gpu_us = collections.Counter(), [], collections.Counter()
    for call in calls:
        t0, t1, tid = call["ts"], call["ts"] + call["dur"], call.get("tid")
        for e in api:
            if e.get("tid") == tid and t0 <= e["ts"] <= t1:
                by_api[e["name"]] += 1
                n_api_time[e["name"]] += e.get("dur", 0)
                k = gpu.get((e.get("args") or {}).get("correlation"))
                if k is not None:
                    name = k["name"][:60]
                    kernels[name] += 1
                    gpu_us[name] += k.get("dur", 0)
                    delays.append(k["ts"] - e["ts"])
    n = len(calls)
    wall = sum(c["dur"] for c in calls) / n / 1e3
    lines = [f"{label}: {n} decode calls, {wall:.1f} ms each (wall of the call on its thread)"]
    for name, us in n_api_time.most_common(8):
        lines.append(f"    api {name}: {by_api[name] / n:.1f} per call, {us / n / 1e3:.2f} ms per call")
    for name, c in kernels.most_common(6):
        lines.append(f"    gpu {name}: {c / n:.1f} per call, {gpu_us[name] / c:.0f} us each")
    if delays:
        delays.sort()
        lines.append(f"    launch -> start on the GPU: median {delays[len(delays) // 2] / 1e3:.2f} ms, "
                     f"max {delays[-1] / 1e3:.2f} ms ({len(delays)} launches)")
    return lines


def traced(fn, out: Path | None, name: str) -> list[dict]:
    """Chrome-trace events of fn() under torch.profiler (CPU + CUDA activities)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
    path = (out / f"{name}.json") if out is not None else Path(tempfile.mkstemp(suffix=".json")[1])
    prof.export_chrome_trace(str(path))
    events = json.loads(path.read_text()).get("traceEvents", [])
    if out is None:
        path.unlink()
    return events


def green_sizes(total: int) -> list[int]:
    """SM counts to confine the forward to: all but about 4, 12, 20 and 36, in multiples of 8
    (Hopper hands SMs out in groups)."""
    return sorted({(total - spare) // 8 * 8 for spare in (4, 12, 20, 36)}, reverse=True)


class Load:
    """A load on the GPU on a thread of its own: the tap model's forward ("forward") or short
    elementwise kernels ("elementwise"); `rate` is its img/s (forward) or passes/s. With
    `num_sms`, in a green context of that many multiprocessors."""

    def __init__(self, what: str, model, x: torch.Tensor, dev: torch.device, num_sms: int | None = None):
        from fne.extraction import taps

        self.stop, self.ready, self.n, self.seconds, self.error = threading.Event(), threading.Event(), 0, 0.0, None
        big = torch.empty(256 << 20, dtype=torch.float32, device=dev) if what == "elementwise" else None

        def step():
            if big is None:
                taps.forward(model, x, dev, "bf16")
            else:
                for _ in range(8):
                    big.mul_(1.0000001)

        def run():
            s, ctx = green_stream(num_sms, dev) if num_sms else (torch.cuda.Stream(dev), None)
            try:
                with torch.cuda.stream(s):
                    step()  # warm in this context
                    s.synchronize()
                    self.ready.set()
                    t = time.perf_counter()
                    while not self.stop.is_set():
                        step()
                        s.synchronize()
                        self.n += len(x) if big is None else 1
                    self.seconds = time.perf_counter() - t
            except Exception as e:  # noqa: BLE001 (said by the caller)
                self.error = e
                self.ready.set()
            finally:
                if ctx is not None:
                    ctx.pop_context()

        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self):
        self.thread.start()
        self.ready.wait()
        if self.error is not None:
            self.thread.join()
            raise self.error
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    @property
    def rate(self) -> float:
        return self.n / max(self.seconds, 1e-9)


CHILD = """
import sys, time, torch
sys.path.insert(0, {root!r})
from fne.cache.spec import StoreSpec
from fne.extraction import taps
dev = torch.device("cuda")
model = taps.build_tap_model(StoreSpec(arch={arch!r}, weights="random"), dev)
x = torch.randint(0, 256, (256, 3, 224, 224), dtype=torch.uint8, device=dev)
taps.forward(model, x, dev, "bf16"); torch.cuda.synchronize()
print("ready", flush=True)
n, t = 0, time.perf_counter()
while time.perf_counter() - t < {seconds}:
    taps.forward(model, x, dev, "bf16"); torch.cuda.synchronize(); n += 256
print(f"{{n / (time.perf_counter() - t):.0f}}", flush=True)
"""


@contextlib.contextmanager
def other_process(arch: str, seconds: float):
    """The forward in a child process for `seconds` (its img/s in the yielded dict at the end)."""
    p = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), arch=arch, seconds=seconds)],
                         stdout=subprocess.PIPE, text=True)
    out: dict = {}
    try:
        assert p.stdout.readline().strip() == "ready"
        yield out
    finally:
        rest = p.communicate(timeout=seconds + 60)[0].split()
        out["fwd"] = float(rest[-1]) if rest else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="trace,rates,threads,green")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--arch", default="vgg16")
    a = ap.parse_args(argv)
    from fne import devices
    from fne.cache.spec import StoreSpec
    from fne.extraction import reader, taps

    if not torch.cuda.is_available():
        print("exp_decode_trace: needs CUDA")
        return 1
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    dev = torch.device("cuda")
    src = next(r for r in (ROOT / "../shared/datasets/pets37", ROOT / ".gpu-kit/pets37") if r.is_dir())
    files = sorted(src.rglob("*.jpg"))
    plain = [b for b in (f.read_bytes() for f in files[:1400]) if reader._plain_jpeg(b)][:1024]  # no fallback calls
    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in plain]
    model = taps.build_tap_model(StoreSpec(arch=a.arch, weights="random"), dev)
    x = torch.randint(0, 256, (256, 3, 224, 224), dtype=torch.uint8, device=dev)
    taps.forward(model, x, dev, "bf16")
    torch.cuda.synchronize()
    side = torch.cuda.Stream(dev)

    def decode(jpegs, calls=None, seconds=None) -> float:
        """img/s of decode calls of `jpegs` on the side stream, each marked for the trace."""
        n, t = 0, time.perf_counter()
        with torch.cuda.stream(side):
            while (calls is not None and n < calls * len(jpegs)) or (seconds is not None and time.perf_counter() - t < seconds):
                with torch.profiler.record_function("fne_decode"):
                    reader.decode_jpegs(jpegs, dev)
                    side.synchronize()
                n += len(jpegs)
        return n / (time.perf_counter() - t)

    def decode_threads(jpegs, k: int, seconds: float) -> float:
        """Total img/s of `k` threads decoding `jpegs` at once, each on a stream of its own."""
        counts, stop, errors = [0] * k, threading.Event(), []

        def run(i: int) -> None:
            s = torch.cuda.Stream(dev)
            try:
                with torch.cuda.stream(s):
                    while not stop.is_set():
                        reader.decode_jpegs(jpegs, dev)
                        s.synchronize()
                        counts[i] += len(jpegs)
            except Exception as e:  # noqa: BLE001 (raised below, in the caller's thread)
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(k)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        time.sleep(seconds)
        stop.set()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        return sum(counts) / (time.perf_counter() - t)

    libs = [lib for lib in ("torchcodec", "torchvision") if lib != "torchcodec" or devices._torchcodec()]
    made, b256 = devices._torchcodec, raw[:256]
    for lib in libs:
        devices._torchcodec = (lambda: True) if lib == "torchcodec" else (lambda: False)
        decode(b256, calls=2)  # warm: the decoder's handle and buffers
        print(f"[{lib}] alone: {decode(b256, seconds=a.seconds):,.0f} img/s", flush=True)
        if "trace" in a.parts:
            for line in summarise(traced(lambda: decode(b256, calls=5), out, f"{lib}-alone"), f"[{lib}] alone"):
                print(line, flush=True)
            with Load("forward", model, x, dev) as f:
                ev = traced(lambda: decode(b256, calls=3), out, f"{lib}-beside")
            for line in summarise(ev, f"[{lib}] beside the forward ({f.rate:,.0f} img/s meanwhile)"):
                print(line, flush=True)
        if "rates" in a.parts:
            for what in ("forward", "elementwise"):
                with Load(what, model, x, dev) as f:
                    r = decode(b256, seconds=a.seconds)
                print(f"[{lib}] beside {what} in this process: {r:,.0f} img/s (the load: {f.rate:,.0f}/s)", flush=True)
            with other_process(a.arch, a.seconds + 2) as o:
                r = decode(b256, seconds=a.seconds)
            print(f"[{lib}] beside the forward in another process: {r:,.0f} img/s (the forward: {o['fwd']:,.0f} img/s)",
                  flush=True)
            for size in (64, 256, 1024):
                with Load("forward", model, x, dev) as f:
                    r = decode(raw[:size], seconds=a.seconds)
                print(f"[{lib}] calls of {size} beside the forward: {r:,.0f} img/s (forward {f.rate:,.0f})", flush=True)
        if "threads" in a.parts:
            for k in (1, 2, 4):
                alone = decode_threads(b256, k, a.seconds)
                with Load("forward", model, x, dev) as f:
                    beside = decode_threads(b256, k, a.seconds)
                print(f"[{lib}] {k} decoding threads: alone {alone:,.0f} img/s, beside the forward {beside:,.0f} "
                      f"(forward {f.rate:,.0f})", flush=True)
        if "green" in a.parts:
            total = torch.cuda.get_device_properties(dev).multi_processor_count
            for sms in green_sizes(total):
                try:
                    with Load("forward", model, x, dev, num_sms=sms) as f:
                        r = decode(b256, seconds=a.seconds)
                except Exception as e:  # noqa: BLE001 (an API this torch lacks, a driver too old, a count refused)
                    print(f"[{lib}] green context of {sms} SMs: {type(e).__name__}: {e}", flush=True)
                    continue
                print(f"[{lib}] forward on {sms} of {total} SMs (green context): decode {r:,.0f} img/s, "
                      f"forward {f.rate:,.0f} img/s", flush=True)
    devices._torchcodec = made
    with Load("forward", model, x, dev) as f:
        time.sleep(a.seconds)
    print(f"forward alone: {f.rate:,.0f} img/s")
    if "green" in a.parts:
        total = torch.cuda.get_device_properties(dev).multi_processor_count
        for sms in green_sizes(total):
            try:
                with Load("forward", model, x, dev, num_sms=sms) as f:
                    time.sleep(a.seconds)
                print(f"forward alone on {sms} of {total} SMs: {f.rate:,.0f} img/s")
            except Exception as e:  # noqa: BLE001
                print(f"forward alone on {sms} SMs: {type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
