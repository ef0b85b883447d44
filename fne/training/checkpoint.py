"""`fne train --save-every N|auto` / `--resume`: one torchvision-references style checkpoint dict.

RUN_DIR/checkpoint.pt holds model, optimizer, scheduler, scaler, epoch, rng, args (the run's
TrainConfig), best, history, train_seconds, images (what DATA gave each part), ran_on (device,
precision, where augmentation ran), skipped (unreadable images), fne (the version) and fne_code
(a hash of fne's sources, `fne.metrics.code_hash`: --resume warns where it differs). Every epoch reseeds all RNGs
from (seed, epoch) (`seed_epoch`), and each training image's random crop and flip come from
(epoch seed, image) (`epochs.SeededItems`), so a resumed run is bit-identical to an
uninterrupted one on CPU, with any number of loader workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from fne.backbones.registry import weights_file
from fne.cache.fs import replace_file, through_file
from fne.errors import FneError
from fne.metrics import code_hash
from fne.option_handling import keyed, named, refusal, toml_value

PROGRESS = ("epoch", "history", "best", "train_seconds")  # the run's progress, besides the parts

CHECKPOINT = "checkpoint.pt"
AUTO_EVERY_S = 300  # --save-every auto: a checkpoint after the first epoch that ends this long after the last
# Arguments that define a run: --resume refuses a checkpoint written with other values. DATA is
# compared by its images (`images`), not by how its path is written.
RUN_DEFINING = ("mode", "arch", "weights", "weights_seed", "new_layers", "train_bn", "batch_size", "lr",
                "imported_lr_mult", "momentum", "weight_decay", "scheduler", "image_size", "augment",
                "val_fraction", "test_size", "train_per_class", "seed", "precision")


# ------------------------------------------------------------------- RNGs


def seed_all(s: int) -> None:
    """Seed Python's, numpy's and torch's global generators with `s`."""
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


@contextlib.contextmanager
def caller_state_kept():
    """Within: a run that seeds the global generators (`seed_all`, `seed_epoch`) and may turn on
    torch's deterministic algorithms; after it, also after an error or Ctrl-C, the caller's
    states of Python's, numpy's and torch's generators and those settings put back, so that a
    notebook's or script's own draws go on as if the run had not been. CUDA's generators are
    put back where CUDA was in use before (reading them would start it)."""
    cuda = torch.cuda.is_initialized()
    rngs = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if cuda else None)
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        random.setstate(rngs[0])
        np.random.set_state(rngs[1])
        torch.set_rng_state(rngs[2])
        if cuda:
            torch.cuda.set_rng_state_all(rngs[3])
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark = flags[2]


def seed_epoch(seed: int, epoch: int, gen: torch.Generator) -> int:
    """Seed every RNG and the loader's shuffle from (seed, epoch): an epoch depends on nothing
    before it; -> the epoch's seed."""
    s = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    seed_all(s)
    gen.manual_seed(s)
    return s


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
    """Restore the generators' states saved in a checkpoint (`rng_state`): torch, Python,
    numpy and, where present, CUDA's."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():  # those of the GPUs this machine has: saved with more
        for i, s in enumerate(state["cuda"][:torch.cuda.device_count()]):  # (set_rng_state_all: IndexError)
            torch.cuda.set_rng_state(s, i)


# ------------------------------------------------------------ the file


def save(path: Path, cfg, parts: dict, progress: dict, **about) -> None:
    """Write the checkpoint of `parts` (model, optimizer, scheduler, scaler: each None, with a
    state dict, or the state dict itself), the run's `progress` (epoch, history, best, train_seconds) and what else is
    known `about` it (`images`: `images()`, which `load` checks; `ran_on`: device and precision;
    `skipped`: the unreadable images met so far; `weights_file`, `weights_fingerprint`: `weights_file()`,
    `weights_fingerprint()`).

    Write-then-rename (`replace_file`): an interrupted save never leaves a half checkpoint behind.
    """
    from fne import __version__

    ckpt = {k: (v if v is None or isinstance(v, dict) else v.state_dict()) for k, v in parts.items()}
    ckpt.update(progress, rng=rng_state(), args=asdict(cfg), fne=__version__, fne_code=code_hash(), **about)
    replace_file(path, through_file(lambda f: torch.save(ckpt, f)))  # a full disk: OSError


def identity(path: Path) -> tuple | None:
    """(inode, size, mtime) of the file at `path`, None where there is none: a checkpoint still so
    at a run's end is the one found as it started (an earlier run's), not one of its saves."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def due(every: int | str, epoch: int, last_write: float) -> bool:
    """Whether `epoch` (0-based, just ended) writes a checkpoint: every `every` epochs, or with
    "auto" once `AUTO_EVERY_S` seconds have passed since `last_write` (`time.monotonic()`)."""
    if every == "auto":
        return time.monotonic() - last_write >= AUTO_EVERY_S
    return bool(every) and (epoch + 1) % every == 0


def images(ids, labels, parts: dict, keys=None) -> dict:
    """What DATA gives the run: the number of images of each part, a hash of their names and
    labels, and one of their content (so a moved or re-spelt DATA folder still resumes, and one
    whose images changed, names and labels kept, does not).

    Parameters
    ----------
    ids, labels : sequence
        The dataset's image names and labels (compared as text).
    parts : dict
        Part name (train, val, test) -> dataset indices.
    keys : sequence, optional
        The dataset's content keys (`Dataset.keys`); None: no content hash.
    """
    def digest(listing: dict) -> str:
        return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()

    out = {**{k: len(v) for k, v in parts.items()},
           "sha256": digest({k: [[str(ids[i]), str(labels[i])] for i in v] for k, v in parts.items()})}
    if keys is not None:
        out["content"] = digest({k: [str(keys[i]) for i in v] for k, v in parts.items()})
    return out


def resumable(path: Path, cfg, images: dict) -> dict | None:
    """The checkpoint at `path` where it belongs to the run `cfg` describes on `images` and was
    written by this fne release (what `fne run` takes up: a step reruns after a new release, so
    that its network is that release's), else None."""
    if not path.is_file():
        return None
    try:
        return load(path, cfg, images, same_release=True)
    except FneError:
        return None


def resume(ckpt: dict, parts: dict, path: Path) -> dict:
    """Load checkpoint `ckpt` (from `load`, read from `path`) into `parts` and the RNGs; -> the
    run's progress. A part whose state does not fit the run's (a file of this run's settings that
    no fne save wrote: edited, or assembled by another tool) is an FneError naming the file and the
    part, before any epoch (torch's own errors ran over many lines, or were a bare KeyError)."""
    for k, v in [*parts.items(), ("rng", None)]:
        try:
            if k == "rng":
                set_rng_state(ckpt["rng"])
            elif v is not None and ckpt.get(k):
                v.load_state_dict(ckpt[k])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            what = f"its {k} state does not fit this run's ({' '.join(f'{type(e).__name__}: {e}'.split())[:300]})"
            raise refusal(lambda py, what=what: f"{resume_flag(py)}: {path}: {what}; start anew without "
                                                f"{resume_flag(py)}", FneError) from None
    return {k: ckpt[k] for k in PROGRESS}


def load(path: Path, cfg, images: dict | None = None, same_release: bool = False) -> dict:
    """The checkpoint dict, after checking that it is one and that it belongs to the run `cfg`
    describes, on the same `images` (`images()`; None: not checked), and with `same_release`
    that this fne release wrote it. One written by other fne code (`fne.metrics.code_hash`: the
    version stays 0.1.0 as the code changes) is continued, with a warning naming both: the user
    may have upgraded on purpose, and its epochs so far ran the other code."""
    ckpt = read(path)
    if mismatch(ckpt, cfg, images, same_release=same_release):
        raise refusal(lambda py: f"{resume_flag(py)}: {path} belongs to another run: "
                                 + "; ".join(mismatch(ckpt, cfg, images, py, same_release)), FneError)
    was, now = ckpt.get("fne_code"), code_hash()
    if None not in (was, now) and was != now:  # None: written before 30 Nov 2026, or no source here
        warnings.warn(f"{path} was written by other fne code (source hash {was} there, {now} now): continuing "
                      f"it, its epochs so far trained by that code", stacklevel=2)
    return ckpt


def resume_flag(python: bool) -> str:
    """--resume as the caller gives it (`fne.train(..., resume=True)`)."""
    return named("resume", python, True)


def read(path: Path, mmap: bool = False) -> dict:
    """The checkpoint dict at `path`, after checking that it is one of fne train (FneError saying
    why not). `mmap`: its tensors stay on disk until used (`fne run --dry-run` reads only its
    epoch and arguments, not a network's worth of bytes)."""
    if not path.is_file():
        raise refusal(lambda py: f"{resume_flag(py)}: no checkpoint {path} (a run writes one after an epoch: see "
                                 f"{named('save_every', py)})", FneError)
    try:
        if not mmap:  # what is resumed from: mmap reads (a listing) take the arguments only (`check_whole`)
            _check_crc(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch's messages run over lines, or say only "(101)"
        raise _unreadable(path, e) from None
    keys = {"model", "optimizer", "args", "rng", *PROGRESS}
    if not isinstance(ckpt, dict) or not keys <= set(ckpt):
        why = (f"it lacks {', '.join(sorted(keys - set(ckpt)))}" if isinstance(ckpt, dict)
               else f"it is a {type(ckpt).__name__}, not a dict")  # "it lacks list, not a dict" was said
        raise refusal(lambda py: f"{resume_flag(py)}: {path} is not a checkpoint of fne train ({why})", FneError)
    if (bad := _malformed(ckpt)) is not None:
        raise refusal(lambda py: f"{resume_flag(py)}: {path} is not a checkpoint of fne train (its {bad})", FneError)
    return ckpt


def _malformed(ckpt: dict) -> str | None:
    """What in checkpoint dict `ckpt` is not of the kind `save` writes, or None: a file no fne save
    wrote (its CRCs whole) went on to a TypeError comparing its epoch, a ValueError seeding from
    a negative one or a KeyError at the run's end, and stopped a new run over it as well."""
    epoch, best = ckpt["epoch"], ckpt["best"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return f"epoch is {epoch!r}, not a count of epochs"
    if not isinstance(ckpt["history"], list) or len(ckpt["history"]) != epoch:
        return f"history is not a list of its {epoch} epochs"
    if not isinstance(best, dict) or not {"epoch", "val_accuracy", "val_loss", "state"} <= set(best):
        return "best is not a dict of the best epoch (epoch, val_accuracy, val_loss, state)"
    for k in ("model", "optimizer", "args", "rng"):
        if not isinstance(ckpt[k], dict):
            return f"{k} is {type(ckpt[k]).__name__}, not a dict"
    if not isinstance(ckpt["train_seconds"], (int, float)):
        return f"train_seconds is {ckpt['train_seconds']!r}, not a number"
    return None


def check_whole(path: Path) -> None:
    """FneError, as `read`'s, where the checkpoint at `path` fails the CRC check `read` makes
    before a run resumes from it: for a reader of it memory-mapped (`fne run --dry-run`) about
    to say that a rerun resumes. It reads every byte (1.5 GB, VGG-16's with Adam's moments: 1.2-1.6 s
    from disk, 0.5 s from the page cache on the development machine)."""
    try:
        _check_crc(path)
    except Exception as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: Exception) -> FneError:
    why = e.strerror if isinstance(e, OSError) and e.strerror else "truncated, damaged or not a torch file"
    return refusal(lambda py: f"{resume_flag(py)}: cannot read {path}: {why}; start anew without {resume_flag(py)}",
                   FneError)


def _check_crc(path: Path) -> None:
    """ValueError where a member of the zip file torch.save wrote at `path` fails its CRC-32:
    torch.load does not check them, and a checkpoint with damaged bytes in its tensors (a
    disk's or a copy's fault) loaded and resumed, training on from weights no run left. A
    file that is not a zip is left to torch.load to refuse."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise ValueError(f"{bad} fails its CRC")


def mismatch(ckpt: dict, cfg, images: dict | None = None, python: bool = False,
             same_release: bool = False, in_file: bool = False) -> list[str]:
    """How checkpoint `ckpt` (from `read`) differs from the run `cfg` describes on `images`
    (None: not compared), one phrase a difference naming options as `fne.option_handling.named` does
    (`python`: their keywords, else their flags; `in_file`: as a pipeline file writes them,
    ``augment = false``, for `fne run --dry-run`); empty: `--resume` takes it up."""
    old = ckpt["args"]

    def said(k: str, value) -> str:
        return keyed(k, value) if in_file else named(k, python, value)

    diff = [_there_now(k, python, _value(k, old, old.get(k)), _value(k, vars(cfg), getattr(cfg, k)), in_file)
            for k in RUN_DEFINING if _differs(k, ckpt, cfg)]
    if cfg.scheduler != "none" and old.get("epochs") != cfg.epochs:
        diff.append(f"{said('epochs', old.get('epochs'))} there, {cfg.epochs} now (the schedule depends on it)")
    elif ckpt["epoch"] > cfg.epochs:
        diff.append(f"{said('epochs', cfg.epochs)} now, but it has trained {ckpt['epoch']} epochs")
    if "images" not in ckpt and old.get("data") != cfg.data:  # written before images were recorded
        value = toml_value if in_file else repr
        diff.append(f"DATA {value(old.get('data'))} there, {value(cfg.data)} now")
    elif images is not None and "images" in ckpt and ckpt["images"]["sha256"] != images["sha256"]:
        sizes = ", ".join(f"{k} {ckpt['images'].get(k, '?')} there, {n} now" for k, n in images.items()
                          if k not in ("sha256", "content"))
        diff.append(f"DATA {cfg.data} gives other images ({sizes})")
    elif images is not None and None not in (then := ckpt.get("images", {}).get("content"), images.get("content")) \
            and then != images["content"]:  # not recorded before 29 Nov 2026
        diff.append(f"DATA {cfg.data}: its images changed since (the same names and labels, other contents)")
    was = ckpt.get("weights_fingerprint")
    if was is not None and not _differs("weights", ckpt, cfg) and (now := weights_fingerprint(cfg.weights)) != was:
        diff.append(f"{said('weights', cfg.weights)}: the file changed since (fingerprint {was} there, "
                    f"{now or 'no such file'} now)")
    if same_release:
        from fne import __version__

        if ckpt.get("fne") not in (None, __version__):  # None: written before 29 Nov 2026
            diff.append(f"written by fne {ckpt['fne']}, this is fne {__version__}")
    return diff


def _there_now(k: str, python: bool, then, now, in_file: bool = False) -> str:
    """Option `k`'s value in the checkpoint, `then`, and in this run, `now`, as `named` says them
    (a switch on the command line as typed: ``without --no-augment there, --no-augment now``), or
    `in_file` as a pipeline file writes them (``augment = true there, false now``). An option left
    unset (None) is said as its absence: ``without --train-per-class there, --train-per-class 5
    now``, ``train_per_class not set there, 5 now`` (it read ``train_per_class=None there``, and
    in a pipeline file's message ``train_per_class = (unset) there``)."""
    if then is None or now is None:
        if not python and not in_file:  # the flag's absence, as a switch's is said
            then_, now_ = (named(k, False, v) if v is not None else f"without {named(k, False)}" for v in (then, now))
            return f"{then_} there, {now_} now"
        first = f"{k} not set" if then is None else (keyed(k, then) if in_file else named(k, True, then))
        return f"{first} there, {'not set' if now is None else toml_value(now) if in_file else repr(now)} now"
    if in_file:
        return f"{keyed(k, then)} there, {toml_value(now)} now"
    said = named(k, python, now) if isinstance(now, bool) and not python else repr(now)
    return f"{named(k, python, then)} there, {said} now"


def weights_fingerprint(weights: str | None) -> str | None:
    """The fingerprint of the file --weights names (recorded in the checkpoint: a file replaced
    since is other weights, which metrics.json would name), else None."""
    from fne.backbones import registry

    return "file-" + registry.file_fingerprint(weights) if weights_file(weights) else None


def _value(k: str, args: dict, v):
    """Option `k`'s value `v` as the run of arguments `args` (a TrainConfig's fields) takes it: a
    --weights or --image-size left out is the default it stands for (imagenet, or random for
    scratch; the backbone's input size), so that giving that default is the same run."""
    if k == "weights" and v is None:
        return "random" if args.get("mode") == "scratch" else "imagenet"
    if k == "image_size" and v is None:  # (a torchvision weights name brings its own)
        from fne.backbones import registry

        try:
            return registry.get(args.get("arch"), _value("weights", args, args.get("weights"))).input_size
        except FneError:  # an architecture not available here: as recorded
            return v
    return v


def _differs(k: str, ckpt: dict, cfg) -> bool:
    """Whether option `k` of `cfg` differs from the checkpoint's (a default left out or given is the
    same: `_value`; --precision auto or the precision it ran at, `_precision_here`); --weights is one
    file however spelt."""
    was, now = ckpt["args"].get(k), getattr(cfg, k)
    if was == now:
        return False
    if k == "weights" and ckpt.get("weights_file") is not None:
        return ckpt["weights_file"] != weights_file(now)
    if k == "precision" and "ran_on" in ckpt:  # --precision auto and what it gave here are one run
        return ckpt["ran_on"]["precision"] != _precision_here(cfg)
    return _value(k, ckpt["args"], was) != _value(k, vars(cfg), now)


def _precision_here(cfg) -> str:
    """The precision `cfg`'s --precision gives on its --device here (as given where that is refused)."""
    from fne.devices import resolve_device, resolve_precision

    try:
        return resolve_precision(cfg.precision, resolve_device(cfg.device))
    except FneError:
        return cfg.precision
