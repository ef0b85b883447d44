"""`fne report`: report.md and a self-contained report.html from run folders.

Inputs are found recursively under each RUN_DIR:

* `metrics.json` (written by `fne fit` / `fne train`): one measured method each;
* `step.json` (written by `fne run` beside metrics.json): the pipeline's dataset key;
* `advice.json` (`fne advise` / `fne run`): the recommendation shown beside the winner;
* `pipeline.json` (`fne run`): notes (e.g. a fallback to random weights) and the published
  reference values of the pipeline file, which are shown in their own labelled column and
  rows, never mixed with measurements.

Every measured number in the tables is taken from metrics.json as it is (fractions shown as
percentages); runs of the same method on the same dataset and backbone (several seeds) are
pooled over their splits. `report.json` holds the rows as numbers, for scripts and tests.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from fne.errors import FneError
from fne.names import slug

RANDOM_WARNING = ("the weights are random: the network has learnt nothing, so these numbers say "
                  "nothing about transfer learning")
COLUMNS = ("accuracy", "mean_class_accuracy", "seconds", "extract_seconds")


# ------------------------------------------------------------------ collecting


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        warnings.warn(f"skipping unreadable {path}: {e}", stacklevel=3)
        return None
    return obj if isinstance(obj, dict) else None


def _find(root: Path, name: str) -> list[Path]:
    if root.is_file():
        return [root] if root.name == name else []
    return sorted(p for p in root.rglob(name) if p.is_file() and not any(
        part.startswith(".tmp") for part in p.parts))


def collect(run_dirs: list[str | Path]) -> dict:
    """All runs, advice and pipeline files under run_dirs (each searched recursively)."""
    runs, advice, pipelines, seen = [], [], [], set()
    for d in run_dirs:
        root = Path(d).expanduser()
        if not root.exists():
            raise FneError(f"RUN_DIR {d}: does not exist")
        for p in _find(root, "metrics.json"):
            if p.resolve() in seen:
                continue
            seen.add(p.resolve())
            m = _read_json(p)
            if m is None or "accuracy" not in m:
                continue
            step = _read_json(p.parent / "step.json") if (p.parent / "step.json").is_file() else None
            runs.append({"path": str(p.parent), "metrics": m, "step": step or {}})
        for p in _find(root, "advice.json"):
            a = _read_json(p)
            if a is not None and "recommendation" in a:
                advice.append({**a, "_path": str(p)})
        for p in _find(root, "pipeline.json"):
            pj = _read_json(p)
            if pj is not None:
                pipelines.append(pj)
    if not runs:
        raise FneError(f"no metrics.json under {', '.join(map(str, run_dirs))} (run `fne fit`, "
                       f"`fne train` or `fne run` first)")
    return {"runs": runs, "advice": advice, "pipelines": pipelines}


# ------------------------------------------------------------------ tabulating


def dataset_key(run: dict) -> str:
    return str(run["step"].get("dataset_key") or run["metrics"].get("dataset") or "?")


def is_scratch(m: dict) -> bool:
    """Training from a random initialisation is the experiment itself, not missing weights."""
    return m.get("mode") == "scratch" or str(m.get("method")) == "train:scratch"


def backbone_label(m: dict) -> str:
    if is_scratch(m):
        return f"{m.get('arch', '?')} (random init)"
    return f"{m.get('arch', '?')} ({m.get('weights', '?')})"


def _f(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _row(runs: list[dict]) -> dict:
    """One table row from one run (values verbatim) or several (pooled over their splits)."""
    ms = [r["metrics"] for r in runs]
    m0 = ms[0]
    row = {
        "method": str(m0.get("method", "?")),
        "kind": m0.get("kind"),
        "backbone": backbone_label(m0),
        "arch": m0.get("arch"), "weights": m0.get("weights"),
        "runs": len(runs),
        "scratch": is_scratch(m0),
        "partial": bool(m0.get("n_excluded")),  # scored on a subset of the classes: not comparable
        "paths": [r["path"] for r in runs],
        "n_images": m0.get("n_images"), "n_train": m0.get("n_train"), "n_test": m0.get("n_test"),
        "n_splits": m0.get("n_splits", len(m0.get("splits") or []) or None),
        "classes": m0.get("classes"),
        # direct mode scores only the classes its class map covers: say so beside the method
        "note": (f"{len(m0.get('classes') or [])} mapped classes; {m0['n_excluded']} test images of "
                 f"unmapped classes left out" if m0.get("n_excluded") else None),
    }
    if len(ms) == 1:
        for k in ("accuracy", "accuracy_std", "mean_class_accuracy", "mean_class_accuracy_std"):
            row[k] = _f(m0.get(k))
        row["seconds"] = _f(m0.get("fit_seconds", m0.get("train_seconds")))
        row["extract_seconds"] = _f(m0.get("extract_seconds"))
        row["confusion"] = m0.get("confusion")
        return row
    splits = [s for m in ms for s in (m.get("splits") or [{"accuracy": m.get("accuracy"),
                                                           "mean_class_accuracy": m.get("mean_class_accuracy")}])]
    for k in ("accuracy", "mean_class_accuracy"):
        vals = np.array([v for v in (_f(s.get(k)) for s in splits) if v is not None])
        row[k] = float(vals.mean()) if len(vals) else None
        row[k + "_std"] = float(vals.std()) if len(vals) else None
    for k, keys in (("seconds", ("fit_seconds", "train_seconds")), ("extract_seconds", ("extract_seconds",))):
        vals = [v for m in ms for v in [next((_f(m.get(x)) for x in keys if m.get(x) is not None), None)]
                if v is not None]
        row[k] = float(np.mean(vals)) if vals else None
    row["n_splits"] = len(splits)
    conf = [np.array(m["confusion"]) for m in ms if m.get("confusion")]
    row["confusion"] = (sum(conf[1:], conf[0]).tolist()
                        if conf and all(c.shape == conf[0].shape for c in conf) else None)
    return row


def published_for(pipelines: list[dict]) -> dict[str, dict]:
    """{dataset key: {"source":..., "note":..., "values": {method: {"mean", "std"}}}} from pipeline.json."""
    out: dict[str, dict] = {}
    for pj in pipelines:
        for key, d in (pj.get("datasets") or {}).items():
            pub = (d or {}).get("published")
            if pub and pub.get("values"):
                out[key] = pub
    return out


def published_value(v) -> dict | None:
    """A published figure as {"mean", "std"} in percent: 93.3, [91.4, 0.6] or {"mean":.., "std":..}."""
    if isinstance(v, dict):
        mean, std = _f(v.get("mean")), _f(v.get("std"))
    elif isinstance(v, (list, tuple)) and len(v) == 2:
        mean, std = _f(v[0]), _f(v[1])
    else:
        mean, std = _f(v), None
    return None if mean is None else {"mean": mean, "std": std}


def tabulate(collected: dict) -> list[dict]:
    """Per dataset: rows, best values, published values, winner, advice."""
    groups: dict[str, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in collected["runs"]:
        m = r["metrics"]
        groups[dataset_key(r)][(str(m.get("method")), m.get("arch"), m.get("weights"),
                                m.get("weights_fingerprint"))].append(r)
    published = published_for(collected["pipelines"])
    out = []
    for key in sorted(groups):
        rows = [_row(rs) for rs in groups[key].values()]
        rows.sort(key=lambda r: (r["partial"], -(r["accuracy"] if r["accuracy"] is not None else -1),
                                 r["method"]))
        best = {}
        for col in COLUMNS:
            vals = [r[col] for r in rows if r.get(col) is not None and not r["partial"]]
            if len(set(vals)) > 1:  # a column where every value is the same has no best
                best[col] = (max if col in ("accuracy", "mean_class_accuracy") else min)(vals)
        for r in rows:
            r["best"] = [c for c in COLUMNS if c in best and r.get(c) is not None and r[c] == best[c]
                         and not r["partial"]]
        pub = published.get(key) or {}
        pub_vals = {k: published_value(v) for k, v in (pub.get("values") or {}).items()}
        pub_vals = {k: v for k, v in pub_vals.items() if v is not None}
        measured = {r["method"] for r in rows}
        for r in rows:
            r["published"] = pub_vals.get(r["method"])
        winner = next((r for r in rows if r["accuracy"] is not None and not r["partial"]), None)
        names = {str(r["metrics"].get("dataset")) for rs in groups[key].values() for r in rs}
        advice = [a for a in collected["advice"]
                  if a.get("dataset_key") == key or (not a.get("dataset_key") and a.get("dataset") in names)]
        out.append({
            "dataset": key,
            "rows": rows,
            "best": best,
            "published": {"source": pub.get("source"), "note": pub.get("note"),
                          "only": {k: v for k, v in pub_vals.items() if k not in measured},
                          "values": pub_vals},
            "winner": winner,
            "advice": [_advice_check(a, winner) for a in advice],
            "multi_backbone": _multi_backbone(rows),
        })
    return out


def _multi_backbone(rows: list[dict]) -> bool:
    """More than one (arch, weights) among the rows; a scratch run only counts by its arch."""
    pre = {(r["arch"], r["weights"]) for r in rows if not r["scratch"]}
    scratch = {r["arch"] for r in rows if r["scratch"]}
    return len(pre) > 1 or bool(scratch - {a for a, _ in pre}) or (not pre and len(scratch) > 1)


def _advice_check(a: dict, winner: dict | None) -> dict:
    from fne.advise import method_family

    a = {k: v for k, v in a.items() if not k.startswith("_")}
    if winner is not None:
        fam = method_family(winner["method"])
        a["winner"] = winner["method"]
        a["winner_family"] = fam
        a["matched"] = fam in (a.get("families") or [])
    return a


def header(collected: dict) -> dict:
    ms = [r["metrics"] for r in collected["runs"]]

    def uniq(k):
        return sorted({str(m[k]) for m in ms if m.get(k) not in (None, "")})

    dates = uniq("date")
    notes = [n for pj in collected["pipelines"] for n in (pj.get("notes") or [])]
    backbones = sorted({f"{m.get('arch', '?')}: {m.get('weights', '?')} weights"
                        + (f" [{m['weights_fingerprint']}]" if m.get("weights_fingerprint") else "")
                        for m in ms if not is_scratch(m)}
                       | {f"{m.get('arch', '?')}: random initialisation (train:scratch)" for m in ms if is_scratch(m)})
    random = sorted({str(m.get("arch")) for m in ms if str(m.get("weights")) == "random" and not is_scratch(m)})
    names = [pj.get("name") for pj in collected["pipelines"] if pj.get("name")]
    return {
        "pipeline": sorted(set(names)),
        "backbones": backbones,
        "weights": uniq("weights"),
        "random_weights": random,
        "warning": (f"WARNING: {RANDOM_WARNING} ({', '.join(random)})" if random else None),
        "precision": uniq("precision"), "crop": uniq("crop"), "device": uniq("device"),
        "machine": uniq("machine"),
        "date": dates[0] if len(dates) == 1 else (f"{dates[0]} … {dates[-1]}" if dates else None),
        "notes": notes,
        "runs": len(ms),
    }


# ------------------------------------------------------------------ formatting


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


def images_str(r: dict) -> str:
    n = r.get("n_images")
    parts = f" ({r['n_train']}/{r['n_test']})" if r.get("n_train") is not None and r.get("n_test") is not None else ""
    return f"{n}{parts}" if n is not None else "—"


def cells(r: dict) -> dict[str, str]:
    one = r.get("n_splits") == 1  # a single split has no spread: print no "± 0.0"
    return {
        "accuracy": pct(r.get("accuracy"), None if one else r.get("accuracy_std")),
        "mean_class_accuracy": pct(r.get("mean_class_accuracy"), None if one else r.get("mean_class_accuracy_std")),
        "seconds": secs(r.get("seconds")),
        "extract_seconds": secs(r.get("extract_seconds")),
    }


TABLE_HEAD = ("method", "accuracy %", "mean class accuracy %", "published accuracy %",
              "fit/train s", "extraction s", "images (train/test)", "splits")


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


# ------------------------------------------------------------------ figures


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label(r: dict, multi: bool) -> str:
    label = f"{r['method']} [{r['backbone']}]" if multi else r["method"]
    return label + (f" ({r['note']})" if r.get("note") else "")


def fig_bars(ds: dict) -> str:
    plt = _plt()
    rows = [r for r in ds["rows"] if r.get("accuracy") is not None][::-1]
    only = ds["published"]["only"]
    labels = [_label(r, ds["multi_backbone"]) for r in rows]
    n = len(rows) + len(only)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.42 * max(n, 1) * (1.6 if ds["published"]["values"] else 1)))
    y = np.arange(len(rows), dtype=float)
    h = 0.38
    acc = [100 * r["accuracy"] for r in rows]
    err = [100 * (r.get("accuracy_std") or 0) for r in rows]
    mca = [100 * (r.get("mean_class_accuracy") or 0) for r in rows]
    ax.barh(y + h / 2, acc, h, xerr=err, color="#3b73b9", label="accuracy (measured)", capsize=2)
    ax.barh(y - h / 2, mca, h, color="#9cc3e6", label="mean class accuracy (measured)")
    py = [(i, r["published"]["mean"]) for i, r in enumerate(rows) if r.get("published")]
    for k, (name, p) in enumerate(only.items()):
        labels.append(f"{name} (published only)")
        py.append((len(rows) + k, p["mean"]))
    if py:
        ax.scatter([v for _, v in py], [i for i, _ in py], marker="D", s=42, facecolor="white",
                   edgecolor="#c0392b", linewidth=1.6, zorder=5, label="published (reference, not measured)")
    ax.set_yticks(np.arange(n))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("%")
    ax.set_xlim(0, 100)
    ax.set_title(f"{ds['dataset']}: methods", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def fig_time(ds: dict) -> str | None:
    plt = _plt()
    pts = []
    for r in ds["rows"]:
        if r.get("accuracy") is None:
            continue
        t = (r.get("seconds") or 0.0) + (r.get("extract_seconds") or 0.0)
        if t > 0:
            pts.append((t, 100 * r["accuracy"], _label(r, ds["multi_backbone"]), r.get("kind")))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for kind, color, marker in (("fit", "#3b73b9", "o"), ("train", "#e67e22", "s")):
        sel = [p for p in pts if (p[3] == kind) or (kind == "fit" and p[3] not in ("fit", "train"))]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], c=color, marker=marker, s=40,
                       label="linear head on cached features" if kind == "fit" else "network training")
    ax.set_xscale("log")
    accs = [p[1] for p in pts]
    lo, hi = max(0.0, min(accs) - 8), min(100.0, max(accs) + 8)
    ax.set_ylim(lo, hi)
    ts = [p[0] for p in pts]
    ax.set_xlim(min(ts) / 1.5, max(ts) * 4)  # room on the right for the labels
    # Points close in time form a cluster; its labels stack beside it with leader lines.
    step = (hi - lo) * 0.055
    groups: list[list] = []
    for p in sorted(pts):
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
    ax.set_xlabel("seconds: fit/train + feature extraction (log scale)")
    ax.set_ylabel("accuracy %")
    ax.set_title(f"{ds['dataset']}: accuracy against time", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def fig_confusion(ds: dict) -> str | None:
    w = ds["winner"]
    if not w or not w.get("confusion"):
        return None
    c = np.asarray(w["confusion"], dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.sum() == 0:
        return None
    plt = _plt()
    norm = c / np.clip(c.sum(axis=1, keepdims=True), 1, None)
    k = len(c)
    size = min(9.0, 3.0 + 0.22 * k)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    classes = w.get("classes") if w.get("classes") and len(w["classes"]) == k else [str(i) for i in range(k)]
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
    ax.set_title(f"{ds['dataset']}: confusion of {_label(w, ds['multi_backbone'])} (rows normalised)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _png(fig)


# ------------------------------------------------------------------ writing


def _md_cell(text: str, best: bool) -> str:
    return f"**{text}**" if best and text != "—" else text


def render_md(head: dict, datasets: list[dict], figures: dict) -> str:
    L = ["# fne report", ""]
    if head["warning"]:
        L += [f"> **{head['warning']}**", ""]
    for n in head["notes"]:
        L += [f"> Note: {n}", ""]
    L += _header_lines(head, md=True) + [""]
    for ds in datasets:
        L += [f"## {ds['dataset']}", ""]
        L.append("| " + " | ".join(TABLE_HEAD) + " |")
        L.append("|" + "|".join(["---"] + ["---:"] * (len(TABLE_HEAD) - 1)) + "|")
        for r in ds["rows"]:
            c = cells(r)
            L.append("| " + " | ".join([
                _label(r, ds["multi_backbone"]) + (f" ({r['runs']} runs)" if r["runs"] > 1 else ""),
                _md_cell(c["accuracy"], "accuracy" in r["best"]),
                _md_cell(c["mean_class_accuracy"], "mean_class_accuracy" in r["best"]),
                (pub_str(r["published"]) + " (published)") if r.get("published") else "—",
                _md_cell(c["seconds"], "seconds" in r["best"]),
                _md_cell(c["extract_seconds"], "extract_seconds" in r["best"]),
                images_str(r), str(r.get("n_splits") or "—"),
            ]) + " |")
        for name, p in ds["published"]["only"].items():
            L.append(f"| {name} (published only) | — | — | {pub_str(p)} (published) | — | — | — | — |")
        L += ["", "Bold: the best measured value of each column (highest accuracy, lowest seconds); rows "
              "scored on a subset of the classes (direct mode's class map) are not ranked. "
              "Accuracy: mean ± std over splits. Published values are references from the pipeline file, "
              "not measurements of this run" + (f"; source: {ds['published']['source']}" if ds["published"]["source"]
                                               else "") + "."]
        if ds["published"].get("note"):
            L += ["", f"Published values note: {ds['published']['note']}"]
        L.append("")
        for key, alt in (("bars", "methods"), ("time", "accuracy against time"), ("confusion", "confusion matrix")):
            f = figures.get((ds["dataset"], key))
            if f:
                L += [f"![{ds['dataset']}: {alt}]({f})", ""]
        L += _winner_lines(ds, md=True)
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
    return [f"- {k}: {v}" for k, v in items if v]


def _winner_lines(ds: dict, md: bool) -> list[str]:
    L = []
    w = ds["winner"]
    if w:
        L += [f"Measured winner: **{_label(w, ds['multi_backbone'])}**, accuracy {cells(w)['accuracy']} %.", ""]
        pairs = confused_pairs(w.get("confusion"), w.get("classes"))
        if pairs:
            L.append("Classes it confuses most (true → predicted, count, share of the true class):")
            L += [f"- {p['true']} → {p['predicted']}: {p['count']} ({100 * p['share']:.0f} %)" for p in pairs]
            L.append("")
    for a in ds["advice"]:
        sim = a.get("similarity") or {}
        L.append(f"Advice (`fne advise`, {a.get('arch')} {a.get('weights')}): **{a['recommendation']}**: {a.get('text', '')}")
        L += [f"- {r}" for r in a.get("reasons", [])]
        L.append(f"- measured: {_num(a.get('images_per_class'))} training images per class; similarity "
                 + (f"max-softmax {sim.get('max_softmax_mean', float('nan')):.2f}, normalised entropy "
                    f"{sim.get('entropy_norm_mean', float('nan')):.2f} on {sim.get('sample')} images"
                    if sim.get("judged") else "not judged"))
        if "matched" in a:
            verdict = "matches the advice" if a["matched"] else "does not match the advice"
            L.append(f"- the measured winner {a['winner']} ({a['winner_family']}) {verdict} "
                     f"(recommended: {', '.join(a.get('families', []))})")
        L.append("")
    return L


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f3f7}
td.method{text-align:left}
td.best{font-weight:bold;background:#e3f4e1}
td.published,tr.published td{color:#8e3b2b;font-style:italic;background:#fbf3f1}
.warning{border:2px solid #c0392b;background:#fdecea;color:#7b1f16;padding:.6em 1em;font-weight:bold;margin:1em 0}
.note{border-left:4px solid #e67e22;background:#fff6ec;padding:.4em 1em;margin:.6em 0}
figure{margin:1em 0}
img.figure{max-width:100%;border:1px solid #eee}
.advice{border:1px solid #bcd;background:#f5f9fd;padding:.5em 1em;margin:1em 0}
.match{color:#1e7b34;font-weight:bold}.nomatch{color:#b03a2e;font-weight:bold}
small{color:#666}
"""


def _e(s) -> str:
    return html.escape(str(s))


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
        H.append("<table class='results'><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in TABLE_HEAD)
                 + "</tr></thead><tbody>")
        for r in ds["rows"]:
            c = cells(r)

            def td(col, r=r, c=c):
                cls = " class='best'" if col in r["best"] and c[col] != "—" else ""
                return f"<td{cls} data-col='{col}'>{_e(c[col])}</td>"

            pub = (f"<td class='published'>{_e(pub_str(r['published']))} <small>(published)</small></td>"
                   if r.get("published") else "<td>—</td>")
            runs = f" <small>({r['runs']} runs)</small>" if r["runs"] > 1 else ""
            H.append(f"<tr><td class='method'>{_e(_label(r, ds['multi_backbone']))}{runs}</td>"
                     + td("accuracy") + td("mean_class_accuracy") + pub + td("seconds") + td("extract_seconds")
                     + f"<td>{_e(images_str(r))}</td><td>{_e(r.get('n_splits') or '—')}</td></tr>")
        for name, p in ds["published"]["only"].items():
            H.append(f"<tr class='published'><td class='method'>{_e(name)} <small>(published only)</small></td>"
                     f"<td>—</td><td>—</td><td>{_e(pub_str(p))} <small>(published)</small></td>"
                     "<td>—</td><td>—</td><td>—</td><td>—</td></tr>")
        H.append("</tbody></table>")
        src = f" Source: {_e(ds['published']['source'])}." if ds["published"]["source"] else ""
        H.append("<p><small>Highlighted: the best measured value of each column (highest accuracy, lowest "
                 "seconds); rows scored on a subset of the classes (direct mode's class map) are not ranked. "
                 "Accuracy: mean ± std over splits. Published values (italic) are references from the "
                 f"pipeline file, not measurements of this run.{src}</small></p>")
        if ds["published"].get("note"):
            H.append(f"<p><small>Published values note: {_e(ds['published']['note'])}</small></p>")
        for key, alt in (("bars", "methods"), ("time", "accuracy against time"), ("confusion", "confusion matrix")):
            f = figures.get((ds["dataset"], key))
            if f:
                H.append(f"<figure><img class='figure' alt='{_e(ds['dataset'])}: {alt}' "
                         f"src='data:image/png;base64,{f}'></figure>")
        w = ds["winner"]
        if w:
            H.append(f"<p>Measured winner: <b>{_e(_label(w, ds['multi_backbone']))}</b>, accuracy "
                     f"{_e(cells(w)['accuracy'])} %.</p>")
            pairs = confused_pairs(w.get("confusion"), w.get("classes"))
            if pairs:
                H.append("<p>Classes it confuses most:</p><ul class='confused'>" + "".join(
                    f"<li>{_e(p['true'])} → {_e(p['predicted'])}: {p['count']} ({100 * p['share']:.0f} %)</li>"
                    for p in pairs) + "</ul>")
        for a in ds["advice"]:
            sim = a.get("similarity") or {}
            H.append("<div class='advice'>")
            H.append(f"<p><b>Advice</b> (fne advise, {_e(a.get('arch'))} {_e(a.get('weights'))}): "
                     f"<b>{_e(a['recommendation'])}</b>: {_e(a.get('text', ''))}</p><ul>")
            H += [f"<li>{_e(r)}</li>" for r in a.get("reasons", [])]
            H.append("</ul>")
            if sim.get("judged"):
                H.append(f"<p><small>max-softmax {sim.get('max_softmax_mean', 0):.2f}, normalised entropy "
                         f"{sim.get('entropy_norm_mean', 0):.2f} on {_e(sim.get('sample'))} images; "
                         f"{_num(a.get('images_per_class'))} training images per class</small></p>")
            if "matched" in a:
                cls, verdict = ("match", "matches") if a["matched"] else ("nomatch", "does not match")
                H.append(f"<p class='{cls}'>The measured winner {_e(a['winner'])} ({_e(a['winner_family'])}) "
                         f"{verdict} the advice.</p>")
            H.append("</div>")
    H.append("</body></html>")
    return "\n".join(H) + "\n"


def _jsonable(datasets: list[dict]) -> list[dict]:
    out = []
    for ds in datasets:
        rows = [{k: v for k, v in r.items() if k not in ("confusion",)} for r in ds["rows"]]
        out.append({**{k: v for k, v in ds.items() if k not in ("rows", "winner")}, "rows": rows,
                    "winner": ds["winner"]["method"] if ds["winner"] else None})
    return out


def report(run_dirs: list[str | Path], out: str | Path, pipeline: str | Path | None = None,
           extra_pipelines: list[dict] | None = None, figures: bool = True) -> dict:
    """Write out/report.md, out/report.html (figures inline) and out/report.json."""
    collected = collect(list(run_dirs))
    collected["pipelines"] += list(extra_pipelines or [])
    if pipeline is not None:
        from fne.pipeline import load_pipeline

        collected["pipelines"].append(load_pipeline(pipeline).summary())
    datasets = tabulate(collected)
    head = header(collected)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    b64: dict = {}
    files: dict = {}
    fig_dir = out / "report_files"
    for ds in datasets if figures else []:
        for key, fn in (("bars", fig_bars), ("time", fig_time), ("confusion", fig_confusion)):
            png = fn(ds)
            if png:
                b64[(ds["dataset"], key)] = png
                fig_dir.mkdir(exist_ok=True)
                name = f"{slug(ds['dataset'])}-{key}.png"
                (fig_dir / name).write_bytes(base64.b64decode(png))
                files[(ds["dataset"], key)] = f"report_files/{name}"
    (out / "report.md").write_text(render_md(head, datasets, files))
    (out / "report.html").write_text(render_html(head, datasets, b64))
    (out / "report.json").write_text(json.dumps({"header": head, "datasets": _jsonable(datasets)}, indent=1))
    return {"md": str(out / "report.md"), "html": str(out / "report.html"), "json": str(out / "report.json"),
            "header": head, "datasets": datasets}


def table_text(datasets: list[dict]) -> str:
    """A compact console table of every dataset."""
    L = []
    for ds in datasets:
        L.append(f"{ds['dataset']}:")
        width = max([len(_label(r, ds["multi_backbone"])) for r in ds["rows"]] + [6])
        L.append(f"  {'method':<{width}}  {'accuracy %':>13}  {'mean class %':>13}  {'published':>11}  "
                 f"{'fit/train s':>11}  {'extract s':>9}")
        for r in ds["rows"]:
            c = cells(r)
            L.append(f"  {_label(r, ds['multi_backbone']):<{width}}  {c['accuracy']:>13}  "
                     f"{c['mean_class_accuracy']:>13}  {pub_str(r.get('published')):>11}  {c['seconds']:>11}  "
                     f"{c['extract_seconds']:>9}")
        for name, p in ds["published"]["only"].items():
            L.append(f"  {name + ' (published only)':<{width}}  {'—':>13}  {'—':>13}  {pub_str(p):>11}")
    return "\n".join(L)


# ------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folders, or folders holding run folders (searched recursively)")
    p.add_argument("--out", required=True, help="folder for report.md, report.html and report.json")
    p.add_argument("--pipeline", default=None, help="take published reference values from this pipeline file")


def run_cli(args) -> int:
    r = report(args.run_dirs, args.out, pipeline=args.pipeline)
    if r["header"]["warning"]:
        print(r["header"]["warning"])
    print(table_text(r["datasets"]))
    print(f"wrote {r['md']} and {r['html']}")
    return 0


import fne  # noqa: E402

fne.verb_module(__name__)
