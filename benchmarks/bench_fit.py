"""`fne fit` time and peak memory as the number of images grows. Run by hand.

Extraction is not timed here: the store is filled with synthetic VGG-16 rows (non-negative,
weakly class-dependent, float16, 12,416 features over 15 taps) for N tiny distinct image files, so
that `fne.fit.fit` runs exactly as on real data (store read, FNE standardise + discretise,
LinearSVC) at sizes the 2-core machine could not extract in minutes. Each fit runs in its own
process; peak RSS is its VmHWM.

    python benchmarks/bench_fit.py --n 500 1000 2000 4000 --json benchmarks/fit.json

scikit-learn and the torch solver (fne.linear.solver) side by side on the same rows, at the FNE
paper's Food-101 scale (101 classes, up to 75,750 rows); scikit-learn only up to --sklearn-max
rows (liblinear's float64 copy of the rows takes ~0.25 MiB per image):

    python benchmarks/bench_fit.py --n 1000 4000 16000 75750 --classes 101 --features fne \
        --heads svm --solvers sklearn torch --sklearn-max 8000 --json benchmarks/fit-scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fne.cache.spec import StoreSpec  # noqa: E402

SPEC = dict(arch="vgg16", weights="random", crop="center", precision="bf16", storage_dtype="float16")
CHILD = r"""
import json, sys, tempfile
from fne.linear.fit import fit
data, cache, features, head, solver, device = sys.argv[1:7]
with tempfile.TemporaryDirectory() as out:
    m = fit(data, features=features, head=head, splits=1, out=out, arch="vgg16", weights="random",
            precision="bf16", storage_dtype="float16", cache=cache, solver=solver, device=device)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0] / 1024
print(json.dumps({"accuracy": m["accuracy"], "fit_seconds": m["fit_seconds"], "n_train": m["n_train"],
                  "peak_rss_mib": hwm, "solver": m["solver"]}))
"""


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


SIGNAL = 0.06  # class-specific share of the rows: LinearSVC on fc7 alone is far from perfect


def make_data(root: Path, n: int, classes: int, cache: str) -> Path:
    """n distinct 8x8 PNGs in class folders, and a store holding a synthetic row for each.

    Seeded by n: the images of different sizes differ, so no size reuses another's rows.
    """
    from fne.data.datasets import load_dataset

    rng = np.random.default_rng(n)
    for i in range(n):
        c = i % classes
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(d / f"{i:06d}.png")
    ds = load_dataset(root)
    store = StoreSpec(**SPEC, cache=cache).open()
    missing = set(store.missing(ds.keys()))
    y = ds.label_indices()
    # A shared profile plus a small class-specific part: separable, but not trivially.
    centers = {t: (rng.gamma(1.0, 1.0, (1, ch)) + SIGNAL * rng.gamma(1.0, 1.0, (classes, ch))).astype(np.float32)
               for t, ch in store.taps}
    todo = [i for i, k in enumerate(ds.keys()) if k in missing]
    for s in range(0, len(todo), 256):  # parts of 256 rows, as `fne extract` commits them
        idx = todo[s:s + 256]
        rows = {t: np.maximum(0, centers[t][y[idx]] + rng.normal(0, 1.0, (len(idx), ch)))[:, None]
                .astype(np.float16) for t, ch in store.taps}
        store.commit([ds.keys()[i] for i in idx], rows)
    return root


def run_fit(data: Path, cache: str, features: str, head: str, solver: str = "auto", device: str = "auto") -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data), cache, features, head, solver, device],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"fit failed for {data} {features} {head}")
    r = json.loads(proc.stdout.read().decode().strip().splitlines()[-1])
    # VmHWM, not wait4's ru_maxrss: Linux counts the parent's RSS at fork in the latter.
    return {**r, "wall_s": wall, "maxrss_mib": r.pop("peak_rss_mib"), "load": load()}


def solver_scale(n: int, d: int, classes: int, iters: int, device: str, precision: str = "auto",
                 tol: float = 1e-4) -> dict:
    """The torch solver alone on n int8 FNE-like rows (d features, `classes` classes) for `iters`
    L-BFGS iterations, in this process: seconds per objective evaluation and peak RSS (VmHWM).

    The rows are drawn chunk by chunk straight into one int8 matrix (what `fne fit` holds for FNE
    rows), so the peak is the int8 rows plus the solver's own memory.
    """
    import fne.linear.solver as solver

    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    lean = rng.normal(0, 0.3, (classes, d)).astype(np.float32)
    X = np.empty((n, d), dtype=np.int8)
    for s in range(0, n, 2048):
        z = lean[y[s:s + 2048]] + rng.standard_normal((min(2048, n - s), d), dtype=np.float32)
        X[s:s + 2048] = (z > 0.6).astype(np.int8) - (z < -0.6).astype(np.int8)
    calls, real, trace = [0], solver._Problem.__call__, []
    t0 = time.perf_counter()

    def counted(self, theta):
        calls[0] += 1
        f, g = real(self, theta)
        trace.append((round(time.perf_counter() - t0, 2), float(f)))
        if calls[0] % 25 == 0:  # progress on stderr: a long run shows where it is
            print(f"evaluation {calls[0]}: {trace[-1][0]:.0f} s, objective/(Cn) {float(f):.6e}, "
                  f"max |gradient| {float(g.abs().max()):.2e}", file=sys.stderr, flush=True)
        return f, g

    solver._Problem.__call__ = counted
    head = solver.TorchHead("svm", 1.0, tol=tol, max_iter=iters or 5000, device=device, precision=precision).fit(X, y)
    secs = time.perf_counter() - t0
    final = trace[-1][1]
    reached = {f"{e:g}": next((t for t, f in trace if (f - final) <= e * final), None) for e in (1e-2, 1e-3, 1e-4)}
    hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0] / 1024
    compute = solver.resolve_precision(precision, X.dtype, solver.torch_device(device))
    return {"n": n, "d": d, "classes": classes, "precision": compute, "iterations": head.n_iter_, "evaluations": calls[0],
            "seconds": secs, "seconds_per_evaluation": secs / max(calls[0], 1), "peak_rss_mib": hwm,
            "int8_rows_mib": X.nbytes / 2**20, "load": load(),
            # with ITERS 0 (to convergence): seconds until the objective was within tol of its final value
            "seconds_to_within": reached if not iters else None, "objective": final, "trace": trace}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--features", nargs="+", default=["fne", "fc7"])
    p.add_argument("--heads", nargs="+", default=["svm", "sgd-svm"])
    p.add_argument("--solvers", nargs="+", default=["auto"], help="auto, sklearn, torch: each on the same rows")
    p.add_argument("--sklearn-max", type=int, default=None, help="skip solver sklearn above this many rows")
    p.add_argument("--device", default="auto", help="the torch solver's device")
    p.add_argument("--precision", default="auto", help="--solver-scale: the torch solver's matmul "
                   "arithmetic (auto, float32, float64, int8)")
    p.add_argument("--tol", type=float, default=1e-4, help="--solver-scale: the head's tol (L-BFGS stops at a "
                   "gradient of a hundredth of it)")
    p.add_argument("--json", default=None)
    p.add_argument("--solver-scale", type=int, default=None, metavar="ITERS",
                   help="instead: the torch solver alone on --n int8 rows of 12,416 features for ITERS "
                        "L-BFGS iterations (time per evaluation, peak RSS), one process per N; ITERS 0: "
                        "to convergence, with the time to within 1e-2 / 1e-3 / 1e-4 of the final objective")
    a = p.parse_args()
    if a.solver_scale is not None:
        for n in a.n:
            code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
                    f"import bench_fit; print(json.dumps(bench_fit.solver_scale({n}, 12416, {a.classes}, "
                    f"{a.solver_scale}, {a.device!r}, {a.precision!r}, {a.tol!r})))")
            r = json.loads(subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                          check=True).stdout.strip().splitlines()[-1])
            print(json.dumps({k: v for k, v in r.items() if k != "trace"}), flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(r))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="fne-benchfit-"))
    cache = str(tmp / "cache")
    out = {"load_start": load(), "runs": []}
    print(f"load average at start: {load()}")
    for n in a.n:
        data = make_data(tmp / f"n{n}", n, a.classes, cache)
        for features in a.features:
            for head in a.heads:
                for solver in a.solvers:
                    if solver == "sklearn" and a.sklearn_max is not None and n > a.sklearn_max:
                        print(f"N={n:6d} {features:4s} {head:8s} sklearn  skipped (> --sklearn-max)", flush=True)
                        continue
                    r = {"n": n, "features": features, "head": head, "requested": solver,
                         **run_fit(data, cache, features, head, solver, a.device)}
                    out["runs"].append(r)
                    if a.json:  # every run kept as it comes: a long benchmark interrupted keeps its figures
                        Path(a.json).write_text(json.dumps(out, indent=1))
                    print(f"N={n:6d} {features:4s} {head:8s} {r['solver']:7s} fit {r['fit_seconds']:7.2f} s  "
                          f"process {r['wall_s']:7.2f} s  peak RSS {r['maxrss_mib']:7.0f} MiB  accuracy "
                          f"{r['accuracy']:.3f}  load {r['load']}", flush=True)
    out["load_end"] = load()
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
