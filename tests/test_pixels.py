"""fne's PIL preprocessing gives exactly torchvision.transforms.v2's pixels (issue 18 §3)."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from fne.backbones.preprocess import Preprocess
from fne.data.images import LOW_BITS

# Odd sizes, both orientations, and sizes where rounding and truncation differ:
# 450x313 -> torchvision 367x256 (fne used to round to 368); odd (w - s) makes the crop offset round.
SIZES = [(450, 313), (313, 450), (257, 999), (999, 257), (301, 301), (225, 224), (511, 383), (640, 427)]
MODES = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


def _image(w: int, h: int, seed: int) -> Image.Image:
    """Smooth gradients plus noise: any shift or rescale changes the pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / w), (yy * 255 / h), ((xx + yy) % 97) * 2.6], axis=-1)
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _tv(img: Image.Image, prep: Preprocess) -> np.ndarray:
    how = MODES[prep.interpolation]
    if prep.crop == "squash":
        views = [v2.Resize((prep.size, prep.size), interpolation=how)(img)]
    elif prep.crop == "center":
        views = [v2.Compose([v2.Resize(prep.resize, interpolation=how), v2.CenterCrop(prep.size)])(img)]
    else:
        views = list(v2.Compose([v2.Resize(prep.resize, interpolation=how), v2.TenCrop(prep.size)])(img))
    assert all(isinstance(v, Image.Image) for v in views)
    return np.stack([np.asarray(v) for v in views]).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("crop", ["center", "squash", "ten"])
@pytest.mark.parametrize("size", SIZES)
def test_pixels_equal_torchvision(crop, size):
    prep = Preprocess(224, crop)
    img = _image(*size, seed=size[0] * 7 + size[1])
    ours = prep(img)
    assert ours.dtype == torch.uint8 and ours.shape == (prep.views, 3, 224, 224)
    np.testing.assert_array_equal(ours.numpy(), _tv(img, prep))


@pytest.mark.parametrize("size", [(450, 313), (313, 451), (1001, 600)])
def test_pixels_equal_torchvision_other_weights(size):
    """A resize other than 256 with bicubic (vit-like weights), and an odd crop size."""
    img = _image(*size, seed=1)
    for prep in (Preprocess(224, "center", resize=232, interpolation="bicubic"),
                 Preprocess(225, "ten", resize=249), Preprocess(199, "squash", interpolation="bicubic")):
        np.testing.assert_array_equal(prep(img).numpy(), _tv(img, prep))


def test_resized_size_truncates_and_offset_rounds():
    prep = Preprocess(224, "center")
    assert prep.resized_size(511, 383) == (341, 256)  # 256 * 511 / 383 = 341.6: truncated, not rounded
    assert prep.resized_size(383, 511) == (256, 341)
    assert prep.boxes(257, 995) == [(16, 386)]  # (995 - 224) / 2 = 385.5 rounds (to even), not floors
    assert prep.boxes(383, 256) == [(80, 16)]  # 79.5 -> 80
    assert Preprocess(224, "center", resize=232).resized_size(450, 313) == (333, 232)  # not 334


def test_key_marks_torchvision_pixels():
    """Rows of the old, rounding crop live under keys without `-tv`: never mixed with these."""
    assert Preprocess(224, "center").key == "center224-tv"
    assert Preprocess(224, "ten").key == "ten224-tv"


def _pass_order_edges() -> list[tuple[int, int]]:
    """Sizes where Pillow's choice of which pass comes first flips: H - h against 2 (W - w)."""
    prep, edges = Preprocess(224, "center"), []
    for w in range(257, 420, 7):
        for h in range(w + 1, 4 * w):
            rw, rh = prep.resized_size(w, h)
            if abs((h - rh) - 2 * (w - rw)) <= 1:
                edges.append((w, h))
    return edges


def _many_sizes() -> list[tuple[int, int]]:
    rng = np.random.default_rng(18)
    sizes = [(int(a), int(b)) for a, b in rng.integers(224, 1200, (160, 2))]
    sizes += [(int(a), int(b)) for a, b in rng.integers(224, 300, (40, 2))]  # barely above the crop
    sizes += [(224, 224), (224, 225), (225, 224), (256, 256), (224, 1000), (1000, 224), (230, 231)]
    sizes += [(512, 512), (512, 768), (768, 512), (448, 448), (1024, 768), (640, 480), (480, 640)]  # x2, x3, x4
    sizes += [(511, 383), (383, 511), (450, 313), (257, 995), (300, 1199), (1199, 300)]  # truncation, rounding
    edges = _pass_order_edges()
    sizes += edges[:: max(1, len(edges) // 40)] + [(h, w) for w, h in edges[:: max(1, len(edges) // 20)]]
    return sizes


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_center_crop_equals_torchvision_on_many_sizes(interpolation):
    """The center crop resizes little more than the crop (two 1-D passes, the second over the
    crop only): still torchvision's pixels, on ~300 sizes incl. both pass orders, tiny images,
    upscaling, integer factors."""
    rng = np.random.default_rng(7)
    prep = Preprocess(224, "center", interpolation=interpolation)
    failed = []
    for w, h in _many_sizes():
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        if not np.array_equal(prep(img).numpy(), _tv(img, prep)):
            failed.append((w, h))
    assert not failed, f"pixels differ from torchvision at {failed}"


@pytest.mark.parametrize("filt", ["bilinear", "bicubic", "lanczos", "box", "hamming", "nearest"])
def test_resize_crop_equals_resize_then_crop(filt):
    """Every filter, grey and RGB, crops off-center and of other sizes: as a full resize then a crop."""
    from fne.backbones.preprocess import _PIL_FILTERS, resize_crop

    f = _PIL_FILTERS[filt]
    rng = np.random.default_rng(3)
    for k in range(60):
        w, h = (int(v) for v in rng.integers(40, 700, 2))
        mode = "L" if k % 3 == 0 else "RGB"
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(mode)
        rw, rh = (int(v) for v in rng.integers(30, 500, 2))
        s = int(rng.integers(1, min(rw, rh) + 1))
        x, y = int(rng.integers(0, rw - s + 1)), int(rng.integers(0, rh - s + 1))
        want = np.asarray(img.resize((rw, rh), f).crop((x, y, x + s, y + s)))
        np.testing.assert_array_equal(np.asarray(resize_crop(img, (rw, rh), (x, y), s, f)), want,
                                      err_msg=f"{mode} {w}x{h} -> {rw}x{rh}, crop {s} at {x},{y}")


# ------------------------------------------------------------- high bit depth: same pixels, now said


def _decoded(img: Image.Image | bytes, fmt: str = "PNG") -> tuple[np.ndarray, list[str]]:
    """The RGB pixels fne makes of `img` (saved as `fmt`) or of the file bytes, and what decoding
    said of them (`named_decode`'s notes, as every verb gets them)."""
    from fne.extraction.reader import named_decode

    if isinstance(img, Image.Image):
        buf = io.BytesIO()
        img.save(buf, fmt)
        img = buf.getvalue()
    notes: list[tuple[str, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in cast" was all a NaN got
        rgb = np.asarray(named_decode(img, "x", notes))
    return rgb, [why for _, why in notes]


def _png16_rgb(arr: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (48 bits a pixel: Pillow reads it but cannot write it)."""
    h, w, _ = arr.shape
    rows = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_values_in_the_low_bits_are_said_to_come_out_dark(fmt):
    """A 12-bit camera's image in a 16-bit file came out 0-16 of 255 and nothing was said: the
    same pixels now, with a note; one using the full 16 bits is read as before, unsaid."""
    ramp = np.linspace(0, 4095, 200).reshape(10, 20).astype(np.uint16)
    rgb, said = _decoded(Image.fromarray(ramp), fmt)
    assert int(rgb.max()) == 16 and int(rgb[0, 0, 0]) == 0  # 4095 / 65535 * 255, as before
    assert said == [LOW_BITS]
    rgb, said = _decoded(Image.fromarray((ramp.astype(np.uint32) * 16).astype(np.uint16)), fmt)
    assert int(rgb.max()) == 255 and said == []
    rgb, said = _decoded(Image.fromarray(np.full((4, 4), 16383, np.uint16)), fmt)  # 14 bits: 64 of 255
    assert int(rgb.max()) == 64 and said == [LOW_BITS]
    rgb, said = _decoded(Image.fromarray(np.full((4, 4), 16384, np.uint16)), fmt)
    assert said == []
    assert _decoded(Image.fromarray(np.zeros((4, 4), np.uint16)), fmt)[1] == []  # blank, not a small scale


def test_16_bit_rgb_in_the_low_bits_is_said_too():
    """Pillow reads a 48-bit PNG as 8-bit RGB (its high bytes): 12-bit values came out 0-15."""
    rgb, said = _decoded(_png16_rgb(np.full((3, 5, 3), 4095, np.uint16)))
    assert int(rgb.max()) == 15 and said == [LOW_BITS]
    rgb, said = _decoded(_png16_rgb(np.full((3, 5, 3), 65535, np.uint16)))
    assert int(rgb.max()) == 255 and said == []
    rgb, said = _decoded(Image.fromarray(np.full((3, 5, 3), 15, np.uint8)))  # an 8-bit dark image: no 16 bits
    assert int(rgb.max()) == 15 and said == []


def test_32_bit_and_float_values_clipped_or_nan_are_said():
    """Values over 65535 came out white, negative ones black, a NaN warned only as numpy's
    "invalid value encountered in cast" (and one inf made the whole image black): the same
    pixels, NaN 0, each said in a line of its own kind."""
    big, said = _decoded(Image.fromarray(np.array([[0, 70000]], np.int32)), "TIFF")
    assert big.tolist() == [[[0] * 3, [255] * 3]] and said == [
        "its values exceed 65535, the most a 32-bit or float image is scaled from, so they come out white; "
        "rescale them to 0-65535 or 0-255 first"]
    neg, said = _decoded(Image.fromarray(np.array([[-100.0, 100.0]], np.float32)), "TIFF")
    assert neg[..., 0].tolist() == [[0, 100]] and said == ["its negative values come out 0 (black); shift them "
                                                            "to 0 or more first"]
    nan, said_nan = _decoded(Image.fromarray(np.array([[np.nan, 100.0, 300.0]], np.float32)), "TIFF")
    assert nan[..., 0].tolist() == [[0, 100, 255]] and len(said_nan) == 1 and said_nan[0].startswith(
        "a float image with NaN or infinite values: NaN comes out 0, inf 255 and -inf 0")
    inf, said = _decoded(Image.fromarray(np.array([[np.inf, 100.0]], np.float32)), "TIFF")
    assert inf[..., 0].tolist() == [[255, 0]] and said == said_nan  # 100 / 65535: 0
    assert _decoded(Image.fromarray(np.array([[0.0, 200.0]], np.float32)), "TIFF")[1] == []


def test_a_multi_page_tiff_is_said_to_be_read_by_its_first_page():
    """A stack of channels or planes as pages lost all but the first, unsaid; a one-page TIFF is quiet."""
    pages = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (10, 200, 90)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    rgb, said = _decoded(buf.getvalue())
    assert int(rgb.max()) == 10 and said == ["a multi-page TIFF: only its first page is read (channels or planes "
                                             "stored as pages are left out); save them as one image's channels, "
                                             "or as images of their own"]
    assert _decoded(pages[1], "TIFF")[1] == []
