"""The pieces of metrics.json that `fne fit` and `fne train` share, computed one way."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import platform
import re
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fne.option_handling import command_line
from fne.progress import first_few


def split_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[dict, np.ndarray]:
    """Accuracy and mean per-class accuracy of one test split, and its confusion matrix (rows:
    true class, columns: predicted class); both scores are read off the matrix (`class_recalls`)."""
    # imported here, not with the module: `fne extract` uses `provenance` and starts without sklearn
    from sklearn.metrics import confusion_matrix

    confusion = confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    scores = {"accuracy": float(np.trace(confusion) / confusion.sum()),
              "mean_class_accuracy": float(np.nanmean(class_recalls(confusion)))}
    return scores, confusion


def class_recalls(confusion) -> np.ndarray:
    """Each class's recall (the share of its test images predicted as it) from a confusion matrix
    whose rows are the true classes; NaN for a class with no test image. Their mean over the
    classes with test images is the mean per-class accuracy (scikit-learn's balanced accuracy)."""
    c = np.asarray(confusion, dtype=float)
    total = c.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.diag(c) / total, np.nan)


def class_recall(confusions, classes: list[str]) -> dict[str, float | None]:
    """metrics.json's ``class_recall``: {class name: `class_recalls`' value of the splits' summed
    confusion matrix, None where the class had no test image}, in class order.

    Warns, in one line, naming the classes without a test image in a split (a predefined split
    with none of a class, or a random split that drew none of a small class): that split's
    accuracy holds none of their images, and its mean class accuracy is the mean of the other
    classes' recalls, not of all of them.

    Parameters
    ----------
    confusions : array-like
        One split's confusion matrix (rows: true classes), or a list of every split's.
    classes : list of str
        The class names, in the matrices' order.

    Returns
    -------
    dict
        {class name: recall, or None}.
    """
    mats = np.asarray(confusions)
    mats = mats[None] if mats.ndim == 2 else mats
    _warn_untested(mats.sum(axis=2) == 0, classes)
    return {str(name): (None if np.isnan(r) else float(r)) for name, r in zip(classes, class_recalls(mats.sum(axis=0)))}


def _warn_untested(untested: np.ndarray, classes: list[str]) -> None:
    """`class_recall`'s warning; `untested[s, c]`: split s has no test image of class c."""
    missing = np.flatnonzero(untested.any(axis=0))
    if not len(missing):
        return
    k, n = len(untested), len(classes)
    shown = first_few([repr(classes[c]) + (f" (in {int(untested[:, c].sum())} of {k})" if k > 1 else "") for c in missing])
    where = "the test images" if k == 1 else f"the test images of one or more of the {k} splits"
    warnings.warn(f"{len(missing)} of the {n} classes {'has' if len(missing) == 1 else 'have'} no image among {where}, so no recall there: {shown}; "
                  f"the mean class accuracy of {'the split' if k == 1 else 'such a split'} is the mean of the "
                  f"other classes' recalls", stacklevel=3)


def accuracy_interval(splits: list[dict], level: float = 0.95) -> dict:
    """A confidence interval for the accuracy that metrics.json reports, by the method that fits
    how it was measured, named in the result.

    Parameters
    ----------
    splits : list of dict
        metrics.json's per-split records: ``accuracy``, ``n_train`` and ``n_test`` each.
    level : float
        The confidence level.

    Returns
    -------
    dict
        ``low``, ``high``, ``level`` and ``method``. One split: the Wilson score interval of a
        binomial proportion over its test images (scipy's ``binomtest``); so too for several
        splits of one accuracy, whose zero spread would give a t interval of no width. Several random splits:
        the mean ± t(k-1) * sqrt((1/k + n_test/n_train) * s^2), s the per-split accuracies'
        sample std (ddof 1): Nadeau & Bengio's (2003) corrected resampled interval, the
        companion of the corrected t-test of `fne.linear.compare`; clipped to [0, 1].
    """
    from scipy import stats

    acc = np.array([s["accuracy"] for s in splits], dtype=float)
    if len(acc) == 1 or np.ptp(acc) <= 1e-12:  # several splits of one accuracy: no spread to estimate from
        n = int(round(np.mean([s["n_test"] for s in splits])))
        ci = stats.binomtest(int(round(acc[0] * n)), n).proportion_ci(level, "wilson")
        low, high, method = float(ci.low), float(ci.high), f"Wilson score interval over {n} test images"
        if len(acc) > 1:
            method += f" (each of the {len(acc)} splits gave this accuracy: no spread for a t interval)"
    else:
        low, high, method = _corrected_t(acc, splits, level)
    return {"low": low, "high": high, "level": level, "method": method}


def mean_class_interval(splits: list[dict], confusion, level: float = 0.95) -> dict:
    """A confidence interval for the mean per-class accuracy that metrics.json reports
    (``mean_class_accuracy_ci``), its method named in the result.

    Parameters
    ----------
    splits : list of dict
        metrics.json's per-split records: ``mean_class_accuracy``, ``n_train`` and ``n_test`` each.
    confusion : array-like
        The confusion matrix (rows: true classes) of one split, the first.
    level : float
        The confidence level.

    Returns
    -------
    dict
        ``low``, ``high``, ``level`` and ``method``. Several random splits whose figures differ:
        Nadeau & Bengio's corrected resampled t interval over the per-split figures, as for
        accuracy (`accuracy_interval`). One split (or splits of one figure): the figure is the mean
        of the recalls of its m classes with test images, independent binomial proportions over
        fixed numbers of test images n_c; Price & Bonett's (2004) adjusted Wald interval for a
        linear function of proportions: each recall taken as p_c = (right_c + 2/m) / (n_c + 4/m),
        mean(p) ± z * sqrt(sum p_c (1 - p_c) / (n_c + 4/m)) / m, clipped to [0, 1]. Unlike a
        bootstrap over test images, it keeps a width where every class is all right or all wrong.
    """
    from scipy import stats

    mca = np.array([s["mean_class_accuracy"] for s in splits], dtype=float)
    if len(mca) > 1 and np.ptp(mca) > 1e-12:
        low, high, method = _corrected_t(mca, splits, level)
        return {"low": low, "high": high, "level": level, "method": method}
    c = np.asarray(confusion, dtype=float)
    total = c.sum(axis=1)
    n, right = total[total > 0], np.diag(c)[total > 0]
    m = len(n)
    p = (right + 2 / m) / (n + 4 / m)
    half = float(stats.norm.ppf((1 + level) / 2) * np.sqrt(np.sum(p * (1 - p) / (n + 4 / m))) / m)
    low, high = max(0.0, float(p.mean()) - half), min(1.0, float(p.mean()) + half)
    method = f"adjusted Wald interval of the mean of {m} classes' recalls over {int(n.sum())} test images (Price & Bonett 2004)"
    if len(mca) > 1:
        method += f", of the first split (each of the {len(mca)} splits gave this figure: no spread for a t interval)"
    return {"low": low, "high": high, "level": level, "method": method}


def _corrected_t(values: np.ndarray, splits: list[dict], level: float) -> tuple[float, float, str]:
    """Nadeau & Bengio's corrected resampled t interval of the per-split `values`: mean ± t(k-1) *
    sqrt((1/k + n_test/n_train) * s^2), clipped to [0, 1]; -> (low, high, method)."""
    from scipy import stats

    k = len(values)
    ratio = np.mean([s["n_test"] for s in splits]) / np.mean([s["n_train"] for s in splits])
    half = float(stats.t.ppf((1 + level) / 2, k - 1) * np.sqrt((1 / k + ratio) * values.var(ddof=1)))
    low, high = max(0.0, float(values.mean()) - half), min(1.0, float(values.mean()) + half)
    return low, high, f"corrected resampled t interval over {k} random splits (Nadeau & Bengio 2003)"


def data_identity(data) -> str:
    """DATA as runs are compared by it (`fne.linear.compare`): a local file or folder by its
    absolute, resolved path, so that a run given `../images` and one given `/home/me/images` are
    known to hold the same images; anything else (digits, hf:NAME, a glob or brace pattern, a
    URL) as given."""
    text = str(data)
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def labels_fingerprint(keys: list[str], labels: list[str] | None) -> str | None:
    """DATA's labelling, as `fne fit` and `fne train` record it in metrics.json (``labels_fingerprint``):
    a hash of every image's content key with its label, in any order, over DATA's listing as given
    (unreadable images included: fit leaves them out, train skips them as it reads). Runs of one
    DATA whose images moved between classes record other ones, and are reported apart
    (`fne.linear.compare.run_tasks`); None for unlabelled DATA."""
    if not labels:
        return None
    pairs = sorted(f"{k}\t{label}" for k, label in zip(keys, labels, strict=True))
    return hashlib.sha1("\n".join(pairs).encode()).hexdigest()[:16]


# metrics.json's ``format``, which `fne fit` and `fne train` write. Raise it when they write a field
# that an earlier fne would misread by passing over it (a new setting that changes the numbers: its
# report would pool runs that differ in it; a field whose meaning changed): that fne then leaves such
# a run out of its report and refuses to apply it (`unreadable_format`), rather than reading it as one
# of its own. A field only shown or kept for provenance leaves it as it is. A metrics.json without it
# was written before fne recorded it: format 1's fields.
METRICS_FORMAT = 1


def unreadable_format(m: dict) -> str | None:
    """Why this fne cannot read a metrics.json `m` of a later format (written by a newer fne); None
    where it can: its format is this fne's or earlier, or it records none (a run written before
    fne recorded it). A format that is not a positive whole number is for the caller's check of
    the fields' types."""
    f = m.get("format")
    if type(f) is int and f > METRICS_FORMAT:
        return f"written by a newer fne: format {f}, this fne reads up to {METRICS_FORMAT}; upgrade fne"
    return None


def bad_format(m: dict) -> bool:
    """Whether metrics.json's format is recorded as other than a positive whole number (a damaged or
    hand-edited file; absent is an earlier run's)."""
    f = m.get("format")
    return f is not None and not (type(f) is int and f > 0)


# metrics.json's ``test_order``: each split record (`split_record`) lists its test images in DATA's
# order. Runs written before it (30 Nov 2026) listed fit's random stratified test images in the order
# the splitter drew them (`fne.linear.compare.record_order`): their records pair only among themselves.
TEST_ORDER = "dataset"


def split_record(ids: list[str], idx: np.ndarray, y_true: np.ndarray, pred: np.ndarray) -> dict:
    """What a paired test (`fne.linear.compare`) needs of one split, kept in metrics.json by
    `fne fit` and `fne train` alike: which test images were classified correctly ("1"/"0") and a
    hash of those images' ids, both in DATA's order (`TEST_ORDER`: ascending dataset index, whatever
    order the splitter drew them in), so that one set of test images has one hash and one
    alignment of its "1"/"0" in both verbs.

    Parameters
    ----------
    ids : list of str
        Every dataset image's id (`Dataset.ids`).
    idx : ndarray
        The split's test images (dataset indices), in any order.
    y_true, pred : ndarray
        Their true and predicted classes, in `idx`'s order.

    Returns
    -------
    dict
        ``correct`` and ``test_hash``.
    """
    order = np.argsort(np.asarray(idx), kind="stable")
    names = [str(ids[i]) for i in np.asarray(idx)[order]]
    right = np.asarray(y_true)[order] == np.asarray(pred)[order]
    return {"correct": "".join("1" if r else "0" for r in right),
            "test_hash": hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]}


def predictions_csv(dataset, idx, predicted: list[str], score_cols: list[str], scores: np.ndarray,
                    ranked: list[list[str]] | None = None):
    """The writer (`fne.cache.fs.replace_file` / `replace_files`) of the predictions CSV that
    `fne predict` and `fne train` write: path, predicted, score_<class>..., true (when DATA has
    labels); one row per image `idx[j]` of `dataset`, with `predicted[j]` and `scores[j]`. With
    `ranked` (`fne predict --top K`), `ranked[j]`, image j's next K - 1 classes, best first, are
    the columns predicted_2 ... predicted_K after predicted."""
    from fne.cache.fs import csv_writer

    labels = dataset.labels
    more = len(ranked[0]) if ranked else 0
    return csv_writer(["path", "predicted", *(f"predicted_{k}" for k in range(2, more + 2)), *score_cols]
                      + (["true"] if labels else []),
                      ([dataset.ids[i], predicted[j], *(ranked[j] if more else ()), *(f"{v:.6g}" for v in scores[j])]
                       + ([labels[i]] if labels else []) for j, i in enumerate(idx)))


# What a result's numbers can depend on besides fne's own code: the libraries that compute
# (BLAS, oneDNN through torch, liblinear through scikit-learn), decode (Pillow; on a device,
# TorchCodec or torchvision) and store (zarr).
PACKAGES = ("numpy", "scipy", "scikit-learn", "torch", "torchvision", "torchcodec", "timm", "pillow", "zarr")
MODULES = {"scikit-learn": "sklearn", "pillow": "PIL"}  # import names that differ from the package's
# CPU features that change which kernels run: bf16 and int8 paths (`fne.devices.resolve_precision`
# picks bf16 for precision "auto" where AVX512-BF16 / AMX are present; the torch solver multiplies
# int8 rows as int8 with VNNI / AMX), and the vector width oneDNN and OpenBLAS choose kernels by.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def provenance(*options, device=None, verb: str | None = None, data=None, run_dir=None) -> dict:
    """Where, when and with what a result was measured: what a reader needs to reproduce it,
    or to explain why another machine's numbers differ (README, "Reproducibility").

    Parameters
    ----------
    *options : dataclass instances
        The run's resolved options (`fne.options` dataclasses, `StoreSpec`), recorded field by
        field under ``options`` (a field two of them share is taken from the first).
    device : str or torch.device, optional
        Where the run computed (``cuda:1``): the GPU ``cuda`` names, none for a CPU run. Without
        it, the GPU torch's current device is (a run that did not say where it ran).
    verb : str, optional
        ``fit`` or ``train``: the result records ``command``, the `fne VERB` command line that
        reruns it (`fne.option_handling.command_line`).
    data : str, Path or Dataset, optional
        DATA as the run was given it (default: the first option object's ``data`` field).
    run_dir : str or Path, optional
        The run folder, where no option object holds it (``--out``).

    Returns
    -------
    dict
        ``machine`` and ``date`` (UTC); ``platform``, ``python``; ``versions`` of fne and of the
        installed `PACKAGES`; ``fne_source``: the git commit fne runs from (`_source`); ``cpu``: its model and which of `CPU_FLAGS` it has; ``threads``:
        torch's intra-op threads (when torch is loaded) and each loaded BLAS / OpenMP library's;
        ``cuda``: the device, CUDA and cuDNN versions (when torch is loaded and sees a GPU,
        and ``device``, where given, is one);
        ``options``; with ``verb``, ``command``.
    """
    torch = sys.modules.get("torch")
    out = {
        "machine": f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'})",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": _versions(), "fne_source": _source(), "cpu": _cpu(), "threads": _threads(torch),
    }
    on = None if device is None else torch.device(device) if torch is not None else None
    if torch is not None and torch.cuda.is_available() and (on is None or on.type == "cuda"):
        out["cuda"] = {"device": torch.cuda.get_device_name(on), "cuda": torch.version.cuda,
                       "cudnn": torch.backends.cudnn.version()}
    if options:
        merged: dict = {}
        for o in options:
            merged.update({k: v for k, v in dataclasses.asdict(o).items() if k not in merged})
        out["options"] = {k: _jsonable(v) for k, v in merged.items()}
    if verb is not None:
        data = getattr(options[0], "data", None) if data is None and options else data
        out["command"] = command_line(verb, data, *options, out=run_dir)
    return out


# What an extraction record keeps of the libraries that computed and decoded its rows.
ROW_VERSIONS = ("fne", "torch", "torchvision", "torchcodec", "timm", "pillow", "libjpeg-turbo")


def store_extractions(records: list[dict]) -> list[dict]:
    """Who computed a store's rows: its extraction records (`Store.records`) grouped by machine
    and versions, for a fit's metrics.json (its own `provenance` is the fit's, not the rows').

    Parameters
    ----------
    records : list of dict
        The store's run records; those of kind ``extract`` that computed rows count.

    Returns
    -------
    list of dict
        One entry per distinct (``device``, ``gpu``, ``cpu``, versions of `ROW_VERSIONS`): the
        images it computed (``images``) and its ``first`` and ``last`` dates, oldest first. A
        record written before records kept a provenance has None for what it lacks.
    """
    groups: dict[str, dict] = {}
    for r in records:
        if r.get("kind") != "extract" or not r.get("n_computed"):
            continue
        p = r.get("provenance") or {}
        who = {"device": r.get("device"), "gpu": (p.get("cuda") or {}).get("device"),
               "cpu": (p.get("cpu") or {}).get("model"),
               "versions": {n: (p.get("versions") or {}).get(n) for n in ROW_VERSIONS}}
        g = groups.setdefault(json.dumps(who, sort_keys=True), {**who, "images": 0, "first": None, "last": None})
        g["images"] += int(r["n_computed"])
        if p.get("date"):
            g["first"] = min(filter(None, (g["first"], p["date"])))
            g["last"] = max(filter(None, (g["last"], p["date"])))
    return sorted(groups.values(), key=lambda g: g["first"] or "")


def _versions() -> dict:
    """fne's version and each installed package of `PACKAGES`' (None: not installed): a loaded
    module's own `__version__` (torch's names its build, `2.14.1+cu130`), else the installed
    distribution's; nothing is imported. With Pillow loaded, also the libjpeg-turbo it decodes with."""
    from fne import __version__

    found = {"fne": __version__, "fne_code": code_hash()}
    for name in PACKAGES:
        module = sys.modules.get(MODULES.get(name, name))
        try:
            found[name] = getattr(module, "__version__", None) or _installed_version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    if "PIL" in sys.modules:
        from PIL import features

        found["libjpeg-turbo"] = features.version("libjpeg_turbo")
    return found


def _installed_version(name: str) -> str:
    """An installed package's version as its module names it, without importing it: the literal
    ``__version__`` of its ``version.py`` where it has one, which for torch and torchvision names
    the build (`2.14.1+cu130`) that the distribution's metadata (`2.14.1`) leaves out, so a run
    that never loads torch (a fit on cached rows) records what a run that loads it does; else the
    metadata's. Raises `importlib.metadata.PackageNotFoundError` where it is not installed."""
    dist = importlib.metadata.distribution(name)
    try:
        text = Path(dist.locate_file(f"{MODULES.get(name, name)}/version.py")).read_text()
    except (OSError, UnicodeDecodeError):
        return dist.version
    found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return found.group(1) if found else dist.version


# The folder holding the fne package: a git checkout's root where fne runs from one.
FNE_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def code_hash(package: Path = FNE_ROOT / "fne") -> str | None:
    """A hash of the fne package's .py sources, their paths and bytes (sha256, its first 16 hex
    digits): tells fne's code apart where its version (0.1.0 however the code changes) does not,
    without git (an installed fne, a copied folder); None where no source is found. Read once a
    process: about 3 ms for fne's 93 files, 1.1 MB.

    Parameters
    ----------
    package : Path
        The folder of the fne package.
    """
    h, files = hashlib.sha256(), sorted(package.rglob("*.py"))
    for f in files:
        h.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16] if files else None


@functools.cache
def _source(root: Path = FNE_ROOT) -> dict | None:
    """Where fne runs from a git checkout (its version, 0.1.0, names no state of the code): the
    ``commit`` checked out and whether tracked files were ``modified`` since (None where git could
    not say); None for an installed fne, or where git is absent or refuses the folder. `root`: the
    folder holding the fne package."""
    import subprocess

    if not (root / ".git").exists():
        return None

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return None
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(),
            "modified": bool(status.stdout.strip()) if status.returncode == 0 else None}


@functools.cache
def _cpu() -> dict:
    """The CPU's model name and which of `CPU_FLAGS` it has (Linux's /proc/cpuinfo; elsewhere
    the model as `platform` gives it and no flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": None}
    model, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags]}


def _threads(torch) -> dict:
    """torch's intra-op threads (when loaded) and each loaded BLAS / OpenMP library's threads."""
    from threadpoolctl import threadpool_info

    out = {"torch": torch.get_num_threads() if torch is not None else None}
    for lib in threadpool_info():
        out[f"{lib['internal_api']} {lib.get('version') or ''}".strip()] = lib["num_threads"]
    return out


def _jsonable(v):
    """An option's value as JSON holds it: tuples as lists, anything else unusual as its str."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)
