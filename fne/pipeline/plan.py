"""`fne run`'s plan: a pipeline file loaded with every check, and the steps it declares.

`load_pipeline` validates the file with the checks that need the backbones, feature specs and C
grids (`checks`); `plan` turns it into its steps in run order, each with the identity that decides
whether an earlier result is still this step's (fne.pipeline.steps). fne.pipeline.runner runs them.
"""

from __future__ import annotations

from pathlib import Path

import fne
from fne.errors import FneError, WeightsError
from fne.names import slug
from fne.option_handling import defaults, uses
from fne.options import AdviseOptions, TrainConfig
from fne.pipeline import config
from fne.pipeline.config import BackboneCfg, DatasetCfg, Pipeline, PipelineError
from fne.pipeline.steps import STEP_FORMAT, Step, content_fingerprint, split_labels_fingerprint

TRAIN_RUNTIME = ("device", "workers", "progress", "save_every")  # not part of a step's identity


def checks() -> config.Checks:
    """The validation of fne.pipeline.config that needs the backbones, fit and heads modules."""
    from fne.backbones import registry as bb
    from fne.linear.features import parse_features
    from fne.linear.heads import parse_C

    return config.Checks(archs=_Archs(), features=lambda spec, arch: parse_features(spec, bb.get(arch)),
                         C=parse_C, weights=_weights_name, image_size=_runs_at)


def _weights_name(name: str, arch: str) -> bool:
    """Whether `name` is one of `arch`'s weights names (torchvision's IMAGENET1K_V2)."""
    from fne.backbones import registry as bb

    try:
        bb.check_weights(arch, name)
    except FneError:
        return False
    return True


def _runs_at(arch: str, size: int, weights: str) -> bool:
    """Whether `size` is `arch`'s own input size with `weights` (a ViT's SWAG weights run at 384);
    FneError where `arch` cannot run at `size` x `size` (`fne.backbones.fits.refuse_size`: a
    forward on the meta device, as `fne extract --image-size` checks it)."""
    from fne.backbones import registry as bb
    from fne.backbones.fits import refuse_size

    weights = "imagenet" if weights == "imagenet-or-random" else weights
    try:
        refuse_size(arch, weights, size)
        return size == bb.get(arch, weights).input_size
    except FneError as e:  # "image_size=16: vgg16 cannot run at ...", said at the file's key as its value
        raise FneError(f"{size}: {str(e).split(': ', 1)[-1]}") from None


class _Archs:
    """Every name fne.backbones.get resolves: the registry, torchvision model names, timm:NAME."""

    def __contains__(self, name) -> bool:
        from fne.backbones import registry as bb

        try:
            bb.get(name)
        except FneError:
            return False
        return True

    def __iter__(self):
        from fne.backbones import registry as bb

        return iter([*bb.REGISTRY, "any torchvision model name", "timm:NAME"])

    def __len__(self) -> int:
        return len(list(iter(self)))


def load_pipeline(path: str | Path, *, check_data: bool = True, cache: str | None = None) -> Pipeline:
    """fne.pipeline.config.load_pipeline with every check, backbones and feature specs included."""
    return config.load_pipeline(path, check_data=check_data, checks=checks(), cache=cache)


# ------------------------------------------------------------------ steps


def _data_identity(ds: DatasetCfg) -> dict:
    return {"key": ds.key, "data": ds.data, "max_per_class": ds.max_per_class, "n_images": ds.n_images,
            "classes": ds.n_classes}


def _backbone_identity(b: BackboneCfg) -> dict:
    from fne.backbones import registry as bb

    w = b.resolved_weights or b.weights
    try:
        fp = None if w == "imagenet-or-random" else bb.fingerprint(b.arch, w, b.weights_seed)
    except WeightsError:
        if b.resolved_weights:
            raise
        fp = None  # a dry run: weights are not resolved, nor required to be available
    return {"arch": b.arch, "weights": w, "fingerprint": fp, "crop": b.crop, "precision": b.precision,
            "storage_dtype": b.storage_dtype, "weights_seed": b.weights_seed, **_image_size(b)}


def _image_size(b: BackboneCfg) -> dict:
    """{"image_size": N} where the backbone gives one, else {}: the steps of a file that gives none
    keep the identity (and store settings) they had before pipelines took it."""
    return {"image_size": b.image_size} if b.image_size is not None else {}


def fit_solver(solver: str, head: str, feat: str, b: BackboneCfg, ds: DatasetCfg, proto: dict) -> str:
    """' (solver X)' for a fit step's label: the solver `fne fit --solver` takes at this dataset's size
    (fne.linear.solver.resolve_solver on training rows x features x classes); '' when unknown."""
    from fne.backbones import registry
    from fne.linear.features import parse_features
    from fne.linear.solver import resolve_solver

    if head not in ("svm", "logreg") or not ds.n_images or not ds.n_classes:
        return f" (solver {solver})" if solver != "auto" and head in ("svm", "logreg") else ""
    try:
        bb = registry.get(b.arch, b.resolved_weights or b.weights)
        dims = sum(t.channels for t in bb.taps if t.name in parse_features(feat, bb)[0])
    except (FneError, WeightsError, KeyError):
        return ""
    n = ds.n_train_split or ds.n_images - int(ds.n_images * proto["test_size"])
    if proto.get("train_per_class"):
        n = min(n, proto["train_per_class"] * ds.n_classes)
    return f" (solver {resolve_solver(solver, head, n, dims, ds.n_classes)})"


def plan(p: Pipeline, out: Path, data_for: dict[str, str], cache: str | None = None,
         read: bool = True) -> list[Step]:
    """Every step of the pipeline in run order (per dataset, per backbone: advise, fit, train).

    A step's identity holds its settings, the images' content fingerprint and the fne version:
    changed images or a new release rerun the steps they affect, and nothing else.
    """
    steps = []
    for ds in p.datasets:
        if ds.skipped:
            continue
        data = data_for.get(ds.key, ds.data)
        content = None if data is None else content_fingerprint(data, cache, read)  # None: a subset not written
        labels = None if data is None else split_labels_fingerprint(data, cache, read)
        for b in p.backbones:
            root = out / slug(ds.key) / b.label
            w = b.resolved_weights or b.weights
            store = dict(arch=b.arch, weights=w, crop=b.crop, precision=b.precision,
                         storage_dtype=b.storage_dtype, weights_seed=b.seed_for(w), **_image_size(b))
            ident = {"v": STEP_FORMAT, "fne": fne.__version__, "dataset": {**_data_identity(ds), "content": content,
                                                                       "labels": labels},
                     "backbone": _backbone_identity(b)}
            if p.advise:
                split = p.fit or defaults(AdviseOptions)  # the fits' split, else fne advise's own default
                cfg = {**ident, "kind": "advise", "sample": p.advise_sample,
                       "test_size": ds.test_size if ds.test_size is not None else split["test_size"],
                       "train_per_class": ds.train_per_class if ds.train_per_class is not None
                       else split["train_per_class"]}
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
                solver = p.fit["solver"]
                for feat in feats:
                    for head in p.fit["heads"]:
                        how = fit_solver(solver, head, feat, b, ds, proto)
                        for seed in p.seeds:
                            cfg = {**ident, "kind": "fit", "features": feat, "head": head, "C": p.fit["C"],
                                   "seed": seed, **proto, **({"solver": solver} if solver != "auto" else {})}
                            name = f"fit-{slug(feat)}-{head}-C{slug(p.fit['C'])}-s{seed}"
                            steps.append(Step("fit", ds, b, root / name, cfg,
                                              dict(data=data, features=feat, head=head, C=p.fit["C"], seed=seed,
                                                   # an SGD head has no solver to choose (fne fit warns of one given)
                                                   solver=solver if head in ("svm", "logreg") else "auto",
                                                   **proto, **store),
                                              f"{ds.key} {b.label} fit {feat}+{head} seed {seed}{how}"))
            for mode, settings in p.train.items():
                if mode == "direct" and not ds.class_map:
                    continue
                for seed in p.seeds:
                    s = dict(settings)
                    for k in ("test_size", "train_per_class"):  # the dataset's own split settings
                        if getattr(ds, k) is not None:
                            s[k] = getattr(ds, k)
                    s = {**_image_size(b), **s}  # the backbone's size, unless [train] gives the step its own
                    # direct mode (no training) ignores the training settings: changing them does not rerun it
                    identity = {k: v for k, v in s.items() if k not in TRAIN_RUNTIME
                                and (mode != "direct" or uses(TrainConfig, mode, k))}
                    cfg = {**ident, "kind": "train", "mode": mode, "seed": seed, "settings": identity,
                           "class_map": ds.class_map if mode == "direct" else None}
                    # scratch imports no weights: the backbone's do not matter; the size trained at is a setting
                    cfg["backbone"] = {k: v for k, v in cfg["backbone"].items() if k != "image_size" and (
                        mode != "scratch" or k not in ("weights", "fingerprint"))}
                    steps.append(Step("train", ds, b, root / f"train-{mode}-s{seed}", cfg,
                                      dict(data=data, mode=mode, seed=seed, settings=s),
                                      f"{ds.key} {b.label} train {mode} seed {seed}"))
    _check_distinct(steps, p.file)
    return steps


def _check_distinct(steps: list[Step], file: Path) -> None:
    """Two steps in one folder would overwrite each other's results: names that differ only in
    characters a folder name cannot hold ("fne:a,b" and "fne:a, b")."""
    first: dict[Path, Step] = {}
    for s in steps:
        if s.dir in first:
            raise PipelineError(f"{file}: '{first[s.dir].label}' and '{s.label}' would write to the same "
                                f"folder {s.dir}; name them so that they differ in letters or digits")
        first[s.dir] = s
