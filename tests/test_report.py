"""fne report: the numbers in report.md / report.html / report.json are metrics.json's values."""

from __future__ import annotations

import base64
import csv
import json
import re
import warnings
from html import unescape
from pathlib import Path

import numpy as np
import pytest

from fne.errors import FneError
from fne.reporting.render import TABLE_HEAD
from fne.reporting.report import report, table_text

CLASSES = ["cat", "dog", "fox"]


def fake_metrics(method: str, acc: float, acc_std: float, mca: float, mca_std: float, *, kind: str = "fit",
                 seconds: float = 1.0, extract: float | None = 10.0, dataset: str = "pets", weights="imagenet",
                 confusion=None, splits=None, **extra) -> dict:
    m = {
        "kind": kind, "method": method, "dataset": dataset, "data": f"/data/{dataset}",
        "accuracy": acc, "accuracy_std": acc_std, "mean_class_accuracy": mca, "mean_class_accuracy_std": mca_std,
        "splits": splits or [{"accuracy": acc - acc_std, "mean_class_accuracy": mca, "n_train": 30, "n_test": 10},
                             {"accuracy": acc + acc_std, "mean_class_accuracy": mca, "n_train": 30, "n_test": 10}],
        "n_splits": len(splits) if splits else 2, "n_train": 30, "n_test": 10, "n_images": 40,
        "classes": CLASSES, "arch": "vgg16", "weights": weights, "weights_fingerprint": f"{weights}-x",
        "precision": "fp32", "crop": "center", "confusion": confusion or [[9, 1, 0], [4, 6, 0], [0, 0, 10]],
        "device": "cpu", "machine": "testbox", "date": "2024-01-02T03:04:05+00:00",
        **({"fit_seconds": seconds, "extract_seconds": extract} if kind == "fit" else {"train_seconds": seconds}),
        **extra,
    }
    return m


def write_run(root: Path, name: str, m: dict) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(m))
    return d


def make_runs(root: Path) -> Path:
    write_run(root, "a/fne", fake_metrics("fne+svm", 0.912345, 0.0123, 0.9011, 0.0202, seconds=2.5, extract=40.0))
    write_run(root, "a/fc7", fake_metrics("fc7+svm", 0.87654, 0.0321, 0.9111, 0.0111, seconds=1.25, extract=40.0))
    write_run(root, "b/deeper/ft", fake_metrics(
        "train:finetune", 0.5, 0.0, 0.45, 0.0, kind="train", seconds=300.0,
        splits=[{"accuracy": 0.5, "mean_class_accuracy": 0.45, "n_train": 30, "n_test": 10}]))
    write_run(root, "c/other", fake_metrics("fne+svm", 0.70, 0.05, 0.69, 0.04, dataset="flowers"))
    # published references travel in pipeline.json (written by fne run)
    (root / "pipeline.json").write_text(json.dumps({"name": "t", "notes": ["a note for the header"], "datasets": {
        "pets": {"published": {"source": "Paper 2018, table 1", "values": {
            "fne+svm": {"mean": 89.2, "std": None}, "fc7+svm": {"mean": 89.6, "std": 0.4},
            "SotA at the time": {"mean": 91.6, "std": None}}}}}}))
    (root / "adv").mkdir()
    (root / "adv" / "advice.json").write_text(json.dumps({
        "recommendation": "finetune", "text": "Fine-tune.", "families": ["fine-tuning"], "dataset": "pets",
        "arch": "vgg16", "weights": "imagenet", "reasons": ["big set"], "images_per_class": 500.0,
        "similarity": {"judged": True, "max_softmax_mean": 0.61, "entropy_norm_mean": 0.3, "sample": 50}}))
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One report over the fake runs (figures are slow to draw on a busy 2-core machine)."""
    base = tmp_path_factory.mktemp("report")
    runs = make_runs(base / "runs")
    out = base / "rep"
    r = report([runs], out)
    return {"runs": runs, "out": out, "r": r, "md": (out / "report.md").read_text(),
            "html": (out / "report.html").read_text(), "json": json.loads((out / "report.json").read_text())}


def md_rows(md: str, dataset: str) -> dict[str, list[str]]:
    section = md.split(f"## {dataset}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_numbers_equal_metrics(built):
    runs, md, r = built["runs"], built["md"], built["r"]
    rows = md_rows(md, "pets")
    # every measured value, formatted as a percentage with one decimal, is metrics.json's
    for name, dirname in (("fne+svm", "a/fne"), ("fc7+svm", "a/fc7")):
        m = json.loads((runs / dirname / "metrics.json").read_text())
        acc, acc_ci, mca, mca_ci, pub, secs, ext, imgs, splits = rows[name]
        assert acc.strip("*") == f"{100 * m['accuracy']:.1f} ± {100 * m['accuracy_std']:.1f}"
        assert mca.strip("*") == f"{100 * m['mean_class_accuracy']:.1f} ± {100 * m['mean_class_accuracy_std']:.1f}"
        assert secs.strip("*") == f"{m['fit_seconds']:.2f}"
        assert ext.strip("*") == f"{m['extract_seconds']:.1f}"
        assert imgs == f"{m['n_images']} ({m['n_train']}/{m['n_test']})"
        assert splits == str(m["n_splits"])
    # report.json keeps the exact numbers
    data = built["json"]
    pets = next(d for d in data["datasets"] if d["dataset"] == "pets")
    by = {row["method"]: row for row in pets["rows"]}
    assert by["fne+svm"]["accuracy"] == 0.912345 and by["fc7+svm"]["mean_class_accuracy_std"] == 0.0111
    assert by["train:finetune"]["seconds"] == 300.0 and by["train:finetune"]["extract_seconds"] is None
    # a single split has no spread to print
    assert rows["train:finetune"][0] == "50.0"
    # datasets are separate sections, each from its own metrics
    assert md_rows(md, "flowers")["fne+svm"][0].strip("*") == "70.0 ± 5.0"
    assert r["datasets"][0]["dataset"] == "flowers"


def test_best_values_marked(built):
    rows = md_rows(built["md"], "pets")
    assert rows["fne+svm"][0].startswith("**")  # highest accuracy
    assert not rows["fc7+svm"][0].startswith("**")
    assert rows["fc7+svm"][5].startswith("**")  # fewest fit seconds
    assert not rows["fne+svm"][5].startswith("**")
    assert rows["fc7+svm"][2].startswith("**")  # highest mean class accuracy
    html = built["html"]
    best = re.findall(r"<td class='best' data-col='accuracy'>([^<]*)</td>", html)
    assert best == ["91.2 ± 1.2"]  # flowers has a single row: nothing to rank


def test_published_separate_and_labelled(built):
    md = built["md"]
    rows = md_rows(md, "pets")
    assert rows["fne+svm"][4] == "89.2 (published)"
    assert rows["fc7+svm"][4] == "89.6 ± 0.4 (published)"
    assert rows["train:finetune"][4] == "—"
    # a published-only method is its own labelled row with no measured values
    only = rows["SotA at the time (published only)"]
    assert only[:4] == ["—", "—", "—", "—"] and only[4] == "91.6 (published)"
    assert "Paper 2018, table 1" in md
    # the best-marking ignores published numbers (91.6 would beat every measurement)
    assert rows["fne+svm"][0].startswith("**")
    html = built["html"]
    assert "<td class='published'>89.2 <small>(published)</small></td>" in html
    # no published values for a dataset without references
    assert all(c[4] == "—" for c in md_rows(md, "flowers").values())


def test_header_figures_and_confusions(built):
    md, html = built["md"], built["html"]
    for text in ("backbone: vgg16: imagenet weights", "precision: fp32", "crop: center", "machine: testbox",
                 "date: 2024-01-02T03:04:05+00:00", "Note: a note for the header"):
        assert text in md
    assert "random" not in md.lower().split("## ")[0]  # no random-weights warning for imagenet runs
    # three figures per dataset, embedded as decodable PNGs: the HTML needs no other file
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(imgs) == 6
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert "report_files/" not in html
    # the most confused pair of the best method: dog -> cat, 4 of 10
    assert "- dog → cat: 4 (40 %)" in md
    # 91.2 ± 1.2 vs 87.7 ± 3.2 over 2 shared splits: the paired test cannot tell them apart
    assert "Highest accuracy, but no clear winner: **fne+svm**, accuracy 91.2 ± 1.2 %." in md
    assert "Measured winner" not in md


def test_the_winners_worst_classes_and_what_the_mean_class_column_is(built):
    """Beside the most confused pairs, the winner's classes of lowest recall, read off its confusion
    matrix (rows: true class): dog 6 of 10, cat 9 of 10; fox, all right, is not listed. The column's
    note says the ranking stays on accuracy."""
    md, html = built["md"], built["html"]
    pets = md.split("## pets\n", 1)[1].split("\n## ", 1)[0]
    lines = pets.split("Classes it recognises worst (recall: right of the test images):\n", 1)[1].split("\n\n")[0]
    assert lines.splitlines() == ["- dog: 60 % (6 of 10)", "- cat: 90 % (9 of 10)"]
    assert "<ul class='worst'><li>dog: 60 % (6 of 10)</li><li>cat: 90 % (9 of 10)</li></ul>" in html
    for text in (pets, html):
        assert "Mean class accuracy: the mean of the per-class recalls (balanced accuracy)" in text
        assert "the winner and its tests stay on accuracy" in text


def test_runs_recorded_without_the_mean_class_accuracy_still_report_it_as_a_dash(tmp_path):
    """A metrics.json written before fne kept the mean class accuracy (no field, no per-split
    figure, no class_recall): its cell is "—" in report.md, report.html and the console, alone
    or pooled over seeds, and its bar chart draws; a new run beside it shows its figure."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        old = fake_metrics("fc7+svm", 0.8, 0.0, 0.0, 0.0, seed=seed, splits=[{"accuracy": 0.8, "n_train": 30,
                                                                               "n_test": 10}])
        for k in ("mean_class_accuracy", "mean_class_accuracy_std"):
            del old[k]
        write_run(root, f"old{seed}", old)
    write_run(root, "old-alone", {k: v for k, v in fake_metrics("last+svm", 0.7, 0.0, 0.0, 0.0).items()
                                  if not k.startswith("mean_class") and k != "splits"})
    write_run(root, "new", fake_metrics("fne+svm", 0.9, 0.01, 0.85, 0.02))
    mixed = [fake_metrics("fc6+svm", 0.6, 0.0, 0.5, 0.0, seed=0), fake_metrics("fc6+svm", 0.6, 0.0, 0.0, 0.0, seed=1)]
    for s in mixed[1]["splits"]:  # pooled with a new run of the same setting: not a mean over half its splits
        del s["mean_class_accuracy"]
    for i, m in enumerate(mixed):
        write_run(root, f"mixed{i}", m)
    r = report([root], tmp_path / "rep")
    rows = {row["method"]: row for row in r["datasets"][0]["rows"]}
    assert rows["fc6+svm"]["runs"] == 2 and rows["fc6+svm"]["mean_class_accuracy"] is None
    rows.pop("fc6+svm")
    assert rows["fc7+svm"]["runs"] == 2 and rows["fc7+svm"]["mean_class_accuracy"] is None
    assert rows["last+svm"]["mean_class_accuracy"] is None and rows["fne+svm"]["mean_class_accuracy"] == 0.85
    md_cells = md_rows((tmp_path / "rep" / "report.md").read_text(), "pets")
    assert md_cells["fc7+svm (2 runs)"][2] == md_cells["last+svm"][2] == "—"
    assert md_cells["fne+svm"][2].strip("*") == "85.0 ± 2.0"
    html = (tmp_path / "rep" / "report.html").read_text()
    assert re.findall(r"data-col='mean_class_accuracy'>([^<]*)<", html) == ["85.0 ± 2.0", "—", "—", "—"]
    assert len(re.findall(r"src='data:image/png;base64,", html)) == 3
    head, *lines = table_text(r["datasets"]).splitlines()[1:6]
    end = head.index("mean class %") + len("mean class %")  # the column's cells end where its title does
    console = {line.split()[0]: line[end - 13:end].strip() for line in lines}
    assert console == {"fne+svm": "85.0 ± 2.0", "fc7+svm": "—", "last+svm": "—", "fc6+svm": "—"}


def test_one_weights_file_by_two_paths_is_one_backbone(tmp_path):
    """Runs of one weights file given as `w.pt` in one folder and `../w.pt` in another (the same
    fingerprint) were two rows and two backbones; they are one row of two runs. Another file
    of the same name (another fingerprint) stays a row of its own."""
    write_run(tmp_path, "a", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, weights="w.pt", weights_fingerprint="file-abc",
                                          seed=0))
    write_run(tmp_path, "b", fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01, weights="../w.pt",
                                          weights_fingerprint="file-abc", seed=1))
    write_run(tmp_path, "c", fake_metrics("fne+svm", 0.7, 0.01, 0.7, 0.01, weights="w.pt", weights_fingerprint="file-def",
                                          seed=1))
    report(tmp_path, out=tmp_path / "rep")
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = data["datasets"][0]["rows"] if isinstance(data["datasets"], list) else data["datasets"]["pets"]["rows"]
    assert sorted((r["weights_fingerprint"], r["runs"]) for r in rows) == [("file-abc", 2), ("file-def", 1)]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "vgg16: ../w.pt = w.pt weights \\[file-abc\\]; vgg16: w.pt weights \\[file-def\\]" in md


def test_random_weights_warning(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "r", fake_metrics("fne+svm", 0.3, 0.01, 0.3, 0.01, weights="random"))
    out = tmp_path / "rep"
    report(str(root), out, figures=False)  # one folder, given alone (not a list of its characters)
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "WARNING" in md and "weights are random" in md and "say nothing about transfer" in md
    assert "id='random-weights-warning'" in html
    tex = (out / "report.tex").read_text()  # a table copied into a paper keeps the warning
    assert "Warning: the weights are random" in tex and "(fne+svm)" in tex


def test_scratch_runs_are_not_random_weight_warnings(tmp_path):
    """train:scratch starts from random weights by design: no warning, same backbone label."""
    root = tmp_path / "runs"
    write_run(root, "f", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01))
    write_run(root, "s", fake_metrics("train:scratch", 0.1, 0.0, 0.1, 0.0, kind="train", weights="random",
                                      mode="scratch"))
    out = tmp_path / "rep"
    r = report([root], out, figures=False)
    md = (out / "report.md").read_text()
    assert r["header"]["warning"] is None and "WARNING" not in md and "Warning" not in (out / "report.tex").read_text()
    assert "vgg16: random initialisation (train:scratch)" in md
    assert set(md_rows(md, "pets")) == {"fne+svm", "train:scratch"}  # no per-backbone labels


def test_seeds_pooled_over_splits(tmp_path):
    root = tmp_path / "runs"
    for seed, accs in ((0, (0.6, 0.8)), (1, (0.7, 0.9))):
        splits = [{"accuracy": a, "mean_class_accuracy": a, "n_train": 3, "n_test": 3} for a in accs]
        write_run(root, f"s{seed}", fake_metrics("fne+svm", sum(accs) / 2, 0.1, sum(accs) / 2, 0.1, splits=splits,
                                                  seconds=1.0 + seed))
    out = tmp_path / "rep"
    r = report([root], out, figures=False)
    row = r["datasets"][0]["rows"][0]
    assert row["runs"] == 2 and row["n_splits"] == 4
    assert row["accuracy"] == pytest.approx(0.75) and row["accuracy_std"] == pytest.approx(0.1118034)
    assert row["seconds"] == pytest.approx(1.5)


def test_advice_shown_with_match(built):
    pets = built["md"].split("## pets\n", 1)[1]
    assert "**finetune**" in pets and "max-softmax 0.61" in pets
    assert ("no clear winner (highest accuracy: fne+svm (feature-extraction)), so the measurements neither "
            "confirm nor contradict the advice (recommended: fine-tuning)") in pets
    assert "class='undecided'" in built["html"] and "does not match" not in pets


def test_the_advice_shows_its_confidence_where_advice_json_records_it(tmp_path):
    """`fne advise` prints "confidence: …"; the advice report.md / report.html show did not. An
    advice.json written before fne advise recorded it still renders, without the line."""
    from fne.reporting.advice_rules import confidence

    runs = make_runs(tmp_path / "runs")
    old = report([runs], tmp_path / "old", figures=False)
    assert "\n- confidence: " not in (tmp_path / "old" / "report.md").read_text() and old["datasets"][1]["advice"]
    f = runs / "adv" / "advice.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "confidence": confidence(["6 training images a class"])}))
    report([runs], tmp_path / "rep", figures=False)
    line = ("confidence: low (6 training images a class); a rule of thumb: only the runs advised, compared by fne "
            "report, measure the methods")
    assert f"\n- {line}\n" in (tmp_path / "rep" / "report.md").read_text()
    assert f"<li class='confidence'>{line}</li>" in (tmp_path / "rep" / "report.html").read_text()
    f.write_text(json.dumps({**json.loads(f.read_text()), "confidence": "low"}))  # hand-edited: left out, named
    with pytest.warns(UserWarning, match=f"^skipped {f}: its confidence not as fne writes them"):
        report([runs], tmp_path / "rep", figures=False)


def test_no_runs_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FneError, match="no run's metrics.json"):
        report([tmp_path / "empty"], tmp_path / "rep")
    with pytest.raises(FneError, match="does not exist"):
        report([tmp_path / "missing"], tmp_path / "rep")


def test_a_run_dir_beside_others_that_holds_no_run_is_named(tmp_path):
    """`fne report runs/a runs/typo-or-empty`: the report of runs/a, and a line naming the
    folder (or file) that gave nothing, not a report silently missing its runs."""
    runs = make_runs(tmp_path / "runs")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match=f"^no run under {tmp_path / 'empty'}, {tmp_path / 'notes.txt'} "
                                         r"\(no metrics.json\): left out of the report$"):
        report([runs / "a", tmp_path / "empty", tmp_path / "notes.txt"], tmp_path / "rep")
    assert (tmp_path / "rep" / "report.md").is_file()


def test_a_metrics_json_that_is_no_run_is_named_not_skipped_in_silence(tmp_path):
    """A metrics.json of another program (no accuracy), or one that holds no JSON object or an
    accuracy that is no number (damaged), was left out without a word (or tabulated as a row "?"
    of a section "?"), and its folder then said to hold "no metrics.json": each is named, with
    why, and the report is of the others."""
    runs = make_runs(tmp_path / "runs")
    for name, text in (("foreign", '{"loss": 0.3}'), ("text", '"accuracy: 0.9"'), ("list", '["accuracy"]'),
                       ("word", '{"accuracy": "high", "method": "fne+svm"}')):
        (tmp_path / "odd" / name).mkdir(parents=True)
        (tmp_path / "odd" / name / "metrics.json").write_text(text)
    with pytest.warns(UserWarning) as said:
        r = report([runs / "a", tmp_path / "odd"], tmp_path / "rep", figures=False)
    lines = sorted(str(w.message) for w in said)
    odd = tmp_path / "odd"
    assert lines == sorted([f"skipped {odd / 'foreign' / 'metrics.json'}: no accuracy: not the metrics.json of a `fne fit` "
                     f"or `fne train` run",
                     f"skipped 2 files (no JSON object in them: cut short (a full disk, a killed copy), damaged or "
                     f"another program's): {odd / 'list' / 'metrics.json'} (it holds a JSON list, not an object (a "
                     f"damaged or foreign file)), {odd / 'text' / 'metrics.json'} (it holds a JSON str, not an object "
                     f"(a damaged or foreign file))",
                     f"skipped {odd / 'word' / 'metrics.json'}: its accuracy not as fne writes them (a damaged or "
                     f"hand-edited file)"])
    assert [d["dataset"] for d in r["datasets"]] == ["pets"]
    with pytest.warns(UserWarning, match="no accuracy"), pytest.raises(FneError, match="^no run's metrics.json under"):
        report([odd / "foreign"], tmp_path / "rep")


@pytest.mark.parametrize("field, damage", [
    ("labels_fingerprint", lambda m: {**m, "labels_fingerprint": ["a"]}),
    ("n_splits", lambda m: {**m, "n_splits": "2"}),
    ("splits", lambda m: {**m, "splits": [{**s, "correct": 3.5} for s in m["splits"]]}),
    ("splits", lambda m: {**m, "splits": [{**s, "test_hash": [1]} for s in m["splits"]]}),
    ("options", lambda m: {**m, "options": {"label_key": {"a": 1}}}),
])
def test_a_damaged_field_skips_its_run_with_a_line_not_a_traceback(tmp_path, field, damage):
    """Fields of other types than fne writes (a hand-edited or damaged metrics.json) raised
    TypeError in the report (unhashable type, no len(), '>' between str and int)."""
    runs = make_runs(tmp_path / "runs")
    write_run(tmp_path / "runs", "odd", damage(fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, labels_fingerprint="a")))
    with pytest.warns(UserWarning, match=f"^skipped {tmp_path / 'runs' / 'odd' / 'metrics.json'}: its {field} not as "
                                         f"fne writes them"):
        r = report([runs], tmp_path / "rep", figures=False)
    assert str(tmp_path / "runs" / "a" / "fne") in json.dumps(r) and str(tmp_path / "runs" / "odd") not in json.dumps(r)


@pytest.mark.parametrize("name, field, damage", [
    ("adv/advice.json", "families", {"families": [1]}),
    ("adv/advice.json", "similarity", {"similarity": {"judged": True, "max_softmax_mean": "x"}}),
    ("adv/advice.json", "commands", {"commands": 3}),
    ("pipeline.json", "datasets", {"datasets": {"pets": {"published": "x"}}}),
    ("pipeline.json", "name", {"name": ["t"]}),
    ("pipeline.json", "notes", {"notes": 5}),  # TypeError: 'int' object is not iterable
    ("pipeline.json", "notes", {"notes": "abc"}),  # three notes, "a", "b" and "c"
    ("pipeline.json", "datasets", {"datasets": {"pets": {"published": {"source": 3, "values": {"fne+svm": 90}}}}}),
])
def test_a_damaged_advice_or_pipeline_json_is_left_out_with_a_line(tmp_path, name, field, damage):
    """An advice.json or pipeline.json of other types than fne writes (hand-edited, damaged)
    raised TypeError, AttributeError or ValueError deep in the report: it is left out, named."""
    runs = make_runs(tmp_path / "runs")
    f = runs / name
    f.write_text(json.dumps({**json.loads(f.read_text()), **damage}))
    with pytest.warns(UserWarning, match=f"^skipped {f}: its {field} not as fne writes them"):
        r = report([runs], tmp_path / "rep", figures=False)
    pets = next(d for d in r["datasets"] if d["dataset"] == "pets")
    assert (pets["advice"] == []) == (name == "adv/advice.json")
    assert (pets["published"]["values"] == {}) == (name == "pipeline.json")


@pytest.mark.parametrize("kwargs, message", [
    ({"extra_pipelines": ["x"]}, r"^extra_pipelines: expected a list of pipeline summaries .*, got a list holding str$"),
    ({"extra_pipelines": "x"}, r"^extra_pipelines: expected a list of pipeline summaries .*, got str$"),
    ({"extra_pipelines": [{"datasets": 3}]}, r"^extra_pipelines\[0\]: its datasets not as fne writes them$"),
    ({"pipeline": 5}, r"^pipeline: expected a path"),
    ({"run_dirs": 5}, r"^run_dirs: expected a path or a list of paths, got int$"),  # was: 'int' object is not iterable
    ({"run_dirs": [5]}, r"^run_dirs: expected a path \(str or os.PathLike\), got int$"),
])
def test_a_wrong_typed_argument_is_one_line_naming_it(tmp_path, kwargs, message):
    """`fne.report(runs, extra_pipelines=["x"])` ended in AttributeError: 'str' object has no
    attribute 'get'; `run_dirs=5` in "'int' object is not iterable"; `pipeline=5` named `path`."""
    runs = make_runs(tmp_path / "runs")
    with pytest.raises(TypeError, match=message):
        report(**{"run_dirs": [runs], "out": tmp_path / "rep", "figures": False, **kwargs})
    assert not (tmp_path / "rep").exists()  # refused before anything is written


def test_cli(tmp_path, capsys):
    import argparse

    from fne.reporting.report import add_arguments, run_cli

    runs = make_runs(tmp_path / "runs")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(runs / "a"), str(runs / "b"), "--out", str(tmp_path / "rep")])
    assert run_cli(args) == 0
    out = capsys.readouterr().out
    assert "fne+svm" in out and "train:finetune" in out and "91.2 ± 1.2" in out
    assert "flowers" not in out  # only the folders given
    assert (tmp_path / "rep" / "report.html").is_file()


def test_an_out_that_cannot_be_a_folder_is_one_line_before_any_run_is_read(tmp_path):
    """`fne report RUNS --out FILE` raised FileExistsError (a traceback from the CLI)."""
    from fne.cli import main

    runs = make_runs(tmp_path / "runs")
    (tmp_path / "taken").write_text("x")
    with pytest.raises(FneError, match=r"^out='.*taken': is a file; give a folder"):
        report([runs / "a"], tmp_path / "taken")
    assert main(["report", str(runs / "a"), "--out", str(tmp_path / "taken" / "rep")]) == 2
    assert (tmp_path / "taken").read_text() == "x" and not list(tmp_path.glob("taken*/report*"))
    report([runs / "a"], tmp_path / "rep")  # written whole, no temporary file left beside
    assert sorted(p.name for p in (tmp_path / "rep").iterdir() if p.is_file()) == [
        "report.csv", "report.html", "report.json", "report.md", "report.tex"]


def test_an_out_inside_a_runs_data_folder_is_refused_before_writing(tmp_path):
    """`fne report RUN --out images/rep` wrote report_files/*.png into the run's DATA folder,
    where the next `fne fit images/` listed them as a class `rep` of three images."""
    from fne.cli import main

    data = tmp_path / "images"
    (data / "cat").mkdir(parents=True)
    runs = tmp_path / "runs"
    write_run(runs, "a", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, data_resolved=str(data)))
    with pytest.raises(FneError, match=r"^out='.*images.rep': is inside DATA .*images; writing there would change"):
        report([runs], data / "rep", figures=False)
    assert main(["report", str(runs), "--out", str(data)]) == 2
    assert sorted(p.name for p in data.iterdir()) == ["cat"]
    report([runs], tmp_path / "rep", figures=False)  # outside DATA: written
    assert (tmp_path / "rep" / "report.md").is_file()


def test_direct_on_mapped_classes_is_labelled_and_not_ranked(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "f", fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01))
    write_run(root, "g", fake_metrics("fc7+svm", 0.7, 0.01, 0.7, 0.01))
    write_run(root, "d", fake_metrics("train:direct", 0.95, 0.0, 0.95, 0.0, kind="train", mode="direct", seconds=0.0,
                                      n_excluded=7, classes=["cat", "dog"], confusion=[[9, 1], [0, 10]],
                                      splits=[{"accuracy": 0.95, "mean_class_accuracy": 0.95}]))
    out = tmp_path / "rep"
    r = report([root], out, figures=False)
    rows = md_rows((out / "report.md").read_text(), "pets")
    direct = rows["train:direct (2 mapped classes; 7 test images of unmapped classes left out)"]
    assert direct[0] == "95.0"  # shown as measured, but not bold: it is not comparable
    assert not any(c.startswith("**") for c in direct)  # not even its (zero) training seconds
    assert rows["fne+svm"][0].startswith("**")
    assert r["datasets"][0]["winner"]["method"] == "fne+svm"


def test_runs_of_different_settings_are_separate_rows(tmp_path):
    """Only seeds pool: a different C (or training setting) is its own row, labelled by what differs."""
    root = tmp_path / "runs"
    write_run(root, "c1s0", fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01, C=1.0, seed=0))
    write_run(root, "c1s1", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, C=1.0, seed=1))
    write_run(root, "c05", fake_metrics("fne+svm", 0.6, 0.01, 0.6, 0.01, C=0.5, seed=0))
    for epochs in (3, 10):
        write_run(root, f"e{epochs}", fake_metrics("train:finetune", 0.5, 0.0, 0.5, 0.0, kind="train", epochs=epochs,
                                                   splits=[{"accuracy": 0.5, "mean_class_accuracy": 0.5}]))
    out = tmp_path / "rep"
    r = report([root], out, figures=False)
    rows = md_rows((out / "report.md").read_text(), "pets")
    assert set(rows) == {"fne+svm (C=1) (2 runs)", "fne+svm (C=0.5)", "train:finetune (epochs=3)",
                         "train:finetune (epochs=10)"}
    assert rows["fne+svm (C=1) (2 runs)"][0].strip("*") == "85.0 ± 5.1"  # over the 4 splits
    assert rows["fne+svm (C=0.5)"][0] == "60.0 ± 1.0"
    by = {(row["method"], row["settings"].get("C")): row for row in r["datasets"][0]["rows"]}
    assert by[("fne+svm", 1.0)]["runs"] == 2 and by[("fne+svm", 0.5)]["runs"] == 1


def test_what_changes_the_numbers_keeps_rows_apart_and_nothing_else_does(tmp_path):
    """Runs that differed only in --solver were pooled as "fne+svm (2 runs)" of one seed. Every
    recorded setting that can change the numbers keeps rows apart and names them; the device,
    workers or progress do not; seeds of C / features / head = auto pool whatever each chose."""
    root = tmp_path / "runs"

    def fit(name, seed=0, **extra):
        write_run(root, name, fake_metrics("fne+svm", 0.8 + seed / 100, 0.01, 0.8, 0.01, seed=seed, C=1.0, **extra))

    fit("sk", solver="sklearn", device="cpu", options={"C": "1.0", "label_key": None, "workers": 2})
    fit("sk-gpu", seed=1, solver="sklearn", device="cuda", options={"C": 1, "workers": 8, "progress": False})
    fit("torch", solver="torch", solver_precision="int8")
    fit("torch-fp32", solver="torch", solver_precision="fp32")
    fit("bf16", solver="sklearn", precision="bf16")
    for seed, chose in ((0, 0.1), (1, [1.0, 10.0])):  # C = auto: each seed's splits chose their own
        write_run(root, f"auto{seed}", fake_metrics("fne+auto", 0.7, 0.01, 0.7, 0.01, seed=seed, C=chose, head="svm",
                                                    options={"C": "auto", "head": "auto"}))
    for on in ("cpu", "device"):
        write_run(root, f"ft-{on}", fake_metrics("train:finetune", 0.5, 0.0, 0.5, 0.0, kind="train", augment_on=on,
                                                 splits=_splits([0.5])))
    (root / "sk" / "step.json").write_text(json.dumps({"config": [1]}))  # damaged: its C is not read (was a traceback)
    r = report([root], tmp_path / "rep", figures=False)
    rows = md_rows((tmp_path / "rep" / "report.md").read_text(), "pets")
    assert set(rows) == {
        "fne+svm (precision=fp32, solver=sklearn) (2 runs)", "fne+svm (precision=fp32, solver=torch, solver_precision=int8)",
        "fne+svm (precision=fp32, solver=torch, solver_precision=fp32)",
        "fne+svm (precision=bf16, solver=sklearn)",
        "fne+auto (2 runs)",
        "train:finetune (augment_on=cpu)", "train:finetune (augment_on=device)"}
    by = {row["label"]: row for row in r["datasets"][0]["rows"]}
    assert by["fne+svm (precision=fp32, solver=sklearn)"]["seeds"] == [0, 1]  # cpu and cuda, 2 and 8 workers: one setting
    assert by["fne+auto"]["settings"]["C"] == "auto" and by["fne+auto"]["settings"]["head"] == "auto"


def test_sections_whose_names_make_one_file_name_get_figures_of_their_own(tmp_path):
    """Dataset names that are one file name once made safe ("a b" and "a_b"; 数字 and 图片 are both
    "x"; "Pets" and "pets" on macOS's filesystem): each section's figures are its own files, not the
    last one's."""
    for name in ("a b", "a_b", "Pets", "pets"):
        write_run(tmp_path / "runs", name, fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, dataset=name))
    r = report([tmp_path / "runs"], tmp_path / "rep")
    md = Path(r["md"]).read_text()
    links = {ds["dataset"]: re.findall(r"\]\((report_files/[^)]+-bars\.png)\)", md.split(f"## {ds['dataset']}\n")[1])[0]
             for ds in r["datasets"]}
    assert len({p.lower() for p in links.values()}) == 4, links
    assert all((tmp_path / "rep" / p).is_file() for p in links.values())


def test_a_report_into_an_earlier_reports_folder_leaves_none_of_its_figures(tmp_path):
    """A second report into the same --out: the figures of a section it no longer has (or all of
    them, with figures=False) are removed, not left in report_files/ to pass for this report's."""
    write_run(tmp_path / "runs", "pets/fne", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01))
    write_run(tmp_path / "runs", "flowers/fne", fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01, dataset="flowers"))
    out = tmp_path / "rep"
    (out / "report_files").mkdir(parents=True)
    (out / "report_files" / "notes.png").write_bytes(b"the user's")  # not a figure fne draws: kept
    report([tmp_path / "runs"], out)
    figures = {f.name for f in (out / "report_files").glob("*-*.png")}
    assert {"pets-bars.png", "flowers-bars.png"} <= figures
    report([tmp_path / "runs" / "pets"], out)
    assert {f.name for f in (out / "report_files").glob("*-*.png")} == {f for f in figures if f.startswith("pets-")}
    assert all((out / p).is_file() for p in re.findall(r"\]\((report_files/[^)]+)\)", (out / "report.md").read_text()))
    report([tmp_path / "runs" / "pets"], out, figures=False)
    assert [f.name for f in (out / "report_files").iterdir()] == ["notes.png"]
    assert not list(out.rglob(".tmp-*"))



def test_a_report_leaves_the_figures_another_report_into_its_folder_is_writing(tmp_path):
    """Two `fne run` of one out folder write its report at the same time: the second's removal of
    stale figures took the first's temporary figure (`.tmp-…-digits-bars.png`, a name ending in a
    figure's) for one, and the first ended in a traceback (FileNotFoundError) as it renamed it."""
    from fne.cache.fs import temp_path

    write_run(tmp_path / "runs", "pets/fne", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01))
    out = tmp_path / "rep"
    (out / "report_files").mkdir(parents=True)
    writing = temp_path(out / "report_files" / "digits-bars.png")  # its writer, this process, runs
    writing.write_bytes(b"the other report's figure, not yet renamed into place")
    report([tmp_path / "runs"], out)
    assert writing.is_file() and (out / "report_files" / "pets-bars.png").is_file()

def test_other_labels_of_one_data_are_another_task_in_a_section_of_its_own(tmp_path):
    """Two label columns of one Parquet file (`--label-key`) are two tasks: their runs were one
    section, ranked and tested image by image against each other; now each task is a section of its
    own, and the two runs are never paired."""
    from fne.linear.compare import compare_runs

    def run(method, acc, key):
        sp = [{**_splits([acc])[0], "test_hash": "h", "correct": "1" * int(acc * 10) + "0" * (10 - int(acc * 10))}]
        return fake_metrics(method, acc, 0.0, acc, 0.0, n_splits=1, split_protocol="predefined", splits=sp,
                            data="/data/t.parquet", options={"label_key": key})

    a, b = run("fne+svm", 0.9, "species"), run("fc7+svm", 0.5, "breed")
    assert compare_runs(a, b) is None and compare_runs(a, run("fc7+svm", 0.5, "species"))["test"] == "McNemar exact"
    write_run(tmp_path / "runs", "a", a)
    write_run(tmp_path / "runs", "b", b)
    ds = report([tmp_path / "runs"], tmp_path / "rep", figures=False)["datasets"]
    assert [(d["dataset"], [r["method"] for r in d["rows"]]) for d in ds] == [
        ("pets (/data/t.parquet, label_key=breed)", ["fc7+svm"]), ("pets (/data/t.parquet, label_key=species)", ["fne+svm"])]


def test_runs_of_one_data_whose_labels_were_edited_are_sections_of_their_own(tmp_path):
    """A CSV's labels edited between two `fne fit` runs (daisy merged into bluebell): the runs of
    4 and of 3 classes pooled as one row, "last+svm (2 runs)", as if seeds of one experiment. Each
    set of classes is now a section of its own; a direct run joins the set holding its classes."""
    later = "2026-11-30T09:15:00+00:00"
    write_run(tmp_path / "runs", "a", fake_metrics("last+svm", 0.9, 0.01, 0.9, 0.01, classes=["cat", "dog", "fox"]))
    write_run(tmp_path / "runs", "a2", fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01, classes=["dog", "cat", "fox"]))
    write_run(tmp_path / "runs", "b", fake_metrics("last+svm", 0.7, 0.01, 0.7, 0.01, classes=["cat", "dog"], date=later,
                                                   confusion=[[9, 1], [4, 6]]))
    write_run(tmp_path / "runs", "d", fake_metrics("train:direct", 0.95, 0.0, 0.95, 0.0, kind="train", mode="direct",
                                                   classes=["fox", "cat"], confusion=[[9, 1], [0, 10]], n_excluded=3,
                                                   splits=[{"accuracy": 0.95, "mean_class_accuracy": 0.95}]))
    ds = report([tmp_path / "runs"], tmp_path / "rep", figures=False)["datasets"]
    assert [(d["dataset"], sorted(r["method"] for r in d["rows"])) for d in ds] == [
        ("pets (/data/pets, images and labels 1 of 2: 3 classes, since 2024-01-02 03:04)", ["fne+svm", "last+svm", "train:direct"]),
        ("pets (/data/pets, images and labels 2 of 2: 2 classes, since 2026-11-30 09:15)", ["last+svm"])]
    (tmp_path / "runs" / "b" / "metrics.json").unlink()  # one set of classes: one section, named as before
    assert [d["dataset"] for d in report([tmp_path / "runs"], tmp_path / "rep", figures=False)["datasets"]] == ["pets"]


def test_a_run_written_before_data_resolved_joins_the_runs_of_its_data(tmp_path):
    """A run that records DATA as given only (written before metrics.json had `data_resolved`) and a
    newer run given the same DATA were two sections, "pets (flowers12)" and "pets (/abs/flowers12)";
    they are one. Runs of other DATA of one name stay apart."""
    write_run(tmp_path / "runs", "old", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, data="flowers12"))
    write_run(tmp_path / "runs", "new", fake_metrics("fc7+svm", 0.8, 0.01, 0.8, 0.01, data="flowers12",
                                                     data_resolved="/abs/flowers12"))
    ds = report([tmp_path / "runs"], tmp_path / "rep", figures=False)["datasets"]
    assert [(d["dataset"], [r["method"] for r in d["rows"]]) for d in ds] == [("pets", ["fne+svm", "fc7+svm"])]
    write_run(tmp_path / "runs", "other", fake_metrics("last+svm", 0.7, 0.01, 0.7, 0.01, data="/elsewhere/pets",
                                                       data_resolved="/elsewhere/pets"))
    ds = report([tmp_path / "runs"], tmp_path / "rep", figures=False)["datasets"]
    assert [(d["dataset"], [r["method"] for r in d["rows"]]) for d in ds] == [
        ("pets (/abs/flowers12)", ["fne+svm", "fc7+svm"]), ("pets (/elsewhere/pets)", ["last+svm"])]


def test_names_with_markdown_specials_keep_report_md_s_table_whole(tmp_path):
    """A `|` in a dataset name, a weights file or a label's setting split report.md's table row into
    more cells (and `*` set text in italics): every name is escaped in report.md, report.tex and
    report.html; the console prints them as they are."""
    root = tmp_path / "runs"
    odd = dict(dataset="pets|*x*", weights="w|1.pt", weights_fingerprint="w|1-x")
    write_run(root, "a", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, C=1.0, **odd))
    write_run(root, "b", fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01, C="a|b", **odd))
    write_run(root, "c", fake_metrics("fc7+svm", 0.7, 0.01, 0.7, 0.01, arch="<b>vgg</b>", dataset="pets|*x*"))
    r = report([root], tmp_path / "rep", figures=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    tex, html = (tmp_path / "rep" / "report.tex").read_text(), (tmp_path / "rep" / "report.html").read_text()
    assert "## pets\\|\\*x\\*\n" in md
    table = [line for line in md.split("## pets", 1)[1].splitlines() if line.startswith("| ")]
    assert len(table) == 4 and all(len(re.split(r"(?<!\\)\|", line)) == len(TABLE_HEAD) + 2 for line in table)
    assert "| fne+svm \\[vgg16 (w\\|1.pt)\\] (C=a\\|b) | 80.0 ± 1.0 |" in md
    assert "| fc7+svm \\[\\<b\\>vgg\\</b\\> (imagenet)\\] | 70.0 ± 1.0 |" in md
    assert "\\caption{pets\\textbar{}*x*}" in tex
    assert "fne+svm [vgg16 (w\\textbar{}1.pt)] (C=a\\textbar{}b) & 80.0 $\\pm$ 1.0" in tex
    assert "<b>vgg" not in html and "&lt;b&gt;vgg&lt;/b&gt;" in html
    assert "pets|*x*" in table_text(r["datasets"])


def test_extraction_seconds_are_measured_or_cached(tmp_path):
    """The extraction that computed a run's rows, as measured; "cached" where none ran for it,
    never an estimate from the store's past rates."""
    root = tmp_path / "runs"
    rate = 4.0  # fne fit's estimate: n_images / the store's past rate = 40 / 4 = 10 s
    est = dict(extract=40 / rate, extract_images_per_s=rate)
    d = write_run(root, "ran", fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01, **est))
    (d / "step.json").write_text(json.dumps({"dataset_key": "pets", "extract": {"seconds": 12.5, "n_computed": 40}}))
    d = write_run(root, "warm", fake_metrics("fc7+svm", 0.7, 0.01, 0.7, 0.01, **est))
    (d / "step.json").write_text(json.dumps({"dataset_key": "pets", "extract": {"seconds": 0.2, "n_computed": 0}}))
    write_run(root, "fit-alone", fake_metrics("fc6+svm", 0.6, 0.01, 0.6, 0.01, **est))
    write_run(root, "fit-extracted", fake_metrics("last+svm", 0.5, 0.01, 0.5, 0.01, extract=33.0,
                                                  extract_images_per_s=rate))
    out = tmp_path / "rep"
    r = report([root], out, figures=False)
    rows = md_rows((out / "report.md").read_text(), "pets")
    ext = {name: cells[6].strip("*") for name, cells in rows.items()}
    assert ext == {"fne+svm": "12.5", "fc7+svm": "cached", "fc6+svm": "cached", "last+svm": "33.0"}
    by = {row["method"]: row for row in r["datasets"][0]["rows"]}
    assert by["fne+svm"]["extract_seconds"] == 12.5 and by["fc7+svm"]["extract_seconds"] is None
    assert by["fc7+svm"]["extract_cached"] and not by["last+svm"]["extract_cached"]


def test_report_with_a_pipeline_whose_datasets_are_absent(tmp_path, monkeypatch):
    monkeypatch.delenv("FNE_DATASETS", raising=False)
    root = tmp_path / "runs"
    write_run(root, "f", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01))
    pipeline = Path(__file__).resolve().parents[1] / "pipelines" / "fne-paper-pets.toml"
    out = tmp_path / "rep"
    report([root], out, pipeline=pipeline, figures=False)
    assert md_rows((out / "report.md").read_text(), "pets")["fne+svm"][4] == "89.2 (published)"


def test_published_values_only_beside_the_backbone_they_name(tmp_path):
    """A published VGG-16 ImageNet figure is not put beside another backbone's row, nor beside VGG-16
    with random weights: the pipeline's published table names its backbone (arch, weights)."""
    root = tmp_path / "runs"
    write_run(root, "vgg", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01))
    write_run(root, "rnd", fake_metrics("fne+svm", 0.1, 0.01, 0.1, 0.01, weights="random"))
    write_run(root, "lite", fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01, arch="efficientnet_lite0"))
    write_run(root, "lite7", fake_metrics("fc7+svm", 0.7, 0.01, 0.7, 0.01, arch="efficientnet_lite0"))
    (root / "pipeline.json").write_text(json.dumps({"name": "t", "datasets": {"pets": {"published": {
        "source": "Paper 2018", "arch": "vgg16", "weights": "imagenet",
        "values": {"fne+svm": {"mean": 89.2, "std": None}, "fc7+svm": {"mean": 89.6, "std": None}}}}}}))
    out = tmp_path / "rep"
    r = report([root], out, figures=False)
    rows = md_rows((out / "report.md").read_text(), "pets")
    pub = {name.replace("\\", ""): cells[4] for name, cells in rows.items()}
    assert pub == {"fne+svm [vgg16 (imagenet)]": "89.2 (published)", "fne+svm [efficientnet_lite0 (imagenet)]": "—",
                   "fne+svm [vgg16 (random)]": "—", "fc7+svm [efficientnet_lite0 (imagenet)]": "—",
                   "fc7+svm (published only)": "89.6 (published)"}
    assert r["datasets"][0]["published"]["source"] == "Paper 2018; arch vgg16; weights imagenet"
    with open(out / "report.csv", newline="") as f:  # report.csv: the one published figure, on its row
        assert {r["label"]: r["published_accuracy_percent"] for r in csv.DictReader(f) if r["published_accuracy_percent"]} \
            == {"fne+svm [vgg16 (imagenet)]": "89.2"}


def _splits(accs):
    return [{"accuracy": a, "mean_class_accuracy": a, "n_train": 30, "n_test": 10} for a in accs]


def _verdict_report(tmp_path, runs: dict, advice: bool = False) -> tuple[dict, str, str]:
    root = tmp_path / "runs"
    for name, m in runs.items():
        write_run(root, name, m)
    if advice:
        (root / "advice.json").write_text(json.dumps({
            "recommendation": "finetune", "text": "Fine-tune.", "families": ["fine-tuning"], "dataset": "pets",
            "arch": "vgg16", "weights": "imagenet", "reasons": [], "images_per_class": 500.0,
            "similarity": {"judged": False}}))
    out = tmp_path / "rep"
    r = report([root], out, figures=False)
    return r["datasets"][0], (out / "report.md").read_text(), (out / "report.html").read_text()


def test_a_winner_is_named_only_beyond_noise(tmp_path):
    """Five shared splits, fne+svm ahead on every one by 5-7 points: a winner, and the advice is
    judged against it."""
    ds, md, html = _verdict_report(tmp_path, {
        "a": fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, splits=_splits([0.90, 0.91, 0.89, 0.90, 0.92])),
        "b": fake_metrics("fc7+svm", 0.84, 0.01, 0.84, 0.01, splits=_splits([0.84, 0.85, 0.83, 0.84, 0.85]))},
        advice=True)
    assert ds["verdict"]["kind"] == "clear"
    assert "Measured winner: **fne+svm**" in md and "fne+svm beats the runner-up fc7+svm beyond noise (corrected paired t-test, two-sided p = " in md
    assert "difference +6.2 points over 5 splits" in md  # points to one decimal, as the table's accuracies
    assert "the measured winner fne+svm (feature-extraction) does not match the advice" in md
    assert "class='nomatch'" in html
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())["datasets"][0]
    assert saved["winner"] == saved["highest"] == "fne+svm"


def test_a_winner_of_the_advised_kind_but_not_its_method_says_so(tmp_path):
    """Advice for the full-network embedding (early layers: fne fit --features fne), and last+svm
    wins beyond noise: "the measured winner last+svm (feature-extraction) matches the advice", as
    both are feature extraction. It now says it is of the advised kind, not the method advised."""
    root = tmp_path / "runs"
    write_run(root, "a", fake_metrics("last+svm", 0.9, 0.01, 0.9, 0.01, splits=_splits([0.90, 0.91, 0.89, 0.90, 0.92])))
    write_run(root, "b", fake_metrics("fne+svm", 0.84, 0.01, 0.84, 0.01, splits=_splits([0.84, 0.85, 0.83, 0.84, 0.85])))
    advice = {"recommendation": "early-features-linear", "text": "Full-network embedding.", "families": ["feature-extraction"],
              "commands": ["fne fit pets --features fne --head svm --arch vgg16 --weights imagenet --out runs/pets-fne-svm"],
              "dataset": "pets", "arch": "vgg16", "weights": "imagenet", "reasons": [], "images_per_class": 20.0,
              "similarity": {"judged": False}}
    (root / "advice.json").write_text(json.dumps(advice))
    r = report([root], tmp_path / "rep", figures=False)
    a = r["datasets"][0]["advice"][0]
    assert (a["matched"], a["matched_method"], a["named"]) == (True, False, ["fne+svm"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert ("the measured winner last+svm (feature-extraction) is of the kind the advice recommends, but not a "
            "method it names (fne+svm): it matches the advice's kind of method only") in md
    # fne+svm beside a worse last+svm: the method advised wins
    (root / "a" / "metrics.json").write_text(json.dumps(fake_metrics("last+svm", 0.8, 0.01, 0.8, 0.01, splits=_splits([0.80, 0.81, 0.79, 0.80, 0.82]))))
    report([root], tmp_path / "rep2", figures=False)
    assert ("the measured winner fne+svm (feature-extraction) matches the advice: it is a method the advice names"
            in (tmp_path / "rep2" / "report.md").read_text())


def test_advice_is_judged_by_kind_where_no_single_row_wins(tmp_path):
    """fne+svm and last+svm within noise at the top, both feature extraction, and train:finetune
    far below on the same splits: "no clear winner, so the measurements neither confirm nor
    contradict the advice" said nothing of the fine-tuning the advice was about. The best row of the
    advised kind against the best of the others now decides it, with its test."""
    runs = {"a": fake_metrics("fne+svm", 0.904, 0.01, 0.9, 0.01, splits=_splits([0.90, 0.91, 0.89, 0.90, 0.92])),
            "b": fake_metrics("last+svm", 0.902, 0.01, 0.9, 0.01, splits=_splits([0.91, 0.90, 0.90, 0.89, 0.91])),
            "c": fake_metrics("train:finetune", 0.6, 0.01, 0.6, 0.01, kind="train", mode="finetune",
                              splits=_splits([0.60, 0.62, 0.58, 0.61, 0.59]))}
    ds, md, html = _verdict_report(tmp_path, runs, advice=True)  # the advice: fine-tune
    assert ds["verdict"]["kind"] == "unclear"
    b = ds["advice"][0]["by_kind"]
    assert (b["matched"], b["best"], b["other"]) == (False, "fne+svm", "train:finetune")
    assert ("but the best of the other kinds, fne+svm, beats the best of the recommended kind, train:finetune, "
            "beyond noise (corrected paired t-test") in md
    assert "do not match the advice (recommended: fine-tuning)" in md and "class='nomatch'" in html
    # within noise of each other too: undecided, as before
    runs["c"] = fake_metrics("train:finetune", 0.9, 0.01, 0.9, 0.01, kind="train", mode="finetune",
                             splits=_splits([0.89, 0.92, 0.90, 0.91, 0.90]))
    ds, md, _ = _verdict_report(tmp_path / "close", runs, advice=True)
    assert ds["advice"][0]["by_kind"] is None and "neither confirm nor contradict the advice" in md


def test_tie_and_single_method_name_no_winner(tmp_path):
    ds, md, html = _verdict_report(tmp_path / "tie", {
        "a": fake_metrics("fne+svm", 0.9, 0.0, 0.9, 0.0, splits=_splits([0.9])),
        "b": fake_metrics("last+svm", 0.9, 0.0, 0.9, 0.0, splits=_splits([0.9]))}, advice=True)
    assert ds["verdict"]["kind"] == "tie"
    assert "Tie: no winner: fne+svm, last+svm tie at 90.0 % accuracy." in md
    assert "  Tie: no winner: fne+svm, last+svm tie at 90.0 % accuracy" in table_text([ds])  # fne run's console
    assert "Measured winner" not in md and "Measured winner" not in html
    assert "neither confirm nor contradict the advice" in md
    saved = json.loads((tmp_path / "tie" / "rep" / "report.json").read_text())["datasets"][0]  # it said "winner": "fne+svm"
    assert (saved["winner"], saved["highest"]) == (None, "fne+svm")
    # the lists under a tie name whose they are (it read "Classes it confuses most" after two names)
    assert "Classes fne+svm (first of the tied rows) confuses most" in md and "Classes it" not in md
    assert "Classes fne+svm (first of the tied rows) recognises worst" in html
    # rows of one method that differ in a setting: named by it (was "fne+svm, fne+svm tie")
    ds, md, _ = _verdict_report(tmp_path / "C", {
        "a": fake_metrics("fne+svm", 0.9, 0.0, 0.9, 0.0, C=1.0, splits=_splits([0.9])),
        "b": fake_metrics("fne+svm", 0.9, 0.0, 0.9, 0.0, C=0.5, splits=_splits([0.9]))})
    assert "Tie: no winner: fne+svm (C=1), fne+svm (C=0.5) tie at 90.0 % accuracy." in md
    ds, md, _ = _verdict_report(tmp_path / "C2", {
        "a": fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, C=1.0, splits=_splits([0.90, 0.91, 0.89, 0.90, 0.92])),
        "b": fake_metrics("fne+svm", 0.84, 0.01, 0.84, 0.01, C=0.5, splits=_splits([0.84, 0.85, 0.83, 0.84, 0.85]))})
    assert "fne+svm (C=1) beats the runner-up fne+svm (C=0.5) beyond noise" in md
    ds, md, html = _verdict_report(tmp_path / "one", {"a": fake_metrics("fne+svm", 0.9, 0.0, 0.9, 0.0)},
                                   advice=True)
    assert ds["verdict"]["kind"] == "single"
    assert "Only one method was measured: **fne+svm**, accuracy 90.0 ± 0.0 %; nothing to compare it with." in md
    assert "the only measured method, fne+svm (feature-extraction), is not of the kind the advice recommends" in md
    assert "Measured winner" not in md and "Measured winner" not in html


def test_seeds_pooled_rows_are_compared_pairwise(tmp_path):
    """Rows pooled over seeds: each seed's run is paired with the other method's run of the same
    seed (same splits), and the per-split differences tested together."""
    runs = {}
    for seed, (a, b) in enumerate((([0.80, 0.95], [0.78, 0.96]), ([0.70, 0.90], [0.72, 0.88]))):
        runs[f"f{seed}"] = fake_metrics("fne+svm", 0.85, 0.05, 0.85, 0.05, seed=seed, splits=_splits(a))
        runs[f"l{seed}"] = fake_metrics("last+svm", 0.84, 0.05, 0.84, 0.05, seed=seed, splits=_splits(b))
    ds, md, _ = _verdict_report(tmp_path, runs)
    assert [r["runs"] for r in ds["rows"]] == [2, 2]
    assert ds["verdict"]["kind"] == "unclear" and "over 4 splits" in ds["winner_test"]
    assert "Highest accuracy, but no clear winner: **fne+svm**" in md


def test_a_row_of_two_seeds_is_tested_on_the_seed_the_other_row_shares(tmp_path):
    """fne+svm over seeds 0 and 1 against fc7+svm of seed 0 alone said "no paired test applies (the
    runs were not scored on the same splits)", though seed 0's splits are shared: now the corrected t
    pairs those, and the sentence says that seed 1 is left out of the test."""
    hashes = {0: ["h0a", "h0b", "h0c"], 1: ["h1a", "h1b", "h1c"]}

    def splits(accs, seed):
        return [{**s, "test_hash": h} for s, h in zip(_splits(accs), hashes[seed], strict=True)]

    runs = {"f0": fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, seed=0, n_splits=3, splits=splits([0.90, 0.91, 0.89], 0)),
            "f1": fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, seed=1, n_splits=3, splits=splits([0.92, 0.88, 0.90], 1)),
            "l0": fake_metrics("fc7+svm", 0.6, 0.01, 0.6, 0.01, seed=0, n_splits=3, splits=splits([0.60, 0.62, 0.58], 0))}
    ds, md, _ = _verdict_report(tmp_path, runs)
    assert [r["runs"] for r in ds["rows"]] == [2, 1]
    assert ds["verdict"]["kind"] == "clear", ds["verdict"]
    assert ("fne+svm beats the runner-up fc7+svm beyond noise (corrected paired t-test, two-sided p = "
            in ds["winner_test"])
    assert ("difference +30.0 points over 3 splits both rows were scored on (seed 0; left out, having no partner in "
            "the other row: seed 1 of fne+svm))") in ds["winner_test"]
    assert "no paired test applies" not in md
    # seed 0 of the runner-up scored on other test images: nothing shared, nothing paired
    runs["l0"]["splits"] = splits([0.60, 0.62, 0.58], 1)
    runs["l0"]["seed"] = 2
    ds, md, _ = _verdict_report(tmp_path / "apart", runs)
    assert ds["winner_test"] is None and "no paired test applies (the runs were not scored on the same splits)" in md
    # two seeds each of one predefined split: shared test images, but not independent splits; said so
    one = {"split_protocol": "predefined", "n_splits": 1}
    runs = {f"{m}{seed}": fake_metrics(m + "+svm", a + seed / 100, 0.0, a, 0.0, seed=seed, **one,
                                       splits=[{**_splits([a + seed / 100])[0], "test_hash": "P"}])
            for m, a in (("fne", 0.9), ("fc7", 0.6)) for seed in (0, 1)}
    ds, md, _ = _verdict_report(tmp_path / "predefined", runs)
    assert ds["winner_test"] is None and ds["verdict"]["kind"] == "untested"
    assert "no paired test applies (their runs of several seeds were scored on the same test images" in md


def test_a_row_of_two_seeds_of_one_split_is_tested_by_mcnemar_on_the_seed_the_other_row_shares(tmp_path):
    """As above, one split per seed: McNemar's test on seed 0's test images, and the sentence says
    which seed was tested and which left out, after the test images it counts (it read "4 vs 0
    classified right by only one of them both rows were scored on (seed 0; ...)")."""
    def run(method, seed, correct):
        split = {**_splits([correct.count("1") / 10])[0], "test_hash": f"h{seed}", "correct": correct}
        return fake_metrics(method, correct.count("1") / 10, 0.0, 0.9, 0.0, seed=seed, n_splits=1, splits=[split])

    runs = {"f0": run("fne+svm", 0, "1111111110"), "f1": run("fne+svm", 1, "1111111100"),
            "l0": run("fc7+svm", 0, "1111100000")}
    ds, md, _ = _verdict_report(tmp_path, runs)
    assert [r["runs"] for r in ds["rows"]] == [2, 1]
    assert ds["winner_test"] == (
        "no clear winner: fne+svm vs fc7+svm (McNemar exact test, two-sided p = 0.125 ≥ α = 0.05; difference +40.0 "
        "points over 10 test images both rows were scored on (seed 0; left out, having no partner in the other row: "
        "seed 1 of fne+svm), 4 vs 0 classified right by only one of them)")


def test_an_interval_over_two_splits_says_why_it_is_so_wide(tmp_path):
    """`fne fit --splits 2` records a 95% CI of 0.0–100.0 (the corrected t with 1 degree of freedom):
    right, but it read like a bug. The section says why, once, in report.md, report.html and the
    console; the numbers stay the metrics' own."""
    from fne.metrics import accuracy_interval, mean_class_interval

    def run(method, accs, **extra):
        sp = _splits(accs)
        return fake_metrics(method, float(np.mean(accs)), float(np.std(accs)), float(np.mean(accs)),
                            float(np.std(accs)), splits=sp, accuracy_ci=accuracy_interval(sp),
                            mean_class_accuracy_ci=mean_class_interval(sp, None), **extra)

    two = {"a": run("fne+svm", [0.6, 0.8]), "b": run("fc7+svm", [0.5, 0.7])}
    ds, md, html = _verdict_report(tmp_path / "two", two)
    assert md_rows(md, "pets")["fne+svm"][1] == "0.0–100.0"  # as recorded
    note = ("2 splits (fne+svm, fc7+svm): the 95% interval is the corrected t with 1 degree of freedom (t = 12.7, "
            "against 2.8 over 5 splits), so wide by construction wherever the two splits differ, not by a fault; use "
            "--splits 5 or more")
    assert md.count(note) == 1 and html.count(note) == 1 and table_text([ds]).count(note) == 1
    saved = json.loads((tmp_path / "two" / "rep" / "report.json").read_text())["datasets"][0]  # for scripts too
    assert saved["few_splits_note"].startswith(note)
    tex = (tmp_path / "two" / "rep" / "report.tex").read_text()
    assert "Note: 2 splits (fne+svm, fc7+svm): the 95\\% interval is the corrected t with 1 degree of freedom" in tex
    five = {"a": run("fne+svm", [0.6, 0.8, 0.7, 0.75, 0.65]), "b": run("fc7+svm", [0.5, 0.7, 0.6, 0.6, 0.55])}
    ds, md, html = _verdict_report(tmp_path / "five", five)
    assert "degree of freedom" not in md + html + table_text([ds]) + (tmp_path / "five" / "rep" / "report.tex").read_text()
    assert json.loads((tmp_path / "five" / "rep" / "report.json").read_text())["datasets"][0]["few_splits_note"] is None


def test_lead_within_the_spread_is_no_winner_without_a_test(tmp_path):
    """Runs on different splits (no paired test): a lead smaller than the spread across splits is
    not called a win; one larger than it is, saying that no test applied."""
    near = {"a": fake_metrics("fne+svm", 0.80, 0.05, 0.8, 0.05, seed=0),
            "b": fake_metrics("last+svm", 0.78, 0.04, 0.78, 0.04, seed=1)}
    ds, md, _ = _verdict_report(tmp_path / "near", near)
    assert ds["winner_test"] is None and ds["verdict"]["kind"] == "unclear"
    assert "fne+svm leads last+svm by 2.0 points, within the spread across splits (± 5.0)" in md
    far = {"a": fake_metrics("fne+svm", 0.90, 0.01, 0.9, 0.01, seed=0),
           "b": fake_metrics("last+svm", 0.70, 0.01, 0.7, 0.01, seed=1)}
    ds, md, _ = _verdict_report(tmp_path / "far", far)
    assert ds["verdict"]["kind"] == "untested" and "Highest accuracy, untested: **fne+svm**" in md
    assert "Measured winner" not in md
    assert "no paired test applies" in md
    # runs of one split each that record no test counts (written before fne kept them): no spread to
    # judge a lead by, and no test; a 20-point lead was "Measured winner"
    old = {k: {**{f: v for f, v in m.items() if f not in ("n_test", "n_train")}, "n_splits": 1,
               "splits": [{"accuracy": m["accuracy"], "mean_class_accuracy": m["accuracy"]}]} for k, m in far.items()}
    ds, md, _ = _verdict_report(tmp_path / "old", old)
    assert ds["verdict"]["kind"] == "unclear" and "Measured winner" not in md
    assert ("no clear winner: fne+svm leads last+svm by 20.0 points on one split each, which gives no spread across "
            "splits to judge the lead by; no paired test applies (the runs were not scored on the same splits)") in md


def test_equal_accuracies_are_equally_best(tmp_path):
    """Values that read the same in the table (means equal but for float rounding; 0.0098 and
    0.0103 s) are all marked best, and equal accuracies are a tie."""
    ds, md, _ = _verdict_report(tmp_path, {
        "a": fake_metrics("fne+svm", 0.1 + 0.2 + 0.3, 0.01, 0.5, 0.01, seconds=0.0098),
        "b": fake_metrics("last+svm", 0.6, 0.01, 0.5, 0.01, seconds=0.0103),
        "c": fake_metrics("fc7+svm", 0.5, 0.01, 0.5, 0.01, seconds=0.02)})
    rows = md_rows(md, "pets")
    assert rows["fne+svm"][0].startswith("**") and rows["last+svm"][0].startswith("**")
    assert not rows["fc7+svm"][0].startswith("**")
    assert rows["fne+svm"][5] == rows["last+svm"][5] == "**0.01**" and rows["fc7+svm"][5] == "0.02"
    assert ds["verdict"]["kind"] == "tie"


def test_rows_on_other_splits_or_seeds_say_so(tmp_path):
    five = "5x stratified test_size=0.25"
    ds, md, html = _verdict_report(tmp_path / "mixed", {
        "a": fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, split_protocol=five, seed=0),
        "b": fake_metrics("fc7+svm", 0.8, 0.01, 0.8, 0.01, split_protocol=five, seed=1),
        "c": fake_metrics("train:frozen", 0.7, 0.0, 0.7, 0.0, kind="train", seed=0,
                          split_protocol="1x stratified test_size=0.25", splits=_splits([0.7]))})
    assert ds["protocol_note"] == (
        "The rows were not all scored on the same test images (splits 5x stratified test_size=0.25 (fne+svm, "
        "fc7+svm); 1x stratified test_size=0.25 (train:frozen); seeds 0 (fne+svm, train:frozen); 1 (fc7+svm)): "
        "their differences mix the methods with the splits; the paired tests compare rows on the test images they "
        "share.")  # a 5-split fit's first split is a 1-split train's
    assert f"**Note:** {ds['protocol_note']}" in md and "class='note protocol'" in html
    assert f"  Note: {ds['protocol_note']}" in table_text([ds])
    # one predefined split: seeds do not change the test images
    ds, md, _ = _verdict_report(tmp_path / "same", {
        "a": fake_metrics("fne+svm", 0.9, 0.0, 0.9, 0.0, split_protocol="predefined", seed=0, splits=_splits([0.9])),
        "b": fake_metrics("fc7+svm", 0.8, 0.0, 0.8, 0.0, split_protocol="predefined", seed=1, splits=_splits([0.8]))})
    assert ds["protocol_note"] is None and "not all scored" not in md
    # rows of one method named by their labels (it read "seeds 0, 1 (fc7+svm); 2 (fc7+svm)")
    ds, _, _ = _verdict_report(tmp_path / "C", {
        **{f"a{seed}": fake_metrics("fc7+svm", 0.9, 0.01, 0.9, 0.01, seed=seed, C=0.5) for seed in (0, 1)},
        "b": fake_metrics("fc7+svm", 0.8, 0.01, 0.8, 0.01, seed=2, C=1.0)})
    assert "seeds 0, 1 (fc7+svm (C=0.5)); 2 (fc7+svm (C=1))" in ds["protocol_note"]


WILSON = {"low": 0.8, "high": 0.95, "level": 0.95, "method": "Wilson score interval over 10 test images"}
PRICE_BONETT = {"low": 0.7, "high": 0.93, "level": 0.95,
                "method": "adjusted Wald interval of the mean of 3 classes' recalls over 10 test images (Price & Bonett 2004)"}


def _ci_cells(md: str, html: str, console: str, name: str) -> list[list[str]]:
    """The row's two interval cells in report.md, report.html and the console table (whose cells
    end where their column's title does)."""
    md_cells = md_rows(md, "pets")[name]
    tr = next(t for t in html.split("<tr>") if t.startswith(f"<td class='method'>{name}"))
    head, *lines = console.splitlines()[1:]
    ends = [m.end() for m in re.finditer("95% CI", head)]
    line = next(x for x in lines if x.startswith(f"  {name} "))
    return [[md_cells[1], md_cells[3]], re.findall(r"data-col='(?:accuracy|mean_class_accuracy)_ci'>([^<]*)<", tr),
            [line[e - 11:e].strip() for e in ends]]


def test_the_interval_columns_show_metrics_json_intervals_and_a_dash_for_old_runs(tmp_path):
    """A run's accuracy_ci / mean_class_accuracy_ci beside its figures, in percent, in report.md,
    report.html, report.json and the console; a run recorded before fne kept them: "—", and the
    sentence under the table names the methods of the records and why a row has none."""
    ds, md, html = _verdict_report(tmp_path, {
        "new": fake_metrics("fne+svm", 0.9, 0.0, 0.85, 0.0, splits=_splits([0.9]), accuracy_ci=WILSON,
                            mean_class_accuracy_ci=PRICE_BONETT),
        "old": fake_metrics("fc7+svm", 0.8, 0.0, 0.8, 0.0, splits=_splits([0.8]))})
    console = table_text([ds])
    assert _ci_cells(md, html, console, "fne+svm") == [["80.0–95.0", "70.0–93.0"]] * 3
    assert _ci_cells(md, html, console, "fc7+svm") == [["—", "—"]] * 3
    assert TABLE_HEAD[1:5] == ("accuracy %", "accuracy 95% CI", "mean class accuracy %", "mean class 95% CI")
    sentence = ("95% CI: the 95% confidence interval of the figure beside it, as the run's metrics.json records it "
                "(accuracy_ci, mean_class_accuracy_ci); for a row of several runs, recomputed over all their splits; "
                "accuracy: Wilson score interval; mean class accuracy: adjusted Wald interval (Price & Bonett 2004). "
                "No interval (—) for fc7+svm: its metrics.json does not record accuracy_ci or mean_class_accuracy_ci (a run "
                "written before fne kept intervals).")
    assert sentence in md and unescape(html).count(sentence) == 1
    data = json.loads((tmp_path / "rep" / "report.json").read_text())["datasets"][0]
    by = {row["method"]: row for row in data["rows"]}
    assert by["fne+svm"]["accuracy_ci"] == WILSON and by["fne+svm"]["mean_class_accuracy_ci"] == PRICE_BONETT
    assert by["fne+svm"]["no_interval"] is None
    assert by["fc7+svm"]["accuracy_ci"] is None and by["fc7+svm"]["mean_class_accuracy_ci"] is None
    assert "does not record accuracy_ci or" in by["fc7+svm"]["no_interval"] and data["interval_note"] == sentence


def test_rows_pooled_over_seeds_get_the_interval_of_all_their_random_splits_or_none_with_why(tmp_path):
    """Seeds of random splits: Nadeau & Bengio's corrected t interval over the pooled splits (here
    4 of 30 training and 10 test images: mean ± t(3) * sqrt((1/4 + 10/30) * s^2)), not either run's.
    Seeds of one predefined split, or one seed twice (same test images): none, and why."""
    from scipy import stats

    ci = {"low": 0.0, "high": 1.0, "level": 0.95, "method": "corrected resampled t interval over 2 random splits"}
    runs = {f"r{seed}": fake_metrics("fne+svm", sum(a) / 2, 0.05, sum(a) / 2, 0.05, seed=seed, accuracy_ci=ci,
                                     mean_class_accuracy_ci=ci, split_protocol="2x stratified test_size=0.25",
                                     splits=[{**s, "test_hash": f"h{seed}{i}"} for i, s in enumerate(_splits(a))])
            for seed, a in ((0, [0.7, 0.8]), (1, [0.75, 0.85]))}
    runs |= {f"t{seed}": fake_metrics("train:finetune", a, 0.0, a, 0.0, kind="train", seed=seed,
                                      split_protocol="predefined", accuracy_ci=WILSON, mean_class_accuracy_ci=WILSON,
                                      splits=_splits([a]))
             for seed, a in ((0, 0.6), (1, 0.65))}
    twice = dict(split_protocol="1x stratified test_size=0.25", seed=3, accuracy_ci=WILSON)
    runs |= {f"d{i}": fake_metrics("last+svm", a, 0.0, a, 0.0, splits=[{**_splits([a])[0], "test_hash": "same"}],
                                   **twice) for i, a in enumerate((0.5, 0.55))}
    # seeds that changed nothing on one predefined split: one measurement, its Wilson interval over 10 images
    runs |= {f"s{seed}": fake_metrics("fc6+svm", 0.4, 0.0, 0.4, 0.0, seed=seed, split_protocol="predefined",
                                      splits=_splits([0.4]), confusion=[[4, 6, 0], [0, 0, 0], [0, 0, 0]])
             for seed in (0, 1)}
    ds, md, html = _verdict_report(tmp_path, runs)
    by = {row["method"]: row for row in ds["rows"]}
    acc = np.array([0.7, 0.8, 0.75, 0.85])
    half = stats.t.ppf(0.975, 3) * np.sqrt((1 / 4 + 10 / 30) * acc.var(ddof=1))
    pooled = by["fne+svm"]
    assert pooled["runs"] == 2 and pooled["no_interval"] is None
    for key in ("accuracy_ci", "mean_class_accuracy_ci"):  # mean class accuracy = accuracy in these splits
        assert (pooled[key]["low"], pooled[key]["high"]) == pytest.approx((acc.mean() - half, acc.mean() + half))
        assert pooled[key]["method"] == "corrected resampled t interval over 4 random splits (Nadeau & Bengio 2003)"
    cells = md_rows(md, "pets")
    assert [cells["fne+svm (2 runs)"][i] for i in (1, 3)] == [f"{100 * (acc.mean() - half):.1f}–"
                                                              f"{100 * (acc.mean() + half):.1f}"] * 2
    for name in ("train:finetune", "last+svm"):
        assert by[name]["accuracy_ci"] is None and by[name]["mean_class_accuracy_ci"] is None
        assert by[name]["no_interval"].startswith("its runs were scored on the same test images")
        assert [cells[f"{name} (2 runs)"][i] for i in (1, 3)] == ["—", "—"]
        assert f"{name}: its runs were scored on the same test images" in md
    wilson = stats.binomtest(4, 10).proportion_ci(0.95, "wilson")
    same = by["fc6+svm"]
    assert (same["accuracy_ci"]["low"], same["accuracy_ci"]["high"]) == pytest.approx((wilson.low, wilson.high))
    assert same["accuracy_ci"]["method"].startswith("Wilson score interval over 10 test images")
    assert same["mean_class_accuracy_ci"]["method"].startswith("adjusted Wald interval of the mean of 1 classes")
    assert same["no_interval"] is None


def test_a_pooled_row_whose_runs_all_gave_one_figure_names_runs_and_splits_truly(tmp_path):
    """Two seeds' one-split runs that gave one accuracy: the interval's method said "each of the 2
    splits gave this accuracy", untrue of one predefined split scored twice; it names the runs (and
    that they shared their test images), or the splits and the runs they came from."""
    runs = {f"p{seed}": fake_metrics("fc6+svm", 0.4, 0.0, 0.4, 0.0, seed=seed, split_protocol="predefined",
                                     splits=_splits([0.4]), confusion=[[4, 6, 0], [0, 0, 0], [0, 0, 0]]) for seed in (0, 1)}
    runs |= {f"r{seed}": fake_metrics("fc7+svm", 0.6, 0.0, 0.6, 0.0, seed=seed, split_protocol="1x stratified",
                                      splits=[{**_splits([0.6])[0], "test_hash": f"h{seed}"}],
                                      confusion=[[6, 4, 0], [0, 0, 0], [0, 0, 0]]) for seed in (0, 1)}
    runs |= {f"k{seed}": fake_metrics("fne+svm", 0.7, 0.0, 0.7, 0.0, seed=seed, split_protocol="2x stratified",
                                      splits=[{**s, "test_hash": f"k{seed}{i}"} for i, s in enumerate(_splits([0.7] * 2))])
             for seed in (0, 1)}
    ds, _, _ = _verdict_report(tmp_path, runs)
    by = {row["method"]: row for row in ds["rows"]}
    assert by["fc6+svm"]["accuracy_ci"]["method"] == (
        "Wilson score interval over 10 test images (each of its 2 runs, scored on the same test images, gave this "
        "accuracy: no spread for a t interval)")
    assert by["fc6+svm"]["mean_class_accuracy_ci"]["method"].endswith(
        ", of the first run's split (each of its 2 runs, scored on the same test images, gave this figure: no "
        "spread for a t interval)")
    assert by["fc7+svm"]["accuracy_ci"]["method"].endswith(
        "(each of the 2 splits, one per run, gave this accuracy: no spread for a t interval)")
    assert by["fne+svm"]["accuracy_ci"]["method"].endswith(
        "(each of the 4 splits of its 2 runs gave this accuracy: no spread for a t interval)")


def test_a_pooled_row_without_what_its_interval_needs_shows_none(tmp_path):
    """Pooled runs recorded without per-split sizes; runs of direct mode (no training image: the
    corrected t's n_test / n_train is undefined); runs whose splits all gave one mean class accuracy
    and whose first run has several splits (no single split's confusion matrix to take Price &
    Bonett's interval from: the summed one would be too narrow): no interval there, and why."""
    ds, md, _ = _verdict_report(tmp_path, {
        **{f"s{seed}": fake_metrics("fc7+svm", 0.8, 0.0, 0.8, 0.0, seed=seed, split_protocol="1x stratified",
                                    splits=[{"accuracy": 0.8, "mean_class_accuracy": 0.8}]) for seed in (0, 1)},
        **{f"m{seed}": fake_metrics("fne+svm", 0.9, 0.05, 0.8, 0.0, seed=seed, split_protocol="2x stratified",
                                    splits=[{**s, "mean_class_accuracy": 0.8} for s in _splits([0.85, 0.95])])
           for seed in (0, 1)},
        **{f"d{seed}": fake_metrics("train:direct", a, 0.0, a, 0.0, kind="train", mode="direct", seed=seed,
                                    split_protocol="1x stratified", splits=[{**_splits([a])[0], "n_train": 0}])
           for seed, a in ((0, 0.6), (1, 0.7))}})
    by = {row["method"]: row for row in ds["rows"]}
    assert by["fc7+svm"]["accuracy_ci"] is None and "number of test images" in by["fc7+svm"]["no_interval"]
    assert by["train:direct"]["accuracy_ci"] is None and "direct mode" in by["train:direct"]["no_interval"]
    assert by["fne+svm"]["accuracy_ci"]["method"].startswith("corrected resampled t interval over 4 random splits")
    assert by["fne+svm"]["mean_class_accuracy_ci"] is None
    assert "no single split's confusion matrix" in by["fne+svm"]["no_interval"]
    assert md_rows(md, "pets")["fne+svm (2 runs)"][3] == "—"


def test_report_json_keeps_the_winners_worst_classes_and_confused_pairs(built):
    """report.json holds the lists report.md shows under the winner."""
    pets = next(d for d in built["json"]["datasets"] if d["dataset"] == "pets")
    assert pets["winner_worst_classes"] == [{"class": "dog", "recall": 0.6, "right": 6, "n_test": 10},
                                            {"class": "cat", "recall": 0.9, "right": 9, "n_test": 10}]
    assert pets["winner_confused_pairs"][0] == {"true": "dog", "predicted": "cat", "count": 4, "share": 0.4}
    # fake_metrics' runs predate the intervals: "—" everywhere, said once under the table
    assert all(row["accuracy_ci"] is None and row["no_interval"] for row in pets["rows"])
    assert all(cells[1] == cells[3] == "—" for cells in md_rows(built["md"], "pets").values())


@pytest.mark.parametrize("bad", ["abc", [[1, 2], [3]], [[1, 0], [0, 1]], [[float("nan")] * 3] * 3,
                                 [[-1, 0, 0], [0, 1, 0], [0, 0, 1]], [[[1]]], [[0, 0, 0]] * 3],
                         ids=["string", "ragged", "wrong shape", "nan", "negative", "3-d", "no test image"])
def test_a_corrupt_confusion_is_named_and_left_out_of_the_figures(tmp_path, bad):
    """A metrics.json whose confusion is no matrix of counts of its classes: one warning naming
    the file, the row's confusion taken from the other seed's run only, none where no run has one;
    the report (figures too) is written."""
    good = [[9, 1, 0], [4, 6, 0], [0, 0, 10]]
    root = tmp_path / "runs"
    for seed in (0, 1):
        m = fake_metrics("fne+svm", 0.8, 0.1, 0.8, 0.1, seed=seed)
        m["confusion"] = bad if seed else good
        write_run(root, f"one/s{seed}", m)
        write_run(root, f"both/s{seed}", {**m, "confusion": bad})
    for runs, pooled in (("one", good), ("both", None), ("one/s1", None)):
        with pytest.warns(UserWarning) as caught:
            r = report([root / runs], tmp_path / "rep", figures=True)
        named = [str(w.message) for w in caught if "confusion" in str(w.message)]
        assert named and all(re.match(rf"{re.escape(str(root))}/(one|both)/s[01]/metrics.json: its confusion is "
                                      r"not a 3x3 matrix of counts", n) for n in named)
        assert len(named) == (2 if runs == "both" else 1)
        assert r["datasets"][0]["rows"][0]["confusion"] == pooled
        assert (tmp_path / "rep" / "report.html").is_file()


def test_runs_written_before_solver_and_options_were_recorded_pool_with_runs_of_their_setting(tmp_path):
    """A fit run written before metrics.json had "solver" (scikit-learn was fit's one solver) or
    "options" (features / head / C as asked) was a row of its own beside today's runs of that
    setting ("fne+svm" and "fne+svm (solver=sklearn)"; each seed of C = auto a row of its C). They
    pool; what cannot be known (the torch solver's arithmetic, the labels of a Parquet run that may
    have had --label-key) stays apart and says so."""
    root = tmp_path / "runs"
    old = "2026-11-27T10:00:00+00:00"  # before --solver, --label-key and options
    write_run(root, "old", fake_metrics("fne+svm", 0.80, 0.01, 0.8, 0.01, seed=0, C=1.0, date=old))
    write_run(root, "new", fake_metrics("fne+svm", 0.82, 0.01, 0.8, 0.01, seed=1, C=1.0, solver="sklearn",
                                        solver_precision=None, options={"C": "1.0", "label_key": None}))
    write_run(root, "torch-old", fake_metrics("fne+svm", 0.7, 0.01, 0.7, 0.01, seed=0, C=1.0, solver="torch",
                                              date="2026-11-28T09:00:00+00:00"))
    write_run(root, "torch-new", fake_metrics("fne+svm", 0.7, 0.01, 0.7, 0.01, seed=1, C=1.0, solver="torch",
                                              solver_precision="float32", options={"C": "1.0"}))
    for seed, (chose, date) in enumerate(((0.1, old), ([1.0, 10.0], None))):  # C = auto, each seed its own C
        opts = {"date": date} if date else {"options": {"C": "auto"}, "solver": "sklearn"}
        write_run(root, f"cauto{seed}", fake_metrics("fc7+svm", 0.6, 0.01, 0.6, 0.01, seed=seed, C=chose, **opts,
                                                     selection={"per_split": []}))
    for seed, feat in enumerate(("fc7", "fne")):  # --features auto: its pick is in "features"
        opts = {"date": old} if seed == 0 else {"options": {"features": "auto"}, "solver": "sklearn"}
        write_run(root, f"fauto{seed}", fake_metrics("auto+svm", 0.5, 0.01, 0.5, 0.01, seed=seed, C=1.0, features=feat,
                                                     layers=[feat], embedding=feat, **opts,
                                                     selection={"per_split": [{"candidates": [{"grid": {"1": 0.5}}]}]}))
    r = report([root], tmp_path / "rep", figures=False)
    rows = md_rows((tmp_path / "rep" / "report.md").read_text(), "pets")
    assert set(rows) == {"fne+svm (solver=sklearn) (2 runs)", "fne+svm (solver=torch, solver_precision=not recorded)",
                         "fne+svm (solver=torch, solver_precision=float32)", "fc7+svm (2 runs)", "auto+svm (2 runs)"}
    by = {row["label"]: row for row in r["datasets"][0]["rows"]}
    assert by["fne+svm (solver=sklearn)"]["seeds"] == [0, 1]
    assert by["fc7+svm"]["settings"]["C"] == "auto" and by["auto+svm"]["settings"]["features"] == "auto"
    assert by["auto+svm"]["settings"]["C"] == 1.0  # one C validated: C was given, not auto

    # a Parquet run of 28 Nov, after --label-key came and before options recorded it, beside runs that
    # record label keys: which labels it classified is unknown, so it is not ranked with either
    pq = tmp_path / "pq"
    for name, extra in (("old", {"date": "2026-11-28T12:00:00+00:00"}), ("species", {"options": {"label_key": "species"}}),
                        ("plain", {"options": {"label_key": None}})):
        write_run(pq, name, fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, data="/d/t.parquet", **extra))
    ds = report([pq], tmp_path / "rep2", figures=False)["datasets"]
    assert [d["dataset"] for d in ds] == ["pets (/d/t.parquet)", "pets (/d/t.parquet, label_key not recorded)",
                                          "pets (/d/t.parquet, label_key=species)"]
    # the same run dated before --label-key existed: the DATA's own labels
    (pq / "old" / "metrics.json").write_text(json.dumps(fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, data="/d/t.parquet",
                                                                     date=old)))
    ds = report([pq], tmp_path / "rep3", figures=False)["datasets"]
    assert [(d["dataset"], d["rows"][0]["runs"]) for d in ds] == [("pets (/d/t.parquet)", 2),
                                                                 ("pets (/d/t.parquet, label_key=species)", 1)]


def test_advice_goes_to_the_section_of_the_labels_it_was_computed_for(tmp_path):
    """`fne advise t.parquet --label-key species` was shown under both label-key sections of the file
    (it matched by DATA alone); now it goes to the species section, saying so, and advice that does
    not record its labels (written before advise recorded them) is shown in each, saying that."""
    root = tmp_path / "runs"
    for key in ("species", "breed"):
        write_run(root, key, fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, data="/d/t.parquet",
                                          options={"label_key": key}))
    advice = {"kind": "advice", "recommendation": "finetune", "text": "Fine-tune.", "families": ["fine-tuning"],
              "dataset": "pets", "data": "/d/t.parquet", "arch": "vgg16", "weights": "imagenet", "reasons": [],
              "images_per_class": 500.0, "similarity": {"judged": False}}
    (root / "advice.json").write_text(json.dumps({**advice, "label_key": "species"}))
    ds = report([root], tmp_path / "rep", figures=False)["datasets"]
    assert [(d["dataset"], [a.get("labels") for a in d["advice"]]) for d in ds] == [
        ("pets (/d/t.parquet, label_key=breed)", []), ("pets (/d/t.parquet, label_key=species)", ["label_key=species"])]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.count("Advice (`fne advise`") == 1 and "- computed for the labels: label_key=species" in md
    (root / "advice.json").write_text(json.dumps(advice))  # an advice.json of before: its labels unknown
    ds = report([root], tmp_path / "rep", figures=False)["datasets"]
    assert [len(d["advice"]) for d in ds] == [1, 1]
    assert all(d["advice"][0]["labels"].startswith("not recorded") for d in ds)
    assert "computed for the labels: not recorded" in (tmp_path / "rep" / "report.html").read_text()
    # advice of today beside runs that do not record their labels (written before options): shown
    old = tmp_path / "old"
    write_run(old, "a", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, data="/d/t.parquet"))
    (old / "advice.json").write_text(json.dumps({**advice, "label_key": None}))
    assert [len(d["advice"]) for d in report([old], tmp_path / "rep-old", figures=False)["datasets"]] == [1]
    (old / "advice.json").write_text(json.dumps({**advice, "label_key": "species"}))  # and says which labels
    assert [[a.get("labels") for a in d["advice"]] for d in report([old], tmp_path / "rep-old", figures=False)[
        "datasets"]] == [["label_key=species"]]


def test_rows_of_other_seeds_on_a_predefined_split_pair_seed_with_seed_and_say_which(tmp_path):
    """fne+svm of seeds 0 and 1 against fc7+svm of seed 1, on one predefined split: McNemar's test
    paired fne+svm's seed 0 with fc7+svm's seed 1 (the first run found) and said "seed 0", leaving
    out the run of seed 1 that shares fc7+svm's seed. Now the same seed pairs first; where no seed
    is shared, the runs of other seeds are paired on the predefined split's test images (the same
    whatever the seed), and the sentence names each row's seed."""
    def run(method, seed, correct):
        split = {**_splits([correct.count("1") / 10])[0], "test_hash": "P", "correct": correct}
        return fake_metrics(method, correct.count("1") / 10, 0.0, 0.9, 0.0, seed=seed, n_splits=1, splits=[split],
                            split_protocol="predefined")

    runs = {"f0": run("fne+svm", 0, "1111111111"), "f1": run("fne+svm", 1, "1111111100"),
            "l1": run("fc7+svm", 1, "1111100001")}
    ds, _, _ = _verdict_report(tmp_path / "shared", runs)
    assert [r["runs"] for r in ds["rows"]] == [2, 1]
    assert ds["winner_test"] == (
        "no clear winner: fne+svm vs fc7+svm (McNemar exact test, two-sided p = 0.625 ≥ α = 0.05; difference +20.0 "
        "points over 10 test images both rows were scored on (seed 1; left out, having no partner in the other row: "
        "seed 0 of fne+svm), 3 vs 1 classified right by only one of them)")
    runs["l1"]["seed"] = 2
    ds, _, _ = _verdict_report(tmp_path / "apart", runs)
    assert ds["winner_test"] == (
        "no clear winner: fne+svm vs fc7+svm (McNemar exact test, two-sided p = 0.125 ≥ α = 0.05; difference +40.0 "
        "points over 10 test images both rows were scored on (seed 0 of fne+svm with seed 2 of fc7+svm: a predefined "
        "split, the same test images whatever the seed; left out, having no partner in the other row: seed 1 of "
        "fne+svm), 4 vs 0 classified right by only one of them)")


def test_a_row_pooled_over_seeds_says_what_each_seed_chose(tmp_path):
    """Seeds of --features auto that chose differently were one row named by the first run's choice
    ("fne+auto (auto chose fne+svm, C 1) (2 runs)"); it names each seed's. One choice reads once."""
    def run(seed, features, C):
        return fake_metrics("auto+svm", 0.8, 0.01, 0.8, 0.01, seed=seed, options={"features": "auto"},
                            selection={"choice": {"features": features, "head": "svm", "C": C}})

    ds, md, _ = _verdict_report(tmp_path / "two", {"a": run(0, "fne", 1.0), "b": run(1, "fc7", 10.0)})
    assert [r["label"] for r in ds["rows"]] == ["auto+svm (auto chose, by seed: 0: fne+svm, C 1; 1: fc7+svm, C 10)"]
    ds, md, _ = _verdict_report(tmp_path / "one", {"a": run(0, "fne", 1.0), "b": run(1, "fne", 1.0)})
    assert [r["label"] for r in ds["rows"]] == ["auto+svm (auto chose fne+svm, C 1)"]


def test_the_time_figure_draws_a_fit_on_cached_rows_apart_from_one_that_extracted(tmp_path, monkeypatch):
    """Two fits of one setting, one extracting its rows (40 s), the other reading them cached: the
    time figure drew both as "linear head" points, the second 40 s faster, as if it were the quicker
    method. A fit that paid no extraction here is drawn hollow and named so in the legend."""
    from matplotlib.axes import Axes

    from fne.reporting.figures import fig_time

    drawn = []
    real = Axes.scatter
    monkeypatch.setattr(Axes, "scatter", lambda ax, x, y, **kw: drawn.append((kw["label"], list(x))) or real(ax, x, y, **kw))
    ds, _, _ = _verdict_report(tmp_path, {
        "a": fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, seconds=2.0, extract=40.0, C=1.0),
        "b": fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01, seconds=2.0, extract=None, rows="cached", C=0.5),
        "t": fake_metrics("train:frozen", 0.7, 0.0, 0.7, 0.0, kind="train", seconds=100.0, splits=_splits([0.7]))})
    assert fig_time(ds)
    assert sorted(drawn) == [("linear head, fit alone (rows cached or not timed)", [2.0]),
                             ("linear head, with the extraction of its rows", [42.0]), ("network training", [100.0])]


def test_names_with_dollar_signs_are_drawn_as_typed_not_as_mathtext(tmp_path, monkeypatch):
    """A dataset or class named with two $ made matplotlib read the text between as mathtext: `$x$`
    drawn as an italic x, and `$\\frac{$` a ValueError from savefig that stopped `fne report` with a
    traceback. Every name in the figures is drawn as typed."""
    from matplotlib.text import Text

    drawn = []
    real = Text._preprocess_math
    monkeypatch.setattr(Text, "_preprocess_math", lambda self, s: drawn.append(real(self, s)) or real(self, s))
    classes = ["$1 coin", "$5 \\frac{$ note", "x"]
    write_run(tmp_path / "runs", "a", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, dataset="cost $a$ \\frac{$",
                                                   classes=classes))
    write_run(tmp_path / "runs", "b", fake_metrics("fc7+svm", 0.8, 0.01, 0.8, 0.01, dataset="cost $a$ \\frac{$",
                                                   classes=classes))
    r = report([tmp_path / "runs"], tmp_path / "rep")  # figures drawn: no ValueError
    assert {k for k in ("bars", "time", "confusion") if f"-{k}.png" in Path(r["md"]).read_text()} == {"bars", "time",
                                                                                                       "confusion"}
    ours = [(text, math) for text, math in drawn if "cost" in text or "$" in text and ("coin" in text or "note" in text)]
    assert not any(math for _, math in ours)  # (a log axis's tick labels are mathtext of matplotlib's own)
    assert {"cost $a$ \\frac{$: methods", "$5 \\frac{$ note"} <= {text for text, _ in ours}


def _cjk_report(tmp_path: Path) -> list[str]:
    """A report whose classes are named 日本 and 東京 (figures drawn); -> the warnings it gave."""
    classes = ["日本", "東京", "x"]
    for run, method in (("a", "fne+svm"), ("b", "fc7+svm")):
        write_run(tmp_path / "runs", run, fake_metrics(method, 0.9, 0.01, 0.9, 0.01, dataset="d", classes=classes))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = report([tmp_path / "runs"], tmp_path / "rep")
    assert "d-confusion.png" in Path(r["md"]).read_text()
    return [str(w.message) for w in caught]


def test_characters_no_font_draws_are_one_line_not_a_warning_per_glyph(tmp_path, monkeypatch):
    """Class names in Japanese: with no font that has them, matplotlib warned `Glyph 26085 (…)
    missing from font(s) DejaVu Sans` for each character of each figure, twice; now one line names
    the characters and what to install."""
    from fne.reporting import figures

    monkeypatch.setattr(figures, "FALLBACK_FONTS", ())
    said = _cjk_report(tmp_path)
    assert not any("Glyph" in m for m in said)
    fonts = [m for m in said if m.startswith("report figures: no font matplotlib knows draws ")]
    assert len(fonts) == 1 and all(c in fonts[0].split(" (of")[0] for c in "日本東京")
    assert "install a font that has them (Noto Sans CJK, say)" in fonts[0]


DROID = Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf")


@pytest.mark.skipif(not DROID.is_file(), reason="needs a font with CJK characters (fonts-droid-fallback)")
def test_an_installed_font_draws_the_characters_dejavu_sans_lacks(tmp_path):
    """With a CJK font matplotlib knows (one of figures.FALLBACK_FONTS), 日本 is drawn in it: no warning."""
    from matplotlib import font_manager

    font_manager.fontManager.addfont(str(DROID))  # as a fresh font list finds it on this system
    assert not any("font" in m or "Glyph" in m for m in _cjk_report(tmp_path))


def test_the_report_names_the_winners_classes_without_a_test_image(tmp_path):
    """A predefined split with no test image of a class: its recall is unknown and the mean class
    accuracy is over the others; `fne fit` warned of it, and report.md and report.html name it
    too (a <b> in its name as typed), beside the classes recognised worst; none where all are tested."""
    from html import escape

    classes = ["a", "<b>c</b>", "d"]
    write_run(tmp_path / "runs", "w", fake_metrics("fne+svm", 0.9, 0.0, 0.9, 0.0, classes=classes,
                                                   confusion=[[9, 1, 0], [0, 0, 0], [0, 0, 10]]))
    r = report([tmp_path / "runs"], tmp_path / "rep", figures=False)
    said = "Classes with no test image (no recall; the mean class accuracy is over the others): "
    assert f"{said}\\<b\\>c\\</b\\>." in Path(r["md"]).read_text().splitlines()
    assert f"<p class='untested'>{escape(said + '<b>c</b>.', quote=False)}</p>" in Path(r["html"]).read_text()
    write_run(tmp_path / "all", "w", fake_metrics("fne+svm", 0.9, 0.0, 0.9, 0.0))  # every class tested
    assert "no test image" not in Path(report([tmp_path / "all"], tmp_path / "rep2", figures=False)["md"]).read_text()


def test_a_run_that_repeats_another_counts_once(tmp_path):
    """The same fit run twice into two folders (one seed, the same predictions on every split) was
    pooled as "2 runs" of shared test images: no interval, "its runs … differ", and the verdict left
    one of them out as "having no partner". A repeat now counts once, and its row says so."""
    def splits(accs, seed):
        return [{**s, "test_hash": f"h{seed}{i}", "correct": "1" * round(10 * a) + "0" * (10 - round(10 * a))}
                for i, (s, a) in enumerate(zip(_splits(accs), accs, strict=True))]

    fne = fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, seed=0, n_splits=3, splits=splits([0.9, 1.0, 0.8], 0))
    runs = {"f0": fne, "again/f0": fne,
            "l0": fake_metrics("fc7+svm", 0.6, 0.01, 0.6, 0.01, seed=0, n_splits=3, splits=splits([0.6, 0.7, 0.5], 0))}
    ds, md, _ = _verdict_report(tmp_path, runs)
    row = ds["rows"][0]
    assert row["method"] == "fne+svm" and row["runs"] == 1 and row["n_splits"] == 3 and len(row["repeats"]) == 1
    assert "same test images" not in str(row["no_interval"])  # its interval is the run's own, not withheld
    assert "1 run(s) repeating one counted once" in md
    assert "left out" not in ds["winner_test"]
    # the same seed but other predictions (a nondeterministic run, another machine): two runs, as before
    runs["again/f0"] = {**fne, "splits": splits([0.9, 0.9, 0.8], 0)}
    ds, md, _ = _verdict_report(tmp_path / "differ", runs)
    assert ds["rows"][0]["runs"] == 2 and not ds["rows"][0]["repeats"] and "repeating" not in md


def test_runs_of_one_seed_on_other_test_images_are_said_to_be_of_changed_data(tmp_path):
    """A folder's images moved between classes (or added) between two `fit` runs of one seed: their
    splits drew other test images, and the report pooled them as two seeds without a word. It still
    pools them (the class names agree), and a warning names both run folders."""
    def splits(seed, moved=""):
        return [{**s, "test_hash": f"h{seed}{i}{moved}", "correct": "1" * 9 + "0"} for i, s in enumerate(_splits([0.9] * 3))]

    runs = {"before": fake_metrics("fne+svm", 0.9, 0.0, 0.9, 0.0, seed=0, n_splits=3, splits=splits(0)),
            "seed1": fake_metrics("fne+svm", 0.9, 0.0, 0.9, 0.0, seed=1, n_splits=3, splits=splits(1))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # other seeds draw other test images: no warning
        _verdict_report(tmp_path / "a", runs)
    runs["after"] = fake_metrics("fne+svm", 0.9, 0.0, 0.9, 0.0, seed=0, n_splits=3, splits=splits(0, "moved"))
    with pytest.warns(UserWarning, match=r"runs/after and .*runs/before: one method, setting and seed \(0\), scored on other test "
                                         r"images: DATA's images or labels changed between the two runs"):
        ds, _, _ = _verdict_report(tmp_path / "b", runs)
    assert ds["rows"][0]["runs"] == 3


def test_runs_of_one_data_whose_images_moved_between_classes_are_sections_of_their_own(digits_folder, warm_cache,
                                                                                       tmp_path):
    """Two images moved between two classes of a folder (the same class names) between `fne fit`
    runs of two seeds: the report pooled them as one row, "last+svm (2 runs)", without a word (a
    warning came only for runs of one seed). fit and train record a fingerprint of which image has
    which label (`labels_fingerprint`, over DATA's listing as given, alike in both): each labelling
    is a section of its own, and a train run of the first joins the first fit's."""
    import shutil

    from fne.linear.fit import fit
    from fne.training.train import train

    data, cache = tmp_path / "data", str(tmp_path / "cache")
    shutil.copytree(digits_folder, data)
    shutil.copytree(warm_cache, cache)
    store = dict(arch="efficientnet_lite0", weights="random", precision="fp32", storage_dtype="float32", cache=cache)
    first = fit(data, features="last", splits=2, seed=0, out=tmp_path / "runs" / "fit0", progress=False, **store)
    trained = train(data, "frozen", tmp_path / "runs" / "frozen", weights="random", epochs=1, val_fraction=0.0,
                    arch="efficientnet_lite0", image_size=32, workers=0, cache=cache, progress=False)
    assert trained["labels_fingerprint"] == first["labels_fingerprint"] is not None
    for a, b in (("0", "1"), ("1", "0")):  # one image of each class to the other: the same classes and counts
        moved = sorted((data / a).glob("*.png"))[0]
        moved.rename(data / b / f"moved-{moved.name}")
    second = fit(data, features="last", splits=2, seed=1, out=tmp_path / "runs" / "fit1", progress=False, **store)
    assert second["labels_fingerprint"] != first["labels_fingerprint"] and second["classes"] == first["classes"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn of: each labelling has its section
        ds = report([tmp_path / "runs"], tmp_path / "rep", figures=False)["datasets"]
    sections = {d["dataset"].split(", images and labels ")[1][:19]: sorted((r["method"], len(r["paths"])) for r in d["rows"])
                for d in ds}
    assert sorted(sections.values()) == [[("last+svm", 1)], [("last+svm", 1), ("train:frozen", 1)]]
    assert set(sections) == {"1 of 2: 4 classes, ", "2 of 2: 4 classes, "}


def test_runs_before_and_after_images_were_added_are_named_by_images_and_labels(tmp_path):
    """Images added to DATA under its classes, no old image relabelled: another fingerprint, so
    another section, which was named "labels 2 of 2" though no label changed."""
    write_run(tmp_path / "runs", "a", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, labels_fingerprint="aaaa"))
    write_run(tmp_path / "runs", "b", fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01, labels_fingerprint="bbbb",
                                                   n_images=46, date="2026-11-30T09:15:00+00:00"))
    ds = report([tmp_path / "runs"], tmp_path / "rep", figures=False)["datasets"]
    assert sorted(d["dataset"] for d in ds) == [
        "pets (/data/pets, images and labels 1 of 2: 3 classes, since 2024-01-02 03:04)",
        "pets (/data/pets, images and labels 2 of 2: 3 classes, since 2026-11-30 09:15)"]


def test_a_run_without_a_labels_fingerprint_joins_the_one_labelling_of_its_classes(tmp_path):
    """Runs written before metrics.json recorded `labels_fingerprint`: with runs of one labelling of
    their classes they are one section, as before; where runs of two labellings of those classes
    are there, which one an old run had cannot be known, and it is a section of its own. A direct
    run joins the labelling of its fingerprint."""
    later = "2026-11-30T09:15:00+00:00"
    write_run(tmp_path / "runs", "old", fake_metrics("fc7+svm", 0.8, 0.01, 0.8, 0.01))
    write_run(tmp_path / "runs", "a", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, labels_fingerprint="aaaa"))
    assert [d["dataset"] for d in report([tmp_path / "runs"], tmp_path / "rep", figures=False)["datasets"]] == ["pets"]
    write_run(tmp_path / "runs", "b", fake_metrics("fne+svm", 0.7, 0.01, 0.7, 0.01, labels_fingerprint="bbbb",
                                                   date=later, seed=1))
    write_run(tmp_path / "runs", "d", fake_metrics("train:direct", 0.95, 0.0, 0.95, 0.0, kind="train", mode="direct",
                                                   classes=CLASSES[:2], confusion=[[9, 1], [0, 10]], n_excluded=3,
                                                   labels_fingerprint="bbbb",
                                                   splits=[{"accuracy": 0.95, "mean_class_accuracy": 0.95}]))
    ds = report([tmp_path / "runs"], tmp_path / "rep", figures=False)["datasets"]
    assert sorted((d["dataset"], sorted(r["method"] for r in d["rows"])) for d in ds) == [
        ("pets (/data/pets, images and labels 1 of 2: 3 classes, since 2024-01-02 03:04)", ["fne+svm"]),
        ("pets (/data/pets, images and labels 2 of 2: 3 classes, since 2026-11-30 09:15)", ["fne+svm", "train:direct"]),
        ("pets (/data/pets, images and labels not recorded: 3 classes)", ["fc7+svm"])]


def test_a_rerun_on_a_copy_of_data_at_another_path_joins_the_run_it_repeats(tmp_path):
    """A colleague's run and a reviewer's rerun of it on a copy of DATA (another path, the same
    images and labels: one `labels_fingerprint`) were two sections, "pets (/colleague/pets)" and
    "pets (/review/pets)", so the rerun could not be seen to repeat the run, nor another method of
    the reviewer's be tested against it. They are one: the rerun is a repeat counted once, and the
    two methods are paired (McNemar's test on the shared test images). A copy of other images
    (another fingerprint) stays a section of its own."""
    one = [{"accuracy": 0.9, "mean_class_accuracy": 0.9, "n_train": 30, "n_test": 10, "test_hash": "t", "correct": "1" * 9 + "0"}]
    kw = dict(n_splits=1, split_protocol="predefined", labels_fingerprint="aaaa")
    write_run(tmp_path / "colleague", "fne", fake_metrics("fne+svm", 0.9, 0.0, 0.9, 0.0, splits=one, **kw,
                                                          data_resolved="/colleague/pets"))
    write_run(tmp_path / "review", "fne", fake_metrics("fne+svm", 0.9, 0.0, 0.9, 0.0, splits=one, **kw,
                                                       data="/review/pets", data_resolved="/review/pets",
                                                       date="2026-11-30T09:15:00+00:00"))
    worse = [{**one[0], "accuracy": 0.5, "correct": "1" * 5 + "0" * 5}]
    write_run(tmp_path / "review", "fc7", fake_metrics("fc7+svm", 0.5, 0.0, 0.5, 0.0, splits=worse, **kw,
                                                       data="/review/pets", data_resolved="/review/pets"))
    r = report([tmp_path / "colleague", tmp_path / "review"], tmp_path / "rep", figures=False)
    (ds,) = r["datasets"]
    assert ds["dataset"] == "pets" and [(row["method"], row["runs"]) for row in ds["rows"]] == [("fne+svm", 1),
                                                                                                 ("fc7+svm", 1)]
    assert ds["rows"][0]["repeats"] == [str(tmp_path / "review" / "fne")]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "McNemar" in md and (f"Repeats, counted once (the same seed, every test image classified the same): "
                                f"{tmp_path / 'review' / 'fne'} of {tmp_path / 'colleague' / 'fne'} (fne+svm).") in md
    write_run(tmp_path / "review", "other", fake_metrics("fne+svm", 0.8, 0.0, 0.8, 0.0, splits=one, n_splits=1,
                                                         split_protocol="predefined", labels_fingerprint="bbbb",
                                                         data="/other/pets", data_resolved="/other/pets"))
    names = [d["dataset"] for d in report([tmp_path / "colleague", tmp_path / "review"], tmp_path / "rep",
                                          figures=False)["datasets"]]
    assert names == ["pets (/colleague/pets)", "pets (/other/pets)"]


def test_runs_of_one_data_under_other_names_are_one_section_named_once(tmp_path):
    """A symlink to DATA (`fne fit link`, its runs record DATA resolved to the target) and a copy of
    DATA in a folder of another name (the same images and labels: one `labels_fingerprint`) were each
    a section of their own, `link` and `copy`: one section, named by the name most runs have, the
    other names said. Other images under another name stay apart; so do two pipeline dataset keys
    of one DATA (two subsets of it)."""
    runs = tmp_path / "runs"
    kw = dict(labels_fingerprint="aaaa", data_resolved="/data/pets")
    write_run(runs, "a", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, **kw))
    write_run(runs, "b", fake_metrics("fc7+svm", 0.8, 0.01, 0.8, 0.01, **kw))
    write_run(runs, "link", fake_metrics("last+svm", 0.7, 0.01, 0.7, 0.01, dataset="link", data="link", **kw))
    write_run(runs, "copy", fake_metrics("fc6+svm", 0.6, 0.01, 0.6, 0.01, dataset="copy", data="/mnt/x/copy",
                                         labels_fingerprint="aaaa", data_resolved="/mnt/x/copy"))
    write_run(runs, "other", fake_metrics("fne+svm", 0.5, 0.01, 0.5, 0.01, dataset="other", data="/data/other",
                                          labels_fingerprint="bbbb", data_resolved="/data/other"))
    r = report([runs], tmp_path / "rep", figures=False)
    assert [(d["dataset"], [row["method"] for row in d["rows"]]) for d in r["datasets"]] == [
        ("other", ["fne+svm"]), ("pets", ["fne+svm", "fc7+svm", "last+svm", "fc6+svm"])]
    note = ("The same images, given under other names (a link to DATA or a copy of it: one resolved folder, or the "
            "same images and labels), are one section: copy (/mnt/x/copy); link (link); pets (/data/pets).")
    assert r["datasets"][1]["names_note"] == note and r["datasets"][0]["names_note"] is None
    assert f"**Note:** {note}" in (tmp_path / "rep" / "report.md").read_text() and f"  Note: {note}" in table_text(
        r["datasets"])
    for name, key in (("link", "pets-small"), ("a", "pets")):  # one DATA, two pipeline datasets: two sections
        (runs / name / "step.json").write_text(json.dumps({"dataset_key": key}))
    names = [d["dataset"] for d in report([runs], tmp_path / "rep", figures=False)["datasets"]]
    assert names == ["copy", "other", "pets", "pets-small"]


def test_several_damaged_files_and_pairs_on_other_test_images_are_one_line_each(tmp_path):
    """Four metrics.json / step.json files cut short were a warning each, and so was each pair of runs
    of one seed scored on other test images (DATA changed between them): one line per kind, counting
    them and naming the first few (`progress.first_few`); one of a kind reads as before."""
    def splits(tag):
        return [{**s, "test_hash": f"h{i}{tag}", "correct": "1" * 9 + "0"} for i, s in enumerate(_splits([0.9] * 3))]

    runs = tmp_path / "runs"
    for method in ("fne+svm", "fc7+svm", "fc6+svm"):  # three rows, each of two runs of seed 0 on other test images
        for tag in ("a", "b"):
            write_run(runs, f"{method}/{tag}", fake_metrics(method, 0.9, 0.0, 0.9, 0.0, seed=0, n_splits=3,
                                                           splits=splits(tag)))
    for name in ("x1", "x2", "x3"):
        write_run(runs, name, {}).joinpath("metrics.json").write_text('{"accuracy": 0.5, "method": ')
    (runs / "fne+svm" / "a" / "step.json").write_text("[")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        report([runs], tmp_path / "rep", figures=False)
    text = [str(w.message) for w in said]
    (damaged,) = [t for t in text if "metrics.json" in t or "step.json" in t]
    assert damaged.startswith("skipped 4 files (no JSON object in them: cut short (a full disk, a killed copy), "
                              "damaged or another program's): ")
    assert all(f"{runs / f} (unreadable (Expecting" in damaged for f in ("x1/metrics.json", "x3/metrics.json",
                                                                         "fne+svm/a/step.json"))
    (pairs,) = [t for t in text if "other test images" in t]
    assert pairs.startswith("3 pairs of runs of one method, setting and seed, scored on other test images: DATA's "
                            "images or labels changed between the two runs;")
    assert pairs.endswith(", ".join(f"{runs / m / 'a'} and {runs / m / 'b'} (seed 0)" for m in ("fc6+svm", "fc7+svm",
                                                                                                 "fne+svm")))


def test_pairs_of_both_orders_are_one_line_too():
    """Runs of one seed written before fne kept DATA's order beside today's: a line per pair (was a
    warning each), one line for several."""
    from fne.reporting.settings import say_pairs

    with pytest.warns(UserWarning) as said:
        say_pairs([("order", f"runs/old{i}", f"runs/new{i}", 0) for i in range(7)])
    (line,) = [str(w.message) for w in said]
    assert line.startswith("7 pairs of runs of one method, setting and seed, the first was written before fne listed ")
    assert line.endswith(": runs/old0 and runs/new0 (seed 0), runs/old1 and runs/new1 (seed 0), runs/old2 and runs/new2 "
                         "(seed 0), runs/old3 and runs/new3 (seed 0), runs/old4 and runs/new4 (seed 0) and 2 more")


@pytest.mark.parametrize("field, damage", [
    ("data_resolved", lambda m: {**m, "data_resolved": 1.5}),  # TypeError: stat: path should be string ... not float
    ("data", lambda m: {**m, "data": 3}),
    ("classes", lambda m: {**m, "classes": 3}),  # TypeError: object of type 'int' has no len()
    ("classes", lambda m: {**m, "classes": [{"a": 1}]}),
    ("accuracy_std", lambda m: {**m, "accuracy_std": -0.1}),  # ValueError: 'xerr' must not contain negative values
])
def test_a_damaged_path_class_list_or_spread_skips_its_run_with_a_line(tmp_path, field, damage):
    """A hand-edited metrics.json whose DATA paths or classes are of other types, or whose spread is
    negative, raised a traceback in the report (stat of a float, len of an int, matplotlib's error
    bars); it is left out with a line naming it and the field, as other damaged fields are."""
    runs = make_runs(tmp_path / "runs")
    write_run(tmp_path / "runs", "odd", damage(fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, labels_fingerprint="a")))
    with pytest.warns(UserWarning, match=f"^skipped {tmp_path / 'runs' / 'odd' / 'metrics.json'}: its {field} not as "
                                         f"fne writes them"):
        r = report([runs], tmp_path / "rep")
    assert str(tmp_path / "runs" / "odd") not in json.dumps(r) and (tmp_path / "rep" / "report.html").is_file()


def test_a_run_of_a_newer_metrics_format_is_left_out_with_a_line_and_an_earlier_one_read_as_before(tmp_path):
    """metrics.json records its format (`fne.metrics.METRICS_FORMAT`). A fit or train run a newer fne
    wrote, whose fields this fne may misread (a setting it does not know, runs that differ in it
    pooled into one row), was tabulated as one of its own; it is left out with one line naming the
    files and both formats. A run without a format (written before fne recorded it), and one of
    this format with a key fne does not write (a note of the user's), are read as before; a format
    that is no whole number is a damaged field, left out as the others are."""
    from fne.metrics import METRICS_FORMAT

    runs, n = tmp_path / "runs", METRICS_FORMAT
    write_run(runs, "earlier", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01))
    write_run(runs, "now", fake_metrics("fc7+svm", 0.8, 0.01, 0.8, 0.01, format=n, note="a user's note"))
    write_run(runs, "newer_fit", fake_metrics("fc6+svm", 0.7, 0.01, 0.7, 0.01, format=n + 1, future_setting="x"))
    write_run(runs, "newer_train", fake_metrics("train:finetune", 0.6, 0.0, 0.6, 0.0, kind="train", format=n + 1))
    write_run(runs, "odd", fake_metrics("fc8+svm", 0.6, 0.01, 0.6, 0.01, format="2"))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        r = report([runs], tmp_path / "rep", figures=False)
    lines = [str(w.message) for w in said if "metrics.json" in str(w.message)]
    assert len(lines) == 2 and set(lines) == {
        f"skipped 2 files (written by a newer fne: format {n + 1}, this fne reads up to {n}; upgrade fne): "
        f"{runs / 'newer_fit' / 'metrics.json'}, {runs / 'newer_train' / 'metrics.json'}",
        f"skipped {runs / 'odd' / 'metrics.json'}: its format not as fne writes them (a damaged or hand-edited file)"}
    assert sorted(row["method"] for ds in r["datasets"] for row in ds["rows"]) == ["fc7+svm", "fne+svm"]


def test_a_report_without_figures_leaves_no_figures_folder(tmp_path):
    """`fne report --no-figures` into the folder of a report with figures removed its figures but
    left an empty report_files/; the folder goes with them, and stays where a file of the user's
    is in it."""
    runs = make_runs(tmp_path / "runs")
    for name, keep in (("rep", None), ("kept", "mine.txt")):
        out = tmp_path / name
        report([runs], out)
        assert {p.suffix for p in (out / "report_files").iterdir()} == {".png"}
        if keep:
            (out / "report_files" / keep).write_text("mine")
        report([runs], out, figures=False)
        assert not (out / "report_files").exists() if keep is None else [
            p.name for p in (out / "report_files").iterdir()] == [keep]
    report([runs], tmp_path / "fresh", figures=False)
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == [
        "report.csv", "report.html", "report.json", "report.md", "report.tex"]


@pytest.mark.parametrize("field, value", [
    (f, v) for f in ("fit_seconds", "extract_seconds", "accuracy", "mean_class_accuracy", "accuracy_std", "n_test",
                     "n_train")
    for v in (1e308, -1e308, float("inf"), float("-inf"), float("nan"), -1.0)] + [
    ("fit_seconds", 1e13), ("accuracy", 1.5), ("n_images", 2.5), ("extract_cost", {"seconds": 1e308}),
    ("splits", [{"accuracy": 1e308, "mean_class_accuracy": 0.9, "n_train": 30, "n_test": 10}] * 2)])
def test_a_number_no_run_measures_leaves_its_run_out_with_a_line_naming_the_field(tmp_path, field, value):
    """metrics.json's numbers the report shows, draws and tests, edited to 1e308, an infinity, NaN
    (json reads `Infinity`, `NaN`) or negative: 1e308 seconds ended the report in matplotlib's
    traceback, a negative n_test or n_train in the t-test's (a math domain error), and a mean class
    accuracy of NaN or 1e308 was shown without a word. fne writes none of these; the run is left out
    with a line naming the file and the field, with figures and without, as other damaged fields are."""
    runs = make_runs(tmp_path / "runs")
    odd = runs / "a" / "fne" / "metrics.json"
    odd.write_text(json.dumps({**json.loads(odd.read_text()), field: value}))  # Infinity, NaN: as Python writes them
    for figures in (True, False):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            r = report([runs], tmp_path / f"rep{figures}", figures=figures)
        assert [str(w.message) for w in said if str(odd) in str(w.message)] == [
            f"skipped {odd}: its {field} not as fne writes them (a damaged or hand-edited file)"]
        assert str(odd.parent) not in json.dumps([row["paths"] for ds in r["datasets"] for row in ds["rows"]])


@pytest.mark.parametrize("value", [0, 0.0, 1e11])
def test_numbers_at_the_edges_of_what_runs_measure_are_shown_as_they_are(tmp_path, value):
    """Zero seconds, no accuracy, no spread, and a run of three years are numbers a run can record:
    shown as they are, figures drawn."""
    runs = make_runs(tmp_path / "runs")
    odd = runs / "a" / "fne" / "metrics.json"
    m = json.loads(odd.read_text())
    odd.write_text(json.dumps({**m, "fit_seconds": value, "extract_seconds": value, "accuracy_std": 0.0,
                               "accuracy": 0.0 if value == 0 else m["accuracy"]}))
    r = report([runs], tmp_path / "rep")
    (row,) = [row for ds in r["datasets"] for row in ds["rows"] if row["paths"] == [str(odd.parent)]]
    assert (row["seconds"], row["extract_seconds"], row["accuracy_std"]) == (value, value, 0.0)
    assert row["accuracy"] == (0.0 if value == 0 else m["accuracy"]) and (tmp_path / "rep" / "report_files").is_dir()


def test_a_step_json_whose_extraction_seconds_no_run_measures_is_left_out_and_its_run_kept(tmp_path):
    """`fne run`'s step.json records the extraction that computed a fit's rows; 1e308 seconds there
    ended the report in matplotlib's traceback too. That record is left out with a line naming the
    file, and the run is read as one without it (its extraction as metrics.json records it)."""
    runs = make_runs(tmp_path / "runs")
    step = runs / "a" / "fne" / "step.json"
    step.write_text(json.dumps({"dataset_key": "pets", "extract": {"seconds": 1e308, "n_computed": 40}}))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        r = report([runs], tmp_path / "rep")
    assert [str(w.message) for w in said if "step.json" in str(w.message)] == [
        f"skipped {step}: its extract not as fne writes them (a damaged or hand-edited file)"]
    (row,) = [row for ds in r["datasets"] for row in ds["rows"] if row["paths"] == [str(step.parent)]]
    assert row["extract_seconds"] == 40.0 and (tmp_path / "rep" / "report_files").is_dir()


@pytest.mark.parametrize("field, value", [
    (f, {**WILSON, **v}) for f in ("accuracy_ci", "mean_class_accuracy_ci")
    for v in ({"low": -1.0}, {"high": 1.5}, {"low": 0.96}, {"level": 1.0}, {"level": 0.0}, {"level": float("inf")},
              {"level": "95%"})] + [("n_splits", 0), ("n_splits", -1)])
def test_an_interval_or_split_count_no_run_records_leaves_its_run_out_with_a_line_naming_the_field(tmp_path, field,
                                                                                                  value):
    """An interval whose low or high lies outside 0-1 or low above high, or whose level is not
    in (0, 1), was shown (`-100.0–98.1 (inf%)`), and so was n_splits 0 or -1: the run is left out
    with a line naming the file and the field, as other numbers no run measures are."""
    runs = make_runs(tmp_path / "runs")
    odd = runs / "a" / "fne" / "metrics.json"
    odd.write_text(json.dumps({**json.loads(odd.read_text()), field: value}))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        r = report([runs], tmp_path / "rep", figures=False)
    assert [str(w.message) for w in said if str(odd) in str(w.message)] == [
        f"skipped {odd}: its {field} not as fne writes them (a damaged or hand-edited file)"]
    assert str(odd.parent) not in json.dumps([row["paths"] for ds in r["datasets"] for row in ds["rows"]])


def test_intervals_and_split_counts_at_their_edges_are_shown(tmp_path):
    """An interval of no width at 0 or 1, at another level than 95%, and one split: what runs record."""
    runs = make_runs(tmp_path / "runs")
    odd = runs / "a" / "fne" / "metrics.json"
    edge = {"low": 1.0, "high": 1.0, "level": 0.9, "method": "Wilson score interval over 10 test images"}
    odd.write_text(json.dumps({**json.loads(odd.read_text()), "n_splits": 1, "accuracy_ci": edge,
                               "mean_class_accuracy_ci": {**edge, "low": 0.0, "high": 0.0}}))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        r = report([runs], tmp_path / "rep", figures=False)
    assert not [w for w in said if str(odd) in str(w.message)]
    (row,) = [row for ds in r["datasets"] for row in ds["rows"] if row["paths"] == [str(odd.parent)]]
    assert (row["accuracy_ci"]["low"], row["accuracy_ci"]["level"], row["mean_class_accuracy_ci"]["high"]) == (1.0, 0.9, 0.0)
    assert "100.0–100.0 (90%)" in (tmp_path / "rep" / "report.md").read_text()


def test_a_font_list_without_matplotlibs_own_fonts_is_one_line(tmp_path, monkeypatch, capsys):
    """A font list made by another install of matplotlib's release can lack the fonts it ships
    (mathtext's STIX and cm): each report then logged 21 lines of `findfont: Font family
    ['STIXGeneral'] not found. Falling back to DejaVu Sans.`; now one warning says what to remove."""
    from matplotlib import font_manager

    fm = font_manager.fontManager
    monkeypatch.setattr(fm, "ttflist", [f for f in fm.ttflist if not f.name.startswith(("STIX", "cm"))])
    fm._findfont_cached.cache_clear()
    import matplotlib.mathtext

    matplotlib.mathtext.MathTextParser._parse_cached.cache_clear()
    try:
        for run, method in (("a", "fne+svm"), ("b", "fc7+svm")):
            write_run(tmp_path / "runs", run, fake_metrics(method, 0.9, 0.01, 0.9, 0.01, dataset="d"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report([tmp_path / "runs"], tmp_path / "rep")
    finally:
        fm._findfont_cached.cache_clear()
        matplotlib.mathtext.MathTextParser._parse_cached.cache_clear()
    said = [str(w.message) for w in caught if "font list" in str(w.message)]
    assert len(said) == 1 and "STIXGeneral" in said[0] and "fontlist-*.json) for matplotlib to make it again" in said[0]
    assert "findfont" not in capsys.readouterr().err
