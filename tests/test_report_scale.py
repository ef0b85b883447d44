"""fne report over a study's many runs (4 backbones x several methods x seeds): notes and figures
that stay legible at 20-30 rows a section."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from fne.reporting.report import report
from tests.test_report import _splits, _verdict_report, fake_metrics, write_run

ARCHS = ("vgg16", "resnet50", "efficientnet_lite0", "timm:vit_small_patch16_224")
FITS = ("fne+svm", "fne+logreg", "last+svm", "last+logreg")
THREE = "3x stratified test_size=0.25"
ONE = "1x stratified test_size=0.25"


def study(quality: float = 0.6) -> dict[str, dict]:
    """24 rows: per backbone 4 fits (3 splits) and 2 trains (1 split), each of seeds 0 and 1."""
    runs = {}
    for i, arch in enumerate(ARCHS):
        for j, method in enumerate(FITS):
            for seed in (0, 1):
                acc = quality + 0.05 * i + 0.01 * j
                runs[f"{arch}/{method}/{seed}"] = fake_metrics(
                    method, acc, 0.01, acc, 0.01, arch=arch, weights_fingerprint=f"fp-{arch}", seed=seed,
                    split_protocol=THREE, seconds=1.0 + 3 * j + i, extract=None, rows="cached",
                    splits=_splits([acc - 0.01, acc, acc + 0.01]), n_splits=3)
        for k, mode in enumerate(("frozen", "finetune")):
            for seed in (0, 1):
                acc = quality + 0.05 * i + 0.02 * k
                runs[f"{arch}/{mode}/{seed}"] = fake_metrics(
                    f"train:{mode}", acc, 0.0, acc, 0.0, kind="train", mode=mode, arch=arch,
                    weights_fingerprint=f"fp-{arch}", seed=seed, split_protocol=ONE, seconds=500.0 + 100 * i + 50 * k,
                    splits=_splits([acc]), n_splits=1)
    return runs


def with_auto(runs: dict[str, dict]) -> dict[str, dict]:
    """`runs` and, per backbone and seed, a --C auto fit whose splits chose other Cs: 4 rows whose
    label ends in one note, "(auto chose fne+svm, C 1; the most frequent of 3 splits' choices)"."""
    for arch in ARCHS:
        for seed in (0, 1):
            runs[f"{arch}/auto/{seed}"] = {**runs[f"{arch}/fne+svm/{seed}"], "C": [1.0, 10.0, 1.0], "selection": {
                "choice": {"features": "fne", "head": "svm", "C": 1.0}, "per_split_choices": ["1", "10", "1"]}}
    return runs


AUTO_NOTE = "auto chose fne+svm, C 1; the most frequent of 3 splits' choices"


def test_the_protocol_note_names_a_study_s_rows_by_method_not_one_by_one(tmp_path):
    """24 rows of 4 backbones, fits of 3 splits and trains of 1: the note listed all 24 labels
    ("fne+svm [vgg16 (imagenet)], fne+svm [resnet50 (imagenet)], …", 4 KB in report.md); it names
    each group's count and methods."""
    ds, md, _ = _verdict_report(tmp_path, study())
    assert len(ds["rows"]) == 24
    assert ds["protocol_note"] == (
        f"The rows were not all scored on the same test images (splits {THREE} (16 rows: "
        + ", ".join(sorted(FITS, key=lambda m: [r["method"] for r in ds["rows"]].index(m)))
        + f"); {ONE} (8 rows: train:finetune, train:frozen)): their differences mix the methods with the splits; "
        "the paired tests compare rows on the test images they share.")
    assert f"**Note:** {ds['protocol_note']}" in md and "[vgg16" not in ds["protocol_note"]


def test_the_protocol_note_still_names_a_few_rows_each(tmp_path):
    ds, _, _ = _verdict_report(tmp_path, {
        "a": fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, split_protocol=THREE, arch="resnet50"),
        "b": fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01, split_protocol=THREE),
        "c": fake_metrics("train:frozen", 0.7, 0.0, 0.7, 0.0, kind="train", split_protocol=ONE, splits=_splits([0.7]))})
    assert (f"(splits {THREE} (fne+svm [resnet50 (imagenet)], fne+svm [vgg16 (imagenet)]); "
            f"{ONE} (train:frozen [vgg16 (imagenet)]))") in ds["protocol_note"]


def test_the_time_figure_numbers_the_frontier_of_a_study_and_keys_it_below(tmp_path, monkeypatch):
    """24 points labelled each covered one another and the points (labels past the axes, cut
    off); of more than LABEL_ALL rows, the rows no faster row matches in accuracy are numbered on
    the figure and named in a key below it, and the others are left to the table."""
    from matplotlib.axes import Axes

    from fne.reporting import figures

    annotated, texts = [], []
    real_annotate, real_text = Axes.annotate, Axes.text
    monkeypatch.setattr(Axes, "annotate", lambda ax, s, xy, **kw: annotated.append((s, xy)) or real_annotate(ax, s, xy, **kw))
    monkeypatch.setattr(Axes, "text", lambda ax, x, y, s, **kw: texts.append(s) or real_text(ax, x, y, s, **kw))
    ds, _, _ = _verdict_report(tmp_path, study())
    assert figures.fig_time(ds)
    points = [(r["seconds"], 100 * r["accuracy"], r["label"]) for r in ds["rows"]]
    frontier = sorted(p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and q[:2] != p[:2] for q in points))
    assert 1 < len(frontier) < len(points) and len(points) > figures.LABEL_ALL
    assert [s for s, _ in annotated] == [str(k) for k in range(1, len(frontier) + 1)]
    assert [xy for _, xy in annotated] == [p[:2] for p in frontier]
    key = texts[-1].splitlines()
    assert key[0].startswith(f"numbered: the {len(frontier)} rows") and f"the other {24 - len(frontier)}" in key[0]
    assert key[1:] == [f"{k}: {p[2]}" for k, p in enumerate(frontier, 1)]


def test_the_time_figure_labels_every_point_of_a_few_rows(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from fne.reporting.figures import fig_time

    annotated = []
    real = Axes.annotate
    monkeypatch.setattr(Axes, "annotate", lambda ax, s, xy, **kw: annotated.append(s) or real(ax, s, xy, **kw))
    runs = {k: m for k, m in study().items() if k.startswith("vgg16/") and k.endswith("/0")}
    ds, _, _ = _verdict_report(tmp_path, runs)
    assert fig_time(ds)
    assert sorted(annotated) == sorted(r["label"] for r in ds["rows"])


def test_report_tex_of_a_study_fits_the_page_width_and_writes_a_shared_note_once(tmp_path):
    """A study's report.tex: 100-character row names ("fne+svm [timm:vit_small_patch16_224
    (imagenet)] (C=auto) (auto chose fne+svm, C 1; …)") in an l column made each table 575 pt
    wider than the page, and the C=auto note was in every auto row. The name column wraps (a p
    column, smaller type), the note is written once under the table and marked on its rows, and a
    table of more rows than a page holds is a longtable, which a comment above it says."""
    _verdict_report(tmp_path, with_auto(study()))
    tex = (tmp_path / "rep" / "report.tex").read_text()
    note = AUTO_NOTE
    assert tex.count(note) == 1 and f"\\textsuperscript{{a}} {note}" in tex
    auto = [line for line in tex.splitlines() if "(C=auto)" in line]
    assert len(auto) == 4 and all(line.split(" & ")[0].endswith("(2 runs)\\textsuperscript{a}") for line in auto)
    assert "\\begin{longtable}{p{0.33\\linewidth}rrrrr}" in tex and "\\raggedright fne+svm [timm:vit" in tex
    assert tex.splitlines()[2] == ("% 28 rows, more than a page holds: a longtable, its header repeated on each page "
                                   "(needs \\usepackage{longtable})")
    assert (tmp_path / "rep" / "report.md").read_text().count(note) == 1  # as report.md writes it (test below)


def _sets_within_a_page(tmp_path, packages: str = "booktabs") -> str:
    """pdflatex sets rep/report.tex in an article: no line overfull, no float taller than a page; its log."""
    (tmp_path / "doc.tex").write_text(f"\\documentclass{{article}}\n\\usepackage{{{packages}}}\n\\begin{{document}}\n"
                                      "\\input{rep/report.tex}\n\\end{document}\n")
    for _ in range(2):  # a longtable sets its column widths on the second run
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout[-2000:]
    assert "Overfull \\hbox" not in done.stdout and "Float too large" not in done.stdout
    return done.stdout


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (CI has no LaTeX)")
def test_report_tex_of_a_study_fits_a_page(tmp_path):
    """18 rows of 3 backbones (the longest name 60 characters): pdflatex sets the table within the
    page, no line overfull (an l column set them 500 pt too wide) and the float not too tall."""
    _verdict_report(tmp_path, {k: m for k, m in study().items() if not k.startswith("vgg16/")})
    _sets_within_a_page(tmp_path)


def test_a_run_folder_without_metrics_json_is_named_not_left_out_in_silence(tmp_path):
    """A study's training killed at epoch 12 (checkpoint.pt, no metrics.json) and a fit whose
    metrics.json was removed: the report left both out without a word (the table's "(2 runs)"
    the only trace). Each is named with why; a damaged metrics.json is named too; the report is
    of the others, and a write in progress (.tmp) is no run."""
    runs = {k: m for k, m in study().items() if k.startswith("vgg16/")}
    root = tmp_path / "runs"
    for name, m in runs.items():
        write_run(root, name, m)
    for folder, file in (("vgg16/finetune/2", "checkpoint.pt"), ("vgg16/fne+svm/2", "model.joblib"),
                         ("vgg16/.tmp-x/frozen", "model.pt")):
        (root / folder).mkdir(parents=True)
        (root / folder / file).write_bytes(b"x")
    (root / "vgg16" / "last+svm" / "0" / "metrics.json").write_text('{"accuracy": 0.5, "method": ')
    with pytest.warns(UserWarning) as said:
        r = report([root], tmp_path / "rep", figures=False)
    assert sorted(str(w.message) for w in said) == sorted([
        f"skipped {root / 'vgg16/finetune/2'}: no metrics.json: a fne train run cut short (its checkpoint.pt: its "
        f"command with --resume finishes it)",
        f"skipped {root / 'vgg16/fne+svm/2'}: no metrics.json beside its model.joblib: a run that did not finish, or "
        f"whose metrics.json was removed",
        f"skipped {root / 'vgg16/last+svm/0/metrics.json'}: unreadable (Expecting value: line 1 column 29 (char 28))"])
    rows = {row["method"]: row["runs"] for row in r["datasets"][0]["rows"]}
    assert rows["last+svm"] == 1 and rows["fne+svm"] == rows["train:finetune"] == 2


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (CI has no LaTeX)")
def test_report_tex_of_35_short_rows_fits_a_page(tmp_path):
    """35 rows of one backbone, short names ("fne+svm (C=35)"), with their CIs: the one-line header
    ("mean class acc. (%)") set every table 34 pt wider than an article page; on two lines it fits,
    and so do 35 rows (no comment that it is taller than a page)."""
    ci = {"low": 0.961, "high": 1.0, "level": 0.95, "method": "Wilson score interval over 10 test images"}
    _verdict_report(tmp_path, {f"r{i}": fake_metrics("fne+svm", 0.5 + i / 100, 0.01, 0.5, 0.01, C=float(i + 1),
                                                     accuracy_ci=ci, mean_class_accuracy_ci=ci) for i in range(35)})
    assert "100.0" in (tmp_path / "rep" / "report.tex").read_text()
    assert "taller than a page" not in (tmp_path / "rep" / "report.tex").read_text()
    _sets_within_a_page(tmp_path)


def test_the_bar_figure_writes_a_note_4_rows_share_once_under_it(tmp_path, monkeypatch):
    """The 4 auto rows' labels each ended in "(auto chose fne+svm, C 1; the most frequent of 3
    splits' choices)": the widest labels, they took half the figure from the bars. Each is marked
    "(a)", and the note is written once under the figure."""
    from matplotlib.axes import Axes

    from fne.reporting.figures import fig_bars

    ticks, texts = [], []
    real_ticks, real_text = Axes.set_yticklabels, Axes.text
    monkeypatch.setattr(Axes, "set_yticklabels", lambda ax, labels, **kw: ticks.extend(labels) or real_ticks(ax, labels, **kw))
    monkeypatch.setattr(Axes, "text", lambda ax, x, y, s, **kw: texts.append(s) or real_text(ax, x, y, s, **kw))
    ds, _, _ = _verdict_report(tmp_path, with_auto(study()))
    assert fig_bars(ds)
    assert len(ticks) == 28 and not any(AUTO_NOTE in t for t in ticks)
    assert sorted(t for t in ticks if t.endswith(" (a)")) == sorted(
        f"fne+svm [{arch} (imagenet)] (C=auto) (a)" for arch in ARCHS)
    assert texts == [f"(a) {AUTO_NOTE}"]


def test_report_md_and_html_write_a_note_4_rows_share_once_under_the_table(tmp_path):
    """report.md and report.html repeated "(auto chose fne+svm, C 1; the most frequent of 3 splits'
    choices)" in each of the 4 auto rows' names; each is marked (a), the note written once under
    the table. The label, which verdicts and report.json name the row by, keeps it."""
    ds, md, html = _verdict_report(tmp_path, with_auto(study()))
    assert md.count(AUTO_NOTE) == 1 and f"\n\n(a) {AUTO_NOTE}\n" in md
    assert sorted(line.split(" | ")[0] for line in md.splitlines() if line.endswith("| 6 |") and "(a)" in line) == sorted(
        f"| fne+svm \\[{arch} (imagenet)\\] (C=auto) (2 runs) (a)" for arch in ARCHS)
    note = AUTO_NOTE.replace("'", "&#x27;")
    assert html.count(note) == 1 and f"<p class='mark'><small><sup>a</sup> {note}</small></p>" in html
    assert html.count("(C=auto) <small>(2 runs)</small><sup>a</sup></td>") == 4
    assert sum(r["label"].endswith(f"(C=auto) ({AUTO_NOTE})") for r in ds["rows"]) == 4


def test_the_console_table_and_its_few_splits_note_write_a_shared_note_once(tmp_path):
    """`fne report`'s console table, and its note on intervals over 2 splits, repeated "(auto chose
    fne+svm, C 1; the most frequent of 2 splits' choices)" in each auto row's name, as report.md
    did before it marked the note: each is marked (a), the note written once under the table."""
    from fne.metrics import accuracy_interval
    from fne.reporting.render import table_text
    from tests.test_report import _splits

    runs, note = {}, "auto chose fne+svm, C 1; the most frequent of 2 splits' choices"
    for i, arch in enumerate(ARCHS[:2]):
        sp = _splits([0.6 + i / 10, 0.8])
        runs[f"{arch}/svm"] = fake_metrics("fne+svm", 0.7 + i / 20, 0.1, 0.7, 0.1, arch=arch, splits=sp,
                                           weights_fingerprint=f"fp-{arch}", accuracy_ci=accuracy_interval(sp))
        runs[f"{arch}/auto"] = {**runs[f"{arch}/svm"], "C": [1.0, 10.0], "selection": {
            "choice": {"features": "fne", "head": "svm", "C": 1.0}, "per_split_choices": ["1", "10"]}}
    ds, md, html = _verdict_report(tmp_path, runs)
    table = table_text([ds]).split("\n  Tie:")[0]  # the verdict names rows by their labels (report.json's)
    assert table.count(note) == 1 and f"\n  (a) {note}" in table
    assert sorted(line.split("  ")[1] for line in table.splitlines() if "(C=auto)" in line) == sorted(
        f"fne+svm [{arch} (imagenet)] (C=auto) (a)" for arch in ARCHS[:2])
    few = next(line for line in table_text([ds]).splitlines() if line.startswith("  Note: 2 splits ("))
    assert note not in few and few.count("(C=auto) (a)") == 2
    assert note not in next(line for line in md.splitlines() if line.startswith("**Note:** 2 splits ("))


def test_a_verdict_says_a_rows_note_once(tmp_path):
    """`fne report` of a --C auto fit over 2 seeds and a fit of one: the verdict line named the auto
    row 3 times with its note ("fne+svm (C=auto) (auto chose fne+svm, C 1; …) vs fne+svm (…; seed 1
    of fne+svm (C=auto) (auto chose fne+svm, C 1; …))"). The note is said at the first mention;
    later ones name the row without it, in the terminal's line as in report.md's and report.html's."""
    from fne.reporting.render import table_text

    runs = {k: m for k, m in with_auto(study()).items() if k.startswith("vgg16/") and k != "vgg16/fne+svm/1"
            and k.split("/")[1] in ("auto", "fne+svm")}
    runs = {k: {**m, "accuracy": 0.62, "splits": _splits([0.61, 0.62, 0.63])} if "/auto/" in k else m
            for k, m in runs.items()}
    ds, md, html = _verdict_report(tmp_path, runs)
    auto = f"fne+svm (C=auto) ({AUTO_NOTE})"
    assert [r["label"] for r in ds["rows"]] == [auto, "fne+svm"] and ds["verdict"]["text"].count(auto) == 2
    line = next(x for x in table_text([ds]).splitlines() if x.startswith("  Highest accuracy"))
    assert line.count(AUTO_NOTE) == 1 and line.startswith(f"  Highest accuracy, but no clear winner: {auto}, accuracy")
    assert "(fne+svm (C=auto) vs fne+svm (" in line and line.endswith("seed 1 of fne+svm (C=auto))))")
    verdict = md[md.index("Highest accuracy"):md.index("Winner vs runner-up")]
    winner = md[md.index("Winner vs runner-up"):].splitlines()[0]
    assert verdict.count(AUTO_NOTE) == 1 and AUTO_NOTE not in winner and "seed 1 of fne+svm (C=auto))" in winner
    assert html[html.index("Winner vs runner-up"):].split("</p>")[0].count("auto chose") == 0


def test_a_verdict_keeps_the_notes_that_tell_rows_apart():
    """Rows that would read alike without their notes keep them at every mention."""
    from fne.reporting.notes import said_once

    rows = [{"label": "a (x)", "note": "x"}, {"label": "a (y)", "note": "y"}, {"label": "b (z)", "note": "z"}]
    assert said_once(["a (x)", "a (x) vs a (y); b (z) of b (z)", None], rows) == [
        "a (x)", "a (x) vs a (y); b (z) of b", None]


def test_report_tex_sets_a_table_taller_than_a_page_as_a_longtable(tmp_path):
    """A study's 28 rows in a float ran off the page (pdflatex: "Float too large"); only a comment
    said so. Such a table is a longtable: its caption and header first, the header again on each
    later page (before \\endhead), "continued" at a page's foot, \\bottomrule at the last, every
    row once; the first line names the package. A table a page holds stays a float."""
    from tests.test_report_table import tex_problems

    _verdict_report(tmp_path, with_auto(study()))
    tex = (tmp_path / "rep" / "report.tex").read_text()
    assert tex_problems(tex) == []
    lines = tex.splitlines()
    assert "\\usepackage{booktabs} and \\usepackage{longtable}" in lines[0] and "\\begin{table}" not in tex
    begin, first, head, foot, last, end = (lines.index(x) for x in (
        "\\begin{longtable}{p{0.33\\linewidth}rrrrr}", "\\endfirsthead", "\\endhead", "\\endfoot", "\\endlastfoot",
        "\\end{longtable}"))
    assert begin < first < head < foot < last < end
    header = ["\\toprule", "method & accuracy & 95\\% CI & mean class & 95\\% CI & splits \\\\",
              " & (\\%) & & acc. (\\%) & & \\\\", "\\midrule"]
    assert lines[begin + 1].startswith("\\caption{pets") and lines[begin + 2:first] == header
    assert lines[first + 1].startswith("\\caption[]{pets") and lines[first + 2:head] == header
    assert "continued on the next page" in lines[foot - 1] and lines[last - 1] == "\\bottomrule"
    assert len([x for x in lines[last + 1:end] if x.endswith("\\\\")]) == 28
    assert lines[begin - 4:begin] == ["\\begingroup", "\\centering", "\\footnotesize", "\\setlength{\\tabcolsep}{4pt}"]
    assert lines[lines.index("\\endgroup") - 1].startswith("\\par\\smallskip{\\footnotesize Note:")

    short = {k: m for k, m in study().items() if k.startswith("vgg16/")}
    _verdict_report(tmp_path / "short", short)
    tex = (tmp_path / "short" / "rep" / "report.tex").read_text()
    assert "longtable" not in tex and "\\begin{table}[ht]" in tex and tex_problems(tex) == []


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (CI has no LaTeX)")
def test_report_tex_of_28_rows_breaks_across_pages(tmp_path):
    """pdflatex sets the study's 28-row longtable over pages: no float too large, no line overfull,
    the header repeated (the PDF has 2 pages)."""
    _verdict_report(tmp_path, with_auto(study()))
    log = _sets_within_a_page(tmp_path, "booktabs,longtable")
    assert "(2 pages" in log, log[-1500:]


def test_the_advice_verdict_says_a_rows_note_once(tmp_path):
    """The advice's by-kind line named the best row with its note, then again in the test's words
    ("seed 1 of fne+svm (auto chose …)"); the second mention is without it."""
    sel = {"C": [1.0, 10.0, 1.0], "selection": {"choice": {"features": "fne", "head": "svm", "C": 1.0},
                                                 "per_split_choices": ["1", "10", "1"]}}
    runs = {f"a{s}": {**fake_metrics("fne+svm", 0.904, 0.01, 0.9, 0.01, seed=s,
                                     splits=_splits([0.90, 0.91, 0.89, 0.90, 0.92])), **sel} for s in (0, 1)}
    runs["b"] = fake_metrics("last+svm", 0.902, 0.01, 0.9, 0.01, seed=0, splits=_splits([0.91, 0.90, 0.90, 0.89, 0.91]))
    runs["c"] = fake_metrics("train:finetune", 0.6, 0.01, 0.6, 0.01, kind="train", mode="finetune", seed=0,
                             splits=_splits([0.60, 0.62, 0.58, 0.61, 0.59]))
    ds, md, _ = _verdict_report(tmp_path, runs, advice=True)
    b = ds["advice"][0]["by_kind"]
    assert (b["best"], b["other"]) == (f"fne+svm ({AUTO_NOTE})", "train:finetune")
    assert b["text"].endswith("(seed 0; left out, having no partner in the other row: seed 1 of fne+svm))")
    line = next(x for x in md.splitlines() if x.startswith("- no clear winner (highest accuracy"))
    assert line.count(AUTO_NOTE) == 1 and f"the best of the other kinds, fne+svm ({AUTO_NOTE}), beats" in line
