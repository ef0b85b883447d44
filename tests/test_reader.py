"""The reader: batched device decoding (run on CPU tensors here), its PIL fallback, decode=auto,
and batches that keep the views' channels-last layout."""

from __future__ import annotations

import io
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fne.extraction.extract as fx
from fne import devices
from fne.backbones.preprocess import Preprocess
from fne.cache.spec import StoreSpec
from fne.cache.store import list_stores
from fne.data.datasets import read_image
from fne.devices import resolve_decode
from fne.extraction import reader, slots

CPU = torch.device("cpu")
FAST = dict(arch="efficientnet_lite0", weights="random", precision="fp32", storage_dtype="float32")


def _jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) % 61 * 4.0], axis=-1)
    arr = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _raw(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


SIZES = [(450, 313), (313, 450), (450, 313), (257, 301), (450, 313), (640, 427)]


@pytest.mark.parametrize("crop", ["center", "squash", "ten"])
def test_device_decode_matches_pil_within_rounding(crop):
    prep = Preprocess(224, crop)
    jpegs = [_jpeg(w, h, j) for j, (w, h) in enumerate(SIZES)]
    out = reader.decode_raw([_raw(d) for d in jpegs], CPU, prep)
    for d, x in zip(jpegs, out, strict=True):
        pil = prep(read_image(io.BytesIO(d)))
        assert x.dtype == torch.uint8 and x.shape == pil.shape == (prep.views, 3, 224, 224)
        diff = (x.int() - pil.int()).abs().float()
        # On the CPU torchvision and Pillow decode with libjpeg-turbo alike, and `resample` resizes
        # with Pillow's arithmetic: one level apart at float32's rounding edges (~0.1 % here).
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


def test_device_resize_is_one_call_for_any_mix_of_sizes(monkeypatch):
    from fne.backbones import resample

    calls, real = [], resample._resize
    monkeypatch.setattr(resample, "_resize", lambda plans, *a: calls.append(len(plans)) or real(plans, *a))
    out = reader.decode_raw([_raw(_jpeg(w, h, j)) for j, (w, h) in enumerate(SIZES)], CPU, Preprocess(224))
    assert len(out) == len(SIZES) and calls == [len(SIZES)]  # five sizes, portrait and landscape


def test_large_photos_are_decoded_in_parts_with_the_same_pixels(monkeypatch):
    """Given their sizes, JPEGs are decoded in consecutive parts of at most DECODE_PIXELS pixels
    (an image larger than that alone), with the pixels of one call."""
    prep = Preprocess(224)
    jpegs = [_raw(_jpeg(w, h, j)) for j, (w, h) in enumerate(SIZES)]
    whole = reader.decode_raw(jpegs, CPU, prep)
    calls, real = [], reader.decode_jpegs
    monkeypatch.setattr(reader, "decode_jpegs", lambda raw, dev: calls.append(len(raw)) or real(raw, dev))
    monkeypatch.setattr(reader, "DECODE_PIXELS", 450 * 313 * 2)
    parts = reader.decode_raw(jpegs, CPU, prep, SIZES)
    assert calls == [2, 2, 1, 1]  # 450x313 twice; 450x313 + 257x301 ... 640x427 alone
    assert all(torch.equal(a, b) for a, b in zip(whole, parts, strict=True))
    assert [list(r) for r in reader.parts([(10, 10)] * 3, 3)] == [[0, 1, 2]]
    assert reader.parts([], 0) == []


def test_workers_send_each_jpegs_size_from_its_header(tmp_path):
    from fne.data.datasets import load_dataset

    dataset = load_dataset(_folder(tmp_path, 6))
    items = reader.ImageItems(dataset, list(range(6)), Preprocess(32, resize=40), raw_jpeg=True)
    batch = reader.collate([items[j] for j in range(6)])
    want = [Image.open(dataset.sources[i]).size for i in batch["idx"]]
    assert batch["raw_sizes"] == want and len(want) == 6


def test_refused_jpeg_goes_to_pil_and_unreadable_is_named(monkeypatch):
    prep = Preprocess(224)
    good, refused = _jpeg(300, 200, 1), _jpeg(200, 300, 2)
    real = reader.decode_jpegs

    def refuse_second(raw, dev):
        imgs = real(raw, dev)
        return [None if bytes(r.numpy()) == refused else im for r, im in zip(raw, imgs, strict=True)]

    monkeypatch.setattr(reader, "decode_jpegs", refuse_second)
    out = reader.decode_raw([_raw(good), _raw(refused), _raw(b"\xff\xd8 not a jpeg")], CPU, prep)
    assert torch.equal(out[1], prep(read_image(io.BytesIO(refused))))  # PIL's exact pixels
    assert isinstance(out[2], str) and "UnidentifiedImageError" in out[2]
    assert isinstance(out[0], torch.Tensor)


def test_collated_batch_is_channels_last_and_equal():
    prep = Preprocess(224, "ten")
    imgs = [read_image(io.BytesIO(_jpeg(w, h, j))) for j, (w, h) in enumerate(SIZES[:3])]
    items = [(j, f"k{j}", prep(im), None, None) for j, im in enumerate(imgs)]
    batch = reader.collate(items)
    x = batch["pixels"]
    assert torch.equal(x, torch.stack([it[2] for it in items]))
    assert x.reshape(-1, 3, 224, 224).is_contiguous(memory_format=torch.channels_last)


def test_decoded_images_are_handed_over_as_their_pixels_from_any_run():
    """`uploaded`: each decoded image of a batch's run (the first image or later ones) as a
    (3, H, W) view of the packed bytes: exactly the image's pixels."""
    imgs = [read_image(io.BytesIO(_jpeg(w, h, j))) for j, (w, h) in enumerate(SIZES[:4])]
    batch = reader.collate([(j, f"k{j}", reader.Rgb.of(im.tobytes(), im.size), None, None)
                            for j, im in enumerate(imgs)])
    for run in (range(0, 4), range(1, 3), range(3, 4)):
        got = reader.uploaded(batch, run, CPU)
        assert len(got) == len(run)
        for p, x in zip(run, got, strict=True):
            assert torch.equal(x, torch.from_numpy(np.array(imgs[p])).permute(2, 0, 1))
    batch["raw_sizes"][2] = (SIZES[2][0] - 1, SIZES[2][1])  # a size that does not match its bytes
    with pytest.raises(ValueError, match="decoded image 2 of the batch"):
        reader.uploaded(batch, range(1, 4), CPU)


def test_pinning_a_batch_pins_its_tensors_and_keeps_the_rest(monkeypatch):
    """The pin-memory thread (CUDA) calls a `collate` batch's own `pin_memory`: its tensors
    pinned, every other value as it was: what torch's `pin_memory` makes of the plain dict,
    without visiting each image's index, key and stat."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned = []

    def pin(t, *a):  # a stand-in: no CUDA here
        pinned.append(t)
        return t.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    prep = Preprocess(32, resize=40)
    img = read_image(io.BytesIO(_jpeg(60, 50, 1)))
    batch = reader.collate([(0, "k0", prep(img), None, (1, 2)), (1, "k1", reader.Jpeg.of(b"\xff\xd8..", (5, 4)), None, (3, 4)),
                            (2, "k2", None, "not an image file", (5, 6))])
    batch["aspect"] = torch.ones(2)  # as fne train's collate adds it
    mine, theirs = pin_memory(batch), pin_memory(dict(batch))
    assert type(mine) is reader.Batch and mine.keys() == theirs.keys() == batch.keys()
    assert mine["stats"] is batch["stats"] and theirs["stats"] is not batch["stats"]  # not walked, as torch walks
    assert len(pinned) == 2 * 3  # pixels, raw and aspect, once by each
    for k, v in mine.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, batch[k]) and torch.equal(v, theirs[k]) and v is not batch[k]
        else:
            assert v == batch[k] == theirs[k]


def test_jpeg_bytes_cross_from_workers_packed_in_one_tensor(tmp_path):
    """decode="device": a batch's JPEG files reach the main process end to end in one uint8
    tensor (one shared block, not one per image), each view exactly the file's bytes; a PNG in
    the same batch still comes decoded."""
    from fne.data.datasets import load_dataset

    root = _folder(tmp_path, 7)
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(root / "a" / "png.png")
    dataset = load_dataset(root)
    prep = Preprocess(32, "center", resize=40)
    items = reader.ImageItems(dataset, list(range(len(dataset))), prep, raw_jpeg=True)
    loader = torch.utils.data.DataLoader(items, batch_size=4, num_workers=2, collate_fn=reader.collate)
    jpegs = pngs = 0
    for batch in loader:
        views = reader.raw_jpegs(batch)
        assert len(views) == len(batch["raw_pos"]) and batch["raw"].dim() == 1
        for pos, v in zip(batch["raw_pos"], views, strict=True):
            assert v.untyped_storage().data_ptr() == batch["raw"].untyped_storage().data_ptr()
            assert bytes(v.numpy()) == Path(dataset.sources[batch["idx"][pos]]).read_bytes()
        jpegs += len(views)
        pngs += len(batch["pix_pos"])
    assert (jpegs, pngs) == (7, 1)
    assert reader.collate([(0, "k", torch.zeros(1, 3, 2, 2, dtype=torch.uint8), None, None)])["raw"] is None


def test_auto_decode_is_pil_on_cpu(tmp_path):
    assert resolve_decode("auto", CPU) == "pil" and resolve_decode("auto", torch.device("cuda")) == "device"
    assert StoreSpec(decode="auto", device="cpu").prep_key() == StoreSpec(decode="pil").prep_key()
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    for j in range(3):
        (data / f"{j}.jpg").write_bytes(_jpeg(120 + j, 90, j))
    cache = str(tmp_path / "cache")
    first = fx.extract(Path(data).parent, cache=cache, device="cpu", workers=0, progress=False, **FAST)
    again = fx.extract(Path(data).parent, cache=cache, device="cpu", decode="pil", workers=0,
                       progress=False, **FAST)
    assert first.n_computed == 3 and again.n_computed == 0 and again.store == first.store


def test_device_decode_runs_end_to_end_on_cpu(tmp_path, forward_images):
    """decode="device" on CPU (torchvision's CPU decoder): rows of their own store, close to PIL's."""
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    for j, (w, h) in enumerate(SIZES[:4]):
        (data / f"{j}.jpg").write_bytes(_jpeg(w, h, j))
    cache = str(tmp_path / "cache")
    kw = dict(cache=cache, device="cpu", workers=0, progress=False, **FAST)
    pil = fx.extract(data.parent, decode="pil", **kw)
    dev = fx.extract(data.parent, decode="device", **kw)
    assert dev.n_computed == 4 and dev.store != pil.store and "devjpeg" in dev.store
    assert forward_images.n == 8


def test_auto_reading_finds_device_decoded_rows(tmp_path):
    """Rows extracted with decode="device" are found by a reader left at decode="auto" (the
    default of fit, predict, export), and the spec pinned to that store keeps decoding so."""
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    for j, (w, h) in enumerate(SIZES[:3]):
        (data / f"{j}.jpg").write_bytes(_jpeg(w, h, j))
    cache = str(tmp_path / "cache")
    r = fx.extract(data.parent, decode="device", cache=cache, device="cpu", workers=0, progress=False, **FAST)
    spec = StoreSpec(arch=FAST["arch"], weights=FAST["weights"], cache=cache, device="cpu", storage_dtype="auto")
    from fne.data.datasets import load_dataset

    keys = load_dataset(data.parent).keys()
    store = spec.find(keys)
    assert str(store.path) == r.store and len(store) == 3
    assert spec.pinned(store).decode == "device"
    pil = StoreSpec(arch=FAST["arch"], weights=FAST["weights"], cache=cache, device="cpu", storage_dtype="auto", decode="pil")
    assert pil.prep_key() != spec.pinned(store).prep_key()


def _folder(tmp_path: Path, n: int) -> Path:
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    for j in range(n):
        w, h = SIZES[j % len(SIZES)]
        (data / f"{j:02d}.jpg").write_bytes(_jpeg(w // 4, h // 4, j))
    return data.parent


def _pooled_loader(root: Path, context: str | None = None, forked: bool = False):
    from fne.data.datasets import load_dataset

    dataset = load_dataset(root)
    prep = Preprocess(32, "center", resize=40)
    items = reader.ImageItems(dataset, list(range(len(dataset))), prep)
    # 9 slots a worker: 3 batches (2 prefetched + the one the consumer holds), then reused
    items.share_slots(batch_size=3, workers=2, in_flight=3, forked=forked)
    loader = torch.utils.data.DataLoader(items, batch_size=3, num_workers=2, collate_fn=reader.collate,
                                         multiprocessing_context=context)
    want = {i: prep(read_image(dataset.sources[i])) for i in range(len(dataset))}
    return loader, want


@pytest.mark.parametrize("context,forked", [("fork", True), ("fork", False), ("spawn", False)])
def test_slot_pool_is_reused_and_gives_the_pixels(tmp_path, context, forked):
    """Batches come back in the pool's shared slots (no fresh shared memory), each worker's ring
    reused once given back, with exactly the pixels of the image; inherited (fork: in an
    anonymous shared mapping, or torch's shared memory) or pickled (spawn)."""
    loader, want = _pooled_loader(_folder(tmp_path, 30), context, forked)
    seen = 0
    for batch in loader:
        assert batch["pixels"] is None and batch["slots"] is not None  # 10 batches through 2 x 3 batch slots
        x = slots.pixels_of(batch)
        assert x.shape == (3, 1, 3, 32, 32)
        assert torch.equal(x, torch.stack([want[i] for i in batch["idx"]]))
        slots.release(batch)
        slots.release(batch)  # a second call frees nothing (the slots may be another batch's by now)
        seen += len(batch["idx"])
    assert seen == 30


@pytest.mark.parametrize("forked", [True, False])
def test_slot_pool_never_overwrites_what_was_not_given_back(tmp_path, forked):
    """A consumer that keeps its batches: the workers fill free slots, then collate into fresh
    shared memory; every batch kept keeps its pixels."""
    loader, want = _pooled_loader(_folder(tmp_path, 30), "fork", forked)
    kept = [(batch["idx"], slots.pixels_of(batch), batch.get("slots") is not None) for batch in loader]
    assert [pooled for _, _, pooled in kept] == [True] * 6 + [False] * 4  # 3 batches a worker, then fresh
    for idx, x, _ in kept:
        assert torch.equal(x, torch.stack([want[i] for i in idx]))


def test_a_worker_takes_the_first_free_run_of_its_ring(monkeypatch):
    """A worker's batch goes into the first run of free slots from its ring's start, so a
    worker writes (and, in a forked pool, makes the pages of) no more of its ring than its
    batches in flight at once take; another worker's ring is never touched."""
    from types import SimpleNamespace

    pool = slots.SlotPool(slot_bytes=4, per_worker=6, workers=2, forked=True)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(id=1, num_workers=2))
    assert [pool.take(2), pool.take(2)] == [6, 8]  # worker 1's ring is slots 6..11
    pool.busy[6:8] = 0  # the main process gave the first batch back
    assert pool.take(3) is None  # free: 6-7 and 10-11, no run of 3
    assert pool.take(2) == 6  # the ring's start again, not its end
    assert pool.take(2) == 10 and pool.take(1) is None
    assert not bool(pool.busy[:6].any())


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="reads Linux's /proc")
def test_a_forked_pool_has_its_pages_made_where_they_are_written():
    """A pool for forked workers is an anonymous shared mapping: making it makes no page (torch's
    shared memory makes them all at once: 9 GB at the GPU defaults cost 2.4 s in the main
    process before the first batch), what a forked worker writes the main process reads, and
    dropping the pool unmaps it."""
    import gc
    import os
    import re

    def shmem() -> int:  # the machine's shared memory pages, bytes
        return int(re.search(r"Shmem:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)) << 10

    before = shmem()
    pool = slots.SlotPool(slot_bytes=1 << 20, per_worker=512, workers=2, forked=True)  # 1 GiB
    assert shmem() - before < 256 << 20  # not 1 GiB of pages made (what other processes make meanwhile aside)
    start = pool.data.data_ptr()
    pid = os.fork()
    if pid == 0:  # a forked worker writes 3 MB at the second worker's ring (numpy: no torch thread pool after fork)
        try:
            pool.data.numpy()[512 << 20:515 << 20] = 7
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert int(pool.data[512 << 20]) == int(pool.data[(515 << 20) - 1]) == 7 and int(pool.data[0]) == 0
    assert f"{start:x}-" in Path("/proc/self/maps").read_text()
    del pool
    gc.collect()
    assert f"{start:x}-" not in Path("/proc/self/maps").read_text()


def _stand_in_network(monkeypatch) -> None:
    """`fne extract`'s network replaced by rows of the taps' widths made from the pixels' mean:
    the network is not what is tested, what it is fed is."""
    from fne.extraction import taps

    class StandIn(torch.nn.Module):
        def __init__(self, widths):
            super().__init__()
            self.widths = widths

        def forward(self, x):
            return list(x.float().mean(dim=(1, 2, 3))[:, None].expand(-1, sum(self.widths)).split(self.widths, 1))

    monkeypatch.setattr(taps, "build_tap_model", lambda spec, device, compile=False: StandIn(
        [t.channels for t in spec.backbone().taps]))


def test_extract_with_workers_feeds_the_pixels_of_extract_without(tmp_path, monkeypatch):
    """`fne extract` on the CPU with loader workers reads batches in the slot pool and gives
    them back after the forward: the network sees what it sees without workers."""
    from fne.extraction.taps import TapRunner

    _stand_in_network(monkeypatch)
    root, fed, pooled = _folder(tmp_path, 8), [], []
    real_call, real_release = TapRunner.__call__, slots.release
    monkeypatch.setattr(TapRunner, "__call__", lambda self, x: (fed.append(x.clone()), real_call(self, x))[1])
    monkeypatch.setattr(slots, "release", lambda b: (pooled.append(b.get("slots") is not None), real_release(b)))
    kw = dict(device="cpu", batch_size=2, progress=False, **FAST)
    fx.extract(root, cache=str(tmp_path / "c1"), workers=2, **kw)
    with_workers, fed[:] = list(fed), []
    fx.extract(root, cache=str(tmp_path / "c0"), workers=0, **kw)
    assert len(with_workers) == 4 and all(torch.equal(a, b) for a, b in zip(with_workers, fed, strict=True))
    assert pooled[:4] == [True] * 4 and pooled[4:] == [False] * 4


def _raw_batches(tmp_path: Path, n: int = 14, batch: int = 4):
    from fne.data.datasets import load_dataset

    dataset = load_dataset(_folder(tmp_path, n))
    prep = Preprocess(32, "center", resize=40)
    items = reader.ImageItems(dataset, list(range(len(dataset))), prep, raw_jpeg=True)
    return torch.utils.data.DataLoader(items, batch_size=batch, num_workers=1, collate_fn=reader.collate), prep


def test_assembling_ahead_gives_what_assembling_in_line_gives(tmp_path):
    loader, prep = _raw_batches(tmp_path)
    inline = list(reader.assembled(loader, CPU, prep, ahead=0))
    ahead = reader.assembled(loader, CPU, prep, ahead=2)
    got = list(ahead)
    ahead.close()
    assert len(got) == len(inline) == 4
    for (b1, (x1, i1, k1), bad1), (b2, (x2, i2, k2), bad2) in zip(inline, got, strict=True):
        assert i1 == i2 == b1["idx"] == b2["idx"] and k1 == k2 and bad1 == bad2 == []
        assert torch.equal(x1, x2) and x1.shape == (len(i1), 1, 3, 32, 32)


def test_assembling_ahead_overlaps_the_consumer(tmp_path, monkeypatch):
    """Batch 2 is decoded while the consumer still holds batch 1 (in line, it could not be)."""
    import threading

    loader, prep = _raw_batches(tmp_path)
    started, real = [], reader.decode_jpegs

    def decode(raw, dev):
        started.append(threading.current_thread().name)
        return real(raw, dev)

    monkeypatch.setattr(reader, "decode_jpegs", decode)
    ahead = reader.assembled(loader, CPU, prep, ahead=1)
    it = iter(ahead)
    next(it)
    deadline = time.monotonic() + 30
    while len(started) < 2 and time.monotonic() < deadline:  # the consumer holds batch 1
        time.sleep(0.01)
    assert len(started) >= 2 and set(started) == {"fne-decode"}
    ahead.close()


def test_the_next_batch_decodes_while_the_one_before_is_resized(tmp_path, monkeypatch):
    """Decoding and resizing run on threads of their own: batch 1's resize waits until batch
    2's decode has begun, which in one thread would never happen (the wait would time out)."""
    import threading

    loader, prep = _raw_batches(tmp_path)
    decoding, resizing = threading.Event(), []
    real_decode, real_resize = reader.decode_jpegs, reader.resize_views

    def decode(raw, dev):
        if resizing:  # a batch is being resized: this is a later one's decode
            decoding.set()
        return real_decode(raw, dev)

    def resize(imgs, p, dtype=None):
        resizing.append(threading.current_thread().name)
        if len(resizing) == 1:
            assert decoding.wait(30), "batch 2 was not decoded while batch 1 was resized"
        return real_resize(imgs, p, dtype)

    monkeypatch.setattr(reader, "decode_jpegs", decode)
    monkeypatch.setattr(reader, "resize_views", resize)
    ahead = reader.assembled(loader, CPU, prep, ahead=1)
    got = list(ahead)
    ahead.close()
    assert len(got) == 4 and decoding.is_set() and set(resizing) == {"fne-ahead"}


def test_assembled_batches_of_large_photos_decode_in_runs_with_the_same_pixels(tmp_path, monkeypatch):
    """A batch decoded in several runs (`DECODE_PIXELS`) comes out as one batch, as decoded whole."""
    loader, prep = _raw_batches(tmp_path)
    whole = list(reader.assembled(loader, CPU, prep, ahead=0))
    calls, real = [], reader.decode_jpegs
    monkeypatch.setattr(reader, "decode_jpegs", lambda raw, dev: calls.append(len(raw)) or real(raw, dev))
    monkeypatch.setattr(reader, "DECODE_PIXELS", 1)  # one image per run
    ahead = reader.assembled(loader, CPU, prep, ahead=2)
    runs = list(ahead)
    ahead.close()
    assert calls == [1] * 14  # 14 images in batches of 4, 4, 4, 2
    assert len(runs) == len(whole) == 4
    for (b1, (x1, i1, k1), _), (b2, (x2, i2, k2), _) in zip(whole, runs, strict=True):
        assert b1["idx"] == b2["idx"]
        assert i1 == i2 and k1 == k2 and torch.equal(x1, x2)


@pytest.mark.parametrize("stage", ["decode_jpegs", "resize_views"])
def test_an_error_while_assembling_ahead_reaches_the_consumer_and_close_returns(tmp_path, monkeypatch, stage):
    loader, prep = _raw_batches(tmp_path)
    calls, real = [], getattr(reader, stage)

    def failing(*a):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("decoder fell over")
        return real(*a)

    monkeypatch.setattr(reader, stage, failing)
    ahead = reader.assembled(loader, CPU, prep, ahead=2)
    seen = 0
    with pytest.raises(RuntimeError, match="decoder fell over"):
        for _ in ahead:
            seen += 1
    ahead.close()
    assert seen == 1 and not ahead._thread.is_alive() and not ahead.items._thread.is_alive()
    stopped = reader.assembled(loader, CPU, prep, ahead=1)  # a consumer that stops after one batch
    for _ in stopped:
        break
    stopped.close()
    assert not stopped._thread.is_alive() and not stopped.items._thread.is_alive()


def test_only_whole_jpegs_go_to_the_device_decoder(tmp_path):
    """A JPEG cut short is not sent to the device decoder (nvjpeg's batched decode may return
    part of an image without an error): PIL, in the worker, names it, as on the PIL path. Zero
    padding after the end-of-image marker still makes a whole file."""
    from fne.data.datasets import load_dataset

    whole = _jpeg(64, 48, 0)
    assert reader._plain_jpeg(whole) == (64, 48)
    assert reader._plain_jpeg(whole + b"\0" * 100) == (64, 48)
    assert reader._plain_jpeg(whole[: len(whole) * 2 // 3]) is None
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    (data / "whole.jpg").write_bytes(whole)
    (data / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    dataset = load_dataset(data.parent)
    items = reader.ImageItems(dataset, [0, 1], Preprocess(32, "center", resize=40), raw_jpeg=True)
    got = {dataset.ids[i]: (x, err) for i, _, x, err, _ in (items[j] for j in range(2))}
    assert isinstance(got["a/whole.jpg"][0], reader.Jpeg) and got["a/whole.jpg"][1] is None
    assert got["a/cut.jpg"][0] is None and "truncated" in got["a/cut.jpg"][1]


def test_a_torchvision_without_device_decoding_falls_back_to_pil_or_says_so(tmp_path, monkeypatch):
    """torchvision's image codecs are deprecated since 0.29 (to TorchCodec): where decode_jpeg is
    gone and TorchCodec is not installed, auto decodes with PIL on CUDA too, an explicit device
    decode that has images to decode is one clear error naming its option, and rows already
    cached are still read."""
    import torchvision.io

    monkeypatch.setattr(devices, "_torchcodec", lambda: False)

    from fne.errors import FneError
    from fne.training.train import train

    data = tmp_path / "data"
    for k, c in enumerate("ab"):
        (data / c).mkdir(parents=True)
        for j in range(3):
            (data / c / f"{j}.jpg").write_bytes(_jpeg(40 + j, 30, 3 * k + j))
            os.utime(data / c / f"{j}.jpg", (time.time() - 60, time.time() - 60))  # the manifest trusts them
    cache = str(tmp_path / "cache")
    kw = dict(cache=cache, device="cpu", workers=0, progress=False, **FAST)
    first = fx.extract(data, decode="device", **kw)  # while the decoder is there
    monkeypatch.delattr(torchvision.io, "decode_jpeg")
    monkeypatch.setattr(devices, "jpeg_ops", lambda: False)  # its compiled operators gone too
    assert resolve_decode("auto", torch.device("cuda")) == "pil" and resolve_decode("auto", CPU) == "pil"
    again = fx.extract(data, decode="device", **kw)
    assert again.n_cached == 6 and again.n_computed == 0 and again.store == first.store
    (data / "a" / "new.jpg").write_bytes(_jpeg(50, 30, 9))
    with pytest.raises(FneError, match=r"decode='device' needs a JPEG decoder for the device: TorchCodec's .*"
                                      r"torchvision\.io\.decode_jpeg.*use decode='auto'"):
        fx.extract(data, decode="device", **kw)
    with pytest.raises(FneError, match=r"augment_on='device' needs a JPEG decoder for the device"):
        train("digits", "frozen", tmp_path / "run", arch="efficientnet_lite0", weights="random", epochs=1,
              image_size=32, workers=0, progress=False, augment_on="device", device="cpu")


def _jpeg_forms() -> list[bytes]:
    """JPEGs in the forms a dataset holds: baseline RGB, progressive, grayscale, 4:4:4 chroma."""
    rgb = Image.open(io.BytesIO(_jpeg(61, 47, 5)))
    forms = [dict(), dict(progressive=True), dict(subsampling=0, quality=95)]
    out = [_jpeg(64, 48, 4)]
    for kw in forms:
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", **kw)
        out.append(buf.getvalue())
    buf = io.BytesIO()
    rgb.convert("L").save(buf, "JPEG")
    return out + [buf.getvalue()]


def test_torchvisions_jpeg_operators_decode_as_torchvision_io_does(monkeypatch):
    """`decode_jpegs_rgb` calls torchvision's compiled operators without importing torchvision
    (`devices.jpeg_ops`): the same pixels as ``torchvision.io.decode_jpeg`` in RGB mode for every
    form of JPEG, through the operators and through torchvision.io alike, and a cut file fails the
    call both ways (`reader.decode_jpegs` then names it None)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    assert devices.jpeg_ops() and devices._RGB == ImageReadMode.RGB.value
    monkeypatch.setattr(devices, "_torchcodec", lambda: False)  # torchvision's, where TorchCodec is installed
    raw = [_raw(d) for d in _jpeg_forms()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29's image codecs
        expected = decode_jpeg(raw, mode=ImageReadMode.RGB)
    cut = _raw(_jpeg_forms()[0][:200])
    for ops in (True, False):
        monkeypatch.setattr(devices, "jpeg_ops", lambda ops=ops: ops)
        got = devices.decode_jpegs_rgb(raw, CPU)
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert g.shape[0] == 3 and g.dtype == torch.uint8 and torch.equal(g, e)
        with pytest.raises(RuntimeError):
            devices.decode_jpegs_rgb([raw[0], cut], CPU)
        decoded = reader.decode_jpegs([raw[0], cut, raw[1]], CPU)
        assert decoded[1] is None and torch.equal(decoded[0], expected[0]) and torch.equal(decoded[2], expected[1])


def test_device_decoding_imports_no_torchvision(tmp_path):
    """Importing torchvision costs 1.0 s here and 4.8 s on the H200 machine, where the device
    path's first batch waited for it: the reader's decoding stage loads only the operators."""
    import subprocess
    import sys

    (tmp_path / "a.jpg").write_bytes(_jpeg(64, 48, 4))
    code = ("import sys, torch; from pathlib import Path; from fne.extraction import reader; "
            "raw = torch.frombuffer(bytearray(Path(sys.argv[1]).read_bytes()), dtype=torch.uint8); "
            "stage = reader.decoding(iter([{'raw': raw, 'raw_ends': [len(raw)]}]), torch.device('cpu'), ahead=1); "
            "(batch, _, run, imgs, last), = list(stage); "
            "print(tuple(imgs[0].shape), 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.jpg")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(3,", "48,", "64)", "False"]


def _mixed_folder(tmp_path: Path) -> Path:
    """Images of every kind the workers decode: JPEGs of several sizes, grey, CMYK and EXIF-turned
    ones, a PNG with alpha, a photo too large to travel whole (over `RGB_AREA`), an unreadable file."""
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    for j, (w, h) in enumerate(SIZES[:4]):
        (data / f"{j}.jpg").write_bytes(_jpeg(w, h, j))
    base = Image.open(io.BytesIO(_jpeg(300, 260, 9)))
    base.convert("L").save(data / "grey.jpg", quality=90)
    base.convert("CMYK").save(data / "cmyk.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: shown rotated
    base.save(data / "turned.jpg", quality=90, exif=exif)
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(data / "alpha.png")
    Image.open(io.BytesIO(_jpeg(1100, 900, 3))).save(data / "large.jpg", quality=90)
    (data / "broken.jpg").write_bytes(_jpeg(200, 150, 4)[:300])
    return data.parent


@pytest.mark.parametrize("crop,workers", [("center", 2), ("ten", 0)])
def test_resize_on_the_device_feeds_the_pixels_of_the_workers_resize(tmp_path, monkeypatch, crop, workers):
    """`--decode pil` where the device resizes (`resize_on_device`: a GPU fast in float64; forced
    here on the CPU): the workers decode, the images travel whole, and the network sees exactly
    the pixels of the workers' own resize, into the same store; a photo over `RGB_AREA` and the
    kinds PIL alone reads are resized in the workers, an unreadable file is skipped alike. With
    workers, a batch's decoded images lie in reused shared memory (`raw_pool`)."""
    from fne.extraction.taps import TapRunner

    _stand_in_network(monkeypatch)
    root, fed, moved = _mixed_folder(tmp_path), [], []
    real_call, real_uploaded = TapRunner.__call__, reader.uploaded
    monkeypatch.setattr(TapRunner, "__call__", lambda self, x: (fed.append(x.clone()), real_call(self, x))[1])
    monkeypatch.setattr(reader, "uploaded", lambda b, run, dev: (moved.append(len(run)), real_uploaded(b, run, dev))[1])
    pooled, real_release = [], slots.release
    monkeypatch.setattr(slots, "release", lambda b: (pooled.append(b.get("raw_slots") is not None), real_release(b)))
    kw = dict(device="cpu", batch_size=3, progress=False, decode="pil", crop=crop, workers=workers, **FAST)
    assert not devices.resize_on_device(CPU)  # a CPU resizes in its workers
    runs = {}
    for where in (True, False):
        monkeypatch.setattr(fx, "resize_on_device", lambda dev, where=where: where)
        with pytest.warns(UserWarning, match="broken.jpg"):  # the unreadable file, named
            runs[where] = (fx.extract(root, cache=str(tmp_path / f"c{where}"), **kw), list(fed))
        fed[:] = []
    (on_device, by_device), (in_workers, by_workers) = runs[True], runs[False]
    assert Path(on_device.store).name == Path(in_workers.store).name
    assert on_device.n_computed == in_workers.n_computed == 9 and on_device.skipped == in_workers.skipped
    assert sum(moved) == 8  # every readable image but the large one travelled decoded
    assert any(pooled) == (workers > 0)  # in the workers' reused shared memory (`raw_pool`)
    assert len(by_device) == len(by_workers) == 4  # ten files in batches of three
    assert all(torch.equal(a, b) for a, b in zip(by_device, by_workers, strict=True))


def test_an_interrupted_extraction_whose_traceback_is_kept_holds_no_shared_memory(tmp_path, monkeypatch):
    """Ctrl-C in extract's loop where the device resizes: a notebook keeps the traceback
    (`sys.last_traceback`), which holds the loader and the reader's stages; neither the workers'
    pools (`SlotPool`) nor a view of their memory (the decoded images of a batch the reader's
    stages had read ahead) stays alive with it, and a rerun completes."""
    import gc

    from fne.extraction.taps import TapRunner

    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    for j in range(40):  # small JPEGs: every batch travels decoded, in the pool (9 batches a worker)
        (data / f"{j}.jpg").write_bytes(_jpeg(120 + j, 90, j))
    spans, real_share, real_call = [], reader.ImageItems.share_raw, TapRunner.__call__

    def share_raw(self, *a, **k):
        real_share(self, *a, **k)
        for pool in (self.pool, self.raw_pool):  # where their memory lies, without holding it
            if pool is not None:
                spans.append((pool.data.data_ptr(), pool.data.data_ptr() + pool.data.numel()))

    def interrupted(self, x):
        if interrupted.calls == 1:
            raise KeyboardInterrupt
        interrupted.calls += 1
        return real_call(self, x)

    interrupted.calls = 0
    monkeypatch.setattr(reader.ImageItems, "share_raw", share_raw)
    monkeypatch.setattr(TapRunner, "__call__", interrupted)
    monkeypatch.setattr(fx, "resize_on_device", lambda dev: True)
    kw = dict(device="cpu", batch_size=4, workers=2, progress=False, decode="pil", **FAST)
    with pytest.raises(KeyboardInterrupt) as kept:
        fx.extract(data.parent, cache=str(tmp_path / "c"), **kw)
    gc.collect()
    assert len(spans) == 2 and kept.tb is not None  # both pools were made; the traceback is held here
    assert not slots._POOLS
    held = [t for t in gc.get_objects() if type(t) is torch.Tensor and t.device.type == "cpu"
            and any(lo <= t.data_ptr() < hi for lo, hi in spans)]
    assert not held
    monkeypatch.setattr(TapRunner, "__call__", real_call)
    again = fx.extract(data.parent, cache=str(tmp_path / "c"), **kw)
    assert again.n_cached == 4 and again.n_computed == 36


def test_without_room_in_dev_shm_for_the_decoded_images_the_workers_resize(tmp_path, monkeypatch):
    """`--decode pil` where the device resizes, with little room in /dev/shm: the decoded
    images take up to `RGB_AREA` times the resized ones' shared memory, and a /dev/shm the
    workers' resize fits in ran out ("No space left on device" from a worker). Where the pool
    would take more than half of what is free, the workers resize instead, to the same rows."""
    root, moved = _mixed_folder(tmp_path), []
    real_uploaded = reader.uploaded
    monkeypatch.setattr(reader, "uploaded", lambda b, run, dev: (moved.append(len(run)), real_uploaded(b, run, dev))[1])
    monkeypatch.setattr(fx, "resize_on_device", lambda dev: True)
    kw = dict(device="cpu", batch_size=3, workers=2, progress=False, decode="pil", **FAST)
    need = 2 * 3 * reader.RGB_AREA * 256 ** 2 * 3 * 3  # 2 workers' pools: 3 batches of 3 of the largest
    runs = {}
    for free in (2 * need, 2 * need - 1):
        monkeypatch.setattr(reader, "shm_free", lambda free=free: free)
        moved.clear()
        with pytest.warns(UserWarning, match="broken.jpg"):
            runs[free] = (fx.extract(root, cache=str(tmp_path / f"c{free}"), **kw), sum(moved))
    (room, travelled), (no_room, resized_in_workers) = runs[2 * need], runs[2 * need - 1]
    assert travelled == 8 and resized_in_workers == 0
    assert Path(room.store).name == Path(no_room.store).name and room.n_computed == no_room.n_computed == 9
    (a,), (b,) = (list_stores(tmp_path / f"c{free}") for free in runs)
    keys, layers = sorted(a.index()), [t for t, _ in a.taps]
    assert sorted(b.index()) == keys and np.array_equal(a.read_rows(keys, layers), b.read_rows(keys, layers))
    # torchrun's ranks on one node share its /dev/shm: each counts on its share
    monkeypatch.setattr(reader, "shm_free", lambda: 2 * need)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    moved.clear()
    with pytest.warns(UserWarning, match="broken.jpg"):
        fx.extract(root, cache=str(tmp_path / "c-ranks"), **kw)
    assert sum(moved) == 0
