"""Stress `fne extract`'s end on Ctrl-C and SIGTERM: many runs, each stopped at a random moment.

Each trial runs `fne extract` in a subprocess on a fresh cache (`--weights random`: no network),
sends SIGINT or SIGTERM (to the process, to its whole process group as a terminal's Ctrl-C does,
or to one of its other threads; sometimes a second one 0.3 s later) at a random moment of the run (the model's build, the
first batches, the steady run, the final commit) and checks that

- the process exits within ``--deadline`` seconds, with 130 (SIGINT) or 143 (SIGTERM), its last
  line on stderr saying what was kept (``fne extract: interrupted; ...``); a second signal may
  end it at once;
- the cache is sound afterwards (`fne.cache.verbs.cache_verify`), and a rerun (every
  ``--rerun-every``-th trial) computes exactly the rows the store lacks.

A child still running at the deadline is asked for every thread's Python stack (faulthandler,
registered on SIGUSR1 by the wrapper below; PYTHONFAULTHANDLER=1 also dumps them on a fatal
error), which is kept in ``--out``, then killed. Run by hand:

    python benchmarks/stress_interrupt.py DATA --trials 200 --jobs 2 --out /tmp/stress

Extra `fne extract` options go after ``--`` (default: vgg16, random weights, 32-pixel crops,
fp32, batches of 4, no progress bar).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["--arch", "vgg16", "--weights", "random", "--image-size", "32", "--precision", "fp32",
           "--batch-size", "4", "--no-progress"]
# The child: `fne` as the command runs it, with every thread's stack dumped on SIGUSR1.
WRAPPER = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
           "sys.argv[0] = 'fne'; from fne.cli import run; run()")
# Moments, as fractions of an uninterrupted run's wall time (measured first, as loaded as the trials).
MOMENTS = {"build": (0.02, 0.35), "first": (0.35, 0.5), "steady": (0.5, 0.85), "final": (0.85, 1.02)}
LAST_LINE = re.compile(r"^fne extract: (interrupted|terminated); ")
DONE = re.compile(r"(\d+) already cached, (\d+) computed")
SYS_TGKILL = 234  # x86-64 Linux
TARGETS = ("process", "group", "thread")


def child(data: str, cache: Path, extra: list[str], workers: int, group: bool, out: Path, tag: str):
    """Start one `fne extract`; -> (Popen, stdout path, stderr path)."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "PYTHONPATH": str(ROOT)}
    o, e = out / f"{tag}.out", out / f"{tag}.err"
    cmd = [sys.executable, "-c", WRAPPER, "extract", data, "--cache", str(cache), "--workers", str(workers), *extra]
    with open(o, "w") as fo, open(e, "w") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=ROOT, env=env, start_new_session=group)
    return p, o, e


def send(p: subprocess.Popen, sig: int, to: str, rnd: random.Random | None = None) -> None:
    """`sig` to the process (the kernel hands it to a thread of its choosing, mostly the main
    one), its process group (a terminal's Ctrl-C: the loader's workers too), or one of its
    threads other than the main one drawn at random (tgkill: as the kernel may deliver it)."""
    try:
        if to == "group":
            os.killpg(p.pid, sig)
        elif to == "thread" and (tids := [int(t) for t in os.listdir(f"/proc/{p.pid}/task") if int(t) != p.pid]):
            if ctypes.CDLL(None, use_errno=True).syscall(SYS_TGKILL, p.pid, (rnd or random).choice(tids), sig):
                os.kill(p.pid, sig)  # that thread had ended
        else:
            os.kill(p.pid, sig)
    except (ProcessLookupError, FileNotFoundError):
        pass


def stored_rows(cache: Path) -> tuple[int, bool, str]:
    """(rows in the cache's one store, cache sound, what `cache_verify` found wrong)."""
    from fne.cache.store import list_stores
    from fne.cache.verbs import cache_verify

    if not cache.exists():
        return 0, True, ""
    check = cache_verify(cache=str(cache))
    stores = list_stores(str(cache))
    rows = sum(len(s.index()) for s in stores)
    wrong = "; ".join(f"{s.name}: {s.findings}" for s in check.stores if not s.ok)
    return rows, check.ok, wrong


def trial(i: int, a, extra: list[str], wall: dict[int, float]) -> dict:
    rnd = random.Random(a.seed * 100003 + i)
    workers = rnd.choice(a.workers)
    moment = rnd.choice(list(MOMENTS))
    lo, hi = MOMENTS[moment]
    delay = rnd.uniform(lo, hi) * wall[workers]
    sig = signal.SIGTERM if rnd.random() < a.term_share else signal.SIGINT
    to = rnd.choice(a.to)
    group = to == "group"
    double = rnd.random() < a.double_share
    tag = f"t{i:04d}"
    cache = Path(a.out) / "caches" / tag
    shutil.rmtree(cache, ignore_errors=True)
    p, o, e = child(a.data, cache, extra, workers, group, Path(a.out), tag)
    r = {"trial": i, "workers": workers, "moment": moment, "delay": round(delay, 2), "signal": sig.name,
         "to": to, "double": double}
    try:
        p.wait(timeout=delay)
        r.update(outcome="finished-before-signal", rc=p.returncode)
        shutil.rmtree(cache, ignore_errors=True)
        return r
    except subprocess.TimeoutExpired:
        pass
    sent = time.monotonic()
    send(p, sig, to, rnd)
    if double:
        try:
            p.wait(timeout=0.3)
        except subprocess.TimeoutExpired:
            send(p, sig, to, rnd)
    try:
        p.wait(timeout=a.deadline)
    except subprocess.TimeoutExpired:
        send(p, signal.SIGUSR1, "process")  # every thread's stack, into the .err file
        time.sleep(3)
        send(p, signal.SIGKILL, "group" if group else "process")
        p.wait()
        r.update(outcome="HANG", rc=None, stacks=str(e))
        return r
    r["exit_s"] = round(time.monotonic() - sent, 2)
    r["rc"] = p.returncode
    lines = [x for x in e.read_text(errors="replace").splitlines() if x.strip()]
    r["last"] = lines[-1][:160] if lines else ""
    want = 128 + sig
    if p.returncode == 0:
        took = DONE.search(o.read_text())
        r["outcome"] = "IGNORED" if r["exit_s"] > a.grace else "finished-as-signalled"
        r["computed"] = int(took[2]) if took else None
    elif p.returncode == want and LAST_LINE.match(r["last"]):
        r["outcome"] = "ok"
    elif double and p.returncode == -sig:  # the second signal ended it at once
        r["outcome"] = "ok-second-signal"
    else:
        r["outcome"] = "BAD-EXIT"
    rows, sound, wrong = stored_rows(cache)
    r.update(rows=rows, sound=sound)
    if not sound:
        r["outcome"], r["wrong"] = "BAD-STORE", wrong[:300]
    if r["outcome"].startswith("ok") and a.rerun_every and i % a.rerun_every == 0:
        q, o2, _ = child(a.data, cache, extra, workers, False, Path(a.out), tag + "-rerun")
        q.wait()
        took = DONE.search(o2.read_text())
        r["rerun"] = [int(took[1]), int(took[2])] if took else None
        if q.returncode != 0 or not took or int(took[1]) != rows or int(took[1]) + int(took[2]) != a.unique:
            r["outcome"] = "BAD-RERUN"
    if r["outcome"].startswith(("ok", "finished")):
        shutil.rmtree(cache, ignore_errors=True)
        for f in Path(a.out).glob(f"{tag}*"):
            f.unlink()
    return r


def calibrate(a, extra: list[str]) -> tuple[dict[int, float], int]:
    """Wall seconds of an uninterrupted run per --workers value (run `jobs` at once, as loaded as
    the trials) and the images it computes."""
    wall, unique = {}, 0
    for w in a.workers:
        cache = Path(a.out) / "caches" / f"calibrate{w}"
        shutil.rmtree(cache, ignore_errors=True)
        t = time.monotonic()
        p, o, _ = child(a.data, cache, extra, w, False, Path(a.out), f"calibrate{w}")
        if p.wait() != 0:
            sys.exit(f"the uninterrupted run failed: see {Path(a.out) / f'calibrate{w}.err'}")
        wall[w] = time.monotonic() - t
        unique = int(DONE.search(o.read_text())[2])
        shutil.rmtree(cache, ignore_errors=True)
    return wall, unique


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2, help="trials at once")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="--workers values drawn from")
    ap.add_argument("--deadline", type=float, default=20.0, help="seconds a signalled child may take to exit")
    ap.add_argument("--grace", type=float, default=3.0, help="a child that exits 0 later than this ignored the signal")
    ap.add_argument("--term-share", type=float, default=0.4, help="share of trials sent SIGTERM (else SIGINT)")
    ap.add_argument("--double-share", type=float, default=0.15, help="share of trials sent a second signal")
    ap.add_argument("--to", nargs="+", default=list(TARGETS), choices=TARGETS, help="where signals are sent, drawn from")
    ap.add_argument("--rerun-every", type=int, default=4, help="rerun every Nth trial to check what it computes")
    ap.add_argument("--minutes", type=float, default=None, help="stop starting trials after this long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/stress_interrupt")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    # A shell's background job (`... &`, nohup) starts with SIGINT ignored, and a child keeps that
    # (Python then installs no Ctrl-C handler): a handler here is reset to the default at exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    extra = argv[cut + 1:] or DEFAULT  # fne extract's options, after --
    Path(a.out).mkdir(parents=True, exist_ok=True)
    wall, a.unique = calibrate(a, extra)
    print(f"uninterrupted run: {', '.join(f'--workers {w}: {s:.1f} s' for w, s in wall.items())}; "
          f"{a.unique} images", flush=True)
    stop = time.monotonic() + 60 * a.minutes if a.minutes else None
    results, lock = [], threading.Lock()

    def one(i: int) -> None:
        if stop is not None and time.monotonic() > stop:
            return
        r = trial(i, a, extra, wall)
        with lock:
            results.append(r)
            with open(Path(a.out) / "trials.jsonl", "a") as f:
                f.write(json.dumps(r) + "\n")
            if not r["outcome"].startswith(("ok", "finished")):
                print(f"{r['outcome']}: {r}", flush=True)

    with ThreadPoolExecutor(a.jobs) as pool:
        list(pool.map(one, range(a.trials)))
    summarize(results, a)


def summarize(results: list[dict], a) -> None:
    signalled = [r for r in results if r["outcome"] != "finished-before-signal"]
    print(f"{len(results)} trials, {len(signalled)} signalled while running ({os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}); deadline {a.deadline:g} s")
    by = collections.Counter((r["moment"], r["signal"], r["to"], r["workers"], r["outcome"]) for r in signalled)
    for key, n in sorted(by.items()):
        print(f"  {key[0]:7s} {key[1]:8s} to {key[2]:8s} --workers {key[3]}  {key[4]:22s} {n}")
    exits = sorted(r["exit_s"] for r in signalled if "exit_s" in r)
    if exits:
        print(f"  signal to exit: median {exits[len(exits) // 2]:.2f} s, max {exits[-1]:.2f} s")
    reruns = [r for r in signalled if "rerun" in r]
    print(f"  reruns: {len(reruns)}, {sum(r['outcome'] == 'ok' for r in reruns)} computed exactly the missing rows")
    print(f"  outcomes: {dict(collections.Counter(r['outcome'] for r in results))}")


if __name__ == "__main__":
    main()
