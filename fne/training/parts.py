"""`fne train`'s images: which train, validate and test (the split `fne fit` draws), and what
leaving the unreadable ones out of them did (`untrained_notes`).

The split is drawn over DATA's listing, unreadable images included, as `fne fit` draws its splits
(`fne.data.splits`); the unreadable images are skipped as the passes read them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from fne.backbones import registry as backbones
from fne.data.dataset import Dataset
from fne.data.manifest import attach_keys
from fne.data.splits import (
    duplicate_notes,
    make_splits,
    not_applied,
    readable_parts,
    train_val_test,
)
from fne.errors import DataError
from fne.option_handling import named, refusal
from fne.options import TrainConfig
from fne.training.class_map import given_map, mapped_test_images, read_class_map


@dataclass
class Split:
    """The run's images: dataset indices of each part, and the classes scored on the test part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    classes: list[str]
    cmap: dict[str, list[int]] | None = None  # direct: target class -> source indices
    n_excluded: int = 0  # direct: test images of unmapped classes
    given_map: dict | None = None  # direct: the class map as read (the dict, a file's JSON), which the run records
    images: dict | None = None  # `checkpoint.images` of the three parts


def run_split(cfg: TrainConfig, dataset: Dataset, b: backbones.Backbone, cache: str | None) -> Split:
    """The run's images; direct mode learns nothing and scores only test images of mapped classes.

    Copies of one image (its content key) stay on one side of a random split, as in `fne fit`,
    which draws the same split; DATA's own split is kept, and a copy across it is named. The keys
    come from `cache`'s manifest (a stat per known file), which is read, not written."""
    not_applied(dataset, cfg)  # --test-size, --train-per-class given where DATA has its own split
    y = dataset.label_indices()
    keys = attach_keys(dataset, cache, save=False).keys()
    if cfg.mode != "direct":
        try:
            parts = train_val_test(dataset, y, cfg.test_size, cfg.val_fraction, cfg.seed, keys=keys,
                                   train_per_class=cfg.train_per_class)
        except DataError:
            tr = make_splits(dataset, y, 1, cfg.test_size, cfg.train_per_class, cfg.seed, keys)[0][0]
            lonely = [dataset.classes[c] for c in np.flatnonzero(np.bincount(y[tr]) == 1)]
            if not lonely:
                raise
            raise refusal(lambda py: f"{cfg.data}: {named('val_fraction', py, cfg.val_fraction)}: {len(lonely)} "
                                     f"class(es) have a single training image ({', '.join(lonely[:5])}), which "
                                     f"cannot also validate; add images, or give {named('val_fraction', py, 0)} "
                                     f"(the last epoch is kept)", DataError) from None
        for note in duplicate_notes(dataset, keys, [(np.concatenate(parts[:2]), parts[2])]):
            warnings.warn(note, stacklevel=3)
        return Split(*parts, classes=list(dataset.classes))
    given = given_map(cfg.class_map)  # read once: the map recorded is the one scored with
    cmap = read_class_map(cfg.class_map, dataset.classes, b.categories(), raw=given)
    tr, va, te = train_val_test(dataset, y, cfg.test_size, cfg.val_fraction, cfg.seed, need_val=False, keys=keys,
                                train_per_class=cfg.train_per_class)
    te, n_excluded = mapped_test_images(te, y, dataset.classes, cmap, cfg.class_map)
    return Split(tr, va, te, list(cmap), cmap, n_excluded, given)


def untrained_notes(dataset: Dataset, split: Split, skipped: dict) -> list[str]:
    """What `fne fit` says of the same split (`readable_parts`' notes): the classes whose test
    images were read but none of whose training images could be, which the model never learnt;
    none in direct mode (it learns nothing) or where every image was read.

    Parameters
    ----------
    dataset : Dataset
        The run's DATA, as listed.
    split : Split
        Its parts.
    skipped : dict
        The unreadable images' ids (`epochs.Ctx.skipped`), once every part has been read.
    """
    if split.cmap is not None or not skipped:
        return []
    kept = np.array([i for i, n in enumerate(dataset.ids) if n not in skipped], dtype=np.int64)
    tr, te = (np.intersect1d(p, kept) for p in (split.train, split.test))
    if len(te) == 0 or len(np.unique(dataset.label_indices()[tr])) < 2:  # said by the run as it is
        return []
    return readable_parts(dataset.classes, dataset.label_indices(), [(split.train, split.test)], kept)[1]
