"""A torch solver for the linear heads' own objectives, for rows scikit-learn cannot hold or fit fast.

Objectives (the same as scikit-learn's defaults, so the optimum is the same):

- ``svm``: LinearSVC's primal, one-vs-rest L2-regularised squared hinge with the intercept as
  one more feature of value 1 (``intercept_scaling=1``), regularised like the weights:
  ``0.5 ||[w, b]||² + C Σ max(0, 1 - y (w·x + b))²`` per class.
- ``logreg``: LogisticRegression's, multinomial cross-entropy (binary logistic for two classes)
  with L2 on the weights and a free intercept: ``0.5 ||W||² + C Σ log-loss``.

Method: L-BFGS with a strong-Wolfe line search (torch.optim.LBFGS; deterministic, full batch,
float64 parameters on the device), on the objective divided by C·n. scipy's L-BFGS-B spent 0.18 s
per iteration of its own on 37,000 parameters, ten times the evaluation; torch's keeps the
parameters on the device.

Stopping: when the largest gradient entry is below a hundredth of scikit-learn's ``tol`` (at
``tol`` itself L-BFGS stopped 1e-4 relative above LogisticRegression's objective on digits, and at
a tenth 1e-3 above LinearSVC's on flowers12's FNE rows at C = 1, where the objective / (C·n) is
~3e-4; liblinear's dual solver stops on another criterion). That gradient shrinks with n: on
75,750 separable FNE-like rows it stops 1.3 % above the objective a longer run reaches
(benchmarks/RESULTS.md). The squared hinge's duality gap, from the dual point α = 2C·h, was
tried as a certificate and is too loose there to stop on (still 0.6 × the objective after 275
passes at that size; 1e-3 after 3,900 passes on 6,000 rows whose objective had settled to 1e-6).

Arithmetic. Each evaluation streams the rows in chunks and holds them as they are: int8 FNE rows
stay int8 (on the device when it is CUDA). Two matmuls per chunk; scores, losses, gradient sums
and parameters are float64, so memory is the rows plus O(chunk × features + features × classes).
``precision`` picks the matmuls' arithmetic:

- ``int8`` (int8 rows on a CPU with int8 dot-product instructions: `auto`'s choice there): the
  rows as they are against three int8 limbs of the weights (and of the loss gradients), one
  scale per class, through `torch._int_mm`; the int32 products are exact, so the only rounding is
  the limbs' (~6e-8 of each class's largest weight, float32's own resolution). On the AVX512-VNNI
  development CPU a pass over 75,750 × 12,416 × 101 takes ~0.9 s against 2.8 s in float32.
- ``float32`` (elsewhere, and on CUDA): each chunk converted into one reused float32 buffer.
  (All-float32 arithmetic stalled the line search 5e-3 above LogisticRegression's optimum on
  flowers12's FNE rows; float32 matmuls with float64 sums land within 1e-5 of the float64
  solver's objective there, at half the matmul time.)
- ``float64``: the reference.

The fitted head is handed back as a scikit-learn LinearSVC / LogisticRegression carrying
``coef_``, ``intercept_`` and ``classes_`` (`TorchHead.sklearn_model`), so a saved model is the
same whichever solver fitted it and predict / report / export never import torch.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from fne.errors import DataError, FneError, OptionError
from fne.handoff import imported
from fne.held import torch_threads
from fne.names import SOLVER_PRECISIONS, SOLVERS
from fne.option_handling import named, refusal

# `--solver auto` (measured on the 2-core development CPU, benchmarks/RESULTS.md, 28 Nov 2026):
# on CPU liblinear is as fast or faster wherever its float64 copy of the rows fits (flowers12's FNE
# rows, 720 x 3,088 x 12 classes, C = 1, quiet machine: 1.1 s in the rows' span (fne.linear.rowspace),
# 2.3-2.6 s on the rows, against 2.1 s for the torch solver's 654 L-BFGS iterations),
# so auto keeps it until that copy (~21 bytes per row value: 0.25 MiB per 12,416-feature row)
# reaches ~2 GB, i.e. rows x features >= CPU_TORCH_ABOVE. With CUDA present a pass over the rows is
# cheap, and torch takes over from rows x features x classes >= GPU_TORCH_ABOVE (not measured on a
# GPU in this session: a first guess, flowers12-sized problems stay on scikit-learn).
CPU_TORCH_ABOVE = 1e8
GPU_TORCH_ABOVE = 1.5e8
CHUNK_BYTES = 64 << 20  # bytes of one converted chunk
HISTORY = 20  # L-BFGS memory (pairs kept): O(HISTORY x features x classes)
GTOL_FACTOR = 0.01  # gradient tolerance = GTOL_FACTOR * tol: see the module doc
# A CPU fit of rows x features x classes (one matmul's multiply-adds) below ONE_THREAD_BELOW runs
# on one torch thread (`one_torch_thread`): its L-BFGS steps are small matmuls and vector ops, and
# OpenMP threads that spin-wait for each other lose badly once a core is taken by anything else.
# On the 2-core development CPU under load (benchmarks/RESULTS.md, "The torch solver on a busy
# CPU", 30 Nov 2026) two threads against one: 720 x 3,088 x 12 took 23-42 s against 1.9-2.2 s.
# Above it the caller's threads are kept, where a quiet machine's second core pays (a quiet
# machine could not be measured that session; on a busy one one thread won at every size
# measured, up to 20,000 x 12,416 x 10: README says so).
ONE_THREAD_BELOW = 1e8


def resolve_solver(solver: str, head: str, n_rows: int, n_features: int, n_classes: int) -> str:
    """'sklearn' or 'torch' for `solver` ('auto' picks by problem size, see CPU_TORCH_ABOVE).

    Parameters
    ----------
    solver : str
        'auto', 'sklearn' or 'torch'; auto: CPU_TORCH_ABOVE / GPU_TORCH_ABOVE.
    head : str
        The head kind; only 'svm' and 'logreg' have a torch solver (SGD heads stay scikit-learn).
    n_rows, n_features, n_classes : int
        The training problem's size.

    Returns
    -------
    str
        'sklearn' or 'torch'.
    """
    if solver not in SOLVERS:
        raise refusal(lambda py: f"unknown {named('solver', py, solver)}; choose from {', '.join(SOLVERS)}")
    if head not in ("svm", "logreg"):
        return "sklearn"
    if solver != "auto":
        return solver
    if float(n_rows) * n_features >= CPU_TORCH_ABOVE:
        return "torch"
    big = float(n_rows) * n_features * max(n_classes, 2) >= GPU_TORCH_ABOVE
    return "torch" if big and _cuda() else "sklearn"


def _cuda() -> bool:
    torch = imported("torch")  # fit's first import of it: a Ctrl-C held over it (`fne.handoff.imported`)

    return torch.cuda.is_available()


def torch_device(device: str = "auto"):
    """The torch device for `device` ('auto': CUDA when present, else CPU with every core; the
    CPU for MPS, which has no float64 for the solver's parameters and sums)."""
    torch = imported("torch")

    from fne.devices import resolve_device

    if device in ("auto", None):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = resolve_device(device)
    return torch.device("cpu") if dev.type == "mps" else dev  # CPU: torch's thread pool, every core


def one_torch_thread() -> contextlib.AbstractContextManager[None]:
    """torch's CPU threads set to one within, the caller's count put back after
    (`fne.held.torch_threads`: the calling thread's count; nested blocks share one change, the
    fewest threads asked hold, so a fit inside a block that asked for four runs on one)."""
    return torch_threads(1)


def small_on_cpu(n_rows: int, n_features: int, n_classes: int, device) -> bool:
    """True for a CPU fit below ONE_THREAD_BELOW multiply-adds a matmul (fitted on one thread)."""
    kout = 1 if n_classes == 2 else n_classes
    return device.type == "cpu" and float(n_rows) * n_features * kout < ONE_THREAD_BELOW


def resolve_precision(precision: str, dtype, device) -> str:
    """The matmuls' arithmetic: 'int8' (exact integer products with three int8 limbs of the
    weights) for int8 rows on a CPU with int8 dot-product instructions, else 'float32', for 'auto'."""
    if precision not in SOLVER_PRECISIONS:
        raise FneError(f"precision must be one of {', '.join(SOLVER_PRECISIONS)}, not {precision!r}")
    int8_rows = np.dtype(dtype) == np.int8
    if precision == "int8":
        if not int8_rows:
            raise FneError(f"precision 'int8' needs int8 rows (the FNE embedding), not {np.dtype(dtype)}")
        if device.type != "cpu":
            raise FneError("precision 'int8' runs on the CPU; on a GPU use 'float32'")
        return "int8"
    if precision == "auto":
        return "int8" if int8_rows and device.type == "cpu" and cpu_int8_dot() else "float32"
    return precision


@functools.cache
def cpu_int8_dot() -> bool:
    """The CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX), where
    `torch._int_mm` is ~4x float32's matmul (benchmarks/RESULTS.md); elsewhere float32 is used."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    import torch

    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)) and hasattr(torch, "_int_mm")


def primal_objective(head: str, C: float, coef: np.ndarray, intercept: np.ndarray, X: np.ndarray,
                     y: np.ndarray, classes: np.ndarray | None = None) -> float:
    """scikit-learn's primal objective of a fitted linear head (for parity checks).

    Parameters
    ----------
    head : str
        'svm' (LinearSVC: squared hinge, regularised intercept) or 'logreg' (LogisticRegression:
        multinomial, or binary for two classes, free intercept).
    C : float
        Inverse regularisation strength.
    coef, intercept : ndarray
        (K, d) and (K,), as scikit-learn's ``coef_`` and ``intercept_`` (K = 1 for two classes).
    X, y : ndarray
        Rows and labels.
    classes : ndarray, optional
        The label values in column order (default: sorted unique y).

    Returns
    -------
    float
        ``0.5 ||W||² (+ 0.5 ||b||² for svm) + C Σ loss``.
    """
    classes = np.unique(y) if classes is None else classes
    yi = np.searchsorted(classes, y)
    S = np.asarray(X, dtype=np.float64) @ coef.T.astype(np.float64) + intercept
    if head == "svm":
        Y = _signs(yi, len(classes))
        loss = (np.maximum(0.0, 1.0 - Y * S) ** 2).sum()
        return float(0.5 * (coef**2).sum() + 0.5 * (intercept**2).sum() + C * loss)
    if coef.shape[0] == 1:
        s = np.where(yi == 1, 1.0, -1.0) * S[:, 0]
        loss = np.logaddexp(0.0, -s).sum()
    else:
        m = S.max(axis=1, keepdims=True)
        loss = (np.log(np.exp(S - m).sum(axis=1)) + m[:, 0] - S[np.arange(len(yi)), yi]).sum()
    return float(0.5 * (coef**2).sum() + C * loss)


def _signs(yi: np.ndarray, k: int) -> np.ndarray:
    """±1 targets, one column per class (one column, +1 = second class, for two classes)."""
    if k == 2:
        return np.where(yi == 1, 1.0, -1.0)[:, None]
    Y = -np.ones((len(yi), k))
    Y[np.arange(len(yi)), yi] = 1.0
    return Y


LIMB = 254  # each int8 limb carries the previous one's rounding error times LIMB (|error| <= 0.5)


def _limbs(M):
    """M (r, c) float64 as three int8 limbs side by side (r, 3c) and one scale per column:
    M ≈ scale · (L1 + L2 / LIMB + L3 / LIMB²), within 0.5 / LIMB² of a unit of scale, i.e. ~6e-8 of
    the column's largest entry (float32's own rounding is 6e-8 of each entry)."""
    import torch

    scale = M.abs().amax(dim=0) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    r, parts = M / scale, []
    for _ in range(3):
        q = torch.round(r)
        parts.append(q.to(torch.int8))
        r = (r - q) * LIMB
    return torch.cat(parts, dim=1), scale


def _unlimb(R, scale):
    """The float64 product from `torch._int_mm`'s exact int32 products with the three limbs."""
    c = R.shape[1] // 3
    R = R.to(scale.dtype)
    return (R[:, :c] + R[:, c:2 * c] / LIMB + R[:, 2 * c:] / LIMB**2) * scale


class _Problem:
    """Loss and gradient over streamed chunks; parameters flattened as [W (K', d), b (K')]."""

    def __init__(self, head: str, C: float, X: np.ndarray, yi: np.ndarray, k: int, device, chunk: int,
                 compute: str = "float32"):
        import torch

        self.torch, self.head, self.device = torch, head, device
        self.n, self.d = X.shape
        self.kout = 1 if k == 2 else k
        self.scale = 1.0 / (C * self.n)  # the objective divided by C·n: mean loss + penalty / (C n)
        on_gpu = device.type == "cuda"
        with warnings.catch_warnings():  # read-only rows (a memmap, joblib's): only ever read here
            warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
            self.X = torch.from_numpy(np.ascontiguousarray(X))
        if on_gpu:  # int8 stays int8 on the device too; chunks converted there
            self.X = self.X.to(device)
        self.yi = torch.from_numpy(yi.astype(np.int64)).to(device)
        self.chunk = min(chunk, self.n)
        self.int8 = compute == "int8"
        self.compute = torch.int8 if self.int8 else getattr(torch, compute)
        # one buffer for every chunk: converting into memory already touched costs a third of
        # converting into a fresh allocation (page faults) on the development CPU
        self.buf = None if self.int8 else torch.empty((self.chunk, self.d), dtype=self.compute, device=device)

    def rows(self):
        for s in range(0, self.n, self.chunk):
            if self.int8:  # the rows themselves: integer matmuls need no conversion
                yield self.X[s:s + self.chunk], self.yi[s:s + self.chunk]
                continue
            Xc = self.buf[:min(self.chunk, self.n - s)]
            Xc.copy_(self.X[s:s + self.chunk], non_blocking=True)
            yield Xc, self.yi[s:s + self.chunk]

    def chunk_loss(self, S, yc):
        """(summed loss, dLoss/dS) of one chunk's scores S (m, K')."""
        torch = self.torch
        if self.head == "svm":
            if self.kout == 1:
                Y = (yc == 1).to(S.dtype)[:, None] * 2 - 1
            else:
                Y = -torch.ones_like(S)
                Y[torch.arange(len(yc), device=S.device), yc] = 1.0
            h = torch.clamp(1.0 - Y * S, min=0.0)
            return (h * h).sum(dtype=torch.float64), -2.0 * Y * h
        if self.kout == 1:
            sgn = (yc == 1).to(S.dtype)[:, None] * 2 - 1
            z = sgn * S
            return torch.nn.functional.softplus(-z).sum(dtype=torch.float64), -sgn * torch.sigmoid(-z)
        lse = torch.logsumexp(S, dim=1)
        loss = (lse - S.gather(1, yc[:, None])[:, 0]).sum(dtype=torch.float64)
        G = torch.softmax(S, dim=1)
        G[torch.arange(len(yc), device=S.device), yc] -= 1.0
        return loss, G

    def __call__(self, theta):
        """(objective / (C n), its gradient) at theta, a float64 tensor on the device."""
        torch = self.torch
        kd = self.kout * self.d
        W = theta[:kd].reshape(self.kout, self.d)
        b = theta[kd:]
        gW = torch.zeros((self.kout, self.d), dtype=torch.float64, device=self.device)
        gb = torch.zeros(self.kout, dtype=torch.float64, device=self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        if self.int8:
            Q, qs = _limbs(W.T)  # (d, 3K') int8 limbs of the weights, one scale per class
        else:
            Wc, bc = W.to(self.compute), b.to(self.compute)
        for Xc, yc in self.rows():  # matmuls in `compute`, losses and sums in float64
            if self.int8:
                loss, G = self.chunk_loss(_unlimb(torch._int_mm(Xc, Q), qs) + b, yc)
                GQ, gs = _limbs(G)
                gW += _unlimb(torch._int_mm(Xc.T, GQ), gs).T
            else:
                loss, G = self.chunk_loss(torch.addmm(bc, Xc, Wc.T).to(torch.float64), yc)
                gW += (G.to(self.compute).T @ Xc).to(torch.float64)
            total += loss
            gb += G.sum(dim=0, dtype=torch.float64)
        reg = theta if self.head == "svm" else theta[:kd]  # svm: the intercept is one more weight
        f = total / self.n + 0.5 * self.scale * (reg @ reg)
        g = torch.cat([gW.reshape(-1), gb]) / self.n
        g[:len(reg)] += self.scale * reg
        return f, g


class TorchHead(ClassifierMixin, BaseEstimator):
    """LinearSVC / LogisticRegression's objective solved by L-BFGS over streamed chunks (see module doc).

    Parameters
    ----------
    head : str
        'svm' or 'logreg'.
    C : float
        Inverse regularisation strength, as scikit-learn's.
    tol : float
        scikit-learn's tol (1e-4); L-BFGS stops at a gradient of GTOL_FACTOR times it on the objective / (C·n).
    max_iter : int
        L-BFGS iterations at most.
    device : str
        'auto' (CUDA when present), 'cpu' or 'cuda[:i]'.
    warm_start : bool
        Start from ``coef_`` / ``intercept_`` when they are set (as scikit-learn's warm_start).
    chunk : int or None
        Rows converted at a time (default: 64 MiB of them).
    precision : str
        The matmuls' arithmetic: 'auto' (default: 'int8' where `resolve_precision` finds it
        pays, else 'float32'), 'float32', 'float64', or 'int8' (int8 rows only, CPU: exact int32
        products of the rows with three int8 limbs of the weights and of the loss gradients, ~fp32's
        resolution at a quarter of its matmul time). Parameters, losses and their sums are float64
        either way.
    """

    def __init__(self, head: str = "svm", C: float = 1.0, tol: float = 1e-4, max_iter: int = 5000,
                 device: str = "auto", warm_start: bool = False, chunk: int | None = None,
                 precision: str = "auto"):
        self.head, self.C, self.tol, self.max_iter = head, C, tol, max_iter
        self.device, self.warm_start, self.chunk, self.precision = device, warm_start, chunk, precision

    def fit(self, X: np.ndarray, y: np.ndarray) -> TorchHead:
        """Fit the head.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows of any numeric dtype (int8 FNE rows stay int8; not copied when already an array).
        y : array-like of shape (n_samples,)
            Class labels, at least two distinct ones.

        Returns
        -------
        TorchHead
            self, fitted: ``classes_``, ``coef_``, ``intercept_``, ``n_features_in_``, ``n_iter_``,
            ``stopped_`` (True where L-BFGS ended at ``max_iter`` iterations or its evaluation budget,
            short of its gradient tolerance), ``threads_`` (torch's CPU threads the fit ran on:
            one below ONE_THREAD_BELOW; None on a GPU).
        """
        if self.head not in ("svm", "logreg"):
            raise OptionError(f"the torch solver fits svm and logreg heads, not {self.head!r}")
        for name, value in (("C", self.C), ("tol", self.tol), ("max_iter", self.max_iter)):
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0):
                raise OptionError(f"TorchHead's {name} must be a number > 0, not {value!r}")
        X, y = validate_data(self, X, y, dtype="numeric", reset=True)
        check_classification_targets(y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        k = len(self.classes_)
        if k < 2:
            raise DataError(f"a linear head needs at least two classes in its training rows, got {k} class "
                            f"({self.classes_[0]!r})")
        n, d = X.shape
        dev = torch_device(self.device)
        compute = self.precision_ = resolve_precision(self.precision, X.dtype, dev)  # int8 where VNNI/AMX
        width = {"int8": 1, "float32": 4, "float64": 8}[compute]
        chunk = self.chunk or max(256, CHUNK_BYTES // (width * max(d, 1)))
        prob = _Problem(self.head, float(self.C), X, yi, k, dev, chunk, compute)
        torch = prob.torch
        theta = torch.zeros(prob.kout * (d + 1), dtype=torch.float64, device=prob.device)
        if self.warm_start and getattr(self, "coef_", None) is not None and self.coef_.shape == (prob.kout, d):
            theta = torch.from_numpy(np.concatenate([np.ravel(self.coef_), np.ravel(self.intercept_)])
                                     .astype(np.float64)).to(prob.device)
        theta.requires_grad_(False)
        param = torch.nn.Parameter(theta)
        opt = torch.optim.LBFGS([param], lr=1, max_iter=self.max_iter, max_eval=int(self.max_iter * 1.25),
                                tolerance_grad=self.tol * GTOL_FACTOR, tolerance_change=1e-12 * self.tol,
                                history_size=HISTORY, line_search_fn="strong_wolfe")

        def closure():
            with torch.no_grad():
                f, g = prob(param.detach())
            param.grad = g
            return f

        with one_torch_thread() if small_on_cpu(n, d, k, dev) else contextlib.nullcontext():  # ONE_THREAD_BELOW
            self.threads_ = torch.get_num_threads() if dev.type == "cpu" else None  # what it ran on
            opt.step(closure)
        state = opt.state[param]
        self.n_iter_ = int(state.get("n_iter", 0))
        # L-BFGS ended at its iteration or evaluation budget, not at the gradient tolerance
        self.stopped_ = self.n_iter_ >= self.max_iter or int(state.get("func_evals", 0)) >= opt.defaults["max_eval"]
        kd = prob.kout * d
        x = param.detach().cpu().numpy()
        self.coef_ = x[:kd].reshape(prob.kout, d).copy()
        self.intercept_ = x[kd:].copy()
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Margins (n, K), or (n,) for two classes (the second class's), as scikit-learn's.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples, n_classes) or (n_samples,), float32
        """
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, dtype="numeric", reset=False)
        s = np.asarray(X, dtype=np.float32) @ self.coef_.T.astype(np.float32) + self.intercept_.astype(np.float32)
        return s[:, 0] if s.shape[1] == 1 else s

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The class with the highest margin, one per row of `X` (n_samples,)."""
        s = self.decision_function(X)
        return self.classes_[(s > 0).astype(int) if s.ndim == 1 else s.argmax(axis=1)]

    @available_if(lambda self: self.head == "logreg")
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """logreg only: class probabilities (n_samples, n_classes), as LogisticRegression's
        (softmax of the margins; for two classes, the logistic of the one margin)."""
        s = self.decision_function(X).astype(np.float64)
        if s.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-s))
            return np.stack([1.0 - p, p], axis=1)
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    @available_if(lambda self: self.head == "logreg")
    def predict_log_proba(self, X: np.ndarray) -> np.ndarray:
        """logreg only: the log of `predict_proba`."""
        return np.log(self.predict_proba(X))

    def sklearn_model(self):
        """The fitted head as scikit-learn's own estimator (same coef_ / intercept_ / classes_),
        which is what `fne fit` saves."""
        if self.head == "svm":
            m = LinearSVC(C=self.C)
        else:
            m = LogisticRegression(C=self.C)
        m.coef_, m.intercept_, m.classes_ = self.coef_.copy(), self.intercept_.copy(), self.classes_.copy()
        m.n_features_in_, m.n_iter_ = self.n_features_in_, np.array([self.n_iter_])
        return m
