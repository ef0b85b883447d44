"""User-facing errors: the CLI prints these as one line, never as a traceback."""

import os


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


def expect_bools(values: dict[str, object], none: tuple[str, ...] = ()) -> None:
    """A TypeError naming the first keyword of `values` whose value is not True or False (or None,
    for those in `none`): the Python API's ``force="false"``, which a truth test takes for True."""
    for name, value in values.items():
        if not (isinstance(value, bool) or (name in none and value is None)):
            raise TypeError(f"{name} must be True or False{' or None' if name in none else ''}, not "
                            f"{type(value).__name__} {value!r}")


def expect_path(value: object, name: str) -> None:
    """A TypeError naming the keyword `name` when `value` is not a path (str or os.PathLike): the
    Python API's ``out=None``, which `str()` would make a folder named None."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a path (str or os.PathLike), got {type(value).__name__}")
