"""The Python API as a notebook uses it: DATA's rows in memory, the exported HDF5 read without
fne, and errors that name the argument."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC

import fne
import fne.options
from fne import option_handling as opts
from fne.cache.store import list_stores
from fne.cli import build_parser, main
from fne.data.datasets import load_dataset
from fne.errors import CacheError, DataError, FneError, OptionError, WeightsError
from fne.linear.embedding import FullNetworkEmbedding
from fne.option_handling import check, uses

from .conftest import FAST

STORE = dict(FAST, precision="fp32", storage_dtype="float32")


@pytest.fixture(scope="module")
def split_cache(tmp_path_factory, digits_split):
    cache = tmp_path_factory.mktemp("cache")
    fne.extract(digits_split, cache=str(cache), batch_size=16, progress=False, **FAST)
    return str(cache)


def _all_rows(cache, data) -> np.ndarray:
    (store,) = list_stores(cache)
    arrays = store.read(load_dataset(data).keys(), [t for t, _ in store.taps])
    return np.concatenate([arrays[t] for t, _ in store.taps], axis=2)[:, 0]


def test_load_rows_gives_data_rows_labels_ids_and_split_in_memory(digits_split, split_cache):
    r = fne.load_rows(digits_split, cache=split_cache, stream_chunk=4, **STORE)
    d = load_dataset(digits_split)
    assert r.X.dtype == np.float32 and np.array_equal(r.X, _all_rows(split_cache, digits_split))
    assert list(r.y) == d.labels and list(r.ids) == d.ids and list(r.split) == d.splits
    assert list(r.keys) == d.keys() and r.classes == ["0", "1", "2"] and r.kind == "fne"
    assert r.columns["head"] == (r.X.shape[1] - 1280, r.X.shape[1]) and r.layers[-1] == "head"
    assert os.path.isabs(r.attrs["root"]) and r.attrs["arch"] == FAST["arch"]
    train = r.split == "train"
    clf = make_pipeline(r.make_transform(), LinearSVC()).fit(r.X[train], r.y[train])
    assert clf.score(r.X[~train], r.y[~train]) >= 0  # the rows feed a user's own pipeline
    assert np.allclose(clf[0].mean_, r.X[train].mean(0))


def test_load_rows_of_chosen_layers(digits_folder, warm_cache):
    r = fne.load_rows(digits_folder, features="block3,head", cache=str(warm_cache), **STORE)
    assert r.layers == ["block3", "head"] and r.kind == "l2" and r.split is None
    assert r.columns == {"block3": (0, 40), "head": (40, 1320)} and r.X.shape == (24, 1320)
    assert np.array_equal(r.X[:, 40:], _all_rows(warm_cache, digits_folder)[:, -1280:])


def test_export_is_self_describing_and_readable_without_fne(digits_split, split_cache, tmp_path):
    out = tmp_path / "x.h5"
    fne.export(digits_split, out=out, cache=split_cache, **STORE)
    r = fne.load_rows(digits_split, cache=split_cache, **STORE)
    with h5py.File(out) as f:
        e = f["embedding"]
        assert list(f["layers"]) == r.layers  # network order, not block0, block1, block10, ...
        assert list(e.attrs["layers"]) == r.layers
        assert [tuple(c) for c in e.attrs["columns"]] == [r.columns[la] for la in r.layers]
        for la, (a, b) in r.columns.items():
            assert np.array_equal(f["layers"][la][()], r.X[:, a:b])
        assert list(f["keys"].asstr()) == list(r.keys) and f.attrs["root"] == r.attrs["root"]
        # the statistics are the train split's only, as fit's
        train = r.split == "train"
        assert e.attrs["fit_rows"] == "train split" and np.allclose(f["embedding_mean"][()], r.X[train].mean(0))
        assert np.array_equal(e[()], FullNetworkEmbedding().fit(r.X[train]).transform(r.X))
        # pandas, as the README shows it
        df = pd.DataFrame(e[()], index=f["paths"].asstr()[()])
        df["label"], df["split"] = f["labels"].asstr()[()], f["split"].asstr()[()]
    assert list(df.index) == list(r.ids) and list(df["label"]) == list(r.y)


def test_exporting_again_replaces_the_file_whole(digits_folder, warm_cache, tmp_path):
    out = tmp_path / "x.h5"
    fne.export(digits_folder, out=out, cache=str(warm_cache), **STORE)
    fne.export(digits_folder, features="block3,head", out=out, cache=str(warm_cache), **STORE)
    with h5py.File(out) as f:
        assert list(f["layers"]) == ["block3", "head"] and "embedding_mean" not in f
        assert f["embedding"].shape == (24, 1320) and f["embedding"].dtype == np.float32
        assert np.allclose(np.linalg.norm(f["embedding"][()], axis=1), 1, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]


def test_api_mistakes_are_named(digits_folder, warm_cache, tmp_path):
    kw = dict(cache=str(warm_cache), **STORE)
    with pytest.raises(TypeError, match="^features must be a string, not NoneType None$"):
        fne.load_rows(digits_folder, features=None, **kw)
    with pytest.raises(TypeError, match="stream_chunk must be an integer"):
        fne.export(digits_folder, out=tmp_path / "x.h5", stream_chunk="10", **kw)
    with pytest.raises(DataError, match="DATA .*absent.* does not exist"):
        fne.load_rows(tmp_path / "absent", **kw)
    with pytest.raises(FneError, match="has no layer 'fc7'"):
        fne.load_rows(digits_folder, features="fc7", **kw)
    with pytest.raises(FneError, match=r"(?s)the 24 images .* not in the cache .*empty-cache, a folder that does not "
                                       r"exist; .*fne extract .*\(or pass extract_missing=True, to let `fne\.load_rows` run"):
        fne.load_rows(digits_folder, cache=str(tmp_path / "empty-cache"), **STORE)
    assert not (tmp_path / "empty-cache").exists()  # reading created no cache


@pytest.mark.parametrize("call,exc,said", [
    (lambda t: fne.fit(None, out=t / "r"), TypeError, "^data: expected a path (str or os.PathLike), got NoneType$"),
    (lambda t: fne.extract(["a.png"]), TypeError, "^data: expected a path (str or os.PathLike), got list$"),
    (lambda t: fne.train(None, mode="frozen", out=t / "r"), TypeError, "^data must be a string, not NoneType None$"),
    (lambda t: fne.train("digits", mode="frozen", out=None), TypeError, "^out must be a string, not NoneType None$"),
    (lambda t: fne.predict(None, "digits", out=t / "p.csv"), TypeError, "^run_dir: expected a path"),
    (lambda t: fne.run(None), TypeError, "^path: expected a path"),
    (lambda t: fne.report([], out=t / "rep"), FneError, "^no RUN_DIR given$"),
    (lambda t: fne.report([None], out=t / "rep"), TypeError, "^run_dirs: expected a path"),
    (lambda t: fne.extract("digits", shard=(1,)), FneError, r"^bad shard=\(1,\); expected \(I, N\)"),
    # a truth test took force="false" for True: every step of the pipeline rerun
    (lambda t: fne.run(t / "p.toml", force="false"), TypeError, "^force must be True or False, not str 'false'$"),
    (lambda t: fne.run(t / "p.toml", dry_run=0), TypeError, "^dry_run must be True or False, not int 0$"),
    (lambda t: fne.run(t / "p.toml", report="no"), TypeError, "^report must be True or False or None, not str 'no'$"),
    (lambda t: fne.report([t / "r"], out=t / "rep", figures="no"), TypeError, "^figures must be True or False, not str"),
    # "must be True or False" left out "auto", which fne.train takes (fne run passes it)
    (lambda t: fne.train("digits", mode="frozen", out=t / "r", resume="maybe"), TypeError,
     "^resume must be True, False or 'auto', not str 'maybe'$"),
    (lambda t: fne.train("digits", mode="frozen", out=t / "r", resume=1), TypeError,
     "^resume must be True, False or 'auto', not int 1$"),
    # the shared refusal of a `store` that is no StoreSpec said "expected a StoreSpec", naming no keyword
    (lambda t: fne.advise(t / "d", store=5), TypeError, r"^store must be a fne\.cache\.spec\.StoreSpec or None, not int 5$"),
    (lambda t: fne.extract(t / "d", store="vgg16"), TypeError, "^store must be a fne.cache.spec.StoreSpec or None, not str"),
    (lambda t: fne.export(t / "d", out=t / "x.h5", store={}), TypeError, "^store must be a .*StoreSpec or None, not dict"),
])
def test_api_arguments_that_are_no_paths_are_named_before_any_work(call, exc, said, tmp_path):
    """A Python caller's None (or a list) where a path goes: the keyword named, not a
    `DATA 'None' does not exist` nor a folder named None (train's out=None was str()-ed into one)."""
    with pytest.raises(exc, match=said.replace("(str", r"\(str").replace("PathLike)", r"PathLike\)")):
        call(tmp_path)
    assert list(tmp_path.iterdir()) == [] and not Path("None").exists()


# verb -> (its Python call, its command line), on DATA that does not exist: options are checked first
BAD_OPTION_CALLS = {
    "fit": (lambda t, kw: fne.fit(t / "absent", out=t / "run", **kw), ["fit", "absent", "--out", "run"]),
    "extract": (lambda t, kw: fne.extract(t / "absent", **kw), ["extract", "absent"]),
    "advise": (lambda t, kw: fne.advise(t / "absent", **kw), ["advise", "absent"]),
    "train": (lambda t, kw: fne.train(t / "absent", "frozen", t / "run", **kw),
              ["train", "absent", "--mode", "frozen", "--out", "run"]),
    "train scratch": (lambda t, kw: fne.train(t / "absent", "scratch", t / "run", **kw),
                      ["train", "absent", "--mode", "scratch", "--out", "run"]),
}
# The refusals of another class than OptionError: (verb, the keyword given) -> the class (runner.py tells
# weights apart)
REFUSED_AS = {("train", "weights"): WeightsError}
DEVICES = "must be auto, cpu, cuda[:i] or mps (the CPU takes no index"


@pytest.mark.parametrize("verb,kw,flags,python,cli", [
    ("fit", dict(head="svmm"), ["--head", "svmm"], "unknown head='svmm'; choose from svm, logreg",
     "unknown --head 'svmm'; choose from svm, logreg"),
    ("fit", dict(stream_chunk=0), ["--stream-chunk", "0"], "bad stream_chunk=0: stream_chunk must be >= 1",
     "bad --stream-chunk 0: --stream-chunk must be >= 1"),
    ("fit", dict(C=-1), ["--C", "-1"], "bad C=-1; must be > 0", "bad --C '-1'; must be > 0"),
    ("extract", dict(crop="middle"), ["--crop", "middle"], "unknown crop='middle'; choose from center",
     "unknown --crop 'middle'; choose from center"),
    ("advise", dict(seed=-1), ["--seed", "-1"], "bad seed=-1: seed must be in [0, 2**32)",
     "bad --seed -1: --seed must be in [0, 2**32)"),
    ("train", dict(val_fraction=1.5), ["--val-fraction", "1.5"], "bad val_fraction=1.5: val_fraction must be in [0, 1)",
     "bad --val-fraction 1.5: --val-fraction must be in [0, 1)"),
    ("train", dict(direct_score="max"), ["--direct-score", "max"],
     "direct_score applies to mode 'direct' only, not 'frozen'", "--direct-score applies to --mode direct only, not frozen"),
    ("extract", dict(weights_seed=3), ["--seed-weights", "3"], "weights_seed=3 applies to weights='random' only",
     "--seed-weights 3 applies to --weights random only"),
    ("extract", dict(device="cpu:1"), ["--device", "cpu:1"], f"bad device='cpu:1': device {DEVICES}",
     f"bad --device 'cpu:1': --device {DEVICES}"),
    ("train", dict(device="gpu"), ["--device", "gpu"], f"bad device='gpu': device {DEVICES}",
     f"bad --device 'gpu': --device {DEVICES}"),
    ("advise", dict(device="cuda:x"), ["--device", "cuda:x"], "bad device='cuda:x'", "bad --device 'cuda:x'"),
    ("extract", dict(device="meta"), ["--device", "meta"], f"bad device='meta': device {DEVICES}",
     f"bad --device 'meta': --device {DEVICES}"),
    # past sys.maxsize torch's sampler raised a traceback once the first batch was drawn
    ("extract", dict(batch_size=2**63), ["--batch-size", str(2**63)],
     f"bad batch_size={2**63}: batch_size must be in [1, 65536] or auto", f"bad --batch-size {2**63}: --batch-size"),
    ("train", dict(batch_size=65537), ["--batch-size", "65537"], "bad batch_size=65537: batch_size must be in [1, 65536]",
     "bad --batch-size 65537: --batch-size must be in [1, 65536]"),
    ("extract", dict(shard=(1,)), ["--shard", "1"], "bad shard=(1,); expected (I, N), e.g. (0, 4)",
     "bad --shard '1'; expected I/N, e.g. 0/4"),
    ("train", dict(weights="bogus"), ["--weights", "bogus"], "weights='bogus': no such file",
     "--weights 'bogus': no such file"),
    ("train scratch", dict(weights="imagenet"), ["--weights", "imagenet"],
     "mode='scratch' trains from a random initialisation; weights='imagenet' does not apply",
     "--mode scratch trains from a random initialisation; --weights 'imagenet' does not apply"),
    ("fit", dict(features="auto", head="sgd-svm"), ["--features", "auto", "--head", "sgd-svm"],
     "auto selection (features='auto') is not available with SGD heads (head='sgd-svm')",
     "auto selection (--features auto) is not available with SGD heads (--head sgd-svm)"),
])
def test_a_refused_option_value_names_the_keyword_in_python_and_the_flag_on_the_command_line(
        verb, kw, flags, python, cli, tmp_path, monkeypatch, capsys):
    """One message, said of what the user typed: ``fne.fit(..., head="svmm")`` names ``head=``,
    `fne fit --head svmm` names ``--head``."""
    call, argv = BAD_OPTION_CALLS[verb]
    with pytest.raises(REFUSED_AS.get((verb, *kw), OptionError)) as e:
        call(tmp_path, kw)
    assert str(e.value).startswith(python) and "--" not in str(e.value)
    monkeypatch.chdir(tmp_path)
    assert main([*argv, *flags]) == 2
    assert capsys.readouterr().err.startswith(f"fne {verb.split()[0]}: error: {cli}")
    assert list(tmp_path.iterdir()) == []  # refused before any work


def _deep(name: str):
    """A function that raises its refusals below the verbs' option checks (after DATA is read)."""
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("call,kind,python,cli", [
    (lambda t: _deep("fne.devices.resolve_precision")("fp8", None), OptionError,
     "unknown precision='fp8'; choose from", "unknown --precision 'fp8'; choose from"),
    (lambda t: _deep("fne.devices.resolve_batch_size")("many", None), OptionError,
     "bad batch_size='many'; expected an integer in [1, 65536] or auto", "bad --batch-size 'many'; expected"),
    (lambda t: _deep("fne.backbones.registry.get")("vgg17"), OptionError,
     "unknown arch='vgg17'. Did you mean", "unknown --arch 'vgg17'. Did you mean"),
    (lambda t: _deep("fne.backbones.registry.read_state_dict")(t / "w.pt"), WeightsError,
     "weights='{t}/w.pt': no such file", "--weights '{t}/w.pt': no such file"),
    (lambda t: _deep("fne.training.transfer.new_layer_names")(None, "frozen", "all"), OptionError,
     "unknown new_layers='all'; choose from", "unknown --new-layers 'all'; choose from"),
    (lambda t: _deep("fne.training.class_map.read_class_map")(t / "m.json", [], []), OptionError,
     "class_map='{t}/m.json': no such file", "--class-map '{t}/m.json': no such file"),
    (lambda t: _deep("fne.training.checkpoint.read")(t / "c.pt"), FneError,
     "resume=True: no checkpoint {t}/c.pt (a run writes one after an epoch: see save_every)",
     "--resume: no checkpoint {t}/c.pt (a run writes one after an epoch: see --save-every)"),
    (lambda t: _deep("fne.cache.fs.check_target")(t, folder=False), OptionError,
     "out='{t}': is a folder; give the file to write", "--out '{t}': is a folder"),
    (lambda t: _deep("fne.data.datasets.load_dataset")(t, label_key="cls"), DataError,
     "label_key='cls': applies to tar shards", "--label-key 'cls': applies to tar shards"),
    (lambda t: _deep("fne.data.splits.stratified")(np.arange(4), np.array([0, 1, 2, 3]), 0.25, 0, "test_size"),
     DataError, "cannot carve a stratified test_size=0.25 part", "cannot carve a stratified --test-size 0.25 part"),
    (lambda t: _deep("fne.linear.features.parse_features")(
        "auto", importlib.import_module("fne.backbones.registry").get("efficientnet_lite0", "random")), OptionError,
     "features='auto' is `fne fit`'s cross-validated choice", "--features auto is `fne fit`'s"),
    (lambda t: _deep("fne.linear.features.parse_features")(  # its columns twice, weighted double without a word
        "last,head", importlib.import_module("fne.backbones.registry").get("efficientnet_lite0", "random")),
     OptionError, "bad features='last,head': head named twice (last is head here); give each layer once",
     "bad --features 'last,head': head named twice"),
    (lambda t: _deep("fne.linear.heads.make_head")("svmm"), OptionError,
     "unknown head='svmm'; choose from", "unknown --head 'svmm'; choose from"),
    (lambda t: _deep("fne.linear.solver.resolve_solver")("numpy", "svm", 1, 1, 2), OptionError,
     "unknown solver='numpy'; choose from", "unknown --solver 'numpy'; choose from"),
    (lambda t: _deep("fne.cache.store.cache_root")(t / "f.txt"), CacheError,
     "cache='{t}/f.txt': is a file", "--cache '{t}/f.txt': is a file"),
])
def test_a_refusal_raised_below_the_option_checks_names_the_keyword_and_on_the_command_line_the_flag(
        call, kind, python, cli, tmp_path):
    """Refusals met later than the verbs' first checks (a device, weights, a class map, a
    checkpoint, a split that DATA cannot give): Python's message names the keyword, the
    exception's `cli` (what `fne VERB` prints) the flag."""
    (tmp_path / "f.txt").write_text("a file")
    with pytest.raises(kind) as e:
        call(tmp_path)
    assert str(e.value).startswith(python.format(t=tmp_path)) and "--" not in str(e.value)
    assert e.value.cli.startswith(cli.format(t=tmp_path))


def test_predict_with_a_network_parses_the_device_before_the_run_and_data_are_read(tmp_path):
    """`fne predict` of a `fne train` run: --device is parsed first (it was resolved after DATA's
    listing), named as the caller did."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_bytes(b"not read")
    with pytest.raises(OptionError, match=r"^bad device='cpu:1': device must be") as e:
        fne.predict(tmp_path / "run", tmp_path / "absent", out=tmp_path / "p.csv", device="cpu:1")
    assert e.value.cli.startswith("bad --device 'cpu:1': --device must be")


def test_report_takes_one_run_folder_as_a_path(tmp_path):
    """`fne.report("runs/a", out=...)`: one folder, not its characters one by one."""
    from .test_report import make_runs

    runs = make_runs(tmp_path / "runs")
    fne.report(str(runs / "a"), out=tmp_path / "rep", figures=False)
    assert "fne+svm" in (tmp_path / "rep" / "report.md").read_text()


def test_an_output_that_is_data_or_inside_it_is_refused_before_any_work(digits_folder, tmp_path):
    data = tmp_path / "data.h5"
    with h5py.File(data, "w") as f:
        f["images"], f["labels"] = np.zeros((2, 8, 8, 3), np.uint8), ["a", "b"]
    before = data.read_bytes()
    with pytest.raises(FneError, match=r"^out='.*data.h5': is DATA .*data.h5; writing there would change the data"):
        fne.export(data, out=data, cache=str(tmp_path / "c"), **STORE)
    assert data.read_bytes() == before
    with pytest.raises(FneError, match="^out='.*train.h5': is inside DATA"):
        fne.predict(tmp_path / "run", tmp_path, out=tmp_path / "train.h5")
    with pytest.raises(FneError, match="^out='.*/runs/a': is inside DATA"):
        fne.fit(digits_folder, out=digits_folder / "runs" / "a", cache=str(tmp_path / "c"), **STORE)
    assert not (digits_folder / "runs").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data.h5"]


# ------------------------------------------------------------ the CLI and the API: one set of options

# verb -> (the module whose function of that name the CLI calls, the command line's required arguments)
VERB_CALLS = {
    "extract": ("fne.extraction.extract", ["DATA"]),
    "fit": ("fne.linear.fit", ["DATA", "--out", "OUT"]),
    "predict": ("fne.linear.predict", ["RUN", "DATA", "--out", "OUT"]),
    "export": ("fne.linear.export", ["DATA", "--out", "OUT"]),
    "train": ("fne.training.train", ["DATA", "--mode", "frozen", "--out", "OUT"]),
    "run": ("fne.pipeline.runner", ["P.toml"]),
    "report": ("fne.reporting.report", ["RUN", "--out", "OUT"]),
    "advise": ("fne.reporting.advise", ["DATA"]),
}
# What one side has and the other has not, and why.
API_ONLY = {"store": "a StoreSpec object; the command line gives its fields one by one",
            "log": "fne.run's progress lines to a callable instead of print",
            "extra_pipelines": "fne run hands its own pipeline summaries to fne.report"}
CLI_ONLY = {("advise", "json"): "prints the returned dict as JSON",
            ("advise", "out"): "writes the returned dict to a file",
            ("backbones", "json"): "prints describe_backbone's dict as JSON"}
NOT_ON_THE_COMMAND_LINE = {f.name for cls in (fne.options.ForwardOptions, fne.options.TrainConfig)
                           for f in dataclasses.fields(cls) if not f.metadata["opt"].cli} - {"data"}
REQUIRED = "required"


class _Called(Exception):
    """What the command line called its verb with (raised instead of running it)."""


def _cli(*command: str) -> tuple[list[str], dict]:
    """The command line's positional arguments (in order) and option -> default (REQUIRED) of
    `command`: a verb, or a verb and its subcommand (`cache`, `info`)."""
    parser = build_parser([command[0]])
    for name in command:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    acts = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    return ([a.dest for a in acts if not a.option_strings],
            {a.dest: REQUIRED if a.required else a.default for a in acts if a.option_strings})


def _api(verb: str) -> tuple[list[str], dict]:
    """The Python verb's positional parameters (in order) and keyword -> default (REQUIRED)."""
    params = inspect.signature(getattr(importlib.import_module(VERB_CALLS[verb][0]), verb)).parameters.values()
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    return positional, {p.name: REQUIRED if p.default is p.empty else p.default for p in params}


@pytest.mark.parametrize("verb", VERB_CALLS)
def test_every_option_of_the_command_line_is_a_keyword_of_the_python_verb_with_its_default(verb, monkeypatch):
    cli_pos, cli = _cli(verb)
    api_pos, api = _api(verb)
    assert len(cli_pos) <= len(api_pos) and all(api[p] == REQUIRED for p in api_pos[:len(cli_pos)])
    for p in api_pos[:len(cli_pos)]:
        api.pop(p)
    cli = {k: v for k, v in cli.items() if (verb, k) not in CLI_ONLY}
    # fne train's options that some modes ignore are passed only when given (a mode that does not
    # use one refuses it): their default is the verb's declared one
    unset = {k for k, v in cli.items() if v == argparse.SUPPRESS}
    assert unset == ({f.name for f in dataclasses.fields(fne.options.TrainConfig) if f.metadata["opt"].modes
                      and f.metadata["opt"].cli} if verb == "train" else set())
    cli.update({k: api[k] for k in unset})
    only_api = set(api) - set(cli) - set(API_ONLY) - NOT_ON_THE_COMMAND_LINE
    assert set(cli) - set(api) == set() and only_api == set()
    assert {k: api[k] for k in cli} == cli  # the same defaults (required on both sides alike)
    # ... and the command line hands every one of them to the verb, by name
    module, argv = VERB_CALLS[verb]
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    real = getattr(importlib.import_module(module), verb)

    def record(*args, **kwargs):
        raise _Called(inspect.signature(real).bind(*args, **kwargs).arguments)

    monkeypatch.setattr(importlib.import_module(module), verb, record)
    with pytest.raises(_Called) as called:
        main([verb, *argv])
    passed = called.value.args[0]
    assert set(cli) - {k for k in cli if cli[k] == REQUIRED} - unset <= set(passed) and not unset & set(passed)
    assert {k: passed[k] for k in cli if cli[k] != REQUIRED and k not in unset} == {
        k: v for k, v in cli.items() if v != REQUIRED and k not in unset}


# `fne cache ...` and `fne backbones ARCH`: the command -> (the module of the function the CLI
# calls, the function, the command line's required arguments)
FUNCTION_CALLS = {
    ("cache", "info"): ("fne.cache.verbs", "cache_info", []),
    ("cache", "verify"): ("fne.cache.verbs", "cache_verify", []),
    ("cache", "rm"): ("fne.cache.verbs", "cache_rm", ["STORE"]),
    ("backbones",): ("fne.backbones.catalog", "describe_backbone", ["vgg16"]),
}


@pytest.mark.parametrize("command", FUNCTION_CALLS, ids=" ".join)
def test_the_cache_and_backbones_commands_are_their_functions_options(command, monkeypatch):
    """The same positional arguments, options and defaults on both sides, and the command line
    hands each to `fne.<function>` by name."""
    module, name, argv = FUNCTION_CALLS[command]
    func = getattr(importlib.import_module(module), name)
    assert getattr(fne, name) is func
    cli_pos, cli = _cli(*command)
    params = inspect.signature(func).parameters.values()
    assert cli_pos == [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    api = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    assert {k: v for k, v in cli.items() if (command[0], k) not in CLI_ONLY} == api and api

    def record(*args, **kwargs):
        raise _Called(inspect.signature(func).bind(*args, **kwargs).arguments)

    monkeypatch.setattr(importlib.import_module(module), name, record)
    with pytest.raises(_Called) as called:
        main([*command, *argv])
    given = argv if name != "cache_rm" else [argv]  # rm's STORE...: a list
    assert called.value.args[0] == {**dict(zip(cli_pos, given + [None])), **api}


def test_cache_and_backbones_functions_return_what_the_commands_print(digits_folder, warm_cache, tmp_path, capsys):
    import json
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    info = fne.cache_info(digits_folder, cache=str(cache))
    (s,) = info.stores
    assert info.root == str(cache) and info.data == "data" and info.data_images == 24
    assert (s.arch, s.rows, s.bad, s.data_cached, s.data_unreadable) == ("efficientnet_lite0", 24, 0, 24, 0)
    assert s.size_bytes == list_stores(cache)[0].size_bytes() and fne.cache_info(cache=str(cache)).data is None
    assert main(["cache", "info", "--cache", str(cache)]) == 0
    assert f"rows 24  bad 0  parts {s.parts}  size" in capsys.readouterr().out
    typo = tmp_path / "cahce"  # a mistyped cache: said, DATA not hashed, and no folder (manifests/) made there
    assert main(["cache", "info", str(digits_folder), "--cache", str(typo)]) == 0
    assert capsys.readouterr().out == f"cache root: {typo} (no such folder)\nno stores\n" and not typo.exists()
    assert fne.cache_info(digits_folder, cache=str(typo)).exists is False and info.exists
    check = fne.cache_verify(cache=str(cache))
    assert check.ok and check.stores[0].findings.rows == 24 and check.stores[0].name == s.name
    # one store by its name, as `fne cache info` lists it (it was "NAME is not a cache store"), or its folder
    assert [x.stores[0].findings.rows for x in (fne.cache_verify(s.name, cache=str(cache)),
                                                fne.cache_verify(cache / s.name))] == [24, 24]
    assert main(["cache", "verify", s.name, "--cache", str(cache)]) == 0
    assert capsys.readouterr().out == f"{s.name}: OK (24 rows)\n"
    with pytest.raises(CacheError, match=f"^no store in {cache} is named 'vgg99'"):
        fne.cache_verify("vgg99", cache=str(cache))
    removal = fne.cache_rm(s.name, cache=str(cache), dry_run=True)
    assert removal.freed_bytes == s.size_bytes and len(list_stores(cache)) == 1
    with pytest.raises(FneError, match="^no store in .* is named 'vgg99'"):
        fne.cache_rm(["*", "vgg99"], cache=str(cache))
    assert [x.name for x in fne.cache_rm([s.name], cache=str(cache)).stores] == [s.name]
    assert list_stores(cache) == [] and fne.cache_verify(cache=str(cache)).stores == []
    assert [b["name"] for b in fne.list_backbones()] == ["efficientnet_lite0", "vgg16", "vgg19"]
    assert main(["backbones", "vgg16", "--weights", "random", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == fne.describe_backbone("vgg16", weights="random")


@pytest.mark.parametrize("call,exc,said", [
    (lambda: fne.cache_info(arch="vgg16"), TypeError, "^unexpected keyword argument"),
    (lambda: fne.cache_verify(clean="yes"), TypeError, "^clean must be True or False"),
    (lambda: fne.cache_rm("x", cache=3), TypeError, "^cache must be a string"),
    (lambda: fne.cache_rm(None), TypeError, "^stores: expected a store name"),
    (lambda: fne.describe_backbone("vgg16", dry_run=True), TypeError, "^unexpected keyword argument"),
    (lambda: fne.describe_backbone("convnxt_tiny"), FneError, "Did you mean: convnext_tiny"),
])
def test_cache_and_backbones_functions_name_a_bad_argument(call, exc, said, tmp_path, monkeypatch):
    monkeypatch.setenv("FNE_CACHE", str(tmp_path))
    with pytest.raises(exc, match=said):
        call()


@pytest.mark.parametrize("verb", ["extract", "fit", "export", "load_rows", "train", "advise", "predict"])
def test_every_keyword_a_verb_lists_is_one_it_takes(verb, tmp_path):
    """The signature `help(fne.VERB)` shows is what the verb accepts: every keyword at its
    default gets past the options' checks to DATA (predict: to the run folder), which does not exist
    (train: every keyword its mode uses; one the mode ignores is refused)."""
    func = getattr(fne, verb)
    func = getattr(func, verb, func)  # fne.fit is the module; fne.load_rows the function
    params = inspect.signature(func).parameters.values()
    kw = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    if verb == "train":
        ignored = {k for k in kw if not uses(fne.options.TrainConfig, "frozen", k)}
        assert ignored == {"class_map", "direct_score", "imported_lr_mult", "train_bn"}
        with pytest.raises(OptionError, match="^direct_score applies to mode 'direct' only, not 'frozen'$"):
            func(tmp_path / "absent", "frozen", tmp_path / "OUT", **{k: v for k, v in kw.items() if k != "class_map"})
        kw = {k: v for k, v in kw.items() if k not in ignored}
    assert "label_key" in kw and len(kw) > 5
    args = {"fit": ["OUT"], "export": ["x.h5"], "train": ["frozen", "OUT"], "predict": ["absent", "p.csv"]}
    args = [tmp_path / a if a != "frozen" else a for a in args.get(verb, [])]
    with pytest.raises(FneError, match="absent.* does not exist"):
        func(tmp_path / "absent", *args, **kw)


def _readme_python(marker: str) -> str:
    """The README's Python block that contains `marker`."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M) if marker in b]
    return block


@pytest.mark.parametrize("layout", ["folder", "split"])
def test_the_readmes_load_rows_pipeline_runs_as_written(layout, digits_folder, warm_cache, digits_split, split_cache,
                                                        monkeypatch, capsys):
    """The README's snippet, on DATA with and without a predefined split; offline: random weights."""
    data, cache = (digits_folder, str(warm_cache)) if layout == "folder" else (digits_split, split_cache)
    code = _readme_python("fne.load_rows(")
    assert 'weights="imagenet"' in code and '"images/"' in code
    code = code.replace('weights="imagenet"', 'weights="random"').replace('"images/"', repr(str(data)))
    monkeypatch.setenv("FNE_CACHE", cache)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    r = scope["r"]
    assert r.X.shape[0] == len(load_dataset(data)) and 0 < scope["train"].sum() < len(r.y)
    score, folds = capsys.readouterr().out.splitlines()
    assert 0 <= float(score) <= 1 and len(folds.strip("[]").split()) == 3
    assert set(scope["best"]) == {"fullnetworkembedding__high", "linearsvc__C"}
    assert np.allclose(scope["clf"][0].mean_, r.X[scope["train"]].mean(0))  # the training rows' statistics


@pytest.mark.parametrize("layout", ["folder", "split"])
def test_the_readmes_hdf5_reading_runs_as_written(layout, digits_folder, warm_cache, digits_split, split_cache,
                                                  tmp_path, monkeypatch):
    data, cache = (digits_folder, str(warm_cache)) if layout == "folder" else (digits_split, split_cache)
    monkeypatch.chdir(tmp_path)
    fne.export(data, out="images-fne.h5", cache=cache, **STORE)
    scope: dict = {}
    exec(compile(_readme_python('df["label"]'), "README.md", "exec"), scope)
    df, r = scope["df"], fne.load_rows(data, cache=cache, **STORE)
    has_split = r.split is not None
    assert list(df.index) == list(r.ids) and list(df["label"]) == list(r.y)
    assert ("split" in df) == has_split and df.shape[1] == r.X.shape[1] + 1 + has_split
    a, b = r.columns["head"]
    assert scope["last"] == r.layers[-1] == "head" and (scope["a"], scope["b"]) == (a, b)
    assert np.array_equal(scope["acts"], r.X[:, a:b])


@pytest.mark.parametrize(("layout", "fit_options"), [("folder", dict(splits=3)), ("split", {}),
                                                     ("folder", dict(splits=2, train_per_class=3))])
def test_the_readmes_scikit_learn_alone_gives_fits_accuracy_from_the_export(
        layout, fit_options, digits_folder, warm_cache, digits_split, split_cache, tmp_path, monkeypatch, capsys):
    """README: the export's layers, low and high, and predictions.csv's test images give `fne fit`'s
    accuracy with LinearSVC alone, over random splits (each split standardised anew), a predefined
    split and `--train-per-class` (every image a split does not test trains)."""
    data, cache = (digits_folder, str(warm_cache)) if layout == "folder" else (digits_split, split_cache)
    monkeypatch.chdir(tmp_path)
    m = fne.fit(data, "runs/fne", features="fne", head="svm", cache=cache, progress=False, **fit_options, **STORE)
    fne.export(data, out="images-fne.h5", cache=cache, **STORE)
    capsys.readouterr()
    code = _readme_python("LinearSVC(C=C")
    exec(compile(code, "README.md", "exec"), {})
    ours, theirs = map(float, capsys.readouterr().out.split())
    assert theirs == m["accuracy"] and ours == pytest.approx(m["accuracy"], abs=1e-12)
    assert len(pd.read_csv("runs/fne/predictions.csv")["split"].unique()) == m["n_splits"] == fit_options.get("splits", 1)


@pytest.mark.parametrize("head", ["svm", "logreg"])
def test_the_readmes_model_joblib_block_predicts_what_fne_predict_does(head, digits_folder, warm_cache, tmp_path,
                                                                        monkeypatch):
    """README: model.joblib's pipeline on the export's layers side by side gives `fne predict`'s
    classes and, in `pipeline.classes_` order, its score columns."""
    cache = str(warm_cache)
    monkeypatch.chdir(tmp_path)
    fne.fit(digits_folder, "runs/fne", features="block3,head", head=head, cache=cache, progress=False, **STORE)
    fne.export(digits_folder, out="images-fne.h5", cache=cache, **STORE)
    with pytest.warns(UserWarning, match="24 of 24 images of DATA are images runs/fne was fitted on"):
        fne.predict("runs/fne", digits_folder, out="p.csv", progress=False)
    scope: dict = {}
    exec(compile(_readme_python('model["pipeline"].predict(X)'), "README.md", "exec"), scope)
    p = pd.read_csv("p.csv", dtype={"path": str, "predicted": str})
    assert scope["predicted"] == list(p["predicted"]) and len(p) == 24
    pipe, classes = scope["model"]["pipeline"], scope["model"]["classes"]
    scores = pipe.predict_proba(scope["X"]) if head == "logreg" else pipe.decision_function(scope["X"])
    assert np.allclose(scores, p[[f"score_{classes[c]}" for c in pipe.classes_]].to_numpy(), rtol=1e-5, atol=1e-6)


def test_the_readmes_torchvision_block_scores_a_train_runs_test_images_as_its_predictions(tmp_path, monkeypatch,
                                                                                           capsys):
    """README: model.pt in torchvision's own resnet18, with the test view the block builds from
    torchvision's weights metadata, gives the run's predictions.csv (fp32: its scores, to the 6
    digits the CSV keeps)."""
    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=8, classes=3)
    monkeypatch.chdir(tmp_path)
    fne.train(data, "frozen", "runs/ft", arch="resnet18", weights="random", epochs=1, image_size=40, batch_size=8,
              val_fraction=0.2, precision="fp32", workers=0, progress=False)
    code = _readme_python("num_classes=len(m[")
    tested = pd.read_csv("runs/ft/predictions.csv", dtype={"path": str, "predicted": str, "true": str})
    classes = [c.removeprefix("score_") for c in tested.columns if c.startswith("score_")]
    assert len(tested) == 6 and classes == ["0", "1", "2"]
    capsys.readouterr()
    for row in tested.itertuples():
        exec(compile(code.replace('"new.jpg"', repr(str(data / row.path))), "README.md", "exec"), {})
        predicted, scores = capsys.readouterr().out.split(" ", 1)
        assert predicted == row.predicted
        assert np.allclose(eval(scores), [getattr(row, f"score_{c}") for c in classes], rtol=1e-5, atol=1e-6)


def test_the_readmes_cache_and_backbones_calls_run_as_written(digits_folder, warm_cache, monkeypatch, capsys):
    code = _readme_python("fne.cache_info(")
    assert '"images/"' in code and 's.arch == "vgg19"' in code
    code = code.replace('"images/"', repr(str(digits_folder))).replace('"vgg19"', '"efficientnet_lite0"')
    monkeypatch.setenv("FNE_CACHE", str(warm_cache))
    exec(compile(code, "README.md", "exec"), {})
    held, ok, freed, names, resnet = capsys.readouterr().out.splitlines()
    (store,) = list_stores(warm_cache)  # the dry run removed nothing
    assert held == f"{store.path.name} 24 {store.size_bytes()} 24 of 24" and ok == "True"
    assert int(freed) == store.size_bytes() and names == "['efficientnet_lite0', 'vgg16', 'vgg19']"
    assert resnet == "15168 224 ['relu', 'layer1.0', 'layer1.1']"


PUBLIC = [*fne._VERBS, *fne._FUNCTIONS]  # every verb and function `fne.` offers (fne/__init__.py)


def _public(name: str):
    f = getattr(fne, name)
    return getattr(f, name, f)  # a verb module calls its function


def _sections(doc: str) -> dict[str, list[str]]:
    """A numpydoc docstring's sections: heading -> its lines."""
    lines, out, name = doc.splitlines(), {}, "summary"
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and line.strip() and set(lines[i + 1].strip()) == {"-"} and not line.startswith(" "):
            name = line.strip()
            out[name] = []
        elif not set(line.strip()) == {"-"}:
            out.setdefault(name, []).append(line)
    return out


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_verb_documents_each_parameter_of_its_signature(name):
    """numpydoc: a Parameters entry (``name : type``) for each parameter inspect.signature shows,
    in its order, and none that it lacks (the ``**options`` the keywords replace); a Returns
    section; a Raises section naming an fne error where the verb takes arguments. The keywords'
    entries give the declared type and default (`fne.option_handling.documented`)."""
    f = _public(name)
    doc = inspect.getdoc(f)
    sections = _sections(doc)
    entries = [line for line in sections.get("Parameters", []) if line and not line.startswith(" ")]
    documented = [n for e in entries for n in e.split(" : ")[0].split(", ")]
    params = inspect.signature(f).parameters
    assert documented == list(params), f"{name}: documented {documented}, signature {list(params)}"
    assert all(" : " in e for e in entries), entries  # each with its type
    for p in params.values():
        entry = next(e for e in entries if p.name in e.split(" : ")[0].split(", "))
        if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and p.name in {
                f.name for cls in vars(fne.options).values() if dataclasses.is_dataclass(cls)
                for f in dataclasses.fields(cls)}:
            assert entry.endswith(f", default {p.default!r}") or (p.default is None and entry.endswith(", optional")), entry
    assert sections.get("Returns"), name
    if params:
        raises = [line for line in sections.get("Raises", []) if line and not line.startswith(" ")]
        assert raises and set(raises) <= {"FneError", "OptionError", "DataError", "WeightsError", "CacheError",
                                          "PipelineError", "TypeError"}, (name, raises)


def test_numpy_bools_are_taken_where_bools_are(digits_folder, warm_cache, tmp_path):
    """np.bool_ (``(x > 0).any()``) was refused as "progress must be True or False, not bool
    np.False_": taken as Python's bool, as numpy numbers are taken as Python's numbers."""
    from fne.options import ExtractOptions

    o = opts.resolve({"progress": np.False_, "retry_bad": np.True_, "compile": np.False_}, ExtractOptions)[0]
    assert (o.progress, o.retry_bad, o.compile) == (False, True, "off") and type(o.progress) is bool
    r = fne.extract(digits_folder, cache=str(warm_cache), progress=np.False_, **STORE)
    assert r.n_cached == 24 and r.n_computed == 0
    with pytest.raises(TypeError, match=r"^batch_size must be an integer or a string, not bool np.True_$"):
        opts.resolve({"batch_size": np.True_}, ExtractOptions)  # a bool is no number, numpy's neither
    with pytest.raises(DataError, match="does not exist"):  # past the keywords' checks, to DATA
        fne.train(tmp_path / "absent", "frozen", tmp_path / "r", resume=np.True_)
    with pytest.raises(FneError, match="p.toml"):  # past expect_bools, to the pipeline file
        fne.run(tmp_path / "p.toml", force=np.False_, dry_run=np.True_, report=np.False_)


def test_train_takes_numpy_integers_for_save_every():
    """save_every=np.int64(2) was refused as "must be >= 0 or auto" (train checks its TrainConfig so)."""
    config = dict(data="d", mode="frozen", out="o")
    check(fne.options.TrainConfig(**config, save_every=np.int64(2), batch_size=np.int64(8)))
    with pytest.raises(OptionError, match=r"^bad save_every=np.int64\(-1\): save_every must be >= 0 or auto$"):
        check(fne.options.TrainConfig(**config, save_every=np.int64(-1)))


def test_a_switch_quoted_in_a_keywords_help_is_its_keyword_set_false():
    """A help quoting a --no-NAME flag is documented by the keyword that flag sets: augment_on's
    "--no-augment decodes in the workers" read "``augment`` decodes in the workers", the opposite."""
    doc = " ".join(fne.train.train.__doc__.split())
    assert "``augment=False`` decodes in the workers" in doc and "``augment`` decodes" not in doc


def test_a_flag_with_its_value_is_documented_as_the_keyword_set_to_it():
    """"seed of --weights random (--mode scratch draws ...)" is documented as ``weights="random"`` and
    ``mode="scratch"``, not as ``weights`` random."""
    doc = " ".join(fne.train.train.__doc__.split())
    assert 'seed of ``weights="random"`` (``mode="scratch"`` draws its network from ``seed``)' in doc
