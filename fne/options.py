"""One declaration of each verb's options.

Every option of `fne extract`, `fit`, `export`, `predict` and `train` is a field of one
dataclass below, declared with `option(...)`: its default, help text, accepted choices or
bounds, its command-line flag and whether a pipeline file may set it. From that declaration come

- the command line: `add_arguments` (argparse) and `from_args` (back to keywords), so the CLI
  cannot drop an option the API takes;
- the Python API's defaults and checks: `resolve` turns a verb's keywords into these objects and
  `check` raises one `OptionError` (a ValueError) naming a bad value's keyword (``head='svmm'``),
  and on the command line its flag (``--head 'svmm'``: `refusal`);
- the pipeline schema (`schema`) and its value checks (`problems`), read by fne.pipeline.config.

Pure Python (no torch, no scikit-learn): the CLI and the pipeline configuration import it cheaply.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields, replace

from fne.errors import FneError, OptionError
from fne.names import (
    AUGMENT_ON,
    COMPILE,
    CROPS,
    DECODERS,
    DIRECT_SCORES,
    HEADS,
    MODES,
    NEW_LAYERS,
    PRECISIONS,
    SCHEDULERS,
    SOLVERS,
    STORAGE_DTYPES,
)

DATA_HELP = ("image folder, CSV, HDF5, folder of train.h5/test.h5, .tar shards (a file, a folder, "
             "'train-{000000..000127}.tar'), .parquet files, hf:NAME[:CONFIG][@SPLIT], or 'digits'")
ARCH_HELP = ("backbone: vgg16 (default), vgg19, efficientnet_lite0, any torchvision classification model "
             "(resnet50, convnext_tiny, vit_b_16, swin_t, ...) or timm:NAME[.TAG]; `fne backbones` lists them")
WEIGHTS_HELP = ("imagenet (default: the model's default pretrained weights; downloads once), a torchvision "
                "weights name (IMAGENET1K_V2), random (seeded, for tests) or a state dict path "
                "(.pth/.pt/.safetensors)")


@dataclass(frozen=True)
class Opt:
    """How one field is offered: flag, help, accepted values, where it may be set."""

    help: str = ""
    flag: str | None = None  # default: --field-name
    choices: tuple | None = None
    check: Callable[[object], bool] | None = None  # on a value that is not None
    bound: str = ""  # what `check` wants: ">= 1", "in (0, 1)"
    kind: str = "a number"  # "an integer": for a pipeline file's message
    cli: bool = True
    pipeline: bool = True
    metavar: str | None = None
    parse: Callable[[str], object] | None = None  # the command line's string -> the value
    modes: tuple[str, ...] = ()  # fne train: the modes that use it (empty: every mode); see `unused`


def option(default=MISSING, help: str = "", **how) -> dataclasses.Field:
    """A dataclass field declared with how it is offered (see `Opt`)."""
    return field(default=default, metadata={"opt": Opt(help=help, **how)})


def int_or_auto(s: str) -> int | str:
    """An integer, or auto (--batch-size, --save-every)."""
    try:
        return s if s == "auto" else int(s)
    except ValueError:  # argparse prints it after the flag's name
        raise argparse.ArgumentTypeError(f"an integer or auto, not {s!r}") from None


def at_least(n: float, kind: str = "an integer") -> dict:
    """An option's bound: values >= n (`kind` names what it takes in the message)."""
    return {"check": lambda v: v >= n, "bound": f">= {n}", "kind": kind}


# Loader workers: each a process holding a decoder and a batch; beyond a few per core they only
# contend, and --workers 100000 forked processes until the machine ran out of memory.
MAX_WORKERS = 4 * (os.cpu_count() or 1)
WORKERS = {"check": lambda v: 0 <= v <= MAX_WORKERS, "bound": f"in [0, {MAX_WORKERS}] (4 per core of this machine)",
           "kind": "an integer"}

# fne train's modes that train a network (direct only scores the source classifier's outputs)
TRAINED = tuple(m for m in MODES if m != "direct")

# A seed of the splits and initialisation: numpy's legacy seeding (scikit-learn's random_state) takes [0, 2**32).
SEED = {"check": lambda v: 0 <= v < 2**32, "bound": "in [0, 2**32)", "kind": "an integer"}


# --image-size: the side of the square the network trains and tests at. 4096 is well above any
# ImageNet backbone's input (a few hundred pixels), and a batch of 32 at 4096 x 4096 is already
# 6 GB of float32 input before any activation; --image-size 100000 went on to skip every image as a
# decompression bomb (a warning each), then stopped with "val: no readable images".
MAX_IMAGE_SIZE = 4096
IMAGE_SIZE = {"check": lambda v: 8 <= v <= MAX_IMAGE_SIZE, "bound": f"in [8, {MAX_IMAGE_SIZE}]", "kind": "an integer"}


# --splits: each random split fits a head (--splits 1000000 ran for ever), and the corrected
# resampled interval of K splits, t(K-1)·√((1/K + n_test/n_train)·s²), gains little beyond 100: with
# the default test 25 %, 100 splits give an interval within 3 % of the width of infinitely many.
MAX_SPLITS = 100
SPLITS = {"check": lambda v: 1 <= v <= MAX_SPLITS, "bound": f"in [1, {MAX_SPLITS}]", "kind": "an integer"}


# --device: parsed with the other options, before any work (whether this machine has it is
# `fne.devices.resolve_device`'s); torch ignores a CPU's index, so cpu:1 ran where cpu does.
DEVICES = "auto, cpu, cuda[:i] or mps (the CPU takes no index: torch runs on all its cores)"


def device_parses(device: str) -> bool:
    """Whether --device `device` is `auto` or a device torch names (a CPU without an index),
    whether or not this machine has it. The usual names are told without importing torch (`fne
    fit` on cached rows runs without it)."""
    if re.fullmatch(r"auto|cpu|(cuda|mps)(:(0|[1-9][0-9]*))?", device):
        return True
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        return False
    return not (dev.type == "cpu" and dev.index is not None)


DEVICE = {"check": device_parses, "bound": DEVICES, "kind": "a device:"}


def between(lo: float, hi: float, closed_lo: bool = False) -> dict:
    """An option's bound: values in (lo, hi), or [lo, hi) with `closed_lo`."""
    if closed_lo:
        return {"check": lambda v: lo <= v < hi, "bound": f"in [{lo}, {hi})"}
    return {"check": lambda v: lo < v < hi, "bound": f"in ({lo}, {hi})"}


# ------------------------------------------------------------------ the verbs' options


@dataclass
class DataOptions:
    """How DATA is read, beyond its form (folder, CSV, HDF5, tar shards, Parquet, hf:)."""

    label_key: str | None = option(None, "tar shards: the label member (cls, txt) or a .json field; Parquet: "
                                         "the label column", pipeline=False)


@dataclass(kw_only=True)
class StoreOptions:
    """What decides which store holds a dataset's rows (`fne.cache.spec.StoreSpec` adds the
    methods that open and find stores)."""

    arch: str = option("vgg16", ARCH_HELP)
    weights: str = option("imagenet", WEIGHTS_HELP)
    crop: str = option("center", "center: shorter side to the weights' resize, center crop (default); "
                                 "squash: resized to the crop size; ten: 10 crops", choices=CROPS)
    precision: str = option("auto", "auto (default): extraction picks the machine's fastest; reading "
                                    "finds rows of any precision. A value pins the store.", choices=PRECISIONS)
    storage_dtype: str = option("auto", "how cached activations are stored; auto (default): float16 when "
                                        "extracting, any stored dtype when reading",
                                choices=("auto", *STORAGE_DTYPES))
    cache: str | None = option(None, "cache folder or fsspec URL (default: $FNE_CACHE, else `fne cache info`)",
                               pipeline=False)
    device: str = option("auto", "auto, cpu, cuda[:i] or mps", pipeline=False, **DEVICE)
    weights_seed: int = option(0, "seed of --weights random", flag="--seed-weights")
    decode: str = option("auto", "auto (default): extraction decodes JPEGs on the GPU on CUDA (a quarter of "
                                 "PIL's CPU; with many cores per GPU pil can be faster) and with PIL elsewhere, "
                                 "reading finds rows of either; pil: decode in loader workers; "
                                 "device: JPEGs decoded where the network runs (rows in a store of their own)",
                         choices=DECODERS, pipeline=False)


@dataclass
class ForwardOptions:
    """How the network runs over images: `fne extract`, and `--extract` of fit, export, predict."""

    batch_size: int | str = option("auto", "images per forward pass; auto (default): 32 on a CPU, up to 256 on "
                                           "CUDA (sized from free memory)", parse=int_or_auto,
                                   check=lambda v: v == "auto" or (isinstance(v, int) and v >= 1),
                                   bound=">= 1 or auto", kind="an integer")
    workers: int | None = option(None, "decoding processes (default: 1 on a CPU, one per core but one on "
                                       "CUDA, at most 16)", **WORKERS)
    compile: str = option("auto", "torch.compile the network; auto: only for runs large enough to repay it",
                          choices=COMPILE, pipeline=False)
    progress: bool = option(True, "no progress bar", flag="--no-progress", pipeline=False)
    chunk: int = option(1024, "rows per committed part", cli=False, pipeline=False, **at_least(1))
    threads: int | None = option(None, "torch CPU threads (default: torch's)", cli=False, pipeline=False,
                                 **at_least(1))

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):  # the API also takes True / False
            self.compile = "on" if self.compile else "off"


@dataclass
class ExtractOptions(ForwardOptions):
    """`fne extract`: the forward options, and which images to read."""

    shard: str | tuple[int, int] | None = option(
        None, "I/N: process a deterministic 1/N of DATA (slurm arrays; default under torchrun: "
              "RANK/WORLD_SIZE)", pipeline=False)
    retry_bad: bool = option(False, "read again the images recorded as unreadable (after a transient "
                                    "failure)", pipeline=False)


@dataclass
class RowsOptions:
    """How fit and export read rows from the cache."""

    features: str = option("fne", "fne, fne:L1,L2, fc6, fc7, last, LAYER,... (L2-normalised); fit also takes "
                                  "auto (cross-validated)")
    stream_chunk: int = option(1024, "rows read from the cache at a time: memory follows this, not the "
                                     "dataset (default 1024)", metavar="ROWS", pipeline=False, **at_least(1))
    extract_missing: bool = option(False, "extract rows missing from the cache first", flag="--extract",
                                   pipeline=False)


@dataclass
class FitOptions(RowsOptions):
    """`fne fit`: the head and the evaluation protocol."""

    head: str = option("svm", "linear head; auto: svm or logreg, whichever cross-validates better",
                       choices=(*HEADS, "auto"))
    C: str | float = option("1.0", "regularisation (default 1.0) or 'auto' (k-fold CV on the training images)",
                            flag="--C")
    splits: int = option(5, "random stratified splits when DATA has no split", **SPLITS)
    test_size: float = option(0.25, "test fraction of each random split", **between(0, 1))
    train_per_class: int | None = option(None, "training images per class per split", **at_least(1))
    seed: int = option(0, "seed of the splits and the heads", pipeline=False, **SEED)
    solver: str = option("auto", "svm/logreg solver: torch (L-BFGS over streamed rows, on --device) or sklearn; "
                                 "auto (default): scikit-learn while its copy of the rows fits in memory, torch "
                                 "above (fne.linear.solver)", choices=SOLVERS)


@dataclass
class AdviseOptions:
    """`fne advise`: how the target data is measured (with the store and forward options)."""

    sample: int = option(200, "images run through the source classifier", **at_least(1))
    seed: int = option(0, "seed of the sample", **SEED)
    test_size: float = option(0.25, "share held out when DATA has no split (as in fne fit)", **between(0, 1))
    train_per_class: int | None = option(None, "training images per class (as in fne fit)", **at_least(1))


@dataclass
class CacheOptions:
    """`fne cache verify` and `fne cache rm` (`fne.cache_verify`, `fne.cache_rm`): whether they change
    the cache (with StoreOptions' ``cache``)."""

    clean: bool = option(False, "remove unfinished parts of interrupted runs (live writers' are spared) and move "
                                "damaged parts to quarantine/", pipeline=False)
    dry_run: bool = option(False, "list what would be removed, remove nothing", pipeline=False)


@dataclass
class TrainConfig:
    """`fne train`: everything a run depends on; stored in the checkpoint as `args`. Defaults follow
    the course practice (SGD, momentum 0.9, weight decay 5e-4, lr 1e-3)."""

    data: str = option(MISSING, DATA_HELP, cli=False, pipeline=False)
    mode: str = option(MISSING, "which experiment", choices=MODES, pipeline=False)
    out: str = option(MISSING, "run folder: metrics.json, predictions.csv, model.pt, checkpoint.pt",
                      pipeline=False)
    arch: str = option("vgg16", ARCH_HELP, pipeline=False)
    weights: str | None = option(None, "imagenet (default; scratch: random), random (seeded) or a state dict "
                                       "/ checkpoint path", pipeline=False)
    weights_seed: int = option(0, "seed of --weights random", flag="--seed-weights", pipeline=False)
    new_layers: str = option("fc", "frozen/finetune: fc renews the backbone's fc layers (vgg: fc6, fc7, "
                                   "output), last only the output layer", choices=NEW_LAYERS,
                             modes=("frozen", "finetune"))
    class_map: str | None = option(None, "direct: JSON {target class: [ImageNet index or name, ...]}",
                                   pipeline=False, modes=("direct",))
    direct_score: str = option("sum", "direct: a target's score is the sum (default) or max of its source "
                                      "softmax probabilities", choices=DIRECT_SCORES, modes=("direct",))
    epochs: int = option(10, "passes over the training images", modes=TRAINED, **at_least(1))
    batch_size: int = option(32, "training batch size", **at_least(1))
    lr: float = option(1e-3, "base learning rate (new layers)", check=lambda v: v > 0, bound="> 0", modes=TRAINED)
    imported_lr_mult: float = option(1e-3, "finetune: imported layers learn at lr * this", modes=("finetune",),
                                     **at_least(0, "a number"))
    momentum: float = option(0.9, "SGD momentum", modes=TRAINED, **at_least(0, "a number"))
    weight_decay: float = option(5e-4, "SGD weight decay", modes=TRAINED, **at_least(0, "a number"))
    scheduler: str = option("none", "per-epoch lr schedule", choices=SCHEDULERS, modes=TRAINED)
    image_size: int | None = option(None, "input size (default: the backbone's, 224)", **IMAGE_SIZE)
    augment: bool = option(True, "train on center crops instead of RandomResizedCrop + horizontal flip",
                           flag="--no-augment", modes=TRAINED)
    augment_on: str = option("auto", "where the augmentation and the evaluation's JPEG decoding run; auto: "
                                     "on the GPU when training on CUDA (workers only read JPEG bytes), else "
                                     "in the loader workers",
                             choices=AUGMENT_ON)
    val_fraction: float = option(0.1, "stratified part of the training data that picks the best epoch",
                                 modes=TRAINED, **between(0, 1, closed_lo=True))
    test_size: float = option(0.25, "when DATA has no predefined split", **between(0, 1))
    seed: int = option(0, "seed of the split, the initialisation and the batches", pipeline=False, **SEED)
    precision: str = option("auto", "autocast precision", choices=PRECISIONS)
    device: str = option("auto", "auto, cpu, cuda[:i] or mps", **DEVICE)
    workers: int | None = option(None, "decoding processes (default: cores/2, at most 4, on a CPU; one per "
                                       "core but one, at most 16, on CUDA)", **WORKERS)
    save_every: int | str = option("auto", "write RUN_DIR/checkpoint.pt every N epochs (0: never); auto "
                                           "(default): after each epoch that ends 5 minutes or more after the "
                                           "last write, so an interrupted run loses little", parse=int_or_auto,
                                   check=lambda v: v == "auto" or (isinstance(v, int) and v >= 0),
                                   bound=">= 0 or auto", kind="an integer", modes=TRAINED)
    resume: bool = option(False, "continue from RUN_DIR/checkpoint.pt: the same settings and images (a larger "
                                 "--epochs extends a run without --scheduler)", pipeline=False)
    train_bn: bool = option(False, "finetune: imported BatchNorm layers use batch statistics and update them "
                                   "(default: they keep the imported statistics)", modes=("finetune",))
    deterministic: bool = option(False, "deterministic algorithms only", modes=TRAINED)
    progress: bool = option(True, "no progress bars", flag="--no-progress")


# ------------------------------------------------------------------ one declaration, four uses


def _opts(cls) -> list[tuple[dataclasses.Field, Opt]]:
    return [(f, f.metadata.get("opt", Opt())) for f in fields(cls)]


def flag(f: dataclasses.Field) -> str:
    """A field's command-line flag: its `Opt.flag`, else `--` and its name with dashes."""
    o = f.metadata.get("opt", Opt())
    return o.flag or "--" + f.name.replace("_", "-")


def _types(cls) -> dict[str, object]:
    import fne.options as me

    return typing.get_type_hints(cls, vars(me))


def _base(t) -> type:
    """int for `int | None`, str for `str | None`, ..."""
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


def add_arguments(parser, *classes, only: Iterable[str] | None = None) -> None:
    """Add the command-line options of `classes`' fields (those with cli=True, or named in `only`)."""
    only = set(only) if only is not None else None
    for cls in classes:
        hints = _types(cls)
        for f, o in _opts(cls):
            if (only is not None and f.name not in only) or (only is None and not o.cli):
                continue
            kind = _base(hints[f.name])
            kw: dict = {"dest": f.name, "help": o.help}
            if f.default not in (MISSING, None) and kind is not bool and "default" not in o.help:
                kw["help"] = f"{o.help} (default: {f.default})"  # --help lists every default
            if kind is bool:
                kw["action"] = "store_false" if f.default is True else "store_true"
            else:
                kw["type"] = o.parse or (kind if kind in (int, float) else str)
                if o.choices or o.metavar:  # checked by `check`, which names the flag in one line
                    kw["metavar"] = o.metavar or "{" + ",".join(map(str, o.choices)) + "}"
            if f.default is MISSING:
                kw["required"] = True
            else:  # an option some modes ignore: absent unless given, so that `unused` can tell
                kw["default"] = argparse.SUPPRESS if o.modes else f.default
            parser.add_argument(flag(f), **kw)


def keywords(*classes, only: Iterable[str] | None = None):
    """Decorate a Python verb whose ``**options`` are the fields of `classes` (or those named in
    `only`): its signature, as `help()` and `inspect.signature` show it, lists each as a
    keyword-only parameter with its declared default, after the verb's own parameters."""
    import inspect

    def decorate(func):
        sig = inspect.signature(func)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        taken = {p.name for p in own}
        empty = inspect.Parameter.empty
        extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                   default=empty if f.default is MISSING else f.default, annotation=f.type)
                 for cls in classes for f in fields(cls)
                 if f.name not in taken and (only is None or f.name in only)]
        func.__signature__ = sig.replace(parameters=own + extra)
        return func

    return decorate


def names(*classes, cli_only: bool = False) -> list[str]:
    """The field names of `classes`' options, in order (`cli_only`: those the CLI declares)."""
    return [f.name for cls in classes for f, o in _opts(cls) if o.cli or not cli_only]


def from_args(args, *classes) -> dict:
    """The keywords of `classes`' fields that `args` (an argparse Namespace) holds."""
    return {n: getattr(args, n) for n in names(*classes, cli_only=True) if hasattr(args, n)}


def _refused(v, o: Opt) -> str | None:
    """"choice" or "bound" when `o` does not accept the value `v`; None when it does."""
    if v is None:
        return None
    if o.choices and v not in o.choices:
        return "choice"
    if o.check is not None and (not o.check(v) or (isinstance(v, float) and not math.isfinite(v))):
        return "bound"  # a bounded number is finite: --lr inf trains to nan
    return None


def _wanted(v, o: Opt) -> str:
    """What a bounded option wants, said of the refused value `v` (an infinity: a finite number)."""
    return f"a finite number {o.bound}" if isinstance(v, float) and math.isinf(v) else o.bound


def _of_type(v, hint) -> bool:
    """Whether `v` is of the declared type: numpy integers count as int, a Path as str, a bool
    is not a number."""
    for k in [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]:
        k = typing.get_origin(k) or k  # tuple[int, int] -> tuple
        if k is str and isinstance(v, (str, os.PathLike)):
            return True
        if k in (int, float) and isinstance(v, numbers.Integral if k is int else numbers.Real):
            return not isinstance(v, bool)
        if k not in (str, int, float) and isinstance(v, k):
            return True
    return False


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "True or False", tuple: "a tuple"}


def named(f: dataclasses.Field | str, python: bool, value=MISSING, plain: bool = False) -> str:
    """Option `f` (a field, or a field's name) as a message names it, with `value` when given: in
    Python its keyword (``head``, ``head='svmm'``), on the command line its flag (``--head``,
    ``--head 'svmm'``; a name's declared flag, ``--seed-weights`` for weights_seed). `plain`: the
    command line's value as typed (``--mode direct``), for a value cited, not refused."""
    if python:
        name = f if isinstance(f, str) else f.name
        return name if value is MISSING else f"{name}={value!r}"
    name = _flag_of(f) if isinstance(f, str) else flag(f)
    return name if value is MISSING else f"{name} {value if plain else repr(value)}"


def _flag_of(name: str) -> str:
    """The flag of the option `name` (its declared one, but for a --no-NAME switch: a value of
    NAME is said of --NAME), else --name with dashes."""
    declared = {f.name: flag(f) for cls in (StoreOptions, ExtractOptions, FitOptions, AdviseOptions, CacheOptions,
                                            TrainConfig) for f in fields(cls)}
    given = declared.get(name, "")
    return given if given and not given.startswith("--no-") else "--" + name.replace("_", "-")


def refusal(text: Callable[[bool], str], cls: type[FneError] = OptionError) -> FneError:
    """The error (`cls`: OptionError, or the class callers tell apart: WeightsError, DataError,
    CacheError, FneError) of a refused option value: `text(python)` is its message, naming options
    with `named(..., python)`; the exception's message is Python's (``bad seed=-1: ...``), its
    `cli` the command line's (``bad --seed -1: ...``), which the CLI prints."""
    error = cls(text(True))
    error.cli = text(False)
    return error


def check(obj) -> None:
    """Raise TypeError naming the keyword of the first value of the wrong type (the API's
    mistake: the command line parses its strings), then OptionError (a ValueError) naming the
    first value `obj` does not accept (`refusal`: its keyword, on the command line its flag)."""
    hints = _types(type(obj))
    for f, _ in _opts(type(obj)):
        v = getattr(obj, f.name)
        nullable = type(None) in typing.get_args(hints[f.name]) or f.default is None
        if (v is not None or not nullable) and not _of_type(v, hints[f.name]):
            kinds = [typing.get_origin(a) or a for a in typing.get_args(hints[f.name]) or (hints[f.name],)
                     if a is not type(None)]
            want = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise TypeError(f"{f.name} must be {want}, not {type(v).__name__} {v!r}")
    for f, o in _opts(type(obj)):
        v, why = getattr(obj, f.name), _refused(getattr(obj, f.name), o)
        if why is not None:
            raise _refused_error(f, v, o, why)


def _refused_error(f: dataclasses.Field, v, o: Opt, why: str) -> OptionError:
    """The OptionError of the value `v` that option `f` refuses (`why`: `_refused`'s)."""
    if why == "choice":
        return refusal(lambda py: f"unknown {named(f, py, v)}; choose from {', '.join(map(str, o.choices))}")
    return refusal(lambda py: f"bad {named(f, py, v)}: {named(f, py)} must be {_wanted(v, o)}")


def uses(cls, mode: str, name: str) -> bool:
    """Whether `fne train`'s mode `mode` uses option `name` of `cls` (its declared `Opt.modes`)."""
    declared = {f.name: o for f, o in _opts(cls)}
    return name not in declared or not declared[name].modes or mode in declared[name].modes


def used_by(cls, name: str, quote: Callable[[str], str] = str) -> str:
    """The modes that use option `name` of `cls`, in words: "frozen or finetune" (`quote`d:
    "'frozen' or 'finetune'" with repr)."""
    modes = [quote(m) for m in next(o.modes for f, o in _opts(cls) if f.name == name)]
    return " or ".join(filter(None, [", ".join(modes[:-1]), modes[-1]]))


def unused(cls, mode: str, given: Iterable[str]) -> None:
    """Raise OptionError naming the first option in `given` (those the user set: the command
    line's given flags, the API's keywords other than None) that `mode` does not use; a mode
    ignoring an option it was given left the user believing it mattered."""
    for f in fields(cls):
        if f.name in given and not uses(cls, mode, f.name):
            raise _unused_error(cls, f, mode)


def _unused_error(cls, f: dataclasses.Field, mode: str) -> OptionError:
    """The OptionError of option `f` given to `mode`, which does not use it (`unused`)."""
    return refusal(lambda py: f"{named(f, py)} applies to {named('mode', py)} {used_by(cls, f.name, repr if py else str)} "
                              f"only, not {repr(mode) if py else mode}")


def problems(cls, values: dict) -> list[tuple[str, str]]:
    """(key, why) for each value of a pipeline table that `cls`' declaration refuses."""
    declared = {f.name: o for f, o in _opts(cls)}
    out = []
    for k, v in values.items():
        why = _refused(v, declared[k]) if k in declared else None
        if why == "choice":
            out.append((k, f"{v!r}: expected one of {', '.join(map(str, declared[k].choices))}"))
        elif why == "bound":
            kind = "a finite number" if isinstance(v, float) and math.isinf(v) else declared[k].kind
            out.append((k, f"{v!r}: expected {kind} {declared[k].bound}"))
    return out


_SCHEMA_TYPES = {str: "str", int: "int", float: "float", bool: "bool"}


def schema(cls, only: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> dict[str, tuple[str, str]]:
    """key -> (pipeline type, description) of the fields a pipeline file may set (or of `only`)."""
    hints, exclude = _types(cls), set(exclude)
    only = set(only) if only is not None else None
    out = {}
    for f, o in _opts(cls):
        if f.name in exclude or (only is not None and f.name not in only) or (only is None and not o.pipeline):
            continue
        kinds = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if a is not type(None)]
        out[f.name] = ("|".join(_SCHEMA_TYPES[k] for k in kinds), o.help or f"fne {flag(f)}")
    return out


def not_in_pipelines(cls) -> tuple[str, ...]:
    """The fields of `cls` that a pipeline file does not set (the runner sets them per step)."""
    return tuple(f.name for f, o in _opts(cls) if not o.pipeline)


def _plain(obj):
    """`obj` with numpy numbers as Python's and Paths as strings, as the command line gives them:
    what metrics.json, a checkpoint's arguments and the store's records write as JSON."""
    plain = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, os.PathLike):
            plain[f.name] = os.fspath(v)
        elif isinstance(v, numbers.Integral) and not isinstance(v, int):
            plain[f.name] = int(v)
        elif isinstance(v, numbers.Real) and not isinstance(v, (int, float)):
            plain[f.name] = float(v)
    return replace(obj, **plain) if plain else obj


def resolve(kwargs: dict, *classes, given: dict | None = None, only: Iterable[str] | None = None) -> list:
    """Split a verb's keywords among its option classes; -> one checked instance per class.

    given: class -> an instance to start from (e.g. the caller's StoreSpec); keywords override
    its fields. A keyword no class declares (or, with `only`, none of those named there) is a
    TypeError, as for any Python function; the other fields keep their defaults.
    """
    unexpected(kwargs, *classes, only=only)
    given = given or {}
    left = dict(kwargs)
    out = []
    for cls in classes:
        mine = {n: left.pop(n) for n in [f.name for f in fields(cls)] if n in left}
        base = given.get(cls)
        if base is not None and not isinstance(base, cls):
            raise TypeError(f"expected a {cls.__name__}, not {type(base).__name__} {base!r}")
        obj = replace(base, **mine) if base is not None else cls(**mine)
        check(obj)
        out.append(_plain(obj))
    return out


def unexpected(kwargs: dict, *classes, only: Iterable[str] | None = None) -> None:
    """A keyword that none of `classes` declares (or that is not in `only`: a verb that takes some
    of a class's fields) is a TypeError, as for any Python function."""
    left = set(kwargs) - {f.name for cls in classes for f in fields(cls) if only is None or f.name in only}
    if left:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(left))}")
