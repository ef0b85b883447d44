"""Pipeline files (`fne run PIPELINE.toml`): schema, validation and the TOML line locator.

Pure configuration: this module imports no torch, no scikit-learn and no verb module, so
`fne report --pipeline FILE` and tools can read a pipeline file cheaply. What validation needs
from the heavy modules (backbone names, which layers a feature spec names, what C parses to)
is passed in as `Checks` (fne.pipeline.runner builds the real ones); without it those checks are skipped.

A pipeline file declares datasets, backbones, the feature × head grid of `fne fit`, the
modes of `fne train` and optional published reference numbers; see pipelines/*.toml and
`SCHEMA` below. `load_pipeline` reports every mistake at once, each as `file:line: key: why`.
A dataset's DATA, class map and published values are checked in fne.pipeline.config_data.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Collection
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from fne.errors import FneError, expect_path
from fne.names import HEADS, MODES, WEIGHT_CHOICES, slug
from fne.option_handling import defaults, keyed, not_in_pipelines, problems, schema, used_by, uses
from fne.options import (
    AdviseOptions,
    FitOptions,
    ForwardOptions,
    StoreOptions,
    TrainConfig,
    imported_lr_overflows,
)
from fne.pipeline.config_data import DatasetCfg, check_class_map, check_published, resolve_data
from fne.pipeline.config_data import (
    expand_vars as expand_vars,  # fne.pipeline.config.expand_vars, as before
)
from fne.pipeline.config_errors import Errors, Locator, PipelineError, dotted

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
        "cache": ("str", "default --cache: a cache folder or fsspec URL"),
        "seeds": ("list[int]", "seeds of fit's random splits and of training"),
        "advise": ("bool", "run fne advise per dataset and backbone"),
        "advise_sample": ("int", "images the source classifier sees for the advice"),
        "report": ("bool", "write the report at the end"),
        **schema(StoreOptions, only=["device"]),
        **schema(ForwardOptions),  # batch_size, workers
    },
    "datasets.*": {
        "data": ("str", "any DATA form of fne fit; relative paths resolve against this file's folder; "
                        "${VAR} expands environment variables"),
        "optional": ("bool", "a dataset whose path is absent is skipped with a note instead of failing"),
        "max_per_class": ("int", "use at most N images per class (per split), seeded: a cheap subset"),
        "splits": ("int", "overrides fit.splits for this dataset"),
        "test_size": ("float", "overrides fit.test_size / train.test_size for this dataset"),
        "train_per_class": ("int", "overrides fit.train_per_class / train.train_per_class for this dataset"),
        "class_map": ("str|table", "direct mode: JSON file or inline {target class = [ImageNet names]}"),
        "protocol": ("str", "free text: the evaluation protocol, shown in pipeline.json"),
        "note": ("str", "free text"),
        "published": ("table", "published reference values: method = 93.3 or [mean, std], plus source, note, and arch / "
                                "weights: the backbone they were measured with (shown beside its rows only)"),
    },
    "backbones[]": {
        **schema(StoreOptions),  # arch, weights, crop, image_size, precision, storage_dtype, weights_seed
        "weights": ("str", f"{schema(StoreOptions, only=['weights'])['weights'][1]}; in a file also "
                           "imagenet-or-random: ImageNet's where they load, else random, said in the console and "
                           "the report"),
        "label": ("str", "folder name of this backbone's runs"),
        "features": ("list[str]", "overrides fit.features for this backbone"),
    },
    "fit": {
        "enabled": ("bool", "false: the grid is not run (a [fit] table runs its fits unless enabled = false; no "
                            "[fit] table, no fits)"),
        "features": ("list[str]", "fne, last, fne:L1,L2 or L1,L2 (VGG's fc6, fc7; `fne backbones ARCH` lists a backbone's layers)"),
        "heads": ("list[str]", "svm, logreg, sgd-svm, sgd-logreg"),
        **schema(FitOptions, exclude=["features", "head"]),  # C, splits, test_size, train_per_class
    },
}
# [train] and [train.MODE]: the options of `fne train` (fne.training.train.TrainConfig's fields less
# TRAIN_EXCLUDED; tests/test_pipeline.py checks that the two agree)
TRAIN_SCHEMA: dict[str, tuple[str, str]] = {
    "modes": ("list[str]", f"which of {', '.join(MODES)} to run"),
    **schema(TrainConfig),
}
TRAIN_EXCLUDED = not_in_pipelines(TrainConfig)
_TABLES = {"pipeline": "[pipeline]", "datasets.*": "[datasets.NAME]", "backbones[]": "[[backbones]]", "fit": "[fit]"}


def keys_help(width: int = 100) -> str:
    """Every key a pipeline file may set, by table, with its type and what it does (`SCHEMA`,
    `TRAIN_SCHEMA`): the epilog of `fne run --help`. A key left out takes a default, said as the
    file writes it where it is short (its option's declared one: [fit]'s are fne fit's, [train]'s
    fne train's); a backbone key whose default in a file differs from the option's on the
    command line says so (`storage_dtype`: a file pins float16)."""
    import textwrap

    from fne.option_handling import toml_value

    cli, in_file = defaults(StoreOptions), defaults(BackboneCfg)
    left_out = {"[pipeline]": {f.name: f.default_factory() if f.default is MISSING and f.default_factory is not MISSING
                               else f.default for f in fields(Pipeline)},
                "[fit]": fit_defaults(), "[train], [train.MODE]": defaults(TrainConfig)}
    verbs = {"[fit]": "fne fit", "[train], [train.MODE]": "fne train"}
    tables = [(_TABLES[t], SCHEMA[t]) for t in _TABLES] + [("[train], [train.MODE]", TRAIN_SCHEMA)]
    lines = ["keys of a pipeline file (TOML; pipelines/*.toml are examples):"]
    for title, keys in tables:
        lines.append(f"  {title}")
        if title in verbs:
            lines.append(f"    (a key left out takes `{verbs[title]}`'s default: `{verbs[title]} --help`)")
        for key, (kind, text) in keys.items():
            if title == "[[backbones]]" and key in cli and in_file.get(key, MISSING) not in (MISSING, cli[key]):
                text += f" (in a pipeline file, default: {in_file[key]})"
            said = toml_value(left_out.get(title, {}).get(key))
            if said not in ("(unset)", '""') and len(said) <= 16 and "default" not in text:
                text += f" (default: {said})"
            lines += textwrap.wrap(f"{key} ({kind}): {text}", width, initial_indent="    ",  # a flag whole
                                   subsequent_indent="        ", break_on_hyphens=False)
    return "\n".join(lines)


@dataclass(frozen=True)
class Checks:
    """Validation that needs the heavy modules, passed in by the caller (see fne.pipeline.plan.checks).

    archs: the backbone names; features(spec, arch) and C(value) raise FneError saying why
    a feature spec does not apply to a backbone or a C does not parse; weights(name, arch): whether
    `name` is a weights name of `arch` (IMAGENET1K_V2; without it, any name with no '/' is taken);
    image_size(arch, size, weights) raises FneError where `arch` cannot run at `size` x `size`, and
    says whether `size` is the backbone's own (then the backbone gives none).
    """

    archs: Collection[str]
    features: Callable[[str, str], object]
    C: Callable[[str], object]
    weights: Callable[[str, str], object] | None = None
    image_size: Callable[[str, int, str], object] | None = None


# ------------------------------------------------------------------ the model


@dataclass
class BackboneCfg:
    """One `[[backbones]]` entry of a pipeline file: the store it reads (arch, weights, crop,
    image size, precision, storage dtype) and the features its fit steps use. `image_size`: the
    side its steps' images are cropped to (extraction, fit and advice read that store; a train
    step trains at it unless its [train] settings give their own); None, the backbone's own."""

    arch: str
    weights: str
    crop: str = field(default_factory=lambda: defaults(StoreOptions)["crop"])
    precision: str = field(default_factory=lambda: defaults(StoreOptions)["precision"])
    storage_dtype: str = "float16"  # not the option's auto: a file's store is pinned (README)
    weights_seed: int = field(default_factory=lambda: defaults(StoreOptions)["weights_seed"])
    image_size: int | None = None
    label: str = ""
    features: list[str] | None = None
    resolved_weights: str | None = None  # after imagenet-or-random
    weights_at: str = ""  # where the file gives its weights ("FILE, line 9 (backbones[0].weights)"), for a refusal

    def seed_for(self, weights: str | None) -> int:
        """weights_seed where `weights` are random (it draws them), else 0: imagenet-or-random
        that resolved to imagenet takes no seed (a verb refuses one it would ignore)."""
        return self.weights_seed if weights == "random" else 0


@dataclass
class Pipeline:
    """A pipeline file, validated: its datasets, backbones, fit and train settings and the run's settings."""

    file: Path
    name: str
    description: str = ""
    out: str | None = None
    cache: str | None = None
    # a key left out: the verbs' declared defaults (fne fit's seed; fne train's is the same)
    seeds: list[int] = field(default_factory=lambda: [defaults(FitOptions)["seed"]])
    advise: bool = True
    advise_sample: int = field(default_factory=lambda: defaults(AdviseOptions)["sample"])
    report: bool = True
    device: str = field(default_factory=lambda: defaults(StoreOptions)["device"])
    workers: int | None = field(default_factory=lambda: defaults(ForwardOptions)["workers"])
    batch_size: int | str = field(default_factory=lambda: defaults(ForwardOptions)["batch_size"])
    progress: bool = True  # not a file's key: `fne run --no-progress` (progress=False) turns every step's bars off
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
            "backbones": [{k: v for k, v in asdict(b).items() if k != "weights_at"} for b in self.backbones],
            "fit": self.fit, "train": self.train, "seeds": self.seeds, "notes": list(self.notes),
        }


# ------------------------------------------------------------------ validation


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# schema type -> (test, how a message names it)
_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "an integer"),
    "float": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "table": (lambda v: isinstance(v, dict), "a table"),
    "array": (lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), "an array of tables ([[...]])"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "list[int]": (lambda v: isinstance(v, list) and all(_is_int(x) for x in v), "a list of integers"),
    "str|float": (lambda v: isinstance(v, str) or _is_number(v), "a number or a string"),
    "int|str": (lambda v: _is_int(v) or isinstance(v, str), "an integer or a string"),
    "str|table": (lambda v: isinstance(v, (str, dict)), "a string or an inline table"),
}


def _check_table(tbl: dict, schema: dict, path: tuple, err: Errors) -> dict:
    """Unknown keys and types; returns the entries that passed."""
    ok = {}
    for k, v in tbl.items():
        if k not in schema:
            close = difflib.get_close_matches(k, list(schema), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            err.add(path + (k,), f"unknown key{hint} (allowed: {', '.join(schema)})")
            continue
        test, words = _TYPES[schema[k][0]]
        if not test(v):
            err.add(path + (k,), f"expected {words}, got {v!r}")
            continue
        twice = sorted({x for x in v if v.count(x) > 1}, key=v.index) if schema[k][0].startswith("list") else []
        if twice:  # each entry names steps: a repeat would run them twice into one folder
            err.add(path + (k,), f"lists {', '.join(map(repr, twice))} more than once; name each entry once")
            continue
        ok[k] = v
    return ok


def load_pipeline(path: str | Path, *, check_data: bool = True, checks: Checks | None = None,
                  cache: str | None = None) -> Pipeline:
    """Parse and validate a pipeline file; raises PipelineError listing every problem.

    check_data=False resolves dataset paths without opening them (nor requiring them).
    cache: --cache, over the file's `cache` (containers' listings and `hf:` DATA are kept there).
    checks: the backbone, feature and C checks of the heavy modules (fne.pipeline.plan.checks());
    None skips them (enough to read settings and published values).
    """
    expect_path(path, "path")
    if not str(path).strip():  # an unset shell variable: Path('') is the current folder
        raise PipelineError(f"pipeline file {str(path)!r}: is empty; give a pipelines/*.toml file")
    file = Path(path)
    if not file.is_file():
        raise PipelineError(f"pipeline file {path}: {'is a folder' if file.is_dir() else 'no such file'}")
    try:
        text = file.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows Notepad) is no TOML statement
    except UnicodeDecodeError as e:  # an image, an HDF5 file, ... given for the pipeline file
        raise PipelineError(f"pipeline file {path}: not a TOML file (not UTF-8 text: {e.reason} at byte "
                            f"{e.start}); give a pipelines/*.toml file") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        at = re.search(r" \(at line (\d+), column \d+\)$", str(e))  # tomllib's own position, as file:line
        where = f"{file}:{at.group(1)}" if at else str(file)
        raise PipelineError(f"{where}: not valid TOML: {str(e)[:at.start()] if at else e}") from None
    if not raw:
        raise PipelineError(f"{file}: empty pipeline file: it needs [datasets.KEY] tables, [[backbones]] "
                            f"and a [fit] grid or [train] modes (see pipelines/quickstart.toml)")
    err = Errors(file, Locator(text))
    base = file.resolve().parent
    top = _check_table(raw, SCHEMA[""], (), err)
    p = Pipeline(file=file, name=file.stem)
    _load_head(p, top.get("pipeline", {}), err)
    p.cache = cache if cache is not None else p.cache
    _load_backbones(p, top.get("backbones"), "backbones" in raw, base, err, checks)
    _load_fit(p, top, err, checks)
    if "train" in top:
        _load_train(p, top["train"], err)
    dss = top.get("datasets", {})
    if not dss and ("datasets" in top or "datasets" not in raw):  # of a wrong type: named by _check_table
        err.add(("datasets",) if "datasets" in raw else (), "at least one [datasets.KEY] table is required")
    for key, d in dss.items():
        ds = _load_dataset(key, d, base, err)
        if ds is not None:
            resolve_data(ds, base, ("datasets", key), err, check_data, p.cache)
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


def _load_head(p: Pipeline, table: dict, err: Errors) -> None:
    head = _check_table(table, SCHEMA["pipeline"], ("pipeline",), err)
    for k in ("name", "description", "out", "cache", "advise", "report", "device", "workers", "batch_size"):
        if k in head:
            setattr(p, k, head[k])
    for k in ("out", "cache"):  # "" was the current folder (cache) or the default folder (out), unsaid
        if isinstance(head.get(k), str) and not head[k].strip():
            err.add(("pipeline", k), "is empty; give a folder, or leave the key out for its default")
    if "seeds" in head:
        if not head["seeds"]:
            err.add(("pipeline", "seeds"), "needs at least one seed")
        p.seeds = head["seeds"] or p.seeds
        for seed in head["seeds"]:  # fne fit's and fne train's --seed: its declared bound
            for _, why in problems(FitOptions, {"seed": seed}):
                err.add(("pipeline", "seeds"), f"seed {why}")
    if "advise_sample" in head:
        if head["advise_sample"] < 1:
            err.add(("pipeline", "advise_sample"), f"must be >= 1, got {head['advise_sample']}")
        p.advise_sample = head["advise_sample"]
    _add_problems(ForwardOptions, head, ("pipeline",), err)


def _load_backbones(p: Pipeline, bbs, present: bool, base: Path, err: Errors, checks: Checks | None) -> None:
    if not bbs:
        if not (present and bbs is None):  # present but of a wrong type: named already by _check_table
            err.add(("backbones",) if present else (), "at least one [[backbones]] table is required")
        bbs = []
    labels: dict[str, int] = {}
    for i, b in enumerate(bbs):
        path_ = ("backbones", i)
        given, b = b, _check_table(b, SCHEMA["backbones[]"], path_, err)
        if "arch" not in b:  # absent, or of a wrong type (named by _check_table)
            if "arch" not in given:
                err.add(path_, "missing key 'arch'")
            continue
        if checks is not None and b["arch"] not in checks.archs:
            err.add(path_ + ("arch",), f"unknown arch {b['arch']!r}; available: {', '.join(sorted(checks.archs))}")
            continue
        cfg = BackboneCfg(arch=b["arch"], weights=b.get("weights", defaults(StoreOptions)["weights"]))
        line = err.loc.line(path_ + ("weights",))  # absent (imagenet by default): its [[backbones]] header's
        cfg.weights_at = (f"{err.file}{f', line {line}' if line else ''} "
                          f"({dotted(path_ + ('weights',) if 'weights' in b else path_)})")
        for k in ("crop", "image_size", "precision", "storage_dtype", "weights_seed", "features"):
            if k in b:
                setattr(cfg, k, b[k])
        refused = _add_problems(StoreOptions, b, path_, err)
        if isinstance(cfg.weights_seed, int) and cfg.weights_seed != 0 and cfg.weights not in ("random",
                                                                                              "imagenet-or-random"):
            err.add(path_ + ("weights_seed",), f"applies to weights 'random' (or 'imagenet-or-random') only, "
                                               f"not {cfg.weights!r}")
        if cfg.weights not in WEIGHT_CHOICES:
            wpath = Path(os.path.expanduser(cfg.weights))
            wpath = Path(os.path.normpath(wpath if wpath.is_absolute() else base / wpath))
            if wpath.is_file() or not (checks.weights(cfg.weights, cfg.arch) if checks and checks.weights
                                       else "/" not in cfg.weights):
                if not wpath.is_file():
                    err.add(path_ + ("weights",), f"{cfg.weights!r} is neither one of {', '.join(WEIGHT_CHOICES)}, "
                                                  f"a weights name of {cfg.arch}, nor an existing state dict file "
                                                  f"({wpath})")
                    refused.append("weights")  # named once: the image size's check would name it again
                cfg.weights = str(wpath)
        if cfg.image_size is not None and not {"image_size", "weights"} & set(refused) and checks \
                and checks.image_size:
            if _check_call(checks.image_size, (cfg.arch, cfg.image_size, cfg.weights), path_ + ("image_size",), err):
                cfg.image_size = None  # the backbone's own size: its usual store, steps and folder, as on the CLI
        stem = cfg.weights if cfg.weights in WEIGHT_CHOICES else Path(cfg.weights).stem
        size = f"-{cfg.image_size}" if cfg.image_size is not None else ""  # a store of its own: a folder too
        label = b.get("label")
        if label and (label != Path(label).name or "\\" in label or not label.strip(" .")):
            # its runs' folder under the dataset's: ../x or a/b put them elsewhere
            err.add(path_ + ("label",), f"{label!r} is not one folder name (no '/' or '\\', not '.' or '..')")
        cfg.label = label or slug(f"{cfg.arch}-{stem}{size}")
        if cfg.label in labels:
            err.add(path_, f"same folder label {cfg.label!r} as backbones[{labels[cfg.label]}]; give a distinct 'label'")
        labels[cfg.label] = i
        p.backbones.append(cfg)


def _same_C(C: object) -> str:
    """C as one text per value, which names its fit steps' folders and settings: 1, 1.0, "1" and
    "1e0" were four folders and four fits of one head; a C that is no number stays as given."""
    text = str(C)
    if text.lower() == "auto":
        return "auto"
    try:
        return repr(float(text)) if not isinstance(C, bool) else text
    except ValueError:
        return text


def _load_fit(p: Pipeline, top: dict, err: Errors, checks: Checks | None) -> None:
    if "fit" in top:
        f = _check_table(top["fit"], SCHEMA["fit"], ("fit",), err)
        if f.get("enabled", True):
            p.fit = {**fit_defaults(), **{k: v for k, v in f.items() if k != "enabled"}}
            p.fit["C"], p.fit["test_size"] = _same_C(p.fit["C"]), float(p.fit["test_size"])
            for h in p.fit["heads"]:
                if h not in HEADS:
                    err.add(("fit", "heads"), f"unknown head {h!r}; choose from {', '.join(HEADS)}")
            if not p.fit["features"]:
                err.add(("fit", "features"), "needs at least one feature spec")
            if not p.fit["heads"]:
                err.add(("fit", "heads"), "needs at least one head")
            if checks is not None:
                _check_call(checks.C, (p.fit["C"],), ("fit", "C"), err)
            _add_problems(FitOptions, p.fit, ("fit",), err)
    if p.fit is None or checks is None:
        return
    for i, cfg in enumerate(p.backbones):
        feats = cfg.features if cfg.features is not None else p.fit["features"]
        where = ("backbones", i, "features") if cfg.features is not None else ("fit", "features")
        for spec in feats:
            _check_call(checks.features, (spec, cfg.arch), where, err, f"{spec!r} does not apply to {cfg.arch}: ")


def fit_defaults() -> dict:
    """The [fit] grid of a table that sets no key: `fne fit`'s declared defaults (FitOptions), read
    at each call; a key the table gives replaces its entry."""
    fit = defaults(FitOptions)
    return {"features": [fit["features"]], "heads": [fit["head"]], "C": fit["C"], "splits": fit["splits"],
            "test_size": fit["test_size"], "train_per_class": fit["train_per_class"], "solver": fit["solver"]}


def _check_call(fn: Callable, args: tuple, path: tuple, err: Errors, prefix: str = ""):
    """`fn(*args)`'s value; None, and the problem added at `path`, where it raises FneError/ValueError."""
    try:
        return fn(*args)
    except (FneError, ValueError) as e:
        err.add(path, f"{prefix}{e}")
        return None


def _load_train(p: Pipeline, t: dict, err: Errors) -> None:
    modes = t.get("modes", [])
    if "modes" not in t:
        err.add(("train",), f"missing key 'modes' (a list of {', '.join(MODES)})")
    if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
        modes = []  # named by _check_table (TRAIN_SCHEMA)
    for m in modes:
        if m not in MODES:
            err.add(("train", "modes"), f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    misplaced = _misplaced_in_train(t, err)
    common = _check_table({k: v for k, v in t.items() if k not in MODES and k not in misplaced}, TRAIN_SCHEMA,
                          ("train",), err)
    common.pop("modes", None)
    for k in _add_problems(TrainConfig, common, ("train",), err):  # refused: later checks do not use it
        common.pop(k, None)
    for m in MODES:
        if m in t and not isinstance(t[m], dict):
            err.add(("train", m), f"expected a table [train.{m}], got {t[m]!r}")
        elif m in t and m not in modes:
            err.add(("train", m), f"settings for mode {m!r}, which train.modes does not list")
    own_schema = {k: v for k, v in TRAIN_SCHEMA.items() if k != "modes"}
    for m in modes:
        if m not in MODES:
            continue
        own = _check_table(t[m] if isinstance(t.get(m), dict) else {}, own_schema, ("train", m), err)
        for k in _add_problems(TrainConfig, own, ("train", m), err):
            own.pop(k, None)
        for k in [k for k in own if not uses(TrainConfig, m, k)]:  # [train]'s are shared: only the others apply
            err.add(("train", m, k), f"{k} applies to mode {used_by(TrainConfig, k)} only, not {m}")
        p.train[m] = {**common, **own}  # fne.pipeline.steps.train_arguments passes on those the mode uses
        if p.train[m].get("augment") is False and p.train[m].get("augment_on", "auto") != "auto":
            at = ("train", m, "augment_on") if "augment_on" in own else ("train", "augment_on")
            if not any(f" {dotted(at)}: " in line for _, line in err.items):  # a shared [train] key: once
                err.add(at, f"{p.train[m]['augment_on']!r} places the augmentation, and augment = false "
                            f"trains without it: give one of the two")
        rates = {**defaults(TrainConfig), **p.train[m]}
        past = imported_lr_overflows(rates["lr"], rates["imported_lr_mult"]) if m == "finetune" else None
        if past:  # as `fne train` refuses it (fne.training.train._check), in the file's words
            at = ("train", m, "imported_lr_mult") if "imported_lr_mult" in own else ("train", "imported_lr_mult")
            err.add(at, f"{keyed('lr', rates['lr'])} times {keyed('imported_lr_mult', rates['imported_lr_mult'])} "
                        f"is the imported layers' learning rate, {past}: lower one of the two")
        p.train_raw[m] = own
    p.train_raw[""] = common


def _misplaced_in_train(t: dict, err: Errors) -> set[str]:
    """Keys of [train] that belong elsewhere, each named with where it goes: a table of no mode
    ([train.frozn]: did you mean [train.frozen]?) and class_map, a dataset's."""
    out = set()
    for k, v in t.items():
        if k == "class_map":
            err.add(("train", k), "class_map is a dataset's: set it in its [datasets.KEY] table "
                                  "(direct mode maps that dataset's classes)")
            out.add(k)
        elif isinstance(v, dict) and k not in MODES and k not in TRAIN_SCHEMA:
            close = difflib.get_close_matches(k, MODES, n=1)
            hint = f"; did you mean [train.{close[0]}]?" if close else ""
            err.add(("train", k), f"a table of no mode{hint} (modes: {', '.join(MODES)})")
            out.add(k)
    return out


def _load_dataset(key: str, d, base: Path, err: Errors) -> DatasetCfg | None:
    path_ = ("datasets", key)
    if not isinstance(d, dict):
        err.add(path_, f"expected a table [datasets.{key}], got {d!r}")
        return None
    given, d = d, _check_table(d, SCHEMA["datasets.*"], path_, err)
    if "data" not in d:  # absent, or of a wrong type (named by _check_table)
        if "data" not in given:
            err.add(path_, "missing key 'data' (any DATA of `fne extract --help`: a folder, CSV, HDF5, .npz, idx, tar, "
                               "Parquet, hf:NAME or 'digits')")
        return None
    ds = DatasetCfg(key=key, data=d["data"], spec=d["data"], optional=d.get("optional", False))
    for k in ("max_per_class", "splits", "test_size", "train_per_class", "protocol", "note"):
        if k in d:
            setattr(ds, k, d[k])
    if ds.max_per_class is not None and ds.max_per_class < 1:
        err.add(path_ + ("max_per_class",), f"must be >= 1, got {ds.max_per_class}")
        ds.max_per_class = None  # refused: the checks of the split sizes do not reckon with it
    # fit's (and train's) own settings for this dataset: their declared bounds (splits at most 100)
    overrides = {k: getattr(ds, k) for k in ("splits", "test_size", "train_per_class") if getattr(ds, k) is not None}
    for k in _add_problems(FitOptions, overrides, path_, err):
        setattr(ds, k, None)
    if "published" in d:
        ds.published = check_published(d["published"], path_ + ("published",), err)
    if "class_map" in d:
        ds.class_map = check_class_map(d["class_map"], base, path_ + ("class_map",), err)
    return ds


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
    train = defaults(TrainConfig)  # a key left out: fne train's default
    for mode, settings in p.train.items():
        if mode == "direct":
            continue
        ts = ds.test_size if ds.test_size is not None else settings.get("test_size", train["test_size"])
        tpc = ds.train_per_class if ds.train_per_class is not None else settings.get("train_per_class")
        n_train = (min(ds.n_train_split, n) if ds.n_train_split is not None
                   else tpc * k if tpc is not None else n - math.ceil(ts * n))
        vf = settings.get("val_fraction", train["val_fraction"])
        if vf and not ds.val_part and math.ceil(vf * n_train) < k:
            where = ("train", mode, "val_fraction") if "val_fraction" in (p.train_raw.get(mode) or {}) else (
                ("train", "val_fraction") if "val_fraction" in p.train_raw.get("", {}) else ("train", "modes"))
            err.add(where, f"mode {mode} on {ds.key}: a validation part of {vf} holds {math.ceil(vf * n_train)} of "
                           f"~{n_train} training images, fewer than its {k} classes (a stratified split needs one "
                           f"per class): raise val_fraction or set it to 0 (then the last epoch is kept)")


def _add_problems(cls, values: dict, path: tuple, err: Errors) -> list[str]:
    """The values `cls`' declaration (fne.options) refuses, each at its key; -> those keys."""
    found = problems(cls, values)
    for k, why in found:
        err.add(path + (k,), why)
    return [k for k, _ in found]
