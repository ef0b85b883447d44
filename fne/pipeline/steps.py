"""A pipeline step's identity and state: its folder, the hash of its settings, whether it is done
and, when it is not, why it runs (new, interrupted, or which settings changed since its result).

Pure bookkeeping over files and JSON: no torch, no verb module (fne.pipeline.runner plans and
runs the steps; fne.pipeline.dryrun says what a run would do).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fne.cache.fs import read_json, write_json
from fne.option_handling import named, toml_value, uses
from fne.options import TrainConfig
from fne.pipeline.config import BackboneCfg, DatasetCfg, Pipeline
from fne.progress import said

STEP_FORMAT = 1
LABELS_CHANGED = "the images' names, labels or split changed"


def forced_as(python: bool) -> str:
    """`fne run --force` as the caller gives it: ``force=True`` to `fne.run` (`python`), else --force."""
    return named("force", python, True) if python else named("force", python)


def forced() -> str:
    """`fne run --force` in the words of the API called (`fne.progress.said`)."""
    return said(forced_as)


def config_hash(cfg: dict) -> str:
    """A step's settings as a short, stable hash (its folder is done when the hash matches)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:20]


def hashed(cfg: dict) -> dict:
    """A step's settings as hashed: less `dataset.labels`, which step.json records and `Step.status`
    compares apart, so that a step done before fne recorded it stays done (its labels unchecked)."""
    if not isinstance(cfg.get("dataset"), dict) or "labels" not in cfg["dataset"]:
        return cfg
    return {**cfg, "dataset": {k: v for k, v in cfg["dataset"].items() if k != "labels"}}


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:20]


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changes(old: dict, new: dict, limit: int = 4) -> str:
    """What differs between two step configurations, in words, each value as a pipeline file writes
    it (`fne.option_handling.toml_value`): 'epochs 3 -> 5; augment true -> false; the images changed'."""
    a, b = _flat(old), _flat(new)
    words = []
    for k in sorted(set(a) | set(b), key=lambda k: (k.count("."), k)):
        if json.dumps(a.get(k), default=str) == json.dumps(b.get(k), default=str):
            continue
        name = k.removeprefix("settings.")
        if k == "dataset.content":
            words.append("the images changed" if b.get(k) else "the images may have changed (not read yet)")
        elif k == "dataset.labels":  # a step done before fne recorded them (None) tells nothing of them
            if a.get(k) is not None and b.get(k) is not None:
                words.append(LABELS_CHANGED)
        elif k == "fne":
            words.append(f"fne {a.get(k)} -> {b.get(k)}")
        else:
            words.append(f"{name} {toml_value(a.get(k))} -> {toml_value(b.get(k))}")  # absent: (unset)
    if len(words) > limit:
        words = words[:limit] + [f"{len(words) - limit} more"]
    return "; ".join(words)


def moved_from(old, new: dict) -> str | None:
    """DATA's path in a done step's settings `old` where the step's settings `new` differ from them
    in that path alone, and both record the same images and labels (their content and labels
    fingerprints, known): DATA moved or copied, whose results would not change; else None."""
    o, n = (c.get("dataset") if isinstance(c, dict) else None for c in (old, new))
    if not isinstance(o, dict) or not isinstance(n, dict) or o.get("data") == n.get("data"):
        return None
    if None in (o.get("content"), o.get("labels")) or (o.get("content"), o.get("labels")) != (
            n.get("content"), n.get("labels")):
        return None
    same = config_hash({**old, "dataset": {**o, "data": None}}) == config_hash({**new, "dataset": {**n, "data": None}})
    return str(o.get("data")) if same else None


def _unread(old, new: dict) -> str | None:
    """`moved_from`, for settings `new` whose images are not read yet (content unknown): DATA's
    old path where it would be the same step if its images and labels are those of then."""
    n = new.get("dataset")
    if not isinstance(n, dict) or n.get("content") is not None or not isinstance(old, dict) or not isinstance(
            old.get("dataset"), dict):
        return None
    o = old["dataset"]
    return moved_from(old, {**new, "dataset": {**n, "content": o.get("content"), "labels": n.get("labels") or o.get("labels")}})


@dataclass
class Step:
    """One step of a pipeline (advise, fit or train) of a dataset and a backbone: its folder,
    its settings (hashed: a changed setting reruns it) and the verb's keywords."""

    kind: str  # advise | fit | train
    dataset: DatasetCfg
    backbone: BackboneCfg
    dir: Path
    config: dict
    kwargs: dict
    label: str

    @property
    def hash(self) -> str:
        return config_hash(hashed(self.config))

    @property
    def result_file(self) -> Path:
        return self.dir / ("advice.json" if self.kind == "advise" else "metrics.json")

    def done(self) -> bool:
        return self.status()[0]

    def status(self) -> tuple[bool, str]:
        """(done, why it runs): done when RUN_DIR holds its result and a step.json with the same
        settings' hash and the result's own hash; otherwise the reason in a few words."""
        rf, sf = self.result_file, self.dir / "step.json"
        if not sf.is_file():
            return False, ("did not finish last time" if self.dir.is_dir() else "new")
        s = read_json(sf)
        if s is None:
            return False, f"its {sf.name} is unreadable"
        if not rf.is_file():
            return False, f"its {rf.name} is missing"
        moved = moved_from(s.get("config"), self.config)
        if s.get("hash") != self.hash and moved is None:
            unread = _unread(s.get("config"), self.config)
            if unread is not None:  # a dry run, or DATA not hashed yet: the run tells
                return False, (f"DATA was {unread}: the run reads its images, and skips the step where they and "
                               f"their labels are those of then")
            return False, "settings changed: " + (changes(s.get("config") or {}, self.config) or "step format")
        old, new = ((c.get("dataset") or {}).get("labels") for c in (s.get("config") or {}, self.config))
        if old is not None and new is not None and old != new:
            return False, "settings changed: " + LABELS_CHANGED
        if s.get("result_sha") != _file_sha(rf):
            return False, f"its {rf.name} was changed after the step wrote it"
        return True, "done" if moved is None else f"done; DATA was {moved}, the same images and labels"

    def code_note(self) -> str:
        """For a step done: "; made by other fne code (…)", where its metrics.json records the hash
        of fne's sources it was made by (``versions.fne_code``, `fne.metrics.code_hash`) and this fne's
        differs (the step is still skipped: its settings are those of now); else ""."""
        from fne.metrics import code_hash

        m = read_json(self.result_file) if self.kind != "advise" and self.result_file.is_file() else None
        was = (m.get("versions") or {}).get("fne_code") if isinstance(m, dict) and isinstance(m.get("versions"), dict) else None
        now = code_hash()
        if not isinstance(was, str) or now is None or was == now:
            return ""
        return f"; made by other fne code (fne_code {was}, this fne's {now}): {forced()} reruns it with this code"

    def mark_done(self, seconds: float, extract: dict | None = None) -> None:
        """step.json: the step's hash and its result's; `extract` is the extraction that computed
        the rows this step read in the same `fne run` (its measured seconds, rows computed)."""
        record = {"format": STEP_FORMAT, "hash": self.hash, "kind": self.kind, "label": self.label,
                  "dataset_key": self.dataset.key, "backbone": self.backbone.label,
                  "result_sha": _file_sha(self.result_file), "seconds": seconds,
                  "date": datetime.now(UTC).isoformat(timespec="seconds"), "config": self.config}
        if extract is not None:
            record["extract"] = extract
        write_json(self.dir / "step.json", record)


def train_arguments(step: Step, p: Pipeline) -> dict:
    """fne.train's keywords (less data, mode, out and direct mode's class_map) for a train step:
    its settings that its mode uses (fne train refuses one its mode ignores) and seed, the backbone (scratch imports no weights), and the pipeline's device
    and workers where the settings give none; progress=False under `fne run --no-progress`."""
    k, b = step.kwargs, step.backbone
    settings = {n: v for n, v in k["settings"].items() if uses(TrainConfig, k["mode"], n)}  # [train]'s are shared
    weights = None if k["mode"] == "scratch" else b.resolved_weights or b.weights
    kwargs = dict(arch=b.arch, weights=weights, weights_seed=b.seed_for(weights), seed=k["seed"], **settings)
    if "device" not in kwargs and p.device != "auto":
        kwargs["device"] = p.device
    if "workers" not in kwargs and p.workers is not None:
        kwargs["workers"] = p.workers
    if not p.progress:  # fne run --no-progress over the file's [train] progress
        kwargs["progress"] = False
    return kwargs


def needs_rows(step: Step, has_fit: bool) -> bool:
    """Fits read every row: extract the dataset once, before the first fit (or before the advice,
    which then reads its sample from the same rows); without fits the advice extracts its sample."""
    b = step.backbone
    return step.kind == "fit" or (step.kind == "advise" and has_fit and (b.resolved_weights or b.weights) != "random")


def known_keys(data: str, cache: str | None, read: bool = True, partial: bool = False) -> list[str | None] | None:
    """DATA's content keys (from the data root's manifest: an unchanged folder is only stat'ed);
    None where DATA cannot be read (a dry run without its data).

    read=False (a dry run) reads no image file and writes nothing: the keys come from the manifest
    alone (arrays, which have none, are hashed), and are None unless the manifest knows every file as it is now (`partial`: a list
    with None for each file it does not know)."""
    from fne.data.datasets import load_dataset
    from fne.data.manifest import known_keys as manifest_keys
    from fne.data.manifest import manifest_for
    from fne.data.parquet import hf_available
    from fne.errors import DataError
    from fne.linear.features import load_data

    try:
        if read:
            return load_data(data, cache).keys()
        if str(data).startswith("hf:") and not hf_available(str(data), cache):
            return None  # not downloaded: a dry run downloads nothing (it names the download)
        dataset = load_dataset(data, cache=cache)
        if dataset.array_source is not None:  # arrays in one file (HDF5, digits): hashed, no image decoded
            return dataset.keys()
        manifest = manifest_for(dataset, cache)
        keys = manifest_keys(dataset, manifest) if manifest is not None else [None]
        if partial and manifest is None:
            return [None] * len(dataset)
        return keys if partial or None not in keys else None
    except DataError:
        return None


def content_fingerprint(data: str, cache: str | None, read: bool = True) -> str | None:
    """The images' content (sorted keys, see known_keys); None where they are not known."""
    from fne.data.shards import content_fingerprint as fingerprint

    keys = known_keys(data, cache, read)
    return None if keys is None else fingerprint(keys)


def split_labels_fingerprint(data, cache: str | None, read: bool = True) -> str | None:
    """DATA's images' names, labels and predefined split part, hashed from its listing (no image is
    read); None where DATA cannot be listed. `content_fingerprint` names the images' content alone:
    this tells an image moved to another class folder or part, or a CSV's label edited. (What
    fit and train record in metrics.json for `fne report`, `fne.metrics.labels_fingerprint`, is
    over content keys and labels: a run's, not a step's settings.)

    Parameters
    ----------
    data : str or Dataset
        DATA as a pipeline gives it, or the Dataset already listed.
    cache : str or None
        The cache folder (where `load_dataset` keeps a manifest).
    read : bool
        False for a dry run: Hugging Face DATA not downloaded yet is not downloaded (None).
    """
    from fne.data.dataset import Dataset
    from fne.data.datasets import load_dataset
    from fne.data.parquet import hf_available
    from fne.errors import DataError

    if not read and str(data).startswith("hf:") and not hf_available(str(data), cache):
        return None  # a dry run downloads nothing (it names the download)
    try:
        dataset = data if isinstance(data, Dataset) else load_dataset(data, cache=cache)
    except DataError:
        return None
    n = len(dataset)
    rows = sorted(zip(map(str, dataset.ids), map(str, dataset.labels or [""] * n),
                      map(str, dataset.splits or [""] * n), strict=True))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:20]
