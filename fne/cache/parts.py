"""One part of a store on disk: its rows' content keys and their values.

Layout "rows" (format 2, written today): a zarr group with `keys` (N×16 bytes) and one
uncompressed N×V×D array `rows` holding every tap side by side, in one chunk; each tap is a
column range recorded in store.json (`columns`). One array per part, uncompressed, in parts of
1,024 rows (`fne extract`'s default) keeps the writer near memory speed: benchmarks/bench_writer.py
chose it by measurement against the layouts beside it. Its fill value is NaN, so
that a chunk gone missing reads as damage, never as zeros.

Layout "taps" (format 1, read only): one zstd-compressed N×V×C array per tap.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from fne.errors import CacheError
from fne.option_handling import named, refusal
from fne.progress import first_few

ROWS = "rows"
# What real damage raises when a part is read: a file gone or cut short, bytes that do not
# decode, metadata that does not parse. Anything else (MemoryError, a network timeout, an
# interrupted read) propagates as what it is.
# (zarr's own errors too: `is_damage`; zarr is imported where a part is read or written, not with fne)
DAMAGE = (FileNotFoundError, ValueError, KeyError, EOFError, json.JSONDecodeError)


def is_damage(e: BaseException) -> bool:
    """Whether `e`, raised reading a part, says its data is damaged (numcodecs reports a corrupt
    zstd frame of a format-1 part as a RuntimeError "Zstd decompression error")."""
    import zarr.errors  # imported already: a part was being read

    return isinstance(e, (*DAMAGE, zarr.errors.BaseZarrError)) or (isinstance(e, RuntimeError) and "decompression error" in str(e).lower())


class Damaged(Exception):
    """A part that cannot be read: missing or corrupt data."""


def key_bytes(keys: list[str]) -> np.ndarray:
    """Hex content keys as an (N, 16) uint8 array, as a part stores them."""
    return np.frombuffer(b"".join(bytes.fromhex(k) for k in keys), dtype=np.uint8).reshape(len(keys), 16)


def key_strings(arr: np.ndarray) -> list[str]:
    """The inverse of `key_bytes`."""
    return [bytes(row).hex() for row in arr]


def columns(taps: list[tuple[str, int]]) -> dict[str, tuple[int, int]]:
    """Each tap's column range in a part's `rows` array."""
    out, lo = {}, 0
    for name, c in taps:
        out[name] = (lo, lo + c)
        lo += c
    return out


def side_by_side(arrays: dict[str, np.ndarray] | np.ndarray, n: int, views: int, taps: list[tuple[str, int]],
                 dtype: str, where: object) -> np.ndarray:
    """`arrays` ({tap: (n, views, C)}, or already (n, views, D)) as one (n, views, D) array of the
    storage dtype; a CacheError naming the store `where` on a shape that does not fit."""
    if isinstance(arrays, dict):
        for tap, c in taps:
            if np.shape(arrays[tap]) != (n, views, c):
                raise CacheError(f"{where}: tap {tap} rows have shape {np.shape(arrays[tap])}, "
                                 f"expected {(n, views, c)}")
        with np.errstate(over="ignore", invalid="ignore"):  # checked below, with the taps named
            rows = np.concatenate([np.asarray(arrays[t]) for t, _ in taps], axis=2, dtype=dtype)
    else:
        d = sum(c for _, c in taps)
        if arrays.shape != (n, views, d):
            raise CacheError(f"{where}: rows have shape {arrays.shape}, expected {(n, views, d)}")
        with np.errstate(over="ignore", invalid="ignore"):
            rows = np.asarray(arrays, dtype=dtype)
    if rows.dtype == np.float16 and not _finite16(rows):
        _overflow(rows, taps, where)
    return rows


def _finite16(rows: np.ndarray, step: int = 1 << 16) -> bool:
    """Whether float16 `rows` hold no inf or NaN: no value with every exponent bit set, read from
    the bits (5x faster than `np.isfinite` on float16: 2.5 against 13.7 ms for 1,024 VGG-16 rows),
    `step` values at a time into two small arrays reused throughout (half the CPU again: 2.3
    against 4.5 ms for those rows, where whole-part temporaries took 37 MB of fresh memory)."""
    bits = rows.reshape(-1).view(np.uint16)  # a view of the writer's rows (a copy of strided ones)
    exp, hit = np.empty(min(step, bits.size), np.uint16), np.empty(min(step, bits.size), bool)
    for start in range(0, bits.size, step):
        part = bits[start:start + step]
        e, h = exp[:len(part)], hit[:len(part)]
        np.bitwise_and(part, 0x7C00, out=e)
        if np.equal(e, 0x7C00, out=h).any():
            return False
    return True


def _overflow(rows: np.ndarray, taps: list[tuple[str, int]], where: object) -> None:
    """A CacheError naming the taps whose rows float16 storage cannot hold (|value| > 65,504
    becomes infinite; a NaN is the network's): such rows would only make every fit fail."""
    bad, lo = [], 0
    for tap, c in taps:
        if not np.isfinite(rows[:, :, lo:lo + c]).all():
            bad.append(tap)
        lo += c
    shown = first_few(bad, 4)
    raise refusal(lambda py: f"{where}: the rows of {shown} do not fit float16 storage (values beyond ±65,504, or "
                             f"NaN): extract with {named('storage_dtype', py, 'float32', plain=True)} (random weights "
                             f"of a network without normalisation do this)", CacheError)


def write(zstore, keys: list[str], rows: np.ndarray) -> None:
    """Write a part (out of readers' sight: the store commits it afterwards).

    Parameters
    ----------
    zstore : zarr store
        Where the part's group goes.
    keys : list of str
        The rows' content keys (hex).
    rows : ndarray
        (N, V, D), every tap side by side, already in the storage dtype.
    """
    import zarr

    group = zarr.open_group(zstore, mode="w")
    k = key_bytes(keys)  # shape and dtype, then the values: zarr 3.0 has no create_array(data=)
    group.create_array("keys", shape=k.shape, dtype=k.dtype, attributes={"layout": ROWS},
                       config={"write_empty_chunks": True})[...] = k
    a = group.create_array(ROWS, shape=rows.shape, dtype=rows.dtype, chunks=rows.shape, compressors=None,
                           fill_value=np.nan, config={"write_empty_chunks": True})
    a[...] = rows


def read_keys(zstore) -> tuple[list[str], str]:
    """A part's content keys and its layout ("rows" or "taps")."""
    try:
        a = open_array(zstore)
        return key_strings(a[:]), a.attrs.get("layout", "taps")
    except Exception as e:
        if not is_damage(e):
            raise
        raise Damaged(f"{type(e).__name__}: {e}") from None


def open_array(zstore):
    """One array of a part, to read."""
    import zarr

    return zarr.open_array(zstore, mode="r")


def read(open_array, layout: str, cols: dict[str, tuple[int, int]], layers: list[str]) -> np.ndarray:
    """Every row of a part for `layers`, side by side in the order given.

    Parameters
    ----------
    open_array : callable
        `open_array(name)` opens one array of the part read-only.
    layout : str
        "rows" (format 2) or "taps" (format 1), as `read_keys` found it.
    cols : dict
        Each tap's column range in a "rows" array.
    layers : list of str
        The taps to read.

    Returns
    -------
    ndarray
        (N, V, C1 + C2 + …) in the storage dtype (a view of the part's rows where the layers
        are adjacent).

    Raises
    ------
    Damaged
        When the part's data is missing or corrupt; any other failure propagates as it is.
    """
    try:
        if layout == ROWS:
            rows = open_array(ROWS)[...]
            if rows.size and np.isnan(rows.flat[0]):  # the fill value: the chunk is gone
                raise FileNotFoundError("rows chunk missing")
            spans = _merged([cols[la] for la in layers])
            return rows[:, :, slice(*spans[0])] if len(spans) == 1 else \
                np.concatenate([rows[:, :, lo:hi] for lo, hi in spans], axis=2)
        arrays = [open_array(la)[...] for la in layers]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=2)
    except Exception as e:
        if not is_damage(e):
            raise
        raise Damaged(f"{type(e).__name__}: {e}") from None


def place(out: np.ndarray, pos: np.ndarray, block: np.ndarray, rows: np.ndarray) -> None:
    """out[pos] = block[rows], as float32. float16 goes through torch's F16C copy (numpy's is
    several times slower) when torch is loaded already, as it is by every verb that reads rows,
    and `pos` is a run of positions (rows read part by part, the usual case)."""
    if len(rows) != len(block) or (rows != np.arange(len(block))).any():
        block = np.take(block, rows, axis=0)
    torch = sys.modules.get("torch")
    if torch is not None and block.dtype == np.float16 and (np.diff(pos) == 1).all():
        torch.from_numpy(out[pos[0]:pos[-1] + 1]).copy_(torch.from_numpy(np.ascontiguousarray(block)))
    else:
        out[pos] = block


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Column ranges with adjacent ones joined (all taps in order: one range)."""
    out = [spans[0]]
    for lo, hi in spans[1:]:
        if lo == out[-1][1]:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out
