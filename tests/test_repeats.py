"""A problem met many times (per image, row, batch, split or epoch) is said once: a line per
reason with a count, the first few names and where the rest are (`fne.progress.say_skipped`)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fne.cli import main
from fne.data.datasets import load_dataset
from fne.progress import first_few, say_skipped

from .conftest import write_digits

CLI_FAST = ["--arch", "efficientnet_lite0", "--weights", "random", "--precision", "fp32", "--storage-dtype",
            "float32", "--workers", "0", "--no-progress"]


def _run(fn, *a, **k) -> tuple[list[str], object]:
    """(the warnings `fn` gives, every one: no filter dedupes them; what it returns)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*a, **k)
    return [str(w.message) for w in caught], out


def _said(fn, *a, **k) -> list[str]:
    return _run(fn, *a, **k)[0]


def test_first_few_names_five_and_counts_the_rest():
    assert first_few(["a", "b"]) == "a, b"
    assert first_few([f"x{i}" for i in range(12)]) == "x0, x1, x2, x3, x4 and 7 more"


def test_say_skipped_is_one_line_per_reason_with_a_count_and_where_the_rest_are():
    items = [(f"c/{i}.jpg", "not an image file") for i in range(12)] + [("c/e.jpg", "empty file (0 bytes)")]
    assert _said(say_skipped, items, "; each named in R") == [
        "skipped 12 images (not an image file): c/0.jpg, c/1.jpg, c/2.jpg, c/3.jpg, c/4.jpg and 7 more; each named in R",
        "skipped c/e.jpg: empty file (0 bytes)"]
    assert _said(say_skipped, items[:3], "; each named in R") == [  # all shown: no pointer to the rest
        "skipped 3 images (not an image file): c/0.jpg, c/1.jpg, c/2.jpg"]
    alike = [(f"t{n}.jpg", f"OSError: image file is truncated ({n} bytes not processed)") for n in (44, 7, 44)]
    assert _said(say_skipped, alike) == [  # one reason but for its numbers: one line, each with its own
        "skipped 3 images (OSError: image file is truncated (44 bytes not processed), and alike): t44.jpg (OSError: "
        "image file is truncated (44 bytes not processed)), t7.jpg (OSError: image file is truncated (7 bytes not "
        "processed)), t44.jpg (OSError: image file is truncated (44 bytes not processed))"]
    assert _said(say_skipped, [("a.tif", "black"), ("b.tif", "black")], skipped=False) == ["black (2 images: a.tif, b.tif)"]
    assert _said(say_skipped, []) == []


def test_ten_thousand_empty_label_cells_are_one_line(digits_folder, tmp_path):
    """A CSV whose label column is mostly empty said 'skipped ... no label' once per row."""
    files = sorted(digits_folder.rglob("*.png"))[:2]
    rows = [f"{files[0]},0", f"{files[1]},1"] + [f"{files[k % 2]}," for k in range(10_000)]
    (tmp_path / "l.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    said, d = _run(load_dataset, tmp_path / "l.csv")
    assert len(said) == 1 and said[0].startswith(f"skipped 10000 images (no label): l.csv:4 ({files[0]}), ")
    assert said[0].endswith(" and 9995 more")
    assert len(d) == 2 and len(d.left_out) == 10_000  # each still named: the dataset's left_out


def test_extract_names_many_unreadable_images_in_one_line_and_each_in_its_record(tmp_path, capsys):
    root = write_digits(tmp_path / "d", per_class=2, classes=2)
    for k in range(8):
        (root / "0" / f"bad{k}.jpg").write_text(f"not an image {k}\n")  # 8 contents: 8 skipped
    assert main(["extract", str(root), "--cache", str(tmp_path / "c"), *CLI_FAST]) == 0
    out, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if x.startswith("fne: warning:")]
    assert len(lines) == 1 and "8 skipped (named above)" in out
    assert lines[0].startswith("fne: warning: skipped 8 images (not an image file): 0/bad0.jpg, 0/bad1.jpg, ")
    record = Path(lines[0].split("; each named in ")[1].removesuffix(" (skipped)"))
    assert "and 3 more" in lines[0] and sorted(json.loads(record.read_text())["skipped"]) == [
        f"0/bad{k}.jpg" for k in range(8)]
    assert main(["fit", str(root), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "run"), "--splits", "1",
                 "--test-size", "0.5", *CLI_FAST]) == 0  # fit says them once too
    assert capsys.readouterr().err.count("fne: warning: skipped 8 images (not an image file): 0/bad0.jpg") == 1


def test_float_images_read_black_are_one_line_not_one_each(tmp_path, capsys):
    for i in range(7):
        (tmp_path / "f" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 12), 0.1 + i / 10, dtype=np.float32)).save(tmp_path / "f" / "ab"[i % 2] / f"{i}.tif")
    assert main(["extract", str(tmp_path / "f"), "--cache", str(tmp_path / "c"), *CLI_FAST]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("fne: warning:")]
    assert lines == ["fne: warning: a float image with values in 0-1 is read as 0-255, so it comes out black; save it "
                     "as an 8- or 16-bit image (7 images: a/0.tif, a/2.tif, a/4.tif, a/6.tif, b/1.tif and 2 more)"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_many_dangling_links_are_one_line(tmp_path):
    root = write_digits(tmp_path / "d", per_class=2, classes=3)
    links = [root / str(k % 3) / f"link{k}.png" for k in range(9)]  # in every class folder
    for link in links:
        os.symlink(root / "gone.png", link)
    said, d = _run(load_dataset, root)
    assert said == ["skipped 9 images (a symbolic link to nothing): " + first_few(sorted(map(str, links)))]
    assert len(d.left_out) == 9


def test_report_names_many_foreign_metrics_files_in_one_line(tmp_path):
    """A RUN_DIR beside another program's 40 runs: one line for them, not 40."""
    from fne.reporting.report import report

    from .test_report import make_runs

    runs = make_runs(tmp_path / "runs")
    for k in range(40):
        (tmp_path / "other" / f"r{k:02d}").mkdir(parents=True)
        (tmp_path / "other" / f"r{k:02d}" / "metrics.json").write_text('{"loss": 0.3}')
    said, r = _run(report, [runs, tmp_path / "other"], tmp_path / "rep", figures=False)
    other = tmp_path / "other"
    assert said == [f"skipped 40 files (no accuracy: not the metrics.json of a `fne fit` or `fne train` run): "
                    f"{first_few([str(other / f'r{k:02d}' / 'metrics.json') for k in range(40)])}"]
    assert r["datasets"]


def test_said_once_drops_a_repeated_warning_from_anywhere_only_within():
    from fne.progress import said_once

    def twice(text):  # two lines of code: Python's own filter would show both
        warnings.warn(text, stacklevel=1)
        warnings.warn(text, stacklevel=1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with said_once():
            twice("a")
            twice("b")
        twice("a")  # after it: shown again
    assert [str(w.message) for w in caught] == ["a", "b", "a", "a"]


def test_said_once_drops_a_repeated_note_only_within(capsys):
    """A `note` line (fne extract's of a `fne train` network at another size) is said by each step
    of `fne run` that reads those rows: within `said_once` (a run, a command) once, after it again."""
    from fne.progress import note, said_once

    with said_once():
        note("note: a")
        note("note: a")
        note("note: b")
    note("note: a")
    assert capsys.readouterr().out == "note: a\nnote: b\nnote: a\n"


def test_fne_run_says_a_warning_each_step_would_repeat_once(tmp_path, capsys):
    """Each step of a pipeline reads DATA (and its rows) again: its rows with no label, and the
    faint layers of random weights, were said again at every step (6 and 4 times here)."""
    root = write_digits(tmp_path / "d", per_class=6, classes=2)
    rows = [f"{f.relative_to(tmp_path)},{f.parent.name if k % 3 else ''}" for k, f in enumerate(sorted(root.rglob("*.png")))]
    (tmp_path / "l.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "p.toml").write_text(f"""[pipeline]
name = "rep"
out = "{tmp_path / 'runs'}"
seeds = [0]
report = false

[datasets.l]
data = "{tmp_path / 'l.csv'}"

[[backbones]]
arch = "efficientnet_lite0"
weights = "random"
precision = "fp32"

[fit]
features = ["last"]
heads = ["svm", "logreg"]
splits = 2
test_size = 0.25
""")
    assert main(["run", str(tmp_path / "p.toml"), "--cache", str(tmp_path / "c"), "--workers", "0",
                 "--no-progress"]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("fne: warning:")]
    assert sum("skipped 4 images (no label)" in x for x in lines) == 1
    assert sum("too small for float16 storage" in x for x in lines) == 1
    assert len(lines) == len(set(lines))


def test_an_interrupted_extraction_still_names_the_images_it_skipped(tmp_path, monkeypatch):
    """Said once the run ends: a run stopped by Ctrl-C says what it met before it stopped."""
    from fne.extraction import extract as extract_mod

    root = write_digits(tmp_path / "d", per_class=2, classes=2)
    for k in range(3):
        (root / "1" / f"bad{k}.jpg").write_text(f"not an image {k}\n")
    real = extract_mod._skip

    def skip_then_stop(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(extract_mod, "_skip", skip_then_stop)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("always")
        extract_mod.extract(str(root), cache=str(tmp_path / "c"), arch="efficientnet_lite0", weights="random",
                            precision="fp32", workers=0, batch_size=16, progress=False)
    assert [str(w.message) for w in caught if "skipped" in str(w.message)] == [
        "skipped 3 images (not an image file): 1/bad0.jpg, 1/bad1.jpg, 1/bad2.jpg"]


def test_fit_names_an_image_its_extraction_could_not_read_though_no_key_records_it(tmp_path, monkeypatch):
    """An image that reads when hashed and fails when extracted (a flaky network disk) has no bad
    record; `fit --extract` names it all the same, once (its extraction leaves the naming to fit),
    and leaves it out."""
    from fne.data.dataset import Dataset
    from fne.linear.fit import fit

    root = write_digits(tmp_path / "d", per_class=4, classes=2)
    real, calls = Dataset.read_bytes, {}

    def flaky(self, i):
        calls[i] = calls.get(i, 0) + 1
        if self.ids[i] == "1/d0001.png" and calls[i] > 1:
            raise OSError(5, "Input/output error")
        return real(self, i)

    monkeypatch.setattr(Dataset, "read_bytes", flaky)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = fit(str(root), out=tmp_path / "run", cache=str(tmp_path / "c"), extract_missing=True, features="last",
                splits=1, test_size=0.5, arch="efficientnet_lite0", weights="random", precision="fp32",
                storage_dtype="float32", workers=0, progress=False)
    assert [str(w.message) for w in caught if "d0001" in str(w.message)] == [
        "skipped 1/d0001.png: cannot read: Input/output error"]
    # left out, as a recorded unreadable image is (it raised KeyError deep in fit); counted in DATA's
    # listing, as train counts it, and named
    assert (m["n_images"], m["skipped"], m["n_train"] + m["n_test"]) == (
        8, {"1/d0001.png": "cannot read: Input/output error"}, 7)
