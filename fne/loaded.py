"""`fne.load`: a run folder's model as a classifier object, to score images again and again.

`fne predict` reads the model, builds the network and writes a CSV every call; a notebook, a
service or an active-learning loop wants the model loaded once and scores back as arrays. A
`fne fit` run's model (model.joblib) is applied through the backbone it was fitted on: the
images' pixels are `fne extract`'s (`fne.extraction.reader.ImageItems`, `reader.assembled`),
their rows the tap model's (`fne.extraction.taps.TapRunner`) at the store's precision and storage
dtype, the head `fne predict`'s (`fne.linear.features.class_scores`). A `fne train` run's network
(model.pt) is applied as `fne predict` applies it (`fne.training.apply`). The rows are kept in
memory only: no cache is read or written, and nothing is printed.
"""

from __future__ import annotations

import inspect
import os
import threading
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fne import option_handling as opts
from fne.backbones.fetch import loading
from fne.cache import parts
from fne.data.dataset import Dataset
from fne.data.hdf5 import ArraySource, check_arrays
from fne.data.images import upright_rgb
from fne.errors import DataError, FneError, expect_path
from fne.options import ForwardOptions, PredictOptions, StoreOptions
from fne.progress import first_few, say_skipped

# The keywords of `load`: where the network runs, images per forward pass, and where a weights
# file a `fne fit` model was fitted on lies now (declared in fne.options, as the verbs' are).
OPTIONS = ("device", "batch_size", "moved_weights")


@opts.keywords(StoreOptions, ForwardOptions, PredictOptions, only=OPTIONS)
def load(run_dir: str | Path, **options) -> LoadedModel:
    """The model of a `fne fit` run (model.joblib) or a `fne train` run (model.pt), loaded once,
    to score images from Python as often as wanted (`LoadedModel`).

    A `fne fit` model is refused here as `fne predict` refuses it: fitted on an earlier fne's
    pixels, on a weights file that changed or cannot be read (``moved_weights`` gives where it
    lies now), or on random weights this device would draw otherwise. Its backbone is built on
    the first call that scores images; a train run's network is built here. A fit run's rows are
    computed in memory, at the precision and storage dtype of the store it was fitted on: no cache
    is read or written (a row the cache holds is computed again, the same to float rounding).

    Parameters
    ----------
    run_dir : str or Path
        A `fne fit` or `fne train` run folder (or its model.joblib / model.pt).
    **options
        ``device``, ``batch_size`` and ``moved_weights``, as `fne predict` takes them.

    Returns
    -------
    LoadedModel
        ``classes_``, ``predict``, ``decision_function``, ``score``, and ``predict_proba`` for a logreg
        head or a train run's network.

    Raises
    ------
    FneError
        ``run_dir`` is no `fne fit` or `fne train` run (or a direct mode one, which trains
        nothing), or its model cannot be read or applied here (the refusals above).
    WeightsError
        The ImageNet weights of its backbone are not on this machine, and cannot be downloaded.
    """
    from fne.linear.predict import run_folder

    expect_path(run_dir, "run_dir")
    store, forward, given = opts.resolve(options, StoreOptions, ForwardOptions, PredictOptions, only=OPTIONS)
    device, moved = store.device, given.moved_weights
    folder = run_folder(run_dir)
    kind = _Network if not (folder / "model.joblib").is_file() and (folder / "model.pt").is_file() else _Head
    return LoadedModel(folder, kind(folder, device, forward.batch_size, moved), options)


class LoadedModel:
    """A run folder's model (`load`), scoring images in memory: scikit-learn's classifier methods.

    ``images``, for each method: one image file's path, a list of paths (or a numpy array or
    pandas Series of them), a PIL image or a list of them (their EXIF orientation applied, then
    8-bit RGB, as a file's decoding does), or a uint8 array N×H×W×3 (N×H×W or N×H×W×1: grey), as
    `fne extract` reads an HDF5 file's ``images`` (one H×W×3 image is refused: give it as
    ``image[None]``). A list may mix paths, PIL images and uint8 arrays H×W×3 (H×W, H×W×1: grey),
    each read as it is alone.
    Their pixels are those `fne extract` and `fne predict` make of the same images (the model's
    resize, crop and normalisation), so the scores are predictions.csv's. The images are read in
    this process, `batch_size` at a time, and their rows kept in memory (no cache). Images that
    cannot be read (files that are not there too, unless none is) are a DataError naming them,
    once the others are scored: its ``unreadable`` lists their positions in ``images``, its
    ``scores`` holds `decision_function`'s scores of all (NaN rows for those). `score` is the
    mean accuracy against labels, as scikit-learn's ``ClassifierMixin.score`` (labels compared as
    ``classes_`` are). Calls from several threads take turns (the network keeps a forward
    pass's outputs on itself). It pickles as its run folder and `load`'s keywords: unpickled (in
    another process too), it loads that run again. Those are its scikit-learn parameters
    (`get_params`, `set_params`); `sklearn.base.clone` loads the run again with them.

    Attributes
    ----------
    classes_ : ndarray of str
        The model's classes, in the order of the score columns (predictions.csv's ``score_<class>``).
    run_dir : Path
        The run folder.
    kind : str
        ``fit`` (a head on the backbone's rows) or ``train`` (a trained network).
    """

    def __init__(self, run_dir: Path, scorer: _Head | _Network, options: dict | None = None):
        self.run_dir, self._scorer, self._options = run_dir, scorer, dict(options or {})
        self.kind = "train" if isinstance(scorer, _Network) else "fit"
        self.classes_ = np.array(scorer.names)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        given = "".join(f", {k}={v!r}" for k, v in self._options.items())
        return f"fne.load({str(self.run_dir)!r}{given}): a `fne {self.kind}` run's {self._scorer.what}, " \
               f"{len(self.classes_)} classes"

    def get_params(self, deep: bool = True) -> dict:
        """`load`'s arguments that made this model, its defaults included: scikit-learn's estimator
        parameters (``run_dir``, ``device``, ``batch_size``, ``moved_weights``).

        Parameters
        ----------
        deep : bool
            Taken for scikit-learn's sake: the model holds no estimator of scikit-learn's to look into.

        Returns
        -------
        dict
            Each parameter's value.
        """
        defaults = {k: p.default for k, p in inspect.signature(load).parameters.items() if k != "run_dir"}
        return {"run_dir": self.run_dir, **defaults, **self._options}

    def set_params(self, **params) -> LoadedModel:
        """Load the run again with other `get_params` values (``device="cpu"``, another ``run_dir``).

        Parameters
        ----------
        **params
            Parameters of `get_params`; another name is a ValueError naming the valid ones.

        Returns
        -------
        LoadedModel
            This model, now the run of the new values (a refusal leaves it as it was).
        """
        unknown = sorted(set(params) - set(self.get_params()))
        if unknown:
            raise ValueError(f"invalid parameter(s) {', '.join(map(repr, unknown))} for fne.load's model; valid: "
                             f"{', '.join(self.get_params())}")
        if params:
            keywords = {**self._options, **{k: v for k, v in params.items() if k != "run_dir"}}
            new = load(params.get("run_dir", self.run_dir), **keywords)  # built first: a refusal changes nothing
            with self._lock:  # not in the middle of another thread's scoring
                self.__dict__.update({k: v for k, v in new.__dict__.items() if k != "_lock"})
        return self

    def __sklearn_clone__(self) -> LoadedModel:
        """`sklearn.base.clone`: the same run loaded again with the same keywords, an object of its
        own (loading is what fits it: there is no unfitted state to give, and no `fit`)."""
        return load(self.run_dir, **self._options)

    def __sklearn_tags__(self):
        """A classifier, fitted as loaded (scikit-learn's `is_classifier`, scorers)."""
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags(), requires_fit=False)

    def __reduce__(self):
        """Pickled as its run folder (absolute) and `load`'s keywords: unpickling loads the run again
        (in another process too: joblib, multiprocessing), where that folder can be read."""
        return _reload, (os.path.abspath(self.run_dir), self._options)

    def decision_function(self, images) -> np.ndarray:
        """The scores predictions.csv's ``score_<class>`` columns hold for `images`.

        Parameters
        ----------
        images : str, Path, PIL image, list of them, or ndarray
            As the class says.

        Returns
        -------
        ndarray
            float64 (N, classes) in ``classes_`` order: a logreg head's probabilities (not
            scikit-learn's log-odds), an svm head's decision margins (``[-m, m]`` with two
            classes), a train run's network's softmax.
        """
        names, parts, bad = _images(images)
        out = np.full((len(names), len(self.classes_)), np.nan)
        with self._lock:
            for where, dataset in parts:
                out[where], unread = self._scorer.scores(dataset)
                bad.update((where[i], why) for i, why in unread.items())
        if bad:
            raise _unreadable(names, bad, out)
        return out

    def predict(self, images) -> np.ndarray:
        """The class of each of `images`.

        Parameters
        ----------
        images : str, Path, PIL image, list of them, or ndarray
            As the class says.

        Returns
        -------
        ndarray of str
            The N highest-scoring classes (predictions.csv's ``predicted``; on a tie, the first
            in ``classes_``).
        """
        scores = self.decision_function(images)
        return self.classes_[np.argmax(scores, axis=1)] if len(scores) else self.classes_[:0]

    def score(self, images, y, sample_weight=None) -> float:
        """The mean accuracy of `predict` on `images` against the labels `y`, as scikit-learn's
        ``ClassifierMixin.score``.

        Parameters
        ----------
        images : str, Path, PIL image, list of them, or ndarray
            As the class says.
        y : sequence
            One label per image (N, or N×1), compared as ``classes_`` are: as text, a whole
            number as an integer (``3``, ``3.0`` and ``"3"`` are class ``3``), in Unicode NFC
            (`fne predict`'s comparison); a label that is no class is a miss.
        sample_weight : array-like, optional
            A weight per image, as scikit-learn's.

        Returns
        -------
        float
            The fraction of images predicted right (weighted).

        Raises
        ------
        ValueError
            `y` is not one label per image, or a label is missing (None, NaN, empty).
        DataError
            Images that cannot be read, as `decision_function` raises it.
        """
        from sklearn.metrics import accuracy_score

        truth = _labels(y)
        pred = self.predict(images)
        if len(truth) != len(pred):
            raise ValueError(f"y: {len(truth)} label(s) for {len(pred)} image(s); give one label per image")
        return float(accuracy_score(truth, [unicodedata.normalize("NFC", p) for p in pred],
                                    sample_weight=sample_weight))

    @property
    def predict_proba(self):
        """(N, classes) probabilities in ``classes_`` order: a logreg head's, or a train run's
        network's softmax (`decision_function`'s scores); an svm head has none (AttributeError)."""
        if not self._scorer.probabilities:
            raise AttributeError(f"{self.run_dir}: its {self._scorer.what} gives no probabilities (no predict_proba); "
                                 f"decision_function gives its margins")
        return self.decision_function


def _reload(run_dir: str, options: dict) -> LoadedModel:
    """A pickled `LoadedModel` again: `load` of its run folder with the same keywords."""
    return load(run_dir, **options)


def _labels(y) -> list[str]:
    """`LoadedModel.score`'s labels as class names (`label_text`), in NFC; a ValueError in one
    line for a missing one or a shape other than N or N×1."""
    from fne.data.labels import label_text

    a = np.asarray(y, dtype=object)
    if a.ndim == 2 and a.shape[1] == 1:  # a column: Keras's y, a one-column DataFrame's values
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"y: expected one label per image (shape N or N×1), got shape {a.shape}")
    text = [label_text(v) for v in a]
    gap = next((i for i, t in enumerate(text) if t is None), None)
    if gap is not None:
        raise ValueError(f"y[{gap}]: no label ({a[gap]!r}); give each image its class")
    return [unicodedata.normalize("NFC", t) for t in text]


def _images(images) -> tuple[list[str], list[tuple[list[int], Dataset]], dict[int, str]]:
    """`LoadedModel`'s ``images``: what messages call each, the Datasets to score (each with the
    positions of its images among them), and the images that are not there (position -> why);
    a TypeError or ValueError in one line for anything else, a DataError where none is there."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    if not isinstance(images, np.ndarray) and hasattr(images, "to_numpy"):  # a pandas Series or Index of paths
        images = images.to_numpy()
    if isinstance(images, np.ndarray) and images.dtype.kind in "OSU":  # an array of paths
        images = images.tolist()
    if isinstance(images, np.ndarray):
        if images.ndim == 3 and images.shape[-1] in (3, 4):  # one H×W×3 image would be H grey images
            raise ValueError(f"images: an array of shape {images.shape} reads as {images.shape[0]} grey images "
                             f"{images.shape[-1]} pixels wide; give one colour image as images[None] (1×H×W×3)")
        try:
            check_arrays(images.shape, images.dtype, images.shape[:1])
        except ValueError as e:
            raise ValueError(f"images: {e}") from None
        where = list(range(len(images)))
        return [f"images[{i}]" for i in where], [(where, _in_memory(images, where))], {}
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images: expected a path, a list of paths, a PIL image or a list of them, or a uint8 array "
                        f"N×H×W×3, not {type(images).__name__}")
    names = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"images[{i}]" for i, x in enumerate(images)]
    files = [i for i, x in enumerate(images) if isinstance(x, (str, os.PathLike))]
    arrays = {i: _one_image(x, i) for i, x in enumerate(images) if not isinstance(x, (str, os.PathLike))}
    parts, missing = _files([names[i] for i in files]) if files else ([], {})
    if files and len(missing) == len(names):
        others = f" (none of the {len(names)} images is there)" if len(names) > 1 else ""
        raise DataError(f"{names[0]}: no such file{others}")
    parts = [([files[j] for j in at], dataset) for at, dataset in parts]
    if arrays:
        parts.append((list(arrays), _in_memory(list(arrays.values()), list(arrays))))
    return names, parts, {files[j]: why for j, why in missing.items()}


def _one_image(x, i: int) -> np.ndarray:
    """Item `i` of a list of images, a PIL image or an array, as the uint8 H×W×3 (H×W: grey)
    pixels its single form reads as; a TypeError or ValueError naming it for anything else."""
    if isinstance(x, Image.Image):
        from fne.extraction.reader import naming

        with naming(f"images[{i}]"):  # a depth note names the image, as a file's names its path
            return np.asarray(upright_rgb(x))
    if not isinstance(x, np.ndarray):
        raise TypeError(f"images[{i}]: expected a path, a PIL image or a uint8 array H×W×3, not {type(x).__name__}")
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] in (1, 3))):  # N×H×W grey or a batch: which?
        raise ValueError(f"images[{i}]: an array in a list is one image, H×W×3 (H×W or H×W×1: grey), not of "
                         f"shape {x.shape}; give several images as one array N×H×W×3, or a list of single ones")
    try:
        check_arrays(x[None].shape, x.dtype, (1,))
    except ValueError as e:
        raise ValueError(f"images[{i}]: {e}") from None
    return x


def _files(paths: list[str]) -> tuple[list[tuple[list[int], Dataset]], dict[int, str]]:
    """The Dataset of the image files `paths` that are there (with their positions among them),
    and those that are not (position -> why), which are read as unreadable files are."""
    for p in paths:
        if os.path.isdir(p):
            raise DataError(f"{p}: is a folder; give image files (fne.predict scores a folder's images)")
    missing = {i: "no such file" for i, p in enumerate(paths) if not os.path.exists(p)}
    where = [i for i in range(len(paths)) if i not in missing]
    there = [paths[i] for i in where]
    dataset = Dataset(name="images", ids=there, labels=None, splits=None, classes=[], sources=there)
    return ([(where, dataset)] if there else []), missing


def _in_memory(arrays, where: list[int]) -> Dataset:
    """Images held in memory (an array, or a list of H×W×3 or H×W arrays of any sizes: an
    `ArraySource` indexes either) as a Dataset, each named ``images[i]`` by its position `where`
    among the images given."""
    return Dataset(name="images", ids=[f"images[{i}]" for i in where], labels=None, splits=None, classes=[],
                   sources=list(range(len(arrays))), array_source=ArraySource(array=arrays))


def _unreadable(names: list[str], bad: dict[int, str], scores: np.ndarray) -> DataError:
    """The DataError of images that could not be read (position -> why; `names`: what messages
    call each image given), naming the first few, with the others' scores: ``unreadable`` (their
    positions in the images given, ascending) and ``scores`` (every image's, NaN rows for those),
    so that a caller can keep the rest."""
    scores[list(bad)] = np.nan
    e = DataError(f"{len(bad)} of {len(names)} image(s) could not be read: "
                  f"{first_few([f'{names[i]} ({why})' for i, why in sorted(bad.items())], 3)}; the error's "
                  f"`scores` holds the others' scores (NaN rows for these), its `unreadable` their positions")
    e.unreadable, e.scores = sorted(bad), scores
    return e


class _Head:
    """A `fne fit` model: the backbone's taps -> the layers its head was fitted on -> its scores."""

    def __init__(self, run_dir: Path, device: str, batch_size: int | str, moved_weights: str | None):
        from fne.backbones.catalog import fitted_weights_only, refuse_unobtainable
        from fne.devices import check_device, resolve_batch_size, resolve_decode, resolve_device
        from fne.extraction.taps import TapRunner
        from fne.linear.predict import load_model, pinned_spec, scored_classes

        model = load_model(run_dir)
        check_device(device)
        spec = pinned_spec(model, str(run_dir), device, moved_weights)  # fne predict's refusals
        self.instead = fitted_weights_only("load the run again")  # what a refusal offers: load takes no weights
        with loading(self.instead):
            refuse_unobtainable(spec.arch, spec.weights)
        s = model["store"]
        self.pipe, self.layers = model["pipeline"], model["layers"]
        self.names = scored_classes(model)
        self.probabilities = hasattr(self.pipe, "predict_proba")  # as `class_scores` asks
        self.what = f"{model['features']}+{model['head']} head"
        self.dev = resolve_device(device)
        self.jpegs = resolve_decode(spec.decode, self.dev) == "device"  # rows of device-decoded JPEGs
        if self.jpegs and spec.prep_key() != s["preprocess"]:  # as `open_rows` refuses to extract them
            raise FneError(f"{run_dir} was fitted on rows of JPEGs decoded on the device by another library than "
                           f"this machine's ({s['preprocess']}, here {spec.prep_key()}): install that library to "
                           f"score images with it")
        self.prep, self.dtype = spec.preprocess(), s["storage_dtype"]
        self.taps = [(t.name, t.channels) for t in spec.backbone().taps]
        self.batch = resolve_batch_size(batch_size, self.dev, self.prep.size, s["precision"], self.prep.views)
        out = torch.float16 if self.dtype == "float16" else torch.float32
        self.runner = TapRunner(spec, self.dev, s["precision"], out)  # built by its first call

    def scores(self, dataset: Dataset) -> tuple[np.ndarray, dict[int, str]]:
        """The scores of `dataset`'s images (NaN rows for those it cannot read), and those
        (position -> why)."""
        from fne.extraction import reader
        from fne.linear.features import class_scores

        out = np.full((len(dataset), len(self.names)), np.nan)
        bad: dict[int, str] = {}
        if not len(dataset):
            return out, bad
        items = reader.ImageItems(dataset, list(range(len(dataset))), self.prep, raw_jpeg=self.jpegs)
        loader = torch.utils.data.DataLoader(items, batch_size=self.batch, collate_fn=reader.collate)
        cols = parts.columns(self.taps)
        notes: list[tuple[str, str]] = []  # what decoding an image warned of (a float image read black)
        batches = reader.assembled(iter(loader), self.dev, self.prep, jpegs=self.jpegs)
        try:
            for batch, (x, idx, _), unread in batches:
                bad.update((i, why) for i, _, why in unread)
                notes += batch["notes"]
                if x is None:
                    continue
                with loading(self.instead):  # the first call builds the network: its download's refusal too
                    rows, event = self.runner(x)
                if event is not None:
                    event.synchronize()
                # as the store keeps them (float16 that overflows refused), then as `Store.read_rows` reads them
                rows = parts.side_by_side(rows.numpy(), len(idx), self.prep.views, self.taps, self.dtype, "images")
                X = np.concatenate([rows[:, :, slice(*cols[la])] for la in self.layers], axis=2, dtype=np.float32)
                out[idx] = class_scores(self.pipe, X)
        finally:
            batches.close()
            say_skipped(notes, skipped=False)  # one line for all such images, as `fne extract` says them
        return out, bad


class _Network:
    """A `fne train` run's network (`fne.training.apply`), built once."""

    def __init__(self, run_dir: Path, device: str, batch_size: int | str, moved_weights: str | None):
        from fne.devices import check_device
        from fne.linear.predict import no_moved_weights
        from fne.training.apply import load_network

        check_device(device)
        if moved_weights is not None:
            raise no_moved_weights(run_dir)
        self.net, self.batch = load_network(run_dir, device), batch_size
        self.names = list(self.net.run["classes"])
        self.probabilities, self.what = True, f"{self.net.run['mode']} {self.net.run['arch']} network"

    def scores(self, dataset: Dataset) -> tuple[np.ndarray, dict[int, str]]:
        """As `_Head.scores`."""
        from fne.training.apply import apply_network

        if not len(dataset):
            return np.empty((0, len(self.names))), {}
        unread: dict[str, str] = {}
        try:
            with warnings.catch_warnings():  # `LoadedModel`'s DataError names them, as a fit run's does
                warnings.filterwarnings("ignore", message="skipped ", module="fne.training.epochs")
                _, scores, idx, _ = apply_network(self.net, dataset, batch_size=self.batch, workers=0,
                                                  progress=False, name="images", skipped=unread)
        except DataError:  # none readable
            if not unread:
                raise
            idx, scores = [], None
        out = np.full((len(dataset), len(self.names)), np.nan)
        if len(idx):
            out[idx] = scores
        return out, {i: unread[x] for i, x in enumerate(dataset.ids) if x in unread}
