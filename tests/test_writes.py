"""Files written whole (`fne.cache.fs.replace_files`): files written together are all old or all
new whatever fails among the renames, and what a killed writer left beside its output is removed
by the next write in that folder, never a live writer's."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from fne.cache import fs

NAMES = ("predictions.csv", "model.joblib", "metrics.json")


def _folder(tmp_path: Path, before: bool) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    if before:
        for n in NAMES:
            (run / n).write_text(f"old {n}")
    return run


def _new(run: Path) -> dict:
    """Writers of every file of NAMES in `run`: "new NAME"."""
    return {run / n: partial(lambda n, f: f.write_text(f"new {n}"), n) for n in NAMES}


def _state(run: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in run.iterdir()}


def _fail_at(monkeypatch, k: int, error: BaseException, once: bool = True) -> None:
    """os.replace raises `error` at its (k+1)-th call (and every later one unless `once`)."""
    real, calls = os.replace, []

    def replace(a, b):
        calls.append(b)
        if len(calls) == k + 1 or (not once and len(calls) > k):
            raise error
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("before", [True, False], ids=["earlier run", "new folder"])
@pytest.mark.parametrize("error", [OSError(errno.EIO, "I/O error"), KeyboardInterrupt()], ids=["EIO", "Ctrl-C"])
@pytest.mark.parametrize("k", range(len(NAMES)))
def test_a_failure_among_the_renames_leaves_the_earlier_files_whole(tmp_path, monkeypatch, k, error, before):
    run = _folder(tmp_path, before)
    was = _state(run)
    _fail_at(monkeypatch, k, error)
    with pytest.raises(type(error)):
        fs.replace_files(_new(run))
    assert _state(run) == was  # every file as it was; no temporary file left


def test_without_hard_links_the_earlier_files_are_copied_and_put_back(tmp_path, monkeypatch):
    run = _folder(tmp_path, True)
    was = _state(run)
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "no links")))
    _fail_at(monkeypatch, 1, OSError(errno.EIO, "I/O error"))
    with pytest.raises(OSError, match="I/O error"):
        fs.replace_files({run / n: (lambda f: f.write_text("new")) for n in NAMES})
    assert _state(run) == was


@pytest.mark.parametrize("k", range(len(NAMES)))
def test_renames_that_keep_failing_leave_no_metrics_beside_a_mix(tmp_path, monkeypatch, k):
    """Where not even the earlier files can be put back, the last file (metrics.json) is absent:
    no reader takes the folder for a run; no temporary file is left."""
    run = _folder(tmp_path, True)
    _fail_at(monkeypatch, k, OSError(errno.EIO, "I/O error"), once=False)
    with pytest.raises(OSError):
        fs.replace_files({run / n: (lambda f: f.write_text("new")) for n in NAMES})
    assert sorted(_state(run)) == ["model.joblib", "predictions.csv"]


def test_written_together_without_failure_all_new(tmp_path):
    run = _folder(tmp_path, True)
    fs.replace_files(_new(run))
    assert _state(run) == {n: f"new {n}" for n in NAMES}


# A writer that stops inside its write (its temporary file half written), until killed.
_WRITER = """
import sys, time
from pathlib import Path
from fne.cache.fs import replace_file
def write(tmp):
    tmp.write_text("half")
    time.sleep(600)
replace_file(Path(sys.argv[1]), write)
"""


def _start_writer(path: Path) -> tuple[subprocess.Popen, Path]:
    """A writer of `path` stopped mid-write, and its temporary file (waited for, not slept on:
    until it holds what the writer wrote, not only created, which a loaded machine can catch)."""
    env = {**os.environ, "PYTHONPATH": str(Path(fs.__file__).parents[2])}
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], env=env)
    deadline = time.monotonic() + 120
    while not ((tmps := list(path.parent.glob(f".tmp-*-{p.pid}-*-{path.name}"))) and tmps[0].read_text() == "half"):
        assert p.poll() is None and time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.05)
    return p, tmps[0]


def test_the_next_write_removes_what_a_killed_writer_left_and_spares_a_live_ones(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead, dead_tmp = _start_writer(run / "model.pt")
    live, live_tmp = _start_writer(run / "metrics.json")
    try:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()
        assert dead_tmp.exists()  # kill -9: nothing of the writer ran after
        legacy, foreign = run / ".tmp-step.json", run / ".tmp-notes.txt"  # fne's earlier name; another program's
        for f in (legacy, foreign):
            f.write_text("x")
            os.utime(f, (0, 0))
        fs.write_json(run / "step.json", {"a": 1})
        assert not dead_tmp.exists() and not legacy.exists()
        assert live_tmp.read_text() == "half" and foreign.exists()  # a live writer's; not fne's
    finally:
        live.kill()
        live.wait()
    fs.write_json(run / "step.json", {"a": 2})
    assert sorted(p.name for p in run.iterdir()) == [".tmp-notes.txt", "step.json"]


def test_a_temporary_name_says_who_writes_it(tmp_path):
    tmp = fs.temp_path(tmp_path / "model.joblib")
    born, pid, host, _, name = tmp.name.removeprefix(".tmp-").split("-", 4)
    assert (int(pid), host, name) == (os.getpid(), fs.HOST, "model.joblib") and abs(int(born) - time.time_ns()) < 60e9
    assert fs.writer_alive(tmp.name)


# ------------------------------------------------------------------ a write the system refuses mid-file
def test_torch_save_refused_mid_file_is_the_oserror_and_the_earlier_file_stays(tmp_path, file_size_limit):
    """torch.save given a path says only `RuntimeError: ... unexpected pos` when the disk fills;
    through Python's file (`through_file`) it is the OSError the system gave, which the command
    line turns into one line, and the checkpoint written before is left whole."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1}, path)
    with file_size_limit, pytest.raises(OSError) as e:
        fs.replace_file(path, fs.through_file(lambda f: torch.save({"w": torch.zeros(100_000)}, f)))
    assert e.value.errno == errno.EFBIG and e.value.filename == str(path)
    assert torch.load(path, weights_only=True) == {"epoch": 1} and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_an_interrupt_inside_torch_save_is_raised_as_itself_and_the_earlier_file_stays(tmp_path):
    """SIGTERM (a `KeyboardInterrupt` from fne's handler) or Ctrl-C arriving while torch.save
    writes through Python's file: torch's zip writer then fails as it closes ("unexpected pos")
    over the interrupt; the interrupt is what is raised (the command says what it kept, exit
    143), and the checkpoint written before is left whole."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1}, path)

    class Interrupted:  # the file, until the signal's handler raises inside a write
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += 1
            if self.n == 3:
                raise KeyboardInterrupt
            return self.f.write(b)

        def flush(self):
            return self.f.flush()

    with pytest.raises(KeyboardInterrupt):
        fs.replace_file(path, fs.through_file(lambda f: torch.save({"w": torch.zeros(100_000)}, Interrupted(f))))
    assert torch.load(path, weights_only=True) == {"epoch": 1} and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_an_hdf5_file_refused_mid_file_is_one_oserror_not_a_crash(tmp_path, file_size_limit):
    """h5py given a refused write prints a traceback per object and crashes the interpreter as the
    file closes (SIGSEGV, h5py 3.16); `h5_writer` keeps HDF5 from seeing the refusal and raises it
    at the writer's next `check()`, where the later chunks are not written."""
    import numpy as np

    from fne.cache.h5file import h5_writer

    written = []

    def write(f, check):
        d = f.create_dataset("x", shape=(64, 32768), dtype="f4", compression="gzip", rdcc_nbytes=2 ** 16)  # past
        for i in range(0, 64, 8):  # its chunk cache: the refusal comes while writing, not at close
            d[i:i + 8] = np.random.default_rng(i).random((8, 32768))
            written.append(i)
            check()

    out = tmp_path / "e.h5"
    with file_size_limit, pytest.raises(OSError) as e:
        fs.replace_file(out, h5_writer(write))
    assert e.value.errno == errno.EFBIG and e.value.filename == str(out)
    assert len(written) < 8 and os.listdir(tmp_path) == []  # stopped early, no temporary file left


def test_an_hdf5_file_written_through_h5_writer_reads_back_whole(tmp_path):
    import h5py
    import numpy as np

    from fne.cache.h5file import h5_writer

    x = np.random.default_rng(0).random((300, 500)).astype("f4")
    fs.replace_file(tmp_path / "e.h5", h5_writer(lambda f, check: f.create_dataset("x", data=x, compression="gzip")))
    with h5py.File(tmp_path / "e.h5") as f:
        assert np.array_equal(f["x"][()], x)


@pytest.mark.parametrize("error, refused", [(errno.ENOSPC, False), (errno.EDQUOT, False), (errno.EROFS, True)])
def test_for_root_a_full_disk_is_writable_a_read_only_one_is_not(tmp_path, monkeypatch, error, refused):
    """root's probe (a folder made and removed) failing for want of room is no read-only folder:
    the write that meets the full disk says 'no space left on device', not 'is not writable'."""
    def probe(*a, **k):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(fs.os, "geteuid", lambda: 0, raising=False)
    monkeypatch.setattr(fs.tempfile, "mkdtemp", probe)
    assert fs.unwritable(tmp_path / "out") == (tmp_path if refused else None)
