"""DATA in containers: WebDataset tar shards and Parquet files, keyed like the same files loose.

Shards and Parquet files are built inside the tests from the shared datasets or from generated
images; forward passes are counted with a wrapper around the tap model's forward.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest

import fne
import fne.data.containers
import fne.data.parquet
import fne.data.random_access
import fne.extraction.taps
import fne.network
from fne.cache.upkeep import verify
from fne.cli import main
from fne.data.datasets import load_dataset
from fne.data.manifest import attach_keys
from fne.data.shards import shard_of
from fne.errors import DataError
from fne.extraction.extract import extract

from .conftest import FAST, SHARED, write_digits
from .test_faults import CLI_FAST, _hostile

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
OLD = 1_600_000_000  # an mtime well before any listing: the listing is trusted (not racy)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Listings are remembered in $FNE_CACHE/manifests: one per test."""
    monkeypatch.setenv("FNE_CACHE", str(tmp_path / "fne-cache"))


def _files(root: Path) -> list[tuple[Path, str, str | None]]:
    """(file, label, split) of an image folder (class folders, optionally under train/ test/)."""
    out = []
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".png")):
        rel = f.relative_to(root).parts
        out.append((f, rel[-2], rel[0] if len(rel) == 3 else None))
    return out


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shards(src: Path, out: Path, per_shard: int = 50, label: str = "cls") -> list[Path]:
    """WebDataset shards of an image folder, named by split (`train-000000.tar`, ...)."""
    out.mkdir(parents=True, exist_ok=True)
    items = _files(src)
    classes = sorted({lab for _, lab, _ in items})
    shards = []
    for split in sorted({s for _, _, s in items}, key=str):
        part = [t for t in items if t[2] == split]
        for k in range(0, len(part), per_shard):
            path = out / f"{split or 'data'}-{k // per_shard:06d}.tar"
            with tarfile.open(path, "w") as tf:
                for j, (f, lab, _) in enumerate(part[k:k + per_shard]):
                    key = f"{k + j:06d}"
                    tf.add(f, arcname=f"{key}{f.suffix.lower()}")
                    if label == "cls":
                        _add(tf, f"{key}.cls", str(classes.index(lab)).encode())
                    elif label == "txt":
                        _add(tf, f"{key}.txt", lab.encode())
                    else:
                        _add(tf, f"{key}.json", json.dumps({label: lab}).encode())
            shards.append(path)
    return shards


def write_parquet(src: Path, out: Path, rows_per_group: int = 40) -> list[Path]:
    """Parquet files the Hub's way: `{split}-00000-of-00001.parquet`, image as {bytes, path}."""
    out.mkdir(parents=True, exist_ok=True)
    items = _files(src)
    files = []
    for split in sorted({s for _, _, s in items}, key=str):
        part = [t for t in items if t[2] == split]
        table = pa.table({"image": [{"bytes": f.read_bytes(), "path": f.name} for f, _, _ in part],
                          "label": [lab for _, lab, _ in part]})
        path = out / f"{split or 'train'}-00000-of-00001.parquet"
        pq.write_table(table, path, row_group_size=rows_per_group)
        files.append(path)
    return files


class Forwards:
    """Counts images through the tap model."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = fne.extraction.taps.forward

        def counted(model, x, dev, prec):
            self.n += x.shape[0]
            return real(model, x, dev, prec)

        monkeypatch.setattr(fne.extraction.taps, "forward", counted)


def _flowers_subset(dst: Path, per_class: int = 4) -> Path:
    src = Path(os.environ.get("FNE_SHARED_DATASETS", SHARED)) / "flowers12"
    if not src.is_dir():
        pytest.skip("flowers12 not in /work/shared/datasets")
    for split in ("train", "test"):
        for d in sorted((src / split).iterdir()):
            (dst / split / d.name).mkdir(parents=True)
            for f in sorted(d.glob("*.jpg"))[:per_class]:
                shutil.copy(f, dst / split / d.name / f.name)
    return dst


# ----------------------------------------------------------------- 3. the same rows as files
def test_folder_then_tar_then_parquet_zero_forward_passes(tmp_path, monkeypatch):
    folder = _flowers_subset(tmp_path / "flowers")
    shards = write_shards(folder, tmp_path / "tar", per_shard=20, label="txt")
    write_parquet(folder, tmp_path / "pq")
    fwd = Forwards(monkeypatch)
    cache = str(tmp_path / "c")
    first = extract(folder, cache=cache, batch_size=16, workers=0, progress=False, **FAST)
    assert first.n_computed == fwd.n == len(load_dataset(folder)) > 0
    for data in (tmp_path / "tar", str(tmp_path / "tar" / "train-{000000..000002}.tar"), tmp_path / "pq"):
        d = load_dataset(data)
        r = extract(d, cache=cache, batch_size=16, workers=0, progress=False, **FAST)
        assert (r.n_computed, r.n_skipped) == (0, 0) and r.n_cached == len(set(d.keys()))
    assert fwd.n == first.n_computed  # not one forward pass after the folder's
    tar, pqd, files = (load_dataset(p) for p in (tmp_path / "tar", tmp_path / "pq", folder))
    assert set(tar.keys()) == set(pqd.keys()) == set(files.keys())
    assert tar.has_split and pqd.has_split and tar.classes == pqd.classes == files.classes
    assert sorted(zip(tar.keys(), tar.labels, tar.splits)) == sorted(zip(files.keys(), files.labels, files.splits))
    assert len(shards) == 6 and tar.ids[0] == "test-000000.tar:000000.jpg"


# ----------------------------------------------------------------- 1. tar forms and labels
@pytest.mark.parametrize("label", ["cls", "txt", "label"])
def test_tar_labels_from_cls_txt_or_json(tmp_path, label):
    src = write_digits(tmp_path / "digits", per_class=3, classes=3)
    write_shards(src, tmp_path / "tar", per_shard=4, label=label)
    d = load_dataset(tmp_path / "tar")
    assert len(d) == 9 and d.splits is None
    if label == "cls":
        assert d.classes == ["0", "1", "2"]  # class indices
    files = load_dataset(src)
    assert sorted(zip(d.keys(), d.labels)) == sorted(zip(files.keys(), files.labels))


def test_label_key_picks_the_json_field_and_missing_labels_are_named(tmp_path, capsys):
    src = write_digits(tmp_path / "digits", per_class=2, classes=2)
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tf:
        for j, (f, lab, _) in enumerate(_files(src)):
            tf.add(f, arcname=f"{j:04d}.png")
            doc = {"species": f"c{lab}"} if j else {"other": 1}  # sample 0000 has no species
            _add(tf, f"{j:04d}.json", json.dumps(doc).encode())
    with pytest.warns(UserWarning, match=r"skipped s\.tar:0000\.png: no label"):
        d = load_dataset(path, label_key="species")
    assert len(d) == 3 and set(d.labels) == {"c0", "c1"}
    code = main(["extract", str(path), "--label-key", "species", "--cache", str(tmp_path / "c"), *CLI_FAST])
    err = capsys.readouterr().err
    assert code == 0 and "fne: warning: skipped s.tar:0000.png: no label" in err and "Traceback" not in err
    with pytest.warns(UserWarning, match="no label"):  # the Python verbs take it as `label_key`
        r = fne.load_rows(path, label_key="species", cache=str(tmp_path / "c"), **FAST)
    assert list(r.y) == d.labels and list(r.keys) == d.keys()
    with pytest.raises(DataError, match="^label_key='species' is for DATA given by name; the Dataset 's' has"):
        fne.load_rows(d, label_key="species", cache=str(tmp_path / "c"), **FAST)


@pytest.mark.parametrize("kind", [tarfile.LNKTYPE, tarfile.SYMTYPE])
def test_a_label_member_that_links_to_another_is_its_targets_label(tmp_path, kind):
    """A .cls member that is a hard or symbolic link to an earlier sample's .cls read as "no label"
    (the sample skipped), where an image member that is a link is its target's bytes."""
    src = write_digits(tmp_path / "digits", per_class=1, classes=2)
    path = tmp_path / "s.tar"
    (f0, _, _), (f1, _, _) = _files(src)[:2]
    with tarfile.open(path, "w") as tf:
        tf.add(f0, arcname="a.png")
        _add(tf, "a.cls", b"7")
        tf.add(f1, arcname="b.png")
        link = tarfile.TarInfo("b.cls")
        link.type, link.linkname = kind, "a.cls"
        tf.addfile(link)
    d = load_dataset(path)
    assert len(d) == 2 and d.labels == ["7", "7"]


@pytest.mark.parametrize("key", ["png", "JPG", ".jpeg"])
def test_a_label_key_naming_the_images_extension_is_refused(tmp_path, key):
    """label_key="png" on tar shards read each image as its sample's label, then said "no images in its
    1 tar file(s)", which did not say why."""
    src = write_digits(tmp_path / "digits", per_class=2, classes=2)
    write_shards(src, tmp_path / "tar", per_shard=4)
    with pytest.raises(DataError, match=rf"label_key '{re.escape(key)}' is the images' extension: give the extension of "
                                        r"the label members \(cls, txt, ...\)"):
        load_dataset(tmp_path / "tar", label_key=key)


def _two_labels(tmp_path: Path, per_class: int = 3) -> tuple[Path, Path]:
    """(an image folder of 2 digits, a tar of its images labelled c0 / c1 in .json `species` and
    0 / 1 in .cls)."""
    src = write_digits(tmp_path / "digits", per_class=per_class, classes=2)
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tf:
        for j, (f, lab, _) in enumerate(_files(src)):
            tf.add(f, arcname=f"{j:04d}.png")
            _add(tf, f"{j:04d}.json", json.dumps({"species": f"c{lab}"}).encode())
            _add(tf, f"{j:04d}.cls", lab.encode())  # labels the model was not fitted on: 0, 1
    return src, path


def test_predict_reads_labels_where_the_model_was_fitted_to_find_them(tmp_path, capsys):
    """A model fitted with label_key: predict reads DATA's labels with it unless given one (a
    .cls member holding other labels is not taken instead), honours another one given with a
    warning, and does not apply it to an image folder (which takes none)."""
    import pandas as pd

    src, path = _two_labels(tmp_path)
    kw = dict(cache=str(tmp_path / "c"), progress=False, workers=0)
    fne.fit(path, out=tmp_path / "run", label_key="species", extract_missing=True, splits=1, **kw, **FAST)
    r = fne.predict(tmp_path / "run", path, out=tmp_path / "p.csv", **kw)
    assert r["n_scored"] == r["n"] == 6 and r["accuracy"] is not None
    assert sorted(pd.read_csv(tmp_path / "p.csv")["true"]) == ["c0"] * 3 + ["c1"] * 3
    assert main(["predict", str(tmp_path / "run"), str(path), "--out", str(tmp_path / "q.csv"), "--cache",
                 str(tmp_path / "c"), "--workers", "0", "--no-progress"]) == 0
    assert "accuracy" in capsys.readouterr().out  # the command line alike
    with pytest.warns(UserWarning, match=r"read with label key 'cls', not 'species' as .*run was fitted with"):
        r = fne.predict(tmp_path / "run", path, out=tmp_path / "p.csv", label_key="cls", **kw)
    assert r["n_scored"] == 0 and sorted(pd.read_csv(tmp_path / "p.csv")["true"].astype(str)) == ["0"] * 3 + ["1"] * 3
    r = fne.predict(tmp_path / "run", src, out=tmp_path / "p.csv", **kw)  # a folder: no label key to apply
    assert r["n"] == 6 and r["n_scored"] == 0


def test_predict_with_a_train_run_reads_labels_where_it_was_trained_to_find_them(tmp_path):
    src, path = _two_labels(tmp_path, per_class=5)
    fne.train(path, "frozen", tmp_path / "run", label_key="species", epochs=1, val_fraction=0.3, image_size=32,
              workers=0, progress=False, arch=FAST["arch"], weights="random")
    r = fne.predict(tmp_path / "run", path, out=tmp_path / "p.csv", workers=0, progress=False)
    assert r["n_scored"] == r["n"] == 10  # not the .cls labels, which it has no class of


def test_split_from_a_member_and_from_a_shard_folder(tmp_path):
    src = write_digits(tmp_path / "digits", per_class=3, classes=2)
    path = tmp_path / "mixed.tar"
    with tarfile.open(path, "w") as tf:
        for j, (f, lab, _) in enumerate(_files(src)):
            tf.add(f, arcname=f"{j:04d}.png")
            _add(tf, f"{j:04d}.json", json.dumps({"label": lab, "split": "test" if j % 3 == 0 else "train"}).encode())
    d = load_dataset(path)
    assert d.splits == ["test" if j % 3 == 0 else "train" for j in range(6)]
    split_src = write_digits(tmp_path / "split", per_class=6, classes=2, split=True)
    for split in ("train", "test"):
        (tmp_path / "byfolder" / split).mkdir(parents=True)
        write_shards(split_src / split, tmp_path / "byfolder" / split, per_shard=100)
    d = load_dataset(tmp_path / "byfolder")
    assert sorted(set(d.splits)) == ["test", "train"] and d.splits.count("test") == 4
    (tmp_path / "byfolder" / "train").rename(tmp_path / "byfolder" / "validation")  # validation + test: val trains
    d = load_dataset(tmp_path / "byfolder")
    assert sorted(set(d.splits)) == ["test", "train"] and (d.splits.count("test"), d.splits.count("train")) == (4, 8)


def test_members_with_a_bad_label_or_split_are_skipped_naming_them(tmp_path):
    """A tar sample with unreadable .json, a .cls that is not UTF-8 text, an unknown .split or a
    .json label that is a list, a Parquet row with a ClassLabel index past the names or an unknown split: each skipped with one
    warning naming `file:member`; the other members are read."""
    src = write_digits(tmp_path / "digits", per_class=2, classes=2)
    items = _files(src)
    tar = tmp_path / "s.tar"
    extra = {0: ("json", b"{not json"), 1: ("cls", b"\xff\xfe"), 2: ("split", b"holdout"), 3: ("json", b'{"label": [1, 2]}')}
    with tarfile.open(tar, "w") as tf:
        for j, (f, lab, _) in enumerate([*items, items[0]]):
            tf.add(f, arcname=f"{j:04d}.png")
            if j not in (1, 3):
                _add(tf, f"{j:04d}.cls", lab.encode())
            if j in extra:
                _add(tf, f"{j:04d}.{extra[j][0]}", extra[j][1])
    with pytest.warns(UserWarning) as said:
        d = load_dataset(tar)
    assert [str(w.message) for w in said] == [
        "skipped s.tar:0000.png: bad .json (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        "skipped s.tar:0001.png: label is not text",
        "skipped s.tar:0002.png: split 'holdout' is not train, test or validation",
        "skipped s.tar:0003.png: label [1, 2] is not a single value"]
    assert d.ids == ["s.tar:0004.png"] and d.labels == [items[0][1]]
    meta = {b"huggingface": json.dumps({"info": {"features": {
        "label": {"_type": "ClassLabel", "names": ["a", "b"]}}}}).encode()}
    table = pa.table({"image": [f.read_bytes() for f, _, _ in items], "label": [0, 5, 1, 1],
                      "split": ["train", "train", "bogus", "test"]}).replace_schema_metadata(meta)
    pq.write_table(table, tmp_path / "p.parquet")
    with pytest.warns(UserWarning) as said:
        d = load_dataset(tmp_path / "p.parquet")
    assert [str(w.message) for w in said] == ["skipped p.parquet:1: label 5 outside the 2 class names",
                                              "skipped p.parquet:2: split 'bogus' is not train, test or validation"]
    assert (d.ids, d.labels, d.splits, d.classes) == (["p.parquet:0", "p.parquet:3"], ["a", "b"], ["train", "test"],
                                                      ["a", "b"])
    # names written by hand as one string: the classes were its letters ("ab": a and b)
    meta = {b"huggingface": json.dumps({"info": {"features": {
        "label": {"_type": "ClassLabel", "names": "ab"}}}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "s.parquet")
    with pytest.raises(DataError, match=r"s\.parquet: the ClassLabel names of column 'label' are str 'ab', not a list"):
        load_dataset(tmp_path / "s.parquet")


def test_parquet_forms_and_refusals(tmp_path):
    """An image column of any name holding bytes; a damaged Parquet file beside a good one is
    skipped with one line saying so (it had no rows to read, so not "its members before that");
    no image column, or no column `label_key` names, stops in one line naming the file."""
    items = _files(write_digits(tmp_path / "digits", per_class=2, classes=2))
    (tmp_path / "f").mkdir()
    pq.write_table(pa.table({"pixels": [f.read_bytes() for f, _, _ in items], "label": [lab for _, lab, _ in items]}),
                   tmp_path / "f" / "a.parquet")
    (tmp_path / "f" / "b.parquet").write_bytes(b"PAR1 and then not Parquet")
    with pytest.warns(UserWarning) as said:
        d = load_dataset(tmp_path / "f")
    assert len(said) == 1 and str(said[0].message).startswith("b.parquet: unreadable Parquet file (")
    assert str(said[0].message).endswith("); skipped")
    assert d.ids == [f"a.parquet:{k}" for k in range(4)] and d.labels == [lab for _, lab, _ in items]
    with pytest.raises(DataError, match=r"a\.parquet: no label column 'species' \(columns: pixels, label\)$"):
        load_dataset(tmp_path / "f" / "a.parquet", label_key="species")
    pq.write_table(pa.table({"x": [1, 2], "label": ["a", "b"]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n\.parquet: no image column \(bytes, or a \{bytes, path\} struct\) among "
                                        r"x, label$"):
        load_dataset(tmp_path / "n.parquet")


def test_data_that_is_no_parquet_file_is_named_as_given_in_the_error(tmp_path, monkeypatch, capsys):
    """`fne extract sub/x.parquet` of a file that is not Parquet warned of x.parquet, then stopped
    with "DATA x: no images in 1 parquet file(s)": its stem, a name the user never gave. The
    error names DATA as given now, and that its file could not be read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.parquet").write_bytes(b"not Parquet at all")
    for data in ("sub/x.parquet", "sub"):
        assert main(["extract", data, "--cache", str(tmp_path / "c"), "--no-progress", *CLI_FAST]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith("fne: warning: x.parquet: unreadable Parquet file (") and len(err) == 2
        assert err[1].startswith(f"fne extract: error: DATA {data}: none of its 1 Parquet file(s) can be read "
                                 f"({tmp_path / 'sub' / 'x.parquet'}: unreadable Parquet file (")
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    assert main(["extract", "empty.tar", "--cache", str(tmp_path / "c"), "--no-progress", *CLI_FAST]) == 2
    assert capsys.readouterr().err == "fne extract: error: DATA empty.tar: no images in its 1 tar file(s)\n"


def test_where_a_parquet_split_comes_from_is_said_with_the_options_it_leaves_unused(digits_split, tmp_path):
    """`--test-size` given for Parquet DATA with its own split: the warning says where that split
    is read, a split column or the files' names."""
    from fne.data.splits import not_applied
    from fne.options import FitOptions

    items = _files(digits_split)
    pq.write_table(pa.table({"image": [f.read_bytes() for f, _, _ in items], "label": [lab for _, lab, _ in items],
                             "split": [sp for _, _, sp in items]}), tmp_path / "col.parquet")
    (tmp_path / "named").mkdir()
    for part in ("train", "test"):
        pq.write_table(pa.table({"image": [f.read_bytes() for f, _, sp in items if sp == part],
                                 "label": [lab for _, lab, sp in items if sp == part]}),
                       tmp_path / "named" / f"{part}-00000.parquet")
    for data, where in ((tmp_path / "col.parquet", "the split column of its Parquet files"),
                        (tmp_path / "named", "its files' names, train-* and test-*")):
        with pytest.warns(UserWarning, match=rf"^DATA {data}: test_size=0.3 is not applied: DATA has its own split "
                                             rf"\({re.escape(where)}\)"):
            not_applied(load_dataset(data), FitOptions(test_size=0.3))


def test_shards_assign_whole_tars(tmp_path):
    src = write_digits(tmp_path / "digits", per_class=6, classes=4)
    write_shards(src, tmp_path / "tar", per_shard=3)
    d = load_dataset(tmp_path / "tar")
    owner = {}
    for m, s in zip(d.sources, shard_of(d, 3), strict=True):
        assert owner.setdefault(m.container, s) == s
    assert len(set(owner.values())) > 1


def test_a_long_parquet_row_group_is_sharded_in_blocks_of_rows(tmp_path, monkeypatch):
    """pandas' to_parquet writes one row group (up to 1,048,576 rows): --shard I/N gave all of
    it to one shard, the others none. Its rows go to shards in blocks of PARQUET_SHARD_ROWS."""
    import fne.data.shards

    monkeypatch.setattr(fne.data.shards, "PARQUET_SHARD_ROWS", 8)
    src = write_digits(tmp_path / "digits", per_class=10, classes=4)
    (f,) = write_parquet(src, tmp_path / "pq", rows_per_group=1000)  # 40 rows, one row group
    d = load_dataset(f)
    assert {m.a for m in d.sources} == {0} and len(d) == 40
    owner = {}
    for m, s in zip(d.sources, shard_of(d, 3), strict=True):
        assert owner.setdefault(m.b // 8, s) == s  # a block's rows stay together
    assert len(set(owner.values())) > 1
    assert sorted(i for k in range(3) for i in fne.data.shards.members(d, (k, 3))) == list(range(40))


def test_unknown_pattern_and_mixed_kinds_fail_in_one_line(tmp_path):
    with pytest.raises(DataError, match="do not exist"):
        load_dataset(str(tmp_path / "train-{000000..000003}.tar"))
    with pytest.raises(DataError, match=r"'\S*nothing\*\.tar': the pattern matches no file$"):
        load_dataset(str(tmp_path / "nothing*.tar"))
    src = write_digits(tmp_path / "digits", per_class=2, classes=2)
    write_shards(src, tmp_path / "both", per_shard=10)
    write_parquet(src, tmp_path / "both")
    with pytest.raises(DataError, match="mixes .tar and .parquet"):
        load_dataset(tmp_path / "both")
    shutil.copy(next((tmp_path / "both").glob("*.tar")), src / "stray.tar")
    files = load_dataset(src)  # still an image folder: the stray tar is not DATA
    assert len(files) == 4 and not any(i.endswith(".tar") for i in files.ids)



def test_a_file_that_is_no_tar_and_shards_half_named_by_split_fail_in_one_line(tmp_path):
    bad = tmp_path / "garbage.tar"
    bad.write_bytes(b"\x17" * 3000)
    with pytest.raises(DataError, match=rf"^{bad}: not a readable tar file \(.*\); WebDataset shards are plain \.tar$"):
        load_dataset(str(bad))
    src = write_digits(tmp_path / "digits", per_class=2, classes=2)
    shards = write_shards(src, tmp_path / "mixed", per_shard=2)
    shards[0].rename(shards[0].with_name("train-000000.tar"))
    shards[1].rename(shards[1].with_name("shard-1.tar"))
    with pytest.raises(DataError, match=rf"^DATA {tmp_path / 'mixed'}: some images have a split and some do not "
                                        r"\(e\.g\. shard-1\.tar:\d+\.png\); name every shard train-\* / test-\*, "
                                        r"or none$"):  # DATA as given
        load_dataset(tmp_path / "mixed")


# ----------------------------------------------------------------- 4. the manifest
def test_unchanged_shards_are_not_read_again(tmp_path, monkeypatch):
    src = write_digits(tmp_path / "digits", per_class=3, classes=2)
    shards = write_shards(src, tmp_path / "tar", per_shard=4)
    write_parquet(src, tmp_path / "pq", rows_per_group=2)
    for f in [*shards, *(tmp_path / "pq").iterdir()]:
        os.utime(f, (OLD, OLD))
    cache = str(tmp_path / "c")
    for data in (tmp_path / "tar", tmp_path / "pq"):
        keys = attach_keys(load_dataset(data), cache).keys()  # lists and hashes once
        extract(load_dataset(data), cache=cache, batch_size=4, workers=0, progress=False, **FAST)
        with monkeypatch.context() as m:
            def no_read(*a, **k):
                raise AssertionError("read a container member again")

            m.setattr(fne.data.containers.ContainerReader, "read", no_read)
            m.setattr(tarfile, "open", no_read)
            m.setattr(pq, "ParquetFile", no_read)
            again = load_dataset(data)  # listing remembered: no tar header or Parquet footer read
            assert attach_keys(again, cache).keys() == keys  # fit / export / predict
            r = extract(again, cache=cache, batch_size=4, workers=0, progress=False, **FAST)
            assert r.n_computed == 0 and r.n_cached == len(set(keys))
    # A changed shard is listed and hashed again; the others are not.
    with tarfile.open(shards[0], "a") as tf:
        tf.add(_files(src)[0][0], arcname="extra.png")
        _add(tf, "extra.cls", b"1")
    d = load_dataset(tmp_path / "tar")
    assert len(d) == 7 and any(i.endswith(":extra.png") for i in d.ids)


# ----------------------------------------------------------------- 5. bad members
def _hostile_containers(tmp_path: Path) -> tuple[Path, Path, list[str], list[str]]:
    bad, good = _hostile(tmp_path / "h")
    names = sorted(bad + good)
    tar = tmp_path / "hostile.tar"
    with tarfile.open(tar, "w") as tf:
        for j, n in enumerate(names):
            ext = Path(n).suffix
            tf.add(tmp_path / "h" / n, arcname=f"{j:04d}{ext}")
            _add(tf, f"{j:04d}.txt", b"x")
    table = pa.table({"image": [(tmp_path / "h" / n).read_bytes() for n in names], "label": ["x"] * len(names)})
    parquet = tmp_path / "hostile.parquet"
    pq.write_table(table, parquet, row_group_size=5)
    tar_bad = [f"hostile.tar:{j:04d}{Path(n).suffix}" for j, n in enumerate(names) if n in bad]
    pq_bad = [f"hostile.parquet:{j}" for j, n in enumerate(names) if n in bad]
    return tar, parquet, tar_bad, pq_bad


def test_listings_are_kept_in_the_cache_given(tmp_path, monkeypatch):
    """--cache keeps the containers' listings (and `hf:` downloads) beside its stores, not in
    $FNE_CACHE or the default cache, and the next command with that --cache reads no tar header."""
    src = write_digits(tmp_path / "digits", per_class=3, classes=2)
    for f in write_shards(src, tmp_path / "tar", per_shard=4):
        os.utime(f, (OLD, OLD))
    cache = tmp_path / "c"
    assert main(["extract", str(tmp_path / "tar"), "--cache", str(cache), "--no-progress", *CLI_FAST]) == 0
    assert len(list((cache / "manifests" / "containers").glob("*.json"))) == 2
    assert not (tmp_path / "fne-cache").exists()  # $FNE_CACHE (this test's) untouched

    def no_read(*a, **k):
        raise AssertionError("listed a tar again")

    monkeypatch.setattr(tarfile, "open", no_read)
    assert len(load_dataset(tmp_path / "tar", cache=cache)) == 6
    from fne.data.parquet import hf_folder

    assert hf_folder("hf:someone/digits", cache) == cache / "hf" / "someone--digits" / "default"


def test_fne_train_and_its_pipeline_steps_keep_listings_in_the_cache_given(tmp_path):
    """`fne train --cache` (`fne.train(cache=...)`, a pipeline's train step) lists tar shards
    through that cache's listings, as extract and fit do: nothing goes to $FNE_CACHE."""
    src = write_digits(tmp_path / "digits", per_class=6, classes=2)
    for f in write_shards(src, tmp_path / "tar", per_shard=6):
        os.utime(f, (OLD, OLD))
    fast = ["--arch", "efficientnet_lite0", "--weights", "random", "--epochs", "1", "--image-size", "32",
            "--workers", "0", "--val-fraction", "0", "--no-progress"]
    cache = tmp_path / "c"
    assert main(["train", str(tmp_path / "tar"), "--mode", "frozen", "--cache", str(cache),
                 "--out", str(tmp_path / "run"), *fast]) == 0
    assert len(list((cache / "manifests" / "containers").glob("*.json"))) == 2
    other = tmp_path / "c2"
    m = fne.train(tmp_path / "tar", "frozen", tmp_path / "run2", cache=other, arch="efficientnet_lite0",
                  weights="random", epochs=1, image_size=32, workers=0, val_fraction=0, progress=False)
    assert m["n_train"] == 9 and len(list((other / "manifests" / "containers").glob("*.json"))) == 2
    with pytest.raises(TypeError, match="cache must be a string"):
        fne.train(tmp_path / "tar", "frozen", tmp_path / "run3", cache=3)
    from fne.pipeline import runner

    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f"""[pipeline]\nname = "t"\nadvise = false\n\n[datasets.tar]\ndata = "{tmp_path / 'tar'}"\n\n"""
                        f"""[[backbones]]\narch = "efficientnet_lite0"\nweights = "random"\n\n"""
                        f"""[train]\nmodes = ["frozen"]\nepochs = 1\nimage_size = 32\nval_fraction = 0.0\n"""
                        f"""workers = 0\nprogress = false\n""")
    runner.run(pipeline, tmp_path / "out", str(tmp_path / "c3"), report=False, log=lambda s: None)
    assert (tmp_path / "out" / "tar" / "efficientnet_lite0-random" / "train-frozen-s0" / "metrics.json").is_file()
    assert not (tmp_path / "fne-cache").exists()  # $FNE_CACHE (this test's) untouched by all three


def test_fit_from_a_cache_folder_that_does_not_exist_keeps_no_listing_there(tmp_path, capsys):
    """Tar shards' listings are kept in the cache: a fit without --extract from a mistyped --cache
    says the folder does not exist before listing them, and makes no folder."""
    src = write_digits(tmp_path / "digits", per_class=3, classes=2)
    write_shards(src, tmp_path / "tar", per_shard=4)
    typo = tmp_path / "typo"
    assert main(["fit", str(tmp_path / "tar"), "--cache", str(typo), "--out", str(tmp_path / "run"), *CLI_FAST]) == 2
    assert (f"the images of {tmp_path / 'tar'} are not in the cache {typo}, a folder that does not exist; add them "
            f"with:") in capsys.readouterr().err
    assert not typo.exists() and not (tmp_path / "fne-cache").exists() and not (tmp_path / "run").exists()


def test_fit_of_tar_or_parquet_data_with_no_images_says_so_as_extract_does(tmp_path, capsys):
    """`fne fit empty.tar` from a cache folder that does not exist said its images were "not in
    the cache" (and to extract them), where `fne extract empty.tar` says DATA has no images: fit
    and export now say what extract says, of an empty tar or a Parquet file of no rows, naming
    DATA; a Parquet file with rows is still said to be not cached."""
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    pq.write_table(pa.table({"image": pa.array([], pa.binary()), "label": pa.array([], pa.string())}),
                   tmp_path / "zero.parquet")
    pq.write_table(pa.table({"image": [b"x"], "label": ["a"]}), tmp_path / "one.parquet")
    for data, kind in (("empty.tar", "tar"), ("zero.parquet", "Parquet")):
        said = []
        for verb in (["fit", "--out", str(tmp_path / "run")], ["export", "--out", str(tmp_path / "e.h5")], ["extract"]):
            assert main([verb[0], str(tmp_path / data), *verb[1:], "--cache", str(tmp_path / "none"), *CLI_FAST]) == 2
            said.append(capsys.readouterr().err.removeprefix(f"fne {verb[0]}: "))
        assert said == [f"error: DATA {tmp_path / data}: no images in its 1 {kind} file(s)\n"] * 3, said
    assert not (tmp_path / "run").exists() and not (tmp_path / "e.h5").exists()
    (tmp_path / "mix").mkdir()  # a Parquet file of no rows beside one that is no Parquet file
    (tmp_path / "mix" / "bad.parquet").write_bytes(b"not Parquet at all")
    shutil.copy(tmp_path / "zero.parquet", tmp_path / "mix")
    said = []
    for verb in (["fit", "--out", str(tmp_path / "run")], ["extract"]):
        assert main([verb[0], str(tmp_path / "mix"), *verb[1:], "--cache", str(tmp_path / "none"), *CLI_FAST]) == 2
        said.append(capsys.readouterr().err.splitlines()[-1].removeprefix(f"fne {verb[0]}: "))
    assert said[0] == said[1] and said[0].startswith(
        f"error: DATA {tmp_path / 'mix'}: no images in its 2 Parquet file(s) ({tmp_path / 'mix' / 'bad.parquet'}: "
        f"unreadable Parquet file ("), said
    assert main(["fit", str(tmp_path / "one.parquet"), "--out", str(tmp_path / "run"), "--cache",
                 str(tmp_path / "none"), *CLI_FAST]) == 2
    assert "one.parquet are not in the cache" in capsys.readouterr().err


def test_hostile_members_one_clean_line_each(tmp_path, capsys):
    tar, parquet, tar_bad, pq_bad = _hostile_containers(tmp_path)
    for data, bad in ((tar, tar_bad), (parquet, pq_bad)):
        code = main(["extract", str(data), "--cache", str(tmp_path / "c"), *CLI_FAST])
        out, err = capsys.readouterr()
        assert code == 0 and "Traceback" not in err and ".py:" not in err
        warned = [line for line in err.splitlines() if line.startswith("fne: warning: skipped ")]
        assert len(warned) == len([x for x in err.splitlines() if "warning" in x]) == 4  # a line a reason: bomb, empty, not an image, truncated
        assert all(any(f" {b}" in line for line in warned) for b in bad)  # each named
        assert f"{len(bad)} skipped" in out  # the good 7: computed from the tar, cached for Parquet
        assert ("7 computed" if data == tar else "7 already cached, 0 computed") in out


def test_truncated_tar_yields_its_good_members_and_names_the_break(tmp_path):
    src = write_digits(tmp_path / "digits", per_class=4, classes=2)
    (shard,) = write_shards(src, tmp_path / "tar", per_shard=100)
    data = shard.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.warns(UserWarning, match=r"cut\.tar: truncated"):
        d = load_dataset(cut)
    assert 0 < len(d) < 8
    whole = dict(zip(load_dataset(shard).ids, load_dataset(shard).keys(), strict=True))
    assert all(whole[i.replace("cut.tar", "data-000000.tar")] == k for i, k in zip(d.ids, d.keys(), strict=True))


def test_parquet_written_by_hugging_face_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    src = write_digits(tmp_path / "digits", per_class=3, classes=3)
    items = _files(src)
    names = ["zero", "one", "two"]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": f.read_bytes(), "path": f.name} for f, _, _ in items],
                                     "label": [int(lab) for _, lab, _ in items]}, features=features)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet"))
    ds.to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    d = load_dataset(tmp_path / "hub")
    assert d.classes == names and d.has_split and len(d) == 18
    assert set(d.keys()) == set(load_dataset(src).keys())


def test_the_hubs_data_layout_is_named_after_the_repo_not_data(tmp_path, monkeypatch):
    """A Hub dataset's `REPO/data/train-00000-of-00001.parquet`, given as the repo, its data/
    folder, a glob in it or one shard, is named REPO (summaries, reports and the run folders
    `fne advise` proposes read the name), as a folder of images is; before, all but the first
    were named `data` or `train-00000-of-00001`. A Parquet file or folder of another name keeps it."""
    repo = tmp_path / "flowers12"
    write_parquet(write_digits(tmp_path / "digits", per_class=2, classes=2), repo / "data")
    shard = next((repo / "data").glob("*.parquet"))
    for spec in (repo, repo / "data", f"{repo}/data/*.parquet", shard):
        assert load_dataset(spec).name == "flowers12", spec
    monkeypatch.chdir(repo / "data")
    assert load_dataset("*.parquet").name == load_dataset(".").name == "flowers12"
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(shard, mine / "petals.parquet")
    assert load_dataset(mine).name == "mine" and load_dataset(mine / "petals.parquet").name == "petals"


def test_hf_offline_says_what_to_download(tmp_path, monkeypatch, capsys):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # datasets 3 reads the first, 2.x the second
        if hasattr(datasets.config, flag):
            monkeypatch.setattr(datasets.config, flag, True)
    from fne.data import parquet

    code = main(["extract", "hf:someone/flowers-nowhere@train", "--cache", str(tmp_path / "c"), *CLI_FAST])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{parquet.hub_cli()} download someone/flowers-nowhere --repo-type dataset" in err


def test_a_missing_optional_package_names_this_distribution_not_pypis_fne(tmp_path, monkeypatch, capsys):
    # PyPI's `fne` is HPAI-BSC's package: `pip install 'fne[parquet]'` would install it, not the extra
    import sys

    from fne.data import parquet

    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if not installed
    with pytest.raises(DataError, match=r"pip install pyarrow \(or fne-toolkit\[parquet\]\)"):
        parquet._pq()
    monkeypatch.setitem(sys.modules, "datasets", None)
    code = main(["extract", "hf:someone/flowers-nowhere@train", "--cache", str(tmp_path / "c"), *CLI_FAST])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "pip install datasets, or fne-toolkit[hf]" in err and "'fne[" not in err


@pytest.mark.parametrize("version, cli", [("0.21.2", "huggingface-cli"), ("0.33.9", "huggingface-cli"),
                                          ("0.34.0", "hf"), ("1.0.0rc1", "hf"), ("2.4.0", "hf")])
def test_the_download_hint_names_the_hub_command_the_installed_version_has(version, cli, monkeypatch):
    import importlib.metadata

    from fne.data import parquet

    monkeypatch.setattr(importlib.metadata, "version", lambda name: version)
    assert parquet.hub_cli() == cli
    assert f"`{cli} download someone/x --repo-type dataset" in parquet.hf_download_hint("hf:someone/x")


# ----------------------------------------------------------------- whole shards per worker
def test_each_loader_worker_reads_whole_shards(tmp_path):
    from fne.data.lanes import container_batches

    src = write_digits(tmp_path / "digits", per_class=7, classes=3)
    write_shards(src, tmp_path / "tar", per_shard=5)  # 5 shards: 5, 5, 5, 5, 1 images
    d = load_dataset(tmp_path / "tar")
    todo = list(range(1, len(d)))
    batches = container_batches(d, todo, batch_size=2, workers=2)
    assert sorted(p for b in batches for p in b) == list(range(len(todo)))
    worker_of = {}  # the DataLoader hands batch k to worker k mod 2
    for k, b in enumerate(batches):
        for p in b:
            assert worker_of.setdefault(d.sources[todo[p]].container, k % 2) == k % 2
    for w in (0, 1):  # each worker reads its shards front to back
        mine = [d.sources[todo[p]] for k, b in enumerate(batches) if k % 2 == w for p in b]
        assert mine == sorted(mine, key=lambda m: (m.container, m.a))
    assert container_batches(load_dataset(src), todo, 2, 2) is None  # files: plain batches


def test_extract_with_workers_over_shards_stores_what_files_store(tmp_path):
    src = write_digits(tmp_path / "digits", per_class=4, classes=3)
    write_shards(src, tmp_path / "tar", per_shard=3, label="txt")
    r = extract(tmp_path / "tar", cache=str(tmp_path / "c"), batch_size=2, workers=2, progress=False, **FAST)
    assert r.n_computed == 12 and r.n_skipped == 0
    again = extract(src, cache=str(tmp_path / "c"), batch_size=4, workers=0, progress=False, **FAST)
    assert again.n_computed == 0 and again.n_cached == 12


def test_dry_run_names_the_hf_download(tmp_path, monkeypatch):
    from fne.data import parquet
    from fne.pipeline.runner import run

    monkeypatch.setattr(parquet, "_hf_to_parquet", lambda *a, **k: pytest.fail("a dry run tried to download"))

    toml = tmp_path / "p.toml"
    toml.write_text('[pipeline]\nname = "hf"\n\n[datasets.flowers]\ndata = "hf:someone/flowers-nowhere"\n\n'
                    '[[backbones]]\narch = "efficientnet_lite0"\nweights = "random"\n\n'
                    '[fit]\nfeatures = ["fne"]\nheads = ["svm"]\n')
    said = []
    run(toml, tmp_path / "out", str(tmp_path / "c"), dry_run=True, log=said.append)
    assert any("flowers: hf:someone/flowers-nowhere is not here yet" in s and f"{parquet.hub_cli()} download someone/flowers-nowhere"
               in s and f"to fill {tmp_path / 'c' / 'hf'}" in s for s in said)


@pytest.mark.parametrize("form", ["tar", "parquet"])
def test_jpegs_in_containers_take_the_device_decoder(tmp_path, monkeypatch, form):
    """decode="device" (run here on the CPU's decoder): JPEGs are known by their bytes, not their
    names, so Parquet cells (named by row number) and tar members alike reach the device decoder;
    the rows are those of the folder's own JPEGs."""
    from fne.extraction import reader

    folder = _flowers_subset(tmp_path / "flowers", per_class=1)
    (write_shards if form == "tar" else write_parquet)(folder, tmp_path / form)
    seen, real = [], reader.decode_jpegs
    monkeypatch.setattr(reader, "decode_jpegs", lambda raw, dev: seen.extend(raw) or real(raw, dev))
    kw = dict(cache=str(tmp_path / "c"), batch_size=8, workers=0, progress=False, decode="device", **FAST)
    r = extract(tmp_path / form, **kw)
    n = len(load_dataset(folder))
    assert r.n_computed == len(seen) == n > 0 and r.n_skipped == 0 and "devjpeg" in r.store
    assert extract(folder, **kw).n_computed == 0  # the same bytes, the same keys


# ----------------------------------------------------------------- kill -9
@pytest.mark.parametrize("form", ["tar", "parquet"])
def test_killed_extraction_over_containers_resumes(tmp_path, form):
    import signal
    import subprocess
    import sys
    import time

    from fne.cache.store import list_stores

    from .test_extract import KILL_SCRIPT

    src = write_digits(tmp_path / "digits", per_class=8, classes=3)
    data = tmp_path / form
    (write_shards if form == "tar" else write_parquet)(src, data, 6)
    cache = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(data), str(cache)])
    deadline, parts = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None and not parts:
        parts = [p for d in cache.glob("*/parts") for p in d.iterdir() if not p.name.startswith(".")]
        time.sleep(0.05)
    assert proc.poll() is None, "extraction finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (store,) = list_stores(str(cache))
    committed = len(store)
    assert 0 < committed < 24 and verify(store).problems == []
    resumed = extract(data, cache=str(cache), batch_size=4, workers=0, progress=False, **FAST)
    assert resumed.n_computed == 24 - committed and resumed.n_skipped == 0
    (store,) = list_stores(str(cache))
    assert set(store.index()) >= set(load_dataset(src).keys()) and verify(store).problems == []


def test_pipeline_subset_of_parquet_data_is_a_shard_of_the_same_images(tmp_path):
    from fne.pipeline.config import DatasetCfg
    from fne.pipeline.runner import materialise

    src = write_digits(tmp_path / "digits", per_class=6, classes=3, split=True)
    write_parquet(src, tmp_path / "pq")
    ds = DatasetCfg(key="d", data=str(tmp_path / "pq"), spec=str(tmp_path / "pq"), max_per_class=2)
    sub = load_dataset(materialise(ds, tmp_path / "out", None))
    full = load_dataset(tmp_path / "pq")
    assert len(sub) == 12 and sub.has_split and set(sub.keys()) <= set(full.keys())
    truth = dict(zip(full.keys(), zip(full.labels, full.splits)))
    assert all(truth[k] == (lab, s) for k, lab, s in zip(sub.keys(), sub.labels, sub.splits))


def test_hf_dataset_is_kept_as_parquet_and_read_offline_after(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    src = write_digits(tmp_path / "digits", per_class=3, classes=2, split=True)
    items = _files(src)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})

    def part(split):
        rows = [t for t in items if t[2] == split]
        return datasets.Dataset.from_dict({"image": [str(f) for f, _, _ in rows],
                                           "label": [int(lab) for _, lab, _ in rows]}, features=features)

    calls = []

    def hub(name, config=None, **k):
        calls.append((name, config))
        return datasets.DatasetDict({"train": part("train"), "test": part("test")})

    monkeypatch.setattr(datasets, "load_dataset", hub)
    monkeypatch.setattr(fne.network, "unreachable", lambda url, timeout=0: None)  # the Hub answers
    d = load_dataset("hf:someone/digits")
    assert calls == [("someone/digits", None)] and d.name == "digits" and d.classes == ["a", "b"]
    assert d.has_split and set(d.keys()) == set(load_dataset(src).keys())
    test = load_dataset("hf:someone/digits@test")  # from the cache: no second load
    assert calls == [("someone/digits", None)] and len(test) == 2 and test.splits is None
    with pytest.raises(DataError, match="no split 'validation'.*test, train"):
        load_dataset("hf:someone/digits@validation")


def test_parquet_rows_read_in_any_order_give_their_bytes(tmp_path, monkeypatch):
    import random

    src = write_digits(tmp_path / "digits", per_class=5, classes=2)
    write_parquet(src, tmp_path / "pq", rows_per_group=3)
    d = load_dataset(tmp_path / "pq")
    biggest = max(len(f.read_bytes()) for f, _, _ in _files(src))
    monkeypatch.setattr(fne.data.containers, "GROUP_CACHE_BYTES", 6 * biggest)  # about 2 groups of 3
    order = list(range(len(d))) * 2
    random.Random(0).shuffle(order)  # as `fne train` reads: shuffled, row groups evicted and read again
    rows = [f.read_bytes() for f, _, _ in _files(src)]  # write_parquet keeps this order
    assert all(d.read_bytes(i)[0] == rows[i] for i in order) and len(d.container._groups) <= 2


class _Decoded:
    """Wraps the Parquet file the reader opens: the most rows one pyarrow call decoded, and the
    rows decoded in all (a read the spy does not know fails the test rather than go uncounted)."""

    def __init__(self, monkeypatch):
        self.most = self.total = 0
        real, spy = fne.data.random_access.open_pages, self

        class File:
            def __init__(self, path):
                self.f = real(path)

            def read_row_group(self, *a, **k):
                return spy.count(self.f.read_row_group(*a, **k))

            def iter_batches(self, *a, **k):
                yield from (spy.count(b) for b in self.f.iter_batches(*a, **k))

            def __getattr__(self, name):
                assert not name.startswith("read"), f"an uncounted read: {name}"
                return getattr(self.f, name)

        monkeypatch.setattr(fne.data.random_access, "open_pages", File)

    def count(self, rows):
        self.most, self.total = max(self.most, rows.num_rows), self.total + rows.num_rows
        return rows


def test_a_long_parquet_row_group_is_decoded_a_slice_at_a_time(tmp_path, monkeypatch):
    """A row group read whole as a list of Python bytes took 3x the file's size per reading
    process (pandas writes up to 1,048,576 rows a group). Rows come a slice at a time: in order
    each row decoded once; shuffled, a group is read whole (as Arrow arrays) once, not per image."""
    import random

    monkeypatch.setattr(fne.data.containers, "PARQUET_SLICE_ROWS", 4, raising=False)
    src = write_digits(tmp_path / "digits", per_class=10, classes=4)
    write_parquet(src, tmp_path / "pq", rows_per_group=16)  # groups of 16, 16 and 8 rows
    rows = [f.read_bytes() for f, _, _ in _files(src)]
    d = load_dataset(tmp_path / "pq")
    assert sorted({m.a for m in d.sources}) == [0, 1, 2]
    spy = _Decoded(monkeypatch)
    assert [d.read_bytes(i)[0] for i in range(40)] == rows  # extract's order
    assert (spy.most, spy.total) == (4, 40)
    d = load_dataset(tmp_path / "pq")
    spy = _Decoded(monkeypatch)
    mine = [i for i in range(40) if i // 4 % 2 == 1]  # a loader worker's batches: every other one
    assert [d.read_bytes(i)[0] for i in mine] == [rows[i] for i in mine] and spy.total <= 40
    d = load_dataset(tmp_path / "pq")
    spy = _Decoded(monkeypatch)
    order = list(range(40)) * 3
    random.Random(1).shuffle(order)  # `fne train`'s order, every group kept (under GROUP_CACHE_BYTES)
    assert all(d.read_bytes(i)[0] == rows[i] for i in order)
    assert spy.most == 4 and spy.total <= 2 * 40  # each group passed partly at most once, then read whole once


def test_a_tar_key_of_two_members_of_one_name_is_skipped_and_links_read_their_target(tmp_path):
    """A tar appended to holds `0000.png` + `0000.cls` twice: the first image was paired with the
    second's label, silently (a mislabelled image); now that key is skipped, named. A hard link
    (tar's second name of a hard-linked file) or a symbolic link to an image member before it
    were dropped silently with their labels; now they read that member's bytes, and a link to no
    file in the tar is skipped, named."""
    items = _files(write_digits(tmp_path / "digits", per_class=2, classes=2))
    (_, la, _), (b, lb, _) = items[0], items[-1]
    assert la != lb
    tar = tmp_path / "s.tar"
    with tarfile.open(tar, "w") as tf:
        for j, (f, lab, _) in enumerate(items):
            tf.add(f, arcname=f"{j:04d}.png")
            _add(tf, f"{j:04d}.cls", lab.encode())
        for kind, name, target in ((tarfile.LNKTYPE, "hard.png", "0001.png"), (tarfile.SYMTYPE, "d/sym.png", "../0002.png"),
                                   (tarfile.SYMTYPE, "gone.png", "nowhere.png")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
            _add(tf, name.replace(".png", ".cls"), b"linked")
        tf.add(b, arcname="0000.png")  # the tar appended to: 0000 again, another image and label
        _add(tf, "0000.cls", lb.encode())
    with pytest.warns(UserWarning) as said:
        d = load_dataset(tar)
    assert "s.tar:0000.png" not in d.ids and "s.tar:gone.png" not in d.ids
    labels = dict(zip(d.ids, d.labels, strict=True))
    assert labels["s.tar:hard.png"] == labels["s.tar:d/sym.png"] == "linked"
    keys = dict(zip(d.ids, d.keys(), strict=True))
    assert keys["s.tar:hard.png"] == keys["s.tar:0001.png"] and keys["s.tar:d/sym.png"] == keys["s.tar:0002.png"]
    assert [str(w.message) for w in said] == [
        "skipped s.tar:0000.png: the tar holds two members named 0000.png: which image goes with which label is "
        "unknown; keep one",
        "skipped s.tar:gone.png: a symbolic link to nowhere.png, which is no file before it in the tar"]


def test_parquet_rows_without_image_bytes_are_skipped_by_every_verb(tmp_path, capsys):
    """A null image cell, or a {bytes, path} cell of a path only: `fne extract` skipped them, but
    `fne fit` (hashing every image) stopped with `cannot read p.parquet:0: image cell is empty`
    at every run; now the listing skips them, named in one line a reason, and fit runs."""
    items = _files(write_digits(tmp_path / "digits", per_class=3, classes=2))
    cells = [f.read_bytes() for f, _, _ in items]
    cells[0] = None
    pq.write_table(pa.table({"image": cells, "label": [lab for _, lab, _ in items]}), tmp_path / "p.parquet")
    structs = [{"bytes": c, "path": None} for c in cells[1:]] + [{"bytes": None, "path": "/x/1.png"}]
    pq.write_table(pa.table({"image": structs, "label": [lab for _, lab, _ in items]}), tmp_path / "h.parquet")
    for data, skipped, why in (("p.parquet", "p.parquet:0", "no image (an empty cell)"),
                               ("h.parquet", "h.parquet:5", "no image bytes in the cell (a path only)")):
        code = main(["fit", str(tmp_path / data), "--extract", "--features", "last", "--splits", "1",
                     "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "runs" / data), "--no-progress", *CLI_FAST])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert f"fne: warning: skipped {skipped}: {why}\n" in err and "Traceback" not in err
        assert json.loads((tmp_path / "runs" / data / "metrics.json").read_text())["n_train"] \
            + json.loads((tmp_path / "runs" / data / "metrics.json").read_text())["n_test"] == 5


def test_a_parquet_label_column_of_lists_is_no_class(tmp_path, capsys):
    """A multi-label `labels` column (list<int64>, the Hub's Sequence(ClassLabel)) made classes
    named `[0]` and `[0, 1]`, silently; now it is no label column: DATA is unlabelled (`fne
    extract` reads it), `fne fit` stops in one line naming the column and its type, and
    `--label-key` naming it stops so too."""
    items = _files(write_digits(tmp_path / "digits", per_class=2, classes=2))
    pq.write_table(pa.table({"image": [f.read_bytes() for f, _, _ in items], "labels": [[0], [0, 1], [1], [1]]}),
                   tmp_path / "m.parquet")
    d = load_dataset(tmp_path / "m.parquet")
    assert d.labels is None and len(d) == 4
    code = main(["fit", str(tmp_path / "m.parquet"), "--extract", "--cache", str(tmp_path / "c"),
                 "--out", str(tmp_path / "run"), "--no-progress", *CLI_FAST])
    assert code == 2 and capsys.readouterr().err.endswith(
        "its columns: image, labels (list<element: int64>: not one label an image)\n")
    with pytest.raises(DataError, match=r"m\.parquet: label column 'labels' holds list<element: int64> values, not "
                                        r"one label an image$"):
        load_dataset(tmp_path / "m.parquet", label_key="labels")


def test_parquet_columns_named_twice_bytes_as_text_and_binary_view(tmp_path):
    """An image or label column named twice stops in one line naming the file and the column
    (was pyarrow's KeyError); a `{bytes, path}` struct whose bytes are text is no image column (was
    a TypeError when its first image was read); a binary view column (Polars') is one."""
    items = _files(write_digits(tmp_path / "digits", per_class=2, classes=2))
    images, labels = [f.read_bytes() for f, _, _ in items], [lab for _, lab, _ in items]
    for names, twice in ((["image", "image", "label"], "image"), (["image", "label", "label"], "label")):
        cols = [pa.array(images), pa.array(images if names[1] == "image" else labels), pa.array(labels)]
        pq.write_table(pa.Table.from_arrays(cols, names=names), tmp_path / "twice.parquet")
        with pytest.raises(DataError, match=rf"twice\.parquet: 1 column name\(s\) appear more than once \({twice}\): "
                                            rf"which column to read is unknown; rename or drop the copies$"):
            load_dataset(tmp_path / "twice.parquet")
    pq.write_table(pa.table({"image": [{"bytes": "x", "path": None}] * 4, "label": labels}), tmp_path / "text.parquet")
    with pytest.raises(DataError, match=r"text\.parquet: no image column \(bytes, or a \{bytes, path\} struct\)"):
        load_dataset(tmp_path / "text.parquet")
    if not hasattr(pa, "binary_view"):
        return
    pq.write_table(pa.table({"image": pa.array(images, pa.binary_view()), "label": labels}), tmp_path / "view.parquet")
    d = load_dataset(tmp_path / "view.parquet")
    assert d.labels == labels and [d.container.read(m) for m in d.sources] == images


def test_a_parquet_split_column_of_bytes_is_read_as_its_text(tmp_path):
    """A binary `split` column (b"train", b"test") refused every row: `str(b"train")` is "b'train'"."""
    items = _files(write_digits(tmp_path / "digits", per_class=2, classes=2))
    words = [b"train", b"test"] * (len(items) // 2)
    pq.write_table(pa.table({"image": [f.read_bytes() for f, _, _ in items], "label": [lab for _, lab, _ in items],
                             "split": pa.array(words, pa.binary())}), tmp_path / "b.parquet")
    d = load_dataset(tmp_path / "b.parquet")
    assert len(d) == len(items) and d.splits == [w.decode() for w in words]


def test_a_parquet_split_column_of_numbers_is_refused_in_one_line_naming_the_column(tmp_path, monkeypatch):
    """A `split` column of integers (0/1): each row was skipped with its own "split 1 is not train,
    test or validation" until DATA had no image left; a listing an earlier fne kept so is listed
    again. A categorical (dictionary) column of the words is read as they are."""
    from fne.data.containers import manifest_dir

    items = _files(write_digits(tmp_path / "digits", per_class=2, classes=2))
    images, labels = [f.read_bytes() for f, _, _ in items], [lab for _, lab, _ in items]
    numbers = [k % 2 for k in range(len(items))]
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"image": images, "label": labels, "split": numbers}), path)
    said = (f"{path}: its split column holds int64 values, not split names: fne reads text such as train, test or "
            f"validation there (or, without the column, the file names: train-00000-of-00003.parquet)")
    with pytest.raises(DataError) as e:
        load_dataset(path, cache=tmp_path / "cache")
    assert str(e.value) == said
    # a listing the rule before kept of it (every row skipped for its split) is listed again
    old = tmp_path / "old.parquet"
    pq.write_table(pa.table({"image": images, "label": labels, "split": numbers}), old)
    os.utime(old, ns=(10**18, 10**18))  # listed long after it was written: not racy, so kept
    with monkeypatch.context() as m:
        m.setattr(fne.data.parquet, "_check_split_column", lambda schema, path: None)
        with pytest.raises(DataError, match="no images"), pytest.warns(UserWarning, match="skipped 4 images .split 0 is"):
            load_dataset(old, cache=tmp_path / "cache")
    [f] = [f for f in (manifest_dir(tmp_path / "cache") / "containers").glob("*.json")
           if json.loads(f.read_text())["path"] == str(old)]
    doc = json.loads(f.read_text())
    assert doc.pop("split_rule") == 2 and doc["bad"][0][1] == "split 0 is not train, test or validation"
    f.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="its split column holds int64 values"):
        load_dataset(old, cache=tmp_path / "cache")
    words = pa.array(["train", "test"] * (len(items) // 2)).dictionary_encode()
    pq.write_table(pa.table({"image": images, "label": labels, "split": words}), tmp_path / "c.parquet")
    assert load_dataset(tmp_path / "c.parquet", cache=tmp_path / "cache").splits == ["train", "test"] * (len(items) // 2)


def test_a_tar_member_named_in_latin1_has_its_name_escaped(tmp_path):
    """A member whose name is not UTF-8 (a Latin-1 tar; `tarfile` holds it as surrogates) is read,
    its id escaped (`caf\\xe9.png`), as a file's is: its raw name failed fit's records."""
    items = _files(write_digits(tmp_path / "digits", per_class=2, classes=2))
    with tarfile.open(tmp_path / "s.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for k, (f, lab, _) in enumerate(items):
            stem = f"caf\udce9{k}" if k == 0 else f"{k}"  # written as the byte 0xE9 (surrogateescape)
            _add(tf, f"{stem}.png", f.read_bytes())
            _add(tf, f"{stem}.cls", lab.encode())
    d = load_dataset(tmp_path / "s.tar")
    assert d.ids[0] == "s.tar:caf\\xe90.png" and d.labels == [lab for _, lab, _ in items]
    assert d.container.read(d.sources[0]) == items[0][0].read_bytes()


def _garbled_parquet(path: Path, column: int) -> None:
    """A Parquet file of 4 rows (image, label) at `path`, its `column`'s first page header garbled."""
    pq.write_table(pa.table({"image": [b"x" * 100] * 4, "label": ["a", "b"] * 2}), path, compression="none")
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(column)
    at = chunk.dictionary_page_offset or chunk.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[at:at + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))


def test_a_damaged_parquet_page_header_is_said_in_one_line(tmp_path):
    """pyarrow's text for a garbled page header spans lines and holds the byte it could not read;
    the line that skips the file, and the refusal when no file is left, keep to one line."""
    _garbled_parquet(tmp_path / "p.parquet", column=1)
    with pytest.warns(UserWarning) as said, pytest.raises(DataError) as e:
        load_dataset(tmp_path / "p.parquet")
    for text in (str(said[0].message), str(e.value)):
        assert "unreadable from row 0 (Couldn't deserialize thrift" in text and text.isprintable()


def test_a_damaged_parquet_image_page_skips_its_rows_in_one_line(tmp_path):
    """A garbled page of the image column (not read when listing: its statistics say no cell is
    null) fails each of its rows when read, with pyarrow's text on one line (the skip's reason)."""
    _garbled_parquet(tmp_path / "p.parquet", column=0)
    d = load_dataset(tmp_path / "p.parquet")
    with pytest.raises(OSError) as e:
        d.container.read(d.sources[0])
    assert str(e.value).startswith("row group 0: ") and str(e.value).isprintable()
