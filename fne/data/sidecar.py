"""JSON files that several processes merge into (manifests and container listings), and the
file locks that order them (also one extraction at a time of the same images into a store, and
one run at a time into a run folder: `one_run_at_a_time`).

Ranks of one job (and users running two commands) save the keys they hashed into the same
file. A save reads the file, merges its own entries and replaces the file; the read-merge-write
holds an exclusive lock on a sibling `<name>.lock`, so that no process's entries are lost to
another's concurrent replace. Where locking is unavailable (no `fcntl`, a read-only folder)
the merge runs unlocked: at worst a concurrent save drops entries, which only costs hashing
those files again on a later run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from fne.cache.fs import replace_file

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

# The `locked(..., process=True)` locks this process holds: a count (its threads, or a caller and a
# call nested in it, may hold one together), the files open on it and whether the last to leave
# removes it. `held` answers from it without opening the file, and only the last holder closes
# the files: closing any file of a POSIX record lock releases the process's lock.
_OWN: dict[str, list] = {}
_OWN_LOCK = threading.Lock()  # the count's read-modify-write, from threads leaving together


class Busy(Exception):
    """`locked(..., wait=False)`: another process (or, with `process`, this one) holds the lock."""


@contextlib.contextmanager
def locked(lockfile: Path, on_wait: Callable[[], None] | None = None, process: bool = False, *,
           shared: bool = False, wait: bool = True, remove: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on `lockfile` (made if absent) inside; -> whether another process
    held it first (`on_wait` is called before waiting for it). The lock ends with its process, so
    a killed holder leaves none behind. Where files cannot be locked (no `fcntl`, a read-only
    folder, a filesystem without locks) it runs unlocked.

    `process`: a POSIX record lock, which this process owns: the processes it forks (loader
    workers) do not inherit it, as they would a `flock` (held on, in a worker that outlives an
    error, it would stop this process's next attempt), and its own threads are not excluded (a
    call nested in a holder's `with` holds it with it, and it ends as the last of them leaves).
    `shared`: a shared lock (with `process`), which excludes only exclusive ones. `wait` False:
    `Busy` instead of waiting (also where this process holds it). `remove`: the file is deleted
    as the lock ends (by the last holder, before it lets go), so that no lock file outlives its
    use; a process that waited on the deleted file locks the path's new one instead."""
    if fcntl is None:
        yield False
        return
    key = os.path.abspath(lockfile)
    if process:
        with _OWN_LOCK:
            if key in _OWN and not wait:
                raise Busy(lockfile)
            nested = key in _OWN
            if nested:
                _OWN[key][0] += 1
        if nested:
            try:
                yield False
            finally:
                _leave(key)
            return
    try:
        fd, waited = _acquire(lockfile, on_wait, process, shared, wait)
    except OSError:  # a folder it cannot write, a filesystem without locks
        yield False
        return
    if not process:
        try:
            yield waited
        finally:
            if remove:
                lockfile.unlink(missing_ok=True)
            os.close(fd)  # closing releases the lock
        return
    with _OWN_LOCK:
        _OWN.setdefault(key, [0, [], remove])
        _OWN[key][0] += 1
        _OWN[key][1].append(fd)
    try:
        yield waited
    finally:
        _leave(key)


def _acquire(lockfile: Path, on_wait: Callable[[], None] | None, process: bool, shared: bool,
             wait: bool) -> tuple[int, bool]:
    """(a file open on `lockfile`, locked; whether another process held it first). A lock taken
    on a file that is no longer the path's (its holder deleted it, `locked`'s `remove`, or `fne
    cache rm` did) is let go and the path's file locked instead. OSError: no lock can be had."""
    lock = fcntl.lockf if process else fcntl.flock
    kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    waited, tries = False, 0
    while True:
        lockfile.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # its folder removed meanwhile (`one_run_at_a_time` made it): made again
            tries += 1
            if tries < 10:
                continue
            raise
        try:
            try:
                lock(fd, kind | fcntl.LOCK_NB)
            except OSError as e:  # EAGAIN or EACCES: held by another process; else: no locks here
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not wait:
                    raise Busy(lockfile) from None
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                lock(fd, kind)
            mine = os.fstat(fd)
            try:
                now = os.stat(lockfile)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
            return fd, waited
        os.close(fd)


def _leave(key: str) -> None:
    """One holder of this process's `locked(key, process=True)` leaves; the last closes its files
    (deleting the lock file first where it was taken with `remove`)."""
    with _OWN_LOCK:
        _OWN[key][0] -= 1
        if _OWN[key][0]:
            return
        _, fds, remove = _OWN.pop(key)
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(key)
        for fd in fds:
            os.close(fd)


def held(lockfile: Path, process: bool = True) -> bool:
    """Whether a `locked(lockfile, process=process)` lock is held now: by another process, or with
    `process`, by a thread of this one (a POSIX record lock, which this process owns: it is not
    tried here, as closing the file would release it); False where the file is absent or files
    cannot be locked."""
    if fcntl is None:
        return False
    if process and os.path.abspath(lockfile) in _OWN:
        return True
    try:
        fd = os.open(lockfile, os.O_RDWR)
    except OSError:
        return False
    try:
        (fcntl.lockf if process else fcntl.flock)(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError as e:
        return e.errno in (errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)


def wait_for(lockfile: Path, on_wait: Callable[[], None] | None = None) -> bool:
    """Wait until no other process holds `lockfile`'s `locked(..., process=True)` lock, without
    keeping it; -> whether it waited (`on_wait` is called first). Returns at once where nobody
    holds it, the file is absent, or this process holds it (closing a file of its own lock would
    release that)."""
    if os.path.abspath(lockfile) in _OWN or not held(lockfile):
        return False
    with locked(lockfile, on_wait=on_wait, process=True) as waited:
        return waited


def merge_json(path: Path, merge: Callable[[dict | None], dict]) -> dict:
    """Replace the JSON document at `path` with `merge(current)` under the file's lock.

    `current` is None when the file is missing or unreadable. The new document is written to a
    temporary name and renamed into place, so readers see the old file or the new one whole.
    Returns the document written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.with_name(path.name + ".lock")):
        try:
            current = json.loads(path.read_text())
        except (OSError, ValueError):
            current = None
        doc = merge(current)
        replace_file(path, lambda tmp: tmp.write_text(json.dumps(doc)))
    return doc


def run_lock(folder: Path) -> Path:
    """The lock file of the run folder `folder`: `.<name>.lock` beside it, named from its real
    path, so that each way of writing one folder (``.``, ``..``, ``a/..``, a symlink to it) names
    one lock; a name too long for a lock's own (NAME_MAX: 255 bytes) is shortened with a hash of
    it. Root, with nothing beside it, holds its lock in itself."""
    real = Path(os.path.realpath(folder))
    if not real.name:
        return real / ".fne-run.lock"
    name = f".{real.name}.lock"
    if len(os.fsencode(name)) > 255:
        digest = hashlib.sha256(os.fsencode(real.name)).hexdigest()[:16]
        name = f".{os.fsencode(real.name)[:200].decode(errors='ignore')}-{digest}.lock"
    return real.with_name(name)


@contextlib.contextmanager
def one_run_at_a_time(out: Path, verb: str, progress: bool, then: str) -> Iterator[bool]:
    """The lock of the run folder `out` (`run_lock`, as `fne run` locks a step's folder), held
    while `verb` (``"fne fit"``) computes and writes a run there; -> whether it
    waited for another process, which it says in a progress line ending in `then` (what it does
    once the other has ended). Two runs into one folder one after the other, not side by side:
    the second acts on what the first left (`fne train --resume` resumes from its checkpoint).
    The lock file goes with the lock, and so do the folders above `out` made for it."""
    from fne.progress import progress_line

    lockfile = run_lock(out)
    made = [p for p in (lockfile.parent, *lockfile.parent.parents) if not p.exists()]  # the nearest first

    def say() -> None:
        progress_line(f"{verb}: another process is writing a run into {out}; waiting for it to end, then {then}",
                      progress, stderr=True)

    try:
        with locked(lockfile, on_wait=say, process=True, remove=True) as waited:
            yield waited
    finally:
        for folder in made:  # left where the run wrote into them (or another run's lock is there)
            with contextlib.suppress(OSError):
                folder.rmdir()
