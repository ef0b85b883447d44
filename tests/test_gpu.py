"""The GPU stage (issue 19): CUDA checks that skip without CUDA, and the GPU benchmark's --smoke.

The CUDA tests compare EfficientNet-Lite0's rows against CPU fp32 rows by the largest difference
over the largest value of each tap, within twice what two runs on an H200 measured (28 Nov 2026;
the worst tap): fp32 (TF32 convolutions) < 2e-3, fp16 2.2e-3, bf16 2.0e-2 and 4.1e-2 (the
convolution algorithms differ between runs). nvjpeg's hardware decoder is another JPEG decoder:
it changed 48 % of flowers12's pixels by 0.9 on average (up to 42 levels, chroma edges), and the
fp32 rows by up to 7.0 % (bf16: 8.2 %), every row at cosine >= 0.997 to the PIL rows. (VGG-16's
rows move less: 1.1e-3, 1.1e-3, 8.6e-3, and 1.9e-2 with device decoding; bench_gpu.py.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fne.backbones import registry as backbones
from fne.devices import default_batch_size, resolve_batch_size
from fne.errors import FneError

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- runs anywhere


def test_default_batch_size_follows_the_device_and_its_free_memory():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert default_batch_size(cpu) == 32
    assert default_batch_size(gpu, free_bytes=80 * 2**30) == 256
    small = default_batch_size(gpu, free_bytes=2 * 2**30)  # a 2 GiB corner of a shared GPU
    assert 1 <= small < 256 and small & (small - 1) == 0
    assert default_batch_size(gpu, 448, "fp32", free_bytes=8 * 2**30) < default_batch_size(gpu, free_bytes=8 * 2**30)
    assert default_batch_size(gpu, free_bytes=0) == 1
    # half of 8 GiB holds 170 views of 24 MiB: 128 images of one view, 16 of ten (ten-crop)
    assert default_batch_size(gpu, free_bytes=8 * 2**30) == 128
    assert default_batch_size(gpu, free_bytes=8 * 2**30, views=10) == 16
    assert resolve_batch_size(None, cpu) == resolve_batch_size("auto", cpu) == 32
    assert resolve_batch_size(7, gpu) == 7
    for bad in (0, -3, "x", 2.5):
        with pytest.raises(FneError, match="bad batch_size="):
            resolve_batch_size(bad, cpu)


def test_cli_batch_size_auto_is_the_default_and_bad_values_are_one_line(tmp_path, capsys):
    from fne.cli import main

    with pytest.raises(SystemExit):
        main(["extract", "digits", "--batch-size", "many"])
    assert "argument --batch-size: an integer or auto, not 'many'" in capsys.readouterr().err
    assert main(["extract", "digits", "--batch-size", "0", "--cache", str(tmp_path),
                 "--arch", "efficientnet_lite0", "--weights", "random"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad --batch-size 0" in err and "\n" not in err


def test_torchrun_ranks_take_the_gpus_in_turn_and_a_missing_gpu_is_one_line(monkeypatch):
    """More ranks than GPUs (torchrun --nproc-per-node 2 on one H200 failed with "invalid device
    ordinal"): rank k runs on cuda:(k mod GPUs); an explicit cuda:i the machine lacks is an error
    naming --device."""
    from fne.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for rank, want in (("0", "cuda:0"), ("1", "cuda:1"), ("2", "cuda:0"), ("5", "cuda:1")):
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert resolve_device("auto") == torch.device(want)
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("auto") == torch.device("cuda:0") and resolve_device("cuda:1").index == 1
    with pytest.raises(FneError, match=r"device='cuda:2': this machine has 2 CUDA devices \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(FneError, match=r"has 1 CUDA device \(cuda:0\)$"):
        resolve_device("cuda:1")


def test_random_weights_are_drawn_on_the_device_and_keyed_by_it():
    a = backbones.load_backbone("efficientnet_lite0", "random", seed=3, device="cpu")
    b = backbones.load_backbone("efficientnet_lite0", "random", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert backbones.fingerprint("vgg16", "random", 3) == "random-seed3"  # CPU keys unchanged
    assert backbones.fingerprint("vgg16", "random", 3, "cuda132x2048") == "random-seed3-cuda132x2048"
    assert backbones.fingerprint("vgg16", "imagenet", 3, "cuda132x2048") == backbones.fingerprint("vgg16", "imagenet")


def test_random_weights_drawn_on_gpus_of_other_geometries_are_keyed_apart(monkeypatch, tmp_path):
    """torch's CUDA generator sizes its grid from the SM count and threads per SM, so one seed
    draws other numbers on a GPU of another geometry: the store key names it, and rows of two
    such GPUs never share a store; other weights' keys name no device."""
    from types import SimpleNamespace

    from fne import devices
    from fne.cache.spec import StoreSpec

    cuda = torch.device("cuda")
    geometry = {"sm": 132, "threads": 2048}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(
        multi_processor_count=geometry["sm"], max_threads_per_multi_processor=geometry["threads"]))
    monkeypatch.setattr(devices, "resolve_device", lambda d="auto": cuda if d != "cpu" else torch.device("cpu"))
    assert devices.random_draw(cuda) == "cuda132x2048" and devices.random_draw(torch.device("cpu")) == "cpu"
    spec = StoreSpec(arch="vgg16", weights="random", cache=str(tmp_path), device="cuda")
    h200 = spec.fingerprint()
    geometry.update(sm=40, threads=1024)  # a T4
    assert h200 == "random-seed0-cuda132x2048" and spec.fingerprint() == "random-seed0-cuda40x1024"
    assert StoreSpec(arch="vgg16", weights="random", cache=str(tmp_path), device="cpu").fingerprint() == "random-seed0"
    assert StoreSpec(arch="vgg16", cache=str(tmp_path), device="cuda").fingerprint() == "imagenet-vgg16-397923af"


def test_weights_file_is_read_to_the_device_without_a_random_init(tmp_path, monkeypatch):
    sd = backbones.load_backbone("efficientnet_lite0", "random", seed=5).state_dict()
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    calls = []
    real = torch.nn.init.kaiming_uniform_
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_",
                        lambda *a, **k: calls.append((a[0] if a else k["tensor"]).device.type) or real(*a, **k))
    m = backbones.load_backbone("efficientnet_lite0", str(path), device="cpu")
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    assert not any(t.is_meta for t in m.parameters())
    assert set(calls) <= {"meta"}  # built on the meta device: no initialisation thrown away


def test_auto_precision_and_batch_on_a_cuda_device_ask_that_device(monkeypatch):
    """`auto` on CUDA: bf16 where the GPU runs it natively (Ampere on), else fp16: a T4 or V100
    emulates bf16, which torch's is_bf16_supported() counts by default (was: bf16 there). Both
    are asked of the GPU the run uses (cuda:1), not of the current one. CUDA is faked: runs on a CPU."""
    import contextlib

    from fne.devices import resolve_precision

    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: asked.append(d) or (8 * 2**30, 80 * 2**30))
    assert default_batch_size(torch.device("cuda:1")) == 128 and asked == [torch.device("cuda:1")]
    current = []

    @contextlib.contextmanager
    def on(d):  # torch.cuda.device: the current device within
        current.append(d)
        yield

    monkeypatch.setattr(torch.cuda, "device", on)
    for native, want in ((True, "bf16"), (False, "fp16")):  # an H200; a T4
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True, native=native: native or including_emulation)
        current.clear()
        assert resolve_precision("auto", torch.device("cuda:1")) == want and current == [torch.device("cuda:1")]
        assert resolve_precision("fp32", torch.device("cuda:1")) == "fp32"


def test_random_weights_whose_init_cannot_run_on_the_device_are_drawn_on_the_cpu_and_moved():
    """`seeded_build` off the CPU: a model whose init code fails on the device (the meta device
    stands in for a GPU here) is initialised on the CPU from the same seed, then moved."""
    drawn = []

    def build():
        if torch.get_default_device().type != "cpu":
            raise NotImplementedError("this init needs the CPU")
        m = torch.nn.Linear(4, 3)
        drawn.append(m.weight.detach().clone())
        return m

    cpu = backbones.seeded_build(build, 11, torch.device("cpu"))
    before = torch.get_rng_state()
    moved = backbones.seeded_build(build, 11, torch.device("meta"))
    assert moved.weight.is_meta and len(drawn) == 2 and torch.equal(drawn[1], cpu.weight)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator untouched


def _bench_gpu():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_gpu


def test_bench_gpu_smoke_prints_every_row(tmp_path, capsys):
    """`benchmarks/bench_gpu.py --smoke`: every row of the GPU table, on CPU at tiny sizes."""
    pytest.importorskip("efficientnet_lite_pytorch")
    bench_gpu = _bench_gpu()
    out = tmp_path / "table.json"
    assert bench_gpu.main(["--smoke", "--work", str(tmp_path / "w"), "--json", str(out)]) == 0
    rows = {r[0]: r for r in json.loads(out.read_text())}
    names = list(rows)
    for want in ("images", "bare forward", "tap model", "fne extract, defaults", "rerun, everything cached",
                 "--decode device", "peer: ImageFolder", "rows on cpu fp32 vs CPU fp32",
                 "rows on cpu bf16 + decode device", "fne train frozen", "fne train finetune",
                 "linear head svm C=1", "decode 8 JPEGs on cpu (uniform", "fne train loader alone, decode",
                 "decode 8 JPEGs on cpu: alone / while the tap model runs", "augment on cpu", "augment on device",
                 "decoder: torchvision libjpeg-turbo (fne's decode_jpegs)", "forward while the decoders ran"):
        assert any(n.startswith(want) or want in n for n in names), want
    if any(root.is_dir() for root in bench_gpu.SOURCES):  # a dataset's own JPEGs, of mixed sizes
        assert any(n.startswith("fne train loader alone (") for n in names)
        assert any(n.startswith("decode 8 JPEGs on cpu (mixed") for n in names)
    assert rows["rerun, everything cached"][1].startswith("16 cached, 0 computed")
    assert rows["rows on cpu fp32 vs CPU fp32"][1] == "0.0e+00"
    head = next(r for n, r in rows.items() if n.startswith("linear head svm C=1"))
    assert float(head[1].rstrip(" s")) > 0 and float(head[2].split("train accuracy ")[1]) > 0.5
    peer = np.load(tmp_path / "w" / "peer.npy")
    b = backbones.get("mobilenet_v3_small", "random")
    assert peer.shape == (16, sum(t.channels for t in b.taps))  # the same taps, one row per image
    shared = rows["decode 8 JPEGs on cpu: alone / while the tap model runs"]
    assert all(float(v.replace(",", "")) > 0 for v in shared[1].removesuffix(" img/s").split(" / "))
    assert "the forward meanwhile" in shared[2] and not shared[2].endswith(" 0 img/s")
    # on the CPU torchvision and Pillow decode with libjpeg-turbo alike
    assert rows["decoder: torchvision libjpeg-turbo (fne's decode_jpegs)"][2].startswith("vs PIL: 0.0% of values changed")
    # --parts: only what is asked for (the images where a part reads them)
    assert bench_gpu.main(["--smoke", "--work", str(tmp_path / "w"), "--json", str(out), "--parts", "head"]) == 0
    assert [r[0].split(",")[0] for r in json.loads(out.read_text())] == ["device", "linear head svm C=1", "total"]
    assert bench_gpu.main(["--smoke", "--work", str(tmp_path / "w"), "--json", str(out), "--parts", "extract"]) == 0
    assert [r[0] for r in json.loads(out.read_text())][1:4] == ["images", "fne extract, defaults",
                                                                "rerun, everything cached"]
    with pytest.raises(SystemExit):
        bench_gpu.main(["--smoke", "--parts", "extrct"])


def test_bench_gpu_brings_back_what_it_measured_when_a_part_fails_or_time_runs_out(tmp_path, monkeypatch):
    """One try on a lent GPU: a part that fails is a row saying why, a part past `--budget` is
    skipped, and the table is in $OUT/bench_gpu.json after every row."""
    bench_gpu = _bench_gpu()
    monkeypatch.setenv("OUT", str(tmp_path))

    def no_images(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bench_gpu, "make_images", no_images)
    assert bench_gpu.main(["--smoke", "--work", str(tmp_path / "w")]) == 0
    rows = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert ["images", "failed", "RuntimeError: disk full"] in rows
    assert rows[-1][0] == "total" and not any(r[0] == "forward" for r in rows)  # nothing to measure without images
    (tmp_path / "w2" / "images").mkdir(parents=True)  # images there: the parts after them are tried
    assert bench_gpu.main(["--smoke", "--work", str(tmp_path / "w2"), "--budget", "0"]) == 0
    rows = json.loads((tmp_path / "bench_gpu.json").read_text())
    skipped = [r[0] for r in rows if r[1] == "skipped"]
    assert skipped[:3] == ["images", "forward", "fne extract, defaults"] and "--decode pil" in skipped
    assert all(r[2] == "out of the 0 s budget" for r in rows if r[1] == "skipped")


def test_prof_extract_profiles_every_run(tmp_path, capsys):
    """`benchmarks/prof_extract.py` (where the device path's time went on the H200), on CPU at
    tiny sizes: each run's profile names the main thread, the reruns find every row cached, the
    fresh process reports its import times without starting CUDA, and the fresh command's wall
    is cut into its phases."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import prof_extract
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "prof.txt"
    assert prof_extract.main(["--images", "24", "--arch", "mobilenet_v3_small", "--precision", "fp32",
                              "--work", str(tmp_path / "w"), "--out", str(out)]) == 0
    text = out.read_text()
    for run in ("defaults", "high-priority", "ahead4", "pil"):
        assert f"== {run}: " in text and f"== {run}: wall" in text
    assert "computed 24, cached 0" in text and "== rerun: " in text and "computed 0, cached 24" in text
    assert text.count("-- MainThread: ") == 5
    fresh = json.loads(text.split("== fresh-rerun: ")[1].splitlines()[0])
    assert fresh["cached"] == 24 and fresh["computed"] == 0 and fresh["cuda initialised"] is False
    assert fresh["import torch s"] > 0 and fresh["torchvision imported by the rerun"] is True  # a torchvision arch
    wall = text.split("== fresh: ")[1].splitlines()[0]  # the command's wall, cut into its phases
    assert wall.startswith("wall ") and "for 24 images: interpreter start" in wall and "end (after the verb" in wall
    assert "batch 32, a CUDA context as the workers forked: no" in wall  # a CPU: no context, its batch
    given = text.split("== fresh-given-batch: ")[1].splitlines()[0]  # --batch-size as fresh chose it
    assert given.startswith("wall ") and "batch 32, a CUDA context as the workers forked: no" in given


# ---------------------------------------------------------------- CUDA only


def _jpegs(n: int = 16) -> list[Path]:
    for root in (ROOT / "../shared/datasets/flowers12", ROOT / ".gpu-kit/flowers12", ROOT / ".gpu-kit/pets37"):
        files = sorted(root.rglob("*.jpg"))[:n]
        if files:
            return files
    pytest.skip("no flowers12 or pets37 JPEGs")


def _close(rows, ref, tol: float) -> None:
    """Each tap: no NaN, and its largest difference over its largest value below `tol`."""
    for a, b in zip(rows, ref):
        a, b = torch.as_tensor(a).float().cpu(), torch.as_tensor(b).float().cpu()
        assert not torch.isnan(a).any()
        assert float((a - b).abs().max() / b.abs().max()) < tol


@cuda
@pytest.mark.parametrize("precision, tol", [("fp32", 2e-3), ("fp16", 5e-3), ("bf16", 8e-2)])
def test_taps_on_cuda_match_cpu_fp32(precision, tol):
    from fne.cache.spec import StoreSpec
    from fne.data.datasets import read_image
    from fne.extraction import taps

    spec = StoreSpec(arch="efficientnet_lite0", weights="imagenet")
    x = torch.stack([spec.preprocess()(read_image(f))[0] for f in _jpegs()])
    cpu, dev = torch.device("cpu"), torch.device("cuda")
    ref = taps.forward(taps.build_tap_model(spec, cpu), x, cpu, "fp32")[1]
    got = taps.forward(taps.build_tap_model(spec, dev), x.to(dev), dev, precision)[1]
    _close(got, ref, tol)


@cuda
def test_device_decode_matches_pil_and_its_rows_stay_close():
    from fne.cache.spec import StoreSpec
    from fne.data.datasets import read_image
    from fne.extraction import reader, taps

    spec = StoreSpec(arch="efficientnet_lite0", weights="imagenet")
    prep, files, dev = spec.preprocess(), _jpegs(), torch.device("cuda")
    pil = torch.stack([prep(read_image(f))[0] for f in files])
    raw = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    got = reader.decode_raw(raw, dev, prep)
    assert not any(isinstance(g, str) for g in got)
    dec = torch.stack([g[0] for g in got]).cpu()
    diff = (dec.int() - pil.int()).abs()
    assert diff.float().mean() < 2.0 and diff.max() <= 64  # rounding and chroma upsampling only
    cpu = torch.device("cpu")
    ref = taps.forward(taps.build_tap_model(spec, cpu), pil, cpu, "fp32")[1]
    rows = taps.forward(taps.build_tap_model(spec, dev), dec.to(dev), dev, "bf16")[1]
    _close(rows, ref, 0.15)  # another decoder: see the module doc


@pytest.mark.parametrize("name, capability, fast", [
    ("NVIDIA H100 80GB HBM3", (9, 0), True), ("NVIDIA H200", (9, 0), True), ("NVIDIA A100-SXM4-80GB", (8, 0), True),
    ("NVIDIA H800", (9, 0), False), ("NVIDIA H20", (9, 0), False), ("NVIDIA GeForce RTX 4090", (8, 9), False),
    ("NVIDIA L4", (8, 9), False), ("NVIDIA A10G", (8, 6), False), ("Tesla V100-SXM2-16GB", (7, 0), True)])
def test_the_gpu_resizes_pil_decoded_images_only_where_it_is_fast_in_float64(monkeypatch, name, capability, fast):
    """`resize_on_device`: by compute capability (the data-centre parts), less the export parts of
    9.0 that run float64 at gaming rates (known by name); never off CUDA."""
    from fne import devices

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert devices.resize_on_device(torch.device("cuda")) is fast
    assert devices.resize_on_device(torch.device("cpu")) is False


@cuda
def test_pil_decoding_with_the_resize_on_cuda_feeds_the_pixels_of_the_workers_resize(tmp_path, monkeypatch):
    """`--decode pil` on a GPU fast in float64 (`resize_on_device`): the workers decode, the GPU
    resizes in float64, and the network sees exactly the pixels of the workers' own resize."""
    import fne.extraction.extract as fx
    from fne import devices
    from fne.extraction.taps import TapRunner

    if not devices.resize_on_device(torch.device("cuda")):
        pytest.skip("this GPU resizes in its workers (slow float64)")
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    for f in _jpegs(24):
        (data / f.name).write_bytes(f.read_bytes())
    fed, real_call = [], TapRunner.__call__
    monkeypatch.setattr(TapRunner, "__call__", lambda self, x: (fed.append(x.cpu()), real_call(self, x))[1])
    runs = []
    for where in (True, False):
        monkeypatch.setattr(fx, "resize_on_device", lambda dev, where=where: where)
        fx.extract(data.parent, arch="efficientnet_lite0", weights="random", cache=str(tmp_path / f"c{where}"),
                   decode="pil", batch_size=8, workers=2, progress=False)
        runs.append(torch.cat(fed))
        fed[:] = []
    assert runs[0].shape[0] == 24 and torch.equal(runs[0], runs[1])


@cuda
def test_torchvisions_jpeg_operators_decode_on_cuda_as_torchvision_io_does(monkeypatch):
    """The batched nvjpeg call made through torchvision's operators, without its import
    (`devices.jpeg_ops`), gives torchvision.io's pixels."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    from fne import devices

    dev = torch.device("cuda")
    raw = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in _jpegs()]
    assert devices.jpeg_ops()
    monkeypatch.setattr(devices, "_torchcodec", lambda: False)  # torchvision's, where TorchCodec is installed
    got = devices.decode_jpegs_rgb(raw, dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = decode_jpeg(raw, mode=ImageReadMode.RGB, device=dev)
    assert len(got) == len(expected) == len(raw)
    assert all(g.device == e.device and torch.equal(g, e) for g, e in zip(got, expected, strict=True))


@cuda
def test_torchcodec_decodes_on_cuda_on_the_callers_stream_close_to_pil():
    """TorchCodec's batched nvJPEG call (`device_decoder` "torchcodec") gives images of PIL's
    shapes on the device, each close to PIL's on average (nvjpeg upsamples chroma its own way:
    see the module doc), also when called on a stream of fne's own (the reader's decode stage)."""
    pytest.importorskip("torchcodec")
    from PIL import Image

    from fne import devices

    dev = torch.device("cuda")
    files = _jpegs()
    raw = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    assert devices.device_decoder() == "torchcodec"
    side = torch.cuda.Stream(dev)
    with torch.cuda.stream(side):
        got = devices.decode_jpegs_rgb(raw, dev)
        side.synchronize()
    for g, f in zip(got, files, strict=True):
        pil = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
        assert g.device.type == "cuda" and g.shape == pil.shape
        assert (g.cpu().int() - pil.int()).abs().float().mean() < 2.0


@cuda
def test_batched_resize_on_cuda_gives_the_cpus_pixels():
    """`resample` on CUDA (fp32 matmuls, pinned uploads) against the same call on CPU tensors:
    every view and every box within one rounding step (float32 sums in another order); and
    unchanged where the process asked for TF32 matmuls."""
    from fne.backbones.preprocess import Preprocess
    from fne.backbones.resample import resize_boxes, resize_views

    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
            for w, h in [(450, 313), (313, 450), (640, 427), (37, 61), (1000, 150)]]
    dev = torch.device("cuda")
    for crop in ("center", "ten"):
        prep = Preprocess(224, crop, interpolation="bicubic")
        a, b = resize_views(imgs, prep), resize_views([i.to(dev) for i in imgs], prep).cpu()
        assert (a.int() - b.int()).abs().max() <= 1
        before = torch.get_float32_matmul_precision()
        try:  # a process that asked for TF32 matmuls: the same pixels (the products run at "highest")
            torch.set_float32_matmul_precision("high")
            assert torch.equal(resize_views([i.to(dev) for i in imgs], prep).cpu(), b)
        finally:
            torch.set_float32_matmul_precision(before)
    boxes = np.array([[10.5, 20.25, 300.0, 290.5]] * len(imgs)) * 0.1
    flip = np.array([True, False, True, False, True])
    a, b = resize_boxes(imgs, boxes, flip, 32), resize_boxes([i.to(dev) for i in imgs], boxes, flip, 32).cpu()
    assert (a - b).abs().max() <= 1 and ((a - b).abs() > 0).float().mean() < 0.05


@cuda
def test_train_one_epoch_on_cuda_with_device_augmentation(tmp_path):
    from fne.data.datasets import load_dataset
    from fne.training.train import train

    d = load_dataset("digits")
    d = d.subset(np.arange(200))
    m = train(d, "finetune", tmp_path / "run", arch="efficientnet_lite0", weights="random", epochs=1,
              image_size=64, progress=False, device="cuda", augment_on="device")
    assert m["device"].startswith("cuda") and m["augment_on"] == "device"
    assert m["history"][0]["img_s"] > 0 and 0 <= m["accuracy"] <= 1
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["_fc.weight"].device.type == "cpu"


@cuda
def test_the_model_warms_up_beside_the_reader_and_changes_no_row():
    """On CUDA `TapRunner.prepare` also runs the model once on zeros (on thread fne-model), so
    the first call finds its one-time set-up done; the rows are those of a model built in line."""
    from fne.cache.spec import StoreSpec
    from fne.extraction.taps import TapRunner

    spec = StoreSpec(arch="efficientnet_lite0", weights="random", precision="fp32", storage_dtype="float32")
    dev = torch.device("cuda")
    x = torch.randint(0, 256, (4, 1, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(dev)
    warm, cold = (TapRunner(spec, dev, "fp32", torch.float32, batch_size=4) for _ in range(2))
    warm.prepare()  # cold builds on its first call, in line: no forward on zeros there
    (a, done_a), (b, done_b) = warm(x), cold(x)
    done_a.synchronize()
    done_b.synchronize()
    assert warm.warm_up > 0 and cold.warm_up == 0 and a.shape == b.shape == (4, 1, spec.backbone().dim)
    _close([a.reshape(4, -1)], [b.reshape(4, -1)], 2e-3)  # cuDNN may pick other (TF32) algorithms


@cuda
def test_extract_and_train_read_jpeg_bytes_through_pinned_workers_on_cuda(tmp_path):
    """The whole device path: loader workers pack JPEG bytes, the batch is pinned, nvjpeg decodes
    it; extraction rows stay close to the PIL rows, and a training epoch runs on them."""
    device_path_end_to_end(tmp_path, "cuda")


def device_path_end_to_end(tmp_path: Path, device: str) -> None:
    import shutil

    from fne.cache.store import Store
    from fne.data.datasets import load_dataset
    from fne.extraction.extract import extract
    from fne.training.train import train

    for j, f in enumerate(_jpegs(24)):
        dest = tmp_path / "data" / f"c{j % 2}" / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    data = tmp_path / "data"
    kw = dict(arch="efficientnet_lite0", weights="imagenet", cache=str(tmp_path / "cache"), precision="fp32",
              storage_dtype="float32", workers=2, batch_size=8, progress=False)
    dev = extract(data, decode="device", device=device, **kw)
    pil = extract(data, decode="pil", device="cpu", **kw)
    assert dev.n_computed == pil.n_computed == 24 and dev.n_skipped == 0 and "devjpeg" in dev.store
    keys = load_dataset(data).keys()
    last = backbones.get("efficientnet_lite0").taps[-1].name
    a, b = (Store.at(r.store).read(keys, [last])[last] for r in (dev, pil))
    _close([a], [b], 0.15)  # nvjpeg: another decoder (module doc)
    m = train(data, "frozen", tmp_path / "run", arch="efficientnet_lite0", weights="imagenet", epochs=1,
              image_size=64, progress=False, device=device, workers=2, batch_size=8, augment_on="device")
    assert m["augment_on"] == "device" and m["history"][0]["img_s"] > 0 and not m["skipped"]


def _noise_jpeg(seed: int, h: int = 256, w: int = 256) -> torch.Tensor:
    from torchvision.io import encode_jpeg

    g = torch.Generator().manual_seed(seed)
    return encode_jpeg(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), quality=90)


@cuda
def test_device_decoding_does_not_write_memory_that_queued_work_still_reads():
    """pytorch/vision#9606: nvjpeg's hardware decoder writes its outputs without waiting for the
    work queued on the caller's stream, into memory the caching allocator may have just taken
    back from that work. `decode_jpegs` waits for the stream first. A stalled stream queues a
    sum over buffers of the decoded images' size, frees them, then decodes: the sums must hold."""
    from fne.extraction.reader import decode_jpegs

    dev = torch.device("cuda")
    raw = [_noise_jpeg(i) for i in range(4)]
    for _ in range(20):
        victims = [torch.ones(3 * 256 * 256, dtype=torch.uint8, device=dev) for _ in raw]
        torch.cuda._sleep(20_000_000)  # the stream stalls; what follows waits behind it
        sums = [v.sum(dtype=torch.int64) for v in victims]
        del victims  # free for the next allocations of their size on this stream
        decoded = decode_jpegs(raw, dev)
        assert [int(s) for s in sums] == [3 * 256 * 256] * len(raw)
        assert all(d is not None and d.shape == (3, 256, 256) for d in decoded)


@cuda
def test_results_made_ahead_on_their_own_stream_equal_those_made_in_line():
    """`Ahead` on CUDA: the thread decodes on a stream of its own; the consumer's stream
    waits for each result, and its memory is not handed back while the consumer still reads it
    (here a stalled stream, then the results freed): the same pixels as in line, every time."""
    from fne.backbones.preprocess import Preprocess
    from fne.extraction import reader
    from fne.extraction.ahead import Ahead

    dev, prep = torch.device("cuda"), Preprocess(224, "center")
    batches = [[_noise_jpeg(8 * b + i, 200 + 16 * i, 300 - 8 * i) for i in range(8)] for b in range(12)]
    inline = [torch.stack(reader.decode_raw(raw, dev, prep)).cpu() for raw in batches]
    ahead = Ahead(batches, lambda raw: torch.stack(reader.decode_raw(raw, dev, prep)), 2, dev)
    got = []
    for x in ahead:
        torch.cuda._sleep(20_000_000)  # the consumer's stream lags behind the thread
        got.append(x.sum(dim=(1, 2, 3, 4), dtype=torch.int64))  # read after the stall; `x` is freed meanwhile
        del x
    ahead.close()
    assert len(got) == len(inline)
    # exact sums (float32 sums of 150,528 pixels differ between CPU and GPU summation orders)
    assert all(torch.equal(g.cpu(), b.sum(dim=(1, 2, 3, 4), dtype=torch.int64)) for g, b in zip(got, inline))


@cuda
def test_the_reader_stages_on_their_own_streams_give_what_in_line_gives(monkeypatch):
    """`reader.assembled` on CUDA: JPEGs decoded on one thread and stream, resized on another
    (a batch in several decode runs here), the consumer's stream lagging behind both: the same
    pixels as in line, every time."""
    from fne.backbones.preprocess import Preprocess
    from fne.extraction import reader

    monkeypatch.setattr(reader, "DECODE_PIXELS", 3 * 256 * 256)  # runs of three images or so
    dev, prep = torch.device("cuda"), Preprocess(224, "center")
    batches = []
    for b in range(12):
        sizes = [(300 - 8 * i, 200 + 16 * i) for i in range(8)]  # (width, height)
        jpegs = [bytes(_noise_jpeg(8 * b + i, h, w).numpy()) for i, (w, h) in enumerate(sizes)]
        batches.append(reader.collate([(8 * b + i, str(8 * b + i), reader.Jpeg.of(d, s), None, None)
                                       for i, (d, s) in enumerate(zip(jpegs, sizes, strict=True))]))
    inline = [x.cpu() for _, (x, _, _), _ in reader.assembled(batches, dev, prep, ahead=0)]
    ahead = reader.assembled(batches, dev, prep, ahead=2)
    got = []
    for _, (x, idx, _), bad in ahead:
        assert len(idx) == 8 and not bad
        torch.cuda._sleep(20_000_000)  # the consumer's stream lags behind the threads
        got.append(x.sum(dim=(1, 2, 3, 4), dtype=torch.int64))  # read after the stall; `x` is freed meanwhile
        del x
    ahead.close()
    assert len(got) == len(inline) == 12
    assert all(torch.equal(g.cpu(), b.sum(dim=(1, 2, 3, 4), dtype=torch.int64)) for g, b in zip(got, inline))


def test_bench_gpu_hooks_extract_and_are_undone(tmp_path, monkeypatch):
    """Two benchmark hooks: `green:N` (the forward in a CUDA green context) leaves a run off CUDA
    as it is, and `workers-resize` (`--decode pil` resizing in the workers) extracts too; the
    child's code compiles, extracts, and puts what it patched back."""
    from fne.extraction import extract as ex

    bench_gpu = _bench_gpu()
    monkeypatch.setattr(bench_gpu, "IN_PROCESS", True)
    imgs = tmp_path / "imgs"
    bench_gpu.make_images(imgs, 6, 2)
    run, on_device = ex._run, ex.resize_on_device
    for k, hook in enumerate(("green:8", "workers-resize")):
        r, _, _ = bench_gpu.fne_extract(imgs, tmp_path / f"cache{k}", "mobilenet_v3_small", "random", hook=hook,
                                        batch_size=4, workers=0)
        assert r["n"] == 6 and ex._run is run and ex.resize_on_device is on_device
    assert bench_gpu.green_counts(torch.device("cpu")) == []
