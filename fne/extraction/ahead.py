"""Work ahead of its consumer on a thread of its own: `Ahead` maps an iterable in order,
`ahead` items in advance, on its own CUDA stream where it runs on a GPU; stages chain (the
reader's decoding, then its resizing: `reader.assembled`)."""

from __future__ import annotations

import contextlib
import queue
import threading
import types

import torch

from fne.handoff import POLL, held


class Ahead:
    """`fn(item)` for each item of `items`, in order, computed on a thread of its own `ahead`
    items in advance (`ahead` = 0: in the consumer's thread, one at a time). A result that is
    None is not yielded (a step that takes several items to make one result).

    For work that blocks its thread with the GIL released: decoding JPEGs on the device
    (torchvision's nvjpeg call ends in a stream synchronisation) overlaps the consumer's work on
    the item before, where in line the two add up. On CUDA the thread launches on a stream of
    its own, so that its waits (`decode_jpegs`) are for its own work, not the consumer's: the
    consumer's stream waits for each result's work (an event), and the result's device
    tensors are marked as used there (``record_stream``), so that their memory is not handed
    back to the thread while the consumer's kernels may still read it. Stages chain: an
    `Ahead` over another takes the other's results on its own thread and stream. An error on
    the thread is raised at the consumer's next item; `close` (also after an error in the
    consumer) stops the thread and waits for it, and closes the `Ahead` it maps.

    Parameters
    ----------
    items : iterable
        What to map (a DataLoader's batches, or another `Ahead`).
    fn : callable
        item -> result or None, run on the thread (it must not draw from a shared random
        generator, so that runs repeat themselves).
    ahead : int
        Results computed in advance.
    device : torch.device, optional
        A CUDA device the thread makes its current one (as the consumer's thread did: a rank's
        GPU), so that its kernels and streams are that device's.
    name : str
        The thread's name.
    """

    def __init__(self, items, fn, ahead: int = 0, device: torch.device | None = None, name: str = "fne-ahead"):
        self.items, self.fn, self.ahead, self.device, self.name = items, fn, ahead, device, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __iter__(self):
        if self.ahead < 1:
            yield from (out for out in map(self.fn, self.items) if out is not None)
            return
        q: queue.Queue = queue.Queue(maxsize=self.ahead)
        self._thread = threading.Thread(target=self._fill, args=(q,), daemon=True, name=self.name)
        self._thread.start()
        while True:
            with held():  # a Ctrl-C between waits, never inside the queue (`fne.handoff`)
                try:
                    item = q.get(timeout=POLL)
                except queue.Empty:
                    continue
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            if isinstance(item, _Made):
                item = item.take()
            yield item

    def _fill(self, q: queue.Queue) -> None:
        try:
            side = None
            if self.device is not None and self.device.type == "cuda":
                if self.device.index is not None:
                    torch.cuda.set_device(self.device)
                side = torch.cuda.Stream(self.device)
            # the whole loop on the thread's stream: an upstream `Ahead`'s results are taken onto it
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for item in self.items:
                    out = self.fn(item)
                    if out is None:
                        continue
                    if not self._put(q, out if side is None else _Made(out, side)):
                        return
            self._put(q, _END)
        except BaseException as e:  # surfaced in the consumer's thread
            self._put(q, _Failed(e))

    def _put(self, q: queue.Queue, item) -> bool:
        """Queue `item` once there is room; False if the consumer closed meanwhile."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop the thread (if any) and wait for it, then close the `Ahead` (or generator) it
        maps: the loader may then be shut down."""
        with held():
            self._stop.set()
        while self._thread is not None:
            with held():
                self._thread.join(POLL)
                if not self._thread.is_alive():
                    break
        if isinstance(self.items, (Ahead, types.GeneratorType)):  # a generator lets go of what its
            self.items.close()  # frame holds (the reader's: a batch's views of the workers' shared memory)


_END = object()


class _Made:
    """A result made on `stream` (another thread's): `take` makes the taking thread's stream
    wait for that work and marks the result's device tensors as used there."""

    def __init__(self, result, stream: torch.cuda.Stream):
        self.result, self.device, self.done = result, stream.device, stream.record_event()

    def take(self):
        here = torch.cuda.current_stream(self.device)
        here.wait_event(self.done)
        for t in _device_tensors(self.result):
            t.record_stream(here)
        return self.result


def _device_tensors(x):
    """The CUDA tensors in nested tuples, lists and dicts."""
    if isinstance(x, torch.Tensor):
        if x.is_cuda:
            yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _device_tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _device_tensors(y)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error
