"""Resizing and cropping a batch of decoded images of any sizes in a fixed number of calls:
PIL's resampling filters written as matrices, applied by two batched matrix products. Used for
`Preprocess`' views of device-decoded JPEGs (`resize_views`) and for training's random resized
crops on the device (`resize_boxes`).

Resizing is separable: an image's resized rows are ``A @ X`` and its resized columns
``X @ B.T``, where each row of ``A`` (``B``) holds the filter's coefficients of one output row
(column). A crop keeps rows of ``A`` and ``B``; a mirrored crop reverses ``B``'s. Images of
different sizes then differ only in their matrices, so a whole batch is resized and cropped by
``A @ X @ B.T`` over the batch, the images zero-padded to a common size and each matrix zero
outside its image.

The arithmetic is Pillow's for 8-bit images (Resample.c): its coefficients (`precompute_coeffs`,
the formula torch's antialiased `interpolate` follows too) rounded to its 22-bit fixed point,
its pass order (`preprocess.vertical_first`: the first product runs along the axis Pillow
resizes first, so images it resizes vertically first are turned), and its 8-bit intermediate
image (rounded half up and clipped after the first product). The products run in `DTYPE`: in float64 they give
Pillow's pixels exactly (on the same decoded pixels; the tests check it); in float32, the
default, a sum that Pillow's integers put within float32's error of a rounding edge (often
x.5 - 2**-21) may fall on its other side: then one level apart (0.045 % of the values of
pets37's center crops), and the same image may differ so between batches.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from itertools import groupby

import numpy as np
import torch

from fne.backbones.preprocess import Preprocess, vertical_first
from fne.held import Held, first

PAD_PIXELS = 64 << 20  # padded pixels resized at once (768 MiB as float32 RGB)
DTYPE = torch.float32  # of the matrix products (float64: Pillow's pixels exactly, at GPUs' fp64 speed)


# PIL's filters (Resample.c): support, coefficient of an input pixel `x` output pixels away
# (np.sinc(x) is sin(pi x) / (pi x); hamming's constants are C floats there).
FILTERS = {
    "box": (0.5, lambda x: ((x > -0.5) & (x <= 0.5)).astype(np.float64)),
    "bilinear": (1.0, lambda x: np.clip(1.0 - np.abs(x), 0.0, None)),
    "hamming": (1.0, lambda x: np.where(x == 0.0, 1.0, np.where(np.abs(x) < 1.0, np.sinc(x) * (
        np.float32(0.54) + np.float32(0.46) * np.cos(np.pi * x)), 0.0))),  # 1 at 0, as Pillow's (not 1 + 3e-8)
    "bicubic": (2.0, lambda x: _cubic(np.abs(x), -0.5)),
    "lanczos": (3.0, lambda x: np.where((x >= -3.0) & (x < 3.0), np.sinc(x) * np.sinc(x / 3.0), 0.0)),
}


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


Line = tuple[int, float, int, int, float]
"""One output axis of one view: (n_in, scale, start, step, shift). Output pixel ``o`` (of S)
centres on input position ``(start + step * o + 0.5) * scale + shift`` of a line of `n_in`
pixels: a resize by `scale` then a crop from `start` (mirrored where `step` is -1), or the
resize of a box from `shift` (PIL's ``resize(box=...)``)."""


def line_weights(lines: np.ndarray, s: int, interpolation: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PIL's coefficients (Pillow's `precompute_coeffs`) of `s` output pixels of each line.

    Parameters
    ----------
    lines : float64 array (m, 5)
        `Line`s.
    s : int
        Output pixels per line.
    interpolation : str
        One of `FILTERS`, or "nearest" (the input pixel under the output pixel's center, as
        PIL's scaling finds it).

    Returns
    -------
    first, last : int64 arrays (m, s)
        The input pixels ``[first, last)`` each output pixel reads.
    weights : float64 array (m, s, k)
        Their coefficients for pixels ``first``, ``first + 1``, ...; zero from `last` on.
    """
    n_in, scale, start, step, shift = (c[:, None] for c in lines.T)
    o = start + step * np.arange(s)
    if interpolation == "nearest":
        first = np.minimum(_nearest(lines, o), n_in - 1).astype(np.int64)
        return first, first + 1, np.ones((*first.shape, 1))
    support, fn = FILTERS[interpolation]
    fscale = np.maximum(scale, 1.0)
    support = support * fscale
    center = (o + 0.5) * scale + shift
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int): toward zero
    last = np.minimum((center + support + 0.5).astype(np.int64), n_in.astype(np.int64))
    x = first[..., None] + np.arange(math.ceil(support.max(initial=0.0)) * 2 + 1)
    w = np.where(x < last[..., None], fn((x - center[..., None] + 0.5) / fscale[..., None]), 0.0)
    total = w.sum(axis=-1, keepdims=True)
    return first, last, np.divide(w, total, out=np.zeros_like(w), where=total != 0)


def _nearest(lines: np.ndarray, o: np.ndarray) -> np.ndarray:
    """PIL scales with nearest by adding `scale` pixel by pixel (ImagingScaleAffine): where an
    output pixel's center falls on an input pixel's edge, the sum's rounding picks the side."""
    out = np.empty(o.shape, dtype=np.int64)
    for j, (_, scale, _, _, shift) in enumerate(lines):
        n = int(max(o[j].max(), 0)) + 1
        centers = np.add.accumulate(np.r_[shift + scale * 0.5, np.full(n - 1, scale)])
        out[j] = np.maximum(centers[np.maximum(o[j], 0).astype(np.int64)], 0).astype(np.int64)
    return out


def resize_views(imgs: list[torch.Tensor], prep: Preprocess, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Decoded images -> `prep`'s views of each, resized and cropped in batched calls.

    Parameters
    ----------
    imgs : list of uint8 tensors (3, H, W)
        The images, on one device, of any sizes.
    prep : Preprocess
        The geometry: resize, crop ("center", "squash", "ten"), interpolation.
    dtype : torch.dtype, optional
        Of the matrix products (default `DTYPE`); torch.float64 gives Pillow's pixels exactly.

    Returns
    -------
    uint8 tensor (N, V, 3, S, S)
        On the images' device; the same geometry as ``prep(image)`` (`Preprocess.__call__`).
    """
    views = []
    for im in imgs:
        h, w = im.shape[-2:]
        rw, rh = prep.resized_size(w, h)
        boxes = prep.boxes(rw, rh)
        down = [(h, h / rh, y, 1, 0.0) for _, y in boxes]
        across = [(w, w / rw, x, 1, 0.0) for x, _ in boxes]
        if prep.crop == "ten":  # the five crops of the mirrored image: its column x is rw - 1 - x
            down += down
            across += [(w, w / rw, rw - 1 - x, -1, 0.0) for x, _ in boxes]
        views.append((down, across, vertical_first(w, h, rw, rh)))
    return resize_lines(imgs, views, prep.size, prep.interpolation, prep.views, memo=True, dtype=dtype).to(torch.uint8)


def resize_boxes(imgs: list[torch.Tensor], boxes: np.ndarray, flip: np.ndarray, s: int,
                 interpolation: str = "bilinear") -> torch.Tensor:
    """Each image's box resized to `s` x `s` (mirrored where `flip`): torchvision's
    ``resized_crop`` on PIL images, as batched calls.

    Parameters
    ----------
    imgs : list of uint8 tensors (3, H, W)
        The images, on one device, of any sizes.
    boxes : float array (N, 4)
        x0, y0, x1, y1 of each box in its image's pixels.
    flip : bool array (N,)
        Mirror the crop left to right.
    s : int
        The output side.
    interpolation : str
        One of `FILTERS` or "nearest".

    Returns
    -------
    float32 tensor (N, 3, S, S)
        Whole pixel values in 0..255, on the images' device.
    """
    views = []
    for im, (x0, y0, x1, y1), f in zip(imgs, np.asarray(boxes, dtype=np.float64), flip, strict=True):
        h, w = im.shape[-2:]
        across = (w, (x1 - x0) / s, s - 1, -1, x0) if f else (w, (x1 - x0) / s, 0, 1, x0)
        views.append(([(h, (y1 - y0) / s, 0, 1, y0)], [across], vertical_first(x1 - x0, y1 - y0, s, s)))
    return resize_lines(imgs, views, s, interpolation, 1)[:, 0]


def resize_lines(imgs: list[torch.Tensor], views: list[tuple[list[Line], list[Line], bool]], s: int,
                 interpolation: str, v: int, memo: bool = False, dtype: torch.dtype | None = None) -> torch.Tensor:
    """float32 (N, V, 3, S, S) of whole values in 0..255: each image's views, given by their
    `Line`s down and across and whether Pillow would resize it vertically first. `memo`: keep
    each line's coefficients for later batches (`line_table`; lines that recur, as a dataset's
    image sizes do, not random crops). `dtype`: of the products (default `DTYPE`)."""
    n = len(imgs)
    dev = imgs[0].device if imgs else torch.device("cpu")
    out = torch.empty((n, v, 3, s, s), dtype=torch.float32, device=dev)
    if not n:
        return out
    keys = sorted({line for down, across, _ in views for line in (*down, *across)})
    pos = {key: u for u, key in enumerate(keys)}
    first, last, fixed = line_table(keys, s, interpolation, memo)
    lo, hi = first.min(axis=1).tolist(), last.max(axis=1).tolist()  # each line's input span
    plans = []
    for im, (down, across, turned) in zip(imgs, views, strict=True):
        ids = [[pos[line] for line in lines] for lines in (down, across)]
        (y0, y1), (x0, x1) = ((min(lo[u] for u in us), max(hi[u] for u in us)) for us in ids)
        if not turned:  # the first product runs along the columns: Pillow's horizontal pass
            plans.append(_Plan(im, (y0, y1, x0, x1), (y0, ids[0]), (x0, ids[1]), False))
        else:  # vertical first: turned, its columns become the padded rows
            plans.append(_Plan(im, (y0, y1, x0, x1), (x0, ids[1]), (y0, ids[0]), True))
    order = sorted(range(n), key=lambda i: plans[i].key)
    on_dev = (_to_device(first, dev), _to_device(fixed, dev).to(dtype or DTYPE))
    for chunk in _chunks(order, [p.key[0] for p in plans]):
        out[_to_device(np.array(chunk), dev)] = _resize([plans[i] for i in chunk], on_dev, s, dev).float()
    return out


_LINES: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
LINES_KEPT = 2048  # lines whose coefficients are kept (~8 KiB each at S = 224)
_lines_lock = threading.Lock()


def line_table(keys: list[Line], s: int, interpolation: str, memo: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`line_weights` of `keys`, the coefficients rounded to Pillow's 22-bit fixed point (its
    8-bit `kk`): first, last (U, S) and coefficients (U, S, k), zero from `last` on. `memo`:
    from and into a table of the last `LINES_KEPT` lines used (each line's coefficients depend
    on the line alone), so that a batch computes only the lines no recent batch had."""
    if not memo:
        first, last, w = line_weights(np.array(keys, dtype=np.float64), s, interpolation)
        return first, last, _fixed(w)
    names = [(key, s, interpolation) for key in keys]
    with _lines_lock:
        rows = [_LINES.get(name) for name in names]
    new = [u for u, r in enumerate(rows) if r is None]
    if new:
        first, last, w = line_weights(np.array([keys[u] for u in new], dtype=np.float64), s, interpolation)
        w = _fixed(w).astype(np.float32)  # exact: multiples of 2**-22 below 1
        for j, u in enumerate(new):
            taps = np.flatnonzero(w[j].any(axis=0))  # this line's; the batch pads to its widest
            rows[u] = (first[j], last[j], w[j, :, :taps[-1] + 1 if taps.size else 1])
    with _lines_lock:  # this batch's lines become the most recent; the least recent go
        for name, r in zip(names, rows, strict=True):
            _LINES[name] = r
            _LINES.move_to_end(name)
        while len(_LINES) > LINES_KEPT:
            _LINES.popitem(last=False)
    k = max(r[2].shape[1] for r in rows)
    fixed = np.zeros((len(rows), s, k), dtype=np.float64)
    for u, r in enumerate(rows):
        fixed[u, :, :r[2].shape[1]] = r[2]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), fixed


def _fixed(w: np.ndarray) -> np.ndarray:
    """Coefficients rounded to Pillow's 22-bit fixed point, as its 8-bit resampling uses them."""
    return np.trunc(w * (1 << 22) + np.copysign(0.5, w)) / (1 << 22)


class _Plan:
    """One image, the pixels its views read (`band`: rows y0:y1, columns x0:x1; turned where
    Pillow resizes vertically first), and its views' lines (ids in the batch's table) along the
    turned band's rows and columns, each with the band's first pixel along that axis."""

    def __init__(self, image: torch.Tensor, band: tuple[int, int, int, int], rows: tuple[int, list[int]],
                 cols: tuple[int, list[int]], turned: bool):
        self.image, self.band, self.rows, self.cols, self.turned = image, band, rows, cols, turned
        y0, y1, x0, x1 = band
        shape = (x1 - x0, y1 - y0) if turned else (y1 - y0, x1 - x0)
        # sorted by this: images of one size and band lie together, and are copied together
        self.key = (shape, tuple(image.shape), band, turned)


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


def _resize(plans: list[_Plan], table: tuple, s: int, dev: torch.device) -> torch.Tensor:
    """(n, V, 3, S, S): ``A @ X @ B.T`` over the images, zero-padded to one size."""
    p = max(pl.key[0][0] for pl in plans)
    q = max(pl.key[0][1] for pl in plans)
    x = torch.zeros((len(plans), 3, p, q), dtype=table[1].dtype, device=dev)  # the coefficients' dtype
    j = 0
    for ((r, c), _, (y0, y1, x0, x1), turned), same in groupby(plans, key=lambda pl: pl.key):
        same = [pl.image for pl in same]  # one copy for the images of one size and band
        region = (torch.stack(same) if len(same) > 1 else same[0][None])[..., y0:y1, x0:x1]
        x[j:j + len(same), :, :r, :c].copy_(region.transpose(-1, -2) if turned else region)
        j += len(same)
    a = _matrices([pl.rows for pl in plans], table, p, dev)  # (n, V, S, p)
    b = _matrices([pl.cols for pl in plans], table, q, dev)  # (n, V, S, q)
    n, v = a.shape[:2]
    with full_precision():
        xb = x.view(n, 3 * p, q) @ b.view(n, v * s, q).transpose(1, 2)  # every view's columns at once
        xb = xb.add_(0.5).floor_().clamp_(0, 255)  # Pillow's 8-bit intermediate image
        y = a[:, :, None] @ xb.view(n, 3, p, v, s).permute(0, 3, 1, 2, 4)  # (n, V, 3, S, S)
    y = y.add_(0.5).floor_().clamp_(0, 255)
    turned = [pl.turned for pl in plans]
    if any(turned):
        y = torch.where(_to_device(np.array(turned), dev)[:, None, None, None, None], y.transpose(-1, -2), y)
    return y


_MATMUL = (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul)  # each backend's fp32 precision


def _precisions() -> tuple[str, ...]:
    return tuple(b.fp32_precision for b in _MATMUL)


def _set_precisions(values: tuple[str, ...]) -> None:
    for b, v in zip(_MATMUL, values, strict=True):
        b.fp32_precision = v


_precision = Held(_precisions, _set_precisions, first)  # one setting for the process: threads share it


def full_precision() -> contextlib.AbstractContextManager[None]:
    """float32 products in full float32 inside ("ieee"), whatever the process asked for
    (``torch.set_float32_matmul_precision`` or the backends' ``fp32_precision``): in TF32
    (CUDA's "high"; operands rounded to 10-bit mantissas) 2.8 % of the values of pets37's center
    crops move, by up to two levels (TF32 emulated on a CPU). The settings are global, so the
    threads inside at once share one change, and the last one out restores them (`fne.held.Held`)."""
    return _precision(("ieee",) * len(_MATMUL))


def _matrices(axes: list[tuple[int, list[int]]], table: tuple, width: int, dev: torch.device) -> torch.Tensor:
    """(n, V, S, width): each view's coefficients over its image's region (from `lo`);
    `table` holds every line's first pixels (U, S) and coefficients (U, S, k) on the device."""
    first, weights = table
    ids = _to_device(np.array([u for _, u in axes]), dev)  # (n, V)
    lo = _to_device(np.array([lo for lo, _ in axes]), dev)
    idx = (first[ids] - lo[:, None, None])[..., None] + torch.arange(weights.shape[-1], device=dev)
    m = torch.zeros((*idx.shape[:-1], width), dtype=weights.dtype, device=dev)
    return m.scatter_add_(-1, idx.clamp_(0, width - 1), weights[ids])


def _to_device(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    """A host array on `dev`; to a GPU from pinned memory, not waiting for the stream's work."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dev.type != "cuda":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)
