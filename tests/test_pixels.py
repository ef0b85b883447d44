"""fne's PIL preprocessing gives exactly torchvision.transforms.v2's pixels (issue 18 §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from fne.backbones.preprocess import Preprocess

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
