"""Where and how the network runs: device, precision, autocast, compilation, workers, allocator,
and the JPEG decoder that runs on the device (torchvision's operators, loaded without its import).

Shared by `fne extract` and `fne train`, so both resolve `auto` the same way on one machine.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

import torch

from fne.errors import FneError
from fne.names import PRECISIONS
from fne.option_handling import named, refusal
from fne.options import DEVICES, MAX_BATCH, device_parses, usable_cores

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


def parse_device(device: str) -> torch.device:
    """--device as torch names it (not `auto`), whether or not this machine has it; OptionError (one
    line) for a name torch does not know (`fne.options.device_parses`)."""
    if not device_parses(device):
        raise refusal(lambda py: f"bad {named('device', py, device)}: {named('device', py)} must be {DEVICES}")
    return torch.device(device)


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for --device: `auto` takes CUDA, else Apple's GPU (MPS), else the CPU.

    Parameters
    ----------
    device : str
        auto, cpu, cuda[:i] or mps.

    Returns
    -------
    torch.device
        FneError (one line) for a name torch does not know or a GPU this machine lacks.
    """
    if device == "auto":
        if torch.cuda.is_available():  # torchrun's ranks take the GPUs in turn (more ranks than GPUs share)
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK') or 0) % torch.cuda.device_count()}")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = parse_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "no CUDA GPU found" if torch.backends.cuda.is_built() else "this torch was built without CUDA"
        raise refusal(lambda py: f"{named('device', py, device)}: CUDA is not available on this machine ({why}); use "
                                 f"{named('device', py, 'cpu', plain=True)} or {repr('auto') if py else 'auto'}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise refusal(lambda py: f"{named('device', py, device)}: this machine has {n} CUDA device{'s' * (n != 1)} "
                                 f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        why = "" if torch.backends.mps.is_built() else " (this torch was built without it)"
        raise refusal(lambda py: f"{named('device', py, device)}: MPS (Apple's GPU) is not available on this "
                                 f"machine{why}")
    if dev.type == "mps" and dev.index not in (None, 0):
        raise refusal(lambda py: f"{named('device', py, device)}: a Mac has one MPS device (mps or mps:0)")
    return dev


def check_device(device: str, here: bool = True) -> None:
    """OptionError (one line) for --device `device`: a name torch does not know, or, with `here`, a
    device this machine lacks (`resolve_device`'s checks); `auto` passes."""
    if device != "auto":
        (resolve_device if here else parse_device)(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 where the hardware runs it natively (AMX CPUs, Ampere and later GPUs), else fp32
    on a CPU, fp16 on other GPUs (a T4, a V100) and on Apple's (MPS)."""
    if precision not in PRECISIONS:
        raise refusal(lambda py: f"unknown {named('precision', py, precision)}; choose from {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "mps" and not torch.backends.mps.is_macos_or_newer(14, 0):
        raise refusal(lambda py: f"{named('precision', py, 'bf16', plain=True)} on MPS needs macOS 14 or newer: use "
                                 f"auto (fp16) or fp32")
    if precision != "auto":
        return precision
    if device.type == "cuda":  # native bf16 (Ampere on) on this device; torch's default counts emulated bf16 (T4, V100)
        with torch.cuda.device(device):
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if device.type == "mps":  # fp16 on every Apple GPU; bf16 needs macOS 14 (and is slower before M2)
        return "fp16"
    return "bf16" if cpu_bf16_native() else "fp32"


def cpu_bf16_native() -> bool:
    """oneDNN runs bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, precision: str):
    """The autocast context of `precision` (fp32: autocast off; bf16, fp16) on `device`'s type."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# torch.compile pays off once the time it saves per image repays its compile time. On a CPU it
# never did for the tap model (benchmarks/RESULTS.md): VGG-16 bf16 with fne's taps compiled ran
# +3% steady on AVX512-BF16 and 0.65-0.85x of eager on AMX, after a 50-100 s cold compile, though
# the bare network gained there. So `compile="auto"` never compiles on a CPU. On CUDA the
# convolutions are cuDNN's either way and a GPU extracts 20,000 images in seconds: auto compiles
# only for very large runs there (an estimate; no GPU was measured). None: never.
COMPILE_AUTO_MIN_IMAGES: dict[str, int | None] = {"cpu": None, "cuda": 1_000_000}


def resolve_compile(compile: str, n_images: int, device: torch.device) -> bool:
    """Whether to `torch.compile`: `compile` as `fne.options.ForwardOptions` holds it (on / off, or
    auto: for runs of at least `COMPILE_AUTO_MIN_IMAGES` images on `device`'s type, never on a
    CPU); `FneError` for another value."""
    if compile in ("on", "off"):
        return compile == "on"
    if compile == "auto":
        threshold = COMPILE_AUTO_MIN_IMAGES.get(device.type, 1_000_000)
        return threshold is not None and n_images >= threshold
    raise refusal(lambda py: f"bad {named('compile', py, compile)}; use auto, on or off")


# Extraction batch on CUDA: large enough to keep the GPU busy (the H200 run of issue 19: VGG-16
# bf16 ran 8,565 img/s at batch 256 and far less at 32), small enough for the free memory.
CUDA_BATCH = 256
CPU_BATCH = 32
# Memory one image takes in a frozen forward pass, at 224 px and 2-byte activations: VGG-16's
# largest pair of live maps (64 x 224 x 224 in and out) plus the allocator's slack, rounded up.
_BYTES_PER_IMAGE_224 = 24 * 2**20


def default_batch_size(device: torch.device, image_size: int = 224, precision: str = "bf16",
                       free_bytes: int | None = None, views: int = 1) -> int:
    """Extraction batch size for `device` when the user gives none.

    Parameters
    ----------
    device : torch.device
        Where the network runs.
    image_size : int
        Side of the network's input.
    precision : str
        fp32 doubles the memory an image takes; bf16/fp16 do not.
    free_bytes : int, optional
        Free device memory (default: asked from CUDA; on MPS, Metal's recommended working set
        less what the driver holds: the GPU shares the machine's memory).
    views : int
        Views per image the network sees (10 for ten-crop).

    Returns
    -------
    int
        32 on a CPU (more only adds latency there). On a GPU (CUDA, MPS) `CUDA_BATCH` (256),
        halved until half of the free memory holds the batch's activations (at least 1).
    """
    if device.type not in ("cuda", "mps"):
        return CPU_BATCH
    if free_bytes is None and device.type == "mps":
        free_bytes = max(0, torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    elif free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    per_image = _BYTES_PER_IMAGE_224 * (image_size / 224) ** 2 * (2 if precision == "fp32" else 1) * views
    batch = CUDA_BATCH
    while batch > 1 and batch * per_image > free_bytes / 2:
        batch //= 2
    return batch


def resolve_batch_size(batch_size: int | str | None, device: torch.device, image_size: int = 224,
                       precision: str = "bf16", views: int = 1) -> int:
    """`batch_size` as given (an int >= 1), or `default_batch_size` for None / "auto".

    Parameters
    ----------
    batch_size : int, str or None
        The user's --batch-size.
    device, image_size, precision, views
        As for `default_batch_size`.

    Returns
    -------
    int
        The batch size to use; FneError for anything else than a positive integer or auto.
    """
    if batch_size is None or batch_size == "auto":
        return default_batch_size(device, image_size, precision, views=views)
    try:
        n = int(batch_size)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= MAX_BATCH or str(n) != str(batch_size).strip():
        raise refusal(lambda py: f"bad {named('batch_size', py, batch_size)}; expected an integer in [1, {MAX_BATCH}] "
                                 f"or auto")
    return n


def default_workers(device: torch.device) -> int:
    """Decoding processes per extracting process.

    On CPU the network already uses every core, so decoding takes cycles from it whatever the
    split; one worker overlaps decoding with compute, more only add contention (measured in
    benchmarks/RESULTS.md). On a GPU (CUDA, MPS) the CPU only decodes: one worker per core this
    rank owns but one.
    """
    per_rank = max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if device.type in ("cuda", "mps"):
        return min(16, max(1, per_rank - 1))
    return 1


def worker_init(worker_id: int) -> None:
    """`worker_init_fn` of every loader fne makes: a worker ends on its parent's SIGTERM (the
    loader's shutdown, multiprocessing's at exit) and leaves any other SIGTERM to the main
    process. A scheduler signals the whole job, and torch's workers would die of it; the main
    process's loader would then raise over a worker's death while the `fne` command stops in
    order (fne.cli), committing its rows, then shuts its workers down. (Ignoring SIGTERM outright
    would leave a worker that its parent cannot end, and the parent's exit would wait for it.)
    Where the sender cannot be told (no `sigwaitinfo`: macOS), SIGTERM keeps its default."""
    import signal
    import threading

    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # this thread, and those it starts

    def wait() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=wait, name="fne-sigterm", daemon=True).start()


def loader_context(workers: int) -> str | None:
    """The start method of fne's loader workers (a DataLoader's `multiprocessing_context`).

    Linux: fork, what fne is tested and measured with (workers start in milliseconds, inherit
    the dataset, and a user's script needs no `__main__` guard), also on Python 3.14+, whose
    default there is forkserver. Elsewhere, and wherever the user chose a start method
    (`multiprocessing.set_start_method`), None: Python's default or that choice (spawn on macOS,
    where forking a process that uses Apple's frameworks or MPS is unsafe, and on Windows).

    Parameters
    ----------
    workers : int
        The loader's number of workers (0: none, and no context).

    Returns
    -------
    str or None
        "fork", or None for the default.
    """
    import multiprocessing

    if workers < 1 or not sys.platform.startswith("linux"):
        return None
    return "fork" if multiprocessing.get_start_method(allow_none=True) is None else None


def forks_workers(workers: int) -> bool:
    """Whether fne's loader workers (`loader_context`) are forked: they then inherit what the
    main process made before they started, shared memory included, without pickling it."""
    import multiprocessing

    return workers > 0 and (loader_context(workers) or multiprocessing.get_start_method()) == "fork"


def end_workers(loader) -> None:
    """Stop the worker processes of a DataLoader (its persistent workers) or of a DataLoader's
    iterator now, and wait for them; nothing where there are none or they have stopped.

    A loader's workers otherwise end when it is garbage-collected, and after an error or Ctrl-C
    the traceback holds the frames that hold it: a notebook or IPython keeps the last one
    (`sys.last_traceback`), and with it the workers and their memory, until the next error.

    Parameters
    ----------
    loader : torch.utils.data.DataLoader or its iterator
        What to stop the workers of.
    """
    it = getattr(loader, "_iterator", loader)  # a DataLoader keeps its persistent workers' iterator
    shutdown = getattr(it, "_shutdown_workers", None)  # torch's own, run when the iterator is collected
    if shutdown is not None:
        from fne.handoff import held

        with held():  # its queues and events: no Ctrl-C inside them (`fne.handoff`)
            shutdown()


class Loader(torch.utils.data.DataLoader):
    """torch's DataLoader whose iterator starts (its workers forked, their queues filled) with
    Ctrl-C held (`fne.handoff`): a KeyboardInterrupt raised inside torch's iterator
    ``__init__`` left it half-built, workers started and nothing to stop them (its ``__del__``
    fails on the attributes not yet set: "no attribute '_workers_status'"), so each such Ctrl-C in a
    notebook left a worker process and its pipes until the kernel ended. Held, it is raised once
    the iterator is whole, and its workers are stopped first."""

    def __iter__(self):
        from fne.handoff import held

        it = None
        try:
            with held():  # bounded: the workers are started, not waited for
                it = super().__iter__()
        except BaseException:
            end_workers(self if it is None else it)  # a persistent iterator is kept on the loader
            raise
        return it


def require_main_script(verb: str) -> None:
    """FneError where `verb` is called while a process started by spawn (macOS's and Windows'
    start method) or forkserver re-runs the user's script to set itself up: a loader worker
    that reached the script's own `fne.extract(...)` would wait for its parent's lock, and the
    parent for the worker, for ever. torch's DataLoader documentation gives the fix this names.

    Parameters
    ----------
    verb : str
        What was called (`fne.extract`), for the message.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise FneError(f"{verb} was called while a worker process (started by spawn, as on macOS and "
                       f"Windows) re-ran this script: put the script's code under `if __name__ == \"__main__\":`")


def random_draw(device: torch.device) -> str:
    """What decides the numbers random weights drawn on `device` get from a seed: "cpu", else
    the device type, and on CUDA the GPU's geometry (``cuda132x2048``: SMs x threads per SM).
    torch's CUDA generator spreads a tensor's draws over a grid sized from the SM count and the
    threads per SM, so one seed gives other numbers on a GPU of another geometry
    (pytorch/pytorch#87992): their rows must not share a store."""
    if device.type != "cuda":
        return device.type
    props = torch.cuda.get_device_properties(device)
    return f"cuda{props.multi_processor_count}x{props.max_threads_per_multi_processor}"


def resolve_decode(decode: str, device: torch.device) -> str:
    """`auto` -> "device" on CUDA where a library decodes JPEGs on it (`device_decoder`), "pil"
    elsewhere; others as given. (Batched nvjpeg takes a quarter of PIL's CPU; on a 16-core H200
    node PIL in 15 workers reached a higher steady rate: benchmarks/RESULTS.md.)

    Parameters
    ----------
    decode : str
        "auto", "pil" or "device".
    device : torch.device
        Where the network runs.

    Returns
    -------
    str
        "pil" or "device".
    """
    if decode == "auto":
        return "device" if device.type == "cuda" and device_decoder() else "pil"
    return decode


# GPUs that multiply in float64 at half or a quarter of their float32 rate (compute capability):
# P100, V100, A100, H100 / H200, B200. Gaming and workstation GPUs run float64 at 1/32-1/64, and
# so do the H800 and H20 (export parts of compute capability 9.0: ~1 TFLOP/s), known by name.
FAST_FLOAT64 = {(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)}
SLOW_FLOAT64_NAMES = re.compile(r"\bH(800|20)\b")


def resize_on_device(device: torch.device) -> bool:
    """Whether `--decode pil` leaves the resize to `device`: on a GPU that multiplies fast in
    float64 (`FAST_FLOAT64`), where `resample`'s float64 products give PIL's pixels exactly, the
    loader workers decode only (their resize cost more than their decode: 0.78 against 0.52 ms
    per 436 x 383 JPEG on the development CPU) and the images travel whole (`reader.Rgb`). The
    rows are the same either way."""
    if device.type != "cuda":
        return False
    return (torch.cuda.get_device_capability(device) in FAST_FLOAT64
            and not SLOW_FLOAT64_NAMES.search(torch.cuda.get_device_name(device)))


def require_device_decoder(option: str = "decode") -> None:
    """OptionError naming `option` (as the caller does: `refusal`) where no library here decodes
    on a device (asked for where images are to be decoded: rows already cached are read without
    it)."""
    if not device_decoder():
        import torchvision

        version = torchvision.__version__
        raise refusal(lambda py: f"{named(option, py, 'device', plain=True)} needs a JPEG decoder for the device: "
                                 f"TorchCodec's (pip install torchcodec, or fne-toolkit[torchcodec]) or "
                                 f"torchvision.io.decode_jpeg, which torchvision {version} no longer has; "
                                 f"or use {named(option, py, 'auto', plain=True)}")


def device_decoder() -> str | None:
    """Which library decodes JPEGs on a device here: "torchcodec" where TorchCodec is installed,
    else "torchvision" where torchvision still decodes (``torchvision.io.decode_jpeg``, deprecated
    since 0.29 in favour of TorchCodec, "to be removed in a future release"), else None, and then
    `--decode auto` and `--augment-on auto` decode with PIL.

    TorchCodec (>= 0.16) is torchvision's named successor: its ``decode_jpeg`` decodes a batch in
    one nvJPEG call (the hardware engine where the GPU has one), on the caller's CUDA stream, where
    torchvision's runs on a stream of its own. The two may not give the same pixels, so their rows
    keep stores of their own (`fne.cache.spec.DEVICE_SUFFIXES`). Answered without importing
    torchvision where its compiled operators load (`jpeg_ops`); the library is loaded.
    """
    if _torchcodec():
        return "torchcodec"
    if jpeg_ops():
        return "torchvision"
    import torchvision.io

    return "torchvision" if hasattr(torchvision.io, "decode_jpeg") else None


@functools.cache
def _torchcodec() -> bool:
    """Whether TorchCodec's JPEG decoder loads here (16 ms on the development machine). One
    installed that does not load (built for another torch, a missing library) is a warning, once,
    and torchvision decodes."""
    from importlib.util import find_spec

    try:
        if find_spec("torchcodec") is None:
            return False
        from torchcodec.decoders import decode_jpeg  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:
        import warnings

        warnings.warn(f"TorchCodec is installed but does not load ({type(e).__name__}: {e}); JPEGs are "
                      "decoded on the device with torchvision's decoder where it has one", stacklevel=3)
        return False
    return True


# torchvision's compiled JPEG operators, by the types of their arguments and results as fne calls
# them (the same in torchvision 0.26 to 0.29), and its `ImageReadMode.RGB`
_JPEG_OPS = {"decode_jpegs_cuda": (("List[Tensor]", "int", "Device"), ("List[Tensor]",)),
             "decode_jpeg": (("Tensor", "int", "bool"), ("Tensor",))}
_RGB = 3


@functools.cache
def jpeg_ops() -> bool:
    """Load torchvision's compiled image operators (``torch.ops.image``) without importing torchvision.

    ``torchvision.io.decode_jpeg`` is a check of its arguments around these operators, but
    importing it imports all of torchvision, torch._dynamo included: 1.0 s on the development
    machine, 4.8 s on the H200 machine, where device decoding waited for it before its first batch.
    Loading the operators' library takes milliseconds.

    Returns
    -------
    bool
        True where the library loaded and both operators take and give the types fne passes
        (`_JPEG_OPS`); otherwise `decode_jpegs_rgb` goes through ``torchvision.io``.
    """
    from importlib.machinery import EXTENSION_SUFFIXES
    from importlib.util import find_spec

    try:
        spec = find_spec("torchvision")
    except (ImportError, ValueError):
        return False
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    libraries = [Path(f) / (name + suffix) for f in folders for name in ("image_stable", "image")
                 for suffix in EXTENSION_SUFFIXES]
    library = next((p for p in libraries if p.is_file()), None)
    if library is None:
        return False
    try:
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError):
        return False
    return all(_op_types(name) == types for name, types in _JPEG_OPS.items())


def _op_types(name: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    try:
        schema = getattr(torch.ops.image, name).default._schema
    except (AttributeError, RuntimeError):
        return None
    return tuple(str(a.type) for a in schema.arguments), tuple(str(r.type) for r in schema.returns)


def decode_jpegs_rgb(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """JPEG files' bytes (uint8 tensors on the CPU) -> (3, H, W) uint8 RGB images on `device`,
    decoded by `device_decoder`'s library.

    One batched nvjpeg call on CUDA, libjpeg-turbo one by one on the CPU: what
    ``torchcodec.decoders.decode_jpeg(data, mode="RGB", device=device)`` or
    ``torchvision.io.decode_jpeg(data, mode=ImageReadMode.RGB, device=device)`` gives (on another
    device, such as MPS, decoded on the CPU and moved there). Any file the decoder refuses fails
    the whole call.
    """
    if device_decoder() == "torchcodec":
        from torchcodec.decoders import decode_jpeg as codec_decode

        if device.type == "cuda":
            return list(codec_decode(data, mode="RGB", device=device))
        return [x.to(device) for x in codec_decode(data, mode="RGB")]
    if jpeg_ops():
        if device.type == "cuda":
            return list(torch.ops.image.decode_jpegs_cuda(data, _RGB, device))
        return [torch.ops.image.decode_jpeg(d, _RGB, False).to(device) for d in data]
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29's image codecs
        if device.type == "cuda":
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        return [x.to(device) for x in decode_jpeg(data, mode=ImageReadMode.RGB)]
