"""Training augmentation as batched ops on the device: RandomResizedCrop + horizontal flip.

With `--augment-on device` (`auto`'s choice on CUDA where the loader has few workers:
`on_device`) the loader's workers do almost nothing: plain
JPEGs travel as their bytes (`reader.ImageItems(raw_jpeg=True)`) with their aspect ratio read
from the header, and are decoded on the device (`torchvision.io.decode_jpeg`, batched nvjpeg on
CUDA); other images (PNG, EXIF-rotated or CMYK JPEGs, arrays) are decoded in the workers and
squashed to a fixed R x R square (R = 1.5 x the input size). Each image's random crop is then cut
and resized on the device with the antialiased bilinear coefficients torchvision's
RandomResizedCrop gets from PIL (`resample.resize_boxes`), mirrored where flipped: the whole
batch in one call, whatever its images' sizes.
The crop boxes follow torchvision's RandomResizedCrop on the original image (area fraction in
`scale`, aspect ratio in `ratio` of the original's pixels, ten tries, then the largest centred
box of a valid ratio), drawn with the flips from a CPU generator that `fne train` seeds each
epoch from the epoch's seed, in batch order, on the thread that crops ahead of the steps
(`epochs._batches`; another decodes ahead of it). A JPEG the device decoder refuses goes to
PIL; one both refuse is skipped and named.
Validation and test images then take `fne extract --decode device`'s path (`epochs.transforms`):
JPEG bytes from the workers, their center crops decoded and cut on the device.
"""

from __future__ import annotations

import io
import math

import torch
from PIL import Image

from fne.backbones.resample import resize_boxes
from fne.data.datasets import read_image
from fne.devices import resolve_decode
from fne.extraction import reader
from fne.options import AUGMENT_DEVICE_BELOW_WORKERS

SQUASH = 1.5  # the workers' square side, in input sizes

# `--augment-on auto` on CUDA augments on the device only where the loader has fewer workers than
# `fne.options.AUGMENT_DEVICE_BELOW_WORKERS` (8). On the H200 (16 cores, 15 workers, 29 Nov 2026:
# benchmarks/RESULTS.md) the workers' PIL augmentation fed 3,282 img/s alone, ~219 a worker, and
# trained frozen EfficientNet-Lite0 at 2,569 img/s, where the device's nvJPEG, slowed beside the
# training steps, gave 1,519 (28 Nov: 1,808): about 7-9 workers' worth. With fewer workers the
# CPU bounds the epoch and the device pays.


def on_device(augment_on: str, device: torch.device, workers: int) -> bool:
    """Whether `--augment-on` puts the augmentation and the evaluation's JPEG decoding on `device`.

    Parameters
    ----------
    augment_on : str
        "device", "cpu" or "auto": the device on CUDA where a library decodes JPEGs there
        (`fne.devices.resolve_decode`) and the loader has fewer than
        `fne.options.AUGMENT_DEVICE_BELOW_WORKERS` workers; else the workers.
    device : torch.device
        Where the network trains.
    workers : int
        The loader's worker processes.

    Returns
    -------
    bool
    """
    if augment_on == "auto":
        return resolve_decode("auto", device) == "device" and workers < AUGMENT_DEVICE_BELOW_WORKERS
    return augment_on == "device"


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
        from torchvision.transforms.v2 import functional as F

        self.last_aspect = img.width / img.height
        # torchvision's uint8 resize (antialiased bilinear): ~4x faster than PIL's here
        return F.resize(F.pil_to_tensor(img), [self.side, self.side], antialias=True)


class SizedItems(reader.ImageItems):
    """`reader.ImageItems` with a `Squash` prep (plain JPEGs as bytes) whose items also carry
    the image's aspect ratio (width / height)."""

    def __init__(self, dataset, indices: list[int], prep: Squash):
        super().__init__(dataset, indices, prep, raw_jpeg=True)

    def __getitem__(self, j: int):
        self.prep.last_aspect = 1.0
        item = super().__getitem__(j)
        x = item[2]
        if isinstance(x, reader.Jpeg):  # JPEG bytes: the size read from the header
            return (*item, x.size[0] / x.size[1])
        return (*item, self.prep.last_aspect)


def collate(items):
    """`reader.collate` plus `aspect`: a float tensor, one per good item, in batch order."""
    out = reader.collate([it[:5] for it in items])
    out["aspect"] = torch.tensor([it[5] for it in items if it[3] is None], dtype=torch.float32)
    return out


def crop_boxes(aspect: torch.Tensor, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3),
               generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomResizedCrop boxes for a batch, as fractions of each image's sides.

    Parameters
    ----------
    aspect : torch.Tensor
        (B,) width / height of each original image.
    scale, ratio
        As torchvision's RandomResizedCrop: area fraction and aspect ratio of the crop.
    generator : torch.Generator, optional
        CPU generator (default: torch's global one).

    Returns
    -------
    torch.Tensor
        (B, 4) float boxes x1, y1, x2, y2, as fractions of the image's width and height.
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
    return torch.stack([x0 / aa, y0, (x0 + w) / aa, y0 + h], 1).float()


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
        """See the class."""
        self.size, self.side, self.scale = size, side, scale

    def __call__(self, batch: dict, dev: torch.device, bad: list, generator: torch.Generator | None = None,
                 decoded: list[torch.Tensor | None] | None = None) -> tuple[torch.Tensor | None, list[int]]:
        """A `collate` batch -> (float (B, 3, S, S) in 0..255 on `dev`, cropped and flipped, or
        None; the dataset indices of its rows). Images no decoder reads are appended to `bad`
        as (index, key, error). The boxes and flips are drawn from `generator` (default: torch's
        global one). `decoded`: the batch's JPEGs already decoded on `dev` (`reader.decoding`;
        None where refused); without it they are decoded here, in one call."""
        idx, n = batch["idx"], len(batch["idx"])
        raw = reader.raw_jpegs(batch)
        if decoded is None:
            decoded = reader.decode_jpegs(raw, dev) if raw else []  # one call (nvjpeg on CUDA)
        boxes = crop_boxes(batch["aspect"], self.scale, generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        imgs: list[torch.Tensor | None] = [None] * n
        if batch["pixels"] is not None:  # squashed in the workers: one transfer
            for p, x in zip(batch["pix_pos"], batch["pixels"].to(dev, non_blocking=dev.type == "cuda"), strict=True):
                imgs[p] = x
        for p, data, img in zip(batch["raw_pos"], raw, decoded, strict=True):
            if img is not None:
                imgs[p] = img
                continue
            try:  # what the device decoder refused, PIL may still read
                pil = Squash(self.side)(read_image(io.BytesIO(data.numpy().tobytes())))
            except Exception as e:
                bad.append((idx[p], batch["keys"][p], reader.why_unreadable(e)))
                continue
            imgs[p] = pil.to(dev)  # outside the try: a device error is not the file's
        keep = [p for p in range(n) if imgs[p] is not None]
        if not keep:
            return None, []
        sides = torch.tensor([[imgs[p].shape[-1], imgs[p].shape[-2]] * 2 for p in keep], dtype=torch.float64)
        x = resize_boxes([imgs[p] for p in keep], (boxes[keep].double() * sides).numpy(), flip[keep].numpy(),
                         self.size)
        return x, [idx[p] for p in keep]
