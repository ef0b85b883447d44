"""The reader: image files (or array items) -> content key + uint8 views, in loader workers.

Each image's bytes come from `Dataset.read_bytes` once: they are hashed for the content key
and decoded from memory, so extracting a folder for the first time reads every image exactly
once. Views are torchvision's pixels (`Preprocess`), channels-last, and a batch is collated
straight into shared memory (one copy on the way to the main process): into slots of a
`SlotPool` (`fne.extraction.slots`) reused batch after batch where the main process gives them back, since
fresh shared memory for every batch cost the kernel about 0.1 ms per image. Plain JPEGs may instead
travel as their bytes, a batch's packed in one tensor, to be decoded where the network runs
(`decode="device"`): one batched decode call (several for large photos) on a thread of its
own, then one batched resize and crop whatever the images' sizes (`resample`) on another, each
ahead of the loop (`assembled`, `Ahead`). Or the workers decode and the device resizes
(`rgb`): the images' full RGB pixels travel as the JPEGs' bytes would (`Rgb`), and the resize
in float64 gives PIL's pixels exactly, so the rows are those of the workers' resize.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import PIL
import torch

import fne.data
from fne.backbones.preprocess import Preprocess
from fne.backbones.resample import resize_views
from fne.data.dataset import Dataset, content_key
from fne.data.datasets import read_image
from fne.data.images import unreadable_tiff
from fne.devices import decode_jpegs_rgb, device_decoder
from fne.extraction.ahead import Ahead
from fne.extraction.slots import POOL_BYTES, SlotPool, pixels_of, raw_of, shared_bytes, shm_free
from fne.handoff import held

if TYPE_CHECKING:
    from PIL import Image


class ImageItems(torch.utils.data.Dataset):
    """Item j -> (dataset index, content key, pixels or JPEG bytes or None, error, stat), and
    a sixth field where decoding it warned: ((image id, message), ...), said by the main process.

    The one image dataset of fne: `fne extract` and `fne train` both read through it.
    pixels: what `prep` makes of the RGB PIL image (extract: `Preprocess`' uint8 (V, 3, S, S)
    views; train: its transform's one uint8 (3, S, S) view). With `raw_jpeg`, plain JPEGs (RGB or
    grey, no EXIF rotation; files, tar members or Parquet cells alike) travel as their bytes
    with their size (`Jpeg`) for the device decoder. With `rgb` (extract's `Preprocess` only),
    every image up to `RGB_AREA` times the resized one's pixels travels decoded, whole, for the
    device to resize (`Rgb`); larger ones are resized here.
    `stat` is (size, mtime_ns) of a file taken before it was read (for the manifest), None for
    arrays.
    """

    def __init__(self, dataset: Dataset, indices: list[int], prep, raw_jpeg: bool = False, rgb: bool = False):
        self.dataset, self.indices, self.prep = dataset, indices, prep
        self.raw_jpeg = raw_jpeg and dataset.array_source is None
        self.rgb = rgb and not self.raw_jpeg and dataset.array_source is None and isinstance(prep, Preprocess)
        self.pool: SlotPool | None = None  # the views' slots
        self.raw_pool: SlotPool | None = None  # the decoded images' bytes (`rgb`), a batch's in one run of slots

    def share_slots(self, batch_size: int, workers: int, in_flight: int, forked: bool = False) -> None:
        """Let the loader workers collate into a `SlotPool` (call before the DataLoader starts them).

        Parameters
        ----------
        batch_size : int
            The DataLoader's batch size.
        workers : int
            Its number of workers (none: nothing to share).
        in_flight : int
            Batches per worker that may be on their way or held by the main process at once
            (the prefetch factor plus those the consumer holds); more only cost a fresh
            allocation each.
        forked : bool
            Whether the DataLoader forks its workers (`SlotPool`'s memory then has its pages
            made as the workers first write them).

        Notes
        -----
        The consumer must call `release(batch)` once it has read a batch's pixels; without it
        the workers run out of free slots and fall back to fresh shared memory, as without a pool.
        """
        if workers < 1 or not isinstance(self.prep, Preprocess):
            return
        slot = self.prep.views * 3 * self.prep.size ** 2
        per_worker = batch_size * in_flight
        if per_worker * slot > POOL_BYTES:  # ten crops of large batches: fewer batches in the pool
            per_worker = POOL_BYTES // slot // batch_size * batch_size
        if per_worker < batch_size:
            return
        try:
            self.pool = SlotPool(slot, per_worker, workers, forked)
        except (RuntimeError, OSError):  # no room in shared memory (/dev/shm): fresh memory per batch, as before
            self.pool = None

    def share_raw(self, batch_size: int, workers: int, in_flight: int, forked: bool = False) -> None:
        """With `rgb`: let the workers pack each batch's decoded images into a `SlotPool` of
        `RAW_SLOT` bytes per slot, room for `in_flight` batches of the largest images that travel
        whole (`RGB_AREA`) per worker. Fresh shared memory for each batch would cost the main
        process more than the workers save (0.29 against 0.16 CPU-ms per pets37 photo on the
        development CPU, benchmarks/bench_pipeline.py --decode rgb). Where the pool would take
        more than half of what /dev/shm has left (the other half: the batches it cannot hold,
        fresh; the pool of forked workers lies outside /dev/shm, in the same memory), or cannot
        be made, `rgb` is turned off: the workers resize, to the same pixels in
        less shared memory (the decoded images take up to `RGB_AREA` times the resized ones'
        bytes; with them a /dev/shm the workers' resize fits in ran out: "No space left on
        device"). The consumer must `release` each batch once its images are on their way to
        the device."""
        if workers < 1 or not self.rgb:
            return
        per_worker = batch_size * RGB_AREA * self.prep.resize ** 2 * 3 * in_flight
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # torchrun's ranks on this node share it
        if per_worker * workers > shm_free() // 2 // ranks:
            self.rgb = False
            return
        try:
            self.raw_pool = SlotPool(RAW_SLOT, -(-per_worker // RAW_SLOT), workers, forked)
        except (RuntimeError, OSError):  # no room in shared memory after all
            self.rgb = False

    def unshare(self) -> None:
        """Drop the `SlotPool`s, once the workers have ended: a traceback that a notebook keeps
        after Ctrl-C (`sys.last_traceback`) holds the loader, not their shared memory."""
        self.pool = self.raw_pool = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        d = self.dataset
        if d.array_source is not None:
            key = d.array_source.key(d.sources[i])
            try:
                return i, key, self.prep(d.load(i)), None, None
            except Exception as e:
                return i, key, None, why_unreadable(e), None
        try:
            data, stat = d.read_bytes(i)
        except OSError as e:  # no key without bytes: named as skipped, not recorded, read next run
            return i, None, None, f"cannot read: {e.strerror or e}", None
        notes: list[tuple[str, str]] = []  # what decoding it warned of, said by the main process (`collate`)
        item = self._decoded(i, content_key(data), data, stat, notes)
        return (*item, tuple(notes)) if notes else item

    def _decoded(self, i: int, key: str, data: bytes, stat, notes: list[tuple[str, str]]) -> tuple:
        """`__getitem__`'s item of image i read: its pixels, or JPEG bytes, or why it is unreadable."""
        try:
            size = _plain_jpeg(data) if self.raw_jpeg else None  # by its header: Parquet rows have no name
            if size is not None and isinstance(self.prep, Preprocess):
                self.prep.check_resized(*size)  # one too thin to resize is skipped here, not on the device
            if size is not None:
                return i, key, Jpeg.of(data, size), None, stat  # packed with the batch's others by `collate`
            img = named_decode(data, self.dataset.ids[i], notes)
            if self.rgb and img.width * img.height <= RGB_AREA * self.prep.resize ** 2:
                self.prep.check_resized(*img.size)
                return i, key, Rgb.of(img.tobytes(), img.size), None, stat  # RGB, row by row
            return i, key, self.prep(img), None, stat
        except Exception as e:  # unreadable, truncated or not an image: skip it, say why
            return i, key, None, why_unreadable(e, data), stat


_LIBRARY_WARNINGS: set[tuple] = set()  # library warnings given on to the usual filters
# where a warning about the image being decoded comes from: Pillow, and fne's decoding (fne.data)
_DECODERS = tuple(os.path.dirname(m.__file__) + os.sep for m in (PIL, fne.data))


def named_decode(data: bytes, name: str, notes: list[tuple[str, str]] | None = None) -> Image.Image:
    """`read_image` of a file's bytes; a warning Pillow gives while decoding it (a very large
    image, corrupt EXIF data) is given again, naming the image, where alone it names none (or,
    given `notes`, added to them as (name, message), for a line that names many: `collate`).

    Parameters
    ----------
    data : bytes
        The encoded image.
    name : str
        What the warnings call it (the image's id: `class/x.jpg`, `shard.tar:member`).
    notes : list of (str, str), optional
        Where its warnings go instead of `warnings.warn` (the caller says them).

    Returns
    -------
    PIL.Image.Image
        The RGB image; a library's own deprecation warnings go on unnamed, once per process.
    """
    with naming(name, notes):
        return read_image(io.BytesIO(data))


@contextlib.contextmanager
def naming(name: str, notes: list[tuple[str, str]] | None = None) -> Iterator[None]:
    """Inside: a warning Pillow or fne's decoding gives about one image (not a library's
    deprecation) is given again as ``name: message`` (or, given `notes`, added to them as (name,
    message)); any other goes on, a library's own once per process (`named_decode`)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        # the image's: given by Pillow or fne's decoding, and not a library's deprecation; any
        # other (another thread's, caught here too: catch_warnings is process-wide) goes on as it was
        if w.filename.startswith(_DECODERS) and not issubclass(w.category, (DeprecationWarning,
                                                                             PendingDeprecationWarning)):
            if notes is None:
                warnings.warn(f"{name}: {w.message}", w.category, stacklevel=4)  # past contextlib: the user's caller
            else:
                notes.append((name, str(w.message)))
            continue
        where = (w.category, str(w.message), w.filename, w.lineno)
        if where not in _LIBRARY_WARNINGS:  # once per process (catch_warnings resets the filters' memory)
            _LIBRARY_WARNINGS.add(where)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def why_unreadable(e: Exception, data: bytes | None = None) -> str:
    """One line saying why an image could not be read (`data`: its bytes, to tell an empty file)."""
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        if data is not None and not data:
            return "empty file (0 bytes)"
        return (unreadable_tiff(data) if data is not None else None) or "not an image file"
    return f"{type(e).__name__}: {e}"


def _plain_jpeg(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG (known by its first bytes and header, whatever its name) that a
    device decoder decodes as PIL does; None for anything else (PIL decodes it, or says why not).

    Only whole files: one that does not end in the end-of-image marker (after any zero padding)
    goes to PIL, which refuses a cut file, where nvjpeg's batched decoder may return a partial
    image without an error."""
    from PIL import Image

    if bytes(data[:2]) != b"\xff\xd8":  # JPEG's start-of-image marker: PNGs and others go to PIL
        return None
    if not bytes(data[-4096:]).rstrip(b"\x00").endswith(b"\xff\xd9"):  # zero padding: to a sector
        return None
    with Image.open(io.BytesIO(data)) as img:  # reads the header only
        plain = img.format == "JPEG" and img.mode in ("RGB", "L") and img.getexif().get(0x0112, 1) == 1
        return img.size if plain else None


class Jpeg(bytes):
    """A JPEG file's bytes with its (width, height), read from its header in the worker."""

    size: tuple[int, int]

    @classmethod
    def of(cls, data: bytes, size: tuple[int, int]) -> Jpeg:
        j = cls(data)
        j.size = size
        return j


class Rgb(Jpeg):
    """An image decoded in the worker: its 8-bit RGB pixels row by row (H x W x 3), with its
    (width, height); packed and shipped as JPEG bytes are, resized on the device."""


# An image travels decoded (`ImageItems`' rgb) while it has at most this many times the pixels
# of its resized image (resize x resize): a dataset's usual photos (pets37's 500 x 375 is 2.9
# times 256 x 256); larger ones are resized in the worker, a 12-megapixel photo's 36 MB would
# cost more to move than to resize there.
RGB_AREA = 4
RAW_SLOT = 1 << 20  # bytes of a `raw_pool` slot (a batch's images take a run of them)


class Batch(dict):
    """A `collate` batch: a dict whose tensors the DataLoader's pin-memory thread (CUDA) pins
    without visiting every index, key and stat of its per-image lists, as torch's `pin_memory`
    does for a plain dict (6 µs per image of the main process's CPU, the GIL held, on the
    development CPU): the tensors all lie at its top level."""

    def pin_memory(self, device=None) -> Batch:
        """The same batch, its tensors copied into pinned memory (what the loader calls)."""
        return Batch({k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in self.items()})


def collate(items):
    """-> dict (a `Batch`): `idx`/`keys`/`stats` of the good items in batch order; `pixels` stacks the decoded
    ones (in shared memory when run in a loader worker: one copy, none on the way to the main
    process); `raw`/`raw_ends` pack the JPEG bytes of the others end to end (`pack_raw`; read
    them with `raw_jpegs`), `raw_sizes` their (width, height), `raw_rgb` whether they are
    decoded pixels (`Rgb`) rather than JPEGs; `bad` lists (index, key or None,
    error); `notes` (image id, what decoding it warned of), from an item's sixth field, for the
    main process to say once for the run (`fne.progress.say_skipped`), not once per image. Where the dataset shares a `SlotPool`, `pixels` is None and `slots` says where they
    lie in it (`pixels_of`)."""
    out = Batch(idx=[], keys=[], stats=[], pix=[], pix_pos=[], jpeg=[], raw_pos=[], bad=[], notes=[])
    for i, key, x, err, stat, *notes in items:
        out["notes"] += notes[0] if notes else ()
        if stat is not None:
            out["stats"].append((i, key, stat))
        if err is not None:
            out["bad"].append((i, key, err))
            continue
        is_raw = isinstance(x, bytes)
        out["jpeg" if is_raw else "pix"].append(x)
        out["raw_pos" if is_raw else "pix_pos"].append(len(out["idx"]))
        out["idx"].append(i)
        out["keys"].append(key)
    out["pixels"] = _stack(out.pop("pix"), out) if out["pix_pos"] else None
    out["raw_sizes"] = [j.size for j in out["jpeg"]]
    out["raw_rgb"] = bool(out["jpeg"]) and isinstance(out["jpeg"][0], Rgb)  # decoded pixels, not JPEGs
    out["raw"], out["raw_ends"] = pack_raw(out.pop("jpeg"), out)
    return out


def pack_raw(jpegs: list[bytes], batch: dict | None = None) -> tuple[torch.Tensor | None, list[int]]:
    """JPEG files' bytes -> (one uint8 tensor holding them end to end, where each ends).

    One tensor per batch: a loader worker hands a batch to the main process through one shared
    memory block (one file descriptor), where a tensor per image cost the main process a socket
    connection each (~0.4 ms per image, more than everything else it does per image). In a worker
    whose dataset has a `raw_pool` with room, into a run of its slots: then the tensor is None
    and `batch["raw_slots"]` says where they lie (`raw_of`).
    """
    if not jpegs:
        return None, []
    ends = np.cumsum([len(b) for b in jpegs]).tolist()
    info = torch.utils.data.get_worker_info()
    pool = getattr(info.dataset, "raw_pool", None) if info is not None and batch is not None else None
    n = -(-ends[-1] // pool.slot_bytes) if pool is not None else 0  # slots the batch's bytes take
    first = pool.take(n) if pool is not None else None
    if first is not None:
        flat = pool.data[first * pool.slot_bytes:first * pool.slot_bytes + ends[-1]]
        batch["raw_slots"] = (pool.token, first, n)
    elif info is not None:
        flat = shared_bytes(ends[-1])
    else:
        flat = torch.empty(ends[-1], dtype=torch.uint8)
    buf = flat.numpy()
    for b, start, end in zip(jpegs, [0, *ends[:-1]], ends, strict=True):
        buf[start:end] = np.frombuffer(b, dtype=np.uint8)
    return (None if first is not None else flat), ends


def raw_jpegs(batch: dict) -> list[torch.Tensor]:
    """A `collate` batch's JPEG files as 1-D uint8 tensors (views of its packed bytes), in
    `raw_pos` order."""
    flat, ends = raw_of(batch), batch["raw_ends"]
    if flat is None:
        return []
    return [flat[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def _stack(views: list[torch.Tensor], batch: dict) -> torch.Tensor | None:
    """Tensors of one shape -> (B, *shape), keeping their memory layout (channels-last views
    stay so: no transposing copy); in shared memory when run in a loader worker: slots of the
    dataset's `SlotPool` if it has free ones (then None, and `batch["slots"]` says where)."""
    x0 = views[0]
    order = sorted(range(x0.dim()), key=lambda d: -x0.stride(d))  # outermost dimension first
    shape = (len(views), *(x0.shape[d] for d in order))
    back = (0, *(order.index(d) + 1 for d in range(x0.dim())))
    n = math.prod(shape)
    claim = SlotPool.claim(len(views), x0) if torch.utils.data.get_worker_info() is not None else None
    if claim is not None:
        pool, first = claim
        flat = pool.data[first * pool.slot_bytes:(first + len(views)) * pool.slot_bytes]
        batch["slots"] = (pool.token, first, shape, back)
    elif torch.utils.data.get_worker_info() is not None:
        flat = torch.empty(0, dtype=x0.dtype).set_(torch.UntypedStorage._new_shared(n * x0.element_size()))
    else:
        flat = torch.empty(n, dtype=x0.dtype)
    out = flat.view(shape)
    for j, x in enumerate(views):
        out[j].copy_(x.permute(order))
    return None if claim is not None else out.permute(*back)


def decode_jpegs(raw: list[torch.Tensor], dev: torch.device) -> list[torch.Tensor | None]:
    """One batched decode (nvjpeg on CUDA); if it fails, one by one, None where refused.

    On CUDA the current stream is synchronised before each call: nvjpeg's hardware decoder
    writes its outputs without waiting for the work queued on that stream, and the caching
    allocator may have handed it memory that queued kernels still read (pytorch/vision#9606,
    reproduced on an H100). Run on a stream of its own (`Ahead`), the wait is for that
    thread's own work only. Running out of device memory is raised, not taken for a bad file.
    """
    def one_call(data):
        if dev.type == "cuda":
            torch.cuda.current_stream(dev).synchronize()
        return decode_jpegs_rgb(data, dev)

    try:
        return one_call(raw)
    except torch.OutOfMemoryError:
        raise
    except Exception:  # one bad file fails the whole call: decode one by one
        imgs: list[torch.Tensor | None] = []
        for r in raw:
            try:
                imgs.append(one_call([r])[0])
            except torch.OutOfMemoryError:
                raise
            except Exception:
                imgs.append(None)
        return imgs


DECODE_PIXELS = 64 << 20  # pixels decoded at once (~192 MiB as uint8, 4x that while resizing)


def decode_raw(raw: list[torch.Tensor], dev: torch.device, prep: Preprocess,
               sizes: list[tuple[int, int]] | None = None) -> list[torch.Tensor | str]:
    """JPEG bytes -> (V, 3, S, S) uint8 on `dev` per image, or an error string.

    Decoded in one call, then resized and cropped together whatever their sizes
    (`resample.resize_views`: two batched matrix products with Pillow's arithmetic). Given the
    images' (width, height), a batch of large photos is decoded in parts of at most
    `DECODE_PIXELS` pixels (a batch of 256 twelve-megapixel photos would take 9 GiB decoded).
    What the device decoder refuses, PIL may still read; what both refuse is an error.
    """
    out: list[torch.Tensor | str] = []
    for part in parts(sizes, len(raw)):
        run = [raw[p] for p in part]
        out += resized(run, decode_jpegs(run, dev), dev, prep)
    return out


def parts(sizes: list[tuple[int, int]] | None, n: int) -> list[range]:
    """Consecutive runs of images holding at most `DECODE_PIXELS` pixels (at least one image)."""
    if sizes is None:
        return [range(n)]
    out, start, total = [], 0, 0
    for p, (w, h) in enumerate(sizes):
        if p > start and total + w * h > DECODE_PIXELS:
            out.append(range(start, p))
            start, total = p, 0
        total += w * h
    return [*out, range(start, n)] if n else []


def uploaded(batch: dict, run: range, dev: torch.device) -> list[torch.Tensor]:
    """A `collate` batch's decoded images (`raw_rgb`) of `run` -> (3, H, W) uint8 views on `dev`,
    moved in one copy. From the workers' `raw_pool` (pageable memory) the copy returns once its
    bytes are staged, so the slots may be given back after it; from a fresh block, pinned on
    CUDA by the loader, it does not wait for the stream's work."""
    flat, ends, sizes = raw_of(batch), batch["raw_ends"], batch["raw_sizes"]
    start = ends[run.start - 1] if run.start else 0
    on_dev = flat[start:ends[run.stop - 1]].to(dev, non_blocking=True)
    base, out = on_dev.storage_offset() - start, []
    for p in run:  # each image's H x W x 3 bytes as a (3, H, W) view: one call (a slice, view and permute took three)
        (w, h), at = sizes[p], ends[p - 1] if p else 0
        if ends[p] - at != 3 * w * h:  # what the view's shape checked: never another image's bytes
            raise ValueError(f"decoded image {p} of the batch: {ends[p] - at} bytes for {w} x {h} RGB pixels")
        out.append(on_dev.as_strided((3, h, w), (1, 3 * w, 3), base + at))
    return out


def resized(raw: list[torch.Tensor], imgs: list[torch.Tensor | None], dev: torch.device,
            prep: Preprocess, dtype: torch.dtype | None = None) -> list[torch.Tensor | str]:
    """JPEGs and what the device decoder made of them (None where it refused) -> each one's
    (V, 3, S, S) uint8 views on `dev` (the decoded ones resized and cropped together, the
    products in `dtype`: `resample.resize_views`), or an error string where PIL refuses it too."""
    out: list[torch.Tensor | str | None] = [None] * len(raw)
    for p, img in enumerate(imgs):
        if img is not None:
            continue
        try:  # what the device decoder refused, PIL may still read
            views = prep(read_image(io.BytesIO(raw[p].numpy().tobytes())))
        except Exception as e:
            out[p] = f"{type(e).__name__}: {e}"
            continue
        out[p] = views.to(dev)  # outside the try: a device error is not the file's
    good = [p for p, img in enumerate(imgs) if img is not None]
    for p, views in zip(good, resize_views([imgs[p] for p in good], prep, dtype), strict=True):
        out[p] = views
    return out


def gathered(batch: dict, decoded: list[torch.Tensor | str], dev: torch.device, bad: list):
    """-> (uint8 (B, V, 3, S, S) on `dev` or None, indices, keys) of a batch's images: the
    workers' pixels and `decoded` (its JPEGs' views, in `raw_pos` order, or error strings,
    appended to `bad` as (index, key, error)). On the CPU the pixels may lie in a `SlotPool`:
    read them before `release(batch)`."""
    idx, keys, pixels = batch["idx"], batch["keys"], pixels_of(batch)
    if pixels is not None:  # from pinned memory on CUDA; elsewhere copied before the slots go back
        pixels = pixels.to(dev, non_blocking=dev.type == "cuda")
    if not batch["raw_ends"]:
        return pixels, idx, keys
    slots: list[torch.Tensor | None] = [None] * len(idx)
    for pos, x in zip(batch["pix_pos"], pixels if pixels is not None else [], strict=True):
        slots[pos] = x
    for pos, x in zip(batch["raw_pos"], decoded, strict=True):
        if isinstance(x, str):
            bad.append((idx[pos], keys[pos], x))
        else:
            slots[pos] = x
    good = [p for p, x in enumerate(slots) if x is not None]
    if not good:
        return None, [], []
    return torch.stack([slots[p] for p in good]), [idx[p] for p in good], [keys[p] for p in good]


def decoding(batches, dev: torch.device, ahead: int = 0, split: bool = True, jpegs: bool = True) -> Ahead:
    """The reader's first stage: each batch's JPEGs decoded on `dev`, in runs of one decode
    call each, `ahead` runs in advance on a thread of its own (`fne-decode`; see `Ahead`).

    Parameters
    ----------
    batches : iterable of dict
        `collate` batches (a DataLoader).
    dev : torch.device
        Where to decode (nvjpeg on CUDA).
    ahead : int
        Runs decoded in advance (0: in the consumer's thread, as it asks).
    split : bool
        Decode a batch of large photos in runs of at most `DECODE_PIXELS` pixels (`parts`),
        from the sizes the workers read; False: the whole batch in one call.
    jpegs : bool
        Whether JPEGs come to decode (then the decoder is loaded on the thread while the first
        batches are read); False: the workers decoded them (`Rgb`).

    Returns
    -------
    Ahead
        Yields (batch, its JPEGs (`raw_jpegs`), run (a range of them), the run's decoded images
        (None where the device decoder refused one), whether the run is the batch's last), every
        batch at least once, those without JPEGs with an empty run.
    """
    def runs():
        if ahead > 0 and jpegs:  # on the thread: loading the decoder overlaps the first reads
            device_decoder()

        it = iter(batches)
        while True:
            with held():  # the loader's own queues and events: no Ctrl-C inside them (`fne.handoff`)
                batch = next(it, None)
            if batch is None:
                return
            raw = raw_jpegs(batch)
            todo = parts(batch.get("raw_sizes") if split else None, len(raw)) or [range(0)]
            for k, run in enumerate(todo):
                yield batch, raw, run, k == len(todo) - 1

    def decode(item):
        batch, raw, run, last = item
        if not len(run):
            return batch, raw, run, [], last
        if batch.get("raw_rgb"):  # decoded by the workers: moved to the device only
            return batch, raw, run, uploaded(batch, run, dev), last
        return batch, raw, run, decode_jpegs([raw[p] for p in run], dev), last

    return Ahead(runs(), decode, ahead, dev, name="fne-decode")


def assembled(batches, dev: torch.device, prep: Preprocess, ahead: int = 0, jpegs: bool = True) -> Ahead:
    """The reader's stages on the device over a loader's batches -> (batch, (x, indices,
    keys), bad) (`gathered`).

    Two stages, each `ahead` in advance on a thread of its own where `ahead` > 0: the JPEGs are
    decoded (`decoding`, thread `fne-decode`), then resized and cropped (`resized`) and gathered
    with the workers' pixels (thread `fne-ahead`). On CUDA nvjpeg's call blocks its thread until
    its run is decoded: on a thread of its own, the next run decodes while the one before is
    resized, where in one thread the two add up. `jpegs`: as `decoding`'s.
    """
    done: list[torch.Tensor | str] = []

    def gather(item):
        batch, raw, run, imgs, last = item
        if len(run):  # the workers' decoded pixels in float64: PIL's resize exactly, as the workers' own
            done.extend(resized([raw[p] for p in run], imgs, dev, prep,
                                dtype=torch.float64 if batch.get("raw_rgb") else None))
        if not last:
            return None  # the batch's next run comes
        bad = list(batch["bad"])
        out = batch, gathered(batch, list(done), dev, bad), bad
        done.clear()
        return out

    return Ahead(decoding(batches, dev, ahead, jpegs=jpegs), gather, ahead, dev)
