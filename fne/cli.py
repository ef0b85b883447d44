"""`fne` command line: a thin argparse layer over the Python API of the same verbs.

Each verb has its own `_add_<verb>` function; user mistakes (FneError) print one line and
exit 2; Ctrl-C (exit 130) and SIGTERM (`kill`, a batch scheduler's preemption or time limit; exit
143) stop the verb alike, after it has kept what it computed, with one line saying what was kept.
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import sys
import threading
import warnings

import fne
from fne.handoff import held  # light: main holds Ctrl-C from its first line, before any import

TYPE_CHECKING = False  # typing's own costs 4 ms of the window before main holds Ctrl-C
if TYPE_CHECKING:
    import argparse  # imported by `build_parser`, under main's hold (gettext, re: 6 ms)


def _add_data_verb(p: argparse.ArgumentParser, run, options: tuple, out: str | None = None) -> None:
    """A verb on DATA: its argument, ``--out`` (help `out`; none where None) and the options of the
    `fne.options` dataclasses `options`, which `run` reads back (`_options_given`): declared once."""
    from fne.option_handling import add_arguments
    from fne.options import DATA_HELP

    p.add_argument("data", help=DATA_HELP)
    if out is not None:
        p.add_argument("--out", required=True, help=out)
    add_arguments(p, *options)
    p.set_defaults(func=run, option_classes=options)


def _options_given(a) -> dict:
    """The keywords of the verb's options (`_add_data_verb`), as the command line parsed them."""
    from fne.option_handling import from_args

    return from_args(a, *a.option_classes)


# ----------------------------------------------------------------- extract
def _add_extract(p: argparse.ArgumentParser) -> None:
    from fne.options import DataOptions, ExtractOptions, StoreOptions

    _add_data_verb(p, _cmd_extract, (DataOptions, StoreOptions, ExtractOptions))


def _cmd_extract(a) -> int:
    from fne.data.shards import parse_shard, shard_from_env
    from fne.extraction.extract import extract

    kw = _options_given(a)
    # Only `fne extract` reads torchrun's RANK / WORLD_SIZE: no other verb shards implicitly.
    kw["shard"] = parse_shard(a.shard) if a.shard is not None else shard_from_env()  # before DATA is read
    r = extract(a.data, **kw)
    named = " (named above)" if r.n_skipped else ""
    if r.n_left_out:
        named += f", {r.n_left_out} left out when listing DATA (named above)"
    earlier = (f", {r.n_unreadable} recorded unreadable by an earlier run (--retry-bad reads them again)"
               if r.n_unreadable else "")
    rate = f" at {r.images_per_s:.1f} img/s" if r.n_computed else ""
    print(f"{r.n_images} images ({r.n_unique} unique): {r.n_cached} already cached, "
          f"{r.n_computed} computed{rate}, {r.n_skipped} skipped{named}{earlier}")
    print(f"store: {r.store}")
    return 0


# --------------------------------------------------------------------- fit
def _add_fit(p: argparse.ArgumentParser) -> None:
    from fne.options import DataOptions, FitOptions, ForwardOptions, StoreOptions

    _add_data_verb(p, _cmd_fit, (DataOptions, FitOptions, StoreOptions, ForwardOptions),
                   out="run folder for metrics.json, model.joblib and predictions.csv")


def _cmd_fit(a) -> int:
    from fne.linear.compare import choice_note
    from fne.linear.fit import fit

    m = fit(a.data, a.out, **_options_given(a))
    chose = choice_note(m)  # with auto: what it chose, as metrics.json and the report say it
    method = f"{m['method']} ({chose})" if chose else m["method"]
    acc, mca = (f"{m[k]:.4f}" + (f" ± {m[k + '_std']:.4f}" if m["n_splits"] > 1 else "")  # one split: no spread
                + f" ({100 * m[k + '_ci']['level']:g}% CI {m[k + '_ci']['low']:.4f}-{m[k + '_ci']['high']:.4f})"
                for k in ("accuracy", "mean_class_accuracy"))
    print(f"{method} on {m['dataset']}: accuracy {acc}, mean class accuracy {mca} ({m['n_splits']} split(s), "
          f"n_train {m['n_train']}, n_test {m['n_test']}, fit {m['fit_seconds']:.1f} s)")
    print(f"wrote metrics.json, model.joblib and predictions.csv in {a.out}")
    return 0


def _add_predict(p: argparse.ArgumentParser) -> None:
    from fne.linear.predict import STORE_OPTIONS
    from fne.option_handling import add_arguments
    from fne.options import DATA_HELP, DataOptions, ForwardOptions, PredictOptions, StoreOptions

    p.add_argument("run_dir", help="a `fne fit` run folder (its model.joblib) or a `fne train` one (its model.pt)")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("--out", required=True, help="predictions CSV (FILE.csv): path, predicted, score_<class>... "
                   "(a logreg head's probabilities, an svm head's decision margins, a `fne train` network's "
                   "softmax), true (where DATA has labels)")
    add_arguments(p, StoreOptions, only=STORE_OPTIONS)
    add_arguments(p, DataOptions, ForwardOptions, PredictOptions)
    said = {action.dest: action for action in p._actions}
    said["cache"].help = ("cache folder or fsspec URL (default: the --cache the model was fitted with, where it is "
                          "still there, else $FNE_CACHE, else `fne cache info`)")
    said["label_key"].help += " (default: the one the model was fitted with, where DATA is tar shards, Parquet or hf:)"
    p.set_defaults(func=_cmd_predict, pinned=_pinned_by_the_model())


def _pinned_by_the_model() -> tuple[str, ...]:
    """The flags `fne predict` has no use for, as the model fixes them (the store it was fitted
    from, its features and head): given, they are named with a line saying so."""
    from dataclasses import fields

    from fne.linear.predict import STORE_OPTIONS
    from fne.option_handling import flag
    from fne.options import FitOptions, StoreOptions

    return tuple(flag(f) for cls in (StoreOptions, FitOptions) for f in fields(cls) if f.name not in STORE_OPTIONS)


def _cmd_predict(a) -> int:
    from fne.linear.predict import STORE_OPTIONS, predict
    from fne.option_handling import from_args
    from fne.options import DataOptions, ForwardOptions, PredictOptions

    store = {k: getattr(a, k) for k in STORE_OPTIONS}
    r = predict(a.run_dir, a.data, a.out, **store, **from_args(a, DataOptions, ForwardOptions, PredictOptions))
    acc = f", accuracy {r['accuracy']:.4f}" if r.get("accuracy") is not None else ""
    if acc and r["n_scored"] < r["n"]:
        acc += f" over the {r['n_scored']} images whose label the model knows"
    skipped = f", {r['n_skipped']} skipped (unreadable)" if r.get("n_skipped") else ""
    print(f"wrote {r['n']} predictions to {a.out}{acc}{skipped}")
    return 0


def _add_export(p: argparse.ArgumentParser) -> None:
    from fne.options import DataOptions, ForwardOptions, RowsOptions, StoreOptions

    _add_data_verb(p, _cmd_export, (DataOptions, RowsOptions, StoreOptions, ForwardOptions), out="FILE.h5")


def _cmd_export(a) -> int:
    from fne.linear.export import export

    r = export(a.data, a.out, **_options_given(a))
    print(f"wrote {r['n']} rows ({', '.join(r['datasets'])}) to {a.out}")
    return 0


def _add_cache(p: argparse.ArgumentParser) -> None:
    from fne.cache.verbs import INFO_OPTIONS, RM_OPTIONS, VERIFY_OPTIONS
    from fne.option_handling import add_arguments
    from fne.options import CacheOptions, DataOptions, StoreOptions

    csub = p.add_subparsers(dest="cache_cmd", required=True)
    info = csub.add_parser("info", help="list stores: key, rows, size (and how many of DATA's images each holds)")
    info.add_argument("data", nargs="?", default=None, help="DATA whose images to look up in each store")
    add_arguments(info, StoreOptions, DataOptions, only=INFO_OPTIONS)
    info.set_defaults(func=_cmd_cache_info)
    ver = csub.add_parser("verify", help="check stores' integrity")
    ver.add_argument("store", nargs="?", default=None, help="one store: its name, as `fne cache info` lists it, or its folder (default: all)")
    add_arguments(ver, StoreOptions, CacheOptions, only=VERIFY_OPTIONS)
    ver.set_defaults(func=_cmd_cache_verify)
    rm = csub.add_parser("rm", help="remove whole stores (every row of a backbone, weights, preprocessing "
                                    "and precision) from the cache")
    rm.add_argument("stores", nargs="+", metavar="STORE",
                    help="a store's name as `fne cache info` lists it, or a shell pattern (quoted): 'vgg16__random*'")
    add_arguments(rm, StoreOptions, CacheOptions, only=RM_OPTIONS)
    rm.set_defaults(func=_cmd_cache_rm)


def _given(a, names: tuple[str, ...]) -> dict:
    """The keywords `names` of a `fne cache` function, as the command line parsed them."""
    return {n: getattr(a, n) for n in names}


def _cmd_cache_info(a) -> int:
    from fne.cache.verbs import INFO_OPTIONS, cache_info

    r = cache_info(a.data, **_given(a, INFO_OPTIONS))
    print(f"cache root: {r.root}" + ("" if r.exists else " (no such folder)"))
    if not r.stores:
        print("no stores")
    for s in r.stores:
        read = f" (read from {', '.join(s.weights_files)})" if s.weights_files else ""
        print(f"{s.name}\n  arch {s.arch}  weights {s.weights}{read}  preprocess {s.preprocess}  "
              f"precision {s.precision}  dtype {s.dtype}\n  rows {s.rows}  bad {s.bad}  "
              f"parts {s.parts}  size {s.size_bytes / 2**20:.1f} MiB")
        if s.earlier:
            print(f"  rows of an earlier fne's pixels (preprocessing {s.preprocess}): fne fit, predict and export "
                  f"no longer read them; `fne cache rm {s.name}` frees them")
        if s.data_cached is not None:
            print(f"  {r.data}: {s.data_cached} of {r.data_images} distinct images cached"
                  + (f", {s.data_unreadable} recorded unreadable" if s.data_unreadable else ""))
    if r.shuffled_copies:
        print(f"{len(r.shuffled_copies)} Parquet or HDF5 file(s) copied for fne train's shuffled reading: "
              f"{r.shuffled_bytes / 2**20:.1f} MiB in {os.path.dirname(r.shuffled_copies[0])} "
              f"(deleting them frees it; fne train copies again what it needs)")
    return 0


def _cmd_cache_verify(a) -> int:
    from fne.cache.upkeep import QUARANTINE
    from fne.cache.verbs import VERIFY_OPTIONS, cache_verify

    r = cache_verify(a.store, **_given(a, VERIFY_OPTIONS))
    for left in r.removals_finished:
        print(f"deleted {left}, left by a removal that stopped part-way")
    if not r.stores:
        print(f"no stores in {r.root}")
    for s in r.stores:
        if s.removed:  # a line only where --clean removed something (the summary says the rest)
            print(f"{s.name}: removed {s.removed} unfinished part(s) or temporary file(s) "
                  f"of interrupted runs")
        for name in s.quarantined:
            print(f"{s.name}: damaged part {name} moved to {s.path}/{QUARANTINE}/{name}; "
                  f"`fne extract` recomputes its rows")
        found = s.findings
        dup = f", {found.duplicates} duplicate rows (reads use the first)" if found.duplicates else ""
        print(f"{s.name}: {'OK' if found.ok else 'PROBLEMS'} ({found.rows} rows{dup})")
        for msg in found.problems:
            print(f"  - {msg}")
        if found.leftovers:
            print(f"  note: {len(found.leftovers)} unfinished part(s) left by interrupted runs (never read; " + (
                "kept by --clean: a running writer's, or not deletable, as said above)" if a.clean
                else "--clean removes them)"))
    if a.clean and r.stores:
        print(_cleaned(r))
    return 0 if r.ok else 1


def _cleaned(r) -> str:
    """`fne cache verify --clean`'s last line: what it removed over every store, or that it removed nothing."""
    removed, quarantined = sum(s.removed for s in r.stores), sum(len(s.quarantined) for s in r.stores)
    done = [f"removed {removed} unfinished part(s) or temporary file(s)" if removed else "",
            f"moved {quarantined} damaged part(s) to quarantine" if quarantined else "",
            f"finished {len(r.removals_finished)} removal(s)" if r.removals_finished else ""]
    kept = any(s.findings.leftovers for s in r.stores)  # not deletable, or a live writer's: noted above
    said = ", ".join(d for d in done if d) or ("nothing removed" if kept else "nothing to clean")
    return f"{len(r.stores)} store(s) verified, {said}"


def _cmd_cache_rm(a) -> int:
    from fne.cache.verbs import RM_OPTIONS, cache_rm

    r = cache_rm(a.stores, **_given(a, RM_OPTIONS))
    for s in r.stores:
        what = "its store.json unreadable" if s.unreadable else f"{s.rows} rows"
        print(f"{'would remove' if r.dry_run else 'removed'} {s.name} ({what}, {s.size_bytes / 2**20:.1f} MiB)")
    print(f"{'would free' if r.dry_run else 'freed'} {r.freed_bytes / 2**20:.1f} MiB in {r.root}")
    return 0


def _add_backbones(p: argparse.ArgumentParser) -> None:
    from fne.backbones.catalog import DESCRIBE_OPTIONS
    from fne.option_handling import add_arguments
    from fne.options import StoreOptions

    p.add_argument("arch", nargs="?", default=None, help="a registry name, torchvision model name or timm:NAME; "
                                                         "without it, the registry is listed")
    add_arguments(p, StoreOptions, only=DESCRIBE_OPTIONS)
    weights = next(action for action in p._actions if action.dest == "weights")
    weights.help = ("whose preprocessing to show: imagenet, a torchvision weights name (IMAGENET1K_V2), random or a "
                    "state dict path (then also whether it fits ARCH: exit 1 where it does not); nothing is downloaded "
                    "(default: imagenet)")
    p.add_argument("--json", action="store_true", help="print the taps and preprocessing as JSON")
    p.set_defaults(func=_cmd_backbones)


def _cmd_backbones(a) -> int:
    import json

    from fne.backbones.catalog import DESCRIBE_OPTIONS, describe_backbone, list_backbones
    from fne.backbones.registry import how_to_name
    from fne.errors import FneError

    if a.arch is None:
        for b in list_backbones():
            print(f"{b['name']:20s} {b['taps']:3d} taps, {b['dim']:6d} features, last {b['last']}")
        print(f"\nother backbones by name: {how_to_name()}")
        return 0
    try:
        d = describe_backbone(a.arch, **_given(a, DESCRIBE_OPTIONS))
    except FneError as e:  # ARCH is this verb's argument: it has no --arch flag
        said = getattr(e, "cli", "")
        for refused in ("unknown", "bad"):  # bad: an empty ARCH ('')
            if said.startswith(f"{refused} --arch "):
                e.cli = f"{refused} ARCH " + said.removeprefix(f"{refused} --arch ")
        raise
    unfit = int(not d.get("weights_fit", {"fits": True})["fits"])  # exit 1, as `cache verify` on a problem
    if a.json:
        print(json.dumps(d, indent=1))
        return unfit
    print(f"{d['arch']} ({d['source']}): {len(d['taps'])} taps, {d['dim']} features, last {d['last']}, "
          f"classifier {d['classifier']}")
    print("preprocess: " + ", ".join(f"{k} {v}" for k, v in d["preprocess"].items()))
    if "weights_fit" in d:  # a weights file: whether it fits, in one line (the refusal as extract would give it)
        from fne.backbones.fits import fit_of

        fit = d["weights_fit"]
        print(f"weights {fit['file']}: fits {d['arch']} (every tensor by name and shape, the classifier aside)"
              if fit["fits"] else fit_of(a.arch, a.weights).cli)
    for t in d["taps"]:
        print(f"  {t['name']:40s} {t['module']:36s} {t['channels']:6d} {t['pool']}"
              + (f" (prefix tokens {t['prefix_tokens']})" if t["pool"] in ("cls", "mean_tokens") else ""))
    return unfit


# ------------------------------------------------------------------ the verbs
def _module_verb(module: str):
    """A verb whose module declares its own options (add_arguments) and runs them (run_cli)."""

    def add(p: argparse.ArgumentParser) -> None:
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run_cli)

    return add


# verb -> (help, adds its options). Only the verb being run is built: building a parser imports
# its module, and `fne cache info` should not wait for torch and scikit-learn.
VERBS = {
    "extract": ("run the frozen network once per image into the cache", _add_extract),
    "fit": ("train a linear head on cached features and evaluate it", _add_fit),
    "predict": ("predict DATA's images with a model from `fne fit` or `fne train`", _add_predict),
    "export": ("write cached activations / embeddings of DATA to HDF5", _add_export),
    "train": ("direct / scratch / frozen / finetune transfer experiments", _module_verb("fne.training.train")),
    "run": ("run a pipelines/*.toml experiment end to end", _module_verb("fne.pipeline.runner")),
    "report": ("Markdown + HTML report from run folders", _module_verb("fne.reporting.report")),
    "advise": ("which transfer-learning experiment suits DATA, and why", _module_verb("fne.reporting.advise")),
    "cache": ("inspect, check and prune the activation cache", _add_cache),
    "backbones": ("list the backbone registry, or show one backbone's taps", _add_backbones),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: every verb listed, the options of the verb in argv[0] only (all
    verbs' options when argv is None)."""
    import argparse

    parser = argparse.ArgumentParser(prog="fne", description="transfer learning with full-network embeddings")
    parser.add_argument("--version", action="version", version=f"fne {fne.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = argv[0] if argv else None
    for verb, (text, add) in VERBS.items():
        p = sub.add_parser(verb, help=text, description=text)
        if argv is None or verb == chosen:
            add(p)
    parser.set_defaults(verbs=sub.choices)
    return parser


def _unrecognized(args: argparse.Namespace, extra: list[str]) -> None:
    """argparse's "unrecognized arguments" said by the verb's own parser (`fne predict: error:`,
    with its usage), not by fne's list of verbs; for `fne predict`, that the model fixes them."""
    given = {x.split("=")[0] for x in extra}
    pinned = sorted(given & set(getattr(args, "pinned", ())))
    hint = (f"; {', '.join(pinned)}: the model fixes them (the backbone, weights and preprocessing of the rows "
            f"it was fitted on, its features and head; its metrics.json records them)") if pinned else ""
    paths = [x for x in extra if not x.startswith("-") and os.path.exists(x)]
    if paths and getattr(args, "data", None) is not None:  # `fne extract images/*`: the shell gave every file
        hint += (f"; DATA is one path, and {len(paths) + 1} were given (a shell's * gives each file it matches): "
                 f"give their folder, or quote a pattern of tar shards or Parquet files ('shards/*.tar')")
    _innermost(args).error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def _said_by(args: argparse.Namespace) -> str:
    """The (sub)command an error is said by, as argparse's usage errors name it: `fne cache rm`."""
    return _innermost(args).prog if hasattr(args, "verbs") else f"fne {args.command}"


def _innermost(args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command `args` chose: `fne cache rm`'s, not `fne cache`'s."""
    import argparse

    parser = args.verbs[args.command]
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[chosen]


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one clean line (`fne: warning: skipped a.jpg: not an image file`), not
    Python's format with a source file and a line of code; a line break in it (a file named
    with one) shows as ↵, as report.md shows it; on a line of its own under a live bar
    (`fne.progress.print_line`)."""
    from fne.progress import print_line

    text = str(message).replace("\r\n", "↵").replace("\n", "↵").replace("\r", "↵")
    print_line(f"fne: warning: {text}", file or sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: the verb stops as on Ctrl-C (the extraction writer
    commits the rows it holds, a training run says where it can resume), instead of dying at once
    with its rows in memory. A second SIGTERM kills the process."""


def _terminate(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated


def _line_buffered(on: bool | None) -> bool | None:
    """Set stdout's line buffering (`on`; None leaves it) -> what it was (None: a stream without
    one, such as a StringIO). A verb's notes and results on stdout into a file or a pipe (Slurm,
    nohup, `> log 2>&1`, `| tee`) are then written line by line, in their place among the lines
    on stderr and seen by `tail -f` as they come, not held back in a block until the process
    ends (or lost with it, where it is killed)."""
    was = getattr(sys.stdout, "line_buffering", None)
    if on is not None and was is not None and was != on and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=on)
    return was


def _joined_shard(argv: list[str]) -> list[str]:
    """`--shard -1/2` as `--shard=-1/2`: argparse takes a value that starts with '-' (and is no
    plain negative number) for an option and says only "expected one argument"; joined, the
    value reaches `parse_shard`, which says what is wrong with it."""
    out: list[str] = []
    for a in argv:
        if out and out[-1] == "--shard" and a.startswith("-") and a[1:2].isdigit():
            out[-1] = f"--shard={a}"
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the `fne` command line on `argv` (default: `sys.argv[1:]`); -> the exit status.
    A user's mistake (`FneError`) is one line on stderr and status 2, never a traceback; a bad
    option value's (`fne.option_handling.refusal`'s `cli`) names its flag, where Python's names its keyword."""
    in_main = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    before = signal.signal(signal.SIGTERM, _terminate) if in_main else None  # first: no import before
    try:
        args, interrupted = _parsed(sys.argv[1:] if argv is None else list(argv))
        if args is None:  # a second Ctrl-C or SIGTERM before the verb was known
            print(f"fne: {_how(interrupted)}", file=sys.stderr)
            return _status(interrupted)
        return _verb(args, interrupted)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, before)


def _parsed(argv: list[str]) -> tuple[argparse.Namespace | None, KeyboardInterrupt | None]:
    """`argv` parsed and the modules of its verb imported, torch's among them, with SIGINT and
    SIGTERM held (`fne.handoff.held`) -> (the arguments, else None; the signal that came meanwhile).

    A KeyboardInterrupt raised inside torch's import can pass through its C++ initialisation,
    which then aborts the process (pybind11's ``error_already_set`` thrown where nothing catches
    it: exit 134, no line), or be swallowed by a bare ``except`` of a module torch imports (the
    command going on as if no Ctrl-C came); held, it is raised once the import is done, a second
    one at once."""
    args = None
    try:
        with held():
            argv = _joined_shard(argv)
            args, extra = build_parser(argv).parse_known_args(argv)
            if extra:
                _unrecognized(args, extra)
            if args.command not in _TORCHLESS:
                importlib.import_module("torch")
    except KeyboardInterrupt as e:
        return args, e
    return args, None


# The verbs that import torch only where they need it (`fne cache info` answers at once; `fne fit`,
# `fne predict` and `fne export` on rows already cached need no network): their first import of it is
# held where it is made (`fne.handoff.imported`).
_TORCHLESS = ("cache", "report", "fit", "predict", "export")


def _how(e: KeyboardInterrupt) -> str:
    return "terminated" if isinstance(e, Terminated) else "interrupted"


def _status(e: KeyboardInterrupt) -> int:
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


def _verb(args: argparse.Namespace, interrupted: KeyboardInterrupt | None) -> int:
    """Run the verb `args` name -> its exit status; `interrupted`: the Ctrl-C or SIGTERM that came
    as its arguments were read, which stops it before it begins."""
    from fne.errors import FneError
    from fne.progress import COMMAND_LINE, said_once
    from fne.stopped import checkpoint_found, how_to_resume, ran_out

    warnings.simplefilter("default")
    warnings.showwarning = _one_line
    buffered = _line_buffered(True)
    found = checkpoint_found(args)  # train: an earlier run's checkpoint, told from this run's
    words = COMMAND_LINE.set(True)  # what the verb prints names flags (`fne.progress.said`)
    try:
        if interrupted is not None:
            raise interrupted
        with said_once():  # a warning the verb gives again (a split's, a step's) is one line
            return int(args.func(args) or 0)
    except FneError as e:
        print(f"{_said_by(args)}: error: {getattr(e, 'cli', e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"fne {args.command}: {_how(e)}; {how_to_resume(args, found)}", file=sys.stderr)
        return _status(e)
    except BrokenPipeError:  # `fne ... | head` closed the pipe: stop quietly, as a filter does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 128 + getattr(signal, "SIGPIPE", 13)  # Windows has no SIGPIPE
    except Exception as e:
        line = ran_out(args, e, found)
        if line is None:
            raise
        print(f"{_said_by(args)}: error: {line}", file=sys.stderr)
        if _ENDING:  # the process ends: what fails tearing down after this line (a DataLoader that
            sys.unraisablehook = lambda unraisable: None  # never started its workers, zarr's atexit) is noise
            warnings.simplefilter("ignore")
        return 2
    finally:
        COMMAND_LINE.reset(words)
        _line_buffered(buffered)


_ENDING = False  # set by `run`: the process ends when `main` returns


def run() -> None:
    """The `fne` command (and ``python -m fne.cli``): `main` on the process's arguments, then exit.

    A verb that returned ends as `_exit` says: what the interpreter's exit guarantees is done
    (threads joined, atexit handlers run, output flushed), its finalisation is not (0.4-0.8 s of
    every command on the 2-core development machine; benchmarks/RESULTS.md). Everything a verb
    writes is closed before it returns. In a process that goes on, call `main`.

    An interrupted verb (Ctrl-C, SIGTERM) ends without the interpreter's finalisation: the model's
    build may still be running on its daemon thread inside torch (`TapRunner.prepare`), and
    finalising under it aborts the process ("terminate called without an active exception",
    exit 134) after the one line that said what was kept. So does a verb that failed while a daemon
    thread still runs (the loader's shared memory ran out as the model was being built).
    """
    global _ENDING
    _ENDING = True
    code = main()
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM) or code and any(t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _exit(code)


def _exit(code: int) -> None:
    """End the process with `code` as the interpreter's exit does, less its finalisation.

    First what that exit does and a verb may rely on: the threads that are no daemons joined
    (after `concurrent.futures`' pools are told to stop), the atexit handlers run (multiprocessing's:
    its finalizers, children ended and joined; logging's flush; `weakref.finalize`'s: temporary
    folders; zarr's event loop; a coverage tool's data), stdout and stderr flushed (C's buffers
    too). Then `os._exit`: the finalisation left out tears down every module and object torch and
    the verb made, and runs the C++ libraries' static destructors, for a process that ends anyway.
    A flush that fails (a full disk under `> log`) exits 120, as Python's own exit does.
    """
    shutdown = getattr(threading, "_shutdown", None)  # what Py_Finalize calls first (CPython 3.11-3.13)
    if shutdown is None:
        sys.exit(code)
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: no console (pythonw)
                stream.flush()
        except (OSError, ValueError):  # ValueError: a stream a handler closed
            code = code or 120
    if os.name == "posix":  # a C extension's printf into a pipe or file
        import ctypes

        ctypes.CDLL(None).fflush(None)
    os._exit(code)


if __name__ == "__main__":
    run()
