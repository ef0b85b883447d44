"""A manifest per data root, kept in the cache: (relative path, size, mtime) -> content key.

Content keys make the cache independent of folders and file names, but computing them means
reading every byte. The manifest remembers each file's key with the size and modification
time it had when it was hashed, so an unchanged folder is only stat'ed: a file whose size or
mtime changed is hashed again. An entry is trusted only if the file was last modified more
than `RACY_NS` before it was hashed (a file rewritten within the same clock tick, at the same
size, could otherwise keep a stale key: git's "racily clean" rule).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fne.data import containers
from fne.data.dataset import Dataset, content_key
from fne.data.sidecar import merge_json
from fne.errors import DataError
from fne.progress import say_skipped

FORMAT = 1
RACY_NS = 2_000_000_000


def _local_dir(cache: str | Path | None) -> Path:
    """Manifests live beside the stores; a URL cache keeps them in the user's cache folder."""
    return containers.manifest_dir(cache)


class Manifest:
    """The (size, mtime_ns, key, hashed_at_ns) of every file seen under one data root."""

    PREFIX = ""  # of the file's name: kinds of keys do not share a file

    def __init__(self, root: str | Path, cache: str | Path | None = None):
        self.root = str(Path(root).resolve())
        # a root given through a symlink keys its files as the resolved root does: `fne extract
        # LINK` and `fne run` (which resolves DATA) share one manifest's entries, not two
        self.given = os.path.abspath(root)
        name = hashlib.blake2b(self.root.encode(), digest_size=10).hexdigest()
        self.path = _local_dir(cache) / f"{self.PREFIX}{name}.json"
        self.entries: dict[str, list] = {}
        self._new: dict[str, list] = {}
        self._moved: set[str] = set()  # older fne's keys of entries moved to their key now (`_keyed_before`)
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("format") == FORMAT and doc.get("root") == self.root:
                self.entries = doc["files"]
        except (OSError, ValueError, KeyError):
            pass  # no manifest yet, or a damaged one: every file is hashed again

    def rel(self, path: str | Path) -> str:
        p = os.path.abspath(path)
        for root in (self.root, self.given):  # the common cases, without relpath's per-call cost
            if p.startswith(prefix := root + os.sep):
                return p[len(prefix):]
        return os.path.relpath(p, self.root)

    def lookup(self, path: str | Path, st: os.stat_result) -> str | None:
        rel = self.rel(path)
        e = self.entries.get(rel)
        if e is None and self.given != self.root:
            e = self._keyed_before(path, rel)
        if e is None or e[0] != st.st_size or e[1] != st.st_mtime_ns or st.st_mtime_ns > e[3] - RACY_NS:
            return None
        return e[2]

    def _keyed_before(self, path: str | Path, rel: str) -> list | None:
        """The entry an older fne wrote for a file under a root given through a symlink, keyed by
        its path relative to the resolved root (``../link/a.jpg``), or None. Found, it moves to its
        key now (`rel`) at the next save: the file is not hashed again (reading all of DATA once
        more), and its old key does not stay beside it."""
        p = os.path.abspath(path)
        if not p.startswith(self.given + os.sep):
            return None
        old = os.path.relpath(p, self.root)
        e = self.entries.get(old)
        if e is not None and old != rel:
            self.entries[rel] = self._new[rel] = e
            self._moved.add(old)
        return e

    def add(self, path: str | Path, size: int, mtime_ns: int, key: str, hashed_at_ns: int) -> None:
        entry = [size, mtime_ns, key, hashed_at_ns]
        rel = self.rel(path)
        self.entries[rel] = self._new[rel] = entry

    def save(self) -> None:
        """Merge this process's entries into the file (other shards may have added theirs)."""
        if not self._new:
            return
        new, moved = self._new, self._moved

        def merge(doc: dict | None) -> dict:
            files = doc["files"] if doc and doc.get("format") == FORMAT and doc.get("root") == self.root else {}
            return {"format": FORMAT, "root": self.root,
                    "files": {**{k: v for k, v in files.items() if k not in moved}, **new}}

        try:
            on_disk = merge_json(self.path, merge)["files"]
        except OSError:
            return  # a read-only cache (a shared one, read by fit): the files are hashed again next time
        self.entries, self._new, self._moved = on_disk, {}, set()


class WeightsManifest(Manifest):
    """Weights files' fingerprints (`registry.file_fingerprint`) by folder, as a `Manifest` keeps
    images' content keys: an unchanged file is only stat'ed, not hashed again."""

    PREFIX = "weights-"


class ContainerManifest:
    """The manifest of tar / Parquet DATA: each container's remembered listing holds its members'
    keys, valid while the container keeps the (size, mtime) it was listed with."""

    def __init__(self, reader: containers.ContainerReader):
        self.listings = reader.listings

    def lookup(self, m: containers.Member, st: os.stat_result) -> str | None:
        listing = self.listings[m.container]
        if (listing.size, listing.mtime_ns) != (st.st_size, st.st_mtime_ns):
            return None
        return listing.keys.get(m.name)

    def add(self, m: containers.Member, size: int, mtime_ns: int, key: str, hashed_at_ns: int) -> None:
        listing = self.listings[m.container]
        if (listing.size, listing.mtime_ns) == (size, mtime_ns):  # else: changed since listed
            listing.keys[m.name] = key
            listing.dirty = True

    def save(self) -> None:
        for listing in self.listings.values():
            if listing.dirty:
                containers.save_listing(listing)


def manifest_for(dataset: Dataset, cache: str | Path | None) -> Manifest | ContainerManifest | None:
    """The manifest of a file dataset's root, or of its containers; None for array datasets."""
    if dataset.container is not None:
        return ContainerManifest(dataset.container)
    if dataset.array_source is not None or dataset.root is None:
        return None
    return Manifest(dataset.root, cache)


def known_keys(dataset: Dataset, manifest: Manifest | ContainerManifest | None) -> list[str | None]:
    """Each image's key from the manifest (a stat, no read), or None where it must be hashed. An
    empty manifest (a folder never extracted into this cache) knows none: no file is stat'ed
    (32,768 stats, ~0.1 s here, more on a network or sandboxed filesystem)."""
    if manifest is None or (isinstance(manifest, Manifest) and not manifest.entries):
        return [None] * len(dataset)
    stats = dataset.stats()
    return [manifest.lookup(p, st) for p, st in zip(dataset.sources, stats, strict=True)]


def attach_keys(dataset: Dataset, cache: str | Path | None, skip_unreadable: bool = False,
                save: bool = True) -> Dataset:
    """Fill `dataset.keys()` from the manifest, hashing only new or changed files.

    A file that cannot be read is a DataError; with `skip_unreadable` it is named in a warning
    and left out of the dataset returned instead (a sample that one bad file must not stop).
    Without `save` the manifest is read, not written (a verb that keeps nothing in the cache).
    """
    if dataset._keys is not None:
        return dataset
    manifest = manifest_for(dataset, cache)
    if manifest is None:
        return dataset
    keys, keep, unread = known_keys(dataset, manifest), [], []
    for i, k in enumerate(keys):
        if k is None:
            try:
                keys[i], (size, mtime_ns, now) = _hash(dataset, i)
            except OSError as e:
                if not skip_unreadable:
                    raise DataError(f"cannot read {dataset.ids[i] if dataset.container is not None else dataset.sources[i]}: "
                                    f"{e.strerror or e}") from e
                unread.append((dataset.ids[i], f"cannot read: {e.strerror or e}"))
                continue
            manifest.add(dataset.sources[i], size, mtime_ns, keys[i], now)
        keep.append(i)
    say_skipped(unread)
    if save:
        manifest.save()
    dataset._keys = keys
    return dataset if len(keep) == len(keys) else dataset.subset(keep)


def _hash(dataset: Dataset, i: int) -> tuple[str, tuple[int, int, int]]:
    """Item i's content key and the (size, mtime_ns, read at ns) the manifest records: its bytes
    read as the reader reads them (containers' members in order, each read front to back)."""
    data, stat = dataset.read_bytes(i)
    return content_key(data), stat
