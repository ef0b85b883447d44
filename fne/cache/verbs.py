"""`fne cache info / verify / rm` as Python functions: `fne.cache_info`, `fne.cache_verify` and
`fne.cache_rm` return what the commands print (the CLI only formats it).

Their keywords are the commands' options, declared in fne.options: ``cache`` (StoreOptions'),
``label_key`` (DataOptions', for DATA given to `cache_info`), ``clean`` and ``dry_run``
(CacheOptions). Nothing heavy is imported: no torch, no scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from fne.cache import upkeep
from fne.cache.fs import files_at, is_url
from fne.cache.spec import earlier_fne_pixels
from fne.cache.store import Store, cache_root, list_stores, no_such_root, read_records
from fne.cache.upkeep import Findings
from fne.errors import CacheError, FneError, expect_path
from fne.option_handling import keywords, resolve
from fne.options import CacheOptions, DataOptions, StoreOptions

# The keywords of each function, declared in fne.options (the CLI adds the same as its options).
INFO_OPTIONS, VERIFY_OPTIONS, RM_OPTIONS = ("cache", "label_key"), ("cache", "clean"), ("cache", "dry_run")


@dataclass
class StoreInfo:
    """One store of the cache, as `fne cache info` lists it.

    Attributes
    ----------
    name, path : str
        The store's folder name (what `cache_rm` takes) and its full path or URL.
    arch, weights, preprocess, precision, dtype : str
        What its rows are: the backbone, the weights' fingerprint, the preprocessing, the
        forward pass's precision and the stored dtype.
    rows, bad, parts : int
        Distinct rows held, images recorded unreadable, committed parts.
    size_bytes : int
        Bytes on disk.
    data_cached, data_unreadable : int or None
        With DATA given: how many of its distinct images this store holds, and how many it
        records as unreadable; None otherwise.
    weights_files : list of str
        For weights read from a file (``weights`` ``file-…``): the file(s), by absolute path, that
        its extractions read, as their records name them (records written before fne kept it name none).
    unreadable : str or None
        Why its store.json cannot be read (damaged, or a later fne's format), for a store that
        `cache_rm` removes whole; what it holds is then unknown ("?", 0 rows), but its size.
    earlier : bool
        Its rows are of pixels an earlier fne made (`fne.cache.spec.earlier_fne_pixels`): no
        command reads them now, and `cache_rm` frees their space.
    """

    name: str
    path: str
    arch: str
    weights: str
    preprocess: str
    precision: str
    dtype: str
    rows: int
    bad: int
    parts: int
    size_bytes: int
    data_cached: int | None = None
    data_unreadable: int | None = None
    unreadable: str | None = None
    weights_files: list[str] = field(default_factory=list)
    earlier: bool = False


@dataclass
class CacheInfo:
    """What `cache_info` found: the cache root, its stores, and DATA's name and distinct images
    when DATA was given (else None)."""

    root: str
    stores: list[StoreInfo] = field(default_factory=list)
    data: str | None = None
    data_images: int | None = None
    exists: bool = True  # False: a local root that is no folder (a mistyped --cache), DATA then not read
    shuffled_copies: list[str] = field(default_factory=list)  # Parquet and HDF5 files' copies for `fne train`
    shuffled_bytes: int = 0  # their size


@dataclass
class StoreCheck:
    """One store checked by `cache_verify`: its name and path, what `fne.cache.upkeep.verify`
    found, and what ``clean`` did (unfinished parts removed, damaged parts quarantined)."""

    name: str
    path: str
    findings: Findings
    removed: int = 0
    quarantined: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.findings.ok


@dataclass
class CacheCheck:
    """What `cache_verify` found: the cache root and each store's `StoreCheck`; `ok` when every
    store is sound."""

    root: str
    stores: list[StoreCheck] = field(default_factory=list)
    removals_finished: list[str] = field(default_factory=list)  # ``clean``: what stopped removals left, deleted

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stores)


@dataclass
class CacheRemoval:
    """What `cache_rm` removed (or, with ``dry_run``, would remove): each store's name, rows and
    size in bytes, in the cache root `root`."""

    root: str
    stores: list[StoreInfo] = field(default_factory=list)
    dry_run: bool = False

    @property
    def freed_bytes(self) -> int:
        return sum(s.size_bytes for s in self.stores)


def _info(s: Store) -> StoreInfo:
    m = s.meta
    files = [] if not str(m["weights"]).startswith("file-") else \
        list(dict.fromkeys(r["weights_file"] for r in read_records(s) if isinstance(r.get("weights_file"), str)))
    return StoreInfo(name=s.path.name, path=str(s.path), arch=m["arch"], weights=m["weights"],
                     preprocess=m["preprocess"], precision=m["precision"], dtype=m["dtype"], rows=len(s),
                     bad=len(s.bad()), parts=len(s.parts()), size_bytes=s.size_bytes(), weights_files=files,
                     earlier=earlier_fne_pixels(m["preprocess"]))


@keywords(StoreOptions, DataOptions, only=INFO_OPTIONS)
def cache_info(data: str | Path | None = None, **options) -> CacheInfo:
    """The stores of a cache (`fne cache info`), and how many of DATA's images each holds.

    Parameters
    ----------
    data : str or Path, optional
        DATA whose images to look up in each store (content keys: the manifest's, hashing only
        files it does not know yet; unreadable files are left out).
    label_key : str, optional
        Where tar shards' or Parquet DATA's labels are (the label member, a .json field, a
        column): an unlabelled image is left out of DATA.

    Returns
    -------
    CacheInfo
        The root, one `StoreInfo` per store, DATA's name and number of distinct images, and
        the copies of Parquet and HDF5 files `fne train` reads shuffled (`shuffled_copies`, their size
        `shuffled_bytes`: deleting them frees it; `fne train` makes them again). A
        local root that is no folder (`exists` False: a mistyped cache) has no stores, and DATA
        is then not read, so that no folder is made there.

    Raises
    ------
    DataError
        DATA is given and cannot be listed.
    """
    store_o, data_o = resolve(options, StoreOptions, DataOptions, only=INFO_OPTIONS)
    root = cache_root(store_o.cache)
    info = CacheInfo(root=str(root), exists=not no_such_root(root))
    keys = None
    if data is not None and info.exists:  # else no store to look in, and no manifest to make there
        from fne.data.datasets import load_dataset
        from fne.data.manifest import attach_keys

        dataset = attach_keys(load_dataset(data, label_key=data_o.label_key, cache=store_o.cache), store_o.cache,
                              skip_unreadable=True)
        keys = set(dataset.keys())
        info.data, info.data_images = dataset.name, len(keys)
    if info.exists:
        from fne.data.containers import shuffled_dir

        folder = shuffled_dir(store_o.cache)
        for c in sorted([*folder.glob("*.arrow"), *folder.glob("*.npy")]):  # Parquet's, HDF5's
            try:
                info.shuffled_bytes += c.stat().st_size
                info.shuffled_copies.append(str(c))
            except OSError:
                pass  # removed meanwhile
    for s in list_stores(store_o.cache):
        info.stores.append(_info(s))
        if keys is not None:
            info.stores[-1].data_cached = len(keys & s.index().keys())
            info.stores[-1].data_unreadable = len(keys & s.bad().keys())
    return info


@keywords(StoreOptions, CacheOptions, only=VERIFY_OPTIONS)
def cache_verify(store: str | Path | None = None, **options) -> CacheCheck:
    """Read every committed part of the cache's stores whole and report what is wrong
    (`fne cache verify`); changes nothing unless ``clean``.

    Parameters
    ----------
    store : str or Path, optional
        One store: its name in the cache (as `cache_info` lists it, as `cache_rm` takes it) or its
        folder; default: every store of the cache.
    clean : bool, default False
        First remove the unfinished parts of interrupted runs (live writers' are spared) and what
        removals that stopped part-way left (`fne.cache.upkeep.finish_removals`), and move damaged
        parts to quarantine/ (a later `fne extract` recomputes their rows).

    Returns
    -------
    CacheCheck
        One `StoreCheck` per store (``ok`` when sound; a store whose store.json cannot be read,
        damaged or of a later fne, first, with that one problem); ``ok`` when every store is.

    Raises
    ------
    CacheError
        ``store`` is no store folder (no store.json), or names no store of the cache.
    """
    store_o, cache_o = resolve(options, StoreOptions, CacheOptions, only=VERIFY_OPTIONS)
    if store is not None:
        expect_path(store, "store")
        store = _store_named(store, cache_root(store_o.cache))
    unreadable: dict[str, CacheError] = {}
    stores = [Store.at(store)] if store is not None else list_stores(store_o.cache, unreadable)
    found = CacheCheck(root=str(cache_root(store_o.cache)))
    if cache_o.clean and store is None and not is_url(cache_root(store_o.cache)):
        found.removals_finished = upkeep.finish_removals(cache_root(store_o.cache))
    for name, e in unreadable.items():  # no rows can be read, nothing to clean
        found.stores.append(StoreCheck(name, f"{found.root}/{name}", Findings(problems=[str(e)])))
    for s in stores:
        removed, quarantined = 0, []
        if cache_o.clean:
            removed = upkeep.clean(s)
            quarantined = upkeep.quarantine(s, upkeep.verify(s).damaged)
        found.stores.append(StoreCheck(s.path.name, str(s.path), upkeep.verify(s), removed, quarantined))
    return found


def _store_named(store: str | Path, root) -> str | Path:
    """The store `store` names: a store folder, else (a bare name, as `fne cache info` lists it)
    the cache's store of that name; CacheError for a name no store of the cache has."""
    text = str(store)
    if Path(text).expanduser().exists() or is_url(text) or "/" in text or "\\" in text:
        return store
    named = f"{root}/{text}" if is_url(root) else Path(root) / text
    if files_at(named).exists("store.json"):
        return named
    raise CacheError(f"no store in {root} is named {text!r} and no folder {text} is here (`fne cache info` lists "
                     f"the stores)")


@keywords(StoreOptions, CacheOptions, only=RM_OPTIONS)
def cache_rm(stores: str | Path | list[str | Path] | tuple[str | Path, ...], **options) -> CacheRemoval:
    """Remove whole stores from the cache (`fne cache rm`): every row of a backbone, weights,
    preprocessing and precision.

    Parameters
    ----------
    stores : str or Path, or a list or tuple of them
        Store names as `cache_info` lists them (`StoreInfo.name`), or shell patterns
        (``"vgg16__random*"``); one string is one name.

    Returns
    -------
    CacheRemoval
        The stores removed (or that would be), with their rows and sizes; ``freed_bytes``.

    Raises
    ------
    FneError
        A name that matches no store (with ``dry_run`` too: a typo shows before the real
        removal), or a store a running extraction writes to: nothing is removed.
    """
    store_o, cache_o = resolve(options, StoreOptions, CacheOptions, only=RM_OPTIONS)
    patterns = [stores] if isinstance(stores, (str, Path)) else list(stores) if isinstance(stores, (list, tuple)) else []
    if not patterns or not all(isinstance(p, (str, Path)) for p in patterns):
        raise TypeError(f"stores: expected a store name or a list of them, got {stores!r}")
    root, unreadable = cache_root(store_o.cache), {}
    found: dict[str, Store | Path] = {s.path.name: s for s in list_stores(store_o.cache, unreadable)}
    if not is_url(root):  # a local store whose store.json cannot be read is removed as a folder
        found.update((name, root / name) for name in unreadable)
    chosen: dict[str, Store | Path] = {}
    for pattern in map(str, patterns):
        matched = {name: s for name, s in found.items() if fnmatchcase(name, pattern)}
        if not matched:
            raise FneError(f"no store in {root} is named {pattern!r} (`fne cache info` lists them)")
        chosen.update(matched)
    for s in chosen.values() if not cache_o.dry_run else ():  # before any is removed: all of them or none
        upkeep.check_idle(s)
    if not cache_o.dry_run and not is_url(root):
        upkeep.finish_removals(root)  # of an interrupted `fne cache rm`
    removal = CacheRemoval(root=str(root), dry_run=cache_o.dry_run)
    for name, s in sorted(chosen.items()):
        try:
            removal.stores.append(_info(s) if isinstance(s, Store) else _unreadable_info(s, unreadable[name]))
            if not cache_o.dry_run:
                upkeep.remove(s)
        except (CacheError, FileNotFoundError):
            path = getattr(s, "path", s)
            if isinstance(path, Path) and not path.exists():  # not damaged: gone since it was listed
                raise FneError(f"{name}: another process removed it while this one was (another `fne cache rm` "
                               f"of it?); nothing of it is left") from None
            raise
    return removal


def _unreadable_info(path: Path, why: CacheError) -> StoreInfo:
    """A local store whose store.json cannot be read: its name, path and size on disk."""
    return StoreInfo(name=path.name, path=str(path), arch="?", weights="?", preprocess="?", precision="?",
                     dtype="?", rows=0, bad=0, parts=0, size_bytes=files_at(path).size(), unreadable=str(why))
