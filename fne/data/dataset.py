"""The `Dataset`: images, their labels and an optional split, whatever DATA form they came from.

A dataset never holds decoded images; it knows how to load item i (in a worker process) and
how to key it by content (`content_key`, `file_key`), so that the activation cache is shared by
any task over the same images whatever folder, CSV or split they come from. fne.data.datasets
resolves every DATA form to one.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fne.data import containers
from fne.data.hdf5 import ArraySource
from fne.data.images import read_image, to_rgb
from fne.data.labels import class_order, utf8_names
from fne.errors import DataError

__all__ = ["Dataset", "content_key", "file_dataset", "file_key"]


@dataclass
class Dataset:
    """Images with string labels; `sources[i]` is a file path, an index into `array_source`, or
    a `containers.Member` (a tar member or Parquet row) read through `container`."""

    name: str
    ids: list[str]
    labels: list[str] | None
    splits: list[str] | None
    classes: list[str]
    sources: list = field(repr=False)
    array_source: ArraySource | None = field(default=None, repr=False)
    _keys: list[str] | None = field(default=None, repr=False)
    root: str | None = None  # the folder file sources are relative to (its manifest's key)
    _stats: list | None = field(default=None, repr=False)
    container: containers.ContainerReader | None = field(default=None, repr=False)  # tar, Parquet
    left_out: list[str] = field(default_factory=list, repr=False)  # entries skipped when listing, each warned
    unlabelled: str = field(default="", repr=False)  # why DATA has no labels, where it has none
    split_from: str = field(default="", repr=False)  # where its split is read from (train/ and test/ folders, ...)
    given: str = field(default="", repr=False)  # DATA as the user gave it (`load_dataset`): messages name it

    def __post_init__(self) -> None:
        # A name that is not UTF-8 is kept escaped (`utf8_names`); its file is read by its path, as it is.
        self.ids = utf8_names(self.ids)
        if self.labels is not None:
            self.labels, self.classes = utf8_names(self.labels), utf8_names(self.classes)

    def __len__(self) -> int:
        return len(self.ids)

    def __str__(self) -> str:  # where it came from, in records and messages
        return self.root or self.name

    @property
    def as_given(self) -> str:
        """DATA as the user gave it (`one.csv`), else where it came from: what an error names (its
        name is a CSV's or a file's stem, its root a CSV's folder)."""
        return self.given or str(self)

    @property
    def has_split(self) -> bool:
        return self.splits is not None

    @property
    def has_val_part(self) -> bool:
        """Whether DATA's predefined split has a validation part beside its test part."""
        return self.splits is not None and "val" in self.splits

    def in_train(self) -> np.ndarray:
        """Which images a predefined split trains on: its train part and, beside a test part, its
        validation part (`val`, which `fne train` validates on; `containers.settle_splits`)."""
        return np.isin(np.array(self.splits, dtype=object), ("train", "val"))

    def load(self, i: int) -> Image.Image:
        """Decode item i as an RGB PIL image; raises `OSError`/`ValueError` on a bad file."""
        if self.array_source is not None:
            a = self.array_source.get(self.sources[i])
            if a.ndim == 3 and a.shape[-1] == 1:  # grey stored as H×W×1
                a = a[..., 0]
            return to_rgb(Image.fromarray(a))
        if self.container is not None:
            return read_image(io.BytesIO(self.container.read(self.sources[i])))
        return read_image(self.sources[i])

    def read_bytes(self, i: int) -> tuple[bytes, tuple[int, int, int]]:
        """The encoded bytes of file item i and (size, mtime_ns, read time ns) taken before the
        read (for the manifest). Raises `OSError` when the file cannot be read whole: a short
        read gives no trustworthy content key. A container member's stat is its container's."""
        if self.container is not None:
            return self.container.read_bytes(self.sources[i])
        path = self.sources[i]
        st, read_ns = os.stat(path), time.time_ns()
        with open(path, "rb") as f:
            data = f.read()
        if len(data) != st.st_size:  # changed while read, or a short read
            raise OSError(f"read {len(data)} of {st.st_size} bytes")
        return data, (st.st_size, st.st_mtime_ns, read_ns)

    def keys(self) -> list[str]:
        """Content hashes: identical images share a key wherever they live."""
        if self._keys is None:
            if self.array_source is not None:
                self._keys = [self.array_source.key(s) for s in self.sources]
            elif self.container is not None:
                self._keys = [content_key(self._member_bytes(m)) for m in self.sources]
            else:
                self._keys = [file_key(p) for p in self.sources]
        return self._keys

    def read_shuffled(self, idx: Sequence[int], progress: bool = True) -> None:
        """Prepare to read images `idx` in a random order, as `fne train` does: the Parquet and
        HDF5 files among them whose row groups or chunks a reading process could not keep are read
        from copies made for it (`fne.data.random_access`, `fne.data.hdf5_access`)."""
        if self.array_source is not None:
            self.array_source.read_shuffled([self.sources[i] for i in idx], progress)
        if self.container is not None:
            self.container.read_shuffled([self.sources[i] for i in idx], progress)

    def _member_bytes(self, m) -> bytes:
        try:
            return self.container.read(m)
        except OSError as e:
            raise DataError(f"cannot read {m}: {e.strerror or e}") from e

    def stats(self) -> list:
        """`os.stat` of every file source, taken once (sizes and mtimes: the manifest, shards);
        a container member's is its container's."""
        if self._stats is None and self.container is not None:
            self._stats = [self.container.stat(m.container) for m in self.sources]
        if self._stats is None:
            out = []
            for p in self.sources:
                try:
                    out.append(os.stat(p))
                except OSError as e:
                    raise DataError(f"cannot read {p}: {e.strerror or e}") from e
            self._stats = out
        return self._stats

    def require_labels(self, verb: str, where: object = None) -> None:
        """`DataError` in one line unless DATA has labels, saying why it has none (`unlabelled`)."""
        if self.labels is None:
            raise DataError(f"DATA {where or self}: {verb} needs labelled images, and "
                            f"{self.unlabelled or 'no image has a label'}")

    def label_indices(self) -> np.ndarray:
        if self.labels is None:
            raise DataError(f"{self.name}: has no labels")
        index = {c: k for k, c in enumerate(self.classes)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)

    def subset(self, idx: Sequence[int]) -> Dataset:
        idx = list(idx)
        keys = None if self._keys is None else [self._keys[i] for i in idx]
        return Dataset(
            name=self.name,
            ids=[self.ids[i] for i in idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
            splits=None if self.splits is None else [self.splits[i] for i in idx],
            classes=self.classes,
            sources=[self.sources[i] for i in idx],
            array_source=self.array_source,
            _keys=keys,
            root=self.root,
            _stats=None if self._stats is None else [self._stats[i] for i in idx],
            container=self.container,
            left_out=self.left_out,
            unlabelled=self.unlabelled,
            split_from=self.split_from,
            given=self.given,
        )


def _hasher():
    return hashlib.blake2b(digest_size=16)


def content_key(data: bytes) -> str:
    """The cache key of an image file's bytes (what `file_key` computes reading the file)."""
    h = _hasher()
    h.update(data)
    return h.hexdigest()


def key_digests(keys: list[str]) -> np.ndarray:
    """Content keys (hex digests) as their first 64 bits, uint64: 8 bytes an image in model.joblib
    (10 MB at ImageNet's 1.28 M images, where the 32-character keys took ~100 MB as Python strings);
    two images' digests agree by chance once in ~10^19 pairs, and only a warning counts them."""
    return np.array([int(k[:16], 16) for k in keys], dtype=np.uint64)


def file_key(path: str | Path) -> str:
    """The cache key of an image file, read in blocks."""
    h = _hasher()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    return h.hexdigest()


def file_dataset(name: str, root: Path, files, labels, splits, classes=None) -> Dataset:
    """A Dataset of image files (a folder's, a CSV's), its ids their paths relative to `root`; classes
    sorted as strings (`labels.class_order`) unless given."""
    sources = [str(f) for f in files]
    prefix = os.path.join(str(root), "")
    return Dataset(
        name=name,
        ids=[f[len(prefix):] if f.startswith(prefix) else _relative_id(f, root) for f in sources],
        labels=labels,
        splits=splits,
        classes=classes or ([] if labels is None else class_order(labels, numeric=False)),
        sources=sources,
        root=str(root),
    )


def _relative_id(path: str, root: Path) -> str:
    p = Path(path)
    return str(p.relative_to(root)) if p.is_relative_to(root) else path
