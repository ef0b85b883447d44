"""Cross-validated model selection (fne.selection) and the paired tests (fne.compare)."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
from scipy import stats

from fne.errors import FneError
from fne.linear import compare, selection
from fne.linear.embedding import FullNetworkEmbedding
from fne.linear.fit import Rows, fit
from fne.linear.heads import C_GRID
from fne.metrics import split_record

from .conftest import FAST

STORE = dict(arch=FAST["arch"], weights="random", precision="fp32", storage_dtype="float32")


class FakeStore:
    """What Rows needs of a Store: views, meta's dtype, index() and read_rows(); rows in memory,
    (n, views, D)."""

    def __init__(self, X: np.ndarray):
        self.X, self.views, self.meta = X, X.shape[1], {"dtype": "float32"}
        self.keys = [f"k{i}" for i in range(len(X))]

    def index(self):
        return {k: i for i, k in enumerate(self.keys)}

    def read_rows(self, keys, layers):
        return self.X[[int(k[1:]) for k in keys]]


def blobs(n_per_class=12, classes=3, views=1, d=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    centres = rng.normal(size=(classes, d)) * 3
    X = centres[y][:, None, :] + rng.normal(size=(len(y), views, d))
    return X.astype(np.float32), y


# ------------------------------------------------------------------- folds
def test_folds_keep_every_view_of_an_image_on_one_side():
    views = 10
    y = np.repeat(np.arange(4), 7)
    for tr, va in selection.image_folds(y, 5, seed=3):
        rows_tr, rows_va = selection.view_rows(tr, views), selection.view_rows(va, views)
        assert not set(rows_tr // views) & set(rows_va // views)  # no image on both sides
        assert len(rows_tr) == views * len(tr) and len(rows_va) == views * len(va)
        assert set(rows_tr) | set(rows_va) == set(range(views * len(y)))


def test_folds_shrink_to_the_smallest_class_and_stratify():
    y = np.array([0] * 10 + [1] * 3)
    folds = selection.image_folds(y, 5)
    assert len(folds) == 3
    for _, va in folds:
        assert (y[va] == 1).sum() == 1
    with pytest.raises(Exception, match="at least 2"):
        selection.image_folds(np.array([0, 0, 0, 1]), 5)


def test_folds_keep_copies_of_one_image_in_one_fold():
    """Content keys shared by two images (the same bytes under two names): one fold holds both."""
    y = np.repeat(np.arange(3), 12)
    keys = [f"k{i}" for i in range(len(y))]
    for i in range(0, 30, 3):
        keys[i + 1] = keys[i]  # 10 pairs of copies, each within one class
    plain = selection.image_folds(y, 5, seed=0)
    split_pair = lambda folds: any(keys[i] in {keys[j] for j in va} for tr, va in folds for i in tr)  # noqa: E731
    assert split_pair(plain)  # without keys some pair straddles a fold
    folds = selection.image_folds(y, 5, seed=0, groups=keys)
    assert len(folds) == 5 and not split_pair(folds)
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(len(y)))
    distinct = selection.image_folds(y, 5, seed=0, groups=[f"k{i}" for i in range(len(y))])
    assert all(np.array_equal(a, b) for f, g in zip(plain, distinct) for a, b in zip(f, g))


def test_select_scores_views_of_an_image_together():
    """Ten-view rows: the CV fits the head on fold rows whose images never appear in validation."""
    X, y = blobs(views=4)
    rows = Rows(FakeStore(X), [f"k{i}" for i in range(len(X))], ["f"])
    seen = []
    real = selection._Fold.__init__

    def spy(self, Z_tr, y_tr, Z_va, y_va, views):
        seen.append((Z_tr, Z_va, views))
        real(self, Z_tr, y_tr, Z_va, y_va, views)

    selection._Fold.__init__ = spy
    try:
        selection.select([selection.Candidate("last", ["f"], "l2", "svm", rows)], 1.0, y, np.arange(len(y)))
    finally:
        selection._Fold.__init__ = real
    assert seen
    for Z_tr, Z_va, views in seen:
        assert views == 4
        tr_rows = {r.tobytes() for r in Z_tr}
        assert not tr_rows & {r.tobytes() for r in Z_va}


# ------------------------------------------------------------- no leakage
def test_fne_statistics_are_fitted_inside_each_fold(monkeypatch):
    """A constructed leak: feature 0 is the image's id. The statistics of each fold must see
    exactly that fold's training images, never a validation image."""
    X, y = blobs(n_per_class=10)
    X[:, 0, 0] = np.arange(len(X))
    rows = Rows(FakeStore(X), [f"k{i}" for i in range(len(X))], ["f"], chunk=7)
    fitted: list[set] = []
    real = FullNetworkEmbedding.partial_fit

    def spy(self, Xc, y=None):
        if not hasattr(self, "n_samples_seen_"):
            fitted.append(set())
        fitted[-1] |= {int(v) for v in np.asarray(Xc)[:, 0]}
        return real(self, Xc, y)

    monkeypatch.setattr(FullNetworkEmbedding, "partial_fit", spy)
    idx = np.arange(0, len(X), 1)[2:]  # training images of an outer split: 0 and 1 are test images
    selection.select([selection.Candidate("fne", ["f"], "fne", "svm", rows)], 1.0, y, idx, seed=1)
    folds = selection.image_folds(y[idx], selection.FOLDS, seed=1)
    assert len(fitted) == len(folds)
    for seen, (tr, va) in zip(fitted, folds):
        assert seen == set(idx[tr].tolist())
        assert not seen & set(idx[va].tolist()) and not seen & {0, 1}


# ----------------------------------------------------------------- tie rule
def test_tie_rule_takes_the_central_C_on_a_flat_curve():
    grid = C_GRID
    assert grid[len(grid) // 2] == 1.0 and min(grid) <= 1e-3 and max(grid) >= 1e3
    flat = np.full((len(grid), 5), 0.9)
    assert grid[selection.choose_C(grid, flat)] == 1.0
    noisy = flat + np.random.default_rng(0).normal(0, 0.02, flat.shape)  # noise, no trend
    assert grid[selection.choose_C(grid, noisy)] == 1.0
    # the old rule's failure: the smallest C scores a hair higher on one fold
    edge = flat.copy()
    edge[0, 0] += 0.01
    assert grid[selection.choose_C(grid, edge)] == 1.0


def test_tie_rule_follows_a_clear_optimum_off_centre():
    grid = C_GRID
    s = np.tile(np.array([0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95])[:, None], (1, 5))
    s += np.array([0.0, 0.01, -0.01, 0.005, 0.0])  # same fold effects for every C
    assert grid[selection.choose_C(grid, s)] == 1e3
    # a plateau from C=10 on: the tied C nearest the centre is 10
    p = s.copy()
    p[4:] = p[4]
    assert grid[selection.choose_C(grid, p)] == 10.0


def test_candidate_rule_keeps_the_default_unless_clearly_beaten():
    fne_svm = np.array([0.965, 0.972, 0.979, 0.986, 1.0])  # flowers12's CV folds: a noise-level gap
    last_svm = np.array([0.979, 0.979, 0.979, 1.0, 0.986])
    assert selection.choose_candidate(np.stack([fne_svm, last_svm])) == 0
    better = fne_svm + 0.02  # every fold 2 points better: beyond noise
    assert selection.choose_candidate(np.stack([fne_svm, better])) == 1
    assert selection.choose_candidate(np.stack([better, fne_svm])) == 0


# ---------------------------------------------------------------- statistics
def test_paired_t_matches_scipy_and_the_correction_widens_it():
    a = np.array([0.90, 0.92, 0.88, 0.93, 0.91])
    b = np.array([0.88, 0.91, 0.87, 0.90, 0.90])
    plain = compare.corrected_paired_t(a, b)
    ref = stats.ttest_rel(a, b)
    assert np.isclose(plain["t"], ref.statistic) and np.isclose(plain["p"], ref.pvalue)
    corr = compare.corrected_paired_t(a, b, test_train_ratio=1 / 3)
    d = a - b
    t = d.mean() / np.sqrt((1 / 5 + 1 / 3) * d.var(ddof=1))
    assert np.isclose(corr["t"], t) and np.isclose(corr["p"], 2 * stats.t.sf(t, 4))
    assert corr["p"] > plain["p"]
    assert compare.verdict(plain) == "beats the runner-up beyond noise"
    assert compare.verdict(corr) == "no clear winner"  # p ≈ 0.07 once the overlap is counted


def test_paired_t_degenerate_inputs():
    assert compare.corrected_paired_t([0.9, 0.9], [0.9, 0.9])["p"] == 1.0
    assert compare.corrected_paired_t([0.9], [0.8])["p"] == 1.0  # one split: nothing to test
    same = compare.corrected_paired_t([0.9, 0.9], [0.8, 0.8], test_train_ratio=1 / 3)  # no spread: sign test
    assert same["p"] == 0.5 and same["test"].startswith("sign test") and compare.verdict(same) == "no clear winner"
    assert compare.corrected_paired_t([0.9] * 6, [0.8] * 6)["p"] == 2 * 0.5 ** 6  # 0.031: beyond noise
    assert "over 2 splits" in compare.describe(same, "a", "b")
    assert compare.verdict(compare.corrected_paired_t([0.8, 0.7, 0.8], [0.9, 0.95, 0.9])) == "no clear winner"


def test_mcnemar_exact_values():
    # 10 images only A got right, 2 only B: p = 2 * P(X <= 2 | n=12, 1/2) = 2 * 79 / 4096
    a = np.array([1] * 10 + [0] * 2 + [1] * 50 + [0] * 5, dtype=bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 50 + [0] * 5, dtype=bool)
    r = compare.mcnemar(a, b)
    assert (r["only_a"], r["only_b"]) == (10, 2)
    assert np.isclose(r["p"], 2 * 79 / 4096)
    assert compare.verdict(r) == "beats the runner-up beyond noise"
    r2 = compare.mcnemar(a[2:], b[2:])  # 8 vs 2: p = 2 * 56 / 1024 ≈ 0.109
    assert np.isclose(r2["p"], 2 * 56 / 1024) and compare.verdict(r2) == "no clear winner"
    assert compare.mcnemar(a, a)["p"] == 1.0


# ------------------------------------------------------------------- fit
def test_fit_auto_records_candidates_and_choice(digits_folder, warm_cache, tmp_path):
    m = fit(digits_folder, features="auto", head="auto", C="auto", splits=2, out=tmp_path / "run",
            cache=str(warm_cache), **STORE)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["method"] == "auto+auto" and saved == m
    sel = m["selection"]
    assert len(sel["per_split"]) == 2
    for rec in sel["per_split"]:
        names = {(c["features"], c["head"]) for c in rec["candidates"]}
        assert names == {(f, h) for f in ("fne", "last") for h in ("svm", "logreg")}
        for c in rec["candidates"]:
            assert 0 <= c["cv_mean"] <= 1 and c["cv_std"] >= 0 and c["C"] in C_GRID
            assert 3 <= len(c["grid"]) <= len(C_GRID) and {"0.1", "1", "10"} <= set(c["grid"])
            assert len(c["cv_folds"]) == rec["folds"] and np.isclose(np.mean(c["cv_folds"]), c["cv_mean"])
            # the C chosen, recomputed from the record alone (the tie rule over every C that ran all its folds)
            Cs = [float(k) for k in c["grid_folds"]]
            assert set(c["grid_folds"]) <= set(c["grid"]) and c["grid_folds"][f"{c['C']:g}"] == c["cv_folds"]
            assert Cs[selection.choose_C(Cs, np.array(list(c["grid_folds"].values())))] == c["C"]
        folds = np.array([c["cv_folds"] for c in rec["candidates"]])
        first = rec["candidates"][selection.choose_candidate(folds)]
        assert (rec["choice"]["features"], rec["choice"]["head"]) == (first["features"], first["head"])
        assert rec["winner_vs_runner_up"]["verdict"] in ("beats the runner-up beyond noise", "no clear winner")
    assert m["features"] == sel["choice"]["features"] and m["head"] == sel["choice"]["head"]
    with open(tmp_path / "run" / "predictions.csv") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 2 * m["n_test"] and {p["split"] for p in preds} == {"0", "1"}
    for si, s in enumerate(m["splits"]):  # the per-split record agrees with predictions.csv
        rows = [p for p in preds if p["split"] == str(si)]
        assert s["correct"] == "".join("1" if p["true"] == p["predicted"] else "0" for p in rows)
        assert np.isclose(s["accuracy"], s["correct"].count("1") / len(rows))


def test_fit_C_auto_alone_keeps_the_features(digits_folder, warm_cache, tmp_path):
    m = fit(digits_folder, features="last", head="logreg", C="auto", splits=1, out=tmp_path / "run",
            cache=str(warm_cache), **STORE)
    rec = m["selection"]["per_split"][0]
    assert [(c["features"], c["head"]) for c in rec["candidates"]] == [("last", "logreg")]
    assert rec["winner_vs_runner_up"] is None and m["C"] == rec["choice"]["C"]


def test_report_shows_the_choice_and_the_paired_verdict(digits_folder, warm_cache, tmp_path):
    from fne.reporting.report import report

    kw = dict(splits=3, cache=str(warm_cache), **STORE)
    fit(digits_folder, features="fne", head="svm", out=tmp_path / "runs" / "a", **kw)
    fit(digits_folder, features="last", head="logreg", out=tmp_path / "runs" / "b", **kw)
    m = fit(digits_folder, features="last", head="auto", C=1.0, out=tmp_path / "runs" / "c", **kw)
    r = report([tmp_path / "runs"], tmp_path / "rep", figures=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"auto chose last+{m['selection']['choice']['head']}, C 1" in md
    (ds,) = r["datasets"]
    ranked = ds["rows"]
    if ranked[0]["accuracy"] == ranked[1]["accuracy"]:
        assert "no clear winner" in ds["winner_test"]
    assert "corrected paired t" in ds["winner_test"] and "Winner vs runner-up: " in md


def test_compare_runs_uses_mcnemar_on_one_split():
    ids = [f"img{i}" for i in range(20)]
    y = np.zeros(20, dtype=int)

    def run(correct, seed=0):
        pred = np.where(correct, 0, 1)
        return {"split_protocol": "predefined", "seed": seed, "n_images": 20, "n_splits": 1, "data": "x",
                "splits": [{"accuracy": float(np.mean(correct)), **split_record(ids, np.arange(20), y, pred)}]}

    a, b = run(np.ones(20, bool)), run(np.r_[np.zeros(8, bool), np.ones(12, bool)])
    r = compare.compare_runs(a, b)
    assert r["test"] == "McNemar exact" and (r["only_a"], r["only_b"]) == (8, 0)
    assert np.isclose(r["p"], 2 / 256) and compare.verdict(r) == "beats the runner-up beyond noise"
    # DATA's own split: another seed scores the same test images (the hashes agree), so it is compared
    assert compare.compare_runs(a, run(np.ones(20, bool), seed=1))["test"] == "McNemar exact"
    other = run(np.ones(20, bool))
    other["splits"][0]["test_hash"] = "0" * 16  # same settings, other test images: no test
    assert compare.compare_runs(a, other) is None


def test_walk_grid_goes_outward_while_the_score_improves():
    grid = C_GRID
    for curve, expect in (([0.9] * 7, {2, 3, 4}),  # flat: C=1 and one step each way
                          ([0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95], {2, 3, 4, 5, 6}),
                          ([0.9, 0.8, 0.7, 0.6, 0.7, 0.65, 0.6], set(range(7)) - {6})):
        asked = []
        selection.walk_grid(grid, lambda i, c=curve, a=asked: a.append(i) or c[i])
        assert set(asked) == expect and asked[0] == 3


def test_svm_candidates_walked_side_by_side_score_as_one_at_a_time(monkeypatch):
    """Small data's candidates walk their grids in a pool of threads: its fold scores must be those
    of one candidate after the other. liblinear seeds one generator per process for its coordinate
    order, so two LinearSVC fits at once (unconverged at CV_SVM_TOL) drew each other's numbers and
    scored other accuracies, in most runs at this size (random labels, 160 training rows of 600)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 1, 600)).astype(np.float32), np.arange(200) % 5

    def scores(cpus: int) -> list:
        monkeypatch.setattr(selection, "usable_cores", lambda: cpus)
        cands = [selection.Candidate(f, ["f"], "l2", "svm", Rows(FakeStore(X), [f"k{i}" for i in range(200)], ["f"]))
                 for f in ("a", "b")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a C at the grid's end
            return [t["grid_folds"] for t in selection.select(cands, "auto", y, np.arange(200)).table]

    one_at_a_time = scores(1)
    assert one_at_a_time[0] == one_at_a_time[1]  # the same rows: the same scores
    for _ in range(5):
        assert scores(2) == one_at_a_time


def test_rows_too_large_to_hold_are_streamed_per_fold_and_score_the_same(monkeypatch):
    """Past HOLD_BYTES the rows are not held for all folds: each fold streams its images and fits
    FNE's statistics on them alone. Same folds, same scores (two classes: the SVM's one-column
    decision function)."""
    X, y = blobs(n_per_class=10, classes=2)
    rows = Rows(FakeStore(X), [f"k{i}" for i in range(len(X))], ["f"], chunk=7)
    cands = [selection.Candidate("fne", ["f"], "fne", "svm", rows), selection.Candidate("last", ["f"], "l2", "svm", rows)]
    held = selection.select(cands, "auto", y, np.arange(len(y)), seed=1)
    monkeypatch.setattr(selection, "HOLD_BYTES", 0)
    read = []
    real = FullNetworkEmbedding.partial_fit
    monkeypatch.setattr(FullNetworkEmbedding, "partial_fit", lambda self, Xc, y=None: read.append(len(Xc)) or real(self, Xc))
    streamed = selection.select(cands, "auto", y, np.arange(len(y)), seed=1)
    assert read and max(read) <= 7  # chunk by chunk, not the held matrix
    assert [(t["features"], t["C"], t["cv_mean"]) for t in streamed.table] == \
        [(t["features"], t["C"], t["cv_mean"]) for t in held.table]
    assert (streamed.choice.name, streamed.C) == (held.choice.name, held.C)


def test_a_log_hears_of_each_C_scored_while_one_split_is_cross_validated(digits_folder, warm_cache, tmp_path,
                                                                          monkeypatch, capsys):
    """--C auto on a large training set cross-validates for minutes inside one split: a log
    (stderr not a terminal) gets a line of the C last scored at most every interval, not only
    a line once the split is done."""
    import fne.progress

    monkeypatch.setattr(fne.progress, "LOG_INTERVAL_S", 0.0)  # every C, here
    m = fit(digits_folder, features="last", head="logreg", C="auto", splits=1, out=tmp_path / "run",
            cache=str(warm_cache), **STORE)
    err = capsys.readouterr().err.splitlines()
    grid = m["selection"]["per_split"][0]["candidates"][0]["grid"]
    scored = [line for line in err if "0/1 splits" in line and "cross_validated=" in line]
    assert len(scored) == len(grid)  # one line per C scored, before the split's line
    C1 = f"cross_validated=last+logreg C=1 cv accuracy {grid['1']:.4f})"
    assert scored[0].endswith(C1)  # the walk starts at C = 1
    assert err[-1].startswith("fit last+logreg: 1/1 splits (") and err[-1].endswith(f"accuracy={m['accuracy']:.4f})")


def test_a_C_chosen_at_an_end_of_the_grid_says_a_C_beyond_may_score_higher(monkeypatch):
    """--C auto's grid ends at 10^-3 and 10^3: where the winner's C is an end (it scored above
    every C nearer the centre), a warning says so and names the C to try beyond it; a C inside
    the grid says nothing."""
    X, y = blobs(n_per_class=10, classes=2)
    rows = Rows(FakeStore(X), [f"k{i}" for i in range(len(X))], ["f"])
    cands = [selection.Candidate("last", ["f"], "l2", "svm", rows)]
    for best, expect in ((0.001, "C=0.001 for last+svm, the smallest of its grid (0.001 to 1000): a smaller C may "
                                 "score higher still; fit with --C 0.0001"),
                         (1000.0, "C=1000 for last+svm, the largest of its grid (0.001 to 1000): a larger C may "
                                  "score higher still; fit with --C 10000"), (10.0, None)):
        monkeypatch.setattr(selection._Fold, "score",
                            lambda self, head, C, *a, best=best, **k: 1.0 - abs(np.log10(C / best)) / 10)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            chosen = selection.select(cands, "auto", y, np.arange(len(y)), seed=1)
        notes = [str(w.message) for w in seen if "--C auto chose" in str(w.message)]
        assert chosen.C == best
        assert (notes == [f"--C auto chose {expect} to compare"]) if expect else not notes


def test_a_class_with_one_training_image_is_offered_train_per_class_2_only_where_it_would_run(tmp_path):
    """Auto selection's error for a class with 1 training image offered ``train_per_class=2`` where it
    cannot help: on DATA's own split (which the option does not draw: the same error again) and
    where a class holds 2 images (none left to test: another error)."""
    from .conftest import FAST32, write_digits

    common = dict(cache=str(tmp_path / "cache"), features="last", C="auto", progress=False, extract_missing=True,
                  **FAST32)
    pairs = write_digits(tmp_path / "pairs", per_class=2, classes=3)
    own = write_digits(tmp_path / "own", per_class=6, classes=3, split=True)
    for f in sorted((own / "train" / "2").iterdir())[1:]:
        f.unlink()
    with pytest.raises(FneError, match=r"1 training image in a split .*\('2'\): give C \(and features, head\) a "
                                       r"value, or more images$"):
        fit(own, tmp_path / "run", **common)
    with pytest.raises(FneError, match=r"3 class\(es\) have 1 training image in a split .*: give C \(and features, "
                                       r"head\) a value, or more images$"):
        fit(pairs, tmp_path / "run", test_size=0.5, splits=1, **common)
    three = write_digits(tmp_path / "three", per_class=3, classes=3)
    with pytest.raises(FneError, match=r"a value, or train_per_class=2, or more images$"):
        fit(three, tmp_path / "run", test_size=0.5, splits=1, **common)
    assert fit(three, tmp_path / "run", train_per_class=2, splits=1, **common)["n_train"] == 6  # as offered: it runs
