"""idx-ubyte DATA, as MNIST, Fashion-MNIST, KMNIST and EMNIST ship: images in an `idx3` file and
their labels in an `idx1` file, each optionally gzipped (`idx_dataset`).

A folder holding `train-images-idx3-ubyte[.gz]` + `train-labels-idx1-ubyte[.gz]` and, optionally,
`t10k-images-idx3-ubyte[.gz]` + `t10k-labels-idx1-ubyte[.gz]` (or the spellings with a dot,
`train-images.idx3-ubyte`) is DATA with the predefined split train / test; one images file,
`NAME-images-idx3-ubyte[.gz]` with `NAME-labels-idx1-ubyte[.gz]` beside it, is DATA of those
images alone, without a split (EMNIST's sets, or the test file alone for `fne predict`). The
images are held in an array and read as an `.npz`'s are (`fne.data.hdf5.ArraySource`): the same
pixel checks, content keys and warnings; the labels are their digits as text, or the names a
`classes.txt` beside the files gives them (line k naming label k).
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path

import numpy as np

from fne.data.dataset import Dataset
from fne.data.hdf5 import ArraySource, read_labels, warn_dark
from fne.data.labels import class_order
from fne.errors import DataError

__all__ = ["find_idx", "idx_dataset", "is_idx_file", "read_idx"]

# The idx format (yann.lecun.com/exdb/mnist): 0, 0, a type byte, the number of dimensions, one
# big-endian uint32 size a dimension, then the values in C order.
_TYPES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
_IMAGES = re.compile(r"(?P<stem>.+)-images(?P<sep>[-.])idx3-ubyte(?P<gz>\.gz)?", re.IGNORECASE)
_LABELS = re.compile(r"(?P<stem>.+)-labels(?P<sep>[-.])idx1-ubyte(?P<gz>\.gz)?", re.IGNORECASE)
_PARTS = (("train", "train"), ("t10k", "test"))  # the file names' part, the split word
CLASS_NAMES = "classes.txt"  # beside the idx files: one class name a line, line k naming label k


def is_idx_file(name: str) -> bool:
    """Whether file `name` is named as an idx images or labels file (`NAME-images-idx3-ubyte[.gz]`,
    `NAME-labels-idx1-ubyte[.gz]`)."""
    return _IMAGES.fullmatch(name) is not None or _LABELS.fullmatch(name) is not None


def _beside(folder: Path, stem: str, kind: str) -> Path | None:
    """The file `stem-images-idx3-ubyte` (kind `images`) or `stem-labels-idx1-ubyte` (`labels`) in
    `folder`, in any of its spellings; the uncompressed one where both are there (torchvision's
    MNIST/raw/ keeps both), as it is read without inflating it."""
    dims = "idx3" if kind == "images" else "idx1"
    for name in (f"{stem}-{kind}{sep}{dims}-ubyte{gz}" for gz in ("", ".gz") for sep in "-."):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx(folder: Path) -> list[tuple[str, Path, Path]]:
    """The idx parts of `folder`: (split word, images file, labels file) of train and t10k, those
    that are there; [] when it holds no idx images file.

    Raises
    ------
    DataError
        An images file without its labels file (or labels without images), or idx images files
        none of which is `train-images-idx3-ubyte` (give one of them as DATA).
    """
    found = []
    for part, word in _PARTS:
        images, labels = _beside(folder, part, "images"), _beside(folder, part, "labels")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            there, kind, missing = (images, "labels-idx1", "labels") if labels is None else (labels, "images-idx3", "images")
            raise DataError(f"DATA {folder}: holds {there.name} and not its {missing} file ({part}-{kind}-ubyte[.gz])")
        found.append((word, images, labels))
    others = sorted(e.name for e in os.scandir(folder) if _IMAGES.fullmatch(e.name) and e.is_file())
    if others and not found:
        raise DataError(f"DATA {folder}: holds idx images files ({', '.join(others[:3])}{', …' * (len(others) > 3)}) and "
                        f"no train-images-idx3-ubyte[.gz]: give one images file as DATA (DATA {folder / others[0]})")
    if found and found[0][0] != "train":
        raise DataError(f"DATA {folder}: holds {found[0][1].name} and no train-images-idx3-ubyte[.gz]: give that "
                        f"file as DATA for its images alone, or add the train files")
    return found


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array of an idx file, gzipped or not (read by its first bytes, whatever its name).

    Parameters
    ----------
    path
        The idx file.

    Returns
    -------
    numpy.ndarray
        Its values (read-only), in the shape its header gives.

    Raises
    ------
    DataError
        Naming the file: unreadable, not an idx file, of a type other than uint8 (0x08), damaged
        or cut short (fewer bytes than its header's sizes need), or with bytes beyond them.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"idx {path}: cannot read ({e.strerror or e})") from None
    if data[:2] == b"\x1f\x8b":  # gzip's magic
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:  # EOFError: the stream ends early
            raise DataError(f"idx {path}: damaged or cut short (gzip: {e})") from None
    if len(data) < 4 or data[0] or data[1] or data[2] not in _TYPES or not data[3]:
        raise DataError(f"idx {path}: not an idx file (it starts {data[:4].hex(' ') or 'empty'}; an idx file "
                        f"starts 00 00, a type byte such as 08, its number of dimensions)")
    if data[2] != 0x08:
        raise DataError(f"idx {path}: holds {_TYPES[data[2]]} values (type 0x{data[2]:02X}); fne reads uint8 "
                        f"idx files (type 0x08) only, as MNIST's")
    ndim, start = data[3], 4 + 4 * data[3]
    if len(data) < start:
        raise DataError(f"idx {path}: damaged or cut short ({len(data)} bytes, short of its header's {start})")
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", ndim, 4))
    size = int(np.prod(shape, dtype=object))  # Python ints: a damaged header's sizes can overflow int64
    if len(data) != start + size:
        what = "damaged or cut short" if len(data) < start + size else "damaged"
        raise DataError(f"idx {path}: {what}: its header says {'×'.join(map(str, shape))} values "
                        f"({start + size:,} bytes), the file holds {len(data):,}")
    return np.frombuffer(data, np.uint8, size, start).reshape(shape)


def _class_names(path: Path) -> list[str] | None:
    """The class names of `classes.txt` beside idx files (line k names label k; blank lines at
    its end ignored), else None: idx holds no names, and none is guessed."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    return [line.strip() for line in text.rstrip().splitlines()]


def _pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The images (N×H×W) and labels (N) of one idx pair, checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"idx {images_path}: holds a {'×'.join(map(str, images.shape))} array, not images "
                        f"(N×H×W, an idx3 file)")
    if labels.ndim != 1:
        raise DataError(f"idx {labels_path}: holds a {'×'.join(map(str, labels.shape))} array, not labels "
                        f"(one per image, 1-D: an idx1 file)")
    if len(images) != len(labels):
        raise DataError(f"idx {labels_path}: {len(labels):,} labels for the {len(images):,} images of "
                        f"{images_path.name}")
    return images, labels


def _parts(path: Path) -> tuple[list[tuple[str, Path, Path]], str]:
    """(split word, images file, labels file) of idx DATA `path` (a folder: `find_idx`; an images
    file: it, no split word) and DATA's name (a folder's; a file's stem: `t10k`)."""
    if path.is_dir():
        return find_idx(path), path.name
    if m := _LABELS.fullmatch(path.name):
        images = _beside(path.parent, m["stem"], "images")
        raise DataError(f"DATA {path}: is an idx labels file; give its images file ("
                        f"{images or path.parent / (m['stem'] + '-images-idx3-ubyte.gz')}), or the folder holding both")
    m = _IMAGES.fullmatch(path.name)
    labels = _beside(path.parent, m["stem"], "labels")
    if labels is None:
        raise DataError(f"DATA {path}: no labels file beside it ({m['stem']}-labels-idx1-ubyte[.gz] in "
                        f"{path.parent}); idx images are read with their labels")
    return [("", path, labels)], m["stem"]


def idx_dataset(path: Path) -> Dataset:
    """idx DATA (the module docstring): a folder of train (and t10k) files, or one images file.

    Parameters
    ----------
    path
        The folder (`find_idx` found its files) or a file named as an idx file (`is_idx_file`).

    Returns
    -------
    Dataset
        Its images in one array, labels "0", "1", ... sorted as numbers (or the names `classes.txt`
        gives them, in its order), and the split train / test where the folder has both parts.

    Raises
    ------
    DataError
        Naming the file (`read_idx`, `_pair`); a labels file given as DATA, an images file without
        its labels file beside it; a folder whose train and t10k images differ in size; a
        `classes.txt` with empty or repeated names, or too few for the labels.
    """
    parts, name = _parts(path)
    read = [_pair(images, labels) for _, images, labels in parts]
    sizes = {p[1].name: x.shape[1:] for p, (x, _) in zip(parts, read, strict=True)}
    if len(set(sizes.values())) > 1:
        raise DataError(f"DATA {path}: its images are " + " and ".join(f"{'×'.join(map(str, s))} in {n}"
                                                                       for n, s in sizes.items()) + "; give them one size")
    images = np.concatenate([x for x, _ in read])  # a writable copy of the read-only buffers
    split = np.repeat([w for w, *_ in parts], [len(x) for x, _ in read]) if len(parts) > 1 else None
    names_file = (path if path.is_dir() else path.parent) / CLASS_NAMES
    names = _class_names(names_file)
    try:
        labels, splits, _ = read_labels(np.concatenate([y for _, y in read]), names, split, len(images), path, "idx",
                                        str(names_file))
    except ValueError as e:  # no images: an idx file of 0 items; a label classes.txt names no class of
        raise DataError(f"DATA {path}: {e}") from None
    warn_dark(images, path)
    return Dataset(
        name=name,
        ids=[f"{p[1].name}:{i}" for p, (x, _) in zip(parts, read, strict=True) for i in range(len(x))],
        labels=labels,
        splits=splits,
        classes=class_order(labels, names),
        sources=list(range(len(images))),
        array_source=ArraySource(array=images),
        split_from=f"its files {' and '.join(p[1].name for p in parts)}" if splits is not None else "",
    )
