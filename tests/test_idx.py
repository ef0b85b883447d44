"""MNIST's idx-ubyte files as DATA (Fashion-MNIST, KMNIST ship the same four): a folder of
train-/t10k- images and labels is the predefined split train / test, read as the `.npz` of the
same arrays is (its pixels, cache keys and warnings), and a bad file stops in one line naming it."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from fne.cli import main
from fne.data.datasets import load_dataset
from fne.errors import DataError

FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
CLI_32 = ["--arch", "resnet18", "--weights", "random", "--image-size", "32", "--precision", "fp32", "--workers", "0",
          "--no-progress"]


def _idx(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    """`array` as an idx file: 0, 0, the type byte, its number of dimensions, its sizes (big-endian
    uint32), its values."""
    return bytes([0, 0, type_byte, array.ndim]) + np.array(array.shape, ">u4").tobytes() + array.tobytes()


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(gzip.compress(content) if path.name.endswith(".gz") else content)
    return path


def _arrays(n_train: int = 20, n_test: int = 10, classes: int = 10):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    y = (np.arange(n_train + n_test) % classes).astype(np.uint8)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _folder(root: Path, gz: str = ".gz", sep: str = "-", test: bool = True, **kw) -> Path:
    root.mkdir()
    x, y, xt, yt = _arrays(**kw)
    for part, images, labels in (("train", x, y), ("t10k", xt, yt))[:1 + test]:
        _write(root / f"{part}-images{sep}idx3-ubyte{gz}", _idx(images))
        _write(root / f"{part}-labels{sep}idx1-ubyte{gz}", _idx(labels))
    return root


@pytest.mark.parametrize("gz,sep", [(".gz", "-"), ("", "-"), ("", ".")])
def test_an_idx_folder_is_the_npz_of_its_arrays(tmp_path, gz, sep):
    """gzipped or not, `train-images-idx3-ubyte` or `train-images.idx3-ubyte`: train then t10k,
    the split train / test, each image its pixels (grey made RGB), its cache key the Keras
    `.npz`'s of the same arrays (moving between the forms recomputes nothing)."""
    x, y, xt, yt = _arrays()
    d = load_dataset(_folder(tmp_path / "mnist", gz, sep))
    assert len(d) == 30 and d.splits == ["train"] * 20 + ["test"] * 10
    assert d.labels == [str(v) for v in [*y, *yt]] and d.classes == [str(c) for c in range(10)]
    assert d.ids[0] == f"train-images{sep}idx3-ubyte{gz}:0" and d.ids[20] == f"t10k-images{sep}idx3-ubyte{gz}:0"
    assert d.name == "mnist" and "t10k-images" in d.split_from
    for i, want in ((0, x[0]), (19, x[19]), (20, xt[0]), (29, xt[9])):
        img = np.asarray(d.load(i))
        assert img.shape == (28, 28, 3) and all(np.array_equal(img[..., c], want) for c in range(3))
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    assert d.keys() == load_dataset(tmp_path / "mnist.npz").keys()


def test_one_images_file_is_its_images_without_a_split(tmp_path):
    """t10k-images-idx3-ubyte.gz given alone (its labels file beside it): its 10 images, no split;
    a folder of train files alone has no split either (random splits apply)."""
    _, _, xt, yt = _arrays()
    d = load_dataset(_folder(tmp_path / "m") / "t10k-images-idx3-ubyte.gz")
    assert len(d) == 10 and d.splits is None and d.labels == [str(v) for v in yt] and d.name == "t10k"
    assert np.array_equal(np.asarray(d.load(9))[..., 1], xt[9])
    d = load_dataset(_folder(tmp_path / "train_only", test=False))
    assert len(d) == 20 and d.splits is None


def test_idx_labels_are_classes_sorted_as_numbers(tmp_path):
    """12 classes: "10" and "11" after "9" (as the `.npz` of integer labels sorts them), not after "1"."""
    d = load_dataset(_folder(tmp_path / "m", n_train=24, n_test=12, classes=12))
    assert d.classes == [str(c) for c in range(12)]


FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]


def test_a_classes_txt_beside_idx_files_names_the_labels(tmp_path):
    """idx holds no class names: the labels were 0-9 whatever the set. A classes.txt beside the
    files (line k naming label k, Fashion-MNIST's ten here) names them, in its order, for the
    folder and for one images file; one with repeated names, or too few, stops in one line."""
    x, y, xt, yt = _arrays()
    data = _folder(tmp_path / "fashion")
    (data / "classes.txt").write_text("\n".join(FASHION_NAMES) + "\n\n")
    d = load_dataset(data)
    assert d.classes == FASHION_NAMES and d.labels == [FASHION_NAMES[v] for v in [*y, *yt]]
    assert load_dataset(data / "t10k-images-idx3-ubyte.gz").labels == [FASHION_NAMES[v] for v in yt]
    assert d.keys() == load_dataset(_folder(tmp_path / "plain")).keys()  # the same rows: names are labels only
    (data / "classes.txt").write_text("\n".join(FASHION_NAMES[:9]) + "\n")
    with pytest.raises(DataError, match=re.escape(f"DATA {data}: label '9' is not an index into the 9 names of "
                                                  f"{data / 'classes.txt'}")):
        load_dataset(data)
    (data / "classes.txt").write_text("\n".join(["Bag", *FASHION_NAMES[1:]]) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{data / 'classes.txt'} has empty or repeated names")):
        load_dataset(data)


def test_fit_on_an_idx_folder_uses_its_split(tmp_path):
    """`fne extract DIR` then `fne fit DIR`: the 20 train images fit, the 10 t10k images score."""
    data, cache = _folder(tmp_path / "mnist"), str(tmp_path / "cache")
    assert main(["extract", str(data), "--cache", cache, *CLI_32]) == 0
    assert main(["fit", str(data), "--features", "last", "--cache", cache, "--out", str(tmp_path / "run"), *CLI_32]) == 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["n_train"] == 20 and saved["n_test"] == 10 and saved["classes"] == [str(c) for c in range(10)]


def _bad(root: Path, case: str) -> tuple[Path, str]:
    """Folder `root` of idx files with one fault (`case`), and the error that names it."""
    x, y, xt, yt = _arrays()
    tr_x, tr_y = root / "train-images-idx3-ubyte", root / "train-labels-idx1-ubyte.gz"
    files = {tr_x: _idx(x), tr_y: _idx(y), root / "t10k-images-idx3-ubyte": _idx(xt),
             root / "t10k-labels-idx1-ubyte": _idx(yt)}
    whole = len(_idx(x))
    if case == "magic":
        files[tr_x] = b"\x89PNG" + files[tr_x][4:]
        why = f"idx {tr_x}: not an idx file (it starts 89 50 4e 47; an idx file starts 00 00, a type byte such as 08, " \
              f"its number of dimensions)"
    elif case == "float":
        files[tr_x] = _idx(x.astype(">f4"), 0x0D)
        why = f"idx {tr_x}: holds float32 values (type 0x0D); fne reads uint8 idx files (type 0x08) only, as MNIST's"
    elif case == "cut":
        files[tr_x] = files[tr_x][:-100]
        why = f"idx {tr_x}: damaged or cut short: its header says 20×28×28 values ({whole:,} bytes), the file " \
              f"holds {whole - 100:,}"
    elif case == "header_cut":
        files[tr_x] = files[tr_x][:10]
        why = f"idx {tr_x}: damaged or cut short (10 bytes, short of its header's 16)"
    elif case == "longer":
        files[tr_x] += b"\0" * 7
        why = f"idx {tr_x}: damaged: its header says 20×28×28 values ({whole:,} bytes), the file holds {whole + 7:,}"
    elif case == "gz_cut":
        tr_y.parent.mkdir(exist_ok=True)
        tr_y.write_bytes(gzip.compress(files.pop(tr_y))[:-12])
        why = f"idx {tr_y}: damaged or cut short (gzip: Compressed file ended before the end-of-stream marker was reached)"
    elif case == "count":
        files[tr_y] = _idx(y[:-1])
        why = f"idx {tr_y}: 19 labels for the 20 images of {tr_x.name}"
    elif case == "labels_2d":
        files[tr_y] = _idx(y.reshape(20, 1))
        why = f"idx {tr_y}: holds a 20×1 array, not labels (one per image, 1-D: an idx1 file)"
    elif case == "images_2d":
        files[tr_x] = _idx(x.reshape(20, 784))
        why = f"idx {tr_x}: holds a 20×784 array, not images (N×H×W, an idx3 file)"
    elif case == "no_labels":
        del files[tr_y]
        why = f"DATA {root}: holds {tr_x.name} and not its labels file (train-labels-idx1-ubyte[.gz])"
    elif case == "sizes":
        files[root / "t10k-images-idx3-ubyte"] = _idx(xt[:, :27])
        why = f"DATA {root}: its images are 28×28 in {tr_x.name} and 27×28 in t10k-images-idx3-ubyte; give them one size"
    else:  # t10k files alone
        del files[tr_x], files[tr_y]
        why = f"DATA {root}: holds t10k-images-idx3-ubyte and no train-images-idx3-ubyte[.gz]: give that file as DATA " \
              f"for its images alone, or add the train files"
    root.mkdir(exist_ok=True)
    for path, content in files.items():
        _write(path, content)
    return root, why


@pytest.mark.parametrize("case", ["magic", "float", "cut", "header_cut", "longer", "gz_cut", "count", "labels_2d",
                                  "images_2d", "no_labels", "sizes", "test_only"])
def test_a_bad_idx_file_is_named_in_one_line(tmp_path, capsys, case):
    """Each fault stops `load_dataset` and `fne extract` (exit 2) in one line naming the file, no traceback."""
    data, why = _bad(tmp_path / "mnist", case)
    with pytest.raises(DataError, match="^" + re.escape(why) + "$"):
        load_dataset(data)
    assert main(["extract", str(data), "--cache", str(tmp_path / "c"), *CLI_32]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err and "Traceback" not in err


def test_an_images_file_without_its_labels_beside_it_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    images = _write(tmp_path / "m" / "emnist-letters-test-images-idx3-ubyte.gz", _idx(_arrays()[0]))
    with pytest.raises(DataError, match=re.escape(f"DATA {images}: no labels file beside it "
                                                  f"(emnist-letters-test-labels-idx1-ubyte[.gz] in {images.parent})")):
        load_dataset(images)
    with pytest.raises(DataError, match=re.escape(f"DATA {images.parent}: holds idx images files ({images.name}) and "
                                                  f"no train-images-idx3-ubyte[.gz]: give one images file as DATA "
                                                  f"(DATA {images})")):
        load_dataset(images.parent)


def test_a_labels_file_given_as_data_names_its_images_file(tmp_path):
    labels = _folder(tmp_path / "m") / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DataError, match=re.escape(f"DATA {labels}: is an idx labels file; give its images file "
                                                  f"({labels.parent / 't10k-images-idx3-ubyte.gz'}), or the folder "
                                                  f"holding both")):
        load_dataset(labels)


def test_gzip_is_read_by_its_magic_and_the_unzipped_copy_is_preferred(tmp_path):
    """torchvision's MNIST/raw/ keeps each file gzipped and unzipped: the unzipped one is read (no
    inflating); a file named .gz that is not gzipped is read as it is; an idx of no image is refused."""
    x, y, xt, yt = _arrays()
    root = _folder(tmp_path / "raw")
    for path in sorted(root.iterdir()):
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"not read")
    d = load_dataset(root)
    assert d.ids[0] == "train-images-idx3-ubyte:0" and np.array_equal(np.asarray(d.load(0))[..., 0], x[0])
    (plain := tmp_path / "plain").mkdir()
    _write(plain / "a-images-idx3-ubyte.gz", _idx(xt)).rename(plain / "a-images-idx3-ubyte")
    _write(plain / "a-labels-idx1-ubyte", _idx(yt)).rename(plain / "a-labels-idx1-ubyte.gz")
    assert load_dataset(plain / "a-images-idx3-ubyte").labels == [str(v) for v in yt]
    _write(plain / "a-images-idx3-ubyte", _idx(xt[:0]))
    _write(plain / "a-labels-idx1-ubyte.gz", _idx(yt[:0]))
    with pytest.raises(DataError, match=re.escape(f"DATA {plain / 'a-images-idx3-ubyte'}: has no images")):
        load_dataset(plain / "a-images-idx3-ubyte")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_installed_fashion_mnist_folder_is_data():
    """/usr/share/datasets/fashion-mnist as DATA: 60,000 train and 10,000 test images, the first
    image's pixels those of its file (read here with gzip and numpy)."""
    d = load_dataset(FASHION)
    assert len(d) == 70_000 and d.splits.count("train") == 60_000 and d.splits.count("test") == 10_000
    raw = gzip.open(FASHION / "train-images-idx3-ubyte.gz").read()
    first = np.frombuffer(raw, np.uint8, 28 * 28, 16)
    assert int(np.asarray(d.load(0))[..., 0].sum()) == int(first.sum()) > 0


def test_torchvisions_folder_of_an_idx_set_is_data(tmp_path):
    """torchvision's datasets.FashionMNIST(root) downloads to root/FashionMNIST/raw/ (older versions
    add processed/): that folder is DATA as its raw/ is, named as the set; beside another folder it
    is a folder of class folders, as before."""
    tv = tmp_path / "FashionMNIST"
    tv.mkdir()
    _folder(tv / "raw")
    (tv / "processed").mkdir()
    d = load_dataset(tv)
    assert d.name == "FashionMNIST" and len(d) == 30
    assert d.splits.count("train") == 20 and d.splits.count("test") == 10
    assert d.keys() == load_dataset(tv / "raw").keys() and d.labels == load_dataset(tv / "raw").labels
    (tv / "other").mkdir()
    with pytest.raises(DataError, match="class folder"):
        load_dataset(tv)
