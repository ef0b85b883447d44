"""How reading processes read an HDF5 file's `images`: one by one through a chunk cache that
keeps its chunks (`open_images`), and in `fne train`'s shuffled order from a copy where it
cannot keep them (`shuffled_copy`).

HDF5 decodes (decompresses) a chunk whole. In a random order over a file whose chunks hold
several images, and whose chunks the shuffled images are in exceed what a reading process keeps
(`kept_bytes`: 256 MB where `open_images` enlarges the cache), nearly every image costs its whole
chunk's decode again. So before a shuffled loader starts, the `images` dataset of such a file is
copied once, in order, uncompressed, into a `.npy` file in the cache's `manifests/shuffled/`
beside the Parquet copies (`random_access`, whose naming, temporary name, room check, warning and
clean-up it shares). Reading processes map the copy (`np.load(..., mmap_mode="r")`), and an image
is a slice of the map: the page cache, which every loader worker shares, holds what fits in
memory. A contiguous dataset, or one chunked an image (or part of one) at a time, is read as it
is: each image read decodes only itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fne.data import containers, random_access
from fne.progress import progress as bar_of

COPY_SUFFIX = ".npy"
_BLOCK_BYTES = 64 << 20  # read and written at a time while copying (whole chunks)


def open_images(path: str):
    """The `images` dataset of HDF5 file `path`, opened for reading image by image. HDF5 decodes
    a chunk (decompresses it) whole, and keeps 1 MiB of decoded chunks by default (8 MiB with
    HDF5 2): with chunks of many images each image read cost its chunk's decode, in any
    order (11.6 ms per 224x224 image in gzip chunks of 64, against 0.2 ms with the chunk kept;
    benchmarks/RESULTS.md, "HDF5 chunks"). Where a chunk does not fit in that, the file is
    opened again with a chunk cache of `containers.GROUP_CACHE_BYTES` (at least two chunks), as
    a Parquet reader keeps row groups. (Where it fits, a larger cache costs reading in order more
    than it saves a random order: 0.10 against 0.07 ms per image in chunks of 16, 0.55 against
    0.9 in a random order.)"""
    import h5py

    f = h5py.File(path, "r")
    images = f["images"]
    chunk = 0 if images.chunks is None else int(np.prod(images.chunks)) * images.dtype.itemsize
    if chunk <= kept_bytes(images):
        return images
    f.close()
    nbytes = max(containers.GROUP_CACHE_BYTES, 2 * chunk)
    slots = 10 * (nbytes // chunk) + 1  # HDF5's advice: ten times the chunks that fit, a prime
    while any(slots % k == 0 for k in range(3, int(slots ** 0.5) + 1, 2)):
        slots += 2
    return h5py.File(path, "r", rdcc_nbytes=nbytes, rdcc_nslots=slots)["images"]


def kept_bytes(images) -> int:
    """The bytes of decoded chunks HDF5 keeps of dataset `images` as it is opened (its chunk cache)."""
    return int(images.id.get_access_plist().get_chunk_cache()[1])


def _chunk_rows(images) -> int:
    """Images per chunk along the first axis; 0 for a contiguous dataset."""
    return 0 if images.chunks is None else int(images.chunks[0])


def pays(images, rows: Sequence[int]) -> bool:
    """Whether reading images `rows` of dataset `images` (as `open_images` opens it) in a random
    order needs a copy: its chunks hold several images, and the chunks `rows` are in hold more
    than the chunk cache keeps, so that most reads would decode a chunk again."""
    per = _chunk_rows(images)
    if per <= 1:  # contiguous, or an image (or part of one) a chunk: each read decodes only itself
        return False
    image_bytes = int(np.prod(images.shape[1:])) * images.dtype.itemsize
    touched = len({int(r) // per for r in rows})
    return touched * per * image_bytes > kept_bytes(images)


def shuffled_copy(path: str, rows: Sequence[int], cache: str | None, progress: bool) -> str | None:
    """The copy to read images `rows` of HDF5 DATA file `path` from in a random order, made now
    (a line saying so and a bar, unless not `progress`) where there is none, in the shuffled
    folder of cache `cache` (`containers.shuffled_dir`); None where the file is read as it is
    (`pays`), and None with a warning where no copy can be made (no room, a failed copy)."""
    try:
        images = open_images(path)
        try:
            if not pays(images, rows):
                return None
            shape, size = images.shape, int(np.prod(images.shape)) * images.dtype.itemsize
        finally:
            images.file.close()
        where = os.path.realpath(path)
        st = os.stat(where)
    except Exception as e:  # h5py raises OSError / KeyError on a file changed since it was listed
        return random_access.slow(path, str(e), "chunk")
    copy = random_access.copy_name(containers.shuffled_dir(cache), where, st.st_size, st.st_mtime_ns, "images",
                                   COPY_SUFFIX)
    return random_access.ensure(path, copy, size, lambda tmp, shown: _write(path, tmp, shown),
                                lambda c: _usable(c, shape), progress, "chunk", (st.st_size, st.st_mtime_ns))


def open_copy(copy: str) -> np.ndarray:
    """A copy's images, mapped read-only: image i is row i."""
    return np.load(copy, mmap_mode="r")


def _usable(copy: Path, shape: tuple[int, ...]) -> bool:
    try:
        a = open_copy(str(copy))
    except (OSError, ValueError):  # cut short (the map is longer than the file), or no .npy
        return False
    return a.shape == shape and a.dtype == np.uint8


def _write(path: str, tmp: Path, enabled: bool) -> None:
    """The `images` dataset of HDF5 file `path`, in order and uncompressed, as `.npy` file `tmp`:
    read whole chunks at a time, so that each chunk is decoded once."""
    images = open_images(path)
    try:
        n = images.shape[0]
        image_bytes = max(1, int(np.prod(images.shape[1:])) * images.dtype.itemsize)
        per = max(1, _chunk_rows(images))
        step = per * max(1, _BLOCK_BYTES // (per * image_bytes))
        bar = bar_of(n, f"copying {Path(path).name}", enabled)
        try:
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(images.dtype),
                                                         "fortran_order": False, "shape": images.shape})
                for a in range(0, n, step):
                    block = np.ascontiguousarray(images[a:a + step])
                    f.write(block.data)
                    bar.update(len(block))
        finally:
            bar.close()
    finally:
        images.file.close()
