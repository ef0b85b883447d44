"""How `fne report` writes its tables: cell formats, report.md, report.html and the console table.

Pure formatting of the rows that fne.reporting.report tabulates; no files are read here.
"""

from __future__ import annotations

import html
import re
from collections import Counter

import numpy as np

from fne.metrics import class_recalls
from fne.reporting.advice_text import confidence_line
from fne.reporting.intervals import few_splits_note
from fne.reporting.notes import marked, said_once


def pct(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "—"
    s = f"{100 * v:.1f}"
    return s + (f" ± {100 * std:.1f}" if std is not None else "")


def pub_str(p: dict | None) -> str:
    if not p:
        return "—"
    return f"{p['mean']:.1f}" + (f" ± {p['std']:.1f}" if p.get("std") is not None else "")


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else "?"


def secs(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def ci_str(ci: dict | None) -> str:
    """A confidence interval in percent, `88.0–94.0` (its level beside it unless 95%); — for none."""
    if not ci:
        return "—"
    level = "" if abs(ci.get("level", 0.95) - 0.95) < 1e-9 else f" ({100 * ci['level']:g}%)"
    return f"{100 * ci['low']:.1f}–{100 * ci['high']:.1f}{level}"


def _family(method: str) -> str:
    """An interval's method without its counts: "corrected resampled t interval (Nadeau & Bengio 2003)"
    of "corrected resampled t interval over 10 random splits (Nadeau & Bengio 2003)"."""
    name = re.split(r" over | of the mean", method)[0]
    cite = re.search(r"\(([^()]*\d{4})\)", method)
    return name + (f" ({cite.group(1)})" if cite else "")


def interval_sentence(rows: list[dict]) -> str:
    """What the CI columns hold: the methods the rows' intervals name, and why a row shows none."""
    fams = {name: list(dict.fromkeys(_family(r[key]["method"]) for r in rows if r.get(key)))
            for key, name in (("accuracy_ci", "accuracy"), ("mean_class_accuracy_ci", "mean class accuracy"))}
    text = ("95% CI: the 95% confidence interval of the figure beside it, as the run's metrics.json records it "
            "(accuracy_ci, mean_class_accuracy_ci); for a row of several runs, recomputed over all their splits")
    text += "".join(f"; {name}: {', '.join(f)}" for name, f in fams.items() if f)
    missing = dict.fromkeys(f"{r['label']}: {r['no_interval']}" for r in rows if r.get("no_interval"))
    return text + (f". No interval (—) for {'; '.join(missing)}." if missing else ".")


def images_str(r: dict) -> str:
    n = r.get("n_images")
    parts = f" ({r['n_train']}/{r['n_test']})" if r.get("n_train") is not None and r.get("n_test") is not None else ""
    return f"{n}{parts}" if n is not None else "—"


def cells(r: dict) -> dict[str, str]:
    one = r.get("n_splits") == 1  # a single split has no spread: print no "± 0.0"
    return {
        "accuracy": pct(r.get("accuracy"), None if one else r.get("accuracy_std")),
        "accuracy_ci": ci_str(r.get("accuracy_ci")),
        "mean_class_accuracy": pct(r.get("mean_class_accuracy"), None if one else r.get("mean_class_accuracy_std")),
        "mean_class_accuracy_ci": ci_str(r.get("mean_class_accuracy_ci")),
        "seconds": secs(r.get("seconds")),
        "extract_seconds": extraction_cell(r),
    }


def extraction_cell(r: dict) -> str:
    """The extraction column: seconds measured by the row's own runs; else, for rows read cached,
    the seconds an earlier extraction took to compute them (`EARLIER`), or "cached" where the store
    recorded none. A pooled row of which only some runs extracted says how many its mean is over."""
    n, runs = r.get("extract_runs"), r.get("runs") or 1
    if r.get("extract_seconds") is not None and n is not None and 0 < n < runs:
        return f"{secs(r['extract_seconds'])} ({n} of {runs} runs extracted)"
    if r.get("extract_seconds") is not None or not r.get("extract_cached"):
        return secs(r.get("extract_seconds"))
    earlier = r.get("extract_earlier_seconds")
    return "cached" if earlier is None else f"{secs(earlier)} (earlier)"


def _earlier(ds: dict) -> bool:
    """Whether a row of the dataset shows an earlier extraction's seconds (`EARLIER` explains them)."""
    return any(extraction_cell(r).endswith("(earlier)") for r in ds["rows"])


# what "(earlier)" in the extraction column means
EARLIER = ("Extraction s \"(earlier)\": the rows were read cached; the seconds are what the earlier fne extract "
           "run(s) that computed them took for this row's images (the run phase, each run's seconds per image; "
           "metrics.json's extract_cost says which runs, device and date), measured by that extraction, not by this "
           "fit; \"cached\": rows read cached from a store that records no extraction cost")


# what "±" means in the tables: metrics.json's accuracy_std (`fne fit`), and report.py's pooled rows
SPREAD = ("Accuracy: mean ± standard deviation over the splits (of every seed, for a row of several runs; "
          "the population std, ddof = 0, as scikit-learn's cross-validation reports it; a single split shows none)")

# what the mean class accuracy column is, and why the ranking stays on accuracy
MEAN_CLASS = ("Mean class accuracy: the mean of the per-class recalls (balanced accuracy), the figure transfer "
              "papers report for test sets whose classes are unbalanced; it is the accuracy where every class has as "
              "many test images. The rows' order, the winner and its tests stay on accuracy, for which the paired "
              "tests (McNemar's, the corrected t-test) are defined; — : a run whose metrics.json does not record it")

TABLE_HEAD = ("method", "accuracy %", "accuracy 95% CI", "mean class accuracy %", "mean class 95% CI",
              "published accuracy %", "fit/train s", "extraction s", "images (train/test)", "splits")


def confused_pairs(confusion, classes, k: int = 5) -> list[dict]:
    c = np.asarray(confusion, dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.sum() == 0:
        return []
    names = list(classes) if classes and len(classes) == len(c) else [str(i) for i in range(len(c))]
    off = c.copy()
    np.fill_diagonal(off, 0)
    order = np.dstack(np.unravel_index(np.argsort(-off, axis=None), off.shape))[0]
    out = []
    for i, j in order[:k]:
        if off[i, j] <= 0:
            break
        row = c[i].sum()
        out.append({"true": names[i], "predicted": names[j], "count": int(off[i, j]),
                    "share": float(off[i, j] / row) if row else 0.0})
    return out


def worst_classes(confusion, classes, k: int = 5) -> list[dict]:
    """The k classes of lowest recall (`fne.metrics.class_recalls`, worst first) among those with test
    images that were not all recognised: {"class", "recall", "right", "n_test"} each."""
    c = np.asarray(confusion if confusion is not None else [], dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.sum() == 0:
        return []
    names = list(classes) if classes and len(classes) == len(c) else [str(i) for i in range(len(c))]
    rec = class_recalls(c)
    order = [i for i in np.argsort(np.where(np.isnan(rec), np.inf, rec), kind="stable") if rec[i] < 1]
    return [{"class": names[i], "recall": float(rec[i]), "right": int(c[i, i]), "n_test": int(c[i].sum())}
            for i in order[:k]]


def untested_classes(confusion, classes) -> list[str]:
    """The classes with no test image in `confusion` (rows: true classes; summed over the splits):
    no recall, and not in the mean class accuracy (`fne.metrics.class_recall` warned of them)."""
    c = np.asarray(confusion if confusion is not None else [], dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.sum() == 0:
        return []
    names = list(classes) if classes and len(classes) == len(c) else [str(i) for i in range(len(c))]
    return [str(names[i]) for i in np.flatnonzero(c.sum(axis=1) == 0)]


UNTESTED = "Classes with no test image (no recall; the mean class accuracy is over the others)"


# Markdown's punctuation; "_" only where it can open or close emphasis (not inside a word: new_layers),
# "<" only where it can open an HTML tag (not "p < 0.05")
_MD_SPECIAL = re.compile(r"([\\`*\[\]>|#]|<(?=[A-Za-z/!?])|(?<![^\W_])_|_(?![^\W_]))")


def md_text(s) -> str:
    """Text as Markdown prints it: its punctuation escaped (`<b>`, `|`, `*` print as typed) and a
    line break shown as ↵, so that a list item or table cell stays one line; report.md passes every
    name through it (classes, labels, datasets, backbones, sentences that name them)."""
    return _MD_SPECIAL.sub(r"\\\1", str(s)).replace("\r\n", "↵").replace("\n", "↵").replace("\r", "↵")


def label(r: dict, multi: bool) -> str:
    """The row's name: its method, [backbone] where several, (settings that tell it from rows of
    the same method), (a note: direct mode's mapped classes)."""
    text = f"{r['method']} [{r['backbone']}]" if multi else r["method"]
    text += f" ({r['variant']})" if r.get("variant") else ""
    return text + (f" ({r['note']})" if r.get("note") else "")


def _few(ds: dict) -> str | None:
    """The section's note on intervals over 2 splits (`intervals.few_splits_note`), or None: its rows
    named as the table names them (a note several rows share: their mark, `_marked`)."""
    names, marks = _marked(ds)
    return few_splits_note(ds["rows"], [name + (f" ({marks[r['note']]})" if r.get("note") in marks else "")
                                        for r, name in zip(ds["rows"], names, strict=True)])


def _marked(ds: dict) -> tuple[list[str], dict[str, str]]:
    """The section's table names and {note: mark} (`notes.marked`): a note several rows share (what
    `--C auto` chose) written once under the table, marked on its rows, not repeated in every auto
    row's name; a note of one row stays in its name; the label (verdicts, report.json) keeps it."""
    shared = Counter(r.get("note") for r in ds["rows"])
    return marked([{**r, "label": label(r, ds["multi_backbone"]), "note": r.get("note") if shared[r.get("note")] > 1
                    else None} for r in ds["rows"]])


def _md_cell(text: str, best: bool) -> str:
    return f"**{text}**" if best and text != "—" else text


def render_md(head: dict, datasets: list[dict], figures: dict) -> str:
    L = ["# fne report", ""]
    if head["warning"]:
        L += [f"> **{md_text(head['warning'])}**", ""]
    for n in head["notes"]:
        L += [f"> Note: {md_text(n)}", ""]
    L += _header_lines(head, md=True) + [""]
    for ds in datasets:
        L += [f"## {md_text(ds['dataset'])}", ""] + ([f"Backbone: {md_text(ds['backbone'])}", ""]
                                                     if ds.get("backbone") else [])
        L.append("| " + " | ".join(TABLE_HEAD) + " |")
        L.append("|" + "|".join(["---"] + ["---:"] * (len(TABLE_HEAD) - 1)) + "|")
        names, marks = _marked(ds)
        for r, name in zip(ds["rows"], names, strict=True):
            c = cells(r)
            L.append("| " + " | ".join([
                md_text(name) + (f" ({r['runs']} runs)" if r["runs"] > 1 else "")
                + (f" ({marks[r['note']]})" if r.get("note") in marks else ""),
                _md_cell(c["accuracy"], "accuracy" in r["best"]), c["accuracy_ci"],
                _md_cell(c["mean_class_accuracy"], "mean_class_accuracy" in r["best"]), c["mean_class_accuracy_ci"],
                (pub_str(r["published"]) + " (published)") if r.get("published") else "—",
                _md_cell(c["seconds"], "seconds" in r["best"]),
                _md_cell(c["extract_seconds"], "extract_seconds" in r["best"]),
                images_str(r), str(r.get("n_splits") or "—"),
            ]) + " |")
        for name, p in ds["published"]["only"].items():
            L.append(f"| {md_text(name)} (published only) | — | — | — | — | {pub_str(p)} (published) | — | — | — | — |")
        for note, m in marks.items():
            L += ["", f"({m}) {md_text(note)}"]
        L += ["", "Bold: the best measured value of each column (highest accuracy, lowest seconds), beyond noise "
              "or not (the verdict below says); rows "
              "scored on a subset of the classes (direct mode's class map) are not ranked. "
              f"{SPREAD}. {MEAN_CLASS}. Published values are references from the pipeline file, "
              "not measurements of this run" + (f"; source: {md_text(ds['published']['source'])}"
                                               if ds["published"]["source"] else "") + ".", "",
              md_text(interval_sentence(ds["rows"]))]
        if _earlier(ds):
            L += ["", md_text(EARLIER) + "."]
        if ds["published"].get("note"):
            L += ["", f"Published values note: {md_text(ds['published']['note'])}"]
        if _few(ds):
            L += ["", f"**Note:** {md_text(_few(ds))}"]
        for note in ("names_note", "protocol_note", "repeats_note"):
            L += ["", f"**Note:** {md_text(ds[note])}"] if ds.get(note) else []
        L.append("")
        for key, alt in (("bars", "methods"), ("time", "accuracy against time"), ("confusion", "confusion matrix")):
            f = figures.get((ds["dataset"], key))
            if f:
                L += [f"![{md_text(ds['dataset'])}: {alt}]({f})", ""]
        L += _winner_lines(ds)
    return "\n".join(L).rstrip() + "\n"


def _header_lines(head: dict, md: bool) -> list[str]:
    items = [
        ("pipeline", ", ".join(head["pipeline"])),
        ("backbone", "; ".join(head["backbones"])),
        ("precision", ", ".join(head["precision"])),
        ("crop", ", ".join(head["crop"])),
        ("device", ", ".join(head["device"])),
        ("machine", "; ".join(head["machine"])),
        ("date", head["date"] or ""),
        ("runs", str(head["runs"])),
    ]
    return [f"- {k}: {md_text(v) if md else v}" for k, v in items if v]


def winner_sentences(ds: dict) -> tuple[str, str, str, str | None]:
    """(lead-in, the best row's label, the rest of the sentence, the comparison with the runner-up)
    as the verdict allows: a winner is named only where the measurements tell it from the runner-up."""
    w = ds["winner"]
    v = ds.get("verdict") or {"kind": "clear", "text": ds.get("winner_test")}
    name, acc = label(w, ds["multi_backbone"]), f", accuracy {cells(w)['accuracy']} %"
    if v["kind"] == "single":
        return "Only one method was measured:", name, acc + "; nothing to compare it with", None
    if v["kind"] == "tie":
        return "Tie:", "", *said_once([v["text"]], ds["rows"]), None
    lead = {"unclear": "Highest accuracy, but no clear winner:",
            "untested": "Highest accuracy, untested:"}.get(v["kind"], "Measured winner:")  # untested: not called a win
    return lead, *said_once([name, acc, v["text"] or None], ds["rows"])


def _subject(ds: dict) -> str:
    """Whose confusions the lists under the verdict show: "it", the row the sentence names, but on a
    tie, which names several, that row's name."""
    tie = (ds.get("verdict") or {}).get("kind") == "tie"
    return f"{label(ds['winner'], ds['multi_backbone'])} (first of the tied rows)" if tie else "it"


def advice_verdict(a: dict) -> tuple[str, str]:
    """(HTML class, sentence) on whether the measurements agree with the advice."""
    rec = ", ".join(a.get("families", []))
    kind, w = a.get("verdict", "clear"), f"{a['winner']} ({a['winner_family']})"
    fits = "is" if a["matched"] else "is not"
    if kind == "single":
        return "undecided", (f"the only measured method, {w}, {fits} of the kind the advice recommends "
                             f"(recommended: {rec}); with nothing to compare it with, this does not test the advice")
    if kind in ("tie", "unclear") and a.get("by_kind"):
        b = a["by_kind"]
        return ("match" if b["matched"] else "nomatch"), (
            f"no clear winner (highest accuracy: {w}), but the best of the {'recommended kind' if b['matched'] else 'other kinds'}, "
            f"{b['best']}, beats the best of the {'other kinds' if b['matched'] else 'recommended kind'}, {b['other']}, "
            f"{b['text']}; the measurements {'match' if b['matched'] else 'do not match'} the advice (recommended: {rec})")
    if kind in ("tie", "unclear", "untested"):  # untested: a lead no test checked
        return "undecided", (f"no {'tested' if kind == 'untested' else 'clear'} winner (highest accuracy: {w}), so the measurements neither confirm nor "
                             f"contradict the advice (recommended: {rec})")
    named = a.get("named") or []
    if a["matched"] and named and not a.get("matched_method"):  # the advice's kind, not one of its methods
        verdict = (f"is of the kind the advice recommends, but not a method it names ({', '.join(named)}): it "
                   f"matches the advice's kind of method only")
    elif a["matched"]:
        verdict = "matches the advice" + (": it is a method the advice names" if named else "")
    else:
        verdict = "does not match the advice"
    return ("match" if a["matched"] else "nomatch"), f"the measured winner {w} {verdict} (recommended: {rec})"


def _winner_lines(ds: dict) -> list[str]:
    L = []
    w = ds["winner"]
    if w:
        lead, best, rest, versus = winner_sentences(ds)
        L += [f"{lead} " + (f"**{md_text(best)}**" if best else "") + f"{md_text(rest)}.", ""]
        if versus:
            L += [f"Winner vs runner-up: {md_text(versus)}.", ""]
        pairs = confused_pairs(w.get("confusion"), w.get("classes"))
        if pairs:
            L.append(f"Classes {md_text(_subject(ds))} confuses most (true → predicted, count, share of the true class):")
            L += [f"- {md_text(p['true'])} → {md_text(p['predicted'])}: {p['count']} ({100 * p['share']:.0f} %)"
              for p in pairs]
            L.append("")
        worst = worst_classes(w.get("confusion"), w.get("classes"))
        if worst:
            L.append(f"Classes {md_text(_subject(ds))} recognises worst (recall: right of the test images):")
            L += [f"- {md_text(x['class'])}: {100 * x['recall']:.0f} % ({x['right']} of {x['n_test']})" for x in worst]
            L.append("")
        untested = untested_classes(w.get("confusion"), w.get("classes"))
        if untested:
            L += [f"{UNTESTED}: {', '.join(md_text(c) for c in untested)}.", ""]
    for a in ds["advice"]:
        sim = a.get("similarity") or {}
        L.append(f"Advice (`fne advise`, {md_text(a.get('arch'))} {md_text(a.get('weights'))}): "
                 f"**{md_text(a['recommendation'])}**: {md_text(a.get('text', ''))}")
        L += [f"- {md_text(line)}" for line in [confidence_line(a)] if line]
        L += [f"- {md_text(r)}" for r in a.get("reasons", [])]
        L += [f"- computed for the labels: {md_text(a['labels'])}"] if a.get("labels") else []
        L.append(f"- measured: {_num(a.get('images_per_class'))} training images per class; similarity "
                 + (f"max-softmax {sim.get('max_softmax_mean', float('nan')):.2f}, normalised entropy "
                    f"{sim.get('entropy_norm_mean', float('nan')):.2f} on {sim.get('sample')} images"
                    if sim.get("judged") else "not judged"))
        if "matched" in a:
            L.append(f"- {md_text(advice_verdict(a)[1])}")
        L.append("")
    return L


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f3f7}
td.method{text-align:left}
td[data-col]{white-space:nowrap}
td.best{font-weight:bold;background:#e3f4e1}
td.published,tr.published td{color:#8e3b2b;font-style:italic;background:#fbf3f1}
.warning{border:2px solid #c0392b;background:#fdecea;color:#7b1f16;padding:.6em 1em;font-weight:bold;margin:1em 0}
.note{border-left:4px solid #e67e22;background:#fff6ec;padding:.4em 1em;margin:.6em 0}
figure{margin:1em 0}
img.figure{max-width:100%;border:1px solid #eee}
.advice{border:1px solid #bcd;background:#f5f9fd;padding:.5em 1em;margin:1em 0}
.match{color:#1e7b34;font-weight:bold}.nomatch{color:#b03a2e;font-weight:bold}.undecided{color:#555;font-weight:bold}
small{color:#666}
"""


def _e(s) -> str:
    return html.escape(str(s))


def _html_row(r: dict, name: str, mark: str | None) -> str:
    """One row of report.html's table, named `name` (marked `mark`: a note under the table); the
    best values of their columns highlighted."""
    c = cells(r)

    def td(col):
        cls = " class='best'" if col in r["best"] and c[col] != "—" else ""
        return f"<td{cls} data-col='{col}'>{_e(c[col])}</td>"

    pub = (f"<td class='published'>{_e(pub_str(r['published']))} <small>(published)</small></td>"
           if r.get("published") else "<td>—</td>")
    runs = f" <small>({r['runs']} runs)</small>" if r["runs"] > 1 else ""
    sup = f"<sup>{_e(mark)}</sup>" if mark else ""
    return (f"<tr><td class='method'>{_e(name)}{runs}{sup}</td>"
            + td("accuracy") + td("accuracy_ci") + td("mean_class_accuracy") + td("mean_class_accuracy_ci")
            + pub + td("seconds") + td("extract_seconds")
            + f"<td>{_e(images_str(r))}</td><td>{_e(r.get('n_splits') or '—')}</td></tr>")


def _html_table(ds: dict) -> list[str]:
    """report.html's table of a section, and under it the notes its rows share, marked on them."""
    H = ["<table class='results'><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in TABLE_HEAD) + "</tr></thead><tbody>"]
    names, marks = _marked(ds)
    H += [_html_row(r, name, marks.get(r.get("note"))) for r, name in zip(ds["rows"], names, strict=True)]
    for name, p in ds["published"]["only"].items():
        H.append(f"<tr class='published'><td class='method'>{_e(name)} <small>(published only)</small></td>"
                 f"<td>—</td><td>—</td><td>—</td><td>—</td><td>{_e(pub_str(p))} <small>(published)</small></td>"
                 "<td>—</td><td>—</td><td>—</td><td>—</td></tr>")
    H.append("</tbody></table>")
    return H + [f"<p class='mark'><small><sup>{_e(m)}</sup> {_e(note)}</small></p>" for note, m in marks.items()]


def render_html(head: dict, datasets: list[dict], figures: dict) -> str:
    H = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
         "<meta name='viewport' content='width=device-width, initial-scale=1'>",
         "<title>fne report</title>", f"<style>{CSS}</style></head><body>", "<h1>fne report</h1>"]
    if head["warning"]:
        H.append(f"<div class='warning' id='random-weights-warning'>{_e(head['warning'])}</div>")
    for n in head["notes"]:
        H.append(f"<div class='note'>Note: {_e(n)}</div>")
    H.append("<ul class='header'>")
    H += [f"<li>{_e(line[2:])}</li>" for line in _header_lines(head, md=False)]
    H.append("</ul>")
    for ds in datasets:
        H.append(f"<h2>{_e(ds['dataset'])}</h2>")
        if ds.get("backbone"):
            H.append(f"<p class='backbone'>Backbone: {_e(ds['backbone'])}</p>")
        H += _html_table(ds)
        src = f" Source: {_e(ds['published']['source'])}." if ds["published"]["source"] else ""
        H.append("<p><small>Highlighted: the best measured value of each column (highest accuracy, lowest "
                 "seconds), beyond noise or not (the verdict below says); rows scored on a subset of the classes (direct mode's class map) are not ranked. "
                 f"{_e(SPREAD)}. {_e(MEAN_CLASS)}. Published values (italic) are references from the "
                 f"pipeline file, not measurements of this run.{src}</small></p>")
        H.append(f"<p class='intervals'><small>{_e(interval_sentence(ds['rows']))}</small></p>")
        if _earlier(ds):
            H.append(f"<p class='earlier'><small>{_e(EARLIER)}.</small></p>")
        if ds["published"].get("note"):
            H.append(f"<p><small>Published values note: {_e(ds['published']['note'])}</small></p>")
        if _few(ds):
            H.append(f"<div class='note intervals'>Note: {_e(_few(ds))}</div>")
        for note in ("names_note", "protocol_note", "repeats_note"):
            H += [f"<div class='note {note[:-5]}'>Note: {_e(ds[note])}</div>"] if ds.get(note) else []
        for key, alt in (("bars", "methods"), ("time", "accuracy against time"), ("confusion", "confusion matrix")):
            f = figures.get((ds["dataset"], key))
            if f:
                H.append(f"<figure><img class='figure' alt='{_e(ds['dataset'])}: {alt}' "
                         f"src='data:image/png;base64,{f}'></figure>")
        w = ds["winner"]
        if w:
            lead, best, rest, versus = winner_sentences(ds)
            H.append(f"<p>{_e(lead)} " + (f"<b>{_e(best)}</b>" if best else "") + f"{_e(rest)}.</p>")
            if versus:
                H.append(f"<p class='winner-test'>Winner vs runner-up: {_e(versus)}.</p>")
            pairs = confused_pairs(w.get("confusion"), w.get("classes"))
            if pairs:
                H.append(f"<p>Classes {_e(_subject(ds))} confuses most:</p><ul class='confused'>" + "".join(
                    f"<li>{_e(p['true'])} → {_e(p['predicted'])}: {p['count']} ({100 * p['share']:.0f} %)</li>"
                    for p in pairs) + "</ul>")
            worst = worst_classes(w.get("confusion"), w.get("classes"))
            if worst:
                H.append(f"<p>Classes {_e(_subject(ds))} recognises worst (recall: right of the test images):</p>"
                         "<ul class='worst'>"
                         + "".join(f"<li>{_e(x['class'])}: {100 * x['recall']:.0f} % ({x['right']} of {x['n_test']})</li>"
                                   for x in worst) + "</ul>")
            untested = untested_classes(w.get("confusion"), w.get("classes"))
            if untested:
                H.append(f"<p class='untested'>{_e(UNTESTED)}: {_e(', '.join(untested))}.</p>")
        for a in ds["advice"]:
            sim = a.get("similarity") or {}
            H.append("<div class='advice'>")
            H.append(f"<p><b>Advice</b> (fne advise, {_e(a.get('arch'))} {_e(a.get('weights'))}): "
                     f"<b>{_e(a['recommendation'])}</b>: {_e(a.get('text', ''))}</p><ul>")
            H += [f"<li class='confidence'>{_e(line)}</li>" for line in [confidence_line(a)] if line]
            H += [f"<li>{_e(r)}</li>" for r in a.get("reasons", [])]
            H += [f"<li class='labels'>computed for the labels: {_e(a['labels'])}</li>"] if a.get("labels") else []
            H.append("</ul>")
            if sim.get("judged"):
                H.append(f"<p><small>max-softmax {sim.get('max_softmax_mean', 0):.2f}, normalised entropy "
                         f"{sim.get('entropy_norm_mean', 0):.2f} on {_e(sim.get('sample'))} images; "
                         f"{_num(a.get('images_per_class'))} training images per class</small></p>")
            if "matched" in a:
                cls, text = advice_verdict(a)
                H.append(f"<p class='{cls}'>{_e(text[0].upper() + text[1:])}.</p>")
            H.append("</div>")
    H.append("</body></html>")
    return "\n".join(H) + "\n"


def table_text(datasets: list[dict]) -> str:
    """A compact console table of every dataset."""
    L = []
    for ds in datasets:
        L.append(ds["dataset"] + (f", backbone {ds['backbone']}" if ds.get("backbone") else "") + ":")
        names, marks = _marked(ds)  # a note several rows share: written once under the table, marked on them
        names = [name + (f" ({r['runs']} runs)" if r["runs"] > 1 else "")
                 + (f" ({marks[r['note']]})" if r.get("note") in marks else "")
                 for r, name in zip(ds["rows"], names, strict=True)]
        width = max([len(n) for n in names] + [6])
        L.append(f"  {'method':<{width}}  {'accuracy %':>13}  {'95% CI':>11}  {'mean class %':>13}  {'95% CI':>11}  "
                 f"{'published':>11}  {'fit/train s':>11}  {'extract s':>9}")
        for r, name in zip(ds["rows"], names, strict=True):
            c = cells(r)
            L.append(f"  {name:<{width}}  {c['accuracy']:>13}  {c['accuracy_ci']:>11}  "
                     f"{c['mean_class_accuracy']:>13}  {c['mean_class_accuracy_ci']:>11}  "
                     f"{pub_str(r.get('published')):>11}  {c['seconds']:>11}  "
                     f"{c['extract_seconds']:>9}")
        for name, p in ds["published"]["only"].items():
            L.append(f"  {name + ' (published only)':<{width}}  {'—':>13}  {'—':>11}  {'—':>13}  {'—':>11}  "
                     f"{pub_str(p):>11}")
        L += [f"  ({m}) {note}" for note, m in marks.items()]
        if ds["winner"]:
            lead, best, rest, versus = winner_sentences(ds)
            versus = versus and versus.removeprefix("no clear winner: ")  # the lead-in says so already
            L.append(f"  {lead} {best}{rest}" + (f" ({versus})" if versus else ""))
        if _few(ds):
            L.append(f"  Note: {_few(ds)}")
        L += [f"  Note: {ds[note]}" for note in ("names_note", "protocol_note", "repeats_note") if ds.get(note)]
    return "\n".join(L)
