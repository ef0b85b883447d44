"""report.csv and report.tex: `fne report`'s rows as one tidy table (pandas, R) and as LaTeX tables.

One line per report row (one run, or the runs of one setting pooled over their seeds), of every
dataset, taken from the rows report.json holds (`fne.reporting.report._jsonable`): the same
numbers, not a second computation. Measured figures are fractions (0–1) as in report.json and
metrics.json; published reference values are in percent, as the pipeline file gives them, in
columns that say so. An empty cell is a value the run does not record. report.tex holds the
same rows' figures as report.md prints them, one LaTeX table per dataset.
"""

from __future__ import annotations

import json

from fne.reporting.notes import marked
from fne.reporting.render import cells

CSV_COLUMNS = (
    "dataset", "label", "method", "kind", "arch", "weights", "features", "head", "C", "train_mode", "settings",
    "runs", "seeds", "n_splits", "n_train", "n_test", "n_images",
    "accuracy", "accuracy_std", "accuracy_ci_low", "accuracy_ci_high",
    "mean_class_accuracy", "mean_class_accuracy_std", "mean_class_accuracy_ci_low", "mean_class_accuracy_ci_high",
    "ci_method", "published_accuracy_percent", "published_std_percent", "seconds", "extract_seconds", "extract_runs",
    "extract_cached", "extract_earlier_seconds", "ranked", "run_folders",
)


def _ci(row: dict, key: str, end: str):
    ci = row.get(key)
    return ci.get(end) if isinstance(ci, dict) else None


def csv_rows(datasets: list[dict]) -> list[list]:
    """The lines of report.csv (CSV_COLUMNS) from report.json's datasets.

    Parameters
    ----------
    datasets : list of dict
        report.json's "datasets": each with its "dataset" key and its "rows".

    Returns
    -------
    list of list
        One list of CSV_COLUMNS' values per row, dataset by dataset in the report's order; None
        where a run does not record the value (an empty cell). Several seeds or run folders are
        joined by ";". "C" is a fit's as asked for (metrics.json's options, `fne run`'s step: auto
        where each split chose its own), else, for a run that records neither, as used (a JSON
        list where the splits chose several). "settings" is the row's setting (features, head, C, training settings...)
        as JSON; "extract_cached" is True where no extraction ran for the row (its rows were
        cached: extract_seconds is empty), "extract_runs" how many of the row's runs extracted (extract_seconds
        is their mean), and "extract_earlier_seconds" what the earlier extraction
        that computed those rows took for them, as the store recorded it (empty: not recorded); "ranked" is False for a row scored on a subset of the
        classes (direct mode's class map), which the report does not rank.
    """
    out = []
    for ds in datasets:
        for r in ds["rows"]:
            s, pub = r.get("settings") or {}, r.get("published") or {}
            train = r.get("kind") == "train" or str(r.get("method", "")).startswith("train:")
            cis = [m for m in dict.fromkeys(_ci(r, k, "method") for k in ("accuracy_ci", "mean_class_accuracy_ci")) if m]
            values = {
                "dataset": ds["dataset"], "label": r.get("label"), "method": r.get("method"), "kind": r.get("kind"),
                "arch": r.get("arch"), "weights": "random init" if r.get("scratch") else r.get("weights"),
                "features": None if train else s.get("features"), "head": None if train else s.get("head"),
                "C": None if train or s.get("C") is None else (
                    s["C"] if isinstance(s["C"], (str, int, float)) else json.dumps(s["C"])),
                "train_mode": str(r["method"]).removeprefix("train:") if train else None,
                "settings": json.dumps(s, sort_keys=True, default=str),
                "runs": r.get("runs"), "seeds": ";".join(map(str, r.get("seeds") or [])) or None,
                "n_splits": r.get("n_splits"), "n_train": r.get("n_train"), "n_test": r.get("n_test"),
                "n_images": r.get("n_images"),
                "accuracy": r.get("accuracy"), "accuracy_std": r.get("accuracy_std"),
                "accuracy_ci_low": _ci(r, "accuracy_ci", "low"), "accuracy_ci_high": _ci(r, "accuracy_ci", "high"),
                "mean_class_accuracy": r.get("mean_class_accuracy"),
                "mean_class_accuracy_std": r.get("mean_class_accuracy_std"),
                "mean_class_accuracy_ci_low": _ci(r, "mean_class_accuracy_ci", "low"),
                "mean_class_accuracy_ci_high": _ci(r, "mean_class_accuracy_ci", "high"),
                "ci_method": "; ".join(cis) or None,
                "published_accuracy_percent": pub.get("mean"), "published_std_percent": pub.get("std"),
                "seconds": r.get("seconds"), "extract_seconds": r.get("extract_seconds"),
                "extract_runs": r.get("extract_runs"), "extract_cached": bool(r.get("extract_cached")),
                "extract_earlier_seconds": r.get("extract_earlier_seconds"),
                "ranked": not r.get("partial"), "run_folders": ";".join(r.get("paths") or []),
            }
            out.append([values[c] for c in CSV_COLUMNS])
    return out


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--", "—": "---",
        # in LaTeX's default (OT1) font encoding these print as other glyphs (—, ¡, ¿)
        "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}"}


# Beyond ASCII, the characters that pdflatex's default setup (utf8 input, OT1 / TS1 fonts) typesets:
# Latin-1 and most of Latin Extended-A (tested with TeX Live 2022); any other (数字, α, ≥) is written
# as \fneuni{CHAR}{CODE}, which report.tex defines: the character itself under xelatex / lualatex,
# its code point under pdflatex, which would stop at it ("Unicode character not set up for use with LaTeX").
_PDFLATEX = {chr(c) for c in range(0xA0, 0x180)} - set("\u0126\u0127\u0138\u013f\u0140\u0149\u0166\u0167\u017f") | set(
    "\u2010\u2011\u2012\u2013\u2014\u2018\u2019\u201a\u201c\u201d\u201e\u2020\u2021\u2022\u2026\u20ac\u2122")
UNICODE_MACRO = ("\\providecommand{\\fneuni}[2]{\\ifdefined\\XeTeXrevision#1\\else\\ifdefined\\directlua#1\\else"
                 "\\texttt{[U+#2]}\\fi\\fi}")


def _tex(text) -> str:
    """Text as LaTeX prints it: its special characters escaped, a line break or other control
    character a space (a blank line would end the table's row), a character pdflatex cannot
    typeset through \\fneuni (UNICODE_MACRO)."""
    return "".join(_TEX.get(ch) or (" " if ord(ch) < 32 or ord(ch) == 127 else ch if ord(ch) < 128 or ch in _PDFLATEX
                                    else f"\\fneuni{{{ch}}}{{{ord(ch):04X}}}") for ch in str(text))


WIDE_LABEL = 40  # report.tex sets a section with a longer row name in a narrower font, its names wrapped
PAGE_ROWS = {True: 20, False: 35}  # rows a table of wrapped (True) or one-line names holds on a page (article class)


def latex_tables(datasets: list[dict], random_warning: str = "") -> str:
    """report.tex: per dataset a LaTeX table (booktabs) of report.md's figures (`render.cells`:
    percent with one decimal, mean ± std, the 95% CIs), the best of each column bold.

    Parameters
    ----------
    datasets : list of dict
        report.json's "datasets", as `csv_rows` takes them.
    random_warning : str
        The warning under a table with rows of random weights (not `train:scratch`), naming them.

    Returns
    -------
    str
        Per dataset a `table` float, or where it has more rows than a page holds (PAGE_ROWS) a
        `longtable`, which breaks across pages and repeats its header on each (a float taller
        than a page ran off it); for `\\input{}` in a document loading booktabs (and longtable,
        which the first line says where a table needs it). Under each table, the random-weights
        warning and report.json's notes on 2-split intervals and on rows scored on other test images.
    """
    tables = [_latex_table(ds, random_warning) for ds in datasets]
    long = any(t[0].startswith("% ") for t in tables)
    out = ["% fne report: accuracy and mean class accuracy in %, mean ± std over the splits, 95% CIs "
           "(report.md says how each was computed); needs \\usepackage{booktabs}"
           + (" and \\usepackage{longtable} (a table taller than a page is a longtable)" if long else "")
           + "; a character pdflatex cannot typeset is "
           "\\fneuni{CHARACTER}{CODE}: itself under xelatex / lualatex, [U+CODE] under pdflatex", UNICODE_MACRO]
    return "\n".join(out + [line for t in tables for line in t])


HEADER = ("\\toprule",  # on two lines: on one ("mean class acc. (%)") the table was 34 pt wider than the page
          "method & accuracy & 95\\% CI & mean class & 95\\% CI & splits \\\\", " & (\\%) & & acc. (\\%) & & \\\\",
          "\\midrule")


def _latex_table(ds: dict, random_warning: str) -> list[str]:
    """One dataset's lines of report.tex: a `table` float, or a `longtable` where its rows are more
    than a page holds (PAGE_ROWS), preceded by a comment that says so."""
    cols = ("accuracy", "accuracy_ci", "mean_class_accuracy", "mean_class_accuracy_ci")
    names, marks = marked(ds["rows"])
    names = [n + (f" ({r['runs']} runs)" if (r.get("runs") or 1) > 1 else "") for n, r in zip(names, ds["rows"], strict=True)]
    wide = max(map(len, names), default=0) > WIDE_LABEL  # a 100-character label in an l column ran 2 pages wide
    long = len(ds["rows"]) > PAGE_ROWS[wide]  # a float cannot break across pages: a longtable can
    caption = _tex(ds["dataset"]) + (f"; backbone {_tex(ds['backbone'])}" if ds.get("backbone") else "")
    spec = "{" + ("p{0.33\\linewidth}" if wide else "l") + "rrrrr}"
    size = [*(["\\footnotesize"] if wide else []), "\\setlength{\\tabcolsep}{4pt}"]  # 6 columns within a page
    if long:
        out = [f"% {len(ds['rows'])} rows, more than a page holds: a longtable, its header repeated on each page "
               f"(needs \\usepackage{{longtable}})", "\\begingroup", "\\centering", *size, f"\\begin{{longtable}}{spec}",
               f"\\caption{{{caption}}} \\\\", *HEADER, "\\endfirsthead",
               f"\\caption[]{{{caption} (continued)}} \\\\", *HEADER, "\\endhead",
               "\\midrule", "\\multicolumn{6}{r}{continued on the next page} \\\\", "\\endfoot",
               "\\bottomrule", "\\endlastfoot"]
    else:
        out = ["\\begin{table}[ht]", "\\centering", f"\\caption{{{caption}}}", *size,
               f"\\begin{{tabular}}{spec}", *HEADER]
    for r, name in zip(ds["rows"], names, strict=True):
        c = cells(r)
        vals = [f"\\textbf{{{_tex(c[k])}}}" if k in r.get("best", []) and c[k] != "—" else _tex(c[k]) for k in cols]
        mark = f"\\textsuperscript{{{marks[r['note']]}}}" if r.get("note") in marks else ""
        out.append(" & ".join(["\\raggedright " * wide + _tex(name) + mark, *vals, _tex(r.get("n_splits") or "—")])
                   + " \\\\")
    out += ["\\end{longtable}"] if long else ["\\bottomrule", "\\end{tabular}"]
    out += [f"\\par\\smallskip{{\\footnotesize \\textsuperscript{{{m}}} {_tex(n)}}}" for n, m in marks.items()]
    random = [r["label"] for r in ds["rows"] if str(r.get("weights")) == "random" and not r.get("scratch")]
    if random and random_warning:
        out.append(f"\\par\\smallskip{{\\footnotesize Warning: {_tex(random_warning)} ({_tex(', '.join(random))})}}")
    out += [f"\\par\\smallskip{{\\footnotesize Note: {_tex(n)}}}" for n in (ds.get("few_splits_note"), ds.get("names_note"),
                                                                           ds.get("protocol_note"), ds.get("repeats_note")) if n]
    return out + ["\\endgroup" if long else "\\end{table}", ""]
