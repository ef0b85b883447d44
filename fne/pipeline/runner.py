"""`fne run PIPELINE.toml`: an experiment declared in a file, run end to end, resumable.

A pipeline file declares datasets, backbones, the feature × head grid of `fne fit`, the
modes of `fne train` and optional published reference numbers; see pipelines/*.toml and
the schema in fne.pipeline.config.SCHEMA. `fne run` then

1. validates the whole file (unknown keys, bad values, missing datasets) and reports every
   mistake with its key and line before anything runs;
2. per (dataset, backbone): extracts the activations once into the cache, writes the advice
   (`fne advise`), fits every feature × head × seed from the cache and trains every mode;
3. skips steps that are done (fne.pipeline.steps): RUN_DIR/metrics.json exists and RUN_DIR/step.json holds the
   hash of the same step configuration (and of that metrics.json), so an interrupted run
   resumes where it stopped and a changed setting reruns only the steps it touches; a fit's
   step.json also records the extraction that computed its rows in this run (its measured
   seconds, or none computed: cached), which is what the report shows;
4. ends with `fne report` over exactly the steps of this pipeline (OUT/report.md, .html).

Layout of OUT: pipeline.json, report.*, and per step
OUT/<dataset>/<backbone>/{advice, fit-<features>-<head>-C<C>-s<seed>, train-<mode>-s<seed>}/.

Validation lives in fne.pipeline.config (pure), the steps' plan in fne.pipeline.plan; this module
runs them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fne.cache.fs import check_target, read_json, replace_file, write_csv, write_json
from fne.cache.h5file import h5_writer
from fne.data.sidecar import locked, run_lock
from fne.errors import FneError, WeightsError, expect_bools, refused_write
from fne.names import slug
from fne.option_handling import add_arguments as add_options
from fne.option_handling import keywords, resolve
from fne.options import ForwardOptions
from fne.pipeline import config
from fne.pipeline.config import BackboneCfg, DatasetCfg, Pipeline, PipelineError
from fne.pipeline.config_errors import in_the_files_words
from fne.pipeline.plan import load_pipeline, plan
from fne.pipeline.steps import (
    Step,
    config_hash,
    forced,
    forced_as,
    needs_rows,
    split_labels_fingerprint,
    train_arguments,
)
from fne.progress import COMMAND_LINE, IN_A_FILE, STARTS_OVER, said_once

__all__ = ["PipelineError", "Step", "load_pipeline", "materialise", "plan", "run", "run_step"]

RUN_OPTIONS = ("progress",)  # `fne run`'s keywords declared in fne.options (ForwardOptions), passed to every step

# ------------------------------------------------------------------ running


def resolve_weights(b: BackboneCfg, say) -> None:
    """imagenet-or-random: imagenet when it loads, else random with a loud warning."""
    from fne.backbones import registry as bb

    if b.weights == "imagenet-or-random":
        try:
            bb.get(b.arch).imagenet()
            b.resolved_weights = "imagenet"
            say(f"{b.arch}: ImageNet weights available")
        except WeightsError as e:
            b.resolved_weights = "random"
            say(f"WARNING: ImageNet weights for {b.arch} are not available, so this run uses RANDOM weights "
                f"(seed {b.weights_seed}): its numbers say nothing about transfer learning. Reason: {e}")
            return
    elif b.weights == "imagenet":
        try:
            bb.get(b.arch).imagenet()
        except WeightsError as e:
            raise FneError(f"backbone {b.label}: {e}") from None
        b.resolved_weights = "imagenet"
    else:
        b.resolved_weights = b.weights


def weights_instead(b: BackboneCfg) -> Callable[[bool], str]:
    """`fetch.loading`'s `instead` for a pipeline's backbone `b`: other weights as the pipeline
    file gives them (its key and line), not as the Python API's keyword or a verb's flag."""
    return lambda python: (f'or set weights = "PATH" to a state dict (.pth/.pt/.safetensors) in {b.weights_at}, '
                           f'or weights = "random" for a test run.')


def materialise(ds: DatasetCfg, out: Path, cache: str | None, seed: int = 0, write: bool = True) -> str | None:
    """max_per_class: write the seeded subset as a DATA file (HDF5 for arrays, CSV for files).

    write=False (a dry run): the subset file an earlier run wrote when it is still this one,
    else None; nothing is written."""
    if not ds.max_per_class:
        return ds.data
    import numpy as np

    from fne.data.datasets import load_dataset

    d = load_dataset(ds.data, cache=cache)
    rng = np.random.default_rng(seed)
    labels = np.array(d.labels)
    groups = np.array(d.splits) if d.has_split else np.array([""] * len(d))
    keep = []
    for g in sorted(set(groups)):
        for c in d.classes:
            idx = np.flatnonzero((labels == c) & (groups == g))
            if len(idx):
                keep += sorted(rng.choice(idx, min(ds.max_per_class, len(idx)), replace=False).tolist())
    keep.sort()
    folder = out / slug(ds.key) / "data"
    ident = config_hash({"data": ds.data, "max_per_class": ds.max_per_class, "seed": seed, "n": len(d),
                         "labels": split_labels_fingerprint(d, cache)})
    stamp = folder / "subset.json"
    if d.array_source is not None:
        target = folder / f"{d.name}.h5"
    elif d.container is not None:  # tar / Parquet DATA: the subset as one tar shard
        target = folder / f"{d.name}.tar"
    else:
        target = folder / f"{d.name}.csv"
    if target.is_file() and (read_json(stamp) or {}).get("hash") == ident:  # an unreadable stamp: written again
        return str(target)
    if not write:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    if d.array_source is not None:
        import h5py

        imgs = np.stack([d.array_source.get(d.sources[i]) for i in keep])

        def write_h5(f, check) -> None:
            f["images"] = imgs
            codes = {c: k for k, c in enumerate(d.classes)}
            f["labels"] = np.array([codes[d.labels[i]] for i in keep], dtype=np.int64)
            f["labels"].attrs["class_names"] = np.array(d.classes, dtype=h5py.string_dtype())
            if d.has_split:
                f["split"] = np.array([d.splits[i] for i in keep], dtype=h5py.string_dtype())

        replace_file(target, h5_writer(write_h5))
    elif d.container is not None:
        from fne.data.webdataset import write_shard

        write_shard(d, keep, target)
    else:
        write_csv(target, ["path", "label"] + (["split"] if d.has_split else []),
                  ([str(Path(d.sources[i]).resolve()), d.labels[i]] + ([d.splits[i]] if d.has_split else [])
                   for i in keep))
    write_json(stamp, {"hash": ident, "n": len(keep), "of": len(d), "max_per_class": ds.max_per_class})
    return str(target)


def run_step(step: Step, p: Pipeline, cache: str | None, resume: bool = True) -> dict:
    """Run one step into step.dir; returns its result dict. `resume`: a training step goes on
    from its own checkpoint, left by an interrupted run (not under --force). What the step says
    names its options by the file's keys (`fne.progress.IN_A_FILE`)."""
    in_a_file = IN_A_FILE.set(True)
    try:
        return _run_step(step, p, cache, resume)
    finally:
        IN_A_FILE.reset(in_a_file)


def _run_step(step: Step, p: Pipeline, cache: str | None, resume: bool) -> dict:
    from fne.linear import fit as fit_mod
    from fne.reporting import advise as advise_mod
    from fne.training import train as train_mod

    step.dir.mkdir(parents=True, exist_ok=True)
    (step.dir / "step.json").unlink(missing_ok=True)  # a half-written result never looks done
    (step.dir / "traceback.txt").unlink(missing_ok=True)  # of an earlier failure
    if step.result_file.is_file():  # of other settings, or --force: kept aside, never read as this step's
        os.replace(step.result_file, step.dir / f"previous-{step.result_file.name}")
    k = dict(step.kwargs)
    b = step.backbone
    if step.kind == "advise":
        a = advise_mod.advise(k.pop("data"), cache=cache, device=p.device, batch_size=p.batch_size,
                              workers=p.workers, progress=p.progress, **k)
        a["dataset_key"] = step.dataset.key
        a["backbone"] = b.label
        write_json(step.result_file, a)
        return a
    if step.kind == "fit":
        return fit_mod.fit(k.pop("data"), out=str(step.dir), extract_missing=True, cache=cache, device=p.device,
                           batch_size=p.batch_size, workers=p.workers, progress=p.progress, **k)
    mode, kwargs = k["mode"], train_arguments(step, p)
    if mode == "direct":  # a table is recorded in the step's folder by fne.train, a path as given
        kwargs["class_map"] = step.dataset.class_map
    # an interrupted step goes on from its checkpoint; one of other settings starts anew, as does
    # any under --force (which train's note names, fne run having no --resume)
    # --force is fne run's own flag (on the command line), not a key of the file
    starts_over = STARTS_OVER.set(None if resume else lambda py: f"{forced_as(not COMMAND_LINE.get())} starts the "
                                                                 f"step over")
    try:
        return train_mod.train(k["data"], mode, str(step.dir), resume="auto" if resume else False, cache=cache,
                               **kwargs)
    finally:
        STARTS_OVER.reset(starts_over)


def _summary_line(step: Step, r: dict) -> str:
    if step.kind == "advise":
        sim = r.get("similarity", {})
        s = f"{sim['max_softmax_mean']:.2f}" if sim.get("judged") else "not judged"
        return f"{r['recommendation']} ({r['images_per_class']:g} train images/class, similarity {s})"
    return f"accuracy {100 * r['accuracy']:.1f} % (mean class {100 * r['mean_class_accuracy']:.1f} %)"


def _prepare(p: Pipeline, out: Path, cache: str | None, say) -> dict[str, str]:
    """Before the steps: each backbone's weights resolved (a fallback to random weights noted), OUT
    made and each dataset's subset written; -> the DATA each dataset's steps read, by key."""
    from fne.backbones.fetch import loading

    for b in p.backbones:
        with loading(weights_instead(b)):
            resolve_weights(b, say)
        if b.resolved_weights == "random" and b.weights == "imagenet-or-random":
            p.notes.append(f"ImageNet weights for {b.arch} were not available: this run fell back to RANDOM "
                           f"weights, so its numbers say nothing about transfer learning")
    out.mkdir(parents=True, exist_ok=True)
    data_for = {d.key: materialise(d, out, cache) for d in p.datasets if not d.skipped}
    for d in p.datasets:
        if d.max_per_class and not d.skipped:
            say(f"{d.key}: subset of at most {d.max_per_class} images per class -> {data_for[d.key]}")
    return data_for


@keywords(ForwardOptions, only=RUN_OPTIONS)
@said_once()  # a warning each step would repeat (DATA's skipped rows, faint layers): once a run
def run(path: str | Path, out: str | Path | None = None, cache: str | None = None, *, force: bool = False,
        dry_run: bool = False, report: bool | None = None, device: str | None = None,
        workers: int | None = None, log: Callable[[str], object] | None = None, **options) -> dict:
    """Validate a pipeline file, then run every pending step and write the report.

    Parameters
    ----------
    path : str or Path
        The pipeline TOML file; every problem in it is reported at once (file:line: key: why).
    out : str or Path, optional
        The output folder (default: the file's `out`, else runs/<name>).
    cache : str, optional
        The cache (default: the file's `cache`, else $FNE_CACHE, else fne's default), as ``fne run --cache``.
    force : bool, default False
        Rerun steps that are done.
    dry_run : bool, default False
        List the steps and which are done; read no image, write nothing.
    report : bool, optional
        Write the report at the end (default: the file's `report`).
    device : str, optional
        Overrides the file's `device` (auto, cpu, cuda[:i] or mps).
    workers : int, optional
        Overrides the file's `workers`.
    log : callable, optional
        Receives each progress line (default: print).

    Returns
    -------
    dict
        ``steps``, ``ran``, ``skipped``, ``out``, ``report`` (what `fne.report` returns; None with
        ``dry_run`` or no report) and the parsed ``pipeline``.

    Raises
    ------
    PipelineError
        The file's problems, all of them, before any step runs.
    OptionError
        A ``device`` or ``workers`` it does not accept, before any step runs.
    FneError
        At the end, naming the steps that failed: the others have run and are in the report.
    """
    say = log or (lambda s: print(s, flush=True))
    t_start = time.perf_counter()
    expect_bools({"force": force, "dry_run": dry_run, "report": report}, none=("report",))  # before any work
    p = load_pipeline(path, cache=cache)
    if device is not None:
        p.device = device
    forward = resolve({"workers": workers, **options}, ForwardOptions, only=("workers", *RUN_OPTIONS))[0]  # as fit's
    p.workers, p.progress = p.workers if workers is None else forward.workers, forward.progress
    if p.device != "auto":  # a bad name would fail every step: one line, first (--dry-run validates it too)
        _check_device(p, False, device is None)
    with in_the_files_words(out is None and p.out is not None):
        # an --out given empty (an unset shell variable) is refused by check_target, not replaced by the default
        out = check_target(out if out is not None else p.out or Path("runs") / slug(p.name), folder=True)
        for d in p.datasets:  # inside a dataset's folder, the steps' folders would become its data
            if not d.skipped:
                check_target(out, folder=True, data=d.data)
    cache = p.cache  # --cache over the file's (load_pipeline)
    _announce_skips(p, path, say)
    result = {"steps": 0, "ran": 0, "skipped": 0, "out": str(out), "report": None, "pipeline": p}
    if dry_run:
        return {**result, "steps": _dry_run(p, path, out, cache, force, say)}
    data_for = _prepare(p, out, cache, say)
    steps = plan(p, out, data_for, cache)
    if p.device != "auto":  # absent here: one line before a step runs (a finished pipeline still reports)
        _check_device(p, force or not all(s.done() for s in steps), device is None)
    _write_summary(out, p, say)
    ran, skipped, failed = _run_steps(steps, p, cache, out, data_for, force, say)
    p.notes += [f"step {label} FAILED ({why}): it is missing from this report" for label, why in failed]
    rep = _summary_and_report(steps, p, out, cache, p.report if report is None else report, say)
    say(f"{ran} step(s) run, {skipped} skipped as done" + (f", {len(failed)} FAILED" if failed else "")
        + f", in {time.perf_counter() - t_start:.1f} s")
    if failed:
        raise _failed(failed, len(steps), out if rep is not None else None)
    return {**result, "steps": len(steps), "ran": ran, "skipped": skipped, "report": rep}


def _summary_and_report(steps: list[Step], p: Pipeline, out: Path, cache: str | None, report: bool,
                        say) -> dict | None:
    """OUT/pipeline.json and, where `report`, the report (`_report`); a full disk is one line
    naming the file and --out (the steps' results are kept)."""
    try:
        write_json(out / "pipeline.json", p.summary())
        return _report(steps, p, out, say) if report else None
    except OSError as e:
        if (line := refused_write(e, {"--out": out, "--cache": cache})) is None:
            raise
        raise FneError(f"{line}; the finished steps are kept: rerun the same command to skip them and write the "
                       f"report") from None


def _write_summary(out: Path, p: Pipeline, say) -> None:
    """OUT/pipeline.json, after a note where the one it replaces lists datasets this pipeline does
    not (another pipeline file given the same out folder): their runs stay, this report leaves them out."""
    old = read_json(out / "pipeline.json")
    old = old if isinstance(old, dict) and isinstance(old.get("datasets"), dict) else {"datasets": {}}
    left = [k for k in old["datasets"] if k not in {d.key for d in p.datasets}]
    if left:
        say(f"note: {out} holds runs of dataset(s) {', '.join(left)} of pipeline {old.get('name')!r} "
            f"({old.get('file')}), which {p.file} does not list: they stay there, and this run's report leaves "
            f"them out (`fne report {out} --out DIR` reports every run under it)")
    write_json(out / "pipeline.json", p.summary())


def _failed(failed: list[tuple[str, str]], n: int, reported: Path | None) -> FneError:
    """The error a run ends in: the failed steps (the first 3) and whether the others' report
    was written (in `reported`, the out folder)."""
    return FneError(f"{len(failed)} of {n} step(s) failed ("
                    + "; ".join(f"{label}: {why}" for label, why in failed[:3]) + ("; …" if len(failed) > 3 else "")
                    + "); the other steps are done"
                    + (f" and reported in {reported / 'report.md'}" if reported else ", and no report was written")
                    + "; fix the cause and rerun the same command: finished steps are skipped")


def _dry_run(p: Pipeline, path, out: Path, cache: str | None, force: bool, say) -> int:
    """List the steps, what each computes and why; read no image, write nothing; -> the steps."""
    from fne.backbones.catalog import not_here
    from fne.data.parquet import hf_available, hf_download_hint
    from fne.pipeline import dryrun

    # a subset is the one an earlier run wrote, if it is still this one
    data_for = {d.key: materialise(d, out, cache, write=False) for d in p.datasets if not d.skipped}
    steps = dryrun.plan_either(p, lambda: plan(p, out, data_for, cache, read=False))
    say(f"{path}: valid; {len(steps)} steps (weights not resolved in a dry run)")
    for d in p.datasets:
        if d.data.startswith("hf:") and not hf_available(d.data, cache):
            say(f"  dataset {d.key}: {d.data} is not here yet: {hf_download_hint(d.data, cache)}")
    for b in p.backbones:
        w = "imagenet" if b.weights == "imagenet-or-random" else b.weights
        where = None if w == "random" or Path(w).is_file() else not_here(b.arch, w)  # imagenet or a name
        if where is not None:
            then = "falls back to random weights" if b.weights == "imagenet-or-random" else "stops"
            say(f"  backbone {b.label}: its pretrained weights are not here yet (a run downloads them where there is "
                f"a network, else {then}): {where}")
    n = dryrun.describe(steps, p, data_for, cache, force, say)
    say(f"{n} step(s) to run, {len(steps) - n} done")
    return len(steps)


def _announce_skips(p: Pipeline, path, say) -> None:
    """Notes on skipped datasets and modes; no dataset present at all is an error (nothing would run)."""
    skipped = [d for d in p.datasets if d.skipped]
    if skipped and len(skipped) == len(p.datasets):
        unset = sorted({v for d in skipped for v in config.expand_vars(d.spec)[1]})
        if unset and all(config.expand_vars(d.spec)[1] for d in skipped):
            why = (f"environment variable {', '.join(unset)} not set, so none of "
                   + ", ".join(d.spec for d in skipped) + " can be found; set it to the folder that holds "
                   "them, see the comments in the file")
        else:
            why = "; ".join(f"{d.key}: {d.skipped}" for d in skipped)
        raise FneError(f"{path}: nothing to run: none of its datasets is present ({why})")
    for d in skipped:
        say(f"note: optional dataset {d.key} skipped: {d.skipped}")
    if "direct" in p.train:
        for d in p.datasets:
            if not d.skipped and not d.class_map:
                note = f"direct mode not run on {d.key}: it has no class_map"
                p.notes.append(note)
                say(f"note: {note}")


def _extract(step: Step, p: Pipeline, cache: str | None, data: str, say) -> dict:
    """Extract the step's dataset with its backbone; returns what step.json records of it."""
    from fne.extraction import extract as extract_mod

    b = step.backbone
    t = time.perf_counter()
    r = extract_mod.extract(data, arch=b.arch, weights=b.resolved_weights, cache=cache, batch_size=p.batch_size,
                            device=p.device, precision=b.precision, crop=b.crop, workers=p.workers,
                            storage_dtype=b.storage_dtype, weights_seed=b.seed_for(b.resolved_weights),
                            image_size=b.image_size, progress=p.progress)
    say(f"extract {step.dataset.key} with {b.label}: {r.n_computed} computed"
        + (f" at {r.images_per_s:.1f} img/s" if r.n_computed else "")
        + f", {r.n_cached} already cached ({time.perf_counter() - t:.1f} s)")
    return {"seconds": r.seconds, "n_computed": r.n_computed, "n_cached": r.n_cached,
            "images_per_s": r.images_per_s, "store": r.store}


def _check_device(p: Pipeline, here: bool, in_file: bool) -> None:
    """`fne.devices.check_device` on the pipeline's device; a refused name the file gave is named by its key."""
    from fne.devices import check_device

    with in_the_files_words(in_file):
        check_device(p.device, here=here)


def _run_steps(steps: list[Step], p: Pipeline, cache: str | None, out: Path, data_for: dict[str, str],
               force: bool, say) -> tuple[int, int]:
    """Run the steps not done; returns (ran, skipped, failed: [(label, why)]).

    A step that fails (its data does not suit a mode, memory runs out) is named and the others
    run on; Ctrl-C and SIGTERM stop the run (finished steps are kept). A step runs under a lock
    beside its folder: another `fne run` of the same out folder waits for it, then skips it where
    it is done (two runs of one step would write one folder together)."""
    from fne.backbones.fetch import loading

    ran = skipped = 0
    failed: list[tuple[str, str]] = []
    extracted: dict[tuple, dict | str] = {}  # (dataset, backbone) -> its extraction, or why it failed
    for i, step in enumerate(steps, 1):
        tag = f"[{i}/{len(steps)}] {step.label}"
        with locked(run_lock(step.dir), process=True,
                    on_wait=lambda tag=tag: say(f"{tag}: another process (fne run, fit or train) is writing "
                                                f"this step's folder; waiting for it")):
            done, why = step.status()
            if not force and done:
                skipped += 1
                say(f"{tag}: done before, skipped" + why.removeprefix("done") + step.code_note())
                continue
            pair = (step.dataset.key, step.backbone.label)
            rows = needs_rows(step, bool(p.fit))
            try:
                with loading(weights_instead(step.backbone)):  # weights it cannot have: as the file gives them
                    if rows and pair not in extracted:
                        try:
                            extracted[pair] = _extract(step, p, cache, data_for[step.dataset.key], say)
                        except Exception as e:  # noqa: BLE001 -- its steps fail with it, the others run
                            extracted[pair] = f"extraction failed: {_one_line(e)}"
                    if rows and isinstance(extracted[pair], str):
                        raise FneError(extracted[pair])
                    say(f"{tag} ..." + (f" ({forced()})" if done else f" ({why})" if why != "new" else ""))
                    t = time.perf_counter()
                    result = run_step(step, p, cache, resume=not force)
            except Exception as e:  # noqa: BLE001 -- named, and in the report; the other steps still run
                why = refused_write(e, {"--out": out, "--cache": cache}) or _one_line(e)  # a full disk: the user's
                if not isinstance(e, FneError) and refused_write(e) is None:  # a bug: its traceback, for a report
                    why += f" (traceback in {_keep_traceback(step.dir, e)})"
                failed.append((step.label, why))
                say(f"{tag}: FAILED: {why}")
                continue
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM: what the training step in progress kept, then stop
                if step.kind == "train" and step.kwargs["mode"] != "direct":
                    from fne.pipeline.dryrun import checkpoint_note

                    say(f"{tag}: stopped" + (checkpoint_note(step, p, False, cache)
                                             or "; no epoch of it was saved yet: the rerun starts it anew"))
                raise
            secs = time.perf_counter() - t
            step.mark_done(secs, extract=extracted.get(pair) if step.kind == "fit" else None)
            ran += 1
            say(f"{tag}: {_summary_line(step, result)} [{secs:.1f} s]")
    return ran, skipped, failed


def _keep_traceback(folder: Path, e: Exception) -> Path:
    """`e`'s traceback in folder/traceback.txt (or the temporary folder when that cannot be written)."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(e))
    for where in (folder, Path(tempfile.gettempdir())):
        try:
            where.mkdir(parents=True, exist_ok=True)
            (where / "traceback.txt").write_text(text)
            return where / "traceback.txt"
        except OSError:
            continue
    return Path("-")


def _one_line(e: Exception) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return line if isinstance(e, FneError) and line else f"{type(e).__name__}: {line}".rstrip(": ")


def _report(steps: list[Step], p: Pipeline, out: Path, say) -> dict | None:
    from fne.reporting import report as report_mod

    done = [s for s in steps if s.done()]  # never a failed step's result of older settings
    dirs = [s.dir for s in done]
    if all(s.kind == "advise" for s in done):  # advice alone reports nothing (every fit and train failed)
        say("no step has a result yet: no report")
        return None
    rep = report_mod.report(dirs, out, extra_pipelines=[p.summary()])
    for n in rep["header"]["notes"]:
        say(f"note: {n}")
    if rep["header"]["warning"]:
        say(rep["header"]["warning"])
    say(report_mod.table_text(rep["datasets"]))
    say(f"report: {rep['md']} and {rep['html']} (tables: {rep['csv']}, {rep['tex']})")
    return rep


# ------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`fne run`'s command-line arguments; the pipeline file's keys under them (`config.keys_help`)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the keys' lines as written
    parser.epilog = config.keys_help()
    parser.add_argument("pipeline", help="a pipelines/*.toml file")
    parser.add_argument("--out", default=None, help="run folder (default: the file's pipeline.out, else runs/NAME)")
    parser.add_argument("--cache", default=None, help="cache folder or fsspec URL (default: the file's pipeline.cache, "
                                                      "else $FNE_CACHE, else `fne cache info`)")
    parser.add_argument("--force", action="store_true", help="rerun steps that are already done")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the steps, run nothing")
    parser.add_argument("--no-report", dest="report", action="store_const", const=False, default=None,
                        help="do not write the report at the end")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda[:i] or mps (overrides the file)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (overrides the file)")
    add_options(parser, ForwardOptions, only=RUN_OPTIONS)  # --no-progress, as every verb has it


def run_cli(args) -> int:
    """`fne run` from parsed arguments (`run`); -> the exit status."""
    run(args.pipeline, args.out, args.cache, force=args.force, dry_run=args.dry_run, report=args.report,
        device=args.device, workers=args.workers, progress=args.progress)
    sys.stdout.flush()
    return 0
