"""The 95% confidence intervals of `fne report`'s rows: metrics.json's, or recomputed over pooled splits.

A row of one run shows the `accuracy_ci` / `mean_class_accuracy_ci` its metrics.json records
(`fne.metrics`); a row pooled over seeds (fne.reporting.rows) gets them recomputed over all its
runs' splits where that is the interval one run of those splits would have recorded, and none,
with the reason, where it is not.
"""

from __future__ import annotations

import math
import re

import numpy as np
from scipy import stats

from fne.metrics import accuracy_interval, mean_class_interval

SHARED = ("its runs were scored on the same test images (a predefined split, or one seed twice) and differ: their "
          "spread across seeds is the training's alone and leaves out the test images' sampling")


def finite(v) -> float | None:
    """v as a finite float; None for anything else (missing, text, NaN, infinite)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def recorded(v) -> dict | None:
    """metrics.json's accuracy_ci / mean_class_accuracy_ci as the report keeps it: {low, high, level,
    method}; None where not recorded."""
    if not isinstance(v, dict) or finite(v.get("low")) is None or finite(v.get("high")) is None:
        return None
    return {"low": finite(v["low"]), "high": finite(v["high"]), "level": finite(v.get("level")) or 0.95,
            "method": str(v.get("method") or "?")}


def recorded_intervals(m: dict) -> tuple[dict | None, dict | None, str | None]:
    """(accuracy interval, mean class interval, why one is missing) of a row of one run: its metrics.json's."""
    acc, mca = recorded(m.get("accuracy_ci")), recorded(m.get("mean_class_accuracy_ci"))
    missing = [k for k, ci in (("accuracy_ci", acc), ("mean_class_accuracy_ci", mca)) if ci is None]
    return acc, mca, (f"its metrics.json does not record {' or '.join(missing)} (a run written before fne kept "
                      f"intervals)" if missing else None)


def pooled_intervals(runs: list[dict], splits: list[dict]) -> tuple[dict | None, dict | None, str | None]:
    """(accuracy interval, mean class interval, why one is missing) of a row pooled over seeds.

    Parameters
    ----------
    runs : list of dict
        The row's runs ({"metrics": metrics.json, ...}), of one setting but the seed.
    splits : list of dict
        metrics.json's per-split records of all the runs.

    Returns
    -------
    tuple
        Runs on random splits are more random train/test splits of the same images:
        `fne.metrics.accuracy_interval` / `mean_class_interval` over all their splits (Nadeau &
        Bengio's corrected t over K × seeds splits) is the interval one run of those splits would
        record. Runs scored on the same test images (a predefined split, or one seed twice) whose
        figures differ get none: their spread is the training's alone. Where every split gave one
        figure, one split's interval (Wilson; Price & Bonett from the first run's confusion matrix
        when that run has one split) is the interval, shared test images or not.
    """
    m0 = runs[0]["metrics"]
    protocol, hashes = str(m0.get("split_protocol") or ""), [s.get("test_hash") for s in splits]
    known = [str(h) for h in hashes if h]
    shared = (True if protocol.startswith("predefined") or len(set(known)) < len(known)
              else False if protocol or len(known) == len(hashes) else None)  # None: unknown
    one = confusion_matrix(m0.get("confusion")) if len(m0.get("splits") or []) == 1 else None  # one split's matrix
    acc, why_acc = _pooled("accuracy", splits, shared, one, len(runs))
    mca, why_mca = _pooled("mean_class_accuracy", splits, shared, one, len(runs))
    why = why_acc if why_acc == why_mca else "; ".join(
        f"{name}: {w}" for name, w in (("accuracy", why_acc), ("mean class accuracy", why_mca)) if w) or None
    return acc, mca, why


def confusion_matrix(v, classes=None) -> np.ndarray | None:
    """A recorded confusion matrix: square, of counts (finite, not negative) of some test image,
    one row per class where `classes` is a list; None for anything else."""
    try:
        c = np.asarray(v, dtype=float)
    except (TypeError, ValueError):  # a string, ragged lists
        return None
    if c.ndim != 2 or c.shape[0] != c.shape[1] or not np.isfinite(c).all() or (c < 0).any() or c.sum() <= 0:
        return None
    return c if not isinstance(classes, list) or len(classes) == len(c) else None


def _pooled(key: str, splits: list[dict], shared: bool | None, one, n_runs: int) -> tuple[dict | None, str | None]:
    """One figure's interval over the pooled splits of `n_runs` runs, or (None, why)."""
    v = np.array([finite(s.get(key)) for s in splits], dtype=float)
    if np.isnan(v).any() or not all((finite(s.get("n_test")) or 0) > 0 for s in splits):
        return None, "not recorded for every split of its runs (the figure and its number of test images)"
    if np.ptp(v) <= 1e-12:  # every split of every seed gave one figure: one split's interval
        if key != "accuracy" and one is None:
            return None, "every split gave one figure, and no single split's confusion matrix is recorded"
        ci = accuracy_interval(splits) if key == "accuracy" else mean_class_interval(splits, one)
        return {**ci, "method": _same_figure(ci["method"], len(splits), n_runs, shared)}, None
    if shared is None:
        return None, "its runs record neither their split protocol nor their test images: whether they share them is unknown"
    if shared:
        return None, SHARED
    if not all((finite(s.get("n_train")) or 0) > 0 for s in splits):
        return None, ("its runs record no training images per split (direct mode learns from none): the corrected t "
                      "interval, whose correction is n_test / n_train, does not apply")
    return (accuracy_interval(splits) if key == "accuracy" else mean_class_interval(splits, None)), None


def few_splits_note(rows: list[dict], labels: list[str]) -> str | None:
    """A note where a row's interval is the corrected t over 2 random splits: t with 1 degree of
    freedom (12.7 at 95%, 2.8 over 5 splits), an interval wide by construction wherever the two
    splits differ (most of 0–100 % where they differ by a few points), not by a fault; None where
    no row's is.

    Parameters
    ----------
    rows : list of dict
        A report section's rows, their `accuracy_ci` / `mean_class_accuracy_ci` as tabulated.
    labels : list of str
        The rows' names, as the table prints them.
    """
    two = [name for r, name in zip(rows, labels, strict=True)
           if any(_t_splits(r.get(k)) == 2 for k in ("accuracy_ci", "mean_class_accuracy_ci"))]
    if not two:
        return None
    t, t5 = float(stats.t.ppf(0.975, 1)), float(stats.t.ppf(0.975, 4))
    return (f"2 splits ({', '.join(two)}): the 95% interval is the corrected t with 1 degree of freedom (t = {t:.1f}, "
            f"against {t5:.1f} over 5 splits), so wide by construction wherever the two splits differ, not by a fault; "
            f"use --splits 5 or more for an interval that tells methods apart.")


def _same_figure(method: str, k: int, n_runs: int, shared: bool | None) -> str:
    """`fne.metrics`' interval `method` of one run's `k` splits that all gave one figure, reworded
    for `k` splits pooled over `n_runs` runs: "each of the 2 splits" was untrue of one predefined
    split scored by two seeds' runs."""
    same = ", scored on the same test images," if shared else ""
    whose = (f"each of its {n_runs} runs{same}" if k == n_runs and shared else
             f"each of the {k} splits, one per run," if k == n_runs else f"each of the {k} splits of its {n_runs} runs{same}")
    method = method.replace(", of the first split (", ", of the first run's split (")  # pooled: runs > 1
    return re.sub(r"each of the \d+ splits (?=gave this)", whose + " ", method)


def _t_splits(ci) -> int | None:
    """The number of random splits of a corrected resampled t interval (`fne.metrics`), from its method."""
    found = re.search(r"corrected resampled t interval over (\d+) random splits", str((ci or {}).get("method")))
    return int(found.group(1)) if found else None
