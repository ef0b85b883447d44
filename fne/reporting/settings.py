"""What setting a run of `fne report` measured: the keys its rows are pooled and named by.

Runs that agree on their method, backbone and `settings` (they differ only in the seed) are one
row of the report; rows of one method that differ say how in their label (`name_variants`). A run
written before metrics.json recorded a setting is read as fne ran then (`legacy`): where that
cannot be known, the setting reads "not recorded", a row of its own. A run that repeats another
(`distinct`: the same seed and predictions) counts once.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict

from fne.cache.spec import earlier_fne_pixels
from fne.linear import compare
from fne.linear.compare import NOT_RECORDED

# What a run's setting is, besides its method and backbone: runs that agree on all of these
# (and differ only in the seed) are pooled into one row; rows that differ show how in their label.
# Each can change the numbers: fit's solver (sklearn or torch) and the torch solver's arithmetic,
# the rows' preprocessing, precision and storage; train's settings; either's split protocol (the
# number of splits, test_size, train_per_class). Left out, as they do not: device, workers,
# progress, threads, batch sizes of extraction, stream_chunk, deterministic, and decode (a
# store's rows are keyed by image content, not by the decoder that computed them).
SETTING_KEYS = ("features", "layers", "embedding", "head", "C", "solver", "solver_precision", "preprocess", "crop",
                "precision", "storage_dtype", "split_protocol", "n_images", "new_layers", "train_bn", "image_size",
                "augment", "augment_on", "epochs", "lr", "imported_lr", "momentum", "weight_decay", "scheduler",
                "batch_size", "val_fraction", "direct_score", "class_map")
# fit's choices by cross-validation (--features / --head / --C auto): each seed's pick is an outcome,
# the setting is "auto"; the keys its pick fills in
AUTO_KEYS = {"features": ("features", "layers", "embedding"), "head": ("head",), "C": ("C",)}
SETTING_NAMES = {"split_protocol": "protocol", "n_images": "images", "storage_dtype": "storage"}


def settings(run: dict) -> dict:
    """The setting of a run: SETTING_KEYS found in metrics.json (another `--label-key` is another
    task: `dataset_keys` puts it in a section of its own); a setting asked as "auto" (fit's
    cross-validated choice) as "auto", not each seed's pick; C as asked for (fne run's step records
    it, and metrics.json's options: with C = auto, metrics.json's C is the one each split's
    validation chose)."""
    m = run["metrics"]
    out = {k: m[k] for k in SETTING_KEYS if m.get(k) is not None} | legacy_solver(m)
    given = m.get("options") if isinstance(m.get("options"), dict) else legacy_options(m)
    config = run["step"].get("config")  # not a dict: a damaged step.json, whose C is not read
    asked = {**given, **({"C": config["C"]} if isinstance(config, dict) and config.get("C") is not None else {})}
    for option, keys in AUTO_KEYS.items():
        if asked.get(option) == "auto":
            out = {k: v for k, v in out.items() if k not in keys} | {option: "auto"}
    if asked.get("C") not in (None, "auto"):
        out["C"] = _number(asked["C"])
    return out


def _number(v):
    """C as given ("1.0", 1) and as used (1.0): one value."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _setting_str(k: str, v) -> str:
    if isinstance(v, str):
        try:
            v = float(v)  # C = "1.0" (asked) and 1.0 (used) read the same
        except ValueError:
            return f"{SETTING_NAMES.get(k, k)}={v}"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{SETTING_NAMES.get(k, k)}={v:g}"
    return f"{SETTING_NAMES.get(k, k)}={json.dumps(v, default=str)}"


def name_variants(rows: list[dict]) -> None:
    """Rows of the same method and backbone: their label shows the settings that tell them apart
    (those a row records: fit's solver_precision, say, is the torch solver's alone)."""
    same: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        same[(r["method"], r["backbone"])].append(r)
    for group in same.values():
        if len(group) < 2:
            continue
        full = [{**r["settings"], "weights": r["weights_fingerprint"]} for r in group]
        keys = sorted({k for s in full for k in s})
        differ = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in full}) > 1]
        for r, s in zip(group, full, strict=True):
            r["variant"] = ", ".join(_setting_str(k, s[k]) for k in differ if s.get(k) is not None)


# What a run recorded before metrics.json said so (fne's history): `fne fit` records "solver" since
# --solver came (28 Nov 2026 07:07 UTC; scikit-learn was fit's one solver before), "solver_precision"
# (the torch solver's arithmetic, float64, then float32 matmuls, then int8 on CPUs with int8 dot
# products, all within 28 Nov) and "options" (every option as given: "auto" among them) since
# 29 Nov 2026 04:09 UTC.


def _fit(m: dict) -> bool:
    return m.get("kind") == "fit" or (m.get("kind") is None and not str(m.get("method", "")).startswith("train:"))


def legacy_solver(m: dict) -> dict:
    """The solver settings of a fit run that does not record them: sklearn where it records no
    solver (the only one then); the torch solver's arithmetic "not recorded" where it records none
    (it changed three times before it was), so such a row is never pooled with one of a known
    arithmetic."""
    if not _fit(m):
        return {}
    if "solver" not in m:
        return {"solver": "sklearn"}
    return {"solver_precision": NOT_RECORDED} if m["solver"] == "torch" and "solver_precision" not in m else {}


def legacy_options(m: dict) -> dict:
    """The options a fit run written before metrics.json had "options" asked as "auto": its method
    is `--features`+`--head` as given ("auto+svm"); C was auto where the run records a selection
    (fne.linear.selection) and neither features nor head was auto (nothing else selects), or where
    a split's validation tried several C. Where that cannot be told (features or head auto, no C
    grid recorded) C is left as used."""
    if not _fit(m):
        return {}
    features, _, head = str(m.get("method", "")).partition("+")
    out = {k: "auto" for k, v in (("features", features), ("head", head)) if v == "auto"}
    sel = m.get("selection") if isinstance(m.get("selection"), dict) else None
    if sel is not None and (not out or _grids(sel) > 1):
        out["C"] = "auto"
    return out


def _grids(sel: dict) -> int:
    """The most C values any candidate of any split's selection was validated at (0: none recorded)."""
    records = sel.get("per_split") if isinstance(sel.get("per_split"), list) else []
    return max((len(c["grid"]) for r in records if isinstance(r, dict) for c in r.get("candidates") or []
                if isinstance(c, dict) and isinstance(c.get("grid"), dict)), default=0)


def distinct(runs: list[dict], pairs: list[tuple[str, str, str, object]] | None = None) -> list[dict]:
    """The runs of one row less those that repeat an earlier one (the same seed, and on every split
    the same test images each classified the same: one experiment run twice, which pooled would
    count its splits twice and pair with itself); the first of each is kept and names its repeats.
    Runs whose records list their test images in other orders (`compare.record_order`: one written
    before fne kept DATA's order) are compared only with runs of their order: another order is not
    other test images. Two runs of one seed scored on other test images, or of both orders, are
    said (`say_pairs`): added to `pairs` as (kind, run, other run, seed), said together by the
    caller, or where `pairs` is None said here."""
    found: list[tuple[str, str, str, object]] = [] if pairs is None else pairs
    kept: dict[object, dict] = {}
    drawn: dict[object, tuple] = {}  # (seed, order) -> (its runs' test images, the first run's folder)
    for r in runs:
        m, splits = r["metrics"], r["metrics"].get("splits") or []
        known = splits and all(s.get("test_hash") and isinstance(s.get("correct"), str) for s in splits)
        key = (m.get("seed"), tuple((s["test_hash"], s["correct"]) for s in splits)) if known else id(r)
        if known:  # one seed and setting draw the same test images from the same DATA
            tests, order = tuple(h for h, _ in key[1]), compare.record_order(m)
            first = drawn.setdefault((m.get("seed"), order), (tests, r["path"]))
            if first[0] != tests:
                found.append(("changed", first[1], r["path"], m.get("seed")))
            if first[1] == r["path"]:  # the first of its order: said once
                found += _other_order(drawn, m.get("seed"), order, tests, r["path"])
        if key in kept:
            kept[key].setdefault("repeats", []).append(r["path"])
        else:
            kept[key] = {**r, "repeats": []}
    if pairs is None:
        say_pairs(found)
    return list(kept.values())


# what a pair of runs of one method, setting and seed is, by kind (`distinct`): what the line says after the pair
PAIRS = {
    "changed": ("scored on other test images: DATA's images or labels changed between the two runs; the report "
                "pools them in one row as if two seeds (give it the runs of one version of DATA)"),
    "order": ("the first was written before fne listed each split's test images in DATA's order, so the two cannot "
              "be checked for a repeat nor compared image by image; the report pools them in one row as if two "
              "seeds (run the first again)"),
}


def say_pairs(pairs: list[tuple[str, str, str, object]]) -> None:
    """One warning per kind of pair (`distinct`, `PAIRS`), however many runs: a pair named with its
    seed and why; several counted, the first few named (`progress.first_few`)."""
    from fne.progress import first_few

    for kind in PAIRS:
        met = [(a, b, seed) for k, a, b, seed in pairs if k == kind]
        if len(met) == 1 and kind == "changed":
            (a, b, seed), = met
            warnings.warn(f"{a} and {b}: one method, setting and seed ({seed}), {PAIRS[kind]}", stacklevel=3)
        elif len(met) == 1:
            (a, b, seed), = met
            warnings.warn(f"{a} and {b}: one method, setting and seed ({seed}); {a} was written before fne listed each "
                          f"split's test images in DATA's order, so the two cannot be checked for a repeat nor "
                          f"compared image by image; the report pools them in one row as if two seeds (run {a} "
                          f"again)", stacklevel=3)
        elif met:
            names = [f"{a} and {b} (seed {seed})" for a, b, seed in met]
            warnings.warn(f"{len(met)} pairs of runs of one method, setting and seed, {PAIRS[kind]}: "
                          f"{first_few(names)}", stacklevel=3)


def _other_order(drawn: dict, seed, order: str, tests: tuple, path: str) -> list[tuple[str, str, str, object]]:
    """[("order", the run of the old order, the other, seed)] where a run of `seed` lists its test
    images in the other order than an earlier run of that seed (`distinct`'s `drawn`), and so cannot
    be checked for a repeat, nor paired image by image; else []."""
    other = next((v for (s, o), v in drawn.items() if s == seed and o != order), None)
    if other is None or other[0] == tests:
        return []
    old, new = (path, other[1]) if order == "drawn" else (other[1], path)
    return [("order", old, new, seed)]


def repeats_note(runs: list[dict]) -> str | None:
    """A sentence naming each run counted once as a repeat of another (`distinct`: a rerun that
    reproduced a run, or one run folder copied twice), by folder, so that a reader sees which run
    a reviewer's rerun reproduced; None where no run repeats another."""
    said = [f"{', '.join(r['repeats'])} of {r['path']} ({r['metrics'].get('method')})" for r in runs if r.get("repeats")]
    return ("Repeats, counted once (the same seed, every test image classified the same): " + "; ".join(said)
            + ".") if said else None


def pixels_note(rows: list[dict]) -> str | None:
    """A sentence where fit rows of one backbone and weights read rows of other preprocessing (a
    run of an earlier fne, whose key lacks `-tv`, beside today's; other crops): their differences
    are the preprocessing's too. None where each backbone's rows are of one preprocessing."""
    by: dict[tuple, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["settings"].get("preprocess"):
            by[(r["arch"], r["weights"])][str(r["settings"]["preprocess"])].append(compare.row_name(r))
    mixed = [g for g in by.values() if len(g) > 1]
    if not mixed:
        return None
    earlier = any(earlier_fne_pixels(k) for g in mixed for k in g)
    return ("The rows' features were not all computed from the same pixels (" + "; ".join(
        f"preprocessing {k} ({', '.join(dict.fromkeys(ms))})" for g in mixed for k, ms in g.items())
        + "): their differences mix the methods with the preprocessing"
        + (" (one without -tv is an earlier fne's: fit that run again for today's pixels)." if earlier else "."))
