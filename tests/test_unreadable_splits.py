"""`fne fit` and `fne train` split DATA holding an unreadable image alike: a split is drawn over
DATA's listing (its labels, seed and test size), not over the images that decode, and each verb
leaves the unreadable images out of that split's parts, so `fne report` pairs their runs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from fne.data.splits import readable_parts
from fne.errors import DataError
from fne.linear import compare

from .conftest import FAST32, write_digits

TRAIN = dict(mode="frozen", arch="efficientnet_lite0", weights="random", epochs=1, image_size=32, batch_size=32,
             workers=0, val_fraction=0, progress=False)


@pytest.fixture(scope="module")
def broken(tmp_path_factory, digits_folder):
    """digits_folder (4 classes of 6) with a text file named like an image of class 1."""
    root = tmp_path_factory.mktemp("unreadable") / "data"
    shutil.copytree(digits_folder, root)
    (root / "1" / "broken.png").write_bytes(b"not an image at all")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, broken):
    """3-split fits (test size and 3 training images per class) and the frozen trains they pair with."""
    pytest.importorskip("efficientnet_lite_pytorch")
    import fne

    root = tmp_path_factory.mktemp("unreadable_runs")
    kw = dict(features="last", extract_missing=True, progress=False, splits=3, **FAST32)  # as TRAIN, at 32 x 32
    m = {}
    for name, verb, more in (("fit", fne.fit, kw), ("fit3", fne.fit, {**kw, "train_per_class": 3}),
                             ("train", fne.train, TRAIN), ("train3", fne.train, {**TRAIN, "train_per_class": 3})):
        with pytest.warns(UserWarning, match="skipped 1/broken.png: not an image file"):
            m[name] = verb(broken, out=root / name, **{"cache": str(root / "cache"), **more})
    return root, m


@pytest.mark.parametrize("fit_run,train_run", [("fit", "train"), ("fit3", "train3")])
def test_fit_and_train_split_data_with_an_unreadable_image_alike(runs, fit_run, train_run):
    """Fit's first split is train's split, less the unreadable image (before, fit split the 24
    readable images and train all 25: two unrelated test sets, and no paired test); both count
    DATA's 25 images, name the unreadable one, and count only readable images on either side."""
    _, m = runs
    f, t = m[fit_run], m[train_run]
    assert f["splits"][0]["test_hash"] == t["splits"][0]["test_hash"]
    assert compare.shared_splits(f, t) == [(0, 0)] and compare.compare_runs(f, t)["test"].startswith("McNemar")
    assert f["n_images"] == t["n_images"] == 25
    assert f["skipped"] == t["skipped"] == {"1/broken.png": "not an image file"}
    assert all(s["n_train"] + s["n_test"] == 24 for s in f["splits"])
    assert t["n_train"] + t["n_test"] == 24


def test_readable_parts_leaves_the_unreadable_out_and_names_one_sided_classes():
    """Positions among the readable images, in the splitter's order; a class left with test
    images but no readable training image is named, with what that means for its scores (one
    left with no readable test image is said with the recalls, `fne.metrics.class_recall`)."""
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    split = [(np.array([6, 0, 2, 4]), np.array([1, 3, 5, 7]))]
    assert readable_parts(["a", "b", "c"], y, split, None) == (split, [])
    kept = np.array([0, 1, 3, 4, 6, 7])  # 2 (b's only training image) and 5 (c's only test image) unreadable
    (tr, te), = readable_parts(["a", "b", "c"], y, split, kept)[0]
    assert kept[tr].tolist() == [6, 0, 4] and kept[te].tolist() == [1, 3, 7]
    notes = readable_parts(["a", "b", "c"], y, split, kept)[1]
    assert notes == ["1 class(es) have test images but no readable training image in the split (drawn over DATA's "
                     "listing, as `fne fit` and `fne train` draw it, less the unreadable images): the head cannot "
                     "predict them there, and their 2 test image(s) count as wrong: 'b'"]
    two = readable_parts(["a", "b", "c"], y, split * 2, kept)
    assert [p[0].tolist() for p in two[0]] == [tr.tolist()] * 2 and "in 2 of 2 splits" in two[1][0]
    assert two[1][0].endswith("their 4 test image(s) count as wrong: 'b' (split 1, 2)")
    with pytest.raises(DataError, match=r"leaves 0 readable test image\(s\) and readable training images of 3 "
                                        r"class\(es\) once DATA's 4 unreadable image\(s\) are left out; .*remove the "
                                        r"unreadable images from DATA \(each is named above\), or draw another split"):
        readable_parts(["a", "b", "c"], y, split, np.array([0, 2, 4, 6]))
    with pytest.raises(DataError, match=r"leaves 4 readable test image\(s\) and readable training images of 1 "
                                        r"class\(es\) once DATA's 2 unreadable"):
        readable_parts(["a", "b", "c"], y, split, np.array([0, 1, 3, 5, 6, 7]))  # training: 6 and 0, both a's


def test_train_names_a_class_it_read_no_training_image_of(tmp_path):
    """Train says what fit says of the same split, once its passes have found the unreadable
    images; nothing where every image was read, nor in direct mode."""
    from fne.data.datasets import load_dataset
    from fne.training.parts import Split, untrained_notes

    dataset = load_dataset(write_digits(tmp_path / "d", per_class=4, classes=3))
    y = dataset.label_indices()
    split = Split(np.array([0, 1, 4, 5, 8, 9]), np.array([], dtype=np.int64), np.array([2, 3, 6, 7, 10, 11]),
                  list(dataset.classes))
    assert y[split.train].tolist() == [0, 0, 1, 1, 2, 2]
    unread = {dataset.ids[i]: "not an image file" for i in (4, 5)}  # class 1's training images
    assert untrained_notes(dataset, split, {}) == []
    assert untrained_notes(dataset, split, unread) == readable_parts(
        dataset.classes, y, [(split.train, split.test)], np.setdiff1d(np.arange(12), [4, 5]))[1]
    assert "their 2 test image(s) count as wrong: '1'" in untrained_notes(dataset, split, unread)[0]
    split.cmap = {"0": [1], "1": [2]}  # direct mode learns nothing
    assert untrained_notes(dataset, split, unread) == []
