"""Two processes writing one run folder (`fne fit --out`, `fne train --out`, a `fne run` step) take
turns under the folder's lock (`fne.data.sidecar.one_run_at_a_time`), and the lock helper it rests
on: nested holders, a lock file its holder deletes. The other process is a real one holding the
lock; the turn is forced by what it prints and reads, never by timing. `fne train --resume`
under the lock: tests/test_train.py; `fne cache rm` against an extraction: tests/test_stores.py."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fne.data import sidecar
from fne.errors import FneError
from fne.linear.fit import fit

from .conftest import FAST, says_it_waits

# Another process holding the lock `argv[1]` as a run does (deleted as it ends), until told to end.
HOLD = """
import sys
from pathlib import Path
from fne.data.sidecar import locked
with locked(Path(sys.argv[1]), process=True, remove=True):
    print("held", flush=True)
    sys.stdin.readline()
"""

# Whether another process holds the lock `argv[1]`.
HELD = "import sys\nfrom pathlib import Path\nfrom fne.data.sidecar import held\nprint(held(Path(sys.argv[1])))"


def _holder(lockfile: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lockfile)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def _held_elsewhere(lockfile: Path) -> bool:
    out = subprocess.run([sys.executable, "-c", HELD, str(lockfile)], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_a_fit_into_a_folder_another_process_writes_waits_for_it_then_fits(warm_cache, digits_folder, tmp_path,
                                                                          capsys):
    """Two `fne fit` into one folder both computed, the last writer's files staying. The second now
    waits for the first (here: a process holding the folder's lock), saying so in one line, then
    fits; the lock file goes with the lock."""
    run, results, errors = tmp_path / "run", [], []
    holder = _holder(tmp_path / ".run.lock")
    try:
        worker = threading.Thread(target=lambda: _keep(errors, results, lambda: fit(
            digits_folder, run, cache=str(warm_cache), splits=1, progress=True, **FAST)))
        worker.start()
        says_it_waits(capsys, "the second fit", line=f"fne fit: another process is writing a run into {run}; "
                                                     "waiting for it to end, then fitting anew")
        assert worker.is_alive() and not run.exists()
    finally:
        holder.communicate("done\n", timeout=60)
    worker.join(timeout=300)
    assert errors == [] and results[0]["n_images"] == 24 and (run / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _keep(errors: list, results: list, call) -> None:
    try:
        results.append(call())
    except BaseException as e:  # noqa: BLE001 -- the test names it
        errors.append(e)


def test_a_failed_fit_leaves_neither_its_lock_nor_the_folders_made_for_it(digits_folder, tmp_path):
    """The lock file beside --out, and the folders above it the lock needed, go when the run fails
    before writing (here: rows not in the cache)."""
    with pytest.raises(FneError, match="fne extract"):
        fit(digits_folder, tmp_path / "a" / "b" / "run", cache=str(tmp_path / "cache"), progress=False, **FAST)
    assert not (tmp_path / "a").exists()


def test_a_lock_taken_inside_its_holder_is_held_until_the_outer_holder_leaves(tmp_path):
    """`fne run` holds a step's folder lock while the step's fit or train takes the same lock: the
    inner one leaving (closing its file would release the process's POSIX lock, and its `remove`
    delete the file) left the step unlocked while `fne run` still marked it done."""
    lock = tmp_path / ".step.lock"
    with sidecar.locked(lock, process=True) as waited:
        with sidecar.locked(lock, process=True, remove=True) as inner:
            assert not waited and not inner
        assert lock.exists() and _held_elsewhere(lock)
    assert lock.exists() and not _held_elsewhere(lock)  # the outer holder keeps its file


def test_one_waiting_on_a_lock_file_its_holder_deletes_locks_the_paths_new_file(tmp_path):
    """A run's lock file is deleted as the run ends (and `fne cache rm` deletes a store's): a
    process that waited on it got a lock on a file no longer there, while a third, finding none,
    made and locked a new one: both ran. The waiter now locks the path's file."""
    lock, said, inside = tmp_path / ".run.lock", threading.Event(), []
    holder = _holder(lock)

    def wait_then_check() -> None:
        with sidecar.locked(lock, on_wait=said.set, process=True) as waited:
            inside.append((waited, lock.exists(), _held_elsewhere(lock)))

    worker = threading.Thread(target=wait_then_check)
    try:
        worker.start()
        assert said.wait(timeout=60)
    finally:
        holder.communicate("done\n", timeout=60)
    worker.join(timeout=60)
    assert inside == [(True, True, True)]


def test_locked_without_waiting_is_busy_where_another_holds_it(tmp_path):
    lock = tmp_path / "x.lock"
    holder = _holder(lock)
    try:
        with pytest.raises(sidecar.Busy), sidecar.locked(lock, process=True, wait=False):
            pass
    finally:
        holder.communicate("done\n", timeout=60)
    with sidecar.locked(lock, process=True, wait=False) as waited:
        assert waited is False and sidecar.held(lock)


def test_a_fit_into_dot_takes_the_folders_lock_and_waits_for_its_holder(warm_cache, digits_folder, tmp_path,
                                                                         capsys, monkeypatch):
    """`fne fit --out .` ended in a ValueError traceback (the lock was named from the path's empty
    name), and `--out ..`'s lock was `....lock` in the current folder, not the folder's: a run
    into `.` now takes the lock a run naming the folder takes, and waits for its holder."""
    run, results, errors = tmp_path / "run", [], []
    run.mkdir()
    monkeypatch.chdir(run)
    holder = _holder(tmp_path / ".run.lock")
    try:
        worker = threading.Thread(target=lambda: _keep(errors, results, lambda: fit(
            digits_folder, ".", cache=str(warm_cache), splits=1, progress=True, **FAST)))
        worker.start()
        says_it_waits(capsys, "the fit into .", line="fne fit: another process is writing a run into .; waiting")
        assert worker.is_alive() and not (run / "metrics.json").exists()
    finally:
        holder.communicate("done\n", timeout=60)
    worker.join(timeout=300)
    assert errors == [] and (run / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_each_way_of_naming_a_run_folder_names_one_lock(tmp_path, monkeypatch):
    """`.`, `..`, `a/..`, a symlink to the folder and its path: one lock file beside the folder,
    as two runs into it must take turns whichever way each names it."""
    (tmp_path / "run" / "a").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "run")
    monkeypatch.chdir(tmp_path / "run" / "a")
    lock = tmp_path / ".run.lock"
    assert {sidecar.run_lock(Path(p)) for p in ("..", "../a/..", str(tmp_path / "link"), str(tmp_path / "run"))} == {lock}
    monkeypatch.chdir(tmp_path / "run")
    assert sidecar.run_lock(Path(".")) == lock
    assert sidecar.run_lock(Path("/")) == Path("/.fne-run.lock")  # nothing beside root: its lock in it


def test_a_run_folder_whose_lock_name_would_be_too_long_is_still_locked(tmp_path):
    """`.NAME.lock` is 6 bytes longer than NAME: for a folder named 250 bytes or more it could not
    be made (ENAMETOOLONG), and the run went unlocked. Its lock is now a shortened name that holds."""
    run = tmp_path / ("a" * 252)
    lock = sidecar.run_lock(run)
    assert lock.parent == tmp_path and len(lock.name) <= 255
    assert lock != sidecar.run_lock(tmp_path / ("a" * 251 + "b"))
    with sidecar.one_run_at_a_time(run, "fne fit", False, "fitting anew"):
        assert _held_elsewhere(lock)
    assert not lock.exists()


def test_a_run_folder_whose_lock_cannot_be_made_runs_unlocked(tmp_path, monkeypatch):
    """A folder it may write whose parent it may not (a mount point in a read-only folder): the
    lock file cannot be made, and the run goes on unlocked (as where files cannot be locked), not
    refused; the folders made for the lock go with it."""
    real_open, run = sidecar.os.open, tmp_path / "a" / "run"

    def refuse(path, *args, **kwargs):
        if str(path) == str(sidecar.run_lock(run)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(sidecar.os, "open", refuse)
    with sidecar.one_run_at_a_time(run, "fne fit", False, "fitting anew") as waited:
        assert waited is False and not sidecar.run_lock(run).exists()
    assert not (tmp_path / "a").exists()
