"""fne advise: the course's size x similarity rule on measured quantities."""

from __future__ import annotations

import json
import math
import re
import shlex

import numpy as np
import pytest

from fne.data.dataset import Dataset
from fne.reporting import advice_rules as rules
from fne.reporting import advise as A


@pytest.mark.parametrize("per_class, msp, code, families", [
    (20, 0.8, "features-linear", ["feature-extraction"]),            # small, similar
    (5000, 0.8, "finetune", ["fine-tuning"]),                         # large, similar
    (20, 0.05, "early-features-linear", ["feature-extraction"]),     # small, different
    (5000, 0.05, "train-all-from-pretrained", ["fine-tuning", "scratch"]),  # large, different
])
def test_quadrants(per_class, msp, code, families):
    d = A.decide(per_class, msp, entropy=0.5)
    assert d["recommendation"] == code
    assert d["families"] == families
    assert d["size"] == ("large" if per_class >= A.LARGE_PER_CLASS else "small")
    assert d["similar"] == ("similar" if msp >= A.SIMILAR_MSP else "different")
    assert any(str(A.LARGE_PER_CLASS) in r for r in d["reasons"])  # thresholds are stated
    assert any(f"{A.SIMILAR_MSP:.2f}" in r for r in d["reasons"])


def test_thresholds_are_the_boundaries():
    assert A.decide(A.LARGE_PER_CLASS, 0.9)["size"] == "large"
    assert A.decide(A.LARGE_PER_CLASS - 1, 0.9)["size"] == "small"
    assert A.decide(50, A.SIMILAR_MSP)["similar"] == "similar"
    assert A.decide(50, A.SIMILAR_MSP - 0.01)["similar"] == "different"
    assert "borderline" in " ".join(A.decide(A.LARGE_PER_CLASS * 1.5, 0.9)["reasons"])
    assert "borderline" not in " ".join(A.decide(10, 0.95)["reasons"])


def test_random_weights_similarity_not_judged():
    small, large = A.decide(20, None), A.decide(5000, None)
    assert small["similar"] is None and large["similar"] is None
    assert small["recommendation"] == "features-linear" and large["recommendation"] == "finetune"
    assert any("cannot be judged" in r for r in small["reasons"])


def test_softmax_stats_extremes():
    flat = A.softmax_stats(np.zeros((4, 1000)))
    assert flat["max_softmax_mean"] == pytest.approx(1 / 1000)
    assert flat["entropy_norm_mean"] == pytest.approx(1.0)
    peaked = np.full((3, 1000), -50.0)
    peaked[np.arange(3), [1, 2, 3]] = 50.0
    s = A.softmax_stats(peaked)
    assert s["max_softmax_mean"] == pytest.approx(1.0) and s["entropy_norm_mean"] < 1e-6
    assert list(s["top"]) == [1, 2, 3]


def _synthetic(counts: dict[str, int], split: dict[str, int] | None = None) -> Dataset:
    labels, splits = [], []
    for c, n in counts.items():
        labels += [c] * n
        if split is not None:
            splits += ["train"] * split[c] + ["test"] * (n - split[c])
    n = len(labels)
    return Dataset(name="syn", ids=[str(i) for i in range(n)], labels=labels,
                   splits=splits if split is not None else None, classes=sorted(counts), sources=list(range(n)),
                   _keys=[f"k{i}" for i in range(n)])


def test_training_images_per_class():
    d = _synthetic({"a": 100, "b": 40, "c": 8})
    ipc = A.training_images_per_class(d, test_size=0.25)
    assert ipc["median"] == 30 and ipc["min"] == 6 and ipc["max"] == 75  # floor(0.75 n)
    assert A.training_images_per_class(d, 0.25, train_per_class=10)["max"] == 10
    s = _synthetic({"a": 80, "b": 80}, split={"a": 60, "b": 50})
    ipc = A.training_images_per_class(s)
    assert ipc["median"] == 55 and ipc["basis"] == "train split"
    # fit does not cap a predefined split's training images per class; nor does the advice
    assert A.training_images_per_class(s, train_per_class=10)["median"] == 55


def test_training_images_per_class_are_those_of_fits_first_split():
    """pets37's shape (37 classes x 10, 25 % test): fit trains on 277 images, 7 or 8 per class; the
    advice counts those, not 7 of each (259)."""
    from fne.data.splits import make_splits
    d = _synthetic({f"c{i:02d}": 10 for i in range(37)})
    ipc = A.training_images_per_class(d, test_size=0.25)
    train = make_splits(d, d.label_indices(), 1, 0.25)[0][0]
    assert ipc["total"] == len(train) == 277 and (ipc["min"], ipc["max"], ipc["median"]) == (7, 8, 7)
    assert "first split" in ipc["basis"]
    assert A.training_images_per_class(d, 0.25, train_per_class=3)["total"] == 3 * 37


def test_stratified_sample_balanced_and_seeded():
    d = _synthetic({"a": 100, "b": 100, "c": 5})
    idx = A.stratified_sample(d, 30, seed=1)
    got = [d.labels[i] for i in idx]
    assert len(idx) == 30 and got.count("c") == 5 and abs(got.count("a") - got.count("b")) <= 1
    assert idx == A.stratified_sample(d, 30, seed=1) and idx != A.stratified_sample(d, 30, seed=2)


def test_method_family():
    assert rules.method_family("fne+svm") == "feature-extraction"
    assert rules.method_family("fc7+logreg") == "feature-extraction"
    assert rules.method_family("train:finetune") == "fine-tuning"
    assert rules.method_family("train:scratch") == "scratch"
    assert rules.method_family("train:frozen") == "feature-extraction"


def test_advise_digits_random_weights_end_to_end(capsys):
    """Measured size, similarity explicitly not judged: nothing runs through the network."""
    import argparse

    parser = argparse.ArgumentParser()
    A.add_arguments(parser)
    args = parser.parse_args(["digits", "--arch", "efficientnet_lite0", "--weights", "random", "--json"])
    assert A.run_cli(args) == 0
    a = json.loads(capsys.readouterr().out)
    # digits: 1797 images, ~180 per class, 75 % of them train: small (< 200)
    assert a["images_per_class"] == pytest.approx(math.floor(0.75 * 180), abs=2)
    assert a["recommendation"] == "features-linear" and a["size"] == "small"
    assert a["similarity"]["judged"] is False and a["similarity"]["verdict"] is None
    assert (a["data_resolved"], a["label_key"]) == ("digits", None)  # fne report's section: DATA and its labels
    assert a["thresholds"] == {"large_per_class": A.LARGE_PER_CLASS, "similar_max_softmax": A.SIMILAR_MSP,
                               "borderline_max_softmax": A.MSP_BORDER}
    # each recommended command runs as printed: on the backbone advised on, into a run folder
    assert a["commands"][0] == ("fne fit digits --features fne --head svm --arch efficientnet_lite0 "
                                "--weights random --extract --out runs/digits-fne-svm")
    from fne.cli import build_parser

    for cmd in a["commands"]:
        words = shlex.split(cmd)
        got = build_parser().parse_args(words[1:])
        assert (words[0], got.data, got.arch, got.weights) == ("fne", "digits", "efficientnet_lite0", "random")


def test_an_out_that_is_a_folder_is_one_line_before_the_forward_pass(tmp_path, capsys, monkeypatch):
    """`fne advise DATA --out DIR` raised IsADirectoryError after the whole forward pass."""
    from fne.cli import main

    monkeypatch.setattr(A, "advise", lambda *a, **k: pytest.fail("advise ran before --out was checked"))
    assert main(["advise", "digits", "--arch", "efficientnet_lite0", "--weights", "random", "--out",
                 str(tmp_path)]) == 2
    assert re.search(r"fne advise: error: --out .*: is a folder; give the file to write", capsys.readouterr().err)


@pytest.mark.parametrize("name, said", [("advice.txt", "writes JSON, not .txt"), ("advice", "writes JSON")])
def test_an_out_not_named_json_is_one_line_before_the_forward_pass(tmp_path, capsys, monkeypatch, name, said):
    """`fne advise DATA --out advice.txt` wrote JSON under a text file's name, where `fne predict`
    refuses an --out not named .csv: advise refuses one not named .json, naming it, and writes nothing."""
    from fne.cli import main

    monkeypatch.setattr(A, "advise", lambda *a, **k: pytest.fail("advise ran before --out was checked"))
    assert main(["advise", "digits", "--arch", "efficientnet_lite0", "--weights", "random", "--out",
                 str(tmp_path / name)]) == 2
    assert capsys.readouterr().err == (f"fne advise: error: --out '{tmp_path / name}': fne advise {said}: name the "
                                       f"file .json\n")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_prints_the_advice_as_text_and_writes_it_to_out(tmp_path, capsys):
    from fne.cli import main

    out = tmp_path / "new" / "advice.json"
    assert main(["advise", "digits", "--arch", "efficientnet_lite0", "--weights", "random", "--out", str(out),
                 "--no-progress"]) == 0
    text, a = capsys.readouterr().out, json.loads(out.read_text())
    lines = text.splitlines()
    assert lines[0] == "digits (1797 images, 10 classes; efficientnet_lite0 random weights)"
    assert lines[1] == f"recommendation: {a['recommendation']}: {a['text']}" and lines[3] == "reasons:"
    assert lines[2].startswith(f"confidence: {a['confidence']['level']} (")
    assert lines[4:4 + len(a["reasons"])] == [f"  - {r}" for r in a["reasons"]]
    assert lines[-1] == "try: " + "; ".join(a["commands"]) and len(lines) == 5 + len(a["reasons"])


def test_data_of_one_class_is_one_line_not_advice_to_run_a_fit_that_stops(digits_folder, tmp_path, capsys):
    """A folder of one class was advised "try: fne fit …", which then stopped ("a head needs at
    least 2 classes"): advise itself now says so, before any forward pass."""
    import shutil

    from fne.cli import main

    shutil.copytree(digits_folder / "0", tmp_path / "one" / "0")
    assert main(["advise", str(tmp_path / "one"), "--arch", "efficientnet_lite0", "--weights", "random",
                 "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"fne advise: error: .*one: one class \(0\); .*at least 2 classes", err)
    assert "Traceback" not in err and not (tmp_path / "cache").exists()


def test_similarity_measured_from_the_source_classifier(tmp_path, monkeypatch):
    """The classifier reads the cached `last` tap: a classifier that is sure gives MSP ~ 1."""
    import torch

    from fne.data.datasets import load_dataset

    def confident(features, arch, weights, seed):  # a stand-in for an ImageNet head: always class 7
        n, v, _ = features.shape
        out = np.full((n, v, 1000), -30.0, dtype=np.float32)
        out[:, :, 7] = 30.0
        assert features.shape[2] == 1280  # efficientnet_lite0's `last` (head) tap
        return out

    monkeypatch.setattr(A, "_classifier_logits", confident)
    torch.manual_seed(0)
    d = load_dataset("digits")
    idx = A.stratified_sample(d, 10, seed=0)
    stats = A.measure_similarity(d, idx, "efficientnet_lite0", "random", cache=str(tmp_path),
                                 precision="fp32", storage_dtype="float32", batch_size=10, workers=0,
                                 progress=False)
    assert stats["n"] == 10 and stats["max_softmax_mean"] == pytest.approx(1.0)
    assert stats["top_source_classes"][0]["share"] == 1.0
    d2 = A.decide(3000, stats["max_softmax_mean"], entropy=stats["entropy_norm_mean"])
    assert d2["recommendation"] == "finetune"


def _always_class_7(features, arch, weights, seed):
    n, v, _ = features.shape
    out = np.full((n, v, 1000), -30.0, dtype=np.float32)
    out[:, :, 7] = 30.0
    return out


def _aged_digits(root):
    from .conftest import age, write_digits

    return age(write_digits(root, per_class=3, classes=3))


def test_similarity_sample_is_keyed_through_the_manifest(tmp_path, monkeypatch, image_opens):
    """A second advice over an unchanged folder opens no image: keys come from the manifest."""
    from fne.data.datasets import load_dataset

    monkeypatch.setattr(A, "_classifier_logits", _always_class_7)
    d = load_dataset(_aged_digits(tmp_path / "data"))
    idx = A.stratified_sample(d, 6, seed=0)
    kw = dict(cache=str(tmp_path / "cache"), precision="fp32", storage_dtype="float32", batch_size=6,
              workers=0, progress=False)
    assert A.measure_similarity(d, idx, "efficientnet_lite0", "random", **kw)["n"] == 6
    image_opens.clear()
    assert A.measure_similarity(load_dataset(tmp_path / "data"), idx, "efficientnet_lite0", "random",
                                **kw)["n"] == 6
    assert sum(image_opens.values()) == 0


def test_an_unreadable_sample_file_is_skipped_not_fatal(tmp_path, monkeypatch, recwarn):
    """A file that cannot be read (an I/O error) is named and left out of the measure."""
    import builtins
    import errno

    from fne.data.datasets import load_dataset

    monkeypatch.setattr(A, "_classifier_logits", _always_class_7)
    d = load_dataset(_aged_digits(tmp_path / "data"))
    idx = A.stratified_sample(d, 6, seed=0)
    broken, real_open = d.sources[idx[0]], builtins.open

    def failing_open(file, *a, **k):
        if str(file) == str(broken):
            raise OSError(errno.EIO, "Input/output error")
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", failing_open)
    stats = A.measure_similarity(d, idx, "efficientnet_lite0", "random", cache=str(tmp_path / "cache"),
                                 precision="fp32", storage_dtype="float32", batch_size=6, workers=0,
                                 progress=False)
    assert stats["n"] == 5
    assert any(d.ids[idx[0]] in str(w.message) and "cannot read" in str(w.message) for w in recwarn)


def test_images_per_class_are_counted_of_the_images_the_advice_could_read(tmp_path, monkeypatch, capsys):
    """A folder of 12 images, 5 of them not images: the counts were of all 12 (fne fit reads 7);
    they are of the readable ones, the unreadable named. A sample of part of DATA says the rest
    was not read."""
    from .conftest import write_digits

    monkeypatch.setattr(A, "_classifier_logits", _always_class_7)
    root = write_digits(tmp_path / "data", per_class=4, classes=3)
    bad = sorted((root / "0").iterdir())[:3] + sorted((root / "1").iterdir())[:2]
    for f in bad:
        f.write_bytes(b"not an image")
    kw = dict(arch="efficientnet_lite0", weights="imagenet", cache=str(tmp_path / "cache"), precision="fp32",
              workers=0, progress=False)
    a = A.advise(str(root), **kw)
    assert (a["n_images"], a["unreadable"]) == (7, 5)
    assert a["images_per_class_detail"]["total"] == 5  # fit's training images of the 7 (9 of all 12)
    names = ", ".join(f.relative_to(root).as_posix() for f in bad)
    assert a["reasons"][0] == (f"5 of DATA's 12 images could not be read ({names}): left out of the counts, as fne "
                               f"fit leaves unreadable images out")
    assert A.format_advice(a).startswith("data (7 readable of 12 images, 3 classes;")
    part = A.advise(str(root), sample=6, **kw)
    assert part["reasons"][0].endswith("; its other 6 images were not read, and are counted")
    assert part["reasons"][0].startswith(f"{part['unreadable']} of the 6 sampled images could not be read")
    for f in (root / "2").iterdir():  # a class none of whose images can be read is named
        f.write_bytes(b"not an image")
    assert A.advise(str(root), **kw)["reasons"][0].endswith(
        "; no image of class(es) 2 could be read: fne fit cannot learn it")


def test_images_per_class_are_those_fit_trains_on_with_copies_and_unreadable_images(tmp_path, monkeypatch):
    """DATA with copies of one image (one content key) and files that are not images: fit draws its
    split over DATA's listing, unreadable images included, copies on one side, then leaves the
    unreadable images out. The advice's counts are those of fit's first split, class by class."""
    import shutil
    import warnings
    from collections import Counter

    from fne.linear.fit import fit

    from .conftest import write_digits

    monkeypatch.setattr(A, "_classifier_logits", _always_class_7)
    root = write_digits(tmp_path / "data", per_class=10, classes=3)  # drawn over the readable images without
    for c, n in (("0", 4), ("2", 2)):  # their keys, the advice counted 24 (5 to 11 a class), fit 23 (5 to 9)  # copies under other names, in their class
        for f in sorted((root / c).iterdir())[:n]:
            shutil.copy(f, f.with_name("copy-" + f.name))
    for f in sorted((root / "1").iterdir())[:3] + sorted((root / "2").iterdir())[-1:]:
        f.write_bytes(b"not an image")
    kw = dict(arch="efficientnet_lite0", weights="imagenet", cache=str(tmp_path / "cache"), precision="fp32",
              storage_dtype="float32")
    a = A.advise(str(root), workers=0, progress=False, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unreadable images, named
        m = fit(root, out=tmp_path / "run", splits=1, extract_missing=True, progress=False, **kw)
    readable = Counter(p.parent.name for p in root.rglob("*.png") if p.read_bytes() != b"not an image")
    tested = Counter(line.split(",")[2] for line in (tmp_path / "run" / "predictions.csv").read_text().splitlines()[1:])
    trained = np.array([readable[c] - tested[c] for c in ("0", "1", "2")])
    ipc = a["images_per_class_detail"]
    assert (ipc["total"], ipc["min"], ipc["max"], ipc["median"]) == (
        m["splits"][0]["n_train"], trained.min(), trained.max(), np.median(trained))


def test_similarity_on_a_small_sample_is_uncertain():
    """A mean MSP within two standard errors of the threshold cannot tell similar from different."""
    near = " ".join(A.decide(50, 0.35, msp_sem=0.05, sample=8)["reasons"])
    assert "uncertain: on a sample of 8 images the mean's standard error is 0.05" in near
    assert "uncertain" not in " ".join(A.decide(50, 0.35, msp_sem=0.01, sample=200)["reasons"])
    assert "uncertain" not in " ".join(A.decide(50, 0.9, msp_sem=0.2, sample=8)["reasons"])
    stats = A.probability_stats(np.array([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]]))
    assert stats["max_softmax_sem"] == pytest.approx(np.std([0.9, 0.5, 0.7], ddof=1) / math.sqrt(3))


def test_suggested_run_folders_differ_between_forms_of_one_data(tmp_path):
    """DATA f4, f4.csv and f4.h5 (one name, `f4`) were all advised `--out runs/f4-fne-svm`: the
    second fit would land in the first's folder. The suffix DATA is given with is kept."""
    from types import SimpleNamespace

    spec = SimpleNamespace(arch="vgg16", weights="random", crop="center")
    outs = {data: A.runnable("fne fit {data} --features fne --head svm", data, name, spec).split("--out ")[1]
            for data, name in (("f4", "f4"), ("sets/f4/", "f4"), ("f4.csv", "f4"), ("../x/f4.h5", "f4"),
                               ("digits", "digits"))}
    assert outs == {"f4": "runs/f4-fne-svm", "sets/f4/": "runs/f4-fne-svm", "f4.csv": "runs/f4-csv-fne-svm",
                    "../x/f4.h5": "runs/f4-h5-fne-svm", "digits": "runs/digits-fne-svm"}


def test_few_images_per_class_warn_that_differences_are_noise():
    assert any("differences of a few points between methods can be noise" in r for r in A.decide(4, 0.8)["reasons"])
    assert not any("noise" in r for r in A.decide(50, 0.8)["reasons"])


def test_unbalanced_classes_are_said_beside_the_median(tmp_path):
    """6 classes of 45 training images and 6 of 3 were advised on '24 training images per class
    (median)', a count no class has. The reason now gives the range where the median hides it."""
    from tests.conftest import write_digits

    data = write_digits(tmp_path / "big", per_class=8, classes=4)
    for c in (2, 3):
        for f in sorted((data / str(c)).iterdir())[2:]:
            f.unlink()
    a = A.advise(str(data), arch="efficientnet_lite0", weights="random", cache=str(tmp_path / "cache"))
    assert a["reasons"][0] == ("4 training images per class (median) is small: the threshold is 200 per class; "
                               "the classes are unbalanced: 1 to 6 training images a class")
    assert "unbalanced" not in A.decide(24, 0.8, spread=(20, 30))["reasons"][0]
    assert "unbalanced" in A.decide(300, 0.8, spread=(290, 700))["reasons"][0]


def test_a_class_with_one_image_is_named(tmp_path):
    """No split can test a class with a single image: the advice says so first, naming it."""
    from tests.conftest import write_digits

    root = write_digits(tmp_path / "imgs", per_class=3, classes=3)
    for f in sorted((root / "1").iterdir())[1:]:
        f.unlink()
    a = A.advise(str(root), arch="efficientnet_lite0", weights="random", cache=str(tmp_path / "cache"))
    assert a["reasons"][0].startswith("1 class(es) have a single image (1): no method can be trained and tested")
    assert not any("single image" in r for r in A.advise(
        str(write_digits(tmp_path / "ok", per_class=3, classes=3)), arch="efficientnet_lite0", weights="random",
        cache=str(tmp_path / "cache"))["reasons"])


def test_a_split_fit_cannot_draw_is_said_with_fits_own_words(tmp_path, capsys):
    """10 classes of 2 images: --test-size 0.25 holds out 5 images, fewer than the classes, so `fne
    fit` stops there, and so would each command advised; the advice says so first, in fit's words
    (flags on the command line), and not where the split can be drawn (--test-size 0.5)."""
    from fne.cli import main
    from tests.conftest import write_digits

    root = write_digits(tmp_path / "imgs", per_class=2, classes=10)
    kw = dict(arch="efficientnet_lite0", weights="random", cache=str(tmp_path / "cache"))
    a = A.advise(str(root), **kw)
    assert a["reasons"][0] == ("fne fit cannot draw its random split here (nor can the commands advised): cannot carve "
                               "a stratified test_size=0.25 part: it holds out 5 of 20 images, fewer than the 10 "
                               "classes: give test_size=0.5 or more")
    assert not any("cannot draw" in r for r in A.advise(str(root), test_size=0.5, **kw)["reasons"])
    assert main(["advise", str(root), "--arch", "efficientnet_lite0", "--weights", "random", "--cache", kw["cache"]]) == 0
    assert "cannot carve a stratified --test-size 0.25 part" in capsys.readouterr().out


def test_recommended_commands_repeat_the_split_the_advice_counted_images_of():
    """`fne advise --test-size 0.5 --train-per-class 3` counted 3 training images a class, and advised
    `fne fit DATA …` that would train on 75 % of each class: the commands now carry the split. fit
    and train both take --train-per-class (the same images; train once trained on its whole training
    share); --test-size, which has no say beside it, is left out then."""
    from types import SimpleNamespace

    from fne.cli import build_parser
    from fne.options import AdviseOptions

    spec = SimpleNamespace(arch="vgg16", weights="random", crop="center")
    for o, has, said in ((AdviseOptions(test_size=0.5, train_per_class=3), "--train-per-class 3", ("train_per_class", 3)),
                         (AdviseOptions(test_size=0.5), "--test-size 0.5", ("test_size", 0.5))):
        fit = A.runnable("fne fit {data} --features fne --head svm", "d", "d", spec, None, o)
        train = A.runnable("fne train {data} --mode finetune", "d", "d", spec, None, o)
        assert fit.endswith(f"{has} --out runs/d-fne-svm") and train.endswith(f"{has} --out runs/d-finetune")
        for cmd in (fit, train):
            assert cmd.count("--test-size") + cmd.count("--train-per-class") == 1
            assert getattr(build_parser().parse_args(shlex.split(cmd)[1:]), said[0]) == said[1]
    assert "--test-size" not in A.runnable("fne fit {data} --features fne --head svm", "d", "d", spec, None,
                                           AdviseOptions())


def test_commands_for_data_with_a_predefined_split_carry_no_split_options(digits_split, tmp_path):
    """DATA with train/ and test/: fit and train use its split (and warn that --test-size and
    --train-per-class are not applied), so the advice's commands leave both out; advise itself
    says so of the two it was given, in one line."""
    with pytest.warns(UserWarning) as got:
        a = A.advise(str(digits_split), arch="efficientnet_lite0", weights="random", cache=str(tmp_path / "cache"),
                     test_size=0.4, train_per_class=2)
    assert [str(w.message) for w in got if "not applied" in str(w.message)] == [
        f"DATA {digits_split}: test_size=0.4 and train_per_class=2 are not applied: DATA has its own split (its "
        "train/ and test/ folders), which is used as it is: all its training images train, its test images test "
        "(the options draw random splits, for DATA without one)"]
    assert a["commands"] and not any("--test-size" in c or "--train-per-class" in c for c in a["commands"])
    assert "train split" in a["images_per_class_detail"]["basis"]


def test_the_fit_command_advised_runs_as_printed_on_a_cache_without_the_rows(digits_folder, tmp_path, monkeypatch,
                                                                               capsys):
    """`fne advise DATA --cache C` extracts a sample at most (none with random weights), and its
    `try: fne fit DATA …` stopped: `N of M images are not in the cache; add them with: fne extract …`.
    The fit commands now carry --extract and the --cache advised from, and run as printed."""
    from fne.cli import main

    cache = tmp_path / "my cache"
    a = A.advise(str(digits_folder), arch="efficientnet_lite0", weights="random", cache=str(cache))
    fit = [c for c in a["commands"] if c.startswith("fne fit ")]
    assert fit and all(f"--extract --cache '{cache}'" in c for c in fit)
    assert not any("--extract" in c for c in a["commands"] if not c.startswith("fne fit "))
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(fit[0])[1:]) == 0
    assert (tmp_path / "runs" / f"{digits_folder.name}-fne-svm" / "metrics.json").is_file()


def test_advise_out_over_a_run_folders_own_file_is_refused_before_any_work(digits_folder, tmp_path, capsys):
    """`fne advise DATA --out RUN/metrics.json` wrote the advice over a `fne fit` run's metrics.json
    (fne predict refused that name): it stops in one line naming --out and the run, the run left
    as it was; any other name in the folder is written."""
    from fne.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.joblib").write_bytes(b"a model")
    (run / "metrics.json").write_text('{"kind": "fit"}')
    args = ["advise", str(digits_folder), "--arch", "efficientnet_lite0", "--weights", "random",
            "--cache", str(tmp_path / "cache")]
    assert main([*args, "--out", str(run / "metrics.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fne advise: error: --out '{run / 'metrics.json'}': is the metrics.json of the run in {run}; "
                   "writing the advice there would replace the run's own file: give another name")
    assert (run / "metrics.json").read_text() == '{"kind": "fit"}'
    assert main([*args, "--out", str(run / "advice-of-digits.json")]) == 0
    assert json.loads((run / "advice-of-digits.json").read_text())["kind"] == "advice"


def test_a_weights_file_without_the_source_classifier_is_not_judged_by_a_random_one(digits_folder, tmp_path,
                                                                                    monkeypatch):
    """`fne advise --weights runs/ft/model.pt` (a fine-tuned head of 3 classes) measured the
    similarity with the randomly initialised 1000-class head `load_backbone` leaves in its place
    ('confidence 0.00 ... the target looks different'; 'most frequent source classes: mailbox
    19%') and advised on it. Now the similarity is unjudged and the reason names the file; a
    file with the source classifier is still measured."""
    import torch

    from fne.backbones import registry as backbones

    state = backbones.load_backbone("efficientnet_lite0", "random", seed=2).state_dict()
    torch.save({**state, "_fc.weight": torch.zeros(3, 1280), "_fc.bias": torch.zeros(3)}, tmp_path / "ft.pt")
    torch.save({k: v for k, v in state.items() if not k.startswith("_fc.")}, tmp_path / "body.pt")
    torch.save(state, tmp_path / "whole.pt")
    measured = []
    monkeypatch.setattr(A, "_classifier_logits", lambda *a: measured.append(a[2]) or _always_class_7(*a))
    kw = dict(arch="efficientnet_lite0", cache=str(tmp_path / "cache"), precision="fp32", workers=0, progress=False)
    for name, said in (("ft.pt", "its classifier (_fc) has 3 outputs, not the source task's 1000"),
                       ("body.pt", "it holds no classifier (_fc)")):
        a = A.advise(str(digits_folder), weights=str(tmp_path / name), **kw)
        assert not a["similarity"]["judged"] and a["similarity"]["why_not"] == f"weights {tmp_path / name}: {said}"
        assert f"similarity to the source task cannot be judged: {tmp_path / name}: {said}, so the network knows no " \
               f"source task to compare DATA with" in a["reasons"]
        assert "why_not_said" not in a["similarity"]
    assert measured == []
    a = A.advise(str(digits_folder), weights=str(tmp_path / "whole.pt"), **kw)
    assert a["similarity"]["judged"] and measured == [str(tmp_path / "whole.pt")]


def test_the_commands_advised_run_as_printed_from_another_folder(digits_folder, tmp_path, monkeypatch):
    """`cd datasets && fne advise flowers12 --cache ./cache` printed `try: fne fit flowers12 … --cache
    ./cache …`: pasted in another folder, the fit stopped (`DATA 'flowers12' does not exist`), or
    extracted into another cache. DATA, the cache and a weights file are printed absolute; names
    (digits, hf:NAME) and URLs as given, a shard pattern with its folder made absolute."""
    from types import SimpleNamespace

    from fne.cli import main

    monkeypatch.chdir(digits_folder.parent)
    a = A.advise(digits_folder.name, arch="efficientnet_lite0", weights="random", cache="cache")
    fit = next(c for c in a["commands"] if c.startswith("fne fit "))
    assert shlex.split(fit)[2:3] == [str(digits_folder)] and f"--cache {digits_folder.parent / 'cache'} " in fit
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(shlex.split(fit)[1:]) == 0
    assert (tmp_path / "elsewhere" / "runs" / f"{digits_folder.name}-fne-svm" / "metrics.json").is_file()
    assert (digits_folder.parent / "cache").is_dir() and not (tmp_path / "elsewhere" / "cache").exists()
    (tmp_path / "shards").mkdir()
    (tmp_path / "w.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    spec = SimpleNamespace(arch="vgg16", weights="w.pt", crop="center", cache="s3://bucket/cache")
    cmd = shlex.split(A.runnable("fne fit {data} --features fne --head svm", "shards/a-{0..3}.tar", "a", spec))
    assert cmd[2] == f"{tmp_path}/shards/a-{{0..3}}.tar" and cmd[cmd.index("--weights") + 1] == str(tmp_path / "w.pt")
    assert cmd[cmd.index("--cache") + 1] == "s3://bucket/cache"
    for name in ("digits", "hf:nelorth/oxford-flowers@train", "s3://bucket/images", "a Dataset's name"):
        assert shlex.split(A.runnable("fne train {data} --mode finetune", name, "x", spec))[2] == name
    spec.cache = "new cache"  # not made yet (random weights extract nothing): where the fit will make it
    cmd = shlex.split(A.runnable("fne fit {data} --features fne --head svm", "shards", "shards", spec))
    assert cmd[2] == str(tmp_path / "shards") and cmd[cmd.index("--cache") + 1] == str(tmp_path / "new cache")


def test_every_command_advised_parses_and_repeats_the_store_settings_advised_on():
    """`fne advise DATA --crop squash` of a large set printed `fne train DATA --mode finetune … --crop
    squash`, which stopped (`unrecognized arguments: --crop squash`); and `--precision fp32`,
    `--storage-dtype float32`, `--seed-weights 3` were not repeated, so the fit extracted and read
    other rows than those advised on, of another random network. Each verb now gets those it takes."""
    from fne.cache.spec import StoreSpec
    from fne.cli import build_parser

    spec = StoreSpec(arch="efficientnet_lite0", weights="random", crop="squash", precision="fp32",
                     storage_dtype="float32", weights_seed=3, cache="/c")
    templates = {c for r in (*rules.RECOMMENDATIONS.values(), *rules.UNJUDGED.values()) for c in r["commands"]}
    assert {t.split()[1] for t in templates} == {"fit", "train"}
    for t in templates:
        got = vars(build_parser().parse_args(shlex.split(A.runnable(t, "/d", "d", spec))[1:]))
        want = {"precision": "fp32", "weights_seed": 0 if "--mode scratch" in t else 3}  # scratch: --seed draws it
        want |= {"crop": "squash", "storage_dtype": "float32"} if t.startswith("fne fit ") else {}
        assert {k: got[k] for k in want} == want
    plain = A.runnable("fne fit {data} --features fne --head svm", "/d", "d", StoreSpec(arch="vgg16", weights="imagenet"))
    assert plain == "fne fit /d --features fne --head svm --arch vgg16 --weights imagenet --extract --out runs/d-fne-svm"


def test_the_advice_says_how_sure_it_is_in_one_line(tmp_path):
    """`fne advise` gave no overall confidence: its line says "moderate" at best (a rule of thumb
    no run of the methods has checked), "low" with one doubt, "very low" with more: a factor
    borderline, uncertain or not judged, few images a class."""
    from tests.conftest import write_digits

    assert A.confidence(A.decide(50, 0.8)["doubts"]) == {"level": "moderate", "doubts": []}
    assert A.confidence(A.decide(50, None)["doubts"]) == {
        "level": "low", "doubts": ["the similarity was not judged: the size alone decides"]}
    assert A.decide(300, 0.35, msp_sem=0.05, sample=8)["doubts"] == [
        "the size is borderline (300 a class against 200)", "the similarity is borderline (0.35 against 0.30)",
        "the similarity is uncertain on 8 images"]
    data = write_digits(tmp_path / "d", per_class=8, classes=4)
    a = A.advise(str(data), arch="efficientnet_lite0", weights="random", cache=str(tmp_path / "cache"))
    assert a["confidence"]["level"] == "very low"
    assert A.format_advice(a).splitlines()[2] == (
        "confidence: very low (the similarity was not judged: the size alone decides; 6 training images a class, "
        "few to tell methods apart); a rule of thumb: only the runs advised, compared by fne report, measure the "
        "methods")
    assert "confidence: moderate (size and similarity measured, clear of their thresholds)" in A.format_advice(
        {**a, "confidence": A.confidence([])})


class _Checked(Exception):
    """fne train's argument checks passed: it was about to look at its --out folder."""


@pytest.mark.parametrize("weights", ["imagenet", "random"])
def test_every_train_command_advised_passes_fne_trains_checks(weights, monkeypatch):
    """A large set different from the source was advised `fne train DATA --mode scratch --arch …
    --weights imagenet`, which fne train refuses ("--mode scratch trains from a random
    initialisation; --weights 'imagenet' does not apply"), as it refuses --seed-weights 3 with
    scratch. Every train command advised, of imagenet and of random weights (seed 3), now gets
    through fne train's argument checks to the point where it would start work."""
    from fne.cache.spec import StoreSpec
    from fne.cli import build_parser
    from fne.training import train as T

    def reached(*a, **k):
        raise _Checked

    monkeypatch.setattr(T, "check_target", reached)
    spec = StoreSpec(arch="efficientnet_lite0", weights=weights, weights_seed=3 * (weights == "random"), precision="fp32")
    templates = {c for r in (*rules.RECOMMENDATIONS.values(), *rules.UNJUDGED.values()) for c in r["commands"]
                 if c.startswith("fne train ")}
    assert {c.split("--mode ")[1] for c in templates} == {"finetune", "scratch"}
    for t in sorted(templates):
        cmd = A.runnable(t, "digits", "digits", spec)
        with pytest.raises(_Checked):
            T.run_cli(build_parser().parse_args(shlex.split(cmd)[1:]))
        assert ("--weights" in cmd) == ("--mode scratch" not in t), cmd


def _large(monkeypatch, per_class: float, msp: float | None) -> None:
    """advise() of digits as if each class had `per_class` training images and the source classifier's
    mean max-softmax were `msp` (None: not judged): the large set's branches without a large set."""
    def counted(dataset, *a, **k):
        n = len(dataset.classes)
        return {"median": per_class, "mean": per_class, "min": int(per_class) - 10, "max": int(per_class) + 10,
                "total": int(per_class) * n, "basis": "random splits, 75% of each class for training", "refused": None}

    def similarity(dataset, spec, o, fwd):
        if msp is None:
            return {"judged": False, "why_not": "random weights: no source task"}, None, None
        return {"judged": True, "sample": 200, "max_softmax_mean": msp, "max_softmax_sem": 0.01,
                "entropy_norm_mean": 0.5, "top_source_classes": [{"class": "tabby", "share": 0.4}]}, msp, 0.5

    monkeypatch.setattr(A, "training_images_per_class", counted)
    monkeypatch.setattr(A, "_similarity", similarity)


@pytest.mark.parametrize("msp, code, modes, course", [
    (0.8, "finetune", ["finetune"], "a large target set similar to the source: fine-tuning is expected to improve"),
    (0.05, "train-all-from-pretrained", ["finetune", "scratch"],
     "a large target set different from the source: train the whole network; initialising from the source weights"),
    (None, "finetune", ["finetune"], None)])
def test_the_advice_for_a_large_set(msp, code, modes, course, monkeypatch):
    """The large set's advice, end to end (the size and similarity stood in for: digits has ~135
    training images a class): its recommendation, the course's reason for it and none of the small
    set's, the numbers it states, a moderate confidence where both factors are clear of their
    thresholds, and the train commands it advises, which fne train's parser takes."""
    from fne.cli import build_parser

    weights = "random" if msp is None else "imagenet"
    _large(monkeypatch, 1000.0, msp)
    a = A.advise("digits", arch="efficientnet_lite0", weights=weights)
    assert (a["recommendation"], a["size"], a["similarity"]["verdict"]) == (code, "large", None if msp is None else
                                                               "similar" if msp >= A.SIMILAR_MSP else "different")
    assert a["images_per_class"] == 1000.0 and a["thresholds"]["large_per_class"] == A.LARGE_PER_CLASS
    reasons = " | ".join(a["reasons"])
    assert f"1000 training images per class (median) is large: the threshold is {A.LARGE_PER_CLASS} per class" in reasons
    assert "borderline" not in reasons and "overfitting" not in reasons and "noise" not in reasons
    assert "unbalanced" not in reasons  # 990 to 1010 a class
    if course:
        assert f"course: {course}" in reasons and f"confidence on the target images is {msp:.2f}" in reasons
        assert a["confidence"] == {"level": "moderate", "doubts": []}
    else:
        assert "course:" not in reasons and "similarity to the source task cannot be judged" in reasons
        assert a["confidence"]["doubts"] == ["the similarity was not judged: the size alone decides"]
    assert [c.split("--mode ")[1].split()[0] for c in a["commands"]] == modes
    for c in a["commands"]:
        assert c.startswith("fne train digits --mode ") and build_parser().parse_args(shlex.split(c)[1:]).data == "digits"
    text = A.format_advice(a)
    assert text.splitlines()[1] == f"recommendation: {code}: {a['text']}" and "try: fne train digits" in text


def test_a_large_set_near_the_threshold_is_borderline(monkeypatch):
    """300 images a class: large, within a factor of 2 of the threshold: said, and a doubt."""
    _large(monkeypatch, 300.0, 0.8)
    a = A.advise("digits", arch="efficientnet_lite0", weights="imagenet")
    assert a["size"] == "large" and a["recommendation"] == "finetune"
    assert any(r.endswith(f"the threshold is {A.LARGE_PER_CLASS} per class (borderline: within a factor of 2)")
               for r in a["reasons"])
    assert a["confidence"] == {"level": "low", "doubts": [f"the size is borderline (300 a class against {A.LARGE_PER_CLASS})"]}


def test_one_training_image_a_class_is_said_in_the_singular():
    reasons = " | ".join(A.decide(1, 0.9)["reasons"])
    assert "1 training image per class (median) is small" in reasons
    assert "with 1 training image per class each method learns" in reasons
    assert "training images per class (median)" in " | ".join(A.decide(2, 0.9)["reasons"])
