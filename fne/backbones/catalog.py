"""`fne backbones` as Python functions: `fne.list_backbones()` (fne's registry) and
`fne.describe_backbone(arch, weights=...)` (one backbone's taps and preprocessing, what
`fne backbones ARCH --json` prints). The CLI only formats what they return.
"""

from __future__ import annotations

from fne.option_handling import keywords, resolve
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
        dict path; nothing is downloaded.

    Returns
    -------
    dict
        ``arch``, ``source`` (registry, torchvision or timm), ``dim``, ``last``, ``classifier``,
        ``fc_layers``, ``taps`` (each: name, module, channels, pool, ...) and ``preprocess``
        (resize, crop size, mean, std, interpolation).

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
    return registry.get(arch, o.weights).describe()
