"""Images held in arrays as small benchmarks ship them (MNIST, Fashion-MNIST, CIFAR-10): a NumPy
.npz of `images` + `labels` (or `x` + `y`, or Keras's `x_train` … `y_test`), read as an HDF5
file of the same arrays is, to the same cache rows."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from fne.cli import main
from fne.data.datasets import load_dataset
from fne.errors import DataError
from fne.linear.fit import fit

from .conftest import FAST


def _digits(per_class: int = 6, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Real 8×8 handwritten digits as uint8 N×H×W (grey, as MNIST ships them) and int labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.target == c)[:per_class] for c in range(classes)])
    return np.clip(d.images[idx] * 16, 0, 255).astype(np.uint8), d.target[idx]


def test_npz_forms_read_as_the_hdf5_file_of_the_same_arrays(tmp_path):
    """`images`/`labels`, `x`/`y` and Keras's four arrays (labels N×1, as `cifar10.load_data()`
    gives them) are one DATA form; each image is the array's pixels, grey made RGB, and its cache
    key is the HDF5 file's, so moving a set between the two forms recomputes nothing."""
    x, y = _digits()
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["images"], f["labels"] = x, y
    np.savez(tmp_path / "plain.npz", images=x, labels=y)
    np.savez(tmp_path / "xy.npz", X=x, y=y)
    h5 = load_dataset(tmp_path / "d.h5")
    for name in ("plain.npz", "xy.npz"):
        d = load_dataset(tmp_path / name)
        assert d.labels == h5.labels and d.classes == ["0", "1", "2", "3"] and d.splits is None
        assert d.keys() == h5.keys() and d.ids[3] == f"{name}:3"
        img = np.asarray(d.load(3))
        assert img.shape == (8, 8, 3) and all(np.array_equal(img[..., c], x[3]) for c in range(3))
    train, test = np.arange(len(x)) % 3 != 0, np.arange(len(x)) % 3 == 0
    np.savez(tmp_path / "keras.npz", x_train=x[train], y_train=y[train, None], x_test=x[test], y_test=y[test, None])
    d = load_dataset(tmp_path / "keras.npz")
    assert d.splits == ["train"] * int(train.sum()) + ["test"] * int(test.sum())
    assert d.labels == [str(v) for v in [*y[train], *y[test]]]
    np.savez(tmp_path / "keras.npz", x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test],
             class_names=["zero", "one", "two", "three"])
    assert load_dataset(tmp_path / "keras.npz").labels[:5] == ["zero"] * 4 + ["one"]
    assert sorted(d.keys()) == sorted(h5.keys())
    # class names in their given order, text labels, a split array
    np.savez(tmp_path / "named.npz", images=x, labels=y, class_names=np.array(["zero", "one", "two", "three"]),
             split=np.where(train, "train", "test"))
    d = load_dataset(tmp_path / "named.npz")
    assert d.classes == ["zero", "one", "two", "three"] and d.labels[0] == "zero" and d.splits[0] == "test"
    np.savez(tmp_path / "text.npz", images=x, labels=np.array(["odd", "even"])[y % 2])
    assert load_dataset(tmp_path / "text.npz").classes == ["even", "odd"]


@pytest.mark.parametrize("case,expect", [
    ("not_zip", "NumPy {p}: a damaged or cut-short .npz (File is not a zip file)"),
    ("one_array", "NumPy {p}: holds one array; save the images and labels together: "
                  "np.savez(file, images=images, labels=labels)"),
    ("npy", "DATA {p}: unsupported file type '.npy' (expected .csv, .h5, .npz, .tar, .parquet "
            "or an idx file such as train-images-idx3-ubyte.gz); save the "
            "images and labels together: np.savez(file, images=images, labels=labels)"),
    ("names", "NumPy {p}: needs arrays images and labels (or x and y; optional split, class_names), or x_train, "
              "y_train, x_test, y_test (found: data, target)"),
    ("objects", "NumPy {p}: array labels: Object arrays cannot be loaded when allow_pickle=False; store text as "
                "np.array(values, dtype=str)"),
    ("float", "NumPy {p}: images must be uint8 (0-255), got float64; store (images * 255).round()"
              ".astype(np.uint8) for values in 0-1"),
    ("channels_first", "NumPy {p}: images must be N×H×W, N×H×W×1 or N×H×W×3, got shape (24, 1, 8, 8); channels "
                       "first? store np.transpose(images, (0, 2, 3, 1))"),
    ("one_hot", "NumPy {p}: labels must be one per image (shape N), got shape (24, 4); one-hot? store "
                "labels.argmax(axis=1)"),
    ("count", "NumPy {p}: 24 images but 23 labels"),
    ("keras_shapes", "NumPy {p}: x_train's images are (8, 8) and x_test's (16, 16); give them one shape"),
    ("keras_count", "NumPy {p}: x_train has 24 images but y_train 23 labels"),
])
def test_bad_npz_stops_in_one_line_naming_it(tmp_path, capsys, case, expect):
    """What a user holding arrays gets wrong (floats in 0-1, a torch N×C×H×W layout, one-hot
    labels, a .npy of images alone) stops before any network, in one line saying how to store it."""
    x, y = _digits()
    p = tmp_path / ("d.npy" if case == "npy" else "d.npz")
    if case == "not_zip":
        p.write_bytes(b"PK\x03\x04 not a zip")
    elif case in ("one_array", "npy"):
        with open(p, "wb") as f:
            np.save(f, x)
    elif case == "names":  # scikit-learn's Bunch keys
        np.savez(p, data=x, target=y)
    elif case == "objects":  # a list of Python strings with a None among them
        np.savez(p, images=x, labels=np.array(["a", None] * 12, dtype=object))
    elif case == "keras_shapes":
        np.savez(p, x_train=x, y_train=y, x_test=np.zeros((2, 16, 16), np.uint8), y_test=y[:2])
    elif case == "keras_count":  # the totals agree, the parts do not: labels would be shifted
        np.savez(p, x_train=x, y_train=y[:-1], x_test=x[:2], y_test=y[:3])
    else:
        images = {"float": x / 255.0, "channels_first": x[:, None]}.get(case, x)
        labels = {"one_hot": np.eye(4)[y], "count": y[:-1]}.get(case, y)
        np.savez(p, images=images, labels=labels)
    with pytest.raises(DataError, match="^" + re.escape(expect.format(p=p)) + "$"):
        load_dataset(p)
    assert main(["extract", str(p), "--weights", "random", "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect.format(p=p) in err and "Traceback" not in err


def test_fit_on_a_keras_npz_uses_its_split(tmp_path):
    """`fne fit x.npz --extract`: Keras's train and test arrays are the predefined split."""
    x, y = _digits(per_class=6, classes=3)
    train = np.arange(len(x)) % 3 != 0
    np.savez_compressed(tmp_path / "mnist.npz", x_train=x[train], y_train=y[train], x_test=x[~train],
                        y_test=y[~train])
    m = fit(tmp_path / "mnist.npz", features="last", out=tmp_path / "run", cache=str(tmp_path / "cache"),
            extract_missing=True, progress=False, **FAST)
    saved = json.loads(Path(tmp_path / "run" / "metrics.json").read_text())
    assert saved["classes"] == ["0", "1", "2"] and m["n_train"] == 12 and m["n_test"] == 6


def test_train_and_test_files_npz_or_hdf5_are_a_predefined_split(tmp_path):
    """A split given as two files: train.npz + test.npz, as train.h5 + test.h5 are (a folder of
    them stopped with "no class sub-folders … .npz ×2"), and one of each form together."""
    x, y = _digits()
    for pair, test_form in (("npz", "npz"), ("mixed", "h5")):
        (tmp_path / pair).mkdir()
        np.savez(tmp_path / pair / "train.npz", images=x[:16], labels=y[:16], class_names=list("abcd"))
        if test_form == "npz":
            np.savez(tmp_path / pair / "test.npz", images=x[16:], labels=y[16:], class_names=list("abcd"))
        else:
            with h5py.File(tmp_path / pair / "test.h5", "w") as f:
                f["images"], f["labels"] = x[16:], y[16:]
                f["labels"].attrs["class_names"] = list("abcd")
        d = load_dataset(tmp_path / pair)
        assert d.splits == ["train"] * 16 + ["test"] * 8 and d.ids[16] == f"test.{test_form}:0"
        assert d.labels == [("abcd")[v] for v in y] and d.classes == list("abcd")
        assert np.array_equal(np.asarray(d.load(20))[..., 0], x[20])


def test_a_folder_of_one_array_file_names_the_file_to_give(tmp_path):
    """A folder holding train.npz alone (its test file not there yet) stopped with "no class
    sub-folders … (.npz ×1)"; it names the file to give instead. A flat folder of images with an
    array file beside it (an export) is still unlabelled images."""
    x, y = _digits()
    (tmp_path / "t").mkdir()
    np.savez(tmp_path / "t" / "train.npz", images=x, labels=y)
    with pytest.raises(DataError, match=re.escape(f"holds train.npz and no class folders; a folder of array files is a "
                                                  f"predefined split, train.h5 + test.h5 (or .npz): give the file "
                                                  f"itself (DATA {tmp_path / 't' / 'train.npz'}), or add its test file")):
        load_dataset(tmp_path / "t")
    from PIL import Image

    Image.fromarray(x[0]).save(tmp_path / "t" / "a.png")
    assert load_dataset(tmp_path / "t").ids == ["a.png"]


def test_images_of_zeros_and_ones_are_said_to_come_out_black(tmp_path):
    """Binarised MNIST stored as uint8 0 / 1 was read silently as near-black 0-255 images."""
    x, y = _digits()
    np.savez(tmp_path / "bin.npz", images=(x > 127).astype(np.uint8), labels=y)
    with h5py.File(tmp_path / "bin.h5", "w") as f:
        f["images"], f["labels"] = (x > 127).astype(np.uint8), y
    for name in ("bin.npz", "bin.h5"):
        with pytest.warns(UserWarning, match=rf"{name}: its images' values reach only 1, so they come out near "
                                             r"black \(pixels are 0-255\); store images \* 255"):
            load_dataset(tmp_path / name)
    np.savez(tmp_path / "grey.npz", images=x, labels=y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0-255 images: no warning
        load_dataset(tmp_path / "grey.npz")


def test_images_on_a_small_scale_are_said_to_come_out_dark(tmp_path):
    """scikit-learn's digits as uint8 0-16 (not 0 / 1) were read silently as near-black 0-255
    images; the warning names the largest value seen and the factor that stretches it."""
    from sklearn.datasets import load_digits

    d = load_digits()
    np.savez(tmp_path / "d16.npz", images=d.images.astype(np.uint8), labels=d.target)
    with h5py.File(tmp_path / "d16.h5", "w") as f:
        f["images"], f["labels"] = d.images.astype(np.uint8), d.target
    for name in ("d16.npz", "d16.h5"):
        with pytest.warns(UserWarning, match=rf"{name}: its images' values reach only 16, so they come out near "
                                             r"black \(pixels are 0-255\); store images \* 15$"):
            load_dataset(tmp_path / name)
    np.savez(tmp_path / "d32.npz", images=(d.images * 2).astype(np.uint8), labels=d.target)  # 0-32: a dim photo
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(tmp_path / "d32.npz")


@pytest.mark.parametrize("content", [b"", b"label,file\na,x.png\n"])
def test_a_file_named_npz_that_is_no_npz_is_said_to_be_none(tmp_path, content):
    """An empty file, or a CSV saved as .npz, was `This file contains pickled (object) data. If you
    trust the file you can load it unsafely using the allow_pickle= keyword argument` (np.load's
    fallback for bytes it does not know): advice to unpickle a file that is not a pickle."""
    (tmp_path / "d.npz").write_bytes(content)
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "d.npz")
    assert str(e.value) == f"NumPy {tmp_path / 'd.npz'}: not a NumPy .npz file (a zip archive of arrays, as np.savez writes)"


def test_a_garbled_member_of_a_compressed_npz_stops_in_one_line(tmp_path):
    """np.savez_compressed's members are deflated: garbled, zlib says so (zlib.error, which was a
    traceback), not zipfile; one line naming the file, as a cut-short .npz."""
    import struct
    import zipfile

    x, y = _digits()
    p = tmp_path / "d.npz"
    np.savez_compressed(p, images=x, labels=y)
    raw = bytearray(p.read_bytes())
    at = zipfile.ZipFile(p).getinfo("images.npy").header_offset
    name_len, extra_len = struct.unpack("<HH", raw[at + 26:at + 30])  # the local header's, not the directory's
    start = at + 30 + name_len + extra_len
    raw[start + 20:start + 24] = b"\xff" * 4
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"^NumPy .*d\.npz: a damaged or cut-short \.npz \(Error -3 while decompressing "
                                        r"data: [^\n]*\)$"):
        load_dataset(p)
