"""`fne predict`: a model saved by `fne fit` applied to new images, through exactly its store.

The model pins its rows: arch, weights fingerprint, preprocessing, precision and storage dtype
are recorded at fit time and read back here. Weights whose file changed since (a rerun of
`fne train` into the same folder, a new checkpoint under the old name) would give rows the
head never saw, so predict refuses them instead of printing a silently wrong accuracy.
"""

from __future__ import annotations

import csv
from pathlib import Path

import joblib
import numpy as np

from fne import verb_module
from fne.backbones import registry as backbones
from fne.cache.spec import StoreSpec
from fne.errors import FneError, WeightsError
from fne.linear.features import Rows, open_rows

MODEL_FORMAT = 2


def load_model(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "model.joblib"
    if not path.is_file():
        raise FneError(f"{run_dir}: no model.joblib (is it a `fne fit` run folder?)")
    model = joblib.load(path)
    if not isinstance(model, dict) or model.get("format") != MODEL_FORMAT:
        raise FneError(f"{path}: not a model written by this version of fne fit (refit it with `fne fit`)")
    return model


def pinned_spec(model: dict, cache: str | None, device: str, where: str) -> StoreSpec:
    """The store spec the model was fitted on; refuses weights that changed since."""
    s = model["store"]
    try:
        now = backbones.fingerprint(s["arch"], s["weights"], s["weights_seed"])
    except WeightsError as e:
        raise FneError(f"{where} was fitted on weights {s['weights']} (fingerprint "
                       f"{s['weights_fingerprint']}), which cannot be read now: {e}") from None
    if now != s["weights_fingerprint"]:
        raise FneError(
            f"the weights at {s['weights']} changed since {where} was fitted: fingerprint {now}, "
            f"the model's {s['weights_fingerprint']}. Its head only fits rows of the old weights: "
            f"restore that file, or fit again on the new weights (`fne fit ... --weights {s['weights']}`)")
    return StoreSpec(s["arch"], s["weights"], s["crop"], s["precision"], s["storage_dtype"], cache or s["cache"],
                     device, s["weights_seed"], s["decode"])


def predict(run_dir: str | Path, data: str | Path, out: str | Path, cache: str | None = None,
            device: str = "auto", batch_size: int | str | None = None, workers: int | None = None) -> dict:
    """Scores and predicted class for every image of DATA with a model saved by `fit`."""
    model = load_model(run_dir)
    spec = pinned_spec(model, cache, device, str(run_dir))
    src = open_rows(data, spec, "predict", True, dict(batch_size=batch_size, workers=workers))
    dataset = src.dataset
    pipe, classes = model["pipeline"], model["classes"]
    scores = Rows(src.store, dataset.keys(), model["layers"]).scores(pipe, np.arange(len(dataset)))
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
    return {"n": len(dataset), "accuracy": acc, "out": str(out), "store": str(src.store.path)}


verb_module(__name__)
