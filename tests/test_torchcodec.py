"""TorchCodec as the device's JPEG decoder (`fne.devices.device_decoder`): torchvision deprecated
its image codecs in 0.29 for TorchCodec's, which fne takes where it is installed (the
`torchcodec` extra). On the CPU both decode with libjpeg-turbo, as PIL does, so the tests here
compare pixels and rows exactly; tests/test_gpu.py has the CUDA one."""

from __future__ import annotations

import io
import os
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import fne.extraction.extract as fx
from fne import devices
from fne.cache.spec import DEVICE_SUFFIXES, StoreSpec, device_decoded
from fne.errors import FneError
from fne.extraction import reader

pytest.importorskip("torchcodec")

CPU = torch.device("cpu")
FAST = dict(arch="efficientnet_lite0", weights="random", precision="fp32", storage_dtype="float32")


def _jpeg(w: int, h: int, seed: int, **kw) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).resize((w * 2, h * 2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _raw(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _data(root, n: int = 3):
    for k, c in enumerate("ab"):
        (root / c).mkdir(parents=True)
        for j in range(n):
            f = root / c / f"{j}.jpg"
            f.write_bytes(_jpeg(40 + 7 * j, 30 + 3 * k, 3 * k + j))
            os.utime(f, (time.time() - 60, time.time() - 60))  # the manifest trusts them
    return root


def test_torchcodec_is_the_device_decoder_and_decodes_as_pil_and_torchvision_do(monkeypatch):
    """Installed, TorchCodec decodes (`device_decoder`), giving PIL's RGB pixels for baseline,
    progressive, 4:4:4 and grey JPEGs, as torchvision's operators do; a cut file fails the call
    and `reader.decode_jpegs` names it None, keeping the others."""
    assert devices.device_decoder() == "torchcodec"
    forms = [_jpeg(33, 21, 1), _jpeg(40, 30, 2, progressive=True), _jpeg(25, 35, 3, subsampling=0),
             _jpeg(30, 20, 4)]
    grey = io.BytesIO()
    Image.open(io.BytesIO(forms[0])).convert("L").save(grey, "JPEG")
    forms.append(grey.getvalue())
    raw = [_raw(d) for d in forms]
    got = devices.decode_jpegs_rgb(raw, CPU)
    monkeypatch.setattr(devices, "_torchcodec", lambda: False)
    assert devices.device_decoder() == "torchvision"
    theirs = devices.decode_jpegs_rgb(raw, CPU)
    for g, t, d in zip(got, theirs, forms, strict=True):
        pil = torch.from_numpy(np.array(Image.open(io.BytesIO(d)).convert("RGB"))).permute(2, 0, 1)
        assert g.dtype == torch.uint8 and torch.equal(g, pil) and torch.equal(g, t)
    monkeypatch.undo()
    cut = _raw(forms[0][:200])
    with pytest.raises(RuntimeError):
        devices.decode_jpegs_rgb([raw[0], cut], CPU)
    decoded = reader.decode_jpegs([raw[0], cut, raw[1]], CPU)
    assert decoded[1] is None and torch.equal(decoded[0], got[0]) and torch.equal(decoded[2], got[1])


def test_torchcodec_rows_keep_a_store_of_their_own_and_are_read_with_either(tmp_path, monkeypatch):
    """Rows decoded by TorchCodec go to a store of their own (their pixels on a GPU need not be
    torchvision's), equal on the CPU to torchvision-decoded rows; reading with decode auto finds
    them, and a later torchvision extraction of other images makes its own store."""
    data = _data(tmp_path / "data")
    cache = str(tmp_path / "cache")
    kw = dict(cache=cache, device="cpu", workers=0, progress=False, **FAST)
    codec = fx.extract(data, decode="device", **kw)
    assert codec.n_computed == 6 and codec.n_skipped == 0
    spec = StoreSpec(cache=cache, decode="device", **FAST)
    assert spec.prep_key().endswith(DEVICE_SUFFIXES["torchcodec"]) and device_decoded(spec.prep_key())
    monkeypatch.setattr(devices, "_torchcodec", lambda: False)
    assert spec.prep_key().endswith(DEVICE_SUFFIXES["torchvision"]) and device_decoded(spec.prep_key())
    vision = fx.extract(data, decode="device", **kw)
    assert vision.n_computed == 6 and vision.store != codec.store
    monkeypatch.undo()
    from fne.data.datasets import load_dataset
    from fne.data.manifest import attach_keys
    from fne.linear.export import load_rows

    keys = attach_keys(load_dataset(data), cache).keys()
    rows = {}
    for name, use in (("codec", True), ("vision", False)):  # each library's own store
        monkeypatch.setattr(devices, "_torchcodec", lambda use=use: use)
        store = StoreSpec(cache=cache, decode="device", device="cpu", **FAST).open()
        rows[name] = store.read(keys, [t for t, _ in store.taps])
    assert rows["codec"].keys() == rows["vision"].keys()
    assert all(np.array_equal(rows["codec"][t], rows["vision"][t]) for t in rows["codec"])
    monkeypatch.undo()
    got = load_rows(data, features="last", cache=cache, device="cpu", progress=False, **FAST)  # decode auto
    assert "devjpeg8" in got.attrs["store"] and len(got.X) == 6


def test_completing_rows_another_library_decoded_is_one_error(tmp_path, monkeypatch):
    """`--extract` computes missing rows into the store being read: where that store's rows were
    decoded by TorchCodec and this machine decodes with torchvision, it says so instead of
    filling another store."""
    from fne.linear.export import load_rows

    data = _data(tmp_path / "data")
    cache = str(tmp_path / "cache")
    fx.extract(data, decode="device", cache=cache, device="cpu", workers=0, progress=False, **FAST)
    (data / "a" / "new.jpg").write_bytes(_jpeg(50, 30, 9))
    monkeypatch.setattr(devices, "_torchcodec", lambda: False)
    with pytest.raises(FneError, match=r"1 images of .* are missing from store .*decoded on the device by another "
                                       r"library.*devjpeg8-torchcodec.*decode='pil'"):
        load_rows(data, features="last", cache=cache, extract_missing=True, progress=False, device="cpu",
                  **FAST)


def test_a_torchcodec_that_does_not_load_is_a_warning_and_torchvision_decodes(monkeypatch):
    """An installed TorchCodec built for another torch fails to load: one warning saying so, and
    torchvision's decoder is used."""
    import builtins

    real = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name.startswith("torchcodec"):
            raise OSError("libtorchcodec_core9.so: undefined symbol")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    devices._torchcodec.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert devices.device_decoder() == "torchvision"
        assert any("TorchCodec is installed but does not load (OSError: libtorchcodec" in str(w.message)
                   for w in seen)
    finally:
        monkeypatch.undo()
        devices._torchcodec.cache_clear()
    assert devices.device_decoder() == "torchcodec"


def test_rows_pinned_to_device_decoding_are_found_whichever_library_decoded_them(tmp_path, monkeypatch):
    """A model fitted on device-decoded rows pins decode="device" (with its precision and storage
    dtype): its rows are read from the store that holds them, whichever library decoded them,
    not from the store this machine's library would write (`fne predict` of a torchvision-decoded
    run where TorchCodec is installed said the rows were not in the cache)."""
    data = _data(tmp_path / "data")
    cache = str(tmp_path / "cache")
    monkeypatch.setattr(devices, "_torchcodec", lambda: False)
    made = fx.extract(data, decode="device", cache=cache, device="cpu", workers=0, progress=False, **FAST)
    monkeypatch.undo()
    assert devices.device_decoder() == "torchcodec"
    from fne.data.datasets import load_dataset
    from fne.data.manifest import attach_keys

    keys = attach_keys(load_dataset(data), cache).keys()
    pinned = StoreSpec(cache=cache, decode="device", device="cpu", **FAST)
    found = pinned.find(keys)
    assert str(found.path) == made.store and not found.missing(keys)
