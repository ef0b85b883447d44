"""The command line: each verb's options declared once (fne/options.py) and agreeing with the
Python API and the pipeline schema; a CLI that behaves as a Unix filter."""

from __future__ import annotations

import os
import sys


def test_output_piped_into_a_closed_pipe_exits_quietly():
    """`fne backbones vgg16 --json | head -c 0`: the reader is gone before fne writes; no traceback."""
    import subprocess

    p = subprocess.Popen([sys.executable, "-m", "fne.cli", "backbones", "vgg16", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # long before the interpreter has started and imported torch
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert err == ""


def test_the_command_leaves_complete_outputs_and_exits_with_mains_code(digits_folder, tmp_path):
    """`fne` as a process (`fne.cli.run`: the objects left are frozen out of the garbage
    collector before the interpreter ends): its store verifies, its run folder is whole, what it
    printed arrives, and a user mistake still exits 2 with one line."""
    import json
    import subprocess

    from .conftest import FAST

    fast = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    cache, out = tmp_path / "cache", tmp_path / "run"
    fit = subprocess.run([sys.executable, "-m", "fne.cli", "fit", str(digits_folder), "--extract", "--features",
                          "last", "--head", "logreg", "--splits", "1", "--cache", str(cache), "--out", str(out),
                          "--no-progress", *fast], capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr
    assert "last+logreg on" in fit.stdout and json.loads((out / "metrics.json").read_text())["n_images"] == 24
    assert {"model.joblib", "predictions.csv"} <= {p.name for p in out.iterdir()}
    assert main(["cache", "verify", "--cache", str(cache)]) == 0
    bad = subprocess.run([sys.executable, "-m", "fne.cli", "fit", str(tmp_path / "absent"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "fne fit: error:" in bad.stderr



def test_the_command_ends_with_what_the_interpreters_exit_guarantees(tmp_path):
    """`fne.cli.run` after a verb returned (it ends with `os._exit`, without the interpreter's
    finalisation): threads that are no daemons joined, atexit handlers, `weakref.finalize`'s and
    logging's flush run, a non-daemon child joined, Python's and C's buffered output (into a
    file) written, the verb's code the exit status."""
    import subprocess

    out = tmp_path / "out"
    script = f"""
import atexit, ctypes, logging, logging.handlers, multiprocessing, sys, threading, time, weakref
import fne.cli
OUT = {str(out)!r}
def mark(name):
    with open(f"{{OUT}}/{{name}}", "w") as f:
        f.write(name)
def late(name):
    time.sleep(0.5)
    mark(name)
def verb(a):
    global kept, target
    print("the verb's line", end="")  # no newline: still in the buffer as the verb returns
    sys.stderr.write("a note, unflushed")
    ctypes.CDLL(None).printf(b"C's line")  # C's stdio buffer, into a file
    threading.Thread(target=late, args=("thread",), daemon=False).start()
    multiprocessing.get_context("fork").Process(target=late, args=("child",), daemon=False).start()
    atexit.register(mark, "atexit")
    kept = type("Kept", (), {{}})()
    weakref.finalize(kept, mark, "weakref")
    log = logging.getLogger("t")
    target = logging.FileHandler(f"{{OUT}}/log")  # kept: logging's shutdown closes it after the memory handler
    log.addHandler(logging.handlers.MemoryHandler(100, target=target))
    log.warning("held until logging's shutdown")
    return 3
fne.cli._cmd_backbones = verb
sys.argv = ["fne", "backbones"]
fne.cli.run()
"""
    out.mkdir()
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        p = subprocess.run([sys.executable, "-c", script], stdout=so, stderr=se, timeout=300)
    assert p.returncode == 3, (tmp_path / "stderr").read_text()
    assert (tmp_path / "stdout").read_text() == "the verb's lineC's line"
    assert (tmp_path / "stderr").read_text() == "a note, unflushed"
    assert sorted(f.name for f in out.iterdir()) == ["atexit", "child", "log", "thread", "weakref"]
    assert (out / "log").read_text() == "held until logging's shutdown\n"


def _left_in_dev_shm(before: set[str], wait_s: float = 60.0) -> set[str]:
    """The shared-memory segments (torch's, multiprocessing's) in /dev/shm that were not there
    `before` and stay: a leaked one stays for ever; one of another test's extraction running beside
    this one (pytest -n) goes with it, so the check waits for it to go rather than failing."""
    import time

    def new() -> set[str]:
        now = set(os.listdir("/dev/shm")) if before else set()
        return {n for n in now - before if n.startswith(("torch_", "psm_", "sem.mp", "wnsm_"))}

    left, end = new(), time.monotonic() + wait_s
    while left and time.monotonic() < end:
        time.sleep(0.5)
        left &= new()  # only those there all along: a segment made meanwhile is another's
    return left


def test_the_extract_command_with_workers_leaves_its_rows_output_and_no_shared_memory(digits_folder, tmp_path):
    """`fne extract` with two loader workers, its output into a file: exit 0, both lines there,
    the store verifies with every image's row, no shared-memory segment left in /dev/shm and no
    leaked-resource warning (the process ends with `os._exit` once its exit's duties are done)."""
    import subprocess

    from .conftest import FAST

    shm = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    cache = tmp_path / "cache"
    fast = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    with open(tmp_path / "stdout", "w") as so:
        p = subprocess.run([sys.executable, "-m", "fne.cli", "extract", str(digits_folder), "--cache", str(cache),
                            "--workers", "2", "--batch-size", "4", "--no-progress", *fast],
                           stdout=so, stderr=subprocess.PIPE, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = (tmp_path / "stdout").read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("24 images (24 unique): 0 already cached, 24 computed")
    assert lines[1].startswith(f"store: {cache}")
    assert "leaked" not in p.stderr and "Traceback" not in p.stderr
    assert not _left_in_dev_shm(shm)
    assert main(["cache", "verify", "--cache", str(cache)]) == 0
    from fne.cache.store import list_stores

    (store,) = list_stores(str(cache))
    assert len(store) == 24



def test_the_extract_verb_imports_zarr_only_to_read_or_write_a_part(digits_folder, tmp_path):
    """`import fne`, the `fne extract` parser and `fne.extract` import neither zarr nor what it
    brings (numcodecs, fsspec, yaml): 0.2-0.5 s of every fresh process, spent where a part is
    first read or written (the writer's thread imports it as it starts); the rows are then written."""
    import json
    import subprocess

    from .conftest import FAST

    script = f"""
import json, sys
import fne, fne.cli
from fne.extraction.extract import extract
fne.cli.build_parser(["extract"])
before = sorted({{m.split(".")[0] for m in sys.modules}} & {{"zarr", "numcodecs", "fsspec", "yaml"}})
r = extract({str(digits_folder)!r}, cache={str(tmp_path / "c")!r}, workers=0, progress=False, **{FAST!r})
print(json.dumps([before, r.n_computed, "zarr" in sys.modules]))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1]) == [[], 24, True]


# ------------------------------------------------------------------ one declaration per verb
import argparse  # noqa: E402
import dataclasses  # noqa: E402

import pytest  # noqa: E402

from fne import options as O  # noqa: E402
from fne.cli import build_parser, main  # noqa: E402
from fne.option_handling import flag  # noqa: E402

VERBS = {  # verb -> (option classes, what the verb declares beside them)
    "extract": ((O.DataOptions, O.StoreOptions, O.ExtractOptions), {"data"}),
    "fit": ((O.DataOptions, O.FitOptions, O.StoreOptions, O.ForwardOptions), {"data", "out"}),
    "export": ((O.DataOptions, O.RowsOptions, O.StoreOptions, O.ForwardOptions), {"data", "out"}),
    "train": ((O.DataOptions, O.TrainConfig), {"data", "cache"}),  # cache: StoreOptions' (the one it takes)
    "advise": ((O.DataOptions, O.AdviseOptions, O.StoreOptions, O.ForwardOptions), {"data", "json", "out"}),
}


def _actions(verb: str) -> dict[str, argparse.Action]:
    parser = build_parser([verb])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    return {a.dest: a for a in sub._actions if a.dest not in ("help",)}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_cli_offers_exactly_the_declared_options_with_their_defaults(verb):
    classes, own = VERBS[verb]
    actions = _actions(verb)
    declared = {f.name: f for c in classes for f in dataclasses.fields(c)
                if f.metadata["opt"].cli}
    assert set(actions) - own == set(declared)
    for name, f in declared.items():
        if f.default is not dataclasses.MISSING:  # fne train's options some modes ignore: absent unless given
            assert actions[name].default == (argparse.SUPPRESS if f.metadata["opt"].modes else f.default), name
        assert actions[name].option_strings == [flag(f)]
        if f.default not in (dataclasses.MISSING, None, True, False):  # --help lists it (README)
            assert "default" in actions[name].help, name


def test_train_takes_the_cache_option_the_store_verbs_declare():
    """`fne train --cache` is StoreOptions' cache (flag, default, help), not a second declaration."""
    from fne.training.train import STORE_OPTIONS

    (f,) = [f for f in dataclasses.fields(O.StoreOptions) if f.name in STORE_OPTIONS]
    cache = _actions("train")["cache"]
    assert (cache.option_strings, cache.default, cache.help) == ([flag(f)], None, f.metadata["opt"].help)
    assert cache.help == _actions("fit")["cache"].help


def test_run_help_names_the_cache_and_devices_the_other_verbs_use():
    # `fne run` without --cache reads $FNE_CACHE, else the default root (fne.cache.store.cache_root),
    # never a ./cache of the working directory; it takes an fsspec URL as the other verbs' --cache
    # (tests/test_cache_fsspec.py runs one); its --device takes what the other verbs' does
    run = _actions("run")
    assert "./cache" not in run["cache"].help and "fne cache info" in run["cache"].help
    assert run["cache"].help.startswith("cache folder or fsspec URL (") and "fsspec URL" in _actions("fit")["cache"].help
    assert "mps" in run["device"].help and "mps" in _actions("fit")["device"].help


def test_run_help_lists_every_key_a_pipeline_file_may_set(capsys):
    """`fne run --help` lists the file's keys by table (SCHEMA, TRAIN_SCHEMA: what validation
    takes), with their types; a key whose default in a file differs from its option's says so, and a
    true/false key said by its --no- flag says what false does, in the file's terms."""
    import re

    from fne.pipeline.config import SCHEMA, TRAIN_SCHEMA

    with pytest.raises(SystemExit):
        build_parser(["run", "--help"]).parse_args(["run", "--help"])
    text = capsys.readouterr().out.split("keys of a pipeline file")[1]
    tables = re.split(r"^  (\S.*)$", text, flags=re.M)[1:]
    listed = {title: set(re.findall(r"^    (\w+) \(", body, re.M)) for title, body in zip(tables[::2], tables[1::2])}
    assert listed == {"[pipeline]": set(SCHEMA["pipeline"]), "[datasets.NAME]": set(SCHEMA["datasets.*"]),
                      "[[backbones]]": set(SCHEMA["backbones[]"]), "[fit]": set(SCHEMA["fit"]),
                      "[train], [train.MODE]": set(TRAIN_SCHEMA)}
    flat = " ".join(text.split())
    assert "(in a pipeline file, default: float16)" in flat and flat.count("(in a pipeline file") == 1
    assert "augment (bool): false: train on center crops" in flat
    # in the file's words: `augment = false`, not the command line's --no-augment
    assert "(with augmentation only: `augment = false` decodes in the workers)" in flat and "--no-" not in text
    # a file takes a weights value the command line does not (fne.names.WEIGHT_CHOICES): its key says so
    assert "weights (str): imagenet (" in flat and "in a file also imagenet-or-random" in flat


def _readme_commands() -> tuple[list[list[str]], list[str]]:
    """The README's `fne` commands: whole ones from its code blocks (argv after `fne`; torchrun's
    and srun's included), and the `fne VERB …` fragments quoted in its prose."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    whole = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            if not re.match(r"\s*([A-Z_]+=\S+\s+)*(srun\s+)?(fne|torchrun)\s", line):
                continue  # Python, TOML, other tools
            toks = shlex.split(line, comments=True)
            while toks and (re.match(r"^[A-Z_]+=", toks[0]) or toks[0] == "srun"):
                toks = toks[1:]
            if "fne.cli" in toks:  # torchrun ... -m fne.cli VERB ...
                toks = ["fne", *toks[toks.index("fne.cli") + 1:]]
            if len(toks) > 1 and toks[0] == "fne":
                whole.append(toks[1:])
    return whole, re.findall(r"`fne ([a-z]+ [^`]*)`", text)


def test_the_readmes_commands_use_options_that_exist(capsys):
    """Every `fne` command in the README's code blocks parses; every option quoted in a
    `fne VERB …` fragment in its prose is one of that verb's."""
    import re

    whole, fragments = _readme_commands()
    assert len(whole) >= 15 and len(fragments) >= 25  # the README's, not an empty match
    for argv in whole:
        try:
            build_parser(argv).parse_args(argv)
        except SystemExit:
            raise AssertionError(f"README: fne {' '.join(argv)}: {capsys.readouterr().err.strip()}") from None
    for frag in fragments:
        verb = frag.split()[0].rstrip(":")
        if verb not in ("cache",) and not frag.startswith(f"{verb}:"):  # not an error message
            offered = {s for a in _actions(verb).values() for s in a.option_strings} | {"--help"}
            for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", frag):
                assert opt in offered, f"README: `fne {frag}` quotes {opt}, which fne {verb} does not offer"


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_help_says_its_default_as_every_other_does(verb):
    """`(default: …)`, one way: --stream-chunk's help said "(default 1024)", --arch's "vgg16 (default)",
    --solver's "auto (default): …", train's --weights "imagenet (default; scratch: random)"."""
    for dest, a in _actions(verb).items():
        said = " ".join((a.help or "").split())
        assert "(default " not in said and "(default)" not in said and "(default;" not in said, f"fne {verb} --{dest}: {said}"


def test_predict_offers_the_forward_options_and_only_cache_and_device_of_the_store():
    from fne.linear.predict import STORE_OPTIONS

    actions = _actions("predict")
    forward = {f.name for c in (O.DataOptions, O.ForwardOptions, O.PredictOptions) for f in dataclasses.fields(c)
               if f.metadata["opt"].cli}
    assert set(actions) == {"run_dir", "data", "out", *STORE_OPTIONS, *forward}


def test_predict_help_says_what_its_scores_are_and_that_the_cache_is_the_models():
    """`fne predict --help`: the CSV's columns and what a score is for each kind of model; --cache's
    default is the cache the model was fitted with (what `predict` does), not only $FNE_CACHE."""
    actions = _actions("predict")
    out = " ".join(actions["out"].help.split())
    assert "path, predicted, score_<class>" in out and "probabilities" in out and "margins" in out
    assert "softmax" in out and "true" in out
    assert actions["cache"].help.startswith("cache folder or fsspec URL (default: the --cache the model was fitted")
    # predict reads DATA's labels with the model's label key where none is given (predict._label_key)
    assert actions["label_key"].help.endswith("(default: the one the model was fitted with, where DATA is tar "
                                              "shards, Parquet or hf:)")
    assert "default" not in _actions("fit")["label_key"].help  # the shared declaration is left as it is


class _Reached(Exception):
    pass


@pytest.mark.parametrize("verb, module", [("fit", "fne.linear.fit"), ("export", "fne.linear.export")])
def test_every_cli_option_reaches_the_api(verb, module, monkeypatch, tmp_path):
    """What the CLI parses is what the verb reads its rows with: --decode device included
    (it used to be parsed and then dropped, so device-decoded rows were never found)."""
    import importlib

    seen = {}

    def reached(data, spec, verb_name, extract_missing, extraction, **checks):
        seen.update(spec=spec, extract_missing=extract_missing, extraction=extraction)
        raise _Reached

    monkeypatch.setattr(importlib.import_module(module), "open_rows", reached)
    with pytest.raises(_Reached):
        main([verb, "digits", "--out", str(tmp_path / "x"), "--arch", "efficientnet_lite0", "--weights",
              "random", "--decode", "device", "--crop", "squash", "--precision", "fp32", "--storage-dtype",
              "float32", "--seed-weights", "3", "--device", "cpu", "--batch-size", "7", "--workers", "0",
              "--compile", "off", "--extract"])
    s, e = seen["spec"], seen["extraction"]
    assert (s.arch, s.weights, s.decode, s.crop, s.precision, s.storage_dtype, s.weights_seed, s.device) == (
        "efficientnet_lite0", "random", "device", "squash", "fp32", "float32", 3, "cpu")
    assert (e.batch_size, e.workers, e.compile, seen["extract_missing"]) == (7, 0, "off", True)


def test_pipeline_schema_is_the_declared_options():
    from fne.pipeline.config import SCHEMA, TRAIN_SCHEMA

    def pipeline_fields(cls):
        return {f.name for f in dataclasses.fields(cls) if f.metadata["opt"].pipeline}

    assert set(SCHEMA["backbones[]"]) - {"label", "features"} == pipeline_fields(O.StoreOptions)
    assert set(TRAIN_SCHEMA) - {"modes"} == pipeline_fields(O.TrainConfig)
    # the grid: lists of features and heads, each a FitOptions value
    assert set(SCHEMA["fit"]) - {"enabled", "heads"} == pipeline_fields(O.FitOptions) - {"head"}
    assert pipeline_fields(O.ForwardOptions) <= set(SCHEMA["pipeline"])


def test_the_pipeline_keys_say_their_defaults_as_the_options_do():
    """The pipeline file's keys said their defaults another way ("(default [0])", "default true"):
    `(default: …)`, as `--help` says them, and the default said is the one a file without the
    key gets (written by `keys_help` from the defaults, as TOML writes them)."""
    import re

    from fne.option_handling import toml_value
    from fne.pipeline.config import SCHEMA, TRAIN_SCHEMA, Pipeline, keys_help

    described = [(f"{table}.{k}", d) for table, keys in (*SCHEMA.items(), ("train", TRAIN_SCHEMA))
                 for k, (_, d) in keys.items()]
    for key, d in described:
        assert not re.search(r"(^|\()default [^-]", d), f"{key}: {d}"  # "default --out": the flag it defaults
    options = {f.name for c in (O.StoreOptions, O.ForwardOptions) for f in dataclasses.fields(c)}  # --help's
    lines = keys_help(width=10_000).split("  [pipeline]\n")[1].split("\n  [")[0].splitlines()  # a key a line
    said = {k: m[1] for line in lines for k in [line.split()[0]]
            if k not in options and (m := re.search(r"\(default: (.+)\)$", line))}
    assert set(said) == {"seeds", "advise", "advise_sample", "report"}
    got = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
           for f in dataclasses.fields(Pipeline) if f.name in said}
    assert said == {k: toml_value(v) for k, v in got.items()}


def test_a_bad_value_is_refused_alike_by_the_cli_and_a_pipeline(tmp_path, capsys):
    from fne.pipeline.config import load_pipeline
    from fne.pipeline.config_errors import PipelineError

    assert main(["extract", "digits", "--crop", "middle"]) == 2
    assert "unknown --crop 'middle'; choose from center, squash, ten" in capsys.readouterr().err
    f = tmp_path / "p.toml"
    f.write_text('[datasets.d]\ndata = "digits"\n\n[[backbones]]\narch = "vgg16"\ncrop = "middle"\n\n'
                 '[fit]\nfeatures = ["fc7"]\n')
    with pytest.raises(PipelineError, match=r"backbones\[0\]\.crop: 'middle': expected one of center, squash, ten"):
        load_pipeline(f)


def test_running_out_of_device_memory_is_one_line_that_says_what_to_do(monkeypatch, capsys):
    """A batch too large for the GPU: one line (no traceback) that says the committed rows are
    kept and what to rerun with."""
    import torch

    import fne.extraction.extract as fx

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(fx, "extract", oom)
    assert main(["extract", "digits", "--batch-size", "4096"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("fne extract: error: the device ran out of memory (CUDA out of memory. Tried to allocate "
                   "2.00 GiB); committed work is kept, rerun with a smaller --batch-size to resume")
    monkeypatch.setattr(fx, "extract", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # other errors are not dressed up as this one
        main(["extract", "digits"])


def test_version_is_the_packages(capsys):
    """`fne --version` prints the version that the installed distribution declares (pyproject's
    version is read from `fne.__version__`, one place)."""
    from importlib.metadata import version

    import fne

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fne {fne.__version__}"
    assert version("fne-toolkit") == fne.__version__


def test_an_option_the_verb_lacks_is_named_by_the_verb(capsys):
    """`fne predict RUN new/ --arch efficientnet_lite0 --weights imagenet --out p.csv`, as `fne fit`
    was called: argparse answered with fne's list of verbs and `fne: error: unrecognized arguments`.
    The verb's own usage and name now, and for predict, that the model fixes those options."""
    with pytest.raises(SystemExit) as e:
        main(["predict", "RUN", "new", "--out", "p.csv", "--arch", "efficientnet_lite0", "--weights=imagenet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: fne predict ")
    assert err.splitlines()[-1] == (
        "fne predict: error: unrecognized arguments: --arch efficientnet_lite0 --weights=imagenet; --arch, "
        "--weights: the model fixes them (the backbone, weights and preprocessing of the rows it was fitted on, "
        "its features and head; its metrics.json records them)")
    with pytest.raises(SystemExit) as e:
        main(["fit", "DATA", "--out", "RUN", "--colour", "red"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: fne fit ")
    assert err.splitlines()[-1] == "fne fit: error: unrecognized arguments: --colour red"


def test_data_a_shell_expanded_into_several_paths_is_named(tmp_path, capsys, monkeypatch):
    """`fne extract images/*`: the shell gives every class folder (or image), and argparse said
    only `unrecognized arguments: images/b images/c`; now also that DATA is one path."""
    monkeypatch.chdir(tmp_path)
    for c in "abc":
        (tmp_path / "images" / c).mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        main(["extract", "images/a", "images/b", "images/c", "--weights", "random"])
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == (
        "fne extract: error: unrecognized arguments: images/b images/c; DATA is one path, and 3 were given (a "
        "shell's * gives each file it matches): give their folder, or quote a pattern of tar shards or Parquet "
        "files ('shards/*.tar')")


# ------------------------------------------------------------------ a user's mistake: one line
@pytest.mark.parametrize("argv,said", [
    (["fit", "DATA", "--out", "RUN", "--C", "inf"], "bad --C 'inf'; must be finite"),
    (["fit", "DATA", "--out", "RUN", "--C", "1e400"], "bad --C '1e400'; must be finite"),
    (["fit", "DATA", "--out", "RUN", "--seed", "-1"], "bad --seed -1: --seed must be in [0, 2**32)"),
    (["advise", "DATA", "--seed", "4294967296"], "bad --seed 4294967296: --seed must be in [0, 2**32)"),
    (["train", "DATA", "--mode", "frozen", "--out", "RUN", "--seed", "-1"], "bad --seed -1: --seed must be in"),
    (["train", "DATA", "--mode", "frozen", "--out", "RUN", "--lr", "inf"],
     "bad --lr inf: --lr must be a finite number in (0, 3.4e38]"),
    # past float32's largest: torch's overflow traceback at the first step
    (["train", "DATA", "--mode", "frozen", "--out", "RUN", "--lr", "1e308"], "bad --lr 1e+308: --lr must be in (0, 3.4e38]"),
    # each within its bound, their product past float32's: the same traceback at the first step
    (["train", "DATA", "--mode", "finetune", "--out", "RUN", "--lr", "1e30", "--imported-lr-mult", "1e20"],
     "--lr 1e+30 times --imported-lr-mult 1e+20 is the imported layers' learning rate, 1e+50, past float32's "
     "largest (3.4e38): lower one of the two"),
    (["train", "DATA", "--mode", "frozen", "--out", "RUN", "--momentum", "inf"],
     "bad --momentum inf: --momentum must be a finite number in [0, 1)"),
    (["train", "DATA", "--mode", "frozen", "--out", "RUN", "--weight-decay=-inf"],
     "bad --weight-decay -inf: --weight-decay must be a finite number in [0, 3.4e38]"),
    (["fit", "DATA", "--out", ""], "--out '': is empty; give the folder to write"),
    (["train", "DATA", "--mode", "frozen", "--out", ""], "--out '': is empty; give the folder to write"),
    (["export", "DATA", "--out", ""], "--out '': is empty; give the file to write"),
    (["report", "DATA", "--out", ""], "--out '': is empty; give the folder to write"),
    (["fit", "", "--out", "RUN"], "DATA '' is empty"),
    (["extract", "/dev/null"], "DATA /dev/null: neither a folder nor a file"),
    (["cache", "verify", "DATA"], "DATA is not a cache store (no store.json)"),
    (["backbones", "vgg16", "--weights", "bogus"], "--weights 'bogus': no such file"),  # it exited 0
    (["export", "DATA", "--out", "x.h5", "--features", "auto"], "--features auto is `fne fit`'s cross-validated"),
    (["extract", "DATA", "--shard", ""], "bad --shard ''; expected I/N"),
    (["fit", "DATA", "--out", "RUN", "--label-key", "cls"], "--label-key 'cls': applies to tar shards, Parquet"),
    (["extract", "DATA", "--workers", "100000"], f"bad --workers 100000: --workers must be in [0, {O.MAX_WORKERS}]"),
    (["train", "DATA", "--mode", "frozen", "--out", "RUN", "--workers", "100000"], "bad --workers 100000"),
    (["train", "DATA", "--mode", "frozen", "--out", "RUN", "--image-size", "100000"],
     "bad --image-size 100000: --image-size must be in [8, 4096]"),
    (["train", "DATA", "--mode", "frozen", "--out", "RUN", "--direct-score", "max"],
     "--direct-score applies to --mode direct only, not frozen"),
    (["train", "DATA", "--mode", "scratch", "--out", "RUN", "--new-layers", "last"],
     "--new-layers applies to --mode frozen or finetune only, not scratch"),
    (["train", "DATA", "--mode", "direct", "--out", "RUN", "--epochs", "3"],
     "--epochs applies to --mode scratch, frozen or finetune only, not direct"),
    (["fit", "DATA", "--out", "RUN", "--splits", "1000000"], "bad --splits 1000000: --splits must be in [1, 100]"),
    (["extract", "DATA", "--shard", "-1/2"], "bad --shard '-1/2': need 0 <= I < N"),  # not argparse's "expected one"
    (["extract", "DATA", "--seed-weights", "3"], "--seed-weights 3 applies to --weights random only, not imagenet"),
    (["fit", "DATA", "--out", "RUN", "--weights", "imagenet", "--seed-weights", "1"],
     "--seed-weights 1 applies to --weights random only, not imagenet"),
    (["train", "DATA", "--mode", "frozen", "--out", "RUN", "--seed-weights", "2"],
     "--seed-weights 2 applies to --weights random only, not imagenet"),
    (["train", "DATA", "--mode", "scratch", "--out", "RUN", "--seed-weights", "2"],
     "--seed-weights 2 applies to --weights random only (--mode scratch draws its network from --seed)"),
    (["extract", "DATA", "RANK=x"], "bad $RANK='x' / $WORLD_SIZE='2' (torchrun's)"),
    (["extract", "DATA", "RANK=2"], "bad $RANK='2' / $WORLD_SIZE='2' (torchrun's)"),
    # an unset $CACHE: it made manifests/ in this folder, and read it as the cache
    (["extract", "digits", "--cache", ""], "--cache '': is empty; give the cache folder"),
    (["fit", "digits", "--out", "RUN", "--cache", " "], "--cache ' ': is empty; give the cache folder"),
    (["cache", "info", "--cache", ""], "--cache '': is empty; give the cache folder"),
])
def test_a_mistaken_option_or_path_is_one_line_naming_it(argv, said, tmp_path, capsys, monkeypatch):
    """Values a new user gives by mistake (an infinity, a negative seed, an empty `$OUT` or
    `$DATA`, a device for DATA, a file for a store): exit 2 and one line naming the argument,
    before any work, and nothing written where the empty path would have meant this folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DATA").write_text("a file, not DATA")
    for a in [a for a in argv if a.startswith("RANK=")]:  # torchrun's environment, misset
        monkeypatch.setenv("RANK", a.removeprefix("RANK="))
        monkeypatch.setenv("WORLD_SIZE", "2")
        argv.remove(a)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and said in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DATA"]


@pytest.mark.parametrize("device", ["cpu:1", "meta", "xla"])
@pytest.mark.parametrize("argv", [["extract", "--cache", "C"], ["train", "--mode", "frozen", "--out", "RUN"]])
def test_a_cpu_with_an_index_is_refused_in_one_line(argv, device, digits_folder, tmp_path, capsys, monkeypatch):
    """torch ignores a CPU's index: `--device cpu:1` ran on the CPU as if it meant something. Refused
    with the other options, before DATA is listed or anything written; so is a device type torch
    names but fne does not run on (`--device meta` passed and failed mid-run with torch's
    "unsupported autocast device_type" traceback)."""
    monkeypatch.chdir(tmp_path)
    code = main([argv[0], str(digits_folder), *argv[1:], "--arch", "efficientnet_lite0", "--weights", "random",
                 "--device", device])
    err = capsys.readouterr().err
    assert code == 2 and err == f"fne {argv[0]}: error: bad --device '{device}': --device must be auto, cpu, " \
                                "cuda[:i] or mps (the CPU takes no index: torch runs on all its cores)\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb,other,model", [(["fit"], "fne train", "model.pt"),
                                              (["train", "--mode", "frozen"], "fne fit", "model.joblib")])
def test_a_run_folder_of_the_other_verb_is_refused_whole(verb, other, model, tmp_path, capsys):
    """`fne train --out RUN` on a `fne fit` run (or the reverse) replaced the run's metrics.json
    and left both models in one folder (`fne predict` took the fit's head, `fne report` the
    train's numbers): refused before any work, the run as it was."""
    run = tmp_path / "run"
    run.mkdir()
    (run / model).write_text("the other verb's model")
    (run / "metrics.json").write_text("{}")
    assert main([verb[0], str(tmp_path / "absent"), *verb[1:], "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out '{run}': holds a `{other}` run ({model})" in err
    assert sorted(p.name for p in run.iterdir()) == sorted([model, "metrics.json"])
    assert (run / "metrics.json").read_text() == "{}"


def test_a_warning_naming_a_file_with_a_line_break_stays_one_line(digits_folder, tmp_path, capsys):
    """A file named with a line break (a script's slip, a macOS name) split the warning that
    names it over two lines; the break shows as ↵, as report.md shows it."""
    import shutil

    from fne.cli import main

    from .conftest import FAST

    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    (data / "0" / "bad\nname.png").write_bytes(b"not a png")
    fast = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    assert main(["extract", str(data), *fast, "--cache", str(tmp_path / "c"), "--workers", "0", "--no-progress"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "fne: warning: skipped 0/bad↵name.png: not an image file" in lines
    assert all(line.startswith(("fne", "extract")) for line in lines)  # no line of a name's second half


def test_a_verbs_stdout_into_a_log_is_written_line_by_line(monkeypatch):
    """`fne VERB > log 2>&1` (Slurm, nohup): stdout, block-buffered into a file, held a verb's
    notes and results back until the process ended, out of their place among stderr's lines
    and unseen by `tail -f`; while a verb runs stdout is line-buffered, and is as it was after."""
    import io

    import fne.backbones.catalog as catalog

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", line_buffering=False)
    monkeypatch.setattr(sys, "stdout", out)
    seen = []

    def listed():
        seen.append(out.line_buffering)
        print("a note")
        seen.append(raw.getvalue())
        return []

    monkeypatch.setattr(catalog, "list_backbones", listed)
    assert main(["backbones"]) == 0
    assert seen == [True, b"a note\n"]
    assert out.line_buffering is False


def test_solver_help_states_the_sizes_auto_switches_at():
    """--solver auto's help said "scikit-learn while its copy of the rows fits in memory": auto
    switches at fixed sizes (fne.linear.solver), whatever the machine's memory; the help names them."""
    from fne.linear.solver import CPU_TORCH_ABOVE, GPU_TORCH_ABOVE

    said = " ".join(_actions("fit")["solver"].help.split())
    assert f"rows x features = {CPU_TORCH_ABOVE:.0e}".replace("e+0", "e") in said
    assert f"rows x features x classes = {GPU_TORCH_ABOVE:.1e}".replace("e+0", "e") in said


def test_backbones_names_an_unknown_arch_as_its_argument_not_a_flag(capsys):
    """`fne backbones nope` said "unknown --arch 'nope'": the verb takes ARCH as its argument and has
    no --arch; the Python API keeps its keyword's name."""
    import fne
    from fne.errors import OptionError

    assert main(["backbones", "vgg61"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fne backbones: error: unknown ARCH 'vgg61'.") and "--arch" not in err
    with pytest.raises(OptionError, match=r"^unknown arch='vgg61'\."):
        fne.describe_backbone("vgg61")
    assert main(["backbones", ""]) == 2  # an empty ARCH is refused as "bad": named as the argument too
    err = capsys.readouterr().err
    assert err.startswith("fne backbones: error: bad ARCH ''") and "--arch" not in err


def test_a_default_written_into_a_help_is_the_declared_one():
    """A help that says its default itself (`add_arguments` then adds none) says the declared one:
    --stream-chunk's "(default: 1024)" and --weights' "(default: imagenet)" are written by hand, and
    would go on saying so after the declaration changed."""
    import re

    written = 0
    for cls in (O.DataOptions, O.StoreOptions, O.ForwardOptions, O.ExtractOptions, O.RowsOptions, O.FitOptions,
                O.PredictOptions, O.AdviseOptions, O.CacheOptions, O.TrainConfig):
        for f in dataclasses.fields(cls):
            said = re.search(r"\(default: ([^);]+)", f.metadata["opt"].help)
            if said and f.default not in (dataclasses.MISSING, None, True, False):
                written += 1
                assert said[1] == str(f.default), f"{cls.__name__}.{f.name}: help says {said[1]!r}, declared {f.default!r}"
    assert written >= 2  # --stream-chunk's and --weights' at least


def test_a_pipeline_fit_table_without_a_key_takes_fne_fits_default(tmp_path):
    """`fne run --help` lists [fit]'s keys by fne fit's options and gives no defaults of its own:
    a key left out is fne fit's default (they were copied by hand into the loader)."""
    from fne.pipeline.config import load_pipeline

    f = tmp_path / "p.toml"
    f.write_text('[pipeline]\nname = "x"\n[datasets.d]\ndata = "digits"\n[[backbones]]\narch = "efficientnet_lite0"\n'
                 'weights = "random"\n[fit]\n')
    fit = {o.name: o.default for o in dataclasses.fields(O.FitOptions)}
    assert load_pipeline(f).fit == {"features": [fit["features"]], "heads": [fit["head"]], "C": fit["C"],
                                    **{k: fit[k] for k in ("splits", "test_size", "train_per_class", "solver")}}


def test_backbones_help_says_its_weights_download_nothing():
    """`fne backbones --weights` shared the store verbs' help, "imagenet (...; downloads once)":
    describe_backbone reads the weights' metadata and a file's names and shapes, and downloads nothing."""
    parser = build_parser(["backbones"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["backbones"]
    (weights,) = [a for a in sub._actions if a.dest == "weights"]
    assert "downloads" not in weights.help and "nothing is downloaded (default: imagenet)" in weights.help
    assert weights.default == "imagenet"


def test_a_switch_is_named_as_typed_in_both_directions():
    """A message naming a switch's value on the command line names the flag a user types: a
    --no-NAME switch's False is `--no-NAME`, its True `without --no-NAME`, a store-true switch's
    True its flag (it said `--augment False`, `--train-bn True`); in Python, the keyword."""
    from fne.option_handling import named

    assert [named("augment", False, v) for v in (False, True)] == ["--no-augment", "without --no-augment"]
    assert [named("train_bn", False, v) for v in (True, False)] == ["--train-bn", "without --train-bn"]
    assert named("augment", True, False) == "augment=False" and named("lr", False, 0.1) == "--lr 0.1"


@pytest.mark.parametrize("argv", [
    ["extract", "digits", "--arch", "efficientnet_lite0", "--weights", "random", "--seed-weights", "99999999999999999999"],
    ["extract", "digits", "--arch", "efficientnet_lite0", "--weights", "random", "--seed-weights", "-1"],
    ["train", "digits", "--mode", "frozen", "--out", "RUN", "--weights", "random", "--seed-weights", "4294967296"],
])
def test_a_weights_seed_out_of_range_is_one_line(argv, tmp_path, capsys, monkeypatch):
    """--seed-weights 99999999999999999999 reached torch.manual_seed as the network was built:
    "ValueError: Overflow when unpacking long long", a traceback; -1 made a store of its own
    (`random-seed-1`) of the weights torch also draws from 2**64 - 1. It takes the range of every
    other seed, [0, 2**32), checked before any work."""
    monkeypatch.chdir(tmp_path)
    code = main([*argv, "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"bad --seed-weights {argv[-1]}: --seed-weights must be in [0, 2**32)" in err
    assert list(tmp_path.iterdir()) == []


def test_an_unrecognized_argument_of_a_cache_subcommand_is_said_by_its_parser(capsys):
    """`fne cache rm --store x` said `fne cache: error:` with `fne cache`'s usage, which lists its
    subcommands, not the options of `rm`; the subcommand's own parser says it, as a verb's does."""
    with pytest.raises(SystemExit) as e:
        main(["cache", "rm", "--store", "nope"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "usage: fne cache rm [-h]" in err and "fne cache rm: error: unrecognized arguments: --store" in err


@pytest.mark.parametrize("sub", [["info"], ["verify"], ["rm", "x"]])
def test_a_cache_subcommands_error_is_said_by_the_subcommand(sub, tmp_path, capsys):
    """`fne cache info --cache FILE` said `fne cache: error: ...`, where its usage errors say
    `fne cache info: error:`: one prefix for both."""
    (tmp_path / "f").write_text("x")
    assert main(["cache", *sub, "--cache", str(tmp_path / "f")]) == 2
    assert capsys.readouterr().err.startswith(f"fne cache {sub[0]}: error: --cache ")
