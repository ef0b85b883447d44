"""A pipeline file's `[datasets.KEY]` values (`fne.pipeline.config`): DATA resolved (relative to
the file, `${VAR}` expanded, opened to count images and classes), a class map and published
reference numbers checked.

Like fne.pipeline.config, it imports no torch and no scikit-learn.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from fne.options import class_map_problem
from fne.pipeline.config_errors import Errors


@dataclass
class DatasetCfg:
    """One `[datasets.KEY]` of a pipeline file: DATA, as resolved and as written, and its
    protocol overrides (splits, test size, images per class, class map)."""

    key: str
    data: str  # resolved: "digits" or an absolute path
    spec: str  # as written
    optional: bool = False
    max_per_class: int | None = None
    splits: int | None = None
    test_size: float | None = None
    train_per_class: int | None = None
    class_map: str | dict | None = None
    protocol: str | None = None
    note: str | None = None
    published: dict | None = None
    skipped: str | None = None  # why an optional dataset is not run
    n_images: int | None = None
    n_classes: int | None = None
    n_train_split: int | None = None  # images in the predefined train split, if DATA has one
    val_part: bool = False  # DATA's predefined split has a validation part (fne train validates on it)


def expand_vars(spec: str) -> tuple[str, list[str]]:
    """`spec` with ${VAR}s expanded, and the names of those not set (left as written)."""
    unset = []

    def sub(m):
        name = m.group(1)
        if name not in os.environ:
            unset.append(name)
            return m.group(0)
        return os.environ[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, spec), unset


def check_class_map(cm, base: Path, path: tuple, err: Errors) -> str | dict:
    if isinstance(cm, str):
        cpath = Path(os.path.expanduser(cm))
        cpath = cpath if cpath.is_absolute() else base / cpath
        if not cpath.is_file():
            err.add(path, f"no such file {cpath}")
        return str(cpath)
    problem = class_map_problem(cm)
    if problem:
        err.add(path, problem)
    return dict(cm)


def check_published(pub: dict, path: tuple, err: Errors) -> dict:
    out = {"source": None, "note": None, "arch": None, "weights": None, "values": {}}
    for k, v in pub.items():
        if k in ("source", "note", "arch", "weights"):
            if not isinstance(v, str):
                err.add(path + (k,), f"expected a string, got {v!r}")
            out[k] = v
        elif (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
                isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)):
            vals = v if isinstance(v, list) else [v]
            if not all(0 <= x <= 100 for x in vals[:1]):
                err.add(path + (k,), f"published accuracy is a percentage in [0, 100], got {v!r}")
            out["values"][k] = {"mean": float(vals[0]), "std": float(vals[1]) if len(vals) == 2 else None}
        else:
            err.add(path + (k,), f"expected a percentage (93.3) or [mean, std], got {v!r}")
    if out["values"] and not out["source"]:
        err.add(path, "published values need a 'source' (where the numbers come from)")
    return out


def resolve_data(ds: DatasetCfg, base: Path, path_: tuple, err: Errors, check_data: bool,
                  cache: str | None) -> None:
    from fne.data.containers import expand
    from fne.data.datasets import load_dataset  # numpy only: no torch
    from fne.data.parquet import hf_available
    from fne.errors import DataError

    if ds.spec == "digits":
        ds.data = "digits"
    elif ds.spec.startswith("hf:"):
        ds.data = ds.spec
        if not check_data or not hf_available(ds.spec, cache):
            return  # loaded on first use; a dry run names the download it needs
    else:
        expanded, unset = expand_vars(ds.spec)
        p = Path(os.path.expanduser(expanded))
        p = p if p.is_absolute() else (base / p)
        ds.data = str(p.resolve()) if p.exists() else str(p)
        if not check_data:  # resolve only: the caller wants the file's settings, not the data
            return
        if not p.exists() and not any(Path(f).is_file() for f in expand(str(p))):  # a shard pattern
            why = (f"{ds.spec!r}: environment variable{'s' * (len(unset) > 1)} {', '.join(unset)} "
                   f"not set" if unset else f"path {p} does not exist")
            if ds.optional:
                ds.skipped = why
            else:
                err.add(path_ + ("data",), f"{why}; this dataset must be supplied by you (see the comments "
                                           f"in the file), or mark it optional = true to skip it")
            return
    if not check_data:
        return
    try:
        d = load_dataset(ds.data, cache=cache)
    except DataError as e:
        err.add(path_ + ("data",), str(e))
        return
    ds.n_images, ds.n_classes = len(d), len(d.classes)
    if d.has_split:
        ds.n_train_split, ds.val_part = int(d.in_train().sum()), d.has_val_part
    if d.labels is None:
        err.add(path_ + ("data",), "has no labels")
