"""Shared memory the loader workers collate into, reused batch after batch (`SlotPool`), and
where a batch's pixels or packed bytes lie in it (`pixels_of`, `raw_of`) until the main process
gives them back (`release`). Fresh shared memory for every batch cost the kernel about 0.1 ms
per image of views, and the main process more than the workers saved for decoded images.
"""

from __future__ import annotations

import mmap
import shutil
import uuid
import weakref

import numpy as np
import torch

POOL_BYTES = 64 << 20  # shared memory per worker at most
_POOLS: weakref.WeakValueDictionary[str, SlotPool] = weakref.WeakValueDictionary()  # this process's


class SlotPool:
    """Shared memory the loader workers collate pixels into, reused batch after batch.

    Made in the main process before the workers start (they inherit it, or receive it
    pickled): `per_worker` slots of `slot_bytes` for each worker, its own ring. A worker fills
    the first run of consecutive free slots from its ring's start (so it writes no more of its
    ring than the batches it has in flight at once take) and marks them busy; the batch carries
    where they lie; the main
    process reads them in place (`pixels_of`) and frees them once it is done (`release`). A
    worker that finds no free run (the main process holds more batches than foreseen, or does
    not release them) collates into fresh shared memory instead: slower, never wrong. The busy
    flags are plain bytes in that memory: the main process writes 0 only after it has read the
    pixels (and gone through the loader's queue and locks since), a worker writes a slot only
    after reading 0.

    Parameters
    ----------
    slot_bytes : int
        Bytes of a slot: one image's views (`pixels_of`), or a share of a batch's packed bytes,
        which take a run of slots (`raw_of`).
    per_worker : int
        Slots of each worker's ring.
    workers : int
        Loader workers.
    forked : bool
        Whether the workers are forked (they inherit the pool): then its memory is a shared
        mapping whose pages are made where first written, in the workers, in parallel, and only
        those they write (`paged_bytes`). Otherwise torch's shared memory, which a pickled pool
        carries to spawned workers: torch makes all its pages at once, in this process (0.27
        CPU-s per GB on the development CPU: 2.4 s before the first batch for 9 GB, the decoded
        images' pool of 15 workers at batch 256).
    """

    def __init__(self, slot_bytes: int, per_worker: int, workers: int, forked: bool = False):
        self.token = uuid.uuid4().hex
        self.slot_bytes, self.per_worker, self.workers = slot_bytes, per_worker, workers
        made = paged_bytes if forked else shared_bytes
        self.data = made(slot_bytes * per_worker * workers)
        self.busy = made(per_worker * workers).zero_()  # 1: a batch in flight lies there
        _POOLS[self.token] = self

    @staticmethod
    def claim(n: int, x0: torch.Tensor) -> tuple[SlotPool, int] | None:
        """In a loader worker: (pool, first slot) of n free consecutive slots for views like x0,
        marked busy; None where the dataset has no pool, or no such run is free."""
        info = torch.utils.data.get_worker_info()
        pool = getattr(info.dataset, "pool", None) if info is not None else None
        if pool is None or x0.dtype != torch.uint8 or x0.numel() != pool.slot_bytes:
            return None
        first = pool.take(n)
        return None if first is None else (pool, first)

    def take(self, n: int) -> int | None:
        """In a loader worker: the first of n free consecutive slots of its ring, marked busy;
        None where no such run is free."""
        info = torch.utils.data.get_worker_info()
        if info is None or info.num_workers != self.workers or n > self.per_worker:
            return None
        ring = info.id * self.per_worker
        busy = self.busy[ring:ring + self.per_worker].numpy()
        free = np.flatnonzero(np.convolve(busy == 0, np.ones(n, dtype=np.int64), "valid") == n)
        if not len(free):
            return None
        first = ring + int(free[0])
        self.busy[first:first + n] = 1
        return first


def shm_free() -> int:
    """Bytes free in /dev/shm, where torch's shared memory lies on Linux (elsewhere: no limit known)."""
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return 1 << 62


def shared_bytes(n: int) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(n))


def paged_bytes(n: int) -> torch.Tensor:
    """n bytes of memory shared with the processes this one forks after (an anonymous shared
    mapping): no page is made until it is written, and none lies in /dev/shm. Zeros."""
    return torch.frombuffer(mmap.mmap(-1, max(n, 1), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS),
                            dtype=torch.uint8)[:n]


def pixels_of(batch: dict) -> torch.Tensor | None:
    """A `collate` batch's uint8 pixels (B, V, 3, S, S) or None: in place in the `SlotPool`
    where the batch lies in one (valid until `release(batch)`)."""
    if batch.get("slots") is None:
        return batch["pixels"]
    token, first, shape, back = batch["slots"]
    pool = _POOLS[token]
    n = shape[0]
    flat = pool.data[first * pool.slot_bytes:(first + n) * pool.slot_bytes]
    return flat.view(shape).permute(*back)


def release(batch: dict) -> None:
    """Give a batch's `SlotPool` slots back to its worker (once; after the pixels were read, and
    its decoded images copied to the device)."""
    slots = batch.pop("slots", None)
    pool = _POOLS.get(slots[0]) if slots is not None else None
    if pool is not None:
        pool.busy[slots[1]:slots[1] + slots[2][0]] = 0
    raw = batch.pop("raw_slots", None)
    pool = _POOLS.get(raw[0]) if raw is not None else None
    if pool is not None:
        pool.busy[raw[1]:raw[1] + raw[2]] = 0




def raw_of(batch: dict) -> torch.Tensor | None:
    """A `collate` batch's packed bytes (`pack_raw`), in place in its `raw_pool` where it lies
    in one (valid until `release(batch)`)."""
    if batch.get("raw_slots") is None:
        return batch["raw"]
    token, first, _ = batch["raw_slots"]
    pool = _POOLS[token]
    start = first * pool.slot_bytes
    return pool.data[start:start + batch["raw_ends"][-1]]
