"""A Parquet file's image column copied for reading in a shuffled order.

Parquet is read a row group at a time: an image asked for out of order costs the decode of its
row group. `fne train` reads its images in a new random order each epoch, and over a file larger
than the row groups a reading process keeps (`containers.GROUP_CACHE_BYTES`) nearly every image
costs a row group: 5 ms per image against 0.04 in order (benchmarks/RESULTS.md, "Shuffled
reading"). So before a shuffled loader starts, the image column of each Parquet file whose row
groups it reads exceed that is copied once, in order, into an uncompressed Arrow IPC file in the
cache's `manifests/shuffled/` (`ContainerReader.read_shuffled`).
Reading processes map the copy, and an image is a slice of the map: the page cache, which every
loader worker shares, holds what fits in memory. (Hugging Face `datasets` reads its Arrow cache
the same way.)

A copy is named by the Parquet file's path, size, mtime and image column, written under a
temporary name and then renamed, so an interrupted copy is never read. Making a new one removes
the copies of the file's earlier versions. Where the cache has no room for a copy (its bytes
from the file's metadata, and a margin), or the copy fails, one warning says so and the images
are read from the Parquet file. HDF5 DATA's copies (`hdf5_access`) are made the same way
(`ensure`).
"""

from __future__ import annotations

import bisect
import hashlib
import os
import shutil
import socket
import warnings
from pathlib import Path

from fne.progress import progress as bar_of
from fne.progress import progress_line

MARGIN_BYTES = 1 << 30  # left free beside a copy


def open_pages(path: str):
    """A Parquet file read page by page (pre_buffer would read a row group's column whole first)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)


def copy_path(listing, folder: Path) -> Path:
    """Where the copy of `listing`'s Parquet file belongs in `folder`: a name per path, then per
    version."""
    return copy_name(folder, listing.path, listing.size, listing.mtime_ns, listing.column, ".arrow")


def copy_name(folder: Path, path: str, size: int, mtime_ns: int, what: str, suffix: str) -> Path:
    """Where the copy of `what` (a column, a dataset) of file `path` (of `size` bytes and mtime
    `mtime_ns`) belongs in `folder`: a name per path, then per version (`_remove_older`)."""
    name = hashlib.blake2b(path.encode(), digest_size=8).hexdigest()
    version = hashlib.blake2b(f"{size}\0{mtime_ns}\0{what}".encode(), digest_size=8).hexdigest()
    return folder / f"{name}-{version}{suffix}"


def column_bytes(path: str, column: str, groups=None) -> tuple[int, int]:
    """(rows, bytes of column `column` uncompressed) of Parquet file `path`'s row groups `groups`
    (all by default), from its footer."""
    meta = open_pages(path).metadata
    leaves = [k for k in range(meta.num_columns)
              if (p := meta.schema.column(k).path) == column or p.startswith(column + ".")]
    groups = range(meta.num_row_groups) if groups is None else groups
    return (sum(meta.row_group(g).num_rows for g in groups),
            sum(meta.row_group(g).column(k).total_uncompressed_size for g in groups for k in leaves))


def _usable(copy: Path, rows: int) -> bool:
    try:
        return CopyReader(str(copy)).rows == rows
    except Exception:  # pyarrow raises ArrowInvalid / OSError on a file that is not a whole copy
        return False


def ensure_copy(listing, folder: Path, progress: bool) -> str | None:
    """The path of a whole copy in `folder` of the image column of `listing` (a Parquet file's
    `containers.Listing`), made now (with a line saying so and a bar, unless not `progress`) if
    there is none; None, and a warning, where it cannot be made."""
    try:
        rows, size = column_bytes(listing.path, listing.column)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError on a damaged footer
        return slow(listing.path, str(e), "row group")
    if rows == 0:
        return None
    return ensure(listing.path, copy_path(listing, folder), size, lambda tmp, shown: _write(listing, tmp, rows, shown),
                  lambda copy: _usable(copy, rows), progress, "row group", (listing.size, listing.mtime_ns))


def ensure(path: str, copy: Path, size: int, write, usable, progress: bool, unit: str,
           version: tuple[int, int]) -> str | None:
    """`copy` (a whole copy, `usable(copy)`, of `size` bytes of file `path`), made now by
    `write(tmp, progress)` under a temporary name then renamed (with a line saying so, and a bar,
    unless not `progress`) if there is none; None, and a warning that each image is read from its
    `unit` (row group, chunk) of the file, where the cache has no room for it or it fails. The
    copy is named by the file's `version` (size, mtime in ns): one the file no longer has once
    it is copied (rewritten meanwhile) is not kept, since it could hold neither version."""
    try:
        if copy.exists() and usable(copy):
            return str(copy)
        copy.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(copy.parent).free
    except Exception as e:  # the cache folder cannot be read
        return slow(path, str(e), unit)
    if size + MARGIN_BYTES > free:
        return slow(path, f"{size / 2**20:,.0f} MB, and {copy.parent} has {free / 2**20:,.0f} MB free", unit)
    progress_line(f"copying the images of {path} ({size / 2**20:,.0f} MB) once, for reading them "
                  f"shuffled: {copy}", progress)
    _remove_older(copy)
    tmp = copy.with_name(f"{copy.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        write(tmp, progress)
        st = os.stat(path)
        if (st.st_size, st.st_mtime_ns) != tuple(version):
            return slow(path, "it changed while it was copied", unit)
        os.replace(tmp, copy)
    except Exception as e:  # unreadable pages or chunks, a full disk
        return slow(path, str(e), unit)
    finally:
        tmp.unlink(missing_ok=True)
    return str(copy) if usable(copy) else slow(path, f"{copy} does not read back whole", unit)


def _write(listing, tmp: Path, rows: int, enabled: bool) -> None:
    """The image column of `listing`'s file, in order, as an uncompressed Arrow IPC file `tmp`."""
    import pyarrow as pa

    bar = bar_of(rows, f"copying {Path(listing.path).name}", enabled)
    try:
        with pa.OSFile(str(tmp), "wb") as sink:
            writer = None
            for batch in open_pages(listing.path).iter_batches(batch_size=256, columns=[listing.column]):
                if writer is None:
                    writer = pa.ipc.new_file(sink, batch.schema)
                writer.write_batch(batch)
                bar.update(batch.num_rows)
            if writer is not None:
                writer.close()
    finally:
        bar.close()


def slow(path: str, why: str, unit: str) -> None:
    """Warn that file `path` has no copy for reading it shuffled (`why`): each image is read
    from its `unit` (row group, chunk)."""
    warnings.warn(f"no copy of {path} for reading it shuffled ({why}): each image is read from its "
                  f"{unit}, slowly", stacklevel=4)


def _remove_older(copy: Path) -> None:
    """Remove the copies of the same file's other versions, and temporary copies left by runs
    on this host that are no longer running."""
    path = copy.name.split("-")[0]
    host = socket.gethostname()
    for old in copy.parent.glob(f"{path}-*"):
        if old == copy:
            continue
        _, _, tail = old.name.partition(".tmp-")
        if tail:
            h, _, pid = tail.rpartition("-")
            if h != host or not pid.isdigit() or _running(int(pid)):
                continue  # another host's, or a running copy's
        try:
            old.unlink()
        except OSError:
            pass  # mapped by a running reader (Windows), or removed meanwhile


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's
    return True


class CopyReader:
    """Cells of a copy by row of the Parquet file, from a memory map (per process)."""

    def __init__(self, path: str):
        import pyarrow as pa

        f = pa.ipc.open_file(pa.memory_map(path))
        self._chunks = [f.get_batch(k).column(0) for k in range(f.num_record_batches)]
        self._starts, n = [], 0
        for c in self._chunks:
            self._starts.append(n)
            n += len(c)
        self.rows = n

    def cell(self, row: int) -> bytes | dict | None:
        """Row `row`'s cell as Python, as `containers.GroupReader.cell` gives it."""
        if not 0 <= row < self.rows:
            raise OSError(f"row {row} is not in the copy's {self.rows} rows")
        k = bisect.bisect_right(self._starts, row) - 1
        return self._chunks[k][row - self._starts[k]].as_py()
