"""Any torchvision classification model, or `timm:NAME`, as an fne backbone.

Taps are found from the model's structure, never from its name: the model is built on the meta
device (no memory, no initialisation cost), one dry forward records which modules run, in what
order and with what output shape, and a small rule table turns that into taps:

- a *container* (nn.Sequential and subclasses that keep its forward, nn.ModuleList/ModuleDict,
  timm's `*Stage` modules) is looked through;
- a *block* is a module with its own forward that sits in a container (or repeats among its
  siblings): ResNet BasicBlock/Bottleneck, ConvNeXt blocks, inverted residuals / MBConv,
  DenseNet dense blocks, RegNet blocks, Inception modules, ViT/Swin encoder blocks. Its output
  is tapped and its inside is not looked at, unless it is a stage: it holds a Sequential of two or
  more composite blocks of one type (PiT, FasterNet, cs3 CSPDarknet, SHViT, TinyViT), or returns
  what the last of the blocks in its container returned (torchvision's MaxVitBlock);
- outside blocks, every activation module (ReLU, GELU, SiLU, Hardswish, ...) is a tap: the
  plain-network rule that gives VGG's conv1_1..conv5_3, fc6, fc7 and stem/head convolutions;
- pooling follows the output's layout: (B, C, H, W) spatial mean, (B, H, W, C) Swin maps,
  (B, N, C) tokens give two taps, the class token and the mean of the patch tokens, the prefix
  tokens counted per block (`_prefix`); an output that is not per image (TNT's pixel tokens) is
  not tapped;
- `last` is what the classifier reads: the last tap when only pooling / dropout / flatten run
  between them, else a `pre_logits` tap on the classifier's input (pooled where it is a map). A
  timm head that pools a map inside is looked into for its layer to the classes; one that
  combines several heads' scores (CrossViT, EfficientViM) is refused.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fne.backbones.tap import Tap
from fne.errors import FneError
from fne.handoff import imported
from fne.option_handling import named, refusal

TIMM_HINT = "pip install 'timm>=1.0' (or fne-toolkit[timm])"

ACTIVATIONS = frozenset({"ReLU", "ReLU6", "GELU", "GELUTanh", "QuickGELU", "SiLU", "Swish", "Hardswish",
                         "HardSwish", "HardSwishMe", "SwishMe", "Mish", "MishMe", "LeakyReLU", "ELU",
                         "CELU", "SELU", "PReLU"})
# Modules with their own forward that are not blocks of the network (their inside is walked).
NOT_BLOCK_TYPES = frozenset({"PatchMerging", "PatchMergingV2", "PatchEmbed", "Downsample",
                             "SelectAdaptivePool2d", "ClassifierHead", "NormMlpClassifierHead"})
NOT_BLOCK_NAMES = frozenset({"downsample", "patch_embed", "stem", "head", "heads", "global_pool", "attn_pool"})
# Leaves that leave the classifier's input equal to the last tap's pooled output.
PASS_THROUGH = frozenset({"Dropout", "Dropout1d", "Dropout2d", "Identity", "Flatten", "DropPath"})


@dataclass(frozen=True)
class Discovered:
    taps: tuple  # of backbones.Tap
    last: str
    classifier: str
    fc_layers: tuple[str, ...]
    num_classes: int


def _is_container(m: nn.Module) -> bool:
    t = type(m)
    if isinstance(m, nn.Sequential):
        return t.forward is nn.Sequential.forward
    if isinstance(m, (nn.ModuleList, nn.ModuleDict)):
        return t.forward is nn.Module.forward
    return t.__name__.endswith("Stage")  # timm stages: downsample + blocks; the blocks are tapped


def _tensor(x):
    while isinstance(x, (tuple, list)) and x:
        x = x[0]
    return x if isinstance(x, torch.Tensor) else None


def _trace(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str, tuple]]:
    """One forward; events (kind 'pre'/'post', module name, shape) in the order they happen."""
    events: list[tuple[str, str, tuple]] = []
    handles = []
    for name, m in model.named_modules():
        if not name:
            continue

        def pre(mod, inputs, name=name):
            t = _tensor(inputs)
            events.append(("pre", name, tuple(t.shape) if t is not None else ()))

        def post(mod, inputs, output, name=name):
            t = _tensor(output)
            events.append(("post", name, tuple(t.shape) if t is not None else ()))

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return events


def _layout(shape: tuple) -> tuple[str, int] | None:
    """(pool, channels) for an output shape, or None when it is not a feature map/vector."""
    if len(shape) == 2:
        return "mean_nchw", shape[1]
    if len(shape) == 3:
        return "tokens", shape[2]
    if len(shape) == 4:
        if shape[1] == shape[2] and shape[3] != shape[2]:
            return "mean_nhwc", shape[3]
        return "mean_nchw", shape[1]
    return None


def discover(model: nn.Module, x: torch.Tensor, classifier: str | None, num_classes: int,
             prefix_tokens: int) -> Discovered:
    """Taps of `model` (built on any device, `x` an input of its native size on that device)."""
    events = _trace(model, x)
    posts = [(n, s) for k, n, s in events if k == "post"]
    calls = Counter(n for n, _ in posts)
    ran = {n.rsplit(".", i)[0] for n in calls for i in range(n.count(".") + 1)}  # with ModuleLists
    shape = dict(posts)  # last call's shape
    order = {n: i for i, (n, _) in enumerate(posts)}
    modules = dict(model.named_modules())

    reads = {n: s for k, n, s in events if k == "pre"}
    if classifier is None:
        classifier = _find_classifier(model, posts, modules, num_classes)
    elif len(reads.get(classifier, ())) > 2 and any(isinstance(m, (nn.Linear, nn.Conv2d))
                                                      for m in list(modules[classifier].modules())[1:]):
        # a head that pools a map inside (timm's ClassifierHead): the classifier is its layer to the classes
        classifier = _find_classifier(model, [p for p in posts if p[0].startswith(classifier + ".")], modules,
                                      num_classes)

    found: list[tuple[int, object]] = []

    def add(name: str, mod: nn.Module) -> None:
        lay = _layout(shape.get(name, ()))
        if lay is None or shape[name][0] != x.shape[0]:  # not per image (TNT's pixel tokens, first of a pair)
            return
        pool, ch = lay
        if pool == "tokens":
            n = shape[name][1]
            prefix = _prefix(n, prefix_tokens)
            if prefix > 0:
                found.append((order[name], Tap(f"{name}.cls", name, ch, pool="cls", prefix_tokens=prefix)))
            if n > prefix:
                found.append((order[name], Tap(f"{name}.mean", name, ch, pool="mean_tokens", prefix_tokens=prefix)))
        else:
            found.append((order[name], Tap(name, name, ch, pool=pool)))

    def walk(parent: nn.Module, prefix: str) -> None:
        kids = list(parent.named_children())
        # blocks among their siblings: modules with an inside and their own forward (Inception's
        # Mixed_5b..Mixed_7c, each of its own type; ResNet blocks; timm's BatchNormAct2d)
        blocks = sum(1 for n, m in kids if calls[prefix + n] == 1 and _block_like(n, m))
        for n, m in kids:
            full = prefix + n
            if full not in ran or full == classifier:
                continue
            if not any(True for _ in m.children()):
                if type(m).__name__ in ACTIVATIONS and calls[full] == 1:
                    add(full, m)
                continue
            if _is_container(m):
                walk(m, full + ".")
                continue
            block = (_is_container(parent) or blocks >= 2) and calls[full] == 1 and _block_like(n, m)
            if block and not _is_stage(full, m, posts, order) and not _holds_stage_blocks(full, m, calls, shape, x.shape[0]):
                add(full, m)
            else:
                walk(m, full + ".")

    walk(model, "")
    # what runs after the classifier (SqueezeNet's ReLU on its class scores) is no feature
    taps = [t for i, t in sorted(found, key=lambda p: p[0]) if i < order[classifier]]
    if not taps:
        raise FneError(f"found no layers to tap in {type(model).__name__}: no block's output (the first tensor "
                       f"of those it returns) is a feature map or token sequence per image")

    last = _find_last(events, modules, taps, classifier)
    if last is None:
        ch = next(s for k, n, s in events if k == "pre" and n == classifier)
        pool, width = _layout(ch) if len(ch) == 4 else ("mean_nchw", int(math.prod(ch[1:])))  # a map: pooled
        taps.append(Tap("pre_logits", classifier, width, on_input=True, pool=pool))
        last = "pre_logits"

    parent = classifier.rpartition(".")[0]
    fc = (classifier,)
    if parent and _is_container(modules[parent]):  # hidden fc layers, and a 1x1 conv classifier
        fc = tuple(f"{parent}.{n}" for n, m in modules[parent].named_children()
                   if (isinstance(m, nn.Linear) or f"{parent}.{n}" == classifier) and calls[f"{parent}.{n}"])
    return Discovered(tuple(taps), last, classifier, fc, num_classes)


def _square(n: int) -> bool:
    return n >= 0 and math.isqrt(n) ** 2 == n


def _prefix(n: int, prefix_tokens: int) -> int:
    """How many of a block's `n` output tokens are class/register tokens. The model declares
    `prefix_tokens`, but not every block carries them: CaiT's self-attention blocks hold the patch
    tokens alone (its class token joins later), its class-attention blocks return the class token
    alone. Fne's input is square, so its patch tokens make a square grid: n patch tokens with the
    prefix, n - prefix_tokens tokens without."""
    if prefix_tokens and n > prefix_tokens and _square(n) and not _square(n - prefix_tokens):
        return 0
    return min(prefix_tokens, n)


def _is_stage(name: str, m: nn.Module, posts: list, order: dict) -> bool:
    """A block that is a stage of blocks (torchvision's MaxVitBlock): it holds a container of two or
    more blocks, and its output is the last one's (the module that returned just before it)."""
    inner = [(f"{name}.{n}", c) for n, c in m.named_children() if _is_container(c)]
    held = [f"{cn}.{n}" for cn, c in inner for n, k in c.named_children() if _block_like(n, k)]
    if len(held) < 2 or order.get(name, 0) == 0:
        return False
    before, mine = posts[order[name] - 1], posts[order[name]]
    return before[0] in held and before[1] == mine[1]


def _holds_stage_blocks(name: str, m: nn.Module, calls: Counter, shape: dict, batch: int) -> bool:
    """A block that is a stage with a forward of its own (PiT, FasterNet, cs3 CSPDarknet, SHViT,
    TinyViT, iFormer's first stages): a container among its children holds two or more blocks of
    one type, each run once, each returning a square feature map or tokens per image, and each
    made of two or more parts with an inside of their own (attention and MLP, conv-norm-act
    units). The conv-norm-act units of Inception branches, HGNet and LCNetV2 and Xception's
    separable convolutions hold one such part at most, MaxViT's layers blocks of several types,
    NesT's blocks return (B, blocks, tokens, C): those modules stay one block each."""
    for cn, c in m.named_children():
        kids = [(f"{name}.{cn}.{n}", k) for n, k in c.named_children()]
        if (not (isinstance(c, nn.Sequential) and _is_container(c)) or calls[f"{name}.{cn}"] != 1 or len(kids) < 2
                or len({type(k) for _, k in kids}) > 1):
            continue
        if all(calls[f] == 1 and _block_like(f.rpartition(".")[2], k) and _features(shape.get(f, ()), batch)
               and sum(1 for g in k.children() if any(True for _ in g.children())) >= 2 for f, k in kids):
            return True
    return False


def _features(shape: tuple, batch: int) -> bool:
    """Whether `shape` is a vector, tokens or a square map (fne's input is square) per image."""
    lay = _layout(shape)
    if lay is None or shape[0] != batch:
        return False
    return len(shape) < 4 or (shape[1] == shape[2] if lay[0] == "mean_nhwc" else shape[2] == shape[3])


def _block_like(name: str, m: nn.Module) -> bool:
    """A module with an inside and its own forward that is not a stem, downsampling or head."""
    return (any(True for _ in m.children()) and not _is_container(m) and name not in NOT_BLOCK_NAMES
            and type(m).__name__ not in NOT_BLOCK_TYPES)


def _find_classifier(model: nn.Module, posts, modules: dict, num_classes: int) -> str:
    """The last Linear/Conv layer that maps to the classes (else the last one)."""
    lin = [n for n, _ in posts if isinstance(modules[n], (nn.Linear, nn.Conv2d))]
    fit = [n for n in lin if getattr(modules[n], "out_features", getattr(modules[n], "out_channels", 0))
           == num_classes]
    if not (fit or lin):
        raise FneError(f"cannot find the classifier of {type(model).__name__}")
    return (fit or lin)[-1]


def _find_last(events, modules: dict, taps, classifier: str) -> str | None:
    """`last`: the tap reached walking back from the classifier's input over modules that do not
    change it (containers, dropout, flatten, average pooling); None if something else is between."""
    by_module = {t.module: t for t in taps if t.pool == "mean_nchw"}
    start = next(i for i, (k, n, _) in enumerate(events) if k == "pre" and n == classifier)
    for k, n, _ in reversed(events[:start]):
        if k == "pre":
            continue
        m = modules[n]
        if n in by_module:
            return by_module[n].name
        kind = type(m).__name__
        if _is_container(m) or kind in PASS_THROUGH:
            continue
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            continue
        if kind == "SelectAdaptivePool2d" and getattr(m, "pool_type", "") == "avg":
            continue
        if any(True for _ in m.children()) and not any(
                True for _ in m.parameters()) and kind not in ACTIVATIONS:
            continue  # a parameter-free wrapper whose leaves were checked one by one
        return None
    return None


# ------------------------------------------------------------------ helpers


def meta_model(build: Callable[[], nn.Module]) -> nn.Module:
    """The model on the meta device, in eval mode: built there when its init code allows (no
    memory, no initialisation), else built on the CPU and moved."""
    try:
        with torch.device("meta"):
            return build().eval()
    except Exception:  # init code that reads tensor values (e.g. RegNet's width rounding)
        return build().to("meta").eval()


def meta_image(size: int) -> torch.Tensor:
    """One size x size RGB image on the meta device: the input of a forward that finds shapes.

    The first such forward in a process imports torch's symbolic shapes, sympy with them (~900
    modules, 0.3-0.6 s), at its first shape check: a Ctrl-C inside that import left sympy
    half-imported, and every later meta forward of the process failed (`module 'sympy' has no
    attribute 'logic'`: `fne extract --image-size 32` refused its size). Imported here, with
    Ctrl-C held until it is whole."""
    imported("torch.fx.experimental.symbolic_shapes")
    return torch.zeros(1, 3, size, size, device="meta")


def build_assign(build: Callable[[], nn.Module], state: dict) -> nn.Module:
    """Build on the meta device and adopt `state`'s tensors (no random initialisation); a model
    that does not fit that way (non-persistent buffers, init code that needs real tensors) is
    built normally and loaded."""
    model = assigned(build, state)
    if model is None:  # an ordinary build, which reports real mismatches itself
        model = build()
        model.load_state_dict(state)
    return model


def assigned(build: Callable[[], nn.Module], state: dict) -> nn.Module | None:
    """`build()` on the meta device holding exactly `state`'s tensors, or None where it does
    not fit that way (a mismatch, non-persistent buffers, init code that needs real tensors).
    Tensors of another floating dtype (a half-precision file) become the model's dtype, which
    `assign` would otherwise replace."""
    model = on_meta(build)
    if model is None:
        return None
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() and own[k].is_floating_point() else v
             for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except Exception:
        return None
    return None if any(t.is_meta for t in (*model.parameters(), *model.buffers())) else model


def on_meta(build: Callable[[], nn.Module]) -> nn.Module | None:
    """`build()` on the meta device (no memory, no initialisation), or None where its init code
    needs real tensors (torchvision's regnets, for one)."""
    try:
        with torch.device("meta"):
            return build()
    except Exception:
        return None


def _suggest(name: str, names: list[str]) -> str:
    """Names that `name` begins (timm:vit_tiny -> timm:vit_tiny_patch16_224), then close ones; none
    for `timm:` alone, which every timm name begins (its shortest were offered)."""
    if not name.removeprefix("timm:").strip():
        return ""
    longer = sorted((n for n in names if n.startswith(name) and n != name), key=len)[:2]
    close = list(dict.fromkeys([*longer, *difflib.get_close_matches(name, names, n=4, cutoff=0.6)]))[:4]
    return f" Did you mean: {', '.join(close)}?" if close else ""


TASKS = {"detection": "detection", "segmentation": "segmentation", "video": "video", "optical_flow": "optical flow",
         "quantization": "quantized (int8)"}


def _other_task(name: str) -> str | None:
    """What a torchvision model that is not a classifier is for ('detection', 'video', ...)."""
    tvm = imported("torchvision.models")  # a Ctrl-C held over torchvision's import (`fne.handoff.imported`)

    for task in TASKS:
        if name in tvm.list_models(module=getattr(tvm, task)):
            return task
    return None


HOW_TO_NAME = ("fne's registry ({registry}); any torchvision classification model by its name "
               "(resnet50, convnext_tiny, vit_b_16, swin_t, ...: torchvision.models.list_models("
               "module=torchvision.models)); any timm model as timm:NAME, with an optional "
               "pretrained tag (timm:convnext_atto, timm:vit_small_patch14_dinov2.lvd142m: "
               "timm.list_models(pretrained=True))")


def unknown(name: str, registry: list[str]) -> FneError:
    names = list(dict.fromkeys([*registry, *tv_names()]))  # torchvision also names vgg16, vgg19
    if name.startswith("timm:"):
        try:
            timm = imported("timm")
            names = ["timm:" + n for n in timm.list_models()]
        except ImportError:
            pass
    how = HOW_TO_NAME.format(registry=", ".join(registry))
    task = None if name.startswith("timm:") else _other_task(name)
    if task is not None:  # fasterrcnn_resnet50_fpn -> its backbone, resnet50
        inside = sorted((n for n in tv_names() if n in name), key=len, reverse=True)[:1]
        also = f" Its backbone as a classifier: {inside[0]}." if inside else ""
        return refusal(lambda py: f"{named('arch', py, name)} is a torchvision {TASKS[task]} model; fne takes "
                                  f"image classification models.{also} Name a backbone as one of: {how}")
    return refusal(lambda py: f"unknown {named('arch', py, name)}.{_suggest(name, names)} Name a backbone as one of: "
                              f"{how}")


@functools.cache
def tv_names() -> list[str]:
    tvm = imported("torchvision.models")

    return list(tvm.list_models(module=tvm))


# ------------------------------------------------------------------ torchvision


def _tv_enum(name: str):
    tvm = imported("torchvision.models")

    try:
        return tvm.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def tv_weights(name: str, weights: str):
    """The weights enum member for 'imagenet' (DEFAULT), an enum name, or Enum.NAME; else None."""
    enum = _tv_enum(name)
    if enum is None:
        return None
    if weights == "imagenet":
        return enum.DEFAULT
    member = weights.rpartition(".")[2]
    if weights.rpartition(".")[0] not in ("", enum.__name__) or member not in enum.__members__:
        return None
    return enum[member]


def tv_weight_names(name: str) -> list[str]:
    enum = _tv_enum(name)
    return list(enum.__members__) if enum is not None else []


def tv_preprocess(w) -> dict:
    if w is None:
        return {"resize": 256, "crop_size": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                "interpolation": "bilinear"}
    t = w.transforms()
    return {"resize": int(t.resize_size[0]), "crop_size": int(t.crop_size[0]), "mean": tuple(t.mean),
            "std": tuple(t.std), "interpolation": t.interpolation.value}


def tv_build(name: str, image_size: int | None = None) -> Callable[[int], nn.Module]:
    def build(num_classes: int = 1000) -> nn.Module:
        tvm = imported("torchvision.models")

        kw = {"image_size": image_size} if image_size else {}
        if name in ("googlenet", "inception_v3"):  # the init torchvision picks anyway, said in a FutureWarning
            kw["init_weights"] = True
        return tvm.get_model(name, weights=None, num_classes=num_classes, **kw)

    return build


@functools.cache
def tv_takes_half_norm(name: str) -> bool:
    """Whether the model's weights expect (x - 0.5) / 0.5 input: torchvision builds GoogLeNet and
    Inception-v3 with `transform_input=True` when it loads their weights, which maps ImageNet-
    normalised input to that. fne builds them without it and normalises that way itself (the
    same input to the network, and a preprocessing of its own in the store's key)."""
    return hasattr(meta_model(lambda: tv_build(name)(1000)), "transform_input")


@functools.cache
def tv_discover(name: str, image_size: int | None = None) -> Discovered:
    model = meta_model(lambda: tv_build(name, image_size)(1000))
    x = meta_image(image_size or 224)
    return discover(model, x, None, 1000, _prefix_tokens(model))


def _prefix_tokens(model: nn.Module) -> int:
    """The class/register tokens the model declares (timm's `num_prefix_tokens`), else those of its
    class token parameter (torchvision's ViT `class_token`, timm's CoaT `cls_token1`..`cls_token4`:
    one; PiT distilled's `cls_token` holds the class and distillation tokens: two)."""
    declared = getattr(model, "num_prefix_tokens", None)
    if declared is not None:
        return int(declared)
    held = [p.shape[1] if p.dim() == 3 else 1 for n, p in model.named_parameters(recurse=False)
            if n.startswith(("class_token", "cls_token"))]  # PiT distilled: one (1, 2, C) parameter
    return int(max(held, default=0))


# ------------------------------------------------------------------ timm


def need_timm():
    try:
        timm = imported("timm")  # a Ctrl-C held over its import (`fne.handoff.imported`)
    except ImportError as e:
        raise FneError(f"timm backbones need the timm package: {TIMM_HINT}") from e
    return timm


def timm_check(model_name: str, registry: list[str]) -> None:
    """FneError unless timm has `model_name` (and its pretrained tag); `registry`: fne's own names,
    for the message."""
    timm = need_timm()
    arch, tag = timm.models.split_model_name_tag(model_name)
    if not timm.is_model(arch):
        raise unknown("timm:" + model_name, registry)
    if tag and model_name not in timm.list_pretrained(arch + ".*"):
        tags = timm.list_pretrained(arch + ".*")
        raise FneError(f"timm:{arch} has no pretrained tag {tag!r}.{_suggest(model_name, tags)} Tags: "
                       f"{', '.join(tags) or 'none'}")


def timm_pretrained_cfg(model_name: str) -> dict:
    timm = need_timm()
    cfg = timm.models.get_pretrained_cfg(model_name)
    return cfg.to_dict() if cfg is not None else {}


def timm_preprocess(model_name: str) -> dict:
    from timm.data import resolve_data_config

    cfg = timm_pretrained_cfg(model_name)
    d = resolve_data_config(pretrained_cfg=cfg) if cfg else resolve_data_config({})
    crop = int(d["input_size"][-1])
    return {"resize": int(math.floor(crop / d.get("crop_pct", 0.875))), "crop_size": crop,
            "mean": tuple(float(v) for v in d["mean"]), "std": tuple(float(v) for v in d["std"]),
            "interpolation": str(d.get("interpolation", "bicubic"))}


def timm_build(model_name: str) -> Callable[[int | None], nn.Module]:
    def build(num_classes: int | None = None) -> nn.Module:
        timm = need_timm()
        kw = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(model_name, pretrained=False, **kw)

    return build


@functools.cache
def timm_discover(model_name: str) -> Discovered:
    model = meta_model(timm_build(model_name))
    size = timm_preprocess(model_name)["crop_size"]
    img = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img:
        size = img[0] if isinstance(img, (tuple, list)) else img
    x = meta_image(size)
    clf = model.get_classifier()
    if isinstance(clf, (tuple, list)):  # distilled models (DeiT, LeViT): (head, head_dist)
        clf = clf[0]
    name = next(n for n, m in model.named_modules() if m is clf)
    if isinstance(clf, (nn.ModuleList, nn.ModuleDict)):
        raise FneError(f"timm:{model_name} combines the class scores of {len(clf)} heads ({name}.*), each on "
                       f"other features: fne takes models with one classifier")
    return discover(model, x, name, getattr(model, "num_classes", 0), _prefix_tokens(model))
