"""Batched resize and crop (`fne.backbones.resample`): PIL's coefficients, any mix of sizes in
one call, the same pixels whatever the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn
from PIL import Image

from fne.backbones import resample
from fne.backbones.preprocess import _PIL_FILTERS, Preprocess

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
@pytest.mark.parametrize("how", ["bilinear", "bicubic"])
def test_views_match_torchs_antialiased_interpolate(crop, how):
    """torch's antialiased interpolate follows PIL's formula in its own code: resizing the whole
    image and then cropping (and mirroring) gives the same pixels up to a rounding step."""
    prep = Preprocess(64, crop, interpolation=how)
    imgs = _images()
    got = resample.resize_views(imgs, prep)
    assert got.shape == (len(imgs), prep.views, 3, 64, 64) and got.dtype == torch.uint8
    for im, g in zip(imgs, got, strict=True):
        h, w = im.shape[-2:]
        rw, rh = prep.resized_size(w, h)
        r = Fn.interpolate(im[None].float(), size=(rh, rw), mode=how, antialias=True)[0]
        views = [r[:, y:y + 64, x:x + 64] for x, y in prep.boxes(rw, rh)]
        if crop == "ten":
            views += [r.flip(-1)[:, y:y + 64, x:x + 64] for x, y in prep.boxes(rw, rh)]
        diff = (g.float() - torch.stack(views).round().clamp(0, 255)).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


def test_a_batch_of_any_sizes_is_one_call_with_each_images_own_pixels(monkeypatch):
    prep = Preprocess(64, "ten", interpolation="lanczos")
    imgs = _images(1)
    alone = torch.cat([resample.resize_views([im], prep) for im in imgs])
    calls, real = [], resample._resize
    monkeypatch.setattr(resample, "_resize", lambda plans, *a: calls.append(len(plans)) or real(plans, *a))
    together = resample.resize_views(imgs, prep)
    assert calls == [len(imgs)]
    assert torch.equal(together, alone)
    # padding held to PAD_PIXELS: the batch goes in several calls, with the same pixels
    calls.clear()
    monkeypatch.setattr(resample, "PAD_PIXELS", 3 * 300 * 300)
    assert torch.equal(resample.resize_views(imgs, prep), alone)
    assert len(calls) > 1 and sum(calls) == len(imgs)
    assert resample.resize_views([], prep).shape == (0, 10, 3, 64, 64)


def test_portrait_and_landscape_read_the_same_coefficients():
    """An image resized on its side (turned to pad less) gives its transposed pixels."""
    prep = Preprocess(48, "center", interpolation="bicubic")
    im = _images(2)[0]
    a = resample.resize_views([im], prep)[0, 0]
    b = resample.resize_views([im.transpose(-1, -2).contiguous()], prep)[0, 0]
    assert torch.equal(a, b.transpose(-1, -2))
