"""Labels as every DATA form reads them: one rule for a label's text and one for the class order.

A label is text. A value read from a label column (CSV, Parquet, HDF5, a tar shard's `.cls`,
`.txt` or `.json`) is stripped of surrounding white space; a whole number stored as a number (a
float column, a JSON number) is written as an integer (`3.0` -> `3`, as pandas stores an int
column with gaps), while text (a CSV cell, a `.cls` member) is kept as written; an empty value,
None or NaN is no label (the image is skipped with a warning). A class folder's name is the class name as it is.
Unicode forms are kept as written: `café` in NFD (a macOS archive) and in NFC (typed on Linux)
are two classes, named in a warning (`fne fit` explains a test class that has no training images
for that reason, `fne.data.splits`); `fne predict` compares labels in NFC.

Class order: a class folder's classes are sorted as strings, as torchvision's `ImageFolder`
sorts them (`1, 10, 11, 2`), and so are a CSV's; a label column of whole numbers in Parquet,
HDF5 or tar shards is sorted as numbers (`1, 2, 10, 11`), as scikit-learn sorts integer labels;
Hugging Face ClassLabel names (Parquet) and HDF5 `class_names` keep their given order.
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings

from fne.progress import first_few, say_skipped

_INT = re.compile(r"-?[0-9]+")  # ASCII digits only: int() must read it ('²'.isdigit() is True)


def utf8_names(names: list[str]) -> list[str]:
    """Names (file paths, tar members, class folders) as UTF-8 text: one whose bytes are not UTF-8
    (a Latin-1 file name, which Python holds as surrogates) with those bytes escaped, `caf\\xe9.jpg`.

    Parameters
    ----------
    names : list of str
        Names as the file system or `tarfile` gave them.

    Returns
    -------
    list of str
        `names` itself where all are UTF-8 (one check for the list), else each escaped: written
        as they were, they failed every record, CSV and JSON (UnicodeEncodeError) once extracted.
    """
    try:
        "\n".join(names).encode("utf-8")
        return names
    except UnicodeEncodeError:
        return [n.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for n in names]


def label_text(value) -> str | None:
    """A label value as a class name (see the module docstring), or None for no label.

    Parameters
    ----------
    value
        The label as read: str, bytes (UTF-8), int, float, a NumPy scalar, or None.

    Returns
    -------
    str or None
        The stripped text; None when the value is missing, NaN or empty.

    Raises
    ------
    ValueError
        Bytes that are not UTF-8 ("label is not text").
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("label is not text") from None
    if hasattr(value, "item") and not isinstance(value, str):  # a NumPy scalar
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            value = int(value)
    return str(value).strip() or None


# How pandas, R and Python's str() write a missing value into a text file: in a CSV cell, a class of
# that name (a label is text), which `missing_words` warns of; an empty cell is no label.
MISSING_WORDS = frozenset({"nan", "na", "n/a", "<na>", "null", "none"})


def missing_words(labels: list[str | None], ids: list[str], where: str) -> None:
    """Warn, one line per word, where text labels (`label_text`'s, of `ids` in `where`) read as a
    missing value is written (`MISSING_WORDS`, any case: ``NaN``, ``NA``, ``None``): they are kept
    as a class of that name, as written, which a user who meant "no label" should know."""
    found: dict[str, list[str]] = {}
    for ident, lab in zip(ids, labels, strict=True):
        if lab is not None and lab.casefold() in MISSING_WORDS:
            found.setdefault(lab, []).append(ident)
    for word, where_ in found.items():
        warnings.warn(f"{where}: {len(where_)} label(s) read {word!r} ({first_few(where_, 3)}), kept as a "
                      f"class of that name; for an image without a label, leave its label empty", stacklevel=4)


def by_index(labels: list[str], names: list, where: str) -> list[str]:
    """Integer labels (text) -> the class names they index in `names` (found in `where`).

    Raises
    ------
    ValueError
        Empty or repeated names, or a label that is not an index into them.
    """
    if None in names or len(set(names)) < len(names):
        raise ValueError(f"{where} has empty or repeated names")
    bad = next((v for v in labels if not (v.isascii() and v.isdigit() and int(v) < len(names))), None)
    if bad is not None:
        raise ValueError(f"label {bad!r} is not an index into the {len(names)} names of {where}")
    return [names[int(v)] for v in labels]


def class_order(labels, names: list[str] | None = None, numeric: bool = True) -> list[str]:
    """The classes of `labels` in fne's order (the module docstring): `names` as given when
    there are any, else sorted as strings, or as numbers when `numeric` and every label is a
    whole number (ties such as `01` and `1` by their text, so the order never depends on the
    run). Warns when two classes differ only in Unicode form, case, surrounding space or leading
    zeros.

    Parameters
    ----------
    labels : iterable of str
        Every image's label.
    names : list of str, optional
        Class names in a given order (Hugging Face ClassLabel, HDF5 `class_names`).
    numeric : bool
        Sort whole numbers as numbers (label columns) rather than as strings (class folders).

    Returns
    -------
    list of str
        The class names, each once: of `names`, those some image has (the others are left out with
        a warning, so that no head or network gets a class it has never seen).
    """
    if names is not None:
        present = set(labels)
        kept = [n for n in names if n in present]
        if len(kept) < len(names):
            absent = [n for n in names if n not in present]
            warnings.warn(f"{len(absent)} of the {len(names)} classes the data names have no image and are left "
                          f"out: {first_few(list(map(repr, absent)))}", stacklevel=4)
        _warn_near_duplicates(kept)
        return kept
    uniq = set(labels)
    if numeric and uniq and all(_INT.fullmatch(s) for s in uniq):
        out = sorted(uniq, key=lambda s: (int(s), s))
    else:
        out = sorted(uniq)
    _warn_near_duplicates(out)
    return out


def _same_name(s: str) -> str:
    s = unicodedata.normalize("NFC", s.strip()).casefold()
    return s.lstrip("0") or "0" if _INT.fullmatch(s) else s


def _warn_near_duplicates(classes: list[str]) -> None:
    groups: dict[str, list[str]] = {}
    for c in classes:
        groups.setdefault(_same_name(c), []).append(c)
    twins = [g for g in groups.values() if len(g) > 1]
    if twins:
        shown = "; ".join(" and ".join(repr(c) for c in g) for g in twins[:3])
        warnings.warn(f"{len(twins)} group(s) of classes differ only in Unicode form, case, surrounding "
                      f"space or leading zeros, and are kept apart: {shown}{' ...' if len(twins) > 3 else ''}", stacklevel=4)


def member_labels(ids: list[str], labels: list) -> list | None:
    """None when no image of `ids` has a label (unlabelled DATA: tar members, Parquet rows, CSV
    lines); else `labels`, the images without one skipped with a warning, one line for them all."""
    if all(lab is None for lab in labels):
        return None
    say_skipped(((ident, "no label") for ident, lab in zip(ids, labels, strict=True) if lab is None), stacklevel=3)
    return labels
