"""Ctrl-C and SIGTERM never raised inside the locks of the main thread's handoffs (fne.handoff).

A signal's handler runs in the main thread at the next bytecode, and one such moment is right
after `threading.Condition.__enter__` took its lock: the exception then leaves the lock taken,
and the next `put`, `get` or `set` on it blocks for ever (`fne extract` was once seen hung so,
its main and writer threads blocked on locks). These tests send the signal at exactly that moment: a Condition that
raises it (`signal.raise_signal`, so the handler in place runs as for a real one) once its lock
is taken.
"""

from __future__ import annotations

import signal
import threading
from concurrent.futures import Future

import numpy as np
import pytest

from fne.cache.store import Store, StoreKey
from fne.handoff import held, wait_event, wait_future


class _Tripping(threading.Condition):
    """A Condition that sends `signum` to the process once, just after its lock is taken."""

    def __init__(self, lock, signum: int = signal.SIGINT):
        super().__init__(lock)
        self.signum, self.armed = signum, True

    def __enter__(self):
        took = super().__enter__()
        if self.armed:
            self.armed = False
            signal.raise_signal(self.signum)
        return took


@pytest.fixture
def ctrl_c():
    """Python's own Ctrl-C handler in place (whatever the test runner set), restored after."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_signal_in_a_held_block_is_raised_as_it_ends(ctrl_c):
    came = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            signal.raise_signal(signal.SIGINT)
            came.append("after the signal")  # not raised inside the block
    assert came == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_held_sigterm_goes_to_fne_clis_handler(ctrl_c):
    from fne.cli import Terminated, _terminate

    before = signal.signal(signal.SIGTERM, _terminate)
    try:
        with pytest.raises(Terminated):
            with held():
                signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second SIGTERM ends the process
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_held_signal_that_was_ignored_stays_ignored():
    """SIGINT ignored (a shell's background job, nohup): held, then ignored as before."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with held():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_held_changes_nothing_off_the_main_thread():
    seen = []

    def run():
        with held():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [signal.getsignal(signal.SIGINT)]


def test_a_ctrl_c_as_an_event_is_waited_for_leaves_its_lock_free(ctrl_c):
    event = threading.Event()
    event._cond = _Tripping(threading.Lock())
    with pytest.raises(KeyboardInterrupt):
        wait_event(event)
    assert not event._cond._lock.locked()
    event.set()  # would block for ever on a lock left taken
    wait_event(event)


def test_a_ctrl_c_as_the_model_is_awaited_leaves_the_future_usable(ctrl_c):
    future = Future()
    future._condition = _Tripping(threading.Lock())
    with pytest.raises(KeyboardInterrupt):
        wait_future(future)
    assert not future._condition._lock.locked()
    future.set_result("model")  # the build thread's hand-over
    assert wait_future(future) == "model"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_the_writers_queue_still_ends_the_run_with_its_rows(tmp_path, ctrl_c, signum):
    """The signal comes as `Writer.put` has taken the queue's lock: the writer would then wait
    for ever for that lock, and `Writer.close` too. It is raised once the batch is queued, and
    close commits it."""
    from fne.cli import Terminated, _terminate
    from fne.extraction.writer import Writer

    before = signal.signal(signal.SIGTERM, _terminate)
    try:
        store = Store.open(str(tmp_path / "c"), StoreKey("a", "w", "p", "fp32", "float32"), [("t", 3)], 1)
        keys = [f"{i:032x}" for i in range(4)]
        w = Writer(store, chunk=100, taps=[("t", 3)])
        w.start()
        w.put(keys[:2], np.ones((2, 1, 3), np.float32), {})
        w.q.not_full = _Tripping(w.q.mutex, signum)
        with pytest.raises(Terminated if signum == signal.SIGTERM else KeyboardInterrupt) as stopped:
            w.put(keys[2:], np.ones((2, 1, 3), np.float32), {})
        assert not w.q.mutex.locked()
        w.close(stopped.value)  # as `_run`'s finally does: it commits what is queued
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not w.is_alive() and sorted(store.index()) == keys


def test_a_ctrl_c_as_the_handlers_are_set_back_leaves_neither_held(ctrl_c, monkeypatch):
    """A SIGINT handled right after its own handler is set back raises there; SIGTERM's is set
    back all the same (else every later SIGTERM would go to the held block's list, unheard)."""
    import fne.handoff as handoff

    real, sigterm_before = signal.signal, signal.getsignal(signal.SIGTERM)

    def setting(s, handler):
        old = real(s, handler)
        if s == signal.SIGINT and handler is signal.default_int_handler:  # the restore of SIGINT
            signal.raise_signal(signal.SIGINT)
        return old

    monkeypatch.setattr(handoff.signal, "signal", setting)
    with pytest.raises(KeyboardInterrupt):
        with held():
            pass
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is sigterm_before


def test_a_second_signal_in_a_held_block_is_raised_at_once(ctrl_c):
    """A handoff that never ends (a batch read from a mount that stopped answering) must not
    leave Ctrl-C unheard: the second one is raised where it lands, and nothing is raised twice."""
    came = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            signal.raise_signal(signal.SIGINT)
            came.append("after the first")
            signal.raise_signal(signal.SIGINT)
            came.append("after the second")
    assert came == ["after the first"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


_TRIPPED_CLI = """
import signal, sys
trips = {TRIPS}  # module -> the signal sent as its import begins (inside `import torch`)

class Trip:
    def find_spec(self, name, path, target=None):
        if name in trips:
            signal.raise_signal(trips.pop(name))

sys.meta_path.insert(0, Trip())
import fne.cli
code = fne.cli.main({ARGV})
print(code, "torch" in sys.modules, not trips)
"""


def _tripped(tmp_path, trips: dict[str, int], argv: list[str]):
    """`fne.cli.main(argv)` in a fresh process that sends itself each signal of `trips` as an
    import reaches that module -> the finished process (stdout's last line: main's status,
    whether torch ended imported, whether every signal was sent)."""
    import os
    import subprocess
    import sys

    script = _TRIPPED_CLI.replace("{TRIPS}", repr({m: int(s) for m, s in trips.items()})).replace("{ARGV}", repr(argv))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background job's SIG_IGN undone


def _tripped_cli(tmp_path, trips: dict[str, int], argv: list[str]) -> tuple[int, bool, list[str]]:
    """`_tripped`, which must end by itself -> (main's status, whether torch ended imported, stderr's lines)."""
    p = _tripped(tmp_path, trips, argv)
    assert p.returncode == 0, p.stderr[-2000:]
    code, whole, sent = p.stdout.split()[-3:]
    assert sent == "True", f"not every signal was sent: none of {sorted(trips)} was imported"
    return int(code), whole == "True", p.stderr.splitlines()


def test_a_ctrl_c_during_torchs_import_is_raised_once_it_is_done(tmp_path):
    """Raised inside torch's import, a KeyboardInterrupt can pass through its C++ initialisation,
    which aborts the process (exit 134, no line), or be swallowed by a module it imports: held, it
    stops the verb once torch is imported, with fne's one line."""
    code, whole, err = _tripped_cli(tmp_path, {"torch.nn": signal.SIGINT},
                                    ["extract", "digits", "--weights", "random", "--cache", str(tmp_path / "c")])
    assert (code, whole) == (130, True)
    assert err == ["fne extract: interrupted; the rows computed so far are committed to the cache; "
                   "rerun the same command to compute the rest"]
    assert not (tmp_path / "c").exists()


def test_a_sigterm_as_the_verbs_options_import_torch_ends_it_as_terminated(tmp_path):
    """`fne train` imports torch as its options are read: a SIGTERM then (a scheduler's) ends it
    with exit 143 and its line, not killed at once (its handler was set after the parse)."""
    code, whole, err = _tripped_cli(tmp_path, {"torch.nn": signal.SIGTERM},
                                    ["train", "digits", "--mode", "scratch", "--weights", "random",
                                     "--out", str(tmp_path / "run")])
    assert (code, whole) == (143, True)
    assert len(err) == 1 and err[0].startswith("fne train: terminated; nothing was kept: no epoch was saved yet")
    assert not (tmp_path / "run").exists()


def test_a_second_ctrl_c_during_torchs_import_ends_it_at_once(tmp_path):
    """The import is held for one signal only: a second one stops it where it is (the user who
    presses Ctrl-C twice does not wait for torch)."""
    code, whole, err = _tripped_cli(tmp_path, {"torch.nn": signal.SIGINT, "torch.optim": signal.SIGINT},
                                    ["extract", "digits", "--weights", "random", "--cache", str(tmp_path / "c")])
    assert (code, whole) == (130, False)
    assert err[-1].startswith("fne extract: interrupted;") and len(err) == 1


def _slow_writer(tmp_path, monkeypatch, chunk: int):
    """A writer on a new store whose commits wait for `go` (`committing` set as one begins) ->
    (store, writer, committing, go)."""
    from fne.extraction.writer import Writer

    store = Store.open(str(tmp_path / "c"), StoreKey("a", "w", "p", "fp32", "float32"), [("t", 3)], 1)
    committing, go, real = threading.Event(), threading.Event(), Writer._flush

    def slow(self):
        committing.set()
        go.wait(600)
        return real(self)

    monkeypatch.setattr(Writer, "_flush", slow)
    return store, Writer(store, chunk=chunk, taps=[("t", 3)]), committing, go


@pytest.mark.parametrize("again", [False, True])
def test_a_ctrl_c_as_the_writer_commits_waits_for_it_unless_it_is_the_second(tmp_path, ctrl_c, monkeypatch, again):
    """A Ctrl-C as `Writer.close` commits, the first one (the run had ended) is raised once the
    commit is done (the rows are kept); the second (`again`: the run was stopped by one, and
    `_run` closes the writer with it) stops the wait at once, the commit left to finish on its own."""
    import os

    from fne.extraction.writer import Writer

    from .conftest import main_thread_at, until

    store, w, committing, go = _slow_writer(tmp_path, monkeypatch, chunk=100)
    failed = []

    def press():
        try:
            until(committing.is_set, "the writer never began its commit")
            until(lambda: main_thread_at(Writer.close, "sent"), "the main thread never waited in Writer.close")
            os.kill(os.getpid(), signal.SIGINT)  # the commit blocks the wait
            if again:  # the test lets the commit go on once close has returned
                until(lambda: main_thread_at(Writer.close, "sent") is None, "Writer.close went on waiting", 120)
            else:
                until(lambda: main_thread_at(Writer.close, "interrupted") is not None,
                      "Writer.close never took the Ctrl-C")
                go.set()
        except AssertionError as e:
            failed.append(str(e))
            go.set()

    w.start()
    w.put(["0" * 32], np.ones((1, 1, 3), np.float32), {})
    first = KeyboardInterrupt() if again else None
    threading.Thread(target=press, daemon=True).start()
    with pytest.raises(KeyboardInterrupt) as e:
        w.close(first)
    assert not failed, failed
    assert e.value is not first and e.value is not None
    assert w.finished.is_set() is not again  # waited for, or left
    go.set()
    assert w.finished.wait(600) and sorted(store.index()) == ["0" * 32]


def test_a_ctrl_c_as_fne_fit_imports_torch_to_extract_is_raised_once_it_is_done(tmp_path):
    """`fne fit --extract` imports torch only once rows are missing (`fne.linear.features`): the
    Ctrl-C during that import is held as the command line's is, so the fit stops with its one line."""
    code, whole, err = _tripped_cli(tmp_path, {"torch.nn": signal.SIGINT},
                                    ["fit", "digits", "--extract", "--weights", "random", "--cache",
                                     str(tmp_path / "c"), "--out", str(tmp_path / "run")])
    assert (code, whole) == (130, True)
    assert len(err) == 1 and err[0].startswith("fne fit: interrupted"), err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_two_sigterms_during_torchs_import_end_the_process_as_sigterms_default_does(tmp_path):
    """The first SIGTERM is held over torch's import; a second one (a scheduler's, after its
    grace) ends the process as SIGTERM's default does, as `fne.cli`'s handler has the second one
    do: not a Terminated raised inside torch's C++ initialisation, which aborts (exit 134 and a
    dump of every extension module)."""
    p = _tripped(tmp_path, {"torch.nn": signal.SIGTERM, "torch.optim": signal.SIGTERM},
                 ["extract", "digits", "--weights", "random", "--cache", str(tmp_path / "c")])
    assert p.returncode == -signal.SIGTERM, p.stderr[-2000:]
    assert "terminate called" not in p.stderr and "Fatal Python error" not in p.stderr
    assert not (tmp_path / "c").exists()


def test_a_sigterm_as_the_backbones_library_is_imported_ends_the_command_as_terminated(tmp_path):
    """torchvision's import (a torchvision backbone named: `fne.backbones.zoo`) runs, through
    torch._dynamo and sympy, mpmath's ``try: import gmpy2 ... except: pass``: a SIGTERM raised
    there was swallowed and the command ran to its end (seen in the interrupt stress run, exit 0).
    Held over the import, it ends the command with exit 143 and its line."""
    code, whole, err = _tripped_cli(tmp_path, {"gmpy2": signal.SIGTERM},
                                    ["extract", "digits", "--arch", "resnet18", "--weights", "random",
                                     "--image-size", "32", "--cache", str(tmp_path / "c")])
    assert code == 143
    assert err == ["fne extract: terminated; the rows computed so far are committed to the cache; "
                   "rerun the same command to compute the rest"]


_TRIPPED_API = """
import signal, sys
from tests.conftest import FAST, write_digits

calls, came = [], []  # C functions being called; the SIGINTs the caller's own handler took

def profile(frame, event, arg):
    # SIGINT as Python code runs inside torch._C._c10d_init (torch's import, in C++ through
    # pybind11): raised there, the KeyboardInterrupt reaches C++, which aborts the process
    if event == "c_call":
        calls.append(getattr(arg, "__name__", ""))
    elif event in ("c_return", "c_exception") and calls:
        calls.pop()
    elif event == "call" and calls and calls[-1] == "_c10d_init":
        sys.setprofile(None)
        signal.raise_signal(signal.SIGINT)

def notebooks(signum, frame):  # the caller's own handler (a notebook kernel's), restored after
    came.append(signum)
    raise KeyboardInterrupt

import fne
signal.signal(signal.SIGINT, notebooks)
data = write_digits(__import__("pathlib").Path("d"), per_class=2, classes=2)
kw = dict(cache="c", progress=False, image_size=32, **FAST)
sys.setprofile(profile)
try:
    fne.extract(data, **kw)
except KeyboardInterrupt:
    print("KeyboardInterrupt", came, "torch" in sys.modules, signal.getsignal(signal.SIGINT) is notebooks)
else:
    print("not tripped")  # a torch without torch.distributed runs no _c10d_init
sys.setprofile(None)
print(fne.extract(data, **kw).n_computed)  # the next call, in the same process
"""


def test_a_ctrl_c_during_the_apis_import_of_torch_is_a_keyboardinterrupt_once_it_is_done(tmp_path):
    """The Python API imports torch at its first call (`fne.extract`, `fne.train`, `fne.load`): a
    Ctrl-C inside torch's C++ initialisation aborted the process (exit 134, "terminate called"; a
    notebook's kernel died). Held, it reaches the caller's own SIGINT handler once torch is
    imported (a KeyboardInterrupt, no exit), the handler is the caller's again, and the next call
    runs."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", _TRIPPED_API], capture_output=True,
                       text=True, timeout=600, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([root, *sys.path])})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "terminate called" not in p.stderr
    if p.stdout.startswith("not tripped"):
        pytest.skip("this torch has no torch.distributed: its import runs no Python inside _c10d_init")
    assert p.stdout.splitlines() == [f"KeyboardInterrupt [{int(signal.SIGINT)}] True True", "4"]


def test_a_second_ctrl_c_as_close_waits_for_room_in_the_writers_queue_leaves_no_writer_waiting(tmp_path, ctrl_c,
                                                                                               monkeypatch):
    """The queue full (the writer slow in a commit), `Writer.close` waits for room for its end
    mark; a second Ctrl-C then stops that wait, and the mark is never queued. The writer still
    commits every batch queued and ends (it was left waiting for ever on the queue, a notebook
    keeping the thread and the store open); the store is sound."""
    import os

    from fne.cache.upkeep import verify
    from fne.extraction.writer import Writer

    from .conftest import main_thread_at, until

    store, w, committing, go = _slow_writer(tmp_path, monkeypatch, chunk=1)
    failed = []

    def press():
        try:
            until(lambda: main_thread_at(Writer._put, "self") is w, "Writer.close never waited for room")
            os.kill(os.getpid(), signal.SIGINT)
        except AssertionError as e:
            failed.append(str(e))
            go.set()  # the commit goes on, close's wait ends: the test fails, it does not hang

    keys = [f"{i:032x}" for i in range(1 + w.q.maxsize)]
    w.start()
    w.put(keys[:1], np.ones((1, 1, 3), np.float32), {})
    until(committing.is_set, "the writer never began its commit")
    for k in keys[1:]:  # the queue full behind the commit
        w.put([k], np.ones((1, 1, 3), np.float32), {})
    threading.Thread(target=press, daemon=True).start()
    first = KeyboardInterrupt()  # the run was stopped by one: this one is the second
    with pytest.raises(KeyboardInterrupt) as e:
        w.close(first)
    assert not failed, failed
    assert e.value is not first
    go.set()
    assert w.finished.wait(120), "the writer was left waiting on its queue"
    w.join(120)
    assert not w.is_alive() and w.error is None
    assert sorted(store.index()) == keys and verify(store).ok


_AT_MAINS_FIRST_IMPORT = """
import signal, sys
import fne.cli

tripped = []

class Trip:  # SIGINT as `main` imports its first module, whichever it is
    def find_spec(self, name, path, target=None):
        if not tripped:
            tripped.append(name)
            signal.raise_signal(signal.SIGINT)

sys.meta_path.insert(0, Trip())
code = fne.cli.main({ARGV})
print(code, tripped)
"""


def test_a_ctrl_c_at_the_first_import_of_the_command_line_ends_it_with_its_line(tmp_path):
    """A Ctrl-C as the command line begins (`main` importing what it needs: `fne.handoff` and the
    logging, re and concurrent.futures it took, before its handlers were set) printed Python's
    KeyboardInterrupt traceback. `main` now holds it from its first line: the verb ends with
    its one line and 130. (Before `main`, the interpreter's start and `fne.cli`'s import, a few
    light modules, remain: tens of ms, benchmarks/RESULTS.md.)"""
    import os
    import subprocess
    import sys

    script = _AT_MAINS_FIRST_IMPORT.replace("{ARGV}", repr(["cache", "info", "--cache", str(tmp_path / "c")]))
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    code, tripped = p.stdout.split(maxsplit=1)
    assert code == "130" and tripped.strip() != "[]"
    assert p.stderr.splitlines() == ["fne cache: interrupted; rerun the same command"], p.stderr


def test_the_apis_verbs_are_imported_with_ctrl_c_held(monkeypatch):
    """Every verb and function of the API is imported through `fne.handoff.imported` (torch's import
    with them: `fne.extract`, `fne.train`, `fne.load`), and `fne.run` and `fne.advise`, whose calls
    import torch whatever they are given, import it there first, as the command line does."""
    import fne
    import fne.handoff

    names = []
    real = fne.handoff.imported
    monkeypatch.setattr(fne.handoff, "imported", lambda name: names.append(name) or real(name))
    assert fne.extract.extract and fne.train.train and fne.load and fne.cache_info
    assert names == ["fne.extraction.extract", "fne.training.train", "fne.loaded", "fne.cache.verbs"]
    names.clear()
    assert callable(fne.run) and callable(fne.advise)
    assert names == ["torch", "fne.pipeline.runner", "torch", "fne.reporting.advise"]
