"""torch.compile on a CPU: eager against compiled, the bare network and `fne extract` (fne's taps).

Measured by hand (not a test). The variants alternate (eager, compiled, eager, ...) so that
other jobs on the machine hit them alike; the load average is printed before and after. The
first call compiles cold (inductor's on-disk cache empty), which it times apart. Example (the
AMX session of 30 Nov 2026, ~8 min on 2 shared cores):

    python benchmarks/exp_compile_cpu.py --data ../shared/datasets/flowers12 --n 128 --reps 2
    python benchmarks/exp_compile_cpu.py --data ../shared/datasets/flowers12 --n 512 --reps 2 --extract-only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_extract import bare_forward, fne_extract, load, real_batch, subset  # noqa: E402

from fne.devices import tune_allocator  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="an image folder (a subset of --n images is made)")
    p.add_argument("--arch", default="vgg16")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--n", type=int, default=128, help="images extracted per `fne extract` run")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--extract-only", action="store_true", help="only `fne extract`, compile on vs off")
    p.add_argument("--json", type=Path, help="write every figure here")
    a = p.parse_args()
    tune_allocator()
    d = subset(a.data, a.n, Path(tempfile.mkdtemp(prefix="fne-compile-")) / f"n{a.n}")
    workers, res = ["--workers", "1"], {}

    def add(name: str, r: dict) -> None:
        res.setdefault(name, []).append(r)
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "stage_seconds"},
              flush=True)

    print("load", load(), flush=True)
    x = None if a.extract_only else real_batch(d, a.arch, 32)
    if x is not None:
        t = time.perf_counter()
        add("bare compiled (cold)", bare_forward(a.arch, a.precision, x, 2, taps=False, compile=True))
        print(f"cold compile incl. its run: {time.perf_counter() - t:.1f} s", flush=True)
    for _ in range(a.reps):
        if x is not None:
            add("bare", bare_forward(a.arch, a.precision, x, 2, taps=False))
            add("bare compiled", bare_forward(a.arch, a.precision, x, 2, taps=False, compile=True))
            add("bare+taps", bare_forward(a.arch, a.precision, x, 2, taps=True))
            add("bare+taps compiled", bare_forward(a.arch, a.precision, x, 2, taps=True, compile=True))
        add("fne extract", fne_extract(d, a.arch, a.precision, 32, workers))
        add("fne extract --compile on", fne_extract(d, a.arch, a.precision, 32, [*workers, "--compile", "on"]))
    print("load", load(), flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
