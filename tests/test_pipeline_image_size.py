"""`[[backbones]] image_size` in pipeline files: carried into each step, its own folder and
identity, checked with the file; a file without it plans its steps as before."""

from __future__ import annotations

import json

import pytest

from fne.pipeline import runner as P
from fne.pipeline.runner import PipelineError, load_pipeline
from fne.pipeline.steps import train_arguments

from .test_pipeline import TINY, write

SIZED = """\
[pipeline]
name = "sized"
advise_sample = 10

[datasets.digits]
data = "digits"

[[backbones]]
arch = "efficientnet_lite0"
weights = "random"
image_size = 64

[fit]
features = ["last"]
heads = ["svm"]

[train]
modes = ["frozen", "scratch"]
epochs = 1

[train.scratch]
image_size = 32
"""


def _steps(tmp_path, text: str, name: str = "p.toml") -> tuple:
    p = load_pipeline(write(tmp_path, text, name))
    return p, P.plan(p, tmp_path / "out", {"digits": "digits"}, read=False)


def test_a_backbones_image_size_reaches_every_step_and_train_keeps_its_own(tmp_path):
    """Extraction, fit and advice run at the backbone's size; a train step trains at it unless
    [train] gives its own (scratch here); the backbone has a folder of its own."""
    p, steps = _steps(tmp_path, SIZED)
    assert p.backbones[0].label == "efficientnet_lite0-random-64"
    by = {(s.kind, s.kwargs.get("mode")): s for s in steps}
    assert by["advise", None].kwargs["image_size"] == by["fit", None].kwargs["image_size"] == 64
    assert by["fit", None].config["backbone"]["image_size"] == 64
    sizes = {m: train_arguments(by["train", m], p)["image_size"] for m in ("frozen", "scratch")}
    assert sizes == {"frozen": 64, "scratch": 32}
    # the size a train step trains at is one of its settings, not the backbone's identity
    assert [by["train", m].config["settings"]["image_size"] for m in ("frozen", "scratch")] == [64, 32]
    assert all("image_size" not in by["train", m].config["backbone"] for m in ("frozen", "scratch"))


def test_another_backbone_size_reruns_the_steps_at_it_and_not_a_train_step_of_its_own_size(tmp_path):
    labelled = SIZED.replace('image_size = 64\n', 'image_size = 64\nlabel = "b"\n', 1)
    _, before = _steps(tmp_path, labelled, "a.toml")
    _, after = _steps(tmp_path, labelled.replace("image_size = 64", "image_size = 96"), "b.toml")
    changed = {(s.kind, s.kwargs.get("mode")) for s, t in zip(before, after, strict=True) if s.hash != t.hash}
    assert changed == {("advise", None), ("fit", None), ("train", "frozen")}
    assert [s.dir.name for s in before] == [s.dir.name for s in after]


def test_the_backbones_own_size_given_plans_as_none_given(tmp_path):
    """image_size = 224 for a backbone whose size is 224 names its usual store (as on the command
    line): the same folder and steps as a file without it, nothing run again."""
    _, own = _steps(tmp_path, SIZED.replace("image_size = 64", "image_size = 224"), "own.toml")
    _, none = _steps(tmp_path, SIZED.replace("image_size = 64\n", ""), "none.toml")
    assert [(s.dir, s.hash) for s in own] == [(s.dir, s.hash) for s in none]


def test_a_file_without_image_size_plans_its_steps_as_before(tmp_path):
    """No image_size key in any step's backbone identity or store keywords: the identities (and
    so the done steps) of files written before pipelines took it are unchanged."""
    unsized = TINY.replace("image_size = 32\n", "", 1)  # the backbone's (TINY's first); [train]'s stays
    assert "image_size" not in unsized.split("[fit]")[0]
    p, steps = _steps(tmp_path, unsized)
    assert p.backbones[0].label == "efficientnet_lite0-random"
    for s in steps:
        assert list(s.config["backbone"]) == ["arch", "weights", "fingerprint", "crop", "precision",
                                              "storage_dtype", "weights_seed"]
        assert "image_size" not in s.kwargs
    (train,) = [s for s in steps if s.kind == "train"]
    assert train.config["settings"]["image_size"] == 32  # TINY's [train] image_size, as before


@pytest.mark.parametrize("arch, size, words", [
    ("efficientnet_lite0", "4", "backbones[0].image_size: 4: expected an integer in [8, 4096]"),
    ("vgg16", "16", "backbones[0].image_size: 16: vgg16 cannot run at 16 x 16 ("),
    ("efficientnet_lite0", '"64"', "backbones[0].image_size: expected an integer, got '64'"),
])
def test_a_backbone_size_the_network_cannot_run_at_is_named_with_the_file(tmp_path, arch, size, words):
    text = SIZED.replace('arch = "efficientnet_lite0"', f'arch = "{arch}"').replace("image_size = 64",
                                                                                       f"image_size = {size}")
    with pytest.raises(PipelineError) as e:
        load_pipeline(write(tmp_path, text))
    assert f"p.toml:11: {words}" in str(e.value)


def test_a_sized_pipeline_extracts_fits_advises_and_trains_at_the_size_then_skips_it_all(tmp_path):
    text = TINY.replace('storage_dtype = "float32"\n', 'storage_dtype = "float32"\nimage_size = 48\n').replace(
        "image_size = 32\n", "").replace('heads = ["svm", "logreg"]', 'heads = ["svm"]')
    f, out, cache = write(tmp_path, text), tmp_path / "out", str(tmp_path / "cache")
    first = P.run(f, out, cache, report=False, log=lambda s: None)
    root = out / "digits" / "efficientnet_lite0-random-48"
    fit = json.loads((root / "fit-last-svm-C1.0-s0" / "metrics.json").read_text())
    trained = json.loads((root / "train-frozen-s0" / "metrics.json").read_text())
    advice = json.loads((root / "advice" / "advice.json").read_text())
    assert fit["preprocess"].startswith("center48") and trained["image_size"] == 48
    assert all("--image-size 48" in c for c in advice["commands"])
    again = P.run(f, out, cache, report=False, log=lambda s: None)
    assert (first["ran"], again["ran"], again["skipped"]) == (3, 0, 3)
