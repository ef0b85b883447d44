"""One split rule for `fne fit` and `fne train` (fne.splits): same DATA and seed, same test images."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from fne.data.datasets import load_dataset
from fne.data.splits import make_splits, not_applied, stratified, train_val_test
from fne.errors import DataError, FneError


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits")
    return d, d.label_indices()


@pytest.mark.parametrize("seed", [0, 3])
def test_fit_and_train_hold_out_the_same_test_images(digits, seed):
    d, y = digits
    fit_train, fit_test = make_splits(d, y, splits=3, test_size=0.25, seed=seed)[0]  # what fit scores first
    tr, va, te = train_val_test(d, y, 0.25, 0.1, seed)  # what train uses
    assert np.array_equal(np.sort(fit_test), te)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.sort(fit_train))
    assert len(np.intersect1d(tr, va)) == 0 and len(va) == pytest.approx(0.1 * len(fit_train), abs=1)


def test_train_split_is_the_one_train_test_split_gave_before(digits):
    """Before fne.splits, train split with scikit-learn's train_test_split, val carved from train."""
    d, y = digits
    a, b = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=5)
    a, v = train_test_split(a, test_size=0.1, stratify=y[a], random_state=5)
    got = train_val_test(d, y, 0.25, 0.1, 5)
    assert all(np.array_equal(g, np.sort(w)) for g, w in zip(got, (a, v, b), strict=True))


def test_predefined_split_and_too_small_classes(digits):
    d, y = digits
    s = d.subset(np.arange(40))
    s.splits = ["train"] * 30 + ["test"] * 10
    tr, te = make_splits(s, s.label_indices())[0]
    assert list(tr) == list(range(30)) and list(te) == list(range(30, 40))
    assert [len(p) for p in train_val_test(s, s.label_indices(), 0.25, 0.0, 0)] == [30, 0, 10]
    s.splits = ["train"] * 24 + ["val"] * 6 + ["test"] * 10  # DATA's own validation part: train's val
    tr, va, te = train_val_test(s, s.label_indices(), 0.25, 0.1, 0)
    assert (list(tr), list(va), list(te)) == (list(range(24)), list(range(24, 30)), list(range(30, 40)))
    assert [len(p) for p in train_val_test(s, s.label_indices(), 0.25, 0.0, 0)] == [30, 0, 10]  # it trains on it
    one = d.subset([int(np.flatnonzero(y == 0)[0]), *np.flatnonzero(y == 1)[:5]])
    for call in (lambda: make_splits(one, one.label_indices()),
                 lambda: train_val_test(one, one.label_indices(), 0.25, 0.1, 0)):
        with pytest.raises(FneError, match="every class needs at least 2 images"):
            call()


def test_a_part_too_small_for_the_classes_says_what_to_give():
    """Too few held-out images for the classes (`fne train`'s default --val-fraction on a small
    folder): the message gives a fraction that works, not scikit-learn's wording."""
    y = np.repeat(np.arange(4), [9, 9, 9, 3])
    with pytest.raises(DataError, match=r"holds out 3 of 30 images, fewer than the 4 classes: "
                                        r"give val_fraction=0\.14 or more") as e:
        stratified(np.arange(30), y, 0.1, 0, "val_fraction")
    assert "give --val-fraction 0.14 or more" in e.value.cli  # what `fne train` prints
    ((kept, held),) = stratified(np.arange(30), y, 0.14, 0, "val_fraction")
    assert len(held) == 5 and len(kept) == 25
    with pytest.raises(DataError, match="keeps 1 of 30 images, fewer than the 4 classes"):
        stratified(np.arange(30), y, 0.95, 0, "val_fraction")
    with pytest.raises(DataError, match="a class has only one image"):
        stratified(np.arange(4), np.array([0, 0, 0, 1]), 0.5, 0, "test_size")


def _with_copies(d, y, copies: dict[int, list[int]]):
    """digits' content keys, where each image `copies[i]` lists is a byte copy of image i."""
    keys = list(d.keys())
    for i, js in copies.items():
        for j in js:
            keys[j] = keys[i]
    return keys


def _one_side(keys, parts) -> bool:
    sides = [{keys[i] for i in p} for p in parts]
    return all(not (a & b) for n, a in enumerate(sides) for b in sides[n + 1:])


def test_copies_of_one_image_stay_on_one_side_of_every_random_split(digits):
    d, y = digits
    # copies under the same class (image 0 is a 0, so are 10 and 20), and one under another class
    copies = {0: [10, 20], 1: [11], 2: [12, 22, 32], 3: [13], 4: [5]}
    keys = _with_copies(d, y, copies)
    plain = make_splits(d, y, splits=5, test_size=0.25, seed=1)
    assert not all(_one_side(keys, s) for s in plain)  # drawn without keys, some copies straddle
    grouped = make_splits(d, y, splits=5, test_size=0.25, seed=1, keys=keys)
    for tr, te in grouped:
        assert _one_side(keys, (tr, te)) and len(tr) + len(te) == len(y)
        assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)  # each part sorted, as without copies
        assert len(te) == pytest.approx(0.25 * len(y), abs=15)
    # a split is a function of which images are copies, not of the keys' text (a hash): keys
    # spelled otherwise, sorting in another order, draw the same splits
    renamed = make_splits(d, y, splits=5, test_size=0.25, seed=1, keys=[k[::-1] + "x" for k in keys])
    assert all(np.array_equal(p, q) for s, t in zip(grouped, renamed, strict=True) for p, q in zip(s, t, strict=True))
    for tr, te in make_splits(d, y, splits=3, train_per_class=20, seed=2, keys=keys):
        assert _one_side(keys, (tr, te)) and len(tr) + len(te) == len(y)
    parts = train_val_test(d, y, 0.25, 0.2, 4, keys=keys)
    assert _one_side(keys, parts) and sum(map(len, parts)) == len(y)


def test_distinct_images_split_as_without_keys(digits):
    """Keys with no copies change nothing: the splits published before keys were given."""
    d, y = digits
    for kw in ({"splits": 3, "test_size": 0.3}, {"splits": 2, "train_per_class": 15}):
        a = make_splits(d, y, seed=7, **kw)
        b = make_splits(d, y, seed=7, keys=list(d.keys()), **kw)
        assert all(np.array_equal(p, q) for s, t in zip(a, b, strict=True) for p, q in zip(s, t, strict=True))
    a, b = train_val_test(d, y, 0.25, 0.1, 3), train_val_test(d, y, 0.25, 0.1, 3, keys=list(d.keys()))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))


def test_a_class_of_copies_only_cannot_be_split(tmp_path):
    from PIL import Image

    for c, n in (("a", 3), ("b", 1)):
        for i in range(n):
            (tmp_path / c).mkdir(exist_ok=True)
            Image.new("RGB", (8, 8), (40 * i + 90 * (c == "a"), 0, 0)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "b" / "0-copy.png").write_bytes((tmp_path / "b" / "0.png").read_bytes())
    d = load_dataset(tmp_path)
    y = d.label_indices()
    assert len(make_splits(d, y, test_size=0.4, seed=0)) == 1  # two names: splittable without keys
    with pytest.raises(FneError, match="at least 2 distinct images .* 1 class.*: b"):
        make_splits(d, y, test_size=0.4, seed=0, keys=d.keys())


def test_options_of_random_splits_on_a_predefined_split_say_they_are_not_applied(digits_split, tmp_path):
    """`fne fit flowers12 --train-per-class 3` (train/ and test/ folders) fitted on every training
    image and said nothing, and `--test-size 0.3` or `--splits 3` said nothing either: a figure
    that was not the one asked for. One warning names every such option given, and where DATA's
    own split comes from; the split is DATA's, as before. Options at their defaults say nothing."""
    import csv
    import warnings

    from fne.options import AdviseOptions, FitOptions, TrainConfig
    from fne.progress import COMMAND_LINE

    d = load_dataset(digits_split)
    y = d.label_indices()
    with pytest.warns(UserWarning) as got:
        not_applied(d, FitOptions(train_per_class=3, splits=3, test_size=0.3))
    assert [str(w.message) for w in got] == [
        f"DATA {digits_split}: splits=3 and test_size=0.3 and train_per_class=3 are not applied: DATA has its own "
        "split (its train/ and test/ folders), which is used as it is: all its training images train, its test "
        "images test (the options draw random splits, for DATA without one)"]
    (tr, te), = make_splits(d, y, train_per_class=3)
    assert len(tr) == d.splits.count("train") and len(te) == d.splits.count("test")
    words = COMMAND_LINE.set(True)  # the command line names flags
    try:
        with pytest.warns(UserWarning, match=r"data: --test-size 0.3 is not applied: DATA has its own split "
                                             r"\(its train/ and test/ folders\).*\(the option draws"):
            not_applied(d, TrainConfig(data="x", mode="frozen", out="y", test_size=0.3))
    finally:
        COMMAND_LINE.reset(words)
    rows = [{"path": str(p), "label": p.parent.name, "split": p.parts[-3]} for p in sorted(digits_split.rglob("*.png"))]
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    with pytest.warns(UserWarning, match=rf"^DATA {tmp_path / 'list.csv'}: train_per_class=2 is not applied: DATA "
                                         rf"has its own split \(the split column of {tmp_path / 'list.csv'}\)"):
        not_applied(load_dataset(tmp_path / "list.csv"), AdviseOptions(train_per_class=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for o in (FitOptions(), TrainConfig(data="x", mode="frozen", out="y"), AdviseOptions()):
            not_applied(d, o)  # no option given: nothing to say
        not_applied(load_dataset(digits_split / "train"), FitOptions(test_size=0.3))  # no split of its own: applied


def test_val_fraction_where_data_has_a_validation_part_says_it_is_not_applied(digits_split, tmp_path):
    """`fne train DATA --val-fraction 0.3` with train/, val/ and test/ folders validated on val/
    and said nothing of the option (only metrics.json's `validation` told): one line names it,
    beside the random-split options given; 0 (train on val/ too) and the default say nothing."""
    import shutil
    import warnings

    from fne.options import FitOptions, TrainConfig

    shutil.copytree(digits_split, tmp_path / "d")
    for c in ("0", "1", "2"):
        (tmp_path / "d" / "val" / c).mkdir(parents=True)
        for f in sorted((tmp_path / "d" / "train" / c).iterdir())[:2]:
            f.rename(tmp_path / "d" / "val" / c / f.name)
    d = load_dataset(tmp_path / "d")
    train = dict(data="x", mode="frozen", out="y")
    with pytest.warns(UserWarning) as got:
        not_applied(d, TrainConfig(**train, val_fraction=0.3))
        not_applied(d, TrainConfig(**train, val_fraction=0.3, test_size=0.2))
    assert [str(w.message) for w in got] == [
        f"DATA {tmp_path / 'd'}: val_fraction=0.3 is not applied: DATA's own validation part (its train/, val/ and "
        "test/ folders) picks the epoch (val_fraction=0 trains on it instead)",
        f"DATA {tmp_path / 'd'}: test_size=0.2 is not applied: DATA has its own split (its train/, val/ and test/ "
        "folders), which is used as it is: all its training images train, its test images test (the option draws "
        "random splits, for DATA without one); val_fraction=0.3 is not applied either: DATA's own validation part "
        "(its train/, val/ and test/ folders) picks the epoch (val_fraction=0 trains on it instead)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for o in (TrainConfig(**train, val_fraction=0.0), TrainConfig(**train), FitOptions()):
            not_applied(d, o)
        not_applied(load_dataset(digits_split), TrainConfig(**train, val_fraction=0.3))  # no val part: applied


def test_train_per_class_gives_train_fits_first_split(digits):
    """`fne train --train-per-class N` trains (validation part included) on the N images a class
    that `fne fit --train-per-class N` trains its first split on, and tests on the same rest."""
    d, y = digits
    fit_train, fit_test = make_splits(d, y, splits=3, train_per_class=20, seed=4)[0]
    tr, va, te = train_val_test(d, y, 0.25, 0.1, 4, train_per_class=20)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.sort(fit_train)) and len(fit_train) == 200
    assert np.array_equal(te, np.sort(fit_test)) and len(np.intersect1d(tr, va)) == 0


def test_train_per_class_leaves_every_class_a_test_image_and_names_the_largest_that_does(digits):
    """N training images a class of a class with N images leaves it none to test: refused, the
    line naming the largest N that works (the smallest class's size less one)."""
    d, y = digits
    smallest = int(np.bincount(y).min())  # digits: 174 images of class 8
    tr, te = make_splits(d, y, train_per_class=smallest - 1, seed=0)[0]
    assert set(y[te].tolist()) == set(range(10)) and len(tr) == 10 * (smallest - 1)
    with pytest.raises(FneError, match=rf"1 of 10 classes have {smallest} or fewer images, none left to test: "
                                       rf"8; give train_per_class={smallest - 1} or less"):
        make_splits(d, y, train_per_class=smallest, seed=0)


def test_a_class_too_small_for_a_random_split_names_data_as_given(tmp_path, monkeypatch, capsys):
    """`fne train one.csv` with a class of one image said "one: every class needs ...": the
    CSV's stem, a name the user never gave. It names DATA as given now."""
    import csv

    from fne.cli import main

    from .conftest import write_digits

    write_digits(tmp_path / "d", per_class=3, classes=2)
    next((tmp_path / "d" / "1").iterdir()).unlink()
    next((tmp_path / "d" / "1").iterdir()).unlink()
    monkeypatch.chdir(tmp_path)
    with open("one.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([str(p.relative_to(tmp_path)), p.parent.name] for p in sorted((tmp_path / "d").rglob("*.png")))
    assert main(["train", "one.csv", "--mode", "frozen", "--arch", "efficientnet_lite0", "--weights", "random",
                 "--out", "run", "--no-progress"]) == 2
    assert capsys.readouterr().err == ("fne train: error: DATA one.csv: every class needs at least 2 images for a "
                                       "random split; 1 class(es) have 1: 1\n")


def test_a_class_left_one_image_by_copies_under_another_class_says_so(tmp_path):
    """Images filed, byte for byte, under two classes count once, under the first one's class: a
    class left with one distinct image was named without why (the note on copies under more than
    one class came after the splits, which this error stopped)."""
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "a" / f"{i}.png")
    Image.new("RGB", (8, 8), (0, 200, 0)).save(tmp_path / "b" / "own.png")
    (tmp_path / "b" / "copy.png").write_bytes((tmp_path / "a" / "1.png").read_bytes())
    d = load_dataset(tmp_path)
    with pytest.raises(FneError, match=r"1 class\(es\) have 1: b; 1 image\(s\) appear, byte for byte, under more "
                                       r"than one class .*a/1\.png \(a\) = b/copy\.png \(b\)"):
        make_splits(d, d.label_indices(), test_size=0.4, seed=0, keys=d.keys())
