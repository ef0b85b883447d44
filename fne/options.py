"""Each verb's options, declared once.

Every option of `fne extract`, `fit`, `export`, `predict`, `advise`, `cache` and `train` is a
field of one dataclass below, declared with `option(...)`: its default, help text, accepted
choices or bounds, its command-line flag and whether a pipeline file may set it. What reads these
declarations (the command line, the Python API's signatures and checks, error messages that name
an option, the pipeline schema) is `fne.option_handling`.

Pure Python (no torch, no scikit-learn): the CLI and the pipeline configuration import it cheaply.
"""

from __future__ import annotations

import argparse
import numbers
import os
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any

from fne.errors import numpy_bool
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

DATA_HELP = ("image folder, CSV, HDF5, NumPy .npz, folder of train.h5/test.h5, MNIST's idx files (their folder, "
             "or one *-images-idx3-ubyte[.gz]), .tar shards (a file, a folder, "
             "'train-{000000..000127}.tar'), .parquet files, hf:NAME[:CONFIG][@SPLIT], or 'digits'")
ARCH_HELP = ("backbone: vgg16, vgg19, efficientnet_lite0, any torchvision classification model "
             "(resnet50, convnext_tiny, vit_b_16, swin_t, ...) or timm:NAME[.TAG]; `fne backbones` lists them")
WEIGHTS_HELP = ("imagenet (torchvision's DEFAULT weights / timm's default pretrained tag; downloads once), a "
                "torchvision weights name (IMAGENET1K_V2), random (seeded, for tests) or a state dict path "
                "(.pth/.pt/.safetensors) (default: imagenet)")


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
    drawn: bool = False  # a setting of random splits, moot where DATA has its own (fne.data.splits.not_applied)


def option(default: Any = MISSING, help: str = "", **how: Any) -> Any:
    """A dataclass field declared with how it is offered (see `Opt`).

    Returns ``Any``, as `dataclasses.field` does for a type checker, so that ``x: int = option(...)``
    type-checks (a `dataclasses.Field` return type made every such field an error)."""
    return field(default=default, metadata={"opt": Opt(help=help, **how)})


def int_or_auto(s: str) -> int | str:
    """An integer, or auto (--batch-size, --save-every)."""
    try:
        return s if s == "auto" else int(s)
    except ValueError:  # argparse prints it after the flag's name
        raise argparse.ArgumentTypeError(f"an integer or auto, not {s!r}") from None


def auto_or_at_least(n: int, most: int | None = None) -> dict:
    """An integer option's bound, >= n (and <= `most`), that also takes auto (--batch-size,
    --save-every); numpy's integers are integers, as for every integer option
    (`batch_size=np.int64(4)` was refused)."""
    def check(v) -> bool:
        return v == "auto" or (isinstance(v, numbers.Integral) and n <= int(v) <= (most if most is not None else int(v)))

    return {"check": check, "bound": (f"in [{n}, {most}]" if most is not None else f">= {n}") + " or auto",
            "kind": "an integer"}


# --batch-size: images in one tensor. Past sys.maxsize torch's sampler stopped with a traceback
# (islice) once the first batch was drawn; 65536 images at 224 x 224 are already 39 GB of float32 input.
MAX_BATCH = 65536
BATCH = {"check": lambda v: 1 <= v <= MAX_BATCH, "bound": f"in [1, {MAX_BATCH}]", "kind": "an integer"}


# SGD's learning rate and weight decay multiply float32 tensors: past float32's largest, --lr 1e308
# stopped the first step with torch's "value cannot be converted to type float without overflow"
# traceback (below it, too large a rate is `fne train`'s "training diverged" line).
FLOAT32_MAX = 3.4028234663852886e38


def up_to_float32(lo: float, closed_lo: bool) -> dict:
    """A rate's bound: (lo or [lo, float32's largest]."""
    return {"check": lambda v: (lo <= v if closed_lo else lo < v) and v <= FLOAT32_MAX,
            "bound": f"in {'[' if closed_lo else '('}{lo:g}, 3.4e38]", "kind": "a number"}


def imported_lr_overflows(lr: float, imported_lr_mult: float) -> str | None:
    """finetune's imported layers' rate, lr * imported_lr_mult, where it passes float32's largest
    (each within its bound, --lr 1e30 --imported-lr-mult 1e20 stopped the first step with torch's
    "cannot be converted to type float without overflow" traceback), as a message says it; else None."""
    rate = lr * imported_lr_mult
    return f"{rate:g}, past float32's largest (3.4e38)" if rate > FLOAT32_MAX else None


def at_least(n: float, kind: str = "an integer") -> dict:
    """An option's bound: values >= n (`kind` names what it takes in the message)."""
    return {"check": lambda v: v >= n, "bound": f">= {n}", "kind": kind}


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (a Slurm or
    container share of a larger machine), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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
# --augment-on auto on CUDA: the device below this many loader workers (fne.training.augment.on_device)
AUGMENT_DEVICE_BELOW_WORKERS = 8
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
    """Whether --device `device` is one fne runs on (`DEVICES`), whether or not this machine has it:
    told without importing torch (`fne fit` on cached rows runs without it). Another type torch
    names (meta, xla, xpu, ...) passed this check and failed mid-run with torch's traceback
    (`--device meta`: "unsupported autocast device_type" after the images were read); a CPU
    takes no index (torch ignored cpu:1)."""
    return re.fullmatch(r"auto|cpu|(cuda|mps)(:(0|[1-9][0-9]*))?", device) is not None


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
    crop: str = option("center", "center: shorter side to the weights' resize, center crop; "
                                 "squash: resized to the crop size; ten: 10 crops", choices=CROPS)
    image_size: int | None = option(None, "side of the crop the network sees; the resize scales with it; rows in a "
                                          "store of their own (default: the backbone's, 224 for most)",
                                    **IMAGE_SIZE)
    precision: str = option("auto", "auto: extraction picks the machine's fastest; reading "
                                    "finds rows of any precision; a value pins the store", choices=PRECISIONS)
    storage_dtype: str = option("auto", "how cached activations are stored; auto: float16 when "
                                        "extracting, any stored dtype when reading",
                                choices=("auto", *STORAGE_DTYPES))
    cache: str | None = option(None, "cache folder or fsspec URL (default: $FNE_CACHE, else `fne cache info`)",
                               pipeline=False)
    device: str = option("auto", "auto, cpu, cuda[:i] or mps", pipeline=False, **DEVICE)
    weights_seed: int = option(0, "seed of --weights random", flag="--seed-weights", **SEED)
    decode: str = option("auto", "auto: extraction decodes JPEGs on the GPU on CUDA (a quarter of "
                                 "PIL's CPU; with many cores per GPU pil can be faster) and with PIL elsewhere, "
                                 "reading finds rows of either; pil: PIL decodes in loader workers (a GPU fast in float64 "
                                 "resizes, to the same pixels); "
                                 "device: JPEGs decoded where the network runs (rows in a store of their own)",
                         choices=DECODERS, pipeline=False)


@dataclass
class ForwardOptions:
    """How the network runs over images: `fne extract`, and `--extract` of fit, export, predict."""

    batch_size: int | str = option("auto", "images per forward pass; auto: 32 on a CPU, up to 256 on "
                                           "a GPU (CUDA, MPS; sized from free memory)", parse=int_or_auto,
                                   **auto_or_at_least(1, MAX_BATCH))
    workers: int | None = option(None, "decoding processes (default: 1 on a CPU, one per core but one on "
                                       "a GPU (CUDA, MPS), at most 16)", **WORKERS)
    compile: str | bool = option("auto", "torch.compile the network; auto: never on a CPU, on a GPU only for very large runs",
                          choices=COMPILE, pipeline=False)
    progress: bool = option(True, "no progress bar", flag="--no-progress", pipeline=False)
    chunk: int = option(1024, "rows per committed part", cli=False, pipeline=False, **at_least(1))
    threads: int | None = option(None, "torch CPU threads (default: torch's)", cli=False, pipeline=False,
                                 **at_least(1))

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool) or numpy_bool(self.compile):  # the API also takes True / False
            self.compile = "on" if self.compile else "off"


@dataclass
class ExtractOptions(ForwardOptions):
    """`fne extract`: the forward options, and which images to read."""

    shard: str | tuple[int, int] | None = option(
        None, "I/N: process a deterministic 1/N of DATA (slurm arrays) (default: all of it; under torchrun "
              "RANK/WORLD_SIZE)", pipeline=False)
    retry_bad: bool = option(False, "read again the images recorded as unreadable (after a transient "
                                    "failure)", pipeline=False)


@dataclass
class RowsOptions:
    """How fit and export read rows from the cache."""

    features: str = option("fne", "fne, fne:L1,L2, last or LAYER,... (L2-normalised; VGG's fc6, fc7; `fne backbones "
                                  "ARCH` lists a backbone's layers); fit also takes auto (cross-validated)")
    stream_chunk: int = option(1024, "rows read from the cache at a time: memory follows this, not the "
                                     "dataset (default: 1024)", metavar="ROWS", pipeline=False, **at_least(1))
    extract_missing: bool = option(False, "extract rows missing from the cache first", flag="--extract",
                                   pipeline=False)


@dataclass
class FitOptions(RowsOptions):
    """`fne fit`: the head and the evaluation protocol."""

    head: str = option("svm", "linear head; auto: svm or logreg, whichever cross-validates better",
                       choices=(*HEADS, "auto"))
    C: str | float = option("1.0", "regularisation, or 'auto' (k-fold CV on the training images)",
                            flag="--C")
    splits: int = option(5, "random stratified splits when DATA has no split", drawn=True, **SPLITS)
    test_size: float = option(0.25, "test fraction of each random split", drawn=True, **between(0, 1))
    train_per_class: int | None = option(None, "training images per class per split", drawn=True, **at_least(1))
    seed: int = option(0, "seed of the splits and the heads", pipeline=False, **SEED)
    solver: str = option("auto", "svm/logreg solver: torch (L-BFGS over streamed rows, on --device) or sklearn; "
                                 "auto: scikit-learn below rows x features = 1e8 (its float64 copy of the "
                                 "rows, ~2 GB) and, with CUDA, below rows x features x classes = 1.5e8; torch "
                                 "above (fne.linear.solver)", choices=SOLVERS)


@dataclass
class PredictOptions:
    """`fne predict`: where the weights file a `fne fit` model was fitted on lies now, and how many
    classes each image's row names."""

    moved_weights: str | None = option(None, "the weights file the model was fitted on, where it lies now (another "
                                            "machine, a moved folder): its content must be the model's (the "
                                            "fingerprint its metrics.json records)", pipeline=False, metavar="PATH")
    top: int = option(1, "classes named per image: K > 1 adds the columns predicted_2 ... predicted_K after "
                         "predicted (the classes of the next highest scores)", pipeline=False, **at_least(1))


@dataclass
class AdviseOptions:
    """`fne advise`: how the target data is measured (with the store and forward options)."""

    sample: int = option(200, "images run through the source classifier", **at_least(1))
    seed: int = option(0, "seed of the sample", **SEED)
    test_size: float = option(0.25, "share held out when DATA has no split (as in fne fit)", drawn=True, **between(0, 1))
    train_per_class: int | None = option(None, "training images per class (as in fne fit)", drawn=True, **at_least(1))


@dataclass
class CacheOptions:
    """`fne cache verify` and `fne cache rm` (`fne.cache_verify`, `fne.cache_rm`): whether they change
    the cache (with StoreOptions' ``cache``)."""

    clean: bool = option(False, "remove unfinished parts of interrupted runs (live writers' are spared) and move "
                                "damaged parts to quarantine/", pipeline=False)
    dry_run: bool = option(False, "list what would be removed, remove nothing", pipeline=False)


def class_map_problem(cm: dict) -> str | None:
    """What is wrong with the shape of an inline class map (a dict, as `fne.train` and a pipeline
    file's class_map take it), or None: its keys are target class names, its values ImageNet
    class names or indices, or lists of them (`fne.training.class_map.read_class_map` checks
    them against DATA's classes and the network's)."""
    keys = [k for k in cm if not isinstance(k, str)]
    if keys:
        return f"target classes must be strings (DATA's class names): {keys}"
    bad = [k for k, v in cm.items() if not (isinstance(v, (str, int)) or (
        isinstance(v, list) and all(isinstance(x, (str, int)) for x in v)))]
    return f"values must be ImageNet class names/indices: {bad}" if bad else None


@dataclass
class TrainConfig:
    """`fne train`: everything a run depends on; stored in the checkpoint as `args`. Defaults follow
    the course practice (SGD, momentum 0.9, weight decay 5e-4, lr 1e-3)."""

    data: str = option(MISSING, DATA_HELP, cli=False, pipeline=False)
    mode: str = option(MISSING, "which experiment", choices=MODES, pipeline=False)
    out: str = option(MISSING, "run folder: metrics.json, predictions.csv, model.pt, checkpoint.pt (where one "
                               "was saved); direct: metrics.json, predictions.csv, class_map.json", pipeline=False)
    arch: str = option("vgg16", ARCH_HELP, pipeline=False)
    weights: str | None = option(None, "imagenet, a torchvision weights name (IMAGENET1K_V2), random (seeded) or "
                                       "a state dict / checkpoint path (default: imagenet; scratch: random)",
                                 pipeline=False)
    weights_seed: int = option(0, "seed of --weights random (--mode scratch draws its network from --seed)",
                               flag="--seed-weights", pipeline=False, **SEED)
    new_layers: str = option("fc", "frozen/finetune: fc renews the backbone's fc layers (vgg: fc6, fc7, "
                                   "output), last only the output layer", choices=NEW_LAYERS,
                             modes=("frozen", "finetune"))
    class_map: str | dict | None = option(None, "direct: JSON {target class: [ImageNet index or name, ...]} (the "
                                                "Python API also takes the dict; it is recorded as "
                                                "RUN_DIR/class_map.json)", pipeline=False, modes=("direct",))
    direct_score: str = option("sum", "direct: a target's score is the sum or max of its source "
                                      "softmax probabilities", choices=DIRECT_SCORES, modes=("direct",))
    epochs: int = option(10, "passes over the training images", modes=TRAINED, **at_least(1))
    batch_size: int = option(32, "training batch size", **BATCH)
    lr: float = option(1e-3, "base learning rate (new layers)", modes=TRAINED, **up_to_float32(0, closed_lo=False))
    imported_lr_mult: float = option(1e-3, "finetune: imported layers learn at lr * this", modes=("finetune",),
                                     **up_to_float32(0, closed_lo=True))
    momentum: float = option(0.9, "SGD momentum", modes=TRAINED, **between(0, 1, closed_lo=True))
    weight_decay: float = option(5e-4, "SGD weight decay", modes=TRAINED, **up_to_float32(0, closed_lo=True))
    scheduler: str = option("none", "per-epoch lr schedule", choices=SCHEDULERS, modes=TRAINED)
    image_size: int | None = option(None, "input size (default: the backbone's, 224 for most)", **IMAGE_SIZE)
    augment: bool = option(True, "train on center crops instead of RandomResizedCrop + horizontal flip",
                           flag="--no-augment", modes=TRAINED)
    augment_on: str = option("auto", "where the augmentation and the evaluation's JPEG decoding run; auto: "
                                     "on the GPU when training on CUDA (where a library decodes JPEGs there) with fewer than "
                                     f"{AUGMENT_DEVICE_BELOW_WORKERS} loader workers (they would bound the epoch; "
                                     "workers then only read JPEG bytes), else in the loader workers (with "
                                     "augmentation only: --no-augment decodes in the workers)",
                             choices=AUGMENT_ON, modes=TRAINED)
    val_fraction: float = option(0.1, "stratified part of the training data that picks the best epoch",
                                 modes=TRAINED, **between(0, 1, closed_lo=True))
    test_size: float = option(0.25, "when DATA has no predefined split", drawn=True, **between(0, 1))
    train_per_class: int | None = option(None, "training images per class, validation part included: fit's "
                                               "--train-per-class, the same images (when DATA has no "
                                               "predefined split)", drawn=True, **at_least(1))
    seed: int = option(0, "seed of the split, the initialisation and the batches", pipeline=False, **SEED)
    precision: str = option("auto", "autocast precision", choices=PRECISIONS)
    device: str = option("auto", "auto, cpu, cuda[:i] or mps", **DEVICE)
    workers: int | None = option(None, "decoding processes (default: cores/2, at most 4, on a CPU; one per "
                                       "core but one, at most 16, on a GPU (CUDA, MPS))", **WORKERS)
    save_every: int | str = option("auto", "write RUN_DIR/checkpoint.pt every N epochs (0: never); auto: "
                                           "after each epoch that ends 5 minutes or more after the "
                                           "last write, so an interrupted run loses little", parse=int_or_auto, **auto_or_at_least(0),
                                   modes=TRAINED)
    resume: bool | str = option(False, "continue from RUN_DIR/checkpoint.pt: the same settings and images (a larger "
                                 "--epochs extends a run that saved one, without --scheduler)", pipeline=False)
    train_bn: bool = option(False, "finetune: imported BatchNorm layers use batch statistics and update them "
                                   "(default: they keep the imported statistics)", modes=("finetune",))
    deterministic: bool = option(False, "torch's deterministic algorithms where it has them (an op without one "
                                        "runs with a warning naming it) and no cuDNN benchmarking",
                                 modes=TRAINED)
    progress: bool = option(True, "no progress bars", flag="--no-progress")
