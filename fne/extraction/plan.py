"""Which images one `fne extract` computes, and its turn among the processes computing the same.

`make_plan` keeps the images of this process's shard whose content has no row in the store yet (nor
an earlier run's record of being unreadable); `one_at_a_time` makes a second process that would
compute the same rows wait for the first, then compute only what it left.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from fne.cache.store import STORE_LOCK, Store
from fne.cache.store import lock_file as store_lock_file
from fne.data import shards, sidecar
from fne.data.dataset import Dataset
from fne.data.manifest import Manifest, known_keys, manifest_for
from fne.progress import progress_line


@dataclass
class Plan:
    """Which images this process reads: those of its shard without a known, stored row."""

    todo: list[int]
    members: list[int]
    known: list[str | None]
    manifest: Manifest | None
    unreadable: int = 0  # distinct known contents recorded unreadable earlier (not in `todo`)


def make_plan(dataset: Dataset, store: Store, shard: tuple[int, int] | None, cache, retry_bad: bool,
              progress: bool = True) -> Plan:
    """The images of `shard` (None: all) of `dataset` to read into `store`.

    Parameters
    ----------
    dataset : Dataset
        DATA, listed.
    store : Store
        The store receiving the rows; its index and its record of unreadable contents are read.
    shard : (int, int) or None
        This process's shard (I, N).
    cache : str or None
        The cache whose manifests know the contents of files met before.
    retry_bad : bool
        Forget the contents recorded unreadable first, so that they are read again.
    progress : bool
        Say how many that forgets.

    Returns
    -------
    Plan
        Each image whose content is unknown, or known and neither stored nor recorded unreadable
        (one image per content).
    """
    members = shards.members(dataset, shard)
    manifest = manifest_for(dataset, cache)
    if dataset._keys is not None or dataset.array_source is not None:
        known: list[str | None] = list(dataset.keys())
    else:
        known = known_keys(dataset, manifest)
    if retry_bad:
        n = store.forget_bad(known[i] for i in members if known[i] is not None)
        progress_line(f"fne extract: {n} image(s) recorded as unreadable will be read again", progress, stderr=True)
    index, bad = store.index(), store.bad()
    todo, taken, unreadable = [], set(), set()
    for i in members:
        k = known[i]
        if k is None:
            todo.append(i)  # unknown content: the reader hashes it
        elif k in bad:
            unreadable.add(k)
        elif k not in index and k not in taken:
            taken.add(k)
            todo.append(i)
    return Plan(todo, members, known, manifest, len(unreadable))


def lock_file(store: Store, dataset: Dataset, shard: tuple[int, int] | None) -> Path:
    """The lock of (store, DATA, shard), in the cache's `locks/` folder: `<store>--<DATA>-all.lock`
    for the whole DATA, `<store>--<DATA>-<I>of<N>.lock` for a shard (<DATA> a hash of its root and size;
    the root with its links resolved, so that a user who reaches the folder through a link takes turns too)."""
    root = os.path.realpath(dataset.root) if dataset.root else dataset.name
    data = hashlib.blake2b(f"{root}\0{len(dataset)}".encode(), digest_size=8).hexdigest()
    return store_lock_file(store, f"{data}-{'all' if shard is None else f'{shard[0]}of{shard[1]}'}")


def _overlapping(store: Store, dataset: Dataset, shard: tuple[int, int] | None) -> list[Path]:
    """The lock files of other extractions of the same DATA into `store` whose images this one's
    include: every shard's for the whole DATA, the whole DATA's for a shard."""
    if shard is not None:
        return [lock_file(store, dataset, None)]
    whole = lock_file(store, dataset, None)
    return sorted(whole.parent.glob(f"{glob.escape(whole.name.removesuffix('all.lock'))}*of*.lock"))


@contextlib.contextmanager
def one_at_a_time(store: Store, dataset: Dataset, shard: tuple[int, int] | None, progress: bool = True):
    """`lock_file`'s lock (a local cache; none at a URL), held while this process computes rows;
    -> whether it waited for another process. Before taking it, it waits for the extractions of
    the same DATA whose images overlap (`_overlapping`: `fne fit --extract` while the shards of a
    job array run), so that no row is computed twice. The wait is a progress line (`progress`:
    `progress_line`'s `enabled`). Around both it holds the store's lock shared (`STORE_LOCK`):
    `fne cache rm` of the store is refused meanwhile, and one under way (a rename: a moment) is
    waited for, after which the caller sees the store removed (`fne.cache.store.removed`)."""
    if store.url is not None:
        yield False
        return

    def say() -> None:
        progress_line(f"fne extract: another process is computing rows of {dataset.name} into {store.path.name}; "
                      f"waiting for it, then computing only what it leaves", progress, stderr=True)

    waited = False
    # the store's lock first, as `fne cache rm` takes it: its removal waits for this one's, or this for its
    with sidecar.locked(store_lock_file(store, STORE_LOCK), process=True, shared=True):
        for other in _overlapping(store, dataset, shard):
            waited = sidecar.wait_for(other, on_wait=None if waited else say) or waited
        with sidecar.locked(lock_file(store, dataset, shard), on_wait=None if waited else say, process=True) as w:
            yield waited or w
