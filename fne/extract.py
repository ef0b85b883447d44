"""`fne extract`: reader -> frozen network -> writer, each stage small and timed on its own.

The reader decodes and crops in DataLoader workers (uint8 tensors, cheap to move); the model
normalises on the device and returns the spatial mean of every tap; the writer commits rows
in parts on a background thread, so an interrupted run keeps everything committed before it.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fne import backbones
from fne.backbones import Normalize, Preprocess
from fne.cache import STORAGE_DTYPES, Store, StoreKey
from fne.data import Dataset, load_dataset
from fne.errors import FneError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
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
                module.register_forward_pre_hook(self._pre_hook(t.name))
            else:
                module.register_forward_hook(self._hook(t.name))

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3)) if x.dim() == 4 else x.float()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self._out[name] = self._pool(output)

        return hook

    def _pre_hook(self, name: str):
        def hook(module, inputs):
            self._out[name] = self._pool(inputs[0])

        return hook

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: uint8 (B, 3, H, W) -> one float32 (B, C) tensor per tap, in tap order."""
        self._out = {}
        self.model(self.norm(x).contiguous(memory_format=torch.channels_last))
        out, self._out = self._out, {}
        return [out[n] for n in self.names]


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

    def backbone(self) -> backbones.Backbone:
        return backbones.get(self.arch)

    def preprocess(self) -> Preprocess:
        return Preprocess(self.backbone().input_size, self.crop)

    def open(self) -> Store:
        if self.dtype not in STORAGE_DTYPES:
            raise FneError(f"bad --storage-dtype {self.dtype!r}; choose from {', '.join(STORAGE_DTYPES)}")
        b, prep = self.backbone(), self.preprocess()
        precision = resolve_precision(self.precision, resolve_device(self.device))
        key = StoreKey(b.name, backbones.fingerprint(self.arch, self.weights, self.weights_seed), prep.key,
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
    stage_seconds: dict[str, float] = field(default_factory=dict)
    shard: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class _Images(torch.utils.data.Dataset):
    def __init__(self, dataset: Dataset, indices: list[int], prep: Preprocess):
        self.dataset, self.indices, self.prep = dataset, indices, prep

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        try:
            return i, self.prep(self.dataset.load(i)), None
        except Exception as e:  # unreadable, truncated or not an image: skip it, say why
            return i, None, f"{type(e).__name__}: {e}"


def _collate(items):
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, err) for i, _, err in items if err is not None]
    xs = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], xs, bad


class _Writer(threading.Thread):
    """Commits rows in parts of `chunk` images off the main thread."""

    def __init__(self, store: Store, chunk: int):
        super().__init__(daemon=True)
        self.store, self.chunk = store, chunk
        self.q: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.committed = 0
        self._keys: list[str] = []
        self._arrays: dict[str, list[np.ndarray]] = {}
        self._bad: dict[str, str] = {}

    def put(self, keys, arrays, bad):
        if self.error is not None:
            raise self.error
        self.q.put((keys, arrays, bad))

    def _flush(self):
        if not self._keys and not self._bad:
            return
        t = time.perf_counter()
        arrays = {k: np.concatenate(v) for k, v in self._arrays.items()}
        self.store.commit(self._keys, arrays, self._bad)
        self.committed += len(self._keys)
        self._keys, self._arrays, self._bad = [], {}, {}
        self.seconds += time.perf_counter() - t

    def run(self):
        try:
            while True:
                item = self.q.get()
                if item is None:
                    self._flush()
                    return
                keys, arrays, bad = item
                self._keys += keys
                for k, v in arrays.items():
                    self._arrays.setdefault(k, []).append(v)
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


def build_tap_model(spec: StoreSpec, device: torch.device, compile: bool = False) -> TapModel:
    b = spec.backbone()
    model = backbones.load_backbone(spec.arch, spec.weights, spec.weights_seed)
    for p in model.parameters():
        p.requires_grad_(False)
    tap = TapModel(model, b).eval().to(device)
    tap.model.to(memory_format=torch.channels_last)
    if compile:
        tap = torch.compile(tap)
    return tap


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
    compile: bool = False,
    chunk: int = 256,
    weights_seed: int = 0,
    progress: bool = True,
) -> ExtractResult:
    """Compute and store the rows of DATA's images that the store does not hold yet."""
    global FORWARD_IMAGES
    t0 = time.perf_counter()
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    if len(dataset) == 0:
        raise FneError(f"DATA {getattr(dataset, 'name', data)}: has no images")
    if batch_size < 1:
        raise FneError(f"--batch-size must be >= 1, got {batch_size}")
    spec = StoreSpec(arch, weights, crop, precision, storage_dtype, cache, device, weights_seed)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    store = spec.open()
    keys = dataset.keys()
    shard_t = parse_shard(shard)
    missing = set(store.missing(keys))
    todo, taken = [], set()
    for i, k in enumerate(keys):
        if k in missing and k not in taken and (shard_t is None or shard_of(k, shard_t[1]) == shard_t[0]):
            taken.add(k)
            todo.append(i)
    n_unique = len(set(keys))
    result = ExtractResult(
        store=str(store.path), n_images=len(dataset), n_unique=n_unique,
        n_cached=n_unique - len(missing), n_computed=0, n_skipped=0,
        shard=None if shard_t is None else f"{shard_t[0]}/{shard_t[1]}",
    )
    if not todo:
        result.seconds = time.perf_counter() - t0
        return result

    workers = min(8, max(1, (os.cpu_count() or 2) // 2)) if workers is None else workers
    loader = torch.utils.data.DataLoader(
        _Images(dataset, todo, spec.preprocess()), batch_size=batch_size, num_workers=workers,
        collate_fn=_collate, pin_memory=dev.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if workers else None,
    )
    t_load = time.perf_counter()
    model = build_tap_model(spec, dev, compile)
    load_seconds = time.perf_counter() - t_load
    writer = _Writer(store, chunk)
    writer.start()
    names = [t.name for t in spec.backbone().taps]
    out_dtype = torch.float16 if storage_dtype == "float16" else torch.float32
    read_s = fwd_s = 0.0
    t_run = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc=f"extract {arch}", disable=not progress, file=sys.stderr)
    try:
        t = time.perf_counter()
        for idx, xs, bad in loader:
            read_s += time.perf_counter() - t
            t = time.perf_counter()
            arrays = {}
            if xs is not None:
                b, v = xs.shape[:2]
                x = xs.reshape(b * v, *xs.shape[2:]).to(dev, non_blocking=True)
                with torch.inference_mode(), autocast(dev, prec):
                    pooled = model(x)
                FORWARD_IMAGES += b
                arrays = {n: p.reshape(b, v, -1).to(out_dtype).cpu().numpy() for n, p in zip(names, pooled)}
            fwd_s += time.perf_counter() - t
            bad_keys = {keys[i]: err for i, err in bad}
            for i, err in bad:
                result.skipped[dataset.ids[i]] = err
                warnings.warn(f"skipped unreadable image {dataset.ids[i]}: {err}", stacklevel=2)
            writer.put([keys[i] for i in idx], arrays, bad_keys)
            result.n_computed += len(idx)
            bar.update(len(idx) + len(bad))
            bar.set_postfix(img_s=f"{result.n_computed / max(time.perf_counter() - t_run, 1e-9):.1f}")
            t = time.perf_counter()
    finally:
        bar.close()
        writer.close()  # commits what is buffered, also on Ctrl-C
    result.n_skipped = len(result.skipped)
    result.seconds = time.perf_counter() - t0
    run_s = time.perf_counter() - t_run
    result.images_per_s = result.n_computed / run_s if run_s > 0 else 0.0
    result.stage_seconds = {"model_load": load_seconds, "read_wait": read_s, "forward": fwd_s,
                            "write": writer.seconds, "run": run_s}
    store.record({"kind": "extract", "dataset": dataset.name, "device": str(dev), "precision": prec,
                  "batch_size": batch_size, "workers": workers, "compile": compile,
                  **{k: v for k, v in result.to_dict().items() if k != "store"}})
    return result
