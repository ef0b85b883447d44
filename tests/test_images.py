"""The images a researcher really has: hidden and linked files, Pillow's warnings, empty files,
identical images under two classes. Images are made here, tiny."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fne.backbones.preprocess import Preprocess
from fne.cli import main
from fne.data.datasets import load_dataset
from fne.data.splits import duplicate_notes, make_splits
from fne.errors import DataError, FneError
from fne.extraction.reader import ImageItems

from .conftest import age
from .test_faults import CLI_FAST


def _png(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, "PNG")
    return path


def test_folder_skips_hidden_follows_linked_folders_and_names_dangling_links(tmp_path):
    """macOS's `._x.jpg` and `.DS_Store`, Jupyter's `.ipynb_checkpoints/` copies are no images of
    the class; a symlinked folder is read (as torchvision's ImageFolder reads it), once even
    when a link loops back; a link to nothing is skipped with a line naming it, not a stop."""
    root, elsewhere = tmp_path / "d", tmp_path / "elsewhere"
    _png(root / "a" / "1.png", 1)
    (root / "a" / "._1.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (root / "a" / ".DS_Store.png").write_bytes(b"\x00\x00\x00\x01Bud1")
    _png(root / "a" / ".ipynb_checkpoints" / "1-checkpoint.png", 1)
    _png(elsewhere / "2.png", 2)
    os.symlink(elsewhere, root / "a" / "linked")
    os.symlink(root / "a", root / "a" / "linked" / "back")  # a loop: a/linked/back -> a
    _png(root / "b" / "3.png", 3)
    os.symlink(root / "b" / "gone.png", root / "b" / "dangling.png")
    with pytest.warns(UserWarning, match=r"dangling\.png: a symbolic link to nothing"):
        d = load_dataset(root)
    assert d.ids == ["a/1.png", "a/linked/2.png", "b/3.png"] and d.labels == ["a", "a", "b"]
    flat = tmp_path / "flat"
    _png(flat / "x.png", 4)
    (flat / "._x.png").write_bytes(b"\x00\x05\x16\x07")
    assert load_dataset(flat).ids == ["x.png"]


def test_a_link_to_itself_is_skipped_with_a_line_naming_it(tmp_path):
    """`ln -s self self` (ELOOP when followed): left out with a line, as a link to nothing is,
    not a traceback from the listing."""
    root = tmp_path / "d"
    _png(root / "a" / "1.png", 1)
    _png(root / "b" / "2.png", 2)
    os.symlink(root / "b" / "self", root / "b" / "self")
    with pytest.warns(UserWarning, match=r"skipped .*b/self: Too many levels of symbolic links"):
        d = load_dataset(root)
    assert d.ids == ["a/1.png", "b/2.png"] and d.left_out == [str(root / "b" / "self")]


def test_dangling_link_does_not_stop_extract_or_fit(tmp_path, capsys):
    root = tmp_path / "d"
    for c, seeds in (("a", (1, 2)), ("b", (3, 4))):
        for s in seeds:
            _png(root / c / f"{s}.png", s)
    os.symlink(root / "a" / "nope.png", root / "a" / "dangling.png")
    cache = str(tmp_path / "c")
    assert main(["extract", str(root), "--cache", cache, *CLI_FAST]) == 0
    out, err = capsys.readouterr()
    assert "dangling.png: a symbolic link to nothing" in err and "4 computed" in out
    assert main(["fit", str(root), "--cache", cache, "--out", str(tmp_path / "run"), "--splits", "1",
                 "--test-size", "0.5", *CLI_FAST]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_pillow_warning_names_the_image(tmp_path, monkeypatch):
    """Pillow warns of a very large image without saying which; the reader says which."""
    _png(tmp_path / "d" / "a" / "big.png", 1, size=(30, 20))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 600 pixels: over the warning's limit, under the error's
    d = load_dataset(tmp_path / "d")
    i, key, views, err, stat, notes = ImageItems(d, [0], Preprocess(16))[0]  # said by the main process
    assert err is None and views.shape == (1, 3, 16, 16) and notes[0][0] == "a/big.png"
    assert notes[0][1].startswith("Image size (600 pixels)")


def test_empty_file_is_named_empty(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "zero.jpg").write_bytes(b"")
    (tmp_path / "d" / "a" / "text.jpg").write_text("not an image\n")
    d = load_dataset(tmp_path / "d")
    items = ImageItems(d, [0, 1], Preprocess(16))
    assert [items[j][3] for j in range(2)] == ["not an image file", "empty file (0 bytes)"]


def test_identical_images_under_two_classes_and_across_a_split_are_named(tmp_path):
    """The store is keyed by content: a copy under another class is the same features with
    another label, and a copy on the other side of a split is a test image the head has seen."""
    root = tmp_path / "d"
    for split, c, name, seed in [("train", "a", "1.png", 1), ("train", "a", "2.png", 2), ("train", "b", "3.png", 3),
                                 ("train", "b", "4.png", 4), ("test", "a", "5.png", 5), ("test", "b", "6.png", 6)]:
        _png(root / split / c / name, seed)
    d = load_dataset(root)
    assert duplicate_notes(d, d.keys(), make_splits(d, d.label_indices())) == []
    (root / "train" / "b" / "1-copy.png").write_bytes((root / "train" / "a" / "1.png").read_bytes())
    (root / "test" / "a" / "2-again.png").write_bytes((root / "train" / "a" / "2.png").read_bytes())
    d = load_dataset(root)
    clash, leak = duplicate_notes(d, d.keys(), make_splits(d, d.label_indices()))
    assert clash.startswith("1 image(s) appear, byte for byte, under more than one class")
    assert "train/a/1.png (a) = train/b/1-copy.png (b)" in clash
    assert leak.startswith("1 test image(s) of 1 of 1 split(s) have a byte-identical copy") and "test/a/2-again.png" in leak


def test_fit_warns_of_identical_images_under_two_classes(tmp_path, capsys):
    root = tmp_path / "d"
    for c, seeds in (("a", (1, 2, 3)), ("b", (4, 5, 6))):
        for s in seeds:
            _png(root / c / f"{s}.png", s)
    (root / "b" / "copy-of-1.png").write_bytes((root / "a" / "1.png").read_bytes())
    assert main(["fit", str(root), "--extract", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "run"),
                 "--splits", "1", "--test-size", "0.4", *CLI_FAST]) == 0
    err = capsys.readouterr().err
    assert "fne: warning: 1 image(s) appear, byte for byte, under more than one class" in err
    assert "a/1.png (a) = b/copy-of-1.png (b)" in err


def test_fit_keeps_copies_of_an_image_on_one_side_of_each_random_split(tmp_path, capsys):
    """Drawn without content keys, 5 splits of these 20 images put some copy on both sides
    (seed 0); fit draws over distinct images, so no split scores a test image it was fitted on."""
    root = tmp_path / "d"
    for c, seeds in (("a", range(1, 7)), ("b", range(7, 13))):
        for s in seeds:
            _png(root / c / f"{s}.png", s)
    for s in (1, 2, 3, 7, 8, 9):
        for k in (1, 2):
            (root / ("a" if s < 7 else "b") / f"{s}-copy{k}.png").write_bytes((root / ("a" if s < 7 else "b") / f"{s}.png").read_bytes())
    d = load_dataset(root)
    plain = make_splits(d, d.label_indices(), splits=5, test_size=0.3, seed=0)
    assert duplicate_notes(d, d.keys(), plain)[-1].startswith("6 test image(s) of 5 of 5 split(s)")  # what fit did before
    assert main(["fit", str(root), "--extract", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "run"),
                 "--splits", "5", "--test-size", "0.3", "--seed", "0", *CLI_FAST]) == 0
    assert "byte-identical copy" not in capsys.readouterr().err


def test_unreadable_images_left_out_are_all_counted(tmp_path, capsys):
    root = tmp_path / "d"  # 4 readable images a class: the split of DATA's listing trains on both classes
    for c, seeds in (("a", (1, 2, 5, 6)), ("b", (3, 4, 7, 8))):
        for s in seeds:
            _png(root / c / f"{s}.png", s)
    for k in range(6):
        (root / "ab"[k % 2] / f"bad{k}.jpg").write_text(f"not an image {k}\n")
    assert main(["fit", str(root), "--extract", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "run"),
                 "--splits", "1", "--test-size", "0.5", *CLI_FAST]) == 0
    err = capsys.readouterr().err
    assert "fne: warning: skipped 6 images (not an image file): a/bad0.jpg, a/bad2.jpg, a/bad4.jpg, b/bad1.jpg, " \
           "b/bad3.jpg and 1 more" in err
    assert err.count("fne: warning: skipped") == 1  # said once: by fit, not again by the extraction it ran


def test_class_names_differing_only_in_unicode_form_are_explained(tmp_path):
    """'ñandú' from a macOS archive (NFD) and typed on Linux (NFC) look the same and differ."""
    nfc, nfd = unicodedata.normalize("NFC", "ñandú"), unicodedata.normalize("NFD", "ñandú")
    for split, c in (("train", nfc), ("train", "cat"), ("test", nfd), ("test", "cat")):
        _png(tmp_path / "d" / split / c / "1.png", len(split) + len(c))
    d = load_dataset(tmp_path / "d")
    with pytest.raises(DataError, match="test classes with no .readable. training images: .*: the training images "
                                        "have a class of the same name in other Unicode code points"):
        make_splits(d, d.label_indices())


def test_a_class_only_in_test_stops_fit_in_every_form_and_not_extract(tmp_path, capsys):
    """A folder stopped even `fne extract` (which needs no labels) and Parquet did not stop
    `fne fit`, scoring the class's images as wrong: now fit stops for every form, extract for none."""
    rows = [("train", "a", 1), ("train", "a", 2), ("train", "b", 3), ("train", "b", 4), ("test", "a", 5),
            ("test", "b", 6), ("test", "c", 7)]
    folder, pqdir = tmp_path / "folder", tmp_path / "pq"
    for split, c, seed in rows:
        _png(folder / split / c / f"{seed}.png", seed)
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pqdir.mkdir()
    for split in ("train", "test"):
        part = [(c, seed) for s, c, seed in rows if s == split]
        pq.write_table(pa.table({"image": [{"bytes": (folder / split / c / f"{seed}.png").read_bytes(),
                                            "path": f"{seed}.png"} for c, seed in part],
                                 "label": [c for c, _ in part]}), pqdir / f"{split}-00000-of-00001.parquet")
    cache = str(tmp_path / "c")
    for data in (folder, pqdir):
        assert main(["extract", str(data), "--cache", cache, *CLI_FAST]) == 0
        assert main(["fit", str(data), "--cache", cache, "--out", str(tmp_path / "run"), *CLI_FAST]) == 2
        err = capsys.readouterr().err
        assert "fne fit: error: DATA" in err and "test classes with no (readable) training images: c" in err


def _member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_tar_from_macos_and_left_out_members_are_counted(tmp_path, capsys):
    """macOS's tar adds `._name` AppleDouble members: no samples (webdataset ignores them too),
    not "no label" noise. Members left out when listing (here one without a label) are named
    and counted in extract's summary, as a dangling link in a folder is."""
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w") as tf:
        for k in range(3):
            buf = io.BytesIO()
            Image.new("RGB", (12, 10), (40 * k, 0, 0)).save(buf, "PNG")
            _member(tf, f"./._{k:06d}.png", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
            _member(tf, f"./{k:06d}.png", buf.getvalue())
            if k < 2:
                _member(tf, f"./{k:06d}.cls", str(k).encode())
    assert main(["extract", str(shard), "--cache", str(tmp_path / "c"), *CLI_FAST]) == 0
    out, err = capsys.readouterr()
    assert [line for line in err.splitlines() if "warning" in line] == \
        ["fne: warning: skipped train-000000.tar:./000002.png: no label"]
    assert "2 computed" in out and "1 left out when listing DATA (named above)" in out
    root = tmp_path / "d"
    _png(root / "a" / "1.png", 1)
    os.symlink(root / "a" / "nope.png", root / "a" / "dangling.png")
    assert main(["extract", str(root), "--cache", str(tmp_path / "c"), *CLI_FAST]) == 0
    assert "1 left out when listing DATA (named above)" in capsys.readouterr().out


def test_a_class_whose_images_are_all_unreadable_is_named(tmp_path, capsys):
    root = tmp_path / "d"
    for c, seeds in (("a", (1, 2)), ("b", (3, 4))):
        for s in seeds:
            _png(root / c / f"{s}.png", s)
    (root / "zzz").mkdir()  # 2 images: a class of 1 cannot be split (`fne train` refuses it, as fit does)
    for k in range(2):
        (root / "zzz" / f"bad{k}.jpg").write_text(f"not an image {k}\n")
    assert main(["fit", str(root), "--extract", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "run"),
                 "--splits", "1", "--test-size", "0.5", *CLI_FAST]) == 0
    err = capsys.readouterr().err
    assert "1 class(es) have no readable image, so the model cannot predict them: zzz" in err


def test_a_random_split_names_the_classes_with_one_image(tmp_path):
    for c, n in (("a", 1), ("b", 3), ("c", 1)):
        for s in range(n):
            _png(tmp_path / "d" / c / f"{s}.png", s + ord(c))
    d = load_dataset(tmp_path / "d")
    with pytest.raises(FneError, match=r"at least 2 images for a random split; 2 class\(es\) have 1: a, c$"):
        make_splits(d, d.label_indices())


@pytest.mark.parametrize("parts,said", [(("Train", "val"), "Train/ and val/ are a split, not classes; a predefined split is "
                                                                   "read from train/ and test/ (lower case: name the held-out folder test/)"),
                                        (("Train", "Test"), "Train/ and Test/ are a split, not classes; a predefined "
                                                            "split is read from train/ and test/ (lower case: name the held-out "
                                                            "folder test/)"),
                                        (("Val", "Test"), "Test/ and Val/ are a split, not classes; a predefined split is "
                                                          "read from train/ and test/ (lower case: val/ and test/, or name "
                                                          "the training folder train/)")])
def test_a_train_and_val_folder_is_not_two_classes(tmp_path, parts, said):
    """Train/ + Test/ (or Train/ + val/, Val/ + Test/) was fitted as two classes "Train" and "Test";
    lower-case train/ + val/ is a split (test_data: a validation part without a test part is held
    out), and so is val/ + test/ (below)."""
    for split in parts:
        for c in ("a", "b"):
            _png(tmp_path / "d" / split / c / "1.png", len(split) + ord(c))
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "d")
    assert f"DATA {tmp_path / 'd'}: folders {said}, or give the train folder alone as DATA" == str(e.value)


def test_a_val_and_test_folder_is_a_split_whose_validation_part_trains(tmp_path):
    """val/ + test/ with no train/ was fitted as two classes "test" and "val" (then refused): it is
    a split, its validation part the training part, as tar shards named validation-* and test-* are."""
    for split in ("val", "test"):
        for c in ("a", "b"):
            _png(tmp_path / "d" / split / c / "1.png", len(split) + ord(c))
    d = load_dataset(tmp_path / "d")
    assert d.classes == ["a", "b"] and d.has_split and not d.has_val_part
    assert dict(zip(d.ids, d.splits, strict=True)) == {"val/a/1.png": "train", "val/b/1.png": "train",
                                                        "test/a/1.png": "test", "test/b/1.png": "test"}


def test_what_a_folder_leaves_out_is_said(tmp_path):
    """Images beside the class folders, and folders beside train/ and test/, were left out silently."""
    for c in ("a", "b"):
        _png(tmp_path / "d" / c / "1.png", ord(c))
    _png(tmp_path / "d" / "stray.png", 9)
    with pytest.warns(UserWarning, match=r"1 image\(s\) beside the class folders belong to no class, left out: stray"):
        d = load_dataset(tmp_path / "d")
    assert d.ids == ["a/1.png", "b/1.png"] and d.left_out == ["stray.png"]
    for split in ("train", "test", "extra"):
        for c in ("a", "b"):
            _png(tmp_path / "s" / split / c / "1.png", len(split) + ord(c))
    with pytest.warns(UserWarning, match=r"extra/ left out: a predefined split reads train/, test/ and a "
                                         r"validation folder \(val/\)"):
        d = load_dataset(tmp_path / "s")
    assert sorted(set(d.splits)) == ["test", "train"] and len(d) == 4
    _png(tmp_path / "s" / "loose.png", 7)  # an image beside train/ and test/ was left out silently
    with pytest.warns(UserWarning, match=r"extra/ and 1 image\(s\) beside train/ and test/ \(loose\.png\) left out"):
        d = load_dataset(tmp_path / "s")
    assert len(d) == 4 and d.left_out == ["loose.png"]


def test_a_float_image_in_0_1_is_said_to_come_out_black(tmp_path):
    """Rows stay what torchvision's loader makes of it (black), but the user is told which file."""
    (tmp_path / "d" / "a").mkdir(parents=True)
    Image.fromarray(np.linspace(0, 1, 200, dtype=np.float32).reshape(10, 20)).save(tmp_path / "d" / "a" / "f.tif")
    d = load_dataset(tmp_path / "d")
    _, _, views, err, _, notes = ImageItems(d, [0], Preprocess(16))[0]
    assert err is None and int(views.max()) <= 1
    assert notes == (("a/f.tif", "a float image with values in 0-1 is read as 0-255, so it comes out black; save "
                                 "it as an 8- or 16-bit image"),)


def test_a_32_bit_or_float_image_of_small_values_is_said_to_come_out_dark(tmp_path):
    """A label mask or a 0-15 count image saved as a 32-bit or float TIFF is scaled from 0-255 and
    comes out near black (rows unchanged): it was said of 0-1 floats and 16-bit images only; now
    below 64 (the dark 16-bit note's bound) too. An I image using 0-255 is read without a note."""
    (tmp_path / "d" / "a").mkdir(parents=True)
    counts = (np.arange(200) % 16).reshape(10, 20)
    Image.fromarray(counts.astype(np.int32), mode="I").save(tmp_path / "d" / "a" / "mask.tif")
    Image.fromarray((counts * 2.0).astype(np.float32)).save(tmp_path / "d" / "a" / "f.tif")
    Image.fromarray((counts * 17).astype(np.int32), mode="I").save(tmp_path / "d" / "a" / "full.tif")
    d = load_dataset(tmp_path / "d")
    items = ImageItems(d, [0, 1, 2], Preprocess(16))
    said = ("a 32-bit or float image with values all below 64 (a label mask or a count image?) is read as 0-255, so "
            "it comes out dark; rescale its values to 0-255 first")
    assert [items[j][3] for j in range(3)] == [None] * 3  # read, not skipped
    notes = [n for j in range(3) for n in (items[j][5] if len(items[j]) > 5 else ())]  # an item with notes has 6 parts
    assert notes == [("a/f.tif", said), ("a/mask.tif", said)]  # full.tif: none
    assert int(items[2][2].max()) <= 15  # the pixels are as they were


def test_a_deprecation_while_decoding_is_left_to_the_usual_filters(tmp_path, monkeypatch):
    """A library's deprecation is no news about an image: shown as the filters say, not per image."""
    import warnings

    import fne.extraction.reader as reader

    real = reader.read_image

    def deprecated(src):
        warnings.warn("some Pillow API is deprecated", DeprecationWarning, stacklevel=1)
        return real(src)

    monkeypatch.setattr(reader, "read_image", deprecated)
    for s in (1, 2):
        _png(tmp_path / "d" / "a" / f"{s}.png", s)
    d = load_dataset(tmp_path / "d")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # as the CLI shows warnings: once per place
        assert [ImageItems(d, [0, 1], Preprocess(16))[j][3] for j in (0, 1)] == [None, None]
    assert [str(w.message) for w in caught] == ["some Pillow API is deprecated"]  # once, not once per image


def test_an_image_too_thin_to_resize_is_named_skipped_and_recorded(tmp_path, capsys):
    """1 x 4,000 pixels would be resized to 256 x 1,024,000 (gigabytes: the out-of-memory killer
    would end the worker at every rerun): named and skipped as a decompression bomb is, and
    recorded, so the rerun does not read it again. A JPEG too (its size read from the header,
    where the device path would take it). 1 x 2,000 is still read."""
    for c in ("a", "b"):
        for i in range(2):
            _png(tmp_path / "data" / c / f"{i}.png", seed=10 * ord(c) + i)
    _png(tmp_path / "data" / "a" / "thin.png", seed=1, size=(1, 4000))
    Image.new("RGB", (4000, 1), (9, 9, 9)).save(tmp_path / "data" / "b" / "wide.jpg")
    _png(tmp_path / "data" / "b" / "ok.png", seed=2, size=(1, 2000))
    age(tmp_path / "data")  # files the manifest trusts: the rerun knows their keys without reading them
    args = ["extract", str(tmp_path / "data"), "--cache", str(tmp_path / "c"), *CLI_FAST]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "a/thin.png (DecompressionBombError: resized for the network, this 1 x 4000 image would be " \
           "256 x 1024000 (262,144,000 pixels, over 178,956,970, twice Pillow's MAX_IMAGE_PIXELS)" in captured.err
    assert "b/wide.jpg (DecompressionBombError" in captured.err and captured.err.count("warning") == 1  # alike: one line
    assert "5 computed" in captured.out and "2 skipped" in captured.out
    assert main(args) == 0
    assert "2 recorded unreadable by an earlier run" in capsys.readouterr().out
    ds = load_dataset(str(tmp_path / "data"))  # the device path: a plain JPEG travels as its bytes
    item = ImageItems(ds, [ds.ids.index("b/wide.jpg")], Preprocess(), raw_jpeg=True)[0]
    assert item[2] is None and item[3].startswith("DecompressionBombError: resized for the network")
    import h5py  # an image of an array (HDF5, digits) is refused the same way

    with h5py.File(tmp_path / "thin.h5", "w") as f:
        f["images"], f["labels"] = np.zeros((1, 1, 4000), np.uint8), np.array([0])
    item = ImageItems(load_dataset(tmp_path / "thin.h5"), [0], Preprocess())[0]
    assert item[2] is None and item[3].startswith("DecompressionBombError: resized for the network, this 4000 x 1 ")


def test_a_warning_from_elsewhere_while_an_image_decodes_is_not_named_after_it(monkeypatch):
    """catch_warnings is process-wide: a warning another thread gives while an image decodes
    (the model being built beside the reader) is passed on as it was, not put on the image."""
    import warnings

    import fne.extraction.reader as fr

    real = fr.read_image

    def read(f):
        warnings.warn_explicit("weights initialised the old way", UserWarning, "/elsewhere/models.py", 7)
        warnings.warn("a Pillow-like warning", UserWarning, stacklevel=1)  # this file: not a decoder
        return real(f)

    monkeypatch.setattr(fr, "read_image", read)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fr.named_decode(buf.getvalue(), "a/x.png")
    assert [str(w.message) for w in caught] == ["weights initialised the old way", "a Pillow-like warning"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_named_like_an_image_is_skipped_not_waited_on(tmp_path):
    """A named pipe `a/pipe.png` (or a link to one) was listed as an image: hashing it opened it
    and waited for a writer for ever (`fne fit --extract` hung). Now it is left out when listing,
    named, as a link to nothing is."""
    root = tmp_path / "d"
    _png(root / "a" / "1.png", 1)
    _png(root / "b" / "2.png", 2)
    os.mkfifo(root / "a" / "pipe.png")
    os.symlink(root / "a" / "pipe.png", root / "b" / "to-pipe.png")
    with pytest.warns(UserWarning) as said:
        d = load_dataset(root)
    assert [str(w.message) for w in said] == [
        f"skipped 2 images (not a regular file (a named pipe, a socket or a device)): {root / 'a' / 'pipe.png'}, "
        f"{root / 'b' / 'to-pipe.png'}"]
    assert d.ids == ["a/1.png", "b/2.png"] and d.left_out == [str(root / "a" / "pipe.png"), str(root / "b" / "to-pipe.png")]


def _tiff(arr: np.ndarray, sample_format: int) -> bytes:
    """An uncompressed TIFF of H×W×C `arr` (C samples a pixel), one strip: layouts Pillow cannot
    write (nor read: 2 samples of 16 bits, float RGB)."""
    h, w, c = arr.shape
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    bits = [arr.dtype.itemsize * 8] * c
    tags = [(256, [w]), (257, [h]), (258, bits), (259, [1]), (262, [2 if c >= 3 else 1]), (273, [0]),
            (277, [c]), (278, [h]), (279, [len(data)]), (284, [1]), (339, [sample_format] * c)]
    extra_at = 8 + 2 + 12 * len(tags) + 4
    extra = b"".join(struct.pack(f"<{len(v)}H", *v) for t, v in tags if t in (258, 339) and len(v) > 2)
    data_at, entries, spill = extra_at + len(extra), b"", extra_at
    for tag, v in tags:
        if tag == 273:
            v = [data_at]
        typ = 4 if tag in (256, 257, 273, 278, 279) else 3
        if len(v) > 2 and typ == 3:
            entries += struct.pack("<HHII", tag, 3, len(v), spill)
            spill += 2 * len(v)
        else:
            entries += struct.pack("<HHI", tag, typ, len(v)) + struct.pack(f"<{len(v)}{'I' if typ == 4 else 'H'}",
                                                                           *v).ljust(4, b"\0")
    return b"II*\0" + struct.pack("<IH", 8, len(tags)) + entries + b"\0\0\0\0" + extra + data


def test_a_tiff_pillow_cannot_decode_is_skipped_saying_its_layout(tmp_path):
    """A float RGB TIFF, or one of 2 samples a pixel, was skipped as "not an image file": now
    named as the TIFF it is, with what Pillow cannot read in it."""
    from fne.extraction.reader import why_unreadable

    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "rgb.tif").write_bytes(_tiff(np.zeros((3, 4, 3), np.float32), 3))
    (tmp_path / "d" / "a" / "two.tif").write_bytes(_tiff(np.zeros((3, 4, 2), np.uint16), 1))
    (tmp_path / "d" / "a" / "junk.tif").write_bytes(b"II*\0" + b"\xff" * 40)  # tags unreadable too
    _png(tmp_path / "d" / "a" / "ok.png", 1)
    d = load_dataset(tmp_path / "d")
    errors = {d.ids[i]: ImageItems(d, [i], Preprocess(16))[0][3] for i in range(len(d))}
    assert errors == {
        "a/junk.tif": "not an image file", "a/ok.png": None,
        "a/rgb.tif": "a TIFF Pillow cannot decode (3 sample(s) per pixel of 32-bit float values); save it as 8- "
                     "or 16-bit grey or RGB",
        "a/two.tif": "a TIFF Pillow cannot decode (2 sample(s) per pixel of 16-bit unsigned values); save it as "
                     "8- or 16-bit grey or RGB"}
    assert why_unreadable(OSError("x"), b"II*\0") == "OSError: x"  # only Pillow's "cannot identify" is looked into


def test_12_bit_images_in_16_bit_files_are_said_once_for_the_run(tmp_path, capsys):
    """`fne extract` of a microscope's 12-bit images in 16-bit PNGs made rows of near-black
    images (0-16 of 255) without a word: now one line counts them and names the first few."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(4):
            (tmp_path / "d" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 4096, (12, 10), dtype=np.uint16)).save(tmp_path / "d" / c / f"{i}.png")
    _png(tmp_path / "d" / "a" / "8bit.png", 3)
    assert main(["extract", str(tmp_path / "d"), "--cache", str(tmp_path / "c"), *CLI_FAST]) == 0
    err = capsys.readouterr().err
    assert err.count("14 bits or fewer") == 1 and "comes out dark" in err
    assert "(8 images: a/0.png, a/1.png, a/2.png, a/3.png, b/0.png and 3 more)" in err and "8bit.png" not in err
