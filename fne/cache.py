"""Activation cache: one zarr store per (arch, weights, preprocessing, precision, storage dtype).

A store is append-only. Each commit writes a complete *part* (a zarr group with the rows'
content keys and one N×V×C array per tap) under a temporary name and renames it into place,
so a reader sees a part whole or not at all: a killed writer leaves only a `.tmp-*` folder,
and two writers never touch the same files. Rows are found by content key; if two writers
computed the same image, the first committed part wins.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from fne.errors import CacheError

FORMAT = 1
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / "cache"
STORAGE_DTYPES = ("float16", "float32")


def cache_root(cache: str | Path | None = None) -> Path:
    """--cache, else $FNE_CACHE, else the repository's cache/ folder."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get("FNE_CACHE")
    return Path(env).expanduser() if env else DEFAULT_CACHE


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


class Store:
    """A directory of committed parts plus `store.json` (what the rows mean)."""

    def __init__(self, path: Path, meta: dict):
        self.path = Path(path)
        self.meta = meta
        self._index: dict[str, tuple[str, int]] | None = None
        self._bad: dict[str, str] | None = None
        self.duplicates = 0
        self.leftovers: list[str] = []

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
        meta_path = path / "store.json"
        if not meta_path.exists():
            if not create:
                raise CacheError(f"no cache store {path}")
            (path / "parts").mkdir(parents=True, exist_ok=True)
            (path / "bad").mkdir(exist_ok=True)
            (path / "records").mkdir(exist_ok=True)
            _write_json_atomic(meta_path, meta)
        return cls.at(path, expect=meta)

    @classmethod
    def at(cls, path: str | Path, expect: dict | None = None) -> Store:
        path = Path(path)
        try:
            meta = json.loads((path / "store.json").read_text())
        except FileNotFoundError:
            raise CacheError(f"{path} is not a cache store (no store.json)") from None
        except json.JSONDecodeError as e:
            raise CacheError(f"{path}/store.json is damaged: {e}") from None
        if meta.get("format") != FORMAT:
            raise CacheError(f"{path}: store format {meta.get('format')} (this fne reads {FORMAT})")
        if expect is not None and meta != expect:
            raise CacheError(f"{path}/store.json describes other rows than asked for: {meta} vs {expect}")
        return cls(path, meta)

    @property
    def taps(self) -> list[tuple[str, int]]:
        return [(n, int(c)) for n, c in self.meta["taps"]]

    @property
    def views(self) -> int:
        return int(self.meta["views"])

    # ------------------------------------------------------------ index
    def parts(self) -> list[Path]:
        d = self.path / "parts"
        return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.exists() else []

    def refresh(self) -> None:
        self._index, self._bad = None, None

    def index(self) -> dict[str, tuple[str, int]]:
        if self._index is None:
            index: dict[str, tuple[str, int]] = {}
            for part in self.parts():
                keys = _key_strings(zarr.open_array(str(part / "keys"), mode="r")[:])
                for row, k in enumerate(keys):
                    index.setdefault(k, (part.name, row))
            self._index = index
        return self._index

    def bad(self) -> dict[str, str]:
        """Content keys recorded as undecodable, with the reason."""
        if self._bad is None:
            bad: dict[str, str] = {}
            for f in sorted((self.path / "bad").glob("*.json")):
                bad.update(json.loads(f.read_text()))
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
        """Write one part atomically; returns its name."""
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if keys:
            tmp = self.path / "parts" / f".tmp-{name}"
            group = zarr.open_group(str(tmp), mode="w")
            group.create_array("keys", data=_key_bytes(keys))
            dtype = np.dtype(self.meta["dtype"])
            for tap, c in self.taps:
                a = np.asarray(arrays[tap])
                if a.shape != (len(keys), self.views, c):
                    raise CacheError(f"{self.path}: tap {tap} rows have shape {a.shape}, expected "
                                     f"{(len(keys), self.views, c)}")
                group.create_array(tap, data=a.astype(dtype), chunks=(max(1, len(keys)), self.views, c))
            os.replace(tmp, self.path / "parts" / name)
        if bad:
            _write_json_atomic(self.path / "bad" / f"{name}.json", bad)
        self._index = None
        self._bad = None
        return name

    def record(self, record: dict) -> None:
        _write_json_atomic(self.path / "records" / f"{time.time_ns():020d}-{os.getpid()}.json", record)

    def records(self) -> list[dict]:
        return [json.loads(f.read_text()) for f in sorted((self.path / "records").glob("*.json"))]

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
                arr = zarr.open_array(str(self.path / "parts" / part / la), mode="r")
                out[la][pos] = arr[:][rows]
        return out

    def iter_read(self, keys: list[str], layers: list[str], chunk: int = 4096) -> Iterator[dict[str, np.ndarray]]:
        """`read` in chunks of rows, so memory stays flat however many keys there are."""
        for start in range(0, len(keys), chunk):
            yield self.read(keys[start:start + chunk], layers)

    # ------------------------------------------------------------ upkeep
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def verify(self) -> list[str]:
        """Problems found, empty when the store is sound."""
        problems = []
        seen: dict[str, str] = {}
        dup = 0
        for part in self.parts():
            try:
                keys = zarr.open_array(str(part / "keys"), mode="r")[:]
                n = len(keys)
                for tap, c in self.taps:
                    a = zarr.open_array(str(part / tap), mode="r")
                    if a.shape != (n, self.views, c):
                        problems.append(f"part {part.name}: {tap} has shape {a.shape}, expected {(n, self.views, c)}")
                        continue
                    data = a[:]
                    if not np.isfinite(data).all():
                        problems.append(f"part {part.name}: {tap} holds NaN or infinite values")
            except Exception as e:  # a damaged part: report, keep checking the others
                problems.append(f"part {part.name}: unreadable ({type(e).__name__}: {e})")
                continue
            for k in _key_strings(keys):
                if k in seen:
                    dup += 1
                else:
                    seen[k] = part.name
        self.duplicates = dup  # harmless: concurrent writers computed the same image; reads use the first
        # Leftovers of killed writers: never read, so not damage; `clean()` removes them.
        self.leftovers = sorted(p.name for p in (self.path / "parts").glob(".tmp-*"))
        return problems

    def clean(self) -> int:
        tmp = list((self.path / "parts").glob(".tmp-*"))
        for p in tmp:
            shutil.rmtree(p, ignore_errors=True)
        return len(tmp)


def list_stores(root: str | Path | None = None) -> list[Store]:
    root = cache_root(root)
    if not root.exists():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if (d / "store.json").exists():
            try:
                out.append(Store.at(d))
            except CacheError:
                continue
    return out
