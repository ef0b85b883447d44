"""The figures a researcher reports: each statistic against a reference (scipy, or the textbook
formula by hand) on small hand-made cases, and the edge cases of the tests behind a verdict."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy import stats

from fne.linear import compare
from fne.metrics import (
    accuracy_interval,
    class_recall,
    mean_class_interval,
    split_record,
    split_scores,
)

from .conftest import FAST, write_digits


# ------------------------------------------------------------- paired tests
def test_the_same_difference_on_every_split_is_the_sign_test_whatever_the_float_rounding():
    """0.9 - 0.8 and 0.8 - 0.7 differ in the last bit: that is no spread for a t-test to divide
    by (it said p = 1e-31), but the same difference on every split: the exact sign test."""
    r = compare.corrected_paired_t([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])
    assert r["test"].startswith("sign test") and r["p"] == 0.25 and compare.verdict(r) == "no clear winner"
    counts = np.array([[83, 80], [86, 83], [79, 76], [90, 87], [81, 78]])  # 93 test images, 3 more right each
    r = compare.corrected_paired_t(counts[:, 0] / 93, counts[:, 1] / 93, 93 / 277)
    assert r["test"].startswith("sign test") and r["p"] == 2 * 0.5 ** 5 and compare.verdict(r) == "no clear winner"
    r = compare.corrected_paired_t([0.1 + 0.2, 0.5], [0.3, 0.5])  # equal but for rounding: no difference
    assert r["p"] == 1.0 and r["mean_diff"] == 0.0


def test_corrected_t_against_the_textbook_formula_and_scipy():
    """Nadeau & Bengio: t = mean(d) / sqrt((1/k + n_test/n_train) * var(d, ddof=1)), k - 1 degrees
    of freedom; with no correction it is scipy's paired t-test."""
    a = np.array([0.81, 0.84, 0.79, 0.86, 0.83, 0.80])
    b = np.array([0.78, 0.83, 0.80, 0.82, 0.80, 0.79])
    d = a - b
    for ratio in (0.0, 0.25 / 0.75, 1.0):
        t = d.mean() / np.sqrt((1 / 6 + ratio) * d.var(ddof=1))
        r = compare.corrected_paired_t(a, b, ratio)
        assert np.isclose(r["t"], t) and r["df"] == 5 and np.isclose(r["p"], 2 * stats.t.sf(abs(t), 5))
    ref = stats.ttest_rel(a, b)
    assert np.isclose(compare.corrected_paired_t(a, b)["p"], ref.pvalue)
    assert np.isclose(compare.corrected_paired_t(b, a)["t"], -ref.statistic)  # the sign follows a - b


@pytest.mark.parametrize("only_a,only_b,both", [(0, 0, 5), (3, 3, 4), (7, 1, 0), (1, 7, 2), (12, 2, 30), (40, 25, 1)])
def test_mcnemar_is_the_exact_two_sided_binomial_test_on_the_discordant_images(only_a, only_b, both):
    a = np.array([1] * only_a + [0] * only_b + [1] * both + [0] * 3, dtype=bool)
    b = np.array([0] * only_a + [1] * only_b + [1] * both + [0] * 3, dtype=bool)
    r = compare.mcnemar(a, b)
    n = only_a + only_b
    ref = 1.0 if n == 0 else stats.binomtest(only_a, n, 0.5, alternative="two-sided").pvalue
    assert np.isclose(r["p"], ref, rtol=1e-12) and (r["only_a"], r["only_b"]) == (only_a, only_b)
    assert r["n"] == len(a) and np.isclose(r["mean_diff"], (only_a - only_b) / len(a))


def test_the_verdict_names_the_test_its_sidedness_and_alpha():
    r = compare.corrected_paired_t([0.90, 0.91, 0.89, 0.90, 0.92], [0.84, 0.85, 0.83, 0.84, 0.85], 1 / 3)
    text = compare.describe(r, "fne+svm", "fc7+svm")
    assert text.startswith("fne+svm beats the runner-up fc7+svm beyond noise (corrected paired t-test, two-sided p = ")
    assert "< α = 0.05; difference +6.2 points over 5 splits)" in text
    a = np.array([1] * 8 + [0] * 2 + [1] * 50, dtype=bool)
    b = np.array([0] * 8 + [1] * 2 + [1] * 50, dtype=bool)
    text = compare.describe(compare.mcnemar(a, b), "x", "y")
    assert text == ("no clear winner: x vs y (McNemar exact test, two-sided p = 0.109 ≥ α = 0.05; difference "
                    "+10.0 points over 60 test images, 8 vs 2 classified right by only one of them)")
    assert compare.describe(compare.mcnemar(a, b), "x", "y", alpha=0.2).startswith("x beats the runner-up y")
    assert compare.describe(r, "a", "b", unit="folds").endswith("over 5 folds)")  # auto selection's CV folds


def test_the_verdict_needs_a_higher_mean_and_p_strictly_below_alpha():
    """"beats the runner-up" when its mean is higher and p < alpha (the module's rule): not at p =
    alpha, not for a tie however small p."""
    assert compare.verdict({"mean_diff": 0.02, "p": 0.049}) == "beats the runner-up beyond noise"
    assert compare.verdict({"mean_diff": 0.02, "p": 0.05}) == "no clear winner"
    assert compare.verdict({"mean_diff": 0.0, "p": 0.01}) == "no clear winner"
    assert compare.verdict({"mean_diff": -0.02, "p": 0.01}) == "no clear winner"


def test_fishers_test_counts_the_images_an_accuracy_stands_for_despite_float_rounding():
    """0.29 * 100 is 28.999999999999996 and 0.57 * 100 is 56.99999999999999 in floats: the test is
    of 29 and 57 right of 100 each, scipy's on that table."""
    r = compare.fisher(0.29, 100, 0.57, 100)
    assert r["p"] == stats.fisher_exact([[29, 71], [57, 43]]).pvalue and (r["n_a"], r["n_b"]) == (100, 100)


def test_a_predefined_split_pairs_runs_whatever_their_seeds():
    """The seed draws random splits, not DATA's own: two runs of one predefined split are scored
    on the same test images (the hashes say so) and are compared; random splits of other seeds are not."""
    ids, y = [f"img{i}" for i in range(20)], np.zeros(20, dtype=int)

    def run(correct, seed, protocol="predefined"):
        return {"split_protocol": protocol, "seed": seed, "n_images": 20, "n_splits": 1, "data": "x",
                "splits": [{"accuracy": float(np.mean(correct)), **split_record(ids, np.arange(20), y, np.where(correct, 0, 1))}]}

    a, b = np.ones(20, bool), np.r_[np.zeros(8, bool), np.ones(12, bool)]
    r = compare.compare_runs(run(a, 0), run(b, 1))
    assert r is not None and r["test"] == "McNemar exact" and (r["only_a"], r["only_b"]) == (8, 0)
    assert compare.compare_runs(run(a, 0, "1x stratified test_size=0.25"), run(b, 1, "1x stratified test_size=0.25")) is None


# ------------------------------------------------------------- per-split scores
def test_split_scores_with_a_class_absent_from_the_test_split_and_one_image_per_class():
    """Mean class accuracy averages the recall of the classes present in the test split (a class
    with no test image has no recall, whatever was predicted as it); one image per class works."""
    y, p = np.array([0, 0, 0, 1]), np.array([0, 0, 2, 0])  # class 2 absent from the test, once predicted
    s, conf = split_scores(y, p, 3)
    assert s["accuracy"] == 0.5 and np.isclose(s["mean_class_accuracy"], (2 / 3 + 0) / 2)
    assert conf.shape == (3, 3) and conf[0, 2] == 1 and conf.sum() == 4
    s, _ = split_scores(np.arange(4), np.array([0, 1, 2, 0]), 4)
    assert s["accuracy"] == 0.75 == s["mean_class_accuracy"]


def test_class_recall_names_the_classes_a_split_did_not_test():
    """A class with no test image in a split (a random split drawing none of a small class) has no
    recall there: class_recall sums the splits' matrices and one warning names the class and in how
    many splits, since those splits' mean class accuracy averages the other classes only."""
    with_c = split_scores(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3)[1]
    without_c = split_scores(np.array([0, 0, 1]), np.array([0, 0, 0]), 3)[1]
    with pytest.warns(UserWarning, match=r"^1 of the 3 classes has no image among the test images of one or "
                                         r"more of the 2 splits, so no recall there: 'c' \(in 1 of 2\)") as seen:
        r = class_recall([with_c, without_c], ["a", "b", "c"])
    assert len(seen) == 1 and r == pytest.approx({"a": 0.75, "b": 0.5, "c": 1.0})
    with pytest.warns(UserWarning, match=r"^1 of the 3 classes has no image among the test images, so no recall "
                                         r"there: 'c'; the mean class accuracy of the split"):
        assert class_recall(without_c, ["a", "b", "c"]) == {"a": 1.0, "b": 0.0, "c": None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class tested in every split: no warning
        assert class_recall([with_c, with_c], ["a", "b", "c"])["c"] == 1.0


def test_fit_and_train_warn_of_a_predefined_split_without_test_images_of_a_class(tmp_path, recwarn):
    """train/ has classes 0, 1, 2 and test/ none of 2: the figures are over classes 0 and 1, and
    `fne fit` and `fne train` say so, naming class 2 (class_recall null)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    import fne

    data = write_digits(tmp_path / "data", per_class=4, classes=3, test_counts=(2, 2, 0))
    m1 = fne.fit(data, out=tmp_path / "fit", features="last", cache=str(tmp_path / "cache"), extract_missing=True,
                 progress=False, **FAST)
    m2 = fne.train(data, out=tmp_path / "train", mode="frozen", arch="efficientnet_lite0", weights="random", epochs=1,
                   image_size=32, batch_size=32, workers=0, val_fraction=0, progress=False)
    said = [str(w.message) for w in recwarn if "no image among the test images" in str(w.message)]
    assert len(said) == 2 and all("1 of the 3 classes has no image among the test images, so no recall there: '2'"
                                  in s for s in said)
    for m in (m1, m2):
        assert m["class_recall"]["2"] is None and np.array(m["confusion"]).sum(axis=1).tolist() == [2, 2, 0]


def test_accuracy_interval_wilson_on_one_split_corrected_t_over_several():
    """One split: the Wilson score interval, by the textbook formula; several random splits: the
    mean ± t(k-1) sqrt((1/k + n_test/n_train) s^2) of Nadeau & Bengio, wider than the naive one."""
    r = accuracy_interval([{"accuracy": 236 / 240, "n_train": 720, "n_test": 240}])
    z, n, p = stats.norm.ppf(0.975), 240, 236 / 240
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert np.isclose(r["low"], centre - half) and np.isclose(r["high"], centre + half)
    assert r["method"] == "Wilson score interval over 240 test images" and r["level"] == 0.95
    acc = np.array([0.86, 0.88, 0.84, 0.91, 0.89])
    r = accuracy_interval([{"accuracy": a, "n_train": 277, "n_test": 93} for a in acc])
    half = stats.t.ppf(0.975, 4) * np.sqrt((1 / 5 + 93 / 277) * acc.var(ddof=1))
    assert np.isclose(r["low"], acc.mean() - half) and np.isclose(r["high"], acc.mean() + half)
    naive = stats.t.interval(0.95, 4, loc=acc.mean(), scale=stats.sem(acc))
    assert r["low"] < naive[0] and r["high"] > naive[1] and "Nadeau & Bengio" in r["method"]
    r = accuracy_interval([{"accuracy": a, "n_train": 5, "n_test": 50} for a in (0.2, 0.9)])
    assert r["low"] == 0.0 and r["high"] == 1.0  # clipped to what an accuracy can be
    # five splits of one accuracy: no spread, so not a t interval of no width but one split's Wilson
    r = accuracy_interval([{"accuracy": 0.9, "n_train": 30, "n_test": 10} for _ in range(5)])
    w = accuracy_interval([{"accuracy": 0.9, "n_train": 30, "n_test": 10}])
    assert (r["low"], r["high"]) == (w["low"], w["high"]) and r["low"] < 0.9 < r["high"]
    assert r["method"] == ("Wilson score interval over 10 test images (each of the 5 splits gave this accuracy: "
                           "no spread for a t interval)")


# ------------------------------------------------------------- mean per-class accuracy
def test_mean_class_accuracy_of_an_unbalanced_split_by_hand_and_against_scikit_learn():
    """3 classes of 10, 5 and 2 test images, 9, 3 and 1 right: accuracy 13/17, mean per-class
    accuracy (9/10 + 3/5 + 1/2) / 3 = 2/3, scikit-learn's balanced accuracy; the confusion
    matrix's rows are the true classes, and each class's recall is read off them."""
    from sklearn.metrics import balanced_accuracy_score

    y = np.array([0] * 10 + [1] * 5 + [2] * 2)
    p = np.array([0] * 9 + [1] + [1, 1, 1, 0, 2] + [2, 0])
    s, conf = split_scores(y, p, 3)
    assert conf.tolist() == [[9, 1, 0], [1, 3, 1], [1, 0, 1]]  # row: true class, column: predicted
    assert np.isclose(s["accuracy"], 13 / 17) and np.isclose(s["mean_class_accuracy"], 2 / 3)
    assert np.isclose(s["mean_class_accuracy"], balanced_accuracy_score(y, p))
    assert class_recall(conf, ["cat", "dog", "fox"]) == pytest.approx({"cat": 0.9, "dog": 0.6, "fox": 0.5})
    assert split_scores(np.zeros(3, int), np.ones(3, int), 2)[1].tolist() == [[0, 3], [0, 0]]
    with pytest.warns(UserWarning, match="no recall there: 'b'"):  # b has no test image
        assert class_recall(split_scores(np.zeros(3, int), np.ones(3, int), 2)[1], ["a", "b"]) == {"a": 0.0, "b": None}
    rng = np.random.default_rng(0)
    for _ in range(50):  # classes absent from the test, predicted or not, as scikit-learn counts them
        y, p = rng.integers(0, 6, rng.integers(1, 30)), rng.integers(0, 6, 30)
        s, _ = split_scores(y, p[:len(y)], 6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
            ref = balanced_accuracy_score(y, p[:len(y)])
        assert np.isclose(s["mean_class_accuracy"], ref) and np.isclose(s["accuracy"], np.mean(y == p[:len(y)]))


def test_mean_class_interval_is_price_and_bonetts_on_one_split_and_a_corrected_t_over_several():
    """One split: the adjusted Wald interval of Price & Bonett (2004) for the mean of the classes'
    recalls, by its formula; it holds the figure, keeps a width where every class is perfect or
    the network predicts one class, and covers the true figure about 95 % of the time on small
    unbalanced test sets, 99 % recalls included (where a bootstrap over test images, of no width
    for a class that is all right, covers it far less often). Several splits: the corrected t
    interval, as for accuracy."""
    conf = np.array([[9, 1, 0], [1, 3, 1], [1, 0, 1]])  # 10, 5, 2 test images; 9, 3, 1 right
    one = [{"mean_class_accuracy": 2 / 3, "n_train": 18, "n_test": 17}]
    r = mean_class_interval(one, conf)
    m, z = 3, stats.norm.ppf(0.975)
    p = (np.array([9, 3, 1]) + 2 / m) / (np.array([10, 5, 2]) + 4 / m)
    half = z * np.sqrt(np.sum(p * (1 - p) / (np.array([10, 5, 2]) + 4 / m))) / m
    assert np.isclose(r["low"], p.mean() - half) and np.isclose(r["high"], p.mean() + half)
    assert r["low"] < 2 / 3 < r["high"] and r["level"] == 0.95
    assert r["method"] == "adjusted Wald interval of the mean of 3 classes' recalls over 17 test images (Price & Bonett 2004)"
    perfect = mean_class_interval([{**one[0], "mean_class_accuracy": 1.0}], np.diag([10, 5, 2]))
    assert perfect["high"] == 1.0 and perfect["low"] < 0.9
    one_class = np.zeros((4, 4), int)
    one_class[:, 0] = [20, 10, 4, 2]  # every image called class 0: the figure is 1/4
    r = mean_class_interval([{**one[0], "mean_class_accuracy": 0.25}], one_class)
    assert r["low"] < 0.25 < r["high"] and r["high"] - r["low"] > 0.2
    rng = np.random.default_rng(0)
    for recall in ([0.9, 0.6, 0.5], [0.99, 0.99, 0.99]):  # 10, 5 and 2 test images
        n, covered = np.array([10, 5, 2]), 0
        for _ in range(1000):
            right = rng.binomial(n, recall)
            c = np.diag(right) + np.diag(n - right)[:, [1, 2, 0]]
            ci = mean_class_interval([{"mean_class_accuracy": float(np.mean(right / n))}], c)
            covered += ci["low"] <= np.mean(recall) <= ci["high"]
        assert 0.92 <= covered / 1000 <= 0.99
    vals = [0.81, 0.86, 0.79, 0.90, 0.84]
    r = mean_class_interval([{"mean_class_accuracy": v, "n_train": 277, "n_test": 93} for v in vals], conf)
    a = accuracy_interval([{"accuracy": v, "n_train": 277, "n_test": 93} for v in vals])
    assert (r["low"], r["high"], r["method"]) == (a["low"], a["high"], a["method"])
    r = mean_class_interval(one * 3, conf)  # three splits of one figure: no spread, the first split's interval
    assert (r["low"], r["high"]) == (mean_class_interval(one, conf)["low"], mean_class_interval(one, conf)["high"])
    assert r["method"].endswith(", of the first split (each of the 3 splits gave this figure: no spread for a t interval)")


def test_mean_class_interval_leaves_out_a_class_without_test_images():
    """The figure is the mean of the recalls of the classes with test images (`class_recalls`'
    nanmean), so its interval is over those classes too: worked by hand for 2 tested classes of 3
    (4 and 2 test images, 3 and 2 right): p = (3 + 1) / (4 + 2) and (2 + 1) / (2 + 2), m = 2."""
    conf = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    r = mean_class_interval([{"mean_class_accuracy": (3 / 4 + 2 / 2) / 2, "n_train": 10, "n_test": 6}], conf)
    p1, p2 = 4 / 6, 3 / 4
    half = 1.959963984540054 * np.sqrt(p1 * (1 - p1) / 6 + p2 * (1 - p2) / 4) / 2
    assert np.isclose(r["low"], (p1 + p2) / 2 - half) and np.isclose(r["high"], (p1 + p2) / 2 + half)
    assert "of 2 classes' recalls over 6 test images" in r["method"]


def test_fit_and_train_record_the_mean_class_accuracy_of_an_unbalanced_test_set_and_the_report_shows_it(tmp_path):
    """10, 5 and 2 test images: `fne fit` and `fne train` record the figure scikit-learn computes from
    their predictions.csv, each class's recall by name, the interval, and `fne report` shows it."""
    pytest.importorskip("efficientnet_lite_pytorch")
    import csv

    from sklearn.metrics import balanced_accuracy_score, recall_score

    import fne

    data = write_digits(tmp_path / "data", per_class=6, classes=3, test_counts=(10, 5, 2))
    m1 = fne.fit(data, out=tmp_path / "runs" / "fit", features="last", head="logreg", cache=str(tmp_path / "cache"),
                 extract_missing=True, progress=False, **FAST)
    m2 = fne.train(data, out=tmp_path / "runs" / "train", mode="frozen", arch="efficientnet_lite0", weights="random",
                   epochs=1, image_size=32, batch_size=32, workers=0, val_fraction=0, progress=False, seed=3)
    for m, run in ((m1, "fit"), (m2, "train")):
        assert json.loads((tmp_path / "runs" / run / "metrics.json").read_text()) == m
        assert np.array(m["confusion"]).sum(axis=1).tolist() == [10, 5, 2] and m["n_test"] == 17
        with open(tmp_path / "runs" / run / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        true, pred = [r["true"] for r in rows], [r["predicted"] for r in rows]
        assert np.isclose(m["mean_class_accuracy"], balanced_accuracy_score(true, pred))
        assert m["splits"][0]["mean_class_accuracy"] == m["mean_class_accuracy"]
        recall = recall_score(true, pred, labels=m["classes"], average=None, zero_division=0)
        assert list(m["class_recall"]) == m["classes"] == ["0", "1", "2"]
        assert np.allclose(list(m["class_recall"].values()), recall)
        assert m["mean_class_accuracy_ci"] == mean_class_interval(m["splits"], m["confusion"])
    from fne.reporting.report import report

    md = report([tmp_path / "runs"], tmp_path / "rep", figures=False)["md"]
    text = open(md).read()
    for m in (m1, m2):
        line = next(x for x in text.splitlines() if x.startswith(f"| {m['method']} "))
        cells = [c.strip(" *") for c in line.split("|")]
        assert cells[4] == f"{100 * m['mean_class_accuracy']:.1f}"
        for i, key in ((3, "accuracy_ci"), (5, "mean_class_accuracy_ci")):  # the intervals beside, in percent
            assert cells[i] == f"{100 * m[key]['low']:.1f}–{100 * m[key]['high']:.1f}"


# ------------------------------------------------------------- fit against train
def test_fit_and_train_on_one_predefined_split_are_compared_image_by_image(tmp_path):
    """`fne train` records which test images it got right, as `fne fit` does, so that a fit and a
    train run of one predefined split get McNemar's test (before: no test applied between them)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    import fne

    data = write_digits(tmp_path / "data", per_class=9, classes=3, split=True)
    m1 = fne.fit(data, out=tmp_path / "runs" / "fit", features="last", head="logreg", cache=str(tmp_path / "cache"),
                 extract_missing=True, progress=False, **FAST)
    m2 = fne.train(data, out=tmp_path / "runs" / "train", mode="frozen", arch="efficientnet_lite0", weights="random",
                   epochs=1, image_size=32, batch_size=32, workers=0, val_fraction=0, progress=False, seed=3)
    s1, s2 = m1["splits"][0], m2["splits"][0]
    assert s2["test_hash"] == s1["test_hash"] and len(s2["correct"]) == m2["n_test"] == 9
    assert s2["correct"].count("1") / 9 == m2["accuracy"]
    rows = (tmp_path / "runs" / "train" / "predictions.csv").read_text().splitlines()[1:]
    assert "".join("1" if r.split(",")[1] == r.split(",")[-1] else "0" for r in rows) == s2["correct"]
    r = compare.compare_runs(m1, m2)
    assert r is not None and r["test"] == "McNemar exact" and r["n"] == 9
    for m in (m1, m2):  # the same interval, computed the same way, in both
        assert m["accuracy_ci"] == accuracy_interval(m["splits"]) and m["accuracy_ci"]["method"].startswith("Wilson")
    assert json.loads((tmp_path / "runs" / "train" / "metrics.json").read_text())["splits"][0] == s2


# ------------------------------------------------------------- the report's verdict
def test_the_winner_must_beat_every_method_it_is_paired_with_not_only_the_runner_up(tmp_path):
    """Five shared splits: fne+svm beats the steady runner-up on every split (p < 0.05), but a
    noisier third method, lower on average, is within noise of it: no clear winner, said of that
    method. Without the third, the same two runs name the winner."""
    from .test_report import _splits, _verdict_report, fake_metrics

    x = [0.90, 0.91, 0.89, 0.90, 0.92]
    runs = {"a": fake_metrics("fne+svm", 0.904, 0.01, 0.9, 0.01, splits=_splits(x)),
            "b": fake_metrics("fc7+svm", 0.842, 0.01, 0.84, 0.01, splits=_splits([0.84, 0.85, 0.83, 0.84, 0.85])),
            "c": fake_metrics("last+svm", 0.836, 0.1, 0.83, 0.1, splits=_splits([0.95, 0.70, 0.93, 0.70, 0.90]))}
    ds, md, _ = _verdict_report(tmp_path / "three", runs, advice=True)
    assert [r["method"] for r in ds["rows"]] == ["fne+svm", "fc7+svm", "last+svm"]
    assert ds["verdict"]["kind"] == "unclear"
    assert ds["winner_test"].startswith("no clear winner: fne+svm vs last+svm (corrected paired t-test")
    assert ", though fne+svm beats the runner-up fc7+svm beyond noise (" in ds["winner_test"]
    assert "Highest accuracy, but no clear winner: **fne+svm**" in md and "neither confirm nor contradict" in md
    from fne.reporting.report import table_text  # the console says "no clear winner" once

    assert "  Highest accuracy, but no clear winner: fne+svm, accuracy 90.4 ± 1.0 % (fne+svm vs last+svm (corrected " \
           "paired t-test" in table_text([ds])
    del runs["c"]
    ds, md, _ = _verdict_report(tmp_path / "two", runs)
    assert ds["verdict"]["kind"] == "clear" and "Measured winner: **fne+svm**" in md


def test_fit_prints_a_spread_only_over_several_splits(digits_folder, warm_cache, tmp_path, capsys):
    """One split has no spread: `fne fit` printed "accuracy 0.9833 ± 0.0000"; now the ± comes
    with several splits only, for accuracy and mean class accuracy alike (as the report's tables)."""
    from fne.cli import main

    args = ["fit", str(digits_folder), "--features", "last", "--head", "logreg", "--cache", str(warm_cache),
            "--arch", FAST["arch"], "--weights", "random", "--precision", "fp32", "--storage-dtype", "float32"]
    assert main([*args, "--splits", "1", "--out", str(tmp_path / "one")]) == 0
    line = capsys.readouterr().out.splitlines()[-2]
    ci = json.loads((tmp_path / "one" / "metrics.json").read_text())["accuracy_ci"]
    assert "±" not in line and "(1 split(s)," in line and f"(95% CI {ci['low']:.4f}-{ci['high']:.4f})" in line
    assert main([*args, "--splits", "2", "--out", str(tmp_path / "two")]) == 0
    m = json.loads((tmp_path / "two" / "metrics.json").read_text())
    line = capsys.readouterr().out.splitlines()[-2]
    ci = m["accuracy_ci"]
    assert f"accuracy {m['accuracy']:.4f} ± {m['accuracy_std']:.4f} (95% CI {ci['low']:.4f}-{ci['high']:.4f}), " in line
    ci = m["mean_class_accuracy_ci"]  # printed beside it too
    assert (f"mean class accuracy {m['mean_class_accuracy']:.4f} ± {m['mean_class_accuracy_std']:.4f} "
            f"(95% CI {ci['low']:.4f}-{ci['high']:.4f}) (2 split(s)") in line


def test_single_splits_on_other_test_images_get_fishers_exact_test(tmp_path):
    """Two runs of one split each, on different test images (other seeds): no pairing, and no
    spread to compare a lead with; before, any lead was a "Measured winner" with no test. Now
    Fisher's exact test (unpaired, two-sided) decides, and the verdict says which test it was."""
    from .test_report import _verdict_report, fake_metrics

    def one(method, acc, n, seed):
        return fake_metrics(method, acc, 0.0, acc, 0.0, seed=seed, n_test=n, split_protocol="1x stratified",
                            splits=[{"accuracy": acc, "mean_class_accuracy": acc, "n_train": 30, "n_test": n}])

    ds, md, _ = _verdict_report(tmp_path / "small", {"a": one("fne+svm", 0.9, 10, 0), "b": one("last+svm", 0.7, 10, 1)},
                                advice=True)
    p = stats.fisher_exact([[9, 1], [7, 3]]).pvalue
    assert ds["verdict"]["kind"] == "unclear" and "Measured winner" not in md
    assert ds["winner_test"] == (f"no clear winner: fne+svm vs last+svm (Fisher exact test, two-sided p = {p:.3g} ≥ "
                                 f"α = 0.05; difference +20.0 points over 10 and 10 test images, unpaired (the runs "
                                 f"were not scored on the same test images))")
    assert "neither confirm nor contradict the advice" in md
    ds, md, _ = _verdict_report(tmp_path / "large", {"a": one("fne+svm", 0.9, 200, 0), "b": one("last+svm", 0.7, 200, 1)})
    assert ds["verdict"]["kind"] == "clear" and "Measured winner: **fne+svm**" in md
    assert np.isclose(compare.fisher(0.9, 200, 0.7, 200)["p"], stats.fisher_exact([[180, 20], [140, 60]]).pvalue)
    other = {"a": one("fne+svm", 0.9, 200, 0), "b": {**one("last+svm", 0.7, 200, 1), "data": "/data/elsewhere"}}
    ds, md, _ = _verdict_report(tmp_path / "other-data", other)  # other images altogether: no test at all,
    assert ds["dataset"] == "pets (/data/elsewhere)" and "## pets (/data/pets)" in md  # nor one table
    assert ds["winner_test"] is None and ds["verdict"]["kind"] == "single"


def test_runs_given_one_folder_by_two_paths_are_paired(digits_folder, warm_cache, tmp_path, monkeypatch):
    """`fne fit ../images` run from one folder and `fne fit /home/me/images` from another hold the
    same images: metrics.json's `data` differed, so the report ran no test between them."""
    from fne.linear.fit import fit

    kw = dict(cache=str(warm_cache), features="last", head="logreg", splits=2, progress=False, **FAST)
    monkeypatch.chdir(digits_folder.parent)
    rel = fit(digits_folder.name, tmp_path / "rel", **kw)
    absolute = fit(str(digits_folder), tmp_path / "abs", **{**kw, "head": "svm"})
    assert rel["data"] == digits_folder.name and absolute["data"] == str(digits_folder)
    assert rel["data_resolved"] == absolute["data_resolved"] == str(digits_folder.resolve())
    r = compare.compare_runs(rel, absolute)
    assert r is not None and r["test"].startswith("corrected") and r["n"] == 2
    # other images under the same names: another labels_fingerprint (the same one at another path is a copy)
    other = {**absolute, "data_resolved": str(tmp_path / "elsewhere"), "labels_fingerprint": "0" * 16}
    assert compare.compare_runs(rel, other) is None
    copied = {**absolute, "data_resolved": str(tmp_path / "copy")}
    assert compare.compare_runs(rel, copied) is not None
    older = [{k: v for k, v in m.items() if k not in ("data_resolved", "labels_fingerprint")}  # runs written before
             for m in (rel, absolute)]
    assert compare.compare_runs(*older) is None  # DATA as given, as before: not known to be the same


# ------------------------------------------------------------- every printed number, from predictions.csv
def _per_split_from_predictions(run) -> list[tuple[float, float, int]]:
    """(accuracy, mean class accuracy, test images) of each split, read off predictions.csv alone with
    scikit-learn: the independent recomputation of what fne fit and fne report print."""
    import csv

    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for s in sorted({int(r["split"]) for r in rows}):
        t, p = zip(*((r["true"], r["predicted"]) for r in rows if int(r["split"]) == s), strict=True)
        with warnings.catch_warnings():  # a class predicted that the split does not test
            warnings.simplefilter("ignore")
            out.append((accuracy_score(t, p), balanced_accuracy_score(t, p), len(t)))
    return out


def test_the_reports_numbers_are_recomputed_from_predictions_and_one_split_shows_no_spread(
        digits_folder, warm_cache, tmp_path):
    """fne fit's and fne report's figures (mean, std, the corrected t interval, the paired test) equal
    those recomputed from each run's predictions.csv with scikit-learn / scipy; a row of one split
    shows no spread: no "±" in report.md, and report.json / report.csv hold none (they held 0.0)."""
    import csv
    from pathlib import Path

    from fne.linear.fit import fit
    from fne.reporting.report import report

    kw = dict(cache=str(warm_cache), progress=False, **FAST)
    runs = tmp_path / "runs"
    fit(digits_folder, runs / "fne", features="fne", head="svm", splits=3, **kw)
    fit(digits_folder, runs / "two", features="fne:block2,block5", head="svm", splits=3, **kw)
    fit(digits_folder, runs / "one", features="last", head="svm", splits=1, test_size=0.5, **kw)
    report([runs], tmp_path / "rep", figures=False)
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = {Path(r["paths"][0]).name: r for r in data["datasets"][0]["rows"]}
    with open(tmp_path / "rep" / "report.csv", newline="") as f:
        lines = {Path(line["run_folders"]).name: line for line in csv.DictReader(f)}
    md = (tmp_path / "rep" / "report.md").read_text()
    per = {}
    for run in ("fne", "two"):
        acc, mca, n_test = map(np.array, zip(*_per_split_from_predictions(runs / run), strict=True))
        per[run] = acc
        r = rows[run]
        assert r["accuracy"] == pytest.approx(acc.mean(), abs=1e-12)
        assert r["accuracy_std"] == pytest.approx(acc.std(), abs=1e-12)  # population std, as README says
        assert r["mean_class_accuracy"] == pytest.approx(mca.mean(), abs=1e-12)
        assert r["mean_class_accuracy_std"] == pytest.approx(mca.std(), abs=1e-12)
        n_train = 24 - n_test.mean()  # digits_folder: 24 images
        half = stats.t.ppf(0.975, 2) * np.sqrt((1 / 3 + n_test.mean() / n_train) * acc.var(ddof=1))
        assert np.ptp(acc) > 0  # splits that differ: Nadeau & Bengio's corrected t interval, clipped to [0, 1]
        assert r["accuracy_ci"]["low"] == pytest.approx(max(0.0, acc.mean() - half), abs=1e-12)
        assert r["accuracy_ci"]["high"] == pytest.approx(min(1.0, acc.mean() + half), abs=1e-12)
        assert f"{100 * acc.mean():.1f} ± {100 * acc.std():.1f}" in md
        assert float(lines[run]["accuracy_std"]) == pytest.approx(acc.std(), abs=1e-12)
    d = per["fne"] - per["two"]
    test = compare.compare_runs(*(json.loads((runs / r / "metrics.json").read_text()) for r in ("fne", "two")))
    assert np.ptp(d) > 0  # the corrected paired t-test (n_test / n_train = 6 / 18) on the shared splits
    t = d.mean() / np.sqrt((1 / 3 + 6 / 18) * d.var(ddof=1))
    assert test["p"] == pytest.approx(2 * stats.t.sf(abs(t), 2), abs=1e-12)
    assert test["mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
    (acc1, mca1, n1), = _per_split_from_predictions(runs / "one")
    one = rows["one"]
    assert one["accuracy"] == pytest.approx(acc1, abs=1e-12) and one["mean_class_accuracy"] == pytest.approx(mca1, abs=1e-12)
    assert one["accuracy_std"] is None and one["mean_class_accuracy_std"] is None
    assert lines["one"]["accuracy_std"] == lines["one"]["mean_class_accuracy_std"] == ""
    wilson = stats.binomtest(round(acc1 * n1), n1).proportion_ci(0.95, "wilson")
    assert (one["accuracy_ci"]["low"], one["accuracy_ci"]["high"]) == pytest.approx((wilson.low, wilson.high), abs=1e-12)
    cell = next(line for line in md.splitlines() if line.startswith(f"| {one['label']} |"))
    assert "±" not in cell.split("|")[2] and f"{100 * acc1:.1f}" in cell
