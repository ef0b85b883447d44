"""The rows of `fne report`'s tables: one row from one run's metrics.json (values verbatim), or
from several runs of one setting (pooled over their splits; their 95% intervals recomputed,
`fne.reporting.intervals`), with the extraction that computed their rows (`extraction`).
`fne.reporting.report` groups the runs, ranks the rows and names the best."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from fne.linear import compare
from fne.reporting.intervals import confusion_matrix, finite, pooled_intervals, recorded_intervals
from fne.reporting.settings import settings


def is_scratch(m: dict) -> bool:
    """Training from a random initialisation is the experiment itself, not missing weights."""
    return m.get("mode") == "scratch" or str(m.get("method")) == "train:scratch"


def backbone_label(m: dict) -> str:
    if is_scratch(m):
        return f"{m.get('arch', '?')} (random init)"
    return f"{m.get('arch', '?')} ({m.get('weights', '?')})"


def extraction(run: dict) -> tuple[float | None, bool]:
    """(measured seconds of the extraction that computed this run's rows, True if none ran for it).

    `fne run` records the extraction in step.json ("extract"): its measured seconds when it
    computed rows, else the rows were cached. Without that record, metrics.json's "rows" says
    whether `fne fit` extracted (extract_seconds: measured) or read cached rows. A run written
    before fit recorded "rows": extract_seconds is measured when `fne fit --extract` extracted;
    when it equals n_images / extract_images_per_s, it is fit's estimate from the store's past
    rate: cached.
    """
    ex = run["step"].get("extract")
    if isinstance(ex, dict):
        return (finite(ex.get("seconds")), False) if ex.get("n_computed") else (None, True)
    m = run["metrics"]
    s, rate = finite(m.get("extract_seconds")), finite(m.get("extract_images_per_s"))
    if m.get("rows") in ("cached", "extracted"):
        return (None, True) if m["rows"] == "cached" else (s, False)
    if s is not None and rate and isinstance(m.get("n_images"), int) and s == m["n_images"] / rate:
        return None, True
    return s, False


def earlier_extraction(run: dict) -> float | None:
    """Seconds that an earlier extraction took to compute the rows a fit on cached rows read, as
    its metrics.json's extract_cost records them from the store (`fne.cache.cost.rows_cost`);
    None where the fit extracted its rows itself, or records no such cost (a run written before
    fit recorded it, a store without extraction records)."""
    seconds, cached = extraction(run)
    cost = run["metrics"].get("extract_cost")
    if seconds is not None or not cached or not isinstance(cost, dict):
        return None
    return finite(cost.get("seconds"))


def _confusion(run: dict) -> bool:
    """Whether a run's metrics.json records a confusion matrix; one that is not a matrix of
    counts of its classes is left out of the row's figures, with a warning naming the file."""
    v, classes = run["metrics"].get("confusion"), run["metrics"].get("classes")
    if v is None or (isinstance(v, list) and not v):
        return False
    if confusion_matrix(v, classes) is None:
        n = f"{len(classes)}x{len(classes)} " if isinstance(classes, list) else ""
        warnings.warn(f"{Path(run['path']) / 'metrics.json'}: its confusion is not a {n}matrix of counts: left out "
                      f"of the report's confusion figures", stacklevel=2)
        return False
    return True


def table_row(runs: list[dict]) -> dict:
    """One table row from one run (values verbatim) or several (pooled over their splits)."""
    ms = [r["metrics"] for r in runs]
    m0 = ms[0]
    row = {
        "method": str(m0.get("method", "?")),
        "kind": m0.get("kind"),
        "backbone": backbone_label(m0),
        "arch": m0.get("arch"), "weights": m0.get("weights"),
        "weights_fingerprint": None if is_scratch(m0) else m0.get("weights_fingerprint"),
        "settings": settings(runs[0]), "variant": None,
        "runs": len(runs),
        "seeds": sorted({m.get("seed") for m in ms if isinstance(m.get("seed"), int)}),
        "scratch": is_scratch(m0),
        "partial": bool(m0.get("n_excluded")),  # scored on a subset of the classes: not comparable
        "paths": [r["path"] for r in runs],
        "n_images": m0.get("n_images"), "n_train": m0.get("n_train"), "n_test": m0.get("n_test"),
        "n_splits": m0.get("n_splits", len(m0.get("splits") or []) or None),
        "classes": m0.get("classes"),
        # direct mode scores only the classes its class map covers: say so beside the method
        "note": (f"{len(m0.get('classes') or [])} mapped classes; {m0['n_excluded']} test images of "
                 f"unmapped classes left out" if m0.get("n_excluded") else _choices(ms)),
        "repeats": [p for r in runs for p in r.get("repeats", [])],
    }
    if row["repeats"]:
        row["note"] = "; ".join(n for n in (row["note"], f"{len(row['repeats'])} run(s) repeating one counted "
                                            f"once (the same seed and predictions)") if n)
    if len(ms) == 1:
        for k in ("accuracy", "accuracy_std", "mean_class_accuracy", "mean_class_accuracy_std"):
            # one split has no spread: metrics.json's std of 0.0 is no measurement of one (report.csv: empty)
            row[k] = None if k.endswith("_std") and row["n_splits"] == 1 else finite(m0.get(k))
        row["seconds"] = finite(m0.get("fit_seconds", m0.get("train_seconds")))
        row["extract_seconds"], row["extract_cached"] = extraction(runs[0])
        row["extract_runs"] = int(row["extract_seconds"] is not None)
        row["extract_earlier_seconds"] = earlier_extraction(runs[0])
        row["confusion"] = m0["confusion"] if _confusion(runs[0]) else None
        row["accuracy_ci"], row["mean_class_accuracy_ci"], row["no_interval"] = recorded_intervals(m0)
        return row
    splits = [s for m in ms for s in (m.get("splits") or [{"accuracy": m.get("accuracy"),
                                                           "mean_class_accuracy": m.get("mean_class_accuracy")}])]
    for k in ("accuracy", "mean_class_accuracy"):
        vals = np.array([v for v in (finite(s.get(k)) for s in splits) if v is not None])
        whole = 0 < len(vals) == len(splits)  # a split without it (a run recorded before fne kept it): none
        row[k] = float(vals.mean()) if whole else None
        row[k + "_std"] = float(vals.std()) if whole else None
    vals = [v for m in ms for v in [finite(m.get("fit_seconds", m.get("train_seconds")))] if v is not None]
    row["seconds"] = float(np.mean(vals)) if vals else None
    ext = [extraction(r) for r in runs]
    measured = [s for s, _ in ext if s is not None]
    row["extract_seconds"] = float(np.mean(measured)) if measured else None
    row["extract_runs"] = len(measured)  # the runs it is the mean of: those that extracted (the others read cached rows)
    row["extract_cached"] = not measured and any(c for _, c in ext)
    earlier = [e for e in map(earlier_extraction, runs) if e is not None]
    row["extract_earlier_seconds"] = float(np.mean(earlier)) if earlier and not measured else None
    row["n_splits"] = len(splits)
    conf = [np.asarray(r["metrics"]["confusion"]) for r in runs if _confusion(r)]
    row["confusion"] = (sum(conf[1:], conf[0]).tolist()
                        if conf and all(c.shape == conf[0].shape for c in conf) else None)
    row["accuracy_ci"], row["mean_class_accuracy_ci"], row["no_interval"] = pooled_intervals(runs, splits)
    return row


def _choices(ms: list[dict]) -> str | None:
    """What fit's auto selection chose (`compare.choice_note`): one choice, or where the runs of a
    pooled row chose differently, each seed's (the first run's alone read as the row's)."""
    notes = [compare.choice_note(m) for m in ms]
    if len(set(notes)) == 1:
        return notes[0]
    return "auto chose, by seed: " + "; ".join(f"{m.get('seed', '?')}: {(n or 'nothing').removeprefix('auto chose ')}"
                                               for m, n in zip(ms, notes, strict=True))
