"""JSON files that several processes merge into (manifests and container listings), and the
file locks that order them (also one extraction at a time of the same images into a store).

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

# The `locked(..., process=True)` locks this process holds (a count each: its threads may hold one
# together), which `held` answers without opening the file: closing it would release them.
_OWN: dict[str, int] = {}
_OWN_LOCK = threading.Lock()  # the count's read-modify-write, from threads leaving together


@contextlib.contextmanager
def locked(lockfile: Path, on_wait: Callable[[], None] | None = None, process: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on `lockfile` (made if absent) inside; -> whether another process
    held it first (`on_wait` is called before waiting for it). The lock ends with its process, so
    a killed holder leaves none behind. Where files cannot be locked (no `fcntl`, a read-only
    folder, a filesystem without locks) it runs unlocked.

    `process`: a POSIX record lock, which this process owns: the processes it forks (loader
    workers) do not inherit it, as they would a `flock` (held on, in a worker that outlives an
    error, it would stop this process's next attempt), and its own threads are not excluded."""
    if fcntl is None:
        yield False
        return
    lock = fcntl.lockf if process else fcntl.flock
    try:
        lockfile.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield False
        return
    try:
        try:
            lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except OSError as e:  # EAGAIN or EACCES: held by another process; else: no locks here
            waited = e.errno in (errno.EAGAIN, errno.EACCES)
            if waited:
                if on_wait is not None:
                    on_wait()
                lock(fd, fcntl.LOCK_EX)
        key = os.path.abspath(lockfile)
        if process:
            with _OWN_LOCK:
                _OWN[key] = _OWN.get(key, 0) + 1
        try:
            yield waited
        finally:
            if process:
                with _OWN_LOCK:
                    _OWN[key] -= 1
                    if not _OWN[key]:
                        del _OWN[key]
    finally:
        os.close(fd)  # closing releases the lock


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
