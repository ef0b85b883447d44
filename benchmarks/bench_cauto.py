"""`fne fit --features auto --head auto --C auto` against one default fit (issue 20 §2). Run by hand.

For each dataset, `fne fit` with the defaults (fne + svm, C = 1) and with everything chosen by
cross-validation, on cached EfficientNet-Lite0 ImageNet rows (extracted first when missing), each
in its own process; prints `fit_seconds` (per split), the ratio and the choices. With --old, the
same for a `git archive` of that commit, alternating, so both codes meet the same machine load.

    python benchmarks/bench_cauto.py --data ../shared/datasets/pets37 ../shared/datasets/flowers12 \
        --old f9734fb --json benchmarks/cauto.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORE = ["--arch", "efficientnet_lite0", "--weights", "imagenet"]
RUNS = {"one": [], "auto": ["--features", "auto", "--head", "auto", "--C", "auto"]}


def code_tree(commit: str, into: Path) -> Path:
    """The fne package of `commit`, unpacked under `into`."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "fne"], check=True, capture_output=True).stdout
    with tempfile.NamedTemporaryFile() as f:
        f.write(tar)
        f.flush()
        with tarfile.open(f.name) as t:
            t.extractall(into, filter="data")
    return into


def fit(code: Path, data: str, cache: str, extra: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "fne.cli", "fit", data, *STORE, "--cache", cache, "--extract", *extra,
           "--out", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code)  # cwd: `-m` puts it first on sys.path
    if r.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    m = json.loads((out / "metrics.json").read_text())
    sel = m.get("selection") or {}
    choices = Counter(f"{c['features']}+{c['head']} C={c['C']:g}" for c in sel.get("per_split_choices", [])) if sel else None
    return {"fit_seconds": m["fit_seconds"], "accuracy": m["accuracy"], "accuracy_std": m["accuracy_std"],
            "choices": dict(choices) if choices else f"{m['features']}+{m['head']} C={m['C']}",
            "load": " ".join(f"{v:.2f}" for v in os.getloadavg())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--cache", default=None, help="store root (default: a temporary one, filled first)")
    p.add_argument("--old", default=None, help="also run this commit's code, alternating with this tree")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = str(Path(a.cache).resolve()) if a.cache else str(tmp / "cache")
        codes = {"new": ROOT}
        if a.old:
            codes = {"old": code_tree(a.old, tmp / "old"), "new": ROOT}
        for data in (str(Path(d).resolve()) for d in a.data):
            for name, extra in RUNS.items():
                for label, code in codes.items():
                    r = fit(code, data, cache, extra, tmp / f"{label}-{name}")
                    r.update(data=Path(data).name, code=label, run=name)
                    results.append(r)
                    print(json.dumps(r), flush=True)
            for label in codes:
                one, auto = (next(r for r in results if r["data"] == Path(data).name and r["code"] == label
                                  and r["run"] == n) for n in ("one", "auto"))
                print(f"{Path(data).name} [{label}]: one fit {one['fit_seconds']:.2f} s, auto "
                      f"{auto['fit_seconds']:.2f} s per split: {auto['fit_seconds'] / one['fit_seconds']:.1f}x; "
                      f"auto chose {auto['choices']} ({100 * auto['accuracy']:.1f} %)", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
