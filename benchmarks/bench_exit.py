"""What the `fne` command's exit costs: from the verb's return to the process gone, with
`fne.cli.run` (this tree's, and with --old another revision's) against `fne.cli.main` alone
(the interpreter's own exit), on the same command line, each in fresh processes, alternately.
Run by hand.

    python benchmarks/bench_exit.py --reps 3 -- extract DATA --weights random --cache /tmp/c
    python benchmarks/bench_exit.py --reps 5 --old e57c038 -- extract DATA --weights random --cache /tmp/c
    python benchmarks/bench_exit.py --reps 3 -- fit DATA --weights random --splits 1 --out /tmp/r

Extract runs get a fresh cache each time when the command names ``--cache`` (the folder is
emptied before every run), so that every variant computes the same rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_pipeline import old_tree  # noqa: E402

CHILD = r"""
import os, sys, time
import fne.cli
made = fne.cli.main
def main(*a, **k):
    code = made(*a, **k)
    os.write(2, f"RETURNED {{time.time()}}\n".encode())
    return code
fne.cli.main = main
sys.argv[1:] = {args!r}
{end}
"""
ENDS = {"run": "fne.cli.run()", "main alone": "sys.exit(fne.cli.main())"}


def once(tree: Path, end: str, args: list[str]) -> tuple[float, float]:
    """(wall, the verb's return to the process gone) of one fresh process."""
    t = time.time()
    p = subprocess.run([sys.executable, "-c", CHILD.format(args=args, end=ENDS[end])], cwd=tree,
                       env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    gone = time.time()
    marks = [line for line in p.stderr.splitlines() if line.startswith("RETURNED ")]
    if p.returncode or not marks:
        sys.exit(f"{end} in {tree} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return gone - t, gone - float(marks[-1].split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--old", default=None, help="also time `fne.cli.run` of this git revision")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="an fne command line, after --")
    a = ap.parse_args()
    args = a.command[1:] if a.command[:1] == ["--"] else a.command
    cache = args[args.index("--cache") + 1] if args[:1] == ["extract"] and "--cache" in args else None
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"fne.cli.run": (ROOT, "run"), "fne.cli.main alone": (ROOT, "main alone")}
        if a.old:
            variants[f"fne.cli.run of {a.old}"] = (old_tree(a.old, Path(tmp)), "run")
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        for _ in range(a.reps):
            for name, (tree, end) in variants.items():
                if cache:
                    shutil.rmtree(cache, ignore_errors=True)
                times[name].append(once(tree, end, args))
    print(f"fne {' '.join(args)}  ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})")
    for name, t in times.items():
        walls, exits = [w for w, _ in t], [e for _, e in t]
        print(f"  {name:32s} exit median {statistics.median(exits):.3f} s ({', '.join(f'{x:.3f}' for x in exits)})"
              f"   wall min {min(walls):.2f} s")


if __name__ == "__main__":
    main()
