"""The report's notes, legible at a study's scale (4 backbones x 9 methods, 30 rows a section):
the note on rows not scored on the same test images (`splits_note`) names the methods and how
many rows, not each of the 30 labels; a note several rows share (what `--C auto` chose) is
written once under report.tex's table and the bar figure, and marked on its rows (`marked`)."""

from __future__ import annotations

import re
from collections import defaultdict

from fne.linear import compare

MARKS = "abcdefghijklmnopqrstuvwxyz"
NAMED_ROWS = 6  # a group of up to this many rows is named row by row; of more, by its methods and count


def splits_note(rows: list[dict]) -> str | None:
    """A sentence where the rows were not all scored on the same test images (other split
    protocols, other seeds of random splits), else None. Each group of rows is named by its rows'
    labels (`compare.row_name`), or, where it has more than NAMED_ROWS, by its count and methods."""
    groups: dict[str, dict[str, list[dict]]] = {"splits": defaultdict(list), "seeds": defaultdict(list)}
    for r in rows:  # each row by its name: rows of one method that differ in a setting are told apart
        groups["splits"][str(r["settings"].get("split_protocol", "unknown"))].append(r)
        groups["seeds"][", ".join(map(str, r.get("seeds") or [])) or "unknown"].append(r)
    predefined = all(k.startswith("predefined") for k in groups["splits"])  # seeds do not move its split
    parts = [f"{what} " + "; ".join(f"{k} ({_named(rs)})" for k, rs in g.items())
             for what, g in groups.items() if len(g) > 1 and not (what == "seeds" and predefined)]
    if not parts:
        return None
    counts = len(groups["splits"]) > 1 and len({compare.split_rule(k) for k in groups["splits"]}) == 1
    return ("The rows were not all scored on the same test images (" + "; ".join(parts) + "): their differences mix "
            "the methods with the splits" + "; the paired tests compare rows on the test images they share." * counts
            + "." * (not counts))


def _named(rows: list[dict]) -> str:
    """A group of rows as the note names it: each row's name, or where there are more than
    NAMED_ROWS, "22 rows: fne+svm, fne+logreg, …" (their methods, each once)."""
    names = list(dict.fromkeys(compare.row_name(r) for r in rows))
    if len(names) <= NAMED_ROWS:
        return ", ".join(names)
    return f"{len(names)} rows: " + ", ".join(dict.fromkeys(str(r["method"]) for r in rows))


def marked(rows: list[dict]) -> tuple[list[str], dict[str, str]]:
    """The rows' labels with each row's note (what `--C auto` chose: `fne+svm (C=auto) (auto chose
    fne+svm, C 1; the most frequent of 3 splits' choices)`) taken out, and {note: its mark}: a
    note written once under a table or figure, marked beside each row it is of (4 backbones'
    auto rows: one note, not 4 copies). Past MARKS' letters, a note stays in its label."""
    names, marks = [], {}
    for r in rows:
        note, name = r.get("note"), str(r["label"])
        if note and name.endswith(f" ({note})") and (note in marks or len(marks) < len(MARKS)):
            name = name.removesuffix(f" ({note})")
            marks[note] = marks.get(note) or MARKS[len(marks)]
        names.append(name)
    return names, marks


def said_once(parts: list[str | None], rows: list[dict]) -> list[str | None]:
    """The parts of one verdict (the best row's name, the sentence, the comparison with the runner-up)
    with each row's note said at its first mention only: later mentions name the row by its label
    less the note. "fne+auto (auto chose fne+svm, C 1; …) vs fne+svm (…; seed 1 of fne+auto (auto chose
    fne+svm, C 1; …))" read the 80-character note 4 times in one line. Where two rows would then read
    alike, their full labels stay."""
    short = {}
    for r in rows:
        note, name = r.get("note"), str(r.get("label"))
        if note and name.endswith(f" ({note})"):
            short[name] = name.removesuffix(f" ({note})")
    plain = {str(r.get("label")) for r in rows} - set(short)
    short = {k: v for k, v in short.items() if v not in plain and list(short.values()).count(v) == 1}
    seen, out = set(), []
    for part in parts:
        if part is None or not short:
            out.append(part)
            continue
        pieces = re.split("(" + "|".join(map(re.escape, sorted(short, key=len, reverse=True))) + ")", part)
        for i in range(1, len(pieces), 2):  # the odd pieces are the labels found
            full = pieces[i]
            pieces[i] = short[full] if full in seen else full
            seen.add(full)
        out.append("".join(pieces))
    return out
