"""What `fne extract`'s imports cost a fresh process: `import torch`, then `import fne.cli` and
`fne.extraction.extract` (what the command imports before it reads DATA), for this tree and
--old's, alternately, in fresh processes, with the OS's file cache warm (a first, untimed round).
Run by hand.

    python benchmarks/bench_imports.py --reps 7 --old e57c038
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_pipeline import old_tree  # noqa: E402

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import fne.cli
from fne.extraction.extract import extract
t2 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "fne": t2 - t1, "zarr": "zarr" in sys.modules}))
"""


def once(tree: Path) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--old", required=True, help="git revision to compare with")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"new": ROOT, f"old ({a.old})": old_tree(a.old, Path(tmp))}
        for tree in trees.values():
            once(tree)  # the file cache warm, the .pyc files written
        runs: dict[str, list[dict]] = {k: [] for k in trees}
        for _ in range(a.reps):
            for name, tree in trees.items():
                runs[name].append(once(tree))
    print(f"{a.reps} reps alternately ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}); median (min-max) s")
    for name, r in runs.items():
        line = [f"{k} {statistics.median(x[k] for x in r):.3f} ({min(x[k] for x in r):.3f}-{max(x[k] for x in r):.3f})"
                for k in ("torch", "fne")]
        print(f"  {name:16s} import {', '.join(line)}; zarr imported: {r[0]['zarr']}")


if __name__ == "__main__":
    main()
