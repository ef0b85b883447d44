"""Activation cache: one zarr store per (arch, weights, preprocessing, precision, storage dtype).

A store is append-only. Each commit writes a complete *part* (the rows' content keys and
their values, see `fne.cache.parts`) out of readers' sight and then commits it (see
`fne.cache.fs`), so a reader sees a part whole or not at all: a killed writer leaves only an
unfinished part, and two writers never touch the same files. Rows are found by content key;
if two writers computed the same image, the first committed part wins. A store may live in a
local folder or at an fsspec URL (`s3://…`). Upkeep (verify, clean, quarantine) is in
`fne.cache.upkeep`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fne.cache import parts
from fne.cache.fs import (
    COMMITTED,
    LocalFiles,
    Url,
    UrlFiles,
    file_in_the_way,
    file_url_folder,
    files_at,
    in_the_way,
    is_url,
    writer_name,
)
from fne.errors import CacheError
from fne.option_handling import named, refusal

__all__ = ["COMMITTED", "FORMAT", "Store", "StoreKey", "Url", "cache_root", "default_cache",
           "is_url", "list_stores", "local_root"]

FORMAT = 2  # 2: one `rows` array per part; 1 (read, and upgraded on the first write): one array per tap
READS = (1, 2)
_CHECKOUT = Path(__file__).resolve().parents[2]  # the project folder when run from a checkout
LOCKS = "locks"  # the cache's folder of lock files (`Store.lock_file`)


def default_cache() -> Path:
    """The project's cache/ folder when fne runs from its checkout (as today), else the user's
    cache directory (~/.cache/fne on Linux): never inside site-packages."""
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "cache").is_dir() \
            and "site-packages" not in _CHECKOUT.parts:
        return _CHECKOUT / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir("fne", appauthor=False))


def cache_root(cache: str | Path | None = None) -> Path | Url:
    """--cache, else $FNE_CACHE, else `default_cache()`. fsspec URLs stay as given.

    A local root (a file:// URL's included) that a file stands in the way of, or a URL that no
    fsspec filesystem installed here opens (`foo://`, `s3://` without s3fs), is a CacheError
    naming where it was given, before anything is read or written."""
    given = "--cache"
    if cache is None:
        cache, given = os.environ.get("FNE_CACHE") or None, "$FNE_CACHE"
    if cache is None:
        return default_cache()
    if not str(cache).strip():  # an unset shell variable (`--cache $CACHE`): not the current folder
        raise refusal(lambda py: f"{named('cache', py, str(cache))}: is empty; give the cache folder, or leave it out "
                                 f"for $FNE_CACHE or the default cache", CacheError)
    if (folder := file_url_folder(cache)) is not None:  # the folder, whichever way it is given
        root = local = folder
    elif is_url(cache):
        root, local = Url(str(cache)), None
    else:
        root = local = Path(cache).expanduser()
    where = _no_filesystem(root) if is_url(root) else None  # not a folder's fault
    blocker = file_in_the_way(local) if local is not None and where is None else None
    if blocker is not None:
        where = ("is a file, not a folder" if blocker == local and blocker.is_file() else in_the_way(blocker)) + \
            " (the cache is a folder of stores)"
    elif where is None and local is not None and (local / "store.json").is_file():  # extract's `store:` line, copied
        where = f"is one store of a cache, not a cache: give the folder holding it, {local.parent} (the cache is " \
                f"a folder of stores)"
    if where is None:
        return root
    raise refusal(lambda py: f"{named('cache', py, str(cache)) if given == '--cache' else f'$FNE_CACHE {cache}'}: "
                             f"{where}", CacheError)


def _no_filesystem(url: str) -> str | None:
    """Why fsspec has no filesystem for `url` (a chained one's protocols each), said before the
    first store opens it (fsspec's own ValueError / ImportError was a traceback); None where it has."""
    try:
        import fsspec
    except ImportError:
        return "a cache at a URL needs fsspec: pip install 'fsspec>=2024.12' (and the filesystem's package)"
    for part in url.split("::"):
        protocol = part.split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            return (f"fsspec knows no filesystem {protocol}:// (a typo?); give a folder or a URL such as "
                    f"s3://bucket/cache, gs://..., memory://..., file://...")
        except ImportError as e:  # a known protocol whose package is missing: fsspec names it (s3fs)
            return f"{protocol}:// needs a package this Python lacks: {e}"
    return None


def no_such_root(root: Path | Url) -> bool:
    """Whether `root` (`cache_root`'s) is a local folder that does not exist: a cache nothing has
    been written to, or a mistyped --cache, which reads must neither search nor make."""
    return not is_url(root) and not root.is_dir()


def local_root(cache: str | Path | None = None) -> Path:
    """The local folder for what is kept beside the stores (container listings, folder manifests,
    `hf:` downloads): the cache root, or `default_cache()` for a URL cache."""
    root = cache_root(cache)
    return default_cache() if isinstance(root, Url) else root


@dataclass(frozen=True)
class StoreKey:
    """What a store's rows are: its folder is named after these five fields."""

    arch: str
    weights: str  # fingerprint
    preprocess: str  # e.g. center224
    precision: str
    dtype: str

    @property
    def dirname(self) -> str:
        """The store's folder name: a file name on every system (`timm:NAME` as `timm+NAME`, since
        Windows takes no ':' in a name)."""
        return self._name(self.arch.replace(":", "+"))

    @property
    def posix_dirname(self) -> str:
        """The folder name fne gave a `timm:` store before: read where such a store exists."""
        return self._name(self.arch)

    def _name(self, arch: str) -> str:
        return f"{arch}__{self.weights}__{self.preprocess}__{self.precision}__{self.dtype}"


def _folder(root, key: StoreKey):
    """The folder of `key`'s store under `root`: `key.dirname`, or the name an earlier fne gave a
    `timm:` store (`key.posix_dirname`) where only that store exists."""
    new = root / key.dirname
    if key.posix_dirname == key.dirname or os.name == "nt" or Store(new, {}).exists("store.json"):
        return new
    earlier = root / key.posix_dirname
    return earlier if Store(earlier, {}).exists("store.json") else new


def _meta(key: StoreKey, taps: list[tuple[str, int]], views: int) -> dict:
    """store.json of a new store: what its rows are, and each tap's column range in a part."""
    return {"format": FORMAT, "arch": key.arch, "weights": key.weights, "preprocess": key.preprocess,
            "precision": key.precision, "dtype": key.dtype, "views": views, "taps": [[n, c] for n, c in taps],
            "columns": {n: list(lo_hi) for n, lo_hi in parts.columns(taps).items()}}


def _damaged(path: object, part: str, e: Exception) -> CacheError:
    return CacheError(f"part {part} of {path} is damaged ({e}); run `fne cache verify --clean` "
                      f"to move it aside, then `fne extract` recomputes its rows")


def _by_part(index: dict[str, tuple[str, int]], keys: list[str], where: object) -> dict[str, np.ndarray]:
    """part -> (positions in keys, rows in the part) of `keys`, which must all be stored."""
    absent = [k for k in keys if k not in index]
    if absent:
        raise CacheError(f"{where}: {len(absent)} requested rows are not stored")
    by_part: dict[str, list[tuple[int, int]]] = {}
    for pos, (part, row) in enumerate(index[k] for k in keys):
        by_part.setdefault(part, []).append((pos, row))
    return {part: np.array(pairs).T for part, pairs in by_part.items()}


def _same_rows(old: dict, new: dict) -> bool:
    """Whether a format-1 store.json describes the rows `new` does (so that it can be upgraded)."""
    drop = ("format", "columns")
    return {k: v for k, v in old.items() if k not in drop} == {k: v for k, v in new.items() if k not in drop}


def _other_rows(old: dict, new: dict, path: object) -> CacheError:
    """What a store whose rows are not `new`'s says; when only its layers differ (made by an fne
    that found other taps in the same backbone), what to do."""
    drop = ("format", "columns", "taps")
    if {k: v for k, v in old.items() if k not in drop} != {k: v for k, v in new.items() if k not in drop}:
        return CacheError(f"{path}/store.json describes other rows than asked for: {old} vs {new}")
    was, now = [t[0] for t in old.get("taps", [])], [t[0] for t in new["taps"]]
    gone, added = [n for n in was if n not in now], [n for n in now if n not in was]
    diff = "; ".join(f"{what} {', '.join(names[:4])}{' ...' * (len(names) > 4)}"
                     for what, names in (("drops", gone), ("adds", added)) if names) or "other channels"
    return CacheError(f"{path} holds the layers an earlier fne tapped in {new['arch']} (this one {diff}); "
                      f"move that folder aside and run `fne extract` again")


class Store:
    """A folder or fsspec URL (`s3://…`) of committed parts plus `store.json` (what the rows
    mean, `meta`). Made by `Store.open` (by key) or `Store.at` (an existing store's folder)."""

    def __init__(self, path: str | Path, meta: dict):  # noqa: D107
        self.files: LocalFiles | UrlFiles = files_at(path)
        self.url: Url | None = self.files.url  # the fsspec URL; None for a local store
        self.path: Path | Url = self.files.path
        self.meta = meta
        self._index: dict[str, tuple[str, int]] | None = None
        self._layouts: dict[str, str] = {}
        self._bad: dict[str, str] | None = None
        self._unwritten: dict | None = None  # store.json to write before the first write (see `open`)

    def exists(self, rel: str) -> bool:
        return self.files.exists(rel)

    def write_json(self, rel: str, obj) -> None:
        """Write `rel` whole (atomic rename locally, one object write on a URL store)."""
        self._materialise()
        self.files.write_json(rel, obj)

    def _materialise(self) -> None:
        """Before the first write: make the store (see `open`), anew where it was `removed`, or upgrade a format-1 one."""
        if self._unwritten is not None or removed(self):  # never a part in a folder without store.json
            meta, self._unwritten = self._unwritten or self.meta, None
            for d in ("parts", "bad", "records"):
                self.files.makedirs(d)
            self.files.write_json("store.json", meta)  # concurrent writers: the same file, renamed
            self.meta = meta

    def read_json(self, rel: str):
        return self.files.read_json(rel)

    @classmethod
    def open(cls, root: str | Path | None, key: StoreKey, taps: list[tuple[str, int]], views: int) -> Store:
        """The store of `key` under `root`. Nothing is written here: an absent store holds no rows
        and is made by its first write, so a run that fails before its first row (weights that
        cannot be loaded, an interrupt) leaves no empty store behind."""
        meta = _meta(key, taps, views)
        store = cls(_folder(cache_root(root), key), meta)
        if not store.exists("store.json"):
            store._unwritten = meta
            return store
        found = cls.at(store.path)
        if found.meta != meta:
            if not _same_rows(found.meta, meta):
                raise _other_rows(found.meta, meta, store.path)
            found._unwritten = meta  # a format-1 store: its parts stay readable, its first write upgrades it
        return found

    @classmethod
    def at(cls, path: str | Path) -> Store:
        """The store at `path`, which must exist."""
        store = cls(path, {})
        try:
            meta = store.read_json("store.json")
        except (FileNotFoundError, NotADirectoryError):  # no such folder, or a file
            raise CacheError(f"{store.path} is not a cache store (no store.json)") from None
        except ValueError as e:
            raise CacheError(f"{store.path}/store.json is damaged: {e}; none of the store's rows can be read without it: "
                             f"remove the store (`fne cache rm {store.path.name}`), `fne extract` computes them again") from None
        if meta.get("format") not in READS:
            raise CacheError(f"{store.path}: store format {meta.get('format')} (this fne reads "
                             f"{', '.join(map(str, READS))})")
        store.meta = meta
        return store

    @property
    def taps(self) -> list[tuple[str, int]]:
        return [(n, int(c)) for n, c in self.meta["taps"]]

    @property
    def views(self) -> int:
        return int(self.meta["views"])

    def parts(self) -> list[Path | Url]:
        """Committed parts, oldest first (names start with their commit time)."""
        return [self.path / "parts" / n for n in self.files.committed()]

    def refresh(self) -> None:
        self._index, self._bad = None, None

    def index(self) -> dict[str, tuple[str, int]]:
        """content key -> (part, row) of every committed row (the first part wins)."""
        if self._index is None:
            index: dict[str, tuple[str, int]] = {}
            for name in self.files.committed():
                try:
                    keys, self._layouts[name] = parts.read_keys(self.files.zarr_store(f"parts/{name}/keys"))
                except parts.Damaged as e:
                    raise _damaged(self.path, name, e) from None
                for row, k in enumerate(keys):
                    index.setdefault(k, (name, row))
            self._index = index
        return self._index

    def bad(self) -> dict[str, str]:
        """Content keys recorded as undecodable, with the reason."""
        if self._bad is None:
            bad: dict[str, str] = {}
            for rel in self.files.list_json("bad"):
                bad.update(self.read_json(rel))
            self._bad = bad
        return self._bad

    def __len__(self) -> int:
        return len(self.index())

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys with neither a row nor a bad-image record, in first-seen order, deduplicated."""
        index, bad = self.index(), self.bad()
        seen, out = set(), []
        for k in keys:
            if k not in index and k not in bad and k not in seen:
                seen.add(k)
                out.append(k)
        return out

    def commit(self, keys: list[str], arrays: dict[str, np.ndarray] | np.ndarray,
               bad: dict[str, str] | None = None) -> str:
        """Write one part atomically; returns its name.

        `arrays` is {tap: (N, V, C)} or one (N, V, D) array of every tap side by side. A failed
        write (a full disk) removes its unfinished part, so that it frees what it took.
        """
        name = writer_name()
        self._materialise()
        if keys:
            rows = parts.side_by_side(arrays, len(keys), self.views, self.taps, self.meta["dtype"], self.path)
            rel = self.files.part_rel(name)
            try:
                parts.write(self.files.zarr_store(rel), keys, rows)
            except BaseException:
                self.files.remove(rel)
                raise
            self.files.commit_part(name, len(keys))
        if bad:
            self.write_json(f"bad/{name}.json", bad)
        self.refresh()
        return name

    def forget_bad(self, keys: Iterable[str]) -> int:
        """Drop the bad-image records of `keys` (read again after a transient failure); -> how many images had one."""
        keys, dropped = set(keys), set()
        for rel in self.files.list_json("bad"):
            recs = self.read_json(rel)
            gone = recs.keys() & keys
            if gone:
                dropped |= gone
                self.write_json(rel, {k: v for k, v in recs.items() if k not in gone})
        self._bad = None
        return len(dropped)

    def record(self, record: dict) -> str:  # one run's record: records/<time>-<pid>.json; -> that path
        return self.write_json(rel := f"records/{time.time_ns():020d}-{os.getpid()}.json", record) or rel

    def records(self) -> list[dict]:  # every run's record, oldest first (a damaged one left out: `read_records`)
        return read_records(self)

    def read_part(self, name: str, layers: list[str]) -> np.ndarray:
        """Every row of part `name`, `layers` side by side, in the storage dtype; raises `parts.Damaged`."""
        if name not in self._layouts:
            self._layouts[name] = parts.read_keys(self.files.zarr_store(f"parts/{name}/keys"))[1]
        cols = {n: tuple(lo_hi) for n, lo_hi in self.meta.get("columns", {}).items()} or parts.columns(self.taps)
        return parts.read(lambda a: parts.open_array(self.files.zarr_store(f"parts/{name}/{a}")),
                          self._layouts[name], cols, layers)

    def read_rows(self, keys: list[str], layers: list[str]) -> np.ndarray:
        """Rows for `keys`, `layers` side by side.

        Parameters
        ----------
        keys, layers : list of str
            Content keys (all stored: a CacheError says how many are not), tap names.

        Returns
        -------
        ndarray
            float32 (len(keys), views, sum of the layers' widths).
        """
        out = np.empty((len(keys), self.views, sum(dict(self.taps)[la] for la in layers)), dtype=np.float32)
        for part, (pos, rows) in _by_part(self.index(), keys, self.path).items():
            try:
                block = self.read_part(part, layers)
            except parts.Damaged as e:
                raise _damaged(self.path, part, e) from None
            parts.place(out, pos, block, rows)
        return out

    def read(self, keys: list[str], layers: list[str]) -> dict[str, np.ndarray]:
        """Rows for `keys` (all must be present) as float32 arrays {layer: (len(keys), views, C)}."""
        x, dims, lo = self.read_rows(keys, layers), dict(self.taps), 0
        out = {}
        for la in layers:
            out[la], lo = x[:, :, lo:lo + dims[la]], lo + dims[la]
        return out

    def size_bytes(self) -> int:
        return self.files.size()


def removed(store: Store) -> bool:
    """Whether another process removed the local store `store` (`fne cache rm`) since it was opened
    or written: its store.json is gone. Such a removal waits for no extraction that has opened the
    store but not yet taken its lock (`fne.extraction.plan.one_at_a_time`): its next write makes
    the store anew (`Store._materialise`), so that no read and no `fne cache verify` misses its rows."""
    return store.url is None and store._unwritten is None and not store.exists("store.json")


def read_records(store: Store) -> list[dict]:
    """`store`'s run records (`Store.record`), oldest first; one that cannot be read or holds no
    JSON object (damaged, edited by hand) is left out, with a warning naming it (several: one
    warning, counting them and naming the first few, `fne.progress.first_few`)."""
    from fne.progress import first_few

    out, bad = [], []
    for rel in store.files.list_json("records"):
        try:
            rec = store.read_json(rel)
        except (OSError, ValueError) as e:
            rec = e
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad.append((rel, rec if isinstance(rec, Exception) else f"holds a {type(rec).__name__}, not a JSON object"))
    if len(bad) == 1:
        warnings.warn(f"record {store.path}/{bad[0][0]} left out: {bad[0][1]}", stacklevel=3)
    elif bad:
        warnings.warn(f"{len(bad)} records of store {store.path} left out (no JSON object in them: cut short, damaged "
                      f"or edited by hand): {first_few([f'{rel} ({why})' for rel, why in bad])}", stacklevel=3)
    return out


def lock_file(store: Store | Path, what: str) -> Path:
    """The lock file `what` of `store`, a Store or a local store's folder (one per DATA and shard,
    held while a process computes rows: `fne.extraction.extract`; `STORE_LOCK`), in the cache's
    `locks/` folder."""
    path = getattr(store, "path", store)
    return path.parent / LOCKS / f"{path.name}--{what}.lock"


# `lock_file(store, STORE_LOCK)`: each extraction computing rows holds it shared, and `fne cache rm`
# alone (`fne.cache.upkeep.remove`), so that no extraction plans from the rows of a store being removed.
STORE_LOCK = "store"


def lock_files(store: Store | Path) -> list[Path]:
    """The lock files that exist of `store`, a Store or a local store's folder (none for a URL store)."""
    if isinstance(store, Store):
        if store.url is not None:
            return []
        store = store.path
    return sorted((store.parent / LOCKS).glob(f"{store.name}--*.lock"))


def list_stores(root: str | Path | None = None, unreadable: dict[str, CacheError] | None = None) -> list[Store]:
    """The readable stores under the cache root (see `cache_root`). A store whose store.json
    cannot be read (damaged, or a later fne's format) is left out: its CacheError goes into
    `unreadable`, by folder name, where given, else into a warning naming it."""
    files = files_at(cache_root(root))
    out = []
    for name in sorted(n for n, is_dir in files.names("") if is_dir and not n.startswith(".")):
        if files.exists(f"{name}/store.json"):
            try:
                out.append(Store.at(files.path / name))
            except CacheError as e:
                if unreadable is None:
                    warnings.warn(f"store {name} left out: {e}", stacklevel=2)
                else:
                    unreadable[name] = e
    return out
