"""Batched resize and crop (`fne.backbones.resample`): PIL's coefficients, any mix of sizes in
one call, the same pixels whatever the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fne.backbones import preprocess, resample
from fne.backbones.preprocess import _PIL_FILTERS, Preprocess, vertical_first

SIZES = [(450, 313), (313, 450), (257, 301), (640, 427), (224, 224), (1000, 150), (37, 61)]


@pytest.mark.parametrize("how", sorted(_PIL_FILTERS))
@pytest.mark.parametrize("n_in,n_out", [(450, 256), (313, 292), (100, 256), (257, 256), (1000, 37),
                                        (37, 1000), (10, 4), (4, 10)])
def test_coefficients_are_pils(how, n_in, n_out):
    """Each filter resizes a line as PIL resizes a float ("F") image, which has no 8-bit step."""
    line = np.random.default_rng(n_in * n_out).uniform(0, 255, n_in).astype(np.float32)
    f = _PIL_FILTERS[how]
    pil = np.asarray(Image.fromarray(line[None]).resize((n_out, 1), f))[0]
    np.testing.assert_allclose(_apply(line, (n_in, n_in / n_out, 0, 1, 0.0), n_out, how), pil, atol=1e-3)
    # a crop of the outputs, and the same crop mirrored, read the same coefficients
    a, m = n_out // 3, n_out // 2
    lines = np.array([(n_in, n_in / n_out, 0, 1, 0.0), (n_in, n_in / n_out, a, 1, 0.0),
                      (n_in, n_in / n_out, a + m - 1, -1, 0.0)])
    first, last, w = resample.line_weights(lines, n_out, how)
    assert np.array_equal(first[1, :m], first[0, a:a + m]) and np.array_equal(first[2, :m], first[1, :m][::-1])
    assert np.allclose(w[1, :m], w[0, a:a + m]) and np.allclose(w[2, :m], w[1, :m][::-1])
    assert (first[:, :m] < last[:, :m]).all() and (last[:, :m] <= n_in).all()
    # a box of the line resized (PIL's resize(box=...)): training's random crops
    x0, x1 = (float(np.float32(n_in * f)) for f in (0.21, 0.83))  # PIL holds a box in float32
    if how != "nearest":
        pil = np.asarray(Image.fromarray(line[None]).resize((n_out, 1), f, box=(x0, 0, x1, 1)))[0]
        scale = float(np.float32(x1) - np.float32(x0)) / n_out  # PIL subtracts in float32 too
        np.testing.assert_allclose(_apply(line, (n_in, scale, 0, 1, x0), n_out, how), pil, atol=1e-3)


def _apply(line: np.ndarray, spec: tuple, s: int, how: str) -> np.ndarray:
    first, _, w = resample.line_weights(np.array([spec], dtype=np.float64), s, how)
    taps = np.minimum(first[0, :, None] + np.arange(w.shape[-1]), len(line) - 1)
    return (w[0] * line[taps]).sum(axis=1)


def _images(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for w, h in SIZES]


@pytest.mark.parametrize("crop", ["center", "squash", "ten"])
@pytest.mark.parametrize("how", sorted(_PIL_FILTERS))
def test_views_are_pils_pixels(crop, how, monkeypatch):
    """The batch's views are what Pillow makes of each image (`Preprocess.__call__`: torchvision's
    transforms on PIL images): its fixed-point coefficients, pass order and 8-bit intermediate
    image. With float64 products, exactly, clipped overshoots of bicubic and lanczos on noise
    included; with float32 (the default), one level apart where a sum sits at a rounding edge."""
    prep = Preprocess(64, crop, interpolation=how)
    imgs = _images() + [torch.randint(0, 256, (3, 600, 80), dtype=torch.uint8)]
    if crop != "squash" and preprocess._PASS_ORDER_BY_SIZE:  # Pillow >= 13 resizes the 80 x 600 one vertically first
        assert vertical_first(80, 600, *prep.resized_size(80, 600))
    pil = torch.stack([prep(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in imgs])
    monkeypatch.setattr(resample, "DTYPE", torch.float64)
    exact = resample.resize_views(imgs, prep)
    assert exact.shape == (len(imgs), prep.views, 3, 64, 64) and exact.dtype == torch.uint8
    assert torch.equal(exact, pil)
    monkeypatch.setattr(resample, "DTYPE", torch.float32)
    diff = (resample.resize_views(imgs, prep).int() - pil.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.05


def test_hamming_weighs_a_pixel_under_the_center_as_pillow():
    """Pillow's hamming filter is exactly 1 at 0 (`hamming_filter`), not sinc(0) times
    0.54f + 0.46f (1 + 3e-8): where an output pixel's center falls on an input pixel's (480 ->
    224: output 3 on input 7), that weight rounds to one 22-bit unit more, and a sum at a
    rounding edge (these five pixels) came out one level above Pillow's, even in float64."""
    line = np.zeros(480, dtype=np.uint8)
    line[5:10] = [96, 10, 244, 86, 71]  # output 3's taps: Pillow's sum rounds down, by 1/2**22
    img = np.repeat(line[None, :, None], 3, axis=2).repeat(2, axis=0)
    prep = Preprocess(224, "squash", interpolation="hamming")
    pil = prep(Image.fromarray(img))
    assert pil[0, :, 0, 3].tolist() == [156] * 3
    assert torch.equal(resample.resize_views([torch.from_numpy(img).permute(2, 0, 1)], prep, torch.float64)[0], pil)


def _same_but_rounding_edges(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal but where a float32 sum, added in another order, fell on the other side of a
    rounding edge: by 1, on at most 1 value in 10,000."""
    d = (a.int() - b.int()).abs()
    return int(d.max()) <= 1 and int((d > 0).sum()) <= d.numel() // 10_000


def test_a_batch_of_any_sizes_is_one_call_with_each_images_own_pixels(monkeypatch):
    prep = Preprocess(64, "ten", interpolation="lanczos")
    imgs = _images(1)
    alone = torch.cat([resample.resize_views([im], prep) for im in imgs])
    calls, real = [], resample._resize
    monkeypatch.setattr(resample, "_resize", lambda plans, *a: calls.append(len(plans)) or real(plans, *a))
    together = resample.resize_views(imgs, prep)
    assert calls == [len(imgs)]
    assert _same_but_rounding_edges(together, alone)
    assert torch.equal(resample.resize_views(imgs, prep), together)  # the same batch: the same pixels
    # padding held to PAD_PIXELS: the batch goes in several calls
    calls.clear()
    monkeypatch.setattr(resample, "PAD_PIXELS", 3 * 300 * 300)
    assert _same_but_rounding_edges(resample.resize_views(imgs, prep), alone)
    assert len(calls) > 1 and sum(calls) == len(imgs)
    assert resample.resize_views([], prep).shape == (0, 10, 3, 64, 64)


@pytest.mark.parametrize("how", ["nearest", "bilinear", "lanczos"])
def test_recurring_lines_are_computed_once_with_the_same_pixels(monkeypatch, how):
    """`resize_views` keeps each line's coefficients for later batches: a batch computes only
    the lines no recent batch had, and gets the pixels of a fresh computation; the table holds
    at most `LINES_KEPT` lines."""
    from collections import OrderedDict

    monkeypatch.setattr(resample, "_LINES", OrderedDict())
    prep = Preprocess(64, "ten", interpolation=how)
    imgs = _images(3)
    real_table, real_weights = resample.line_table, resample.line_weights
    monkeypatch.setattr(resample, "line_table", lambda keys, s, i, memo=False: real_table(keys, s, i, False))
    fresh = resample.resize_views(imgs[2:], prep)  # every line computed, none kept
    assert not resample._LINES
    monkeypatch.setattr(resample, "line_table", real_table)
    computed = []
    monkeypatch.setattr(resample, "line_weights", lambda lines, *a: computed.append(len(lines)) or real_weights(lines, *a))
    resample.resize_views(imgs[:4], prep)  # images 2 and 3's lines are kept
    kept = len(resample._LINES)
    again = resample.resize_views(imgs[2:], prep)
    assert torch.equal(again, fresh)
    assert computed[0] == kept and computed[1] == len(resample._LINES) - kept > 0  # only the new lines
    monkeypatch.setattr(resample, "LINES_KEPT", 5)
    assert torch.equal(resample.resize_views(imgs[2:], prep), fresh) and len(resample._LINES) == 5


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32's 10-bit mantissa (to nearest, ties to even), as CUDA's TF32
    products round their operands."""
    i = t.contiguous().view(torch.int32)
    return ((i + 0xFFF + ((i >> 13) & 1)) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("ask", ["legacy", "backend"])
def test_products_run_in_full_float32_whatever_the_process_chose(monkeypatch, ask):
    """A process that asked for TF32 matmuls (``torch.set_float32_matmul_precision("high")``,
    common in training scripts, or ``torch.backends.cuda.matmul.fp32_precision = "tf32"``) gets
    the same pixels: the products run in full float32, and the process's settings are back
    after. CUDA's TF32 is emulated: operands rounded where the CUDA setting in force at the
    product is not "ieee"."""
    prep = Preprocess(64, "center", interpolation="bicubic")
    imgs = _images(2)
    exact = resample.resize_views(imgs, prep)
    cuda, seen, real = torch.backends.cuda.matmul, [], torch.Tensor.__matmul__

    def matmul(a, b):
        seen.append(cuda.fp32_precision)
        return real(a, b) if seen[-1] == "ieee" else real(_tf32(a), _tf32(b))

    monkeypatch.setattr(torch.Tensor, "__matmul__", matmul)
    third = torch.tensor([1 / 3])
    assert _tf32(third) != third and abs(float(_tf32(third)) - 1 / 3) < 2**-12  # the emulation rounds
    before = [b.fp32_precision for b in resample._MATMUL]
    try:
        if ask == "legacy":
            torch.set_float32_matmul_precision("high")
        else:
            cuda.fp32_precision = "tf32"
        asked = [b.fp32_precision for b in resample._MATMUL]
        assert asked[0] == "tf32"
        assert torch.equal(resample.resize_views(imgs, prep), exact)
        assert seen and set(seen) == {"ieee"}
        assert [b.fp32_precision for b in resample._MATMUL] == asked
        with resample.full_precision():  # nested (or another thread's): the last one out restores
            resample.resize_views(imgs, prep)
            assert cuda.fp32_precision == "ieee"
        assert [b.fp32_precision for b in resample._MATMUL] == asked
        if ask == "legacy":
            assert torch.get_float32_matmul_precision() == "high"
    finally:
        for b, was in zip(resample._MATMUL, before, strict=True):
            b.fp32_precision = was
