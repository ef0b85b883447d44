"""Why the device decoder slows beside the forward (a measurement for issue 19; run by hand on
a GPU): the batched JPEG decode of 256 JPEGs on a thread and stream of its own, alone and while
the tap model runs on another thread and stream, with the forward's loop waiting for its own
stream only (as `fne extract` does) or for the whole device (as bench_gpu's contention row
does), and with the decode's stream at normal or high priority; each decoding library.

    python3 benchmarks/exp_decode_streams.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--arch", default="vgg16")
    a = ap.parse_args(argv)
    from fne import devices
    from fne.cache.spec import StoreSpec
    from fne.extraction import reader, taps

    dev = torch.device("cuda")
    src = next(r for r in (ROOT / "../shared/datasets/pets37", ROOT / ".gpu-kit/pets37") if r.is_dir())
    files = sorted(src.rglob("*.jpg"))[:256]
    raw = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    spec = StoreSpec(arch=a.arch, weights="random")
    model = taps.build_tap_model(spec, dev)
    x = torch.randint(0, 256, (256, 3, 224, 224), dtype=torch.uint8, device=dev)
    taps.forward(model, x, dev, "bf16")
    torch.cuda.synchronize()

    def decode_rate(priority: int) -> float:
        s = torch.cuda.Stream(dev, priority=priority)
        n, t = 0, time.perf_counter()
        with torch.cuda.stream(s):
            while time.perf_counter() - t < a.seconds:
                reader.decode_jpegs(raw, dev)
                s.synchronize()
                n += len(raw)
        return n / (time.perf_counter() - t)

    @contextlib.contextmanager
    def forward(device_sync: bool):
        stop, done = threading.Event(), [0, 0.0]

        def busy():
            s = torch.cuda.Stream(dev)
            with torch.cuda.stream(s):
                t = time.perf_counter()
                while not stop.is_set():
                    taps.forward(model, x, dev, "bf16")
                    torch.cuda.synchronize() if device_sync else s.synchronize()
                    done[0] += 1
                done[1] = time.perf_counter() - t

        th = threading.Thread(target=busy, daemon=True)
        th.start()
        out: dict = {}
        try:
            yield out
        finally:
            stop.set()
            th.join()
            out["fwd"] = done[0] * 256 / done[1]

    for lib in ("torchcodec", "torchvision"):
        if lib == "torchcodec" and not devices._torchcodec():
            continue
        made = devices._torchcodec
        devices._torchcodec = (lambda: True) if lib == "torchcodec" else (lambda: False)
        try:
            reader.decode_jpegs(raw, dev)
            print(f"{lib}: alone {decode_rate(0):,.0f} img/s", flush=True)
            for device_sync in (False, True):
                for prio in (0, -1):
                    with forward(device_sync) as f:
                        r = decode_rate(prio)
                    print(f"{lib}: beside the forward (its loop syncs {'the device' if device_sync else 'its stream'}), "
                          f"decode priority {prio}: {r:,.0f} img/s; forward {f['fwd']:,.0f} img/s", flush=True)
        finally:
            devices._torchcodec = made
    with forward(False) as f:
        time.sleep(a.seconds)
    print(f"forward alone: {f['fwd']:,.0f} img/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
