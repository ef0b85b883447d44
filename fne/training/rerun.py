"""What a rerun of `fne train` does with the checkpoint a run folder holds, in words, for
`fne run --dry-run` (`fne.pipeline.dryrun`): the run's own checks, reading no image, and the
checkpoint's bytes (their CRC) only where the note would say that the run resumes from it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from fne.backbones import registry as backbones
from fne.data.dataset import Dataset
from fne.data.datasets import load_dataset
from fne.data.manifest import known_keys, manifest_for
from fne.data.parquet import hf_available
from fne.errors import FneError
from fne.options import TrainConfig
from fne.training import checkpoint
from fne.training.parts import run_split

# A direct run saves no checkpoint, so one in its folder is another run's, which it removes as it
# ends (`fne.training.train._checkpoint`): a later --resume would take it up over this run.
DIRECT_NOTE = "its checkpoint is another run's (a direct run trains nothing and saves none): the run removes it at its end"


def rerun_note(data: str, mode: str, out: str | Path, **kwargs) -> str | None:
    """What `fne train` with these arguments and ``resume="auto"`` (a step of `fne run`) does with
    the checkpoint an interrupted run left in `out`, in words; None where there is none.

    The same checks as the run's (`checkpoint.mismatch`: the settings, and the images of each
    part, from DATA's listing split as the run splits it, named by the pipeline file's keys), reading
    no image, and of the checkpoint (memory-mapped) only its arguments, then, where the rerun would
    resume, its bytes' CRC, as the run does (`_whole`): for `fne run --dry-run`. The split
    keeps copies of an image together, so it needs every image's content key: where the cache's
    manifest does not know one (a file new or changed since it was hashed) or `hf:` DATA is not
    downloaded, the settings alone are compared and the note says it would check the images; where
    DATA cannot be listed (missing, unreadable), the note says the step fails there, and whether the
    checkpoint's settings are these. A direct run takes up none: it removes any (`DIRECT_NOTE`).
    """
    path = Path(out) / checkpoint.CHECKPOINT
    if not path.is_file():
        return None
    if mode == "direct":
        return DIRECT_NOTE
    cache = kwargs.pop("cache", None)
    cfg = TrainConfig(data=os.fspath(data), mode=mode, out=os.fspath(out), **kwargs)
    try:
        ckpt = checkpoint.read(path, mmap=True)
    except FneError as e:
        return _unreadable(e)
    done, images = f"checkpoint after epoch {ckpt['epoch']}", None
    try:
        if cfg.data.startswith("hf:") and not hf_available(cfg.data, cache):
            unchecked = f"{cfg.data} is not downloaded"
        else:
            dataset = load_dataset(cfg.data, cache=cache)
            unchecked = _unhashed(dataset, cache)
        if unchecked is None:
            with warnings.catch_warnings():  # the run's own warnings (copies across the split), not the dry run's
                warnings.simplefilter("ignore")
                split = run_split(cfg, dataset, backbones.get(cfg.arch), cache)
            parts = {"train": split.train, "val": split.val, "test": split.test}
            images = checkpoint.images(dataset.ids, dataset.labels, parts, dataset.keys())
    except (FneError, OSError) as e:  # the run stops there too: no resume to promise, its settings still compared
        diff = checkpoint.mismatch(ckpt, cfg, None, python=True, same_release=True, in_file=True)
        return (f"DATA cannot be listed ({e}): the step fails before it trains, leaving its {done} "
                + (f"(of another run: {'; '.join(diff)})" if diff else "(of these settings; its images not compared)"))
    diff = checkpoint.mismatch(ckpt, cfg, images, python=True, same_release=True, in_file=True)
    if diff:
        return f"its {done} is of another run ({'; '.join(diff)}): the rerun starts over"
    if unchecked is not None:
        return _whole(path) or (f"the rerun resumes from its {done} of {cfg.epochs} if DATA's images are its own "
                                f"(would check images: {unchecked})")
    return _whole(path) or f"the rerun resumes from its {done} of {cfg.epochs}"


def _whole(path: Path) -> str | None:
    """The note of a checkpoint whose bytes fail their CRC (the run reads it whole before it
    resumes, and starts over); None where they pass. Asked only where the note would say that the
    rerun resumes: its cost (every byte read) is paid only where the answer turns on it."""
    try:
        checkpoint.check_whole(path)
    except FneError as e:
        return _unreadable(e)
    return None


def _unreadable(e: FneError) -> str:
    return f"its checkpoint cannot be read ({str(e).split(': ', 2)[-1].split(';')[0]}): the rerun starts over"


def _unhashed(dataset: Dataset, cache: str | None) -> str | None:
    """How many of DATA's files the cache's manifest knows no content key of, in words
    (`rerun_note`: finding them would read them); None where it knows every one (arrays in one
    file are hashed from it, decoding no image)."""
    if dataset.array_source is not None:
        return None
    manifest = manifest_for(dataset, cache)
    n = len(dataset) if manifest is None else sum(k is None for k in known_keys(dataset, manifest))
    return f"{n} of {len(dataset)} files not hashed yet" if n else None
