"""Activation cache: one zarr store per (arch, weights, preprocessing, precision, storage dtype).

A store is append-only. Each commit writes a complete *part* (a zarr group with the rows'
content keys and one N×V×C array per tap) under a temporary name and renames it into place,
so a reader sees a part whole or not at all: a killed writer leaves only a `.tmp-*` folder,
and two writers never touch the same files. Rows are found by content key; if two writers
computed the same image, the first committed part wins. A store may also live at an fsspec
URL (`s3://…`); having no rename there, a part is committed by a marker object written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from fne.errors import CacheError

FORMAT = 1
_CHECKOUT = Path(__file__).resolve().parents[2]  # the project folder when run from a checkout


def default_cache() -> Path:
    """The project's cache/ folder when fne runs from its checkout (as today), else the user's
    cache directory (~/.cache/fne on Linux): never inside site-packages."""
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "cache").is_dir() \
            and "site-packages" not in _CHECKOUT.parts:
        return _CHECKOUT / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir("fne", appauthor=False))


def is_url(root: object) -> bool:
    return isinstance(root, str) and "://" in root


class Url(str):
    """A store location given as an fsspec URL: printable, with `name` and `/` like a Path."""

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    def __truediv__(self, other: str) -> Url:
        return Url(f"{self.rstrip('/')}/{other}")


def cache_root(cache: str | Path | None = None) -> Path | Url:
    """--cache, else $FNE_CACHE, else `default_cache()`. fsspec URLs stay as given."""
    if cache is None:
        cache = os.environ.get("FNE_CACHE") or None
    if cache is None:
        return default_cache()
    if is_url(cache):
        return Url(str(cache))
    return Path(cache).expanduser()


@dataclass(frozen=True)
class StoreKey:
    arch: str
    weights: str  # fingerprint
    preprocess: str  # e.g. center224
    precision: str
    dtype: str

    @property
    def dirname(self) -> str:
        return f"{self.arch}__{self.weights}__{self.preprocess}__{self.precision}__{self.dtype}"


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _key_bytes(keys: list[str]) -> np.ndarray:
    return np.frombuffer(b"".join(bytes.fromhex(k) for k in keys), dtype=np.uint8).reshape(len(keys), 16)


def _key_strings(arr: np.ndarray) -> list[str]:
    return [bytes(row).hex() for row in arr]


COMMITTED = ".committed"  # suffix of the marker that commits a part of a URL store
QUARANTINE = "quarantine"  # damaged parts are moved here by `clean()`: never read, never deleted
# A part's name is <time_ns>-<pid>-<host>-<random>: an unfinished part whose writer is alive on
# this host is spared by `clean()`; one from another host, while younger than this.
LIVE_WRITER_SECONDS = 3600
HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


def writer_alive(name: str, now_ns: int | None = None) -> bool:
    """Whether the writer of the unfinished part `name` may still be running."""
    fields = name.removeprefix(".tmp-").split("-")
    try:
        born, pid = int(fields[0]), int(fields[1])
    except (IndexError, ValueError):
        return False
    if len(fields) == 4 and fields[2] == HOST:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
        return True
    return (now_ns or time.time_ns()) - born < LIVE_WRITER_SECONDS * 1_000_000_000


class _Fs:
    """The file operations a store needs, on an fsspec filesystem (URL stores)."""

    def __init__(self, url: str):
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(url)
        if isinstance(self.fs, fsspec.implementations.local.LocalFileSystem) and not self.fs.auto_mkdir:
            self.fs, self.root = fsspec.core.url_to_fs(url, auto_mkdir=True)  # file:// as on object stores
        self.root = self.root.rstrip("/")
        self._afs = None

    def p(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def zarr_store(self, rel: str):
        """An async view of the filesystem for zarr (FsspecStore needs one)."""
        if self._afs is None:
            if self.fs.async_impl:
                self._afs = type(self.fs)(**{**self.fs.storage_options, "asynchronous": True})
            else:
                from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

                self._afs = AsyncFileSystemWrapper(self.fs, asynchronous=True)
        return zarr.storage.FsspecStore(self._afs, path=self.p(rel))

    def names(self, rel: str) -> list[tuple[str, bool]]:
        """(name, is_dir) of the entries directly under rel; empty if there is none."""
        self.fs.invalidate_cache(self.p(rel))  # other writers commit meanwhile (s3fs caches listings)
        try:
            entries = self.fs.ls(self.p(rel), detail=True)
        except FileNotFoundError:
            return []
        return [(e["name"].rstrip("/").rsplit("/", 1)[-1], e.get("type") == "directory") for e in entries]


class Store:
    """A directory of committed parts plus `store.json` (what the rows mean).

    The directory is a local path or an fsspec URL (`s3://…`, `memory://…`). Object stores
    have no atomic rename, so there a part is written under its final name and committed by a
    small `parts/<name>.committed` object written last; readers see only committed parts.
    """

    def __init__(self, path: str | Path, meta: dict):
        # `path` prints the location either way; `url` is the fsspec URL (None for local stores).
        self.url: Url | None = Url(str(path)) if is_url(path) else None
        self.path: Path | Url = self.url if self.url is not None else Path(path)
        self._fs = _Fs(self.url) if self.url is not None else None
        self.meta = meta
        self._index: dict[str, tuple[str, int]] | None = None
        self._bad: dict[str, str] | None = None
        self.duplicates = 0
        self.leftovers: list[str] = []
        self.damaged: list[str] = []  # parts `verify()` could not read

    # ------------------------------------------------------------ files
    def exists(self, rel: str) -> bool:
        if self._fs:
            self._fs.fs.invalidate_cache(self._fs.p(rel).rsplit("/", 1)[0])
            return self._fs.fs.exists(self._fs.p(rel))
        return (self.path / rel).exists()

    def write_json(self, rel: str, obj) -> None:
        """Write `rel` whole: tmp + rename locally (atomic on POSIX and shared filesystems);
        one single-object write on a URL store (object stores never show a partial object)."""
        if self._fs:
            self._fs.fs.pipe_file(self._fs.p(rel), json.dumps(obj, indent=1).encode())
            return
        path = self.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(path, obj)

    def read_json(self, rel: str):
        if self._fs:
            return json.loads(self._fs.fs.cat_file(self._fs.p(rel)))
        return json.loads((self.path / rel).read_text())

    def list_json(self, reldir: str) -> list[str]:
        """Relative paths of the `*.json` files in reldir, sorted by name."""
        if self._fs:
            names = [n for n, is_dir in self._fs.names(reldir) if not is_dir]
        else:
            d = self.path / reldir
            names = [f.name for f in d.glob("*.json")] if d.is_dir() else []
        return [f"{reldir}/{n}" for n in sorted(names) if n.endswith(".json") and not n.startswith(".")]

    def _zarr(self, rel: str):
        return self._fs.zarr_store(rel) if self._fs else str(self.path / rel)

    # ------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str | Path | None, key: StoreKey, taps: list[tuple[str, int]], views: int,
             create: bool = True) -> Store:
        path = cache_root(root) / key.dirname
        meta = {
            "format": FORMAT,
            "arch": key.arch,
            "weights": key.weights,
            "preprocess": key.preprocess,
            "precision": key.precision,
            "dtype": key.dtype,
            "views": views,
            "taps": [[n, c] for n, c in taps],
        }
        store = cls(path, meta)
        if not store.exists("store.json"):
            if not create:
                raise CacheError(f"no cache store {path}")
            if store._fs:
                for d in ("parts", "bad", "records"):
                    store._fs.fs.makedirs(store._fs.p(d), exist_ok=True)
            else:
                (path / "parts").mkdir(parents=True, exist_ok=True)
                (path / "bad").mkdir(exist_ok=True)
                (path / "records").mkdir(exist_ok=True)
            store.write_json("store.json", meta)
        return cls.at(path, expect=meta)

    @classmethod
    def at(cls, path: str | Path, expect: dict | None = None) -> Store:
        store = cls(path, {})
        path = store.path
        try:
            meta = store.read_json("store.json")
        except FileNotFoundError:
            raise CacheError(f"{path} is not a cache store (no store.json)") from None
        except json.JSONDecodeError as e:
            raise CacheError(f"{path}/store.json is damaged: {e}") from None
        if meta.get("format") != FORMAT:
            raise CacheError(f"{path}: store format {meta.get('format')} (this fne reads {FORMAT})")
        if expect is not None and meta != expect:
            raise CacheError(f"{path}/store.json describes other rows than asked for: {meta} vs {expect}")
        store.meta = meta
        return store

    @property
    def taps(self) -> list[tuple[str, int]]:
        return [(n, int(c)) for n, c in self.meta["taps"]]

    @property
    def views(self) -> int:
        return int(self.meta["views"])

    # ------------------------------------------------------------ index
    def parts(self) -> list[Path | Url]:
        """Committed parts, oldest first (names start with their commit time)."""
        if self._fs:
            names = [n for n, is_dir in self._fs.names("parts") if not is_dir and n.endswith(COMMITTED)]
            return sorted(self.path / "parts" / n[:-len(COMMITTED)] for n in names if not n.startswith("."))
        d = self.path / "parts"
        return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.exists() else []

    def _leftover_names(self) -> list[str]:
        """Parts that were never committed: a killed (or still running) writer's."""
        if self._fs:
            entries = self._fs.names("parts")
            done = {n[:-len(COMMITTED)] for n, is_dir in entries if not is_dir and n.endswith(COMMITTED)}
            return sorted(n for n, is_dir in entries if is_dir and n not in done)
        return sorted(p.name for p in (self.path / "parts").glob(".tmp-*"))

    def refresh(self) -> None:
        self._index, self._bad = None, None

    def index(self) -> dict[str, tuple[str, int]]:
        if self._index is None:
            index: dict[str, tuple[str, int]] = {}
            for part in self.parts():
                keys = _key_strings(zarr.open_array(self._zarr(f"parts/{part.name}/keys"), mode="r")[:])
                for row, k in enumerate(keys):
                    index.setdefault(k, (part.name, row))
            self._index = index
        return self._index

    def bad(self) -> dict[str, str]:
        """Content keys recorded as undecodable, with the reason."""
        if self._bad is None:
            bad: dict[str, str] = {}
            for rel in self.list_json("bad"):
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

    # ------------------------------------------------------------ writing
    def commit(self, keys: list[str], arrays: dict[str, np.ndarray], bad: dict[str, str] | None = None) -> str:
        """Write one part atomically; returns its name. A failed write (a full disk) removes its
        unfinished part, so that it frees what it took and leaves nothing to clean."""
        name = f"{time.time_ns():020d}-{os.getpid()}-{HOST}-{uuid.uuid4().hex[:8]}"
        if keys:
            # Locally: a .tmp- folder renamed into place. URL store: the final (unique) name,
            # committed by the marker written last.
            rel = f"parts/{name}" if self._fs else f"parts/.tmp-{name}"
            try:
                self._write_part(rel, keys, arrays)
            except BaseException:
                self._remove(rel)
                raise
            if self._fs:
                self.write_json(f"parts/{name}{COMMITTED}", {"rows": len(keys)})
            else:
                os.replace(self.path / rel, self.path / "parts" / name)
        if bad:
            self.write_json(f"bad/{name}.json", bad)
        self._index = None
        self._bad = None
        return name

    def _write_part(self, rel: str, keys: list[str], arrays: dict[str, np.ndarray]) -> None:
        group = zarr.open_group(self._zarr(rel), mode="w")
        group.create_array("keys", data=_key_bytes(keys))
        dtype = np.dtype(self.meta["dtype"])
        for tap, c in self.taps:
            a = np.asarray(arrays[tap])
            if a.shape != (len(keys), self.views, c):
                raise CacheError(f"{self.path}: tap {tap} rows have shape {a.shape}, expected "
                                 f"{(len(keys), self.views, c)}")
            group.create_array(tap, data=a.astype(dtype), chunks=(max(1, len(keys)), self.views, c))

    def _remove(self, rel: str) -> None:
        if self._fs:
            try:
                self._fs.fs.rm(self._fs.p(rel), recursive=True)
            except FileNotFoundError:
                pass
        else:
            shutil.rmtree(self.path / rel, ignore_errors=True)

    def forget_bad(self, keys: Iterable[str]) -> int:
        """Drop the bad-image records of `keys` (a transient read failure), so that they are
        read again; returns how many were dropped."""
        keys, dropped = set(keys), 0
        for rel in self.list_json("bad"):
            recs = self.read_json(rel)
            keep = {k: v for k, v in recs.items() if k not in keys}
            if len(keep) < len(recs):
                dropped += len(recs) - len(keep)
                self.write_json(rel, keep)
        self._bad = None
        return dropped

    def record(self, record: dict) -> None:
        self.write_json(f"records/{time.time_ns():020d}-{os.getpid()}.json", record)

    def records(self) -> list[dict]:
        return [self.read_json(rel) for rel in self.list_json("records")]

    # ------------------------------------------------------------ reading
    def read(self, keys: list[str], layers: list[str]) -> dict[str, np.ndarray]:
        """Rows for `keys` (all must be present) as float32 arrays (len(keys), views, C)."""
        index = self.index()
        absent = [k for k in keys if k not in index]
        if absent:
            raise CacheError(f"{self.path}: {len(absent)} requested rows are not stored")
        dims = dict(self.taps)
        out = {la: np.empty((len(keys), self.views, dims[la]), dtype=np.float32) for la in layers}
        by_part: dict[str, list[tuple[int, int]]] = {}
        for pos, k in enumerate(keys):
            part, row = index[k]
            by_part.setdefault(part, []).append((pos, row))
        for part, pairs in by_part.items():
            pos = np.array([p for p, _ in pairs])
            rows = np.array([r for _, r in pairs])
            for la in layers:
                try:
                    out[la][pos] = zarr.open_array(self._zarr(f"parts/{part}/{la}"), mode="r")[:][rows]
                except Exception as e:
                    raise CacheError(
                        f"part {part} of {self.path} is damaged ({type(e).__name__}: {e}); run "
                        f"`fne cache verify --clean` to move it aside, then `fne extract` recomputes "
                        f"its rows") from None
        return out

    def iter_read(self, keys: list[str], layers: list[str], chunk: int = 4096) -> Iterator[dict[str, np.ndarray]]:
        """`read` in chunks of rows, so memory stays flat however many keys there are."""
        for start in range(0, len(keys), chunk):
            yield self.read(keys[start:start + chunk], layers)

    # ------------------------------------------------------------ upkeep
    def size_bytes(self) -> int:
        if self._fs:
            return int(self._fs.fs.du(self._fs.root))
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def verify(self) -> list[str]:
        """Problems found, empty when the store is sound."""
        problems = []
        seen: dict[str, str] = {}
        dup = 0
        self.damaged = []
        for part in self.parts():
            try:
                keys = zarr.open_array(self._zarr(f"parts/{part.name}/keys"), mode="r")[:]
                n = len(keys)
                for tap, c in self.taps:
                    a = zarr.open_array(self._zarr(f"parts/{part.name}/{tap}"), mode="r")
                    if a.shape != (n, self.views, c):
                        problems.append(f"part {part.name}: {tap} has shape {a.shape}, expected {(n, self.views, c)}")
                        continue
                    data = a[:]
                    if not np.isfinite(data).all():
                        problems.append(f"part {part.name}: {tap} holds NaN or infinite values")
            except Exception as e:  # a damaged part: report, keep checking the others
                problems.append(f"part {part.name}: unreadable ({type(e).__name__}: {e})")
                self.damaged.append(part.name)
                continue
            for k in _key_strings(keys):
                if k in seen:
                    dup += 1
                else:
                    seen[k] = part.name
        self.duplicates = dup  # harmless: concurrent writers computed the same image; reads use the first
        # Leftovers of killed writers: never read, so not damage; `clean()` removes them.
        self.leftovers = self._leftover_names()
        return problems

    def clean(self) -> int:
        """Remove unfinished parts of writers that are gone; -> how many. Unfinished parts of live
        writers are spared (see `writer_alive`)."""
        left = [n for n in self._leftover_names() if not writer_alive(n)]
        for name in left:
            self._remove(f"parts/{name}")
        return len(left)

    def quarantine_damaged(self) -> list[str]:
        """Move the parts `verify()` could not read to quarantine/, where reads never look (kept
        for inspection, not deleted); a later `fne extract` recomputes their rows."""
        if not self.damaged:
            self.verify()
        moved, self.damaged = list(self.damaged), []
        for name in moved:
            self._quarantine(name)
        self.refresh()
        return moved

    def _quarantine(self, name: str) -> None:
        if self._fs:
            self._fs.fs.rm(self._fs.p(f"parts/{name}{COMMITTED}"))  # uncommitted: no reader sees it
            self._fs.fs.mv(self._fs.p(f"parts/{name}"), self._fs.p(f"{QUARANTINE}/{name}"), recursive=True)
        else:
            (self.path / QUARANTINE).mkdir(exist_ok=True)
            os.replace(self.path / "parts" / name, self.path / QUARANTINE / name)


def list_stores(root: str | Path | None = None) -> list[Store]:
    root = cache_root(root)
    if isinstance(root, Url):
        fs = _Fs(root)
        names = [n for n, is_dir in fs.names("") if is_dir]
        candidates = [root / n for n in sorted(names) if fs.fs.exists(fs.p(f"{n}/store.json"))]
    else:
        if not root.exists():
            return []
        candidates = [d for d in sorted(root.iterdir()) if (d / "store.json").exists()]
    out = []
    for d in candidates:
        try:
            out.append(Store.at(d))
        except CacheError:
            continue
    return out
