"""Reading a --weights file (`fne.backbones.registry.read_state_dict`): torch.load without
unpickling code, the state dict inside a checkpoint, and, for a file torch.load cannot read, what
it is, from its first bytes: the words of the error that refuses it."""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

from fne.errors import WeightsError
from fne.option_handling import named, refusal

# torch.save's legacy (non-zip) format: a pickle (protocol 2) of this magic number first
TORCH_LEGACY = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
PICKLED_OBJECTS = ("a torch.save file of Python objects besides tensors (a whole model, torch.save(model), say), "
                   "which fne does not unpickle, as unpickling can run code")


# where a checkpoint keeps its model's state dict: a `fne train` checkpoint's and torchvision's
# references' `model`, timm's and Lightning's `state_dict`; taken in this order
STATE_KEYS = ("model", "state_dict")

Shapes = dict[str, tuple[int, ...]]  # tensor name -> shape (`misfit`)


def torch_load(path: str | Path, device) -> object:
    """`torch.load(path)` with `weights_only` (no code unpickled), memory-mapped where the format
    allows; `argparse.Namespace` is allowed too: the training arguments that torchvision's
    reference scripts and timm's train.py store beside the weights (`args`), attributes only."""
    import argparse

    import torch

    with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
        warnings.filterwarnings("ignore", message="Detected pickle protocol")  # the error says what it is
        try:
            return torch.load(path, map_location=device, weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
            return torch.load(path, map_location=device, weights_only=True)


def state_dict_in(obj: object) -> dict | str:
    """The state dict of tensors that `obj` (what a weights file holds) is or wraps (`STATE_KEYS`),
    else what it holds instead, as a phrase for the refusal."""
    import torch

    def tensors(d: object) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())

    top = obj
    for _ in STATE_KEYS:  # a checkpoint's, or a checkpoint's in a checkpoint ({"model": {"state_dict": ...}})
        inner = [obj[k] for k in STATE_KEYS if isinstance(obj, dict) and not tensors(obj)
                 and isinstance(obj.get(k), dict)]
        obj = next((d for d in inner if tensors(d)), inner[0]) if inner else obj
    if tensors(obj):
        return obj
    obj = top  # what the refusal describes
    if not isinstance(obj, dict) or not obj:
        return ("does not hold a state dict of tensors ("
                + ("an empty dict)" if isinstance(obj, dict) else f"it holds a {type(obj).__name__})"))
    nested = [k for k, v in obj.items() if tensors(v)]
    keys = ", ".join(map(str, list(obj)[:6])) + (", ..." if len(obj) > 6 else "")
    return (f"does not hold a state dict of tensors (a dict of {keys}"
            + (f"; fne takes the state dict under {' or '.join(map(repr, STATE_KEYS))} only: save the one under "
               f"{nested[0]!r} alone, torch.save(checkpoint[{nested[0]!r}], PATH)" if nested else "") + ")")


def unreadable(path: str | Path, error: Exception, reader: str = "torch.load") -> str:
    """Why `reader` (torch.load, or safetensors for a .safetensors file) raised `error` on the file
    at `path`: what the file is (`file_kind`), else the error's first line (a file of a kind fne
    does not know, or a damaged one)."""
    import pickle

    kind = file_kind(path)
    if reader != "torch.load" and kind is PICKLED_OBJECTS:  # any torch.save file, under a .safetensors name
        kind = "a torch.save file, not a safetensors one (name it .pt)"
    if kind is PICKLED_OBJECTS and not isinstance(error, pickle.UnpicklingError):  # a torch.save file, damaged
        kind = None
    if kind is PICKLED_OBJECTS:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found:
            kind += f" (it holds {found.group(1)})"
    if kind is not None:
        return f"{reader} cannot read it: it is {kind}"
    said = (str(error).splitlines() or [""])[0]
    said = f"{type(error).__name__}: {said[:160]}{'...' * (len(said) > 160)}" if said else type(error).__name__
    return f"{reader} cannot read it ({said})"


def file_kind(path: str | Path) -> str | None:
    """What the file at `path` appears to be, as a phrase ("a zip archive of 2 files (a.txt, b.txt),
    not written by torch.save"); None for bytes of no kind it knows.

    Parameters
    ----------
    path : str or Path
        A file (an unreadable one is None).

    Returns
    -------
    str or None
        The phrase, for a file torch.load refused.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if not head:
        return "an empty file"
    if head.startswith(b"PK"):
        return _zip_kind(path)
    for magic, kind in ((b"\x93NUMPY", "a NumPy .npy array"), (b"\x89HDF", "an HDF5 file (Keras weights, say)"),
                        (b"\x1f\x8b", "a gzip-compressed file"), (TORCH_LEGACY, PICKLED_OBJECTS.replace(
                            "torch.save file", "torch.save file (legacy format)", 1))):
        if head.startswith(magic):
            return kind
    if head[:1] == b"\x80":
        return "a Python pickle, not written by torch.save"
    if not any(b < 32 and b not in b"\t\n\r" for b in head):
        return "a text file"
    return None


def _zip_kind(path: str | Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return "a damaged or truncated zip archive (a torch.save file, say, cut short)"
    if any(n.endswith("/data.pkl") for n in names):
        return PICKLED_OBJECTS
    if names and all(n.endswith(".npy") for n in names):
        return "a NumPy .npz archive"
    return (f"a zip archive of {len(names)} file(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}), "
            f"not written by torch.save")


def prefix_hint(names: list[str], own: list[str], head: str) -> str:
    """'; its tensors under 'model.' are the network's …': what a refusal of weights that do not
    fit adds where the file holds the network under a prefix (a Lightning module's attribute,
    `model.`; a self-supervised checkpoint's `encoder_q.` or `backbone.`), else ''. fne does not
    strip such a prefix itself (it strips only DataParallel's `module.` and torch.compile's
    `_orig_mod.`): the file may hold several networks, as MoCo's two encoders.

    Parameters
    ----------
    names : list of str
        The file's tensor names.
    own : list of str
        The architecture's tensor names.
    head : str
        The classifier's module path, whose tensors need not be there.

    Returns
    -------
    str
        The hint, naming every prefix under which at least 90% of the architecture's tensors are
        found, and how to keep one network's tensors alone.
    """
    body = [n for n in own if not n.startswith(head + ".")]
    if not body:
        return ""
    known = set(names)
    found = []
    for p in dict.fromkeys(n.split(".", 1)[0] + "." for n in names if "." in n):
        if sum(p + n in known for n in body) >= 0.9 * len(body):
            found.append(p)
    if not found:
        return ""
    p = found[0]
    return (f"; its tensors under {' and '.join(map(repr, found))} are the network's: give a file of one network's "
            f"alone, without the prefix (with `state` the file's state dict: torch.save({{k.removeprefix({p!r}): v for "
            f"k, v in state.items() if k.startswith({p!r})}}, PATH))")


def weights_refusal(weights: str | Path, said: str | Callable[[bool], str]) -> WeightsError:
    """The WeightsError `WEIGHTS: said`, naming --weights as the caller did (`weights='x.pt'` in
    Python, `--weights 'x.pt'` on the command line: `fne.option_handling.refusal`); `said` may be a text
    of `python` too."""
    return refusal(lambda py: f"{named('weights', py, str(weights))}: {said(py) if callable(said) else said}",
                   WeightsError)


def train_run(weights: str | Path) -> tuple[Path, dict] | None:
    """(its metrics.json, what that records) where `weights` is the model.pt of a `fne train` run;
    else None (other weights, or a run folder whose metrics.json cannot be read)."""
    import json

    p = Path(weights)
    if p.name != "model.pt":
        return None
    try:
        m = json.loads((p.parent / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return (p.parent / "metrics.json", m) if isinstance(m, dict) and m.get("kind") == "train" else None


def trained_as(weights: str | Path, arch: str, python: bool) -> str:
    """'; RUN/metrics.json: trained as --arch X' where `weights` is the model.pt of a `fne train`
    run of another architecture than `arch`, else '': what a refusal of weights that do not fit
    `arch` adds."""
    run = train_run(weights)
    if run is None or run[1].get("arch") in (None, arch):
        return ""
    return f"; {run[0]}: trained as {named('arch', python, run[1]['arch'], plain=True)}"


def misfit(arch: str, weights: str | Path, found: Shapes, own: Shapes, classifier: str) -> WeightsError | None:
    """The refusal of a weights file whose tensors `found` (name -> shape) do not fit `arch`'s
    `own`, else None. The source classifier's tensors (module path `classifier`) need not fit: a
    new one is made for the target classes; BatchNorm's counter may be absent (older files).

    Parameters
    ----------
    arch, weights : str
        The architecture and the file, as the message names them.
    found, own : dict
        Tensor name -> shape: the file's, and the architecture's state dict's.
    classifier : str
        The module path of the architecture's source classifier.

    Returns
    -------
    WeightsError or None
        "does not fit --arch X (N of its tensors missing or mismatched, M in the file it does not
        have; e.g. ...)", with what the file is where that is known (`trained_as`, `prefix_hint`).
    """
    head = classifier + "."
    missing = []
    for name, shape in own.items():
        if name.startswith(head):
            continue
        if name not in found:
            missing += [] if name.endswith(".num_batches_tracked") else [(name, "not in source")]
        elif tuple(found[name]) != tuple(shape):
            missing.append((name, f"shape {tuple(found[name])} in source, {tuple(shape)} here"))
    extra = [n for n in found if n not in own and not n.startswith(head)]  # resnet34's in resnet18
    if not missing and not extra:
        return None
    why = [f"{n}: {w}" for n, w in missing][:3]
    why += [f"{n}: not in {arch}" for n in extra[:4 - len(why)]]
    hint = prefix_hint(list(found), list(own), classifier)
    return weights_refusal(weights, lambda py: f"does not fit {named('arch', py, arch, plain=True)} "
                                               f"({len(missing)} of its tensors missing or mismatched, {len(extra)} "
                                               f"in the file it does not have; e.g. {'; '.join(why)})"
                                               + (trained_as(weights, arch, py) or hint))
