from __future__ import annotations

import io
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from fne.cli import main
from fne.data.datasets import load_dataset, read_image
from fne.errors import DataError

from .conftest import FAST32


def test_folder_and_split_folder(digits_folder, digits_split):
    d = load_dataset(digits_folder)
    assert len(d) == 24 and d.classes == ["0", "1", "2", "3"] and d.splits is None
    assert d.labels[0] == "0" and d.ids[0].startswith("0/")
    s = load_dataset(digits_split)
    assert set(s.splits) == {"train", "test"}
    assert s.splits.count("train") == 18 and s.splits.count("test") == 9


def test_a_folder_of_train_alone_is_one_line_and_train_beside_classes_a_class(digits_folder, tmp_path):
    """DATA holding only train/ (no test/ or val/) became one class named train: `fne fit` stopped
    with "1 class has readable images", `fne extract` cached a one-class dataset. One line instead,
    saying what to give. A train/ folder beside class folders is a class (CIFAR-100 and Pascal VOC
    have one), as before."""
    shutil.copytree(digits_folder, tmp_path / "d" / "train")
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "d")
    assert str(e.value) == (f"DATA {tmp_path / 'd'}: holds train/ and no test/ (or val/): give "
                            f"{tmp_path / 'd' / 'train'} as DATA for random splits, or add test/")
    shutil.copytree(digits_folder / "0", tmp_path / "d" / "bus")
    d = load_dataset(tmp_path / "d")
    assert d.classes == ["bus", "train"] and d.splits is None and len(d) == 30


def test_flat_folder_is_unlabelled(digits_folder, tmp_path):
    for f in sorted(digits_folder.rglob("*.png"))[:3]:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    d = load_dataset(tmp_path)
    assert len(d) == 3 and d.labels is None and d.ids[0].endswith(".png")


def test_verbs_that_need_labels_say_where_labels_come_from(digits_folder, tmp_path, capsys, monkeypatch):
    """A flat folder of images (no class folders), a Parquet file whose label column has another
    name, a CSV of empty labels: `fne fit`, `train` and `advise` said only "fit needs labels" (or
    "has no labels"), not what DATA lacks. One line now names DATA and its form's place for labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = tmp_path / "flat"
    flat.mkdir()
    files = sorted(digits_folder.rglob("*.png"))[:4]
    for f in files:
        (flat / f"{f.parent.name}_{f.name}").write_bytes(f.read_bytes())
    pq.write_table(pa.table({"image": [f.read_bytes() for f in files], "lbl": [f.parent.name for f in files]}),
                   tmp_path / "p.parquet")
    (tmp_path / "l.csv").write_text("path,label\n" + "".join(f"{f},\n" for f in files))
    cases = {flat: "its images are in no class folder (one sub-folder per class: DATA/<class>/<image>)",
             tmp_path / "p.parquet": "no row has a label (a column label, labels, fine_label, cls, class, target, "
                                     "or the one --label-key names); its columns: image, lbl",
             tmp_path / "l.csv": "every cell of its label column is empty",
             tmp_path / "np.csv": "it has no label column (found: path)"}
    (tmp_path / "np.csv").write_text("path\n" + "".join(f"{f}\n" for f in files))  # new images to predict: read
    # an existing cache: into one that does not exist, fit says so before it lists tar or Parquet DATA
    # (tests/test_containers.py), as that listing would be kept there
    (tmp_path / "c").mkdir()
    monkeypatch.setenv("FNE_CACHE", str(tmp_path / "c"))
    for data, why in cases.items():
        for verb in (["fit", "--out", str(tmp_path / "o")], ["train", "--mode", "frozen", "--out", str(tmp_path / "t")],
                     ["advise"]):
            assert main([verb[0], str(data), "--arch", "efficientnet_lite0", "--weights", "random", *verb[1:]]) == 2
            err = capsys.readouterr().err
            assert err == f"fne {verb[0]}: error: DATA {data}: fne {verb[0]} needs labelled images, and {why}\n"
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()
    assert load_dataset(tmp_path / "np.csv").labels is None and len(load_dataset(tmp_path / "np.csv")) == 4
    (tmp_path / "cls.csv").write_text("path,class\n" + "".join(f"{f},{f.parent.name}\n" for f in files))
    with pytest.warns(UserWarning, match=r"cls.csv: no column label \(found: path, class\): its images are read "
                                         r"unlabelled; name the column of their classes label"):
        assert load_dataset(tmp_path / "cls.csv").labels is None
    pq.write_table(pa.table({"image": [f.read_bytes() for f in files], "lbll": [None] * 4}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"and no row has a 'lbll' label \(--label-key lbll\)$"):
        load_dataset(tmp_path / "n.parquet", label_key="lbll").require_labels("fne fit")


def test_class_folders_of_sub_folders_are_named_in_a_warning(digits_folder, tmp_path):
    """animals/cat/, animals/dog/, plants/rose/, plants/tulip/: the classes are animals and plants (images at any
    depth, as torchvision's ImageFolder reads them), which a user who meant four classes learnt
    only from the accuracy; a warning names the sub-folders and the folder to give instead."""
    pngs = sorted(digits_folder.rglob("*.png"))
    root = tmp_path / "nest"
    for k, (group, cls) in enumerate([("animals", "cat"), ("animals", "dog"), ("plants", "rose"), ("plants", "tulip")]):
        (root / group / cls).mkdir(parents=True)
        shutil.copy(pngs[k], root / group / cls / "a.png")
    with pytest.warns(UserWarning) as caught:
        d = load_dataset(root)
    assert d.classes == ["animals", "plants"]
    said = [str(w.message) for w in caught if "sub-folders" in str(w.message)]
    assert said == [f"DATA {root}: 2 of 2 class folder(s) hold their images in sub-folders only (animals/cat/, "
                    f"animals/dog/, plants/rose/, plants/tulip/): each class folder is one class, its sub-folders' images together; "
                    f"for a class per sub-folder, list the images of every group in a CSV (giving one group's "
                    f"folder, {root / 'animals'}, as DATA leaves the others out)"]
    one = tmp_path / "one"  # one such group beside a class of its own images: that group's folder is the answer
    for k, cls in enumerate(["cat", "dog"]):
        (one / "animals" / cls).mkdir(parents=True)
        shutil.copy(pngs[k], one / "animals" / cls / "a.png")
    (one / "plants").mkdir()
    shutil.copy(pngs[2], one / "plants" / "p.png")
    with pytest.warns(UserWarning, match=r"for a class per sub-folder, give .*animals as DATA, or list the images in a CSV$"):
        load_dataset(one)
    shutil.copy(pngs[4], root / "animals" / "b.png")  # an image of its own, and one sub-folder: no warning
    shutil.rmtree(root / "plants")
    (root / "plants" / "images").mkdir(parents=True)
    shutil.copy(pngs[5], root / "plants" / "images" / "c.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dataset(root).classes == ["animals", "plants"]


def test_data_given_a_level_up_stops_in_one_line(digits_split, tmp_path):
    """The folder above a dataset (datasets/ holding flowers12/train, flowers12/test, pets37/...)
    became one class per dataset, each dataset's split merged into it. A class folder holding a
    split of its own stops instead, naming the folder to give."""
    shutil.copytree(digits_split, tmp_path / "datasets" / "flowers")
    shutil.copytree(digits_split / "train", tmp_path / "datasets" / "pets")
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "datasets")
    assert str(e.value) == (f"DATA {tmp_path / 'datasets'}: class folder 'flowers' holds a train/ and test/ (or val/) "
                            f"split of its own: give {tmp_path / 'datasets' / 'flowers'} as DATA")
    shutil.rmtree(tmp_path / "datasets" / "flowers" / "test")  # a class with a train/ folder inside: a class
    assert load_dataset(tmp_path / "datasets").classes == ["flowers", "pets"]


def test_data_given_as_dot_is_named_by_its_folder(digits_folder, monkeypatch):
    """`fne fit . --out ../run` named the dataset "" (`fne+svm on : accuracy …`, a report section
    with no name, shared by every folder given as `.`), and `..` named it "..". The folder's name now."""
    monkeypatch.chdir(digits_folder / "0")
    assert load_dataset("..").name == digits_folder.name
    monkeypatch.chdir(digits_folder)
    d = load_dataset(".")
    assert d.name == digits_folder.name and len(d) == 24 and d.ids[0].startswith("0/")


def test_digits_beside_a_folder_named_digits_stops_in_one_line(digits_folder, tmp_path, monkeypatch):
    """`fne fit digits` run where a folder ./digits holds the user's images fitted scikit-learn's
    bundled 1,797 digits in its place, while metrics.json recorded the folder's path as DATA. It now
    stops, naming the folder; ./digits reads the folder, and elsewhere `digits` is the bundled set."""
    shutil.copytree(digits_folder, tmp_path / "digits")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"bundled digits, and .*digits is here too; give \./digits"):
        load_dataset("digits")
    assert len(load_dataset("./digits")) == 24
    monkeypatch.chdir(digits_folder)
    assert len(load_dataset("digits")) == 1797


def test_a_folder_without_images_says_what_it_holds(tmp_path):
    """iPhone photos (.HEIC) are no image fne reads: a class folder of them stopped with "has no
    images", which reads as an empty folder. The line now says what the folder holds instead."""
    (tmp_path / "d" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "d" / "a" / "x.JPG")
    (tmp_path / "d" / "b" / "sub").mkdir(parents=True)
    for k in range(3):
        (tmp_path / "d" / "b" / "sub" / f"IMG_{k}.HEIC").write_bytes(b"x")
    (tmp_path / "d" / "b" / "notes.txt").write_text("x")
    (tmp_path / "d" / "b" / ".DS_Store").write_text("x")
    exts = "image files end in .bmp .gif .jpeg .jpg .pgm .png .ppm .tif .tiff .webp, any case"
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "d")
    assert str(e.value) == (f"DATA {tmp_path / 'd'}: class folder 'b' has no images: it holds 4 other file(s) "
                            f"(.heic ×3, .txt ×1); {exts}")
    (tmp_path / "d" / "c").mkdir()
    shutil.rmtree(tmp_path / "d" / "b")
    with pytest.raises(DataError, match="class folder 'c' has no images: it holds no files$"):
        load_dataset(tmp_path / "d")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "IMG_0.HEIC").write_bytes(b"x")
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "flat")
    assert str(e.value).endswith("and no images: it holds 1 other file(s) (.heic ×1); " + exts)


def test_folder_listing_order_is_component_by_component(tmp_path):
    """Files are listed as `Path` orders them, one path component at a time ('a/x/...' before
    'a/x-y/...', 'a/...' before 'a-b/...'), which a plain string sort does not do ('-' sorts
    before '/'): the order decides splits and shards, so it must not change."""
    for rel in ["a/1.jpg", "a/x-y/2.jpg", "a/x/3.jpg", "a/x/.h.jpg", "a-b/4.png", "a-b/sub/5.JPG",
                "B/6.jpeg", "a/notes.txt", ".hidden/7.jpg"]:
        f = tmp_path / "d" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    d = load_dataset(tmp_path / "d")
    assert d.ids == ["B/6.jpeg", "a/1.jpg", "a/x/3.jpg", "a/x-y/2.jpg", "a-b/4.png", "a-b/sub/5.JPG"]  # no hidden file
    assert d.ids == [str(p.relative_to(tmp_path / "d")) for p in sorted(map(Path, d.sources))]
    assert d.labels == ["B", "a", "a", "a", "a-b", "a-b"] and d.classes == ["B", "a", "a-b"]
    assert all(Path(src).is_file() for src in d.sources)


def test_csv_with_split_and_relative_paths(digits_folder, tmp_path):
    files = sorted(digits_folder.rglob("*.png"))[:6]
    csv = tmp_path / "sub" / "list.csv"
    csv.parent.mkdir()
    rows = ["path,label,split"] + [f"{f},{'odd' if k % 2 else 'even'},{'test' if k > 3 else 'train'}"
                                   for k, f in enumerate(files)]
    csv.write_text("\n".join(rows) + "\n")
    d = load_dataset(csv)
    assert d.classes == ["even", "odd"] and d.splits.count("test") == 2
    # the same images under other labels share the content keys (cache reuse)
    assert d.keys() == load_dataset(digits_folder).subset(range(6)).keys()


def _h5_file(path: Path, n: int, seed: int) -> None:
    with h5py.File(path, "w") as f:
        f["images"] = np.random.default_rng(seed).integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
        f["labels"] = np.arange(n) % 2


def test_a_validation_part_joins_train_in_every_form(tmp_path, recwarn):
    """val/ beside train/ and test/ was left out (a warning) while a tar shard or Parquet file
    named validation joined train; a CSV or HDF5 split of `val` stopped. One rule now: the
    FNE paper's train = train + val for fit (`in_train`), whatever DATA's form; the part stays
    `val`, which `fne train` validates on."""
    for part, n in (("train", 2), ("val", 1), ("test", 1)):
        for c in ("a", "b"):
            (tmp_path / "f" / part / c).mkdir(parents=True)
            for k in range(n):
                Image.new("RGB", (8, 8), (len(part), ord(c), k)).save(tmp_path / "f" / part / c / f"{k}.png")
    d = load_dataset(tmp_path / "f")
    assert d.ids == ["train/a/0.png", "train/a/1.png", "train/b/0.png", "train/b/1.png",
                     "val/a/0.png", "val/b/0.png", "test/a/0.png", "test/b/0.png"]
    assert d.splits == ["train"] * 4 + ["val"] * 2 + ["test"] * 2 and d.labels == list("aabbab") + ["a", "b"]
    assert d.in_train().tolist() == [True] * 6 + [False] * 2  # what fit trains on; train validates on val
    assert not [w for w in recwarn if "left out" in str(w.message)]
    # a CSV's split column and an HDF5 file's split dataset: validation words count as train
    csv = tmp_path / "f" / "list.csv"
    csv.write_text("path,label,split\ntrain/a/0.png,a,train\nval/a/0.png,a,Validation\ntest/a/0.png,a,test\n"
                   "train/b/0.png,b,TRAIN\nval/b/0.png,b,dev\ntest/b/0.png,b,test\n")
    assert load_dataset(csv).splits == ["train", "val", "test", "train", "val", "test"]
    csv.write_text("path,label,split\ntrain/a/0.png,a,train\nval/a/0.png,a,holdout\n")
    with pytest.raises(DataError, match=r"column split has values \['holdout'\]; allowed: train, test and "
                                        r"validation \(or val, valid, dev\)"):
        load_dataset(csv)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["images"] = np.zeros((4, 8, 8), dtype=np.uint8)
        f["labels"] = np.array([0, 1, 0, 1])
        f["split"] = np.array([b"train", b"val", b"0", b"test"])
    assert load_dataset(tmp_path / "s.h5").splits == ["train", "val", "train", "test"]
    # train.h5 + val.h5 + test.h5: the validation file joins train; another .h5 is said to be left out
    pair = tmp_path / "pair"
    pair.mkdir()
    for name, n, seed in (("train", 4, 0), ("validation", 2, 1), ("test", 2, 2), ("extra", 1, 3)):
        _h5_file(pair / f"{name}.h5", n, seed)
    with pytest.warns(UserWarning, match=r"extra\.h5 left out: a predefined split reads train\.h5, test\.h5"):
        p = load_dataset(pair)
    assert p.splits == ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    assert p.ids[4] == "validation.h5:0" and p.ids[6] == "test.h5:0"
    with h5py.File(pair / "validation.h5") as f:
        assert np.array_equal(np.asarray(p.load(5)), f["images"][1])
    with h5py.File(pair / "test.h5") as f:
        assert np.array_equal(np.asarray(p.load(7)), f["images"][1])
    assert p.keys()[5] != p.keys()[7]


def test_a_validation_part_without_a_test_part_is_held_out_in_every_form(tmp_path):
    """ImageNet's train/ + val/ stopped, a CSV of train + val rows stopped after the forward pass
    ("needs both train and test images"), and the Hub's Food-101 (train-* + validation-* Parquet,
    no test) was silently split at random. One rule now: with no test part, the validation part
    is the held-out part, and one line says so; a split of one part only is no split."""
    for part, n in (("train", 2), ("val", 1)):
        for c in ("a", "b"):
            (tmp_path / "f" / part / c).mkdir(parents=True)
            for k in range(n):
                Image.new("RGB", (8, 8), (len(part), ord(c), k)).save(tmp_path / "f" / part / c / f"{k}.png")
    with pytest.warns(UserWarning, match=r"f: no test part, so its 2 validation images \(val/\) are the held-out "):
        d = load_dataset(tmp_path / "f")
    assert d.ids == ["train/a/0.png", "train/a/1.png", "train/b/0.png", "train/b/1.png", "val/a/0.png", "val/b/0.png"]
    assert d.splits == ["train"] * 4 + ["test"] * 2
    csv = tmp_path / "f" / "list.csv"
    csv.write_text("path,label,split\ntrain/a/0.png,a,train\nval/a/0.png,a,val\ntrain/b/0.png,b,train\n"
                   "val/b/0.png,b,validation\n")
    with pytest.warns(UserWarning, match=r"2 validation images \(the split column\)"):
        assert load_dataset(csv).splits == ["train", "test", "train", "test"]
    csv.write_text("path,label,split\ntrain/a/0.png,a,train\ntrain/b/0.png,b,train\n")
    assert load_dataset(csv).splits is None  # one part only: random splits, as for train-* shards alone
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["images"] = np.zeros((3, 8, 8), dtype=np.uint8)
        f["labels"] = np.array([0, 1, 0])
        f["split"] = np.array([b"train", b"dev", b"0"])
    with pytest.warns(UserWarning, match=r"1 validation images \(the split dataset\)"):
        assert load_dataset(tmp_path / "s.h5").splits == ["train", "test", "train"]
    pair = tmp_path / "pair"
    pair.mkdir()
    for name, n, seed in (("train", 4, 0), ("val", 2, 1)):
        _h5_file(pair / f"{name}.h5", n, seed)
    with pytest.warns(UserWarning, match=r"2 validation images \(val\.h5\)"):
        assert load_dataset(pair).splits == ["train"] * 4 + ["test"] * 2
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    hub = tmp_path / "hub"
    hub.mkdir()
    for name, n in (("train", 4), ("validation", 2)):
        cells = []
        for k in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (len(name), k, 0)).save(buf, format="PNG")
            cells.append({"bytes": buf.getvalue(), "path": f"{k}.png"})
        pq.write_table(pa.table({"image": cells, "label": ["a", "b"] * (n // 2)}),
                       hub / f"{name}-00000-of-00001.parquet")
    with pytest.warns(UserWarning, match=r"2 validation images"):
        assert load_dataset(hub, cache=tmp_path / "cache").splits == ["train"] * 4 + ["test"] * 2


def test_hdf5_forms_and_digits(tmp_path):
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "gray.h5", "w") as f:
        f["images"] = rng.integers(0, 255, (5, 16, 16), dtype=np.uint8)
        f["labels"] = np.array([0, 1, 0, 1, 1])
        f["split"] = np.array([b"train", b"train", b"train", b"test", b"test"])
    d = load_dataset(tmp_path / "gray.h5")
    assert d.classes == ["0", "1"] and d.splits[-1] == "test"
    assert d.load(0).mode == "RGB" and d.load(0).size == (16, 16)
    pair = tmp_path / "pair"
    pair.mkdir()
    for name, n in (("train", 4), ("test", 2)):
        with h5py.File(pair / f"{name}.h5", "w") as f:
            f["images"] = rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
            f["labels"] = np.arange(n) % 2
    p = load_dataset(pair)
    assert len(p) == 6 and p.splits == ["train"] * 4 + ["test"] * 2
    assert np.array_equal(np.asarray(p.load(5)), np.asarray(Image.open(io.BytesIO(_png(pair / "test.h5", 1)))))
    digits = load_dataset("digits")
    assert len(digits) == 1797 and digits.classes == [str(i) for i in range(10)]


def test_hdf5_chunks_of_many_images_are_kept_once_decoded(tmp_path):
    """HDF5 decodes a chunk whole and keeps 1 MiB (8 MiB) of them: in gzip chunks of 64 224x224
    images each image read cost its chunk's decode (11.6 ms per image). The images dataset is
    opened with a cache that keeps such chunks; a file of small chunks keeps h5py's default."""
    from fne.data import containers
    from fne.data.hdf5_access import open_images

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (128, 160, 160, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "big.h5", "w") as f:  # a chunk of 9.4 MiB: over either default (1 or 8 MiB)
        f.create_dataset("images", data=images, chunks=images.shape, compression="gzip")
        f["labels"] = np.arange(128) % 2
    with h5py.File(tmp_path / "small.h5", "w") as f:
        f.create_dataset("images", data=images, chunks=(4, 160, 160, 3), compression="gzip")  # 300 KiB
        f["labels"] = np.arange(128) % 2
    nslots, nbytes, _ = open_images(str(tmp_path / "big.h5")).id.get_access_plist().get_chunk_cache()
    assert nbytes == containers.GROUP_CACHE_BYTES and nslots > 10 * (nbytes // images.nbytes)  # ten per chunk
    assert all(nslots % k for k in range(2, int(nslots ** 0.5) + 1))  # a prime, as HDF5 advises
    with h5py.File(tmp_path / "small.h5") as f:
        default = f["images"].id.get_access_plist().get_chunk_cache()
    assert open_images(str(tmp_path / "small.h5")).id.get_access_plist().get_chunk_cache() == default
    for name in ("big.h5", "small.h5"):
        d = load_dataset(tmp_path / name)
        assert all(np.array_equal(np.asarray(d.load(i)), images[i]) for i in (7, 0, 127, 3))


def _h5(path: Path, labels, images=None, **extra) -> Path:
    """An HDF5 DATA file: `images` (6 RGB 8×8 by default), `labels`; `class_names` as an attribute
    of labels, any other keyword a dataset."""
    names = extra.pop("class_names", None)
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((len(labels), 8, 8, 3), np.uint8) if images is None else images
        f["labels"] = labels
        if names is not None:
            f["labels"].attrs["class_names"] = names
        for k, v in extra.items():
            f[k] = v
    return path


def test_hdf5_class_names_and_a_numeric_split(tmp_path):
    """`labels.attrs["class_names"]` (text or bytes) names the integer labels and keeps its order;
    a split stored as numbers 0 / 1 (int or float) is train / test."""
    lab = np.array([2, 0, 1, 2, 0, 1])
    for names in (["zeta", "alpha", "mid"], np.array([b"zeta", b"alpha", b"mid"])):
        d = load_dataset(_h5(tmp_path / "n.h5", lab, class_names=names))
        assert d.classes == ["zeta", "alpha", "mid"] and d.labels == ["mid", "zeta", "alpha"] * 2
    for split in (np.array([0, 0, 0, 1, 1, 1]), np.array([0.0, 0, 0, 1, 1, 1])):
        d = load_dataset(_h5(tmp_path / "s.h5", lab, split=split))
        assert d.splits == ["train"] * 3 + ["test"] * 3 and d.classes == ["0", "1", "2"]
    # train.h5 + test.h5 (Fashion-MNIST's T-shirt/top … Ankle boot) kept the names but sorted them as
    # strings; the given order now, and files naming their classes differently stop in one line
    pair = tmp_path / "pair"
    pair.mkdir()
    for name in ("train", "test"):
        _h5(pair / f"{name}.h5", lab, class_names=["zeta", "alpha", "mid"])
    d = load_dataset(pair)
    assert d.classes == ["zeta", "alpha", "mid"] and d.labels == ["mid", "zeta", "alpha"] * 4
    assert d.splits == ["train"] * 6 + ["test"] * 6 and d.ids[6] == "test.h5:0"
    _h5(pair / "test.h5", lab, class_names=["zeta", "mid", "alpha"])
    with pytest.raises(DataError, match=r"^DATA .*pair: its files name their classes differently "
                                        r"\(class_names: train\.h5 zeta, alpha, mid; test\.h5 "
                                        r"zeta, mid, alpha\); give each file the same list$"):
        load_dataset(pair)
    # Keras's y_train is N×1: one label per image, read as N
    d = load_dataset(_h5(tmp_path / "k.h5", lab[:, None]))
    assert d.labels == ["2", "0", "1"] * 2


def test_named_classes_without_images_are_left_out_with_a_warning(tmp_path):
    """A class the file names but no image has (a subset of a larger label space) is left out,
    with a warning naming it: `fne train` would otherwise give the network an output it never
    trains, which it then predicts."""
    with pytest.warns(UserWarning, match=r"1 of the 3 classes the data names have no image and are left out: 'two'"):
        d = load_dataset(_h5(tmp_path / "n.h5", np.array([0, 1, 0, 1, 0, 1]), class_names=["zero", "one", "two"]))
    assert d.classes == ["zero", "one"] and d.labels == ["zero", "one"] * 3


@pytest.mark.parametrize("case,expect", [
    ("rgba", "images must be N×H×W, N×H×W×1 or N×H×W×3, got shape (2, 8, 8, 4)"),
    ("channels_first", "images must be N×H×W, N×H×W×1 or N×H×W×3, got shape (2, 3, 8, 8); channels first? "
                       "store np.transpose(images, (0, 2, 3, 1))"),
    ("int64", "images must be uint8 (0-255), got int64; store images.astype(np.uint8) if they lie in 0-255"),
    ("row_labels", "labels must be one per image (shape N), got shape (1, 2)"),
    ("count", "2 images but 3 labels"),
    ("none", "has no images"),
    ("split", "dataset split has values ['2']; allowed: train, test, 0, 1 and validation (or val, valid, dev)"),
    ("repeated", "labels.attrs['class_names'] has empty or repeated names"),
    ("index", "label '3' is not an index into the 2 names of labels.attrs['class_names']"),
    ("not_h5", "cannot open ("),
    ("csv_header", "has no rows"),
    ("csv_field", "unreadable CSV (field larger than field limit (131072))"),
    ("blank", "DATA '' is empty (give a folder, a .csv"),
    ("fifo", "neither a folder nor a file (give a folder, a .csv"),
    ("names_scalar", "labels.attrs['class_names'] must be a list of names, one per class, got shape ()"),
    ("no_pixels", "images must be at least 1×1 pixels, got shape (2, 0, 8, 3)"),
    # h5py's own words inside the brackets differ by release (3.9: "Can't read data (inflate() failed)")
    ("damaged", "d.h5: cannot read (Can't "),
    ("damaged", "); the file is damaged"),
    ("header", "d.h5: cannot read (Unable to "),
    ("header", "); the file is damaged"),
    ("long_name", "does not exist (give a folder, a .csv"),
    ("csv_long_name", "1 listed file(s) do not exist: " + "a" * 300 + ".jpg"),
])
def test_more_bad_data_one_line_each(tmp_path, case, expect):
    """DATA that cannot be read stops in one DataError naming it (as `fne extract` prints it)."""
    target = tmp_path / ("d.h5" if case not in ("csv_header", "csv_field", "fifo", "csv_long_name") else "d.csv")
    if case == "rgba":
        _h5(target, np.array([0, 1]), images=np.zeros((2, 8, 8, 4), np.uint8))
    elif case == "channels_first":  # a torch tensor's layout, N×C×H×W
        _h5(target, np.array([0, 1]), images=np.zeros((2, 3, 8, 8), np.uint8))
    elif case == "int64":  # torchvision's MNIST tensors, saved as they are
        _h5(target, np.array([0, 1]), images=np.zeros((2, 8, 8), np.int64))
    elif case == "row_labels":  # a 1×N row, as MATLAB saves a vector: not one-hot
        _h5(target, np.array([[0, 1]]), images=np.zeros((2, 8, 8), np.uint8))
    elif case == "count":
        _h5(target, np.array([0, 1, 0]), images=np.zeros((2, 8, 8, 3), np.uint8))
    elif case == "none":
        _h5(target, np.zeros(0, np.int64))
    elif case == "split":
        _h5(target, np.array([0, 1, 0]), split=np.array([0, 1, 2]))
    elif case == "repeated":
        _h5(target, np.array([0, 1]), class_names=["a", "a"])
    elif case == "index":
        _h5(target, np.array([0, 3]), class_names=["a", "b"])
    elif case == "not_h5":
        target.write_bytes(b"not an HDF5 file")
    elif case == "csv_header":
        target.write_text("path,label\n")
    elif case == "csv_field":
        target.write_text('path,label\n"' + "x" * 200_000 + '",a\n')
    elif case == "blank":
        target = ""
    elif case == "names_scalar":  # was a TypeError: 'numpy.int64' object is not iterable
        _h5(target, np.array([0, 1]), class_names=5)
    elif case == "no_pixels":  # was each image skipped alone: "ZeroDivisionError: division by zero"
        _h5(target, np.array([0, 1]), images=np.zeros((2, 0, 8, 3), np.uint8))
    elif case == "damaged":  # was h5py's OSError, a traceback
        _damaged_h5(target, 2, 1)
    elif case == "header":  # images' object header garbled: was h5py's KeyError
        _h5(target, np.array([0, 1]))
        with h5py.File(target, "r") as f:
            at = h5py.h5o.get_info(f["images"].id).addr
        with open(target, "r+b") as f:
            f.seek(at)
            f.write(b"\x07")  # its version byte
    elif case == "long_name":  # was OSError: [Errno 36] File name too long
        target = tmp_path / ("a" * 300)
    elif case == "csv_long_name":
        target.write_text("path,label\n" + "a" * 300 + ".jpg,a\n")
    else:
        if not hasattr(os, "mkfifo"):  # Windows
            pytest.skip("no named pipes here")
        target = tmp_path / "pipe"
        os.mkfifo(target)
    with pytest.raises(DataError) as e:
        load_dataset(target)
    assert expect in str(e.value) and "\n" not in str(e.value)
    assert case == "blank" or str(target) in str(e.value)


def _damaged_h5(path: Path, n: int, bad: int) -> Path:
    """An HDF5 DATA file of `n` 8×8 images in gzip chunks of one image, image `bad`'s chunk garbled."""
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.arange(n * 192).reshape(n, 8, 8, 3).astype(np.uint8), chunks=(1, 8, 8, 3),
                         compression="gzip")
        f["labels"] = np.arange(n) % 2
    with h5py.File(path, "r") as f:  # where the chunk lies once the file is closed (not while it is written)
        at = f["images"].id.get_chunk_info_by_coord((bad, 0, 0, 0))
    with open(path, "r+b") as f:
        f.seek(at.byte_offset)
        garbled = bytes(b ^ 0x5A for b in f.read(at.size))
        f.seek(at.byte_offset)
        f.write(garbled)
    return path


def test_a_damaged_hdf5_chunk_stops_in_one_line_naming_the_file_and_image(tmp_path):
    """A chunk that no longer decompresses, beyond the first 64 images (read when listing), stops
    when the images are keyed, in one line naming the file and the image (was h5py's OSError)."""
    d = load_dataset(_damaged_h5(tmp_path / "d.h5", 70, 68))
    with pytest.raises(DataError, match=r"^HDF5 .*d\.h5: cannot read image 68 \(.*\); the file is damaged$"):
        d.keys()


def _png(h5path, i) -> bytes:
    with h5py.File(h5path) as f:
        buf = io.BytesIO()
        Image.fromarray(f["images"][i]).save(buf, format="PNG")
        return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA"])
def test_modes_become_rgb(tmp_path, mode):
    base = Image.new("RGB", (10, 6), (200, 100, 50))
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(
        np.full((6, 10), 40000, dtype=np.uint16))
    ext = "tif" if mode in ("CMYK", "I;16") else "png"
    img.save(tmp_path / f"x.{ext}")
    out = read_image(tmp_path / f"x.{ext}")
    assert out.mode == "RGB" and out.size == (10, 6)
    if mode == "I;16":  # 16-bit scaled to 8-bit, not clipped to white
        assert abs(int(np.asarray(out)[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1


def test_a_palette_image_with_transparency_keeps_its_colours_without_a_warning(tmp_path, recwarn):
    """A PNG palette with an alpha per entry: through RGBA (Pillow warns when such an image goes
    straight to RGB), alpha then dropped, so the see-through pixels keep their palette colour."""
    img = Image.new("P", (4, 2))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 1)
    img.save(tmp_path / "t.png", transparency=b"\x80\x40")  # red half, blue a quarter opaque
    assert Image.open(tmp_path / "t.png").info["transparency"] == b"\x80\x40"
    out = np.asarray(read_image(tmp_path / "t.png"))
    assert out[0, 0].tolist() == [0, 0, 255] and out[1, 3].tolist() == [255, 0, 0]
    assert not [w for w in recwarn if "ransparency" in str(w.message)]


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = np.asarray(read_image(tmp_path / "r.jpg"))
    assert out.shape[:2] == (20, 10)  # portrait after orientation
    assert out[:8].mean() > 200 and out[-8:].mean() < 50  # white half now on top


@pytest.mark.parametrize("case,expect", [
    ("missing", "does not exist"),
    ("empty", "no class sub-folders"),
    ("empty_class", "class folder 'b' has no images"),
    ("csv_columns", "missing column path (found: file, label)"),
    ("csv_files", "do not exist: nope.png"),
    ("h5_missing", "missing dataset 'labels'"),
    ("h5_group", "'images' is a group, not a dataset"),
    ("h5_float", "images must be uint8 (0-255), got float32; store (images * 255).round().astype(np.uint8) for "
                 "values in 0-1"),
    ("h5_onehot", "labels must be one per image (shape N), got shape (2, 3); one-hot? store labels.argmax(axis=1)"),
    ("zip", "unsupported file type '.zip' (expected .csv, .h5, .npz, .tar, .parquet "
            "or an idx file such as train-images-idx3-ubyte.gz); unpack the archive and "
            "give its folder"),
    ("one_image", "is one image; DATA holds images: give the folder holding it ({tmp}/photos: its images, "
                  "without class folders, are unlabelled DATA for fne extract and fne predict)"),
    ("h5_export", "is a `fne export` file of features, not images; give the DATA it was exported from "
                  "(its attribute root: /data/images)"),
])
def test_bad_data_fails_before_network(tmp_path, digits_folder, monkeypatch, capsys, case, expect):
    import fne.backbones.registry

    def no_network(*a, **k):
        raise AssertionError("the network must not be built for bad DATA")

    monkeypatch.setattr(fne.backbones.registry, "load_backbone", no_network)
    target = tmp_path / "x"
    if case == "empty":
        target.mkdir()
    elif case == "empty_class":
        (target / "a").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(target / "a" / "i.png")
        (target / "b").mkdir()
    elif case == "one_image":  # `fne predict RUN photo.jpg`
        (tmp_path / "photos").mkdir()
        target = tmp_path / "photos" / "IMG_0001.JPG"
        Image.new("RGB", (4, 4)).save(target, format="JPEG")
        expect = expect.format(tmp=tmp_path)
    elif case == "zip":  # a Kaggle download, as it came
        target = tmp_path / "images.zip"
        target.write_bytes(b"PK\x05\x06" + bytes(18))
    elif case == "csv_columns":
        target = tmp_path / "l.csv"
        target.write_text("file,label\nx.png,a\n")
    elif case == "csv_files":
        target = tmp_path / "l.csv"
        target.write_text("path,label\nnope.png,a\n")
    elif case == "h5_missing":
        target = tmp_path / "d.h5"
        with h5py.File(target, "w") as f:
            f["images"] = np.zeros((2, 4, 4), np.uint8)
    elif case.startswith("h5_"):  # a group for images; images in 0-1 floats; one-hot labels
        target = tmp_path / "d.h5"
        with h5py.File(target, "w") as f:
            if case == "h5_export":  # `fne export`'s output given back as DATA
                f["embedding"], f.attrs["root"] = np.zeros((2, 3), np.int8), "/data/images"
                f.create_group("layers")["fc7"] = np.zeros((2, 3), np.float32)
            elif case == "h5_group":
                f.create_group("images")
            else:
                f["images"] = np.zeros((2, 4, 4), np.float32 if case == "h5_float" else np.uint8)
            f["labels"] = np.eye(3)[[0, 1]] if case == "h5_onehot" else np.array([0, 1])
    with pytest.raises(DataError, match=re.escape(expect)):
        load_dataset(target)
    assert main(["extract", str(target), "--weights", "random", "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and expect in err and "Traceback" not in err


def test_reader_and_dataset_keys_agree(digits_folder):
    """Extraction keys a file from the bytes it read; fit/predict from the file: one key."""
    from fne.data.dataset import content_key, file_key

    d = load_dataset(digits_folder)
    for p in d.sources[:5]:
        with open(p, "rb") as f:
            assert content_key(f.read()) == file_key(p)
    assert len({file_key(p) for p in d.sources}) == len(d)  # distinct images, distinct keys


def test_shard_patterns_and_split_names():
    from fne.data.containers import expand, is_container_spec, split_of_name

    assert expand("d/train-{000008..000011}.tar") == [f"d/train-{k:06d}.tar" for k in range(8, 12)]
    assert expand("{train,test}-{0..1}.tar") == ["train-0.tar", "train-1.tar", "test-0.tar", "test-1.tar"]
    assert expand("d/train-{٠..٣}.tar") == ["d/train-{٠..٣}.tar"]  # other digits: no range, the name as written
    assert is_container_spec("x/train-{000000..000003}.tar") and is_container_spec("hf:a/b@train")
    assert not is_container_spec("images/") and not is_container_spec("data.csv")
    for name, split in [("train-00000-of-00003.parquet", "train"), ("test-000001.tar", "test"),
                        ("validation-00000-of-00001.parquet", "val"), ("shard-000001.tar", None),
                        ("contest-0001.tar", None)]:
        assert split_of_name(f"/d/{name}") == split, name
    assert split_of_name("/d/test/000.tar", "/d") == "test"



def test_a_cache_in_data_is_refused_before_its_folders_become_classes(tmp_path, capsys):
    """`--cache DATA/cache` or `--cache DATA` worked once, then every later run met a class
    `cache` (or one per store) without images: refused at once, naming both; a hidden cache
    folder inside DATA is left out of the listing, so it is taken."""
    root = tmp_path / "data"
    for c in "ab":
        (root / c).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / c / "i.png")
    for cache in (root / "cache", root, root / "a" / "deep"):
        assert main(["extract", str(root), "--weights", "random", "--cache", str(cache)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"DATA {root}: the cache {cache} is " in err and "outside DATA" in err
    assert sorted(p.name for p in root.iterdir()) == ["a", "b"] and not (root / "a" / "deep").exists()
    assert load_dataset(root, cache=root / ".fne-cache").labels == ["a", "b"]
    assert load_dataset(root, cache=tmp_path).labels == ["a", "b"]  # DATA inside the cache: fine


def test_a_folder_named_like_a_shard_pattern_is_read_as_the_folder_it_is(digits_folder, tmp_path):
    """A folder whose name ends in .tar and holds a glob or brace character (`im[0].tar`) was
    taken for a pattern of shards, then for a folder of shards: "DATA ...: no .tar or .parquet
    files" for a folder of images. It is read as the folder it is."""
    for name in ("im[0].tar", "im{0}.tar"):
        shutil.copytree(digits_folder, tmp_path / name)
        d = load_dataset(str(tmp_path / name))
        assert len(d) == 24 and d.classes == ["0", "1", "2", "3"]


def test_data_that_cannot_be_listed_is_said_before_a_missing_cache(tmp_path, capsys):
    """`fne fit junk.tar --cache typo` said the images were not in the cache and suggested `fne
    extract`, which only then said the file is no tar: a DATA no verb could read is said first,
    in each verb that reads rows, and no cache folder is made."""
    typo = tmp_path / "typo"
    tar, parquet = tmp_path / "junk.tar", tmp_path / "junk.parquet"
    tar.write_bytes(b"no tar at all")
    parquet.write_bytes(b"no Parquet either" * 40)
    for verb, out in (("fit", tmp_path / "run"), ("export", tmp_path / "f.h5")):
        assert main([verb, str(tar), "--cache", str(typo), "--out", str(out), "--no-progress"]) == 2
        assert capsys.readouterr().err.strip() == (f"fne {verb}: error: {tar}: not a readable tar file (truncated "
                                                   f"header); WebDataset shards are plain .tar")
        assert main([verb, str(parquet), "--cache", str(typo), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"fne {verb}: error: DATA {parquet}: none of its 1 Parquet file(s) can be read "
                              f"({parquet}: ") and "\n" not in err
    assert not typo.exists()


def test_a_csv_listing_a_file_on_two_lines_says_so_once(tmp_path):
    """A CSV joined with itself, or a file listed twice: each line stays an image (as copies of one
    image are), and one warning names the files and their lines (it was silent)."""
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "sub").mkdir()
    rows = [f"{i}.png,{i % 2}" for i in range(4)] + ["0.png,0", "./3.png,1", "sub/../0.png,0"]
    (tmp_path / "l.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.warns(UserWarning) as said:
        d = load_dataset(tmp_path / "l.csv")
    assert [str(w.message) for w in said] == [
        f"CSV {tmp_path / 'l.csv'}: 2 file(s) listed on more than one line, each line an image (counted, and scored, "
        f"as many times): 0.png (lines 2, 6, 8), 3.png (lines 5, 7)"]
    assert len(d.ids) == 7
    (tmp_path / "once.csv").write_text("path,label\n" + "\n".join(rows[:4]) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dataset(tmp_path / "once.csv").ids) == 4


@pytest.mark.parametrize("rows, line", [(["0.png,0", "1.png,0\x001"], 3), (["0.png\x00,0", "1.png,1"], 2),
                                         (["0.png,0", "1.png,1", '"2.png",1\x00'], 4)])
def test_a_csv_holding_a_nul_byte_is_refused_naming_its_line(tmp_path, capsys, rows, line):
    """A NUL byte in a CSV list (Python's csv reads it since 3.11): in a label it made a class
    named "0\x001", in a path a "do not exist" line printing the NUL. One line names the file and
    the line it is on, as other bad CSV lines are named, before any image is read."""
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "l.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    said = f"CSV {tmp_path / 'l.csv'}: line {line} holds a NUL byte (\\x00), which no path, label or split has: " \
           f"is it a text file?"
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "l.csv")
    assert str(e.value) == said
    assert main(["extract", str(tmp_path / "l.csv"), "--cache", str(tmp_path / "c"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"fne extract: error: {said}"


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="names must be bytes of any encoding (Linux); Windows and macOS file names are Unicode")
def test_file_and_class_folder_names_not_utf8_are_read_and_written_escaped(digits_folder, tmp_path):
    """A Latin-1 file name (`caf\\xe9.png`) and class folder are read, their names escaped in ids,
    classes, metrics.json and predictions.csv: written as Python holds them (surrogates), `fne fit`
    stopped with a UnicodeEncodeError once the images were extracted."""
    import fne

    root = tmp_path / "data"
    for cls, new in (("0", b"caf\xe9"), ("1", b"b")):
        src = sorted((digits_folder / cls).iterdir())[:4]
        os.makedirs(os.fsencode(root) + b"/" + new)
        for k, f in enumerate(src):
            name = b"\xff%d.png" % k if new == b"b" else b"%d.png" % k
            shutil.copy(f, os.fsencode(root) + b"/" + new + b"/" + name)
    d = load_dataset(root)
    assert d.classes == ["b", "caf\\xe9"] and d.ids[:2] == ["b/\\xff0.png", "b/\\xff1.png"]
    m = fne.fit(root, tmp_path / "run", splits=1, extract_missing=True, cache=str(tmp_path / "c"), progress=False,
                **FAST32)
    assert m["n_images"] == 8
    assert "caf\\\\xe9" in (tmp_path / "run" / "metrics.json").read_text(encoding="utf-8")
    assert "0,b/\\xff0.png,b," in (tmp_path / "run" / "predictions.csv").read_text(encoding="utf-8")


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="names must be bytes of any encoding (Linux); Windows and macOS file names are Unicode")
def test_data_whose_own_path_is_not_utf8_stops_in_one_line(digits_folder, tmp_path):
    """DATA's path keys its manifest and locks and names it in records: not UTF-8, it stops in one
    line (was a UnicodeEncodeError when the manifest was named), where names inside it are escaped."""
    root = os.fsdecode(os.fsencode(tmp_path) + b"/data\xe9")
    shutil.copytree(digits_folder, root)
    with pytest.raises(DataError, match=r"^DATA .*data\\xe9: its path is not UTF-8 text; rename its folders"):
        load_dataset(root)
