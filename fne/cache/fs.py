"""The filesystems a store lives on: a local folder, or an fsspec URL (`s3://…`, `memory://…`).

Both offer the same few operations on paths relative to the store's root, so that the store,
its index and its upkeep never ask which one they hold. They differ in one thing only, how a
part is committed: a local part is written under `.tmp-<name>` (a name that says who writes it,
`writer_name`) and renamed into place (atomic on POSIX and shared filesystems); object stores
have no rename, so there a part is written under its final name and committed by a small
`<name>.committed` object written last.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from fne.errors import CacheError, FneError, expect_path
from fne.option_handling import named, refusal

COMMITTED = ".committed"  # suffix of the marker that commits a part of a URL store
TMP = ".tmp-"  # prefix of what a writer has not committed yet: temporary files, unfinished parts
# A temporary name says who writes it, <time_ns>-<pid>-<host>-<random> (`writer_name`), so that
# what a killed writer left is removed (`clear_dead_temps`, `upkeep.clean`) and a live writer's
# is spared: alive on this host (its pid runs), or younger than this when written on another.
LIVE_WRITER_SECONDS = 3600


def _host() -> str:
    """This host as writers' names carry it: its name, and on Linux its boot and pid namespace, so
    that a pid is only asked about where it means the same process (not one before a reboot, nor
    one of another container sharing the folder and the host name)."""
    ident = [socket.gethostname()]
    try:
        ident.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        ident.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:  # not Linux
        pass
    return hashlib.blake2b("|".join(ident).encode(), digest_size=4).hexdigest()


HOST = _host()


def writer_name() -> str:
    """A name unique to this write that says who writes it: <time_ns>-<pid>-<host>-<random>."""
    return f"{time.time_ns():020d}-{os.getpid()}-{HOST}-{uuid.uuid4().hex[:8]}"


def temp_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: beside it, hidden, named by its
    writer (`writer_name`); the end of the name kept (joblib reads compression from it)."""
    return path.with_name(f"{TMP}{writer_name()}-{path.name[-160:]}")


def writer_alive(name: str) -> bool:
    """Whether the writer of the temporary file or unfinished part `name` (`writer_name` after
    TMP) may still be running: on this host, whether its pid runs; on another, whether it is
    younger than LIVE_WRITER_SECONDS. A name that names no writer is taken for dead."""
    fields = name.removeprefix(TMP).split("-", 4)
    try:
        born, pid = int(fields[0]), int(fields[1])
    except (IndexError, ValueError):
        return False
    if len(fields) >= 4 and fields[2] == HOST and os.name != "nt":  # Windows: os.kill would end it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
        return True
    return time.time_ns() - born < LIVE_WRITER_SECONDS * 1_000_000_000


def writer_elsewhere(name: str) -> tuple[str, float] | None:
    """(host id, age in seconds) of the writer of `name` (`writer_name` after TMP) where it ran
    on another host, whose pid cannot be asked about (`writer_alive` spares its leftovers for
    LIVE_WRITER_SECONDS); None for this host's, or a name that names no writer."""
    fields = name.removeprefix(TMP).split("-", 4)
    if len(fields) < 4 or fields[2] == HOST or not fields[0].isdigit():
        return None
    return fields[2], (time.time_ns() - int(fields[0])) / 1e9


# A temporary file of `temp_path`: only files named so are ever removed as leftovers (a folder
# given as --out may hold other programs' `.tmp-` files).
_TEMP_FILE = re.compile(rf"{re.escape(TMP)}\d{{20}}-\d+-[0-9a-f]{{8}}-[0-9a-f]{{8}}-.")


def clear_dead_temps(folder: Path) -> int:
    """Remove the temporary files (`temp_path`) in `folder` whose writers are gone (killed
    mid-write: `kill -9`, a power cut); a live writer's are spared (`writer_alive`), and so is
    every other file. Returns how many were removed."""
    removed = 0
    for p in Path(folder).glob(f"{TMP}*"):
        if not _TEMP_FILE.match(p.name) or writer_alive(p.name) or not p.is_file():
            continue
        try:
            p.unlink()
            removed += 1
        except FileNotFoundError:  # another writer's clearing got there first
            pass
        except OSError:  # not ours to remove (a read-only folder): harmless, never read
            continue
    return removed


def is_url(root: object) -> bool:
    """Whether `root` names an fsspec URL rather than a local path."""
    return isinstance(root, str) and "://" in root


def file_in_the_way(path: str | Path) -> Path | None:
    """The existing file (not folder) at `path` or above it, or a symbolic link to nothing there
    (an unmounted drive's), which stops `path` being made a folder; None when there is none."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
        if p.is_symlink():  # exists() follows the link: to nothing
            return p
    return None


def in_the_way(blocker: Path) -> str:
    """What `file_in_the_way` found, said: `X is a file, not a folder`, or `X is a link to T, which
    does not exist`."""
    if blocker.is_symlink() and not blocker.exists():
        return f"{blocker} is a link to {os.readlink(blocker)}, which does not exist"
    return f"{blocker} is a file, not a folder"


def check_target(path: str | Path, folder: bool, data=None) -> Path:
    """`path` as a Path, or an OptionError naming `--out` (its keyword in Python: `refusal`) when
    a verb could not write there: a folder to make (`folder`) or a file to write (else), checked
    before any work is done. A
    TypeError names the keyword when `path` is not a path (the Python API's ``out=None``).
    `data`: the verb's DATA, when a local file or folder: `path` may be neither it nor inside it
    (the output would replace the data, or become part of it)."""
    expect_path(path, "out")

    def refused(said: str) -> FneError:
        return out_refused(path, said)
    if not str(path).strip():  # an unset shell variable: not the current folder
        raise refused(f"is empty; give the {'folder' if folder else 'file'} to write")
    path = Path(path).expanduser()
    if isinstance(data, (str, os.PathLike)) and os.path.exists(data):
        d, p = Path(data).resolve(), path.resolve()
        if p == d or d in p.parents:
            raise refused(f"is {'DATA' if p == d else 'inside DATA'} {data}; writing there would change the data: "
                          f"give a path outside it")
    if not folder and path.is_dir():
        raise refused("is a folder; give the file to write")
    blocker = file_in_the_way(path if folder else path.parent)
    if blocker == path and blocker.is_file():
        raise refused("is a file; give a folder (new or existing) to write into")
    if blocker is not None:
        raise refused(f"cannot be written, {in_the_way(blocker)}")
    where = unwritable(path if folder else path.parent)
    if where is not None:
        raise refused(f"cannot be written, {where} is not writable")
    return path


def out_refused(path: str | Path, said: str) -> FneError:
    """The OptionError `PATH: said` of the option `out`, naming it as the caller did (``out='r'``
    in Python, ``--out 'r'`` on the command line: `fne.option_handling.refusal`)."""
    return refusal(lambda py: f"{named('out', py, str(path))}: {said}")


# The model file of each verb's run folder: a run folder holds the runs of one verb only.
RUN_MODELS = {"fne fit": "model.joblib", "fne train": "model.pt"}


def direct_run(folder: Path) -> bool:
    """Whether `folder` holds a `fne train --mode direct` run, which trains nothing and so writes
    no model.pt: its metrics.json alone marks it."""
    m = read_json(folder / "metrics.json") or {}  # None where absent or unreadable
    return m.get("kind") == "train" and m.get("mode") == "direct"


def check_run_folder(out: Path, verb: str) -> Path:
    """`out`, or an FneError when the run folder holds another verb's run (`RUN_MODELS`, or a
    direct mode train run's metrics.json): writing this verb's metrics.json there would replace
    that run's and leave its model beside another's."""
    for other, model in RUN_MODELS.items():
        if other != verb and (out / model).is_file():
            raise out_refused(out, f"holds a `{other}` run ({model}); `{verb}` would replace its "
                                   f"metrics.json and leave the two models mixed: give another folder")
    if verb != "fne train" and direct_run(out):
        raise out_refused(out, f"holds a `fne train --mode direct` run (its metrics.json); `{verb}` would replace "
                               f"it: give another folder")
    return out


# The files of a run folder (a `fne fit` or `fne train` run, a `fne run` step): a file written over
# one would destroy the run (its metrics.json, its test predictions, its model, its advice).
RUN_FILES = ("metrics.json", "predictions.csv", "checkpoint.pt", "class_map.json", "step.json", "advice.json",
             *RUN_MODELS.values())


def not_a_run_file(out: Path, writing: str) -> None:
    """An OptionError naming --out where it is one of a run folder's own files (`RUN_FILES`, in a
    folder holding a run's metrics.json and model, or a `fne run` step's step.json: a folder with a
    model.pt of one's own alone is no run), checked before any work; `writing` says what would be
    written there ("writing predictions")."""
    folder = out.parent
    run = ((folder / "metrics.json").is_file() and any((folder / m).is_file() for m in RUN_MODELS.values())
           or (folder / "step.json").is_file() or direct_run(folder))
    if out.name in RUN_FILES and run:
        raise out_refused(out, f"is the {out.name} of the run in {folder}; {writing} there would replace the "
                               f"run's own file: give another name")


def unwritable(folder: Path) -> Path | None:
    """The nearest existing folder at or above `folder` (where its files would be made) when it
    cannot be written, else None. For root, whom access(2) lets write anywhere its bits say no,
    a folder made and removed there decides (/proc, a FUSE mount refusing writes); a full disk
    refusing it is writable, and the write that finds it full says so."""
    where = next(p for p in (folder, *folder.parents) if p.exists())
    if not os.access(where, os.W_OK):
        return where
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".fne-probe-", dir=where))
        except OSError as e:
            return None if e.errno in (errno.ENOSPC, errno.EDQUOT) else where
    return None


def replace_file(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` into a temporary file beside `path`, then rename it to `path`: a full disk or an
    interrupt leaves the file as it was, never half written. The temporary file does not outlive a
    failure, and an error of the write names `path`."""
    replace_files({path: write})


def through_file(write: Callable[[BinaryIO], object]) -> Callable[[Path], None]:
    """A `replace_file` writer that hands `write` the temporary file opened in Python
    (``lambda f: torch.save(obj, f)``), so that a refused write (a full disk, a file-size limit)
    is the `OSError` the system gave: torch.save given a path writes in C++ and says only
    ``RuntimeError: ... unexpected pos``. A Ctrl-C or SIGTERM (`KeyboardInterrupt`) that Python
    raises inside one of those writes is raised as itself, not as the library's error over it.
    (HDF5 files: `fne.cache.h5file.h5_writer`.)"""
    def to(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            try:
                write(f)
            except OSError:
                raise
            except Exception as e:  # the library's error over the OSError of Python's write, or over
                cause = e.__cause__ or e.__context__  # Ctrl-C / SIGTERM raised inside that write
                while cause is not None and isinstance(cause, Exception) and not isinstance(cause, OSError):
                    cause = cause.__cause__ or cause.__context__
                if cause is not None and not isinstance(cause, Exception):
                    raise cause from None  # the interrupt, as it would come after a write in C++
                if cause is None or cause.errno is None:
                    raise
                raise OSError(cause.errno, cause.strerror) from e  # no filename: replace_files names the path

    return to


def json_text(obj, indent: int = 1) -> str:
    """`obj` as strict JSON (RFC 8259), which jq, JavaScript and R read: a float that is not a number
    (a diverged training's NaN loss, an infinity) is null, where Python's `json` writes NaN."""
    def finite(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: finite(v) for k, v in o.items()}
        return [finite(v) for v in o] if isinstance(o, (list, tuple)) else o

    return json.dumps(finite(obj), indent=indent, allow_nan=False, default=str)


def write_json(path: Path, obj) -> None:
    """`obj` as JSON in `path`, written whole (`replace_file`): an interrupted run or a full
    disk leaves the file as it was, never cut short."""
    replace_file(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1, default=str)))


def read_json(path: Path, warn: bool = False, skipped: list[tuple[str, str]] | None = None) -> dict | None:
    """The JSON object in `path`; None where the file is absent, unreadable or holds no object
    (cut short by a full disk, say), with a warning naming it and why where `warn`, or, given
    `skipped`, (path, why) added to it, for the caller to say with others alike
    (`fne.progress.say_skipped`)."""
    try:
        obj = json.loads(Path(path).read_text())
        why = None if isinstance(obj, dict) else (f"it holds a JSON {type(obj).__name__}, not an object (a damaged "
                                                  f"or foreign file)")
    except (OSError, ValueError) as e:
        obj, why = None, f"unreadable ({e})"
    if why and skipped is not None:
        skipped.append((str(path), why))
    elif why and warn:
        warnings.warn(f"skipped {path}: {why}", stacklevel=3)
    return obj if isinstance(obj, dict) else None


def replace_files(writes: dict[Path, Callable[[Path], object]]) -> None:
    """Each ``write(tmp)`` into a temporary file beside its path (`temp_path`), then all renamed
    into place together: the files as they were, or all of them new, never a mix.

    A full disk or an interrupt while writing leaves every file as it was. Several files are then
    committed in order, the last path (a run's metrics.json: what marks a folder as a run) taken
    away first and renamed in last; a failure or an interrupt (Ctrl-C, SIGTERM) among the
    renames puts the files back as they were, from links kept to them (`_commit`). Only a
    `kill -9` in that moment (microseconds) can leave a mix, and then without the last path:
    no reader takes the folder for a run. Temporary files do not outlive a failure, those of
    killed writers in the same folders are removed (`clear_dead_temps`), and an error of a
    write names its path."""
    for folder in dict.fromkeys(path.parent for path in writes):
        clear_dead_temps(folder)
    for path in writes:  # named by fne before temporary names said who writes them: as it did
        path.with_name(f"{TMP}{path.name}").unlink(missing_ok=True)
    tmps = {path: temp_path(path) for path in writes}
    try:
        for path, write in writes.items():
            try:
                write(tmps[path])
            except OSError as e:
                if e.filename is None:  # a write's error names no file
                    e.filename = str(path)
                raise
        if len(writes) == 1:
            os.replace(tmps[path], path)
        else:
            _commit(tmps)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def _commit(tmps: dict[Path, Path]) -> None:
    """Rename each temporary file of `tmps` ({path: tmp}) to its path, the last path removed
    first and renamed last; on any failure, every path put back as it was, from links to the
    earlier files made before (a copy where the filesystem has no hard links)."""
    last, olds, done = list(tmps)[-1], {}, []
    try:
        for path in tmps:
            if path.is_file():
                olds[path] = temp_path(path)
                try:
                    os.link(path, olds[path])
                except OSError:
                    shutil.copy2(path, olds[path])
        try:
            last.unlink(missing_ok=True)
            for path, tmp in tmps.items():
                os.replace(tmp, path)
                done.append(path)
        except BaseException:
            for path in [*(p for p in done if p != last), last]:  # the last one last, as before
                if path in olds:
                    os.replace(olds[path], path)
                    del olds[path]
                else:
                    path.unlink(missing_ok=True)
            raise
    finally:
        for old in olds.values():
            old.unlink(missing_ok=True)


def csv_writer(header: list[str], rows: Iterable[Iterable]) -> Callable[[Path], None]:
    """A `replace_file` writer of a CSV file of `header` then `rows`, in UTF-8 whatever the locale
    (pandas and `fne predict` read it as UTF-8; Windows' locale encoding, cp1252, cannot write 数)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    return write


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable]) -> None:
    """A CSV file of `header` then `rows`, written whole (`replace_file`)."""
    replace_file(path, csv_writer(header, rows))


class Url(str):
    """A store location given as an fsspec URL: printable, with `name` and `/` like a Path."""

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    def __truediv__(self, other: str) -> Url:
        return Url(f"{self.rstrip('/')}/{other}")


class _Common:
    def list_json(self, reldir: str) -> list[str]:
        """Relative paths of the `*.json` files in reldir, sorted by name."""
        names = [n for n, is_dir in self.names(reldir) if not is_dir]
        return [f"{reldir}/{n}" for n in sorted(names) if n.endswith(".json") and not n.startswith(".")]


class LocalFiles(_Common):
    """A store's files in a local folder; parts are committed by renaming `.tmp-<name>`."""

    url = None

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def exists(self, rel: str) -> bool:
        return (self.path / rel).exists()

    def makedirs(self, rel: str) -> None:
        (self.path / rel).mkdir(parents=True, exist_ok=True)

    def write_json(self, rel: str, obj) -> None:
        """Write `rel` whole: a temporary file renamed into place."""
        path = self.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:
            tmp.write_text(json.dumps(obj, indent=1))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def read_json(self, rel: str):
        return json.loads((self.path / rel).read_text())

    def names(self, rel: str) -> list[tuple[str, bool]]:
        """(name, is_dir) of the entries directly under rel; empty if there is none."""
        d = self.path / rel
        return [(p.name, p.is_dir()) for p in d.iterdir()] if d.is_dir() else []

    def remove(self, rel: str) -> None:
        shutil.rmtree(self.path / rel, ignore_errors=True)

    def move(self, rel: str, to: str) -> None:
        (self.path / to).parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path / rel, self.path / to)

    def zarr_store(self, rel: str):
        import zarr.storage  # where a part is read or written: `import fne` leaves zarr's 0.2-0.5 s to then

        return zarr.storage.LocalStore(self.path / rel)

    def size(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    # parts
    def part_rel(self, name: str) -> str:
        """Where a part is written before it is committed."""
        return f"parts/.tmp-{name}"

    def commit_part(self, name: str, rows: int) -> None:
        os.replace(self.path / self.part_rel(name), self.path / "parts" / name)

    def committed(self) -> list[str]:
        return sorted(n for n, is_dir in self.names("parts") if is_dir and not n.startswith("."))

    def unfinished(self) -> list[str]:
        """Parts written but never committed (their folder names, as `remove` takes them)."""
        return sorted(n for n, is_dir in self.names("parts") if is_dir and n.startswith(".tmp-"))

    def uncommit(self, name: str) -> None:
        """Nothing to do locally: moving the part's folder away uncommits it."""


class UrlFiles(_Common):
    """A store's files at an fsspec URL; parts are committed by a marker object written last."""

    def __init__(self, url: str):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem  # not an attribute before 2024

        self.url = self.path = Url(url)
        self.fs, self.root = fsspec.core.url_to_fs(url)
        if isinstance(self.fs, LocalFileSystem) and not self.fs.auto_mkdir:
            self.fs, self.root = fsspec.core.url_to_fs(url, auto_mkdir=True)  # file:// as on object stores
        self.root = self.root.rstrip("/")
        self._afs = None

    def p(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache(self.p(rel).rsplit("/", 1)[0])
        return self.fs.exists(self.p(rel))

    def makedirs(self, rel: str) -> None:
        self.fs.makedirs(self.p(rel), exist_ok=True)

    def write_json(self, rel: str, obj) -> None:
        """One single-object write: object stores never show a partial object."""
        self.fs.pipe_file(self.p(rel), json.dumps(obj, indent=1).encode())

    def read_json(self, rel: str):
        return json.loads(self.fs.cat_file(self.p(rel)))

    def names(self, rel: str) -> list[tuple[str, bool]]:
        self.fs.invalidate_cache(self.p(rel))  # other writers commit meanwhile (s3fs caches listings)
        try:
            entries = self.fs.ls(self.p(rel), detail=True)
        except FileNotFoundError:
            return []
        return [(e["name"].rstrip("/").rsplit("/", 1)[-1], e.get("type") == "directory") for e in entries]

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm(self.p(rel), recursive=True)
        except FileNotFoundError:
            pass

    def move(self, rel: str, to: str) -> None:
        self.fs.mv(self.p(rel), self.p(to), recursive=True)

    def zarr_store(self, rel: str):
        """An async view of the filesystem for zarr (FsspecStore needs one)."""
        if self._afs is None:
            if self.fs.async_impl:
                self._afs = type(self.fs)(**{**self.fs.storage_options, "asynchronous": True})
            else:
                try:
                    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
                except ImportError:  # fsspec < 2024.12 (datasets < 3.3 holds it there)
                    import fsspec

                    raise CacheError(f"{self.url}: a cache on {type(self.fs).__name__} needs fsspec >= 2024.12 "
                                     f"(this is {fsspec.__version__}): pip install -U 'fsspec>=2024.12'") from None
                self._afs = AsyncFileSystemWrapper(self.fs, asynchronous=True)
        import zarr.storage

        return zarr.storage.FsspecStore(self._afs, path=self.p(rel))

    def size(self) -> int:
        return int(self.fs.du(self.root))

    # parts
    def part_rel(self, name: str) -> str:
        return f"parts/{name}"

    def commit_part(self, name: str, rows: int) -> None:
        self.write_json(f"parts/{name}{COMMITTED}", {"rows": rows})

    def committed(self) -> list[str]:
        return sorted(n[:-len(COMMITTED)] for n, is_dir in self.names("parts")
                      if not is_dir and n.endswith(COMMITTED) and not n.startswith("."))

    def unfinished(self) -> list[str]:
        entries = self.names("parts")
        done = {n[:-len(COMMITTED)] for n, is_dir in entries if not is_dir and n.endswith(COMMITTED)}
        return sorted(n for n, is_dir in entries if is_dir and n not in done)

    def uncommit(self, name: str) -> None:
        """Remove `name`'s marker first, so that no reader sees the part while it moves."""
        self.fs.rm(self.p(f"parts/{name}{COMMITTED}"))


def files_at(location: str | Path) -> LocalFiles | UrlFiles:
    """The filesystem of a store at `location` (a local path or an fsspec URL). A file:// URL is
    the local folder it names: a store written through the folder's path commits its parts by
    renaming them, which a URL reader would take for unfinished parts (and `clean` delete)."""
    folder = file_url_folder(location)
    if folder is not None:
        return LocalFiles(folder)
    return UrlFiles(str(location)) if is_url(location) else LocalFiles(location)


def file_url_folder(location: str | Path) -> Path | None:
    """The local folder a file:// URL names (file:///a%20b and file://localhost/a: /a b, /a), else
    None. Such a cache is that folder, whichever way it is given."""
    if not (is_url(location) and str(location).startswith("file://")):
        return None
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    url = urlsplit(str(location))
    return Path(url2pathname(url.path)) if url.netloc in ("", "localhost") else None
