"""How long after its start a Ctrl-C still makes the `fne` command print Python's traceback.

Each trial starts the `fne` console script (`fne cache info`, no torch) and sends it SIGINT `d`
ms later; the trees given (PYTHONPATH each, e.g. two checkouts: before and after a change) take
turns at each delay, so that the machine's load weighs on them alike. Per trial: T (Python's
KeyboardInterrupt traceback), i (fne's one line), k (killed by SIGINT's default: the interpreter
had not yet set its handler), 0 (it finished first), ? (anything else).

    python benchmarks/bench_ctrl_c_window.py /tmp/old /tmp/new --trials 10 --step 5 --until 100
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import time


def trial(tree: str, delay: float, fne: str, cache: str) -> str:
    """One run of `fne cache info` from `tree`, SIGINT after `delay` s -> its letter."""
    p = subprocess.Popen([fne, "cache", "info", "--cache", cache], env={**os.environ, "PYTHONPATH": tree},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate()
    if "Traceback" in err:
        return "T"
    if "interrupted" in err:
        return "i"
    return {0: "0", -signal.SIGINT: "k"}.get(p.returncode, "?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", help="PYTHONPATH of each fne tree to compare")
    ap.add_argument("--trials", type=int, default=10, help="trials per tree and delay")
    ap.add_argument("--step", type=int, default=5, help="ms between delays")
    ap.add_argument("--until", type=int, default=100, help="the last delay, ms")
    ap.add_argument("--fne", default=shutil.which("fne") or "fne", help="the console script")
    ap.add_argument("--cache", default="/tmp/fne-ctrl-c-window-cache")
    a = ap.parse_args()
    tracebacks = dict.fromkeys(a.trees, 0)
    for ms in range(0, a.until + 1, a.step):
        got = dict.fromkeys(a.trees, "")
        for _ in range(a.trials):
            for tree in a.trees:
                got[tree] += trial(tree, ms / 1000, a.fne, a.cache)
        for tree in a.trees:
            tracebacks[tree] += got[tree].count("T")
        print(f"{ms:4d} ms  " + "  ".join(got[tree] for tree in a.trees), flush=True)
    print("tracebacks: " + ", ".join(f"{tree} {n}" for tree, n in tracebacks.items()))


if __name__ == "__main__":
    main()
