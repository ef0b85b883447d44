"""The torch solver (fne.linear.solver): same objective and optimum as scikit-learn's heads,
streamed int8 rows, the saved model's format, `--solver` and the C-path race of `--C auto`."""

from __future__ import annotations

import warnings

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from fne.errors import FneError
from fne.linear import selection, solver
from fne.linear.fit import fit
from fne.linear.heads import C_GRID, make_head
from fne.linear.solver import TorchHead, primal_objective, resolve_solver

from .conftest import FAST

STORE = dict(arch=FAST["arch"], weights="random", precision="fp32", storage_dtype="float32")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return X[:1200], y[:1200], X[1200:], y[1200:]


@pytest.fixture(scope="module")
def fne_rows():
    """Synthetic FNE rows: int8 in {-1, 0, 1}, 6 classes whose signs lean one way on a few features."""
    rng = np.random.default_rng(0)
    n, d, k = 900, 300, 6
    y = rng.integers(0, k, n)
    lean = rng.normal(0, 0.6, (k, d))
    z = lean[y] + rng.normal(0, 1, (n, d))
    X = ((z > 0.5).astype(np.int8) - (z < -0.5).astype(np.int8))
    return X[:600], y[:600], X[600:], y[600:]


def sklearn_head(head: str, C: float, tol: float = 1e-4):
    if head == "svm":
        return LinearSVC(C=C, max_iter=100000, tol=tol)
    return LogisticRegression(C=C, max_iter=20000, tol=tol)


def assert_parity(head, C, Xtr, ytr, Xte, yte):
    """Within 1e-4 (relative) of scikit-learn's optimum (its fit at tol 1e-9), never further above
    it than scikit-learn's own default fit, and the same test accuracy within 0.3 points."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = sklearn_head(head, C).fit(Xtr, ytr)
        opt = sklearn_head(head, C, tol=1e-9).fit(Xtr, ytr)
    ours = TorchHead(head, C, device="cpu").fit(Xtr, ytr)
    o_ref = primal_objective(head, C, ref.coef_, ref.intercept_, Xtr, ytr)
    o_opt = primal_objective(head, C, opt.coef_, opt.intercept_, Xtr, ytr)
    o_ours = primal_objective(head, C, ours.coef_, ours.intercept_, Xtr, ytr)
    assert abs(o_ours - o_opt) <= 1e-4 * o_opt, (o_ours, o_opt)
    assert o_ours <= o_ref * (1 + 1e-4), (o_ours, o_ref)
    assert abs(ours.score(Xte, yte) - ref.score(Xte, yte)) <= 0.003 + 1e-12
    assert ours.coef_.shape == ref.coef_.shape and ours.intercept_.shape == ref.intercept_.shape
    return ref, ours


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("head", ["svm", "logreg"])
def test_same_optimum_as_sklearn_on_digits(digits, head):
    assert_parity(head, 1.0, *digits)


@pytest.mark.parametrize("head", ["svm", "logreg"])
def test_same_optimum_on_int8_fne_rows(fne_rows, head):
    Xtr, ytr, Xte, yte = fne_rows
    assert Xtr.dtype == np.int8
    assert_parity(head, 0.01, Xtr.astype(np.float64), ytr, Xte.astype(np.float64), yte)
    # int8 in, float32 arithmetic: the same model as from float32 rows (int8 arithmetic: below)
    ours = TorchHead(head, 0.01, device="cpu", precision="float32").fit(Xtr, ytr)
    ref = TorchHead(head, 0.01, device="cpu").fit(Xtr.astype(np.float32), ytr)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-6)


@pytest.mark.parametrize("head", ["svm", "logreg"])
def test_two_classes_have_sklearns_binary_objective(digits, head):
    Xtr, ytr, Xte, yte = digits
    ref, ours = assert_parity(head, 1.0, Xtr, (ytr > 4).astype(int), Xte, (yte > 4).astype(int))
    assert ours.coef_.shape == (1, Xtr.shape[1]) and ours.decision_function(Xte).ndim == 1


def test_objective_is_sklearns_own(digits):
    """primal_objective is the objective scikit-learn minimises: its optimum beats a perturbed one."""
    Xtr, ytr, _, _ = digits
    for head in ("svm", "logreg"):
        m = sklearn_head(head, 1.0).fit(Xtr, ytr)
        base = primal_objective(head, 1.0, m.coef_, m.intercept_, Xtr, ytr)
        rng = np.random.default_rng(0)
        for _ in range(3):
            worse = primal_objective(head, 1.0, m.coef_ + rng.normal(0, 0.05, m.coef_.shape), m.intercept_, Xtr, ytr)
            assert worse > base


# --------------------------------------------------------------- streaming
def test_chunks_give_the_same_model_and_int8_stays_int8(fne_rows, monkeypatch):
    Xtr, ytr, _, _ = fne_rows
    seen = []
    real = solver._Problem.rows

    def spy(self):
        for Xc, yc in real(self):
            seen.append((self.X.dtype, Xc.shape[0]))
            yield Xc, yc

    monkeypatch.setattr(solver._Problem, "rows", spy)
    one = TorchHead("svm", 0.01, device="cpu").fit(Xtr, ytr)
    seen.clear()
    small = TorchHead("svm", 0.01, device="cpu", chunk=64).fit(Xtr, ytr)
    import torch

    assert {dt for dt, _ in seen} == {torch.int8}  # the held rows stay int8; chunks converted as used
    assert max(m for _, m in seen) == 64
    np.testing.assert_allclose(small.coef_, one.coef_, atol=1e-4)


def test_small_fits_run_on_one_thread_and_give_the_callers_count_back(fne_rows, monkeypatch):
    """A CPU fit below ONE_THREAD_BELOW runs on one torch thread whatever the caller's count
    (OpenMP threads waiting on a busy core: benchmarks/RESULTS.md), puts the caller's count back,
    and reaches the optimum the caller's threads reach; a larger fit keeps the caller's threads."""
    import torch

    Xtr, ytr, _, _ = fne_rows
    assert solver.small_on_cpu(600, 300, 6, torch.device("cpu"))
    assert not solver.small_on_cpu(600, 300, 6, torch.device("cuda"))
    assert not solver.small_on_cpu(4000, 12416, 10, torch.device("cpu"))
    seen = []
    real = solver._Problem.__call__

    def spy(self, theta):
        seen.append(torch.get_num_threads())
        return real(self, theta)

    monkeypatch.setattr(solver._Problem, "__call__", spy)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        small = TorchHead("svm", 0.01, device="cpu").fit(Xtr, ytr)
        assert set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        monkeypatch.setattr(solver, "ONE_THREAD_BELOW", 0)  # every fit "large": the caller's threads
        many = TorchHead("svm", 0.01, device="cpu").fit(Xtr, ytr)
        assert set(seen) == {2} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n)
    np.testing.assert_allclose(small.coef_, many.coef_, atol=1e-3 * np.abs(many.coef_).max())


def test_one_thread_is_shared_by_fits_inside_at_once_and_restored_by_the_last_out():
    import torch

    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with solver.one_torch_thread():
            with pytest.raises(RuntimeError), solver.one_torch_thread():  # a fit that fails inside
                assert torch.get_num_threads() == 1
                raise RuntimeError
            assert torch.get_num_threads() == 1  # the other fit still inside
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("head", ["svm", "logreg"])
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_float32_and_int8_matmuls_reach_the_float64_optimum(fne_rows, head, precision):
    """float32 matmuls, or int8 ones with limbs, with float64 sums: the float64 solver's objective."""
    Xtr, ytr, _, _ = fne_rows
    m = {p: TorchHead(head, 0.1, device="cpu", precision=p).fit(Xtr, ytr) for p in (precision, "float64")}
    o = {p: primal_objective(head, 0.1, h.coef_, h.intercept_, Xtr, ytr) for p, h in m.items()}
    assert abs(o[precision] - o["float64"]) <= 1e-5 * o["float64"]
    assert m[precision].precision_ == precision  # what fit's metrics.json records as solver_precision


def test_precision_is_checked_and_auto_takes_int8_only_for_int8_rows_on_a_cpu_that_has_it(fne_rows, monkeypatch):
    import torch

    Xtr, ytr, _, _ = fne_rows
    with pytest.raises(FneError, match="precision"):
        TorchHead("svm", precision="bfloat16").fit(Xtr, ytr)
    with pytest.raises(FneError, match="int8 rows"):
        TorchHead("svm", precision="int8").fit(Xtr.astype(np.float32), ytr)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.raises(FneError, match="CPU"):
        solver.resolve_precision("int8", np.int8, cuda)
    monkeypatch.setattr(solver, "cpu_int8_dot", lambda: True)
    assert solver.resolve_precision("auto", np.int8, cpu) == "int8"
    assert solver.resolve_precision("auto", np.float32, cpu) == "float32"
    assert solver.resolve_precision("auto", np.int8, cuda) == "float32"
    monkeypatch.setattr(solver, "cpu_int8_dot", lambda: False)
    assert solver.resolve_precision("auto", np.int8, cpu) == "float32"
    assert solver.resolve_precision("float64", np.int8, cpu) == "float64"


def test_int8_limbs_give_the_float64_product():
    """Three int8 limbs per column: integer products within ~1e-7 of each column's scale."""
    import torch

    rng = np.random.default_rng(1)
    X = torch.from_numpy(rng.integers(-1, 2, (300, 517)).astype(np.int8))
    W = torch.from_numpy(rng.normal(0, 1, (517, 7)) * np.array([1e-6, 1e-3, 1, 10, 1e3, 0, 1]))
    W[:, 6] = 0
    Q, scale = solver._limbs(W)
    assert Q.dtype == torch.int8 and Q.shape == (517, 21)
    got = solver._unlimb(torch._int_mm(X, Q), scale)
    want = X.double() @ W
    bound = 517 * 1e-7 * W.abs().amax(dim=0)  # |x| <= 1: each entry's limb error summed over d
    assert torch.all((got - want).abs() <= bound) and torch.all(got[:, 6] == 0)


def test_warm_start_from_the_optimum_stops_early(digits):
    """In float64. With float32 products the gradient at the optimum sits at the stopping
    tolerance, where CPUs differ: a warm start took 2 iterations here, but 131 (one thread) and
    705 (16) on the H200 machine's Xeon, against 140 cold (benchmarks/RESULTS.md)."""
    Xtr, ytr, _, _ = digits
    cold = TorchHead("logreg", 1.0, device="cpu", precision="float64").fit(Xtr, ytr)
    warm = TorchHead("logreg", 1.0, device="cpu", warm_start=True, precision="float64")
    warm.coef_, warm.intercept_ = cold.coef_.copy(), cold.intercept_.copy()
    warm.fit(Xtr, ytr)
    assert cold.n_iter_ > 50 and 5 * warm.n_iter_ < cold.n_iter_  # not a new descent


# ------------------------------------------------------------ the solver choice
def test_auto_solver_by_size(monkeypatch):
    monkeypatch.setattr(solver, "_cuda", lambda: False)
    assert resolve_solver("auto", "svm", 20_000, 3_000, 101) == "sklearn"  # liblinear's copy fits: faster on CPU
    monkeypatch.setattr(solver, "_cuda", lambda: True)
    assert resolve_solver("auto", "svm", 20_000, 3_000, 101) == "torch"  # a pass is cheap on the GPU
    assert resolve_solver("auto", "svm", 720, 1000, 12) == "sklearn"  # flowers12-sized
    assert resolve_solver("auto", "svm", 75_750, 12_416, 101) == "torch"  # Food-101 with VGG-16 FNE
    assert resolve_solver("torch", "sgd-svm", 10**6, 10**4, 100) == "sklearn"  # SGD heads stay sklearn
    assert resolve_solver("sklearn", "svm", 75_750, 12_416, 101) == "sklearn"
    with pytest.raises(FneError, match="solver="):
        resolve_solver("cuml", "svm", 1, 1, 2)
    assert isinstance(make_head("logreg", 1.0, solver="torch"), TorchHead)


def test_bad_solver_is_a_one_line_error(digits_folder, warm_cache, tmp_path):
    with pytest.raises(FneError, match="unknown solver='fast'"):
        fit(digits_folder, solver="fast", out=tmp_path / "r", cache=str(warm_cache), **STORE)


# ------------------------------------------------------------ model format
@pytest.mark.parametrize("head", ["svm", "logreg"])
def test_torch_fitted_model_is_saved_as_sklearns(digits_folder, warm_cache, tmp_path, head):
    from fne.linear.predict import predict

    kw = dict(features="fne", head=head, splits=2, cache=str(warm_cache), **STORE)
    m_t = fit(digits_folder, solver="torch", out=tmp_path / "t", **kw)
    m_s = fit(digits_folder, solver="sklearn", out=tmp_path / "s", **kw)
    assert m_t["solver"] == "torch" and m_s["solver"] == "sklearn"
    saved = joblib.load(tmp_path / "t" / "model.joblib")
    clf = saved["pipeline"].named_steps["head"]
    assert type(clf) is (LinearSVC if head == "svm" else LogisticRegression)
    assert clf.coef_.shape == (4, saved["pipeline"].named_steps["embed"].mean_.shape[0])
    assert list(clf.classes_) == [0, 1, 2, 3] and clf.intercept_.shape == (4,)
    assert abs(m_t["accuracy"] - m_s["accuracy"]) <= 0.1  # 6 test images per split on 4 classes
    r = predict(tmp_path / "t", digits_folder, out=tmp_path / "p.csv", cache=str(warm_cache))
    assert r["n"] == 24 and r["accuracy"] is not None


# ------------------------------------------------------------------- racing
def test_race_stops_a_C_that_cannot_beat_its_side():
    grid = C_GRID
    k = 5
    fold_scores = {3: [0.9] * k, 4: [0.9, 0.8, 0.5, 0.9, 0.9], 2: [0.92] * k}  # centre C=1 is index 3
    scores = np.full((len(grid), k), np.nan)
    race = selection._Race(grid, scores, list(range(k)))
    fitted = []

    def run(i):
        return race(i, lambda f: fitted.append((i, f)) or fold_scores[i][f])

    assert run(3) == pytest.approx(0.9)
    m4 = run(4)  # after 3 folds: at most (2.2 + 2) / 5 = 0.84 < 0.9 (after 2: 0.94, still open)
    assert m4 <= 0.9 and race.raced == {4: 3} and [f for i, f in fitted if i == 4] == [0, 1, 2]
    assert run(2) == pytest.approx(0.92) and 2 not in race.raced  # it beats its side: every fold
    assert np.isnan(scores[4, 3:]).all() and not np.isnan(scores[[2, 3]]).any()


def test_select_with_the_torch_solver_agrees_with_sklearn(fne_rows):
    """--C auto chooses the same C whichever solver fits the folds (the rows of one fold set)."""
    from .test_selection import FakeStore, Rows

    Xtr, ytr, _, _ = fne_rows
    X = Xtr[:, None, :].astype(np.float32)
    rows = Rows(FakeStore(X), [f"k{i}" for i in range(len(X))], ["f"])
    out = {}
    for s in ("sklearn", "torch"):
        sel = selection.select([selection.Candidate("last", ["f"], "l2", "logreg", rows)], "auto", ytr,
                               np.arange(len(ytr)), solver=s, device="cpu")
        out[s] = sel
    assert out["torch"].C == out["sklearn"].C
    t, s = out["torch"].table[0], out["sklearn"].table[0]
    assert abs(t["cv_mean"] - s["cv_mean"]) <= 0.01


def test_pipeline_dry_run_names_the_solver_by_size():
    """`fne run --dry-run` labels fit steps with the solver `fne fit` takes at the dataset's size."""
    from fne.pipeline.config import BackboneCfg, DatasetCfg
    from fne.pipeline.plan import fit_solver

    vgg = BackboneCfg("vgg16", "random")
    proto = {"test_size": 0.25, "train_per_class": None}
    food = DatasetCfg("food101", "/x", "/x", n_images=101_000, n_classes=101)
    assert fit_solver("auto", "svm", "fne", vgg, food, proto) == " (solver torch)"
    small = DatasetCfg("flowers12", "/x", "/x", n_images=960, n_classes=12, n_train_split=720)
    assert fit_solver("auto", "svm", "fc7", vgg, small, proto) == " (solver sklearn)"
    assert fit_solver("sklearn", "svm", "fne", vgg, food, proto) == " (solver sklearn)"
    assert fit_solver("auto", "sgd-svm", "fne", vgg, food, proto) == ""
