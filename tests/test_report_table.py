"""report.csv: report.json's rows as one tidy table (fne.reporting.table), and the sections of a report of several datasets."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fne.reporting.report import report, table_text
from fne.reporting.table import CSV_COLUMNS
from tests.test_report import WILSON, _splits, fake_metrics, make_runs, write_run


def _read(out) -> tuple[list[dict], list[dict]]:
    """(report.csv's lines as dicts, report.json's rows in the same order, each with its dataset)."""
    with open(out / "report.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        lines = list(reader)
    data = json.loads((out / "report.json").read_text())
    return lines, [{**r, "dataset": d["dataset"]} for d in data["datasets"] for r in d["rows"]]


def _number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


def test_report_csv_holds_report_json_numbers_one_line_per_row(tmp_path):
    """Every number of report.csv is report.json's, exactly (fractions, not rounded), a value a run
    does not record an empty cell; fit rows name features and head, train rows their mode; a row
    pooled over seeds lists its seeds and run folders; the CI cells are the recorded intervals'."""
    root = make_runs(tmp_path / "runs")
    for seed, accs in ((0, (0.6, 0.8)), (1, (0.7, 0.9))):  # two seeds of random splits: one pooled row
        splits = [{**s, "test_hash": f"h{seed}{i}"} for i, s in enumerate(_splits(accs))]
        write_run(root, f"seeds/s{seed}", fake_metrics(
            "fne+logreg", sum(accs) / 2, 0.1, sum(accs) / 2, 0.1, splits=splits, seed=seed,
            split_protocol="2x stratified test_size=0.25", features="fne", head="logreg"))
    write_run(root, "ci", fake_metrics("last+svm", 0.9, 0.0, 0.85, 0.0, splits=_splits([0.9]), accuracy_ci=WILSON,
                                       features="last", head="svm", C=0.5))
    out = tmp_path / "rep"
    r = report([root], out, figures=False)
    assert r["csv"] == str(out / "report.csv")
    lines, rows = _read(out)
    assert len(lines) == len(rows) == 6
    for line, row in zip(lines, rows, strict=True):
        assert (line["dataset"], line["method"], line["label"]) == (row["dataset"], row["method"], row["label"])
        for col in ("accuracy", "accuracy_std", "mean_class_accuracy", "mean_class_accuracy_std", "seconds",
                    "extract_seconds", "n_splits", "n_test", "n_train", "runs"):
            assert _number(line[col]) == row[col], (row["label"], col)
        for key in ("accuracy", "mean_class_accuracy"):
            ci = row[f"{key}_ci"] or {}
            assert (_number(line[f"{key}_ci_low"]), _number(line[f"{key}_ci_high"])) == (ci.get("low"), ci.get("high"))
        assert line["run_folders"].split(";") == row["paths"] and line["weights"] == row["weights"]
        assert _number(line["published_accuracy_percent"]) == (row["published"] or {}).get("mean")
    by = {(line["dataset"], line["method"]): line for line in lines}
    assert by["pets", "fne+svm"]["accuracy"] == "0.912345" and by["pets", "fne+svm"]["published_accuracy_percent"] == "89.2"
    assert by["pets", "fne+svm"]["accuracy_ci_low"] == "" and by["pets", "fne+svm"]["ranked"] == "True"
    ci = by["pets", "last+svm"]
    assert (float(ci["accuracy_ci_low"]), float(ci["accuracy_ci_high"])) == (WILSON["low"], WILSON["high"])
    assert ci["ci_method"] == WILSON["method"] and ci["mean_class_accuracy_ci_low"] == ""
    assert (ci["features"], ci["head"], ci["C"], ci["train_mode"]) == ("last", "svm", "0.5", "")
    ft = by["pets", "train:finetune"]
    assert (ft["features"], ft["head"], ft["train_mode"], ft["n_splits"]) == ("", "", "finetune", "1")
    pooled = by["pets", "fne+logreg"]
    assert (pooled["runs"], pooled["seeds"], pooled["n_splits"]) == ("2", "0;1", "4")
    assert float(pooled["accuracy"]) == pytest.approx(0.75) and float(pooled["accuracy_ci_low"]) < 0.75
    assert pooled["ci_method"].startswith("corrected resampled t interval over 4 random splits")
    assert sorted(pooled["run_folders"].split(";")) == [str(root / "seeds" / "s0"), str(root / "seeds" / "s1")]
    assert json.loads(pooled["settings"])["split_protocol"] == "2x stratified test_size=0.25"
    assert (pooled["C"], ft["C"]) == ("", "")  # not recorded; not a fit
    assert by["flowers", "fne+svm"]["accuracy"] == "0.7"
    assert "\n  fne+logreg (2 runs)  " in table_text(r["datasets"])  # the console says it is pooled, as report.md does


def test_report_csv_is_replaced_with_the_other_files(tmp_path):
    """A second report into the same folder replaces report.csv with the others (no stale line of
    the first), and leaves no temporary file."""
    root = tmp_path / "runs"
    write_run(root, "a", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01))
    write_run(root, "b", fake_metrics("fc7+svm", 0.8, 0.01, 0.8, 0.01))
    out = tmp_path / "rep"
    report([root / "a", root / "b"], out, figures=False)
    assert len(_read(out)[0]) == 2
    report([root / "a"], out, figures=False)
    lines, rows = _read(out)
    assert [x["method"] for x in lines] == [x["method"] for x in rows] == ["fne+svm"]
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.html", "report.json", "report.md", "report.tex"]


def test_two_datasets_of_one_folder_name_are_two_sections_never_compared(tmp_path):
    """Runs on /data/cub/images and /data/dogs/images (both named `images`) are two sections named
    by their DATA, each with its own winner; runs on one DATA stay one section, and so do the runs
    that record no DATA (written by an older fne)."""
    root = tmp_path / "runs"
    for name, method, acc, data in (("cub", "fne+svm", 0.9, "/data/cub/images"), ("cub2", "fc7+svm", 0.8, "/data/cub/images"),
                                    ("dogs", "fc7+svm", 0.6, "/data/dogs/images")):
        write_run(root, name, fake_metrics(method, acc, 0.0, acc, 0.0, dataset="images", data=data,
                                           data_resolved=data, splits=_splits([acc])))
    for name, acc in (("old1", 0.5), ("old2", 0.4)):
        m = fake_metrics(f"{name}+svm", acc, 0.0, acc, 0.0, dataset="flowers", splits=_splits([acc]))
        del m["data"]
        write_run(root, name, m)
    r = report([root], tmp_path / "rep", figures=False)
    by = {ds["dataset"]: ds for ds in r["datasets"]}
    assert sorted(by) == ["flowers", "images (/data/cub/images)", "images (/data/dogs/images)"]
    assert [row["method"] for row in by["images (/data/cub/images)"]["rows"]] == ["fne+svm", "fc7+svm"]
    dogs = by["images (/data/dogs/images)"]
    assert [row["method"] for row in dogs["rows"]] == ["fc7+svm"] and dogs["verdict"]["kind"] == "single"
    assert len(by["flowers"]["rows"]) == 2
    lines, _ = _read(tmp_path / "rep")
    assert {x["dataset"] for x in lines} == set(by)


def test_a_fit_on_cached_rows_says_cached(tmp_path):
    """`fne fit` records "rows": "cached" and no extract_seconds when it read cached rows: the
    extraction column says "cached" (it said "—", as for a run that records nothing)."""
    root = tmp_path / "runs"
    write_run(root, "first", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, extract=33.0, rows="extracted"))
    write_run(root, "second", fake_metrics("last+svm", 0.8, 0.01, 0.8, 0.01, extract=None, rows="cached"))
    r = report([root], tmp_path / "rep", figures=False)
    by = {row["method"]: row for row in r["datasets"][0]["rows"]}
    assert (by["fne+svm"]["extract_seconds"], by["fne+svm"]["extract_cached"]) == (33.0, False)
    assert (by["last+svm"]["extract_seconds"], by["last+svm"]["extract_cached"]) == (None, True)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| last+svm | 80.0 ± 1.0 | — | 80.0 ± 1.0 | — | — | 1.00 | cached |" in md
    lines = {x["method"]: x for x in _read(tmp_path / "rep")[0]}
    assert [(lines[k]["extract_seconds"], lines[k]["extract_cached"]) for k in ("fne+svm", "last+svm")] == [
        ("33.0", "False"), ("", "True")]


@pytest.mark.parametrize("bad", [{"splits": "x"}, {"splits": ["a"]}, {"method": ["x"]}, {"arch": {"a": 1}}])
def test_a_metrics_json_of_fields_fne_never_writes_is_skipped_and_named(tmp_path, bad):
    """A damaged or hand-edited metrics.json (splits that are not records, a method that is a list)
    raised a traceback (TypeError: unhashable type); it is left out with a warning naming it."""
    root = tmp_path / "runs"
    write_run(root, "good", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01))
    d = write_run(root, "bad", {**fake_metrics("fc7+svm", 0.8, 0.01, 0.8, 0.01), **bad})
    with pytest.warns(UserWarning, match=rf"skipped {d / 'metrics.json'}: its {next(iter(bad))} not as fne writes"):
        r = report([root], tmp_path / "rep", figures=False)
    assert [row["method"] for row in r["datasets"][0]["rows"]] == ["fne+svm"]


def test_report_tex_holds_report_md_figures_one_table_per_dataset(tmp_path):
    """report.tex: per dataset a booktabs table whose cells are report.md's (percent, ± std, CI,
    best bold), with LaTeX's special characters escaped."""
    from tests.test_report import md_rows

    root = make_runs(tmp_path / "runs")
    write_run(root, "odd", fake_metrics("my_feat&co+svm", 0.3, 0.01, 0.3, 0.01, accuracy_ci=WILSON))
    out = tmp_path / "rep"
    report([root], out, figures=False)
    tex, md = (out / "report.tex").read_text(), (out / "report.md").read_text()
    assert tex.count("\\begin{tabular}") == tex.count("\\end{table}") == 2
    assert "\\caption{pets; backbone vgg16 (imagenet)}" in tex and "\\caption{flowers; backbone vgg16" in tex
    for name, line in (("fne+svm", "fne+svm"), ("my_feat&co+svm", "my\\_feat\\&co+svm")):
        acc, ci = md_rows(md, "pets")[name][:2]
        tex_acc = "\\textbf{" + acc.strip("*") + "}" if acc.startswith("**") else acc
        expect = f"{line} & {tex_acc} & {ci} & ".replace("±", "$\\pm$").replace("–", "--").replace("—", "---")
        assert any(x.startswith(expect) for x in tex.splitlines()), expect
    assert "\\textbf{91.2 $\\pm$ 1.2}" in tex and "80.0--95.0" in tex


def test_a_pipelines_published_values_and_advice_stay_with_its_section_beside_other_data_of_its_name(tmp_path):
    """A pipeline's `digits` (a subset it wrote) beside `fne fit digits` (all of them): two sections;
    the pipeline's published values and advice (keyed by its dataset key) stay with its steps' runs,
    advice of `fne advise digits` alone goes with the runs on its DATA."""
    root = tmp_path / "runs"
    sub = "/runs/pipe/digits/data/digits.h5"
    d = write_run(root, "pipe/digits/fne", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, dataset="digits", data=sub))
    (d / "step.json").write_text(json.dumps({"dataset_key": "digits"}))
    write_run(root, "mine/fne", fake_metrics("fc7+svm", 0.8, 0.01, 0.8, 0.01, dataset="digits", data="digits"))
    (root / "pipe" / "pipeline.json").write_text(json.dumps({"name": "p", "datasets": {"digits": {"published": {
        "source": "a paper", "values": {"fne+svm": 95.0}}}}}))
    advice = {"recommendation": "finetune", "text": "Fine-tune.", "families": ["fine-tuning"], "dataset": "digits",
              "arch": "vgg16", "weights": "imagenet", "reasons": [], "similarity": {"judged": False}}
    (root / "pipe" / "advice.json").write_text(json.dumps({**advice, "dataset_key": "digits", "data": sub}))
    (root / "mine" / "advice.json").write_text(json.dumps({**advice, "data": "digits", "recommendation": "frozen"}))
    r = report([root], tmp_path / "rep", figures=False)
    by = {ds["dataset"]: ds for ds in r["datasets"]}
    pipe, mine = by[f"digits ({sub})"], by["digits (digits)"]
    assert pipe["rows"][0]["published"] == {"mean": 95.0, "std": None} and mine["rows"][0]["published"] is None
    assert [a["recommendation"] for a in pipe["advice"]] == ["finetune"]
    assert [a["recommendation"] for a in mine["advice"]] == ["frozen"]


def test_each_section_names_its_backbone_where_its_rows_do_not(tmp_path):
    """digits on one backbone, flowers on another: the header listed both and no row said which
    was whose; each section now names its one backbone (report.md, report.html, the console,
    report.json), and a section of several backbones names them in its rows' labels."""
    root = tmp_path / "runs"
    write_run(root, "d", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, dataset="digits", arch="resnet18"))
    write_run(root, "f1", fake_metrics("fne+svm", 0.8, 0.01, 0.8, 0.01, dataset="flowers"))
    write_run(root, "f2", fake_metrics("fne+svm", 0.7, 0.01, 0.7, 0.01, dataset="flowers", arch="resnet18"))
    out = tmp_path / "rep"
    r = report([root], out, figures=False)
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "## digits\n\nBackbone: resnet18 (imagenet)\n" in md and "<p class='backbone'>Backbone: resnet18 (imagenet)</p>" in html
    assert "digits, backbone resnet18 (imagenet):" in table_text(r["datasets"])
    flowers = next(ds for ds in json.loads((out / "report.json").read_text())["datasets"] if ds["dataset"] == "flowers")
    assert flowers["backbone"] is None and "## flowers\n\n| method" in md
    assert [row["label"] for row in flowers["rows"]] == ["fne+svm [vgg16 (imagenet)]", "fne+svm [resnet18 (imagenet)]"]


def test_the_readme_names_every_column_of_report_csv():
    """The README's list of report.csv's columns is the file's: kind, n_images and
    published_std_percent were left out of it."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    said = " ".join(readme.split("- report.csv's columns:")[1].split("\n- ")[0].split())
    named = set(re.findall(r"[A-Za-z_]+", said)) | {f"{s}_ci_{e}" for s in ("accuracy", "mean_class_accuracy")
                                                 for e in ("low", "high")}  # "(`_ci_low`, `_ci_high`)"
    named |= {f"{s}_std" for s in ("accuracy", "mean_class_accuracy")} | {"mean_class_accuracy", "settings"}
    assert [c for c in CSV_COLUMNS if c not in named] == []


# names with every character LaTeX treats specially, and characters beyond what pdflatex typesets
ODD = "a_b%c&d#e$f{g}h~i^j\\k é 数字 α≥ <x>|y\n\nz"  # a blank line ends a paragraph: \caption stopped at it
TEX_COMMANDS = {"begin", "end", "centering", "caption", "toprule", "midrule", "bottomrule", "textbf", "textbackslash",
                "textasciitilde", "textasciicircum", "textbar", "textless", "textgreater", "pm", "par", "smallskip",
                "footnotesize", "fneuni", "setlength", "tabcolsep", "linewidth", "raggedright", "textsuperscript",
                "begingroup", "endgroup", "endfirsthead", "endhead", "endfoot", "endlastfoot", "multicolumn"}
_UNTEX = {"\\_": "_", "\\%": "%", "\\&": "&", "\\#": "#", "\\$": "$", "\\{": "{", "\\}": "}", "--": "–", "---": "—",
          "\\textasciitilde{}": "~", "\\textasciicircum{}": "^", "\\textbackslash{}": "\\", "\\textless{}": "<",
          "\\textgreater{}": ">", "\\textbar{}": "|", "$\\pm$": "±"}


def _untex(text: str) -> str:
    """LaTeX text as it prints (the inverse of report.tex's escaping, written out here on its own)."""
    text = re.sub(r"\\fneuni\{(.)\}\{([0-9A-F]{4,6})\}", lambda m: m.group(1) if ord(m.group(1)) == int(m.group(2), 16)
                  else "<wrong code point>", text)
    return re.sub("|".join(map(re.escape, sorted(_UNTEX, key=len, reverse=True))), lambda m: _UNTEX[m.group(0)], text)


def tex_problems(tex: str) -> list[str]:
    """What would stop LaTeX, or print other than meant, in report.tex: every tabular row has as
    many cells as its column spec; braces balance and $ closes on each line; \\begin / \\end pair
    up; no unescaped special character (# ^ _ ~ & outside a tabular, % beyond the header comment);
    no command but those fne writes; no character pdflatex cannot typeset outside \\fneuni."""
    problems, envs, cols = [], [], None
    for n, line in enumerate(tex.splitlines(), 1):
        if n <= 2 or line.startswith("% "):  # the header comment and \fneuni's definition; a comment line
            continue
        depth, math, cells, tokens = 0, False, 1, re.findall(r"\\[A-Za-z]+|\\.|[{}&$%_^#~]|[^\\{}&$%_^#~]+", line)
        for i, t in enumerate(tokens):
            if t.startswith("\\") and t[1:].isalpha():
                if t[1:] not in TEX_COMMANDS:
                    problems.append(f"line {n}: unknown command {t}")
                if t in ("\\begin", "\\end"):
                    env = tokens[i + 2] if i + 3 < len(tokens) and tokens[i + 1] == "{" else "?"
                    if t == "\\begin":
                        envs.append(env)
                        if env in ("tabular", "longtable"):  # its column spec, a p{width} column one
                            spec = re.match(r"\\begin\{\w+\}\{((?:[^{}]|\{[^{}]*\})*)\}", line[line.index(t):])
                            cols = len(re.findall(r"[lrcp]", re.sub(r"\{[^{}]*\}", "", spec.group(1))))
                    elif not envs or envs.pop() != env:
                        problems.append(f"line {n}: \\end{{{env}}} closes no \\begin{{{env}}}")
                    if t == "\\end" and env in ("tabular", "longtable"):
                        cols = None
            elif t in "{}":
                depth += 1 if t == "{" else -1
                problems += [f"line {n}: a }} closes no {{"] if depth < 0 else []
            elif t == "$":
                math = not math
            elif t == "&":
                cells += 1
                problems += [] if cols else [f"line {n}: & outside a tabular"]
            elif t in ("%", "_", "^", "#", "~"):
                problems.append(f"line {n}: unescaped {t}")
            elif not t.startswith("\\"):
                problems += [f"line {n}: {ch!r} outside \\fneuni" for ch in t if ord(ch) > 0x17F and ch not in "–—‘’“”…"
                             and not (i >= 2 and tokens[i - 2] == "\\fneuni")]
        problems += [f"line {n}: braces do not balance"] if depth else []
        problems += [f"line {n}: $ not closed"] if math else []
        spans = re.match(r"\\multicolumn\{(\d+)\}", line)  # one cell over n columns
        cells += int(spans.group(1)) - 1 if spans else 0
        if cols and line.endswith("\\\\") and cells != cols and not line.startswith("\\caption"):  # a longtable's caption
            problems.append(f"line {n}: {cells} cells, the tabular has {cols} columns")
    return problems + [f"\\begin{{{e}}} never closed" for e in envs]


def test_tex_problems_finds_what_it_checks():
    """The checker below is no check that cannot fail: each fault it looks for, it finds."""
    good = "% c\n\\providecommand{x}\n\\begin{table}\n\\begin{tabular}{lr}\na & b \\\\\n\\end{tabular}\n\\end{table}"
    assert tex_problems(good) == []
    for bad in (good.replace("a & b", "a & b & c"), good.replace("a & b", "a_b & c"), good.replace("a & b", "{a & b"),
                good.replace("\\end{table}", ""), good.replace("a & b", "a\\k & b"), good.replace("a & b", "数 & b"),
                good.replace("a & b", "50% & b"), good.replace("a & b", "$a & b")):
        assert tex_problems(bad), bad
    long = "% c\n\\providecommand{x}\n\\begin{longtable}{lr}\n\\caption{t} \\\\\n\\multicolumn{2}{r}{c} \\\\\na & b \\\\\n\\end{longtable}"
    assert tex_problems(long) == []
    for bad in (long.replace("a & b", "a & b & c"), long.replace("{2}{r}", "{3}{r}"), long.replace("\\end{longtable}", "")):
        assert tex_problems(bad), bad


def _spaced(text: str) -> str:
    """A name as report.tex prints it: a line break (a control character) a space."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", text)


def _odd_report(tmp_path) -> tuple[dict, str]:
    root = tmp_path / "runs"
    common = dict(dataset=ODD, arch="v_g&g#16", weights="w%$~^{}")
    write_run(root, "a", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, accuracy_ci=WILSON, **common))
    write_run(root, "b", fake_metrics(ODD + "+svm", 0.8, 0.01, 0.8, 0.01, seed=3, **common))
    for seed in (0, 1):
        write_run(root, f"c{seed}", fake_metrics("fc7+svm", 0.6, 0.01, 0.6, 0.01, seed=seed, C=0.5, dataset="plain"))
    write_run(root, "d", fake_metrics("fc7+svm", 0.7, 0.01, 0.7, 0.01, seed=0, C=1.0, dataset="plain"))
    r = report([root], tmp_path / "rep", figures=False)
    return r, Path(r["tex"]).read_text(encoding="utf-8")


def test_report_tex_is_well_formed_whatever_the_names(tmp_path):
    """report.tex of datasets, methods and backbones named with LaTeX's special characters, a line
    break and characters pdflatex cannot typeset: well formed, and every name prints as it is."""
    r, tex = _odd_report(tmp_path)
    assert tex_problems(tex) == []
    saved = json.loads(Path(r["json"]).read_text())["datasets"]
    captions = [_untex(c) for c in re.findall(r"^\\caption\{(.*)\}$", tex, flags=re.M)]
    assert captions == [_spaced(f"{d['dataset']}; backbone {d['backbone']}") for d in saved]
    names = [_untex(line.split(" & ")[0].removeprefix("\\raggedright ")) for line in tex.splitlines()
             if line.endswith("\\\\") and not line.startswith(("method &", " & (\\%)"))]  # the header's 2 lines
    assert names == [_spaced(row["label"] + (f" ({row['runs']} runs)" if row["runs"] > 1 else ""))
                     for d in saved for row in d["rows"]]
    assert _spaced(ODD) + "+svm" in names and "fc7+svm (C=0.5) (2 runs)" in names


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (CI has no LaTeX)")
def test_report_tex_compiles_with_pdflatex(tmp_path):
    """report.tex of awkward names, \\input into a document loading booktabs, compiles with
    pdflatex (it stopped at the first character pdflatex cannot typeset: "Unicode character 数")."""
    _, tex = _odd_report(tmp_path)
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                      "\\input{rep/report.tex}\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    errors = [line for line in done.stdout.splitlines() if line.startswith("!")]
    assert done.returncode == 0 and not errors, errors or done.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_a_pooled_rows_extraction_says_how_many_runs_it_is_the_mean_of(tmp_path):
    """Three seeds of one method, only the first extracting (40 s; the others read its rows cached):
    the row showed 40.0, read as each run's cost. It now says 1 of 3 runs extracted, in report.md
    and report.csv; a row whose runs all extracted shows the plain mean."""
    root = tmp_path / "runs"
    for seed, (ext, rows) in enumerate([(40.0, "extracted"), (None, "cached"), (None, "cached")]):
        write_run(root, f"fne{seed}", fake_metrics("fne+svm", 0.9, 0.01, 0.9, 0.01, seed=seed, extract=ext, rows=rows))
    for seed in (0, 1):
        write_run(root, f"fc7{seed}", fake_metrics("fc7+svm", 0.8, 0.01, 0.8, 0.01, seed=seed, extract=10.0 + seed,
                                                  rows="extracted"))
    r = report([root], tmp_path / "rep", figures=False)
    by = {row["method"]: row for row in r["datasets"][0]["rows"]}
    assert (by["fne+svm"]["extract_seconds"], by["fne+svm"]["extract_runs"], by["fne+svm"]["runs"]) == (40.0, 1, 3)
    md = (tmp_path / "rep" / "report.md").read_text()
    from tests.test_report import md_rows

    ext = {name: cells[6] for name, cells in md_rows(md, "pets").items()}
    assert ext == {"fne+svm (3 runs)": "40.0 (1 of 3 runs extracted)", "fc7+svm (2 runs)": "**10.5**"}
    lines = {x["method"]: x for x in _read(tmp_path / "rep")[0]}
    assert [(lines[k]["extract_seconds"], lines[k]["extract_runs"]) for k in ("fne+svm", "fc7+svm")] == [
        ("40.0", "1"), ("10.5", "2")]


def test_reports_and_csvs_are_utf8_whatever_the_locale(tmp_path):
    """report.md, .html (which declares utf-8), .tex and .csv (as every CSV fne writes: fit's and
    predict's predictions.csv) were written in the locale's encoding: on Windows (cp1252) a class
    or dataset named 数字 stopped the report with a UnicodeEncodeError, and é came out in bytes that
    pandas' read_csv, reading UTF-8, refused. Here the C locale's ASCII stands for cp1252."""
    import os
    import sys

    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    code = ("import sys, locale; from pathlib import Path; from tests.test_report_table import _odd_report; "
            "assert locale.getpreferredencoding(False) == 'ANSI_X3.4-1968'; _odd_report(Path(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ascii")], env=env, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    _, tex = _odd_report(tmp_path / "utf8")
    assert (tmp_path / "ascii" / "rep" / "report.tex").read_text(encoding="utf-8") == tex and "\\fneuni{数}" in tex
    for name in ("report.md", "report.html", "report.csv"):
        assert "数字" in (tmp_path / "ascii" / "rep" / name).read_text(encoding="utf-8"), name
