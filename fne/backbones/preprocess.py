"""Preprocessing: what a backbone's weights expect of an image, as torchvision's transforms make it.

`Preprocess` turns a PIL image into uint8 views (resize, crop) in the loader workers; its `key`
is part of the store key, which is made without importing torch (`registry`). The weights'
mean and std are applied on the device, where the network runs (`normalize.Normalize`).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fne.errors import FneError
from fne.names import CROPS
from fne.option_handling import named, refusal

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Normalisations of the stores made before preprocessing entered the key: left out of the key.
_UNKEYED_NORMS = {(IMAGENET_MEAN, IMAGENET_STD), ((127.0 / 255,) * 3, (128.0 / 255,) * 3)}
_PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


class Preprocess:
    """PIL image -> uint8 tensor (views, 3, S, S); normalisation happens on the device.

    center: shorter side to `resize`, center crop of `size`; squash: `size` x `size`; ten: the
    four corners and the center of the resized image, and their mirror images.
    """

    def __init__(self, size: int = 224, crop: str = "center", *, resize: int | None = None,
                 interpolation: str = "bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if crop not in CROPS:
            raise refusal(lambda py: f"unknown {named('crop', py, crop)}; choose from {', '.join(CROPS)}")
        if interpolation not in _PIL_FILTERS:
            raise FneError(f"unknown interpolation {interpolation!r}; choose from {', '.join(_PIL_FILTERS)}")
        self.size, self.crop = size, crop
        self.resize = max(size, resize) if resize else round(size * 256 / 224)
        self.interpolation = interpolation
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    @property
    def views(self) -> int:
        return 10 if self.crop == "ten" else 1

    @property
    def key(self) -> str:
        """Part of the store key: `center224-tv` for the default preprocessing, more when it differs.

        `-tv` marks pixels made as torchvision's transforms make them (the resized size
        truncates, the crop offset rounds); rows of the earlier, rounding crop (keys without
        it) are never mixed with these.
        """
        key = f"{self.crop}{self.size}"
        if self.resize != round(self.size * 256 / 224) and self.crop != "squash":
            key += f"-r{self.resize}"
        if self.interpolation != "bilinear":
            key += f"-{self.interpolation}"
        norm = (tuple(round(v, 6) for v in self.mean), tuple(round(v, 6) for v in self.std))
        if not any(norm == tuple(tuple(round(v, 6) for v in part) for part in n) for n in _UNKEYED_NORMS):
            key += "-n" + hashlib.blake2b(repr(norm).encode(), digest_size=3).hexdigest()
        return key + "-tv"

    def to_dict(self) -> dict:
        return {"resize": self.resize, "crop_size": self.size, "crop": self.crop, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation}

    def resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) after the resize, as torchvision's `Resize` computes it.

        Parameters
        ----------
        w, h : int
            The image's width and height.

        Returns
        -------
        tuple of int
            squash: (size, size); otherwise the shorter side becomes `resize` and the longer
            one `int(resize * long / short)` (truncated, as `Resize(resize)` does).
        """
        if self.crop == "squash":
            return self.size, self.size
        r = self.resize
        return (r, int(r * h / w)) if w <= h else (int(r * w / h), r)

    def check_resized(self, w: int, h: int) -> None:
        """A DecompressionBombError (an unreadable image, named and skipped) when resizing a w x h
        image would make more pixels than Pillow opens (twice `Image.MAX_IMAGE_PIXELS`): a very
        thin image (1 x 4,000 becomes 256 x 1,024,000) would take gigabytes, and the system would
        kill the process that decodes it at every rerun."""
        rw, rh = self.resized_size(w, h)
        limit = Image.MAX_IMAGE_PIXELS
        if limit and rw * rh > 2 * limit:
            raise Image.DecompressionBombError(
                f"resized for the network, this {w} x {h} image would be {rw} x {rh} ({rw * rh:,} pixels, "
                f"over {2 * limit:,}, twice Pillow's MAX_IMAGE_PIXELS): too thin to resize")

    def boxes(self, w: int, h: int) -> list[tuple[int, int]]:
        """Where the crops lie in a resized image.

        Parameters
        ----------
        w, h : int
            The resized image's width and height.

        Returns
        -------
        list of (int, int)
            (left, top) of each crop: torchvision's `CenterCrop` (offsets
            `int(round((w - size) / 2))`), or for "ten" `FiveCrop`'s order (corners, then center).
        """
        s = self.size
        center = (int(round((w - s) / 2.0)), int(round((h - s) / 2.0)))
        if self.crop != "ten":
            return [center]
        return [(0, 0), (w - s, 0), (0, h - s), (w - s, h - s), center]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 (views, 3, S, S), channels-last in memory: exactly the pixels of
        torchvision.transforms.v2's `Resize(resize)` + `CenterCrop(size)`, `Resize((size, size))`
        or `Resize(resize)` + `TenCrop(size)` on the same PIL image."""
        import torch

        s, f = self.size, _PIL_FILTERS[self.interpolation]
        w, h = self.resized_size(*img.size)
        self.check_resized(*img.size)
        if self.crop == "center":  # one crop: resized (mostly) and taken before the array copy
            img = resize_crop(img, (w, h), self.boxes(w, h)[0], s, f)
            return torch.from_numpy(np.array(img, dtype=np.uint8)[None]).permute(0, 3, 1, 2)
        if img.size != (w, h):
            img = img.resize((w, h), f)
        arr = np.asarray(img, dtype=np.uint8)
        if self.crop == "squash":
            crops = [arr]
        else:
            crops = [arr[y:y + s, x:x + s] for x, y in self.boxes(w, h)]
            if self.crop == "ten":  # TenCrop: the five crops of the mirrored image come second
                flipped = arr[:, ::-1]
                crops += [flipped[y:y + s, x:x + s] for x, y in self.boxes(w, h)]
        # (V, S, S, 3) in memory, seen as (V, 3, S, S): channels-last, as the network takes it.
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)


def resize_crop(img: Image.Image, size: tuple[int, int], at: tuple[int, int], s: int, f: int) -> Image.Image:
    """`img.resize(size, f).crop((x, y, x + s, y + s))`, pixel for pixel, with less resizing.

    Pillow resizes in two one-dimensional passes through an 8-bit intermediate image, in the
    order `vertical_first` gives. Made as two one-dimensional resizes in that order, with the
    crop along the first pass's axis taken in between, the second pass computes only the crop's
    columns (or rows): the same coefficients (no `box`, whose float32 coordinates would change
    them) on the same intermediate pixels.

    Parameters
    ----------
    img : PIL.Image.Image
        The image.
    size : tuple of int
        (width, height) of the full resize.
    at : tuple of int
        (left, top) of the crop in the resized image.
    s : int
        The crop's side.
    f : int
        PIL's resampling filter.

    Returns
    -------
    PIL.Image.Image
        The s x s crop.
    """
    (W, H), (w, h), (x, y) = img.size, size, at
    if f == Image.NEAREST or img.mode not in ("RGB", "L"):  # not (known to be) two passes: resize, crop
        if img.size != size:
            img = img.resize(size, f)
        return img.crop((x, y, x + s, y + s))
    if vertical_first(W, H, w, h):  # rows of the crop, then its columns
        img = img.resize((W, h), f) if h != H else img
        img = img.crop((0, y, W, y + s))
        img = img.resize((w, s), f) if w != W else img
        return img.crop((x, 0, x + s, s))
    img = img.resize((w, H), f) if w != W else img  # horizontal first: columns, then rows
    img = img.crop((x, 0, x + s, H))
    img = img.resize((s, h), f) if h != H else img
    return img.crop((0, y, s, y + s))


# Pillow 13 chose the order of its two passes by the work each saves; before, always horizontal first.
_PASS_ORDER_BY_SIZE = int(Image.__version__.split(".")[0]) >= 13


def vertical_first(W: float, H: float, w: int, h: int) -> bool:
    """Whether Pillow resizes (W, H) to (w, h) vertically first: from Pillow 13 its two
    one-dimensional passes go horizontal first unless the height shrinks by more than twice as
    many pixels as the width (`ImagingResampleInner` in Pillow's Resample.c); before 13 always
    horizontal first (the tests check both against the Pillow installed)."""
    return _PASS_ORDER_BY_SIZE and H - h > 0 and H - h > (W - w) * 2
