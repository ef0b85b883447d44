"""`fne train`: the transfer experiments that run the network end to end.

- direct:   the source network unchanged, its 1000-way classifier read through a class map;
- scratch:  the same architecture, Xavier-initialised, trained on the target data only;
- frozen:   imported layers fixed, new head layers trained;
- finetune: everything trains, imported layers at `lr * imported_lr_mult`.

One run writes RUN_DIR/metrics.json, predictions.csv and model.pt (a state dict whose module
names are the backbone's own, so `--weights RUN_DIR/model.pt` works in `fne extract`/`fne train`).
`--save-every N` writes one torchvision-references style checkpoint dict; `--resume` continues
it. Every epoch reseeds all RNGs from (seed, epoch), so a resumed run is bit-identical to an
uninterrupted one on CPU.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torchvision.transforms import v2 as T

from fne import backbones, verb_module
from fne.backbones import ImportReport, Normalize, Preprocess
from fne.data import Dataset, load_dataset
from fne.devices import autocast, resolve_device, resolve_precision
from fne.errors import DataError, FneError, WeightsError
from fne.metrics import provenance, split_scores
from fne.names import DIRECT_SCORES, MODES, NEW_LAYERS, SCHEDULERS
from fne.progress import progress

CHECKPOINT = "checkpoint.pt"
MIN_IMPORTED = 0.5  # below this fraction of the kept tensors, --weights is another architecture
# Arguments that define a run: --resume refuses a checkpoint written with other values.
RUN_DEFINING = ("data", "mode", "arch", "weights", "weights_seed", "new_layers", "train_bn", "batch_size", "lr",
                "imported_lr_mult", "momentum", "weight_decay", "scheduler", "image_size", "augment",
                "val_fraction", "test_size", "seed", "precision")


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in the checkpoint as `args`."""

    data: str
    mode: str
    out: str
    arch: str = "vgg16"
    weights: str | None = None  # None: imagenet, or random for scratch
    weights_seed: int = 0
    new_layers: str = "fc"
    class_map: str | None = None
    direct_score: str = "sum"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    imported_lr_mult: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "none"
    image_size: int | None = None  # None: the backbone's input size (224)
    augment: bool = True
    val_fraction: float = 0.1
    test_size: float = 0.25
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    workers: int | None = None
    save_every: int = 0
    resume: bool = False
    train_bn: bool = False  # finetune: imported BatchNorm uses batch statistics and updates them
    deterministic: bool = False
    progress: bool = True


# ------------------------------------------------------------------ model


def _init_xavier(module: nn.Module) -> None:
    """The course model's initialisation: Glorot-uniform weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap a submodule in place, so state-dict names stay the backbone's own (classifier.6)."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _new_layer(old: nn.Module, name: str, out_features: int | None) -> nn.Module:
    if not isinstance(old, nn.Linear):
        raise FneError(f"cannot renew {name}: it is a {type(old).__name__}, not a Linear layer")
    new = nn.Linear(old.in_features, out_features or old.out_features, bias=old.bias is not None)
    _init_xavier(new)
    return new


def source_state(arch: str, weights: str, weights_seed: int = 0) -> dict:
    """The tensors to import: ImageNet, a seeded random network, or a file (state dict or checkpoint)."""
    if weights == "imagenet" or (weights != "random" and not Path(weights).is_file()):
        return backbones.get(arch, weights).imagenet()  # imagenet, or a torchvision weights name
    if weights == "random":
        return backbones.load_backbone(arch, "random", weights_seed).state_dict()
    return backbones.read_state_dict(weights)


def new_layer_names(backbone: backbones.Backbone, mode: str, new_layers: str) -> tuple[str, ...]:
    if mode == "direct":
        return ()
    if new_layers not in NEW_LAYERS:
        raise FneError(f"unknown --new-layers {new_layers!r}; choose from {', '.join(NEW_LAYERS)}")
    return backbone.fc_layers if new_layers == "fc" else (backbone.classifier,)


def build_model(arch: str, mode: str, num_classes: int, weights: str = "imagenet",
                new_layers: str = "fc", seed: int = 0, weights_seed: int = 0,
                ) -> tuple[nn.Module, ImportReport | None, tuple[str, ...]]:
    """(model, import report or None for scratch, names of the renewed layers).

    New layers are seeded by `seed` so that a run can be rebuilt; imported tensors are copied
    by name and shape (`backbones.import_matching`).
    """
    if mode not in MODES:
        raise FneError(f"unknown --mode {mode!r}; choose from {', '.join(MODES)}")
    b = backbones.get(arch)
    renew = new_layer_names(b, mode, new_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = b.build(1000)
        if mode == "scratch":
            _replace(model, b.classifier, _new_layer(model.get_submodule(b.classifier), b.classifier, num_classes))
            _init_xavier(model)
            return model, None, tuple(n for n, _ in model.named_modules() if n)
        for name in renew:
            out = num_classes if name == b.classifier else None
            _replace(model, name, _new_layer(model.get_submodule(name), name, out))
    state = source_state(arch, weights, weights_seed)
    report = backbones.import_matching(model, state, skip=renew)
    kept = [n for n, why in report.skipped if why != "renewed layer"]
    total = len(report.imported) + len(kept)
    if mode == "direct" and kept:
        raise WeightsError(
            f"--weights {weights}: direct mode applies the source network unchanged, but "
            f"{len(kept)} tensors do not fit --arch {arch}: " + _examples(report))
    if total and len(report.imported) < MIN_IMPORTED * total:
        raise WeightsError(
            f"--weights {weights}: does not fit --arch {arch}: only {len(report.imported)} of {total} "
            f"tensors match by name and shape (e.g. {_examples(report)}); is it a state dict of "
            f"another architecture?")
    return model, report, renew


def _examples(report: ImportReport, n: int = 3) -> str:
    bad = [(k, w) for k, w in report.skipped if w != "renewed layer"][:n]
    return "; ".join(f"{k}: {w}" for k, w in bad)


def describe_import(report: ImportReport | None, renew: tuple[str, ...]) -> list[str]:
    """Human-readable import summary: imported layers, and every tensor left out with why."""
    if report is None:
        return ["scratch: every layer randomly initialised (Xavier-uniform, zero biases)"]
    lines = [f"imported {len(report.imported)} tensors of {len(report.layers())} layers: "
             + ", ".join(report.layers())]
    if renew:
        lines.append("new layers (randomly initialised): " + ", ".join(renew))
    lines += [f"not imported {n}: {why}" for n, why in report.skipped if why != "renewed layer"]
    return lines


# ------------------------------------------------------------------- data


class _Images(torch.utils.data.Dataset):
    """Dataset items as uint8 tensors; an unreadable image comes back as None with the reason."""

    def __init__(self, dataset: Dataset, indices: np.ndarray, y: np.ndarray, transform):
        self.dataset, self.indices, self.y, self.transform = dataset, indices, y, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = int(self.indices[j])
        try:
            return i, self.transform(self.dataset.load(i)), int(self.y[i]), None
        except Exception as e:  # same policy as extract: skip it, say why
            return i, None, int(self.y[i]), f"{type(e).__name__}: {e}"


def _collate(items):
    good = [it for it in items if it[1] is not None]
    bad = [(it[0], it[3]) for it in items if it[1] is None]
    if not good:
        return [], None, None, bad
    return ([it[0] for it in good], torch.stack([it[1] for it in good]),
            torch.tensor([it[2] for it in good]), bad)


class _Center:
    """Eval view: `fne extract`'s center crop (the weights' resize and interpolation), one uint8 tensor."""

    def __init__(self, size: int, backbone: backbones.Backbone | None = None):
        self.prep = backbone.preprocess("center", size) if backbone is not None else Preprocess(size, "center")

    def __call__(self, img) -> torch.Tensor:
        return self.prep(img)[0]


def _transforms(size: int, augment: bool, backbone: backbones.Backbone | None = None):
    """(train, eval) transforms to uint8 (3, S, S); normalisation happens on the device."""
    center = _Center(size, backbone)
    if not augment:
        return center, center
    # scale from 0.25: milder than torchvision's 0.08, since the runs here are a few epochs.
    train = T.Compose([T.PILToTensor(), T.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
                       T.RandomHorizontalFlip()])
    return train, center


def make_split(dataset: Dataset, y: np.ndarray, test_size: float, val_fraction: float,
               seed: int, need_val: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices: the predefined split or a stratified one; val comes from train."""
    if dataset.has_split:
        s = np.array(dataset.splits)
        tr, te = np.flatnonzero(s == "train"), np.flatnonzero(s == "test")
        if len(tr) == 0 or len(te) == 0:
            raise DataError(f"{dataset.name}: predefined split needs both train and test images")
    else:
        if not 0 < test_size < 1:
            raise FneError(f"--test-size must be in (0, 1), got {test_size}")
        tr, te = _stratified(np.arange(len(y)), y, test_size, seed, "--test-size")
    if not need_val or val_fraction == 0:
        return np.sort(tr), np.array([], dtype=np.int64), np.sort(te)
    if not 0 <= val_fraction < 1:
        raise FneError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    tr, va = _stratified(tr, y[tr], val_fraction, seed, "--val-fraction")
    return np.sort(tr), np.sort(va), np.sort(te)


def _stratified(idx: np.ndarray, y: np.ndarray, size: float, seed: int, what: str):
    try:
        a, b = train_test_split(idx, test_size=size, stratify=y, random_state=seed)
    except ValueError as e:  # a class with one image, or fewer held-out images than classes
        raise DataError(f"cannot carve a stratified {what} {size} part: {e}") from None
    return a, b


# -------------------------------------------------------------- class map


def read_class_map(path: str | Path, classes: list[str], categories: list[str]) -> dict[str, list[int]]:
    """JSON {target class: [source index or name, ...]} -> {target: [source indices]}, checked."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FneError(f"--class-map {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise FneError(f"--class-map {path}: not readable JSON ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise FneError(f"--class-map {path}: expected a JSON object {{target class: [source classes]}}")
    unknown = [t for t in raw if t not in classes]
    if unknown:
        raise FneError(f"--class-map {path}: unknown target class(es) {', '.join(map(repr, unknown))}; "
                       f"DATA classes: {', '.join(classes)}")
    lower: dict[str, list[int]] = {}
    for k, c in enumerate(categories):
        lower.setdefault(c.lower(), []).append(k)
    out: dict[str, list[int]] = {}
    owner: dict[int, str] = {}
    for target in classes:  # DATA's class order
        if target not in raw:
            continue
        srcs = raw[target] if isinstance(raw[target], list) else [raw[target]]
        if not srcs:
            raise FneError(f"--class-map {path}: target class {target!r} maps to no source class")
        idx = []
        for s in srcs:
            k = _source_index(s, lower, categories, path)
            if k in owner:
                raise FneError(f"--class-map {path}: source class {categories[k]!r} ({k}) is mapped to "
                               f"both {owner[k]!r} and {target!r}")
            owner[k] = target
            idx.append(k)
        out[target] = idx
    return out


def _source_index(s, lower: dict[str, list[int]], categories: list[str], path) -> int:
    if isinstance(s, int) and not isinstance(s, bool):
        if not 0 <= s < len(categories):
            raise FneError(f"--class-map {path}: source index {s} out of range 0..{len(categories) - 1}")
        return s
    if not isinstance(s, str):
        raise FneError(f"--class-map {path}: source class {s!r} is neither a name nor an index")
    hits = lower.get(s.strip().lower(), [])
    if len(hits) > 1:
        raise FneError(f"--class-map {path}: source class name {s!r} is ambiguous (indices "
                       f"{', '.join(map(str, hits))}); give the index")
    if not hits:
        close = difflib.get_close_matches(s, categories, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise FneError(f"--class-map {path}: unknown source class {s!r}{hint}")
    return hits[0]


# ---------------------------------------------------------------- training


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _seed_all(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _rng_state() -> dict:
    """RNG states in types `torch.load(weights_only=True)` accepts (no numpy arrays)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def kept_statistics(model: nn.Module, mode: str, imported: set[str], train_bn: bool = False) -> list[str]:
    """Imported BatchNorm layers that stay in inference mode while the rest trains.

    frozen: always (frozen layers do not learn, statistics included). finetune: by default too
    (the Keras fine-tuning practice): with small target batches, batch statistics drift far
    faster than imported weights learn at lr * 0.001, and the head learns on features that
    the stored statistics do not reproduce at test time. `--train-bn` lets them update.
    """
    if mode not in ("frozen", "finetune") or (mode == "finetune" and train_bn):
        return []
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and f"{n}.running_mean" in imported]


def _train_mode(model: nn.Module, keep: list[str]) -> None:
    """Training mode, except the BatchNorm layers that keep their imported statistics."""
    model.train()
    for name in keep:
        model.get_submodule(name).eval()


@dataclass
class _Ctx:
    """What one epoch needs besides the model."""

    device: torch.device
    precision: str
    norm: nn.Module
    scaler: torch.amp.GradScaler | None
    progress: bool
    skipped: dict


def _train_one_epoch(model: nn.Module, loader, optimizer, ctx: _Ctx, desc: str) -> dict:
    """One pass over the training part; returns mean loss, accuracy, images/s."""
    criterion = nn.CrossEntropyLoss()
    n = correct = 0
    loss_sum = 0.0
    t0 = time.perf_counter()
    bar = progress(len(loader.dataset), desc, ctx.progress, leave=False)
    try:
        for idx, x, y, bad in loader:
            _note_bad(ctx, loader.dataset.dataset, bad)
            if x is None:
                continue
            x, y = _inputs(ctx, x), y.to(ctx.device)
            with autocast(ctx.device, ctx.precision):
                logits = model(x)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            if ctx.scaler is not None:
                ctx.scaler.scale(loss).backward()
                ctx.scaler.step(optimizer)
                ctx.scaler.update()
            else:
                loss.backward()
                optimizer.step()
            b = len(idx)
            n += b
            loss_sum += float(loss.detach()) * b
            correct += int((logits.argmax(1) == y).sum())
            bar.update(b + len(bad))
            bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{correct / n:.3f}",
                            img_s=f"{n / max(time.perf_counter() - t0, 1e-9):.1f}")
    finally:
        bar.close()
    s = time.perf_counter() - t0
    return {"train_loss": loss_sum / max(n, 1), "train_accuracy": correct / max(n, 1),
            "img_s": n / max(s, 1e-9), "seconds": s}


def _inputs(ctx: _Ctx, x: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> normalised float on the device, channels-last (faster convolutions on CPU)."""
    return ctx.norm(x.to(ctx.device, non_blocking=True)).contiguous(memory_format=torch.channels_last)


def _note_bad(ctx: _Ctx, dataset: Dataset, bad) -> None:
    for i, err in bad:
        if dataset.ids[i] not in ctx.skipped:
            ctx.skipped[dataset.ids[i]] = err
            warnings.warn(f"skipped {dataset.ids[i]}: {err}", stacklevel=2)


@torch.no_grad()
def _evaluate(model: nn.Module, loader, ctx: _Ctx, desc: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dataset indices, labels, softmax probabilities) of every readable image."""
    model.eval()
    ids, ys, probs = [], [], []
    bar = progress(len(loader.dataset), desc, ctx.progress, leave=False)
    try:
        for idx, x, y, bad in loader:
            _note_bad(ctx, loader.dataset.dataset, bad)
            bar.update(len(idx) + len(bad))
            if x is None:
                continue
            with autocast(ctx.device, ctx.precision):
                logits = model(_inputs(ctx, x))
            probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
            ids += idx
            ys.append(y.numpy())
    finally:
        bar.close()
    if not ids:
        raise DataError(f"{desc}: no readable images")
    return np.array(ids), np.concatenate(ys), np.concatenate(probs)


def _loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def _optimizer(model: nn.Module, cfg: TrainConfig, imported: set[str]) -> torch.optim.Optimizer:
    """SGD; finetune gives imported parameters lr * imported_lr_mult, new ones the base lr."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.mode == "finetune":
        old = [p for n, p in params if n in imported]
        new = [p for n, p in params if n not in imported]
        groups = [{"params": old, "lr": cfg.lr * cfg.imported_lr_mult, "name": "imported"},
                  {"params": new, "lr": cfg.lr, "name": "new"}]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": [p for _, p in params], "lr": cfg.lr, "name": "new"}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _scheduler(optimizer, cfg: TrainConfig):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "step":  # a tenth of the lr at each third of the run
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.1)
    return None


def _save_checkpoint(path: Path, ckpt: dict) -> None:
    """Write-then-rename: an interrupted save never leaves a half checkpoint behind."""
    tmp = path.with_suffix(".pt.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, cfg: TrainConfig) -> dict:
    if not path.is_file():
        raise FneError(f"--resume: no checkpoint {path} (a run writes one with --save-every N)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FneError(f"--resume: cannot read {path} ({e})") from None
    old = ckpt.get("args", {})
    diff = [f"--{k.replace('_', '-')} {old.get(k)!r} there, {getattr(cfg, k)!r} now"
            for k in RUN_DEFINING if old.get(k) != getattr(cfg, k)]
    if cfg.scheduler != "none" and old.get("epochs") != cfg.epochs:
        diff.append(f"--epochs {old.get('epochs')} there, {cfg.epochs} now (the schedule depends on it)")
    if diff:
        raise FneError(f"--resume: {path} belongs to another run: " + "; ".join(diff))
    return ckpt


# ------------------------------------------------------------------- outputs


def _write_predictions(path: Path, dataset: Dataset, classes: list[str], ids: np.ndarray,
                       scores: np.ndarray, pred: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "predicted", *[f"score_{c}" for c in classes], "true"])
        for i, s, p in zip(ids, scores, pred, strict=True):
            w.writerow([dataset.ids[i], classes[p], *[f"{v:.6g}" for v in s], dataset.labels[i]])


def _direct_scores(probs: np.ndarray, cmap: dict[str, list[int]], how: str) -> np.ndarray:
    """Target score = sum (default) or max of the softmax of its source classes."""
    cols = [probs[:, src] for src in cmap.values()]
    return np.stack([c.sum(1) if how == "sum" else c.max(1) for c in cols], axis=1)


# ---------------------------------------------------------------------- API


def train(data: str | Path | Dataset, mode: str, out: str | Path, **kwargs) -> dict:
    """Run one transfer experiment (see TrainConfig for the options); returns metrics.json's dict.

    Seeds the global RNGs (python, numpy, torch) like torchvision's reference scripts do.
    """
    dataset = data if isinstance(data, Dataset) else None
    cfg = TrainConfig(data=dataset.name if dataset is not None else str(data), mode=mode, out=str(out),
                      **kwargs)
    _check(cfg)
    if dataset is None:
        dataset = load_dataset(cfg.data)
    if dataset.labels is None or len(dataset) == 0:
        raise DataError(f"{cfg.data}: fne train needs labelled images")
    weights = cfg.weights or ("random" if cfg.mode == "scratch" else "imagenet")
    b = backbones.get(cfg.arch, weights)
    size = cfg.image_size or b.input_size
    dev = resolve_device(cfg.device)
    prec = resolve_precision(cfg.precision, dev)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    _seed_all(cfg.seed)
    out = Path(cfg.out)

    y = dataset.label_indices()
    direct = cfg.mode == "direct"
    cmap = read_class_map(cfg.class_map, dataset.classes, b.categories()) if direct else None
    tr, va, te = make_split(dataset, y, cfg.test_size, cfg.val_fraction, cfg.seed, need_val=not direct)
    classes = list(dataset.classes)
    n_excluded = 0
    if direct:  # only test images of mapped classes can be scored
        mapped = np.array([dataset.classes.index(c) for c in cmap])
        keep = np.isin(y[te], mapped)
        n_excluded = int((~keep).sum())
        te = te[keep]
        classes = list(cmap)
        if len(te) == 0:
            raise FneError(f"--class-map {cfg.class_map}: no test images of the mapped classes")

    model, report, renew = build_model(cfg.arch, cfg.mode, len(dataset.classes), weights, cfg.new_layers,
                                       cfg.seed, cfg.weights_seed)
    for line in describe_import(report, renew):
        print(line)
    imported = set(report.imported) if report is not None else set()
    if cfg.mode == "frozen":
        for n, p in model.named_parameters():
            p.requires_grad_(n not in imported)
    keep = kept_statistics(model, cfg.mode, imported, cfg.train_bn)
    model.to(dev).to(memory_format=torch.channels_last)

    workers = min(4, max(1, (os.cpu_count() or 2) // 2)) if cfg.workers is None else cfg.workers
    train_tf, eval_tf = _transforms(size, cfg.augment, b)

    def loader(idx, tf, shuffle=False, gen=None):
        return torch.utils.data.DataLoader(
            _Images(dataset, idx, y, tf), batch_size=cfg.batch_size, shuffle=shuffle, generator=gen,
            num_workers=workers, collate_fn=_collate, pin_memory=dev.type == "cuda")

    scaler = torch.amp.GradScaler(dev.type) if (prec == "fp16" and dev.type == "cuda") else None
    ctx = _Ctx(dev, prec, Normalize(b.mean, b.std).to(dev), scaler, cfg.progress, {})
    history: list[dict] = []
    best = {"epoch": 0, "val_accuracy": None, "val_loss": None, "state": None}
    train_seconds = 0.0
    start = 0
    if not direct:
        optimizer = _optimizer(model, cfg, imported)
        scheduler = _scheduler(optimizer, cfg)
        ckpt_path = out / CHECKPOINT
        if cfg.resume:
            ckpt = _load_checkpoint(ckpt_path, cfg)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(ckpt["rng"])
            start, history, best = ckpt["epoch"], ckpt["history"], ckpt["best"]
            train_seconds = ckpt["train_seconds"]
            print(f"resumed {ckpt_path} after epoch {start}")
        elif ckpt_path.exists():
            print(f"note: starting a new run; {ckpt_path} is replaced at the next save (--resume continues it)")
        out.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator()
        train_loader = loader(tr, train_tf, shuffle=True, gen=gen)
        val_loader = loader(va, eval_tf) if len(va) else None
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            s = _epoch_seed(cfg.seed, epoch)  # the epoch's randomness depends on nothing before it
            _seed_all(s)
            gen.manual_seed(s)
            _train_mode(model, keep)
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[-1]["lr"],
                   **_train_one_epoch(model, train_loader, optimizer, ctx, f"{cfg.mode} {epoch + 1}/{cfg.epochs}")}
            if scheduler is not None:
                scheduler.step()
            if val_loader is not None:
                _, vy, vp = _evaluate(model, val_loader, ctx, "val")
                row["val_accuracy"] = float((vp.argmax(1) == vy).mean())
                row["val_loss"] = _loss(vy, vp)
            better = (best["state"] is None or val_loader is None
                      or (row["val_accuracy"], -row["val_loss"]) > (best["val_accuracy"], -best["val_loss"]))
            if better:
                best = {"epoch": epoch + 1, "val_accuracy": row.get("val_accuracy"),
                        "val_loss": row.get("val_loss"),
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
            train_seconds += time.perf_counter() - t0
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
                  + (f" val_acc {row['val_accuracy']:.3f} val_loss {row['val_loss']:.4f}" if val_loader else "")
                  + f" ({row['img_s']:.1f} img/s)")
            if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                _save_checkpoint(ckpt_path, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "epoch": epoch + 1, "rng": _rng_state(), "args": asdict(cfg), "best": best,
                    "history": history, "train_seconds": train_seconds,
                })
        if best["state"] is not None:
            model.load_state_dict(best["state"])

    # ---- the test split, once
    t0 = time.perf_counter()
    ids, yt, probs = _evaluate(model, loader(te, eval_tf), ctx, "test")
    eval_seconds = time.perf_counter() - t0
    if direct:
        scores = _direct_scores(probs, cmap, cfg.direct_score)
        yt = np.array([classes.index(dataset.classes[v]) for v in yt])
    else:
        scores = probs
    pred = scores.argmax(1)
    scores_, confusion = split_scores(yt, pred, len(classes))
    acc, mca = scores_["accuracy"], scores_["mean_class_accuracy"]
    n_train = 0 if direct else int(len(tr))  # direct learns nothing from the training part
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / "predictions.csv", dataset, classes, ids, scores, pred)
    torch.save({kk: v.detach().cpu().contiguous() for kk, v in model.state_dict().items()}, out / "model.pt")

    metrics = {
        "kind": "train", "method": f"train:{cfg.mode}", "mode": cfg.mode,
        "dataset": dataset.name, "data": cfg.data,
        "accuracy": acc, "accuracy_std": 0.0, "mean_class_accuracy": mca, "mean_class_accuracy_std": 0.0,
        "splits": [{"accuracy": acc, "mean_class_accuracy": mca, "n_train": n_train, "n_test": int(len(ids))}],
        "n_splits": 1, "n_train": n_train, "n_val": int(len(va)), "n_test": int(len(ids)),
        "n_images": len(dataset), "classes": classes,
        "arch": cfg.arch, "weights": weights,
        "weights_fingerprint": backbones.fingerprint(cfg.arch, weights,
                                                     cfg.seed if cfg.mode == "scratch" else cfg.weights_seed),
        "new_layers": list(renew) if cfg.mode != "scratch" else "all",
        "imported": report.layers() if report is not None else [],
        "not_imported": {n: w for n, w in report.skipped if w != "renewed layer"} if report else {},
        "train_bn": cfg.mode == "scratch" or (cfg.mode == "finetune" and cfg.train_bn),
        "precision": prec, "crop": "center", "image_size": size, "augment": cfg.augment,
        "train_seconds": train_seconds, "eval_seconds": eval_seconds,
        "epochs": cfg.epochs if not direct else 0, "best_epoch": best["epoch"],
        "val_accuracy": best["val_accuracy"],
        "lr": cfg.lr if not direct else None,
        "imported_lr": {"finetune": cfg.lr * cfg.imported_lr_mult, "frozen": 0.0}.get(cfg.mode),
        "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "scheduler": cfg.scheduler,
        "batch_size": cfg.batch_size, "seed": cfg.seed,
        "split_protocol": "predefined" if dataset.has_split else f"1x stratified test_size={cfg.test_size}",
        "val_fraction": cfg.val_fraction if not direct else 0.0,
        "confusion": confusion.tolist(),
        "history": history, "skipped": ctx.skipped,
        "device": str(dev), **provenance(),
    }
    if direct:
        metrics.update(class_map={c: [b.categories()[s] for s in src] for c, src in cmap.items()},
                       direct_score=cfg.direct_score, n_excluded=n_excluded)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _check(cfg: TrainConfig) -> None:
    """Argument mistakes, before any data or weights are loaded."""
    if cfg.mode not in MODES:
        raise FneError(f"unknown --mode {cfg.mode!r}; choose from {', '.join(MODES)}")
    backbones.get(cfg.arch)
    if cfg.mode == "direct" and not cfg.class_map:
        raise FneError("--mode direct needs --class-map MAP.json (target class -> source classes)")
    if cfg.mode != "direct" and cfg.class_map:
        raise FneError(f"--class-map applies to --mode direct only, not {cfg.mode}")
    if cfg.mode == "scratch" and cfg.weights not in (None, "random"):
        raise FneError(f"--mode scratch trains from a random initialisation; --weights {cfg.weights} "
                       f"does not apply (use frozen or finetune to import weights)")
    backbones.check_weights(cfg.arch, cfg.weights)
    for name, ok, want in (
        ("new_layers", cfg.new_layers in NEW_LAYERS, ", ".join(NEW_LAYERS)),
        ("scheduler", cfg.scheduler in SCHEDULERS, ", ".join(SCHEDULERS)),
        ("direct_score", cfg.direct_score in DIRECT_SCORES, ", ".join(DIRECT_SCORES)),
        ("epochs", cfg.epochs >= 1 or cfg.mode == "direct", "an integer >= 1"),
        ("batch_size", cfg.batch_size >= 1, "an integer >= 1"),
        ("lr", cfg.lr > 0, "a positive number"),
        ("imported_lr_mult", cfg.imported_lr_mult >= 0, "a number >= 0"),
        ("image_size", cfg.image_size is None or cfg.image_size >= 8, "an integer >= 8"),
        ("val_fraction", 0 <= cfg.val_fraction < 1, "a number in [0, 1)"),
        ("test_size", 0 < cfg.test_size < 1, "a number in (0, 1)"),
        ("save_every", cfg.save_every >= 0, "an integer >= 0"),
    ):
        if not ok:
            raise FneError(f"bad --{name.replace('_', '-')} {getattr(cfg, name)!r}; expected {want}")
    if cfg.train_bn and cfg.mode != "finetune":
        raise FneError(f"--train-bn applies to --mode finetune only, not {cfg.mode}")
    if cfg.resume and cfg.mode == "direct":
        raise FneError("--resume: direct mode does not train, there is nothing to resume")


# ---------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `fne train`; defaults follow the course practice (SGD 0.9, wd 5e-4, lr 1e-3)."""
    p.add_argument("data", help="image folder, CSV, HDF5, folder of train.h5/test.h5, or 'digits'")
    p.add_argument("--mode", required=True, help=f"{' | '.join(MODES)}")
    p.add_argument("--out", required=True, help="run folder: metrics.json, predictions.csv, model.pt, checkpoint.pt")
    p.add_argument("--arch", default="vgg16", help=backbones.ARCH_HELP)
    p.add_argument("--weights", default=None,
                   help="imagenet (default; scratch: random), random (seeded) or a state dict / checkpoint path")
    p.add_argument("--seed-weights", type=int, default=0, dest="weights_seed", help="seed of --weights random")
    p.add_argument("--new-layers", default="fc", choices=NEW_LAYERS,
                   help="frozen/finetune: fc renews the backbone's fc layers (vgg: fc6, fc7, output), "
                        "last only the output layer (default fc)")
    p.add_argument("--class-map", default=None,
                   help="direct: JSON {target class: [ImageNet index or name, ...]}")
    p.add_argument("--direct-score", default="sum", choices=DIRECT_SCORES,
                   help="direct: a target's score is the sum (default) or max of its source softmax probs")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="base learning rate (new layers)")
    p.add_argument("--imported-lr-mult", type=float, default=1e-3,
                   help="finetune: imported layers learn at lr * this (default 0.001)")
    p.add_argument("--train-bn", action="store_true",
                   help="finetune: imported BatchNorm layers use batch statistics and update them "
                        "(default: they keep the imported statistics)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--scheduler", default="none", choices=SCHEDULERS, help="per-epoch lr schedule (default none)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the backbone's, 224)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on center crops instead of RandomResizedCrop + horizontal flip")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="stratified part of the training data that picks the best epoch (default 0.1)")
    p.add_argument("--test-size", type=float, default=0.25, help="when DATA has no predefined split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores/2, at most 4)")
    p.add_argument("--save-every", type=int, default=0, help="write RUN_DIR/checkpoint.pt every N epochs")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run_cli(args: argparse.Namespace) -> int:
    kw = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__
          if f not in ("data", "mode", "out") and hasattr(args, f)}
    m = train(args.data, args.mode, args.out, **kw)
    if m["mode"] == "direct":
        how = (f"no training, {len(m['classes'])} mapped classes, n_test {m['n_test']}, "
               f"{m['n_excluded']} test images of unmapped classes left out")
    else:
        how = (f"best epoch {m['best_epoch']}/{m['epochs']}, n_train {m['n_train']}, n_test {m['n_test']}, "
               f"train {m['train_seconds']:.1f} s")
    print(f"{m['method']} on {m['dataset']}: accuracy {m['accuracy']:.4f}, "
          f"mean class accuracy {m['mean_class_accuracy']:.4f} ({how})")
    print(f"wrote {args.out}/metrics.json, predictions.csv and model.pt")
    return 0


verb_module(__name__)
