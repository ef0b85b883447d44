"""Store upkeep: verify (a function returning its findings), clean unfinished parts of writers
that are gone, and move damaged parts to quarantine/ where reads never look; and the removal of a
cache folder that a failed extraction made and left nothing of worth in."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fne.cache import parts
from fne.cache.fs import (
    LIVE_WRITER_SECONDS,
    TMP,
    clear_dead_temps,
    is_url,
    unwritable,
    writer_alive,
    writer_elsewhere,
)
from fne.cache.store import LOCKS, STORE_LOCK, Store, lock_files, no_such_root
from fne.cache.store import lock_file as store_lock_file
from fne.data import sidecar
from fne.errors import CacheError

QUARANTINE = "quarantine"  # damaged parts are moved here: never read, never deleted


@dataclass
class Findings:
    """What `verify` found in one store.

    Attributes
    ----------
    problems : list of str
        One line per problem; empty when the store is sound.
    damaged : list of str
        Names of the parts that could not be read (`quarantine` moves them aside).
    duplicates : int
        Rows stored twice (two writers computed the same image; reads use the first): harmless.
    leftovers : list of str
        Unfinished parts of interrupted (or running) writers: never read; `clean` removes them.
    rows : int
        Distinct rows held.
    """

    problems: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    duplicates: int = 0
    leftovers: list[str] = field(default_factory=list)
    rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_part(store: Store, name: str) -> tuple[list[str], list[str]]:
    """(content keys, problems) of one part; raises `parts.Damaged` when it cannot be read."""
    keys, _ = parts.read_keys(store.files.zarr_store(f"parts/{name}/keys"))
    n, problems = len(keys), []
    data, lo = store.read_part(name, [t for t, _ in store.taps]), 0
    for tap, c in store.taps:
        a, lo = data[:, :, lo:lo + c], lo + c
        if a.shape != (n, store.views, c):
            problems.append(f"part {name}: {tap} has shape {a.shape}, expected {(n, store.views, c)}")
        elif not np.isfinite(a).all():
            problems.append(f"part {name}: {tap} holds NaN or infinite values")
    return keys, problems


def verify(store: Store) -> Findings:
    """Read every committed part of `store` whole and report what is wrong; changes nothing.

    Parameters
    ----------
    store : Store
        The store to check.

    Returns
    -------
    Findings
        Problems (empty when sound), damaged parts, duplicate rows and unfinished parts.
    """
    found = Findings()
    seen: set[str] = set()
    for name in store.files.committed():
        try:
            keys, problems = _check_part(store, name)
        except parts.Damaged as e:  # report, keep checking the others
            found.problems.append(f"part {name}: unreadable ({e})")
            found.damaged.append(name)
            continue
        found.problems += problems
        for k in keys:
            if k in seen:
                found.duplicates += 1
            seen.add(k)
    found.rows = len(seen)
    found.leftovers = store.files.unfinished()
    return found


def clean(store: Store) -> int:
    """Remove what writers that are gone left in `store`: unfinished parts, and temporary files
    of its records (a local store's); returns how many. Those of live writers are spared
    (`fs.writer_alive`)."""
    unfinished = store.files.unfinished()
    left = [n for n in unfinished if not writer_alive(n)]
    _say_kept_elsewhere(store, [n for n in unfinished if n not in left])
    for name in left:
        store.files.remove(f"parts/{name}")
    kept = sorted(set(left) & set(store.files.unfinished()))  # a read-only cache: counted as removed, they were not
    if kept:
        where = unwritable(store.path / "parts") if store.url is None else None
        warnings.warn(f"{store.path}: {len(kept)} unfinished part(s) could not be deleted "
                      f"({f'{where} is not writable' if where else 'not every file of them'}: parts/{kept[0]}"
                      f"{', …' * (len(kept) > 1)}); they are never read", stacklevel=2)
    if store.url is not None:  # an object store's files are written in one request: no temporary ones
        return len(left) - len(kept)
    return len(left) - len(kept) + sum(clear_dead_temps(store.path / d) for d in ("", "bad", "records"))


def _say_kept_elsewhere(store: Store, spared: list[str]) -> None:
    """A warning per other host whose unfinished parts `clean` keeps (their writer may run on
    there: no pid can be asked about), naming them and how to delete them where it has ended (a
    node that died mid-commit), rather than a count with no way out for an hour."""
    hosts: dict[str, list[tuple[str, float]]] = {}
    for n in spared:
        if (found := writer_elsewhere(n)) is not None:
            hosts.setdefault(found[0], []).append((n, found[1]))
    for host, kept in hosts.items():
        where = f"{store.path}/parts" if store.url is None else f"{store.url}/parts"
        how = (f"rm -r {where}/{TMP}*-{host}-*" if store.url is None
               else f"delete {where}/{kept[0][0]}{' and the others' * (len(kept) > 1)}")
        warnings.warn(f"{len(kept)} unfinished part(s) written on another host (id {host}) "
                      f"{max(0, min(a for _, a in kept)) / 60:.0f} min ago are kept, as their writer may still run there "
                      f"({where}/{kept[0][0]}{', …' * (len(kept) > 1)}); --clean removes them once they are "
                      f"{LIVE_WRITER_SECONDS // 3600} hour old; if no extraction into this store runs on that host "
                      f"(a node that died), delete them now: {how}", stacklevel=3)


def quarantine(store: Store, damaged: list[str]) -> list[str]:
    """Move the parts named in `damaged` (from `verify`) to quarantine/, where reads never look
    (kept for inspection, not deleted); a later `fne extract` recomputes their rows.

    Returns
    -------
    list of str
        The parts moved.
    """
    for name in damaged:
        store.files.uncommit(name)
        store.files.move(f"parts/{name}", f"{QUARANTINE}/{name}")
    store.refresh()
    return list(damaged)


def check_idle(store: Store | Path) -> None:
    """CacheError when a running extraction holds one of `store`'s locks (it writes to the store);
    `store`: a Store, or a local store's folder (one whose store.json cannot be read)."""
    busy = [f for f in lock_files(store) if sidecar.held(f)]
    if busy:
        raise _busy(getattr(store, "path", store), busy[0])


def _busy(path: Path, lock: Path | str) -> CacheError:
    return CacheError(f"{path.name}: a running extraction is writing to it (lock {lock}); "
                      f"remove it when that run has ended")


def remove(store: Store | Path) -> None:
    """Delete the whole store `store` (its rows, bad-image records and lock files): a Store, or a
    local store's folder (one whose store.json cannot be read: `list_stores`' `unreadable`).

    A local store is first renamed to a hidden name in its cache, so that an interrupted removal
    leaves no half store that reads would take for whole (`list_stores` skips hidden folders, and
    the next removal finishes it). The store's locks are held from the check that no extraction
    runs to the rename (`STORE_LOCK` too, which every extraction holds shared): an extraction
    starting meanwhile waits, then finds the store gone, not rows about to go. None is waited
    for, so no two processes can wait on each other.

    Raises
    ------
    CacheError
        When a running extraction holds one of the store's locks; nothing is removed.
    """
    if isinstance(store, Store) and store.url is not None:
        check_idle(store)
        store.files.remove("store.json")  # first: what is left is no store
        store.files.remove("")
        return
    path = getattr(store, "path", store)
    trash = path.parent / f"{TRASH}{path.name}-{os.getpid()}"
    with contextlib.ExitStack() as held:
        try:
            for f in dict.fromkeys([store_lock_file(path, STORE_LOCK), *lock_files(path)]):
                held.enter_context(sidecar.locked(f, process=True, wait=False))
        except sidecar.Busy as e:
            raise _busy(path, e) from None
        os.replace(path, trash)
        for f in lock_files(path):
            f.unlink(missing_ok=True)  # held: one waiting on it locks the path's new file (`sidecar.locked`)
    err = _delete(trash)
    if err is not None:  # the store is gone (no reads see it); a part of its files stays for later
        warnings.warn(f"{path.name}: removed, but not every file of it could be deleted ({err.strerror or err}: "
                      f"{err.filename}); what is left, {trash}, is deleted by the next `fne cache rm`, `fne cache "
                      f"verify --clean` or extraction into this cache", stacklevel=2)
    if isinstance(store, Store):
        store.refresh()


TRASH = ".removing-"  # a folder renamed so for removal: never read, deleted whole where found


def _delete(trash: Path) -> OSError | None:
    """Delete the folder `trash` (renamed away for removal); -> the error that kept part of it,
    None when it is gone (files another process deleted meanwhile, finishing the same removal,
    are no error)."""
    for _ in range(3):
        try:
            shutil.rmtree(trash)
            return None
        except FileNotFoundError:  # another process deleting it too: go on with what is left
            if not os.path.lexists(trash):
                return None
        except OSError as e:
            return e
    return None if not os.path.lexists(trash) else OSError(f"{trash} could not be deleted")


def finish_removals(root: Path) -> list[str]:
    """Delete what removals that stopped part-way left for the local cache root `root`: stores
    renamed away by `remove` (in `root`), and a new cache renamed away by `remove_failed_new_cache`
    (beside `root`); -> the folders deleted whole (one that still cannot be is left, for next time)."""
    root = Path(root)
    left = [*root.glob(f"{TRASH}*"), *root.parent.glob(f"{glob.escape(TRASH + root.name)}-*")]
    return [str(p) for p in left if p.is_dir() and _delete(p) is None]


def remove_failed_new_cache(root: Path) -> bool:
    """Remove the cache folder `root`, made by a call that failed before its first row, where it
    holds only what such a call leaves: lock files that no running extraction holds (`locks/`) and
    the manifests of image folders and weights files (`manifests/`: hashes, computed again in
    the next run's single read of each file). Anything else (a store, so rows; a download,
    `hf/`; a container listing, costly to list again), a held lock or a manifest being saved
    keeps the folder as it is. -> whether it was removed.

    Another process that makes the same new cache meanwhile (an array job's ranks start together)
    either holds a lock, which keeps the folder, or is before its first lock, and then makes the
    folders it writes to again. It raises nothing (it runs as an error propagates): a folder it
    cannot read or move is kept."""
    try:
        if not root.is_dir() or {p.name for p in root.iterdir()} - {LOCKS, "manifests"}:
            return False
        files = [p for p in root.rglob("*") if not p.is_dir()]
        locks = [p for p in files if p.parent == root / LOCKS]
        manifests = [p for p in files if p.parent == root / "manifests"]
        if len(locks) + len(manifests) < len(files) or any(sidecar.held(p) for p in locks) \
                or any(sidecar.held(p, process=False) for p in manifests if p.suffix == ".lock"):
            return False
        trash = root.parent / f"{TRASH}{root.name}-{os.getpid()}"
        os.replace(root, trash)  # at once: no half-removed cache is ever seen
    except OSError:
        return False
    _delete(trash)  # what it cannot delete, the next extraction into this cache does (`finish_removals`)
    return True


@contextlib.contextmanager
def new_cache_removed_on_failure(root, applies: bool = True) -> Iterator[None]:
    """Inside, a failure (an error, a Ctrl-C) of a call that made the local cache folder `root`
    removes it again where it holds only what the call left (`remove_failed_new_cache`); a folder
    that was there before, or with `applies` False, is left as it is. On entering, with `applies`,
    what removals that stopped part-way left is deleted (`finish_removals`)."""
    new = applies and no_such_root(root)
    if applies and not is_url(root):
        with contextlib.suppress(OSError):  # a folder it cannot list: left for another time
            finish_removals(root)
    try:
        yield
    except BaseException:
        if new:
            remove_failed_new_cache(root)
        raise
