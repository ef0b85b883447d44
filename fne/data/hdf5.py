"""HDF5 DATA (`images`, `labels`, optional `split`), the same arrays in a NumPy `.npz`, and
images held in arrays: what a `Dataset` reads its pixels from when they are not files (digits,
an HDF5 file, train.h5 + test.h5, an .npz file)."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fne.data import containers, hdf5_access
from fne.data.labels import by_index, label_text
from fne.errors import DataError


class ArraySource:
    """Images held in an array (digits) or an HDF5 dataset, opened lazily so workers can fork;
    an HDF5 file's images are read from its copy in cache `cache` once `read_shuffled` made one."""

    def __init__(self, array: np.ndarray | None = None, h5_path: str | None = None, cache: str | None = None):
        self._array = array
        self.h5_path = h5_path
        self.cache = cache
        self._copy: str | None = None  # the file's copy for shuffled reading (`hdf5_access`)

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.h5_path is not None:
            state["_array"] = None  # reopen in the worker; h5py handles do not pickle
        return state

    def read_shuffled(self, rows: Sequence[int], progress: bool) -> None:
        """Prepare to read images `rows` in a random order: from the HDF5 file's copy where its
        chunks would be decoded again and again (`hdf5_access.shuffled_copy`), made now if need be."""
        if self.h5_path is None or self._copy is not None:
            return
        self._copy = hdf5_access.shuffled_copy(self.h5_path, rows, self.cache, progress)
        if self._copy is not None:
            self._array = None  # the file, if opened: read the copy from now on

    def _data(self):
        if self._array is None and self._copy is not None:
            try:
                self._array = hdf5_access.open_copy(self._copy)
            except (OSError, ValueError) as e:  # removed, or cut short, since it was made
                warnings.warn(f"cannot read {self._copy}, the copy of {self.h5_path} for reading it shuffled "
                              f"({e}): each image is read from its chunk, slowly", stacklevel=3)
                self._copy = None
        if self._array is None:
            self._array = hdf5_access.open_images(self.h5_path)
        return self._array

    def get(self, i: int) -> np.ndarray:
        return np.asarray(self._data()[i])

    def key(self, i: int) -> str:
        try:
            a = np.ascontiguousarray(self.get(i))
        except OSError as e:  # a damaged chunk of an HDF5 file, as `file_key` says a file it cannot read
            raise DataError(f"HDF5 {self.h5_path}: cannot read image {i} ({e}); the file is damaged") from None
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        return h.hexdigest()


def h5_arrays(path: Path) -> tuple[int, list[str], list[str] | None, list[str] | None]:
    """An HDF5 DATA file's image count, labels (text), split (train / test) and class names
    (`labels.attrs["class_names"]`, or None); `DataError` naming the file when it is not one, or
    is damaged."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"HDF5 {path}: cannot open ({e})") from e
    with f:
        try:
            return _h5_read(f, path)
        except (OSError, KeyError, RuntimeError) as e:  # damaged: h5py's "bad object header version number" (a
            # KeyError), "bad symbol table node signature" (RuntimeError), "filter returned failure during read"
            raise DataError(f"HDF5 {path}: cannot read ({e.args[0] if e.args else e}); the file is damaged") from None


def _h5_read(f, path: Path) -> tuple[int, list[str], list[str] | None, list[str] | None]:
    """`h5_arrays`' reading of the open file `f`."""
    import h5py

    if "images" not in f and "embedding" in f and "layers" in f:  # fne export's file, given back as DATA
        raise DataError(f"HDF5 {path}: is a `fne export` file of features, not images; give the DATA it was "
                        f"exported from (its attribute root: {f.attrs.get('root', '?')})")
    for name in ("images", "labels"):
        if name not in f:
            raise DataError(f"HDF5 {path}: missing dataset {name!r} (found: {', '.join(f.keys())})")
    images, raw = f["images"], f["labels"]
    for name, d in (("images", images), ("labels", raw)):
        if not isinstance(d, h5py.Dataset):
            raise DataError(f"HDF5 {path}: {name!r} is a {type(d).__name__.lower()}, not a dataset")
    try:
        check_arrays(images.shape, images.dtype, raw.shape)
        n = images.shape[0]
        split = f["split"][()] if "split" in f else None
        labels, splits, names = read_labels(raw[()], f["labels"].attrs.get("class_names"), split, n, path,
                                            "dataset", "labels.attrs['class_names']")
    except ValueError as e:
        raise DataError(f"HDF5 {path}: {e}") from None
    warn_dark(images[:64], path)  # the first images only: a large file is not read here
    return n, labels, splits, names


def read_labels(raw: np.ndarray, names, split: np.ndarray | None, n: int, path: Path, kind: str,
                names_at: str) -> tuple[list[str], list[str] | None, list[str] | None]:
    """An array file's labels (text), split and class names, checked against its `n` images.

    Parameters
    ----------
    raw
        The labels as stored: N, or N×1 (Keras's `y_train`).
    names
        The class names the integer labels index, or None.
    split
        train / test / validation words, or 0 / 1, one per image; or None.
    n
        How many images the file holds.
    path, kind, names_at
        The file, what it calls an array ("dataset", "array") and where `names` are, for messages.

    Returns
    -------
    tuple
        The labels, the split (`containers.settle_splits`) or None, the class names or None.

    Raises
    ------
    ValueError
        For labels or a split of another length, missing labels, names that do not index them,
        split words other than train / test / validation, no images.
    """
    raw = np.asarray(raw).reshape(-1)  # N×1 as N
    if len(raw) != n:
        raise ValueError(f"{n} images but {len(raw)} labels")
    labels = [label_text(v) for v in raw]
    if None in labels:
        raise ValueError(f"{labels.count(None)} image(s) have no label (empty or NaN), the first at index "
                         f"{labels.index(None)}; give every image a label")
    if names is not None:
        if np.ndim(names) != 1:  # a scalar was a TypeError (not iterable), a 2-D array names by rows
            raise ValueError(f"{names_at} must be a list of names, one per class, got shape {np.shape(names)}")
        names = [label_text(v) for v in names]
        labels = by_index(labels, names, names_at)
    splits = None
    if split is not None:
        words = [decode_value(v).strip() for v in np.asarray(split).reshape(-1)]
        if len(words) != n:
            raise ValueError(f"{n} images but {len(words)} values in {kind} split")
        splits = [{"0": "train", "1": "test"}.get(w) or containers.normalise_split(w) for w in words]
        bad = sorted({w for w, s in zip(words, splits) if s is None})
        if bad:
            raise ValueError(f"{kind} split has values {bad}; allowed: train, test, 0, 1 and validation "
                             f"(or val, valid, dev)")
        splits = containers.settle_splits(splits, path, f"the split {kind}")
    if n == 0:
        raise ValueError("has no images")
    return labels, splits, names


ARRAY_SUFFIXES = (".h5", ".hdf5", ".npz")  # DATA files of images held in arrays


def array_file(path: Path, cache: str | Path | None = None
               ) -> tuple[int, list[str], list[str] | None, list[str] | None, ArraySource]:
    """An HDF5 (`h5_arrays`) or `.npz` (`npz_arrays`) DATA file's image count, labels, split, class
    names and the `ArraySource` its images are read from (an HDF5 file's copy for shuffled reading
    in `cache`, where `fne train` needs one)."""
    if path.suffix.lower() == ".npz":
        images, labels, splits, names = npz_arrays(path)
        return len(images), labels, splits, names, ArraySource(array=images)
    n, labels, splits, names = h5_arrays(path)
    return n, labels, splits, names, ArraySource(h5_path=str(path), cache=None if cache is None else str(cache))


KERAS_ARRAYS = ("x_train", "y_train", "x_test", "y_test")  # as keras.datasets' mnist.npz holds them


def npz_arrays(path: Path) -> tuple[np.ndarray, list[str], list[str] | None, list[str] | None]:
    """A NumPy `.npz` DATA file's images (read whole into memory), labels (text), split and class
    names: arrays `images` and `labels` (or `x` and `y`, any case) and optional `split`, as in an
    HDF5 file, or `x_train`, `y_train`, `x_test`, `y_test` (Keras's `mnist.npz`), train then test;
    optional `class_names`, which integer labels index. `DataError` naming the file when it is not one."""
    import zipfile
    import zlib

    try:
        with open(path, "rb") as fh:
            if not fh.read(6).startswith((b"PK", b"\x93NUMPY")):  # np.load would call it pickled data
                raise ValueError("not a NumPy .npz file (a zip archive of arrays, as np.savez writes)")
            fh.seek(0)
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy saved under the name .npz
                raise ValueError("holds one array; save the images and labels together: "
                                 "np.savez(file, images=images, labels=labels)")
            with z:
                return _npz_read(z, path)
    except (zipfile.BadZipFile, zlib.error) as e:  # zlib: a member of np.savez_compressed's garbled
        raise DataError(f"NumPy {path}: a damaged or cut-short .npz ({e})") from None
    except (OSError, ValueError, EOFError) as e:  # a damaged member
        raise DataError(f"NumPy {path}: {e}") from None


def _npz_read(z, path: Path) -> tuple[np.ndarray, list[str], list[str] | None, list[str] | None]:
    """`npz_arrays`' work on the open file `z`; ValueError saying what is wrong."""
    found = {k.lower(): k for k in z.files}

    def get(name: str) -> np.ndarray:
        try:
            return z[found[name]]
        except ValueError as e:
            hint = "; store text as np.array(values, dtype=str)" if "allow_pickle" in str(e) else ""
            raise ValueError(f"array {found[name]}: {e}{hint}") from None

    pair = next((p for p in (("images", "labels"), ("x", "y")) if set(p) <= found.keys()), None)
    if pair is not None:
        images, raw = get(pair[0]), get(pair[1])
        split = get("split") if "split" in found else None
    elif set(KERAS_ARRAYS) <= found.keys():
        x, y = [get(k) for k in KERAS_ARRAYS[::2]], [get(k) for k in KERAS_ARRAYS[1::2]]
        for k, xs, ys in zip(("train", "test"), x, y):
            check_arrays(xs.shape, xs.dtype, ys.shape)
            if len(xs) != len(ys):
                raise ValueError(f"x_{k} has {len(xs)} images but y_{k} {len(ys)} labels")
        if x[0].shape[1:] != x[1].shape[1:]:
            raise ValueError(f"x_train's images are {x[0].shape[1:]} and x_test's {x[1].shape[1:]}; give them one shape")
        images, raw = np.concatenate(x), np.concatenate([ys.reshape(len(ys), -1) for ys in y])
        split = np.array(["train"] * len(x[0]) + ["test"] * len(x[1]))
    else:
        raise ValueError(f"needs arrays images and labels (or x and y; optional split, class_names), or "
                         f"{', '.join(KERAS_ARRAYS)} (found: {', '.join(z.files) or 'none'})")
    check_arrays(images.shape, images.dtype, raw.shape)
    names = get("class_names") if "class_names" in found else None
    labels, splits, names = read_labels(raw, names, split, len(images), path, "array", "class_names")
    warn_dark(images, path)
    return images, labels, splits, names


DARK_MAX = 31  # a 5-bit scale: 0-31 is 12% of 0-255, near black; a photo's brightest pixel lies far above it


def check_arrays(shape: tuple[int, ...], dtype: np.dtype, label_shape: tuple[int, ...]) -> None:
    """Refuse, in one line saying how to store them, images other than uint8 N×H×W, N×H×W×1 or
    N×H×W×3 (channels-first, floats) and labels other than one per image (N, or N×1: Keras's
    `y_train`; one-hot N×K).

    Parameters
    ----------
    shape, dtype
        The images' shape and dtype.
    label_shape
        The labels' shape.

    Raises
    ------
    ValueError
        Naming the array, its shape or dtype, and the conversion that makes it readable.
    """
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
        first = len(shape) == 4 and shape[1] in (1, 3)  # N×C×H×W, as torch stores images
        raise ValueError(f"images must be N×H×W, N×H×W×1 or N×H×W×3, got shape {shape}" + (
            "; channels first? store np.transpose(images, (0, 2, 3, 1))" if first else ""))
    if 0 in shape[1:3]:  # each image was skipped alone, "ZeroDivisionError: division by zero"
        raise ValueError(f"images must be at least 1×1 pixels, got shape {shape}")
    if dtype != np.uint8:  # Pillow would refuse every image, one by one
        hint = ("(images * 255).round().astype(np.uint8) for values in 0-1" if np.issubdtype(dtype, np.floating)
                else "images.astype(np.uint8) if they lie in 0-255")
        raise ValueError(f"images must be uint8 (0-255), got {dtype}; store {hint}")
    if len(label_shape) != 1 and label_shape[1:] != (1,):
        one_hot = len(label_shape) == 2 and label_shape[0] == shape[0]
        raise ValueError(f"labels must be one per image (shape N), got shape {label_shape}" + (
            "; one-hot? store labels.argmax(axis=1)" if one_hot else ""))


def warn_dark(images: np.ndarray, path: Path) -> None:
    """Warn where uint8 `images` (those of file `path`, or its first ones) reach only DARK_MAX: a
    0-1 (binarised MNIST), 0-15 or 0-16 (scikit-learn's digits) scale read as 0-255 comes out near
    black, as a float image in 0-1 does. Up to 256 images spread over the array are looked at.

    Parameters
    ----------
    images
        uint8 N×H×W(×C) images.
    path
        Their file, named in the warning.
    """
    step = max(1, len(images) // 256)  # 256 images: a large array's max costs no time worth noticing
    top = int(images[::step].max()) if images.size else 0
    if 0 < top <= DARK_MAX:  # all 0: blank images, not a small scale
        warnings.warn(f"{path}: its images' values reach only {top}, so they come out near black (pixels are "
                      f"0-255); store images * {255 // top}", stacklevel=4)


def decode_value(v) -> str:
    """An HDF5 cell as text: bytes decoded, whole floats as ints."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


class PartsSource(ArraySource):
    """Several HDF5 files read as one: item i of the k-th file is item starts[k] + i."""

    def __init__(self, parts: list[ArraySource], sizes: list[int]):
        self.parts = parts
        self.starts = np.cumsum([0] + sizes[:-1])

    def __getstate__(self):
        return self.__dict__

    def get(self, i: int) -> np.ndarray:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k].get(i - int(self.starts[k]))

    def read_shuffled(self, rows: Sequence[int], progress: bool) -> None:
        """Each file's `ArraySource.read_shuffled`, for its images among `rows`."""
        rows = np.asarray(rows, dtype=np.int64)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        for k, p in enumerate(self.parts):
            p.read_shuffled(rows[part == k] - int(self.starts[k]), progress)
