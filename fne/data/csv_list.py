"""CSV DATA: a file listing images (`path`), their labels (`label`) and a split (`split`), one
image a line (`csv_dataset`)."""

from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path

from fne.data import containers
from fne.data.dataset import Dataset, file_dataset
from fne.data.labels import label_text, member_labels, missing_words
from fne.errors import DataError
from fne.progress import first_few

__all__ = ["csv_dataset"]


def csv_dataset(path: Path) -> Dataset:
    """CSV DATA: a column `path` (relative to the CSV's folder), optional `label` and `split`
    (train / test / validation); one image a line, lines without a label skipped with a warning.

    Parameters
    ----------
    path
        The CSV file.

    Returns
    -------
    Dataset
        Its files, labels (None without a label column, or with every cell empty) and split.

    Raises
    ------
    DataError
        Naming the file: not UTF-8, no `path` column, no rows, listed files missing, bad split words.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            text = f.read()
        if "\0" in text:  # csv reads it (Python >= 3.11): a class named "a\0b", a path that cannot exist
            line = text.count("\n", 0, text.index("\0")) + 1
            raise DataError(f"CSV {path}: line {line} holds a NUL byte (\\x00), which no path, label or split has: "
                            f"is it a text file?")
        with io.StringIO(text, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            if "path" not in cols:  # no label column: unlabelled images, for fne extract and predict
                raise DataError(f"CSV {path}: missing column path (found: {', '.join(cols) or 'none'})")
            if "label" not in cols and set(cols) - {"path", "split"}:  # `class`, say: read as no labels
                warnings.warn(f"CSV {path}: no column label (found: {', '.join(cols)}): its images are read "
                              f"unlabelled; name the column of their classes label", stacklevel=3)
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise DataError(f"CSV {path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except csv.Error as e:
        raise DataError(f"CSV {path}: unreadable CSV ({e})") from None
    if not rows:
        raise DataError(f"CSV {path}: has no rows")
    base = path.parent
    files = [base / (r["path"] or "") for r in rows]
    absent = [str(r["path"]) for r, p in zip(rows, files) if not os.path.isfile(p)]  # False, not ENAMETOOLONG
    if absent:
        raise DataError(f"CSV {path}: {len(absent)} listed file(s) do not exist: {first_few(absent)}")
    labels = [label_text(r["label"]) if "label" in cols else None for r in rows]
    splits = None
    if "split" in cols:
        words = [(r["split"] or "").strip() for r in rows]
        splits = [containers.normalise_split(w) for w in words]
        bad = sorted({w for w, s in zip(words, splits) if s is None})
        if bad:
            raise DataError(f"CSV {path}: column split has values {bad}; allowed: train, test "
                            f"and validation (or val, valid, dev)")
        splits = containers.settle_splits(splits, path, "the split column")
    ids = [f"{path.name}:{k + 2} ({r['path']})" for k, r in enumerate(rows)]  # k + 2: the header is line 1
    labels = member_labels(ids, labels)
    if labels is not None:
        missing_words(labels, ids, f"CSV {path}")
    keep = range(len(rows)) if labels is None else [k for k, lab in enumerate(labels) if lab is not None]
    _repeated(path, [rows[k]["path"] for k in keep], [files[k] for k in keep], [k + 2 for k in keep])
    d = file_dataset(path.stem, base, [files[k] for k in keep], None if labels is None else [labels[k] for k in keep],
                     None if splits is None else [splits[k] for k in keep])
    d.left_out = [ids[k] for k in range(len(rows)) if labels is not None and labels[k] is None]
    d.unlabelled = "" if labels is not None else (
        "every cell of its label column is empty" if "label" in cols else
        f"it has no label column (found: {', '.join(cols)})")
    d.split_from = f"the split column of {path}" if splits is not None else ""
    return d


def _repeated(path: Path, given: list[str], files: list[Path], lines: list[int]) -> None:
    """One warning for the files on several of a CSV's lines (`given` as written, at `lines`; a
    CSV joined with itself): each line is an image, counted and scored as many times."""
    at: dict[str, list[int]] = {}
    for k, f in enumerate(files):
        at.setdefault(os.path.normpath(f), []).append(k)
    twice = [f"{given[ks[0]]} (lines {', '.join(str(lines[k]) for k in ks[:3])}{', …' * (len(ks) > 3)})"
             for ks in at.values() if len(ks) > 1]
    if twice:
        warnings.warn(f"CSV {path}: {len(twice)} file(s) listed on more than one line, each line an image (counted, "
                      f"and scored, as many times): {first_few(twice)}", stacklevel=4)
