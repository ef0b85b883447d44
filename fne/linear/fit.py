"""`fne fit`: linear heads on cached activations, evaluated on held-out images.

fit never runs the network on its own: rows missing from the cache are an error that gives
the `fne extract` command, unless the caller asks for extraction (`extract_missing`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import joblib
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from fne import option_handling as opts
from fne import verb_module
from fne.cache.cost import rows_cost
from fne.cache.fs import check_run_folder, check_target, is_url, json_text, replace_files
from fne.cache.spec import StoreSpec
from fne.data.dataset import Dataset, key_digests
from fne.data.sidecar import one_run_at_a_time
from fne.data.splits import (
    check_test_classes,
    duplicate_notes,
    make_splits,
    not_applied,
    readable_parts,
)
from fne.errors import FneError
from fne.linear import compare, rowspace, selection
from fne.linear.features import Rows, Source, open_rows, parse_features
from fne.linear.heads import make_head, parse_C
from fne.linear.predict import MODEL_FORMAT  # one definition: fit writes what predict reads
from fne.linear.solver import resolve_solver
from fne.metrics import (
    METRICS_FORMAT,
    TEST_ORDER,
    accuracy_interval,
    class_recall,
    data_identity,
    mean_class_interval,
    provenance,
    split_record,
    split_scores,
    store_extractions,
)
from fne.option_handling import named, refusal
from fne.options import DataOptions, FitOptions, ForwardOptions
from fne.progress import first_few, progress, said

SGD_EPOCHS = 10


def _fit_in_memory(rows: Rows, kind: str, head: str, C: float, y: np.ndarray, idx: np.ndarray,
                   seed: int, solver: str = "auto", device: str = "auto") -> Pipeline:
    """Views become training samples; only the embedding of rows idx is held (int8 for FNE).

    The head is fitted by scikit-learn or fne.linear.solver (`solver`, "auto": by size) and saved
    as scikit-learn's estimator either way; the pipeline's `solver_` says which fitted it, and
    `solver_precision_` the torch solver's arithmetic (int8 on CPUs with VNNI / AMX; None: sklearn)."""
    embed = rows.fit_embedding(kind, idx)
    Z, yy = rows.embedded(embed, idx), np.repeat(y[idx], rows.store.views)
    used = resolve_solver(solver, head, Z.shape[0], Z.shape[1], len(np.unique(yy)))
    clf = make_head(head, C, seed, solver=used, device=device)
    if used == "sklearn" and rowspace.worth_it(clf, *Z.shape):  # fewer rows than features: fit in their span
        clf = rowspace.fit(clf, Z, yy)
    else:
        clf = clf.fit(Z, yy)
    del Z
    pipe = Pipeline([("embed", embed), ("head", clf.sklearn_model() if used == "torch" else clf)])
    pipe.solver_, pipe.solver_precision_ = used, getattr(clf, "precision_", None)
    pipe.torch_stopped_ = bool(getattr(clf, "stopped_", False)) if used == "torch" else False
    pipe.torch_threads_ = getattr(clf, "threads_", None) if used == "torch" else None  # torch's CPU threads
    return pipe


def _fit_sgd(rows: Rows, kind: str, head: str, C: float, y: np.ndarray, idx: np.ndarray,
             seed: int, solver: str = "auto", device: str = "auto") -> Pipeline:
    """partial_fit over shuffled chunks: memory flat in the number of images.

    SGD needs features of one scale (L2-normalised rows put every class signal in tiny
    values and it stalls there), so the embedded rows are standardised with training
    statistics streamed in one more pass.
    """
    embed = rows.fit_embedding(kind, idx)
    scale = StandardScaler()
    for _, X in rows.chunks(idx):
        scale.partial_fit(embed.transform(X.reshape(-1, X.shape[2])))
    clf = make_head(head, C, seed, n_samples=len(idx) * rows.store.views,
                    n_features=max(1, int((scale.var_ > 0).sum())))
    classes = np.unique(y[idx])
    rng = np.random.default_rng(seed)
    for _ in range(SGD_EPOCHS):
        for b, X in rows.chunks(idx, rng):
            n, v, d = X.shape
            clf.partial_fit(scale.transform(embed.transform(X.reshape(n * v, d))), np.repeat(y[idx[b]], v),
                            classes=classes)
    pipe = Pipeline([("embed", embed), ("scale", scale), ("head", clf)])
    pipe.solver_, pipe.solver_precision_ = "sklearn", None
    return pipe


def fit_head(rows: Rows, kind: str, head: str, C: float, y: np.ndarray, idx: np.ndarray,
             seed: int = 0, solver: str = "auto", device: str = "auto") -> tuple[Pipeline, float]:
    """Fit embedding + head on rows idx with C (a number: `--C auto` is chosen before, by
    `fne.linear.selection`). Returns (pipeline, C used); the pipeline's `stopped_` says whether
    scikit-learn's solver stopped at its iteration limit (True; "torch": the torch solver at its
    own; `fit` says so once, not a ConvergenceWarning per fit)."""
    fitter = _fit_sgd if head.startswith("sgd") else _fit_in_memory
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=selection.MANY_CLASSES)
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = fitter(rows, kind, head, C, y, idx, seed, solver, device)
    model = pipe.named_steps["head"]
    pipe.stopped_ = bool(pipe.solver_ == "sklearn" and head in ("svm", "logreg")
                         and np.max(model.n_iter_) >= model.max_iter) or ("torch" if getattr(pipe, "torch_stopped_", False)
                                                                          else False)
    return pipe, C


def _say_stopped(fits: list[tuple[str, float, bool]]) -> None:
    """One warning for the fits (head, C, `fit_head`'s `stopped_`) that stopped at the solver's
    iteration limit short of its tolerance, naming their heads and C (with ``auto``, each split's
    own), with what converges: the torch solver, or a smaller C. `stopped` "torch": the torch
    solver ended at its iteration limit (a warning of its own)."""
    torch_hit = sorted({c for _, c, stopped in fits if stopped == "torch"})
    if torch_hit:
        warnings.warn(f"the torch solver stopped at its iteration limit before its gradient tolerance in {sum(s == 'torch' for _, _, s in fits)} of {len(fits)} fit(s) "
                      f"(C={', '.join(str(c) for c in torch_hit)}): near its optimum, not at it; a smaller --C "
                      f"converges sooner", stacklevel=3)
    hit = [(h, c) for h, c, stopped in fits if stopped is True]
    if hit:
        heads = sorted({h for h, _ in hit})
        limits = " and ".join(str(make_head(h).max_iter) for h in heads)
        warnings.warn(f"the {' and '.join(heads)} head{'s' * (len(heads) > 1)} stopped at scikit-learn's "
                      f"limit{'s' * (len(heads) > 1)} of {limits} iterations before converging in {len(hit)} of "
                      f"{len(fits)} fit(s) (C={', '.join(str(c) for c in sorted({c for _, c in hit}))}): near its "
                      f"optimum, not at it; --solver torch fits the same objective to convergence, and a smaller "
                      f"--C converges sooner", stacklevel=3)


# -------------------------------------------------------------------- fit
@dataclass
class _Final:
    """What the saved model is made of: the options as given, or the choice of auto selection."""

    rows: Rows
    kind: str
    head: str
    C: float | str
    features: str
    layers: list[str]


# The keywords of `fit`, declared in fne.options (the command line's options are the same fields).
OPTIONS = (StoreSpec, DataOptions, FitOptions, ForwardOptions)


@opts.keywords(*OPTIONS)
def fit(data: str | Path | Dataset, out: str | Path, store: StoreSpec | None = None, **options) -> dict:
    """Fit and evaluate a linear head on cached features; writes metrics.json, model.joblib and
    predictions.csv.

    The rows are read through the features layer: with precision / storage_dtype "auto" from
    whichever store holds them; the model records the store it read (pinned by `predict`).

    Parameters
    ----------
    data : str, Path or Dataset
        Any DATA form with labels.
    out : str or Path
        Run folder for metrics.json, model.joblib and predictions.csv. A run another process
        writes there is waited for, then replaced (`fne.data.sidecar.one_run_at_a_time`).
    store : StoreSpec, optional
        Which rows to read (backbone, weights, preprocessing, ...).
    **options
        The options of `fne fit`, same names, same defaults (the signature lists them): the fields
        of `StoreSpec` (overriding `store`'s), `fne.options.DataOptions`, `fne.options.FitOptions`
        and `fne.options.ForwardOptions` (the network's, used with ``extract_missing``).

    Returns
    -------
    dict
        metrics.json's: accuracy and mean class accuracy (mean, std, interval), per-split scores,
        confusion, each class's recall, the store read, timings and provenance.

    Raises
    ------
    DataError
        DATA is missing, cannot be read, is unlabelled, has test classes with no training images,
        or its unreadable images leave a split unusable (`fne.data.splits.readable_parts`).
    WeightsError
        With ``extract_missing``: ``weights`` cannot be loaded or do not fit ``arch``.
    CacheError
        A store of the cache is damaged, of another fne, or describes other rows than asked for.
    FneError
        Its training images span fewer than 2 classes, a class has too few images for a random
        split (a bound of ``test_size`` or ``train_per_class``: OptionError), ``out`` holds another verb's run, or
        rows are not in the cache and ``extract_missing`` is False (the message gives the `fne
        extract` command that adds them).
    """
    spec, d, o, ext = opts.resolve(options, *OPTIONS, given={StoreSpec: store})
    C = parse_C(o.C)
    auto = "auto" in (o.features, o.head, C)  # fne.linear.selection: k-fold CV on each split's training images
    if o.head.startswith("sgd"):
        _check_sgd(o, C, auto)
    out = check_target(out, folder=True, data=data)
    with one_run_at_a_time(out, "fne fit", ext.progress, "fitting anew (its run is replaced)"):
        return _fit(data, check_run_folder(out, "fne fit"), spec, d, o, ext, C, auto)


def _fit(data: str | Path | Dataset, out: Path, spec: StoreSpec, d: DataOptions, o: FitOptions, ext: ForwardOptions,
         C: float | str, auto: bool) -> dict:
    """`fit`'s run into the run folder `out`, which it holds the lock of."""
    backbone = spec.backbone()
    layers, kind = parse_features("fne" if o.features == "auto" else o.features, backbone)
    src = open_rows(data, spec, "fit", o.extract_missing, ext, check=partial(_check_trainable, data),
                    label_key=d.label_key)
    dataset, store = src.dataset, src.store
    y = dataset.label_indices()
    rows = Rows(store, dataset.keys(), layers, o.stream_chunk)
    split_list = _splits(data, src, y, o, auto)
    bar = progress(len(split_list), f"fit {o.features}+{o.head}", ext.progress, unit="splits")
    chosen: list[dict] = []  # --features/--head/--C auto: fne.linear.selection's record per split
    choose = selection.chooser(o.features, o.head, C, backbone, parse_features, y, o.seed, chosen,
                               lambda la: Rows(store, dataset.keys(), la, o.stream_chunk, rows.faint_said), o.solver,
                               spec.device, on_C=lambda name, c, cv: bar.set_postfix(
                                   cross_validated=f"{name} C={c:g} cv accuracy {cv:.4f}")) if auto else None
    how, t0 = dict(solver=o.solver, device=spec.device), time.perf_counter()
    per_split, Cs, confusions, pipe, preds = _evaluate(rows, kind, o.head, C, y, split_list, len(dataset.classes),
                                                       o.seed, choose, how, bar, stopped := [])
    fit_seconds = (time.perf_counter() - t0) / len(split_list)
    final = _Final(rows, kind, o.head, C, o.features, layers)
    if auto:  # the saved model: the choice made most often over the splits
        r, k, h, c = choose(None)
        final = _Final(r, k, h, c, selection.most_common(chosen)["features"], r.layers)
    if not dataset.has_split:  # the saved model learns from every labelled image
        pipe = fit_head(final.rows, final.kind, final.head, final.C, y, np.arange(len(y)), o.seed, **how)[0]
    _say_stopped(stopped + [(final.head, final.C, pipe.stopped_)] * (not dataset.has_split))  # the saved model's too
    for s, (te, pred) in zip(per_split, preds):  # for paired tests between runs (fne.linear.compare)
        s.update(split_record(dataset.ids, te, y[te], pred))
    metrics = _metrics(data, src, final, per_split, confusions, Cs, fit_seconds, pipe, (spec, d, o, ext), out)
    if auto:
        metrics["selection"] = selection.summary(chosen)
    out.mkdir(parents=True, exist_ok=True)
    _save(out, metrics, pipe, src, final.layers, final.kind, compare.predictions_writer(dataset, y, preds))
    return metrics


def _metrics(data, src: Source, final: _Final, per_split: list[dict], confusions, Cs: list, fit_seconds: float,
             pipe, options: tuple, out: Path) -> dict:
    """`fit`'s metrics.json (`options`: the resolved spec, data, fit and forward options; `out`: the
    run folder, for its ``command``)."""
    dataset, o = src.dataset, options[2]
    m = {
        "format": METRICS_FORMAT, "kind": "fit", "method": f"{o.features}+{o.head}", "dataset": dataset.name, "data": str(data),
        "data_resolved": data_identity(data),
        **_scores(per_split, confusions, dataset.classes),
        "n_images": len(src.listed()), "skipped": src.skipped,  # as train's: DATA's listing, the unreadable named
        "classes": dataset.classes, "labels_fingerprint": src.labels_fingerprint,
        **store_identity(src),
        "features": final.features, "layers": final.layers, "embedding": final.kind, "head": final.head,
        "C": Cs[0] if len(set(Cs)) == 1 else Cs,
        "fit_seconds": fit_seconds, "solver": pipe.solver_, "solver_precision": pipe.solver_precision_,
        **_rows_record(src),
        "seed": o.seed, "split_protocol": "predefined" if dataset.has_split else (
            f"{len(per_split)}x {o.train_per_class} per class" if o.train_per_class
            else f"{len(per_split)}x stratified test_size={o.test_size}"), "test_order": TEST_ORDER,
        **provenance(*options, verb="fit", data=data, run_dir=out),
        "store_extractions": store_extractions(src.store.records()),  # who computed the rows read
    }
    # the caller's count is provenance's "torch"; a small torch-solver fit ran on one (ONE_THREAD_BELOW)
    m["threads"]["torch_fit"] = getattr(pipe, "torch_threads_", None)
    return m


def _rows_record(src: Source) -> dict:
    """metrics.json's record of the rows' extraction: extract_seconds measured by this fit (None:
    the rows were cached), and, for rows read cached, extract_cost, what computing them cost as the
    store's extraction records say (`fne.cache.cost.rows_cost`; None: no record, or this fit
    extracted rows itself, which its records would charge as an earlier extraction's)."""
    cached = src.extract_seconds is None
    return {"extract_seconds": src.extract_seconds, "rows": "cached" if cached else "extracted",
            "extract_cost": rows_cost(src.store, src.dataset.keys()) if cached else None}


def _check_trainable(data, dataset: Dataset) -> None:
    """FneError unless DATA has labels and its training images (the `train` split when it has
    one) span at least 2 classes and every test class has training images
    (`check_test_classes`); called by `open_rows` before extraction and after the unreadable
    images are left out. Warns of classes left with no readable image."""
    where = data if isinstance(data, (str, Path)) else f"DATA {dataset.name}"
    dataset.require_labels("fne fit", data if isinstance(data, (str, Path)) else None)
    y, part = dataset.label_indices(), ""
    seen = set(y.tolist())
    empty = [c for k, c in enumerate(dataset.classes) if k not in seen]
    if empty:  # every image of theirs unreadable: kept in `classes`, never predicted
        warnings.warn(f"{len(empty)} class(es) have no readable image, so the model cannot predict them: "
                      f"{first_few(empty)}", stacklevel=3)
    if dataset.has_split:
        y, part = y[dataset.in_train()], " in the train split"
    present = [dataset.classes[c] for c in np.unique(y)]
    if len(present) < 2:
        n = "1 class has" if len(present) == 1 else f"{len(present)} classes have"
        shown = f" (class {', '.join(present)})" if present else ""
        raise FneError(f"{where}: {n} readable images{part}{shown}, of {len(dataset.classes)}; "
                       f"a head needs at least 2 classes")
    check_test_classes(dataset)


def _check_sgd(o: FitOptions, C, auto: bool) -> None:
    """An SGD head's options: auto selection refused; a --solver given is warned as not applied
    (silently unused, it read as the solver that fitted)."""
    if auto:
        raise _no_auto_with(o.head, [n for n, v in (("features", o.features), ("C", C)) if v == "auto"])
    if o.solver != "auto":
        warnings.warn(said(lambda py: f"{named('solver', py, o.solver, plain=True)} is not applied: SGD heads "
                                      f"({named('head', py, o.head, plain=True)}) are fitted by scikit-learn's "
                                      f"SGDClassifier, chunk by chunk (the solvers fit svm and logreg)"), stacklevel=4)


def _no_auto_with(head: str, autos: list[str]) -> FneError:
    """The OptionError of auto selection (of the options `autos`) asked of an SGD head."""
    return refusal(lambda py: f"auto selection ({', '.join(named(n, py, 'auto', plain=True) for n in autos)}) is not "
                              f"available with SGD heads ({named('head', py, head, plain=True)})")


def _splits(data, src: Source, y: np.ndarray, o: FitOptions, auto: bool) -> list:
    """The (train, test) splits of the readable images `src.dataset` (labels `y`): drawn over DATA's
    listing, unreadable images included (`make_splits`), as `fne train` draws its split, then with
    the unreadable images left out of each part (`readable_parts`, whose notes are warned, as is
    each duplicate note); with auto selection, FneError naming the classes with a single training
    image in a split: its k-fold cross-validation (`fne.linear.selection.image_folds`) needs 2 of
    each; the options of random splits given where DATA has its own are named (`not_applied`)."""
    dataset, listing = src.dataset, src.listed()
    not_applied(listing, o)
    y_listed = listing.label_indices()
    split_list = make_splits(listing, y_listed, o.splits, o.test_size, o.train_per_class, o.seed, listing.keys())
    for note in duplicate_notes(listing, listing.keys(), split_list):
        warnings.warn(note, stacklevel=3)
    split_list, notes = readable_parts(listing.classes, y_listed, split_list, src.kept)
    for note in notes:
        warnings.warn(note, stacklevel=3)
    singles = [[dataset.classes[c] for c in np.flatnonzero(np.bincount(y[tr], minlength=len(dataset.classes)) == 1)]
               for tr, _ in (split_list if auto else [])]
    few = next((s for s in singles if s), None)
    if few:
        shown = ", ".join(map(repr, few[:5])) + (", ..." if len(few) > 5 else "")
        counts = np.bincount(y, minlength=len(dataset.classes))
        # 2 training images a class need a third to test, and DATA's own split draws none
        per_class = not dataset.has_split and counts[counts > 0].min() >= 3

        def fewer(py: bool) -> str:
            return f"{named('train_per_class', py, 2)}, or " if per_class else ""
        raise refusal(lambda py: f"{data}: auto selection cross-validates on each split's training images and "
                                 f"needs 2 of every class; {len(few)} class(es) have 1 training image in a split "
                                 f"({shown}): give {named('C', py)} (and {named('features', py)}, "
                                 f"{named('head', py)}) a value, or {fewer(py)}more images", FneError)
    return split_list


def _scores(per_split: list[dict], confusions: list[np.ndarray], classes: list[str]) -> dict:
    """Accuracy and mean class accuracy over the splits (mean ± population std, ddof 0: one split
    gives 0.0) and their intervals, sizes, the confusion summed over the splits and each class's
    recall read off it."""
    acc = np.array([s["accuracy"] for s in per_split])
    mca = np.array([s["mean_class_accuracy"] for s in per_split])
    confusion = sum(confusions[1:], confusions[0])
    return {"accuracy": float(acc.mean()), "accuracy_std": float(acc.std()), "accuracy_ci": accuracy_interval(per_split),
            "mean_class_accuracy": float(mca.mean()), "mean_class_accuracy_std": float(mca.std()),
            "mean_class_accuracy_ci": mean_class_interval(per_split, confusions[0]),
            "splits": per_split, "n_splits": len(per_split),
            "n_train": int(round(np.mean([s["n_train"] for s in per_split]))),
            "n_test": int(round(np.mean([s["n_test"] for s in per_split]))),
            "confusion": confusion.tolist(), "class_recall": class_recall(confusions, classes)}


def _evaluate(rows: Rows, kind: str, head: str, C, y: np.ndarray, split_list, k: int, seed: int,
              choose=None, how: dict | None = None, bar=None, stopped: list[tuple] | None = None):
    """Fit and score every split; -> (per-split scores, C per split, confusion per split, last model,
    (test images, predictions) per split). `choose(train)` -> (rows, kind, head, C) per split;
    `bar` (`fne.progress.progress`) advances a split at a time and is closed; `stopped` gets each
    split's head, C and `fit_head` `stopped_`."""
    per_split, Cs, confusions, preds = [], [], [], []
    for tr, te in split_list:
        if choose is not None:
            rows, kind, head, C = choose(tr)
        pipe, c_used = fit_head(rows, kind, head, C, y, tr, seed, **(how or {}))
        if stopped is not None:
            stopped.append((head, c_used, pipe.stopped_))
        pred = pipe.classes_[rows.scores(pipe, te).argmax(axis=1)]
        scores, conf = split_scores(y[te], pred, k)
        per_split.append({**scores, "n_train": int(len(tr)), "n_test": int(len(te))})
        Cs.append(c_used)
        confusions.append(conf)
        preds.append((te, pred))
        if bar is not None:
            bar.set_postfix(accuracy=f"{np.mean([s['accuracy'] for s in per_split]):.4f}", refresh=False)  # shown by update
            bar.update(1)
    if bar is not None:
        bar.close()
    return per_split, Cs, confusions, pipe, preds


def store_identity(src: Source) -> dict:
    """What pins a model to its rows: recorded in metrics.json and model.joblib."""
    m, spec = src.store.meta, src.spec
    return {"arch": spec.arch, "weights": spec.weights, "weights_seed": spec.weights_seed,
            "weights_fingerprint": m["weights"], "crop": spec.crop, "preprocess": m["preprocess"],
            "decode": spec.decode, "precision": m["precision"], "storage_dtype": m["dtype"],
            "cache": spec.cache, "store": str(src.store.path)}


def _located(identity: dict) -> dict:
    """The store identity as model.joblib keeps it: a weights file and a local cache folder as
    absolute paths, so that `fne predict` finds them from any folder; names (imagenet, random,
    torchvision weights names) and URLs as given."""
    weights, cache = identity["weights"], identity["cache"]
    if weights not in ("imagenet", "random") and Path(weights).is_file():
        weights = str(Path(weights).absolute())
    if cache is not None and not is_url(cache):
        cache = str(Path(cache).expanduser().absolute())
    return {**identity, "weights": weights, "cache": cache}


def _fitted_keys(dataset: Dataset) -> np.ndarray:
    """The images the saved head learnt from, by `key_digests` of their content keys: the train
    split (and a validation part) where DATA has one, else every image (the head is refitted on all
    of them)."""
    fitted = dataset.in_train() if dataset.has_split else np.ones(len(dataset), dtype=bool)
    return np.unique(key_digests([k for k, f in zip(dataset.keys(), fitted, strict=True) if f]))


def _save(out: Path, metrics: dict, pipe, src: Source, layers: list[str], kind: str, predictions) -> None:
    """predictions.csv, model.joblib (`_located`) and metrics.json (the weights and cache as
    given), written together (`replace_files`): a full disk or an interrupt leaves the earlier
    run whole, and a folder with metrics.json holds one whole run."""
    model = {
        "format": MODEL_FORMAT, "pipeline": pipe, "classes": src.dataset.classes,
        "features": metrics["features"], "layers": layers, "embedding": kind, "head": metrics["head"],
        "store": _located(store_identity(src)),
        "label_key": metrics["options"]["label_key"],  # where DATA's labels were: predict reads them there too
        "fitted_keys": _fitted_keys(src.dataset),  # predict says which of its images the head learnt from
        "views": src.store.views, "thresholds": (
            {"low": pipe.named_steps["embed"].low, "high": pipe.named_steps["embed"].high}
            if kind == "fne" else None),
    }
    replace_files({out / "predictions.csv": predictions, out / "model.joblib": partial(joblib.dump, model),
                   out / "metrics.json": lambda f: f.write_text(json_text(metrics, indent=2))})


verb_module(__name__)
