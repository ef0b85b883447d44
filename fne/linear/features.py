"""The features layer: between DATA and every verb that consumes rows (fit, predict, export,
advise, run).

It owns store identity (via `fne.cache.spec.StoreSpec`: which store holds the rows, found whatever
precision they were extracted at), the image keys (via the data root's manifest, so an
unchanged folder is only stat'ed), extraction of missing rows on request, and reading rows
chunk by chunk (`Rows`).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fne.backbones import fits
from fne.backbones import registry as backbones
from fne.cache.fs import is_url
from fne.cache.spec import DEFAULT_DTYPE, StoreSpec, earlier_pixels
from fne.cache.store import Store, cache_root, no_such_root
from fne.cache.upkeep import new_cache_removed_on_failure
from fne.data.containers import takes_label_key
from fne.data.dataset import Dataset
from fne.data.datasets import check_listable, load_dataset
from fne.data.manifest import attach_keys
from fne.errors import FneError
from fne.linear.embedding import make_transform
from fne.metrics import labels_fingerprint
from fne.option_handling import named, refusal
from fne.options import ForwardOptions
from fne.progress import said, say_skipped


def parse_features(spec: str, backbone: backbones.Backbone) -> tuple[list[str], str]:
    """`fne` | `fne:L1,L2` -> (layers, "fne"); `last` | `fc7` | `L1,L2` -> (layers, "l2")."""
    spec = spec.strip()
    layers = [t.name for t in backbone.taps]
    if spec == "fne":
        return layers, "fne"
    # what to give instead: this backbone's layers (fc6 and fc7 are VGG's)
    takes = f"fne, last (here {backbone.last}), fne:LAYER,… or layer names: {', '.join(layers)}"
    if spec == "auto":  # fit's model selection (fne.linear.selection): no layers to read
        raise refusal(lambda py: f"{named('features', py, 'auto', plain=True)} is `fne fit`'s cross-validated "
                                 f"choice; here give {takes}")
    kind, given = "l2", spec
    if spec.startswith("fne:"):
        kind, spec = "fne", spec[4:]
    names = [backbone.last if s.strip() == "last" else s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise refusal(lambda py: f"bad {named('features', py, given)}; give {takes}")
    for n in names:
        if n not in layers:  # a typo (`lst`), or VGG's fc7 asked of another backbone
            close = [c for c in difflib.get_close_matches(n.lower(), ["fne", "last", *layers], n=1) if c != n]
            why = "the full-network embedding is no layer to list" if n == "fne" else f"{backbone.name} has no layer {n!r}"
            raise refusal(lambda py, n=n, why=why, close=close: (
                f"bad {named('features', py, n)}: {why}" + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; give {takes}"))
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # its columns twice: weighted double in the embedding, without a word
        said_last = "last" in [s.strip() for s in spec.split(",")]
        alias = f" (last is {backbone.last} here)" if said_last and backbone.last in twice else ""
        raise refusal(lambda py: f"bad {named('features', py, given)}: {', '.join(twice)} named twice{alias}; "
                                 f"give each layer once")
    return names, kind


@dataclass
class Source:
    """What a verb reads: DATA's readable images, the store holding their rows, and how it was found."""

    dataset: Dataset
    store: Store
    spec: StoreSpec  # pinned to the store's precision and storage dtype
    extract_seconds: float | None  # measured, when this call extracted missing rows; None: cached
    labels_fingerprint: str | None = None  # of DATA's listing as given, unreadable images included
    listing: Dataset | None = None  # DATA as listed, unreadable images included (keys attached); None: `dataset`
    kept: np.ndarray | None = None  # `dataset`'s images' indices in `listing`; None: every one
    skipped: dict[str, str] = field(default_factory=dict)  # the unreadable images left out -> why

    def listed(self) -> Dataset:
        """DATA's listing, unreadable images included: what `fne fit` splits, as `fne train` does."""
        return self.dataset if self.listing is None else self.listing

    @property
    def n_skipped(self) -> int:
        """DATA's images left out as unreadable (each named in a warning)."""
        return len(self.skipped)


def load_data(data: str | Path | Dataset, cache: str | None, label_key: str | None = None) -> Dataset:
    """DATA as a Dataset whose content keys come from the manifest (hashing only new files);
    `label_key`: `fne.data.datasets.load_dataset`'s."""
    return attach_keys(load_dataset(data, label_key=label_key, cache=cache), cache)


def extract_command(data, spec: StoreSpec) -> str:
    """The `fne extract` line that computes what `spec` reads, quoted for a POSIX shell (a DATA
    folder `my images`, a glob of shards that fne expands itself)."""
    from shlex import quote

    parts = [f"fne extract {quote(str(data))} --arch {quote(spec.arch)} --weights {quote(str(spec.weights))}"]
    if spec.weights == "random" and spec.weights_seed != 0:
        parts.append(f"--seed-weights {spec.weights_seed}")
    if spec.crop != "center":
        parts.append(f"--crop {spec.crop}")
    if spec.image_size is not None:
        parts.append(f"--image-size {spec.image_size}")
    if spec.precision != "auto":
        parts.append(f"--precision {spec.precision}")
    if spec.storage_dtype not in ("auto", DEFAULT_DTYPE):
        parts.append(f"--storage-dtype {spec.storage_dtype}")
    if spec.decode == "device":
        parts.append(f"--decode {spec.decode}")
    if spec.cache:
        parts.append(f"--cache {quote(str(spec.cache))}")
    return " ".join(parts)


def open_rows(data: str | Path | Dataset, spec: StoreSpec, verb: str, extract_missing: bool = False,
              extraction: ForwardOptions | None = None,
              check: Callable[[Dataset], None] | None = None, label_key: str | None = None,
              fitted: tuple[str, str] | None = None, instead: Callable[[bool], str] | None = None) -> Source:
    """DATA's images with rows: found in the cache, or extracted first when `extract_missing`.

    `check(dataset)` raises for a dataset the verb cannot use: it is called before the cache is
    read or any image extracted, and again once the unreadable images are left out. `label_key`:
    where DATA's labels are (tar shards, Parquet; `fne.data.datasets.load_dataset`). Without
    `extract_missing`, a local cache folder that does not exist is said before DATA's images are
    hashed (tar shards, Parquet and hf: DATA: before they are listed, as their listings and
    downloads are kept in the cache): reading makes no cache (a mistyped --cache is not left behind).
    With `extract_missing`, a call that makes the cache folder and fails removes it again where
    it holds only what the call left (`fne.cache.upkeep.remove_failed_new_cache`: manifests and
    free locks, no row), as `fne extract` does. The line saying that rows are extracted names the
    cache and the store they go to; `fitted` (predict: the run folder and the cache its model was
    fitted from) adds that cache where it is another. `instead(python)`: what else the user can do
    where the weights cannot be had, for a verb that takes no other weights (`fne.backbones.fetch.loading`)."""
    root = cache_root(spec.cache)
    with new_cache_removed_on_failure(root, applies=extract_missing):  # also Ctrl-C
        return _open_rows(data, spec, verb, extract_missing, extraction, check, label_key, root, fitted, instead)


def _open_rows(data: str | Path | Dataset, spec: StoreSpec, verb: str, extract_missing: bool,
               extraction: ForwardOptions | None, check: Callable[[Dataset], None] | None,
               label_key: str | None, root, fitted: tuple[str, str] | None = None,
               instead: Callable[[bool], str] | None = None) -> Source:
    """`open_rows`' work (`root`: the cache's, `cache_root`'s)."""
    absent = not extract_missing and no_such_root(root)
    where = f"not in the cache {root}, a folder that does not exist"
    if absent and takes_label_key(data):
        check_listable(data)  # a DATA it could never list is said first (a file that is no tar)
        raise _not_cached(data, spec, verb, f"the images of {data} are {where}")
    dataset = load_dataset(data, label_key=label_key, cache=spec.cache)
    if check is not None:
        check(dataset)
    if absent:
        raise _not_cached(data, spec, verb, f"the {len(dataset)} images of {data} are {where}")
    keys = attach_keys(dataset, spec.cache).keys()
    labelled = labels_fingerprint(keys, dataset.labels)  # before unreadable images are left out, as train's
    store = spec.find(keys, verb, (extraction or ForwardOptions()).progress)
    missing = store.missing(keys)
    seconds, unread = None, {}
    if verb != "predict" and (extract_missing or not missing):  # each call, rows computed or not; not predict's:
        fits.note_trained_size(spec.arch, spec.weights, spec.image_size)  # its rows are at the fitted model's size
    if missing:
        who = f"fne.{verb}" if verb == "load_rows" else f"fne {verb}"
        if not extract_missing:  # the command fills the store read where it holds some rows, as --extract does
            distinct = len(set(keys))  # copies of one image are one row: say so where DATA lists more
            shown = spec.pinned(store) if len(missing) < distinct else spec
            of = f"{distinct} distinct" if distinct < len(keys) else distinct
            raise _not_cached(data, shown, verb, f"{len(missing)} of {of} images of {data} are not in the "
                                                 f"cache {store.path}{earlier_pixels(store, missing, spec.cache)}")
        extraction = extraction or ForwardOptions()
        from fne.backbones.fetch import loading
        from fne.handoff import imported

        imported("fne.extraction.extract")  # torch's import, a Ctrl-C held over it (fit, predict)
        from fne.extraction.extract import (
            CALLER_SAYS,
            SIZE_SAID_BY_CALLER,
            SKIPS_SAID_BY_CALLER,
            extract,
        )

        pinned = spec.pinned(store)
        if pinned.prep_key() != store.meta["preprocess"]:  # device-decoded by a library this machine lacks
            made, here = store.meta["preprocess"], pinned.prep_key()
            raise refusal(lambda py: f"{len(missing)} images of {data} are missing from store {store.path.name}, "
                                     f"whose rows were decoded on the device by another library than this "
                                     f"machine's ({made}, here {here}): install that library, or extract them "
                                     f"with {named('decode', py, 'pil', plain=True)}", FneError)
        said = SKIPS_SAID_BY_CALLER.set(True)  # named below, with those an earlier run found unreadable
        size_said = SIZE_SAID_BY_CALLER.set(True)  # above (or, by fne predict, not at all)
        says = CALLER_SAYS.set(f"{who}: extracting {len(missing)} images missing from the cache {root} into its "
                               f"store {store.path.name}{_fitted_elsewhere(root, fitted)}")
        try:
            with loading(instead):  # extract's refusal of weights it cannot have, in the verb's words
                r = extract(dataset, pinned, **asdict(extraction))
        finally:
            CALLER_SAYS.reset(says)
            SKIPS_SAID_BY_CALLER.reset(said)
            SIZE_SAID_BY_CALLER.reset(size_said)
        seconds, unread = r.seconds, r.skipped  # unread: also those with no key to record (an OSError)
        store.refresh()
    bad, index = store.bad(), store.index()  # a row computed on a retry outranks an old bad record
    keep = [i for i, k in enumerate(keys) if k in index or (k not in bad and dataset.ids[i] not in unread)]
    left = {dataset.ids[i]: bad[k] for i, k in enumerate(keys) if k not in index and k in bad}
    skipped = {**left, **{n: w for n, w in unread.items() if n not in left}}
    say_skipped(skipped.items(), stacklevel=3)
    listing, kept, dropped = None, None, {}
    if len(keep) < len(keys):
        gone = sorted(set(range(len(keys))) - set(keep))
        dropped = {dataset.ids[i]: skipped.get(dataset.ids[i], "unreadable") for i in gone}
        listing, kept, dataset = dataset, np.array(keep, dtype=np.int64), dataset.subset(keep)
    if len(dataset) == 0:
        raise FneError(f"{data}: no readable images")
    if check is not None and len(keep) < len(keys):
        check(dataset)
    return Source(dataset, store, spec.pinned(store), seconds, labelled, listing, kept, dropped)


def _fitted_elsewhere(root, fitted: tuple[str, str] | None) -> str:
    """'; RUN was fitted from rows of another cache, C (...)' where `fitted` (a run folder, the
    cache its model was fitted from) names another cache than `root`; else ''."""
    if fitted is None:
        return ""
    run, theirs = fitted
    if is_url(theirs) or is_url(root):
        same = str(theirs).rstrip("/") == str(root).rstrip("/")
    else:
        same = Path(theirs).expanduser().resolve() == Path(root).expanduser().resolve()
    if same:
        return ""
    if not is_url(theirs) and not Path(theirs).expanduser().is_dir():  # a run folder from another machine
        return f"; {run} was fitted from rows of another cache, {theirs}, which is not here"
    cache = said(lambda py: named("cache", py, str(theirs), plain=True))
    return f"; {run} was fitted from rows of another cache, {theirs} ({cache} reads that one)"


def _not_cached(data, spec: StoreSpec, verb: str, what: str) -> FneError:
    """The error of rows `what` says are not in the cache: the command that adds them, or the
    verb's extract_missing (--extract) in the words of the API called."""
    def text(py: bool) -> str:
        extract = named("extract_missing", py, True)
        return (f"{what}; add them with:\n  {extract_command(data, spec)}\n(or pass {extract}, to let "
                f"`fne{'.' if py else ' '}{verb}` run the network)")

    return refusal(text, FneError)


# ----------------------------------------------------------------- rows
def class_scores(model, X: np.ndarray) -> np.ndarray:
    """(n, views, D) -> (n, classes): probabilities (logreg) or margins, averaged over views.

    `model` is a fitted pipeline on store rows, or a bare head on embedded rows.
    """
    n, v, d = X.shape
    flat = X.reshape(n * v, d)
    s = model.predict_proba(flat) if hasattr(model, "predict_proba") else model.decision_function(flat)
    if s.ndim == 1:  # binary margins
        s = np.stack([-s, s], axis=1)
    return s.reshape(n, v, -1).mean(axis=1)


class Rows:
    """Store rows read in chunks that each touch few parts, so no head ever holds every float row.

    In-memory heads (svm, logreg) get the embedding built chunk by chunk (int8 for FNE, a
    quarter of the float32 rows); SGD heads never hold more than one chunk.
    """

    def __init__(self, store: Store, keys: list[str], layers: list[str], chunk: int = 1024,
                 faint_said: set[str] | None = None):
        if chunk < 1:
            raise refusal(lambda py: f"bad {named('stream_chunk', py, chunk)}: must be >= 1")
        # chunk counts rows (image views): a ten-crop store reads a tenth as many images at a time
        self.store, self.keys, self.layers = store, keys, layers
        # the layers `_warn_underflow` named: once per fit, not per split or candidate (share the set)
        self.faint_said = set() if faint_said is None else faint_said
        self.chunk = max(1, chunk // store.views)

    def chunks(self, idx: np.ndarray, rng: np.random.Generator | None = None):
        """(positions in idx, (n, views, D) float32) per chunk, part by part; shuffled when given rng."""
        index = self.store.index()
        order = np.array(sorted(range(len(idx)), key=lambda p: index[self.keys[idx[p]]]), dtype=np.int64)
        blocks = [order[s:s + self.chunk] for s in range(0, len(order), self.chunk)]
        if rng is not None:  # blocks in random order, rows shuffled within each
            rng.shuffle(blocks)
            blocks = [rng.permutation(b) for b in blocks]
        for b in blocks:
            yield b, self.store.read_rows([self.keys[i] for i in idx[b]], self.layers)

    def fit_embedding(self, kind: str, idx: np.ndarray):
        """The transform fitted on rows idx only (FNE statistics accumulate chunk by chunk)."""
        embed = make_transform(kind)
        if kind != "fne":  # L2 normalisation is stateless
            _, X = next(self.chunks(idx[:1]))
            return embed.fit(X[:, 0])
        for _, X in self.chunks(idx):
            embed.partial_fit(X.reshape(-1, X.shape[2]))
        return embed

    def embedded(self, embed, idx: np.ndarray) -> np.ndarray:
        """(len(idx) * views, D): rows in idx order, an image's views consecutive."""
        v, f16 = self.store.views, self.store.meta["dtype"] == "float16"
        out = peak = None
        for b, X in self.chunks(idx):
            if f16:  # each feature's largest |x| (`_warn_underflow`), with no temporary of the chunk's size
                m = np.maximum(X.max(axis=(0, 1)), -X.min(axis=(0, 1)))
                peak = m if peak is None else np.maximum(peak, m)
            Z = embed.transform(X.reshape(-1, X.shape[2])).reshape(len(b), v, -1)
            if out is None:
                out = np.empty((len(idx), v, Z.shape[2]), dtype=Z.dtype)
            out[b] = Z
        if out is None:  # no rows asked for: the embedding's width, from one row of zeros
            dims = dict(self.store.taps)
            Z = embed.transform(np.zeros((1, sum(dims[la] for la in self.layers)), dtype=np.float32))
            return np.empty((0, Z.shape[1]), dtype=Z.dtype)
        if not out.any():  # nothing to learn from: a head would fail deep in scikit-learn
            layers, path = ", ".join(self.layers), self.store.path
            raise refusal(lambda py: f"every row of {layers} in {path} is zero once embedded: the network's "
                                     f"activations there are zero or constant (random weights, a dead layer) or too "
                                     f"small for float16 storage; choose other {named('features', py)}, or extract "
                                     f"with {named('storage_dtype', py, 'float32', plain=True)}", FneError)
        self._warn_underflow(peak)
        return out.reshape(len(idx) * v, -1)

    def _warn_underflow(self, peak: np.ndarray) -> None:
        """A warning naming the layers whose stored activations, not all zero, are all so small that
        float16 storage kept at most 5 bits of them (below 2**-19: subnormal steps of 2**-24), too
        few for a head to learn from (random weights: efficientnet_lite0's head, ~6e-8, 1 bit); each layer
        once per `faint_said` (a fit's: not once per split, candidate or final model)."""
        if peak is None:  # float32 rows, or none
            return
        dims, lo, faint = dict(self.store.taps), 0, []
        for la in self.layers:
            top = float(peak[lo:lo + dims[la]].max())
            lo += dims[la]
            if 0 < top < 2 ** -19 and la not in self.faint_said:
                self.faint_said.add(la)
                faint.append(f"{la} (largest |x| {top:.1e}, {int(np.log2(top / 2 ** -24)) + 1} bit(s))")
        if faint:
            warnings.warn(f"the activations of {', '.join(faint)} in {self.store.path} are too small for float16 "
                          f"storage, which kept at most 5 bits of each: heads learn little from them (random "
                          f"weights?); extract with --storage-dtype float32", stacklevel=2)

    def scores(self, pipe, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), len(pipe.classes_)))
        for b, X in self.chunks(idx):
            out[b] = class_scores(pipe, X)
        return out
