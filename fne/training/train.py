"""`fne train`: the transfer experiments that run the network end to end.

One run, in the order `train()` goes:

1. `fne.training.parts`   which images train, validate and test (`fne.data.splits`: the split `fne fit` uses);
   `fne.training.class_map`  direct mode: the target classes read through the source classifier;
2. `fne.training.transfer`   the network of the mode (direct / scratch / frozen / finetune): new layers,
                    imported weights, what learns;
3. `fne.training.epochs`     passes over the images (read by `fne.extraction.reader`, as `fne extract` reads them):
                    SGD epochs with validation to pick the best epoch, then the test split once;
   `fne.training.checkpoint` `--save-every N` and `--resume`: a bit-identical continuation on CPU;
   `fne.training.unsaved`   the last epoch no checkpoint holds yet, written as a run stops (Ctrl-C, SIGTERM);
4. outputs: RUN_DIR/metrics.json, predictions.csv, model.pt (a state dict whose module
   names are the backbone's own, so `--weights RUN_DIR/model.pt` works in `fne extract`/`fne train`)
   and, where one was saved (`--save-every`), checkpoint.pt; direct mode: metrics.json, predictions.csv
   and class_map.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fne import option_handling as opts
from fne import verb_module
from fne.backbones import registry as backbones
from fne.backbones.normalize import Normalize
from fne.backbones.registry import ImportReport
from fne.cache.fs import check_run_folder, check_target, json_text, replace_files, through_file
from fne.data.dataset import Dataset
from fne.data.datasets import load_dataset
from fne.data.sidecar import one_run_at_a_time
from fne.devices import (
    default_workers,
    require_device_decoder,
    require_main_script,
    resolve_device,
    resolve_precision,
)
from fne.errors import DataError, FneError
from fne.metrics import (
    METRICS_FORMAT,
    TEST_ORDER,
    accuracy_interval,
    class_recall,
    data_identity,
    labels_fingerprint,
    mean_class_interval,
    predictions_csv,
    provenance,
    split_record,
    split_scores,
)
from fne.option_handling import named, refusal
from fne.options import (
    DATA_HELP,
    DataOptions,
    StoreOptions,
    TrainConfig,
    imported_lr_overflows,
    usable_cores,
)
from fne.progress import STARTS_OVER, progress_line, said
from fne.training import augment, checkpoint, epochs
from fne.training.class_map import (
    check_inline,
    direct_scores,
    plain_indices,
    recorded,
)
from fne.training.parts import Split, run_split, untrained_notes
from fne.training.transfer import (
    build_model,
    describe_import,
    freeze_imported,
    kept_statistics,
    train_mode,
)
from fne.training.unsaved import Unsaved


def _text(path):
    """A path argument as the string TrainConfig holds; anything else as given, for `opts.check`
    to name (str() made out=None a folder named None)."""
    return os.fspath(path) if isinstance(path, os.PathLike) else path


def _check(cfg: TrainConfig, given: set[str]) -> None:
    """Argument mistakes, before any data or weights are loaded: each value against its
    declaration (fne.options.TrainConfig), an option given (`given`) that the mode ignores, then
    the rules between options."""
    opts.check(cfg)
    opts.unused(TrainConfig, cfg.mode, given)
    check_inline(cfg.class_map)
    backbones.get(cfg.arch)
    if cfg.mode == "direct" and not cfg.class_map:
        raise refusal(lambda py: f"{named('mode', py, 'direct', plain=True)} needs "
                                 f"{named('class_map', py, 'MAP.json') if py else '--class-map MAP.json'} "
                                 f"(target class -> source classes)")
    if cfg.mode == "scratch" and cfg.weights not in (None, "random"):
        raise refusal(lambda py: f"{named('mode', py, 'scratch', plain=True)} trains from a random initialisation; "
                                 f"{named('weights', py, cfg.weights)} does not apply (use frozen or finetune to "
                                 f"import weights)")
    if not cfg.augment and cfg.augment_on != "auto" and "augment_on" in given:
        raise refusal(lambda py: f"{named('augment_on', py, cfg.augment_on)} places the augmentation, and "
                                 f"{named('augment', py, False)} trains without it: "
                                 f"give one of the two")
    past = imported_lr_overflows(cfg.lr, cfg.imported_lr_mult) if cfg.mode == "finetune" else None
    if past:
        raise refusal(lambda py: f"{named('lr', py, cfg.lr)} times {named('imported_lr_mult', py, cfg.imported_lr_mult)} "
                                 f"is the imported layers' learning rate, {past}: lower one of the two")
    backbones.check_weights(cfg.arch, cfg.weights)
    backbones.check_weights_seed(cfg.weights, cfg.weights_seed, scratch=cfg.mode == "scratch")
    if cfg.resume and cfg.mode == "direct":
        raise refusal(lambda py: f"{checkpoint.resume_flag(py)}: {named('mode', py, 'direct', plain=True)} "
                                 f"does not train, there is nothing to resume")


# ---------------------------------------------------------------------- API


# Of the store options, fne train takes only the cache: where DATA's manifests, containers' listings
# and `hf:` downloads are kept (it reads no rows); its network's options are TrainConfig's.
STORE_OPTIONS = ("cache",)


@opts.keywords(StoreOptions, only=STORE_OPTIONS)
@opts.keywords(DataOptions, TrainConfig)
def train(data: str | Path | Dataset, mode: str, out: str | Path, **kwargs) -> dict:
    """Run one transfer experiment; writes metrics.json, predictions.csv, model.pt and, where one
    was saved (``save_every``), checkpoint.pt in ``out``; in direct mode, which trains nothing (its
    network is the source one, metrics.json's ``network``), metrics.json, predictions.csv and
    class_map.json.

    Seeds the global RNGs (python, numpy, torch) like torchvision's reference scripts do, for
    the run only: the caller's generator states (and torch's deterministic-algorithms and cuDNN
    settings) are put back after it, also after an error or Ctrl-C (`checkpoint.caller_state_kept`).

    Parameters
    ----------
    data : str, Path or Dataset
        Any DATA form with labels.
    mode : {"direct", "scratch", "frozen", "finetune"}
        The experiment.
    out : str or Path
        The run folder (also holds checkpoint.pt: see ``save_every``). A run another process
        writes there is waited for (`fne.data.sidecar.one_run_at_a_time`); ``resume`` then reads
        the checkpoint it left.
    class_map : str, Path or dict, optional
        Direct mode: a JSON file, or the dict, {target class: [ImageNet index or name, ...]}; the
        map read is recorded as ``out``/class_map.json, which metrics.json's options name for a dict.
    resume : bool or "auto", default False
        Continue from ``out``/checkpoint.pt: the same settings and images (a larger ``epochs``
        extends a run without ``scheduler``); "auto": continue from it where it belongs to this
        run (same settings), else start anew (what `fne run` does for its training steps).
    cache : str, optional
        Where DATA's manifest of content keys, containers' listings and `hf:` downloads are read
        and kept (default: $FNE_CACHE, else the default cache); fne train reads no cached rows.
    **kwargs
        The other options of `fne train`, under the same names with the same defaults: ``cache``,
        ``label_key`` (`fne.options.DataOptions`) and the fields of `fne.options.TrainConfig`;
        numbers may be numpy's (recorded as Python's).
        An option the mode does not use, given other than None (``direct_score`` with
        ``mode="frozen"``), is an OptionError naming it.

    Returns
    -------
    dict
        What metrics.json holds: accuracy and mean class accuracy with their intervals, the
        confusion matrix and each class's recall, the best epoch, timings, the learning rates and
        what was imported.

    Raises
    ------
    DataError
        DATA is missing, unlabelled or of one class (but for direct mode).
    WeightsError
        ``weights`` cannot be loaded or do not fit ``arch``.
    FneError
        ``out`` holds a `fne fit` run, or ``resume`` finds no checkpoint of this run.
    """
    with checkpoint.caller_state_kept():
        return _train(data, mode, out, **kwargs)


def _train(data: str | Path | Dataset, mode: str, out: str | Path, **kwargs) -> dict:
    """`train`'s run, which seeds the global RNGs."""
    require_main_script("fne.train")
    cache = opts.resolve({"cache": kwargs.pop("cache", None)}, StoreOptions, only=STORE_OPTIONS)[0].cache
    opts.unexpected(kwargs, DataOptions, TrainConfig)
    data_o = opts.resolve({"label_key": kwargs.pop("label_key", None)}, DataOptions)[0]
    kwargs = {k: plain_indices(v) if k == "class_map" else v for k, v in kwargs.items()
              if v is not None}  # a keyword left None is not given: its default
    dataset = data if isinstance(data, Dataset) else None
    cfg = TrainConfig(data=dataset.name if dataset is not None else _text(data), mode=mode, out=_text(out),
                      **kwargs)
    if not isinstance(cfg.resume, (bool, np.bool_)) and cfg.resume != "auto":  # not any string its hint (bool | str) admits
        raise TypeError(f"resume must be True, False or 'auto', not {type(cfg.resume).__name__} {cfg.resume!r}")
    auto = isinstance(cfg.resume, str) and cfg.resume == "auto"  # `fne run`: this run's own checkpoint is taken up, another one's is not
    cfg.resume = False if auto else cfg.resume  # decided once the run's images are known
    _check(cfg, set(kwargs))
    cfg = opts.plain(cfg)  # numpy numbers as Python's (`resolve`'s): torch, random.seed and metrics.json take them
    # before any work; the folder checked is the one written (~/runs was checked as $HOME/runs and
    # written as ./~/runs, as fit, export and predict do not)
    cfg.out = str(check_target(cfg.out, folder=True, data=None if dataset is not None else cfg.data))
    # the checkpoint to resume is read under the lock: the one a run writing there meanwhile leaves
    then = "resuming from its checkpoint" + " where it is this run's" * auto if auto or cfg.resume else "training anew"
    with one_run_at_a_time(Path(cfg.out), "fne train", cfg.progress, then):
        return _train_into(cfg, data, data_o, cache, auto)


def _train_into(cfg: TrainConfig, data: str | Path | Dataset, data_o: DataOptions, cache: str | None,
                auto: bool) -> dict:
    """`_train`'s run into the run folder cfg.out, which it holds the lock of (`auto`: ``resume="auto"``)."""
    check_run_folder(Path(cfg.out), "fne train")
    dataset = load_dataset(data if isinstance(data, Dataset) else cfg.data, label_key=data_o.label_key, cache=cache)
    dataset.require_labels("fne train", cfg.data)
    if len(dataset) == 0:
        raise DataError(f"{cfg.data}: fne train needs labelled images")
    if len(dataset.classes) < 2 and cfg.mode != "direct":  # direct trains nothing: one class is scored
        raise refusal(lambda py: f"{cfg.data}: {'fne.train' if py else 'fne train'} "
                                 f"{named('mode', py, cfg.mode, plain=True)} needs images of at least 2 classes, "
                                 f"found {len(dataset.classes)} ({', '.join(dataset.classes)})", DataError)
    b = backbones.get(cfg.arch, cfg.weights or ("random" if cfg.mode == "scratch" else "imagenet"))
    ctx = _context(cfg, dataset, b)
    split = run_split(cfg, dataset, b, cache)
    ckpt, stale = _checkpoint(cfg, dataset, split, auto)  # before the model is built: a wrong one stops at once
    model, source = _model(cfg, len(dataset.classes), ctx.device, ckpt is not None)
    workers = _workers(cfg, ctx.device)
    size = cfg.image_size or b.input_size
    on_device = cfg.augment and augment.on_device(cfg.augment_on, ctx.device, workers)
    if on_device:
        require_device_decoder("augment_on")
    train_tf, eval_tf = epochs.transforms(size, cfg.augment, b, on_device)
    if on_device:
        ctx.augment = augment.DeviceAugment(size, train_tf.side)

    path = Path(cfg.out) / checkpoint.CHECKPOINT
    kept = Unsaved(path, cfg.save_every, cfg.epochs, own=checkpoint.identity(path) if ckpt is not None else None)
    try:
        # The loaders' workers end with each part, also on Ctrl-C: the training and validation
        # loaders' (kept across epochs) before the test pass, not idle beside its own.
        with epochs.loaders(ctx, cfg.batch_size, workers) as loader:
            run = (_fit(model, cfg, ctx, source, split, loader, train_tf, eval_tf, ckpt, kept)
                   if cfg.mode != "direct" else _start())
        t0 = time.perf_counter()
        with epochs.loaders(ctx, cfg.batch_size, workers) as loader:
            ids, yt, scores = _test(model, ctx, split, loader(split.test, eval_tf), cfg.direct_score,
                                   None if cfg.mode == "direct" else cfg.lr)
        test = {"ids": ids, "y": yt, "scores": scores, "eval_seconds": time.perf_counter() - t0}
        for note in untrained_notes(dataset, split, ctx.skipped):  # as fit says it of the same split
            warnings.warn(note, stacklevel=3)
        metrics = _write_outputs(model, cfg, dataset, b, ctx, split, source, run, test, data_o)
    except (OSError, KeyboardInterrupt) as e:  # a full disk, Ctrl-C, SIGTERM: the epochs trained are not lost
        kept.keep(e)
        raise
    if stale is not None and checkpoint.identity(path) == stale:  # no save came: the run folder is this run's
        path.unlink(missing_ok=True)
    return metrics


def _checkpoint(cfg: TrainConfig, dataset: Dataset, split: Split, auto: bool) -> tuple[dict | None, tuple | None]:
    """(the checkpoint --resume continues (checked against the run's settings and images), or None;
    with `auto`, the run folder's own checkpoint where it belongs to this run, the identity
    (`checkpoint.identity`) of a checkpoint left unused, or None). One left unused is said: it is
    replaced at the next save, or removed as the run ends without one (a later --resume would
    take it for this run's); an interrupted run leaves it. A direct run saves none: any checkpoint
    there is another run's, and is removed as the run ends."""
    split.images = checkpoint.images(dataset.ids, dataset.labels, {"train": split.train, "val": split.val,
                                                                   "test": split.test}, dataset.keys())
    path = Path(cfg.out) / checkpoint.CHECKPOINT
    if auto:
        ckpt = checkpoint.resumable(path, cfg, split.images) if cfg.mode != "direct" else None
        cfg.resume = ckpt is not None
    else:
        ckpt = checkpoint.load(path, cfg, split.images) if cfg.resume else None
    stale = checkpoint.identity(path) if ckpt is None and path.is_file() else None
    if stale is not None and cfg.mode == "direct":
        print(said(lambda py: f"note: starting a new run; {path} is removed at the run's end (another run's: "
                              f"{named('mode', py, 'direct', plain=True)} trains nothing and saves none)"), flush=True)
    elif stale is not None:
        new = f"note: starting a new run; {path}"
        why = STARTS_OVER.get() or (lambda py: f"{checkpoint.resume_flag(py)} continues it")
        if not auto and _refused(path, cfg, split.images):
            why = STARTS_OVER.get() or (lambda py: f"another run's: {checkpoint.resume_flag(py)} would refuse it")
        fate = "is replaced at the next save, or removed at the run's end if none comes"
        print(f"{new} (another run's settings or images, another fne release's, or unreadable) {fate}" if auto else
              said(lambda py: f"{new} {fate} ({why(py)})"), flush=True)  # in a log at once, as progress_line's
    return ckpt, stale


def _refused(path: Path, cfg: TrainConfig, images: dict) -> bool:
    """Whether --resume would refuse the checkpoint at `path` (another run's settings or images,
    or unreadable), read memory-mapped: no network's worth of bytes for a note."""
    try:
        return bool(checkpoint.mismatch(checkpoint.read(path, mmap=True), cfg, images))
    except FneError:
        return True


def _workers(cfg: TrainConfig, dev: torch.device) -> int:
    """--workers, else as many as `fne extract` uses on CUDA (`devices.default_workers`: one per
    core but one), and on a CPU half the cores, at most 4 (the network needs the rest)."""
    if cfg.workers is not None:
        return cfg.workers
    if dev.type in ("cuda", "mps"):
        return default_workers(dev)
    return min(4, max(1, usable_cores() // 2))


def _context(cfg: TrainConfig, dataset: Dataset, b: backbones.Backbone) -> epochs.Ctx:
    """Device, precision and normalisation of the passes; seeds the global RNGs."""
    dev = resolve_device(cfg.device)
    prec = resolve_precision(cfg.precision, dev)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    checkpoint.seed_all(cfg.seed)
    scaler = torch.amp.GradScaler(dev.type) if (prec == "fp16" and dev.type in ("cuda", "mps")) else None
    return epochs.Ctx(dataset, dataset.label_indices(), dev, prec, Normalize(b.mean, b.std).to(dev), scaler,
                      cfg.progress, {}, data=cfg.data)


def _model(cfg: TrainConfig, num_classes: int, device: torch.device, resumed: bool) -> tuple[torch.nn.Module, dict]:
    """The mode's network on `device` (the checkpoint's weights replace them where `resumed`, as
    said); -> (model, where its weights came from: weights, report, renew, imported, keep)."""
    weights = cfg.weights or ("random" if cfg.mode == "scratch" else "imagenet")
    model, report, renew = build_model(cfg.arch, cfg.mode, num_classes, weights, cfg.new_layers,
                                       cfg.seed, cfg.weights_seed, device)
    ckpt = str(Path(cfg.out) / checkpoint.CHECKPOINT) if resumed else None
    # direct uses the source network as it is: no import into a new network to describe
    for line in describe_import(report, renew, ckpt) if cfg.mode != "direct" else []:
        print(line, flush=True) if line.startswith("not imported") else progress_line(line, cfg.progress)
    imported = set(report.imported) if report is not None else set()
    freeze_imported(model, cfg.mode, imported)
    keep = kept_statistics(model, cfg.mode, imported, cfg.train_bn)
    model.to(memory_format=torch.channels_last)
    return model, {"weights": weights, "report": report, "renew": renew, "imported": imported, "keep": keep}


# ----------------------------------------------------------------- epochs


def _fit(model: torch.nn.Module, cfg: TrainConfig, ctx: epochs.Ctx, source: dict, split: Split, loader,
         train_tf, eval_tf, ckpt: dict | None, kept: Unsaved) -> dict:
    """The training epochs (continuing checkpoint `ckpt` where given); leaves the best epoch's
    weights in `model`, and in `kept` the last epoch where no checkpoint holds it; -> the run's
    progress (epoch, history, best, train_seconds)."""
    opt = epochs.optimizer(model, cfg.mode, cfg.lr, cfg.imported_lr_mult, cfg.momentum, cfg.weight_decay,
                           source["imported"])
    parts = {"model": model, "optimizer": opt, "scheduler": epochs.scheduler(opt, cfg.scheduler, cfg.epochs),
             "scaler": ctx.scaler}
    path = Path(cfg.out) / checkpoint.CHECKPOINT
    run, saved, wrote = _start(), None, False  # saved: the epoch the run folder's checkpoint holds; wrote: by this run
    ran_on = {"device": str(ctx.device), "precision": ctx.precision, "augment_on": "device" if ctx.augment else "cpu"}
    if ckpt is not None:
        before = ckpt.get("ran_on", ran_on)
        ctx.skipped.update(ckpt.get("skipped", {}))  # named once, and counted even with no epoch left
        run = checkpoint.resume(ckpt, parts, path)
        saved = run["epoch"]
        ckpt.clear()  # its tensors are copied into `parts`: their memory goes back now
        progress_line(f"resumed {path} after epoch {run['epoch']}", cfg.progress)
        if before != ran_on:  # another machine: a valid run, but not the one it would have been
            match = said(lambda py: ", ".join(named(n, py) for n in ("device", "precision", "augment_on")))
            print(f"note: epochs 1-{run['epoch']} ran on {_on(before)}, the rest runs on {_on(ran_on)}: not "
                  f"bit-identical to an uninterrupted run (give {match} to match)", flush=True)
    gen = torch.Generator()
    loaders = (loader(split.train, train_tf, gen), loader(split.val, eval_tf) if len(split.val) else None)
    last_write = time.monotonic()

    def save(states: dict, progress: dict) -> None:  # `parts`, or their state dicts
        Path(cfg.out).mkdir(parents=True, exist_ok=True)  # made by a first epoch that ran
        checkpoint.save(path, cfg, states, progress, images=split.images, ran_on=ran_on, skipped=ctx.skipped,
                        weights_file=checkpoint.weights_file(cfg.weights),
                        weights_fingerprint=checkpoint.weights_fingerprint(cfg.weights))

    for epoch in range(run["epoch"], cfg.epochs):
        _epoch(model, cfg, ctx, parts, loaders, gen, source["keep"], epoch, run)
        if checkpoint.due(cfg.save_every, epoch, last_write):
            save(parts, run)
            saved, wrote, last_write = epoch + 1, True, time.monotonic()
            kept.drop()
        elif not wrote and epoch + 1 < cfg.epochs:  # no save yet (one resumed from is behind): this epoch's end, in memory
            kept.hold_epoch(save, model, parts, run)
    if saved != run["epoch"]:  # its weights before the best epoch's are put in the model
        kept.hold_epoch(save, model, parts, run, done=True)
    if run["best"]["state"] is not None:
        model.load_state_dict(run["best"]["state"])
    return run


def _on(ran_on: dict) -> str:
    """Where epochs ran, in words: "cpu in bf16, augmenting on cpu"."""
    return f"{ran_on['device']} in {ran_on['precision']}, augmenting on {ran_on.get('augment_on', 'cpu')}"


def _start() -> dict:
    """A run's progress before its first epoch."""
    return {"epoch": 0, "history": [], "best": {"epoch": 0, "val_accuracy": None, "val_loss": None, "state": None},
            "train_seconds": 0.0}


def _epoch(model, cfg: TrainConfig, ctx: epochs.Ctx, parts: dict, loaders: tuple, gen: torch.Generator,
           keep: list[str], epoch: int, run: dict) -> None:
    """One epoch, its row appended to run["history"]; the best weights so far kept in run["best"]."""
    t0 = time.perf_counter()
    opt, sched, (train_loader, val_loader) = parts["optimizer"], parts["scheduler"], loaders
    train_loader.dataset.seed = checkpoint.seed_epoch(cfg.seed, epoch, gen)  # SeededItems' crops and flips
    train_mode(model, keep)
    row = {"epoch": epoch + 1, "lr": opt.param_groups[-1]["lr"],
           **epochs.train_one_epoch(model, train_loader, opt, ctx, f"{cfg.mode} {epoch + 1}/{cfg.epochs}")}
    if sched is not None:
        sched.step()
    if val_loader is not None:
        _, vy, vp = epochs.evaluate(model, val_loader, ctx, "val")
        epochs.check_scores(vp, "val", f" in epoch {epoch + 1}/{cfg.epochs}", epochs.base_lr(opt))
        row["val_accuracy"] = float((vp.argmax(1) == vy).mean())
        row["val_loss"] = epochs.mean_loss(vy, vp)
    best = run["best"]
    if (best["state"] is None or val_loader is None
            or (row["val_accuracy"], -row["val_loss"]) > (best["val_accuracy"], -best["val_loss"])):
        run["best"] = {"epoch": epoch + 1, "val_accuracy": row.get("val_accuracy"), "val_loss": row.get("val_loss"),
                       "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
    run["train_seconds"] += time.perf_counter() - t0
    row["seconds"] = time.perf_counter() - t0
    run["history"].append(row)
    run["epoch"] = epoch + 1
    progress_line(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
                  + (f" val_acc {row['val_accuracy']:.3f} val_loss {row['val_loss']:.4f}" if val_loader else "")
                  + f" ({row['img_s']:.1f} img/s)", cfg.progress)


# ---------------------------------------------------------------- outputs


def _test(model, ctx: epochs.Ctx, split: Split, loader, direct_score: str, lr: float | None):
    """(dataset indices, labels among split.classes, scores over split.classes) of the test images;
    `lr`: the run's --lr, which scores that are not numbers name (None: direct, trained nothing)."""
    ids, yt, probs = epochs.evaluate(model, loader, ctx, "test")
    epochs.check_scores(probs, "test", "", lr)
    if split.cmap is None:
        return ids, yt, probs
    names = ctx.dataset.classes
    return ids, np.array([split.classes.index(names[v]) for v in yt]), direct_scores(probs, split.cmap, direct_score)


def _write_outputs(model, cfg: TrainConfig, dataset: Dataset, b: backbones.Backbone, ctx: epochs.Ctx,
                   split: Split, source: dict, run: dict, test: dict, data_o: DataOptions) -> dict:
    """predictions.csv, model.pt (a direct run's network is the source one: none) and metrics.json;
    -> metrics.json's dict."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    pred = test["scores"].argmax(1)
    cfg.class_map, map_file = recorded(cfg.class_map, out)  # a dict: metrics.json's options name the file
    metrics = _metrics(cfg, dataset, ctx, split, source, run, test, pred, data_o)
    if split.cmap is not None:
        metrics.update(class_map={c: [b.categories()[s] for s in src] for c, src in split.cmap.items()},
                       direct_score=cfg.direct_score, n_excluded=split.n_excluded,
                       network={"arch": cfg.arch, "weights": metrics["weights"],
                                "weights_fingerprint": metrics["weights_fingerprint"],
                                "note": "the source network as it is: a direct run trains nothing, and keeps no "
                                        "copy of it (no model.pt)"})
    # together (`replace_files`): a failed write leaves the earlier run whole; metrics.json last
    predictions = predictions_csv(dataset, test["ids"], [split.classes[p] for p in pred],
                                  [f"score_{c}" for c in split.classes], test["scores"])
    written = {map_file: lambda f: f.write_text(json.dumps(split.given_map, indent=2))} if map_file else {}
    if split.cmap is None:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

        def save_model(tmp: Path) -> None:  # written before metrics.json, which records its bytes' hash
            through_file(lambda f: torch.save(weights, f))(tmp)
            metrics["model_fingerprint"] = "file-" + backbones.file_fingerprint(tmp)

        written[out / "model.pt"] = save_model
    replace_files({**written, out / "predictions.csv": predictions,
                   out / "metrics.json": lambda f: f.write_text(json_text(metrics, indent=2))})
    if split.cmap is not None:  # an earlier run's network beside this run's metrics.json: not this run's
        (out / "model.pt").unlink(missing_ok=True)
    return metrics


def _metrics(cfg: TrainConfig, dataset: Dataset, ctx: epochs.Ctx, split: Split, source: dict, run: dict,
             test: dict, pred: np.ndarray, data_o: DataOptions) -> dict:
    weights, report, renew = source["weights"], source["report"], source["renew"]
    direct = split.cmap is not None
    scores, confusion = split_scores(test["y"], pred, len(split.classes))
    acc, mca, n_test = scores["accuracy"], scores["mean_class_accuracy"], int(len(test["ids"]))
    def readable(part: np.ndarray) -> int:  # unreadable images are skipped, as `fne fit` leaves them out
        return sum(dataset.ids[i] not in ctx.skipped for i in part)

    n_train = 0 if direct else readable(split.train)  # direct learns nothing from the training part
    splits = [{"accuracy": acc, "mean_class_accuracy": mca, "n_train": n_train, "n_test": n_test,
               **split_record(dataset.ids, test["ids"], test["y"], pred)}]  # as fit's
    return {
        "format": METRICS_FORMAT, "kind": "train", "method": f"train:{cfg.mode}", "mode": cfg.mode,
        "dataset": dataset.name, "data": cfg.data, "data_resolved": data_identity(cfg.data),
        "accuracy": acc, "accuracy_std": 0.0, "mean_class_accuracy": mca, "mean_class_accuracy_std": 0.0,
        "accuracy_ci": accuracy_interval(splits), "mean_class_accuracy_ci": mean_class_interval(splits, confusion),
        "splits": splits,
        "n_splits": 1, "n_train": n_train, "n_val": readable(split.val), "n_test": n_test,
        "n_images": len(dataset), "classes": split.classes,
        "labels_fingerprint": labels_fingerprint(dataset.keys(), dataset.labels),  # as fit's: DATA's listing
        "arch": cfg.arch, "weights": weights,
        "weights_fingerprint": backbones.fingerprint(cfg.arch, weights,
                                                     cfg.seed if cfg.mode == "scratch" else cfg.weights_seed),
        "new_layers": list(renew) if cfg.mode != "scratch" else "all", **_imported(report, direct),
        "train_bn": cfg.mode == "scratch" or (cfg.mode == "finetune" and cfg.train_bn),
        "precision": ctx.precision, "crop": "center", "image_size": cfg.image_size or backbones.get(cfg.arch, weights).input_size,
        "augment": cfg.augment, "augment_on": ("device" if ctx.augment is not None else "cpu") if cfg.augment else None,
        "workers": _workers(cfg, ctx.device),
        "train_seconds": run["train_seconds"], "eval_seconds": test["eval_seconds"],
        "epochs": cfg.epochs if not direct else 0, "best_epoch": run["best"]["epoch"],
        "epoch_choice": None if direct else ("highest val_accuracy, then lowest val_loss, then earliest"
                                             if len(split.val) else "last (no validation part)"),
        "val_accuracy": run["best"]["val_accuracy"], "lr": cfg.lr if not direct else None,
        "imported_lr": {"finetune": cfg.lr * cfg.imported_lr_mult, "frozen": 0.0}.get(cfg.mode),
        "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "scheduler": cfg.scheduler,
        "batch_size": cfg.batch_size, "seed": cfg.seed,
        "split_protocol": "predefined" if dataset.has_split else (
            f"1x {cfg.train_per_class} per class" if cfg.train_per_class else f"1x stratified test_size={cfg.test_size}"),
        "test_order": TEST_ORDER,
        "val_fraction": cfg.val_fraction if not direct else 0.0,
        "validation": None if direct or not len(split.val) else (
            "DATA's validation part" if dataset.has_val_part else f"{cfg.val_fraction:g} of the training images"),
        "confusion": confusion.tolist(), "class_recall": class_recall(confusion, split.classes),
        "history": run["history"], "skipped": ctx.skipped,
        "device": str(ctx.device), **provenance(cfg, data_o, device=ctx.device, verb="train"),
    }


def _imported(report: ImportReport | None, direct: bool) -> dict:
    """metrics.json's `imported` and `not_imported`: None for a direct run, which imports nothing
    into a new network (it scores with the source one: its `network`)."""
    if direct:
        return {"imported": None, "not_imported": None}
    return {"imported": report.layers() if report is not None else [],
            "not_imported": {n: w for n, w in report.skipped if w != "renewed layer"} if report else {}}


# ---------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `fne train`: the fields of fne.options.TrainConfig."""
    p.add_argument("data", help=DATA_HELP)
    opts.add_arguments(p, StoreOptions, only=STORE_OPTIONS)
    opts.add_arguments(p, DataOptions, TrainConfig)


def run_cli(args: argparse.Namespace) -> int:
    """`fne train` from parsed arguments (`train`); prints its one-line summary; -> the exit status."""
    kw = opts.from_args(args, DataOptions, TrainConfig)
    ckpt = Path(args.out) / checkpoint.CHECKPOINT
    found = checkpoint.identity(ckpt)  # one a run resumed from and did not save over is not written by it
    m = train(args.data, kw.pop("mode"), kw.pop("out"), cache=args.cache, **kw)
    if m["mode"] == "direct":
        how = (f"no training, {len(m['classes'])} mapped classes, n_test {m['n_test']}, "
               f"{m['n_excluded']} test images of unmapped classes left out")
    else:
        how = (f"best epoch {m['best_epoch']}/{m['epochs']}, n_train {m['n_train']}, n_test {m['n_test']}, "
               f"train {m['train_seconds']:.1f} s")
    acc, mca = (f"{m[k]:.4f} ({100 * m[k + '_ci']['level']:g}% CI {m[k + '_ci']['low']:.4f}-{m[k + '_ci']['high']:.4f})"
                for k in ("accuracy", "mean_class_accuracy"))
    print(f"{m['method']} on {m['dataset']}: accuracy {acc}, mean class accuracy {mca} ({how})")
    if m["mode"] == "direct":
        files, why = ["class_map.json"], f" (no model.pt: its network is the source one, {m['arch']} with weights {m['weights']!r})"
    else:  # checkpoint.pt where this run saved one (README: ~3x model.pt, kept for --resume)
        now = checkpoint.identity(ckpt)
        files = ["model.pt"] + [checkpoint.CHECKPOINT] * (now is not None and now != found)
        why = f" ({args.out}/{checkpoint.CHECKPOINT}, saved before, left as it was)" if now and now == found else ""
    files = ["metrics.json", "predictions.csv", *files]
    print(f"wrote {args.out}/{', '.join(files[:-1])} and {files[-1]}{why}")
    return 0


verb_module(__name__)
