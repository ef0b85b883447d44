"""`fne export`: cached activations and the embedding of DATA as one HDF5 file, for other tools;
`load_rows`: the same rows as numpy arrays in memory, for a notebook.

Rows are copied chunk by chunk, so memory does not grow with the dataset. The file says what
it holds: the backbone and weights fingerprint, the preprocessing actually used, the data root
its relative `paths` are relative to, which columns of the embedding are which layer, and how
the embedding was standardised (README, "The HDF5 file of `fne export`").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fne import option_handling as opts
from fne import verb_module
from fne.cache.fs import check_target, replace_file
from fne.cache.h5file import h5_writer
from fne.cache.spec import StoreSpec
from fne.data.dataset import Dataset
from fne.linear.embedding import FullNetworkEmbedding, make_transform
from fne.linear.features import Rows, Source, open_rows, parse_features
from fne.option_handling import named, refusal
from fne.options import DataOptions, ForwardOptions, RowsOptions

# The keywords of `export` and `load_rows`, declared in fne.options (`fne export`'s options).
OPTIONS = (StoreSpec, DataOptions, RowsOptions, ForwardOptions)
# --out suffixes of other formats: `fne export` writes HDF5 whatever the name says.
# (a model's among them: `--out RUN/model.pt` would replace a run's network with features)
OTHER_FORMATS = (".csv", ".tsv", ".txt", ".json", ".npy", ".npz", ".parquet", ".pkl", ".pickle", ".mat", ".xlsx",
                 ".pt", ".pth", ".joblib", ".safetensors", ".onnx")


@opts.keywords(*OPTIONS)
def export(data: str | Path | Dataset, out: str | Path, store: StoreSpec | None = None, **options) -> dict:
    """Cached activations (one dataset `layers/<tap>` per layer) and the embedding, with
    paths/labels/split, written chunk by chunk to one HDF5 file.

    The FNE embedding is standardised with the training rows (the `train` split and any
    validation part beside the test part when DATA has one, otherwise all rows), as `fne fit`
    does; the attribute `fit_rows` says which.

    Parameters
    ----------
    data : str, Path or Dataset
        Any DATA form.
    out : str or Path
        The HDF5 file to write (replaced whole: written under a temporary name first).
    store : StoreSpec, optional
        Which rows to read.
    **options
        The options of `fne export`, under the same names with the same defaults (the
        signature lists them): the fields of `StoreSpec` (overriding `store`'s), of
        `fne.options.DataOptions` (``label_key``), of `fne.options.RowsOptions` (``features``,
        ``stream_chunk``, ``extract_missing``) and of `fne.options.ForwardOptions`.

    Returns
    -------
    dict
        ``n`` rows written, the HDF5 ``datasets`` and the ``out`` path.

    Raises
    ------
    DataError
        DATA is missing or cannot be read.
    CacheError
        A store of the cache is damaged, of another fne, or describes other rows than asked for.
    FneError
        Rows are not in the cache and ``extract_missing`` is False.
    """
    out = check_target(out, folder=False, data=data)
    if out.suffix.lower() in OTHER_FORMATS:  # `--out features.csv`: an HDF5 file a spreadsheet cannot open
        raise refusal(lambda py: f"{named('out', py, str(out))}: fne export writes HDF5, not {out.suffix}: name the "
                                 f"file .h5 (README, \"The HDF5 file of `fne export`\", reads it into pandas or numpy)")
    src, o, layers, kind = _source(data, store, options, "export")
    dataset, store = src.dataset, src.store
    n = len(dataset)
    fit_rows = np.flatnonzero(dataset.in_train()) if dataset.has_split else np.arange(n)
    rows = Rows(store, dataset.keys(), layers, o.stream_chunk)
    embed = rows.fit_embedding(kind, fit_rows)
    dims = dict(store.taps)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(f, check) -> None:  # into a temporary file: an interrupted export leaves nothing
        _write_rows(f, rows, embed, layers, dims, store.views, n, check)
        e = f["embedding"].attrs
        e["kind"], e["layers"], e["columns"] = kind, np.array(layers, dtype=object), _columns(layers, dims)
        e["fit_rows"] = "train split" if dataset.has_split else "all rows"
        if isinstance(embed, FullNetworkEmbedding):
            e["low"], e["high"] = embed.low, embed.high
            f.create_dataset("embedding_mean", data=embed.mean_)
            f.create_dataset("embedding_std", data=embed.std_)
        _write_labels(f, dataset)
        f.attrs.update(_attributes(src, o.features))

    replace_file(out, h5_writer(write))  # a full disk: one OSError, the file as it was
    return {"n": n, "datasets": [f"layers/{la}" for la in layers] + ["embedding"], "out": str(out)}


@dataclass
class LoadedRows:
    """DATA's cached rows in memory (`load_rows`): one row per readable image, in DATA's order.

    Attributes
    ----------
    X : numpy.ndarray
        float32 (n, D): the pooled activations of `layers` side by side, as the store holds them
        (not embedded); (n, views, D) for a ten-crop store.
    y : numpy.ndarray or None
        The label of each row (strings); None when DATA has no labels.
    ids : numpy.ndarray
        Each row's image: its path relative to ``attrs["root"]`` (or its name in DATA).
    split : numpy.ndarray or None
        ``"train"`` / ``"test"`` per row when DATA has a predefined split (``"val"`` for a
        validation part beside its test part, which `fne fit` trains on), else None.
    keys : numpy.ndarray
        Each row's content key in the cache (the hash of the image's bytes).
    layers : list of str
        The layers in `X`, in column order; ``columns[layer]`` is its (start, end) in `X`.
    columns : dict
        Layer name -> (start, end) column range of `X`.
    kind : str
        ``"fne"`` (the full-network embedding) or ``"l2"`` (L2-normalised), from ``features``.
    classes : list of str
        The class names, in label-index order.
    attrs : dict
        What the rows are, as `fne export` writes them: arch, weights and fingerprint, store,
        preprocessing, precision, data root.
    """

    X: np.ndarray
    y: np.ndarray | None
    ids: np.ndarray
    split: np.ndarray | None
    keys: np.ndarray
    layers: list[str]
    columns: dict[str, tuple[int, int]]
    kind: str
    classes: list[str]
    attrs: dict

    def make_transform(self):
        """A new, unfitted transform for `kind`: `FullNetworkEmbedding` or `L2Normalizer`.

        Put it in front of a head in a Pipeline, so that its statistics come from the training
        rows of each fit (cross-validation folds included), never from the rows it scores.
        """
        return make_transform(self.kind)


@opts.keywords(*OPTIONS)
def load_rows(data: str | Path | Dataset, store: StoreSpec | None = None, **options) -> LoadedRows:
    """DATA's cached rows as numpy arrays in memory (X, y, ids, split), reading no image.

    What `fne export` writes, without the file and without the embedding: the embedding's
    statistics belong to the training rows of whatever the caller fits, so
    ``make_pipeline(r.make_transform(), LinearSVC())`` standardises inside each fit. Every row
    is held at once (n x D float32); for datasets larger than memory use `export` or `fit`.

    Parameters
    ----------
    data : str, Path or Dataset
        Any DATA form.
    store : StoreSpec, optional
        Which rows to read.
    **options
        The options of `export`, under the same names with the same defaults: the fields of `StoreSpec` (overriding `store`'s),
        of `fne.options.DataOptions` (``label_key``), of `fne.options.RowsOptions` (``features``:
        which layers, default all; ``stream_chunk``; ``extract_missing``) and of
        `fne.options.ForwardOptions`.

    Returns
    -------
    LoadedRows
        The rows, labels, image ids, split, content keys and what the rows are.

    Raises
    ------
    DataError
        DATA is missing or cannot be read.
    CacheError
        A store of the cache is damaged, of another fne, or describes other rows than asked for.
    FneError
        Rows are not in the cache and ``extract_missing`` is False.
    """
    src, o, layers, kind = _source(data, store, options, "load_rows")
    dataset, dims = src.dataset, dict(src.store.taps)
    rows = Rows(src.store, dataset.keys(), layers, o.stream_chunk)
    n, v, d = len(dataset), src.store.views, sum(dims[la] for la in layers)
    X = np.empty((n, v, d), dtype=np.float32)
    for b, chunk in rows.chunks(np.arange(n)):
        X[b] = chunk
    optional = {f: None if getattr(dataset, f) is None else np.array(getattr(dataset, f), dtype=object)
                for f in ("labels", "splits")}
    return LoadedRows(X=X[:, 0] if v == 1 else X, y=optional["labels"], split=optional["splits"],
                      ids=np.array(dataset.ids, dtype=object), keys=np.array(dataset.keys(), dtype=object),
                      layers=layers, columns={la: (int(a), int(b)) for la, (a, b) in zip(layers, _columns(layers, dims))},
                      kind=kind, classes=list(dataset.classes), attrs=_attributes(src, o.features))


def _source(data, store: StoreSpec | None, options: dict, verb: str) -> tuple[Source, RowsOptions, list[str], str]:
    """The options checked, the layers of `features`, and DATA's rows found (or extracted)."""
    spec, d, o, ext = opts.resolve(options, *OPTIONS, given={StoreSpec: store})
    layers, kind = parse_features(o.features, spec.backbone())
    return open_rows(data, spec, verb, o.extract_missing, ext, label_key=d.label_key), o, layers, kind


def _columns(layers: list[str], dims: dict[str, int]) -> np.ndarray:
    """(len(layers), 2) int64: each layer's [start, end) columns in the rows side by side."""
    ends = np.cumsum([dims[la] for la in layers], dtype=np.int64)
    return np.stack([ends - [dims[la] for la in layers], ends], axis=1)


def _write_rows(f, rows: Rows, embed, layers: list[str], dims: dict[str, int], v: int, n: int,
                check: Callable[[], None]) -> None:
    """layers/<tap> as float32 and the embedding (int8 for FNE), chunk by chunk; `check()` after
    each raises where the disk filled (`fne.cache.h5file`)."""
    ends = np.cumsum([dims[la] for la in layers])
    # One view: (n, D) datasets; ten-crop stores: (n, views, D).
    shape, squeeze = ((n,), lambda a: a[:, 0]) if v == 1 else ((n, v), lambda a: a)
    group = f.create_group("layers", track_order=True)  # h5py lists the layers in network order
    targets = [group.create_dataset(la, shape=(*shape, dims[la]), dtype=np.float32,
                                compression="gzip") for la in layers]
    e = f.create_dataset("embedding", shape=(*shape, int(ends[-1])),  # both embeddings keep D
                         dtype=np.int8 if isinstance(embed, FullNetworkEmbedding) else np.float32,
                         compression="gzip")
    for b, X in rows.chunks(np.arange(n)):
        at = np.argsort(b)  # h5py writes rows at increasing positions
        X, b = X[at], b[at]
        for t, part in zip(targets, np.split(X, ends[:-1], axis=2), strict=True):
            t[b] = squeeze(part)
        e[b] = squeeze(embed.transform(X.reshape(-1, X.shape[2])).reshape(len(b), v, -1))
        check()


def _write_labels(f, dataset) -> None:
    import h5py

    str_t = h5py.string_dtype()
    f.create_dataset("paths", data=np.array(dataset.ids, dtype=object), dtype=str_t)
    f.create_dataset("keys", data=np.array(dataset.keys(), dtype=object), dtype=str_t)
    if dataset.labels is not None:
        f.create_dataset("labels", data=np.array(dataset.labels, dtype=object), dtype=str_t)
        f.create_dataset("label_index", data=dataset.label_indices())
        f.attrs["classes"] = np.array(dataset.classes, dtype=object)
    if dataset.splits is not None:
        f.create_dataset("split", data=np.array(dataset.splits, dtype=object), dtype=str_t)


def _attributes(src: Source, features: str) -> dict:
    """What the rows are: backbone, weights, store, preprocessing actually used, data root."""
    spec, meta = src.spec, src.store.meta
    prep = spec.preprocess()
    return {"arch": spec.arch, "weights": spec.weights, "weights_fingerprint": meta["weights"],
            "crop": spec.crop, "precision": meta["precision"], "storage_dtype": meta["dtype"],
            "features": features, "resize": prep.resize, "crop_size": prep.size,
            "mean": np.asarray(prep.mean, dtype=np.float64), "std": np.asarray(prep.std, dtype=np.float64),
            "interpolation": prep.interpolation, "decode": spec.decode,
            "root": _absolute(src.dataset.root or ""), "store": str(src.store.path)}


def _absolute(root: str) -> str:
    """A local data root as an absolute path (the file is read from elsewhere); a URL as it is."""
    return root if not root or "://" in root else os.path.abspath(root)


verb_module(__name__)
