"""`fne export`: cached activations and the embedding of DATA as one HDF5 file, for other tools.

Rows are copied chunk by chunk, so memory does not grow with the dataset. The file says what
it holds: the backbone and weights fingerprint, the preprocessing actually used, the data root
its relative `paths` are relative to, and how the embedding was standardised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fne import options as opts
from fne import verb_module
from fne.cache.fs import check_target, replace_file
from fne.cache.spec import StoreSpec
from fne.linear.embedding import FullNetworkEmbedding
from fne.linear.features import Rows, Source, open_rows, parse_features
from fne.options import ForwardOptions, RowsOptions


def export(data: str | Path, out: str | Path = "features.h5", store: StoreSpec | None = None,
           **options) -> dict:
    """Cached activations (one dataset `layers/<tap>` per layer) and the embedding, with
    paths/labels/split, written chunk by chunk to one HDF5 file.

    The FNE embedding is standardised with the training rows (the `train` split when DATA
    has one, otherwise all rows); the attribute `fit_rows` says which.

    Parameters
    ----------
    data : str or Path
        Any DATA form.
    out : str or Path
        The HDF5 file to write (replaced whole: written under a temporary name first).
    store : StoreSpec, optional
        Which rows to read.
    **options
        Fields of `fne.options.RowsOptions` (``features``, ``stream_chunk``, ``extract_missing``),
        of `StoreSpec` (overriding `store`'s) and of `fne.options.ForwardOptions`.

    Returns
    -------
    dict
        ``n`` rows written, the HDF5 ``datasets`` and the ``out`` path.
    """
    import h5py

    out = check_target(out, folder=False)
    spec, o, ext = opts.resolve(options, StoreSpec, RowsOptions, ForwardOptions, given={StoreSpec: store})
    features = o.features
    layers, kind = parse_features(features, spec.backbone())
    src = open_rows(data, spec, "export", o.extract_missing, ext)
    dataset, store = src.dataset, src.store
    n = len(dataset)
    fit_rows = np.flatnonzero(np.array(dataset.splits) == "train") if dataset.has_split else np.arange(n)
    rows = Rows(store, dataset.keys(), layers, o.stream_chunk)
    embed = rows.fit_embedding(kind, fit_rows)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:  # under a temporary name: an interrupted export leaves nothing
        with h5py.File(tmp, "w") as f:
            _write_rows(f, rows, embed, layers, dict(store.taps), store.views, n)
            f["embedding"].attrs["kind"] = kind
            f["embedding"].attrs["fit_rows"] = "train split" if dataset.has_split else "all rows"
            if isinstance(embed, FullNetworkEmbedding):
                f["embedding"].attrs["low"], f["embedding"].attrs["high"] = embed.low, embed.high
                f.create_dataset("embedding_mean", data=embed.mean_)
                f.create_dataset("embedding_std", data=embed.std_)
            _write_labels(f, dataset)
            f.attrs.update(_attributes(src, features))

    replace_file(out, write)
    return {"n": n, "datasets": [f"layers/{la}" for la in layers] + ["embedding"], "out": str(out)}


def _write_rows(f, rows: Rows, embed, layers: list[str], dims: dict[str, int], v: int, n: int) -> None:
    """layers/<tap> as float32 and the embedding (int8 for FNE), chunk by chunk."""
    ends = np.cumsum([dims[la] for la in layers])
    # One view: (n, D) datasets; ten-crop stores: (n, views, D).
    shape, squeeze = ((n,), lambda a: a[:, 0]) if v == 1 else ((n, v), lambda a: a)
    targets = [f.create_dataset(f"layers/{la}", shape=(*shape, dims[la]), dtype=np.float32,
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


def _write_labels(f, dataset) -> None:
    import h5py

    str_t = h5py.string_dtype()
    f.create_dataset("paths", data=np.array(dataset.ids, dtype=object), dtype=str_t)
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
            "root": src.dataset.root or "", "store": str(src.store.path)}


verb_module(__name__)
