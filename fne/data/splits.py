"""Which images train and which test: one split rule for `fne fit` and `fne train`.

`make_splits` gives (train, test) index pairs: DATA's predefined split, a fixed number of
training images per class, or stratified random splits (scikit-learn's
StratifiedShuffleSplit). `fne train` takes the first pair and carves its validation part from
the training images with the same splitter (`train_val_test`), so for one DATA and seed fit's
first split and train's test images are the same images.

Given the images' content keys, a random split draws distinct images, and every copy of an
image (the same bytes under other names) goes to the side its first copy drew: no test or
validation image has a byte-identical copy among the images a model was fitted on. Where no
two images share a key the splits are the ones drawn without keys.
"""

from __future__ import annotations

import math
import unicodedata
import warnings

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit

from fne.data.dataset import Dataset
from fne.errors import DataError, FneError
from fne.option_handling import drawn_given, named, refusal
from fne.progress import first_few, said


def make_splits(dataset: Dataset, y: np.ndarray, splits: int = 1, test_size: float = 0.25,
                train_per_class: int | None = None, seed: int = 0,
                keys: list[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) dataset indices of each split, in the splitter's order. `splits`, `test_size`
    and `train_per_class` are the checked values of fit's or train's options (fne.options).

    `keys` (the images' content keys, `Dataset.keys`) keep copies of one image on one side of a
    random split (the module's docstring); a predefined split is DATA's own.
    """
    if dataset.has_split:  # the options given for random splits are named by `not_applied`
        check_test_classes(dataset)
        tr, te = np.flatnonzero(dataset.in_train()), np.flatnonzero(np.array(dataset.splits) == "test")
        if len(tr) == 0 or len(te) == 0:
            raise DataError(f"DATA {dataset.as_given}: predefined split needs both train and test images")
        return [(tr, te)]
    copies = Copies(np.arange(len(y)), keys)
    counts = np.bincount(y[copies.firsts], minlength=len(dataset.classes))
    distinct = " distinct" if copies.any else ""
    if train_per_class is not None:
        drawn = _per_class(dataset, y[copies.firsts], counts, splits, train_per_class, seed, distinct)
        return copies.spread([(copies.firsts[a], copies.firsts[b]) for a, b in drawn])
    if counts[counts > 0].min() < 2:
        ones = [dataset.classes[c] for c in np.flatnonzero(counts == 1)]
        # copies under two classes count once, under the first image's class: what a class lost, said
        clash = "".join(f"; {note}" for note in duplicate_notes(dataset, keys, [])) if copies.any else ""
        raise FneError(f"DATA {dataset.as_given}: every class needs at least 2{distinct} images for a random split; "
                       f"{len(ones)} class(es) have 1: {first_few(ones)}{clash}")
    return copies.spread(stratified(copies.firsts, y[copies.firsts], test_size, seed, "test_size", splits))


def not_applied(dataset: Dataset, options) -> None:
    """Warn, in one line, where DATA has its own split and `options` set random splits (``--splits``,
    ``--test-size``, ``--train-per-class`` other than their defaults, `fne.option_handling.drawn_given`):
    the options go unused, since DATA's split is used as it is, and the line names them and
    where that split comes from (`Dataset.split_from`). Silently not done, they left a user
    believing a figure was of 3 random splits, or of 5 training images a class. Likewise `fne
    train`'s ``--val-fraction`` (other than its default and 0) where DATA has a validation part
    of its own, which picks the epoch instead.

    Parameters
    ----------
    dataset : Dataset
        The verb's DATA (named as given, `Dataset.as_given`).
    options : FitOptions, TrainConfig or AdviseOptions
        The verb's checked options.
    """
    moot = drawn_given(options) if dataset.has_split else []
    val = getattr(options, "val_fraction", 0)
    val_moot = dataset.has_val_part and val not in (0, getattr(type(options), "val_fraction", 0))  # its default
    where = dataset.split_from or "a predefined split"

    def line(py: bool) -> str:
        said_ = [f"{' and '.join(named(f, py, getattr(options, f.name), plain=True) for f in moot)} "
                 f"{'is' if len(moot) == 1 else 'are'} not applied: DATA has its own split ({where}), which is used "
                 f"as it is: all its training images train, its test images test (the option{'s' * (len(moot) > 1)} "
                 f"draw{'s' * (len(moot) == 1)} random splits, for DATA without one)"] if moot else []
        said_ += [f"{named('val_fraction', py, val, plain=True)} is not applied{' either' * bool(moot)}: DATA's own "
                  f"validation part ({where}) picks the epoch ({named('val_fraction', py, 0, plain=True)} trains on "
                  f"it instead)"] if val_moot else []
        return f"DATA {dataset.as_given}: " + "; ".join(said_)
    if moot or val_moot:
        warnings.warn(said(line), stacklevel=3)


class Copies:
    """The images `idx` grouped by content key: a split drawn over each image's first copy
    (`firsts`, in `idx`'s order) is spread to every copy (`spread`).

    Parameters
    ----------
    idx : ndarray
        Dataset indices.
    keys : list of str or None
        Every dataset image's content key; None treats all images as distinct.
    """

    def __init__(self, idx: np.ndarray, keys: list[str] | None):
        self.idx, self.firsts, self.first_of = idx, idx, None
        if keys is not None and len(idx):
            _, first, inverse = np.unique([keys[i] for i in idx], return_index=True, return_inverse=True)
            if len(first) < len(idx):
                self.firsts, self.first_of = idx[np.sort(first)], idx[first[inverse.ravel()]]
        self.any = self.first_of is not None

    def spread(self, parts: list[tuple[np.ndarray, ...]]) -> list[tuple[np.ndarray, ...]]:
        """Each part of each split (indices among `firsts`) with every copy of its images, sorted."""
        if not self.any:
            return parts
        return [tuple(np.sort(self.idx[np.isin(self.first_of, p)]) for p in split) for split in parts]


def check_test_classes(dataset: Dataset) -> None:
    """Raise `DataError` when DATA's predefined split has test images of a class without
    training images (none can be predicted right), whatever DATA's form.

    Parameters
    ----------
    dataset : Dataset
        Labelled images with a split (else nothing to check).
    """
    if dataset.labels is None or dataset.splits is None:
        return
    train = {lab for lab, t in zip(dataset.labels, dataset.in_train()) if t}
    unseen = sorted({lab for lab, s in zip(dataset.labels, dataset.splits) if s == "test"} - train)
    if not unseen:
        return
    same = {unicodedata.normalize("NFC", c) for c in train}
    look_alike = [c for c in unseen if unicodedata.normalize("NFC", c) in same]
    hint = (f" ({', '.join(look_alike)}: the training images have a class of the same name in other Unicode code "
            f"points, NFC against NFD as macOS writes names; rename one)" if look_alike else "")
    raise DataError(f"DATA {dataset.as_given}: test classes with no (readable) training images: {', '.join(unseen)}"
                    f"{hint}")


def stratified(idx: np.ndarray, y: np.ndarray, size: float, seed: int, what: str,
               splits: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (kept, held-out) parts of `idx` (labels `y`), `size` of them held out (option
    `what`'s value: a DataError that cannot names it as the caller does, `fne.option_handling.named`)."""
    sss = StratifiedShuffleSplit(n_splits=splits, test_size=size, random_state=seed)
    try:
        return [(idx[a], idx[b]) for a, b in sss.split(np.zeros(len(idx)), y)]
    except ValueError as e:  # a class with one image, or fewer held-out (kept) images than classes
        counts = np.unique(y, return_counts=True)[1]
        n, k = len(y), len(counts)
        held, said = math.ceil(size * n) if isinstance(size, float) else int(size), str(e)

        def why(py: bool) -> str:
            if counts.min(initial=2) < 2:
                return "a class has only one image here, and each needs one on either side"
            if held < k:
                return (f"it holds out {held} of {n} images, fewer than the {k} classes: give "
                        f"{named(what, py, math.ceil(k / n * 100) / 100)} or more")
            if n - held < k:
                return (f"it keeps {n - held} of {n} images, fewer than the {k} classes: give a smaller "
                        f"{named(what, py)}")
            return said
        raise refusal(lambda py: f"cannot carve a stratified {named(what, py, size)} part: {why(py)}",
                      DataError) from None


def _per_class(dataset: Dataset, y: np.ndarray, counts: np.ndarray, splits: int, n: int,
               seed: int, distinct: str = "") -> list[tuple[np.ndarray, np.ndarray]]:
    """`n` random training images of every class (positions in `y`); every other image tests."""
    short = [dataset.classes[c] for c in range(len(counts)) if counts[c] <= n]
    if n < 1 or short:
        most = int(counts[counts > 0].min()) - 1  # the largest N that leaves every class a test image
        raise refusal(lambda py: f"{named('train_per_class', py, n)}: {len(short)} of {int((counts > 0).sum())} "
                                 f"classes have {n} or fewer{distinct} images, none left to test: "
                                 f"{', '.join(short[:5]) or '-'}{', …' * (len(short) > 5)}"
                                 + (f"; give {named('train_per_class', py, most)} or less" if most >= 1 else ""))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(splits):
        tr = np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=False)
                             for c in range(len(counts)) if counts[c]])
        out.append((np.sort(tr), np.setdiff1d(np.arange(len(y)), tr)))
    return out


def train_val_test(dataset: Dataset, y: np.ndarray, test_size: float, val_fraction: float, seed: int,
                   need_val: bool = True, keys: list[str] | None = None,
                   train_per_class: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`fne train`'s sorted (train, val, test) indices: `make_splits`' first split (fit's first
    split for the same `test_size`, `train_per_class` and seed), val from its training images
    (copies of one image, by `keys`, on one side of each), or DATA's own validation part where
    its predefined split has one (`--val-fraction 0` trains on it too)."""
    tr, te = make_splits(dataset, y, 1, test_size, train_per_class, seed, keys)[0]
    if not need_val or val_fraction == 0:
        return np.sort(tr), np.array([], dtype=np.int64), np.sort(te)
    if dataset.has_val_part:
        s = np.array(dataset.splits, dtype=object)
        return np.flatnonzero(s == "train"), np.flatnonzero(s == "val"), np.sort(te)
    copies = Copies(tr, keys)
    tr, va = copies.spread(stratified(copies.firsts, y[copies.firsts], val_fraction, seed, "val_fraction"))[0]
    return np.sort(tr), np.sort(va), np.sort(te)


def readable_parts(classes: list[str], y: np.ndarray, split_list: list[tuple[np.ndarray, ...]],
                   kept: np.ndarray | None) -> tuple[list[tuple[np.ndarray, ...]], list[str]]:
    """The splits drawn over DATA's listing with its unreadable images left out of every part.

    A split is a function of DATA's listing, labels, seed and test size, not of which images
    decode: `fne fit` (whose rows lack the unreadable images) and `fne train` (which skips them as
    it reads) leave them out of the parts of one split, which is the same split for both.

    Parameters
    ----------
    classes : list of str
        DATA's classes (`Dataset.classes`).
    y : ndarray
        Every listed image's class index (unreadable ones included).
    split_list : list of tuple of ndarray
        `make_splits`' (train, test) indices into the listing.
    kept : ndarray or None
        The readable images' listing indices, ascending; None: every image is readable.

    Returns
    -------
    parts : list of tuple of ndarray
        Each split's parts as indices among the readable images (`kept`'s positions), in the
        splitter's order; `split_list` itself where `kept` is None.
    notes : list of str
        One line naming the classes left with test images but no readable training image in a
        split (the head never learns them there, and their test images count as wrong); none
        where no class is. A class left with no readable test image is said where recalls are
        (`fne.metrics.class_recall`).

    Raises
    ------
    DataError
        A split is left with no readable test image, or with readable training images of fewer
        than 2 classes (the line says what to do).
    """
    if kept is None:
        return split_list, []
    pos = np.full(len(y), -1, dtype=np.int64)
    pos[kept] = np.arange(len(kept))
    out, untrained, wrong = [], {}, 0
    for k, split in enumerate(split_list, 1):
        parts = tuple(pos[p][pos[p] >= 0] for p in split)
        tr, te = kept[parts[0]], kept[parts[-1]]
        where = f"split {k} of {len(split_list)}" if len(split_list) > 1 else "the split"
        if len(te) == 0 or len(np.unique(y[tr])) < 2:
            raise _unsplittable(where, len(te), len(np.unique(y[tr])), len(y) - len(kept))
        for c in sorted(set(y[te].tolist()) - set(y[tr].tolist())):
            untrained.setdefault(classes[c], []).append(k)
            wrong += int(np.sum(y[te] == c))
        out.append(parts)
    if not untrained:
        return out, []
    n, hit = len(split_list), len({k for ks in untrained.values() for k in ks})
    shown = [repr(c) if n == 1 else f"{c!r} (split {', '.join(map(str, ks))})" for c, ks in untrained.items()]
    return out, [f"{len(untrained)} class(es) have test images but no readable training image "
                 f"{'in the split' if n == 1 else f'in {hit} of {n} splits'} (drawn over DATA's listing, as "
                 f"`fne fit` and `fne train` draw it, less the unreadable images): the head cannot predict them "
                 f"there, and their {wrong} test image(s) count as wrong: {first_few(shown)}"]


def _unsplittable(where: str, n_test: int, n_classes: int, n_bad: int) -> DataError:
    """`readable_parts`' DataError: split `where` leaves `n_test` readable test images and readable
    training images of `n_classes` classes once DATA's `n_bad` unreadable images are left out."""
    return refusal(lambda py: f"{where}, drawn over DATA's listing, leaves {n_test} readable test image(s) and "
                              f"readable training images of {n_classes} class(es) once DATA's {n_bad} unreadable "
                              f"image(s) are left out; a head needs test images and 2 classes to learn: remove the "
                              f"unreadable images from DATA (each is named above), or draw another split "
                              f"({named('seed', py)})", DataError)


def duplicate_notes(dataset: Dataset, keys: list[str],
                    split_list: list[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """What a fit should be told about images with the same bytes (one content key, one row).

    Parameters
    ----------
    dataset : Dataset
        The labelled images (`ids`, `labels`).
    keys : list of str
        Their content keys (`Dataset.keys`).
    split_list : list of (ndarray, ndarray)
        `make_splits`' (train, test) indices.

    Returns
    -------
    list of str
        One line for copies filed under different classes (the same features with two labels),
        one for test images with a copy among the training images of their split (scored on an
        image the head was fitted on), each naming 3 examples at most; none when neither happens.
    """
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    copies = [g for g in groups.values() if len(g) > 1]
    if not copies:
        return []
    notes = []
    clash = [g for g in copies if len({dataset.labels[i] for i in g}) > 1]
    if clash:
        eg = "; ".join(" = ".join(f"{dataset.ids[i]} ({dataset.labels[i]})" for i in g) for g in clash[:3])
        notes.append(f"{len(clash)} image(s) appear, byte for byte, under more than one class (the same "
                     f"features with two labels): {eg}")
    copied = {i for g in copies for i in g}
    leaked = []
    for tr, te in split_list:
        train_keys = {keys[i] for i in tr if i in copied}
        idx = [i for i in te if i in copied and keys[i] in train_keys]
        if idx:
            leaked.append(idx)
    if leaked:
        worst = max(leaked, key=len)
        notes.append(f"{len(worst)} test image(s) of {len(leaked)} of {len(split_list)} "
                     f"split(s) have a byte-identical copy among that split's training images: "
                     f"{', '.join(dataset.ids[i] for i in worst[:3])}")
    return notes
