"""`fne fit`, `fne predict`, `fne export`: linear heads on cached activations.

fit never runs the network on its own: rows missing from the cache are an error that gives
the `fne extract` command, unless the caller asks for extraction (`extract_missing`).
"""

from __future__ import annotations

import csv
import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import joblib
import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from fne import backbones, verb_module
from fne.cache import Store
from fne.data import Dataset, load_dataset
from fne.embedding import FullNetworkEmbedding, make_transform
from fne.errors import FneError
from fne.extract import StoreSpec, extract
from fne.heads import C_GRID, make_head, parse_C
from fne.metrics import provenance, split_scores
from fne.names import HEADS

MODEL_FORMAT = 1


# ------------------------------------------------------------------ features
def parse_features(spec: str, backbone: backbones.Backbone) -> tuple[list[str], str]:
    """`fne` | `fne:L1,L2` -> (layers, "fne"); `last` | `fc7` | `L1,L2` -> (layers, "l2")."""
    spec = spec.strip()
    if spec == "fne":
        return [t.name for t in backbone.taps], "fne"
    kind = "l2"
    if spec.startswith("fne:"):
        kind, spec = "fne", spec[4:]
    names = [backbone.last if s.strip() == "last" else s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise FneError(f"bad --features {spec!r}; use fne, fc6, fc7, last or layer names")
    for n in names:
        backbone.tap(n)  # raises with the list of layers
    return names, kind


def _store_spec(kw: dict) -> StoreSpec:
    return StoreSpec(kw["arch"], kw["weights"], kw["crop"], kw["precision"], kw["storage_dtype"],
                     kw["cache"], kw["device"], kw["weights_seed"], kw.get("decode", "pil"))


def _extract_command(data, kw: dict) -> str:
    parts = [f"fne extract {data} --arch {kw['arch']} --weights {kw['weights']}"]
    defaults = {"crop": "center", "precision": "auto", "storage_dtype": "float16", "cache": None}
    for k, d in defaults.items():
        if kw.get(k) != d:
            parts.append(f"--{k.replace('_', '-')} {kw[k]}")
    return " ".join(parts)


def _cached_subset(dataset: Dataset, store: Store, data, kw: dict, extract_missing: bool,
                   extract_kw: dict, action: str) -> tuple[Dataset, float | None]:
    """The dataset restricted to images with cached rows; extraction seconds if it extracted."""
    keys = dataset.keys()
    missing = store.missing(keys)
    seconds = None
    if missing:
        if not extract_missing:
            raise FneError(
                f"{len(missing)} of {len(set(keys))} images of {data} are not in the cache "
                f"{store.path}; add them with:\n  {_extract_command(data, kw)}\n"
                f"(or pass --extract to let `fne {action}` run the network)")
        print(f"fne {action}: extracting {len(missing)} images missing from the cache")
        r = extract(dataset, kw["arch"], kw["weights"], cache=kw["cache"], crop=kw["crop"],
                    precision=kw["precision"], storage_dtype=kw["storage_dtype"], device=kw["device"],
                    weights_seed=kw["weights_seed"], **extract_kw)
        seconds = r.seconds
        store.refresh()
    bad = store.bad()
    keep = [i for i, k in enumerate(keys) if k not in bad]
    if len(keep) < len(keys):
        skipped = [dataset.ids[i] for i, k in enumerate(keys) if k in bad]
        warnings.warn(f"{len(skipped)} unreadable image(s) left out: {', '.join(skipped[:5])}", stacklevel=3)
        dataset = dataset.subset(keep)
    if len(dataset) == 0:
        raise FneError(f"{data}: no readable images")
    return dataset, seconds


def _extract_rate(store: Store) -> float | None:
    done = [(r.get("n_computed", 0), r.get("stage_seconds", {}).get("run", 0.0)) for r in store.records()]
    n = sum(a for a, _ in done)
    s = sum(b for _, b in done)
    return n / s if n and s else None


# -------------------------------------------------------------------- splits
def make_splits(dataset: Dataset, y: np.ndarray, splits: int, test_size: float,
                train_per_class: int | None, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if dataset.has_split:
        s = np.array(dataset.splits)
        tr, te = np.flatnonzero(s == "train"), np.flatnonzero(s == "test")
        if len(tr) == 0 or len(te) == 0:
            raise FneError(f"{dataset.name}: predefined split needs both train and test images")
        return [(tr, te)]
    if splits < 1:
        raise FneError(f"--splits must be >= 1, got {splits}")
    counts = np.bincount(y, minlength=len(dataset.classes))
    if train_per_class is not None:
        short = [dataset.classes[c] for c in range(len(counts)) if counts[c] <= train_per_class]
        if train_per_class < 1 or short:
            raise FneError(f"--train-per-class {train_per_class}: classes with too few images "
                           f"to keep test images: {', '.join(short[:5]) or '-'}")
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(splits):
            tr = np.concatenate([rng.choice(np.flatnonzero(y == c), train_per_class, replace=False)
                                 for c in range(len(counts)) if counts[c]])
            out.append((np.sort(tr), np.setdiff1d(np.arange(len(y)), tr)))
        return out
    if not 0 < test_size < 1:
        raise FneError(f"--test-size must be in (0, 1), got {test_size}")
    if counts[counts > 0].min() < 2:
        raise FneError(f"{dataset.name}: every class needs at least 2 images for a random split")
    sss = StratifiedShuffleSplit(n_splits=splits, test_size=test_size, random_state=seed)
    return list(sss.split(np.zeros(len(y)), y))


# ----------------------------------------------------------------- scoring
def class_scores(model, X: np.ndarray) -> np.ndarray:
    """(n, views, D) -> (n, classes): probabilities (logreg) or margins, averaged over views.

    `model` is a fitted pipeline on store rows, or a bare head on embedded rows.
    """
    n, v, d = X.shape
    flat = X.reshape(n * v, d)
    s = model.predict_proba(flat) if hasattr(model, "predict_proba") else model.decision_function(flat)
    if s.ndim == 1:  # binary margins
        s = np.stack([-s, s], axis=1)
    return s.reshape(n, v, -1).mean(axis=1)


# -------------------------------------------------------------------- rows
SGD_EPOCHS = 10


class Rows:
    """Store rows read in chunks that each touch few parts, so no head ever holds every float row.

    In-memory heads (svm, logreg) get the embedding built chunk by chunk (int8 for FNE, a
    quarter of the float32 rows); SGD heads never hold more than one chunk.
    """

    def __init__(self, store: Store, keys: list[str], layers: list[str], chunk: int = 1024):
        if chunk < 1:
            raise FneError(f"--stream-chunk must be >= 1, got {chunk}")
        # chunk counts rows (image views): a ten-crop store reads a tenth as many images at a time
        self.store, self.keys, self.layers = store, keys, layers
        self.chunk = max(1, chunk // store.views)

    def chunks(self, idx: np.ndarray, rng: np.random.Generator | None = None):
        """(positions in idx, (n, views, D) float32) per chunk, part by part; shuffled when given rng."""
        index = self.store.index()
        order = np.array(sorted(range(len(idx)), key=lambda p: index[self.keys[idx[p]]]), dtype=np.int64)
        blocks = [order[s:s + self.chunk] for s in range(0, len(order), self.chunk)]
        if rng is not None:  # blocks in random order, rows shuffled within each
            rng.shuffle(blocks)
            blocks = [rng.permutation(b) for b in blocks]
        for b in blocks:
            arrays = self.store.read([self.keys[i] for i in idx[b]], self.layers)
            yield b, np.concatenate([arrays[la] for la in self.layers], axis=2)

    def fit_embedding(self, kind: str, idx: np.ndarray):
        """The transform fitted on rows idx only (FNE statistics accumulate chunk by chunk)."""
        embed = make_transform(kind)
        if kind != "fne":  # L2 normalisation is stateless
            _, X = next(self.chunks(idx[:1]))
            return embed.fit(X[:, 0])
        for _, X in self.chunks(idx):
            embed.partial_fit(X.reshape(-1, X.shape[2]))
        return embed

    def embedded(self, embed, idx: np.ndarray) -> np.ndarray:
        """(len(idx) * views, D): rows in idx order, an image's views consecutive."""
        v = self.store.views
        out = None
        for b, X in self.chunks(idx):
            Z = embed.transform(X.reshape(-1, X.shape[2])).reshape(len(b), v, -1)
            if out is None:
                out = np.empty((len(idx), v, Z.shape[2]), dtype=Z.dtype)
            out[b] = Z
        return out.reshape(len(idx) * v, -1)

    def scores(self, pipe, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), len(pipe.classes_)))
        for b, X in self.chunks(idx):
            out[b] = class_scores(pipe, X)
        return out


def _fit_in_memory(rows: Rows, kind: str, head: str, C: float, y: np.ndarray, idx: np.ndarray,
                   seed: int) -> Pipeline:
    """Views become training samples; only the embedding of rows idx is held."""
    embed = rows.fit_embedding(kind, idx)
    clf = make_head(head, C, seed).fit(rows.embedded(embed, idx), np.repeat(y[idx], rows.store.views))
    return Pipeline([("embed", embed), ("head", clf)])


def _fit_sgd(rows: Rows, kind: str, head: str, C: float, y: np.ndarray, idx: np.ndarray,
             seed: int) -> Pipeline:
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
    return Pipeline([("embed", embed), ("scale", scale), ("head", clf)])


def fit_head(rows: Rows, kind: str, head: str, C: float | str, y: np.ndarray, idx: np.ndarray,
             seed: int = 0) -> tuple[Pipeline, float]:
    """Fit embedding + head on rows idx; with C='auto' pick C on a validation part of them.

    The validation part is carved from the training images only (Kornblith et al. 2019's
    linear-probe protocol; all views of an image on one side), its embedding is fitted on the
    rest, and the chosen C is refitted on every training image. Returns (pipeline, C used).
    """
    fitter = _fit_sgd if head.startswith("sgd") else _fit_in_memory
    if C != "auto":
        return fitter(rows, kind, head, C, y, idx, seed), C
    if head.startswith("sgd"):
        raise FneError("--C auto is not available with SGD heads; give a number")
    counts = np.bincount(y[idx])
    counts = counts[counts > 0]
    if counts.min() < 2:
        raise FneError("--C auto needs at least 2 training images per class")
    val = StratifiedShuffleSplit(n_splits=1, test_size=max(0.2, len(counts) / len(idx)), random_state=seed)
    sub, held = next(val.split(np.zeros(len(idx)), y[idx]))
    sub, held = idx[sub], idx[held]
    embed = rows.fit_embedding(kind, sub)
    v = rows.store.views
    Z_sub, Z_held = rows.embedded(embed, sub), rows.embedded(embed, held)
    accuracy = []
    for c in C_GRID:
        clf = make_head(head, c, seed).fit(Z_sub, np.repeat(y[sub], v))
        pred = clf.classes_[class_scores(clf, Z_held.reshape(len(held), v, -1)).argmax(axis=1)]
        accuracy.append(float(np.mean(pred == y[held])))
    best = C_GRID[int(np.argmax(accuracy))]  # the smallest C among ties: the most regularised
    return fitter(rows, kind, head, best, y, idx, seed), best


# -------------------------------------------------------------------- fit
def fit(
    data: str | Path,
    features: str = "fne",
    head: str = "svm",
    C: str | float = 1.0,
    splits: int = 5,
    test_size: float = 0.25,
    train_per_class: int | None = None,
    seed: int = 0,
    out: str | Path = "runs/fit",
    extract_missing: bool = False,
    arch: str = "vgg16",
    weights: str = "imagenet",
    crop: str = "center",
    precision: str = "auto",
    storage_dtype: str = "float16",
    cache: str | None = None,
    device: str = "auto",
    weights_seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    compile: bool | str = "auto",
    stream_chunk: int = 1024,
) -> dict:
    """Fit and evaluate a linear head on cached features; writes metrics.json and model.joblib."""
    if head not in HEADS:
        raise FneError(f"unknown --head {head!r}; choose from {', '.join(HEADS)}")
    C = parse_C(C)
    kw = dict(arch=arch, weights=weights, crop=crop, precision=precision, storage_dtype=storage_dtype,
              cache=cache, device=device, weights_seed=weights_seed)
    dataset = load_dataset(data)
    if dataset.labels is None:
        raise FneError(f"{data}: fit needs labels")
    backbone = backbones.get(arch)
    layers, kind = parse_features(features, backbone)
    spec = _store_spec(kw)
    store = spec.open()
    dataset, extract_s = _cached_subset(dataset, store, data, kw, extract_missing,
                                        dict(batch_size=batch_size, workers=workers, compile=compile), "fit")
    y = dataset.label_indices()
    rows = Rows(store, dataset.keys(), layers, stream_chunk)
    split_list = make_splits(dataset, y, splits, test_size, train_per_class, seed)

    k = len(dataset.classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    per_split, Cs = [], []
    t0 = time.perf_counter()
    pipe = None
    for tr, te in split_list:
        pipe, c_used = fit_head(rows, kind, head, C, y, tr, seed)
        pred = pipe.classes_[rows.scores(pipe, te).argmax(axis=1)]
        scores, conf = split_scores(y[te], pred, k)
        per_split.append({**scores, "n_train": int(len(tr)), "n_test": int(len(te))})
        Cs.append(c_used)
        confusion += conf
    fit_seconds = (time.perf_counter() - t0) / len(split_list)
    if not dataset.has_split:  # the saved model learns from every labelled image
        pipe = fit_head(rows, kind, head, Cs[0] if C == "auto" else C, y, np.arange(len(y)), seed)[0]

    acc = np.array([s["accuracy"] for s in per_split])
    mca = np.array([s["mean_class_accuracy"] for s in per_split])
    rate = _extract_rate(store)
    precision_used = store.meta["precision"]
    metrics = {
        "kind": "fit",
        "method": f"{features}+{head}",
        "dataset": dataset.name,
        "data": str(data),
        "accuracy": float(acc.mean()), "accuracy_std": float(acc.std()),
        "mean_class_accuracy": float(mca.mean()), "mean_class_accuracy_std": float(mca.std()),
        "splits": per_split, "n_splits": len(per_split),
        "n_train": int(round(np.mean([s["n_train"] for s in per_split]))),
        "n_test": int(round(np.mean([s["n_test"] for s in per_split]))),
        "n_images": len(dataset),
        "classes": dataset.classes,
        "arch": arch, "weights": weights, "weights_fingerprint": store.meta["weights"],
        "precision": precision_used, "crop": crop, "storage_dtype": storage_dtype,
        "features": features, "layers": layers, "embedding": kind, "head": head,
        "C": Cs[0] if len(set(Cs)) == 1 else Cs,
        "fit_seconds": fit_seconds,
        "extract_seconds": extract_s if extract_s is not None else (len(dataset) / rate if rate else None),
        "extract_images_per_s": rate,
        "confusion": confusion.tolist(),
        "seed": seed, "split_protocol": "predefined" if dataset.has_split else (
            f"{len(per_split)}x {train_per_class} per class" if train_per_class
            else f"{len(per_split)}x stratified test_size={test_size}"),
        "store": str(store.path),
        **provenance(),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    joblib.dump({
        "format": MODEL_FORMAT, "pipeline": pipe, "classes": dataset.classes,
        "features": features, "layers": layers, "embedding": kind, "head": head,
        "store_spec": {**asdict(spec), "precision": precision_used}, "views": store.views, "thresholds": (
            {"low": pipe.named_steps["embed"].low, "high": pipe.named_steps["embed"].high}
            if kind == "fne" else None),
    }, out / "model.joblib")
    return metrics


# ----------------------------------------------------------------- predict
def predict(run_dir: str | Path, data: str | Path, out: str | Path, cache: str | None = None,
            device: str = "auto", batch_size: int = 32, workers: int | None = None) -> dict:
    """Scores and predicted class for every image of DATA with a model saved by `fit`."""
    path = Path(run_dir) / "model.joblib"
    if not path.is_file():
        raise FneError(f"{run_dir}: no model.joblib (is it a `fne fit` run folder?)")
    model = joblib.load(path)
    if not isinstance(model, dict) or model.get("format") != MODEL_FORMAT:
        raise FneError(f"{path}: not a model written by this version of fne fit")
    kw = dict(model["store_spec"])
    kw["storage_dtype"] = kw.pop("dtype")
    if cache is not None:
        kw["cache"] = cache
    kw["device"] = device
    dataset = load_dataset(data)
    spec = _store_spec(kw)
    store = spec.open()
    dataset, _ = _cached_subset(dataset, store, data, kw, True, dict(batch_size=batch_size, workers=workers),
                                "predict")
    pipe, classes = model["pipeline"], model["classes"]
    scores = Rows(store, dataset.keys(), model["layers"]).scores(pipe, np.arange(len(dataset)))
    pred = [classes[c] for c in pipe.classes_[scores.argmax(axis=1)]]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    score_cols = [f"score_{classes[c]}" for c in pipe.classes_]
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "predicted", *score_cols] + (["true"] if dataset.labels else []))
        for i in range(len(dataset)):
            row = [dataset.ids[i], pred[i], *(f"{v:.6g}" for v in scores[i])]
            w.writerow(row + ([dataset.labels[i]] if dataset.labels else []))
    acc = None
    if dataset.labels:
        acc = float(np.mean([p == t for p, t in zip(pred, dataset.labels)]))
    return {"n": len(dataset), "accuracy": acc, "out": str(out)}


# ------------------------------------------------------------------ export
def export(data: str | Path, features: str = "fne", out: str | Path = "features.h5",
           extract_missing: bool = False, arch: str = "vgg16", weights: str = "imagenet",
           crop: str = "center", precision: str = "auto", storage_dtype: str = "float16",
           cache: str | None = None, device: str = "auto", weights_seed: int = 0,
           batch_size: int = 32, workers: int | None = None, compile: bool | str = "auto",
           stream_chunk: int = 1024) -> dict:
    """Cached activations (one dataset per layer) and the embedding, with paths/labels/split.

    The FNE embedding is standardised with the training rows (the `train` split when DATA
    has one, otherwise all rows); the attribute `fit_rows` says which. Rows are copied chunk
    by chunk, so memory does not grow with the dataset.
    """
    import h5py

    kw = dict(arch=arch, weights=weights, crop=crop, precision=precision, storage_dtype=storage_dtype,
              cache=cache, device=device, weights_seed=weights_seed)
    dataset = load_dataset(data)
    layers, kind = parse_features(features, backbones.get(arch, weights))
    spec = _store_spec(kw)
    prep = spec.preprocess()
    store = spec.open()
    dataset, _ = _cached_subset(dataset, store, data, kw, extract_missing,
                                dict(batch_size=batch_size, workers=workers, compile=compile), "export")
    n, v = len(dataset), store.views
    fit_rows = np.arange(n)
    if dataset.has_split:
        fit_rows = np.flatnonzero(np.array(dataset.splits) == "train")
    rows = Rows(store, dataset.keys(), layers, stream_chunk)
    embed = rows.fit_embedding(kind, fit_rows)
    dims = dict(store.taps)
    ends = np.cumsum([dims[la] for la in layers])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    str_t = h5py.string_dtype()
    with h5py.File(tmp, "w") as f:
        # One view: (n, D) datasets, as before; ten-crop stores: (n, views, D).
        shape, squeeze = ((n,), lambda a: a[:, 0]) if v == 1 else ((n, v), lambda a: a)
        targets = [f.create_dataset(f"layers/{la}", shape=(*shape, dims[la]), dtype=np.float32,
                                    compression="gzip") for la in layers]
        e = f.create_dataset("embedding", shape=(*shape, int(ends[-1])),  # both embeddings keep D
                             dtype=np.int8 if kind == "fne" else np.float32, compression="gzip")
        for b, X in rows.chunks(np.arange(n)):
            at = np.argsort(b)  # h5py writes rows at increasing positions
            X, b = X[at], b[at]
            for t, part in zip(targets, np.split(X, ends[:-1], axis=2)):
                t[b] = squeeze(part)
            e[b] = squeeze(embed.transform(X.reshape(-1, X.shape[2])).reshape(len(b), v, -1))
        e.attrs["kind"] = kind
        e.attrs["fit_rows"] = "train split" if dataset.has_split else "all rows"
        if isinstance(embed, FullNetworkEmbedding):
            e.attrs["low"], e.attrs["high"] = embed.low, embed.high
            f.create_dataset("embedding_mean", data=embed.mean_)
            f.create_dataset("embedding_std", data=embed.std_)
        f.create_dataset("paths", data=np.array(dataset.ids, dtype=object), dtype=str_t)
        if dataset.labels is not None:
            f.create_dataset("labels", data=np.array(dataset.labels, dtype=object), dtype=str_t)
            f.create_dataset("label_index", data=dataset.label_indices())
            f.attrs["classes"] = np.array(dataset.classes, dtype=object)
        if dataset.splits is not None:
            f.create_dataset("split", data=np.array(dataset.splits, dtype=object), dtype=str_t)
        f.attrs.update({"arch": arch, "weights": weights, "weights_fingerprint": store.meta["weights"],
                        "crop": crop, "precision": store.meta["precision"], "features": features,
                        "resize": prep.resize, "crop_size": prep.size, "mean": list(prep.mean),
                        "std": list(prep.std), "interpolation": prep.interpolation,
                        "root": str(Path(data).resolve()) if isinstance(data, (str, Path)) and Path(data).exists()
                        else (data.name if isinstance(data, Dataset) else str(data))})
    tmp.replace(out)
    return {"n": n, "datasets": [f"layers/{la}" for la in layers] + ["embedding"], "out": str(out)}


verb_module(__name__)
