"""`fne advise`: which transfer-learning experiment suits DATA, from measured quantities.

The rule is the course's (lecture 000, "When and what type of transfer learning to use?"):
the two factors are the size of the target training set and the similarity between the
target images and the data of the source task.

| target set | similar to source                      | different from source                        |
|------------|----------------------------------------|----------------------------------------------|
| small      | features of the frozen network + the   | a simple classifier on features that include |
|            | simplest classifier; no fine-tuning    | the early layers (full-network embedding)    |
|            | (it would overfit)                     |                                              |
| large      | fine-tune the pretrained network       | train the whole network, initialised from    |
|            |                                        | the source weights (fine-tune all layers)    |

Both factors are measured, never assumed:

* **size** = training images per class (the train split when DATA has one, else the share
  `1 - test_size` that `fne fit` trains on: its first split, or `train_per_class`). The median over
  classes is compared with `LARGE_PER_CLASS` (200): below it the set is *small*. Within a
  factor of two of it (100-400) the advice says it is borderline.
* **similarity** = how confidently the backbone's own source classifier (ImageNet, 1000
  classes) recognises the target images, on a stratified sample (default 200 images):
  the mean maximum softmax probability (MSP) and the mean entropy of the softmax divided
  by log(1000). Images of the kind the source saw (natural photos of ImageNet-like objects)
  get confident, peaked predictions; unrelated images (digits, textures, medical scans)
  get flat ones (Hendrycks & Gimpel 2017 use the same MSP signal to flag out-of-distribution
  inputs). The set is *similar* when the mean MSP is at least `SIMILAR_MSP` (0.30), and
  borderline within ±0.10 of it. With `--weights random` the classifier knows no source
  task and similarity cannot be judged: the advice then rests on size alone and says so.

The thresholds are conventions of this tool, not numbers from the course. The MSP threshold
sits between what efficientnet_lite0 (ImageNet) measured on digits (0.08: different) and on
the photo sets flowers12 (0.42) and pets37 (0.62: similar, ImageNet has many pet breeds); a
model's MSP on its own validation set is typically 0.7-0.8. The size threshold reflects
the usual experience that fine-tuning a VGG/EfficientNet-sized network on fewer than a few
hundred images per class overfits. Both are constants of
fne.reporting.advice_rules (with the rule itself, `decide`), printed with every advice.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fne import verb_module
from fne.errors import FneError
from fne.metrics import data_identity
from fne.option_handling import keywords, named, refusal
from fne.options import AdviseOptions, DataOptions, ForwardOptions, StoreOptions
from fne.progress import first_few
from fne.reporting.advice_rules import (
    LARGE_PER_CLASS,
    MSP_BORDER,
    RANDOM_UNJUDGED,
    SIMILAR_MSP,
    confidence,
    decide,
)
from fne.reporting.advice_text import format_advice, runnable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fne.cache.spec import StoreSpec
    from fne.data.dataset import Dataset

# ------------------------------------------------------------------ measuring


def training_images_per_class(dataset: Dataset, test_size: float = 0.25, train_per_class: int | None = None,
                              seed: int = 0, unreadable: Sequence[str] = (), cache: str | None = None) -> dict:
    """Per-class training images of the first split `fne fit` draws with these settings. Drawn as
    fit draws it (`fne.linear.fit._splits`): DATA's own train split, else its first random
    split over DATA's listing, unreadable images included, copies of one image (one content key,
    from the manifest in `cache`) on one side (`fne.data.splits.make_splits`); then the images
    `unreadable` names are left out of it (`readable_parts`). Only those: where the advice read a
    sample of DATA, its other images count as readable. Where fit cannot draw the split, each
    class's share, and ``refused``: fit's error, in the caller's words.

    Parameters
    ----------
    dataset : Dataset
        DATA's listing, unreadable images included.
    test_size, train_per_class, seed
        fit's options of the same names.
    unreadable : sequence of str
        The ids of the images found unreadable.
    cache : str, optional
        The cache whose manifest holds DATA's content keys (only new files are hashed).

    Returns
    -------
    dict
        ``median``, ``mean``, ``min``, ``max``, ``total``, ``basis`` (in words), ``refused``.
    """
    from fne.data.manifest import attach_keys
    from fne.data.splits import make_splits, readable_parts
    from fne.progress import said

    dataset.require_labels("fne advise")
    bad, refused = set(unreadable), None
    kept = [i for i, k in enumerate(dataset.ids) if k not in bad]
    readable = [dataset.labels[i] for i in kept]
    if dataset.has_split:
        train = dataset.in_train()
        counts = Counter(dataset.labels[i] for i in kept if train[i])
        basis = "train split" + (f" (a cap of {train_per_class} training images per class is not applied to it, as fne fit does not)"
                                 if train_per_class is not None else "")
    else:
        basis = (f"random splits, {1 - test_size:.0%} of each class" if train_per_class is None else
                 f"random splits, {train_per_class} of each class") + f" for training (fne fit's first split, seed {seed})"
        try:  # a class too small to split: the share of each class instead (the advice names such classes)
            keys = attach_keys(dataset, cache).keys()  # a file that cannot be read: DataError, as fit's
            y = dataset.label_indices()
            drawn = make_splits(dataset, y, 1, test_size, train_per_class, seed, keys)
            parts, _ = readable_parts(dataset.classes, y, drawn, np.array(kept, dtype=np.int64) if bad else None)
            counts = Counter(readable[i] for i in parts[0][0])
        except FneError as e:
            words = {True: str(e), False: getattr(e, "cli", str(e))}  # Python's, the command line's
            refused = said(words.get)
            counts = Counter({c: max(1, math.floor(n * (1 - test_size))) for c, n in Counter(readable).items()})
            counts = Counter({c: min(n, train_per_class or n) for c, n in counts.items()})
    per = np.array([counts.get(c, 0) for c in dataset.classes], dtype=float)
    return {"median": float(np.median(per)), "mean": float(per.mean()), "min": int(per.min()),
            "max": int(per.max()), "total": int(per.sum()), "basis": basis, "refused": refused}


def _unsplittable(dataset) -> str | None:
    """Why no method can be scored on DATA (a class with a single image and no predefined split:
    a stratified split needs one image per class on each side), or None."""
    if dataset.has_split:
        return None
    single = sorted(c for c, n in Counter(dataset.labels).items() if n < 2)
    if not single:
        return None
    return (f"{len(single)} class(es) have a single image ({', '.join(single[:5])}): no method can be trained "
            f"and tested on them (a stratified split needs 2 images per class); add images before comparing methods")


def stratified_sample(dataset, n: int, seed: int = 0) -> list[int]:
    """Up to n indices, spread evenly over classes (train split preferred), seeded."""
    rng = np.random.default_rng(seed)
    idx = np.arange(len(dataset))
    if dataset.has_split:
        train = idx[dataset.in_train()]
        idx = train if len(train) else idx
    if len(idx) <= n:
        return sorted(int(i) for i in idx)
    labels = np.array(dataset.labels if dataset.labels is not None else ["?"] * len(dataset))
    by_class = {c: rng.permutation(idx[labels[idx] == c]) for c in sorted(set(labels[idx]))}
    out, k = [], 0
    while len(out) < n:  # round-robin over classes
        for c in by_class:
            if k < len(by_class[c]) and len(out) < n:
                out.append(int(by_class[c][k]))
        k += 1
    return sorted(out)


def softmax_stats(logits: np.ndarray) -> dict:
    """Per-image max softmax probability and normalised entropy, and their means."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return probability_stats(p)


def probability_stats(p: np.ndarray) -> dict:
    k = p.shape[1]
    msp = p.max(axis=1)
    ent = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1) / math.log(k)
    sem = float(msp.std(ddof=1) / math.sqrt(len(msp))) if len(msp) > 1 else None  # the mean's standard error
    return {"max_softmax_mean": float(msp.mean()), "max_softmax_median": float(np.median(msp)),
            "max_softmax_sem": sem, "entropy_norm_mean": float(ent.mean()), "n": int(len(p)),
            "top": p.argmax(axis=1)}


def _classifier_logits(features: np.ndarray, arch: str, weights: str, weights_seed: int) -> np.ndarray:
    """Apply the backbone's source classifier to cached `last` features (N, V, C) -> (N, 1000)."""
    import torch

    from fne.backbones import registry as backbones

    b = backbones.get(arch)
    if b.num_classes == 0:
        raise refusal(lambda py: f"{arch} has no source classifier (its pretrained weights carry none): advise "
                                 f"cannot measure how close DATA is to the source task; pass "
                                 f"{named('weights', py, 'random', plain=True)} to skip that", FneError)
    model = backbones.load_backbone(arch, weights, weights_seed)
    head = model.get_submodule(b.classifier)
    n, v, c = features.shape
    with torch.inference_mode():
        logits = head(torch.from_numpy(features.reshape(n * v, c)).float()).numpy()
    return logits.reshape(n, v, -1)


def measure_similarity(dataset, idx: list[int], arch: str, weights: str, *, cache=None, crop="center",
                       precision="auto", storage_dtype="float16", device="auto", weights_seed=0,
                       batch_size="auto", workers=None, progress=True, image_size=None) -> dict:
    """Source-classifier confidence on dataset[idx]; extracts missing rows into the cache first."""
    from fne.backbones import registry as backbones
    from fne.cache.spec import StoreSpec
    from fne.data.manifest import attach_keys
    from fne.extraction.extract import extract

    # keyed through the data root's manifest (an unchanged folder is not read again); a file that
    # cannot be read is named and left out: one bad file never stops the advice
    sub = attach_keys(dataset.subset(idx), cache, skip_unreadable=True)
    spec = StoreSpec(arch=arch, weights=weights, crop=crop, precision=precision, storage_dtype=storage_dtype,
                     cache=cache, device=device, weights_seed=weights_seed, image_size=image_size)
    extract(sub, spec, batch_size=batch_size, workers=workers, progress=progress)
    store = spec.open()
    store.refresh()
    index = store.index()
    read = [(i, k) for i, k in zip(sub.ids, sub.keys(), strict=True) if k in index]  # unreadable images have none
    keys, ids = [k for _, k in read], {i for i, _ in read}
    if not keys:
        raise FneError(f"DATA {dataset.as_given}: none of the sampled images could be read")
    b = backbones.get(arch)
    feats = store.read(keys, [b.last])[b.last]
    logits = _classifier_logits(feats, arch, weights, weights_seed)
    z = logits - logits.max(axis=2, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=2, keepdims=True)
    stats = probability_stats(p.mean(axis=1))  # average the crops' probabilities
    stats["unreadable"] = [dataset.ids[i] for i in idx if dataset.ids[i] not in ids]
    top = stats.pop("top")
    try:
        names = b.categories()
    except Exception:  # categories are decoration; never fail advice on them
        names = []
    common = Counter(int(t) for t in top).most_common(5)
    stats["top_source_classes"] = [
        {"class": names[t] if t < len(names) else str(t), "share": round(cnt / len(top), 3)}
        for t, cnt in common
    ]
    return stats


def _classified(data, dataset: Dataset) -> None:
    """FneError unless DATA has labels of at least 2 classes: the advice would name a fit that
    stops with "a head needs 2 classes"."""
    dataset.require_labels("fne advise", data if isinstance(data, (str, Path)) else None)
    if len(dataset.classes) < 2:
        raise FneError(f"{data if isinstance(data, (str, Path)) else f'DATA {dataset.name}'}: one class "
                       f"({', '.join(dataset.classes)}); the advice is on training a classifier, which needs "
                       f"images of at least 2 classes")


# The keywords of `advise` (StoreOptions' fields are StoreSpec's), declared in fne.options.
OPTIONS = (StoreOptions, DataOptions, AdviseOptions, ForwardOptions)


@keywords(*OPTIONS)
def advise(data: str | Path | Dataset, store: StoreSpec | None = None, **options) -> dict:
    """Recommendation with its reasons and the measured quantities behind it.

    Parameters
    ----------
    data : str, Path or Dataset
        Any DATA form with labels.
    store : StoreSpec, optional
        The backbone whose source classifier judges how close DATA is to its source task.
    **options
        The options of `fne advise`, under the same names with the same defaults (the signature
        lists them): the fields of `StoreSpec` (overriding `store`'s), of
        `fne.options.DataOptions` (``label_key``), of `fne.options.AdviseOptions` (``sample``,
        ``seed``, ``test_size``, ``train_per_class``) and of `fne.options.ForwardOptions` (for
        the sample's extraction). The CLI's ``--json`` and ``--out`` only print or write the
        dict returned here.

    Returns
    -------
    dict
        The recommendation, its reasons and commands, the training images per class and the
        similarity measured (or why it was not judged), and the thresholds used; DATA (as given
        and resolved) and its ``label_key``: the section of `fne report` the advice goes to.

    Raises
    ------
    DataError
        DATA is missing, unlabelled or cannot be read.
    FneError
        DATA of one class, or none of the sampled images could be read.
    """
    from fne.cache.spec import StoreSpec
    from fne.data.dataset import Dataset
    from fne.data.datasets import load_dataset
    from fne.data.splits import not_applied
    from fne.option_handling import resolve

    spec, data_o, o, fwd = resolve(options, StoreSpec, *OPTIONS[1:], given={StoreSpec: store})
    _checked(spec)  # before any work
    arch, weights, test_size = spec.arch, spec.weights, o.test_size
    dataset = load_dataset(data, label_key=data_o.label_key, cache=spec.cache)
    _classified(data, dataset)
    not_applied(dataset, o)  # --test-size, --train-per-class given where DATA has its own split
    similarity, msp, entropy = _similarity(dataset, spec, o, fwd)
    unreadable = similarity.pop("unreadable", [])
    ipc = training_images_per_class(dataset, test_size, o.train_per_class, unreadable=unreadable, cache=spec.cache)
    dataset, unread = _readable(dataset, unreadable, similarity.get("sample", 0) + len(unreadable))
    d = decide(ipc["median"], msp, entropy=entropy, msp_sem=similarity.get("max_softmax_sem"),
               sample=similarity.get("sample"), unjudged=similarity.pop("why_not_said", RANDOM_UNJUDGED),
               spread=(ipc["min"], ipc["max"]))
    lonely = _unsplittable(dataset) or (ipc["refused"] and f"fne fit cannot draw its random split here (nor can "
                                                            f"the commands advised): {ipc['refused']}")
    d["reasons"][:0] = [r for r in (unread, lonely) if r]
    similarity["verdict"] = d["similar"]
    data_s = str(data) if not isinstance(data, Dataset) else dataset.name
    return {
        "kind": "advice",
        "dataset": dataset.name,
        "data": data_s,
        "data_resolved": data_identity(data_s) if not isinstance(data, Dataset) else data_s,
        "label_key": data_o.label_key,  # which labels of DATA: `fne report` shows it in that section
        "arch": arch,
        "weights": weights,
        "recommendation": d["recommendation"],
        "text": d["text"],
        "families": d["families"],
        "commands": [runnable(c, data_s, dataset.name, spec, data_o.label_key, None if dataset.has_split else o)
                     for c in d["commands"]],
        "reasons": d["reasons"],
        "confidence": confidence(["no method can be scored on DATA as it is"] * bool(lonely) + d["doubts"]),
        "size": d["size"],
        "images_per_class": ipc["median"],
        "images_per_class_detail": ipc,
        "similarity": similarity,
        "n_images": len(dataset),  # the readable ones: those the sample found unreadable are left out
        "unreadable": len(unreadable),
        "classes": len(dataset.classes),
        "thresholds": {"large_per_class": LARGE_PER_CLASS, "similar_max_softmax": SIMILAR_MSP,
                       "borderline_max_softmax": MSP_BORDER},
    }


def _checked(spec: StoreSpec) -> None:
    """FneError for an unknown arch, or a device this machine lacks where a network runs (not on
    random weights), before DATA's images are hashed for the sample."""
    spec.backbone()
    if spec.weights != "random":
        from fne.devices import check_device

        check_device(spec.device)


def _similarity(dataset, spec, o: AdviseOptions, fwd: ForwardOptions) -> tuple[dict, float | None, float | None]:
    """(how close DATA is to the source task, in words and numbers; its mean max-softmax; its mean
    normalised entropy): measured on a stratified sample (none with random weights)."""
    similarity: dict = {"judged": False, "measure": "mean max-softmax probability of the source classifier",
                        "threshold": SIMILAR_MSP}
    msp = entropy = None
    head = None if spec.weights in ("random", "imagenet") else _renewed_head(spec.arch, spec.weights)
    if spec.weights == "random":
        similarity["why_not"] = "random weights: no source task"
    elif head is not None:
        similarity["why_not"] = f"weights {spec.weights}: {head}"
        similarity["why_not_said"] = (f"{spec.weights}: {head}, so the network knows "
                                      f"no source task to compare DATA with")
    else:
        idx = stratified_sample(dataset, o.sample, o.seed)
        stats = measure_similarity(dataset, idx, spec.arch, spec.weights, cache=spec.cache, crop=spec.crop,
                                   precision=spec.precision, storage_dtype=spec.storage_dtype, device=spec.device,
                                   weights_seed=spec.weights_seed, batch_size=fwd.batch_size, workers=fwd.workers,
                                   progress=fwd.progress, image_size=spec.image_size)
        similarity.update(stats, judged=True, sample=stats["n"])
        msp, entropy = stats["max_softmax_mean"], stats["entropy_norm_mean"]
        if spec.weights not in ("imagenet",):
            similarity["caveat"] = ("weights from a file: assumes its classifier is the source task's "
                                    "(a renewed head makes this measure meaningless)")
    return similarity, msp, entropy


def _renewed_head(arch: str, weights: str) -> str | None:
    """How the classifier of the weights file `weights` differs from `arch`'s source classifier
    (absent, or of another class count: a `fne train` run's renewed head, which
    `load_backbone` leaves randomly initialised), else None (a torchvision weights name: None)."""
    from fne.backbones import registry as backbones
    from fne.backbones import zoo

    if not Path(weights).is_file():
        return None
    b = backbones.get(arch)
    own = {k: tuple(v.shape) for k, v in zoo.meta_model(lambda: b.build(b.num_classes)).state_dict().items()
           if k.startswith(b.classifier + ".")}
    state = backbones.read_state_dict(weights)
    if not all(k in state for k in own):
        return f"it holds no classifier ({b.classifier})"
    other = [tuple(state[k].shape) for k in own if tuple(state[k].shape) != own[k]]
    return f"its classifier ({b.classifier}) has {other[0][0]} outputs, not the source task's {b.num_classes}" \
        if other else None


def _readable(dataset, unreadable: list[str], sampled: int) -> tuple:
    """(DATA less the images of the similarity sample that could not be read, as `fne fit` leaves
    unreadable images out before it splits; a reason naming them, or None). `sampled`: how many
    images the sample tried; where they are not all of those it is drawn from (DATA's training
    images where it has a split), the others were not read and are counted."""
    if not unreadable:
        return dataset, None
    bad, pool = set(unreadable), len(stratified_sample(dataset, len(dataset)))
    readable = dataset.subset([i for i, k in enumerate(dataset.ids) if k not in bad])
    which = "training images" if dataset.has_split else "images"
    said = (f"{len(bad)} of DATA's {pool} {which} could not be read" if sampled >= pool else
            f"{len(bad)} of the {sampled} sampled {which} could not be read")
    unread = "" if sampled >= pool else f"; its other {pool - sampled} {which} were not read, and are counted"
    lost = sorted(set(dataset.labels or ()) - set(readable.labels or ())) if sampled >= pool else []
    gone = (f"; no image of class(es) {first_few(lost)} could be read: "
            f"fne fit cannot learn {'it' if len(lost) == 1 else 'them'}" if lost else "")
    return readable, (f"{said} ({first_few(unreadable)}): left out of the counts, as fne fit leaves "
                      f"unreadable images out{unread}{gone}")


# ------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fne.option_handling import add_arguments as add_options
    from fne.options import DATA_HELP

    p.add_argument("data", help=DATA_HELP)
    add_options(p, *OPTIONS)
    p.add_argument("--json", action="store_true", help="print the advice as JSON")
    p.add_argument("--out", default=None, help="also write the advice to this JSON file (.json)")


def run_cli(args) -> int:
    from fne.cache.fs import check_target, not_a_run_file, out_refused, write_json
    from fne.option_handling import from_args

    kw = from_args(args, *OPTIONS)
    out = None if args.out is None else check_target(args.out, folder=False, data=args.data)  # before the forward pass
    if out is not None:
        not_a_run_file(out, "writing the advice")
        if out.suffix.lower() != ".json":  # `--out advice.txt`: JSON under another format's name, as predict refuses
            raise out_refused(out, f"fne advise writes JSON{f', not {out.suffix}' if out.suffix else ''}: name the "
                                   f"file .json")
    a = advise(args.data, **{**kw, "progress": kw["progress"] and not args.json})
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, a)
    print(json.dumps(a, indent=1) if args.json else format_advice(a), file=sys.stdout)
    return 0


verb_module(__name__)
