"""`fne run PIPELINE.toml`: an experiment declared in a file, run end to end, resumable.

A pipeline file declares datasets, backbones, the feature × head grid of `fne fit`, the
modes of `fne train` and optional published reference numbers; see pipelines/*.toml and
the schema in `SCHEMA` below. `fne run` then

1. validates the whole file (unknown keys, bad values, missing datasets) and reports every
   mistake with its key and line before anything runs;
2. per (dataset, backbone): extracts the activations once into the cache, writes the advice
   (`fne advise`), fits every feature × head × seed from the cache and trains every mode;
3. skips steps that are done: RUN_DIR/metrics.json exists and RUN_DIR/step.json holds the
   hash of the same step configuration (and of that metrics.json), so an interrupted run
   resumes where it stopped and a changed setting reruns only the steps it touches;
4. ends with `fne report` over exactly the steps of this pipeline (OUT/report.md, .html).

Layout of OUT: pipeline.json, report.*, and per step
OUT/<dataset>/<backbone>/{advice, fit-<features>-<head>-C<C>-s<seed>, train-<mode>-s<seed>}/.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from fne.errors import FneError, WeightsError
from fne.names import CROPS, HEADS, MODES, PRECISIONS, STORAGE_DTYPES, WEIGHT_CHOICES, slug

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

STEP_FORMAT = 1

# key -> (type(s), description). Types: "str", "int", "float" (int accepted), "bool",
# "list[str]", "list[int]", "table", "str|float", "str|table".
SCHEMA: dict[str, dict[str, tuple[str, str]]] = {
    "": {
        "pipeline": ("table", "name, description, out, cache, seeds, advise, advise_sample, report"),
        "datasets": ("table", "[datasets.KEY] tables"),
        "backbones": ("array", "[[backbones]] tables"),
        "fit": ("table", "the feature x head grid"),
        "train": ("table", "the fne train modes"),
    },
    "pipeline": {
        "name": ("str", "label of the experiment"),
        "description": ("str", "free text"),
        "out": ("str", "default --out (relative to the current folder)"),
        "cache": ("str", "default --cache"),
        "seeds": ("list[int]", "seeds of fit's random splits and of training (default [0])"),
        "advise": ("bool", "run fne advise per dataset and backbone (default true)"),
        "advise_sample": ("int", "images the source classifier sees for the advice (default 200)"),
        "report": ("bool", "write the report at the end (default true)"),
        "device": ("str", "auto, cpu or cuda[:i]"),
        "workers": ("int", "decoding processes"),
        "batch_size": ("int", "extraction batch size (default 32)"),
    },
    "datasets.*": {
        "data": ("str", "any DATA form of fne fit; relative paths resolve against this file's folder; "
                        "${VAR} expands environment variables"),
        "optional": ("bool", "a dataset whose path is absent is skipped with a note instead of failing"),
        "max_per_class": ("int", "use at most N images per class (per split), seeded: a cheap subset"),
        "splits": ("int", "overrides fit.splits for this dataset"),
        "test_size": ("float", "overrides fit.test_size / train.test_size for this dataset"),
        "train_per_class": ("int", "overrides fit.train_per_class for this dataset"),
        "class_map": ("str|table", "direct mode: JSON file or inline {target class = [ImageNet names]}"),
        "protocol": ("str", "free text: the evaluation protocol, shown in pipeline.json"),
        "note": ("str", "free text"),
        "published": ("table", "published reference values: method = 93.3 or [mean, std], plus source, note"),
    },
    "backbones[]": {
        "arch": ("str", "backbone (vgg16, vgg19, efficientnet_lite0)"),
        "weights": ("str", "imagenet, random, imagenet-or-random (fall back to random with a warning) "
                           "or a state dict path"),
        "crop": ("str", "center, squash or ten"),
        "precision": ("str", "auto, fp32, bf16 or fp16"),
        "storage_dtype": ("str", "float16 or float32"),
        "weights_seed": ("int", "seed of random weights"),
        "label": ("str", "folder name of this backbone's runs"),
        "features": ("list[str]", "overrides fit.features for this backbone"),
    },
    "fit": {
        "enabled": ("bool", "default true"),
        "features": ("list[str]", "fne, fc6, fc7, last, fne:L1,L2 or L1,L2"),
        "heads": ("list[str]", "svm, logreg, sgd-svm, sgd-logreg"),
        "C": ("str|float", "regularisation, or 'auto'"),
        "splits": ("int", "random stratified splits when DATA has no split (default 5)"),
        "test_size": ("float", "default 0.25"),
        "train_per_class": ("int", "training images per class per split"),
    },
}
TRAIN_EXCLUDED = ("data", "mode", "out", "arch", "weights", "weights_seed", "resume", "seed", "class_map")
TRAIN_RUNTIME = ("device", "workers", "progress", "save_every")  # not part of a step's identity
# settings that direct mode (no training) ignores: changing them does not rerun it
TRAINING_ONLY = ("epochs", "lr", "imported_lr_mult", "momentum", "weight_decay", "scheduler", "val_fraction",
                 "augment", "new_layers", "deterministic")


class PipelineError(FneError):
    """Mistakes in a pipeline file (all of them, each with its key and line)."""


# ------------------------------------------------------------------ locating keys

_KEY = r'(?:"(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)'
_DOTTED = re.compile(rf"^\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*=")
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*\]\]?")


def _split_key(s: str) -> tuple[str, ...]:
    parts = re.findall(_KEY, s)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


class Locator:
    """Line numbers of keys in TOML text (tomllib gives none): headers and `key =` lines."""

    def __init__(self, text: str):
        self.entries: list[tuple[int, tuple, bool]] = []  # (line, path, is_header)
        current: tuple = ()
        counts: dict[tuple, int] = {}
        for n, line in enumerate(text.splitlines(), 1):
            stripped = line.split("#", 1)[0] if '"' not in line and "'" not in line else line
            h = _HEADER.match(stripped)
            if h:
                path = _split_key(h.group(2))
                if h.group(1) == "[[":
                    counts[path] = counts.get(path, -1) + 1
                    path = path + (counts[path],)
                else:
                    # [backbones.x] under an array refers to its last element
                    for k in range(len(path), 0, -1):
                        if path[:k] in counts:
                            path = path[:k] + (counts[path[:k]],) + path[k:]
                            break
                current = path
                self.entries.append((n, path, True))
                continue
            k = _DOTTED.match(stripped)
            if k:
                self.entries.append((n, current + _split_key(k.group(1)), False))

    def line(self, path: tuple) -> int | None:
        path = tuple(path)
        for n, p, _ in self.entries:
            if p == path:
                return n
        # the closest enclosing key or header that exists (inline tables, missing keys)
        for k in range(len(path) - 1, 0, -1):
            for n, p, _ in self.entries:
                if p == path[:k]:
                    return n
        return None


def dotted(path: tuple) -> str:
    out = []
    for p in path:
        if isinstance(p, int):
            out[-1] = f"{out[-1]}[{p}]"
        else:
            out.append(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else json.dumps(p))
    return ".".join(out)


class Errors:
    def __init__(self, file: Path, loc: Locator):
        self.file, self.loc, self.items = file, loc, []

    def add(self, path: tuple, msg: str) -> None:
        line = self.loc.line(path)
        where = f"{self.file}:{line}" if line else f"{self.file}"
        self.items.append((line or 0, f"{where}: {dotted(path) or '(top level)'}: {msg}"))

    def raise_if_any(self) -> None:
        if self.items:
            n = len(self.items)
            lines = [m for _, m in sorted(self.items, key=lambda x: x[0])]
            if n == 1:
                raise PipelineError(lines[0])
            raise PipelineError(f"{n} problems in {self.file}:\n  " + "\n  ".join(lines))


# ------------------------------------------------------------------ the model


@dataclass
class DatasetCfg:
    key: str
    data: str  # resolved: "digits" or an absolute path
    spec: str  # as written
    optional: bool = False
    max_per_class: int | None = None
    splits: int | None = None
    test_size: float | None = None
    train_per_class: int | None = None
    class_map: str | dict | None = None
    protocol: str | None = None
    note: str | None = None
    published: dict | None = None
    skipped: str | None = None  # why an optional dataset is not run
    n_images: int | None = None
    n_classes: int | None = None
    n_train_split: int | None = None  # images in the predefined train split, if DATA has one


@dataclass
class BackboneCfg:
    arch: str
    weights: str
    crop: str = "center"
    precision: str = "auto"
    storage_dtype: str = "float16"
    weights_seed: int = 0
    label: str = ""
    features: list[str] | None = None
    resolved_weights: str | None = None  # after imagenet-or-random


@dataclass
class Pipeline:
    file: Path
    name: str
    description: str = ""
    out: str | None = None
    cache: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    advise: bool = True
    advise_sample: int = 200
    report: bool = True
    device: str = "auto"
    workers: int | None = None
    batch_size: int = 32
    datasets: list[DatasetCfg] = field(default_factory=list)
    backbones: list[BackboneCfg] = field(default_factory=list)
    fit: dict | None = None
    train: dict[str, dict] = field(default_factory=dict)  # mode -> settings
    train_raw: dict[str, dict] = field(default_factory=dict, repr=False)  # "" (common) / mode -> as written
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """What pipeline.json holds: the report reads notes and published values from it."""
        return {
            "kind": "pipeline", "name": self.name, "file": str(self.file), "description": self.description,
            "datasets": {d.key: {"data": d.data, "optional": d.optional, "skipped": d.skipped,
                                 "max_per_class": d.max_per_class, "protocol": d.protocol, "note": d.note,
                                 "published": d.published} for d in self.datasets},
            "backbones": [asdict(b) for b in self.backbones],
            "fit": self.fit, "train": self.train, "seeds": self.seeds, "notes": list(self.notes),
        }


# ------------------------------------------------------------------ validation


def _type_ok(v, t: str) -> bool:
    if t == "str":
        return isinstance(v, str)
    if t == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "bool":
        return isinstance(v, bool)
    if t == "table":
        return isinstance(v, dict)
    if t == "array":
        return isinstance(v, list) and all(isinstance(x, dict) for x in v)
    if t == "list[str]":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if t == "list[int]":
        return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    if t == "str|float":
        return isinstance(v, (str, int, float)) and not isinstance(v, bool)
    if t == "str|table":
        return isinstance(v, (str, dict))
    raise AssertionError(t)


_TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "table": "a table", "array": "an array of tables ([[...]])", "list[str]": "a list of strings",
               "list[int]": "a list of integers", "str|float": "a number or a string",
               "str|table": "a string or an inline table"}


def _check_table(tbl: dict, schema: dict, path: tuple, err: Errors) -> dict:
    """Unknown keys and types; returns the entries that passed."""
    ok = {}
    for k, v in tbl.items():
        if k not in schema:
            close = difflib.get_close_matches(k, list(schema), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            err.add(path + (k,), f"unknown key{hint} (allowed: {', '.join(schema)})")
            continue
        t = schema[k][0]
        if not _type_ok(v, t):
            err.add(path + (k,), f"expected {_TYPE_WORDS[t]}, got {v!r}")
            continue
        ok[k] = v
    return ok


def _expand(spec: str) -> tuple[str, list[str]]:
    unset = []

    def sub(m):
        name = m.group(1)
        if name not in os.environ:
            unset.append(name)
            return m.group(0)
        return os.environ[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, spec), unset


def _train_schema() -> dict[str, tuple[str, str]]:
    from fne.train import TrainConfig

    words = {"int": "int", "float": "float", "bool": "bool", "str": "str"}
    out = {"modes": ("list[str]", f"which of {', '.join(MODES)} to run")}
    for name, f in TrainConfig.__dataclass_fields__.items():
        if name in TRAIN_EXCLUDED:
            continue
        ann = str(f.type).replace(" ", "")
        base = ann.split("|")[0]
        out[name] = (words.get(base, "str"), f"fne train --{name.replace('_', '-')}")
    return out


def load_pipeline(path: str | Path, *, check_data: bool = True) -> Pipeline:
    """Parse and validate a pipeline file; raises PipelineError listing every problem.

    check_data=False resolves dataset paths without opening them (nor requiring them).
    """
    from fne import backbones as bb

    file = Path(path)
    if not file.is_file():
        raise PipelineError(f"pipeline file {path}: no such file")
    text = file.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"{file}: not valid TOML: {e}") from None
    err = Errors(file, Locator(text))
    base = file.resolve().parent
    top = _check_table(raw, SCHEMA[""], (), err)

    p = Pipeline(file=file, name=file.stem)
    head = _check_table(top.get("pipeline", {}), SCHEMA["pipeline"], ("pipeline",), err)
    for k in ("name", "description", "out", "cache", "advise", "report", "device", "workers", "batch_size"):
        if k in head:
            setattr(p, k, head[k])
    if "seeds" in head:
        if not head["seeds"]:
            err.add(("pipeline", "seeds"), "needs at least one seed")
        p.seeds = head["seeds"] or [0]
    if "advise_sample" in head:
        if head["advise_sample"] < 1:
            err.add(("pipeline", "advise_sample"), f"must be >= 1, got {head['advise_sample']}")
        p.advise_sample = head["advise_sample"]
    for k in ("workers", "batch_size"):
        if k in head and head[k] < (0 if k == "workers" else 1):
            err.add(("pipeline", k), f"must be >= {0 if k == 'workers' else 1}, got {head[k]}")

    # ---- backbones
    bbs = top.get("backbones")
    if not bbs:
        err.add(("backbones",) if "backbones" in raw else (), "at least one [[backbones]] table is required")
        bbs = []
    labels = {}
    for i, b in enumerate(bbs):
        path_ = ("backbones", i)
        b = _check_table(b, SCHEMA["backbones[]"], path_, err)
        if "arch" not in b:
            err.add(path_, "missing key 'arch'")
            continue
        try:
            bb.get(b["arch"])
        except FneError as e:
            err.add(path_ + ("arch",), str(e))
            continue
        cfg = BackboneCfg(arch=b["arch"], weights=b.get("weights", "imagenet"))
        for k in ("crop", "precision", "storage_dtype", "weights_seed", "features"):
            if k in b:
                setattr(cfg, k, b[k])
        for k, choices in (("crop", CROPS), ("precision", PRECISIONS), ("storage_dtype", STORAGE_DTYPES)):
            if getattr(cfg, k) not in choices:
                err.add(path_ + (k,), f"{getattr(cfg, k)!r} is not one of {', '.join(choices)}")
        if cfg.weights not in WEIGHT_CHOICES:
            wpath = Path(os.path.expanduser(cfg.weights))
            wpath = wpath if wpath.is_absolute() else base / wpath
            if not wpath.is_file():
                err.add(path_ + ("weights",), f"{cfg.weights!r} is neither one of {', '.join(WEIGHT_CHOICES)} "
                                              f"nor an existing state dict file ({wpath})")
            cfg.weights = str(wpath)
        cfg.label = b.get("label") or slug(f"{cfg.arch}-{Path(cfg.weights).stem if cfg.weights not in WEIGHT_CHOICES else cfg.weights}")
        if cfg.label in labels:
            err.add(path_, f"same folder label {cfg.label!r} as backbones[{labels[cfg.label]}]; give a distinct 'label'")
        labels[cfg.label] = i
        p.backbones.append(cfg)

    # ---- fit
    if "fit" in top:
        f = _check_table(top["fit"], SCHEMA["fit"], ("fit",), err)
        if f.get("enabled", True):
            p.fit = {"features": f.get("features", ["fne"]), "heads": f.get("heads", ["svm"]),
                     "C": str(f.get("C", "1.0")), "splits": f.get("splits", 5),
                     "test_size": float(f.get("test_size", 0.25)), "train_per_class": f.get("train_per_class")}
            for h in p.fit["heads"]:
                if h not in HEADS:
                    err.add(("fit", "heads"), f"unknown head {h!r}; choose from {', '.join(HEADS)}")
            if not p.fit["features"]:
                err.add(("fit", "features"), "needs at least one feature spec")
            if not p.fit["heads"]:
                err.add(("fit", "heads"), "needs at least one head")
            _check_C(p.fit["C"], ("fit", "C"), err)
            _check_protocol(p.fit, ("fit",), err)
    if p.fit is not None:
        for i, cfg in enumerate(p.backbones):
            feats = cfg.features if cfg.features is not None else p.fit["features"]
            where = ("backbones", i, "features") if cfg.features is not None else ("fit", "features")
            for spec in feats:
                try:
                    from fne.fit import parse_features

                    parse_features(spec, bb.get(cfg.arch))
                except FneError as e:
                    err.add(where, f"{spec!r} does not apply to {cfg.arch}: {e}")

    # ---- train
    if "train" in top:
        schema = _train_schema()
        t = top["train"]
        modes = t.get("modes", [])
        if "modes" not in t:
            err.add(("train",), f"missing key 'modes' (a list of {', '.join(MODES)})")
        if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
            err.add(("train", "modes"), f"expected a list of strings, got {modes!r}")
            modes = []
        for m in modes:
            if m not in MODES:
                err.add(("train", "modes"), f"unknown mode {m!r}; choose from {', '.join(MODES)}")
        common = _check_table({k: v for k, v in t.items() if k not in MODES}, schema, ("train",), err)
        common.pop("modes", None)
        _check_train_values(common, ("train",), err)
        for m in MODES:
            if m in t and not isinstance(t[m], dict):
                err.add(("train", m), f"expected a table [train.{m}], got {t[m]!r}")
            elif m in t and m not in modes:
                err.add(("train", m), f"settings for mode {m!r}, which train.modes does not list")
        for m in modes:
            if m not in MODES:
                continue
            own = _check_table(t.get(m, {}), {k: v for k, v in schema.items() if k != "modes"}, ("train", m), err)
            _check_train_values(own, ("train", m), err)
            p.train[m] = {**common, **own}
            p.train_raw[m] = own
        p.train_raw[""] = common

    # ---- datasets
    dss = top.get("datasets", {})
    if not dss:
        err.add(("datasets",) if "datasets" in raw else (), "at least one [datasets.KEY] table is required")
    for key, d in dss.items():
        path_ = ("datasets", key)
        if not isinstance(d, dict):
            err.add(path_, f"expected a table [datasets.{key}], got {d!r}")
            continue
        d = _check_table(d, SCHEMA["datasets.*"], path_, err)
        if "data" not in d:
            err.add(path_, "missing key 'data' (a folder, CSV, HDF5 file or 'digits')")
            continue
        ds = DatasetCfg(key=key, data=d["data"], spec=d["data"], optional=d.get("optional", False))
        for k in ("max_per_class", "splits", "test_size", "train_per_class", "protocol", "note"):
            if k in d:
                setattr(ds, k, d[k])
        for k in ("max_per_class", "splits", "train_per_class"):
            if getattr(ds, k) is not None and getattr(ds, k) < 1:
                err.add(path_ + (k,), f"must be >= 1, got {getattr(ds, k)}")
        if ds.test_size is not None and not 0 < ds.test_size < 1:
            err.add(path_ + ("test_size",), f"must be in (0, 1), got {ds.test_size}")
        if "published" in d:
            ds.published = _check_published(d["published"], path_ + ("published",), err)
        if "class_map" in d:
            cm = d["class_map"]
            if isinstance(cm, str):
                cpath = Path(os.path.expanduser(cm))
                cpath = cpath if cpath.is_absolute() else base / cpath
                if not cpath.is_file():
                    err.add(path_ + ("class_map",), f"no such file {cpath}")
                ds.class_map = str(cpath)
            else:
                bad = [k for k, v in cm.items() if not (isinstance(v, (str, int)) or (
                    isinstance(v, list) and all(isinstance(x, (str, int)) for x in v)))]
                if bad:
                    err.add(path_ + ("class_map",), f"values must be ImageNet class names/indices: {bad}")
                ds.class_map = dict(cm)
        _resolve_data(ds, base, path_, err, check_data)
        p.datasets.append(ds)
    if not p.fit and not p.train:
        err.add(("fit",), "nothing to run: give a [fit] grid or [train] modes")
    for ds in p.datasets:
        _check_split_sizes(p, ds, err)
    err.raise_if_any()
    for ds in p.datasets:
        if ds.skipped:
            p.notes.append(f"dataset {ds.key} skipped: {ds.skipped}")
    return p


def _check_split_sizes(p: Pipeline, ds: DatasetCfg, err: Errors) -> None:
    """Stratified parts need one image per class: catch a too small test / validation part early."""
    if not ds.n_images or not ds.n_classes or ds.skipped:
        return
    k = ds.n_classes
    n = ds.n_images
    if ds.max_per_class:
        n = min(n, ds.max_per_class * k * (2 if ds.n_train_split is not None else 1))
    key = ("datasets", ds.key)
    if p.fit and ds.n_train_split is None:
        tpc = ds.train_per_class if ds.train_per_class is not None else p.fit["train_per_class"]
        ts = ds.test_size if ds.test_size is not None else p.fit["test_size"]
        if tpc is None and math.ceil(ts * n) < k:
            where = key + ("test_size",) if ds.test_size is not None else ("fit", "test_size")
            err.add(where, f"{ds.key}: a test part of {ts} holds {math.ceil(ts * n)} of its ~{n} images, fewer "
                           f"than its {k} classes (a stratified split needs one per class)")
    for mode, settings in p.train.items():
        if mode == "direct":
            continue
        ts = ds.test_size if ds.test_size is not None else settings.get("test_size", 0.25)
        n_train = (min(ds.n_train_split, n) if ds.n_train_split is not None else n - math.ceil(ts * n))
        vf = settings.get("val_fraction", 0.1)
        if vf and math.ceil(vf * n_train) < k:
            where = ("train", mode, "val_fraction") if "val_fraction" in (p.train_raw.get(mode) or {}) else (
                ("train", "val_fraction") if "val_fraction" in p.train_raw.get("", {}) else ("train", "modes"))
            err.add(where, f"mode {mode} on {ds.key}: a validation part of {vf} holds {math.ceil(vf * n_train)} of "
                           f"~{n_train} training images, fewer than its {k} classes (a stratified split needs one "
                           f"per class): raise val_fraction or set it to 0 (then the last epoch is kept)")


def _check_C(C: str, path: tuple, err: Errors) -> None:
    try:
        from fne.heads import parse_C

        parse_C(C)
    except (FneError, ValueError) as e:
        err.add(path, str(e))


def _check_protocol(f: dict, path: tuple, err: Errors) -> None:
    if f.get("splits") is not None and f["splits"] < 1:
        err.add(path + ("splits",), f"must be >= 1, got {f['splits']}")
    if not 0 < f["test_size"] < 1:
        err.add(path + ("test_size",), f"must be in (0, 1), got {f['test_size']}")
    if f.get("train_per_class") is not None and f["train_per_class"] < 1:
        err.add(path + ("train_per_class",), f"must be >= 1, got {f['train_per_class']}")


def _check_train_values(s: dict, path: tuple, err: Errors) -> None:
    from fne.train import DIRECT_SCORES, NEW_LAYERS, SCHEDULERS

    checks = {
        "epochs": (lambda v: v >= 1, "an integer >= 1"),
        "batch_size": (lambda v: v >= 1, "an integer >= 1"),
        "lr": (lambda v: v > 0, "a positive number"),
        "imported_lr_mult": (lambda v: v >= 0, "a number >= 0"),
        "image_size": (lambda v: v >= 8, "an integer >= 8"),
        "val_fraction": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "test_size": (lambda v: 0 < v < 1, "a number in (0, 1)"),
        "new_layers": (lambda v: v in NEW_LAYERS, f"one of {', '.join(NEW_LAYERS)}"),
        "scheduler": (lambda v: v in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
        "direct_score": (lambda v: v in DIRECT_SCORES, f"one of {', '.join(DIRECT_SCORES)}"),
        "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    }
    for k, (ok, want) in checks.items():
        if k in s and not ok(s[k]):
            key = path + (k,)
            err.add(key, f"{s[k]!r}: expected {want}")


def _check_published(pub: dict, path: tuple, err: Errors) -> dict:
    out = {"source": None, "note": None, "values": {}}
    for k, v in pub.items():
        if k in ("source", "note"):
            if not isinstance(v, str):
                err.add(path + (k,), f"expected a string, got {v!r}")
            out[k] = v
        elif (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
                isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)):
            vals = v if isinstance(v, list) else [v]
            if not all(0 <= x <= 100 for x in vals[:1]):
                err.add(path + (k,), f"published accuracy is a percentage in [0, 100], got {v!r}")
            out["values"][k] = {"mean": float(vals[0]), "std": float(vals[1]) if len(vals) == 2 else None}
        else:
            err.add(path + (k,), f"expected a percentage (93.3) or [mean, std], got {v!r}")
    if out["values"] and not out["source"]:
        err.add(path, "published values need a 'source' (where the numbers come from)")
    return out


def _resolve_data(ds: DatasetCfg, base: Path, path_: tuple, err: Errors, check_data: bool) -> None:
    from fne.data import load_dataset
    from fne.errors import DataError

    if ds.spec == "digits":
        ds.data = "digits"
    else:
        expanded, unset = _expand(ds.spec)
        p = Path(os.path.expanduser(expanded))
        p = p if p.is_absolute() else (base / p)
        ds.data = str(p.resolve()) if p.exists() else str(p)
        if not check_data:  # resolve only: the caller wants the file's settings, not the data
            return
        if not p.exists():
            why = (f"{ds.spec!r}: environment variable{'s' * (len(unset) > 1)} {', '.join(unset)} "
                   f"not set" if unset else f"path {p} does not exist")
            if ds.optional:
                ds.skipped = why
            else:
                err.add(path_ + ("data",), f"{why}; this dataset must be supplied by you (see the comments "
                                           f"in the file), or mark it optional = true to skip it")
            return
    if not check_data:
        return
    try:
        d = load_dataset(ds.data)
    except DataError as e:
        err.add(path_ + ("data",), str(e))
        return
    ds.n_images, ds.n_classes = len(d), len(d.classes)
    if d.has_split:
        ds.n_train_split = sum(1 for x in d.splits if x == "train")
    if d.labels is None:
        err.add(path_ + ("data",), "has no labels")


# ------------------------------------------------------------------ steps


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:20]


@dataclass
class Step:
    kind: str  # advise | fit | train
    dataset: DatasetCfg
    backbone: BackboneCfg
    dir: Path
    config: dict
    kwargs: dict
    label: str

    @property
    def hash(self) -> str:
        return config_hash(self.config)

    @property
    def result_file(self) -> Path:
        return self.dir / ("advice.json" if self.kind == "advise" else "metrics.json")

    def done(self) -> bool:
        rf, sf = self.result_file, self.dir / "step.json"
        if not (rf.is_file() and sf.is_file()):
            return False
        try:
            s = json.loads(sf.read_text())
        except (OSError, ValueError):
            return False
        return s.get("hash") == self.hash and s.get("result_sha") == _file_sha(rf)

    def mark_done(self, seconds: float) -> None:
        record = {"format": STEP_FORMAT, "hash": self.hash, "kind": self.kind, "label": self.label,
                  "dataset_key": self.dataset.key, "backbone": self.backbone.label,
                  "result_sha": _file_sha(self.result_file), "seconds": seconds,
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": self.config}
        tmp = self.dir / ".step.json.tmp"
        tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp, self.dir / "step.json")


def _data_identity(ds: DatasetCfg) -> dict:
    return {"key": ds.key, "data": ds.data, "max_per_class": ds.max_per_class, "n_images": ds.n_images,
            "classes": ds.n_classes}


def _backbone_identity(b: BackboneCfg) -> dict:
    from fne import backbones as bb

    w = b.resolved_weights or b.weights
    fp = bb.fingerprint(b.arch, w, b.weights_seed)
    return {"arch": b.arch, "weights": w, "fingerprint": fp, "crop": b.crop, "precision": b.precision,
            "storage_dtype": b.storage_dtype, "weights_seed": b.weights_seed}


def plan(p: Pipeline, out: Path, data_for: dict[str, str]) -> list[Step]:
    """Every step of the pipeline in run order (per dataset, per backbone: advise, fit, train)."""
    steps = []
    for ds in p.datasets:
        if ds.skipped:
            continue
        data = data_for.get(ds.key, ds.data)
        for b in p.backbones:
            root = out / slug(ds.key) / b.label
            w = b.resolved_weights or b.weights
            store = dict(arch=b.arch, weights=w, crop=b.crop, precision=b.precision,
                         storage_dtype=b.storage_dtype, weights_seed=b.weights_seed)
            ident = {"v": STEP_FORMAT, "dataset": _data_identity(ds), "backbone": _backbone_identity(b)}
            if p.advise:
                cfg = {**ident, "kind": "advise", "sample": p.advise_sample,
                       "test_size": ds.test_size if ds.test_size is not None else (p.fit or {}).get("test_size", 0.25),
                       "train_per_class": ds.train_per_class if ds.train_per_class is not None
                       else (p.fit or {}).get("train_per_class")}
                steps.append(Step("advise", ds, b, root / "advice", cfg,
                                  dict(data=data, sample=p.advise_sample, test_size=cfg["test_size"],
                                       train_per_class=cfg["train_per_class"], **store),
                                  f"{ds.key} {b.label} advise"))
            if p.fit:
                feats = b.features if b.features is not None else p.fit["features"]
                proto = {"splits": ds.splits or p.fit["splits"],
                         "test_size": ds.test_size if ds.test_size is not None else p.fit["test_size"],
                         "train_per_class": ds.train_per_class if ds.train_per_class is not None
                         else p.fit["train_per_class"]}
                for feat in feats:
                    for head in p.fit["heads"]:
                        for seed in p.seeds:
                            cfg = {**ident, "kind": "fit", "features": feat, "head": head, "C": p.fit["C"],
                                   "seed": seed, **proto}
                            name = f"fit-{slug(feat)}-{head}-C{slug(p.fit['C'])}-s{seed}"
                            steps.append(Step("fit", ds, b, root / name, cfg,
                                              dict(data=data, features=feat, head=head, C=p.fit["C"], seed=seed,
                                                   **proto, **store),
                                              f"{ds.key} {b.label} fit {feat}+{head} seed {seed}"))
            for mode, settings in p.train.items():
                if mode == "direct" and not ds.class_map:
                    continue
                for seed in p.seeds:
                    s = dict(settings)
                    if ds.test_size is not None:
                        s["test_size"] = ds.test_size
                    identity = {k: v for k, v in s.items() if k not in TRAIN_RUNTIME
                                and not (mode == "direct" and k in TRAINING_ONLY)}
                    cfg = {**ident, "kind": "train", "mode": mode, "seed": seed, "settings": identity,
                           "class_map": ds.class_map if mode == "direct" else None}
                    if mode == "scratch":  # no imported weights: the backbone's weights do not matter
                        cfg["backbone"] = {k: v for k, v in cfg["backbone"].items()
                                           if k not in ("weights", "fingerprint")}
                    steps.append(Step("train", ds, b, root / f"train-{mode}-s{seed}", cfg,
                                      dict(data=data, mode=mode, seed=seed, settings=s),
                                      f"{ds.key} {b.label} train {mode} seed {seed}"))
    return steps


# ------------------------------------------------------------------ running


def resolve_weights(b: BackboneCfg, say) -> None:
    """imagenet-or-random: imagenet when it loads, else random with a loud warning."""
    from fne import backbones as bb

    if b.weights == "imagenet-or-random":
        try:
            bb.get(b.arch).imagenet()
            b.resolved_weights = "imagenet"
            say(f"{b.arch}: ImageNet weights available")
        except WeightsError as e:
            b.resolved_weights = "random"
            say(f"WARNING: ImageNet weights for {b.arch} are not available, so this run uses RANDOM weights "
                f"(seed {b.weights_seed}): its numbers say nothing about transfer learning. Reason: {e}")
            return
    elif b.weights == "imagenet":
        try:
            bb.get(b.arch).imagenet()
        except WeightsError as e:
            raise FneError(f"backbone {b.label}: {e}") from None
        b.resolved_weights = "imagenet"
    else:
        b.resolved_weights = b.weights


def materialise(ds: DatasetCfg, out: Path, seed: int = 0) -> str:
    """max_per_class: write the seeded subset as a DATA file (HDF5 for arrays, CSV for files)."""
    if not ds.max_per_class:
        return ds.data
    import numpy as np

    from fne.data import load_dataset

    d = load_dataset(ds.data)
    rng = np.random.default_rng(seed)
    labels = np.array(d.labels)
    groups = np.array(d.splits) if d.has_split else np.array([""] * len(d))
    keep = []
    for g in sorted(set(groups)):
        for c in d.classes:
            idx = np.flatnonzero((labels == c) & (groups == g))
            if len(idx):
                keep += sorted(rng.choice(idx, min(ds.max_per_class, len(idx)), replace=False).tolist())
    keep.sort()
    folder = out / slug(ds.key) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    ident = config_hash({"data": ds.data, "max_per_class": ds.max_per_class, "seed": seed, "n": len(d)})
    stamp = folder / "subset.json"
    if d.array_source is not None:
        target = folder / f"{d.name}.h5"
    else:
        target = folder / f"{d.name}.csv"
    if target.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("hash") == ident:
        return str(target)
    if d.array_source is not None:
        import h5py

        imgs = np.stack([d.array_source.get(d.sources[i]) for i in keep])
        tmp = folder / f".tmp-{d.name}.h5"
        with h5py.File(tmp, "w") as f:
            f["images"] = imgs
            codes = {c: k for k, c in enumerate(d.classes)}
            f["labels"] = np.array([codes[d.labels[i]] for i in keep], dtype=np.int64)
            f["labels"].attrs["class_names"] = np.array(d.classes, dtype=h5py.string_dtype())
            if d.has_split:
                f["split"] = np.array([d.splits[i] for i in keep], dtype=h5py.string_dtype())
        os.replace(tmp, target)
    else:
        import csv

        tmp = folder / f".tmp-{d.name}.csv"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"] + (["split"] if d.has_split else []))
            for i in keep:
                w.writerow([str(Path(d.sources[i]).resolve()), d.labels[i]] + ([d.splits[i]] if d.has_split else []))
        os.replace(tmp, target)
    stamp.write_text(json.dumps({"hash": ident, "n": len(keep), "of": len(d), "max_per_class": ds.max_per_class}))
    return str(target)


def _write_class_map(ds: DatasetCfg, out: Path) -> str | None:
    if ds.class_map is None or isinstance(ds.class_map, str):
        return ds.class_map
    folder = out / slug(ds.key) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "class_map.json"
    path.write_text(json.dumps(ds.class_map, indent=1))
    return str(path)


def run_step(step: Step, p: Pipeline, cache: str | None, out: Path) -> dict:
    """Run one step into step.dir; returns its result dict."""
    from fne import advise as advise_mod
    from fne import fit as fit_mod
    from fne import train as train_mod

    step.dir.mkdir(parents=True, exist_ok=True)
    (step.dir / "step.json").unlink(missing_ok=True)  # a half-written result never looks done
    k = dict(step.kwargs)
    b = step.backbone
    if step.kind == "advise":
        a = advise_mod.advise(k.pop("data"), k.pop("arch"), k.pop("weights"), cache=cache, device=p.device,
                              batch_size=p.batch_size, workers=p.workers, **k)
        a["dataset_key"] = step.dataset.key
        a["backbone"] = b.label
        step.result_file.write_text(json.dumps(a, indent=1))
        return a
    if step.kind == "fit":
        return fit_mod.fit(k.pop("data"), out=str(step.dir), extract_missing=True, cache=cache, device=p.device,
                           batch_size=p.batch_size, workers=p.workers, **k)
    settings = dict(k["settings"])
    mode = k["mode"]
    w = b.resolved_weights or b.weights
    kwargs = dict(arch=b.arch, weights=None if mode == "scratch" else w, weights_seed=b.weights_seed,
                  seed=k["seed"], **settings)
    if mode == "direct":
        kwargs["class_map"] = _write_class_map(step.dataset, out)
    if "device" not in kwargs and p.device != "auto":
        kwargs["device"] = p.device
    if "workers" not in kwargs and p.workers is not None:
        kwargs["workers"] = p.workers
    return train_mod.train(k["data"], mode, str(step.dir), **kwargs)


def _summary_line(step: Step, r: dict) -> str:
    if step.kind == "advise":
        sim = r.get("similarity", {})
        s = f"{sim['max_softmax_mean']:.2f}" if sim.get("judged") else "not judged"
        return f"{r['recommendation']} ({r['images_per_class']:g} train images/class, similarity {s})"
    return f"accuracy {100 * r['accuracy']:.1f} % (mean class {100 * r['mean_class_accuracy']:.1f} %)"


def run(path: str | Path, out: str | Path | None = None, cache: str | None = None, *, force: bool = False,
        dry_run: bool = False, report: bool | None = None, device: str | None = None,
        workers: int | None = None, log=None) -> dict:
    """Validate, then run every pending step; returns {"steps", "ran", "skipped", "out", "report"}."""
    from fne import extract as extract_mod

    say = log or (lambda s: print(s, flush=True))
    t_start = time.perf_counter()
    p = load_pipeline(path)
    if device is not None:
        p.device = device
    if workers is not None:
        p.workers = workers
    out = Path(out or p.out or Path("runs") / slug(p.name))
    cache = cache if cache is not None else p.cache
    for d in p.datasets:
        if d.skipped:
            say(f"note: optional dataset {d.key} skipped: {d.skipped}")
    if "direct" in p.train:
        for d in p.datasets:
            if not d.skipped and not d.class_map:
                note = f"direct mode not run on {d.key}: it has no class_map"
                p.notes.append(note)
                say(f"note: {note}")
    if dry_run:
        steps = plan(p, out, {})
        say(f"{path}: valid; {len(steps)} steps (weights not resolved in a dry run)")
        for s in steps:
            say(f"  {s.label}  ->  {s.dir}")
        return {"steps": len(steps), "ran": 0, "skipped": 0, "out": str(out), "report": None, "pipeline": p}
    for b in p.backbones:
        resolve_weights(b, say)
        if b.resolved_weights == "random" and b.weights == "imagenet-or-random":
            p.notes.append(f"ImageNet weights for {b.arch} were not available: this run fell back to RANDOM "
                           f"weights, so its numbers say nothing about transfer learning")
    out.mkdir(parents=True, exist_ok=True)
    data_for = {d.key: materialise(d, out) for d in p.datasets if not d.skipped}
    for d in p.datasets:
        if d.max_per_class and not d.skipped:
            say(f"{d.key}: subset of at most {d.max_per_class} images per class -> {data_for[d.key]}")
    steps = plan(p, out, data_for)
    if not steps:
        say("nothing to run: every dataset was skipped")
        return {"steps": 0, "ran": 0, "skipped": 0, "out": str(out), "report": None, "pipeline": p}
    (out / "pipeline.json").write_text(json.dumps(p.summary(), indent=1, default=str))

    ran = skipped = 0
    extracted: set[tuple] = set()
    for i, step in enumerate(steps, 1):
        tag = f"[{i}/{len(steps)}] {step.label}"
        if not force and step.done():
            skipped += 1
            say(f"{tag}: done before, skipped")
            continue
        b = step.backbone
        pair = (step.dataset.key, b.label)
        # fits read every row: extract the dataset once, before the first fit (or before the advice,
        # which then reads its sample from the same rows); without fits the advice extracts its sample
        needs_rows = step.kind == "fit" or (step.kind == "advise" and bool(p.fit)
                                            and (b.resolved_weights or b.weights) != "random")
        if needs_rows and pair not in extracted:
            extracted.add(pair)
            t = time.perf_counter()
            r = extract_mod.extract(data_for[step.dataset.key], b.arch, b.resolved_weights, cache=cache,
                                    batch_size=p.batch_size, device=p.device, precision=b.precision, crop=b.crop,
                                    workers=p.workers, storage_dtype=b.storage_dtype, weights_seed=b.weights_seed)
            say(f"extract {step.dataset.key} with {b.label}: {r.n_computed} computed"
                + (f" at {r.images_per_s:.1f} img/s" if r.n_computed else "")
                + f", {r.n_cached} already cached ({time.perf_counter() - t:.1f} s)")
        say(f"{tag} ...")
        t = time.perf_counter()
        result = run_step(step, p, cache, out)
        secs = time.perf_counter() - t
        step.mark_done(secs)
        ran += 1
        say(f"{tag}: {_summary_line(step, result)} [{secs:.1f} s]")

    (out / "pipeline.json").write_text(json.dumps(p.summary(), indent=1, default=str))
    rep = None
    do_report = p.report if report is None else report
    if do_report:
        from fne import report as report_mod

        dirs = [s.dir for s in steps if s.result_file.is_file()]
        rep = report_mod.report(dirs, out, extra_pipelines=[p.summary()])
        for n in rep["header"]["notes"]:
            say(f"note: {n}")
        if rep["header"]["warning"]:
            say(rep["header"]["warning"])
        say(report_mod.table_text(rep["datasets"]))
        say(f"report: {rep['md']} and {rep['html']}")
    say(f"{ran} step(s) run, {skipped} skipped as done, in {time.perf_counter() - t_start:.1f} s")
    return {"steps": len(steps), "ran": ran, "skipped": skipped, "out": str(out), "report": rep, "pipeline": p}


# ------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="a pipelines/*.toml file")
    parser.add_argument("--out", default=None, help="run folder (default: the file's pipeline.out, else runs/NAME)")
    parser.add_argument("--cache", default=None, help="cache folder (default: the file's pipeline.cache, "
                                                      "$FNE_CACHE or ./cache)")
    parser.add_argument("--force", action="store_true", help="rerun steps that are already done")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the steps, run nothing")
    parser.add_argument("--no-report", dest="report", action="store_const", const=False, default=None,
                        help="do not write the report at the end")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda[:i] (overrides the file)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (overrides the file)")


def run_cli(args) -> int:
    run(args.pipeline, args.out, args.cache, force=args.force, dry_run=args.dry_run, report=args.report,
        device=args.device, workers=args.workers)
    sys.stdout.flush()
    return 0
