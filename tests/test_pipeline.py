"""fne run: validation names key and line; finished steps are never redone; shipped files load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fne.cache.store import list_stores
from fne.errors import FneError
from fne.pipeline import runner as P
from fne.pipeline.runner import PipelineError, load_pipeline
from fne.pipeline.steps import train_arguments
from tests.conftest import SHARED, write_digits

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
PAPER = ("mit67", "cub200", "flowers102", "pets", "sdogs", "caltech101", "food101", "dtd")

TINY = """\
[pipeline]
name = "tiny"
workers = 0
advise_sample = 10

[datasets.digits]
data = "digits"
max_per_class = 4

[[backbones]]
arch = "efficientnet_lite0"
weights = "random"
precision = "fp32"
storage_dtype = "float32"
image_size = 32

[fit]
features = ["last"]
heads = ["svm", "logreg"]
C = "1.0"
splits = 2
test_size = 0.5

[train]
modes = ["frozen"]
epochs = 1
image_size = 32
batch_size = 20
val_fraction = 0.0
test_size = 0.5
workers = 0
progress = false
"""


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


# ------------------------------------------------------------------ validation

GOOD = """\
[pipeline]
name = "x"

[datasets.digits]
data = "digits"

[[backbones]]
arch = "vgg16"
weights = "random"

[fit]
features = ["fc7", "fne"]
heads = ["svm"]

[train]
modes = ["frozen"]
epochs = 2
"""


@pytest.mark.parametrize("old, new, line, key, words", [
    ('name = "x"', 'name = "x"\ncolour = "red"', 3, "pipeline.colour", "unknown key"),
    ('data = "digits"', 'data = "digits"\nmax_per_clas = 3', 6, "datasets.digits.max_per_clas",
     "did you mean 'max_per_class'"),
    ('data = "digits"', 'data = "no/such/dir"', 5, "datasets.digits.data", "does not exist"),
    ('arch = "vgg16"', 'arch = "vgg17"', 8, "backbones[0].arch", "unknown arch"),
    ('weights = "random"', 'weights = "imagenett"', 9, "backbones[0].weights", "neither"),
    ('heads = ["svm"]', 'heads = ["svn"]', 13, "fit.heads", "unknown head 'svn'"),
    ('features = ["fc7", "fne"]', 'features = ["fc9"]', 12, "fit.features", "no layer 'fc9'"),
    ('epochs = 2', 'epochs = "two"', 17, "train.epochs", "expected an integer"),
    ('epochs = 2', 'epochs = 0', 17, "train.epochs", "expected an integer >= 1"),
    ('modes = ["frozen"]', 'modes = ["frozen", "warp"]', 16, "train.modes", "unknown mode 'warp'"),
    ('epochs = 2', 'epochs = 2\n\n[train.frozen]\nimage_sise = 32', 20, "train.frozen.image_sise",
     "did you mean 'image_size'"),
    ('epochs = 2', 'epochs = 2\n\n[train.frozen]\ndirect_score = "max"', 20, "train.frozen.direct_score",
     "direct_score applies to mode direct only, not frozen"),
    ('modes = ["frozen"]\n', '', 15, "train", "missing key 'modes'"),
    ('epochs = 2', 'epochs = 2\naugment = false\naugment_on = "cpu"', 19, "train.augment_on",
     "'cpu' places the augmentation, and augment = false trains without it"),
    ('epochs = 2', 'epochs = 2\n\n[train.frozn]\nepochs = 1', 19, "train.frozn",
     "a table of no mode; did you mean [train.frozen]? (modes: direct, scratch, frozen, finetune)"),
    ('epochs = 2', 'epochs = 2\nclass_map = {"0" = ["tench"]}', 18, "train.class_map",
     "class_map is a dataset's: set it in its [datasets.KEY] table"),
    ('[[backbones]]\narch = "vgg16"\n', '[[backbones]]\n', 7, "backbones[0]", "missing key 'arch'"),
    ('weights = "random"', 'weights = "imagenet"\nweights_seed = 3', 10, "backbones[0].weights_seed",
     "applies to weights 'random' (or 'imagenet-or-random') only, not 'imagenet'"),
    ('heads = ["svm"]', 'heads = ["svm"]\nsplits = 1000', 14, "fit.splits", "1000: expected an integer in [1, 100]"),
    ('data = "digits"', 'data = "digits"\n\n[datasets.digits.published]\nsource = "a paper"\narch = 16\n"fne+svm" = 90.0',
     9, "datasets.digits.published.arch", "expected a string, got 16"),
    ('name = "x"', 'name = "x"\nseeds = []', 3, "pipeline.seeds", "needs at least one seed"),
    ('name = "x"', 'name = "x"\nadvise_sample = 0', 3, "pipeline.advise_sample", "must be >= 1, got 0"),
    ('weights = "random"\n', 'weights = "random"\n\n[[backbones]]\narch = "vgg16"\nweights = "random"\n', 11,
     "backbones[1]", "same folder label 'vgg16-random' as backbones[0]"),
    ('features = ["fc7", "fne"]', 'features = []', 12, "fit.features", "needs at least one feature spec"),
    ('heads = ["svm"]', 'heads = []', 13, "fit.heads", "needs at least one head"),
    ('epochs = 2', 'epochs = 2\n\n[train.scratch]\nepochs = 1', 19, "train.scratch",
     "settings for mode 'scratch', which train.modes does not list"),
    ('data = "digits"\n', 'max_per_class = 3\n', 4, "datasets.digits", "missing key 'data'"),
    ('data = "digits"', 'data = "digits"\nmax_per_class = 0', 6, "datasets.digits.max_per_class", "must be >= 1"),
    ('data = "digits"', 'data = "digits"\nclass_map = "nomap.json"', 6, "datasets.digits.class_map", "no such file"),
    ('data = "digits"', 'data = "digits"\nclass_map = {a = 3.5}', 6, "datasets.digits.class_map",
     "values must be ImageNet class names/indices: ['a']"),
    ('data = "digits"', 'data = "digits"\n\n[datasets.digits.published]\nsource = "a paper"\n"fne+svm" = 190.0', 9,
     'datasets.digits.published."fne+svm"', "a percentage in [0, 100], got 190.0"),
    ('data = "digits"', 'data = "digits"\n\n[datasets.digits.published]\nsource = "a paper"\n"fne+svm" = "x"', 9,
     'datasets.digits.published."fne+svm"', "expected a percentage (93.3) or [mean, std], got 'x'"),
    ('data = "digits"', 'data = "digits"\n\n[datasets.digits.published]\n"fne+svm" = 90.0', 7,
     "datasets.digits.published", "published values need a 'source'"),
])
def test_errors_name_key_and_line(tmp_path, old, new, line, key, words):
    assert old in GOOD
    f = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(PipelineError) as e:
        load_pipeline(f)
    msg = str(e.value)
    assert f"{f}:{line}: {key}: " in msg, msg
    assert words in msg


@pytest.mark.parametrize("old, new, line, key, words", [
    ('modes = ["frozen"]', 'modes = "frozen"', 16, "train.modes", "expected a list of strings, got 'frozen'"),
    ('epochs = 2', 'epochs = 2\nfrozen = 3', 18, "train.frozen", "expected a table [train.frozen], got 3"),
    ('data = "digits"', 'data = "digits"\ntest_size = 1.5', 6, "datasets.digits.test_size",
     "1.5: expected a number in (0, 1)"),
    ('data = "digits"', 'data = "digits"\ntrain_per_class = 0', 6, "datasets.digits.train_per_class",
     "0: expected an integer >= 1"),
    # a dataset's splits override fit's --splits within its bound (1000000 splits ran for ever)
    ('data = "digits"', 'data = "digits"\nsplits = 1000', 6, "datasets.digits.splits",
     "1000: expected an integer in [1, 100]"),
    # the seeds of fit's splits and of training: --seed's bound (-1 passed the dry run)
    ('name = "x"', 'name = "x"\nseeds = [0, -1]', 3, "pipeline.seeds", "seed -1: expected an integer in [0, 2**32)"),
    # a backbone's label is its runs' folder under the dataset's: ../x or a/b wrote elsewhere
    ('weights = "random"', 'weights = "random"\nlabel = "../x"', 10, "backbones[0].label",
     "'../x' is not one folder name"),
    ('weights = "random"', 'weights = "random"\nlabel = "a/b"', 10, "backbones[0].label",
     "'a/b' is not one folder name"),
    ('epochs = 2', 'epochs = 2\ntest_size = 2.0', 18, "train.test_size", "expected a number in (0, 1)"),
    # each rate within its bound, finetune's product of them past float32's largest: `fne train`'s
    # refusal at the first step, said before any step runs, in the file's words
    ('modes = ["frozen"]\nepochs = 2', 'modes = ["frozen", "finetune"]\nepochs = 2\nlr = 1e30\n\n[train.finetune]\n'
     'imported_lr_mult = 1e20', 21, "train.finetune.imported_lr_mult",
     "lr = 1e+30 times imported_lr_mult = 1e+20 is the imported layers' learning rate, 1e+50, past float32's largest"),
])
def test_a_refused_value_is_named_once_and_nothing_else(tmp_path, old, new, line, key, words):
    """One problem, one line: no second report of it (train.modes), no traceback (a mode's
    settings not a table), no split-size check computed from the refused value."""
    f = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(PipelineError) as e:
        load_pipeline(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:{line}: {key}: ") and words in msg and "\n" not in msg, msg


@pytest.mark.parametrize("text, where, words", [
    (GOOD.split("[datasets.digits]")[0] + GOOD.split('data = "digits"\n')[1], "(top level)",
     "at least one [datasets.KEY] table is required"),
    (GOOD.replace('[[backbones]]\narch = "vgg16"\nweights = "random"\n', ""), "(top level)",
     "at least one [[backbones]] table is required"),
    (GOOD.split("[fit]")[0], "fit", "nothing to run: give a [fit] grid or [train] modes"),
])
def test_a_missing_section_is_named(tmp_path, text, where, words):
    f = write(tmp_path, text)
    with pytest.raises(PipelineError, match=rf"^{f}: {where}: {words}$".replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("]", r"\]")):
        load_pipeline(f)


def test_a_dataset_that_does_not_load_is_named(tmp_path):
    (tmp_path / "bad.csv").write_text("path,label\nnope.jpg,a\n")
    (tmp_path / "empty").mkdir()
    for data, words in [("bad.csv", "1 listed file(s) do not exist: nope.jpg"), ("empty", "no class sub-folders")]:
        f = write(tmp_path, GOOD.replace('data = "digits"', f'data = "{data}"'))
        with pytest.raises(PipelineError) as e:
            load_pipeline(f)
        assert str(e.value).startswith(f"{f}:5: datasets.digits.data: ") and words in str(e.value)


def test_every_error_reported_before_anything_runs(tmp_path, monkeypatch):
    import fne.extraction.extract

    def boom(*a, **k):
        raise AssertionError("nothing may run before validation passes")

    monkeypatch.setattr(fne.extraction.extract, "extract", boom)
    text = GOOD.replace('heads = ["svm"]', 'heads = ["svn"]').replace('epochs = 2', 'epochs = -1')
    f = write(tmp_path, text)
    with pytest.raises(PipelineError) as e:
        P.run(f, tmp_path / "out")
    msg = str(e.value)
    assert msg.startswith("2 problems") and ":13: fit.heads" in msg and ":17: train.epochs" in msg
    assert not (tmp_path / "out").exists()


def test_split_too_small_for_the_classes(tmp_path):
    """digits, 2 per class: a 10 % validation part of ~15 training images cannot hold 10 classes."""
    text = GOOD.replace('data = "digits"', 'data = "digits"\nmax_per_class = 2').replace(
        "epochs = 2", "epochs = 2\nval_fraction = 0.1")
    with pytest.raises(PipelineError) as e:
        load_pipeline(write(tmp_path, text))
    msg = str(e.value)
    assert "p.toml:12: fit.test_size: digits: a test part of 0.25 holds 5 of its ~20" in msg  # [fit] line
    assert "p.toml:19: train.val_fraction: mode frozen on digits" in msg
    load_pipeline(write(tmp_path, text.replace("val_fraction = 0.1", "val_fraction = 0.0").replace(
        'heads = ["svm"]', 'heads = ["svm"]\ntest_size = 0.5')))


def test_a_validation_part_in_data_needs_no_stratified_val_fraction(tmp_path):
    """DATA with its own validation part: fne train validates on it, so the check that a
    stratified val_fraction can hold every class does not apply (it refused such DATA)."""
    data = write_digits(tmp_path / "d", per_class=6, classes=4, split=True)  # 4 train + 2 test per class
    for c in range(4):
        (data / "val" / str(c)).mkdir(parents=True)
        f = sorted((data / "train" / str(c)).iterdir())[0]
        f.rename(data / "val" / str(c) / f.name)
    text = GOOD.replace('data = "digits"', f'data = "{data}"').replace("epochs = 2", "epochs = 2\nval_fraction = 0.1")
    p = load_pipeline(write(tmp_path, text))
    assert p.datasets[0].val_part and p.datasets[0].n_train_split == 16
    (data / "val").rename(data / "extra")  # the same images, no validation part: 16 x 0.1 < 4 classes
    with pytest.raises(PipelineError, match="train.val_fraction: mode frozen on digits"), \
            pytest.warns(UserWarning, match="extra/ left out"):
        load_pipeline(write(tmp_path, text))


def test_the_good_file_is_valid(tmp_path):
    p = load_pipeline(write(tmp_path, GOOD))
    assert [d.key for d in p.datasets] == ["digits"] and p.backbones[0].arch == "vgg16"
    assert p.fit["features"] == ["fc7", "fne"] and p.train == {"frozen": {"epochs": 2}}


def test_a_shared_train_setting_goes_to_the_modes_that_use_it(tmp_path):
    """[train]'s settings are shared by its modes: each mode's fne.train gets those it uses (fne
    train refuses an option its mode ignores); the steps' settings, which name their folders'
    results, stay as they were (an earlier run's results are not rerun for it)."""
    text = GOOD.replace('modes = ["frozen"]', 'modes = ["frozen", "direct", "finetune"]\ndirect_score = "max"\n'
                                              'train_bn = true').replace('data = "digits"', 'data = "digits"\n'
                                                                         'class_map = {"0" = ["tench"]}')
    p = load_pipeline(write(tmp_path, text))
    shared = {"epochs": 2, "direct_score": "max", "train_bn": True}
    assert p.train == {"frozen": shared, "direct": shared, "finetune": shared}  # identities as before
    steps = P.plan(p, tmp_path / "out", {"digits": "digits"}, read=False)
    given = {s.kwargs["mode"]: train_arguments(s, p) for s in steps if s.kind == "train"}
    assert [{k: g[k] for k in shared if k in g} for g in given.values()] == [
        {"epochs": 2}, {"direct_score": "max"}, {"epochs": 2, "train_bn": True}]
    assert list(given) == ["frozen", "direct", "finetune"]


def test_a_pipeline_file_with_a_byte_order_mark_loads(tmp_path):
    """A file saved with a UTF-8 byte-order mark (Windows Notepad) was "not valid TOML: Invalid
    statement" at line 1."""
    f = tmp_path / "p.toml"
    f.write_bytes("\ufeff".encode() + GOOD.encode())
    assert load_pipeline(f).name == "x"


@pytest.mark.parametrize("path", ["", " "])
def test_an_empty_pipeline_path_is_said_empty(path):
    """`fne run ""` (an unset variable) said "pipeline file : is a folder" (Path('') is '.')."""
    with pytest.raises(PipelineError, match=rf"^pipeline file '{path}': is empty; give a pipelines/\*\.toml file$"):
        load_pipeline(path)


@pytest.mark.parametrize("key", ["out", "cache"])
def test_an_empty_out_or_cache_in_the_file_is_refused(tmp_path, key):
    """`out = ""` ran into the default runs/NAME, `cache = ""` into the current folder, unsaid."""
    f = write(tmp_path, TINY.replace('name = "tiny"', f'name = "tiny"\n{key} = ""'))
    with pytest.raises(PipelineError, match=rf"p\.toml:3: pipeline\.{key}: is empty; give a folder, or leave the key"):
        load_pipeline(f)


def test_an_empty_out_on_the_command_line_is_refused(tmp_path):
    """`fne run p.toml --out ""` (an unset variable) ran into the default folder; --out " " was refused."""
    with pytest.raises(FneError, match=r"^out='': is empty; give the folder to write"):
        P.run(write(tmp_path, TINY), out="", dry_run=True)


@pytest.mark.parametrize("key", ["..", "."])
def test_a_dataset_key_of_dots_names_a_folder_inside_the_run_folder(tmp_path, key):
    """[datasets.".."]: its steps wrote to OUT/../BACKBONE, outside the run folder (the dataset's
    folder is its key's slug, which kept '..')."""
    p = load_pipeline(write(tmp_path, GOOD.replace("[datasets.digits]", f'[datasets."{key}"]')))
    out = tmp_path / "out"
    steps = P.plan(p, out, {key: "digits"}, read=False)
    assert steps and {Path(s.dir).relative_to(out).parts[0] for s in steps} == {"x"}
    assert all(".." not in Path(s.dir).relative_to(out).parts for s in steps)


def test_relative_paths_and_optional_datasets(tmp_path, monkeypatch):
    write_digits(tmp_path / "data" / "imgs", per_class=10, classes=2)
    (tmp_path / "pipes").mkdir()
    text = GOOD.replace('data = "digits"', 'data = "../data/imgs"') + (
        '\n[datasets.absent]\ndata = "${FNE_TEST_NOT_SET}/x"\noptional = true\n')
    monkeypatch.delenv("FNE_TEST_NOT_SET", raising=False)
    monkeypatch.chdir(tmp_path / "data")  # resolution is against the file's folder, not the cwd
    p = load_pipeline(write(tmp_path / "pipes", text))
    by = {d.key: d for d in p.datasets}
    assert by["digits"].data == str((tmp_path / "data" / "imgs").resolve())
    assert by["digits"].n_images == 20
    assert by["absent"].skipped and "FNE_TEST_NOT_SET" in by["absent"].skipped
    assert any("absent skipped" in n for n in p.notes)
    # the same dataset, not optional: an error naming its key and line
    f = write(tmp_path / "pipes", text.replace("optional = true\n", ""), "q.toml")
    with pytest.raises(PipelineError, match=r"q\.toml:\d+: datasets\.absent\.data: .*FNE_TEST_NOT_SET not set"):
        load_pipeline(f)


# ------------------------------------------------------------------ resume


class Counter:
    def __init__(self, monkeypatch, module, name):
        self.calls = 0
        self.original = getattr(module, name)

        def wrapper(*a, **k):
            self.calls += 1
            return self.original(*a, **k)

        monkeypatch.setattr(module, name, wrapper)


def test_interrupted_run_resumes_without_redoing_steps(tmp_path, monkeypatch, forward_images):
    import fne.extraction.extract
    import fne.linear.fit
    import fne.reporting.advise
    import fne.training.train

    f = write(tmp_path, TINY)
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    root = out / "digits" / "efficientnet_lite0-random-32"

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    # 1. interrupted in the last step (train): advise and both fits are committed
    said: list[str] = []
    with monkeypatch.context() as m:
        m.setattr(fne.training.train, "train", interrupt)
        with pytest.raises(KeyboardInterrupt):
            P.run(f, out, cache, report=False, log=said.append)
    assert said[-1].endswith("train frozen seed 0: stopped; no epoch of it was saved yet: the rerun starts it anew")
    fits = [root / "fit-last-svm-C1.0-s0", root / "fit-last-logreg-C1.0-s0"]
    for d in fits + [root / "advice"]:
        assert (d / "step.json").is_file()
    assert not (root / "train-frozen-s0" / "step.json").exists()
    mtimes = {d: (d / "metrics.json").stat().st_mtime_ns for d in fits}

    # 2. resumed: only the train step runs; nothing is extracted again
    with monkeypatch.context() as m:
        counts = {n: Counter(m, mod, n) for mod, n in ((fne.linear.fit, "fit"), (fne.training.train, "train"),
                                                       (fne.extraction.extract, "extract"), (fne.reporting.advise, "advise"))}
        r = P.run(f, out, cache, report=True, log=lambda s: None)
    assert {n: c.calls for n, c in counts.items()} == {"fit": 0, "train": 1, "extract": 0, "advise": 0}
    assert (r["ran"], r["skipped"]) == (1, 3)
    assert all((d / "metrics.json").stat().st_mtime_ns == t for d, t in mtimes.items())
    md = (out / "report.md").read_text()
    assert "last+svm" in md and "train:frozen" in md and "weights are random" in md
    svm = json.loads((fits[0] / "metrics.json").read_text())
    assert f"{100 * svm['accuracy']:.1f}" in md

    # 3. nothing left to do
    with monkeypatch.context() as m:
        counts = {n: Counter(m, mod, n) for mod, n in ((fne.linear.fit, "fit"), (fne.training.train, "train"))}
        r = P.run(f, out, cache, report=False, log=lambda s: None)
    assert (r["ran"], counts["fit"].calls, counts["train"].calls) == (0, 0, 0)

    # 4. a changed setting reruns exactly the steps it touches (the fits), from the cache
    f.write_text(TINY.replace('C = "1.0"', 'C = "0.5"'))
    forward = forward_images.n
    with monkeypatch.context() as m:
        counts = {n: Counter(m, mod, n) for mod, n in ((fne.linear.fit, "fit"), (fne.training.train, "train"))}
        r = P.run(f, out, cache, report=False, log=lambda s: None)
    assert (counts["fit"].calls, counts["train"].calls, r["ran"]) == (2, 0, 2)
    assert forward_images.n == forward  # every row came from the cache

    # 5. a metrics.json rewritten behind the pipeline's back is not trusted
    target = root / "train-frozen-s0" / "metrics.json"
    target.write_text(target.read_text().replace('"kind"', '"kind" ', 1))
    with monkeypatch.context() as m:
        counts = {n: Counter(m, mod, n) for mod, n in ((fne.training.train, "train"),)}
        P.run(f, out, cache, report=False, log=lambda s: None)
    assert counts["train"].calls == 1


def test_an_interrupted_training_step_goes_on_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    """Ctrl-C in a training step's second epoch: the rerun takes up the step's checkpoint
    (`--save-every auto`, here due after every epoch) and trains the second epoch only; under
    --force the step starts anew, and its note names --force (fne run has no --resume)."""
    import fne.training.checkpoint as ck
    import fne.training.epochs as ep
    from fne.cli import main

    f = write(tmp_path, TINY.replace("epochs = 1", "epochs = 2"))
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    monkeypatch.setattr(ck, "AUTO_EVERY_S", 0)
    real, calls = ep.train_one_epoch, []

    def second_epoch_interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    said: list[str] = []
    with monkeypatch.context() as m:
        m.setattr(ep, "train_one_epoch", second_epoch_interrupted)
        with pytest.raises(KeyboardInterrupt):
            P.run(f, out, cache, report=False, log=said.append)
    step = out / "digits" / "efficientnet_lite0-random-32" / "train-frozen-s0"
    assert torch.load(step / "checkpoint.pt", weights_only=True)["epoch"] == 1
    # the run says what the training step it stopped kept
    assert said[-1] == ("[4/4] digits efficientnet_lite0-random-32 train frozen seed 0: stopped; the rerun resumes "
                        "from its checkpoint after epoch 1 of 2")

    def dry(path, force=False):  # the dry run's line of the train step
        lines = []
        P.run(path, out, cache, dry_run=True, force=force, log=lines.append)
        return next(x for x in lines if "train frozen" in x)

    # --dry-run said only "did not finish last time": now whether the rerun takes up the checkpoint
    assert dry(f).endswith("(to run: did not finish last time; the rerun resumes from its checkpoint after "
                           "epoch 1 of 2)")
    other = write(tmp_path, TINY.replace("epochs = 1", "epochs = 2\nlr = 0.01"), "other.toml")
    assert dry(other).endswith("its checkpoint after epoch 1 is of another run (lr = 0.001 there, 0.01 now): the "
                               "rerun starts over)")
    assert dry(f, force=True).endswith("(to run: did not finish last time; force=True starts it over, leaving its "
                                       "checkpoint unused)")  # fne.run's keyword; `fne run` says --force
    with monkeypatch.context() as m:
        resumed, epochs_run = Counter(m, ck, "resume"), Counter(m, ep, "train_one_epoch")
        P.run(f, out, cache, report=False, log=lambda s: None)
    assert (resumed.calls, epochs_run.calls) == (1, 1)
    assert len(json.loads((step / "metrics.json").read_text())["history"]) == 2
    capsys.readouterr()
    note = f"note: starting a new run; {step / 'checkpoint.pt'} is replaced at the next save, or removed at the run's end if none comes"
    with monkeypatch.context() as m:
        resumed, epochs_run = Counter(m, ck, "resume"), Counter(m, ep, "train_one_epoch")
        P.run(f, out, cache, force=True, report=False, log=lambda s: None)
    assert (resumed.calls, epochs_run.calls) == (0, 2)
    printed = capsys.readouterr().out
    assert f"{note} (force=True starts the step over)" in printed and "resume" not in printed
    assert main(["run", str(f), "--out", str(out), "--cache", cache, "--force", "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert f"{note} (--force starts the step over)" in printed and "resume" not in printed


# ------------------------------------------------------------------ shipped files


def test_quickstart_is_valid():
    p = load_pipeline(PIPELINES / "quickstart.toml")
    assert p.datasets[0].data == "digits" and p.backbones[0].weights == "imagenet-or-random"
    assert p.fit and p.train


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent (a clone without ../shared)")
@pytest.mark.parametrize("name", ["flowers12", "pets37"])
def test_shared_dataset_pipelines_are_valid(name):
    p = load_pipeline(PIPELINES / f"{name}.toml")
    d = p.datasets[0]
    assert Path(d.data) == (SHARED / name).resolve() and d.n_images
    assert p.backbones[0].arch == "efficientnet_lite0" and p.backbones[0].weights == "imagenet"
    assert {"frozen", "finetune", "scratch"} <= set(p.train)


def test_pets37_class_map_names_imagenet_classes():
    from fne.backbones.registry import get
    from fne.training.class_map import read_class_map

    p = load_pipeline(PIPELINES / "pets37.toml", check_data=False)
    cm = p.datasets[0].class_map
    f = Path(os.environ.get("TMPDIR", "/tmp")) / f"fne-test-cmap-{os.getpid()}.json"
    f.write_text(json.dumps(cm))
    try:
        mapped = read_class_map(f, sorted(cm), get("efficientnet_lite0").categories())
    finally:
        f.unlink()
    assert len(mapped) == 25


@pytest.mark.parametrize("key", PAPER)
def test_fne_paper_pipelines(tmp_path, monkeypatch, key):
    f = PIPELINES / f"fne-paper-{key}.toml"
    monkeypatch.delenv("FNE_DATASETS", raising=False)
    with pytest.raises(PipelineError, match=rf"fne-paper-{key}\.toml:\d+: datasets\.{key}\.data: .*FNE_DATASETS"):
        load_pipeline(f)
    write_digits(tmp_path / key, per_class=4, classes=2)
    monkeypatch.setenv("FNE_DATASETS", str(tmp_path))
    p = load_pipeline(f)
    pub = p.datasets[0].published
    assert "fne-paper-results.md" in pub["source"]
    # every published method is one the pipeline measures, or is labelled as not a method
    methods = {f"{feat}+{head}" for feat in p.fit["features"] for head in p.fit["heads"]}
    assert set(pub["values"]) - methods == {"SotA at the time"}
    assert pub["values"]["fne+svm"]["mean"] > 0
    # the paper's backbone: the report puts its figures beside those rows only
    assert (pub["arch"], pub["weights"]) == ("vgg16", "imagenet")
    assert p.backbones[0].arch == "vgg16" and p.backbones[0].weights == "imagenet"


def test_fne_paper_reference_values_match_the_source():
    """Every published number in the paper pipelines appears in the reference file."""
    ref = (SHARED.parent / "references" / "fne-paper-results.md")
    if not ref.is_file():
        pytest.skip(f"{ref} is absent")
    text = ref.read_text()
    for key in PAPER:
        p = load_pipeline(PIPELINES / f"fne-paper-{key}.toml", check_data=False)
        for v in p.datasets[0].published["values"].values():
            s = f"{v['mean']:.1f}" + (f" ± {v['std']:.1f}" if v["std"] is not None else "")
            assert s in text, (key, s)


def test_all_paper_datasets_optional(monkeypatch):
    monkeypatch.delenv("FNE_DATASETS", raising=False)
    p = load_pipeline(PIPELINES / "fne-paper-all.toml")
    assert sorted(d.key for d in p.datasets) == sorted(PAPER)
    assert all(d.skipped for d in p.datasets) and len(p.notes) == len(PAPER)


# ------------------------------------------------------------------ dry runs, structure


def _data_present(f: Path) -> bool:
    from fne.pipeline.config import load_pipeline as read

    p = read(f, check_data=False)
    return any(d.data == "digits" or Path(d.data).exists() for d in p.datasets)


@pytest.mark.parametrize("f", sorted(PIPELINES.glob("*.toml")), ids=lambda f: f.name)
def test_every_shipped_pipeline_dry_runs(f, monkeypatch, capsys):
    """Exit 0 with the plan where the data is present; else one line naming the missing folder."""
    from fne.cli import main

    monkeypatch.delenv("FNE_DATASETS", raising=False)
    present = _data_present(f)
    rc = main(["run", str(f), "--dry-run"])
    out, err = capsys.readouterr()
    if present:
        assert rc == 0, err
        assert f"{f}: valid;" in out and "  ->  " in out
    else:
        assert rc == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "${FNE_DATASETS}/" in err or "does not exist" in err


@pytest.mark.parametrize("key", PAPER + ("all",))
def test_paper_pipelines_dry_run_with_their_data(tmp_path, monkeypatch, capsys, key):
    from fne.cli import main

    for k in PAPER:
        write_digits(tmp_path / k, per_class=4, classes=2)
    monkeypatch.setenv("FNE_DATASETS", str(tmp_path))
    assert main(["run", str(PIPELINES / f"fne-paper-{key}.toml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    n = len(PAPER) if key == "all" else 1
    assert f"valid; {4 * n} steps" in out and out.count("vgg16-imagenet fit ") == 3 * n  # + advise


def test_config_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, fne.pipeline.config; heavy = {'torch', 'sklearn'} & set(sys.modules); "
            "verbs = [m for m in sys.modules if m.startswith('fne.') and m not in "
            "('fne.pipeline', 'fne.pipeline.config', 'fne.pipeline.config_errors', 'fne.pipeline.config_data', 'fne.errors', 'fne.names', 'fne.options', 'fne.option_handling')]; "
            "assert not heavy and not verbs, (heavy, verbs)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_train_schema_is_train_configs_options():
    from fne.pipeline.config import TRAIN_EXCLUDED, TRAIN_SCHEMA
    from fne.training.train import TrainConfig

    fields = {k: "|".join(t for t in str(f.type).replace(" ", "").split("|") if t != "None")
              for k, f in TrainConfig.__dataclass_fields__.items() if k not in TRAIN_EXCLUDED}
    assert {k: t for k, (t, _) in TRAIN_SCHEMA.items() if k != "modes"} == fields


def test_extraction_seconds_recorded_per_step(tmp_path):
    """The report's extraction seconds are the pipeline's measured extraction; a rerun on a warm
    cache shows the earlier extraction's run phase, marked "(earlier)" (it said "cached")."""
    text = TINY.split("[train]")[0].replace("[pipeline]", "[pipeline]\nadvise = false")
    f = write(tmp_path, text)
    cache = str(tmp_path / "cache")
    P.run(f, tmp_path / "out", cache, log=lambda s: None)
    step = json.loads((tmp_path / "out/digits/efficientnet_lite0-random-32/fit-last-svm-C1.0-s0/step.json").read_text())
    assert step["extract"]["n_computed"] == 40 and step["extract"]["seconds"] > 0
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {r["extract_seconds"] for r in rep["datasets"][0]["rows"]} == {step["extract"]["seconds"]}
    P.run(f, tmp_path / "out2", cache, log=lambda s: None)  # the same rows, now cached
    md = (tmp_path / "out2" / "report.md").read_text()
    (rec,) = list_stores(cache)[0].records()
    rows = json.loads((tmp_path / "out2" / "report.json").read_text())["datasets"][0]["rows"]
    assert [(r["extract_seconds"], r["extract_cached"]) for r in rows] == [(None, True)] * 2
    assert [r["extract_earlier_seconds"] for r in rows] == pytest.approx([rec["stage_seconds"]["run"]] * 2)
    assert md.count(" (earlier) | ") == 2 and " | cached | " not in md


def test_a_step_done_by_other_fne_code_says_so_and_is_still_skipped(tmp_path, monkeypatch):
    """metrics.json records the hash of fne's sources that made it (versions.fne_code): `fne run
    --dry-run` said "(done)" of a step made by other fne code without a word of it. The line says
    so (the step is still skipped), and so does the run's "done before, skipped"; the same code
    says nothing."""
    import fne.metrics

    f = write(tmp_path, TINY.split("[train]")[0].replace("[pipeline]", "[pipeline]\nadvise = false"))
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    P.run(f, out, cache, report=False, log=lambda s: None)
    was = json.loads(next(out.rglob("metrics.json")).read_text())["versions"]["fne_code"]

    def lines(**kw) -> list[str]:
        said: list[str] = []
        P.run(f, out, cache, report=False, log=said.append, **kw)
        return [s for s in said if "fit last+" in s]

    assert len(lines(dry_run=True)) == 2 and all(s.endswith("(done)") for s in lines(dry_run=True))
    monkeypatch.setattr(fne.metrics, "code_hash", lambda: "0123456789abcdef")  # fne's sources changed since
    note = f"; made by other fne code (fne_code {was}, this fne's 0123456789abcdef): force=True reruns it with this code"
    assert [s.endswith(f"(done{note})") for s in lines(dry_run=True)] == [True, True]
    assert [s.endswith(f": done before, skipped{note}") for s in lines()] == [True, True]  # skipped, not rerun


def test_changed_images_or_release_rerun_their_steps(tmp_path, monkeypatch):
    """Step identity holds the images' content (from the manifest) and the fne version."""
    import fne
    import fne.linear.fit

    from .conftest import write_digits

    data = write_digits(tmp_path / "imgs", per_class=4, classes=3)
    text = TINY.replace('data = "digits"\nmax_per_class = 4', f'data = "{data}"').replace(
        "[train]", "[train_off]").split("[train_off]")[0]
    f = write(tmp_path, text)
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    P.run(f, out, cache, report=False, log=lambda s: None)

    def fits_run() -> int:
        with monkeypatch.context() as m:
            c = Counter(m, fne.linear.fit, "fit")
            P.run(f, out, cache, report=False, log=lambda s: None)
        return c.calls

    assert fits_run() == 0  # unchanged images, same release: nothing reruns
    victim, other = sorted(data.rglob("*.png"))[0], sorted(data.rglob("*.png"))[-1]
    victim.write_bytes(other.read_bytes())
    assert fits_run() == 2  # both fits read the changed image
    assert fits_run() == 0
    monkeypatch.setattr(fne, "__version__", fne.__version__ + ".post1")
    assert fits_run() == 2


def test_data_moved_or_copied_elsewhere_keeps_its_steps_done(tmp_path, monkeypatch):
    """DATA's folder moved (another disk, a copy on another machine, the pipeline file beside it):
    every step ran again for the new path, though its images and labels were the same (step.json
    records their fingerprints) and so would be its results. They stay done, and the run says why;
    a moved copy whose labels differ (an image in another class folder) reruns its steps."""
    import shutil

    import fne.linear.fit

    from .conftest import write_digits

    data = write_digits(tmp_path / "imgs", per_class=4, classes=3)
    text = TINY.replace('data = "digits"\nmax_per_class = 4', 'data = "imgs"').replace(
        "[train]", "[train_off]").split("[train_off]")[0]
    f = write(tmp_path, text)
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    P.run(f, out, cache, report=False, log=lambda s: None)
    shutil.move(tmp_path / "imgs", tmp_path / "moved")
    f.write_text(text.replace('data = "imgs"', 'data = "moved"'))
    said: list[str] = []
    P.run(f, out, cache, dry_run=True, log=said.append)  # reads no image: it cannot tell yet
    assert sum(f"(to run: DATA was {data}: the run reads its images, and skips the step where they and their "
               f"labels are those of then)" in s for s in said) == 3

    def fits_run() -> tuple[int, list[str]]:
        said: list[str] = []
        with monkeypatch.context() as m:
            c = Counter(m, fne.linear.fit, "fit")
            P.run(f, out, cache, report=False, log=said.append)
        return c.calls, said

    calls, said = fits_run()
    assert calls == 0 and sum(f"done before, skipped; DATA was {data}, the same images and labels" in s
                              for s in said) == 3  # the advice and both fits
    one = sorted((tmp_path / "moved" / "0").glob("*.png"))[0]
    one.rename(tmp_path / "moved" / "1" / one.name)  # the same images, one under another label
    assert fits_run()[0] == 2


def test_a_train_step_whose_images_changed_trains_again_not_from_its_checkpoint(tmp_path, monkeypatch):
    """A finished train step's images changed (same names and labels, other bytes): the step reruns,
    and trains anew; it used to take up its checkpoint of the old images (every epoch done) and only
    test that network on the new images."""
    from PIL import Image, ImageOps

    import fne.training.checkpoint as ck
    import fne.training.epochs as ep

    from .conftest import write_digits

    data = write_digits(tmp_path / "imgs", per_class=4, classes=3)
    text = TINY.replace('data = "digits"\nmax_per_class = 4', f'data = "{data}"').replace(
        "[pipeline]", "[pipeline]\nadvise = false")  # the train step alone, a checkpoint after each epoch
    text = text.split("[fit]")[0] + "[train]\nsave_every = 1" + text.split("[train]")[1]
    f = write(tmp_path, text)
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    P.run(f, out, cache, report=False, log=lambda s: None)
    victim = sorted(data.rglob("*.png"))[0]
    ImageOps.invert(Image.open(victim).convert("L")).save(victim)  # the same name and label, other pixels
    with monkeypatch.context() as m:
        resumed, epochs_run = Counter(m, ck, "resume"), Counter(m, ep, "train_one_epoch")
        r = P.run(f, out, cache, report=False, log=lambda s: None)
    assert (r["ran"], resumed.calls, epochs_run.calls) == (1, 0, 1)


def test_dry_run_reads_no_image_and_writes_nothing(tmp_path, capsys, image_opens):
    """`fne run --dry-run` lists the steps from the file and a stat of the data: no image is
    opened, and neither the cache (manifests) nor the output folder is written."""
    from fne.cli import main

    write_digits(tmp_path / "images", per_class=3, classes=2)
    f = write(tmp_path, TINY.replace('data = "digits"', 'data = "images"'))
    image_opens.clear()
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert main(["run", str(f), "--dry-run", "--cache", str(cache), "--out", str(out)]) == 0
    assert "valid;" in capsys.readouterr().out
    assert sum(image_opens.values()) == 0
    assert not cache.exists() and not out.exists()


@pytest.mark.parametrize("in_file, dry", [(True, False), (False, False), (False, True)])
def test_a_bad_device_stops_the_run_in_one_line_before_any_step(tmp_path, capsys, in_file, dry):
    """--dry-run ("validate and list the steps") refuses it too: it listed the steps of `--device tpu`
    as it refused `--workers -1`."""
    from fne.cli import main

    f = write(tmp_path, TINY.replace('workers = 0', 'workers = 0\ndevice = "tpu"', 1) if in_file else TINY)
    out = tmp_path / "out"
    code = main(["run", str(f), "--cache", str(tmp_path / "cache"), "--out", str(out),
                 *([] if in_file else ["--device", "tpu"]), *(["--dry-run"] if dry else [])])
    err = capsys.readouterr().err.strip()
    said = "bad device='tpu': device" if in_file else "bad --device 'tpu': --device"  # the file's key, or the flag
    assert code == 2 and err == f"fne run: error: {said} must be auto, cpu, cuda[:i] or mps (the CPU takes no " \
                                "index: torch runs on all its cores)"
    assert not out.exists()  # no step ran (each failed on the device, then the report had nothing)


def test_a_workers_override_it_refuses_stops_the_run_in_one_line_before_any_step(tmp_path, capsys):
    """`fne run --workers -1` (fne.run(workers=-1)) ran every step, each failing on it."""
    from fne.cli import main
    from fne.errors import OptionError
    from fne.options import MAX_WORKERS

    f, out = write(tmp_path, TINY), tmp_path / "out"
    assert main(["run", str(f), "--cache", str(tmp_path / "cache"), "--out", str(out), "--workers", "-1"]) == 2
    assert capsys.readouterr().err.strip() == (f"fne run: error: bad --workers -1: --workers must be in "
                                               f"[0, {MAX_WORKERS}] (4 per core of this machine)")
    with pytest.raises(OptionError, match=r"^bad workers=-1: workers must be in"):
        P.run(f, out, cache=str(tmp_path / "cache"), workers=-1)
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_a_device_this_machine_lacks_stops_only_a_run_with_steps_to_do(tmp_path, capsys):
    """A finished GPU pipeline re-reported on a laptop (`--device cuda`, nothing to run) writes its
    report; with a step to run, the absent GPU is one line before any step (not each step FAILED)."""
    import torch

    from fne.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    f, out = write(tmp_path, TINY), tmp_path / "out"
    args = ["run", str(f), "--cache", str(tmp_path / "cache"), "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--device", "cuda"]) == 0 and "0 step(s) run" in capsys.readouterr().out
    steps = sorted(p.name for p in out.iterdir())
    assert main([*args, "--device", "cuda", "--force"]) == 2
    why = "no CUDA GPU found" if torch.backends.cuda.is_built() else "this torch was built without CUDA"
    assert capsys.readouterr().err.strip() == f"fne run: error: --device 'cuda': CUDA is not available on this machine " \
                                              f"({why}); use --device cpu or auto"
    assert sorted(p.name for p in out.iterdir()) == steps


@pytest.mark.parametrize("dry", [True, False])
def test_out_that_is_a_file_is_one_line_before_any_step(tmp_path, capsys, dry):
    from fne.cli import main

    f = write(tmp_path, TINY)
    out = tmp_path / "results.txt"
    out.write_text("kept")
    code = main(["run", str(f), "--cache", str(tmp_path / "cache"), "--out", str(out), *(["--dry-run"] if dry else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"fne run: error: --out '{out}': is a file; give a folder (new or existing) to write into"
    assert out.read_text() == "kept" and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("text, where, words", [
    ("", "p.toml: ", "empty pipeline file"),
    ("# only a comment\n", "p.toml: ", "empty pipeline file"),
    ("[pipeline\nname = 1\n", "p.toml:1: ", "not valid TOML: Expected ']'"),
    (GOOD + "\n[pipeline]\n", "p.toml:19: ", "not valid TOML: Cannot declare ('pipeline',) twice"),
    (GOOD.replace('features = ["fc7", "fne"]', 'features = ["fc7", "fne", "fc7"]'), "p.toml:12: fit.features: ",
     "lists 'fc7' more than once"),
    (GOOD.replace('heads = ["svm"]', 'heads = ["svm", "svm"]'), "p.toml:13: fit.heads: ", "lists 'svm' more"),
    (GOOD.replace('name = "x"', 'name = "x"\nseeds = [0, 1, 0]'), "p.toml:3: pipeline.seeds: ", "lists 0 more"),
    (GOOD.replace('modes = ["frozen"]', 'modes = ["frozen", "frozen"]'), "p.toml:16: train.modes: ",
     "lists 'frozen' more"),
])
def test_file_level_mistakes_are_one_line_naming_file_and_line(tmp_path, text, where, words):
    f = write(tmp_path, text)
    with pytest.raises(PipelineError) as e:
        load_pipeline(f)
    msg = str(e.value)
    assert msg.startswith(f"{f.parent}/{where}") and words in msg and "\n" not in msg, msg


def test_a_binary_file_or_a_data_of_a_wrong_type_is_named_once(tmp_path):
    """`fne run photo.jpg` (an image for the pipeline file) ended in a UnicodeDecodeError traceback;
    `data = 5` was reported twice, as of the wrong type and as missing, and so was `arch = 16`."""
    f = tmp_path / "photo.jpg"
    f.write_bytes(b"\xff\xd8\xff\xe0 not text")
    with pytest.raises(PipelineError) as e:
        load_pipeline(f)
    assert str(e.value) == (f"pipeline file {f}: not a TOML file (not UTF-8 text: invalid start byte at byte 0); "
                            f"give a pipelines/*.toml file")
    f = write(tmp_path, GOOD.replace('data = "digits"', "data = 5"))
    with pytest.raises(PipelineError) as e:
        load_pipeline(f)
    assert str(e.value) == f"{f}:5: datasets.digits.data: expected a string, got 5"
    f = write(tmp_path, GOOD.replace('arch = "vgg16"', "arch = 16"))
    with pytest.raises(PipelineError) as e:
        load_pipeline(f)
    assert str(e.value) == f"{f}:8: backbones[0].arch: expected a string, got 16"
    f = write(tmp_path, GOOD.replace("[[backbones]]", "[backbones]"))  # a table, not an array of tables
    with pytest.raises(PipelineError) as e:
        load_pipeline(f)
    assert str(e.value) == (f"{f}:7: backbones: expected an array of tables ([[...]]), got "
                            f"{{'arch': 'vgg16', 'weights': 'random'}}")


def test_two_steps_never_share_a_folder(tmp_path):
    """Feature specs that differ only in characters a folder name cannot hold would write one folder."""
    f = write(tmp_path, GOOD.replace('features = ["fc7", "fne"]', 'features = ["fc6,fc7", "fc6, fc7"]'))
    p = load_pipeline(f)
    with pytest.raises(PipelineError, match=r"'digits vgg16-random fit fc6,fc7\+svm seed 0 \(solver sklearn\)' and "
                                            r"'digits vgg16-random fit fc6, fc7\+svm seed 0 .*' would write to the same "
                                            r"folder .*fit-fc6_fc7-svm-C1.0-s0"):
        P.plan(p, tmp_path / "out", {}, read=False)


def test_dry_run_of_data_through_a_symlink_knows_the_rows_extracted_through_it(tmp_path, image_opens):
    """DATA a symlink to a folder, extracted with `fne extract LINK`: `fne run` (which resolves
    DATA) keys its files as the extraction did, so its dry run says the rows are cached, and the
    run reads no image to hash it again. Before, the manifest keyed the files by the path they
    were given under: the dry run said "6 of 6 images not read yet" and the run hashed them all."""
    from fne.extraction.extract import extract

    for png in write_digits(tmp_path / "real", per_class=3, classes=2).rglob("*.png"):
        os.utime(png, (1e9, 1e9))  # not "just written": the manifest trusts the keys it hashes
    (tmp_path / "images").symlink_to(tmp_path / "real", target_is_directory=True)
    f = write(tmp_path, TINY.replace('data = "digits"\nmax_per_class = 4', 'data = "images"').split("[train]")[0])
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    extract(str(tmp_path / "images"), arch="efficientnet_lite0", weights="random", precision="fp32",
            storage_dtype="float32", image_size=32, cache=cache, workers=0, progress=False)
    image_opens.clear()
    lines: list[str] = []
    P.run(f, out, cache, dry_run=True, log=lines.append)
    assert lines[2] == "  extract digits with efficientnet_lite0-random-32: all 6 images cached: no forward pass"
    P.run(f, out, cache, report=False, log=lambda s: None)
    assert sum(image_opens.values()) == 0


def test_dry_run_says_what_each_step_computes_and_why(tmp_path, image_opens, capsys):
    """Before any run: the first fit's extraction of rows not in the cache; after a run, every step
    done; a changed setting: which steps rerun and why, and that the rows are cached."""
    for png in write_digits(tmp_path / "images", per_class=3, classes=2).rglob("*.png"):
        os.utime(png, (1e9, 1e9))  # not "just written": the manifest trusts the keys it hashes
    text = TINY.replace('data = "digits"\nmax_per_class = 4', 'data = "images"').split("[train]")[0]
    f = write(tmp_path, text.replace("splits = 2\ntest_size = 0.5", "splits = 2\ntest_size = 0.5"))
    out, cache = tmp_path / "out", str(tmp_path / "cache")

    def dry() -> list[str]:
        lines: list[str] = []
        image_opens.clear()
        P.run(f, out, cache, dry_run=True, log=lines.append)
        assert sum(image_opens.values()) == 0
        return lines

    lines = dry()  # random weights: the advice reads no rows, the first fit extracts them
    assert lines[2] == ("  extract digits with efficientnet_lite0-random-32: 6 of 6 images not read yet: the run hashes "
                        "them and computes those not in the cache before the first fit")
    assert [s.endswith("(to run: new)") for s in lines[1:2] + lines[3:5]] == [True] * 3
    assert lines[-1] == "3 step(s) to run, 0 done"
    P.run(f, out, cache, report=False, log=lambda s: None)
    lines = dry()
    assert all(s.endswith("(done)") for s in lines[1:4]) and lines[-1] == "0 step(s) to run, 3 done"
    assert not any("extract" in s for s in lines)
    f.write_text(text.replace("splits = 2", "splits = 3"))
    lines = dry()
    assert lines[1].endswith("advice  (done)")
    assert lines[2] == "  extract digits with efficientnet_lite0-random-32: all 6 images cached: no forward pass"
    assert lines[3].endswith("(to run: settings changed: splits 2 -> 3)")
    # the run itself says why a step reruns
    said: list[str] = []
    P.run(f, out, cache, report=False, log=said.append)
    assert any(s.endswith("fit last+svm seed 0 (solver sklearn) ... (settings changed: splits 2 -> 3)") for s in said)
    assert dry()[-1] == "0 step(s) to run, 3 done"
    # steps done, rerun on demand: in Python's words from fne.run, in the flag's from `fne run`
    from fne.cli import main

    forced: list[str] = []
    P.run(f, out, cache, dry_run=True, force=True, log=forced.append)
    assert forced[1].endswith("advice  (to run: force=True)") and forced[-1] == "3 step(s) to run, 0 done"
    capsys.readouterr()
    assert main(["run", str(f), "--out", str(out), "--cache", cache, "--dry-run", "--force"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].endswith("advice  (to run: --force)") and "force=True" not in "".join(printed)
    said.clear()
    P.run(f, out, cache, force=True, report=False, log=said.append)
    assert any(s.endswith("fit last+svm seed 0 (solver sklearn) ... (force=True)") for s in said)


def test_an_image_moved_to_another_class_reruns_the_steps_of_its_dataset(tmp_path):
    """Moving an image between class folders keeps the images' content (the cache's keys) and their
    count: the steps of that DATA rerun, saying why (their results were of the old labels), and a
    max_per_class subset of it is written anew with the new labels."""
    images = write_digits(tmp_path / "images", per_class=4, classes=2)
    text = TINY.replace('data = "digits"\nmax_per_class = 4', 'data = "images"').split("[train]")[0]
    f = write(tmp_path, text.replace('heads = ["svm", "logreg"]', 'heads = ["svm"]'))
    sub = write(tmp_path, f.read_text().replace('data = "images"', 'data = "images"\nmax_per_class = 3'),
                "sub.toml")
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    P.run(f, out, cache, report=False, log=lambda s: None)
    P.run(sub, tmp_path / "sub", cache, report=False, log=lambda s: None)
    subset = tmp_path / "sub/digits/data/images.csv"
    moved = Path(subset.read_text().splitlines()[1].split(",")[0])  # one the subset holds
    assert moved.parent == images / "0"
    moved.rename(images / "1" / moved.name)
    said: list[str] = []
    P.run(f, out, cache, dry_run=True, log=said.append)
    assert said[-1] == "2 step(s) to run, 0 done"
    assert all(s.endswith("the images' names, labels or split changed)") for s in said[1:-1] if "->" in s)
    said.clear()
    P.run(f, out, cache, report=False, log=said.append)
    assert any(s.endswith("fit last+svm seed 0 (solver sklearn) ... "
                          "(settings changed: the images' names, labels or split changed)") for s in said)
    assert said[-1].startswith("2 step(s) run, 0 skipped as done")
    assert json.loads((out / "digits/efficientnet_lite0-random-32/fit-last-svm-C1.0-s0/metrics.json").read_text()
                      )["n_images"] == 8
    said.clear()
    P.run(f, out, cache, report=False, log=said.append)
    assert said[-1].startswith("0 step(s) run, 2 skipped as done")
    said.clear()
    P.run(sub, tmp_path / "sub", cache, report=False, log=said.append)
    assert said[-1].startswith("2 step(s) run, 0 skipped as done")
    rows = [r.split(",") for r in subset.read_text().splitlines()[1:]]
    assert len(rows) == 6 and all(Path(path).is_file() and Path(path).parent.name == label for path, label in rows)


def test_imagenet_weights_that_do_not_load_stop_the_run_naming_the_backbone(tmp_path, monkeypatch):
    """weights = "imagenet" (not imagenet-or-random) where they cannot be had (offline): one line
    naming the backbone's label and why, before any step runs."""
    import dataclasses

    from fne.backbones import registry
    from fne.errors import WeightsError

    def offline():
        raise WeightsError("cannot load ImageNet weights for efficientnet_lite0: no network")

    bb = dataclasses.replace(registry.REGISTRY["efficientnet_lite0"], imagenet=offline)
    monkeypatch.setitem(registry.REGISTRY, "efficientnet_lite0", bb)
    f = write(tmp_path, TINY.replace('weights = "random"', 'weights = "imagenet"').split("[train]")[0])
    with pytest.raises(FneError, match=r"^backbone efficientnet_lite0-imagenet-32: cannot load ImageNet weights for "
                                       r"efficientnet_lite0: no network$"):
        P.run(f, tmp_path / "out", str(tmp_path / "cache"), report=False, log=lambda s: None)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("imagenet_loads", [False, True])
def test_dry_run_finds_the_steps_an_imagenet_or_random_run_finished(tmp_path, monkeypatch, imagenet_loads):
    """`imagenet-or-random` is resolved when a run starts; the dry run resolves nothing, yet lists
    the steps the run finished under either resolution as done (it listed every one as 'settings
    changed: backbone.weights ...'), and a changed setting as that setting alone."""
    import dataclasses

    from fne.backbones import registry
    from fne.errors import WeightsError

    if not imagenet_loads:  # offline, as the quickstart pipeline on a machine without VGG-16's file
        def offline():
            raise WeightsError("no network")

        bb = dataclasses.replace(registry.REGISTRY["efficientnet_lite0"], imagenet=offline)
        monkeypatch.setitem(registry.REGISTRY, "efficientnet_lite0", bb)
    # a seed of the random weights: used where they resolve to random, not passed on with imagenet
    # (where a verb refuses it: --seed-weights applies to random weights only)
    text = TINY.replace('weights = "random"', 'weights = "imagenet-or-random"\nweights_seed = 3').split("[train]")[0]
    f = write(tmp_path, text)
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    P.run(f, out, cache, report=False, log=lambda s: None)
    from fne.cache.store import list_stores

    assert [s.meta["weights"] == "random-seed3" for s in list_stores(cache)] == [not imagenet_loads]

    def dry() -> list[str]:
        lines: list[str] = []
        P.run(f, out, cache, dry_run=True, log=lines.append)
        return lines

    assert dry()[-1] == "0 step(s) to run, 3 done"
    f.write_text(text.replace("splits = 2", "splits = 3"))
    lines = dry()
    assert lines[-1] == "2 step(s) to run, 1 done"
    assert lines[-2].endswith("(to run: settings changed: splits 2 -> 3)")


def test_dry_run_of_a_subset_finds_the_subset_an_earlier_run_wrote(tmp_path):
    """max_per_class: the dry run looks at the subset file the run wrote (it writes none itself),
    so finished steps read as done instead of as changed images."""
    text = TINY.split("[train]")[0]
    f = write(tmp_path, text)
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    lines: list[str] = []
    P.run(f, out, cache, dry_run=True, log=lines.append)
    assert "its subset (4 per class) is not written yet" in lines[2] and not out.exists()
    P.run(f, out, cache, report=False, log=lambda s: None)
    lines = []
    P.run(f, out, cache, dry_run=True, log=lines.append)
    assert lines[-1] == "0 step(s) to run, 3 done", lines


def test_an_absent_optional_dataset_and_direct_without_class_map_are_noted(tmp_path):
    """An optional dataset that is absent is skipped with a note; all of them absent is one
    error naming each; direct mode on a dataset without class_map is a note, not a step."""
    gone = '\n[datasets.gone]\ndata = "no/such/folder"\noptional = true\n'
    text = GOOD.replace('data = "digits"\n', 'data = "digits"\n' + gone).replace('["frozen"]', '["frozen", "direct"]')
    lines: list[str] = []
    P.run(write(tmp_path, text), tmp_path / "out", str(tmp_path / "cache"), dry_run=True, log=lines.append)
    assert lines[0] == f"note: optional dataset gone skipped: path {tmp_path}/no/such/folder does not exist"
    assert lines[1] == "note: direct mode not run on digits: it has no class_map"
    assert not any("direct seed" in x for x in lines)
    alone = write(tmp_path, text.replace('[datasets.digits]\ndata = "digits"\n', ""), "q.toml")
    with pytest.raises(FneError, match=rf"^{alone}: nothing to run: none of its datasets is present \(gone: path "):
        P.run(alone, tmp_path / "out", str(tmp_path / "cache"), dry_run=True, log=lines.append)


def test_a_subset_of_a_predefined_split_keeps_each_images_part(tmp_path, digits_split):
    """max_per_class on DATA with a train/test split: up to N per class in each part, each image
    in the part it came from (the subset's CSV has a split column)."""
    from fne.data.datasets import load_dataset
    from fne.pipeline.config import DatasetCfg

    full = load_dataset(str(digits_split))
    part_of = {Path(s).resolve(): sp for s, sp in zip(full.sources, full.splits, strict=True)}
    ds = DatasetCfg(key="digits", data=str(digits_split), spec=str(digits_split), max_per_class=2)
    target = P.materialise(ds, tmp_path, None)
    assert target.endswith(".csv")
    sub = load_dataset(target)
    assert sub.has_split and len(sub) == 2 * 2 * len(full.classes)
    assert all(part_of[Path(s).resolve()] == sp for s, sp in zip(sub.sources, sub.splits, strict=True))
    assert P.materialise(ds, tmp_path, None, write=False) == target  # the dry run finds it


def test_the_pipelines_own_files_are_written_whole_and_one_cut_short_is_written_again(tmp_path, monkeypatch):
    """A killed run or a full disk while `fne run` writes its own files (pipeline.json, a step's
    advice.json, the subset's stamp) leaves each as it was, never cut short; and a stamp cut short
    (a full disk truncates before it writes) is written again by the next run, not a traceback
    on every rerun, dry runs included."""
    f = write(tmp_path, TINY.split("[train]")[0])
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    P.run(f, out, cache, report=False, log=lambda s: None)
    advice = out / "digits" / "efficientnet_lite0-random-32" / "advice" / "advice.json"
    before = {p: p.read_text() for p in (out / "pipeline.json", advice)}
    write_text, stop_at = Path.write_text, []

    def cut_short(self, text, *a, **k):  # writes half, then the process is stopped
        if self.name.endswith(tuple(stop_at)):
            write_text(self, text[:len(text) // 2], *a, **k)
            raise KeyboardInterrupt
        return write_text(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", cut_short)
    for name in before:  # pipeline.json first; then, with --force, the advice step's result
        stop_at[:] = [name.name]
        with pytest.raises(KeyboardInterrupt):
            P.run(f, out, cache, force=name == advice, report=False, log=lambda s: None)
        kept = advice.parent / "previous-advice.json" if name == advice else name  # the step keeps its old result aside
        assert kept.read_text() == before[name] and (name != advice or not advice.exists())
    monkeypatch.undo()
    assert not list(out.rglob(".tmp-*"))
    stamp = out / "digits" / "data" / "subset.json"
    stamp.write_text(stamp.read_text()[:9])  # cut short by a full disk
    lines: list[str] = []
    P.run(f, out, cache, dry_run=True, log=lines.append)
    assert "its subset (4 per class) is not written yet" in lines[2], lines
    r = P.run(f, out, cache, report=False, log=lambda s: None)
    assert json.loads(stamp.read_text())["n"] == 40 and json.loads((out / "pipeline.json").read_text())
    assert (r["ran"], r["skipped"]) == (1, 2)  # the same subset: only the interrupted advice runs again


def test_an_interrupted_step_says_so_in_the_dry_run_and_the_run(tmp_path, monkeypatch):
    import fne.linear.fit

    text = TINY.split("[train]")[0].replace("[pipeline]", "[pipeline]\nadvise = false")
    f = write(tmp_path, text.replace('heads = ["svm", "logreg"]', 'heads = ["svm"]'))
    out, cache = tmp_path / "out", str(tmp_path / "cache")

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fne.linear.fit, "fit", interrupt)
    with pytest.raises(KeyboardInterrupt):
        P.run(f, out, cache, report=False, log=lambda s: None)
    monkeypatch.undo()
    lines: list[str] = []
    P.run(f, out, cache, dry_run=True, log=lines.append)
    assert lines[-2].endswith("fit last+svm seed 0 (solver sklearn)  ->  "
                              f"{out}/digits/efficientnet_lite0-random-32/fit-last-svm-C1.0-s0  (to run: did not finish "
                              "last time)"), lines
    assert "all 40 images cached" in lines[1]  # the extraction before the fit was committed
    said: list[str] = []
    P.run(f, out, cache, report=False, log=said.append)
    assert any(s.endswith("... (did not finish last time)") for s in said)


@pytest.mark.parametrize("dry", [True, False])
def test_out_inside_a_datasets_folder_is_one_line_before_any_step(tmp_path, capsys, dry):
    """A run folder inside a dataset's folder would become part of its data (a class `runs`, or
    a folder left out beside train/ and test/): refused before anything is written, as `fne fit
    --out` is, not step by step after the advice was written into DATA."""
    from fne.cli import main

    images = write_digits(tmp_path / "images", per_class=3, classes=2)
    before = sorted(str(p.relative_to(images)) for p in images.rglob("*"))
    f = write(tmp_path, TINY.replace('data = "digits"\nmax_per_class = 4', f'data = "{images}"'))
    out = images / "runs"
    code = main(["run", str(f), "--cache", str(tmp_path / "cache"), "--out", str(out), *(["--dry-run"] if dry else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (f"fne run: error: --out '{out}': is inside DATA {images}; writing there would change "
                                 f"the data: give a path outside it")
    assert sorted(str(p.relative_to(images)) for p in images.rglob("*")) == before
    assert not (tmp_path / "cache").exists()


def test_when_every_fit_and_train_step_fails_the_run_ends_naming_them(tmp_path, monkeypatch):
    """With the advice the only result, there is no report to write: the run ends in the error
    naming the failed steps (not in the report's `no metrics.json under .../advice`)."""
    import fne.linear.fit
    from fne.errors import FneError

    f = write(tmp_path, TINY.split("[train]")[0].replace('heads = ["svm", "logreg"]', 'heads = ["svm"]'))
    out = tmp_path / "out"

    def failing(data, **k):
        raise FneError("the svm could not be fitted")

    monkeypatch.setattr(fne.linear.fit, "fit", failing)
    said: list[str] = []
    with pytest.raises(FneError, match=r"^1 of 2 step\(s\) failed \(digits efficientnet_lite0-random-32 fit last\+svm "
                                       r"seed 0 \(solver sklearn\): the svm could not be fitted\); the other "
                                       r"steps are done, and no report was written; fix the cause"):
        P.run(f, out, str(tmp_path / "cache"), log=said.append)
    assert (out / "digits" / "efficientnet_lite0-random-32" / "advice" / "advice.json").is_file()
    assert "no step has a result yet: no report" in said and not (out / "report.md").exists()


def test_a_failed_step_is_named_the_others_run_and_its_old_result_stays_out(tmp_path, monkeypatch):
    """One step fails: the others still run, the report says which failed (and never shows that
    step's result of older settings), the run ends in an error naming it, and a rerun runs it alone."""
    import fne.linear.fit
    from fne.errors import FneError

    text = TINY.split("[train]")[0].replace("[pipeline]", "[pipeline]\nadvise = false")
    f = write(tmp_path, text)
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    P.run(f, out, cache, log=lambda s: None)
    svm = out / "digits" / "efficientnet_lite0-random-32" / "fit-last-svm-C1.0-s0"
    old = json.loads((svm / "metrics.json").read_text())["accuracy"]
    f.write_text(text.replace("splits = 2", "splits = 3"))  # both fits rerun; the svm one fails
    real = fne.linear.fit.fit

    def failing(data, **k):
        if k["head"] == "svm":
            raise FneError("the svm could not be fitted")
        return real(data, **k)

    said: list[str] = []
    with monkeypatch.context() as m:
        m.setattr(fne.linear.fit, "fit", failing)
        with pytest.raises(FneError, match=r"^1 of 2 step\(s\) failed \(digits efficientnet_lite0-random-32 fit "
                                           r"last\+svm seed 0 \(solver sklearn\): the svm could not be fitted\); "
                                           r"the other steps are done and reported in .*report\.md; fix the cause"):
            P.run(f, out, cache, log=said.append)
    assert any(s.endswith("fit last+svm seed 0 (solver sklearn): FAILED: the svm could not be fitted") for s in said)
    md = (out / "report.md").read_text()
    assert "FAILED (the svm could not be fitted): it is missing from this report" in md
    assert "last+logreg" in md and "last+svm" not in md.split("## digits")[1]
    assert not (svm / "metrics.json").exists()  # the old settings' result, kept aside
    assert json.loads((svm / "previous-metrics.json").read_text())["accuracy"] == old
    r = P.run(f, out, cache, log=lambda s: None)
    assert (r["ran"], r["skipped"]) == (1, 1) and "last+svm" in (out / "report.md").read_text()


def test_a_step_failing_on_a_bug_keeps_its_traceback_for_a_report(tmp_path, monkeypatch):
    """Not a user's mistake (no FneError): the one line says where the traceback is kept."""
    import fne.linear.fit
    from fne.errors import FneError

    text = TINY.split("[train]")[0].replace("[pipeline]", "[pipeline]\nadvise = false")
    text = text.replace('heads = ["svm", "logreg"]', 'heads = ["svm"]')
    f = write(tmp_path, text)
    out = tmp_path / "out"

    def buggy(data, **k):
        raise KeyError("oops")

    monkeypatch.setattr(fne.linear.fit, "fit", buggy)
    with pytest.raises(FneError, match=r"KeyError: 'oops' \(traceback in .*traceback.txt\)"):
        P.run(f, out, str(tmp_path / "cache"), log=lambda s: None)
    (kept,) = out.rglob("traceback.txt")
    assert kept.parent.name == "fit-last-svm-C1.0-s0" and "in buggy" in kept.read_text()


def test_a_step_the_full_disk_stops_is_one_line_without_a_traceback(tmp_path, monkeypatch):
    """A full disk under --out is the user's to fix, not a bug: the step's line names the file,
    what ran out and what to do, and no traceback.txt is written (on that full disk, too)."""
    import errno

    import fne.linear.fit
    from fne.errors import FneError

    text = TINY.split("[train]")[0].replace("[pipeline]", "[pipeline]\nadvise = false")
    text = text.replace('heads = ["svm", "logreg"]', 'heads = ["svm"]')
    f = write(tmp_path, text)
    out = tmp_path / "out"

    def full(data, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(k["out"]) / "model.joblib"))

    monkeypatch.setattr(fne.linear.fit, "fit", full)
    with pytest.raises(FneError) as e:
        P.run(f, out, str(tmp_path / "cache"), log=lambda s: None)
    step = out / "digits" / "efficientnet_lite0-random-32" / "fit-last-svm-C1.0-s0"
    assert (f"(solver sklearn): no space left on device writing {step / 'model.joblib'}: free space there or pass "
            f"--out a folder on another disk)") in str(e.value)
    assert not list(out.rglob("traceback.txt"))


def test_a_report_the_full_disk_stops_is_one_line_and_the_rerun_writes_it(tmp_path, monkeypatch):
    """The report's files did not fit: one line naming the file and --out, the steps' results kept,
    and the rerun skips them and writes the report."""
    import errno

    import fne.reporting.report
    from fne.errors import FneError

    text = TINY.split("[train]")[0].replace("[pipeline]", "[pipeline]\nadvise = false")
    f = write(tmp_path, text.replace('heads = ["svm", "logreg"]', 'heads = ["svm"]'))
    out, cache = tmp_path / "out", str(tmp_path / "cache")

    def full(dirs, out, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "report.html"))

    with monkeypatch.context() as m:
        m.setattr(fne.reporting.report, "report", full)
        with pytest.raises(FneError) as e:
            P.run(f, out, cache, log=lambda s: None)
    assert str(e.value) == (f"no space left on device writing {out / 'report.html'}: free space there or pass --out a "
                            f"folder on another disk; the finished steps are kept: rerun the same command to skip "
                            f"them and write the report")
    r = P.run(f, out, cache, log=lambda s: None)
    assert (r["ran"], r["skipped"]) == (0, 1) and (out / "report.md").is_file()


def test_a_step_refused_by_its_verb_names_the_pipeline_files_key_not_the_flag(tmp_path, capsys):
    """A step's verb refusing a value that passed the file's checks (weights torch cannot read)
    names it by the file's key, `weights='...'` (the keys are Python's keywords), not `--weights`."""
    from fne.cli import main

    (tmp_path / "w.pt").write_text("not a state dict")
    f = write(tmp_path, TINY.replace('weights = "random"', f'weights = "{tmp_path / "w.pt"}"', 1))
    assert main(["run", str(f), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]) == 2
    said = capsys.readouterr()
    assert f"FAILED: weights='{tmp_path / 'w.pt'}': torch.load cannot read it" in said.out
    assert f"weights='{tmp_path / 'w.pt'}': torch.load cannot read it" in said.err
    assert "--weights" not in said.out + said.err


# GOOD with one direct step (a class map table on digits, EfficientNet-Lite0 at 32) and no fit
_DIRECT_STEP = (GOOD.replace('data = "digits"', 'data = "digits"\nmax_per_class = 6\nclass_map = {"0" = ["tench"], '
                                                '"1" = ["daisy", 1]}')
                .replace('arch = "vgg16"', 'arch = "efficientnet_lite0"')
                .replace('modes = ["frozen"]\nepochs = 2', 'modes = ["direct"]\nimage_size = 32')
                .replace('[fit]\nfeatures = ["fc7", "fne"]\nheads = ["svm"]\n', ''))


def test_a_class_map_table_is_recorded_in_its_direct_steps_folder(tmp_path):
    """A dataset's inline class_map table is handed to fne.train as the dict, which records it as
    class_map.json in the step's own run folder (it was written once per dataset under
    OUT/<dataset>/data/, beside no run), and metrics.json's options name that file."""
    pytest.importorskip("efficientnet_lite_pytorch")
    text = _DIRECT_STEP
    P.run(write(tmp_path, text), tmp_path / "out", cache=str(tmp_path / "cache"), report=False, device="cpu",
          workers=0)
    (metrics,) = (tmp_path / "out").rglob("metrics.json")
    m = json.loads(metrics.read_text())
    assert m["mode"] == "direct" and m["classes"] == ["0", "1"]
    assert m["options"]["class_map"] == str(metrics.parent / "class_map.json")
    assert json.loads((metrics.parent / "class_map.json").read_text()) == {"0": ["tench"], "1": ["daisy", 1]}
    assert list((tmp_path / "out").rglob("class_map.json")) == [metrics.parent / "class_map.json"]


def test_dry_run_says_a_direct_steps_folder_loses_an_earlier_runs_checkpoint(tmp_path):
    """A direct step's folder holding an earlier run's checkpoint.pt: the run removes it at its end
    (a direct run saves none; a later --resume would take it up), but --dry-run said nothing of
    it. It now says so, with --force or without (the step not finished)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    text = _DIRECT_STEP
    f, out, cache = write(tmp_path, text), tmp_path / "out", str(tmp_path / "cache")
    P.run(f, out, cache=cache, report=False, device="cpu", workers=0)
    (metrics,) = out.rglob("metrics.json")
    (metrics.parent / "checkpoint.pt").write_bytes(b"an earlier run's checkpoint")

    def dry(force: bool) -> str:  # the dry run's line of the direct step
        lines: list[str] = []
        P.run(f, out, cache, dry_run=True, force=force, log=lines.append)
        return next(x for x in lines if "train direct" in x)

    note = "; its checkpoint is another run's (a direct run trains nothing and saves none): the run removes it at its end)"
    assert dry(force=True).endswith(note)
    metrics.unlink()  # an unfinished step
    assert dry(force=False).endswith(note)
    (metrics.parent / "checkpoint.pt").unlink()
    assert "checkpoint" not in dry(force=False)


def test_a_datasets_train_per_class_reaches_its_train_steps(tmp_path):
    """`[datasets.X] train_per_class` set fit's training images per class, while the pipeline's
    train steps trained on the whole training share: it now reaches them (as its test_size does),
    and the check of the validation part counts those images."""
    text = GOOD.replace('data = "digits"', 'data = "digits"\ntrain_per_class = 30')
    p = load_pipeline(write(tmp_path, text))
    steps = P.plan(p, tmp_path / "out", {"digits": "digits"}, read=False)
    train = [s for s in steps if s.kind == "train"]
    assert train and all(train_arguments(s, p)["train_per_class"] == 30 for s in train)
    assert all(s.kwargs["train_per_class"] == 30 for s in steps if s.kind == "fit")
    with pytest.raises(PipelineError, match=r"train.val_fraction: mode frozen on digits: a validation part of 0.02 "
                                            r"holds 6 of ~300 training images"):
        load_pipeline(write(tmp_path, text.replace("epochs = 2", "epochs = 2\nval_fraction = 0.02")))


@pytest.mark.parametrize("flags", [["--no-progress"], []])
def test_no_progress_reaches_every_step(tmp_path, capsys, flags):
    """`fne run --no-progress` was refused (unrecognized arguments) while every other verb takes it:
    it now turns off the bars of the extraction, the fits and a training step whose file section
    leaves progress on; without it the same run shows them (stderr is a log here: one line a bar)."""
    from fne.cli import main

    f = write(tmp_path, TINY.replace("progress = false\n", ""))
    assert main(["run", str(f), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--no-report",
                 *flags]) == 0
    bars = [line.split(":")[0] for line in capsys.readouterr().err.splitlines() if " elapsed" in line]
    expected = [] if flags else ["extract efficientnet_lite0", "fit last+svm", "fit last+logreg", "frozen 1/1", "test"]
    assert bars == expected


def test_a_step_done_before_labels_were_recorded_stays_done_and_is_not_said_to_have_new_labels():
    """A step.json written before fne recorded DATA's labels: its step stays done (the hash leaves
    them out), and a rerun for another reason does not say the labels changed."""
    from fne.pipeline.steps import changes, config_hash, hashed

    old = {"dataset": {"data": "/a", "content": "c"}, "epochs": 1}
    new = {"dataset": {"data": "/a", "content": "c", "labels": "l"}, "epochs": 1}
    assert config_hash(hashed(new)) == config_hash(old)
    assert changes(old, {**new, "epochs": 2}) == "epochs 1 -> 2"
    assert changes({**new, "dataset": {**new["dataset"], "labels": "k"}}, new) == (
        "the images' names, labels or split changed")


def test_a_step_another_run_is_running_is_waited_for_then_skipped_when_done(tmp_path):
    """Two `fne run` of one out folder ran a step together, each writing its folder (metrics.json of
    one, step.json of the other's settings). A step now runs under a lock beside its folder: the
    second run says it waits, and once the first is done, skips the step it finished."""
    import subprocess
    import sys

    f = write(tmp_path, TINY.split("[train]")[0].replace('heads = ["svm", "logreg"]', 'heads = ["svm"]'))
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    P.run(f, out, cache, report=False, log=lambda s: None)
    step = out / "digits" / "efficientnet_lite0-random-32" / "fit-last-svm-C1.0-s0"
    go = tmp_path / "go"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib\nfrom fne.data.sidecar import locked\n"
        "with locked(pathlib.Path(sys.argv[1]), process=True):\n"
        "    print('held', flush=True)\n"
        "    while not pathlib.Path(sys.argv[2]).exists():\n        time.sleep(0.05)\n"),
        str(step.with_name(f".{step.name}.lock")), str(go)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        said: list[str] = []

        def log(s: str) -> None:
            said.append(s)
            if s.endswith("waiting for it"):
                go.touch()  # the other run ends its step

        P.run(f, out, cache, report=False, log=log)
    finally:
        go.touch()
        holder.wait(timeout=30)
    label = "[2/2] digits efficientnet_lite0-random-32 fit last+svm seed 0 (solver sklearn)"
    waits = f"{label}: another process (fne run, fit or train) is writing this step's folder; waiting for it"
    assert said[said.index(waits) + 1] == (
        f"{label}: done before, skipped")
    assert said[-1].startswith("0 step(s) run, 2 skipped as done")


def test_a_pipeline_run_into_another_pipelines_out_folder_names_the_datasets_its_report_leaves_out(tmp_path):
    """Two pipeline files given one out folder: the second's report replaced the first's, its
    datasets gone from report.md without a word. The run now says which datasets of the other
    pipeline its report leaves out (their runs stay) and how to report them all."""
    text = TINY.split("[train]")[0].replace('heads = ["svm", "logreg"]', 'heads = ["svm"]')
    one = write(tmp_path, text, "one.toml")
    two = write(tmp_path, text.replace('name = "tiny"', 'name = "other"').replace("[datasets.digits]",
                                                                                  "[datasets.few]"), "two.toml")
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    P.run(one, out, cache, report=False, log=lambda s: None)
    said: list[str] = []
    P.run(two, out, cache, report=False, log=said.append)
    assert (f"note: {out} holds runs of dataset(s) digits of pipeline 'tiny' ({one}), which {two} does not list: "
            f"they stay there, and this run's report leaves them out (`fne report {out} --out DIR` reports every run "
            "under it)") in said
    assert (out / "digits").is_dir() and (out / "few").is_dir()
    said.clear()
    P.run(two, out, cache, report=False, log=said.append)  # its own out folder now: nothing to say
    assert not any(s.startswith("note:") for s in said)


def test_a_backbones_weights_may_be_a_torchvision_weights_name(tmp_path):
    """README: `fne run` takes every --weights form, but `weights = "IMAGENET1K_V1"` stopped the
    pipeline as 'neither one of imagenet, random, imagenet-or-random nor an existing state dict
    file'. A weights name of the arch is taken; another is still refused; a file's path is
    normalised (`../w.pt` relative to the file, not `DIR/../w.pt`)."""
    sub = tmp_path / "p"
    sub.mkdir()
    torch.save({}, tmp_path / "w.pt")
    text = GOOD.replace('arch = "vgg16"\nweights = "random"', 'arch = "resnet18"\nweights = "IMAGENET1K_V1"\n\n'
                        '[[backbones]]\narch = "efficientnet_lite0"\nweights = "../w.pt"').replace('"fc7", ', "")
    p = load_pipeline(write(sub, text))
    assert [(b.weights, b.label) for b in p.backbones] == [
        ("IMAGENET1K_V1", "resnet18-IMAGENET1K_V1"), (str(tmp_path / "w.pt"), "efficientnet_lite0-w")]
    with pytest.raises(PipelineError, match=r"p\.toml:9: backbones\[0\]\.weights: 'IMAGENET1K_V9' is neither one of "
                                            r"imagenet, random, imagenet-or-random, a weights name of resnet18, nor"):
        load_pipeline(write(sub, text.replace("IMAGENET1K_V1", "IMAGENET1K_V9")))


def test_a_backbone_of_refused_weights_and_an_image_size_is_named_once(tmp_path):
    """`weights = "/nope.pth"` beside `image_size = 32` was two problems: the weights', and the
    image size's own check of those weights on the next line (`backbones[0].image_size: 32: no
    such file or resnet18 weights name`), which named a setting that was fine."""
    text = GOOD.replace('arch = "vgg16"\nweights = "random"', 'arch = "resnet18"\nweights = "/nope.pth"\nimage_size = 32')
    f = write(tmp_path, text.replace('"fc7", ', ""))
    with pytest.raises(PipelineError) as e:
        load_pipeline(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:9: backbones[0].weights: '/nope.pth' is neither one of ") and "\n" not in msg, msg


def test_a_grid_with_sgd_heads_passes_the_solver_to_svm_and_logreg_alone(tmp_path):
    """[fit] solver = "torch" over heads svm and sgd-svm gave the sgd-svm step's fne fit the solver too,
    which it warns is not applied (an SGD head has none); the steps' settings keep it as given."""
    text = TINY.replace('heads = ["svm", "logreg"]', 'heads = ["svm", "sgd-svm"]\nsolver = "torch"')
    steps = [s for s in P.plan(load_pipeline(write(tmp_path, text)), tmp_path / "out", {"digits": "digits"},
                               read=False) if s.kind == "fit"]
    assert {s.kwargs["head"]: s.kwargs["solver"] for s in steps} == {"svm": "torch", "sgd-svm": "auto"}
    assert [s.config["solver"] for s in steps] == ["torch", "torch"]  # identities, and folders, as before


def test_a_steps_lines_name_the_files_keys_not_flags(tmp_path, capsys):
    """`fne run` on DATA with its own split and `[fit] splits = 2`: the fit step warned "--splits 2 is
    not applied", naming a flag no one typed (the file set it); it names the key now, as the file's
    refused values are named."""
    from fne.cli import main

    data = write_digits(tmp_path / "d", split=True)
    text = TINY.replace('data = "digits"\nmax_per_class = 4', f'data = "{data}"').replace(
        'heads = ["svm", "logreg"]', 'heads = ["svm"]')
    f = write(tmp_path, text)
    assert main(["run", str(f), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c"), "--no-report",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "splits=2 and test_size=0.5 are not applied: DATA has its own split" in err and " --" not in err, err
