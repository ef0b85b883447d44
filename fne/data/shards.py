"""Shards: a deterministic 1/N of DATA per process, decided without reading any image.

A tar shard goes whole to one shard (a Parquet row group likewise, in blocks of
`PARQUET_SHARD_ROWS` rows where it is longer: each shard then reads the group but computes
only its blocks). A file's shard comes from
its size when few files share that size, else from its relative path. Only files of equal size
can hold the same bytes, so duplicates (one image under two names) land in one shard and end as one row; a size shared by more than `SIZE_GROUP_MAX` files
(uncompressed images of one resolution) is spread by path instead, where a duplicate may be
computed by two shards (reads still see one row). Items of array datasets (HDF5) are sharded
by content key, which costs no file opens. A finished shard writes a marker named after the
dataset's listing (paths, sizes, mtimes), so a changed folder never counts as done.
"""

from __future__ import annotations

import hashlib
import numbers
import os
import socket
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from fne.cache.store import Store
from fne.data.dataset import Dataset
from fne.errors import FneError
from fne.option_handling import named, refusal

SIZE_GROUP_MAX = 16
PARQUET_SHARD_ROWS = 1024  # rows of one Parquet row group that go to one shard together


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """`I/N` or (I, N) -> (I, N); None -> None (no sharding: the environment is not read)."""
    if shard is None:
        return None
    if isinstance(shard, tuple):  # (0.5, 2) ran no image and marked its shard done; numpy integers are integers
        if len(shard) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in shard):
            raise refusal(lambda py: f"bad {named('shard', py, shard)}; expected (I, N), e.g. (0, 4)")
        i, n = (int(v) for v in shard)
    else:
        try:
            i, n = (int(v) for v in str(shard).split("/"))
        except ValueError:
            raise refusal(lambda py: f"bad {named('shard', py, shard)}; expected I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise refusal(lambda py: f"bad {named('shard', py, shard)}: need 0 <= I < N")
    return i, n


def shard_from_env() -> tuple[int, int] | None:
    """torchrun's RANK / WORLD_SIZE: read by `fne extract` only, never by fit or predict."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, size = os.environ["RANK"], os.environ["WORLD_SIZE"]
        try:
            return parse_shard((int(rank), int(size)))
        except (ValueError, FneError):
            raise FneError(f"bad $RANK={rank!r} / $WORLD_SIZE={size!r} (torchrun's): need integers, "
                           f"0 <= RANK < WORLD_SIZE") from None
    return None


def _bucket(basis: str, n: int) -> int:
    return int.from_bytes(hashlib.blake2b(basis.encode(), digest_size=8).digest(), "big") % n


def _parquet_block(m) -> str:
    """A Parquet member's unit of sharding: its row group, and within a row group of more than
    PARQUET_SHARD_ROWS rows its block of them (the first block keeps the group's own name, so
    a file of small row groups shards as before). pandas and pyarrow write up to 1,048,576
    rows in one row group by default: 70,000 images in two files went to two shards of any N."""
    block = m.b // PARQUET_SHARD_ROWS
    return f"{m.a}" if block == 0 else f"{m.a}.{block}"


def shard_of(dataset: Dataset, n: int) -> list[int]:
    """The shard (0..n-1) of every item of DATA."""
    if dataset.array_source is not None:
        return [_bucket(k, n) for k in dataset.keys()]
    if dataset.container is not None:  # whole tars, Parquet row groups in blocks of PARQUET_SHARD_ROWS
        return [_bucket(f"container:{os.path.relpath(m.container, dataset.root)}#"
                        f"{_parquet_block(m) if dataset.container.listings[m.container].kind == 'parquet' else 0}", n)
                for m in dataset.sources]
    sizes = [st.st_size for st in dataset.stats()]
    count = Counter(sizes)
    return [_bucket(f"size:{s}" if count[s] <= SIZE_GROUP_MAX else f"path:{ident}", n)
            for s, ident in zip(sizes, dataset.ids, strict=True)]


def members(dataset: Dataset, shard: tuple[int, int] | None) -> list[int]:
    """The indices of `dataset` that `shard` = (index, count) holds; every index when None."""
    if shard is None:
        return list(range(len(dataset)))
    return [i for i, s in enumerate(shard_of(dataset, shard[1])) if s == shard[0]]


def listing_fingerprint(dataset: Dataset) -> str:
    """Names DATA as listed (paths, sizes, mtimes; content keys for arrays) without reading it."""
    h = hashlib.blake2b(digest_size=8)
    if dataset.array_source is not None:
        for k in sorted(set(dataset.keys())):
            h.update(bytes.fromhex(k))
        return h.hexdigest()
    for ident, st in sorted(zip(dataset.ids, dataset.stats(), strict=True), key=lambda t: t[0]):
        h.update(f"{ident}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def content_fingerprint(keys: list[str]) -> str:
    """Names a set of images by content (not order, folder or DATA form): sorted content keys."""
    h = hashlib.blake2b(digest_size=8)
    for k in sorted(set(keys)):
        h.update(bytes.fromhex(k))
    return h.hexdigest()


def marker_rel(fingerprint: str, shard: tuple[int, int]) -> str:
    """The marker's path inside the store."""
    return f"shards/{fingerprint}-{shard[0]}of{shard[1]}.json"


def shard_marker(store: Store, fingerprint: str, shard: tuple[int, int]) -> Path | str:
    """Where the marker lies (a Path, or a URL string for URL stores); read and write it through
    the store (`Store.write_json`: atomic rename locally, one object write on a URL store)."""
    return store.path / marker_rel(fingerprint, shard)


def finish_shard(store: Store, fingerprint: str, shard: tuple[int, int], dataset: Dataset,
                 in_shard: int, n_computed: int, n_skipped: int) -> None:
    """Mark the shard done; `in_shard`: distinct images (contents) of the shard."""
    store.write_json(marker_rel(fingerprint, shard), {
        "dataset": dataset.name, "dataset_fingerprint": fingerprint, "shard": list(shard),
        "n_images_in_shard": in_shard, "n_computed": n_computed, "n_skipped": n_skipped,
        "host": socket.gethostname(), "pid": os.getpid(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    })


def shard_status(data, n: int, **spec: object) -> dict[int, dict | None]:
    """For each of N shards of DATA: its finished-marker, or None if it must be (re)run.

    `spec` takes StoreSpec's fields (arch, weights, crop, precision, storage_dtype, cache, ...). A job
    scheduler resubmits exactly the shards that map to None.
    """
    from fne.cache.spec import StoreSpec
    from fne.data.datasets import load_dataset

    dataset = data if isinstance(data, Dataset) else load_dataset(data, cache=spec.get("cache"))
    store = StoreSpec(**spec).open()  # reading: a store nobody wrote is not created
    fp = listing_fingerprint(dataset)
    return {i: store.read_json(marker_rel(fp, (i, n))) if store.exists(marker_rel(fp, (i, n))) else None
            for i in range(n)}
