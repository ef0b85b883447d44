"""What the `fne` command's exit costs: `fne.cli.run` (objects frozen out of the garbage
collector before the interpreter ends) against `fne.cli.main` alone, on the same command line,
each in fresh processes, alternately. Run by hand.

    python benchmarks/bench_exit.py --reps 3 -- extract DATA --weights random --cache /tmp/c
    python benchmarks/bench_exit.py --reps 3 -- fit DATA --weights random --splits 1 --out /tmp/r

Extract runs get a fresh cache each time when the command names ``--cache`` (the folder is
emptied before every run), so that both variants compute the same rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fne.cli.run (frozen at exit)": "import sys; from fne.cli import run; sys.argv[1:] = {args!r}; run()",
    "fne.cli.main alone": "import sys; from fne.cli import main; sys.exit(main({args!r}))",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="an fne command line, after --")
    a = ap.parse_args()
    args = a.command[1:] if a.command[:1] == ["--"] else a.command
    cache = args[args.index("--cache") + 1] if args[:1] == ["extract"] and "--cache" in args else None
    walls: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for _ in range(a.reps):
        for name, code in VARIANTS.items():
            if cache:
                shutil.rmtree(cache, ignore_errors=True)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code.format(args=args)], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            walls[name].append(time.perf_counter() - t)
    print(f"fne {' '.join(args)}  ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})")
    for name, w in walls.items():
        print(f"  {name:30s} min {min(w):.2f} s  ({', '.join(f'{x:.2f}' for x in w)})")


if __name__ == "__main__":
    main()
