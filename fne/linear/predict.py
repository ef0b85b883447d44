"""`fne predict`: a model saved by `fne fit` applied to new images, through exactly its store.

The model pins its rows: arch, weights fingerprint, preprocessing, precision and storage dtype
are recorded at fit time and read back here. Weights whose file changed since (a rerun of
`fne train` into the same folder, a new checkpoint under the old name) would give rows the
head never saw, so predict refuses them instead of printing a silently wrong accuracy.
"""

from __future__ import annotations

import unicodedata
import warnings
from pathlib import Path

import joblib
import numpy as np

from fne import option_handling as opts
from fne import verb_module
from fne.backbones.catalog import fitted_weights_only
from fne.cache.fs import check_target, direct_run, is_url, not_a_run_file, out_refused, replace_file
from fne.cache.spec import DEVICE_SUFFIXES, StoreSpec, recorded_image_size
from fne.data.containers import takes_label_key
from fne.data.dataset import Dataset, key_digests
from fne.data.datasets import load_dataset
from fne.errors import FneError, WeightsError, expect_path
from fne.linear.features import Rows, open_rows
from fne.metrics import predictions_csv
from fne.names import CROPS, DECODERS, PRECISIONS, STORAGE_DTYPES
from fne.options import DataOptions, ForwardOptions, PredictOptions
from fne.progress import first_few

MODEL_FORMAT = 2


def load_model(run_dir: str | Path) -> dict:
    """A `fne fit` run folder's model.joblib (the pipeline, labels and the store it read);
    `FneError` naming the folder when it has none or one of another format."""
    path = Path(run_dir) / "model.joblib"
    if not path.is_file() and direct_run(Path(run_dir)):
        from fne.training.class_map import direct_run_refusal

        raise direct_run_refusal(run_dir)
    if not path.is_file():
        raise FneError(f"{run_dir}: no model.joblib or model.pt (is it a `fne fit` or `fne train` run folder?)")
    try:
        model = joblib.load(path)
    except Exception as e:  # noqa: BLE001 -- damaged (EOF, pickle errors), or of packages this Python lacks
        said = (str(e).strip().splitlines() or [""])[0][:160]
        if isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("fne."):  # a class fne moved since
            raise FneError(f"{path}: written by an earlier fne, whose module {e.name} this one no longer has; "
                           f"refit it with `fne fit`") from None
        raise FneError(f"{path}: cannot be read ({type(e).__name__}{': ' * bool(said)}{said}); refit it with "
                       f"`fne fit`") from None
    f = model.get("format") if isinstance(model, dict) else None
    if type(f) is int and f > MODEL_FORMAT:  # refitting it with this fne would replace a newer fne's run
        raise FneError(f"{path}: written by a newer fne: model format {f}, this fne reads {MODEL_FORMAT}; upgrade fne")
    if not isinstance(model, dict) or f != MODEL_FORMAT:
        raise FneError(f"{path}: not a model written by this version of fne fit (refit it with `fne fit`)")
    bad = _malformed(model)
    if bad:  # damaged or edited: a KeyError deep in predict, or scores under other class names
        raise FneError(f"{path}: its {', '.join(bad)} not as `fne fit` writes them (a damaged or edited file); "
                       f"refit it with `fne fit`")
    learnt = set(map(int, model["pipeline"].classes_))
    unlearnt = [c for i, c in enumerate(model["classes"]) if i not in learnt]
    if unlearnt:  # fit warned of it; its scores had no column for them and --top stopped short without a word
        warnings.warn(f"{path}: its head learnt {len(model['classes']) - len(unlearnt)} of its "
                      f"{len(model['classes'])} classes (no readable training image of "
                      f"{first_few(list(map(repr, unlearnt)))} when it was fitted): it scores no column for them "
                      f"and never predicts them", stacklevel=2)
    return model


def scored_classes(model: dict) -> list[str]:
    """The classes a model.joblib's head scores, in its columns' order: those it learnt."""
    return [model["classes"][c] for c in model["pipeline"].classes_]


# model.joblib's store record: what `pinned_spec` rebuilds the store spec from (fne.linear.fit.store_identity)
STORE_TEXT = ("arch", "weights", "weights_fingerprint", "crop", "decode", "precision", "storage_dtype")
STORE_CHOICES = {"crop": CROPS, "decode": DECODERS, "precision": PRECISIONS, "storage_dtype": STORAGE_DTYPES}


def _store_record(s) -> bool:
    """Whether model.joblib's store record `s` holds each setting `pinned_spec` reads, as `fne fit`
    writes it (`preprocess` may be absent: a model saved before fit recorded it)."""
    return isinstance(s, dict) and all(isinstance(s.get(k), str) for k in STORE_TEXT) and all(
        s[k] in choices for k, choices in STORE_CHOICES.items()) and "cache" in s and isinstance(
        s["cache"], (str, type(None))) and type(s.get("weights_seed")) is int and isinstance(
        s.get("preprocess"), (str, type(None)))


def _malformed(model: dict) -> list[str]:
    """The fields of a model.joblib `model` that predict reads and that hold what `fne fit` never
    writes: a head without classes, class names that its classes do not index, layers that are no
    list of names, a store record lacking a setting or of another type, ..."""
    def texts(v) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)

    pipe, classes, s = model.get("pipeline"), model.get("classes"), model.get("store")
    index = getattr(pipe, "classes_", None)
    scores = hasattr(pipe, "decision_function") or hasattr(pipe, "predict_proba")  # as `class_scores` asks
    bad = [] if index is not None and scores else ["pipeline"]
    if not texts(classes) or index is not None and not all(
            isinstance(c, (int, np.integer)) and 0 <= c < len(classes) for c in index):
        bad.append("classes")
    bad += [] if texts(model.get("layers")) else ["layers"]
    bad += [k for k in ("features", "head") if not isinstance(model.get(k), str)]  # what `fne.load` says it is
    bad += [] if _store_record(s) else ["store"]
    fitted = model.get("fitted_keys")
    bad += [] if fitted is None or isinstance(fitted, (np.ndarray, list, tuple)) else ["fitted_keys"]
    return bad


def run_folder(run_dir: str | Path) -> Path:
    """The run folder `run_dir` names: itself, or the folder of the model file given in its place
    (`runs/a/model.joblib`); FneError for one that does not exist or another file."""
    path = Path(run_dir)
    if path.is_file() and path.name in ("model.joblib", "model.pt"):
        return path.parent
    if not path.exists():
        raise FneError(f"run folder {run_dir} does not exist (give the --out of a `fne fit` or `fne train` run)")
    if not path.is_dir():
        raise FneError(f"{run_dir} is a file: give the run folder that holds model.joblib (fne fit) or model.pt "
                       f"(fne train)")
    return path


def pinned_spec(model: dict, where: str, device: str | None = None, moved_weights: str | None = None) -> StoreSpec:
    """The store spec the model was fitted on, run on `device` (with its weights file read at
    `moved_weights`, where it moved); refuses weights that changed since, and random weights that
    `device` would draw otherwise (they are drawn where they run)."""
    s = model["store"]
    if moved_weights is not None and not str(s["weights_fingerprint"]).startswith("file-"):
        raise opts.refusal(lambda py: f"{opts.named('moved_weights', py)}: {where} was fitted on {s['weights']} "
                                      f"weights, not on a file; give it for a model fitted on a weights file", FneError)
    spec = StoreSpec(arch=s["arch"], weights=moved_weights or s["weights"], crop=s["crop"], precision=s["precision"],
                     storage_dtype=s["storage_dtype"], cache=s["cache"],
                     weights_seed=s["weights_seed"] if s["weights"] == "random" else 0,  # recorded before it was refused
                     decode=s["decode"], device=device or "auto", image_size=recorded_image_size(s))
    try:  # before the preprocessing, whose backbone a torchvision model's missing file stops too
        now = spec.fingerprint()
    except WeightsError as e:
        raise _unreadable_weights(e, s, where, spec.weights, moved_weights) from None
    made, key = s.get("preprocess"), spec.preprocess().key
    if made is not None and made not in (key, *(key + suffix for suffix in DEVICE_SUFFIXES.values())):
        raise FneError(f"{where} was fitted on rows of preprocessing {made}, an earlier fne's pixels, which this fne "
                       f"no longer makes ({key} now); its head fits those rows only: fit it again with `fne fit`")
    unknown = [la for la in model["layers"] if la not in {t.name for t in spec.backbone().taps}]
    if unknown:  # (a layer its store has no columns of: a KeyError deep in reading them)
        raise FneError(f"{where}: its model.joblib's layers {', '.join(unknown)} are no layers of {s['arch']}; "
                       f"refit it with `fne fit`")
    then = s["weights_fingerprint"]
    if now != then and moved_weights is not None:
        raise opts.refusal(lambda py: f"{opts.named('moved_weights', py, moved_weights)} is not the weights {where} was "
                                      f"fitted on ({s['weights']} then): fingerprint {now}, the model's {then}", FneError)
    if now != then and s["weights"] == "random":
        drawn = then.removeprefix(f"random-seed{s['weights_seed']}").lstrip("-") or "cpu"
        device = drawn.rstrip("0123456789x")  # cuda132x2048: a GPU of 132 SMs of 2048 threads
        where_drawn = device if device == drawn else f"a {device} GPU of {drawn[len(device):].replace('x', ' SMs x ')} threads"
        raise opts.refusal(lambda py: f"{where} was fitted on random weights drawn on {where_drawn} ({then}); this "
                                      f"run would draw other ones ({now}): predict with "
                                      f"{opts.named('device', py, device, plain=True)}"
                                      + ("" if device == drawn else " on such a GPU"), FneError)
    if now != then:
        raise FneError(
            f"the weights at {s['weights']} changed since {where} was fitted: fingerprint {now}, "
            f"the model's {then}. Its head only fits rows of the old weights: "
            f"restore that file, or fit again on the new weights (`fne fit ... --weights {s['weights']}`)")
    return spec


def _unreadable_weights(e: WeightsError, s: dict, where: str, weights: str, moved_weights: str | None) -> FneError:
    """The refusal of the weights file a model was fitted on (the store record `s`), or of
    `moved_weights`, that cannot be read (`e`: `weights`' error): in the words of `fne predict`
    and `fne.load`, which take no --weights (no such file: said so, not the other weights that
    `e` offers)."""
    def why(py: bool) -> str:
        said = str(e) if py else getattr(e, "cli", str(e))
        return "no such file" if not Path(weights).exists() else said.removeprefix(f"{opts.named('weights', py, weights)}: ")

    if moved_weights is not None:
        return opts.refusal(lambda py: f"{opts.named('moved_weights', py, moved_weights)}: {why(py)}", FneError)
    return opts.refusal(lambda py: f"{where} was fitted on weights {s['weights']} (fingerprint {s['weights_fingerprint']}), "
                                   f"which cannot be read now: {why(py)}; where the file moved, give its path: "
                                   f"{opts.named('moved_weights', py, 'PATH', plain=True)}", FneError)


# The store options a prediction may change: where the cache is and where the network runs. The
# others (backbone, weights, preprocessing, ...) are the model's: its head only fits those rows.
STORE_OPTIONS = ("cache", "device")
OPTIONS = (DataOptions, ForwardOptions, PredictOptions)  # with STORE_OPTIONS: the keywords of `predict`, declared in fne.options
# What its refusal of weights it cannot have offers: predict takes no other weights (the head fits these rows)
NO_OTHER_WEIGHTS = fitted_weights_only("predict again")


@opts.keywords(StoreSpec, only=STORE_OPTIONS)
@opts.keywords(*OPTIONS)
def predict(run_dir: str | Path, data: str | Path | Dataset, out: str | Path, **options) -> dict:
    """Scores and predicted class for every image of DATA with a model saved by `fit`, or with the
    network of a `fne train` run (`fne.training.apply`).

    Parameters
    ----------
    run_dir : str or Path
        A `fne fit` run folder (model.joblib), or a `fne train` run folder (model.pt; then
        ``cache`` is not used and the store is None).
    data : str, Path or Dataset
        Any DATA form; rows missing from the cache are extracted with the model's store settings.
    out : str or Path
        The predictions CSV (a name ending in .csv): path, predicted (predicted_2 ... predicted_K after
        it with ``top=K``), score_<class>... (a logreg head's probabilities, an svm head's decision
        margins, a `fne train` network's softmax), true (when DATA has labels).
    label_key : str, optional
        Tar shards: the label member (cls, txt) or a .json field; Parquet: the label column
        (default: the one the model was fitted with, where DATA is tar shards, Parquet or hf:).
    cache : str, optional
        Cache folder or fsspec URL (default: the ``cache`` fit was given, where that folder is
        still there, else the current cache: $FNE_CACHE, else fne's default). The line saying that
        rows are extracted names it and, where the model was fitted from rows of another cache, that one.
    **options
        The options of `fne predict`, same names, same defaults: ``cache`` and ``device`` (the
        model pins every other store setting), ``label_key`` (`fne.options.DataOptions`), the
        fields of `fne.options.ForwardOptions`, and those of `fne.options.PredictOptions`:
        ``moved_weights``, where the weights file the model was fitted on lies now, checked against
        its fingerprint, and ``top``, how many classes each image's row names.

    Returns
    -------
    dict
        ``n`` predictions, ``accuracy``, ``n_scored`` (the images it covers), ``n_fitted_on``
        (how many of DATA's images the head was fitted on, or a `fne train` run's own DATA's images
        other than its test images, a warning saying so where DATA has labels; None for other
        DATA of a train run, or a model saved before fit recorded them), ``n_skipped`` (DATA's
        images left out as unreadable, each named in a warning), ``out`` and the ``store`` read.
        The accuracy covers only the images whose label is one of the model's classes (the others
        it cannot get right; a warning names their labels); it is None without labels or when no
        image has a known label. The CSV lists every image either way.

    Raises
    ------
    DataError
        DATA is missing or cannot be read.
    CacheError
        A store of the cache is damaged, of another fne, or describes other rows than asked for.
    FneError
        ``run_dir`` is no `fne fit` or `fne train` run (or a direct mode one, which trains
        nothing), or a store setting other than ``cache`` and ``device`` is given (the model
        pins them).
    """
    fixed = sorted(k for k in options if k in StoreSpec.__dataclass_fields__ and k not in STORE_OPTIONS)
    if fixed:
        raise FneError(f"{run_dir} pins {', '.join(fixed)} (its head fits those rows only); predict takes "
                       f"{' and '.join(STORE_OPTIONS)}")
    opts.unexpected(options, StoreSpec, *OPTIONS)
    expect_path(run_dir, "run_dir")
    out = check_target(out, folder=False, data=data)
    not_a_run_file(out, "writing predictions")
    if out.suffix.lower() != ".csv":  # `--out p.json`: a CSV under another format's name
        raise out_refused(out, f"fne predict writes a CSV{f', not {out.suffix}' if out.suffix else ''}: name the "
                               f"file .csv")
    run_dir = run_folder(run_dir)
    if not (run_dir / "model.joblib").is_file() and (run_dir / "model.pt").is_file():
        return _with_network(run_dir, data, out, options)
    model = load_model(run_dir)
    pinned = pinned_spec(model, str(run_dir), options.get("device"), options.get("moved_weights"))
    if options.get("cache") is None:  # the cache the model was fitted from, where it is still there
        options = {**options, "cache": _cache_here(pinned.cache)}
    spec, d, ext, p = opts.resolve(options, StoreSpec, *OPTIONS, given={StoreSpec: pinned})
    _check_top(p.top, scored_classes(model))
    fitted, label_key = _fitted_cache(model, run_dir), _label_key(d.label_key, model.get("label_key"), data, run_dir)
    src = open_rows(data, spec, "predict", True, ext, label_key=label_key, fitted=fitted, instead=NO_OTHER_WEIGHTS)
    dataset, pipe, classes = src.dataset, model["pipeline"], model["classes"]
    scores = Rows(src.store, dataset.keys(), model["layers"]).scores(pipe, np.arange(len(dataset)))
    pred = _write(out, dataset, np.arange(len(dataset)), scored_classes(model), scores, p.top)
    acc, scored = _accuracy(pred, dataset.labels, classes, data) if dataset.labels else (None, None)
    return {"n": len(dataset), "accuracy": acc, "n_scored": _count(scored), "n_skipped": src.n_skipped,
            "n_fitted_on": _fitted_on(model, dataset, run_dir, scored), "out": str(out), "store": str(src.store.path)}


def _cache_here(cache: str | None) -> str | None:
    """The ``cache`` fit was given, where that folder is still there (or a URL); else None, the cache
    in use now ($FNE_CACHE, else fne's default): a run folder copied to another machine, or a cache
    moved since, would otherwise have the old path made anew and every row extracted into it."""
    return cache if cache is None or is_url(cache) or Path(cache).is_dir() else None


def _count(scored: np.ndarray | None) -> int:
    """How many images the accuracy covers (`_accuracy`'s mask; None: DATA has no labels)."""
    return 0 if scored is None else int(scored.sum())


def _seen(hit: np.ndarray, scored: np.ndarray | None, total: int, why: str) -> int:
    """How many images `hit` marks (those the model learnt from, of the `total` predicted); a
    warning where the accuracy counts any (`scored`, `_accuracy`'s mask): "3 of 12 images of DATA
    `why`" ("... whose label the model knows" where it is not over all `total`)."""
    counted = 0 if scored is None else int((hit & scored).sum())
    if counted:
        known = " whose label the model knows" * (_count(scored) < total)
        warnings.warn(f"{counted} of {_count(scored)} images of DATA{known} {why}", stacklevel=4)
    return int(hit.sum())


def _fitted_cache(model: dict, run_dir: Path) -> tuple[str, str] | None:
    """(run folder, the cache its model was fitted from): the ``cache`` fit was given (recorded
    absolute), else the folder of the store it read ($FNE_CACHE's or the default then); None for a
    model that records neither."""
    s = model["store"]
    if s.get("cache") is not None:
        return str(run_dir), str(s["cache"])
    store = s.get("store")
    if not store:
        return None
    return str(run_dir), str(store).rstrip("/").rsplit("/", 1)[0] if is_url(store) else str(Path(store).parent)


def _fitted_on(model: dict, dataset: Dataset, run_dir: Path, scored: np.ndarray | None = None) -> int | None:
    """How many of DATA's images the model's head learnt from (by content key; None for a model
    saved before fit recorded them); a warning when the accuracy counts any (`scored`, `_accuracy`'s
    mask: not those whose label the model does not know): it is not a test accuracy."""
    fitted = model.get("fitted_keys")
    if fitted is None:
        return None
    if not isinstance(fitted, np.ndarray):  # a model saved when they were the keys themselves: matched none
        fitted = key_digests(list(fitted))
    hit = np.isin(key_digests(dataset.keys()), fitted)
    return _seen(hit, scored, len(dataset), f"are images {run_dir} was fitted on (the same bytes): the accuracy "
                                           f"counts them, so it is not a test accuracy; for one, predict on images "
                                           f"it was not fitted on (a predefined split's test part)")


def _with_network(run_dir, data, out: Path, options: dict) -> dict:
    """`fne train`'s network (model.pt) applied to DATA's images (`fne.training.apply`); `cache`
    only keeps DATA's listings (no rows are read), `device` is where the network runs."""
    from fne.handoff import imported

    imported("fne.training.apply")  # torch's first import here: a Ctrl-C held over it (`fne.handoff.imported`)
    from fne.devices import check_device
    from fne.training.apply import predict_network, read_run

    device = "auto" if options.get("device") is None else options["device"]  # "": refused, as for a fit run
    check_device(device, here=False)  # parsed before DATA is listed
    d, o, p = opts.resolve({k: v for k, v in options.items() if k not in STORE_OPTIONS}, *OPTIONS)
    if p.moved_weights is not None:
        raise no_moved_weights(run_dir)
    run = read_run(run_dir)
    _check_top(p.top, run["classes"])
    label_key = _label_key(d.label_key, run.get("options", {}).get("label_key"), data, run_dir)
    dataset = load_dataset(data, label_key=label_key, cache=options.get("cache"))
    dataset, classes, scores, idx, unread = predict_network(run_dir, dataset, device=options.get("device"),
                                                            batch_size=o.batch_size, workers=o.workers,
                                                            progress=o.progress, name=data)
    pred = _write(out, dataset, idx, classes, scores, p.top)
    labels = [dataset.labels[i] for i in idx] if dataset.labels else None
    acc, scored = _accuracy(pred, labels, classes, data) if labels else (None, None)
    return {"n": len(idx), "accuracy": acc, "n_scored": _count(scored),
            "n_fitted_on": _trained_on(run_dir, data, dataset, idx, scored), "n_skipped": len(unread),
            "out": str(out), "store": None}


def no_moved_weights(run_dir: Path) -> FneError:
    """The refusal of ``moved_weights`` for a `fne train` run, whose network is its model.pt."""
    return opts.refusal(lambda py: f"{opts.named('moved_weights', py)}: {run_dir} is a `fne train` run, whose "
                                   f"network is its model.pt; give it for a `fne fit` model", FneError)


def _trained_on(run_dir: Path, data, dataset: Dataset, idx, scored: np.ndarray | None = None) -> int | None:
    """How many of the predicted images of the train run's own DATA are not among its test images
    (its predictions.csv): it trained, or chose its epoch, on them; a warning when the accuracy
    counts any (`scored`, as `_fitted_on`). None for other DATA (its images are not matched by name)."""
    import csv

    from fne.metrics import data_identity
    from fne.training.apply import read_run

    if not isinstance(data, (str, Path)) or data_identity(data) != read_run(run_dir).get("data_resolved"):
        return None
    try:
        with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as f:
            tested = {r["path"] for r in csv.DictReader(f)}
    except (OSError, KeyError, ValueError):
        return None
    untested = np.array([dataset.ids[i] not in tested for i in idx], dtype=bool)
    return _seen(untested, scored, len(idx), f"are not among the test images of {run_dir} (it trained, or chose "
                                             f"its epoch, on them): the accuracy counts them, so it is not a test "
                                             f"accuracy; its test accuracy is its metrics.json's")


def _label_key(given: str | None, fitted: str | None, data, run_dir) -> str | None:
    """Where DATA's true labels are read: the label_key given, else the one the model was fitted
    with (its record's), where DATA takes one (tar shards, Parquet, hf:; not a folder, CSV or HDF5,
    whose labels have one place). A different one given is honoured, with a warning: new DATA may
    name its label another way, but the same DATA read through another key scores the model
    against other labels."""
    if given is None:
        return fitted if fitted is not None and takes_label_key(data) else None
    if fitted is not None and given != fitted:
        warnings.warn(f"DATA's labels are read with label key {given!r}, not {fitted!r} as {run_dir} was "
                      f"fitted with: the accuracy compares its predictions with those labels", stacklevel=3)
    return given


def _check_top(top: int, classes: list[str]) -> None:
    """Refuses a `top` above the model's number of classes, in one line naming the option."""
    if top > len(classes):
        raise opts.refusal(lambda py: f"{opts.named('top', py, top)}: the model has {len(classes)} classes")


def _write(out: Path, dataset, idx, names: list[str], scores: np.ndarray, top: int = 1) -> list[str]:
    """The predictions CSV (`fne.metrics.predictions_csv`), written whole: the images `idx` of
    `dataset`, their `scores` over the classes `names` (in column order), each image's `top`
    highest-scoring classes named; returns the predicted (highest-scoring) class of each."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]  # ties: the first column's class
    ranked = [[names[c] for c in row] for row in order]
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_file(out, predictions_csv(dataset, idx, [r[0] for r in ranked], [f"score_{c}" for c in names], scores,
                                      [r[1:] for r in ranked] if top > 1 else None))
    return [r[0] for r in ranked]


def _accuracy(pred: list[str], labels: list[str], classes: list[str], data) -> tuple[float | None, np.ndarray]:
    """(accuracy, which images it covers): over the images whose label is one of the model's
    classes, the only ones it could get right; a warning names the other labels (None: no image
    has one)."""
    nfc = {s: unicodedata.normalize("NFC", s) for s in {*labels, *classes}}  # a macOS folder's NFD name
    known = {nfc[c] for c in classes}  # is the label typed on Linux
    hits = [nfc[p] == nfc[t] for p, t in zip(pred, labels) if nfc[t] in known]
    unknown = sorted({t for t in labels if nfc[t] not in known})
    if unknown:
        names = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        covers = (f"accuracy is over the {len(hits)} others" if hits else "no accuracy")
        warnings.warn(f"{len(labels) - len(hits)} of {len(labels)} images of {data} have labels the model "
                      f"was not fitted on ({len(unknown)} label{'s' * (len(unknown) != 1)}: {names}): {covers}",
                      stacklevel=3)
    return (float(np.mean(hits)) if hits else None), np.array([nfc[t] in known for t in labels], dtype=bool)


verb_module(__name__)
