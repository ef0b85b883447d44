"""Writing an HDF5 file (`fne export`, a pipeline's subset of an HDF5 DATA) so that a full disk is
one `OSError`, never a crash.

h5py 3.16 / HDF5 2.0 handed a failed write (ENOSPC, a file-size limit) print one traceback per
open object and then crash the interpreter (SIGSEGV) as the file closes, given a path or a
Python file alike. So HDF5 never sees a failed write here: from the first write the system
refuses, the bytes HDF5 writes are held in memory (`_Held`), the file closes cleanly, and the
refusal is raised in Python, at the writer's next `check()` or once the file is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["h5_writer"]


class _Held:
    """The file object h5py writes to: `raw`'s until a write is refused (`error`), then the
    bytes written from there on are held in memory (a part of a file that is removed anyway;
    `check` stops the writer at its next chunk, so they stay few)."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.error, self.pos, self.end = raw, None, 0, 0
        self.held: dict[int, bytes] = {}  # offset -> bytes written after the refusal

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos + (self.pos if whence == 1 else max(self.end, self.raw.seek(0, 2)) if whence == 2 else 0)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, data) -> int:
        data = bytes(data)
        if self.error is None:
            try:
                self.raw.seek(self.pos)
                done = 0
                while done < len(data):  # unbuffered: a refusal is raised here, not at a later flush
                    done += self.raw.write(data[done:])
            except OSError as e:
                self.error = e
        if self.error is not None:
            self.held[self.pos] = data
        self.pos += len(data)
        self.end = max(self.end, self.pos)
        return len(data)

    def read(self, n: int = -1) -> bytes:
        self.raw.seek(self.pos)
        buf = bytearray(self.raw.read(n))
        if n >= 0:
            buf += bytes(n - len(buf))
        for at, data in self.held.items():  # what was written over these bytes since the refusal
            lo, hi = max(at, self.pos), min(at + len(data), self.pos + len(buf))
            if lo < hi:
                buf[lo - self.pos:hi - self.pos] = data[lo - at:hi - at]
        self.pos += len(buf)
        return bytes(buf)

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                self.raw.truncate(self.pos if size is None else size)
            except OSError as e:
                self.error = e
        return self.pos if size is None else size

    def flush(self) -> None:
        pass  # unbuffered

    def check(self) -> None:
        """Raise the refused write's error (with no filename: `replace_files` names the path)."""
        if self.error is not None:
            raise OSError(self.error.errno, self.error.strerror)


def h5_writer(write: Callable[..., object]) -> Callable[[Path], None]:
    """A `fne.cache.fs.replace_file` writer of an HDF5 file: ``write(f, check)`` fills the open
    ``h5py.File`` `f` and may call ``check()`` between chunks to stop at once where the disk
    filled; a refused write raises its `OSError` once the file is closed in any case."""
    def to(tmp: Path) -> None:
        import h5py

        with open(tmp, "w+b", buffering=0) as raw:
            held = _Held(raw)
            with h5py.File(held, "w") as f:
                write(f, held.check)
            held.check()

    return to
