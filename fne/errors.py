"""User-facing errors: the CLI prints these as one line, never as a traceback."""


class FneError(Exception):
    """A mistake in what the user asked for (bad file, bad argument, missing cache rows)."""


class DataError(FneError, ValueError):
    """DATA is missing, empty or malformed."""


class OptionError(FneError, ValueError):
    """A verb's option has a value it does not accept (a bad choice, out of bounds)."""


class WeightsError(FneError):
    """Weights cannot be loaded or do not fit the architecture."""


class CacheError(FneError):
    """A cache store is missing, incompatible or damaged."""
