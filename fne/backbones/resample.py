"""`Preprocess`' resize and crops for a batch of decoded images of any sizes, in a fixed number
of calls: PIL's resampling filters written as matrices, applied by two batched matrix products.

Resizing is separable: an image's resized rows are ``A @ X`` and its resized columns
``X @ B.T``, where each row of ``A`` (``B``) holds the filter's coefficients of one output row
(column). A crop keeps rows of ``A`` and ``B``; a mirrored crop reverses ``B``'s. Images of
different sizes then differ only in their matrices, so a whole batch is resized and cropped by
``A @ X @ B.T`` over the batch, the images zero-padded to a common size (and turned so that
their longer side runs along the columns, to pad less) and each matrix zero outside its image.

The coefficients are PIL's (`precompute_coeffs` in Pillow's Resample.c, the formula torch's
antialiased `interpolate` follows too), computed in float64 and applied in float32 without
PIL's 8-bit intermediate image: pixels differ from PIL's by a rounding step here and there.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from fne.backbones.preprocess import Preprocess

PAD_PIXELS = 64 << 20  # padded pixels resized at once (768 MiB as float32 RGB)


def _sinc(x: np.ndarray) -> np.ndarray:
    return np.sinc(x)  # sin(pi x) / (pi x), 1 at 0


# PIL's filters (Resample.c): support, coefficient of an input pixel `x` output pixels away.
FILTERS = {
    "box": (0.5, lambda x: ((x > -0.5) & (x <= 0.5)).astype(np.float64)),
    "bilinear": (1.0, lambda x: np.clip(1.0 - np.abs(x), 0.0, None)),
    "hamming": (1.0, lambda x: np.where(np.abs(x) < 1.0, _sinc(x) * (np.float32(0.54) + np.float32(0.46)
                                                                   * np.cos(np.pi * x)), 0.0)),
    "bicubic": (2.0, lambda x: _cubic(np.abs(x), -0.5)),
    "lanczos": (3.0, lambda x: np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3.0), 0.0)),
}


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=4096)
def axis_weights(n_in: int, n_out: int, start: int, step: int, s: int,
                 interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """PIL's coefficients for outputs `start`, `start + step`, ... (`s` of them) of resizing a
    line of `n_in` pixels to `n_out`.

    Parameters
    ----------
    n_in, n_out : int
        The line's length before and after the resize.
    start, step : int
        The first output pixel kept, and 1 (a crop) or -1 (a mirrored crop).
    s : int
        How many output pixels are kept.
    interpolation : str
        One of `FILTERS`, or "nearest" (the input pixel under the output pixel's center).

    Returns
    -------
    first : int64 array (s,)
        The first input pixel each output pixel reads.
    weights : float64 array (s, k)
        Their coefficients for pixels ``first``, ``first + 1``, ...; zero past the filter's
        support and the line's end.
    """
    out = start + step * np.arange(s)
    scale = n_in / n_out
    if interpolation == "nearest":  # PIL's ImagingScaleAffine: the center, summed step by step
        centers = np.add.accumulate(np.r_[scale * 0.5, np.full(n_out - 1, scale)])
        return np.minimum(centers[out].astype(np.int64), n_in - 1), np.ones((s, 1))
    support, fn = FILTERS[interpolation]
    fscale = max(scale, 1.0)
    support *= fscale
    center = (out + 0.5) * scale
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int): toward zero
    last = np.minimum((center + support + 0.5).astype(np.int64), n_in)
    x = first[:, None] + np.arange(math.ceil(support) * 2 + 1)
    w = np.where(x < last[:, None], fn((x - center[:, None] + 0.5) / fscale), 0.0)
    total = w.sum(axis=1, keepdims=True)
    return first, np.divide(w, total, out=np.zeros_like(w), where=total != 0)


def resize_views(imgs: list[torch.Tensor], prep: Preprocess) -> torch.Tensor:
    """Decoded images -> `prep`'s views of each, resized and cropped in batched calls.

    Parameters
    ----------
    imgs : list of uint8 tensors (3, H, W)
        The images, on one device, of any sizes.
    prep : Preprocess
        The geometry: resize, crop ("center", "squash", "ten"), interpolation.

    Returns
    -------
    uint8 tensor (N, V, 3, S, S)
        On the images' device; the same geometry as ``prep(image)`` (`Preprocess.__call__`).
    """
    n, s = len(imgs), prep.size
    dev = imgs[0].device if imgs else torch.device("cpu")
    out = torch.empty((n, prep.views, 3, s, s), dtype=torch.uint8, device=dev)
    plans = [_plan(prep, im) for im in imgs]
    order = sorted(range(n), key=lambda i: plans[i].region.shape[-2:])
    for chunk in _chunks(order, [p.region.shape[-2:] for p in plans]):
        y = _resize([plans[i] for i in chunk], s, prep.interpolation, dev)
        out[_to_device(np.array(chunk), dev)] = y
    return out


class _Plan:
    """One image's part read by its views (`region`, turned so that it is wider than tall) and
    its views' lines (n_in, n_out, start, step) along the region's rows and columns, each
    with the band's first pixel."""

    def __init__(self, region: torch.Tensor, rows: tuple[int, list], cols: tuple[int, list], turned: bool):
        self.region, self.rows, self.cols, self.turned = region, rows, cols, turned


def _plan(prep: Preprocess, im: torch.Tensor) -> _Plan:
    h, w = im.shape[-2:]
    rw, rh = prep.resized_size(w, h)
    boxes = prep.boxes(rw, rh)
    down = [(h, rh, y, 1) for _, y in boxes]
    across = [(w, rw, x, 1) for x, _ in boxes]
    if prep.crop == "ten":  # the five crops of the mirrored image: its column x is rw - 1 - x
        down += down
        across += [(w, rw, rw - 1 - x, -1) for x, _ in boxes]
    (y0, y1), (x0, x1) = (_band(lines, prep.size, prep.interpolation) for lines in (down, across))
    region = im[:, y0:y1, x0:x1]
    if y1 - y0 <= x1 - x0:
        return _Plan(region, (y0, down), (x0, across), False)
    return _Plan(region.transpose(-1, -2), (x0, across), (y0, down), True)


def _band(lines: list[tuple], s: int, interpolation: str) -> tuple[int, int]:
    """[lo, hi): the input pixels the lines read."""
    lo, hi = lines[0][0], 0
    for line in lines:
        first, w = axis_weights(*line, s, interpolation)
        lo, hi = min(lo, int(first.min())), max(hi, int(first.max()) + w.shape[1])
    return lo, min(hi, lines[0][0])


def _chunks(order: list[int], shapes: list[tuple[int, int]]) -> list[list[int]]:
    """Consecutive runs of `order` whose padding holds at most `PAD_PIXELS` (at least one image)."""
    out: list[list[int]] = []
    cur: list[int] = []
    r = c = 0
    for i in order:
        nr, nc = max(r, shapes[i][0]), max(c, shapes[i][1])
        if cur and (len(cur) + 1) * nr * nc > PAD_PIXELS:
            out.append(cur)
            cur, (nr, nc) = [], shapes[i]
        cur.append(i)
        r, c = nr, nc
    return [*out, cur] if cur else out


def _resize(plans: list[_Plan], s: int, interpolation: str, dev: torch.device) -> torch.Tensor:
    """uint8 (n, V, 3, S, S): ``A @ X @ B.T`` over the images, zero-padded to one size."""
    p = max(pl.region.shape[-2] for pl in plans)
    q = max(pl.region.shape[-1] for pl in plans)
    x = torch.zeros((len(plans), 3, p, q), dtype=torch.float32, device=dev)
    for j, pl in enumerate(plans):
        x[j, :, :pl.region.shape[-2], :pl.region.shape[-1]].copy_(pl.region)
    a = _matrices([pl.rows for pl in plans], p, s, interpolation, dev)  # (n, V, S, p)
    b = _matrices([pl.cols for pl in plans], q, s, interpolation, dev)  # (n, V, S, q)
    n, v = a.shape[:2]
    xb = x.view(n, 3 * p, q) @ b.view(n, v * s, q).transpose(1, 2)  # every view's columns at once
    y = a[:, :, None] @ xb.view(n, 3, p, v, s).permute(0, 3, 1, 2, 4)  # (n, V, 3, S, S)
    turned = [pl.turned for pl in plans]
    if any(turned):
        y = torch.where(_to_device(np.array(turned), dev)[:, None, None, None, None], y.transpose(-1, -2), y)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def _matrices(axes: list[tuple[int, list[tuple]]], width: int, s: int, interpolation: str,
              dev: torch.device) -> torch.Tensor:
    """float32 (n, V, S, width): each view's coefficients over its image's band (from `lo`)."""
    keys = sorted({line for _, lines in axes for line in lines})
    rows = [axis_weights(*key, s, interpolation) for key in keys]
    k = max(w.shape[1] for _, w in rows)
    firsts = np.stack([f for f, _ in rows])  # (U, S): one row per distinct line
    weights = np.zeros((len(keys), s, k), dtype=np.float32)
    for u, (_, w) in enumerate(rows):
        weights[u, :, :w.shape[1]] = w
    pos = {key: u for u, key in enumerate(keys)}
    ids = np.array([[pos[line] for line in lines] for _, lines in axes])  # (n, V)
    lo = np.array([lo for lo, _ in axes])
    idx = _to_device(firsts[ids] - lo[:, None, None], dev)[..., None] + torch.arange(k, device=dev)
    m = torch.zeros((*ids.shape, s, width), dtype=torch.float32, device=dev)
    return m.scatter_add_(-1, idx.clamp_(0, width - 1), _to_device(weights[ids], dev))


def _to_device(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    """A host array on `dev`; to a GPU from pinned memory, not waiting for the stream's work."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dev.type != "cuda":
        return t
    return t.pin_memory().to(dev, non_blocking=True)
