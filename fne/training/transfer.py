"""The network of each transfer mode: which layers are new, which are imported, what learns.

- direct:   the source network unchanged (its 1000-way classifier, read through a class map);
- scratch:  the same architecture, every layer Xavier-initialised;
- frozen:   imported layers fixed, new head layers (`--new-layers`) trained;
- finetune: imported and new layers train (the optimizer gives imported ones a smaller lr).

Renewed layers keep the backbone's module names (classifier.6), so a trained model's state dict
loads wherever the backbone's does. Imported tensors are copied by name and shape.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fne.backbones import registry as backbones
from fne.backbones import zoo
from fne.backbones.registry import ImportReport
from fne.errors import FneError
from fne.names import MODES, NEW_LAYERS
from fne.option_handling import named, refusal

MIN_IMPORTED = 0.5  # below this fraction of the kept tensors, --weights is another architecture


def _init_xavier(module: nn.Module) -> None:
    """The course model's initialisation: Glorot-uniform weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap a submodule in place, so state-dict names stay the backbone's own (classifier.6)."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _new_layer(old: nn.Module, name: str, out_features: int | None) -> nn.Module:
    if isinstance(old, nn.Conv2d) and old.groups == 1:  # SqueezeNet's 1x1 conv classifier
        new = nn.Conv2d(old.in_channels, out_features or old.out_channels, old.kernel_size, old.stride,
                        old.padding, old.dilation, bias=old.bias is not None)
    elif isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, out_features or old.out_features, bias=old.bias is not None)
    else:
        raise FneError(f"cannot renew {name}: it is a {type(old).__name__}, not a Linear or Conv2d layer")
    _init_xavier(new)
    return new


def source_state(arch: str, weights: str, weights_seed: int = 0, device: torch.device | None = None) -> dict:
    """The tensors to import, on `device` (default the CPU): ImageNet, a seeded random network
    (drawn there, as `fne extract` draws it), or a file (state dict or checkpoint)."""
    dev = torch.device(device or "cpu")
    if weights == "imagenet" or (weights != "random" and not Path(weights).is_file()):
        return {k: v.to(dev) for k, v in backbones.get(arch, weights).imagenet().items()}
    if weights == "random":
        return backbones.load_backbone(arch, "random", weights_seed, device=dev).state_dict()
    return backbones.read_state_dict(weights, dev)


# The two functions below are the only ones that know which layers are the classifier.
def new_layer_names(backbone: backbones.Backbone, mode: str, new_layers: str) -> tuple[str, ...]:
    """The layers a `mode` renews: none for direct, the hidden fc layers (VGG's fc6, fc7) and
    the classifier for `--new-layers fc`, the classifier alone for `last`; `OptionError` for another value."""
    if mode == "direct":
        return ()
    if new_layers not in NEW_LAYERS:
        raise refusal(lambda py: f"unknown {named('new_layers', py, new_layers)}; choose from {', '.join(NEW_LAYERS)}")
    return backbone.fc_layers if new_layers == "fc" else (backbone.classifier,)


def _renew(model: nn.Module, backbone: backbones.Backbone, names: tuple[str, ...], num_classes: int) -> None:
    """Replace layers `names` by Xavier-initialised ones; the classifier gets `num_classes` outputs."""
    for name in names:
        out = num_classes if name == backbone.classifier else None
        _replace(model, name, _new_layer(model.get_submodule(name), name, out))


def build_model(arch: str, mode: str, num_classes: int, weights: str = "imagenet",
                new_layers: str = "fc", seed: int = 0, weights_seed: int = 0,
                device: str | torch.device | None = None,
                ) -> tuple[nn.Module, ImportReport | None, tuple[str, ...]]:
    """(model on `device`, import report or None for scratch, names of the renewed layers).

    The network is built where it trains: its random layers (every layer in scratch, the new
    ones otherwise) are drawn on `device` from `seed`, so that a run can be rebuilt there;
    imported tensors are copied by name and shape (`backbones.import_matching`) into a model
    built on the meta device, so nothing is initialised only to be overwritten. Where the
    source covers less than every kept tensor, the rest keeps the architecture's own seeded
    initialisation.
    """
    if mode not in MODES:
        raise refusal(lambda py: f"unknown {named('mode', py, mode)}; choose from {', '.join(MODES)}")
    dev = torch.device(device or "cpu")
    b = backbones.get(arch)
    renew = new_layer_names(b, mode, new_layers)
    if mode == "scratch":
        def scratch() -> nn.Module:
            model = b.build(1000)
            _renew(model, b, (b.classifier,), num_classes)
            _init_xavier(model)
            return model

        model = backbones.seeded_build(scratch, seed, dev)
        return model, None, tuple(n for n, _ in model.named_modules() if n)
    state = source_state(arch, weights, weights_seed, dev)
    model = zoo.on_meta(lambda: b.build(1000))
    if model is not None:
        with backbones.seeded(seed, dev), dev:
            _renew(model, b, renew, num_classes)
        report = backbones.import_matching(model, state, skip=renew, assign=True)
    if model is None or any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        # init code that needs real tensors, non-persistent buffers, or a partial import
        def partial() -> nn.Module:
            model = b.build(1000)
            _renew(model, b, renew, num_classes)
            return model

        model = backbones.seeded_build(partial, seed, dev)
        report = backbones.import_matching(model, state, skip=renew)
    _check_import(report, mode, arch, weights, list(state))
    return model, report, renew


def _check_import(report: ImportReport, mode: str, arch: str, weights: str, names: list[str]) -> None:
    """Refuse weights of another architecture (and, for direct, any tensor that does not fit);
    `names`: the file's tensor names (a prefix they hold the network under is named)."""
    kept = [n for n, why in report.skipped if why != "renewed layer"]
    total = len(report.imported) + len(kept)
    if mode == "direct" and kept:
        raise backbones.weights_refusal(weights, lambda py: f"{named('mode', py, 'direct', plain=True)} applies the "
                                                            f"source network unchanged, but {len(kept)} tensors do "
                                                            f"not fit {named('arch', py, arch, plain=True)}: "
                                                            f"{_examples(report)}")
    if total and len(report.imported) < MIN_IMPORTED * total:
        raise backbones.weights_refusal(weights, lambda py: f"does not fit {named('arch', py, arch, plain=True)}: only "
                                                            f"{len(report.imported)} of {total} tensors match by name "
                                                            f"and shape (e.g. {_examples(report)})"
                                                            + (backbones.trained_as(weights, arch, py)
                                                               or _prefix_hint(report, names, arch)
                                                               or "; is it a state dict of another architecture?"))


def _prefix_hint(report: ImportReport, names: list[str], arch: str) -> str:
    from fne.backbones.filekind import prefix_hint

    own = [*report.imported, *(n for n, _ in report.skipped)]
    return prefix_hint(names, own, backbones.get(arch).classifier)


def _examples(report: ImportReport, n: int = 3) -> str:
    bad = [(k, w) for k, w in report.skipped if w != "renewed layer"][:n]
    return "; ".join(f"{k}: {w}" for k, w in bad)


SHOWN = 8  # imported layers named on the console (metrics.json lists them all)


def describe_import(report: ImportReport | None, renew: tuple[str, ...], resumed: str | None = None) -> list[str]:
    """Human-readable import summary: imported layers (the first and last `SHOWN` // 2 of a long
    list), and every tensor left out with why. `resumed`: the checkpoint a resumed run continues,
    whose weights replace the initial ones (the new layers' and scratch's random ones included)."""
    if report is None:
        return [f"scratch: every layer's weights from {resumed}" if resumed else
                "scratch: every layer randomly initialised (Xavier-uniform, zero biases)"]
    layers = report.layers()
    shown = ", ".join(layers) if len(layers) <= SHOWN else (
        f"{', '.join(layers[:SHOWN // 2])}, … {len(layers) - SHOWN} more …, {', '.join(layers[-SHOWN // 2:])} "
        f"(metrics.json's `imported` lists them all)")
    lines = [f"imported {len(report.imported)} tensors of {len(layers)} layers: {shown}"]
    if renew:
        lines.append("new layers " + (f"(weights from {resumed}, as every layer's): " if resumed else
                                      "(randomly initialised): ") + ", ".join(renew))
    lines += [f"not imported {n}: {why}" for n, why in report.skipped if why != "renewed layer"]
    return lines


def freeze_imported(model: nn.Module, mode: str, imported: set[str]) -> None:
    """frozen: imported parameters stop learning; only the new layers' parameters get gradients."""
    if mode == "frozen":
        for n, p in model.named_parameters():
            p.requires_grad_(n not in imported)


def kept_statistics(model: nn.Module, mode: str, imported: set[str], train_bn: bool = False) -> list[str]:
    """Imported BatchNorm layers that stay in inference mode while the rest trains.

    frozen: always (frozen layers do not learn, statistics included). finetune: by default too
    (the Keras fine-tuning practice): with small target batches, batch statistics drift far
    faster than imported weights learn at lr * 0.001, and the head learns on features that
    the stored statistics do not reproduce at test time. `--train-bn` lets them update.
    """
    if mode not in ("frozen", "finetune") or (mode == "finetune" and train_bn):
        return []
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and f"{n}.running_mean" in imported]


def train_mode(model: nn.Module, keep: list[str]) -> None:
    """Training mode, except the BatchNorm layers that keep their imported statistics."""
    model.train()
    for name in keep:
        model.get_submodule(name).eval()
