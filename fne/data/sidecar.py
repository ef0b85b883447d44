"""JSON files that several processes merge into: manifests and container listings.

Ranks of one job (and users running two commands) save the keys they hashed into the same
file. A save reads the file, merges its own entries and replaces the file; the read-merge-write
holds an exclusive lock on a sibling `<name>.lock`, so that no process's entries are lost to
another's concurrent replace. Where locking is unavailable (no `fcntl`, a read-only folder)
the merge runs unlocked: at worst a concurrent save drops entries, which only costs hashing
those files again on a later run.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def merge_json(path: Path, merge: Callable[[dict | None], dict]) -> dict:
    """Replace the JSON document at `path` with `merge(current)` under the file's lock.

    `current` is None when the file is missing or unreadable. The new document is written to a
    temporary name and renamed into place, so readers see the old file or the new one whole.
    Returns the document written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        try:
            current = json.loads(path.read_text())
        except (OSError, ValueError):
            current = None
        doc = merge(current)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return doc
