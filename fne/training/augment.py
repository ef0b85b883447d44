"""Training augmentation as batched ops on the device: RandomResizedCrop + horizontal flip.

On CUDA the loader's workers only decode and squash each image to a fixed R x R square (R =
1.5 x the input size), remembering its aspect ratio; the device then cuts every image's random
crop and resizes it in one `torchvision.ops.roi_align` call (bilinear, averaging several samples
per output pixel where it shrinks), and flips half of them. The crop boxes follow torchvision's
RandomResizedCrop on the original image (area fraction in `scale`, aspect ratio in `ratio` of
the original's pixels, ten tries, then the largest centred box of a valid ratio), drawn from
torch's CPU generator, which `fne train` seeds per epoch.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from fne.extraction import reader

SQUASH = 1.5  # the workers' square side, in input sizes


class Squash:
    """Worker transform: RGB PIL image -> uint8 (3, R, R), every image the same size; the
    image's aspect ratio (width / height) is left in `last_aspect` for `SizedItems`.

    Parameters
    ----------
    side : int
        R, the square's side.
    """

    def __init__(self, side: int):
        self.side = side
        self.last_aspect = 1.0

    def __call__(self, img: Image.Image) -> torch.Tensor:
        self.last_aspect = img.width / img.height
        sq = img.resize((self.side, self.side), Image.BILINEAR, reducing_gap=3.0)
        return torch.frombuffer(bytearray(sq.tobytes()), dtype=torch.uint8).view(
            self.side, self.side, 3).permute(2, 0, 1).contiguous()


class SizedItems(reader.ImageItems):
    """`reader.ImageItems` with a `Squash` prep whose items also carry the aspect ratio."""

    def __getitem__(self, j: int):
        self.prep.last_aspect = 1.0
        item = super().__getitem__(j)
        return (*item, self.prep.last_aspect)


def collate(items):
    """`reader.collate` plus `aspect`: a float tensor, one per good item, in batch order."""
    out = reader.collate([it[:5] for it in items])
    out["aspect"] = torch.tensor([it[5] for it in items if it[3] is None], dtype=torch.float32)
    return out


def crop_boxes(aspect: torch.Tensor, side: int, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3),
               generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomResizedCrop boxes for a batch, in pixels of the R x R squashed images.

    Parameters
    ----------
    aspect : torch.Tensor
        (B,) width / height of each original image.
    side : int
        R, the side of the squashed images.
    scale, ratio
        As torchvision's RandomResizedCrop: area fraction and aspect ratio of the crop.
    generator : torch.Generator, optional
        CPU generator (default: torch's global one).

    Returns
    -------
    torch.Tensor
        (B, 4) float boxes x1, y1, x2, y2.
    """
    b, tries = len(aspect), 10
    a = aspect.double().view(b, 1)  # the original image as a (aspect x 1) rectangle
    area = a * torch.empty(b, tries, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_r = torch.empty(b, tries, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                                generator=generator)
    w, h = (area * log_r.exp()).sqrt(), (area / log_r.exp()).sqrt()
    ok = (w <= a) & (h <= 1)
    first = torch.where(ok.any(1), ok.double().argmax(1), torch.full((b,), -1))
    pick = first.clamp(min=0).view(b, 1)
    w, h = w.gather(1, pick).view(b), h.gather(1, pick).view(b)
    # no valid try: the whole image, trimmed to the nearest allowed ratio, centred
    aa = a.view(b)
    fw = torch.where(aa > ratio[1], ratio[1] * torch.ones_like(aa), aa)
    fh = torch.where(aa < ratio[0], aa / ratio[0], torch.ones_like(aa))
    none = first < 0
    w, h = torch.where(none, fw, w), torch.where(none, fh, h)
    u = torch.rand(b, 2, dtype=torch.float64, generator=generator)
    x0 = torch.where(none, (aa - w) / 2, u[:, 0] * (aa - w))
    y0 = torch.where(none, (1 - h) / 2, u[:, 1] * (1 - h))
    sx = side / aa
    return torch.stack([x0 * sx, y0 * side, (x0 + w) * sx, (y0 + h) * side], 1).float()


class DeviceAugment:
    """RandomResizedCrop(size, scale) + RandomHorizontalFlip on a batch on its device.

    Parameters
    ----------
    size : int
        Output side S.
    side : int
        R, the side of the squashed input images.
    scale : tuple of float
        Area fraction range of the crop (train's 0.25..1).
    """

    def __init__(self, size: int, side: int, scale=(0.25, 1.0)):
        self.size, self.side, self.scale = size, side, scale

    def __call__(self, x: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, R, R) on the device -> float (B, 3, S, S) in 0..255, cropped and flipped."""
        from torchvision.ops import roi_align

        b = x.shape[0]
        boxes = crop_boxes(aspect, self.side, self.scale)
        flip = torch.rand(b) < 0.5
        rois = torch.cat([torch.arange(b, dtype=torch.float32).view(b, 1), boxes], 1).to(x.device)
        out = roi_align(x.float(), rois, output_size=(self.size, self.size), spatial_scale=1.0,
                        sampling_ratio=-1, aligned=True)
        return torch.where(flip.to(x.device).view(b, 1, 1, 1), out.flip(-1), out)
