"""Images inside containers: WebDataset tar shards and Parquet files, keyed like loose files.

A container dataset's `sources[i]` is a `Member`: (container file, member name, and where its
bytes lie: a tar member's offset and size, a Parquet row's row group and row in it). The reader
gets a member's bytes through `Dataset.read_bytes` like a file's, so the content key (the hash
of the image's bytes) is the same for one JPEG as a file, a tar member or a Parquet cell.

Listing a container (tar headers, label members; Parquet metadata and label column) is
remembered per container in the manifest folder: (path, size, mtime) -> its members, their
labels and, once hashed, their content keys. An unchanged container is then neither listed nor
read again by fit, predict or export, and one whose images are all stored is not read by
extract. Bad members (no label, truncated, not an image) are skipped with one line naming
`shard.tar:member` or `file.parquet:row`.
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import json
import os
import re
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from fne.data import random_access
from fne.data.formats import IMAGE_EXTENSIONS
from fne.data.sidecar import merge_json
from fne.errors import DataError

FORMAT = 3  # 2: a member's split keeps its validation word (`val`), settled per DATA; 3: a tar's links
# read, a key with two members of one name skipped, a Parquet row without image bytes skipped
# How a listing with ClassLabel names (Parquet) read them and its labels through them; one of an
# earlier rule is listed again (its content keys kept, `save_listing`), no other listing. 2: names
# stripped, empty or repeated ones refused, an index stored as a float (2.0) names its class.
CLASS_NAMES_RULE = 2
# How a Parquet file's split column is read: a listing of an earlier rule whose rows were skipped
# for their split is listed again, no other. 2: a column of numbers (0/1) is refused in one line
# naming it (each row was skipped, "split 1 is not train, test or validation").
SPLIT_RULE = 2
RACY_NS = 2_000_000_000
GROUP_CACHE_BYTES = 256 << 20  # Parquet row groups kept per reading process
PARQUET_SLICE_ROWS = 256  # rows of a Parquet row group decoded at a time (see GroupReader)
TAR_SUFFIXES = (".tar",)
PARQUET_SUFFIXES = (".parquet",)
# Split names as the Hub and WebDataset lay them out; a validation part is `val` until
# `settle_splits` sees the whole DATA, since fne's predefined split is train / test.
_SPLIT_WORDS = {"train": "train", "training": "train", "test": "test", "testing": "test",
                "validation": "val", "valid": "val", "val": "val", "dev": "val"}
_SPLIT_RE = re.compile(r"(?:^|[-_.])(train|training|test|testing|validation|valid|val|dev)(?=$|[-_.])")


@dataclass(frozen=True)
class Member:
    """One image inside a container: tar (`a`, `b`) = (data offset, size); Parquet (row group,
    row in the group)."""

    container: str  # absolute path
    name: str  # tar member name; Parquet: the row number in the file
    a: int
    b: int

    def __str__(self) -> str:
        return f"{self.container}:{self.name}"


@dataclass
class Listing:
    """What a container holds: members (name, a, b, label, split), bad members (name, why)."""

    path: str
    kind: str  # "tar" or "parquet"
    size: int
    mtime_ns: int
    members: list[list] = field(default_factory=list)
    bad: list[list] = field(default_factory=list)
    broken: str | None = None  # where a truncated container stopped
    column: str | None = None  # Parquet: the image column
    class_names: list[str] | None = None  # Parquet: Hugging Face ClassLabel names
    keys: dict[str, str] = field(default_factory=dict)  # member name -> content key
    listed_at_ns: int = 0
    label_key: str | None = None
    dirty: bool = False
    cache: str | None = None  # the --cache whose manifests keep this listing (not saved in it)

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ("path", "kind", "size", "mtime_ns", "members", "bad", "broken",
                                           "column", "class_names", "keys", "listed_at_ns", "label_key")}
        return {"format": FORMAT, "class_names_rule": CLASS_NAMES_RULE, "split_rule": SPLIT_RULE, **d}


# ----------------------------------------------------------------- the listing cache (manifest)


def manifest_dir(cache: str | Path | None = None) -> Path:
    """Manifests live beside the stores; a URL cache keeps them in the user's cache folder."""
    from fne.cache.store import local_root

    return local_root(cache) / "manifests"


def shuffled_dir(cache: str | Path | None = None) -> Path:
    """Where Parquet and HDF5 files' copies for shuffled reading live (`random_access`, `hdf5_access`)."""
    return manifest_dir(cache) / "shuffled"


def _index_path(path: str, label_key: str | None, cache: str | Path | None) -> Path:
    name = hashlib.blake2b(f"{path}\0{label_key}".encode(), digest_size=10).hexdigest()
    return manifest_dir(cache) / "containers" / f"{name}.json"


def cached_listing(path: str, st: os.stat_result, label_key: str | None,
                   cache: str | Path | None = None) -> Listing | None:
    """The remembered listing of an unchanged container (same size and mtime, not racy), from the
    manifests of cache `cache` (see `manifest_dir`)."""
    try:
        doc = json.loads(_index_path(path, label_key, cache).read_text())
        rule, split_rule = doc.pop("class_names_rule", 1), doc.pop("split_rule", 1)
        if doc.pop("format") != FORMAT or doc["path"] != path or (doc.get("class_names") and rule != CLASS_NAMES_RULE):
            return None
        if split_rule != SPLIT_RULE and any(why.startswith("split ") for _, why in doc.get("bad", [])):
            return None
        listing = Listing(**doc, cache=None if cache is None else str(cache))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (listing.size, listing.mtime_ns) != (st.st_size, st.st_mtime_ns) \
            or st.st_mtime_ns > listing.listed_at_ns - RACY_NS:
        return None
    return listing


def save_listing(listing: Listing) -> None:
    """Write a listing (merging keys another process added); a racy one is not kept."""
    if listing.mtime_ns > listing.listed_at_ns - RACY_NS:
        return  # modified within the clock's uncertainty of the listing: list it again next time
    target = _index_path(listing.path, listing.label_key, listing.cache)
    try:
        def merge(on_disk: dict | None) -> dict:
            if on_disk and (on_disk.get("size"), on_disk.get("mtime_ns")) == (listing.size, listing.mtime_ns):
                listing.keys = {**on_disk.get("keys", {}), **listing.keys}
            return listing.to_json()

        merge_json(target, merge)
        listing.dirty = False
    except OSError:
        pass  # a read-only cache only costs a new listing next time


# ----------------------------------------------------------------- reading members


def _read_at(fd: int, n: int, offset: int) -> bytes:
    """Up to `n` bytes of `fd` at `offset`: `os.pread`, or a seek and a read where the platform
    has none (Windows; each process reads through handles of its own, one thread at a time)."""
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


class ContainerReader:
    """Reads members' bytes; file handles and the Parquet row groups being read are per process."""

    def __init__(self, listings: dict[str, Listing]):
        self.listings = listings
        self._pid = -1
        self._fds: dict[str, int] = {}
        self._stats: dict[str, os.stat_result] = {}
        self._groups: OrderedDict[tuple[str, int], GroupReader] = OrderedDict()  # Parquet, LRU
        self._shuffled = False  # a row was asked for behind its group's slice: read groups whole
        self._copies: dict[str, str] = {}  # Parquet file -> its copy for shuffled reading
        self._copied: dict[str, object] = {}  # Parquet file -> its copy's `CopyReader` (per process)

    def __getstate__(self):
        return {"listings": self.listings, "_pid": -1, "_fds": {}, "_stats": {}, "_groups": OrderedDict(),
                "_shuffled": False, "_copies": self._copies, "_copied": {}}

    def _fresh(self) -> None:
        if self._pid != os.getpid():  # a forked worker: its own handles, row groups and maps
            self._pid, self._fds, self._groups, self._copied = os.getpid(), {}, OrderedDict(), {}

    def read_shuffled(self, members: list[Member], progress: bool) -> None:
        """Prepare to read `members` in a random order: a Parquet file among them whose row groups
        they are in hold more than GROUP_CACHE_BYTES (so a reading process could not keep them)
        is read from its copy in the cache (`random_access`), made now where there is none."""
        groups: dict[str, set[int]] = {}
        for m in members:
            if self.listings[m.container].kind == "parquet":
                groups.setdefault(m.container, set()).add(m.a)
        for path, touched in groups.items():
            listing = self.listings[path]
            try:
                if path in self._copies or random_access.column_bytes(path, listing.column, touched)[1] <= GROUP_CACHE_BYTES:
                    continue
            except Exception:  # pyarrow raises ArrowInvalid / OSError on a damaged footer: ensure_copy says so
                pass
            copy = random_access.ensure_copy(listing, shuffled_dir(listing.cache), progress)
            if copy is not None:
                self._copies[path] = copy

    def stat(self, path: str) -> os.stat_result:
        if path not in self._stats:
            try:
                self._stats[path] = os.stat(path)
            except OSError as e:
                raise DataError(f"cannot read {path}: {e.strerror or e}") from e
        return self._stats[path]

    def read(self, m: Member) -> bytes:
        """A member's bytes; `OSError` when they cannot be read whole."""
        self._fresh()
        listing = self.listings[m.container]
        if listing.kind == "tar":
            fd = self._fds.get(m.container)
            if fd is None:
                fd = self._fds[m.container] = os.open(m.container, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            data = _read_at(fd, m.b, m.a)
            if len(data) != m.b:
                raise OSError(f"read {len(data)} of {m.b} bytes")
            return data
        copy = self._copy(m.container) if m.container in self._copies else None
        if copy is not None:
            return cell_bytes(copy.cell(int(m.name)))
        return cell_bytes(self._parquet_cell(m.container, m.a, m.b, listing.column))

    def _copy(self, path: str):
        """The `CopyReader` of Parquet file `path`'s copy, opened by this process the first time;
        None (and a warning) where the copy cannot be read: the file is read instead."""
        reader = self._copied.get(path)
        if reader is None:
            try:
                reader = self._copied[path] = random_access.CopyReader(self._copies[path])
            except Exception as e:  # pyarrow raises ArrowInvalid / OSError on a file that is not a copy
                warnings.warn(f"cannot read {self._copies.pop(path)}, the copy of {path} for reading it "
                              f"shuffled ({e}): each image is read from its row group, slowly", stacklevel=2)
        return reader

    def _parquet_cell(self, path: str, group: int, row: int, column: str) -> bytes | dict | None:
        """Row `row` of row group `group`'s image column, from a `GroupReader` kept while the kept
        ones hold under GROUP_CACHE_BYTES: in order (extract) each group is decoded once, a slice
        at a time; shuffled (train, where its groups fit under GROUP_CACHE_BYTES or no copy could be
        made: `read_shuffled`) whole groups, as Arrow arrays, stay in memory."""
        key = (path, group)
        reader = self._groups.get(key)
        if reader is None:
            reader = self._groups[key] = GroupReader(path, group, column, whole=self._shuffled)
        self._groups.move_to_end(key)
        try:
            value = reader.cell(row)
        except OSError:
            del self._groups[key]  # read again from the start by the next row asked for
            raise
        self._shuffled |= reader.whole
        while len(self._groups) > 1 and sum(g.nbytes for g in self._groups.values()) > GROUP_CACHE_BYTES:
            self._groups.popitem(last=False)
        return value

    def read_bytes(self, m: Member) -> tuple[bytes, tuple[int, int, int]]:
        st, read_ns = self.stat(m.container), time.time_ns()
        return self.read(m), (st.st_size, st.st_mtime_ns, read_ns)


class GroupReader:
    """One Parquet row group's image column, decoded as its rows are asked for. Rows asked for
    in order (extract; each loader worker asks for rows further on) come from one pass over the
    group, PARQUET_SLICE_ROWS rows at a time, one slice kept. A row behind the slice kept (train's
    shuffled order) reads the group whole, kept as Arrow arrays: about the cells' bytes, not a
    Python object per cell. Either way a cell becomes Python bytes only when asked for."""

    def __init__(self, path: str, group: int, column: str, whole: bool = False):
        self.path, self.group, self.column, self.whole = path, group, column, False
        self._batches = None  # the pass over the group, while reading in order
        self._chunks: list = []  # Arrow arrays of consecutive rows from `_starts[0]`
        self._starts: list[int] = []
        self._next = 0  # the first row the pass has not decoded yet
        if whole:
            self._read_whole()

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._chunks)

    def _pass(self):
        f = random_access.open_pages(self.path)
        return f.iter_batches(batch_size=PARQUET_SLICE_ROWS, row_groups=[self.group], columns=[self.column])

    def _read_whole(self) -> None:
        self._batches, self._chunks, self._starts, self._next, self.whole = None, [], [], 0, True
        try:
            for batch in self._pass():
                self._chunks.append(batch.column(0))
                self._starts.append(self._next)
                self._next += batch.num_rows
        except Exception as e:
            raise OSError(f"row group {self.group}: {one_line(e)}") from e

    def _advance(self, row: int) -> None:
        """Decode forward until the slice kept holds `row`."""
        try:
            if self._batches is None:
                self._batches = iter(self._pass())
            while self._next <= row:
                batch = next(self._batches, None)
                if batch is None:
                    break
                self._chunks, self._starts = [batch.column(0)], [self._next]
                self._next += batch.num_rows
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError on a damaged page
            raise OSError(f"row group {self.group}: {one_line(e)}") from e

    def cell(self, row: int) -> bytes | dict | None:
        """Row `row`'s cell as Python (bytes, or Hugging Face's {bytes, path} dict)."""
        if not self.whole and self._starts and row < self._starts[0]:
            self._read_whole()  # a row already passed: a shuffled order, so keep the group
        if row >= self._next and not self.whole:
            self._advance(row)
        if row >= self._next:
            raise OSError(f"row group {self.group} has {self._next} rows, not {row + 1}")
        k = bisect.bisect_right(self._starts, row) - 1
        return self._chunks[k][row - self._starts[k]].as_py()


# ----------------------------------------------------------------- DATA forms


def expand(spec: str) -> list[str]:
    """Brace ranges and lists (`train-{000000..000127}.tar`, `{a,b}.tar`) and globs -> paths."""
    # the leftmost group first; ASCII digits only (\d took `{٠..٣}` as 0..3, names no one wrote)
    m = re.search(r"\{([0-9]+)\.\.([0-9]+)\}|\{([^{}]*,[^{}]*)\}", spec)
    if m and m[1] is not None:
        lo, hi, width = int(m[1]), int(m[2]), len(m[1])
        return [p for k in range(lo, hi + 1) for p in expand(f"{spec[:m.start()]}{k:0{width}d}{spec[m.end():]}")]
    if m:
        return [p for part in m[3].split(",") for p in expand(spec[:m.start()] + part + spec[m.end():])]
    if glob.has_magic(spec):
        return sorted(glob.glob(os.path.expanduser(spec)))
    return [spec]


def is_container_spec(spec: str) -> bool:
    """True when DATA names tar shards or Parquet files (a file, a pattern, or hf:)."""
    if spec.startswith("hf:"):
        return True
    low = spec.lower()
    return low.endswith(TAR_SUFFIXES + PARQUET_SUFFIXES) and (os.path.isfile(spec) or "{" in spec
                                                               or glob.has_magic(spec))


def takes_label_key(data: object) -> bool:
    """Whether DATA (a path or name, as `fne.data.datasets.load_dataset` takes it) is a form whose
    labels a label_key chooses: tar shards, Parquet files (or a folder of them) and hf: DATA."""
    if not isinstance(data, (str, os.PathLike)):  # a Dataset has its labels already
        return False
    spec = str(data)
    if is_container_spec(spec):
        return True
    path = Path(spec).expanduser()
    return path.is_dir() and bool(find_containers(path))


_HUB_SHARD = re.compile(r"-\d+-of-\d+$")  # the Hub's `train-00000-of-00003.parquet`


def data_name(spec: str) -> str:
    """The name of DATA given as tar or Parquet files (a file, a folder, a glob or brace pattern):
    a file's stem, else its folder's name, as a folder of images is named. Where that folder is
    the Hub's `data/` (a dataset repo's `REPO/data/train-*.parquet`), the repo's: a name every
    Hub dataset would share names none of them. A Hub shard (`train-00000-of-00001.parquet`) is
    named by its folder the same way."""
    p = Path(os.path.expanduser(spec))
    if p.is_file() and not _HUB_SHARD.search(p.stem):
        return p.stem
    folder = Path(os.path.abspath(p if p.is_dir() else p.parent))  # `*.parquet`: the current folder's name
    if folder.name == "data" and folder.parent.name:
        folder = folder.parent
    return folder.name or "data"


def find_containers(root: Path) -> list[Path]:
    """Tar or Parquet files in a folder, 3 levels deep (the Hub's data/ or CONFIG/ layouts); none when
    the folder holds images (an image folder with a stray .tar stays an image folder). Stops at
    the first image: an image folder costs a few directory reads, not a walk."""
    found: list[Path] = []
    return found if _scan(Path(root), 3, found) else []


def _scan(folder: Path, depth: int, found: list[Path]) -> bool:
    """Collect containers into `found`; False as soon as an image file is seen."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            low = entry.name.lower()
            if low.endswith(TAR_SUFFIXES + PARQUET_SUFFIXES):
                found.append(Path(entry.path))
            elif os.path.splitext(low)[1] in IMAGE_EXTENSIONS:
                return False
        elif entry.is_dir() and depth > 1 and not _scan(Path(entry.path), depth - 1, found):
            return False
    return True


def split_of_name(path: str, root: str | None = None) -> str | None:
    """train / test / val from a container's name (`train-000000.tar`, `test-00000-of-00003.parquet`,
    `validation-…`) or its folder inside DATA (`train/000.tar`); see `settle_splits`."""
    rel = os.path.relpath(path, root) if root else os.path.basename(path)
    for part in reversed(Path(rel).parts):
        m = _SPLIT_RE.search(part.lower())
        if m:
            return _SPLIT_WORDS[m[1]]
    return None


def normalise_split(value: str) -> str | None:
    """A split word as fne reads it (`train`, `Test`, `validation`, `dev`, ...) -> train, test or
    val (which `settle_splits` makes train or test); None for any other word."""
    if isinstance(value, (bytes, bytearray)):  # a Parquet binary column, a tar's .split member: its text
        value = bytes(value).decode("utf-8", "replace")
    return _SPLIT_WORDS.get(str(value).strip().lower())


def settle_splits(splits: list[str], data: object, part: str) -> list[str] | None:
    """DATA's split words with its validation part placed. Beside a test part it stays `val`:
    `fne fit` trains on it (the FNE paper's protocol, train = train + val, `Dataset.in_train`) and
    `fne train` validates on it. With no test part it is the held-out part, as ImageNet's `val/`
    and the Hub's Food-101 `validation` are, and a warning says so; with no train part, the
    training part. A split of one part only (every image `train`, say) is no predefined split:
    None (random splits apply).

    Parameters
    ----------
    splits : list of str
        One word per image, from `normalise_split` (train, test, val).
    data : object
        DATA as named in the warning.
    part : str
        Where DATA's form keeps its validation images (`val/`, `the split column`, ...).

    Returns
    -------
    list of str or None
        train, val or test per image; None when that leaves no train or no test image.
    """
    kinds = set(splits)
    if "val" in kinds and "test" not in kinds and "train" in kinds:
        warnings.warn(f"DATA {data}: no test part, so its {splits.count('val')} validation images ({part}) are the "
                      f"held-out test split, as published results on such data use them", stacklevel=3)
        splits = ["test" if s == "val" else s for s in splits]
    elif "val" in kinds and "train" not in kinds:
        splits = ["train" if s == "val" else s for s in splits]
    return splits if {"train", "test"} <= set(splits) else None


def one_line(e: Exception) -> str:
    """pyarrow's error text on one line: a damaged page header's spans lines and holds the byte it
    could not read (`don't know what type: \\x0f`), which made fne's one-line refusals and skips span lines."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(e)).split())


def cell_bytes(v) -> bytes:
    """An image cell's bytes (bytes, or the `bytes` of Hugging Face's {bytes, path} struct)."""
    if isinstance(v, dict):
        if v.get("bytes") is None:
            raise OSError(f"image cell has no bytes (path {v.get('path')!r} only)")
        v = v["bytes"]
    if v is None:
        raise OSError("image cell is empty")
    return bytes(v)
