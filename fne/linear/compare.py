"""Is the winner better than the runner-up beyond noise? Paired tests on shared splits.

* Several splits (random train/test splits, or the folds of a cross-validation): the
  corrected resampled t-test of Nadeau & Bengio (2003) on the per-split accuracy differences.
  The plain paired t-test treats the splits as independent, but their training sets overlap,
  so it is far too confident; the correction multiplies the variance of the mean difference
  by (1/k + n_test/n_train) instead of 1/k. With test_train_ratio = 0 it is the plain test.
* One split: McNemar's exact test on the images that exactly one of the two methods
  classified correctly (binomial, p = 1/2, two-sided).
* Runs of other numbers of splits are tested on the splits they share (`shared_splits`): for one
  seed, a 5-split fit's first split is a 1-split train run's, and its first 3 a 3-split fit's.
* One split each, but not the same test images (other seeds, other protocols): no pairing, so
  Fisher's exact test of the two accuracies (unpaired, two-sided; conservative where the test
  sets overlap).

Every test is two-sided, at ALPHA = 0.05. A winner "beats the runner-up beyond noise" when its
mean is higher and p < ALPHA; otherwise the verdict is "no clear winner". `fne report` names a
winner only if it also beats, each at ALPHA, every other method it can be paired with (an
intersection-union test, which needs no correction for the number of methods: the claim
"better than all" fails as soon as one of its pairwise tests does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy import stats

ALPHA = 0.05
SAME = 1e-12  # accuracies that differ by less are equal: far below 1 / any number of test images


def corrected_paired_t(a, b, test_train_ratio: float = 0.0) -> dict:
    """Paired t-test of a - b over splits, variance corrected for overlapping training sets."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("a and b must be 1-d arrays of equal length (one value per split)")
    k = len(a)
    d = a - b
    mean = float(d.mean()) if k else 0.0
    out = {"test": "corrected paired t" if test_train_ratio else "paired t", "n": k, "mean_diff": mean,
           "t": None, "df": k - 1, "p": 1.0}
    if k < 2:
        return out
    var = float(d.var(ddof=1))
    if np.ptp(d) <= SAME:  # every split differs by the same amount (but for float rounding: 0.9 - 0.8
        # and 0.8 - 0.7 differ in the last bit): no spread for a t-test to judge by, so the exact
        # sign test, which needs none (2 splits: p = 0.5; the t-test would say 0)
        mean = 0.0 if abs(mean) <= SAME else mean
        out["mean_diff"] = mean
        out["t"] = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        out["p"] = 1.0 if mean == 0 else min(1.0, 2 * 0.5 ** k)
        if mean != 0:
            out["test"] = "sign test (the same difference on every split)"
        return out
    t = mean / math.sqrt((1.0 / k + test_train_ratio) * var)
    out["t"] = float(t)
    out["p"] = float(2 * stats.t.sf(abs(t), k - 1))
    return out


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's exact test on paired correctness (booleans per test image, same order)."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("correct_a and correct_b must have one entry per shared test image")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    p = 1.0 if n == 0 else min(1.0, 2 * float(stats.binom.cdf(min(only_a, only_b), n, 0.5)))
    return {"test": "McNemar exact", "n": int(len(a)), "only_a": only_a, "only_b": only_b,
            "mean_diff": float(a.mean() - b.mean()) if len(a) else 0.0, "p": p}


def fisher(acc_a: float, n_a: int, acc_b: float, n_b: int) -> dict:
    """Fisher's exact test (two-sided) of two accuracies, each of one split, scored on different
    test images: no pairing, so an unpaired test of two binomial proportions. Where the test sets
    overlap, the two accuracies are positively correlated and the test is conservative."""
    ca, cb = round(acc_a * n_a), round(acc_b * n_b)
    p = float(stats.fisher_exact([[ca, n_a - ca], [cb, n_b - cb]]).pvalue)
    return {"test": "Fisher exact", "n": n_a + n_b, "n_a": int(n_a), "n_b": int(n_b),
            "mean_diff": float(acc_a - acc_b), "p": min(1.0, p)}


def _seeds(seeds: list) -> str:
    return ", ".join(map(str, seeds))


def verdict(result: dict, alpha: float = ALPHA) -> str:
    if result["mean_diff"] > 0 and result["p"] < alpha:
        return "beats the runner-up beyond noise"
    return "no clear winner"


EACH_PAIR = "each pair"  # a pooled test's "splits": each pair of runs tested on the splits it shares


def _splits_text(splits, winner: str, runner_up: str) -> str:
    """Which splits a test used, where a run had others (`compare_runs`' "splits"); "" where none."""
    if not splits:
        return ""
    if splits == EACH_PAIR:
        return " (only the splits both runs of each pair were scored on)"
    a, b, (na, nb) = splits

    def nums(s: list[int]) -> str:
        return f"split{'s' * (len(s) > 1)} {', '.join(map(str, s))}"
    return (f" (only the split{'s' * (len(a) > 1)} both runs were scored on: {nums(a)} of {winner}'s {na}, "
            f"{nums(b)} of {runner_up}'s {nb})")


def describe(result: dict, winner: str, runner_up: str, alpha: float = ALPHA, unit: str = "splits") -> str:
    """One sentence: the verdict, the test (two-sided), its p-value against `alpha`, the difference.

    Parameters
    ----------
    result : dict
        `corrected_paired_t`, `mcnemar` or `fisher`'s result, winner minus runner-up.
    winner, runner_up : str
        The two methods' names.
    alpha : float
        The level the p-value is judged at (`verdict`).
    unit : str
        What a t-test's values were measured on: "splits", or "folds" (cross-validation).

    Returns
    -------
    str
        "WINNER beats the runner-up RUNNER_UP beyond noise (TEST test, two-sided p = P < α = 0.05;
        difference ...)" or "no clear winner: WINNER vs RUNNER_UP (... p = P ≥ α = 0.05; ...)".
    """
    v = verdict(result, alpha)
    mcn, fis = result["test"].startswith("McNemar"), result["test"].startswith("Fisher")
    name = result["test"] + ("-test" if result["test"].endswith(" t") else " test" if mcn or fis else "")
    shared = ""
    if result.get("paired"):  # rows pooled over seeds that not both have: the splits both were scored on
        left = "; ".join(f"seed {_seeds(seeds)} of {name}" for name, seeds in zip((winner, runner_up), result["unpaired"])
                         if seeds)
        same = all(a == b for a, b in result["paired"])
        tested = (f"seed {_seeds([a for a, _ in result['paired']])}" if same else
                  ", ".join(f"seed {a} of {winner} with seed {b} of {runner_up}" for a, b in result["paired"])
                  + ": a predefined split, the same test images whatever the seed")
        shared = f" both rows were scored on ({tested}" + (
            f"; left out, having no partner in the other row: {left})" if left else ")")
    shared += _splits_text(result.get("splits"), winner, runner_up)
    over = (f"{result['n']} test images{shared}, {result['only_a']} vs {result['only_b']} classified right by only "
            f"one of them" if mcn else f"{result['n_a']} and {result['n_b']} test images, unpaired (the runs were not "
            f"scored on the same test images)" if fis else f"{result['n']} {unit}{shared}")
    detail = (f"{name}, two-sided p = {result['p']:.3g} {'<' if result['p'] < alpha else '≥'} α = {alpha:g}; "
              f"difference {100 * result['mean_diff']:+.1f} points over {over}")
    if v == "no clear winner":
        return f"no clear winner: {winner} vs {runner_up} ({detail})"
    return f"{winner} beats the runner-up {runner_up} beyond noise ({detail})"


# ---------------------------------------------------------- runs on disk (fne report)
def predictions_writer(dataset, y: np.ndarray, preds) -> Callable[[Path], None]:
    """The writer (`fne.cache.fs.replace_files`) of a fit run's predictions.csv: split, path,
    true and predicted class of every test image, each split's in DATA's order (as its record in
    metrics.json, `fne.metrics.split_record`, and train's predictions.csv)."""
    from fne.cache.fs import csv_writer

    return csv_writer(["split", "path", "true", "predicted"],
                      ((si, dataset.ids[i], dataset.classes[y[i]], dataset.classes[p])
                       for si, (te, pred) in enumerate(preds) for i, p in sorted(zip(te, pred))))


def _split_accuracies(m: dict) -> list[float] | None:
    vals = [x.get("accuracy") for x in m.get("splits") or []]
    return vals if vals and all(isinstance(v, (int, float)) for v in vals) else None


def run_data(m: dict) -> str | None:
    """A run's DATA as runs are compared by it: the resolved path it recorded (`data_resolved`,
    `fne.metrics.data_identity`), else, for runs written before, DATA as it was given."""
    return m.get("data_resolved") or m.get("data")


def run_task(m: dict) -> str | None:
    """What a run classified: its DATA (`run_data`) and, where `--label-key` was given, which labels
    of it (another label column of one Parquet file is another task, never ranked or tested with
    the first)."""
    options = m.get("options") if isinstance(m.get("options"), dict) else {}
    data, key = run_data(m), options.get("label_key")
    return data if key is None or data is None else f"{data}, label_key={key}"


def run_tasks(ms: list[dict]) -> list[str | None]:
    """`run_task` of each run's metrics; a run written before runs recorded `data_resolved` (29 Nov
    2026) is taken for the DATA that runs given the same DATA resolved it to, where they all agree:
    yesterday's and today's runs of `fne fit flowers12` are one task, not two. A run that records
    no options (written before 29 Nov 2026 04:09 UTC) but may have been given `--label-key` (which
    came on 28 Nov 07:15) is a task of its own ("label_key not recorded") where other runs of its
    DATA record a label key: which labels it classified cannot be known."""
    resolved: dict[str, set] = {}
    for m in ms:
        if m.get("data_resolved"):
            resolved.setdefault(str(m.get("data")), set()).add(m["data_resolved"])
    ms = _copies_joined([m if m.get("data_resolved") or len(resolved.get(str(m.get("data")), ())) != 1 else
                         {**m, "data_resolved": next(iter(resolved[str(m.get("data"))]))} for m in ms])
    keyed = {run_data(m) for m in ms if isinstance(m.get("options"), dict) and m["options"].get("label_key") is not None}
    return _by_classes(ms, [f"{run_data(m)}, label_key {NOT_RECORDED}" if run_data(m) in keyed
                            and not _label_key_known(m) else run_task(m) for m in ms])


def _copies_joined(ms: list[dict]) -> list[dict]:
    """`ms`, where runs of the same images with the same labels (one ``labels_fingerprint``) resolved
    DATA to other paths (a copy of DATA on a reviewer's machine, a folder moved), each with the
    DATA of the earliest of them: one task, so that a rerun is tabulated, deduplicated and tested
    with the run it repeats (`same_task`)."""
    first: dict[str, tuple[str, str]] = {}  # fingerprint -> (date, data_resolved) of its earliest run
    for m in ms:
        fp, data = m.get("labels_fingerprint"), m.get("data_resolved")
        if isinstance(fp, str) and isinstance(data, str):
            first[fp] = min(first.get(fp, (str(m.get("date") or ""), data)), (str(m.get("date") or ""), data))
    return [{**m, "data_resolved": first[m["labels_fingerprint"]][1]} if isinstance(m.get("data_resolved"), str)
            and isinstance(m.get("labels_fingerprint"), str) and m["labels_fingerprint"] in first else m for m in ms]


def same_task(m1: dict, m2: dict) -> bool:
    """Whether two runs classified the same task: the same DATA and labels (`run_task`), or the same
    images with the same labels (one ``labels_fingerprint``) and label key under another path."""
    if run_task(m1) == run_task(m2):
        return True
    fp = m1.get("labels_fingerprint")
    keys = [o.get("label_key") if isinstance(o := m.get("options"), dict) else None for m in (m1, m2)]
    return isinstance(fp, str) and fp == m2.get("labels_fingerprint") and keys[0] == keys[1]


def _classes(m: dict) -> tuple[str, ...] | None:
    c = m.get("classes")
    return tuple(sorted(map(str, c))) if isinstance(c, list) and c else None


def _labelling(m: dict) -> tuple[tuple[str, ...], str | None] | None:
    """A run's labelling of its DATA: its classes (sorted) and the fingerprint of which image has
    which label (`fne.metrics.labels_fingerprint`; None for a run written before it was recorded)."""
    c = _classes(m)
    fp = m.get("labels_fingerprint")
    return None if c is None else (c, fp if isinstance(fp, str) else None)


def _by_classes(ms: list[dict], tasks: list[str | None]) -> list[str | None]:
    """`tasks`, told apart where runs of one task labelled DATA otherwise: DATA's labels were
    edited between runs (a CSV's classes merged or renamed), or its images added, removed, changed
    or moved between classes of the same names (another ``labels_fingerprint``), so the runs are of
    other tasks. Each labelling is named by its order of first use (`images and labels 2 of 2:
    3 classes, since DATE`). A run that records no fingerprint (written before 30 Nov 2026) joins
    the one labelling of its classes, where a single one has them; where several do, which it had
    cannot be known: a labelling of its own, "images and labels not recorded". A direct-mode run,
    which scores a mapped subset of the classes, joins the labelling of its fingerprint, else the
    one set holding its classes."""
    seen: dict[str, dict[tuple, str]] = {}
    for m, t in zip(ms, tasks, strict=True):
        if t is not None and _labelling(m) is not None and m.get("mode") != "direct":
            date, lab = str(m.get("date") or ""), _labelling(m)
            seen.setdefault(t, {})[lab] = min(seen.get(t, {}).get(lab, date), date)
    for known in seen.values():  # a run without a fingerprint: the one labelling of its classes that has one
        for c in [lab[0] for lab in known if lab[1] is None]:
            have = [lab for lab in known if lab[0] == c and lab[1] is not None]
            if len(have) == 1:
                date = known.pop((c, None))
                known[have[0]] = min(known[have[0]], date)
            elif have:
                known[(c, NOT_RECORDED)] = known.pop((c, None))
    return [_labelled(m, t, seen.get(t or "", {})) for m, t in zip(ms, tasks, strict=True)]


def _labelled(m: dict, t: str | None, known: dict[tuple, str]) -> str | None:
    """Run `m`'s task `t`, with its labelling (`_by_classes`) where `known` holds several."""
    lab = _labelling(m)
    if len(known) < 2 or lab is None:
        return t
    c, fp = lab
    if (c, fp) not in known:  # no fingerprint, or a direct run's subset of the classes
        same = [k for k in known if fp is not None and k[1] == fp] or [k for k in known if k[0] == c]
        holding = same or [k for k in known if set(c) <= set(k[0])]
        if len(holding) > 1 and fp is None and (c, NOT_RECORDED) in known:
            holding = [(c, NOT_RECORDED)]
        if len(holding) != 1:
            return t
        c, fp = holding[0]
    if fp == NOT_RECORDED:
        return f"{t}, {LABELLING} {NOT_RECORDED}: {len(c)} classes"
    order = sorted((k for k in known if k[1] != NOT_RECORDED), key=lambda k: (known[k], k[0], str(k[1])))
    since = f", since {known[(c, fp)][:16].replace('T', ' ')}" if known[(c, fp)] else ""
    return f"{t}, {LABELLING} {order.index((c, fp)) + 1} of {len(order)}: {len(c)} classes{since}"


LABEL_KEY_SINCE = datetime(2026, 11, 28, 7, 15, 18, tzinfo=UTC)  # --label-key's first commit
NOT_RECORDED = "not recorded"
# A labelling's name in a section's: DATA's images (by content) with their labels, as the
# fingerprint hashes them, so "labels" alone was untrue of images added under the same labels.
LABELLING = "images and labels"


def _label_key_known(m: dict) -> bool:
    """Whether a run's metrics tell which --label-key it was given: they record its options, or it
    ran before the option existed (its date, UTC as fne writes it)."""
    if isinstance(m.get("options"), dict):
        return True
    try:
        date = datetime.fromisoformat(str(m.get("date")))
    except ValueError:
        return False
    return (date if date.tzinfo else date.replace(tzinfo=UTC)) < LABEL_KEY_SINCE


def record_order(m: dict) -> str:
    """The order a run's split records list their test images in (`fne.metrics.split_record`):
    metrics.json's ``test_order`` ("dataset": DATA's order); for a run written before it was
    recorded (30 Nov 2026), "dataset" where that order was DATA's already (train's test images,
    sorted; a predefined split; a fit of N training images per class) and "drawn" for a fit's random
    stratified splits (the splitter's order): their hashes and "1"/"0" strings compare only with
    runs of the same order, never with today's."""
    order = m.get("test_order")
    if isinstance(order, str):
        return order
    protocol = str(m.get("split_protocol") or "")
    return "dataset" if m.get("kind") == "train" or protocol == "predefined" or protocol.endswith("per class") else "drawn"


def split_rule(protocol) -> str:
    """A split protocol less its number of splits ("5x stratified test_size=0.25" -> "stratified
    test_size=0.25"): for one seed, a run of 5 splits draws a run of 1 split's split first."""
    head, _, rest = str(protocol).partition("x ")
    return rest if head.isdigit() else str(protocol)


def shared_splits(m1: dict, m2: dict) -> list[tuple[int, int]]:
    """The splits two runs were scored on alike: (i, j) where split i of `m1` and split j of `m2`
    hold the same test images (one ``test_hash``), in `m1`'s order; empty where none do.

    The runs must be of one task (`same_task`) and DATA size, list their test images in one order
    (`record_order`, where they record them) and draw their splits alike: one split protocol but
    for the number of splits (a 5-split fit's first split is a 1-split run's split, for one seed
    and test size), and one seed, but on a predefined split (DATA's own, whatever the seed). Runs that record no hashes
    (written before fne kept them) pair split by split where every key, the number of splits
    included, agrees."""
    s1, s2 = m1.get("splits") or [], m2.get("splits") or []
    h1, h2 = [s.get("test_hash") for s in s1], [s.get("test_hash") for s in s2]
    predefined = m1.get("split_protocol") == "predefined" and all(h1)
    keys = ("n_images",) + (() if predefined else ("seed",))
    rules = {split_rule(m.get("split_protocol")) for m in (m1, m2)}
    if not all(m1.get(k) == m2.get(k) for k in keys) or len(rules) > 1 or not same_task(m1, m2):
        return []
    if not any(h1) and not any(h2):  # older runs: every key, and as many splits
        same = m1.get("n_splits") == m2.get("n_splits") and m1.get("split_protocol") == m2.get("split_protocol")
        return [(i, i) for i in range(min(len(s1), len(s2)))] if same else []
    if not all(h1) or not all(h2) or record_order(m1) != record_order(m2):
        return []
    pairs, free = [], list(range(len(h2)))
    for i, h in enumerate(h1):
        j = next((j for j in free if h2[j] == h), None)
        if j is not None:
            free.remove(j)
            pairs.append((i, j))
    return pairs


def _same_splits(m1: dict, m2: dict) -> bool:
    """Were the two runs scored on the same test images on at least one split (`shared_splits`)?"""
    return bool(shared_splits(m1, m2))


def compare_runs(m1: dict, m2: dict) -> dict | None:
    """Winner vs runner-up from two runs' metrics, on the splits both were scored on
    (`shared_splits`); None where they share none (or a run lacks what the test needs). One shared
    split: McNemar; several: corrected t over those. Where a run has splits beyond the shared ones,
    the result's "splits" names the splits tested: [m1's split numbers, m2's, [m1's count, m2's]]."""
    pairs = shared_splits(m1, m2)
    if not pairs:
        return None
    s1, s2 = m1["splits"], m2["splits"]
    if len(pairs) == 1:
        (i, j), = pairs
        c1, c2 = s1[i].get("correct"), s2[j].get("correct")
        if not c1 or not c2 or len(c1) != len(c2) or not s1[i].get("test_hash"):
            return None
        result = mcnemar([c == "1" for c in c1], [c == "1" for c in c2])
    else:
        a, b = _split_accuracies(m1), _split_accuracies(m2)
        if a is None or b is None:
            return None
        n_tr, n_te = m1.get("n_train") or 0, m1.get("n_test") or 0
        result = corrected_paired_t([a[i] for i, _ in pairs], [b[j] for _, j in pairs], n_te / n_tr if n_tr else 0.0)
    if len(pairs) < max(len(s1), len(s2)):
        result["splits"] = [[i + 1 for i, _ in pairs], [j + 1 for _, j in pairs], [len(s1), len(s2)]]
    return result


def row_name(r: dict) -> str:
    """A report row as a verdict names it: its label (method, backbone, the settings that tell it
    from rows of the same method), else its method."""
    return r.get("label") or r["method"]


def winner_vs_runner_up(rows: list[dict], metrics_by_path: dict[str, dict]) -> str | None:
    """A report line for the two best ranked rows of one dataset, or None where no test applies.

    The best row is called the winner only if it beats every other row it can be paired with, each
    at ALPHA (an intersection-union test: "better than all" needs every one of its pairwise tests,
    and no correction for their number): a lower-ranked row whose test cannot tell it from the
    best (a noisier method) makes it "no clear winner", said of that row."""
    ranked = [r for r in rows if r.get("accuracy") is not None and not r.get("partial")]
    if len(ranked) < 2:
        return None
    result = _row_test(ranked[0], ranked[1], metrics_by_path)
    if result is None:
        return None
    name = [row_name(r) for r in ranked]
    first = describe(result, name[0], name[1])
    if verdict(result) == "no clear winner":
        return first
    for other, other_name in zip(ranked[2:], name[2:]):
        r = _row_test(ranked[0], other, metrics_by_path)
        if r is not None and verdict(r) == "no clear winner":
            return f"{describe(r, name[0], other_name)}, though {first}"
    return first


def untested(rows: list[dict], metrics_by_path: dict[str, dict]) -> str:
    """Why `winner_vs_runner_up` found no test for the two best ranked rows, as a verdict says it."""
    ranked = [r for r in rows if r.get("accuracy") is not None and not r.get("partial")][:2]
    ms = [[metrics_by_path.get(p) or {} for p in r["paths"]] for r in ranked]
    if len(ms) < 2 or not any(_same_splits(m1, m2) for m1 in ms[0] for m2 in ms[1]):
        return "the runs were not scored on the same splits"
    if len(ms[0]) > 1 and len(ms[1]) > 1 and _shared_tests(ms[0]):
        return ("their runs of several seeds were scored on the same test images (a predefined split, or a seed run "
                "twice): not independent splits for a paired t-test")
    return ("the runs do not record what a paired test needs (each split's accuracy, or each test image's result "
            "on a single split: runs written before fne kept them)")


def _row_test(row1: dict, row2: dict, metrics_by_path: dict[str, dict]) -> dict | None:
    """The paired test of two report rows (their runs' metrics); where none applies and each row
    is one run of one split of the same DATA, Fisher's exact test of the two accuracies; else None."""
    ms = [[metrics_by_path.get(p) for p in r["paths"]] for r in (row1, row2)]
    if any(None in runs for runs in ms):
        return None
    if len(ms[0]) == 1 and len(ms[1]) == 1:
        paired = compare_runs(ms[0][0], ms[1][0])
        one = [m.get("n_splits") == 1 and isinstance(m.get("n_test"), int) and m["n_test"] > 0 and
               isinstance(m.get("accuracy"), (int, float)) for m in (ms[0][0], ms[1][0])]
        same_data = same_task(ms[0][0], ms[1][0]) and ms[0][0].get("n_images") == ms[1][0].get("n_images")
        if paired is None and all(one) and same_data:
            return fisher(ms[0][0]["accuracy"], ms[0][0]["n_test"], ms[1][0]["accuracy"], ms[1][0]["n_test"])
        return paired
    return _pooled(ms[0], ms[1])


def _pooled(runs1: list[dict], runs2: list[dict]) -> dict | None:
    """Rows pooled over seeds: each run paired with the other row's run on the same splits, every
    pair's per-split differences in one corrected t-test; one pair alone: that pair's test
    (`compare_runs`: McNemar's on one split). Runs of one seed pair first; a run left without one
    pairs with a run of another seed only where both scored the same test images whatever the seed
    (a predefined split: McNemar's test compares the two trained models on those images). A run
    with no partner is left out of the test: the result's "unpaired" names the seeds left out of
    each row, "paired" the seeds of each pair tested. None where no run has a partner, or where
    several pairs share their test images (a predefined split, or a seed run twice: not
    independent splits)."""
    pairs, partners, alone = [], list(runs2), []
    for m1 in runs1:  # the same seed first: the pair a reader expects, never taken by another seed's run
        m2 = next((m for m in partners if m.get("seed") == m1.get("seed") and _same_splits(m1, m)), None)
        if m2 is None:
            alone.append(m1)
        else:
            partners.remove(m2)
            pairs.append((m1, m2))
    for m1 in alone:
        m2 = next((m for m in partners if _same_splits(m1, m)), None)
        if m2 is not None:
            partners.remove(m2)
            pairs.append((m1, m2))
    if len(pairs) == 1:
        result = compare_runs(*pairs[0])
    elif pairs:
        xy = [(_split_accuracies(m1), _split_accuracies(m2)) for m1, m2 in pairs]
        if _shared_tests([m1 for m1, _ in pairs]) or any(x is None or y is None for x, y in xy):
            return None
        shared = [shared_splits(m1, m2) for m1, m2 in pairs]  # each pair on the splits it shares
        n_tr, n_te = pairs[0][0].get("n_train") or 0, pairs[0][0].get("n_test") or 0
        result = corrected_paired_t([x[i] for (x, _), sh in zip(xy, shared) for i, _ in sh],
                                    [y[j] for (_, y), sh in zip(xy, shared) for _, j in sh], n_te / n_tr if n_tr else 0.0)
        if any(len(sh) < max(len(x), len(y)) for (x, y), sh in zip(xy, shared)):
            result["splits"] = EACH_PAIR
    else:
        return None
    if result is not None and (len(pairs) < len(runs1) or partners or any(a.get("seed") != b.get("seed") for a, b in pairs)):
        paired = {id(m) for pair in pairs for m in pair}
        result["paired"] = [[m1.get("seed"), m2.get("seed")] for m1, m2 in pairs]
        result["unpaired"] = [[m.get("seed") for m in runs if id(m) not in paired] for runs in (runs1, runs2)]
    return result


def _shared_tests(runs: list[dict]) -> bool:
    """Did runs of one row score the same test images (a predefined split, or a seed run twice)?"""
    hashes = [s.get("test_hash") for m in runs for s in m.get("splits") or [] if s.get("test_hash")]
    return any(m.get("split_protocol") == "predefined" for m in runs) or len(set(hashes)) < len(hashes)


def choice_note(m: dict) -> str | None:
    """'auto chose fne+svm, C 1' for a fit run whose metrics hold a selection; None otherwise."""
    sel = m.get("selection")
    if not isinstance(sel, dict) or not sel.get("choice"):
        return None
    c = sel["choice"]
    text = f"auto chose {c.get('features')}+{c.get('head')}, C {c.get('C'):g}"
    if sel.get("per_split_choices") and len(set(map(str, sel["per_split_choices"]))) > 1:
        text += f"; the most frequent of {len(sel['per_split_choices'])} splits' choices"
    return text
