"""The GPU stage in one call (issue 19), measured by hand (not a test): prints one table.

On one machine, on the same JPEG files:

* images: N distinct JPEGs (436 x 383, quality 90) made from pets37 (else flowers12, else
  synthetic pictures), each a different seeded crop of a source image, in class folders;
* bare forward: the network alone on a batch in device memory (the ceiling), and the tap model
  (fne's hooks + pooling), at the tuned batch size;
* `fne extract` as a subprocess (process start included) with its defaults (on CUDA: batch 256,
  batched nvjpeg decoding), `--decode pil` and `--compile on` (`--smoke`: `--decode device` in
  its place), each into an empty cache, then the cached rerun of the defaults: run-phase img/s, steady
  img/s (after the first batch) and its ratio to the tap model's (the goal: >= 0.9), wall
  seconds (the goal for 32,768 JPEGs: <= 12 s), CPU-seconds of all processes, model-load
  seconds, and the share of the run spent waiting on the reader (high: the host bounds it);
* the peer: the extraction script the field writes by hand (torchvision ImageFolder + DataLoader
  with every core + forward hooks pooling each of the same taps + np.save), as a subprocess;
* the device path's decoding and its batched resize + crop alone, on a batch of those JPEGs and
  on one of the source dataset's own mixed sizes; and the decoding again while the tap model
  runs on a thread and stream of its own (in the H200's pipeline a decode call took three times
  its time alone);
* the device decoder's candidates (`--parts decoders`): torchvision's nvjpeg call, TorchCodec's
  where installed (fne's default then; `fne extract` is also run with torchvision's), and
  nvImageCodec where installed (`bash benchmarks/gpu_kit_extras.sh` puts it in the kit) on a
  stream fne chooses, at normal and high priority, with nvJPEG's chroma upsampling and with
  libjpeg's ("fancy", as PIL): img/s alone and beside the running tap model, and each one's
  pixels against PIL's;
* benchmark hooks on `fne extract` (rows that say so; nothing in fne knows of them): larger
  batches with decode calls as large (`--parts batches`), part of the JPEGs left to PIL in the
  workers (`hybrid`), and the forward confined to all but a few of the GPU's multiprocessors by
  a CUDA green context, the decode keeping the whole GPU (`green`), and `--decode pil` with the
  resize in the workers, as before the GPU took it (in `pil`);
* CUDA vs CPU rows: the tap model's rows of 64 of the images on the device (fp32, fp16, bf16,
  and bf16 from device-decoded pixels) against CPU fp32 rows, max relative error per tap
  (max |a - b| / max |b| over a tap's rows, the worst tap) and whether any NaN appeared;
* the training loader alone (decode, random crop, flip) in the workers and on the device, on
  those JPEGs and on the source dataset's own (mixed sizes);
* training throughput: `fne train` frozen and finetune at batch 32 (the default), finetune at
  batch 256, EfficientNet-Lite0 (ImageNet weights where installed, else random), img/s of the
  second epoch on a subset of the images;
* the linear head at the FNE paper's Food-101 size: the torch solver's svm fit on 75,750 x
  12,416 int8 rows of 101 classes (issue 20's GPU goal: <= 60 s).

Needs only torch, torchvision and fne's own dependencies (on the device: `source
.gpu-kit/setup.sh` first, see ../shared/tools/gpu-kit.sh; with pets37 and nvImageCodec added to
the kit by `benchmarks/gpu_kit_extras.sh`, its header says how to unpack them). 260 s on an H200 (28 Nov 2026; figures in RESULTS.md):

    python3 benchmarks/bench_gpu.py                 # CUDA, 32,768 images, VGG-16 bf16
    python3 benchmarks/bench_gpu.py --smoke         # CPU, tiny sizes, < 1 minute: tests the script

`--smoke` runs the "subprocesses" in this process (its walls exclude a Python start) and skips
the compile row (a CPU compile takes minutes).

`--parts extract,decode` runs only those parts (and the images they read).

One try on a lent GPU has to bring its figures back, so: the sections run in the order the goals
need them (the forward and `fne extract`'s defaults first, compile last); one that fails is a
row saying why and the rest go on; `--budget` (default 500 s) cuts a section short at its end
and skips the rest; the table is rewritten to `--json` (default `$OUT/bench_gpu.json` where
`$OUT` is set) after every row.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fne.backbones import registry as backbones  # noqa: E402
from fne.devices import autocast  # noqa: E402

# pets37 first: its JPEGs mix sizes (~90 in 256) as real folders do; flowers12's are all 224 x 224.
# On the device ../shared is absent: `bash benchmarks/gpu_kit_extras.sh` copies pets37 into the kit
# (37 MiB; the kit with it and nvImageCodec 62.3 MiB of the 64 MiB that travel).
SOURCES = (ROOT / "../shared/datasets/pets37", ROOT / ".gpu-kit/pets37", ROOT / "../shared/datasets/flowers12",
           ROOT / ".gpu-kit/flowers12")
JPEG_SIZE = (436, 383)


# --------------------------------------------------------------------------- images


def _source_files(limit: int = 2000) -> tuple[list[Path], str]:
    for root in SOURCES:
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if files:
                return files[:limit], root.resolve().name
    return [], "synthetic"


def _make_one(job: tuple) -> None:
    k, src, out, n_classes = job
    rng = np.random.default_rng(k)
    if src is None:  # a synthetic picture: smooth colour field plus a few shapes
        yy, xx = np.mgrid[0:JPEG_SIZE[1], 0:JPEG_SIZE[0]] / 100.0
        f = rng.uniform(0.5, 3, 6)
        arr = np.stack([np.sin(f[c] * xx + f[c + 3] * yy + rng.uniform(0, 6)) for c in range(3)], -1)
        img = Image.fromarray(((arr + 1) * 127.5).astype(np.uint8))
    else:
        with Image.open(src) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = rng.uniform(0.6, 1.0)
            cw, ch = max(8, int(w * s)), max(8, int(h * s))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = im.crop((x0, y0, x0 + cw, y0 + ch)).resize(JPEG_SIZE, Image.BILINEAR)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
    px = img.load()
    px[k % JPEG_SIZE[0], 0] = (k % 251, (k // 251) % 251, 7)  # distinct content, always
    d = Path(out) / f"c{k % n_classes:02d}"
    d.mkdir(parents=True, exist_ok=True)
    img.save(d / f"img{k:06d}.jpg", quality=90)


def make_images(out: Path, n: int, n_classes: int = 37) -> str:
    """N distinct JPEGs in class folders under `out`; -> where they came from."""
    files, origin = _source_files()
    jobs = [(k, str(files[k % len(files)]) if files else None, str(out), n_classes) for k in range(n)]
    with Pool(max(1, os.cpu_count() or 1)) as pool:
        pool.map(_make_one, jobs, chunksize=64)
    return origin


# ------------------------------------------------------------------- in-process rows


def _cpu_model() -> str:
    """The host CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _rate(fn, n_per_call: int, dev: torch.device, seconds: float) -> float:
    """Images/s of `fn` (one batch per call) after two warm-up calls, for about `seconds`."""
    fn()
    fn()
    _sync(dev)
    calls, t0 = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
        if calls % 4 == 0:
            _sync(dev)
    _sync(dev)
    return calls * n_per_call / (time.perf_counter() - t0)


def forward_rows(arch: str, weights: str, dev: torch.device, prec: str, batch: int, seconds: float) -> dict:
    """Bare forward and tap model img/s on a batch of random pixels in device memory."""
    from fne.backbones.normalize import Normalize
    from fne.cache.spec import StoreSpec
    from fne.extraction import taps

    b = backbones.get(arch, weights)
    x = torch.randint(0, 256, (batch, 3, b.input_size, b.input_size), dtype=torch.uint8, device=dev)
    t = time.perf_counter()
    models = {"bare": backbones.load_backbone(arch, weights, device=dev).to(memory_format=torch.channels_last)}
    _sync(dev)
    load_s = time.perf_counter() - t
    norm = Normalize(b.mean, b.std).to(dev)

    def run_bare():
        with torch.inference_mode(), autocast(dev, prec):
            models["bare"](norm(x).contiguous(memory_format=torch.channels_last))

    out = {"load_s": load_s, "bare": _rate(run_bare, batch, dev, seconds)}
    models.clear()  # its memory back before the tap model
    tap = taps.build_tap_model(StoreSpec(arch=arch, weights=weights), dev)

    def run_tap():
        taps.forward(tap, x, dev, prec)

    out["tap"] = _rate(run_tap, batch, dev, seconds)
    return out


def _jpeg_bytes(files: list[Path]) -> list[torch.Tensor]:
    """Each file's bytes as a uint8 tensor (what the device decoder takes)."""
    return [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]


def decode_rows(uniform: list[Path], dev: torch.device, batch: int, seconds: float) -> list[tuple]:
    """The device path's decoding and resizing alone (`fne extract --decode device`'s work on
    a batch): img/s of the batched decode, and of the batched resize + crop on the benchmark's
    uniform JPEGs and on the source dataset's own mixed sizes (pets37: ~90 sizes in 256)."""
    from fne.backbones.preprocess import Preprocess
    from fne.backbones.resample import resize_views
    from fne.extraction import reader

    mixed = _source_files()[0][:batch]
    prep, out = Preprocess(224), []
    for name, files in (("uniform", uniform[:batch]), ("mixed", mixed)):
        raw = _jpeg_bytes(files)
        imgs = reader.decode_jpegs(raw, dev)
        if not files or any(i is None for i in imgs):
            continue
        sizes = len({tuple(i.shape) for i in imgs})
        dec = _rate(lambda raw=raw: reader.decode_jpegs(raw, dev), len(raw), dev, seconds)
        rs = _rate(lambda imgs=imgs: resize_views(imgs, prep), len(imgs), dev, seconds)
        out.append((f"decode {len(raw)} JPEGs on {dev.type} ({name}: {sizes} sizes)", f"{dec:,.0f} img/s",
                    f"resize + crop to 224 in one call: {rs:,.0f} img/s"))
    return out


@contextlib.contextmanager
def _forward_running(arch: str, weights: str, dev: torch.device, prec: str, batch: int):
    """The tap model running batch after batch on a thread and stream of its own (as `fne
    extract`'s forward does beside its reader) while inside; yields a dict whose "img_s" is the
    forward's rate once the block is left."""
    import threading

    from fne.cache.spec import StoreSpec
    from fne.extraction import taps

    spec = StoreSpec(arch=arch, weights=weights)
    model = taps.build_tap_model(spec, dev)
    side = spec.backbone().input_size
    x = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, device=dev)
    stop, done, out = threading.Event(), [0, 0.0], {"img_s": 0.0}

    def busy():  # one batch at a time, as extract's writer waits for each batch's rows
        with torch.cuda.stream(torch.cuda.Stream(dev)) if dev.type == "cuda" else contextlib.nullcontext():
            t = time.perf_counter()
            while not stop.is_set():
                taps.forward(model, x, dev, prec)
                _sync(dev)
                done[0] += 1
            done[1] = time.perf_counter() - t

    th = threading.Thread(target=busy, daemon=True, name="bench-forward")
    th.start()
    try:
        yield out
    finally:
        stop.set()
        th.join()
        out["img_s"] = done[0] * batch / done[1] if done[1] else 0.0


def contention_rows(files: list[Path], arch: str, weights: str, dev: torch.device, prec: str, batch: int,
                    seconds: float) -> list[tuple]:
    """The batched decode alone, then while the tap model runs (`_forward_running`): in the
    H200's pipeline a decode call took three times its time alone (RESULTS.md). Also the
    forward's own rate meanwhile."""
    from fne.extraction import reader

    raw = _jpeg_bytes(files[:batch])
    alone = _rate(lambda: reader.decode_jpegs(raw, dev), len(raw), dev, seconds)
    with _forward_running(arch, weights, dev, prec, batch) as fwd:
        shared = _rate(lambda: reader.decode_jpegs(raw, dev), len(raw), dev, seconds)
    return [(f"decode {len(raw)} JPEGs on {dev.type}: alone / while the tap model runs", f"{alone:,.0f} / {shared:,.0f} img/s",
             f"{alone / max(shared, 1e-9):.1f}x slower beside the forward; the forward meanwhile {fwd['img_s']:,.0f} img/s")]


def nvimgcodec_decoder(dev: torch.device, priority: int = -1, fancy: int = 1):
    """nvImageCodec's JPEG decoder as `reader.decode_jpegs`' stand-in for one device: JPEG bytes
    (1-D uint8 CPU tensors) -> uint8 (3, H, W) tensors on `dev` (its (H, W, 3) images, copied),
    None where it refuses one. On CUDA (its hardware backend where the GPU has one) it decodes on a
    stream of `priority` (torch's: -1 high) that waits for the caller's stream, which then waits
    for it; `fancy`: libjpeg's chroma upsampling (`:fancy_upsampling=1`, as PIL) or nvJPEG's
    own. The call returns once the batch is decoded, as torchvision's does. On a CPU its CPU
    decoder (the smoke test of this code)."""
    from nvidia import nvimgcodec

    opts = f":fancy_upsampling={fancy}"
    if dev.type != "cuda":
        cpu = nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, options=opts,
                                 backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)])
        return lambda raw: [None if im is None else torch.from_numpy(np.array(im)).permute(2, 0, 1)
                            for im in cpu.decode([r.numpy() for r in raw])]
    dec = nvimgcodec.Decoder(device_id=dev.index or 0, options=opts)
    stream = torch.cuda.Stream(dev, priority=priority)

    def decode(raw: list[torch.Tensor]) -> list[torch.Tensor | None]:
        here = torch.cuda.current_stream(dev)
        stream.wait_stream(here)
        with torch.cuda.stream(stream):
            imgs = dec.decode([r.numpy() for r in raw], cuda_stream=stream.cuda_stream)
            # copied into torch's memory (channels first), on the same stream: nvImageCodec frees its
            # own when its image goes, whatever torch's streams still read
            out = [None if im is None else torch.as_tensor(im, device=dev).permute(2, 0, 1).contiguous()
                   for im in imgs]
        stream.synchronize()  # as torchvision's call does: then its images may go
        here.wait_stream(stream)
        return out

    return decode


def _has_nvimgcodec() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("nvidia.nvimgcodec") is not None
    except ImportError:  # no `nvidia` package at all
        return False


def nvimgcodec_hook() -> None:
    """Benchmark-only: `fne extract` in this process decodes its JPEGs with nvImageCodec (high
    priority stream, fancy upsampling) in place of torchvision's nvjpeg call (`extract_run`'s
    nvImageCodec row; nothing in fne knows of it)."""
    from fne.extraction import reader

    made: dict = {}

    def decode_jpegs(raw, dev):
        if dev not in made:
            made[dev] = nvimgcodec_decoder(dev)
        return made[dev](raw)

    reader.decode_jpegs = decode_jpegs


def decoder_rows(files: list[Path], arch: str, weights: str, dev: torch.device, prec: str, batch: int,
                 seconds: float) -> list[tuple]:
    """The device decoder's candidates against torchvision's nvjpeg call (`reader.decode_jpegs`),
    on the same batch of JPEGs: img/s alone and while the tap model runs, and how far each one's
    pixels lie from PIL's (share of values changed, mean and largest difference). nvImageCodec
    (where installed: `benchmarks/gpu_kit_extras.sh`) decodes on a stream fne would choose, so
    that its kernels may go before the forward's (high priority)."""
    from fne.data.datasets import read_image
    from fne.extraction import reader

    raw = _jpeg_bytes(files[:batch])
    pil = [torch.from_numpy(np.array(read_image(f))).permute(2, 0, 1) for f in files[:batch]]
    from fne import devices

    which = "nvjpeg" if dev.type == "cuda" else "libjpeg-turbo"

    def library(codec: bool):  # fne's decode_jpegs with TorchCodec's decoder or torchvision's
        def decode(r):
            made, devices._torchcodec = devices._torchcodec, lambda: codec
            try:
                return reader.decode_jpegs(r, dev)
            finally:
                devices._torchcodec = made
        return decode

    cands = {f"torchvision {which} (fne's decode_jpegs)": library(False)}
    if devices._torchcodec():
        cands[f"TorchCodec {which} (fne's decode_jpegs)"] = library(True)
    try:
        for fancy in (0, 1):
            for prio, label in ((0, "normal-priority stream"), (-1, "high-priority stream")) if dev.type == "cuda" \
                    else ((0, "CPU decoder"),):
                cands[f"nvImageCodec, {label}, fancy upsampling {fancy}"] = nvimgcodec_decoder(dev, prio, fancy)
    except ImportError as e:
        cands["nvImageCodec"] = None
        why = f"not installed ({e})"
    out = []
    alone = {}
    for name, fn in cands.items():
        if fn is None:
            out.append((name, why, "bash benchmarks/gpu_kit_extras.sh puts it in the kit"))
            continue
        imgs = fn(raw)
        diffs = torch.cat([(a.cpu().int() - b.int()).abs().flatten() for a, b in zip(imgs, pil, strict=True)])
        alone[name] = _rate(lambda fn=fn: fn(raw), len(raw), dev, seconds)
        out.append((f"decoder: {name}", f"{alone[name]:,.0f} img/s alone",
                    f"vs PIL: {100 * float((diffs > 0).float().mean()):.1f}% of values changed, mean "
                    f"{float(diffs.float().mean()):.2f}, max {int(diffs.max())}"))
    with _forward_running(arch, weights, dev, prec, batch) as fwd:
        shared = {name: _rate(lambda fn=fn: fn(raw), len(raw), dev, seconds)
                  for name, fn in cands.items() if fn is not None}
    for name, rate in shared.items():
        out.append((f"decoder: {name}, beside the forward", f"{rate:,.0f} img/s",
                    f"{alone[name] / max(rate, 1e-9):.1f}x slower than alone"))
    out.append(("forward while the decoders ran", f"{fwd['img_s']:,.0f} img/s", "the tap model, batch after batch"))
    return out


def _views(files: list[Path], prep) -> torch.Tensor:
    from fne.data.datasets import read_image

    return torch.stack([prep(read_image(f))[0] for f in files])


def device_rows(arch: str, weights: str, files: list[Path], dev: torch.device, smoke: bool) -> list[tuple]:
    """Max relative error per tap of rows on `dev` (fp32, fp16, bf16, bf16 + device decode)
    against CPU fp32 rows of the same images."""
    from fne.cache.spec import StoreSpec
    from fne.extraction import reader, taps

    spec = StoreSpec(arch=arch, weights=weights)
    prep = spec.preprocess()
    x = _views(files, prep)
    cpu = torch.device("cpu")
    ref = [r.float() for r in taps.forward(taps.build_tap_model(spec, cpu), x, cpu, "fp32")[1]]
    model = taps.build_tap_model(spec, dev)
    raw = _jpeg_bytes(files)
    cases = [("fp32", x.to(dev)), ("fp16", x.to(dev)), ("bf16", x.to(dev))]
    def views(decoded):  # the decoded views; PIL's where a decoder refused an image
        return torch.stack([d[0] if not isinstance(d, str) else x[i].to(dev) for i, d in enumerate(decoded)])

    try:  # the reader's device decoding (its API may move: then this row says so)
        x_dev = views(reader.decode_raw(raw, dev, prep))
        cases += [("bf16 + decode device", x_dev), ("fp32 + decode device", x_dev)]
    except (AttributeError, TypeError) as e:
        print(f"decode device row skipped: {e}", file=sys.stderr)
    if _has_nvimgcodec():  # the candidate decoder: its pixels' effect alone (fp32) and with bf16
        x_nv = views(reader.resized(raw, nvimgcodec_decoder(dev)(raw), dev, prep))
        cases += [("fp32 + nvImageCodec decode, fancy upsampling", x_nv),
                  ("bf16 + nvImageCodec decode, fancy upsampling", x_nv)]
    if smoke:  # a CPU has no fp16 kernels worth timing; the rows still exercise the code
        cases = [c for c in cases if c[0] != "fp16"]
    out = []
    for name, xs in cases:  # fp32 as fne runs it: torch's defaults (TF32 convolutions, fp32 matmuls)
        rows = [r.float().cpu() for r in taps.forward(model, xs, dev, name.split()[0])[1]]
        err = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)) for a, b in zip(rows, ref))
        nan = any(bool(torch.isnan(a).any()) for a in rows)
        out.append((f"rows on {dev.type} {name} vs CPU fp32", f"{err:.1e}", "NaN!" if nan else "no NaN"))
    return out


# ----------------------------------------------------------------------- subprocesses


IN_PROCESS = False  # --smoke: run the "subprocesses" here (a Python start costs ~10 s on a busy CPU)
CHILD_TIMEOUT = 1200.0  # seconds a child may run: what is left of the budget (`main`)


def _child(code: str, env: dict | None = None, timeout: float | None = None) -> tuple[dict, float, float]:
    """Run python code in a fresh process; -> (its last stdout line as JSON, wall s, CPU s of it
    and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    if IN_PROCESS:
        import contextlib

        buf, me = io.StringIO(), resource.getrusage(resource.RUSAGE_SELF)
        with contextlib.redirect_stdout(buf):
            exec(compile(code, "<bench child>", "exec"), {"__name__": "__bench_child__"})
        now = resource.getrusage(resource.RUSAGE_SELF)
        return (json.loads(buf.getvalue().strip().splitlines()[-1]), time.perf_counter() - t,
                now.ru_utime + now.ru_stime - me.ru_utime - me.ru_stime)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout or CHILD_TIMEOUT,
                       env={**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}", **(env or {})})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if p.returncode != 0:
        raise RuntimeError(f"child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1]), wall, cpu


def hybrid_hook(percent: int) -> None:
    """Benchmark-only: `fne extract --decode device` leaves `percent` % of the plain JPEGs (chosen
    by their bytes, so always the same ones) to PIL in the loader workers and sends the rest to
    the device decoder: both decoders at once (`extract_run`'s hybrid rows; nothing in fne knows
    of it). Beside a busy forward the device decoder alone cannot feed the tap model, nor can the
    workers alone."""
    import zlib

    from fne.extraction import reader

    plain = reader._plain_jpeg

    def some_plain(data):
        size = plain(data)
        return None if size is not None and zlib.crc32(bytes(data[:65536])) % 100 < percent else size

    reader._plain_jpeg = some_plain


def green_stream(num_sms: int, dev: torch.device) -> tuple[torch.cuda.Stream, object]:
    """A stream whose kernels run on `num_sms` of the GPU's multiprocessors only (a CUDA green
    context, torch >= 2.10), for the calling thread -> (stream, the context to pop at the end, or
    None)."""
    from torch.cuda.green_contexts import GreenContext

    ctx = GreenContext.create(num_sms=num_sms, device_id=dev.index or 0)
    if hasattr(ctx, "Stream"):  # torch >= 2.12: streams of its own
        return ctx.Stream(), None
    ctx.set_context()  # torch 2.10 / 2.11: current on this thread; its streams are made now
    return torch.cuda.Stream(dev), ctx


def workers_resize_hook() -> None:
    """Benchmark-only: `fne extract --decode pil` resizes in the loader workers, as it did before
    the GPU took the resize (`devices.resize_on_device`), for the row that compares the two."""
    from fne.extraction import extract as ex

    ex.resize_on_device = lambda dev: False


def green_counts(dev: torch.device) -> list[int]:
    """SM counts for the green rows: all but about 4 and 12 of the GPU's, in multiples of 8 (Hopper
    hands SMs out in groups); [] off CUDA."""
    if dev.type != "cuda":
        return []
    total = torch.cuda.get_device_properties(dev).multi_processor_count
    return sorted({(total - spare) // 8 * 8 for spare in (4, 12)}, reverse=True)


def green_hook(num_sms: int) -> None:
    """Benchmark-only: `fne extract` runs its forward on `num_sms` of the GPU's multiprocessors
    (a green context on the main thread), and the decoding threads keep the whole GPU: room kept
    free for the decode's kernels beside a busy forward (`extract_run`'s green rows; nothing in
    fne knows of it)."""
    from fne.extraction import extract as ex

    run = ex._run

    def green_run(spec, store, dataset, todo, dev, *args, **kw):
        if dev.type != "cuda":
            return run(spec, store, dataset, todo, dev, *args, **kw)
        stream, ctx = green_stream(num_sms, dev)
        try:
            with torch.cuda.stream(stream):
                return run(spec, store, dataset, todo, dev, *args, **kw)
        finally:
            if ctx is not None:
                ctx.pop_context()

    ex._run = green_run


def fne_extract(data: Path, cache: Path, arch: str, weights: str, hook: str | None = None,
                **kw) -> tuple[dict, float, float]:
    """`fne extract` in a child; `hook`: "nvimgcodec", with nvImageCodec's decoder in place of
    fne's (`nvimgcodec_hook`), "torchvision", with torchvision's decoder where TorchCodec would
    decode, "hybrid:P", P % of the plain JPEGs decoded by PIL in the workers (`hybrid_hook`),
    "pixels:N", decode calls of up to N pixels (`reader.DECODE_PIXELS`), "green:N", the forward
    on N multiprocessors (`green_hook`), "workers-resize", `--decode pil` resizing in the workers
    (`workers_resize_hook`) (undone after, for --smoke's in-process children)."""
    bench = f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\nimport bench_gpu\n"
    code = (
        "import json, sys, warnings; warnings.simplefilter('ignore')\n"
        "from fne import devices\n"
        "from fne.extraction import reader\n"
        "from fne.extraction import extract as ex_mod\n"
        "from fne.extraction.extract import extract\n"
        "made, codec, plain, pixels = reader.decode_jpegs, devices._torchcodec, reader._plain_jpeg, reader.DECODE_PIXELS\n"
        "run_fn, on_device = ex_mod._run, ex_mod.resize_on_device\n"
        + {"nvimgcodec": bench + "bench_gpu.nvimgcodec_hook()\n",
           "torchvision": "devices._torchcodec = lambda: False\n"}.get(hook or "", "")
        + (bench + f"bench_gpu.hybrid_hook({int(hook.split(':')[1])})\n" if (hook or "").startswith("hybrid:") else "")
        + (f"reader.DECODE_PIXELS = {int(hook.split(':')[1])}\n" if (hook or "").startswith("pixels:") else "")
        + (bench + f"bench_gpu.green_hook({int(hook.split(':')[1])})\n" if (hook or "").startswith("green:") else "")
        + (bench + "bench_gpu.workers_resize_hook()\n" if hook == "workers-resize" else "")
        + "try:\n"
        f"    r = extract({str(data)!r}, arch={arch!r}, weights={weights!r}, cache={str(cache)!r}, progress=False, **{kw!r})\n"
        "finally:\n"
        "    reader.decode_jpegs, devices._torchcodec, reader._plain_jpeg, reader.DECODE_PIXELS = made, codec, plain, pixels\n"
        "    ex_mod._run, ex_mod.resize_on_device = run_fn, on_device\n"
        "st = r.stage_seconds\n"
        "print(json.dumps({'n': r.n_computed, 'cached': r.n_cached, 'img_s': r.images_per_s,\n"
        "                  'steady': r.steady_images_per_s, 'load': st.get('model_load', 0.0),\n"
        "                  'wait': st.get('read_wait', 0.0) / st['run'] if st.get('run') else 0.0, 'stages': st}))\n")
    return _child(code)


PEER = r'''
import json, sys, time
import numpy as np, torch, torchvision
from torchvision import datasets, transforms

root, out, arch, weights, taps, batch, workers, prec, mean, std = json.loads(sys.argv[1])
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                         transforms.Normalize(mean, std)])
loader = torch.utils.data.DataLoader(datasets.ImageFolder(root, tf), batch_size=batch, num_workers=workers,
                                     pin_memory=dev.type == "cuda")
model = torchvision.models.get_model(arch)
model.load_state_dict(torch.load(weights, map_location="cpu"))
model = model.to(dev).eval().to(memory_format=torch.channels_last)
feats = {name: [] for name, _ in taps}

def pool(t):
    return (t.float().mean((2, 3)) if t.dim() == 4 else t.float()).cpu()

for name, on_input in taps:
    m = model.get_submodule(name)
    if on_input:
        m.register_forward_pre_hook(lambda mod, inp, name=name: feats[name].append(pool(inp[0])))
    else:
        m.register_forward_hook(lambda mod, inp, o, name=name: feats[name].append(pool(o)))
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
n, t0 = 0, time.perf_counter()
with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
    for x, _ in loader:
        model(x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last))
        n += len(x)
np.save(out, np.concatenate([torch.cat(feats[name]).numpy() for name, _ in taps], 1))
print(json.dumps({"n": n, "img_s": n / (time.perf_counter() - t0)}))
'''


def peer(data: Path, out: Path, arch: str, weights_file: Path, batch: int, prec: str) -> tuple[dict, float, float]:
    b = backbones.get(arch, str(weights_file))
    taps = [(t.module, bool(t.on_input)) for t in b.taps]
    args = json.dumps([str(data), str(out), arch, str(weights_file), taps, batch, os.cpu_count() or 1, prec,
                       list(b.mean), list(b.std)])
    return _child(f"import sys; sys.argv = ['peer', {args!r}]\n" + PEER)


def loader_rows(data: Path, n: int, dev: torch.device, workers: int, what: str = "") -> list[tuple]:
    """What `fne train`'s loader alone delivers (no network): normalised training batches/s as
    the steps receive them (`epochs._batches`), with decode, crop and flip in the workers (PIL),
    and with `--augment-on device` (workers send JPEG bytes; on CUDA decoded on one thread and
    cropped and flipped on another, ahead of the steps). `what` names the images in the rows."""
    from fne.backbones.normalize import Normalize
    from fne.backbones.preprocess import IMAGENET_MEAN, IMAGENET_STD
    from fne.data.datasets import load_dataset
    from fne.progress import progress
    from fne.training import augment, epochs

    d = load_dataset(str(data))
    idx = np.arange(min(n, len(d)))
    norm = Normalize(IMAGENET_MEAN, IMAGENET_STD).to(dev)
    ctx = epochs.Ctx(d, d.label_indices(), dev, "fp32", norm, None, False, {})
    rows = []
    for on_device in (False, True):
        train_tf, _ = epochs.transforms(224, True, None, on_device)
        aug = augment.DeviceAugment(224, train_tf.side) if on_device else None
        loader = epochs.loader(ctx, idx, train_tf, 64, workers, torch.Generator().manual_seed(0))
        t, k = time.perf_counter(), 0
        for _, x, _ in epochs._batches(loader, ctx, progress(len(idx), "", False), aug):
            k += len(x)
        _sync(dev)
        where = (f"decode + crop + flip on {dev.type} (--augment-on device)" if on_device
                 else "decode + crop + flip in the workers (PIL)")
        rows.append((f"fne train loader alone{what}, {where}", f"{k / (time.perf_counter() - t):,.0f} img/s",
                     f"{workers} workers, {k} images, batch 64"))
    return rows


def train_rows(data: Path, n: int, dev: torch.device, smoke: bool, out: Path) -> list[tuple]:
    """`fne train` frozen / finetune img/s (second epoch) on EfficientNet-Lite0, with the
    augmentation on the device and with PIL in the workers (on the H200 with 15 workers frozen
    trained at 1,519 and 2,569 img/s: `--augment-on auto` takes the workers from 8 of them), and
    finetune at batch 256 with the default placement."""
    from fne.data.datasets import load_dataset
    from fne.training.train import train

    try:
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        return [("fne train (EfficientNet-Lite0)", "skipped", "efficientnet-lite-pytorch not installed")]
    weights = "imagenet"
    try:
        backbones.load_backbone("efficientnet_lite0", "imagenet")
    except Exception:
        weights = "random"
    d = load_dataset(str(data))
    d = d.subset(np.arange(min(n, len(d))))
    rows = []
    # 256: does the batch size bound it? cpu (PIL in the workers): does the placement?
    for mode, batch, aug in (("frozen", 32, "device"), ("frozen", 32, "cpu"), ("finetune", 32, "device"),
                             ("finetune", 32, "cpu"), ("finetune", 256, "auto")):
        kw = dict(arch="efficientnet_lite0", weights=weights, epochs=2, batch_size=batch, lr=0.01, progress=False,
                  device=str(dev), val_fraction=0.1, augment_on=aug)
        if smoke:  # the device path of the augmentation, on the CPU: tests it
            kw.update(image_size=32, workers=0, augment_on="device" if aug == "auto" else aug)
        m = train(d, mode, out / f"{mode}{batch}{aug}", **kw)
        h = m["history"][-1]
        rows.append((f"fne train {mode} (EfficientNet-Lite0 {weights}, batch {batch}, augment on "
                     f"{m.get('augment_on')}, {m.get('workers')} workers)", f"{h['img_s']:,.0f} img/s",
                     f"epoch 2 of {m['n_train']} images: {h['seconds']:.1f} s"))
    return rows


def head_rows(dev: torch.device, smoke: bool) -> list[tuple]:
    """The torch solver (fne.linear.solver) at the FNE paper's Food-101 size (issue 20: <= 60 s):
    `TorchHead("svm", C=1)` on 75,750 x 12,416 int8 FNE-like rows of 101 classes, drawn on the
    device by bench_fit's generator (a class lean plus noise, thresholded to {-1, 0, 1})."""
    from fne.linear.solver import TorchHead

    n, d, k = (1_000, 256, 10) if smoke else (75_750, 12_416, 101)
    g = torch.Generator(device=dev).manual_seed(0)
    y = torch.arange(n, device=dev) % k
    lean = 0.3 * torch.randn((k, d), generator=g, device=dev)
    X = torch.empty((n, d), dtype=torch.int8, device=dev)
    for s in range(0, n, 4096):
        z = lean[y[s:s + 4096]] + torch.randn((min(4096, n - s), d), generator=g, device=dev)
        X[s:s + 4096] = (z > 0.6).to(torch.int8) - (z < -0.6).to(torch.int8)
    X, y = X.cpu().numpy(), y.cpu().numpy()
    _sync(dev)
    t = time.perf_counter()
    head = TorchHead("svm", 1.0, device=str(dev)).fit(X, y)
    _sync(dev)
    secs = time.perf_counter() - t
    acc = float((head.predict(X[:4096]) == y[:4096]).mean())
    return [(f"linear head svm C=1, {n:,} x {d:,} int8 rows x {k} classes (torch solver on {dev.type})",
             f"{secs:.1f} s", f"{head.n_iter_} L-BFGS iterations, train accuracy {acc:.3f}")]


# ------------------------------------------------------------------------------ main


class _OutOfTime(Exception):
    pass


def _alarm(signum, frame):
    raise _OutOfTime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (tests the script)")
    ap.add_argument("--images", type=int, default=None, help="JPEGs to make (default 32,768; smoke 16)")
    ap.add_argument("--arch", default=None, help="torchvision backbone (default vgg16; smoke mobilenet_v3_small)")
    ap.add_argument("--precision", default=None, help="default bf16 on CUDA, fp32 in --smoke")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the table as JSON here, rewritten after each row "
                                                  "(default: $OUT/bench_gpu.json where $OUT is set)")
    ap.add_argument("--parts", default="all",
                    help="comma-separated parts to run (default all): images, forward, extract, rows, decode, "
                         "decoders, batches, hybrid, green, train, head, peer, pil, loaders, compile (--smoke: the --decode device row)")
    ap.add_argument("--budget", type=float, default=500.0,
                    help="seconds for the whole benchmark (default 500): a section that would end past it "
                         "is cut short and says so, the sections after it are skipped")
    a = ap.parse_args(argv)
    smoke = a.smoke
    global IN_PROCESS
    IN_PROCESS = smoke
    dev = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    n = a.images or (16 if smoke else 32_768)
    arch = a.arch or ("mobilenet_v3_small" if smoke else "vgg16")
    prec = a.precision or ("fp32" if dev.type == "cpu" else "bf16")
    batch = 8 if smoke else 256
    seconds = 0.5 if smoke else 4.0
    work = Path(a.work or tempfile.mkdtemp(prefix="bench_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    out_json = Path(a.json) if a.json else Path(os.environ["OUT"], "bench_gpu.json") if os.environ.get("OUT") else None
    table: list[tuple] = []
    stages: dict[str, dict] = {}  # each fne extract run's stage seconds, in a JSON file beside the table's
    t_all = time.perf_counter()
    deadline = t_all + a.budget

    def row(*r):
        table.append(tuple(str(x) for x in r))
        print(" | ".join(table[-1]), flush=True)
        if out_json is not None:  # what was measured comes back even if the run is cut short
            out_json.write_text(json.dumps(table, indent=1))
            out_json.with_name(out_json.stem + "_stages.json").write_text(json.dumps(stages, indent=1))

    def section(name: str, fn) -> bool:
        """Run one part of the table; a failure or the budget's end is a row, and the rest goes on."""
        left = deadline - time.perf_counter()
        if left < 5:
            row(name, "skipped", f"out of the {a.budget:.0f} s budget")
            return False
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(max(1, int(left)))
        global CHILD_TIMEOUT
        CHILD_TIMEOUT = left
        try:
            fn()
            return True
        except (_OutOfTime, subprocess.TimeoutExpired):
            row(name, "cut short", f"at the {a.budget:.0f} s budget")
        except Exception as e:  # noqa: BLE001 - the table goes on; the error is its row
            row(name, "failed", f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        return False

    rel = os.uname().release  # the same GPU's figures moved between hosts: say which one
    host = f"{_cpu_model()}, kernel {rel}{' (gVisor)' if rel.startswith('4.4.0') else ''}"
    if dev.type == "cuda":
        row("device", torch.cuda.get_device_name(dev), f"torch {torch.__version__}, {os.cpu_count()} cores, {host}")
    else:
        row("device", "cpu (no CUDA)" if not smoke else "cpu (--smoke)", f"torch {torch.__version__}, {host}")
    imgs = work / "images"
    wfile = work / f"{arch}.pth"
    weights = str(wfile)
    f: dict = {}

    def images():
        t = time.perf_counter()
        origin = make_images(imgs, n, 2 if smoke else 37) if not imgs.is_dir() else "reused"
        row("images", f"{n:,} JPEGs {JPEG_SIZE[0]}x{JPEG_SIZE[1]}", f"from {origin} in {time.perf_counter() - t:.1f} s")
        # Random weights, saved as a file: nothing downloads, the peer loads the same tensors, and
        # fne's weights-file path (memory-mapped, built on the meta device) is what gets timed.
        torch.save(backbones.load_backbone(arch, "random").state_dict(), wfile)

    def forward():
        f.update(forward_rows(arch, weights, dev, prec, batch, seconds))
        row(f"bare forward {arch} {prec}, batch {batch}", f"{f['bare']:,.0f} img/s", f"load {f['load_s']:.2f} s")
        row(f"tap model (hooks + pooling), batch {batch}", f"{f['tap']:,.0f} img/s",
            f"{f['tap'] / f['bare']:.2f} of bare")

    def extract_run(i: int, name: str, kw: dict, rerun: bool = False, hook: str | None = None):
        def run():
            cache = work / f"cache{i}"
            shutil.rmtree(cache, ignore_errors=True)
            r, wall, cpu = fne_extract(imgs, cache, arch, weights, hook, precision=prec, **kw)
            stages[name] = r.get("stages", {})
            of_tap = f" ({r['steady'] / f['tap']:.2f} of tap model)" if f.get("tap") else ""
            row(name, f"run {r['img_s']:,.0f} img/s, steady {r['steady']:,.0f}{of_tap}",
                f"wall {wall:.1f} s incl. start, {cpu:.0f} CPU-s, model load {r['load']:.2f} s "
                f"+ warm-up {stages[name].get('warm_up', 0.0):.2f} s ({stages[name].get('model_wait', 0.0):.2f} s "
                f"of them waited for), "
                f"{100 * r['wait']:.0f}% of the run waiting on the reader")
            if rerun:
                r, wall, _ = fne_extract(imgs, cache, arch, weights, precision=prec)
                row("rerun, everything cached", f"{r['cached']:,} cached, {r['n']} computed", f"wall {wall:.1f} s")
        return run

    def peer_run():
        r, wall, cpu = peer(imgs, work / "peer.npy", arch, wfile, batch if dev.type == "cuda" else 8, prec)
        row(f"peer: ImageFolder + DataLoader ({os.cpu_count()} workers) + hooks + np.save",
            f"run {r['img_s']:,.0f} img/s", f"wall {wall:.1f} s incl. start, {cpu:.0f} CPU-s")

    def rows_of(fn, *args, **kw):
        def run():
            for r in fn(*args, **kw):
                row(*r)
        return run

    from fne.devices import default_workers, device_decoder

    workers = 1 if smoke else default_workers(dev)
    source = next((root for root in SOURCES if root.is_dir()), None)
    train_log = io.StringIO()  # fne train's own lines (a 3 kB list of imported tensors each) stay out of the table

    def training():
        with contextlib.redirect_stdout(train_log):
            got = train_rows(imgs, 16 if smoke else 4096, dev, smoke, work / "train")
        for r in got:
            row(*r)

    # In order of what the goals need: the forward and fne's defaults first, the compile row last
    # (it may take minutes). On CUDA the defaults are batch 256 and nvjpeg decoding, on a CPU PIL's.
    jpegs = lambda: sorted(imgs.rglob("*.jpg"))  # noqa: E731
    parts = [("images", "images", images), ("forward", "forward", forward),
             ("extract", "fne extract, defaults", extract_run(0, "fne extract, defaults", {}, rerun=True)),
             ("rows", "CUDA vs CPU rows", rows_of(lambda: device_rows(arch, weights, jpegs()[: (8 if smoke else 64)],
                                                                      dev, smoke))),
             ("decode", "decode rows", rows_of(lambda: decode_rows(jpegs(), dev, batch, seconds))),
             ("decode", "decode beside the forward", rows_of(lambda: contention_rows(jpegs(), arch, weights, dev, prec,
                                                                                     batch, seconds))),
             ("decoders", "device decoders", rows_of(lambda: decoder_rows(jpegs(), arch, weights, dev, prec, batch,
                                                                          seconds))),
             ("decoders", "fne extract, nvImageCodec decoder", extract_run(
                 4, "fne extract, nvImageCodec decoder (high priority, fancy upsampling; benchmark hook)",
                 {} if dev.type == "cuda" else {"batch_size": batch, "decode": "device"}, hook="nvimgcodec")
              if _has_nvimgcodec() else lambda: None),
             ("decoders", "fne extract, torchvision's decoder", extract_run(
                 5, "fne extract, torchvision's decoder (TorchCodec's is the default where installed)",
                 {} if dev.type == "cuda" else {"batch_size": batch, "decode": "device"}, hook="torchvision")
              if device_decoder() == "torchcodec" else lambda: None),
             *[("batches", f"--batch-size {b}", extract_run(
                 9 + k, f"fne extract --batch-size {b}, decode calls of up to {b // 4}M pixels (benchmark hook)",
                 {"batch_size": b} if dev.type == "cuda" else {"batch_size": b // 64, "decode": "device"},
                 hook=f"pixels:{b << 18}")) for k, b in enumerate((512, 1024))],
             *[("hybrid", f"hybrid {p}", extract_run(
                 6 + k, f"fne extract, {p} % of the JPEGs decoded by PIL in the workers, the rest on the device "
                        f"(benchmark hook)", {} if dev.type == "cuda" else {"batch_size": batch, "decode": "device"},
                 hook=f"hybrid:{p}")) for k, p in enumerate((30, 45, 60))],
             *[("green", f"green {n}", extract_run(
                 12 + k, f"fne extract, the forward on {n} of the GPU's multiprocessors (green context; benchmark hook)",
                 {} if dev.type == "cuda" else {"batch_size": batch, "decode": "device"}, hook=f"green:{n}"))
               for k, n in enumerate(green_counts(dev))],
             *([] if green_counts(dev) else [("green", "green", lambda: row("green context", "CUDA only", ""))]),
             ("train", "fne train", training),
             ("head", "linear head", rows_of(head_rows, dev, smoke)),
             ("peer", "peer", peer_run),
             ("pil", "--decode pil", extract_run(1, "--decode pil (PIL decodes in the workers; on a GPU fast in float64 "
                                                    "it resizes, exactly as PIL)", {"decode": "pil"})),
             ("pil", "--decode pil, resized in the workers", extract_run(
                 14, "--decode pil, resized in the workers (benchmark hook: as before 29 Nov)", {"decode": "pil"},
                 hook="workers-resize")),
             ("loaders", "loader rows", rows_of(loader_rows, imgs, 16 if smoke else 8192, dev, workers))]
    if source is not None:  # a real dataset's own JPEGs: mixed sizes (pets37: ~90 in 256)
        parts.append(("loaders", f"loader rows ({source.name})", rows_of(
            loader_rows, source, 16 if smoke else 8192, dev, workers, f" ({source.resolve().name}'s JPEGs)")))
    if smoke:  # on a CPU the defaults are PIL's: the device decode gets its own row
        parts.append(("compile", "--decode device", extract_run(2, f"--batch-size {batch} --decode device",
                                                                {"batch_size": batch, "decode": "device"})))
    else:  # a CPU compile takes minutes
        parts.append(("compile", "--compile on", extract_run(3, "--compile on", {"compile": True})))
    keys = list(dict.fromkeys(k for k, _, _ in parts))
    chosen = keys if a.parts == "all" else a.parts.split(",")
    if set(chosen) - set(keys):
        ap.error(f"--parts: unknown {', '.join(sorted(set(chosen) - set(keys)))}; choose from {', '.join(keys)}")
    if set(chosen) - {"forward", "head"}:
        chosen.append("images")  # every other part reads the images
    for key, name, fn in parts:
        if key not in chosen:
            continue
        if not section(name, fn) and key in ("images", "forward") and not imgs.is_dir():
            break  # nothing to measure without the images
    row("total", f"{time.perf_counter() - t_all:.0f} s", "")

    print("\n| what | figure | notes |\n|---|---|---|")
    for r in table:
        print("| " + " | ".join(r) + " |")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
