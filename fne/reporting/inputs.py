"""What `fne report` reads, checked for shape: a metrics.json, advice.json or pipeline.json whose
fields are of other types than fne writes them (another program's file, one edited by hand or
damaged) is left out with a warning naming it and the fields, never a traceback deep in the
tabulating (`fne.reporting.report.collect`)."""

from __future__ import annotations

from pathlib import Path

from fne.metrics import bad_format, unreadable_format
from fne.reporting.intervals import finite

_TEXT = (str, type(None))

# The measured numbers a report shows, draws and tests, as fne writes them: accuracies and their
# spread over splits are fractions from 0 to 1, seconds from 0 to SECONDS_MAX, image counts whole
# numbers from 0 (fne writes no NaN or infinity: `fne.cache.fs.json_text`). Outside, a value measures
# nothing (a damaged or hand-edited file); drawn or tested, it ended the report in a traceback
# (1e308 seconds overflowed matplotlib's log axis, a negative n_test the t-test's square root).
FRACTIONS = ("accuracy", "accuracy_std", "mean_class_accuracy", "mean_class_accuracy_std")
SECONDS = ("fit_seconds", "train_seconds", "extract_seconds")
SECONDS_MAX = 1e12  # 31,700 years: more than any run took; matplotlib's log axis fails before 1e290
COUNTS = ("n_images", "n_train", "n_test")


def _texts(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def malformed_run(m: dict) -> str | None:
    """Why a metrics.json cannot be tabulated (no accuracy: another program's file, or fields of
    other types than fne writes: a damaged or hand-edited file; a later format: a newer fne's); None
    where it can."""
    newer = unreadable_format(m)  # its fields may mean what this fne cannot tell: read as its own, they would mislead
    if newer is not None:
        return newer
    if "accuracy" not in m:
        return "no accuracy: not the metrics.json of a `fne fit` or `fne train` run"
    bad = out_of_range(m, FRACTIONS, 1.0) + out_of_range(m, SECONDS, SECONDS_MAX) + _not_counts(m)
    bad += [k for k in ("method", "kind", "mode", "arch", "weights", "weights_fingerprint", "dataset", "seed",
                        "split_protocol", "labels_fingerprint") if isinstance(m.get(k), (list, dict))]
    bad += [k for k in ("data", "data_resolved") if not isinstance(m.get(k), _TEXT)]  # paths: compared, stat'ed
    classes = m.get("classes")  # names of the confusion matrix's rows
    bad += [] if classes is None or isinstance(classes, list) and all(
        isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes) else ["classes"]
    bad += ["format"] if bad_format(m) else []
    bad += [] if m.get("n_splits") is None or type(m["n_splits"]) is int and m["n_splits"] >= 1 else ["n_splits"]
    bad += [k for k in ("accuracy_ci", "mean_class_accuracy_ci") if _bad_interval(m.get(k))]
    splits, o = m.get("splits"), m.get("options")
    if splits is not None and not (isinstance(splits, list) and all(isinstance(s, dict) and all(
            isinstance(s.get(k), _TEXT) for k in ("test_hash", "correct")) and not out_of_range(s, FRACTIONS, 1.0)
            and not _not_counts(s) for s in splits)):  # a pooled row's values are its splits'
        bad.append("splits")
    cost = m.get("extract_cost")  # the earlier extraction's seconds, drawn as a fit's cost
    bad += ["extract_cost"] if isinstance(cost, dict) and out_of_range(cost, ("seconds",), SECONDS_MAX) else []
    if o is not None and not (isinstance(o, dict) and isinstance(o.get("label_key"), _TEXT)):
        bad.append("options")
    return _said(bad)


def out_of_range(d: dict, keys: tuple[str, ...], top: float) -> list[str]:
    """The `keys` of `d` whose value is recorded (not None) but is not a number from 0 to `top`."""
    return [k for k in keys if d.get(k) is not None and not _between(d[k], 0.0, top)]


def _between(v, low: float, high: float, closed: bool = True) -> bool:
    """Whether `v` is a finite number from `low` to `high` (`closed`: both included, else neither)."""
    x = finite(v)
    return x is not None and (low <= x <= high if closed else low < x < high)


def _bad_interval(ci) -> bool:
    """Whether a recorded confidence interval ({low, high, level, method}) holds what no interval is:
    its low or high outside 0-1 or low above high, its level outside (0, 1) (shown, `-100.0–98.1
    (inf%)`). None, or no dict, is no interval recorded (a run before fne kept them): shown as none."""
    if not isinstance(ci, dict):
        return False
    if out_of_range(ci, ("low", "high"), 1.0):
        return True
    low, high, level = ci.get("low"), ci.get("high"), ci.get("level")
    return low is not None and high is not None and low > high or level is not None and not _between(
        level, 0.0, 1.0, closed=False)


def _not_counts(d: dict) -> list[str]:
    """The image counts of `d` (COUNTS) recorded as other than a whole number from 0."""
    return [k for k in COUNTS if d.get(k) is not None and not (type(d[k]) is int and d[k] >= 0)]


def malformed_step(step: dict) -> str | None:
    """Why a step.json's record of the extraction that computed its run's rows (`fne run`'s) cannot
    be read: its seconds not as fne writes them; None where it can."""
    ex = step.get("extract")
    return _said(["extract"]) if isinstance(ex, dict) and out_of_range(ex, ("seconds",), SECONDS_MAX) else None


def malformed_advice(a: dict) -> str | None:
    """Why an advice.json cannot be shown (its lists of families, commands and reasons, or its
    similarity, of other types than `fne advise` writes); None where it can."""
    bad = [k for k in ("families", "commands", "reasons") if k in a and not _texts(a[k])]
    sim = a.get("similarity")
    bad += ["similarity"] if "similarity" in a and not (isinstance(sim, dict) and all(
        isinstance(sim[k], (int, float)) for k in ("max_softmax_mean", "entropy_norm_mean") if k in sim)) else []
    bad += [k for k in ("recommendation", "text", "dataset", "dataset_key") if not isinstance(a.get(k), _TEXT)]
    c = a.get("confidence")  # absent from an advice.json written before fne advise recorded it
    bad += [] if c is None or isinstance(c, dict) and isinstance(c.get("level"), str) and _texts(c.get("doubts")) else [
        "confidence"]
    return _said(bad)


def malformed_pipeline(p: dict) -> str | None:
    """Why a pipeline.json cannot be read (its name, its datasets, or their published values, of
    other types than `fne run` writes); None where it can."""
    bad = [] if isinstance(p.get("name"), _TEXT) else ["name"]
    bad += [] if p.get("notes") is None or _texts(p["notes"]) else ["notes"]
    datasets = p.get("datasets")
    if datasets is not None and not (isinstance(datasets, dict) and all(
            isinstance(d, dict) and isinstance(d.get("published"), (dict, type(None))) and _published(d.get("published"))
            for d in datasets.values())):
        bad.append("datasets")
    return _said(bad)


def _published(pub: dict | None) -> bool:
    """Whether a dataset's published values are as `fne run` writes them: their values a dict, their
    source, note, arch and weights text."""
    return pub is None or isinstance(pub.get("values"), (dict, type(None))) and all(
        isinstance(pub.get(k), _TEXT) for k in ("source", "note", "arch", "weights"))


def given_pipelines(extra: object) -> list[dict]:
    """`fne.report`'s ``extra_pipelines`` checked: a list of pipeline summaries (pipeline.json's, as
    `fne run` passes its own), else a TypeError naming the keyword and what is wrong."""
    if extra is None:
        return []
    if not isinstance(extra, (list, tuple)) or not all(isinstance(p, dict) for p in extra):
        raise TypeError("extra_pipelines: expected a list of pipeline summaries (dicts, as pipeline.json holds), got "
                        + (f"a {type(extra).__name__} holding {type(next(p for p in extra if not isinstance(p, dict))).__name__}"
                           if isinstance(extra, (list, tuple)) else type(extra).__name__))
    for i, p in enumerate(extra):
        why = malformed_pipeline(p)
        if why:
            raise TypeError(f"extra_pipelines[{i}]: {why.removesuffix(' (a damaged or hand-edited file)')}")
    return list(extra)


def _said(bad: list[str]) -> str | None:
    return f"its {', '.join(bad)} not as fne writes them (a damaged or hand-edited file)" if bad else None


RUN_FILES = ("model.joblib", "model.pt", "checkpoint.pt")  # what a fit's or a train's run folder holds


def unfinished_runs(root: Path) -> list[tuple[str, str]]:
    """(folder, why) for each run folder under `root` that holds a run's files (RUN_FILES) but no
    metrics.json: a training cut short (its checkpoint.pt), or a run whose metrics.json was
    removed; left out of the report, and said, rather than missing from its table without a word."""
    if not root.is_dir():
        return []
    folders = {p.parent: p.name for name in RUN_FILES for p in sorted(root.rglob(name))
               if p.is_file() and not any(part.startswith(".tmp") for part in p.parts)}
    return [(str(d), "no metrics.json: a fne train run cut short (its checkpoint.pt: its command with --resume finishes it)"
             if (d / "checkpoint.pt").is_file() else f"no metrics.json beside its {f}: a run that did not finish, "
             f"or whose metrics.json was removed") for d, f in sorted(folders.items()) if not (d / "metrics.json").exists()]
