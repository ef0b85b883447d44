"""`fne train --save-every N|auto` / `--resume`: one torchvision-references style checkpoint dict.

RUN_DIR/checkpoint.pt holds model, optimizer, scheduler, scaler, epoch, rng, args (the run's
TrainConfig), best, history and train_seconds. Every epoch reseeds all RNGs from (seed, epoch)
(`seed_epoch`), so a resumed run is bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from fne.errors import FneError

CHECKPOINT = "checkpoint.pt"
AUTO_EVERY_S = 300  # --save-every auto: a checkpoint after the first epoch that ends this long after the last
# Arguments that define a run: --resume refuses a checkpoint written with other values.
RUN_DEFINING = ("data", "mode", "arch", "weights", "weights_seed", "new_layers", "train_bn", "batch_size", "lr",
                "imported_lr_mult", "momentum", "weight_decay", "scheduler", "image_size", "augment",
                "val_fraction", "test_size", "seed", "precision")


# ------------------------------------------------------------------- RNGs


def seed_all(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def seed_epoch(seed: int, epoch: int, gen: torch.Generator) -> None:
    """Seed every RNG and the loader's shuffle from (seed, epoch): an epoch depends on nothing before it."""
    s = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    seed_all(s)
    gen.manual_seed(s)


def rng_state() -> dict:
    """RNG states in types `torch.load(weights_only=True)` accepts (no numpy arrays)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------ the file


def save(path: Path, cfg, parts: dict, progress: dict) -> None:
    """Write the checkpoint of `parts` (model, optimizer, scheduler, scaler: each None or with a
    state dict) and the run's `progress` (epoch, history, best, train_seconds).

    Write-then-rename: an interrupted save never leaves a half checkpoint behind.
    """
    ckpt = {k: (v.state_dict() if v is not None else None) for k, v in parts.items()}
    ckpt.update(progress, rng=rng_state(), args=asdict(cfg))
    tmp = path.with_suffix(".pt.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def due(every: int | str, epoch: int, last_write: float) -> bool:
    """Whether `epoch` (0-based, just ended) writes a checkpoint: every `every` epochs, or with
    "auto" once `AUTO_EVERY_S` seconds have passed since `last_write` (`time.monotonic()`)."""
    if every == "auto":
        return time.monotonic() - last_write >= AUTO_EVERY_S
    return bool(every) and (epoch + 1) % every == 0


def resumable(path: Path, cfg) -> bool:
    """Whether `path` holds a checkpoint of the run `cfg` describes (what `--resume` would take)."""
    if not path.is_file():
        return False
    try:
        load(path, cfg)
    except FneError:
        return False
    return True


def resume(path: Path, cfg, parts: dict) -> dict:
    """Load the checkpoint into `parts` and the RNGs; -> the run's progress."""
    ckpt = load(path, cfg)
    for k, v in parts.items():
        if v is not None and ckpt.get(k):
            v.load_state_dict(ckpt[k])
    set_rng_state(ckpt["rng"])
    return {k: ckpt[k] for k in ("epoch", "history", "best", "train_seconds")}


def load(path: Path, cfg) -> dict:
    """The checkpoint dict, after checking that it belongs to the run `cfg` describes."""
    if not path.is_file():
        raise FneError(f"--resume: no checkpoint {path} (a run writes one after an epoch: see --save-every)")
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
