"""`fne predict` with a `fne train` run: its trained network applied to new images.

A train run folder holds model.pt (the chosen epoch's state dict) and metrics.json (the
architecture, the classes, the image size, the weights whose preprocessing it used, the
precision it ran at). The network is rebuilt from those on the meta device, its classifier
given the run's classes, and model.pt is assigned into it; the images then take the run's own
test view (`epochs.transforms`: the weights' resize and center crop at the run's image size) and
pass (`epochs.evaluate`), so the run's own test images get the scores of its predictions.csv.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fne.backbones import registry as backbones
from fne.backbones import zoo
from fne.backbones.normalize import Normalize
from fne.data.dataset import Dataset
from fne.data.datasets import load_dataset
from fne.devices import default_workers, resolve_device, resolve_precision
from fne.errors import FneError
from fne.metrics import unreadable_format
from fne.names import MODES, PRECISIONS
from fne.training import epochs
from fne.training.class_map import direct_run_refusal
from fne.training.transfer import _renew

# What metrics.json of a train run must record to rebuild and apply its network.
RUN_KEYS = ("arch", "weights", "classes", "image_size", "precision")


def read_run(run_dir: str | Path) -> dict:
    """metrics.json of a `fne train` run that has a network to apply; FneError naming what is missing."""
    run_dir = Path(run_dir)
    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        raise FneError(f"{run_dir}: cannot read its metrics.json ({e}); is it a finished `fne train` run?") from None
    if isinstance(m, dict) and (newer := unreadable_format(m)) is not None:  # its network may be rebuilt otherwise
        raise FneError(f"{run_dir}/metrics.json: {newer}")
    if not isinstance(m, dict) or m.get("kind") != "train" or m.get("mode") not in MODES:
        raise FneError(f"{run_dir}/metrics.json: not a `fne train` run")
    if m["mode"] == "direct":
        raise direct_run_refusal(run_dir)
    lacks = [k for k in RUN_KEYS if k not in m]
    if lacks:
        raise FneError(f"{run_dir}/metrics.json: lacks {', '.join(lacks)}, which the network is rebuilt from; "
                       f"is it a `fne train` run's own metrics.json?")
    bad = _malformed(m)
    if bad:  # a hand-edited or damaged file: its values would build another network, or a traceback
        raise FneError(f"{run_dir}/metrics.json: its {', '.join(bad)} not as `fne train` writes them (a damaged or "
                       f"hand-edited file); put the run's own metrics.json back, or rerun `fne train`")
    if not (run_dir / "model.pt").is_file():
        raise FneError(f"{run_dir}: no model.pt")
    return m


def _malformed(m: dict) -> list[str]:
    """The fields of a train run's metrics.json `m` that the network is rebuilt or applied from
    and that hold what `fne train` never writes: classes not a list of distinct names, an image
    size that is not a whole number of pixels, a device torch does not parse, ..."""
    classes, size, batch = m["classes"], m["image_size"], m.get("batch_size")
    bad = [k for k in ("arch", "weights") if not isinstance(m[k], str)]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        bad.append("classes")
    bad += [] if type(size) is int and size > 0 else ["image_size"]
    bad += [] if m["precision"] in PRECISIONS[1:] else ["precision"]  # resolved: never auto
    bad += [] if batch is None or type(batch) is int and batch > 0 else ["batch_size"]
    try:  # the device it ran on, written as torch names it ("cuda:0")
        torch.device(m.get("device", "cpu") if isinstance(m.get("device", "cpu"), str) else None)
    except (RuntimeError, TypeError):
        bad.append("device")
    bad += [] if isinstance(m.get("options", {}), dict) else ["options"]
    bad += [k for k in ("model_fingerprint", "weights_fingerprint", "data_resolved")
            if not isinstance(m.get(k), (str, type(None)))]
    return bad


def _backbone(m: dict) -> backbones.Backbone:
    """The run's backbone, with the preprocessing of the weights it trained from: a weights
    name's own (IMAGENET1K_V2), else the architecture's. A weights file (fingerprint `file-…`)
    only chose the initial tensors: it is not read again, and may have moved since (or have been
    named relative to another folder)."""
    file = str(m.get("weights_fingerprint") or "").startswith("file-")
    return backbones.get(m["arch"], "imagenet" if file else m["weights"])


def network(run_dir: str | Path, m: dict, device: torch.device) -> nn.Module:
    """The run's trained network on `device`, in eval mode: its architecture with a classifier of
    the run's classes (the renewed fc layers keep their shapes), model.pt's tensors assigned."""
    b = _backbone(m)

    def build() -> nn.Module:  # as `build_model` makes it; renewed fc layers keep their shapes
        model = b.build(1000)
        _renew(model, b, (b.classifier,), len(m["classes"]))
        return model

    model = zoo.on_meta(build)
    meta = model is not None
    if not meta:
        with device:
            model = build()
    path = Path(run_dir) / "model.pt"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- damaged (pickle, zip, EOF errors): what the file is, not miniz's words
        from fne.backbones.filekind import unreadable

        raise FneError(f"{path}: {unreadable(path, e)}; rerun `fne train` to write it again") from None
    _check_model_file(path, m)  # after: a damaged file is said as damaged
    try:
        model.load_state_dict(state, assign=meta)
    except Exception as e:  # noqa: BLE001 -- another network's tensors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FneError(f"{path}: cannot be loaded into {m['arch']} with {len(m['classes'])} classes ({first})") \
            from None
    return model.to(device).eval()


def _check_model_file(path: Path, m: dict) -> None:
    """FneError where model.pt is not the file its metrics.json was written with (a model.pt or a
    metrics.json copied from another run of the same network and number of classes, whose tensors
    would load and be given this run's class names and image size). A run written before
    metrics.json recorded `model_fingerprint` (30 Nov 2026) is not checked."""
    want = m.get("model_fingerprint")
    if not isinstance(want, str):
        return
    try:
        have = "file-" + backbones.file_fingerprint(path)
    except OSError as e:
        raise FneError(f"{path}: cannot be read ({e.strerror or e})") from None
    if have != want:
        raise FneError(f"{path}: not the network its metrics.json describes (fingerprint {have}, metrics.json's "
                       f"{want}): a model.pt or metrics.json copied from another run? Put the run's own file back, "
                       f"or rerun `fne train`")


@dataclass
class Network:
    """A train run's network, built once (`load_network`) and applied to any number of DATAs
    (`apply_network`): its metrics.json (`run`), the module in eval mode on `device`, the
    precision it runs at and the backbone whose preprocessing its test view takes."""

    run: dict
    model: nn.Module
    device: torch.device
    precision: str
    backbone: backbones.Backbone


def load_network(run_dir: str | Path, device: str | None = None) -> Network:
    """The network of the train run `run_dir` on `device` (default auto), at the run's precision
    on the kind of device it ran on, elsewhere at that device's own."""
    m = read_run(run_dir)
    dev = resolve_device(device or "auto")
    ran_on = torch.device(m.get("device", "cpu")).type
    precision = m["precision"] if ran_on == dev.type else resolve_precision("auto", dev)
    return Network(m, network(run_dir, m, dev), dev, precision, _backbone(m))


def apply_network(net: Network, dataset: Dataset, *, batch_size: int | str = "auto", workers: int | None = None,
                  progress: bool = True, name: object = None, skipped: dict | None = None):
    """(class names, softmax scores (N, classes) over `dataset`'s readable images, their dataset
    indices, the unreadable images {id: why}) with `net`, through the run's test view; `name`:
    DATA as given (default: the dataset's name), which a DataError says has no readable image;
    `skipped`: the dict the unreadable images go into (the caller's: also when none is readable)."""
    m, dev = net.run, net.device
    labels = np.zeros(len(dataset), dtype=np.int64)  # the pass needs some; predict reads DATA's own
    ctx = epochs.Ctx(dataset, labels, dev, net.precision, Normalize(net.backbone.mean, net.backbone.std).to(dev),
                     None, progress, {} if skipped is None else skipped, data=_named(dataset if name is None else name))
    view = epochs.transforms(int(m["image_size"]), False, net.backbone)[1]
    size = int(m.get("batch_size") or 32) if batch_size == "auto" else int(batch_size)
    with epochs.loaders(ctx, size, default_workers(dev) if workers is None else workers) as loader:
        idx, _, scores = epochs.evaluate(net.model, loader(np.arange(len(dataset)), view), ctx,
                                         f"predict {m['arch']} {m['mode']}")
    return list(m["classes"]), scores, idx, dict(ctx.skipped)


def predict_network(run_dir: str | Path, data, *, device: str | None = None, batch_size: int | str = "auto",
                    workers: int | None = None, progress: bool = True, name: object = None):
    """(dataset, class names, softmax scores (N, classes) over DATA's readable images, their
    dataset indices, the unreadable images) with the network of the train run `run_dir`
    (`load_network`, then `apply_network`); `name`: DATA as given (default `data`; a Dataset by
    its name), which a DataError says has no readable image, as `fne fit` says it."""
    net = load_network(run_dir, device)
    dataset = data if not isinstance(data, (str, Path)) else load_dataset(data)
    classes, scores, idx, skipped = apply_network(net, dataset, batch_size=batch_size, workers=workers,
                                                  progress=progress, name=data if name is None else name)
    return dataset, classes, scores, idx, skipped


def _named(data) -> str:
    """DATA as a message names it: as given, a Dataset by its name."""
    return str(data) if isinstance(data, (str, Path)) else str(getattr(data, "name", data))
