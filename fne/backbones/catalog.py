"""`fne backbones` as Python functions: `fne.list_backbones()` (fne's registry) and
`fne.describe_backbone(arch, weights=...)` (one backbone's taps and preprocessing, what
`fne backbones ARCH --json` prints). The CLI only formats what they return. `not_here`: whether a
backbone's pretrained weights are on this machine, and where they go if not (`fne run --dry-run`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fne.option_handling import keywords, named, resolve
from fne.options import StoreOptions

DESCRIBE_OPTIONS = ("weights",)  # the keywords of `describe_backbone`, declared in fne.options


def list_backbones() -> list[dict]:
    """fne's registry of backbones, by name (`fne backbones`).

    Any torchvision classification model and timm:NAME are backbones too, by name
    (`fne.backbones.registry.how_to_name` says how); `describe_backbone` takes them.

    Returns
    -------
    list of dict
        One per registered backbone, sorted by name: ``name``, ``taps`` (how many), ``dim``
        (features of the full-network embedding) and ``last`` (the tap feeding the source
        classifier).
    """
    from fne.backbones.registry import REGISTRY

    return [{"name": name, "taps": len(REGISTRY[name].taps), "dim": REGISTRY[name].dim, "last": REGISTRY[name].last}
            for name in sorted(REGISTRY)]


@keywords(StoreOptions, only=DESCRIBE_OPTIONS)
def describe_backbone(arch: str, **options) -> dict:
    """One backbone's taps and preprocessing (`fne backbones ARCH --json`).

    Parameters
    ----------
    arch : str
        A registry name, a torchvision model name or timm:NAME[.TAG].
    weights : str, default 'imagenet'
        Whose preprocessing to show: imagenet, a torchvision weights name, random or a state
        dict path (then also whether it fits ``arch``); nothing is downloaded.

    Returns
    -------
    dict
        ``arch``, ``source`` (registry, torchvision or timm), ``dim``, ``last``, ``classifier``,
        ``fc_layers``, ``taps`` (each: name, module, channels, pool, ...) and ``preprocess``
        (resize, crop size, mean, std, interpolation); with a weights file, ``weights_fit``:
        ``file``, ``fits`` (whether its tensors' names and shapes are ``arch``'s, the source
        classifier's aside) and ``why`` (the refusal `fne extract` would give, else None).

    Raises
    ------
    OptionError
        An unknown ``arch`` (with the names nearest to it); a value of the wrong type is a
        TypeError.
    WeightsError
        ``weights`` that are none of those it takes.
    """
    from fne.backbones import registry

    if not isinstance(arch, str):
        raise TypeError(f"arch must be a string, not {type(arch).__name__} {arch!r}")
    (o,) = resolve(options, StoreOptions, only=DESCRIBE_OPTIONS)
    registry.check_weights(arch, o.weights)  # weights="bogus": one line, as in every verb
    d = registry.get(arch, o.weights).describe()
    if o.weights not in (None, "imagenet", "random") and Path(o.weights).is_file():
        from fne.backbones.fits import fit_of

        error = fit_of(arch, o.weights)  # names and shapes only: nothing loaded
        d["weights_fit"] = {"file": str(Path(o.weights).resolve()), "fits": error is None,
                            "why": None if error is None else str(error)}
    return d


def _imagenet_source(arch: str, weights: str = "imagenet") -> tuple[str | None, dict, str | None] | None:
    """Where `arch`'s ImageNet weights (or its torchvision weights name `weights`) come from:
    (timm model name or None, timm's pretrained config or {}, torch hub URL or None); None where
    they come in a package or there are none."""
    from fne.backbones import registry, zoo

    if weights not in ("imagenet", *getattr(registry.REGISTRY.get(arch), "imagenet_names", ())):
        w = None if arch in registry.REGISTRY or arch.startswith("timm:") else zoo.tv_weights(arch, weights)
        return None if w is None else (None, {}, w.url)

    if arch.startswith("timm:"):
        model_name = arch.removeprefix("timm:")
        cfg = zoo.timm_pretrained_cfg(model_name)
        return model_name, cfg, cfg.get("url")
    if arch in registry.VGG_IMAGENET_FILES:
        return None, {}, registry.vgg_imagenet_url(arch)
    if arch in registry.REGISTRY or zoo.tv_weights(arch, "imagenet") is None:
        return None
    return None, {}, zoo.tv_weights(arch, "imagenet").url


def not_here(arch: str, weights: str = "imagenet") -> str | None:
    """Where to put `arch`'s pretrained (imagenet) weights, and how to get them, where they are
    not on this machine yet; None where they are (or come in a package, or there are none).
    Nothing is downloaded and no network is asked."""
    from fne.backbones import fetch

    source = _imagenet_source(arch, weights)
    if source is None:
        return None
    model_name, cfg, url = source
    if model_name is not None:
        hub = cfg.get("hf_hub_id")
        here = fetch.hf_cached(hub, cfg.get("hf_hub_filename")) is not None if hub else not url or fetch.hub_file(url).is_file()
        return None if here else fetch.timm_where(model_name, cfg)
    return None if fetch.hub_file(url).is_file() else fetch.hub_where(url)


def fitted_weights_only(again: str) -> Callable[[bool], str]:
    """`fetch.loading`'s `instead` for a model fitted on the weights (`fne predict`, `fne.load`),
    which takes no other weights: what to do once the file is in place (`again`)."""
    return lambda python: (f"then {again}: its head fits the rows of these weights only "
                           f"({named('moved_weights', python)} is for a model fitted on a weights file that moved)")


def refuse_unobtainable(arch: str, weights: str) -> None:
    """Raise now the `WeightsError` that loading `arch`'s ImageNet weights (``weights='imagenet'``)
    would raise later, where they are not on this machine and their host does not answer (or
    Hugging Face's offline mode is on): before a command starts its loader workers and progress
    line. Nothing is downloaded; weights that are here, files and random weights pass. Within
    `fetch.loading`, the refusal says what else the user can do in its words, and a host that
    answered is not asked again when the download follows."""
    from fne.backbones import fetch

    if weights == "random" or Path(weights).is_file() or not_here(arch, weights) is None:
        return
    model_name, cfg, url = _imagenet_source(arch, weights)
    why = fetch.hf_unreachable() if cfg.get("hf_hub_id") else fetch.probe(url)
    if why is not None:
        raise (fetch.timm_refusal(model_name, cfg, why) if model_name is not None
               else fetch.hub_refusal(arch, url, why))
