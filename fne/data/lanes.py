"""Whole containers per loader worker: each tar (or Parquet row group) is read by one worker,
front to back.

A DataLoader hands batch k to worker k mod W. `container_batches` therefore deals the
containers into W lanes of about equal size, cuts each lane into batches in member order, and
interleaves the lanes (lane 0's first batch, lane 1's first batch, ...), padding a lane that
ends early with empty batches, so that worker w reads only the containers of lane w.
"""

from __future__ import annotations

import heapq

from fne.data.dataset import Dataset


def _group(dataset: Dataset, i: int) -> tuple[str, int]:
    m = dataset.sources[i]
    parquet = dataset.container.listings[m.container].kind == "parquet"
    return m.container, m.a if parquet else 0


def container_batches(dataset: Dataset, todo: list[int], batch_size: int,
                      workers: int) -> list[list[int]] | None:
    """Batches of positions in `todo` (what the loader's dataset indexes) for `batch_sampler`.

    Parameters
    ----------
    dataset
        DATA; only container datasets (tar, Parquet) are dealt in lanes.
    todo
        The dataset indices to read, in order; the batches hold positions into this list.
    batch_size
        Images per batch.
    workers
        Loader workers.

    Returns
    -------
    list of list of int, or None
        None where plain batching does as well (files, arrays, fewer than two workers).
    """
    if dataset.container is None or workers < 2 or not todo:
        return None
    groups: dict[tuple[str, int], list[int]] = {}
    for pos, i in enumerate(todo):
        groups.setdefault(_group(dataset, i), []).append(pos)
    lanes: list[list[int]] = [[] for _ in range(workers)]
    heap = [(0, w) for w in range(workers)]
    for key in sorted(groups, key=lambda k: -len(groups[k])):  # largest first, to the emptiest lane
        n, w = heapq.heappop(heap)
        lanes[w].append(key)
        heapq.heappush(heap, (n + len(groups[key]), w))
    cut = []
    for keys in lanes:
        positions = [p for key in sorted(keys) for p in groups[key]]  # containers in file order
        cut.append([positions[k:k + batch_size] for k in range(0, len(positions), batch_size)])
    rounds = max(len(c) for c in cut)
    return [c[r] if r < len(c) else [] for r in range(rounds) for c in cut]
