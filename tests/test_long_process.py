"""fne in one long-lived process (a notebook, an IPython session, a long script): verbs called
again and again, or interrupted (Ctrl-C: the kernel's interrupt button), leave no thread, loader
worker or setting of the process behind, and the next call goes on from what was committed.

A notebook keeps the last traceback (`sys.last_traceback`), and with it every frame it passed
through: the tests below keep it too, as the kernel would, before they look for leftovers.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time

import numpy as np
import pytest
import torch

import fne

from .conftest import FAST, write_digits

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts processes in /proc")]

TRAIN = dict(arch="efficientnet_lite0", weights="random", image_size=32, batch_size=4, val_fraction=0.3,
             progress=False)


def children() -> list[int]:
    """This process's live child processes (loader workers), from /proc."""
    me, kids = os.getpid(), []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:  # a zombie (a worker not waited for) counts
                kids.append(int(p))
    return kids


def threads() -> set[str]:
    """Live threads but zarr's own (its I/O loop and that loop's bounded pool, started once)."""
    return {f"{t.name}:{t.ident}" for t in threading.enumerate()
            if t.name != "zarr_io" and not t.name.startswith("asyncio_")}


def leftovers(before: set[str]) -> tuple[list[int], set[str]]:
    """(child processes, threads not in `before`) once they have had a few seconds to end: a
    multiprocessing queue's feeder thread ends by itself shortly after the queue is closed, a
    leftover stays."""
    deadline = time.monotonic() + 120  # generous: a busy machine is slow, and a clean call returns at once
    while (children() or threads() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    return children(), threads() - before


def global_state() -> tuple:
    """What a caller's later cells depend on: the global generators and torch's settings."""
    return (random.getstate(), np.random.get_state()[1].tobytes(), torch.get_rng_state().numpy().tobytes(),
            torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)


def kept(run):
    """Run `run`, which a KeyboardInterrupt stops, and keep its traceback as IPython does."""
    with pytest.raises(KeyboardInterrupt) as e:
        run()
    sys.last_traceback = e.value.__traceback__
    return e.value


@pytest.fixture(autouse=True)
def _no_kept_traceback():
    yield
    sys.last_traceback = None


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("long") / "data", per_class=8, classes=3)


def test_extract_again_and_again_leaves_nothing_behind(digits, tmp_path):
    """Each call starts loader workers, a writer and the model's build thread: all gone when it
    returns; the caller's RNG states and torch's thread count (``threads`` sets it for the call
    only) are as they were; the open files do not grow with the calls."""
    np.random.seed(1), torch.manual_seed(1), random.seed(1)
    torch.set_num_threads(2)  # the caller's; the calls run on one (two would wait on each other on a busy CPU)
    try:
        state, before, fds = global_state(), threads(), []
        for i in range(3):
            r = fne.extract(digits, cache=str(tmp_path / f"c{i}"), batch_size=8, chunk=8, workers=2, threads=1,
                            progress=False, **FAST)
            assert r.n_computed == 24
            assert leftovers(before) == ([], set())
            assert global_state() == state
            fds.append(len(os.listdir("/proc/self/fd")))
    finally:
        torch.set_num_threads(1)
    assert fds[-1] <= fds[0]


def test_an_interrupted_extract_stops_its_workers_and_the_next_call_resumes(digits, tmp_path, monkeypatch):
    """Ctrl-C in the loop (the third batch's forward): the workers and threads end with the call
    although the kept traceback still holds its frames; the committed rows are whole
    (`cache_verify`) and the next call computes only the others."""
    from fne.extraction import taps

    real, calls = taps.TapRunner.__call__, []

    def ctrl_c(self, x):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, x)

    cache, before = str(tmp_path / "c"), threads()
    monkeypatch.setattr(taps.TapRunner, "__call__", ctrl_c)
    kept(lambda: fne.extract(digits, cache=cache, batch_size=4, chunk=4, workers=2, progress=False, **FAST))
    assert leftovers(before) == ([], set())
    assert fne.cache_verify(cache=cache).ok
    (store,) = fne.cache_info(digits, cache=cache).stores
    assert store.rows == 8  # two batches committed, the third's forward interrupted
    monkeypatch.setattr(taps.TapRunner, "__call__", real)
    r = fne.extract(digits, cache=cache, batch_size=4, chunk=4, workers=2, progress=False, **FAST)
    assert (r.n_cached, r.n_computed) == (8, 16) and leftovers(before) == ([], set())


def test_a_second_ctrl_c_as_the_workers_stop_still_commits_the_writers_rows(digits, tmp_path, monkeypatch):
    """Ctrl-C in the loop (the third batch's forward), then again as the loader's workers are
    stopped: the second is not held for the workers, but the rows the writer holds (two batches,
    in one part of up to 1000 rows) are still committed, and no writer is left waiting for rows;
    the next call computes only the others."""
    from fne.extraction import extract as ex
    from fne.extraction import taps

    real, real_end, calls = taps.TapRunner.__call__, ex.end_workers, []

    def ctrl_c(self, x):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, x)

    def ctrl_c_again(loader):
        real_end(loader)
        raise KeyboardInterrupt  # as `held` raises a second one

    cache, before = str(tmp_path / "c"), threads()
    monkeypatch.setattr(taps.TapRunner, "__call__", ctrl_c)
    monkeypatch.setattr(ex, "end_workers", ctrl_c_again)
    kept(lambda: fne.extract(digits, cache=cache, batch_size=4, chunk=1000, workers=2, progress=False, **FAST))
    assert leftovers(before) == ([], set())
    assert fne.cache_verify(cache=cache).ok
    (store,) = fne.cache_info(digits, cache=cache).stores
    assert store.rows == 8
    monkeypatch.setattr(taps.TapRunner, "__call__", real)
    monkeypatch.setattr(ex, "end_workers", real_end)
    r = fne.extract(digits, cache=cache, batch_size=4, chunk=4, workers=2, progress=False, **FAST)
    assert (r.n_cached, r.n_computed) == (8, 16) and leftovers(before) == ([], set())


def test_ctrl_c_during_the_last_commit_waits_for_it(digits, tmp_path, monkeypatch):
    """A real SIGINT while the call waits for the writer's last commit: the commit finishes
    before KeyboardInterrupt is raised, so no writer outlives the call (one still committing
    while the rerun plans made that rerun compute every row again) and every row is kept."""
    import signal

    from fne.extraction import writer

    from .conftest import main_thread_at, until

    real, started, go, failed = writer.Writer._flush, threading.Event(), threading.Event(), []

    def slow_last(self):
        if self.q.empty() and self._keys and not started.is_set():  # the last commit, after the run's end
            started.set()
            go.wait(600)
        return real(self)

    def ctrl_c():  # each step waits for what it needs to see, never for a time (a busy machine is slow)
        try:
            until(started.is_set, "the last commit never began")
            until(lambda: main_thread_at(writer.Writer.close, "sent"), "the main thread never waited for the commit")
            os.kill(os.getpid(), signal.SIGINT)
            until(lambda: main_thread_at(writer.Writer.close, "interrupted") is not None,
                  "Writer.close never took the Ctrl-C")
        except AssertionError as e:
            failed.append(str(e))
        finally:
            go.set()

    monkeypatch.setattr(writer.Writer, "_flush", slow_last)
    threading.Thread(target=ctrl_c, daemon=True).start()
    cache = str(tmp_path / "c")
    try:
        kept(lambda: fne.extract(digits, cache=cache, batch_size=8, chunk=1000, workers=0, progress=False, **FAST))
    finally:
        assert not failed, failed[0]
    assert not [t for t in threading.enumerate() if isinstance(t, writer.Writer)]
    monkeypatch.setattr(writer.Writer, "_flush", real)
    r = fne.extract(digits, cache=cache, batch_size=8, workers=0, progress=False, **FAST)
    assert (r.n_cached, r.n_computed) == (24, 0) and fne.cache_verify(cache=cache).ok


def test_train_again_and_again_leaves_the_callers_generators_and_no_worker(digits, tmp_path):
    """`fne.train` seeds the global generators and (``deterministic=True``) torch's algorithms for
    its run; after it the caller's states and settings are back, and its loaders' workers (kept
    across epochs) have ended."""
    np.random.seed(3), torch.manual_seed(3), random.seed(3)
    state, before = global_state(), threads()
    runs = [fne.train(digits, "frozen", tmp_path / f"t{i}", epochs=1, workers=1, deterministic=True, **TRAIN)
            for i in range(2)]
    assert runs[0]["history"][0]["train_loss"] == runs[1]["history"][0]["train_loss"]
    assert global_state() == state
    assert leftovers(before) == ([], set())


def test_the_test_pass_runs_beside_no_training_or_validation_worker(digits, tmp_path, monkeypatch):
    """The training and validation loaders' workers (kept across epochs) end when the epochs do:
    the test pass's workers are the only ones alive during it, not idle beside two more sets."""
    from fne.training import epochs

    real, alive = epochs.evaluate, {}

    def counted(model, loader, ctx, desc):
        out = real(model, loader, ctx, desc)
        alive.setdefault(desc, len(children()))  # the pass's own workers persist until its loader ends
        return out

    monkeypatch.setattr(epochs, "evaluate", counted)
    fne.train(digits, "frozen", tmp_path / "t", epochs=1, workers=2, **TRAIN)
    assert alive == {"val": 4, "test": 2}  # val: the training loader's 2 and its own 2


def test_an_interrupted_train_stops_its_workers_and_resumes(digits, tmp_path, monkeypatch):
    """Ctrl-C in epoch 2's pass: the persistent workers of the training and validation loaders
    end with the call, the caller's generators are back, and ``resume=True`` finishes the run
    from its checkpoint."""
    from fne.training import epochs

    real, calls = epochs.train_one_epoch, []

    def ctrl_c(model, loader, *a):
        calls.append(1)
        if len(calls) == 2:
            next(iter(loader))  # its workers are running
            raise KeyboardInterrupt
        return real(model, loader, *a)

    state, before = global_state(), threads()
    monkeypatch.setattr(epochs, "train_one_epoch", ctrl_c)
    kw = dict(epochs=2, save_every=1, workers=2, **TRAIN)
    kept(lambda: fne.train(digits, "frozen", tmp_path / "t", **kw))
    assert leftovers(before) == ([], set())
    assert global_state() == state
    monkeypatch.setattr(epochs, "train_one_epoch", real)
    m = fne.train(digits, "frozen", tmp_path / "t", resume=True, **kw)
    assert [h["epoch"] for h in m["history"]] == [1, 2] and leftovers(before) == ([], set())


def test_report_keeps_the_callers_matplotlib_backend(warm_cache, digits_folder, tmp_path):
    """A notebook's inline plots need its backend: `fne.report` draws its figures without
    choosing one (it forced Agg), and leaves pyplot's figures as they were."""
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    open_figures = plt.get_fignums()
    fne.fit(digits_folder, tmp_path / "run", cache=str(warm_cache), splits=2, progress=False, **FAST)
    r = fne.report([tmp_path / "run"], out=tmp_path / "report")
    assert "data:image/png;base64," in open(r["html"]).read()
    assert matplotlib.get_backend() == "svg" and plt.get_fignums() == open_figures


def test_ctrl_c_in_the_first_meta_forwards_lazy_import_leaves_later_calls_working(digits, tmp_path):
    """A forward on the meta device (the check that the backbone runs at `image_size`) imports
    torch's symbolic shapes, and sympy with them (~900 modules, seconds), at its first shape check
    in the process. A Ctrl-C inside that import left sympy half-imported, and every later call
    of the process refused in one line ("efficientnet_lite0 cannot run at 32 x 32 (module 'sympy'
    has no attribute 'logic')"); held over the import, it ends the call and the next one runs.
    A fresh process: this one has imported them already."""
    import json
    import subprocess

    from .conftest import FAST32

    script = f"""
import json, os, signal, sys
import fne
assert "sympy" not in sys.modules
class CtrlC:  # SIGINT as sympy imports its polys package (its logic one imported), as a Ctrl-C could come
    def find_spec(self, name, path=None, target=None):
        if name == "sympy.polys":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlC())
out = []
try:
    fne.extract({str(digits)!r}, cache={str(tmp_path / "c")!r}, workers=0, progress=False, **{FAST32!r})
except KeyboardInterrupt:
    out.append("interrupted")
r = fne.extract({str(digits)!r}, cache={str(tmp_path / "c")!r}, workers=0, progress=False, **{FAST32!r})
print(json.dumps(out + [r.n_computed]))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.splitlines()[-1]) == ["interrupted", 24]


@pytest.mark.parametrize("verb", ["extract", "train"])
def test_ctrl_c_as_a_loader_starts_its_workers_leaves_none(verb, digits, tmp_path, monkeypatch):
    """Ctrl-C (a real SIGINT) while torch's loader iterator starts its workers: raised inside its
    ``__init__``, it left the iterator half-built, its workers running with nothing to stop them
    (its ``__del__`` fails: "no attribute '_workers_status'"), a process and its pipes left per
    Ctrl-C for the notebook's lifetime; the loader starts with it held, then stops the workers."""
    import signal

    from torch.utils.data import dataloader

    real, sent = dataloader._MultiProcessingDataLoaderIter._reset, []

    def ctrl_c(self, loader, first_iter=False):
        if not sent:  # the workers are started, their status not yet kept
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, loader, first_iter)

    before = threads()
    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "_reset", ctrl_c)
    if verb == "extract":
        kept(lambda: fne.extract(digits, cache=str(tmp_path / "c"), batch_size=8, workers=2, progress=False, **FAST))
    else:
        kept(lambda: fne.train(digits, "frozen", tmp_path / "t", epochs=1, workers=2, **TRAIN))
    assert sent and leftovers(before) == ([], set())


@pytest.mark.parametrize("at", ["model", "bar"])
def test_ctrl_c_as_extract_sets_up_its_model_leaves_no_worker(at, digits, tmp_path, monkeypatch):
    """Ctrl-C (a real SIGINT) after the loader's workers started and before the loop: as the
    model's build starts, or as the progress bar does (the writer started). The traceback kept
    held the workers (and the writer) until it was cleared; now they end, and a rerun computes
    every row."""
    import signal

    import fne.extraction.extract as fx

    sent = []

    def ctrl_c(real):
        def wrapped(*a, **k):
            if not sent:
                sent.append(1)
                os.kill(os.getpid(), signal.SIGINT)
            return real(*a, **k)
        return wrapped

    if at == "model":
        monkeypatch.setattr(fx.taps.TapRunner, "prepare", ctrl_c(fx.taps.TapRunner.prepare))
    else:
        monkeypatch.setattr(fx, "progress_bar", ctrl_c(fx.progress_bar))
    before = threads()
    cache = str(tmp_path / "c")
    kept(lambda: fne.extract(digits, cache=cache, batch_size=8, workers=2, progress=False, **FAST))
    assert sent and leftovers(before) == ([], set())
    assert fne.extract(digits, cache=cache, batch_size=8, workers=0, progress=False, **FAST).n_computed == 24
