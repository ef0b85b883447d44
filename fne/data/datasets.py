"""DATA forms: a folder, CSV, HDF5, .npz, idx files, tar shards, Parquet files, `hf:` or `digits`, each resolved
to one `fne.data.dataset.Dataset` of images, labels and an optional split (`load_dataset`).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np

from fne.data import containers, random_access
from fne.data.csv_list import csv_dataset
from fne.data.dataset import Dataset, file_dataset
from fne.data.formats import IMAGE_EXTENSIONS
from fne.data.hdf5 import ARRAY_SUFFIXES, ArraySource, PartsSource, array_file
from fne.data.idx import find_idx, idx_dataset, is_idx_file
from fne.data.images import image_files, no_image_files, read_image, to_rgb
from fne.data.labels import class_order, member_labels, missing_words, utf8_names
from fne.data.parquet import LABEL_COLUMNS, list_parquet, materialise_hf, nested, parse_hf
from fne.data.webdataset import LABEL_EXTENSIONS, list_tar, open_tar
from fne.errors import DataError, expect_path
from fne.option_handling import named, refusal
from fne.progress import first_few, say_skipped

_FORMS = "give a folder, a .csv, a .h5 or .npz file, idx files, .tar shards, .parquet files, hf:NAME or 'digits'"  # what DATA may be
__all__ = ["IMAGE_EXTENSIONS", "load_dataset", "read_image", "to_rgb"]



# ---------------------------------------------------------------- DATA forms


def load_dataset(spec: str | Path | Dataset, label_key: str | None = None,
                 cache: str | Path | None = None) -> Dataset:
    """Resolve DATA: a folder, CSV, HDF5, NumPy .npz, folder of train.h5/test.h5, MNIST's idx files (a
    folder of train-/t10k-images-idx3-ubyte[.gz] and their labels, or one images file), `digits`, WebDataset tar
    shards (a .tar, a folder of them, `train-{000000..000127}.tar`), Parquet files (a file, a
    folder, a glob) or `hf:NAME[:CONFIG][@SPLIT]`; a Dataset is returned as it is.

    Parameters
    ----------
    spec
        The DATA argument, or a Dataset already loaded (then `label_key` must be None).
    label_key
        Tar shards: the member extension (`cls`, `txt`) or .json field holding the label;
        Parquet: the label column. Default: .cls, .txt, then .json's `label`; column `label`.
    cache
        The cache (--cache) beside whose stores containers' listings and `hf:` downloads are
        kept (see `fne.cache.store.local_root`); default $FNE_CACHE, else the default cache.

    Returns
    -------
    Dataset
        With DATA as given (`Dataset.as_given`), which its errors name.
    """
    d = _load(spec, label_key, cache)
    if not isinstance(spec, Dataset):
        d.given = str(spec)
    return d


def _load(spec: str | Path | Dataset, label_key: str | None = None, cache: str | Path | None = None) -> Dataset:
    """`load_dataset`'s work, on DATA as given."""
    if isinstance(spec, Dataset):
        if label_key is not None:
            raise DataError(f"label_key={label_key!r} is for DATA given by name; the Dataset {spec.name!r} "
                            f"has its labels already")
        return spec
    expect_path(spec, "data")
    spec_s = str(spec)
    if not spec_s.strip():  # an unset shell variable: not the current folder
        raise DataError(f"DATA {spec_s!r} is empty ({_FORMS})")
    if spec_s == "digits":
        if os.path.lexists(spec_s):  # the bundled set would silently stand in for the user's folder
            raise DataError(f"DATA 'digits' names scikit-learn's bundled digits, and {os.path.abspath(spec_s)} "
                            f"is here too; give ./digits (or its full path) for that, or run from another "
                            f"folder for the bundled set")
        return _digits()
    if spec_s.startswith("hf:"):
        return _hf(spec_s, label_key, cache)
    path = Path(spec_s).expanduser()
    if path.name in ("", ".."):  # `.` or `..`: DATA named by its folder, not "" or ".." (reports group by name)
        spec_s = str(path := Path(os.path.abspath(path)))
    where = os.path.abspath(path)
    if utf8_names([where])[0] != where:  # its path keys the manifest and the locks, and names DATA in records
        raise DataError(f"DATA {utf8_names([where])[0]}: its path is not UTF-8 text; rename its folders (the names "
                        f"inside it may be any bytes: they are read escaped)")
    # os.path's tests, not Path's: those raised on a name too long for the file system (ENAMETOOLONG)
    if containers.is_container_spec(spec_s) and not os.path.isdir(path):  # a folder `a[1].tar` is a folder
        return _containers(spec_s, label_key, cache)
    if not os.path.exists(path):
        raise DataError(f"DATA {spec_s!r} does not exist ({_FORMS})")
    if path.is_dir() and (found := containers.find_containers(path)):
        return _containers(spec_s, label_key, cache, found)
    if label_key is not None:  # a folder's, a CSV's and an HDF5 file's labels have one place
        raise refusal(lambda py: f"{named('label_key', py, label_key)}: applies to tar shards, Parquet and hf: DATA, "
                                 f"not {path}", DataError)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return csv_dataset(path)
        if is_idx_file(path.name):
            return idx_dataset(path)
        if suffix in ARRAY_SUFFIXES:
            return _arrays(path, cache)
        if suffix in IMAGE_EXTENSIONS:  # `fne predict RUN photo.jpg`
            where = path.parent if path.parent != Path(".") else Path.cwd()
            raise DataError(f"DATA {path}: is one image; DATA holds images: give the folder holding it ({where}: "
                            f"its images, without class folders, are unlabelled DATA for fne extract and fne predict)")
        raise DataError(f"DATA {path}: unsupported file type {suffix!r} (expected .csv, .h5, .npz, .tar, .parquet "
                        f"or an idx file such as train-images-idx3-ubyte.gz)" + (
            "; unpack the archive and give its folder" if suffix in (".zip", ".gz", ".tgz", ".7z", ".rar", ".xz") else
            "; save the images and labels together: np.savez(file, images=images, labels=labels)" if suffix == ".npy"
            else ""))
    if not path.is_dir():  # a device, a pipe, a socket
        raise DataError(f"DATA {path}: neither a folder nor a file ({_FORMS})")
    if find_idx(path):
        return idx_dataset(path)
    if _torchvision_idx(path):  # torchvision's MNIST/ and FashionMNIST/: raw/ holds the idx files
        d = idx_dataset(path / "raw")
        d.name = path.name
        return d
    if any((path / f"train{x}").is_file() for x in ARRAY_SUFFIXES) and _held_out(
            [n.rpartition(".")[0] for n in _array_names(path)]):
        return _array_parts(path, cache)
    arrays = _array_names(path)
    if arrays and not _has_class_folder_or_image(path):  # not a folder of images
        raise DataError(f"DATA {path}: holds {', '.join(arrays)} and no class folders; a folder of array files is a "
                        f"predefined split, train.h5 + test.h5 (or .npz): give the file itself (DATA {path / arrays[0]}), "
                        f"or add its test file")
    _cache_not_listed(path, cache)
    if _is_split_folder([e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]):
        return _split_folder(path)
    return _folder(path)


def _has_class_folder_or_image(path: Path) -> bool:
    with os.scandir(path) as entries:  # closed though any() stops early (else a ResourceWarning)
        return any((e.is_dir() and not e.name.startswith(".")) or Path(e.name).suffix.lower() in IMAGE_EXTENSIONS
                   for e in entries)


def _torchvision_idx(path: Path) -> bool:
    """Whether `path` is torchvision's folder of an idx set (`root/MNIST`, `root/FashionMNIST`):
    sub-folders raw/ (the idx files) and, from older torchvision, processed/, nothing else."""
    if not (path / "raw").is_dir():  # one stat, not a scan, for every other folder
        return False
    subs = {e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")}
    return subs <= {"raw", "processed"} and bool(find_idx(path / "raw"))


def _is_split_folder(dirs: list[str]) -> bool:
    """train/ beside a test or validation folder, or (as in shards named so) a validation folder
    beside a test folder with no train/, the validation part then training: a split, not classes.
    The part names are read in lower case only (`_folder` refuses Train/ + Test/ in one line)."""
    if "train" in dirs:
        return _held_out(dirs)
    words = {containers.normalise_split(n) for n in dirs if n == n.lower()}
    return {"val", "test"} <= words


def _held_out(names) -> bool:
    """Whether DATA's part names include a test or validation part (then it has a split)."""
    return any(containers.normalise_split(n) in ("test", "val") for n in names)


def _ordered_parts(names: list[str], train: str, test: str, word: dict[str, str | None]) -> list[str]:
    """A split DATA's parts in listing order: `train`, the other training parts and (beside a test
    part) the validation parts, by name; then the other test parts, `test` last. With no test
    part the validation parts are the held-out part (`containers.settle_splits`)."""
    val_side = "train" if "test" in word.values() else "test"
    side = {n: val_side if w == "val" else w for n, w in word.items()}
    parts = [train] * (train in names) + [n for n in names if n != train and side[n] == "train"]
    return parts + [n for n in names if n != test and side[n] == "test"] + ([test] if test in names else [])


def _cache_not_listed(root: Path, cache: str | Path | None) -> None:
    """DataError when the cache folder (its stores, manifests and listings) is a folder DATA's
    listing reads: DATA itself, or a visible folder inside it, whose stores would become classes
    (a hidden one, DATA/.cache, is left out of the listing as every hidden folder is)."""
    from fne.cache.store import local_root

    c, d = local_root(cache).resolve(), root.resolve()
    if c != d and (d not in c.parents or c.relative_to(d).parts[0].startswith(".")):
        return
    where = "is DATA" if c == d else "is inside DATA"
    raise refusal(lambda py: f"DATA {root}: the cache {local_root(cache)} {where}, whose listing would read the "
                             f"cache's folders as the data's; give {named('cache', py)} a folder outside DATA (or a "
                             f"hidden one, {root / '.fne-cache'})", DataError)


def _class_folder(root: Path, left_out: list[str]) -> tuple[list[str], list[str]]:
    class_dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not class_dirs:
        none = "" if image_files(str(root)) else f", and no images: {no_image_files(str(root))}"
        raise DataError(f"DATA {root}: no class sub-folders (expected {root}/<class>/<image files>){none}")
    files, labels, grouped, skipped = [], [], {}, []
    try:  # what the folders' listings skipped: a line per reason for DATA, not per class folder
        for name in class_dirs:
            imgs = image_files(os.path.join(root, name), left_out, skipped)
            if not imgs:
                raise DataError(f"DATA {root}: class folder {name!r} has no images: "
                                f"{no_image_files(os.path.join(root, name))}")
            rel = [p[len(str(root)) + len(name) + 2:].split(os.sep, 1) for p in imgs]
            tops = {r[0].lower() for r in rel}  # DATA given a level up
            if "train" in tops and tops & _HELD_OUT:
                raise DataError(f"DATA {root}: class folder {name!r} holds a train/ and test/ (or val/) split of its own: give "
                                f"{os.path.join(root, name)} as DATA")
            if len(tops) > 1 and all(len(r) > 1 for r in rel):  # animals/cat/, animals/dog/: one class, animals
                grouped[name] = sorted({r[0] for r in rel})
            files += imgs
            labels += [name] * len(imgs)
    finally:
        say_skipped(skipped, stacklevel=5)
    if grouped:
        subs = [f"{g}/{s}/" for g, ss in grouped.items() for s in ss]
        warnings.warn(f"DATA {root}: {len(grouped)} of {len(class_dirs)} class folder(s) hold their images in sub-folders "
                      f"only ({', '.join(subs[:4])}{', …' * (len(subs) > 4)}): each class folder is one class, its "
                      f"sub-folders' images together; for a class per sub-folder, " + (
                          f"give {root / next(iter(grouped))} as DATA, or list the images in a CSV" if len(grouped) == 1
                          else f"list the images of every group in a CSV (giving one group's folder, "
                               f"{root / next(iter(grouped))}, as DATA leaves the others out)"),
                      stacklevel=4)
    return files, labels


def _folder(root: Path) -> Dataset:
    entries = list(os.scandir(root))
    has_dirs = any(e.is_dir() and not e.name.startswith(".") for e in entries)
    loose = sorted(e.name for e in entries if e.is_file() and not e.name.startswith(".")
                   and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)
    if loose and not has_dirs:  # a flat folder of images: unlabelled (extract, predict)
        return Dataset(name=root.name, ids=loose, labels=None, splits=None,
                       classes=[], sources=[os.path.join(root, n) for n in loose], root=str(root),
                       unlabelled="its images are in no class folder (one sub-folder per class: DATA/<class>/<image>)")
    dirs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    train, held = [n for n in dirs if n.lower() == "train"], [n for n in dirs if n.lower() in _HELD_OUT]
    if held and (train or len(held) > 1):  # not classes (val/ + test/ too): a split fne would fit as classes
        how = "name the held-out folder test/" if train else "val/ and test/, or name the training folder train/"
        raise DataError(f"DATA {root}: folders {(train or held)[0]}/ and {held[-1]}/ are a split, not classes; a predefined "
                        f"split is read from train/ and test/ (lower case: {how}), or give the train folder alone as DATA")
    if train and dirs == train:  # not a class named train (CIFAR-100 and VOC have one, beside others): a split
        raise DataError(f"DATA {root}: holds {train[0]}/ and no test/ (or val/): give {root / train[0]} as DATA "
                        f"for random splits, or add test/")
    if loose:
        warnings.warn(f"DATA {root}: {len(loose)} image(s) beside the class folders belong to no class, left out: "
                      f"{first_few(loose, 3)}", stacklevel=3)
    left_out: list[str] = list(loose)
    files, labels = _class_folder(root, left_out)
    d = file_dataset(root.name, root, files, labels, None)
    d.left_out = left_out
    return d


_HELD_OUT = {"val", "valid", "validation", "test", "testing"}


def _split_folder(root: Path) -> Dataset:
    """train/ and test/, each of class folders; a validation folder (val/, valid/, validation/,
    dev/) joins train beside test/ (the FNE paper's train = train + val), is the held-out part
    without one (ImageNet's train/ and val/), and the training part without train/ (val/ and
    test/), as in tar shards and Parquet files."""
    files, labels, splits = [], [], []
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    names = sorted(e.name for e in entries if e.is_dir())
    left_out = sorted(e.name for e in entries if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)
    word = {n: containers.normalise_split(n) for n in names}
    what = [", ".join(f"{n}/" for n in names if word[n] is None)]
    what += [f"{len(left_out)} image(s) beside train/ and test/ ({first_few(left_out, 3)})"
             if left_out else ""]
    if any(what):
        warnings.warn(f"DATA {root}: {' and '.join(w for w in what if w)} left out: a predefined split reads "
                      f"train/, test/ and a validation folder (val/)", stacklevel=3)
    parts = _ordered_parts(names, "train", "test", word)
    for part in parts:
        f, lab = _class_folder(root / part, left_out)
        files += f
        labels += lab
        splits += [word[part]] * len(f)
    d = file_dataset(root.name, root, files, labels, containers.settle_splits(splits, root, ", ".join(f"{n}/" for n in names if word[n] == "val")))
    d.left_out = left_out
    d.split_from = f"its {_and([f'{n}/' for n in parts])} folders"
    return d


def _and(words: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return " and ".join(filter(None, [", ".join(words[:-1]), words[-1]]))


def _arrays(path: Path, cache: str | Path | None) -> Dataset:
    """HDF5 or .npz DATA (`array_file`); `fne train` keeps an HDF5 file's copy for shuffled
    reading, where it needs one, in `cache`."""
    n, labels, splits, names, source = array_file(path, cache)
    return Dataset(
        name=path.stem,
        ids=[f"{path.name}:{i}" for i in range(n)],
        labels=labels,
        splits=splits,
        classes=class_order(labels, names),
        sources=list(range(n)),
        array_source=source,
        split_from=f"the split of {path}" if splits is not None else "",
    )


def _array_names(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_file() and e.name.lower().endswith(ARRAY_SUFFIXES))


def _array_parts(root: Path, cache: str | Path | None) -> Dataset:
    """train.h5 and test.h5 (or .npz, or one of each); a validation file (val.h5, validation.npz,
    …) joins train beside the test file and is the held-out part without one, as a val/ folder is."""
    names = _array_names(root)
    word = {n: containers.normalise_split(n.rpartition(".")[0]) for n in names}
    other = [n for n in names if word[n] is None]
    if other:
        warnings.warn(f"DATA {root}: {', '.join(other)} left out: a predefined split reads train.h5, test.h5 "
                      f"and a validation file (val.h5), or such .npz files", stacklevel=3)
    train, test = (next((n for n in names if n.rpartition(".")[0] == w), "") for w in ("train", "test"))
    order = _ordered_parts(names, train, test, word)
    read = {n: array_file(root / n, cache) for n in order}  # n: (count, labels, split, class names, source)
    labels = [lab for n in order for lab in read[n][1]]
    given = {n: read[n][3] for n in order}
    if len({repr(v) for v in given.values()}) > 1:  # one class order: a file's names index its labels
        raise DataError(f"DATA {root}: its files name their classes differently (class_names: "
                        + "; ".join(f"{n} {'none' if v is None else first_few(v)}" for n, v in given.items())
                        + "); give each file the same list")
    return Dataset(
        name=root.name,
        ids=[f"{n}:{i}" for n in order for i in range(read[n][0])],
        labels=labels,
        splits=containers.settle_splits([word[n] for n in order for _ in range(read[n][0])], root,
                                      ", ".join(n for n in names if word[n] == "val")),
        classes=class_order(labels, given[order[0]]),
        sources=list(range(len(labels))),
        array_source=PartsSource([read[n][4] for n in order], [read[n][0] for n in order]),  # one view of all
        split_from=f"its files {_and(order)}",
    )


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * 16.0, 0, 255).astype(np.uint8)  # 0..16 -> 0..255 grey
    n = len(images)
    labels = [str(int(t)) for t in d.target]
    return Dataset(
        name="digits",
        ids=[f"digits:{i:04d}" for i in range(n)],
        labels=labels,
        splits=None,
        classes=[str(i) for i in range(10)],
        sources=list(range(n)),
        array_source=ArraySource(array=images),
    )


# ---------------------------------------------------------------- tar shards, Parquet


def _container_files(spec: str, found: list[Path] | None = None) -> tuple[list[Path], Path, str]:
    """(files, their root, "tar" or "parquet") of DATA as tar shards or Parquet files: one file, a
    brace pattern or a glob, or a folder (`found`: the files `containers.find_containers` found in it)."""
    if found is not None:
        files, root = found, Path(os.path.expanduser(spec))
    else:
        files = [Path(f) for f in containers.expand(spec)]
        missing = [str(f) for f in files if not os.path.isfile(f)]
        if not files:
            raise DataError(f"DATA {spec!r}: the pattern matches no file")
        if missing:
            raise DataError(f"DATA {spec!r}: {len(missing)} file(s) do not exist: {', '.join(missing[:3])}")
        root = Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
    kinds = {"tar" if f.suffix.lower() in containers.TAR_SUFFIXES else "parquet" for f in files}
    if len(kinds) > 1:
        raise DataError(f"DATA {spec}: mixes .tar and .parquet files; give one kind")
    return files, root, kinds.pop()


def check_listable(data: str | Path) -> None:
    """A DataError where DATA, local tar shards or Parquet files (`containers.takes_label_key`),
    cannot be listed: a file missing, a file that is no tar, no Parquet file that opens (one that
    does not is skipped with a warning when listed). Reads one header or footer per file, not the
    listing: for a verb that says DATA's images are not cached without listing them (the cache
    that would keep the listings does not exist), so a DATA it could never read is said first."""
    spec = str(data)
    if spec.startswith("hf:"):  # the Hub's files are fetched into the cache
        return
    path = Path(spec).expanduser()
    files, _, kind = _container_files(spec, containers.find_containers(path) if path.is_dir() else None)
    if kind == "tar":
        members = False
        for f in files:
            with open_tar(str(f.resolve())) as t:
                members = members or t.next() is not None
        if not members:  # every tar empty: what `fne extract` says of it, not that its images are not cached
            raise no_images(spec, len(files), kind)
        return
    from fne.data.parquet import _pq

    errors = []
    for f in files:
        try:
            with _pq().ParquetFile(f.resolve()) as pf:
                if pf.metadata.num_rows:
                    return
        except Exception as e:  # noqa: BLE001 -- pyarrow raises ArrowInvalid / OSError on a damaged footer
            errors.append(f"{f.resolve()}: unreadable Parquet file "  # as its listing says it (list_parquet)
                          f"({(str(e).strip().splitlines() or [type(e).__name__])[0]})")
    raise no_images(spec, len(files), kind, errors)  # none readable, or the readable ones have no rows


def no_images(data: str, n_files: int, kind: str, unread: list[str] | None = None) -> DataError:
    """The error of DATA whose `n_files` tar or Parquet files (`kind`) hold no image; `unread`:
    "path: why" of those that could not be read. `fne extract` (listing them) and a verb that
    checks them before listing (`check_listable`) say it in the same words."""
    files, unread = f"{n_files} {'Parquet' if kind == 'parquet' else kind} file(s)", unread or []
    if unread and len(unread) == n_files:
        return DataError(f"DATA {data}: none of its {files} can be read ({unread[0]})")
    return DataError(f"DATA {data}: no images in its {files}" + (
        f" ({unread[0]}{f', and {len(unread) - 1} more unreadable' if len(unread) > 1 else ''})" if unread else ""))


def _containers(spec: str, label_key: str | None, cache: str | Path | None,
                found: list[Path] | None = None) -> Dataset:
    """DATA as tar shards or Parquet files (`_container_files`; `found`: a folder's)."""
    files, root, kind = _container_files(spec, found)
    return _container_dataset(containers.data_name(spec), [str(f.resolve()) for f in files], kind,
                              str(root.resolve()), label_key, cache, data=spec)


def _listing(path: str, kind: str, label_key: str | None, cache: str | Path | None) -> containers.Listing:
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    listing = containers.cached_listing(path, st, label_key, cache)
    if listing is not None:
        return listing
    listed_at = time.time_ns()
    listing = (list_tar if kind == "tar" else list_parquet)(path, st, label_key)
    listing.listed_at_ns, listing.label_key = listed_at, label_key
    listing.cache = None if cache is None else str(cache)
    containers.save_listing(listing)
    return listing


def _container_dataset(name: str, files: list[str], kind: str, root: str, label_key: str | None,
                       cache: str | Path | None, data: str | None = None) -> Dataset:
    """One Dataset over the members of `files` (in file order, then member order); `data`: DATA as
    the user gave it, which its errors name (default `name`)."""
    data = data or name
    listings: dict[str, containers.Listing] = {}
    ids, labels, splits, sources, bad = [], [], [], [], []
    class_names, named_by = None, set()  # where the members' splits were read: a field of theirs, a file's name
    for path in files:
        listing = listings[path] = _listing(path, kind, label_key, cache)
        rel = os.path.relpath(path, root)
        if listing.broken:
            read = "its members before that are read" if listing.members or listing.bad else "skipped"
            warnings.warn(f"{rel}: {listing.broken}; {read}", stacklevel=2)
        bad += [(f"{rel}:{member}", why) for member, why in listing.bad]
        file_split = containers.split_of_name(path, root)
        for mname, a, b, label, split in listing.members:
            named_by.add("member" if split else "file")
            split = split or file_split
            ids.append(f"{rel}:{mname}")
            labels.append(label)
            splits.append(split)
            sources.append(containers.Member(path, mname, a, b))
        class_names = class_names or listing.class_names
    say_skipped(bad)  # one line per reason, however many members
    if not sources:
        raise no_images(data, len(files), kind, [f"{p}: {x.broken}" for p, x in listings.items() if x.broken])
    labels = member_labels(ids, labels)
    if labels is not None and not class_names:  # ClassLabel names are the dataset's, not a missing value's text
        missing_words(labels, ids, f"DATA {data}")
    has_split = all(s is not None for s in splits)
    if not has_split and any(s is not None for s in splits):
        raise DataError(f"DATA {data}: some images have a split and some do not "
                        f"(e.g. {ids[splits.index(None)]}); name every shard train-* / test-*, or none")
    splits = containers.settle_splits(splits, data, "named validation") if has_split else None
    has_split = splits is not None  # one split only: a plain labelled set (random splits apply)
    keep = range(len(ids)) if labels is None else [i for i, lab in enumerate(labels) if lab is not None]
    dataset = Dataset(name=name, ids=[ids[i] for i in keep],
                      labels=None if labels is None else [labels[i] for i in keep],
                      splits=[splits[i] for i in keep] if has_split else None, classes=[],
                      sources=[sources[i] for i in keep], root=root, container=containers.ContainerReader(listings),
                      left_out=[b for b, _ in bad] + ([] if labels is None else [ids[i] for i, lab in enumerate(labels) if lab is None]))
    if dataset.labels is not None:
        names = class_names if class_names and set(dataset.labels) <= set(class_names) else None
        dataset.classes = class_order(dataset.labels, names)
    elif label_key:
        dataset.unlabelled = f"no {'member' if kind == 'tar' else 'row'} has a {label_key!r} label (--label-key {label_key})"
    else:
        where = (f"member has a label ({', '.join('.' + e for e in LABEL_EXTENSIONS)} or a .json label field"
                 if kind == "tar" else f"row has a label (a column {', '.join(LABEL_COLUMNS)}")
        dataset.unlabelled = f"no {where}, or the one --label-key names)" + _columns(kind, files)
    if has_split:
        field_ = "the split column of its Parquet files" if kind == "parquet" else "its members' split (.split, .json)"
        dataset.split_from = _and([w for k, w in (("member", field_), ("file", "its files' names, train-* and "
                                                                               "test-*")) if k in named_by])
    return dataset


def _columns(kind: str, files: list[str]) -> str:
    """Parquet DATA: "; its columns: ..." of its first file that has a readable footer, for the
    message that finds no label column (else "")."""
    if kind != "parquet":
        return ""
    for f in files:
        try:
            schema = random_access.open_pages(f).schema_arrow
            return "; its columns: " + ", ".join(f"{c.name} ({c.type}: not one label an image)"
                                                 if c.name in LABEL_COLUMNS and nested(c.type) else c.name for c in schema)
        except Exception:  # pyarrow raises ArrowInvalid / OSError on a damaged footer
            continue
    return ""


def _hf(spec: str, label_key: str | None, cache: str | Path | None) -> Dataset:
    """`hf:NAME[:CONFIG][@SPLIT]`: the Hub dataset's Parquet files (loaded once into the cache);
    with @SPLIT, that split's files only (then DATA has no predefined split)."""
    folder, split = materialise_hf(spec, cache)
    files = containers.find_containers(folder)
    chosen = [f for f in files if split is None or f.name.startswith(f"{split}-")]
    if not chosen:
        have = sorted({f.name.split("-")[0] for f in files})
        raise DataError(f"DATA {spec}: no split {split!r} (this dataset has: {', '.join(have)})")
    d = _container_dataset(parse_hf(spec)[0].split("/")[-1], [str(f) for f in chosen], "parquet", str(folder),
                           label_key, cache, data=spec)
    if split is not None:
        d.splits = None
    return d
