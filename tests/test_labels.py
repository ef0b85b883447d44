"""Labels as researchers' data has them: numbers, awkward text, missing values, in every DATA form."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tarfile
import unicodedata
from pathlib import Path

import h5py
import numpy as np
import pytest

from fne.cli import main
from fne.data.datasets import load_dataset
from fne.errors import DataError

from .conftest import FAST, write_digits

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


def _pngs(digits_folder: Path, n: int) -> list[Path]:
    return sorted(digits_folder.rglob("*.png"))[:n]


def _tar(path: Path, files: list[Path], labels: list[bytes | None], ext: str = "cls") -> Path:
    with tarfile.open(path, "w") as tf:
        for k, (f, lab) in enumerate(zip(files, labels)):
            for name, payload in ((f"{k:04d}.png", f.read_bytes()), (f"{k:04d}.{ext}", lab)):
                if payload is None:
                    continue
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return path


def test_whole_number_classes_order_per_form(digits_folder, tmp_path):
    """Class folders and CSV sort as strings (torchvision's ImageFolder: 1, 10, 2); a label
    column of whole numbers in tar shards, Parquet and HDF5 sorts as numbers (1, 2, 10)."""
    files, values = _pngs(digits_folder, 6), [1, 2, 10, 1, 2, 10]
    for f, v in zip(files, values):
        (tmp_path / "folder" / str(v)).mkdir(parents=True, exist_ok=True)
        (tmp_path / "folder" / str(v) / f.name).write_bytes(f.read_bytes())
    (tmp_path / "l.csv").write_text("path,label\n" + "".join(f"{f},{v}\n" for f, v in zip(files, values)))
    _tar(tmp_path / "d.tar", files, [str(v).encode() for v in values])
    pq.write_table(pa.table({"image": [f.read_bytes() for f in files], "label": values}), tmp_path / "d.parquet")
    with h5py.File(tmp_path / "d.h5", "w") as h:
        h["images"], h["labels"] = np.zeros((6, 8, 8, 3), np.uint8), np.array(values)
    as_text, as_numbers = ["1", "10", "2"], ["1", "2", "10"]
    for form, want in [("folder", as_text), ("l.csv", as_text), ("d.tar", as_numbers), ("d.parquet", as_numbers),
                       ("d.h5", as_numbers)]:
        d = load_dataset(tmp_path / form, cache=tmp_path / "cache")
        assert d.classes == want, form
        assert sorted(d.labels) == sorted(str(v) for v in values), form


def test_numeric_order_is_the_same_in_every_run(tmp_path):
    """'01' and '1' are two classes of the same number: their order used to follow the set's
    hash order, so a run's class order (and so its stratified splits) changed with
    PYTHONHASHSEED. Labels int() cannot read ('²', '--1') used to end in a traceback."""
    with h5py.File(tmp_path / "d.h5", "w") as h:
        h["images"] = np.zeros((6, 8, 8, 3), np.uint8)
        h["labels"] = np.array([b"1", b"01", b"001", b"2", b"02", b"10"])
    code = f"from fne.data.datasets import load_dataset; print(load_dataset({str(tmp_path / 'd.h5')!r}).classes)"
    seen = {subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(4)}
    assert seen == {"['001', '01', '1', '02', '2', '10']\n"}
    with h5py.File(tmp_path / "e.h5", "w") as h:
        h["images"], h["labels"] = np.zeros((3, 8, 8, 3), np.uint8), np.array([s.encode() for s in ("²", "--1", "1")])
    assert load_dataset(tmp_path / "e.h5").classes == ["--1", "1", "²"]
    with pytest.warns(UserWarning, match=r"differ only in Unicode form, case, .*'001' and '01' and '1'"):
        load_dataset(tmp_path / "d.h5")


def test_label_text_is_one_rule_in_every_form(digits_folder, tmp_path):
    """Stripped, NaN/empty/null = no label (skipped with a warning), 3.0 = '3', CSV with
    Excel's byte-order mark; Unicode forms kept as written, two classes named in a warning."""
    files = _pngs(digits_folder, 4)
    for k, f in enumerate(files):
        (tmp_path / "folder" / (NFD if k < 2 else NFC)).mkdir(parents=True, exist_ok=True)
        (tmp_path / "folder" / (NFD if k < 2 else NFC) / f.name).write_bytes(f.read_bytes())
    with pytest.warns(UserWarning, match="differ only in Unicode form, case, surrounding space or leading zeros"):
        assert load_dataset(tmp_path / "folder").classes == sorted([NFC, NFD])
    rows = [("path", "label"), (files[0], f" {NFC} "), (files[1], "b"), (files[2], ""), (files[3],)]
    (tmp_path / "l.csv").write_text("\ufeff" + "".join(",".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    with pytest.warns(UserWarning) as caught:
        d = load_dataset(tmp_path / "l.csv")
    assert [str(w.message) for w in caught] == [f"skipped 2 images (no label): l.csv:4 ({files[2]}), l.csv:5 ({files[3]})"]
    assert d.classes == ["b", NFC] and len(d) == 2 and len(d.left_out) == 2
    pq.write_table(pa.table({"image": [f.read_bytes() for f in files], "label": [3.0, float("nan"), 4.0, None]}),
                   tmp_path / "d.parquet")
    with pytest.warns(UserWarning, match="no label"):
        d = load_dataset(tmp_path / "d.parquet", cache=tmp_path / "cache")
    assert d.classes == ["3", "4"] and d.labels == ["3", "4"]
    _tar(tmp_path / "d.tar", files, [b'{"label": null}', b'{"label": 2.0}', b'{"label": " b "}', b'{"label": "b"}'],
         ext="json")
    with pytest.warns(UserWarning, match="0000.png: no label"):
        assert load_dataset(tmp_path / "d.tar", cache=tmp_path / "cache").classes == ["2", "b"]


def test_a_label_written_as_a_missing_value_is_a_class_named_in_a_warning(digits_folder, tmp_path):
    """A CSV cell reading NaN or None (pandas' astype(str) writes 'nan') is text, so a class of
    that name, as README says; a warning names the images, so that a user who meant "no label"
    learns it (an empty cell is no label). A Parquet ClassLabel index stored as a float (a column
    with gaps, as pandas writes it) names its class, as an int index does."""
    files = _pngs(digits_folder, 5)
    labels = ["a", "NaN", "None", "NaN", ""]
    (tmp_path / "l.csv").write_text("path,label\n" + "".join(f"{f},{lab}\n" for f, lab in zip(files, labels)))
    with pytest.warns(UserWarning) as caught:
        d = load_dataset(tmp_path / "l.csv")
    said = [str(w.message) for w in caught]
    assert f"CSV {tmp_path / 'l.csv'}: 2 label(s) read 'NaN' (l.csv:3 ({files[1]}), l.csv:5 ({files[3]})), kept as a " \
           "class of that name; for an image without a label, leave its label empty" in said
    assert any("1 label(s) read 'None' (l.csv:4" in m for m in said) and any("skipped l.csv:6" in m for m in said)
    assert d.classes == ["NaN", "None", "a"] and len(d) == 4
    meta = {b"huggingface": json.dumps({"info": {"features": {
        "label": {"_type": "ClassLabel", "names": ["daisy", "rose", "tulip"]}}}}).encode()}
    table = pa.table({"image": [f.read_bytes() for f in files[:4]], "label": [2.0, float("nan"), 0.0, 1.0]})
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "d.parquet")
    with pytest.warns(UserWarning, match="skipped d.parquet:1: no label"):
        d = load_dataset(tmp_path / "d.parquet", cache=tmp_path / "cache")
    assert d.labels == ["tulip", "daisy", "rose"] and d.classes == ["daisy", "rose", "tulip"]


def test_classlabel_names_are_read_as_labels_and_a_listing_of_the_old_rule_is_listed_again(digits_folder, tmp_path,
                                                                                            capsys):
    """Parquet ClassLabel names written by hand: ' a' beside 'a', an empty name or one twice made
    classes such as ['a', 'a', 'b'] and a confusion matrix of nonsense; they are refused in one line,
    as HDF5's class_names are. A listing remembered under the earlier rule (its labels read without
    the names, 2.0 as '2') is listed again, its content keys kept."""
    from fne.data.manifest import attach_keys
    from tests.conftest import age

    files = _pngs(digits_folder, 3)
    for nm, names in (("dup", ["a", "a", "b"]), ("space", [" a", "a", "b"]), ("empty", ["", "x", "b"])):
        meta = {b"huggingface": json.dumps({"info": {"features": {
            "label": {"_type": "ClassLabel", "names": names}}}}).encode()}
        table = pa.table({"image": [f.read_bytes() for f in files], "label": [0, 1, 2]}).replace_schema_metadata(meta)
        pq.write_table(table, tmp_path / f"{nm}.parquet")
        with pytest.raises(DataError, match=rf"{nm}\.parquet: the ClassLabel names of column 'label' have empty or "
                                            rf"repeated names \('"):
            load_dataset(tmp_path / f"{nm}.parquet", cache=tmp_path / "cache")
    assert main(["fit", str(tmp_path / "dup.parquet"), "--out", str(tmp_path / "run"), "--cache",
                 str(tmp_path / "cache"), "--extract", *_fast_args()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "have empty or repeated names ('a')" in err
    meta = {b"huggingface": json.dumps({"info": {"features": {
        "label": {"_type": "ClassLabel", "names": ["daisy", "rose", "tulip"]}}}}).encode()}
    table = pa.table({"image": [f.read_bytes() for f in files], "label": [2.0, 0.0, 1.0]})
    (tmp_path / "f").mkdir()
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "f" / "d.parquet")
    age(tmp_path / "f")  # an hour old: its listing is remembered
    first = load_dataset(tmp_path / "f" / "d.parquet", cache=tmp_path / "cache")
    (index,) = (tmp_path / "cache" / "manifests" / "containers").glob("*.json")
    doc = json.loads(index.read_text())
    assert doc["class_names_rule"] == 2 and [m[3] for m in doc["members"]] == ["tulip", "daisy", "rose"]
    attach_keys(first, tmp_path / "cache")  # content keys computed and remembered
    doc = json.loads(index.read_text())
    del doc["class_names_rule"]  # as fne listed the file before: 2.0 read as '2'
    doc["members"] = [[*m[:3], str(int(lab)), m[4]] for m, lab in zip(doc["members"], [2.0, 0.0, 1.0])]
    index.write_text(json.dumps(doc))
    again = load_dataset(tmp_path / "f" / "d.parquet", cache=tmp_path / "cache")
    assert again.labels == ["tulip", "daisy", "rose"] and again.classes == ["daisy", "rose", "tulip"]
    assert json.loads(index.read_text())["keys"] == doc["keys"] != {}


@pytest.mark.parametrize("case, expect", [
    ("latin1_csv", "l.csv: not UTF-8 text"),
    ("h5_empty_label", r"d.h5: 1 image\(s\) have no label .* at index 1"),
    ("h5_bad_index", r"d.h5: label '5' is not an index into the 2 names"),
])
def test_bad_labels_are_one_line(digits_folder, tmp_path, capsys, case, expect):
    f = _pngs(digits_folder, 1)[0]
    if case == "latin1_csv":
        (tmp_path / "l.csv").write_bytes(f"path,label\n{f},caf\xe9\n".encode("latin-1"))
        data = tmp_path / "l.csv"
    else:
        data = tmp_path / "d.h5"
        with h5py.File(data, "w") as h:
            h["images"] = np.zeros((2, 8, 8, 3), np.uint8)
            h["labels"] = np.array([b"1", b" "] if case == "h5_empty_label" else [b"1", b"5"])
            if case == "h5_bad_index":
                h["labels"].attrs["class_names"] = ["a", "b"]
    with pytest.raises(DataError, match=expect):
        load_dataset(data)
    assert main(["extract", str(data), "--cache", str(tmp_path / "c"), *_fast_args()]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def _fast_args() -> list[str]:
    return ["--arch", FAST["arch"], "--weights", FAST["weights"], "--precision", FAST["precision"],
            "--storage-dtype", FAST["storage_dtype"]]


def test_awkward_class_names_through_fit_predict_report(tmp_path, capsys):
    """Commas, quotes, a line break, Markdown and HTML in class names: predictions.csv (read
    back with the csv module), metrics.json and report.md keep each name whole."""
    src = write_digits(tmp_path / "digits", per_class=6, classes=4)
    names = {"0": "a,b", "1": 'say "hi"', "2": "two\nlines", "3": "<b>x</b>|y"}
    with open(tmp_path / "l.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for p in sorted(src.rglob("*.png")):
            w.writerow([p, names[p.parent.name]])
    data, cache = str(tmp_path / "l.csv"), str(tmp_path / "cache")
    base = [*_fast_args(), "--cache", cache, "--features", "last"]
    assert main(["fit", data, *base, "--extract", "--splits", "2", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["classes"] == sorted(names.values())
    assert main(["predict", str(tmp_path / "run"), data, "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "predicted", *(f"score_{n}" for n in sorted(names.values())), "true"]
    assert len(rows) == 25 and {r[-1] for r in rows[1:]} == set(names.values())
    assert {r[1] for r in rows[1:]} <= set(names.values())
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    pairs = [line for line in md.splitlines() if line.startswith("- ") and " → " in line]
    assert pairs and all(line.count(": ") == 1 for line in pairs)  # each pair on one line
    assert "<b>" not in md and "<" not in "".join(pairs).replace("\\<", "")
    capsys.readouterr()


def test_predict_matches_labels_in_another_unicode_form():
    """A model fitted on a macOS folder keeps NFD class names; the same names typed on Linux
    (NFC) count as its classes (tests/test_fit.py covers labels it does not know)."""
    from fne.linear.predict import _accuracy

    acc, scored = _accuracy([NFD, "b"], [NFC, "b"], [NFD, "b"], "DATA")
    assert acc == 1.0 and scored.tolist() == [True, True]  # both images count


def test_tiny_classes_fit_and_auto_selection_names_them(tmp_path, recwarn):
    """25 classes of 3 images: fits with 1 or 2 training images per class give no scikit-learn
    "could represent a regression problem" warning (given past 20 samples when over half are
    classes of their own: here in the fixed-C fit and in --C auto's folds); --C auto with a
    single training image per class stops before fitting, naming the classes and the way out."""
    from fne.errors import FneError
    from fne.linear.fit import fit

    src = write_digits(tmp_path / "digits", per_class=8, classes=10)
    rows = [f"{p},c{k // 3:02d}" for k, p in enumerate(sorted(src.rglob("*.png"))[:75])]
    (tmp_path / "l.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    data, common = tmp_path / "l.csv", dict(cache=str(tmp_path / "cache"), features="last", progress=False, splits=1,
                                            **FAST)
    m = fit(data, tmp_path / "run", extract_missing=True, train_per_class=1, **common)
    assert m["n_train"] == 25 and len(m["classes"]) == 25
    m = fit(data, tmp_path / "run", C="auto", train_per_class=2, **common)
    assert m["n_train"] == 50 and m["selection"]
    assert not [w for w in recwarn if "regression" in str(w.message)]
    with pytest.raises(FneError, match=r"25 class\(es\) have 1 training image in a split \('c00', 'c01', "
                                       r"'c02', 'c03', 'c04', \.\.\.\): give C \(and features, head\) a value, or train_per_class=2"):
        fit(data, tmp_path / "run2", C="auto", train_per_class=1, **common)


def test_a_whole_number_stored_as_a_number_is_an_integer_text_is_kept_as_written():
    """README: `3.0` -> `3` for numbers (a float column, a JSON number); a CSV cell or a `.cls`
    member is text and keeps its `3.0`."""
    from fne.data.labels import label_text

    assert label_text(3.0) == "3" and label_text(np.float32(3.0)) == "3" and label_text(2.5) == "2.5"
    assert label_text(" 3.0 ") == "3.0" and label_text(b"3.0\n") == "3.0"
