"""The reader: image files (or array items) -> content key + uint8 views, in loader workers.

Each image's bytes come from `Dataset.read_bytes` once: they are hashed for the content key
and decoded from memory, so extracting a folder for the first time reads every image exactly
once. Views are torchvision's pixels (`Preprocess`), channels-last, and a batch is collated
straight into shared memory (one copy on the way to the main process). Plain JPEGs may instead
travel as their bytes, to be decoded where the network runs (`decode="device"`): one batched
decode call, then one resize call per image size.
"""

from __future__ import annotations

import io
import math
import warnings

import torch

from fne.backbones.preprocess import Preprocess
from fne.data.datasets import Dataset, content_key, read_image

_JPEG = (".jpg", ".jpeg")


class ImageItems(torch.utils.data.Dataset):
    """Item j -> (dataset index, content key, pixels or JPEG bytes or None, error, stat).

    The one image dataset of fne: `fne extract` and `fne train` both read through it.
    pixels: what `prep` makes of the RGB PIL image (extract: `Preprocess`' uint8 (V, 3, S, S)
    views; train: its transform's one uint8 (3, S, S) view). With `raw_jpeg`, plain JPEG files
    (RGB or grey, no EXIF rotation) travel as their bytes (a 1-D uint8 tensor) for the device
    decoder. `stat` is (size, mtime_ns) of a file taken before it was read (for the manifest),
    None for arrays.
    """

    def __init__(self, dataset: Dataset, indices: list[int], prep, raw_jpeg: bool = False):
        self.dataset, self.indices, self.prep = dataset, indices, prep
        self.raw_jpeg = raw_jpeg and dataset.array_source is None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        d = self.dataset
        if d.array_source is not None:
            key = d.array_source.key(d.sources[i])
            try:
                return i, key, self.prep(d.load(i)), None, None
            except Exception as e:
                return i, key, None, why_unreadable(e), None
        try:
            data, stat = d.read_bytes(i)
        except OSError as e:  # no key without bytes: named as skipped, not recorded, read next run
            return i, None, None, f"cannot read: {e.strerror or e}", None
        key = content_key(data)
        try:
            if self.raw_jpeg and str(d.sources[i]).lower().endswith(_JPEG) and _plain_jpeg(data):
                return i, key, torch.frombuffer(bytearray(data), dtype=torch.uint8), None, stat
            return i, key, self.prep(read_image(io.BytesIO(data))), None, stat
        except Exception as e:  # unreadable, truncated or not an image: skip it, say why
            return i, key, None, why_unreadable(e), stat


def why_unreadable(e: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image file"
    return f"{type(e).__name__}: {e}"


def _plain_jpeg(data: bytes) -> bool:
    """True when a device decoder gives what PIL gives (else PIL decodes)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:  # reads the header only
        return img.format == "JPEG" and img.mode in ("RGB", "L") and img.getexif().get(0x0112, 1) == 1


def collate(items):
    """-> dict: `idx`/`keys`/`stats` of the good items in batch order; `pixels` stacks the decoded
    ones (in shared memory when run in a loader worker: one copy, none on the way to the main
    process), `raw` holds JPEG bytes; `bad` lists (index, key or None, error)."""
    out = {"idx": [], "keys": [], "stats": [], "pix": [], "pix_pos": [], "raw": [], "raw_pos": [], "bad": []}
    for i, key, x, err, stat in items:
        if stat is not None:
            out["stats"].append((i, key, stat))
        if err is not None:
            out["bad"].append((i, key, err))
            continue
        is_raw = x.dim() == 1
        out["raw" if is_raw else "pix"].append(x)
        out["raw_pos" if is_raw else "pix_pos"].append(len(out["idx"]))
        out["idx"].append(i)
        out["keys"].append(key)
    out["pixels"] = _stack(out.pop("pix")) if out["pix_pos"] else None
    return out


def _stack(views: list[torch.Tensor]) -> torch.Tensor:
    """Tensors of one shape -> (B, *shape), keeping their memory layout (channels-last views
    stay so: no transposing copy); in shared memory when run in a loader worker."""
    x0 = views[0]
    order = sorted(range(x0.dim()), key=lambda d: -x0.stride(d))  # outermost dimension first
    shape = (len(views), *(x0.shape[d] for d in order))
    n = math.prod(shape)
    if torch.utils.data.get_worker_info() is not None:
        flat = torch.empty(0, dtype=x0.dtype).set_(torch.UntypedStorage._new_shared(n * x0.element_size()))
    else:
        flat = torch.empty(n, dtype=x0.dtype)
    out = flat.view(shape)
    for j, x in enumerate(views):
        out[j].copy_(x.permute(order))
    back = [order.index(d) + 1 for d in range(x0.dim())]
    return out.permute(0, *back)


def _device_views(x: torch.Tensor, prep: Preprocess) -> torch.Tensor:
    """float (N, 3, H, W) of one size -> float (N, V, 3, S, S): `Preprocess`' geometry, on x's device.

    Antialiased, with the weights' interpolation, like PIL's resize; pixels differ from PIL's
    by a rounding step here and there, which is why device-decoded rows live in their own store.
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    s, how = prep.size, InterpolationMode(prep.interpolation)
    h, w = x.shape[-2:]
    rw, rh = prep.resized_size(w, h)
    if (rh, rw) != (h, w):
        x = F.resize(x, [rh, rw], interpolation=how, antialias=True)
    if prep.crop == "squash":
        return x[:, None]
    boxes = prep.boxes(rw, rh)
    crops = [x[..., y:y + s, x0:x0 + s] for x0, y in boxes]
    if prep.crop == "ten":  # TenCrop: the five crops of the mirrored image come second
        flipped = x.flip(-1)
        crops += [flipped[..., y:y + s, x0:x0 + s] for x0, y in boxes]
    return torch.stack(crops, dim=1)


def decode_jpegs(raw: list[torch.Tensor], dev: torch.device) -> list[torch.Tensor | None]:
    """One batched decode (nvjpeg on CUDA); if it fails, one by one, None where refused."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its image codecs deprecated
        try:
            return list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=dev))
        except Exception:  # one bad file fails the whole call: decode one by one
            imgs: list[torch.Tensor | None] = []
            for r in raw:
                try:
                    imgs.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=dev))
                except Exception:
                    imgs.append(None)
            return imgs


def decode_raw(raw: list[torch.Tensor], dev: torch.device, prep: Preprocess) -> list[torch.Tensor | str]:
    """JPEG bytes -> (V, 3, S, S) uint8 on `dev` per image, or an error string.

    Decoded in one call, then resized in batches: the images of one size share one resize
    call. What the device decoder refuses, PIL may still read; what both refuse is an error.
    """
    imgs = decode_jpegs(raw, dev)
    out: list[torch.Tensor | str | None] = [None] * len(raw)
    groups: dict[tuple[int, ...], list[int]] = {}
    for p, img in enumerate(imgs):
        if img is not None:
            groups.setdefault(tuple(img.shape), []).append(p)
            continue
        try:  # what the device decoder refused, PIL may still read
            out[p] = prep(read_image(io.BytesIO(raw[p].numpy().tobytes()))).to(dev)
        except Exception as e:
            out[p] = f"{type(e).__name__}: {e}"
    for ps in groups.values():
        x = torch.stack([imgs[p] for p in ps]).float()
        views = _device_views(x, prep).round_().clamp_(0, 255).to(torch.uint8)
        for p, v in zip(ps, views, strict=True):
            out[p] = v
    return out


def assemble(batch: dict, dev: torch.device, prep: Preprocess, bad: list):
    """-> (uint8 (B, V, 3, S, S) on `dev` or None, indices, keys) of the images that decoded;
    images the device decoder and PIL both refused are appended to `bad` as (index, key, error)."""
    idx, keys, pixels = batch["idx"], batch["keys"], batch["pixels"]
    if pixels is not None:
        pixels = pixels.to(dev, non_blocking=True)
    if not batch["raw"]:
        return pixels, idx, keys
    decoded = decode_raw(batch["raw"], dev, prep)
    slots: list[torch.Tensor | None] = [None] * len(idx)
    for pos, x in zip(batch["pix_pos"], pixels if pixels is not None else [], strict=True):
        slots[pos] = x
    for pos, x in zip(batch["raw_pos"], decoded, strict=True):
        if isinstance(x, str):
            bad.append((idx[pos], keys[pos], x))
        else:
            slots[pos] = x
    good = [p for p, x in enumerate(slots) if x is not None]
    if not good:
        return None, [], []
    return torch.stack([slots[p] for p in good]), [idx[p] for p in good], [keys[p] for p in good]
