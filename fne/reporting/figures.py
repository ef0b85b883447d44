"""The figures of `fne report`, as base64 PNGs (embedded in report.html, files beside report.md)."""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import math
import re
import warnings

import numpy as np

from fne.reporting.notes import marked
from fne.reporting.render import label

# Fonts that draw what matplotlib's DejaVu Sans lacks (Chinese, Japanese, Korean, Thai, Arabic,
# Devanagari ... class names): each installed one is a fallback, character by character.
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans",
                  "Droid Sans Fallback", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Hiragino Sans", "PingFang SC",
                  "Microsoft YaHei", "Yu Gothic", "Malgun Gothic", "Arial Unicode MS", "Noto Sans",
                  "Noto Sans Thai", "Noto Sans Arabic", "Noto Sans Devanagari")
_GLYPH = re.compile(r"Glyph (\d+) .*missing from font")


def _any_script(draw):
    """`draw` (a figure of `ds`) with the installed `FALLBACK_FONTS` behind matplotlib's font, so
    that 日本 or ไทย in a class or method name is drawn, not a box; matplotlib's warning per missing
    character (`Glyph 26085 ... missing from font(s) DejaVu Sans`, twice) becomes one line naming
    the characters no font drew and what to install."""
    @functools.wraps(draw)
    def drawn(ds: dict):
        import matplotlib
        from matplotlib import font_manager

        have = {f.name for f in font_manager.fontManager.ttflist}
        family = [*matplotlib.rcParams["font.family"], *(f for f in FALLBACK_FONTS if f in have)]
        with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context({"font.family": family}), \
                _fonts_not_found() as absent:
            warnings.simplefilter("always")
            png = draw(ds)
        if absent:
            warnings.warn(f"report figures: matplotlib's font list lacks {', '.join(sorted(absent)[:4])}"
                          f"{' …' if len(absent) > 4 else ''}, drawn in its default font instead; remove the list "
                          f"({matplotlib.get_cachedir()}/fontlist-*.json) for matplotlib to make it again", stacklevel=2)
        missing = sorted({chr(int(m.group(1))) for w in caught if (m := _GLYPH.search(str(w.message)))})
        for w in caught:
            if not _GLYPH.search(str(w.message)):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if missing:
            warnings.warn(f"report figures: no font matplotlib knows draws {' '.join(missing[:10])}"
                          f"{' …' if len(missing) > 10 else ''} (of class or method names), drawn as boxes there "
                          f"(report.md and report.html write them as text); install a font that has them (Noto Sans "
                          f"CJK, say), then remove matplotlib's font list ({matplotlib.get_cachedir()}/fontlist-*.json) "
                          f"for it to be found", stacklevel=2)
        return png
    return drawn


@contextlib.contextmanager
def _fonts_not_found():
    """The font families matplotlib's `findfont` logs as not found while the block runs (a font list
    made by another install of its release lacks the fonts it ships: mathtext's STIX and cm fonts),
    its log lines held back: they were 21 lines of `findfont: Font family ... not found` a report."""
    import logging

    absent: set[str] = set()

    class Held(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = re.match(r"findfont: Font family \[?'?([^'\]]+)'?\]? not found", record.getMessage())
            if m:
                absent.add(m.group(1))
            else:
                logging.getLogger("matplotlib").handle(record)  # any other line goes on as it would have

    log = logging.getLogger("matplotlib.font_manager")
    held, was = Held(), log.propagate
    log.addHandler(held)
    log.propagate = False
    try:
        yield absent
    finally:
        log.removeHandler(held)
        log.propagate = was


def _subplots(figsize: tuple[float, float]):
    """(figure, axes) drawn without pyplot: no backend is chosen or switched (a notebook's inline
    plots keep theirs) and pyplot's list of open figures is left alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _plain(text) -> str:
    """A name as matplotlib draws it as typed: its $ escaped (two of them made the text between
    mathtext, `$x$` drawn as an italic x, `$\\frac{$` a ValueError that stopped the report)."""
    return str(text).replace("$", "\\$")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@_any_script
def fig_bars(ds: dict) -> str:
    rows = [r for r in ds["rows"] if r.get("accuracy") is not None][::-1]
    only = ds["published"]["only"]
    names, marks = marked([{**r, "label": label(r, ds["multi_backbone"])} for r in rows])
    labels = [_plain(n + (f" ({marks[r['note']]})" if r.get("note") in marks else "")) for n, r in zip(names, rows, strict=True)]
    n = len(rows) + len(only)
    fig, ax = _subplots((7.5, 0.9 + 0.42 * max(n, 1) * (1.6 if ds["published"]["values"] else 1)))
    y = np.arange(len(rows), dtype=float)
    h = 0.38
    acc = [100 * r["accuracy"] for r in rows]
    err = [100 * (r.get("accuracy_std") or 0) for r in rows]
    mca = [np.nan if r.get("mean_class_accuracy") is None else 100 * r["mean_class_accuracy"] for r in rows]  # none: no bar
    ax.barh(y + h / 2, acc, h, xerr=err, color="#3b73b9", label="accuracy (measured; whiskers: ± std over splits)", capsize=2)
    ax.barh(y - h / 2, mca, h, color="#9cc3e6", label="mean class accuracy (measured)")
    py = [(i, r["published"]["mean"]) for i, r in enumerate(rows) if r.get("published")]
    for k, (name, p) in enumerate(only.items()):
        labels.append(_plain(f"{name} (published only)"))
        py.append((len(rows) + k, p["mean"]))
    if py:
        ax.scatter([v for _, v in py], [i for i, _ in py], marker="D", s=42, facecolor="white",
                   edgecolor="#c0392b", linewidth=1.6, zorder=5, label="published (reference, not measured)")
    ax.set_yticks(np.arange(n))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("%")
    ax.set_xlim(0, 100)
    ax.set_title(_plain(f"{ds['dataset']}: methods"), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if marks:  # a note 4 rows share, once under the figure, not 4 times in the labels
        ax.text(0.0, -0.8 / fig.get_size_inches()[1], "\n".join(_plain(f"({m}) {n}") for n, m in marks.items()),
                transform=ax.transAxes, ha="left", va="top", fontsize=7, color="#333")
    return _png(fig)


@_any_script
def fig_time(ds: dict) -> str | None:
    pts = []
    for r in ds["rows"]:
        if r.get("accuracy") is None:
            continue
        earlier = r.get("extract_earlier_seconds") if r.get("extract_seconds") is None else None
        t = (r.get("seconds") or 0.0) + (r.get("extract_seconds") or earlier or 0.0)
        kind = "train" if r.get("kind") == "train" else "fit" if r.get("extract_seconds") is not None \
            else "earlier" if earlier is not None else "cached"
        if t > 0:
            pts.append((t, 100 * r["accuracy"], _plain(label(r, ds["multi_backbone"])), kind))
    if not pts:
        return None
    fig, ax = _subplots((7.5, 4.2))
    # a fit whose rows were cached (or whose extraction is not recorded) costs its fit alone here: hollow,
    # not drawn as if a fit that extracted were slower by the extraction it alone paid for; one whose store
    # recorded what computing its rows cost (an earlier fne extract) is drawn with that cost, as a diamond
    for kind, color, marker, name in (("fit", "#3b73b9", "o", "linear head, with the extraction of its rows"),
                                      ("earlier", "#3b73b9", "D", "linear head, with its rows' earlier extraction"),
                                      ("cached", "none", "o", "linear head, fit alone (rows cached or not timed)"),
                                      ("train", "#e67e22", "s", "network training")):
        sel = [p for p in pts if p[3] == kind]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], c=color, marker=marker, s=40, label=name,
                       edgecolors="#3b73b9" if kind == "cached" else "face")
    ax.set_xscale("log")
    accs = [p[1] for p in pts]
    lo, hi = max(0.0, min(accs) - 8), min(100.0, max(accs) + 8)
    ax.set_ylim(lo, hi)
    ts = [p[0] for p in pts]
    ax.set_xlim(min(ts) / 1.5, max(ts) * 4)  # room on the right for the labels
    named = _named(pts)
    if len(named) < len(pts):  # 30 labels would cover each other and the points: the frontier, numbered, a key below
        for k, (t, a, _, _) in enumerate(sorted(named), 1):
            ax.annotate(str(k), (t, a), xytext=(4, 4), textcoords="offset points", fontsize=7, fontweight="bold")
        key = [f"{k}: {p[2]}" for k, p in enumerate(sorted(named), 1)]
        ax.text(0.0, -0.16, "\n".join([f"numbered: the {len(named)} rows that no row as fast or faster matches in "
                                        f"accuracy (the other {len(pts) - len(named)} are in the table)", *key]),
                transform=ax.transAxes, ha="left", va="top", fontsize=7, color="#333")
        named = []
    # Points close in time form a cluster; its labels stack beside it with leader lines.
    step = (hi - lo) * 0.055
    groups: list[list] = []
    for p in sorted(named):
        near = [g for g in groups if math.log10(p[0]) - math.log10(g[-1][0]) < 0.12
                and min(abs(p[1] - q[1]) for q in g) < 2 * step]
        if near:
            near[0].append(p)
        else:
            groups.append([p])
    for g in groups:
        g.sort(key=lambda p: -p[1])
        x = max(p[0] for p in g) * 1.35
        top = min(hi - step * 0.6, max(p[1] for p in g) + step * (len(g) - 1) / 2)
        if len(g) == 1:
            t, a, lab, _ = g[0]
            ax.annotate(lab, (t, a), xytext=(7, 0), textcoords="offset points", fontsize=7, va="center")
            continue
        for k, (t, a, lab, _) in enumerate(g):
            ax.annotate(lab, (t, a), xytext=(x, top - k * step), textcoords="data", fontsize=7, va="center",
                        arrowprops=dict(arrowstyle="-", color="#999", lw=0.6))
    ax.set_xlabel("seconds: fit/train + the feature extraction it ran (log scale)")
    ax.set_ylabel("accuracy %")
    ax.set_title(_plain(f"{ds['dataset']}: accuracy against time"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def _named(pts: list[tuple]) -> list[tuple]:
    """The points of `fig_time` that are labelled: all of up to `LABEL_ALL`; of more, the frontier
    (each point that no other point matches in accuracy in as little time or less), so that the
    figure stays legible with the rows of a whole study (4 backbones x 9 methods)."""
    if len(pts) <= LABEL_ALL:
        return pts
    return [p for p in pts if not any(q is not p and q[0] <= p[0] and q[1] >= p[1] and (q[0], q[1]) != (p[0], p[1])
                                      for q in pts)]


LABEL_ALL = 12  # fig_time labels every point of up to this many rows


@_any_script
def fig_confusion(ds: dict) -> str | None:
    w = ds["winner"]
    if not w or not w.get("confusion"):
        return None
    c = np.asarray(w["confusion"], dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.sum() == 0:
        return None
    norm = c / np.clip(c.sum(axis=1, keepdims=True), 1, None)
    k = len(c)
    size = min(9.0, 3.0 + 0.22 * k)
    fig, ax = _subplots((size + 1.2, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    classes = [_plain(c) for c in (w.get("classes") if w.get("classes") and len(w["classes"]) == k else range(k))]
    if k <= 40:
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(classes, rotation=90, fontsize=7)
        ax.set_yticklabels(classes, fontsize=7)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if c[i, j]:
                    ax.text(j, i, int(c[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(_plain(f"{ds['dataset']}: confusion of {label(w, ds['multi_backbone'])} (rows normalised)"), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _png(fig)


