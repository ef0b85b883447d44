"""Every name list fne accepts, defined once, and the one `slug` rule.

Pure Python with no heavy imports: the CLI, the pipeline configuration and the verbs all
read their choices from here, so a new head or precision is added in one place.
"""

from __future__ import annotations

import re
from pathlib import PurePath

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STORAGE_DTYPES = ("float16", "float32")
DECODERS = ("auto", "pil", "device")  # auto: extraction on the GPU on CUDA; reading takes either
CROPS = ("center", "squash", "ten")
COMPILE = ("auto", "on", "off")
AUGMENT_ON = ("auto", "cpu", "device")
HEADS = ("svm", "logreg", "sgd-svm", "sgd-logreg")
SOLVERS = ("auto", "sklearn", "torch")
SOLVER_PRECISIONS = ("auto", "float32", "float64", "int8")  # the torch solver's matmuls
MODES = ("direct", "scratch", "frozen", "finetune")
NEW_LAYERS = ("fc", "last")
SCHEDULERS = ("none", "step", "cosine")
DIRECT_SCORES = ("sum", "max")
WEIGHT_CHOICES = ("imagenet", "random", "imagenet-or-random")


def slug(s: str) -> str:
    """A file-name-safe form of `s`: runs of other characters become one '_'."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", s).strip("_")
    return safe if safe.strip(".") else "x"  # '.' and '..' name no folder of their own


def data_slug(data: str, name: str) -> str:
    """DATA's part of a run folder's name: its `name` (a file's stem) with the suffix DATA is
    given with, so that DATA f4, f4.csv and f4.h5 name runs f4, f4-csv and f4-h5, not all f4."""
    last = PurePath(str(data).rstrip("/\\")).name
    suffix = last[len(name):] if last.startswith(name) else ""
    return slug(name + suffix.replace(".", "-"))
