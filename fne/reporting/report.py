"""`fne report`: report.md and a self-contained report.html from run folders.

Inputs are found recursively under each RUN_DIR:

* `metrics.json` (written by `fne fit` / `fne train`): one measured method each; a fit on cached
  rows also records what the earlier extraction that computed them took (`extract_cost`), shown
  as "(earlier)" in the extraction column;
* `step.json` (written by `fne run` beside metrics.json): the pipeline's dataset key, the C
  asked for, and the extraction that computed the run's rows (measured seconds, or cached);
* `advice.json` (`fne advise` / `fne run`): the recommendation shown beside the winner;
* `pipeline.json` (`fne run`): notes (e.g. a fallback to random weights) and the published
  reference values of the pipeline file, which are shown in their own labelled column and
  rows, never mixed with measurements.

Every measured number in the tables is taken from metrics.json as it is (fractions shown as
percentages); runs of the same setting (method, backbone, SETTING_KEYS: they differ only in
the seed) are pooled over their splits, and rows of one method that differ in a setting say
how in their label. Each row's 95% intervals are metrics.json's, or recomputed over a pooled row's
splits (fne.reporting.intervals); a row is built by fne.reporting.rows. Tables and figures are drawn by fne.reporting.render and
fne.reporting.figures. `report.json` holds the rows as numbers (with the winner's confused pairs
and worst classes), for scripts and tests; `report.csv` the same rows as one tidy table
(fne.reporting.table), `report.tex` LaTeX tables of them.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from fne import verb_module
from fne.cache.fs import check_target, csv_writer, json_text, read_json, replace_files
from fne.errors import FneError, expect_bools, expect_path
from fne.linear import compare
from fne.metrics import data_identity
from fne.names import slug
from fne.pipeline.config import load_pipeline
from fne.progress import say_skipped
from fne.reporting.figures import fig_bars, fig_confusion, fig_time
from fne.reporting.inputs import (
    given_pipelines,
    malformed_advice,
    malformed_pipeline,
    malformed_run,
    malformed_step,
    unfinished_runs,
)
from fne.reporting.intervals import few_splits_note, finite
from fne.reporting.notes import splits_note
from fne.reporting.render import (
    confused_pairs,
    interval_sentence,
    label,
    render_html,
    render_md,
    table_text,
    worst_classes,
)
from fne.reporting.rows import is_scratch, table_row
from fne.reporting.sections import dataset_key, dataset_keys, names_note
from fne.reporting.settings import (
    distinct,
    name_variants,
    pixels_note,
    repeats_note,
    say_pairs,
    settings,
)
from fne.reporting.table import CSV_COLUMNS, csv_rows, latex_tables
from fne.reporting.verdict import advice_check, shown, winner_verdict

RANDOM_WARNING = ("the weights are random: the network has learnt nothing, so these numbers say "
                  "nothing about transfer learning")
COLUMNS = ("accuracy", "mean_class_accuracy", "seconds", "extract_seconds")


# ------------------------------------------------------------------ collecting


def _find(root: Path, name: str) -> list[Path]:
    if root.is_file():
        return [root] if root.name == name else []
    return sorted(p for p in root.rglob(name) if p.is_file() and not any(
        part.startswith(".tmp") for part in p.parts))


def collect(run_dirs: list[str | Path]) -> dict:
    """All runs, advice and pipeline files under run_dirs (each searched recursively)."""
    runs, advice, pipelines, seen, empty, unfinished = [], [], [], set(), [], []
    skipped: list[tuple[str, str]] = []  # (file, why): said once collected, a line per reason
    damaged: list[tuple[str, str]] = []  # (file, why) of files that hold no JSON object: one line for all
    if not run_dirs:
        raise FneError("no RUN_DIR given")
    for d in run_dirs:
        expect_path(d, "run_dirs")
        root = Path(d).expanduser()
        if not root.exists():
            raise FneError(f"RUN_DIR {d}: does not exist")
        found, files = len(runs) + len(advice), _find(root, "metrics.json")
        for p in files:
            if p.resolve() in seen:
                continue
            seen.add(p.resolve())
            m = read_json(p, skipped=damaged)
            if m is None:
                continue
            if _skipped(p, malformed_run(m), skipped):
                continue
            step = read_json(p.parent / "step.json", skipped=damaged) if (p.parent / "step.json").is_file() else None
            if step is not None and _skipped(p.parent / "step.json", malformed_step(step), skipped):
                step = None  # the run is read as one without it, its extraction as metrics.json records it
            runs.append({"path": str(p.parent), "metrics": m, "step": step or {}})
        for p in _find(root, "advice.json"):
            a = read_json(p, skipped=damaged)
            if a is not None and "recommendation" in a and not _skipped(p, malformed_advice(a), skipped):
                advice.append({**a, "_path": str(p)})
        for p in _find(root, "pipeline.json"):
            pj = read_json(p, skipped=damaged)
            if pj is not None and not _skipped(p, malformed_pipeline(pj), skipped):
                pipelines.append(pj)
        unfinished += unfinished_runs(root)
        if len(runs) + len(advice) == found and not files:  # a metrics.json skipped was named above
            empty.append(str(d))
    skipped += damaged if len(damaged) < 2 else [(f"{f} ({why})", DAMAGED) for f, why in damaged]
    say_skipped(skipped, noun="files")  # 1,000 runs of another program: one line, not 1,000
    say_skipped(unfinished, noun="run folders")  # a training cut short: not missing from its table without a word
    if not runs:
        raise FneError(f"no run's metrics.json under {', '.join(map(str, run_dirs))} (run `fne fit`, "
                       f"`fne train` or `fne run` first)")
    if empty:  # a mistyped RUN_DIR: the report would lack its runs without a word
        warnings.warn(f"no run under {', '.join(empty)} (no metrics.json): left out of the report", stacklevel=2)
    return {"runs": runs, "advice": advice, "pipelines": pipelines}


DAMAGED = "no JSON object in them: cut short (a full disk, a killed copy), damaged or another program's"


def _skipped(path: Path, why: str | None, skipped: list[tuple[str, str]]) -> bool:
    """Whether a file is skipped: added to `skipped` with `why` (for `say_skipped`), where `why`
    is not None."""
    if why is not None:
        skipped.append((str(path), why))
    return why is not None


# ------------------------------------------------------------------ tabulating


def published_for(pipelines: list[dict]) -> dict[str, dict]:
    """{dataset key: {"source":..., "note":..., "values": {method: {"mean", "std"}}}} from pipeline.json."""
    out: dict[str, dict] = {}
    for pj in pipelines:
        for key, d in (pj.get("datasets") or {}).items():
            pub = (d or {}).get("published")
            if pub and pub.get("values"):
                out[key] = pub
    return out


def published_value(v) -> dict | None:
    """A published figure as {"mean", "std"} in percent: 93.3, [91.4, 0.6] or {"mean":.., "std":..}."""
    if isinstance(v, dict):
        mean, std = finite(v.get("mean")), finite(v.get("std"))
    elif isinstance(v, (list, tuple)) and len(v) == 2:
        mean, std = finite(v[0]), finite(v[1])
    else:
        mean, std = finite(v), None
    return None if mean is None else {"mean": mean, "std": std}


def _references(key: str, runs: list[dict], published: dict[str, dict], advice: list[dict]) -> tuple[dict, list[dict]]:
    """(published values, advice) of the section `key` of `runs`. A pipeline's are keyed by its
    dataset key: they go with the runs of its steps (step.json), and with runs of that dataset name
    where no other DATA shares it (the section is named `key` alone, `dataset_keys`); advice of
    `fne advise` alone goes by dataset name and, where the name is shared, by DATA."""
    given = {dataset_key(r) for r in runs}  # a section of one DATA given under several names is named by one of them
    base = key if key in given else dataset_key(runs[0])
    lookup = base if key == base or any(r["step"].get("dataset_key") == base for r in runs) else None
    names = {str(r["metrics"].get("dataset")) for r in runs}
    data = {str(compare.run_data(r["metrics"])) for r in runs}
    keys = {_label_key(r["metrics"]) for r in runs}
    return (published.get(lookup) or {}) if lookup else {}, [
        _labels(a, keys) for a in advice if (lookup is not None and a.get("dataset_key") == lookup) or (
            not a.get("dataset_key") and a.get("dataset") in names and _same_labels(_label_key(a), keys)
            and (key == base or (a.get("data_resolved") or data_identity(a.get("data"))) in data))]


UNKNOWN = object()  # a label key that a run or advice does not record (written before fne recorded it)


def _label_key(d: dict):
    """The `--label-key` a run (its metrics.json's options) or advice.json was given; UNKNOWN where
    it does not record it."""
    if d.get("kind") == "advice":
        return d["label_key"] if "label_key" in d else UNKNOWN
    options = d.get("options")
    return options.get("label_key") if isinstance(options, dict) else UNKNOWN


def _same_labels(key, keys: set) -> bool:
    """Whether advice of label key `key` may be of the labels of runs of label keys `keys` (where
    either does not record its key, it may)."""
    return key is UNKNOWN or UNKNOWN in keys or key in keys


def _labels(a: dict, keys: set) -> dict:
    """Advice as its section shows it: "labels", which labels of DATA it was computed for where
    it or runs of the section were given --label-key, or that it does not record them."""
    known = _label_key(a)
    if not keys - {None, UNKNOWN} and (known is None or known is UNKNOWN):
        return a
    return {**a, "labels": f"label_key={known}" if known is not UNKNOWN and known is not None else
            "DATA's own labels (no --label-key)" if known is None else
            "not recorded (advice.json written before fne advise recorded --label-key): it may be of other labels"}


def tabulate(collected: dict) -> list[dict]:
    """Per dataset: rows, best values, published values, winner, advice."""
    groups: dict[str, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    keys = dataset_keys(collected["runs"])
    for r, key in zip(collected["runs"], keys, strict=True):
        m = r["metrics"]
        groups[key][(str(m.get("method")), m.get("arch"), weights_identity(m),
                     json.dumps(settings(r), sort_keys=True, default=str))].append(r)
    published = published_for(collected["pipelines"])
    out, pairs = [], []  # pairs of runs of one seed on other test images: one line for all (`say_pairs`)
    for key in sorted(groups):
        groups[key] = {k: distinct(rs, pairs) for k, rs in groups[key].items()}
        rows = [table_row(rs) for rs in groups[key].values()]
        name_variants(rows)
        rows.sort(key=lambda r: (r["partial"], -(r["accuracy"] if r["accuracy"] is not None else -1),
                                 r["method"]))
        best = {}
        for col in COLUMNS:
            vals = [r[col] for r in rows if r.get(col) is not None and not r["partial"]]
            if len({shown(col, v) for v in vals}) > 1:  # a column where every value reads the same has no best
                best[col] = (max if col in ("accuracy", "mean_class_accuracy") else min)(vals)
        for r in rows:  # values that read the same as the best (0.01 s and 0.01 s) are equally best
            r["best"] = [c for c in COLUMNS if c in best and r.get(c) is not None
                         and shown(c, r[c]) == shown(c, best[c]) and not r["partial"]]
        section = [r for rs in groups[key].values() for r in rs]
        pub, advice = _references(key, section, published, collected["advice"])
        pub_vals = {k: published_value(v) for k, v in (pub.get("values") or {}).items()}
        pub_vals = {k: v for k, v in pub_vals.items() if v is not None}
        for r in rows:  # beside the rows of the backbone the published values name (arch, weights), if they name one
            r["published"] = pub_vals.get(r["method"]) if all(pub.get(k) in (None, r.get(k)) for k in ("arch", "weights")) else None
        measured = {r["method"] for r in rows if r["published"]}
        multi = _multi_backbone(rows)
        for r in rows:  # the row's name where the verdict names it: rows of one method differ in settings
            r["label"] = label(r, multi)
        winner = next((r for r in rows if r["accuracy"] is not None and not r["partial"]), None)
        metrics = {r["path"]: r["metrics"] for rs in groups[key].values() for r in rs}
        test = compare.winner_vs_runner_up(rows, metrics)  # paired test on shared splits, or None
        verdict = winner_verdict(rows, test, compare.untested(rows, metrics) if test is None else "")
        out.append({
            "dataset": key,
            "rows": rows,
            "best": best,
            "published": {"source": pub.get("source") and pub["source"] + "".join(  # and the backbone they name
                              f"; {k} {pub[k]}" for k in ("arch", "weights") if pub.get(k)), "note": pub.get("note"),
                          "only": {k: v for k, v in pub_vals.items() if k not in measured},
                          "values": pub_vals},
            "winner": winner,
            "winner_test": test,
            "verdict": verdict,
            "advice": [advice_check(a, winner, verdict["kind"], rows, metrics) for a in advice],
            "multi_backbone": multi,  # else the one backbone, which the rows' labels leave out:
            "backbone": None if multi else next((r["backbone"] for r in rows if not r["scratch"]), rows[0]["backbone"]),
            "protocol_note": protocol_note(rows), "repeats_note": repeats_note(section),
            "names_note": names_note([r for r, k in zip(collected["runs"], keys, strict=True) if k == key]),
        })
    say_pairs(pairs)
    return out


def protocol_note(rows: list[dict]) -> str | None:
    """A sentence where the rows were not scored on the same test images (other split protocols,
    other seeds of random splits), and one where rows of one backbone fitted rows of other pixels
    (`pixels_note`); None where neither (`notes.splits_note`)."""
    said = [n for n in (splits_note(rows), pixels_note(rows)) if n]
    return " ".join(said) or None


def weights_identity(m: dict) -> str | None:
    """What names a run's weights in the report: their fingerprint where metrics.json records
    one (a file given by two relative paths, or VGG's `imagenet` and `IMAGENET1K_V1`, are one
    backbone), else the weights as given; None for a scratch run (its random start is the method)."""
    if is_scratch(m):
        return None
    return m.get("weights_fingerprint") or m.get("weights")


def _multi_backbone(rows: list[dict]) -> bool:
    """More than one (arch, weights) among the rows; a scratch run only counts by its arch."""
    pre = {(r["arch"], r["weights_fingerprint"] or r["weights"]) for r in rows if not r["scratch"]}
    scratch = {r["arch"] for r in rows if r["scratch"]}
    return len(pre) > 1 or bool(scratch - {a for a, _ in pre}) or (not pre and len(scratch) > 1)


def header(collected: dict) -> dict:
    ms = [r["metrics"] for r in collected["runs"]]

    def uniq(k):
        return sorted({str(m[k]) for m in ms if m.get(k) not in (None, "")})

    dates = uniq("date")
    notes = [n for pj in collected["pipelines"] for n in (pj.get("notes") or [])]
    given: dict[tuple, set[str]] = defaultdict(set)  # one weights file by two paths: one backbone
    for m in ms:
        if not is_scratch(m):
            given[(str(m.get("arch", "?")), weights_identity(m))].add(str(m.get("weights", "?")))
    backbones = sorted({f"{arch}: {' = '.join(sorted(names))} weights" + (f" [{fp}]" if fp not in names else "")
                        for (arch, fp), names in given.items()}
                       | {f"{m.get('arch', '?')}: random initialisation (train:scratch)" for m in ms if is_scratch(m)})
    random = sorted({str(m.get("arch")) for m in ms if str(m.get("weights")) == "random" and not is_scratch(m)})
    names = [pj.get("name") for pj in collected["pipelines"] if pj.get("name")]
    return {
        "pipeline": sorted(set(names)),
        "backbones": backbones,
        "weights": uniq("weights"),
        "random_weights": random,
        "warning": (f"WARNING: {RANDOM_WARNING} ({', '.join(random)})" if random else None),
        "precision": uniq("precision"), "crop": uniq("crop"), "device": uniq("device"),
        "machine": uniq("machine"),
        "date": dates[0] if len(dates) == 1 else (f"{dates[0]} … {dates[-1]}" if dates else None),
        "notes": notes,
        "runs": len(ms),
    }


def _jsonable(datasets: list[dict]) -> list[dict]:
    out = []
    for ds in datasets:
        rows = [{k: v for k, v in r.items() if k not in ("confusion",)} for r in ds["rows"]]
        w = ds["winner"] or {}  # the highest ranked row: the lists report.md shows under it
        named = ds["verdict"]["kind"] == "clear"  # report.md's "Measured winner"; not a tie or an untested lead
        out.append({**{k: v for k, v in ds.items() if k not in ("rows", "winner")}, "rows": rows,
                    "winner": w.get("label") if named else None, "highest": w.get("label"),
                    "interval_note": interval_sentence(ds["rows"]),
                    "few_splits_note": few_splits_note(ds["rows"], [r["label"] for r in ds["rows"]]),
                    "winner_confused_pairs": confused_pairs(w.get("confusion"), w.get("classes")) if w else [],
                    "winner_worst_classes": worst_classes(w.get("confusion"), w.get("classes")) if w else []})
    return out


def report(run_dirs: Iterable[str | Path] | str | Path, out: str | Path, pipeline: str | Path | None = None,
           extra_pipelines: list[dict] | tuple[dict, ...] | None = None, figures: bool = True) -> dict:
    """Write out/report.md, out/report.html (figures inline), out/report.json, report.csv and report.tex.

    Parameters
    ----------
    run_dirs : iterable of str or Path (a list, a tuple, ...), or one str or Path
        Run folders of `fne fit` / `fne train` / `fne run` (their metrics.json), or folders
        holding them.
    out : str or Path
        The report folder.
    pipeline : str or Path, optional
        A pipeline file whose published reference values are shown beside the measured ones.
    extra_pipelines : list or tuple of dict, optional
        Pipeline summaries (pipeline.json) to add, as `fne run` passes its own.
    figures : bool, default True
        Draw the figures (matplotlib); False writes the tables only.

    Returns
    -------
    dict
        What report.json holds: the rows per dataset, the winners and the files written
        (report.csv: report.json's rows as one table; report.tex: LaTeX tables; `fne.reporting.table`).

    Raises
    ------
    FneError
        No run folder given, one that does not exist, no metrics.json under them, or ``out``
        cannot be written or is (inside) a run's DATA folder.
    TypeError
        An argument of another type: ``run_dirs`` or ``pipeline`` not a path, ``figures`` not a
        bool, ``extra_pipelines`` not a list of pipeline summaries as pipeline.json holds them.
    """
    expect_bools({"figures": figures})
    if not isinstance(run_dirs, (str, os.PathLike, Iterable)):
        raise TypeError(f"run_dirs: expected a path or a list of paths, got {type(run_dirs).__name__}")
    if pipeline is not None:
        expect_path(pipeline, "pipeline")
    extra = given_pipelines(extra_pipelines)  # before any run is read, as out
    out = check_target(out, folder=True)
    collected = collect([run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs))
    for data in dict.fromkeys(r["metrics"].get("data_resolved") for r in collected["runs"]):
        if data and os.path.isdir(data):  # figures inside a run's DATA folder would become its images
            check_target(out, folder=True, data=data)
    collected["pipelines"] += extra
    if pipeline is not None:  # its published values; its datasets need not be present
        collected["pipelines"].append(load_pipeline(pipeline, check_data=False).summary())
    datasets = tabulate(collected)
    head = header(collected)
    out.mkdir(parents=True, exist_ok=True)
    b64: dict = {}
    files: dict = {}
    fig_dir, taken = out / "report_files", set()  # file names: sections whose slugs agree (数字, 图片) numbered
    for i, ds in enumerate(datasets if figures else []):
        base = slug(ds["dataset"])
        stem = next(s for s in (base, *(f"{base}-{n}" for n in range(2, i + 3))) if s.lower() not in taken)
        taken.add(stem.lower())  # lower case: one file on macOS's and Windows' filesystems
        for key, fn in zip(_FIGURES, (fig_bars, fig_time, fig_confusion)):
            png = fn(ds)
            if png:
                b64[(ds["dataset"], key)] = png
                files[(ds["dataset"], key)] = f"report_files/{stem}-{key}.png"
    rows = _jsonable(datasets)  # report.json's rows, and report.csv's
    texts = {"report.md": render_md(head, datasets, files), "report.html": render_html(head, datasets, b64),
             "report.json": json_text({"header": head, "datasets": rows})}
    writes = {out / name: (lambda t: lambda tmp: tmp.write_text(t, encoding="utf-8"))(text)  # what report.html declares
              for name, text in texts.items()}
    writes |= {out / f: (lambda b: lambda tmp: tmp.write_bytes(base64.b64decode(b)))(b64[k]) for k, f in files.items()}
    writes[out / "report.tex"] = lambda tmp: tmp.write_text(latex_tables(rows, RANDOM_WARNING), encoding="utf-8")
    if files:
        fig_dir.mkdir(exist_ok=True)
    replace_files({**writes, out / "report.csv": csv_writer(list(CSV_COLUMNS), csv_rows(rows))})
    _remove_stale_figures(fig_dir, set(files.values()))
    return {"md": str(out / "report.md"), "html": str(out / "report.html"), "json": str(out / "report.json"),
            "csv": str(out / "report.csv"), "tex": str(out / "report.tex"), "header": head, "datasets": datasets}


def _remove_stale_figures(fig_dir: Path, drawn: set[str]) -> None:
    """The figures an earlier report into the same folder drew that this one did not (a section
    it no longer has, or ``figures=False``): left, they would pass for this report's. The folder
    goes with them where nothing else is in it (a report without figures has none). Hidden files
    are passed over: the temporary figures of another report writing into the folder now (two `fne
    run` of one out folder); `replace_files` removes those whose writer is dead."""
    if fig_dir.is_dir():
        for f in fig_dir.glob("*.png"):
            if not f.name.startswith(".") and f.stem.rsplit("-", 1)[-1] in _FIGURES \
                    and f"report_files/{f.name}" not in drawn:
                f.unlink(missing_ok=True)
        if not drawn and not any(fig_dir.iterdir()):
            fig_dir.rmdir()


_FIGURES = ("bars", "time", "confusion")


# ------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folders, or folders holding run folders (searched recursively)")
    p.add_argument("--out", required=True, help="folder for report.md, report.html, report.json, report.csv and report.tex")
    p.add_argument("--pipeline", default=None, help="take published reference values from this pipeline file")
    p.add_argument("--no-figures", dest="figures", action="store_false",
                   help="write the tables only, no figures")


def run_cli(args) -> int:
    r = report(args.run_dirs, args.out, pipeline=args.pipeline, figures=args.figures)
    if r["header"]["warning"]:
        print(r["header"]["warning"])
    print(table_text(r["datasets"]))
    print(f"wrote {r['md']}, {r['html']}, {r['json']}, {r['csv']} and {r['tex']}")
    return 0




verb_module(__name__)
