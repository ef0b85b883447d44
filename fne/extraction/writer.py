"""The writer: commits rows to the store in parts, on a thread of its own.

The forward pass never waits on compression or the filesystem; a failure on the writer
thread is raised in the main thread at the next `put` or at `close`.
"""

from __future__ import annotations

import errno
import importlib
import queue
import threading
import time
import warnings

import numpy as np
import torch

from fne.cache.store import Store
from fne.errors import DENIED, CacheError
from fne.handoff import POLL, held, wait_event
from fne.option_handling import named, refusal
from fne.progress import said


class Writer(threading.Thread):
    """Commits rows in parts of `chunk` rows (images × views) off the main thread.

    Batches arrive as one (B, V, D) array of all taps side by side (one device-to-host copy per
    batch); on CUDA the copy is asynchronous and the writer waits for its event before reading.
    """

    def __init__(self, store: Store, chunk: int, taps: list[tuple[str, int]]):
        super().__init__(daemon=True)
        self.store, self.chunk = store, chunk
        self.width = sum(c for _, c in taps)
        self.q: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.finished = threading.Event()  # set as `run` ends, committed or failed
        self.closing = threading.Event()  # set by `close`: no batch comes after those queued
        self.seconds = 0.0
        self.committed = 0
        self.parts: list[str] = []  # the parts it committed rows in (the run's record names them)
        self._keys: list[str] = []
        self._rows: list[np.ndarray] = []
        self._bad: dict[str, str] = {}

    def put(self, keys: list[str], rows, bad: dict[str, str], event=None) -> None:
        """Queue one batch: `rows` (B, V, D) every tap side by side, `bad` {key: reason}; the
        writer's error where it has died (a full disk)."""
        if not self._put((keys, rows, bad, event)):
            raise self.error

    def _put(self, item) -> bool:
        """Queue `item`, waiting for room, but never on a writer that has died (a full disk):
        False then. A Ctrl-C is raised between tries, never inside the queue (`fne.handoff`)."""
        while self.error is None:
            with held():
                try:
                    self.q.put(item, timeout=POLL)
                    return True
                except queue.Full:
                    pass
        return False

    def _flush(self):
        if not self._keys and not self._bad:
            return
        t = time.perf_counter()
        # One (N, V, D) array, every tap side by side: the store's part layout, so no split here.
        rows = np.concatenate(self._rows) if self._keys else np.empty((0, self.store.views, self.width))
        name = self.store.commit(self._keys, rows, self._bad)
        if self._keys:
            self.parts.append(name)
        self.committed += len(self._keys)
        self._keys, self._rows, self._bad = [], [], {}
        self.seconds += time.perf_counter() - t

    def run(self):
        try:
            # zarr, imported where a part is first written (not with fne: 0.2-0.5 s), now, while
            # the first batches are read, rather than on the way to the first commit
            importlib.import_module("zarr")
            while True:
                item = self._next()
                if item is None:
                    self._flush()
                    return
                keys, rows, bad, event = item
                if event is not None:
                    event.synchronize()
                if keys:
                    self._keys += keys
                    self._rows.append(rows.numpy() if isinstance(rows, torch.Tensor) else rows)
                self._bad.update(bad)
                if len(self._keys) * self.store.views >= self.chunk:  # rows: a ten-crop part holds a tenth the images
                    self._flush()
        except BaseException as e:  # surfaced to the main thread by put()/close()
            self.error = _explain(e, self.store)
        finally:
            self.finished.set()

    def _next(self):
        """The next batch queued, None where there is none to come: the end mark `close` queued,
        or an empty queue once `close` began (a second Ctrl-C stopped its wait for room for the
        mark: the writer commits what was queued and ends, not left waiting for ever)."""
        while True:
            try:
                return self.q.get(timeout=POLL)
            except queue.Empty:
                if self.closing.is_set():
                    return None

    def close(self, raising: BaseException | None = None) -> None:
        """Commit what is queued and buffered, and wait for the thread. A Ctrl-C meanwhile is
        raised once that commit is done (at most `chunk` rows), so that no writer outlives the
        run, still committing while a rerun plans (or left waiting for rows that never come);
        a second Ctrl-C stops the wait (the thread, a daemon, commits what was queued by itself and
        ends, also where the wait was for room for its end mark: `_next`).
        (It waits on `finished`, not `join`: Python < 3.13 takes a thread whose join was
        interrupted for ended.)

        `raising`: the exception the caller is raising as it closes the writer (caught by its
        own ``except``: ``sys.exception()`` would also return one a caller of it is handling). A Ctrl-C, that one or one pressed here, stays the exception the
        caller sees: the writer's own error (a full disk) is then a warning, not raised in its
        place. Every part committed before that error is kept. Where `raising` is a Ctrl-C, the
        next one is the second: it stops the wait."""
        interrupted, sent = None, False
        self.closing.set()  # before the mark: it may never be queued
        while True:
            try:
                if not sent:
                    self._put(None)  # False, not queued: the writer has died (`finished` is set)
                    sent = True
                wait_event(self.finished)
                break
            except KeyboardInterrupt as e:
                if interrupted is not None or isinstance(raising, KeyboardInterrupt):  # the second
                    raise
                interrupted = e
        self.join()  # its last instructions: the commit is done
        ctrl_c = interrupted or (raising if isinstance(raising, KeyboardInterrupt) else None)
        if self.error is not None and ctrl_c is not None:
            error = self.error  # in the caller's words: a CacheError's `cli` names --cache
            warnings.warn(said(lambda py: f"the cache writer had stopped: {error if py else getattr(error, 'cli', error)}"),
                          stacklevel=2)
        elif self.error is not None:
            raise self.error
        if interrupted is not None:
            raise interrupted


def _explain(e: BaseException, store: Store) -> BaseException:
    """A full disk or a cache that cannot be written (ENOSPC, EROFS, ... anywhere in the chain) as
    one clear CacheError naming the cache."""
    cause: BaseException | None = e
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in (*_FULL, *DENIED, errno.EFBIG)):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return e
    if cause.errno == errno.EFBIG:  # ulimit -f: Python ignores SIGXFSZ, the write fails instead
        return refusal(lambda py: f"the file-size limit (ulimit -f) stopped writing to the cache {store.path}; every "
                                  f"row committed so far is kept: raise it (ulimit -f unlimited) and run again",
                       CacheError)
    if cause.errno in _FULL:
        room = "no space left on device" if cause.errno == errno.ENOSPC else "the disk quota is used up"
        return refusal(lambda py: f"{room} writing to the cache {store.path}; every row "
                                  f"committed so far is kept: free space (or pass {named('cache', py)}) and run "
                                  f"again", CacheError)
    return refusal(lambda py: f"cannot write to the cache {store.path} ({cause.strerror}); every row committed so "
                              f"far is kept: pass {'cache=' if py else '--cache '}a folder you can write to",
                   CacheError)


_FULL = (errno.ENOSPC, errno.EDQUOT)
