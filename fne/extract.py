"""`fne extract`: reader -> frozen network -> writer, each stage small and timed on its own.

The reader decodes and crops in DataLoader workers (uint8 tensors, cheap to move); the model
normalises on the device and returns the spatial mean of every tap; the writer commits rows
in parts on a background thread, so an interrupted run keeps everything committed before it.
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fne import backbones, verb_module
from fne.backbones import Normalize, Preprocess
from fne.cache import Store, StoreKey
from fne.data import Dataset, load_dataset
from fne.errors import FneError
from fne.names import DECODERS, PRECISIONS, STORAGE_DTYPES
from fne.pooling import POOLS

# Images that went through a forward pass in this process: tests count reuse with it.
FORWARD_IMAGES = 0


class TapModel(nn.Module):
    """Runs the backbone and returns the spatially averaged output of every tap.

    Each hook reduces its tensor at once: torchvision's ReLUs are in-place, so a kept
    reference to a conv output would later be overwritten, and full maps would cost memory.
    """

    def __init__(self, model: nn.Module, backbone: backbones.Backbone):
        super().__init__()
        self.model = model
        self.norm = Normalize(backbone.mean, backbone.std)
        self.names = [t.name for t in backbone.taps]
        self._out: dict[str, torch.Tensor] = {}
        for t in backbone.taps:
            module = model.get_submodule(t.module)
            if t.on_input:
                module.register_forward_pre_hook(self._pre_hook(t))
            else:
                module.register_forward_hook(self._hook(t))

    # Pooling (fne.pooling) accumulates in float32 without first materialising a float32 copy of
    # a bf16/fp16 map (for VGG-16's conv1 that copy alone is B x 64 x 224 x 224 x 4 bytes).
    def _hook(self, tap: backbones.Tap):
        pool, k = POOLS[tap.pool], tap.prefix_tokens

        def hook(module, inputs, output):
            self._out[tap.name] = pool(output[0] if isinstance(output, (tuple, list)) else output, k)

        return hook

    def _pre_hook(self, tap: backbones.Tap):
        pool, k = POOLS[tap.pool], tap.prefix_tokens

        def hook(module, inputs):
            self._out[tap.name] = pool(inputs[0], k)

        return hook

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: uint8 (B, 3, H, W) -> one float32 (B, C) tensor per tap, in tap order."""
        self._out = {}
        self.model(self.norm(x).contiguous(memory_format=torch.channels_last))
        out, self._out = self._out, {}
        return [out[n] for n in self.names]


_ALLOCATOR_TUNED = False


def tune_allocator() -> bool:
    """Keep large freed buffers in glibc's heap instead of unmapping them (Linux, glibc only).

    By default glibc serves every allocation over 32 MiB with a fresh mmap and gives it back on
    free, so each activation map of every batch is page-faulted in anew: measured on VGG-16 bf16
    that costs ~15% of the forward pass and doubles the cost of pooling the taps. With mmap off
    and trimming off, the same buffers are reused batch after batch; peak memory is unchanged
    (freed memory is kept for reuse, not returned). No-op elsewhere, with jemalloc/tcmalloc
    preloaded, or with FNE_MALLOC_TUNING=0.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get("FNE_MALLOC_TUNING", "1") == "0":
        return _ALLOCATOR_TUNED
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        _ALLOCATOR_TUNED = bool(libc.mallopt(m_mmap_max, 0)) and bool(
            libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    return _ALLOCATOR_TUNED


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        local = os.environ.get("LOCAL_RANK")
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local or 0}")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise FneError(f"bad --device {device!r}; use auto, cpu or cuda[:i]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FneError(f"--device {device}: CUDA is not available on this machine")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 where the hardware runs it natively (AMX CPUs, bf16 GPUs), else fp32/fp16."""
    if precision not in PRECISIONS:
        raise FneError(f"bad --precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16_native() else "fp32"


def cpu_bf16_native() -> bool:
    """oneDNN runs bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class StoreSpec:
    """Everything that decides which store holds a dataset's rows."""

    arch: str = "vgg16"
    weights: str = "imagenet"
    crop: str = "center"
    precision: str = "auto"
    dtype: str = "float16"
    cache: str | None = None
    device: str = "auto"
    weights_seed: int = 0
    decode: str = "pil"  # "device": JPEGs decoded where the network runs (nvjpeg on CUDA)

    def backbone(self) -> backbones.Backbone:
        return backbones.get(self.arch, self.weights)

    def preprocess(self) -> Preprocess:
        return self.backbone().preprocess(self.crop)

    def open(self) -> Store:
        if self.dtype not in STORAGE_DTYPES:
            raise FneError(f"bad --storage-dtype {self.dtype!r}; choose from {', '.join(STORAGE_DTYPES)}")
        b, prep = self.backbone(), self.preprocess()
        precision = resolve_precision(self.precision, resolve_device(self.device))
        if self.decode not in DECODERS:
            raise FneError(f"bad decode {self.decode!r}; choose from {', '.join(DECODERS)}")
        # Device-decoded pixels differ from PIL's by rounding: their rows get a store of their own.
        prep_key = prep.key if self.decode == "pil" else f"{prep.key}-devjpeg"
        key = StoreKey(b.name, backbones.fingerprint(self.arch, self.weights, self.weights_seed), prep_key,
                       precision, self.dtype)
        return Store.open(self.cache, key, [(t.name, t.channels) for t in b.taps], prep.views)


@dataclass
class ExtractResult:
    store: str
    n_images: int
    n_unique: int
    n_cached: int  # rows already in the store before this run
    n_computed: int  # forward passes this run
    n_skipped: int
    skipped: dict[str, str] = field(default_factory=dict)  # image id -> reason
    seconds: float = 0.0
    images_per_s: float = 0.0
    steady_images_per_s: float = 0.0  # after the first batch (set-up, compilation)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    shard: str | None = None
    shard_marker: str | None = None  # written once every image of the shard is committed
    compiled: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ reader
_JPEG = (".jpg", ".jpeg")


class _Images(torch.utils.data.Dataset):
    """Item j -> (dataset index, uint8 pixels (V, 3, S, S) or raw JPEG bytes (1-D), error).

    With `raw_jpeg`, plain JPEG files (RGB or grey, no EXIF rotation) travel as their bytes and
    are decoded on the device (nvjpeg on CUDA); everything else is decoded here with PIL.
    """

    def __init__(self, dataset: Dataset, indices: list[int], prep: Preprocess, raw_jpeg: bool = False):
        self.dataset, self.indices, self.prep = dataset, indices, prep
        self.raw_jpeg = raw_jpeg and dataset.array_source is None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        try:
            if self.raw_jpeg and str(self.dataset.sources[i]).lower().endswith(_JPEG):
                raw = _plain_jpeg_bytes(self.dataset.sources[i])
                if raw is not None:
                    return i, raw, None
            return i, self.prep(self.dataset.load(i)), None
        except Exception as e:  # unreadable, truncated or not an image: skip it, say why
            return i, None, f"{type(e).__name__}: {e}"


def _plain_jpeg_bytes(path) -> torch.Tensor | None:
    """The file's bytes when a device decoder gives what PIL gives, else None (PIL decodes)."""
    from PIL import Image

    with Image.open(path) as img:  # reads the header only
        if img.format != "JPEG" or img.mode not in ("RGB", "L") or img.getexif().get(0x0112, 1) != 1:
            return None
    with open(path, "rb") as f:
        data = f.read()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _collate(items):
    """-> dict: `idx` in batch order; `pixels` stacks the decoded items, `raw` holds JPEG bytes."""
    idx, pix, pix_pos, raw, raw_pos, bad = [], [], [], [], [], []
    for i, x, err in items:
        if err is not None:
            bad.append((i, err))
            continue
        (raw if x.dim() == 1 else pix).append(x)
        (raw_pos if x.dim() == 1 else pix_pos).append(len(idx))
        idx.append(i)
    return {"idx": idx, "pixels": torch.stack(pix) if pix else None, "pix_pos": pix_pos,
            "raw": raw, "raw_pos": raw_pos, "bad": bad}


def tensor_views(img: torch.Tensor, prep: Preprocess) -> torch.Tensor:
    """`Preprocess` on a decoded (3, H, W) uint8 tensor, on its device: (V, 3, S, S) uint8.

    Antialiased bilinear like PIL's resize; pixels differ from PIL's by a rounding step here and
    there, which is why device-decoded rows live in their own store (`decode="device"`).
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    s, how = prep.size, InterpolationMode(prep.interpolation)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    x = img.float()
    if prep.crop == "squash":
        x = F.resize(x, [s, s], interpolation=how, antialias=True)
        boxes = [(0, 0)]
    else:
        h, w = x.shape[-2:]
        scale = prep.resize / min(w, h)
        x = F.resize(x, [max(s, round(h * scale)), max(s, round(w * scale))], interpolation=how,
                     antialias=True)
        h, w = x.shape[-2:]
        boxes = [((w - s) // 2, (h - s) // 2)]
        if prep.crop == "ten":
            boxes = [(0, 0), (w - s, 0), (0, h - s), (w - s, h - s)] + boxes
    crops = [x[:, y:y + s, x0:x0 + s] for x0, y in boxes]
    if prep.crop == "ten":
        crops += [c.flip(-1) for c in crops]
    return torch.stack(crops).round_().clamp_(0, 255).to(torch.uint8)


def _decode_raw(raw: list[torch.Tensor], dev: torch.device, prep: Preprocess):
    """JPEG bytes -> list of (V, 3, S, S) uint8 on `dev`, or an error string per image."""
    import io as _io

    from torchvision.io import ImageReadMode, decode_jpeg

    from fne.data import read_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its image codecs deprecated
        try:
            imgs = decode_jpeg(raw, mode=ImageReadMode.RGB, device=dev)  # batched nvjpeg on CUDA
        except Exception:  # one bad file fails the whole call: decode one by one
            imgs = []
            for r in raw:
                try:
                    imgs.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=dev))
                except Exception:
                    imgs.append(None)
    out = []
    for r, img in zip(raw, imgs, strict=True):
        try:
            if img is None:  # what the device decoder refused, PIL may still read
                out.append(prep(read_image(_io.BytesIO(r.numpy().tobytes()))).to(dev))
            else:
                out.append(tensor_views(img, prep))
        except Exception as e:
            out.append(f"{type(e).__name__}: {e}")
    return out


# ------------------------------------------------------------------ writer
class _Writer(threading.Thread):
    """Commits rows in parts of `chunk` images off the main thread.

    Batches arrive as one (B, V, D) array of all taps side by side (one device-to-host copy per
    batch); on CUDA the copy is asynchronous and the writer waits for its event before reading.
    """

    def __init__(self, store: Store, chunk: int, taps: list[tuple[str, int]]):
        super().__init__(daemon=True)
        self.store, self.chunk = store, chunk
        self.names = [n for n, _ in taps]
        self.cuts = np.cumsum([c for _, c in taps])[:-1]
        self.q: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.committed = 0
        self._keys: list[str] = []
        self._rows: list[np.ndarray] = []
        self._bad: dict[str, str] = {}

    def put(self, keys, rows, bad, event=None):
        if self.error is not None:
            raise self.error
        self.q.put((keys, rows, bad, event))

    def _flush(self):
        if not self._keys and not self._bad:
            return
        t = time.perf_counter()
        arrays = {}
        if self._keys:
            rows = np.concatenate(self._rows)
            arrays = dict(zip(self.names, np.split(rows, self.cuts, axis=2), strict=True))
        self.store.commit(self._keys, arrays, self._bad)
        self.committed += len(self._keys)
        self._keys, self._rows, self._bad = [], [], {}
        self.seconds += time.perf_counter() - t

    def run(self):
        try:
            while True:
                item = self.q.get()
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
                if len(self._keys) >= self.chunk:
                    self._flush()
        except BaseException as e:  # surfaced to the main thread by put()/close()
            self.error = e

    def close(self):
        self.q.put(None)
        self.join()
        if self.error is not None:
            raise self.error


# ------------------------------------------------------------------ shards
def shard_of(key: str, n: int) -> int:
    """Deterministic shard of a content key: independent of file order or DATA form."""
    return int(key[:8], 16) % n


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return None
    if isinstance(shard, tuple):
        i, n = shard
    else:
        try:
            i, n = (int(v) for v in str(shard).split("/"))
        except ValueError:
            raise FneError(f"bad --shard {shard!r}; expected I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise FneError(f"bad --shard {shard!r}: need 0 <= I < N")
    return i, n


def dataset_fingerprint(keys: list[str]) -> str:
    """Names a set of images (not their order, folder or DATA form): hash of sorted content keys."""
    h = hashlib.blake2b(digest_size=8)
    for k in sorted(set(keys)):
        h.update(bytes.fromhex(k))
    return h.hexdigest()


def _shard_rel(fingerprint: str, shard: tuple[int, int]) -> str:
    """The marker's path inside the store."""
    return f"shards/{fingerprint}-{shard[0]}of{shard[1]}.json"


def shard_marker(store: Store, fingerprint: str, shard: tuple[int, int]) -> Path | str:
    """Where the marker lies (a Path, or a URL string for URL stores); read and write it through
    the store (`Store.write_json`: atomic rename locally, one object write on a URL store)."""
    return store.path / _shard_rel(fingerprint, shard)


def shard_status(data: str | Path | Dataset, n: int, **spec: object) -> dict[int, dict | None]:
    """For each of N shards of DATA: its finished-marker, or None if it must be (re)run.

    `spec` takes StoreSpec's fields (arch, weights, crop, precision, dtype, cache, ...). A job
    scheduler resubmits exactly the shards that map to None.
    """
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    store = StoreSpec(**spec).open()
    fp = dataset_fingerprint(dataset.keys())
    out: dict[int, dict | None] = {}
    for i in range(n):
        rel = _shard_rel(fp, (i, n))
        out[i] = store.read_json(rel) if store.exists(rel) else None
    return out


# ------------------------------------------------------------------ model
# torch.compile pays off once the time it saves per image repays its compile time. Measured
# (benchmarks/RESULTS.md) on 2 CPU cores: a cold compile of VGG-16 takes 60-100 s (a few
# seconds once inductor's on-disk cache is warm) and saves 3 ms (AVX512-BF16) to 10 ms (AMX)
# per image, so `compile="auto"` compiles from 20,000 images on a CPU. On CUDA the convolutions
# are cuDNN's either way and a GPU extracts 20,000 images in seconds: auto compiles only for
# very large runs there (an estimate; no GPU was measured).
COMPILE_AUTO_MIN_IMAGES = {"cpu": 20_000, "cuda": 1_000_000}


def resolve_compile(compile: bool | str, n_images: int, device: torch.device) -> bool:
    if compile in (True, "on", "true", "yes"):
        return True
    if compile in (False, None, "off", "false", "no"):
        return False
    if compile == "auto":
        return n_images >= COMPILE_AUTO_MIN_IMAGES.get(device.type, 1_000_000)
    raise FneError(f"bad compile {compile!r}; use auto, on or off")


def build_tap_model(spec: StoreSpec, device: torch.device, compile: bool = False) -> TapModel:
    b = spec.backbone()
    model = backbones.load_backbone(spec.arch, spec.weights, spec.weights_seed)
    for p in model.parameters():
        p.requires_grad_(False)
    tap = TapModel(model, b).eval().to(device)
    tap.model.to(memory_format=torch.channels_last)
    if compile:
        # dynamic=False: batches are padded to one shape, so one graph serves the whole run.
        tap = torch.compile(tap, dynamic=False)
    return tap


def default_workers(device: torch.device) -> int:
    """Decoding processes per extracting process.

    On CPU the network already uses every core, so decoding takes cycles from it whatever the
    split; one worker overlaps decoding with compute, more only add contention (measured in
    benchmarks/RESULTS.md). On CUDA the CPU only decodes: one worker per core this rank owns.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if device.type == "cuda":
        return min(16, max(1, per_rank - 1))
    return 1


# ------------------------------------------------------------------ extract
def extract(
    data: str | Path | Dataset,
    arch: str = "vgg16",
    weights: str = "imagenet",
    *,
    cache: str | None = None,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
    crop: str = "center",
    workers: int | None = None,
    storage_dtype: str = "float16",
    shard: str | tuple[int, int] | None = None,
    compile: bool | str = "auto",
    chunk: int = 256,
    weights_seed: int = 0,
    progress: bool = True,
    threads: int | None = None,
    decode: str = "pil",
) -> ExtractResult:
    """Compute and store the rows of DATA's images that the store does not hold yet.

    Memory is flat in the number of images: the reader prefetches a few batches, the writer
    commits every `chunk` rows, and nothing else holds pixels or rows. With a shard (I/N, or
    RANK/WORLD_SIZE under torchrun) only that shard's images are computed, and once they are all
    committed a marker `shards/<dataset>-<I>of<N>.json` records it; a rerun reuses every
    committed row, so a killed shard is simply run again.

    compile: True, False or "auto" (compile when at least COMPILE_AUTO_MIN_IMAGES images are to
    be computed; a compile failure falls back to eager). threads: torch CPU threads (default:
    torch's). decode: "pil" (default; decoded and cropped in the workers) or "device" (plain
    JPEGs decoded where the network runs: nvjpeg on CUDA; rows go to a store of their own).
    """
    global FORWARD_IMAGES
    t0 = time.perf_counter()
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    if len(dataset) == 0:
        raise FneError(f"DATA {getattr(dataset, 'name', data)}: has no images")
    if batch_size < 1:
        raise FneError(f"--batch-size must be >= 1, got {batch_size}")
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    if resolve_device(device).type == "cpu":
        tune_allocator()
    spec = StoreSpec(arch, weights, crop, precision, storage_dtype, cache, device, weights_seed, decode)
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)  # events, streams and nvjpeg on this rank's GPU
    prec = resolve_precision(precision, dev)
    store = spec.open()
    keys = dataset.keys()
    shard_t = parse_shard(shard)
    missing = set(store.missing(keys))
    todo, taken = [], set()
    in_shard = 0
    for i, k in enumerate(keys):
        if (shard_t is None or shard_of(k, shard_t[1]) == shard_t[0]) and k not in taken:
            taken.add(k)
            in_shard += 1
            if k in missing:
                todo.append(i)
    del taken
    n_unique = len(set(keys))
    result = ExtractResult(
        store=str(store.path), n_images=len(dataset), n_unique=n_unique,
        n_cached=n_unique - len(missing), n_computed=0, n_skipped=0,
        shard=None if shard_t is None else f"{shard_t[0]}/{shard_t[1]}",
    )
    marker = None
    if shard_t is not None:
        fp = dataset_fingerprint(keys)
        marker = shard_marker(store, fp, shard_t)
        # A marker never hides work: the index has the last word.
        if store.exists(_shard_rel(fp, shard_t)) and todo:
            warnings.warn(f"shard marker {marker.name} exists but {len(todo)} images of the shard "
                          f"have no row; computing them", stacklevel=2)
    if not todo:
        if marker is not None and not store.exists(_shard_rel(fp, shard_t)):
            _finish_shard(store, fp, shard_t, dataset, in_shard, result)
        result.shard_marker = None if marker is None else str(marker)
        result.seconds = time.perf_counter() - t0
        return result

    use_compile = resolve_compile(compile, len(todo), dev)
    workers = default_workers(dev) if workers is None else workers
    raw_jpeg = decode == "device"
    prep = spec.preprocess()
    loader = torch.utils.data.DataLoader(
        _Images(dataset, todo, prep, raw_jpeg), batch_size=batch_size, num_workers=workers,
        collate_fn=_collate, pin_memory=dev.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if workers else None,
    )
    # Start the workers first: they fork before the model exists (small children) and decode the
    # first batches while the weights load.
    batches = iter(loader)
    t_load = time.perf_counter()
    model = build_tap_model(spec, dev, use_compile)
    load_seconds = time.perf_counter() - t_load
    taps = [(t.name, t.channels) for t in spec.backbone().taps]
    writer = _Writer(store, chunk, taps)
    writer.start()
    out_dtype = torch.float16 if storage_dtype == "float16" else torch.float32
    views = prep.views
    read_s = fwd_s = first_s = 0.0
    first_batch = (0, 0.0)  # images, seconds from the start of the run to its end
    cpu0 = _cpu_seconds()
    t_run = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc=f"extract {arch}", disable=not progress, file=sys.stderr,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)  # logs get a line every 30 s, not a flood
    try:
        t = time.perf_counter()
        for batch in batches:
            read_s += time.perf_counter() - t
            t = time.perf_counter()
            idx, bad = batch["idx"], list(batch["bad"])
            x = _assemble(batch, dev, prep, bad)
            if len(bad) > len(batch["bad"]):  # images the device decoder and PIL both refused
                failed = {i for i, _ in bad}
                idx = [i for i in idx if i not in failed]
            rows, event = None, None
            if x is not None:
                b = x.shape[0]
                x = x.reshape(b * views, *x.shape[2:])
                n = x.shape[0]
                if use_compile and n < batch_size * views:  # one shape: no recompilation
                    x = torch.cat([x, x.new_zeros((batch_size * views - n, *x.shape[1:]))])
                t_fwd = time.perf_counter()
                model, pooled = _forward(model, x, dev, prec)
                if not first_s:  # includes compilation and oneDNN's first-call setup
                    first_s = time.perf_counter() - t_fwd
                    first_batch = (b, time.perf_counter() - t_run)
                flat = torch.cat(pooled, dim=1)[:n].to(out_dtype).reshape(b, views, -1)
                if dev.type == "cuda":  # asynchronous copy into pinned memory; the writer waits
                    rows = flat.to("cpu", non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                else:
                    rows = flat
                FORWARD_IMAGES += b
            fwd_s += time.perf_counter() - t
            bad_keys = {keys[i]: err for i, err in bad}
            for i, err in bad:
                result.skipped[dataset.ids[i]] = err
                warnings.warn(f"skipped unreadable image {dataset.ids[i]}: {err}", stacklevel=2)
            writer.put([keys[i] for i in idx], rows, bad_keys, event)
            result.n_computed += len(idx)
            bar.update(len(idx) + len(bad))
            bar.set_postfix(img_s=f"{result.n_computed / max(time.perf_counter() - t_run, 1e-9):.1f}")
            t = time.perf_counter()
    finally:
        bar.close()
        writer.close()  # commits what is buffered, also on Ctrl-C
    del batches  # joins the workers, so that their CPU time is counted below
    cpu_run = _cpu_seconds() - cpu0
    result.compiled = bool(getattr(model, "_orig_mod", None) is not None)
    result.n_skipped = len(result.skipped)
    result.seconds = time.perf_counter() - t0
    run_s = time.perf_counter() - t_run
    result.images_per_s = result.n_computed / run_s if run_s > 0 else 0.0
    result.stage_seconds = {"model_load": load_seconds, "read_wait": read_s, "forward": fwd_s,
                            "first_forward": first_s, "write": writer.seconds, "run": run_s,
                            "cpu_run": cpu_run}  # CPU seconds of this process and its workers
    # Steady state: the run after its first batch (pipeline fill, compilation, oneDNN set-up).
    if result.n_computed > first_batch[0] and run_s > first_batch[1]:
        result.steady_images_per_s = (result.n_computed - first_batch[0]) / (run_s - first_batch[1])
    if marker is not None:
        _finish_shard(store, fp, shard_t, dataset, in_shard, result)
        result.shard_marker = str(marker)
    store.record({"kind": "extract", "dataset": dataset.name, "device": str(dev), "precision": prec,
                  "batch_size": batch_size, "workers": workers, "compile": result.compiled,
                  "threads": torch.get_num_threads(), "decode": decode,
                  **{k: v for k, v in result.to_dict().items() if k != "store"}})
    return result


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (the workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _assemble(batch: dict, dev: torch.device, prep: Preprocess, bad: list) -> torch.Tensor | None:
    """The batch's images as (B, V, 3, S, S) uint8 on `dev`, in `idx` order (failures to `bad`)."""
    pixels = batch["pixels"]
    if pixels is not None:
        pixels = pixels.to(dev, non_blocking=True)
    if not batch["raw"]:
        return pixels
    decoded = _decode_raw(batch["raw"], dev, prep)
    slots: list[torch.Tensor | None] = [None] * len(batch["idx"])
    for pos, x in zip(batch["pix_pos"], pixels if pixels is not None else [], strict=True):
        slots[pos] = x
    for pos, x in zip(batch["raw_pos"], decoded, strict=True):
        if isinstance(x, str):
            bad.append((batch["idx"][pos], x))
        else:
            slots[pos] = x
    good = [x for x in slots if x is not None]
    return torch.stack(good) if good else None


def _forward(model, x: torch.Tensor, dev: torch.device, prec: str):
    """-> (model to use from now on, pooled taps). A compiled model that fails to build (no C++
    compiler, unsupported platform) falls back to eager once, with a warning."""
    try:
        with torch.inference_mode(), autocast(dev, prec):
            return model, model(x)
    except Exception as e:
        eager = getattr(model, "_orig_mod", None)
        if eager is None:
            raise
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); running eager",
                      stacklevel=3)
        with torch.inference_mode(), autocast(dev, prec):
            return eager, eager(x)


def _finish_shard(store: Store, fp: str, shard_t: tuple[int, int], dataset: Dataset, in_shard: int,
                  result: ExtractResult) -> None:
    store.write_json(_shard_rel(fp, shard_t), {
        "dataset": dataset.name, "dataset_fingerprint": fp, "shard": list(shard_t),
        "n_images_in_shard": in_shard, "n_computed": result.n_computed, "n_skipped": result.n_skipped,
        "host": socket.gethostname(), "pid": os.getpid(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


verb_module(__name__)
