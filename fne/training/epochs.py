"""One pass over a split: SGD steps on the training part, softmax outputs on val and test.

Images come from `fne.extraction.reader.ImageItems`, the dataset `fne extract` reads with, its `prep`
being train's transform (`transforms`): uint8 (3, S, S) views, normalised on the device.
An unreadable image is skipped with a warning and named in metrics.json's `skipped`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fne.backbones.preprocess import Preprocess
from fne.data.dataset import Dataset
from fne.devices import Loader, autocast, end_workers, loader_context, worker_init
from fne.errors import DataError
from fne.extraction import reader
from fne.extraction.ahead import Ahead
from fne.option_handling import named, refusal
from fne.progress import progress, say_skipped
from fne.training import augment as augment_mod


@dataclass
class Ctx:
    """What a pass needs besides the model and the loader."""

    dataset: Dataset
    labels: np.ndarray  # the dataset's label indices
    device: torch.device
    precision: str
    norm: nn.Module
    scaler: torch.amp.GradScaler | None
    progress: bool
    skipped: dict  # image id -> why it was unreadable
    noted: set = field(default_factory=set)  # (image id, what decoding it warned of) said: once a run, not an epoch
    augment: augment_mod.DeviceAugment | None = None  # training batches' crop + flip on the device
    data: str | None = None  # DATA as given, which a part of no readable image is said of


# ------------------------------------------------------------------ images


class _Center:
    """Eval view: `fne extract`'s center crop (the weights' resize and interpolation), one uint8 tensor."""

    def __init__(self, size: int, backbone=None):
        self.prep = backbone.preprocess("center", size) if backbone is not None else Preprocess(size, "center")

    def __call__(self, img) -> torch.Tensor:
        return self.prep(img)[0]


def transforms(size: int, augment: bool, backbone=None, on_device: bool = False):
    """(train, eval) transforms to uint8 (3, S, S); normalisation happens on the device.

    With `on_device`, train's transform only squashes each image to `augment.SQUASH` x S (an
    `augment.Squash`): the crop and flip are then `augment.DeviceAugment`'s, on the device. The
    eval view is then the center crop's `Preprocess` itself: its JPEGs are decoded, resized and
    cropped on the device too, as `fne extract --decode device` does (`reader.assembled`).
    """
    center = _Center(size, backbone)
    if not augment:
        return center, center
    if on_device:
        return augment_mod.Squash(round(size * augment_mod.SQUASH)), center.prep
    # imported here: device augmentation needs no torchvision (4.8 s on the H200 machine)
    from torchvision.transforms import v2 as T

    # scale from 0.25: milder than torchvision's 0.08, since the runs here are a few epochs.
    train = T.Compose([T.PILToTensor(), T.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
                       T.RandomHorizontalFlip()])
    return train, center


class SeededItems(reader.ImageItems):
    """`reader.ImageItems` whose transform draws its random crop and flip from a seed of its own
    per image, made from the epoch's seed (`seed`, set before each epoch) and the image's index:
    the same draws whether the loader has no worker or many (a worker's RNG would otherwise
    decide them), and the main process's RNG, which dropout draws from, left as it was."""

    seed = 0

    def __getitem__(self, j: int | tuple[int, int]):
        # (seed, j) from `EpochOrder`: workers kept across epochs get each epoch's seed with the index
        seed, j = j if isinstance(j, tuple) else (self.seed, j)
        # the CPU generator alone (torchvision's transforms draw from it): ~2 us, where
        # torch.manual_seed and fork_rng (every device's generator) take ~120 us an image
        rng, s = torch.default_generator, np.random.SeedSequence([seed, self.indices[j]]).generate_state(1)
        state = rng.get_state()
        rng.manual_seed(int(s[0]))
        try:
            return super().__getitem__(j)
        finally:
            rng.set_state(state)


class EpochOrder(torch.utils.data.Sampler):
    """A training loader's shuffled order: `RandomSampler`'s draws from `gen`, after the one draw
    a DataLoader given `gen` took for its workers' seeds each epoch (so the orders are those of
    earlier versions). `gen` is drawn from the same way whatever the workers and whether they
    are kept across epochs, which is what makes a resumed run repeat an uninterrupted one. With
    `SeededItems` each index comes paired with the seed `items.seed` holds when the epoch starts,
    so workers kept across epochs (spawn, as on macOS, starts each in seconds) still draw each
    epoch's crops."""

    def __init__(self, items, gen: torch.Generator):
        self.items, self.gen = items, gen
        self.order = torch.utils.data.RandomSampler(items, generator=gen)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        torch.empty((), dtype=torch.int64).random_(generator=self.gen)  # see the class docstring
        seed = self.items.seed if isinstance(self.items, SeededItems) else None
        for j in self.order:
            yield j if seed is None else (seed, j)


def loader(ctx: Ctx, idx: np.ndarray, prep, batch_size: int, workers: int, gen: torch.Generator | None = None):
    """Batches of `reader.collate` over images `idx`; shuffled by `gen` when given (training), when a
    last batch of one image is left out: BatchNorm cannot train on one image where its input is
    1 x 1 (ValueError), and its statistics of one image are noise elsewhere. A `Squash` prep
    (device augmentation) reads through `augment.SizedItems`, whose batches carry `aspect`; a
    `Preprocess` (its eval view) sends plain JPEGs as their bytes, for the device to decode."""
    sized = isinstance(prep, augment_mod.Squash)
    cuda = ctx.device.type in ("cuda", "mps") and workers > 0  # a GPU's (on MPS too)
    draws = not isinstance(prep, (_Center, Preprocess, augment_mod.Squash))  # these draw nothing
    indices = [int(i) for i in idx]
    if gen is not None:
        ctx.dataset.read_shuffled(indices, ctx.progress)
    if sized:
        items = augment_mod.SizedItems(ctx.dataset, indices, prep)
    elif draws:
        items = SeededItems(ctx.dataset, indices, prep)
    else:
        items = reader.ImageItems(ctx.dataset, indices, prep, raw_jpeg=isinstance(prep, Preprocess))
    # Workers kept across epochs: a shuffled order and its crops' seeds come from `EpochOrder`;
    # the loader's own generator only seeds its workers' RNGs, which draw nothing of fne's
    order = EpochOrder(items, gen) if gen is not None else None
    return Loader(
        items, batch_size=batch_size, sampler=order, generator=torch.Generator().manual_seed(0),
        num_workers=workers,
        drop_last=gen is not None and len(indices) % batch_size == 1 and len(indices) > 1,
        collate_fn=augment_mod.collate if sized else reader.collate, worker_init_fn=worker_init,
        multiprocessing_context=loader_context(workers),
        pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0 and (not draws or order is not None), prefetch_factor=4 if cuda else None)


@contextlib.contextmanager
def loaders(ctx: Ctx, batch_size: int, workers: int):
    """Within: `loader(ctx, idx, prep, batch_size, workers, gen)` as ``make(idx, prep, gen=None)``;
    on leaving (also on an error or Ctrl-C) the workers of every loader made end, those kept
    across epochs included, rather than with the loaders: the traceback of an error, which a
    notebook keeps, holds the frames that hold them."""
    made: list = []

    def make(idx: np.ndarray, prep, gen: torch.Generator | None = None):
        made.append(loader(ctx, idx, prep, batch_size, workers, gen))
        return made[-1]

    try:
        yield make
    finally:
        for dl in made:
            end_workers(dl)


def _batches(loader, ctx: Ctx, bar, augment=None):
    """(dataset indices, normalised inputs, labels) of each batch's readable images; `augment`
    (a `DeviceAugment`) decodes, crops and flips them on the device first, and an eval loader of
    JPEG bytes has them decoded and center-cropped there. On CUDA that device work runs on two
    threads of their own, each two batches ahead (`reader.decoding`, `Ahead`): nvjpeg's
    call blocks its thread until a batch is decoded, the next batch decodes while the one before
    is cropped, and the steps' thread is left with the steps. The random crops and flips come
    from a generator of their own, seeded here from the epoch's global one and drawn in batch
    order: the same crops on the thread as in line."""
    prep, ahead = loader.dataset.prep, 2 if ctx.device.type == "cuda" else 0
    if augment is not None:  # decoded on one thread, cropped and flipped on another
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))

        def on_device(item):  # (batch, (x, indices), bad)
            batch, _, _, decoded, _ = item
            bad = list(batch["bad"])
            return batch, augment(batch, ctx.device, bad, generator=g, decoded=decoded), bad

        batches = Ahead(reader.decoding(loader, ctx.device, ahead, split=False), on_device, ahead, ctx.device)
    elif isinstance(prep, Preprocess):  # center views, JPEG bytes decoded on the device
        def first_view(out):  # (batch, (x, indices, keys), bad) -> (batch, (x's one view, indices), bad)
            batch, (x, idx, _), bad = out
            return batch, (x[:, 0] if x is not None else None, idx), bad

        batches = Ahead(reader.assembled(loader, ctx.device, prep, ahead), first_view)
    else:  # pixels from the workers: moved, in line
        def on_device(batch: dict):
            x = batch["pixels"]
            x = x.to(ctx.device, non_blocking=ctx.device.type == "cuda") if x is not None else None
            return batch, (x, batch["idx"]), list(batch["bad"])

        batches = Ahead(loader, on_device)
    try:
        yield from _ready(batches, ctx, bar)
    finally:
        batches.close()


def _ready(batches, ctx: Ctx, bar):
    """The batches normalised, channels-last, with their labels; the images found unreadable
    into `ctx.skipped`, those new to it said once the pass is over (`say_skipped`: a line per
    reason, not per image), as are what decoding warned of (`ctx.noted`: once a run)."""
    new: dict[str, str] = {}
    notes: list[tuple[str, str]] = []
    try:
        for batch, (x, idx), bad in batches:
            for i, _, err in bad:
                if ctx.dataset.ids[i] not in ctx.skipped:
                    ctx.skipped[ctx.dataset.ids[i]] = new[ctx.dataset.ids[i]] = err
            notes += [n for n in batch["notes"] if n not in ctx.noted]
            ctx.noted.update(batch["notes"])
            bar.update(len(batch["idx"]) + len(batch["bad"]))
            if x is None:
                continue
            # channels-last: faster convolutions on CPU
            x = ctx.norm(x).contiguous(memory_format=torch.channels_last)
            yield idx, x, torch.as_tensor(ctx.labels[idx])
    finally:  # a pass stopped early (--max-steps, an error) says what it met too
        say_skipped(new.items())  # every one in metrics.json's skipped, when the run ends
        say_skipped(notes, skipped=False)


# ------------------------------------------------------------------ passes


def train_one_epoch(model: nn.Module, loader, optimizer, ctx: Ctx, desc: str) -> dict:
    """One pass over the training part; returns mean loss, accuracy, images/s."""
    criterion = nn.CrossEntropyLoss()
    n = 0
    # Sums stay on the device: reading them every step would make the host wait for each step
    # before it prepares the next batch (on CUDA, the GPU would idle meanwhile).
    # (MPS has no float64: the loss sums in float32 there)
    total = torch.float32 if ctx.device.type == "mps" else torch.float64
    loss_sum = torch.zeros((), dtype=total, device=ctx.device)
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    t0 = t_shown = time.perf_counter()
    bar = progress(len(loader.dataset), desc, ctx.progress, leave=False)
    batches = _batches(loader, ctx, bar, ctx.augment)
    try:
        for idx, x, y in batches:
            y = y.to(ctx.device, non_blocking=ctx.device.type == "cuda")
            with autocast(ctx.device, ctx.precision):
                logits = _step_forward(model, x, loader.batch_size)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            if ctx.scaler is not None:
                ctx.scaler.scale(loss).backward()
                ctx.scaler.step(optimizer)
                ctx.scaler.update()
            else:
                loss.backward()
                optimizer.step()
            n += len(idx)
            loss_sum += loss.detach().to(total) * len(idx)
            correct += (logits.argmax(1) == y).sum()
            if ctx.progress and time.perf_counter() - t_shown > 1.0:  # one wait a second at most
                t_shown = time.perf_counter()
                bar.set_postfix(loss=f"{float(loss_sum) / n:.4f}", acc=f"{int(correct) / n:.3f}")  # the bar says img/s
    finally:
        batches.close()  # stops its decoding thread, also on an error
        bar.close()
    if n == 0:  # before any step: no validation pass, no checkpoint, no epoch of nothing
        raise _none_readable(ctx, "training", loader.dataset.indices)
    loss_sum, correct = float(loss_sum), int(correct)
    _check_finite(model, optimizer, desc, loss_sum / n)
    s = time.perf_counter() - t0
    return {"train_loss": loss_sum / max(n, 1), "train_accuracy": correct / max(n, 1),
            "img_s": n / max(s, 1e-9), "seconds": s}


def _check_finite(model: nn.Module, optimizer, desc: str, loss: float) -> None:
    """An OptionError where an epoch left weights that are not numbers (NaN, infinite): the
    network diverged (a learning rate too high), and every later epoch, its scores and its
    accuracy would be meaningless (argmax of NaN scores names the first class). fp16's loss
    scaler skips the steps of an overflowing batch, so those leave no such weight."""
    params = [p.detach() for p in model.parameters()]
    if not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        return
    raise refusal(lambda py: f"training diverged in epoch {desc.split()[-1]}: the network's weights are no longer "
                             f"numbers (mean loss {loss:.4g}); start again with a lower {named('lr', py)} than "
                             f"{base_lr(optimizer):g}")


def base_lr(optimizer) -> float:
    """The run's --lr: its new layers' learning rate before any schedule."""
    return max(g.get("initial_lr", g["lr"]) for g in optimizer.param_groups)


def check_scores(probs: np.ndarray, part: str, when: str, lr: float | None) -> None:
    """An OptionError where the network scored images of `part` (val, test) with numbers that are
    not (NaN): weights still numbers but grown so large (a learning rate too high) that the
    activations overflow. Its accuracy would be that of argmax over NaN (the first class),
    reported as if measured. `when`: the epoch's words (" in epoch 2/5"), or none; `lr`: the
    run's --lr, None for a network it did not train (direct)."""
    bad = int((~np.isfinite(probs)).any(axis=1).sum())
    if not bad:
        return

    def text(py: bool) -> str:
        said = f"the network scores {bad} of {len(probs)} {part} images with values that are not numbers"
        if lr is None:
            return f"{said}: its weights cannot score these images"
        return f"training diverged{when}: {said}; start again with a lower {named('lr', py)} than {lr:g}"
    raise refusal(text)


# torch's words for a layer whose output would be empty: the input is too small for the network
TOO_SMALL = ("Output size is too small", "Kernel size can't be greater than actual input size")


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`model(x)`; an input too small for the network (VGG-16 at `--image-size 16`: its last
    pooling has nothing left to pool) is an OptionError naming --image-size, not a traceback."""
    try:
        return model(x)
    except RuntimeError as e:
        if not any(w in str(e) for w in TOO_SMALL):
            raise
        said = str(e).strip().splitlines()[0]
        raise refusal(lambda py: f"{named('image_size', py, x.shape[-1])} is too small for this network ({said}); "
                                 f"give a larger {named('image_size', py)}") from None


def _step_forward(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`model(x)` in training; a batch of one image that a learning BatchNorm layer sees at 1 x 1
    (`--batch-size 1`, or a batch whose other images were unreadable, at a small `--image-size`)
    is an OptionError saying so, not torch's ValueError."""
    try:
        return forward(model, x)
    except ValueError as e:
        if len(x) != 1 or "Expected more than 1 value per channel when training" not in str(e):
            raise

        def text(py: bool) -> str:
            if batch_size == 1:
                what, fix = named("batch_size", py, 1), f"give a {named('batch_size', py)} of 2 or more"
            else:
                what, fix = ("a training batch of one readable image (its others unreadable, named above)",
                             "remove the unreadable images")
            return (f"{what}: a BatchNorm layer that learns (scratch, "
                    f"{named('train_bn', py, True)}) cannot train on one image it sees "
                    f"at 1 x 1 (at {named('image_size', py, x.shape[-1])}); {fix}, or a larger "
                    f"{named('image_size', py)}")

        raise refusal(text) from None


@torch.no_grad()
def evaluate(model: nn.Module, loader, ctx: Ctx, desc: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dataset indices, labels, softmax probabilities) of every readable image."""
    model.eval()
    ids, ys, probs = [], [], []
    bar = progress(len(loader.dataset), desc, ctx.progress, leave=False)
    batches = _batches(loader, ctx, bar)
    try:
        for idx, x, y in batches:
            with autocast(ctx.device, ctx.precision):
                logits = forward(model, x)
            probs.append(torch.softmax(logits.float(), 1))  # on the device until the end: no wait per batch
            ids += idx
            ys.append(y.numpy())
    finally:
        batches.close()  # stops its decoding thread, also on an error
        bar.close()
    if not ids:
        raise _none_readable(ctx, desc, loader.dataset.indices)
    return np.array(ids), np.concatenate(ys), torch.cat(probs).cpu().numpy()


def _none_readable(ctx: Ctx, part: str, indices: list[int]) -> DataError:
    """The DataError of a pass (`part`: training, val, test) over the images `indices` that read
    none, the unreadable ones named in a warning when the pass ended (`say_skipped`): said of DATA where `ctx` has it,
    as `fne fit` says it ("DATA: no readable images", a pass over all of DATA: `fne predict`'s).
    (A training pass may also leave out a last batch of one readable image: then not all of them
    are unreadable.)"""
    if ctx.data is None:
        return DataError(f"{part}: no readable images")
    if len(indices) == len(ctx.dataset):
        return DataError(f"{ctx.data}: no readable images")
    bad = sum(ctx.dataset.ids[i] in ctx.skipped for i in indices)
    return DataError(f"{ctx.data}: no readable images in the {part} part ({bad} of {len(indices)} unreadable, "
                     f"named above)")


def mean_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Cross-entropy of softmax outputs `p` for labels `y`."""
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


# --------------------------------------------------------------- optimizer


def optimizer(model: nn.Module, mode: str, lr: float, imported_lr_mult: float, momentum: float,
              weight_decay: float, imported: set[str]) -> torch.optim.Optimizer:
    """SGD; finetune gives imported parameters lr * imported_lr_mult, new ones the base lr."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if mode == "finetune":
        old = [p for n, p in params if n in imported]
        new = [p for n, p in params if n not in imported]
        groups = [{"params": old, "lr": lr * imported_lr_mult, "name": "imported"},
                  {"params": new, "lr": lr, "name": "new"}]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": [p for _, p in params], "lr": lr, "name": "new"}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def scheduler(optimizer, name: str, epochs: int):
    """Per-epoch lr schedule, or None."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "step":  # a tenth of the lr at each third of the run
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    return None
