"""User-facing errors: the CLI prints these as one line, never as a traceback."""

import errno
import os
import sys
from pathlib import Path


class FneError(Exception):
    """A mistake in what the user asked for (bad file, bad argument, missing cache rows).

    One that refuses an option's value (`fne.option_handling.refusal`) names it as Python's keyword and has
    `cli`, the same message naming the command-line flag, which the CLI prints.
    """


class DataError(FneError, ValueError):
    """DATA is missing, empty or malformed."""


class OptionError(FneError, ValueError):
    """A verb's option has a value it does not accept (a bad choice, out of bounds): made by
    `fne.option_handling.refusal`, its message names the option as Python's keyword (``unknown
    head='svmm'``), its `cli` the command-line flag (``unknown --head 'svmm'``)."""


class WeightsError(FneError):
    """Weights cannot be loaded or do not fit the architecture."""


class CacheError(FneError):
    """A cache store is missing, incompatible or damaged."""


def numpy_bool(value: object) -> bool:
    """Whether `value` is a numpy bool (``np.bool_``: ``array.any()``, ``x > 0`` of a numpy scalar),
    which the Python API takes as True or False; numpy not imported for it (the command line does
    without): a numpy value means numpy is imported already."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.bool_)


def expect_bools(values: dict[str, object], none: tuple[str, ...] = ()) -> None:
    """A TypeError naming the first keyword of `values` whose value is not True or False (a numpy
    bool too), or None for those in `none`: the Python API's ``force="false"``, which a truth test
    takes for True."""
    for name, value in values.items():
        if not (isinstance(value, bool) or numpy_bool(value) or (name in none and value is None)):
            raise TypeError(f"{name} must be True or False{' or None' if name in none else ''}, not "
                            f"{type(value).__name__} {value!r}")


def expect_path(value: object, name: str) -> None:
    """A TypeError naming the keyword `name` when `value` is not a path (str or os.PathLike): the
    Python API's ``out=None``, which `str()` would make a folder named None."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a path (str or os.PathLike), got {type(value).__name__}")


# What the machine refused a write for, in words: the user's to fix (free space, another folder).
RAN_OUT = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "the disk quota is used up",
           errno.EFBIG: "the file-size limit (ulimit -f) stopped"}
DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)


def refused_write(e: BaseException, places: dict[str, object] | None = None) -> str | None:
    """One line for a write the machine refused (a full disk, a quota, a file-size limit, a
    read-only or denied folder), naming the file and what to do: "no space left on device writing
    runs/a/model.joblib: free space there or pass --out a folder on another disk". `places`
    ({option: folder}, first match wins) names the option that moves a file under its folder.
    None for any other error.

    Parameters
    ----------
    e : BaseException
        The error raised.
    places : dict, optional
        Option -> the folder it sets (``{"--out": "runs/a", "--cache": "/data/cache"}``).

    Returns
    -------
    str or None
        The line, without "fne VERB: error: ".
    """
    if not isinstance(e, OSError) or e.errno not in (*RAN_OUT, *DENIED):
        return None
    path = Path(os.path.abspath(e.filename)) if isinstance(e.filename, (str, os.PathLike)) else None
    flag = next((option for option, folder in (places or {}).items() if path is not None and folder and (
        path == Path(os.path.abspath(folder)) or Path(os.path.abspath(folder)) in path.parents)), None)
    where = f" {e.filename}" if e.filename else ""
    if e.errno in DENIED:  # under --out or --cache, or a read-only filesystem: a write; else perhaps a read
        what = "write" if flag or e.errno == errno.EROFS else "access"
        return f"cannot {what}{where} ({e.strerror})" + (f": pass {flag} a folder you can write to" if flag else "")
    todo = "raise it (ulimit -f unlimited)" if e.errno == errno.EFBIG else "free space there"
    return f"{RAN_OUT[e.errno]} writing{where}: {todo}" + (f" or pass {flag} a folder on another disk" if flag else "")
