"""A pipeline file's keys: what a key left out takes (the options' declarations, not copies of
them), how `fne run --help` says the keys, and how `fne run` says a file's values."""

from __future__ import annotations

import dataclasses

import pytest

from fne.options import AdviseOptions, FitOptions, ForwardOptions, StoreOptions, TrainConfig
from fne.pipeline import config
from fne.pipeline.plan import plan


def _declare(monkeypatch, cls, **values) -> None:
    """Change the declared defaults of `cls`' options (their dataclass fields), for this test. The
    verbs are imported first: a verb's signature takes its defaults when its module is imported, and
    one first imported here kept the changed default for every later test in the process."""
    import importlib

    import fne

    for module in fne._VERBS.values():
        importlib.import_module(module)
    found = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        monkeypatch.setattr(found[name], "default", value)


HEAD = """\
[datasets.digits]
data = "digits"

[[backbones]]
arch = "vgg16"
weights = "random"
"""


def test_a_key_left_out_takes_its_options_declared_default(tmp_path, monkeypatch):
    """The defaults of a file's keys are read from fne.options at each load (pipeline/plan.py had
    its own 0.25 for the advice's test part): a changed declaration changes the file's default."""
    _declare(monkeypatch, FitOptions, C="0.5", splits=3, test_size=0.4, train_per_class=7, solver="sklearn",
             features="fc7", head="logreg", seed=4)
    _declare(monkeypatch, AdviseOptions, sample=9, test_size=0.3, train_per_class=2)
    _declare(monkeypatch, StoreOptions, crop="squash", precision="fp32", device="cpu", weights="random")
    _declare(monkeypatch, ForwardOptions, batch_size=8, workers=0)
    fit = tmp_path / "fit.toml"
    fit.write_text(HEAD.replace('weights = "random"\n', "") + "[fit]\n")
    p = config.load_pipeline(fit)
    assert p.fit == {"features": ["fc7"], "heads": ["logreg"], "C": "0.5", "splits": 3, "test_size": 0.4,
                     "train_per_class": 7, "solver": "sklearn"}
    assert (p.seeds, p.advise_sample, p.device, p.batch_size, p.workers) == ([4], 9, "cpu", 8, 0)
    b = p.backbones[0]
    assert (b.weights, b.crop, b.precision) == ("random", "squash", "fp32")
    advise, *fits = plan(p, tmp_path / "out", {}, read=False)
    assert (advise.kind, advise.kwargs["test_size"], advise.kwargs["train_per_class"]) == ("advise", 0.4, 7)
    assert [(s.kwargs["head"], s.kwargs["C"], s.kwargs["splits"], s.kwargs["seed"]) for s in fits] == [
        ("logreg", "0.5", 3, 4)]
    # without fits, the advice splits as fne advise does by default
    train = tmp_path / "train.toml"
    train.write_text(HEAD + '[train]\nmodes = ["frozen"]\n')
    advise = plan(config.load_pipeline(train), tmp_path / "out", {}, read=False)[0]
    assert (advise.kind, advise.kwargs["test_size"], advise.kwargs["train_per_class"]) == ("advise", 0.3, 2)


def test_the_split_checks_take_fne_trains_declared_defaults(tmp_path, monkeypatch):
    """A [train] that sets no test_size or val_fraction is checked with fne train's defaults."""
    _declare(monkeypatch, TrainConfig, test_size=0.5, val_fraction=0.001)
    f = tmp_path / "p.toml"
    f.write_text(HEAD + '[train]\nmodes = ["frozen"]\n')
    with pytest.raises(config.PipelineError, match=r"train\.modes: mode frozen on digits: a validation part of "
                                                   r"0\.001 holds 1 of ~898 training images"):
        config.load_pipeline(f)


def test_a_changed_setting_is_said_as_the_file_writes_it():
    """`fne run` (and its --dry-run) says a step's changed settings in TOML's words: it said
    `augment True -> False` and `features 'fne' -> 'fc7'`, values a file does not write."""
    from fne.pipeline.steps import changes

    old = {"settings": {"augment": True, "scheduler": "none", "splits": 2, "features": ["fne"]}}
    new = {"settings": {"augment": False, "scheduler": "cosine", "splits": 3, "features": ["fne", "fc7"],
                        "train_per_class": 5}}
    assert changes(old, new, limit=5) == ('augment true -> false; features ["fne"] -> ["fne", "fc7"]; '
                                          'scheduler "none" -> "cosine"; splits 2 -> 3; train_per_class (unset) -> 5')


def test_a_checkpoint_of_other_settings_is_said_in_the_files_words():
    """`fne run --dry-run` says why a train step's checkpoint is another run's in the file's terms
    (fne.training.rerun.rerun_note): it said `augment=True there, False now`, Python's."""
    from fne.training.checkpoint import mismatch

    def cfg(**k):
        return TrainConfig(data="d", mode="frozen", out="r", arch="efficientnet_lite0", weights="random", **k)

    ckpt = {"args": dataclasses.asdict(cfg()), "epoch": 1}
    assert mismatch(ckpt, cfg(augment=False, scheduler="cosine", lr=0.01), python=True, in_file=True) == [
        "lr = 0.001 there, 0.01 now", 'scheduler = "none" there, "cosine" now', "augment = true there, false now"]
    assert mismatch(ckpt, cfg(augment=False), python=True) == ["augment=True there, False now"]  # fne.train's


def _help_line(text: str, title: str, key: str) -> str:
    """Key `key`'s entry under table `title` of `fne run --help`'s keys, on one line."""
    import re

    table = text.split(f"\n  {title}\n", 1)[1].split("\n  [", 1)[0]
    entry = re.search(rf"^    {key} \(.*(?:\n        .*)*", table, re.M)
    return " ".join(entry.group().split())


def test_run_help_gives_each_fit_and_train_keys_declared_default(monkeypatch):
    """`fne run --help` said no default of a [fit] or [train] key: it says that one left out takes
    fne fit's / fne train's, each short one as the file writes it, from the declaration."""
    _declare(monkeypatch, FitOptions, splits=7, head="logreg")
    _declare(monkeypatch, TrainConfig, epochs=3, augment=False, scheduler="cosine")
    text = config.keys_help()
    assert "  [fit]\n    (a key left out takes `fne fit`'s default: `fne fit --help`)\n" in text
    assert "  [train], [train.MODE]\n    (a key left out takes `fne train`'s default: `fne train --help`)\n" in text
    assert _help_line(text, "[fit]", "splits").endswith("(default: 7)")
    assert _help_line(text, "[fit]", "heads").endswith('(default: ["logreg"])')
    assert _help_line(text, "[fit]", "C").endswith('(default: "1.0")')
    assert _help_line(text, "[train], [train.MODE]", "epochs").endswith("(default: 3)")
    assert _help_line(text, "[train], [train.MODE]", "scheduler").endswith('(default: "cosine")')
    assert _help_line(text, "[train], [train.MODE]", "augment").endswith("(default: false)")
    assert "default" not in _help_line(text, "[fit]", "train_per_class")  # none: every image


def test_fit_enabled_says_what_a_file_without_fit_runs(tmp_path):
    """`[fit] enabled` said "(default: true)", while a file with no [fit] table runs no fits: its
    help says that a [fit] table runs its fits unless enabled = false, and no table none."""
    line = _help_line(config.keys_help(), "[fit]", "enabled")
    assert "(default: true)" not in line and "no [fit] table, no fits" in line
    f = tmp_path / "p.toml"
    for fit, runs in [("", None), ("[fit]\nenabled = false\n", None), ("[fit]\n", ["fne"])]:
        f.write_text(HEAD + '[train]\nmodes = ["frozen"]\n' + fit)
        p = config.load_pipeline(f)
        assert (p.fit or {}).get("features") == runs and list(p.train) == ["frozen"]


def test_a_key_from_a_no_switch_is_said_in_the_files_terms():
    """A key whose option is a --no-NAME switch, or whose help names one, speaks as the file
    writes it: `augment = false`, not --no-augment."""
    text = config.keys_help()
    assert _help_line(text, "[train], [train.MODE]", "augment").startswith(
        "augment (bool): false: train on center crops instead of")
    assert "`augment = false` decodes in the workers" in _help_line(text, "[train], [train.MODE]", "augment_on")
    assert _help_line(text, "[train], [train.MODE]", "progress") == "progress (bool): false: no progress bars " \
                                                                       "(default: true)"
    assert "--no-" not in text


def test_a_flag_with_its_value_is_said_as_the_key_set_to_it():
    """weights_seed's help, "seed of --weights random", read "seed of `weights` random" in the file's
    terms: a text option's flag followed by a value it documents is said as the key set to it."""
    text = config.keys_help()
    assert _help_line(text, "[[backbones]]", "weights_seed").startswith(
        'weights_seed (int): seed of `weights = "random"`')
    # only a value the option documents goes inside; prose after a flag, or after a number's, stays out
    from fne.option_handling import as_keys

    fields = dataclasses.fields(TrainConfig)
    said = as_keys("--weights random, --weights blue; --epochs extends; --no-augment decodes", fields,
                   " = false", "`")
    assert said == '`weights = "random"`, `weights` blue; `epochs` extends; `augment = false` decodes'


@pytest.mark.parametrize("written", ['1', '1.0', '"1"', '"1.0"', '"1e0"', '"01"'])
def test_one_C_written_several_ways_is_one_fit_step(tmp_path, written):
    """C = 1, 1.0, "1" and "1e0" are one head's C: they named the folders fit-fne-svm-C1-s0,
    ...-C1.0-s0 and ...-C1e0-s0, so writing it another way fitted it again beside the first."""
    f = tmp_path / "p.toml"
    f.write_text(HEAD + f"[fit]\nC = {written}\n")
    p = config.load_pipeline(f)
    fits = [s for s in plan(p, tmp_path / "out", {}, read=False) if s.kind == "fit"]
    assert p.fit["C"] == "1.0" and [s.dir.name for s in fits] == ["fit-fne-svm-C1.0-s0"]


@pytest.mark.parametrize("written,said", [('"AUTO"', "auto"), ("0.1", "0.1"), ('"1e-5"', "1e-05")])
def test_C_is_said_one_way(tmp_path, written, said):
    f = tmp_path / "p.toml"
    f.write_text(HEAD + f"[fit]\nC = {written}\n")
    assert config.load_pipeline(f).fit["C"] == said
