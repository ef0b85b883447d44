"""Cross-validated model selection for `fne fit --features auto --head auto --C auto`.

Procedure, on the training images of one split only (the test images are never seen):

1. Stratified k-fold over *images* (default 5 folds; fewer when a class has fewer training
   images, at least 2). A ten-crop store has several rows per image: folds are drawn over
   images and then expanded to rows, so every view of an image is on one side.
2. In each fold the embedding is fitted on the fold's training images only (FNE's
   standardisation statistics; L2 normalisation is stateless and is computed once), and
   every candidate head and C is scored on the held-out images (views averaged, as at test).
   The grid is walked outward from C = 1 in each direction while the mean CV accuracy strictly
   improves (`walk_grid`), so a flat or falling side costs one fit per fold.
3. C grid: `C_GRID`, 10^-3 .. 10^3 in decades, centred on the default C = 1. L2-normalised
   rows (norm 1) want C >= 1, FNE's {-1, 0, 1} rows (squared norm ~ thousands) want C <= 1.
4. Tie rule for C (`choose_C`): every C whose mean CV accuracy is within one paired standard
   error of the best C's (the SE of the per-fold differences to the best C) counts as tied;
   among those, the C closest to the grid's centre C = 1 (in log scale) is taken, then the
   higher mean. The old rule (smallest C among ties) picked the most regularised model.
5. Candidates (features x head, each at its chosen C) in the default order fne+svm,
   fne+logreg, last+svm, last+logreg: the same tie band applies, and the first candidate
   tied with the best mean wins, so a difference CV cannot tell from noise keeps the default
   (fne+svm). The winner and the runner-up (the best scoring other candidate) are compared
   fold by fold with the corrected resampled t-test (fne.linear.compare).
6. The caller refits the chosen (features, head, C) on all training images.

Reuse: each fold's embedding is built once (int8 for FNE) and shared by every head and C; L2 rows once for all folds; logistic regression warm-starts from the nearest
C already fitted on the same fold, and so does every torch-solved head (fne.linear.solver).
Small data: rows read from the store once for all folds (`_held`); with fewer training rows than
features every head is fitted in the span of its fold's rows (fne.linear.rowspace, reduced rows
built once per fold), on one BLAS thread, and all such candidates, whichever rows they read, run
side by side in one pool of threads (`_walk`), LinearSVC's fits one at a time (liblinear's random
coordinate order comes from one generator per process).

Racing (`_Race`): a C's folds are fitted one at a time, and once even perfect scores on its
remaining folds could not lift its mean above the best of its side of the walk, its other folds
are skipped: `walk_grid` would stop there whatever they scored. Such a C is listed in the record
("raced": folds fitted) and is not a candidate for the choice; a C chosen by the exhaustive walk
is never raced out (it is the best of its side or the centre, which always runs every fold).
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.svm import LinearSVC

from fne.data.splits import Copies
from fne.errors import FneError
from fne.linear import compare, rowspace
from fne.linear.embedding import make_transform
from fne.linear.heads import C_GRID, make_head
from fne.linear.solver import resolve_solver
from fne.options import usable_cores

FOLDS = 5
CENTRE = 1.0  # the default C: the walk starts at it, and ties go to the C nearest it
# LinearSVC's stopping tolerance inside the CV only (the refit keeps make_head's 1e-4): on
# flowers12's FNE rows 1e-2 stopped after 70-110 instead of ~1100 dual passes (3-12x less time)
# with the same test accuracy at C = 0.1, 1 and 10. The CV ranks settings; it needs no more.
CV_SVM_TOL = 1e-2
# The torch solver's gradient tolerance inside the CV (the refit keeps 1e-4), warm-started along
# the C path: see README "at scale" for the choices it makes against the exhaustive sklearn CV.
CV_TORCH_TOL = 1e-3
AUTO_HEADS = ("svm", "logreg")
# liblinear (LinearSVC) draws its coordinate order from one random generator per process
# (scikit-learn's newrand.h), seeded at the start of each fit: two fits at once in `_walk`'s
# threads drew from it in turn, so each fit's order, and at CV_SVM_TOL its fold accuracy, hung
# on how the threads interleaved. One LinearSVC fit at a time; the other heads run side by side.
_LIBLINEAR = threading.Lock()


@dataclass
class Candidate:
    """One feature set read by `rows` (a fne.linear.features.Rows), embedded by `kind`, under `head`."""

    features: str
    layers: list[str]
    kind: str
    head: str
    rows: object = field(repr=False, default=None)

    @property
    def name(self) -> str:
        return f"{self.features}+{self.head}"


def feature_specs(features: str) -> list[str]:
    """The feature specs `--features auto` tries: fne and the last layer.

    Not the tap before the last one (fc6 on VGG, block15 on EfficientNet-Lite0): on flowers12 it
    cross-validated exactly as well as `last` (98.5 %) for a third more time.
    """
    return ["fne", "last"] if features == "auto" else [features]


def candidates(features: str, head: str, backbone, parse_features, rows_for) -> list[Candidate]:
    """Every (features, head) pair to score; `rows_for(layers)` gives the Rows reading them."""
    heads = list(AUTO_HEADS) if head == "auto" else [head]
    out, rows_cache = [], {}
    for spec in feature_specs(features):
        layers, kind = parse_features(spec, backbone)
        key = tuple(layers)
        if key not in rows_cache:
            rows_cache[key] = rows_for(layers)
        out += [Candidate(spec, layers, kind, h, rows_cache[key]) for h in heads]
    return out


# scikit-learn's guess, past 20 training samples of which over half are classes of their own,
# that the labels are a regression target: fne's labels are classes by construction.
MANY_CLASSES = "The number of unique classes is greater than 50% of the number of samples"


# ------------------------------------------------------------------- folds
def image_folds(y: np.ndarray, n_folds: int = FOLDS, seed: int = 0,
                groups: list[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds over images (positions into y): min(n_folds, smallest class) folds.

    `groups` (the images' content keys) keep copies of one image in one fold
    (StratifiedGroupKFold) where two images share a key; otherwise StratifiedKFold's folds.
    """
    copies = Copies(np.arange(len(y)), groups)  # the same grouping as the random splits'
    counts = np.bincount(y[copies.firsts])
    counts = counts[counts > 0]
    k = int(min(n_folds, counts.min()))
    if k < 2:
        raise FneError("auto selection needs at least 2 training images per class"
                       + (" (copies of one image count once)" if copies.any else ""))
    if copies.any:
        sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in sgkf.split(np.zeros(len(y)), y, copies.first_of)]
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in skf.split(np.zeros(len(y)), y)]


def view_rows(images: np.ndarray, views: int) -> np.ndarray:
    """Row positions of images in an (n_images * views) matrix whose image rows are consecutive."""
    images = np.asarray(images, dtype=np.int64)
    return (images[:, None] * views + np.arange(views)[None, :]).reshape(-1)


# ----------------------------------------------------------------- tie rule
def tied_with_best(scores: np.ndarray) -> np.ndarray:
    """Mask of the rows of scores (options x folds, same folds) whose mean is within one paired
    standard error (SE of the per-fold differences to the best row) of the best mean."""
    scores = np.asarray(scores, dtype=float)
    mean = scores.mean(axis=1)
    best = int(np.argmax(mean))
    k = scores.shape[1]
    d = scores[best][None, :] - scores
    se = d.std(axis=1, ddof=1) / np.sqrt(k) if k > 1 else np.zeros(len(scores))
    return mean[best] - mean <= se + 1e-12


def _from_centre(grid) -> np.ndarray:
    """Each C of grid's distance from CENTRE, in decades."""
    return np.abs(np.log10(np.asarray(grid, dtype=float)) - np.log10(CENTRE))


def choose_C(grid, scores: np.ndarray) -> int:
    """Index into grid: the C nearest CENTRE among those tied with the best mean (see module doc).

    scores: (len(grid), folds) accuracies on the same folds.
    """
    scores = np.asarray(scores, dtype=float)
    mean = scores.mean(axis=1)
    tied = np.flatnonzero(tied_with_best(scores))
    dist = _from_centre(grid)[tied]
    order = np.lexsort((-mean[tied], dist))  # nearest the centre, then the higher mean
    return int(tied[order[0]])


def grid_edge_note(grid, C: float, name: str) -> str | None:
    """Where the chosen C is an end of a grid of several (it scored above every C nearer the
    centre: `choose_C` takes the nearest of those tied), that a C beyond it may score higher
    still; else None."""
    if len(grid) < 2 or C not in (min(grid), max(grid)):
        return None
    beyond = "smaller" if C == min(grid) else "larger"
    return (f"--C auto chose C={C:g} for {name}, the {beyond[:-1] + 'st'} of its grid ({min(grid):g} to "
            f"{max(grid):g}): a {beyond} C may score higher still; fit with --C {C / 10 if beyond == 'smaller' else C * 10:g} "
            f"to compare")


def choose_candidate(scores: np.ndarray) -> int:
    """Index of the first option (default order) tied with the best; scores: options x folds."""
    return int(np.flatnonzero(tied_with_best(scores))[0])


# ----------------------------------------------------------------- scoring
def _view_accuracy(clf, Z: np.ndarray, y: np.ndarray, views: int) -> float:
    s = clf.predict_proba(Z) if hasattr(clf, "predict_proba") else clf.decision_function(Z)
    if s.ndim == 1:
        s = np.stack([-s, s], axis=1)
    s = s.reshape(len(y), views, -1).mean(axis=1)
    return float(np.mean(clf.classes_[s.argmax(axis=1)] == y))


class _Fold:
    """One fold's embedded rows and, per head, the fitted models by C (warm starts).

    With fewer training rows than features, scikit-learn's heads are fitted in the rows' span
    (fne.linear.rowspace: the same optimum, each pass costing n x n instead of n x d); the basis
    is computed once per fold for every head, and the validation rows are scored in it.
    """

    def __init__(self, Z_tr, y_tr, Z_va, y_va, views):
        self.Z_tr, self.y_tr, self.Z_va, self.y_va, self.views = Z_tr, y_tr, Z_va, y_va, views
        self.coef: dict[tuple[str, float], tuple] = {}
        self.space: tuple | None = None  # (training, validation) rows in the training rows' span

    def _rows(self, model) -> tuple[np.ndarray, np.ndarray, object]:
        """(training rows, validation rows, model to fit): reduced to the span when it pays."""
        if not rowspace.worth_it(model, *self.Z_tr.shape):
            return self.Z_tr, self.Z_va, model
        if self.space is None:  # the reduced rows only: the basis (d x n) is not needed again
            space = rowspace.RowSpace(self.Z_tr)
            self.space = (space.rows_, space.transform(self.Z_va))
        F_tr, F_va = self.space
        return F_tr, F_va, rowspace.reduced(model)

    def plan(self, head: str, C: float, seed: int, solver: str = "sklearn", device: str = "auto"):
        """(model to fit, training rows, validation rows, solver used) for `head` at C on this fold."""
        used = resolve_solver(solver, head, self.Z_tr.shape[0], self.Z_tr.shape[1], len(np.unique(self.y_tr)))
        model = make_head(head, C, seed, solver=used, device=device)
        if used == "torch":
            model.set_params(tol=CV_TORCH_TOL)
        elif head == "svm":
            model.set_params(tol=CV_SVM_TOL)
        X_tr, X_va, model = self._rows(model)
        return model, X_tr, X_va, used

    def reduces(self, head: str, seed: int, solver: str = "sklearn", device: str = "auto") -> bool:
        """True when `head` is fitted in the rows' span on this fold (whose reduced rows this builds)."""
        return self.plan(head, 1.0, seed, solver, device)[1] is not self.Z_tr

    def score(self, head: str, C: float, seed: int, solver: str = "sklearn", device: str = "auto") -> float:
        """Validation accuracy of `head` at C fitted on this fold's training rows (warnings: the caller's)."""
        model, X_tr, X_va, used = self.plan(head, C, seed, solver, device)
        if head == "logreg" or used == "torch":  # warm start from the nearest C fitted so far
            near = min((c for h, c in list(self.coef) if h == head), key=lambda c: abs(np.log10(c / C)), default=None)
            if near is not None:
                model.set_params(warm_start=True)
                model.coef_, model.intercept_ = (a.copy() for a in self.coef[(head, near)])
        with _LIBLINEAR if isinstance(model, LinearSVC) else contextlib.nullcontext():
            model.fit(X_tr, self.y_tr)
        if head == "logreg" or used == "torch":
            self.coef[(head, C)] = (model.coef_, model.intercept_)
        return _view_accuracy(model, X_va, self.y_va, self.views)


def _walk(jobs: list[tuple[Candidate, list[_Fold]]], small: bool, grid, scores: dict, races: dict, seed: int,
          solver: str, device: str, on_C=None) -> None:
    """Walk every candidate's C grid over its folds (fills scores and races).

    `small`: every fit is a small problem in the rows' span (`_Fold.reduces`). Then the fits run on
    one BLAS thread each and the candidates side by side, one per core: liblinear releases the GIL
    (two threads fitted pets37's folds 1.9x as fast as one). All candidates share one pool, whichever
    rows they read, so a core that finishes its candidate takes the next. Each candidate has its own scores, race
    and warm starts, and LinearSVC fits take turns (`_LIBLINEAR`: liblinear's one random generator),
    so the result does not depend on the order the threads run in.
    `on_C(candidate name, C, mean CV accuracy)` is told of each C as its folds are scored.
    """
    def walk(job: tuple[Candidate, list[_Fold]]) -> None:
        c, data = job
        race = races[c.name] = _Race(grid, scores[c.name], data)

        def evaluate(i: int) -> float:
            m = race(i, lambda fold: fold.score(c.head, grid[i], seed, solver, device))
            if on_C is not None:
                on_C(c.name, grid[i], m)
            return m

        walk_grid(grid, evaluate)

    workers = min(len(jobs), usable_cores()) if small else 1
    with warnings.catch_warnings(), (rowspace.one_thread() if small else contextlib.nullcontext()):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=MANY_CLASSES)
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(walk, jobs))
        else:
            for job in jobs:
                walk(job)


def walk_grid(grid, evaluate) -> None:
    """Call evaluate(i) for grid indices outward from the C nearest CENTRE, in each direction
    while the mean CV accuracy strictly beats the best so far on that side (CV curves of C are close to
    unimodal; a plateau or a drop ends the walk). evaluate(i) returns the mean accuracy."""
    c = int(np.argmin(_from_centre(grid)))
    at_centre = evaluate(c)
    for step in (1, -1):
        best, j = at_centre, c + step
        while 0 <= j < len(grid):
            m = evaluate(j)
            if m <= best:
                break
            best, j = m, j + step


@dataclass
class Selection:
    """What `--features/--head/--C auto` chose on one split's training rows: the candidate, C,
    every candidate's CV scores, the winner against the runner-up, folds and seconds."""

    choice: Candidate
    C: float
    table: list[dict]
    comparison: dict | None
    folds: int
    seconds: float

    def record(self) -> dict:
        """JSON-ready: every candidate's CV mean ± std, the choice and winner vs runner-up."""
        return {"choice": {"features": self.choice.features, "head": self.choice.head, "C": self.C,
                           "layers": self.choice.layers, "embedding": self.choice.kind},
                "folds": self.folds, "candidates": self.table, "winner_vs_runner_up": self.comparison,
                "seconds": self.seconds}


class _Race:
    """A C's folds scored one by one, stopped once its mean cannot beat the best of its side.

    The bar of grid index i is the best complete mean among the evaluated indices from the centre
    to i (walk_grid's "best so far on that side"); the centre itself always runs every fold.
    """

    def __init__(self, grid, scores: np.ndarray, folds: list):
        self.scores, self.folds, self.raced = scores, folds, {}
        self.c = int(np.argmin(_from_centre(grid)))

    def bar(self, i: int) -> float:
        lo, hi = sorted((self.c, i))
        done = [j for j in range(lo, hi + 1) if j != i and not np.isnan(self.scores[j]).any()]
        return max((float(self.scores[j].mean()) for j in done), default=-np.inf)

    def __call__(self, i: int, fit_fold) -> float:
        """Mean CV accuracy of grid index i (an upper bound, <= the bar, when raced out)."""
        k, bar = len(self.folds), (self.bar(i) if i != self.c else -np.inf)
        for f, fold in enumerate(self.folds):
            self.scores[i, f] = fit_fold(fold)
            upper = (np.nansum(self.scores[i, :f + 1]) + (k - f - 1)) / k
            if f + 1 < k and upper <= bar:
                self.raced[i] = f + 1
                return float(upper)
        return float(self.scores[i].mean())


HOLD_BYTES = 256 << 20  # float32 rows held in memory for all folds (else each fold streams them)


def _held(rows, idx: np.ndarray) -> np.ndarray | None:
    """The store rows of images idx as float32 (n, views, D) when they take at most HOLD_BYTES:
    read once instead of three times per fold (pets37: 15 reads of its rows per split)."""
    X = None
    for b, chunk in rows.chunks(idx):
        if X is None:  # the first chunk gives the width
            if len(idx) * chunk[0].size * 4 > HOLD_BYTES:
                return None
            X = np.empty((len(idx), *chunk.shape[1:]), dtype=np.float32)
        X[b] = chunk
    return X


def select(cands: list[Candidate], C, y: np.ndarray, idx: np.ndarray, seed: int = 0,
           solver: str = "sklearn", device: str = "auto", on_C=None) -> Selection:
    """Score every candidate (and C when C == 'auto') by k-fold CV on images idx; pick one.
    `on_C(candidate name, C, mean CV accuracy)`, if given, hears of each C as it is scored."""
    t0 = time.perf_counter()
    grid = tuple(C_GRID) if C == "auto" else (float(C),)
    yi = y[idx]
    keys = getattr(cands[0].rows, "keys", None)  # content keys: copies of an image in one fold
    folds = image_folds(yi, FOLDS, seed, [keys[i] for i in idx] if isinstance(keys, list) else None)
    k = len(folds)
    scores = {c.name: np.full((len(grid), k), np.nan) for c in cands}  # NaN: C not evaluated
    races = {}
    by_rows: dict[int, list[Candidate]] = {}
    for c in cands:
        by_rows.setdefault(id(c.rows), []).append(c)
    jobs: list[tuple[Candidate, list[_Fold]]] = []
    for group in by_rows.values():
        rows, kind = group[0].rows, group[0].kind
        v = rows.store.views
        Z_all = None
        if kind != "fne":  # stateless: embed every training image once for all folds
            Z_all = rows.embedded(rows.fit_embedding(kind, idx), idx)
        data = []
        X_all = _held(rows, idx) if Z_all is None else None
        for tr, va in folds:
            if X_all is not None:  # read once for every fold; statistics of the fold's training images
                embed = make_transform(kind)
                embed.partial_fit(X_all[tr].reshape(len(tr) * v, -1))
                Z_tr, Z_va = (embed.transform(X_all[p].reshape(len(p) * v, -1)) for p in (tr, va))
            elif Z_all is None:  # statistics of this fold's training images only, streamed
                embed = rows.fit_embedding(kind, idx[tr])
                Z_tr, Z_va = rows.embedded(embed, idx[tr]), rows.embedded(embed, idx[va])
            else:
                Z_tr, Z_va = Z_all[view_rows(tr, v)], Z_all[view_rows(va, v)]
            data.append(_Fold(Z_tr, np.repeat(yi[tr], v), Z_va, yi[va], v))
        if all(fold.reduces(c.head, seed, solver, device) for c in group for fold in data):
            jobs += [(c, data) for c in group]  # small: every such candidate in one pool, below
        else:  # walked now: its folds are freed before the next group's are built
            _walk([(c, data) for c in group], False, grid, scores, races, seed, solver, device, on_C)
    if jobs:
        _walk(jobs, True, grid, scores, races, seed, solver, device, on_C)
    table, best_C, best_row = [], {}, {}
    for c in cands:
        s = scores[c.name]
        done = np.flatnonzero(~np.isnan(s).any(axis=1))  # raced-out C's are not candidates
        i = int(done[choose_C([grid[j] for j in done], s[done])])
        best_C[c.name], best_row[c.name] = grid[i], s[i]
        table.append({"features": c.features, "head": c.head, "C": grid[i],
                      "cv_mean": float(s[i].mean()), "cv_std": float(s[i].std()),
                      "cv_folds": [float(x) for x in s[i]],
                      "grid": {f"{grid[j]:g}": float(np.nanmean(s[j])) for j in np.flatnonzero(~np.isnan(s[:, 0]))},
                      "grid_folds": {f"{grid[j]:g}": [float(x) for x in s[j]] for j in done},  # choose_C's input
                      "raced": {f"{grid[j]:g}": n for j, n in races[c.name].raced.items()}})
    # the first candidate in the default order tied with the best (one paired SE); runner-up:
    # the best scoring of the others
    j_win = choose_candidate(np.stack([best_row[c.name] for c in cands]))
    win = cands[j_win]
    note = grid_edge_note(grid, best_C[win.name], win.name)
    if note:
        warnings.warn(note, stacklevel=2)
    others = sorted((j for j in range(len(cands)) if j != j_win), key=lambda j: (-table[j]["cv_mean"], j))
    comparison = None
    if others:
        run = cands[others[0]]
        r = compare.corrected_paired_t(best_row[win.name], best_row[run.name], 1.0 / (k - 1))
        comparison = {**r, "winner": win.name, "runner_up": run.name, "verdict": compare.verdict(r),
                      "text": compare.describe(r, win.name, run.name, unit="folds")}
    return Selection(win, best_C[win.name], table, comparison, k, time.perf_counter() - t0)


def most_common(records: list[dict]) -> dict:
    """The choice made most often over splits (first among equals), for the saved model."""
    keys = [(r["choice"]["features"], r["choice"]["head"]) for r in records]
    top = max(keys, key=lambda x: (keys.count(x), -keys.index(x)))
    return records[keys.index(top)]["choice"]


def summary(records: list[dict]) -> dict:
    """metrics.json's "selection": the saved model's choice and every split's record."""
    return {"choice": most_common(records), "per_split": records,
            "per_split_choices": [r["choice"] for r in records]}


def chooser(features: str, head: str, C, backbone, parse_features, y: np.ndarray, seed: int,
            records: list[dict], rows_for, solver: str = "sklearn", device: str = "auto", on_C=None):
    """For fne.linear.fit: choose(train) -> (rows, kind, head, C) chosen by CV on the images `train`,
    its record appended to `records`; choose(None) -> the choice made most often so far. `on_C`:
    `select`'s, told of each C scored."""
    cands = candidates(features, head, backbone, parse_features, rows_for)

    def choose(train):
        if train is None:
            ch = most_common(records)
            c = next(x for x in cands if (x.features, x.head) == (ch["features"], ch["head"]))
            return c.rows, c.kind, c.head, ch["C"]
        sel = select(cands, C, y, train, seed, solver=solver, device=device, on_C=on_C)
        records.append(sel.record())
        return sel.choice.rows, sel.choice.kind, sel.choice.head, sel.C

    return choose
