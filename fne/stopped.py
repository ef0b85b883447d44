"""What a command that stopped says: what the machine ran out of or refused (disk, quota, a
file-size limit, shared memory, memory, open files, threads), where, what to do, and what of its
work was kept and how to go on (`fne train`: read from its checkpoint). `fne.cli.main` prints it
as one line after the verb's error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys

# torch's error where a loader worker cannot hand a batch over in shared memory (/dev/shm), and,
# by its errno, what stopped it and what gives more.
_SHM_LIMITS = {errno.ENOSPC: ("/dev/shm ran out of space", "free /dev/shm (a container's: docker run --shm-size)"),
               errno.EFBIG: ("the file-size limit (ulimit -f) was reached", "raise it (ulimit -f unlimited)"),
               errno.EMFILE: ("the open-file limit (ulimit -n) was reached", "raise it (ulimit -n)")}
_SHM = re.compile(r"unable to [^\n]*</torch_[^>]*>[^\n]*?: ([^\n]*?) \((\d+)\)")


# What an interrupted verb kept, and how to go on (train: `how_to_resume` looks at its checkpoint).
_KEPT = {
    "extract": "the rows computed so far are committed to the cache; rerun the same command to compute "
               "the rest",
    "run": "finished steps are kept; rerun the same command to skip them and go on",
    **dict.fromkeys(("fit", "predict", "export", "advise"),
                    "rows extracted so far are kept in the cache; rerun the same command to go on"),
}


def _checkpoint(args: argparse.Namespace) -> os.PathLike | None:
    """`fne train`'s checkpoint file (a Path) in its run folder; None for the other verbs."""
    if args.command != "train":
        return None
    from pathlib import Path

    from fne.training.checkpoint import CHECKPOINT

    return Path(args.out) / CHECKPOINT


def checkpoint_found(args: argparse.Namespace) -> tuple | None:
    """The identity (inode, size, mtime) of the checkpoint `fne train` finds as it starts without
    --resume: an earlier run's, which this run replaces at its first save; else None."""
    ckpt = _checkpoint(args)
    if ckpt is None or args.resume:
        return None
    from fne.training.checkpoint import identity  # train's: the other verbs may need no torch

    return identity(ckpt)


def how_to_resume(args: argparse.Namespace, found: tuple | None = None) -> str:
    """What an interrupted command kept, and how to go on; `found`: `checkpoint_found` as the
    command started (a checkpoint still so is an earlier run's, not this one's)."""
    ckpt = _checkpoint(args)
    if args.command in ("fit", "export") and not getattr(args, "extract_missing", False):
        return "nothing was written (--out is as it was); rerun the same command"
    if ckpt is None:
        return _KEPT.get(args.command, "rerun the same command")
    every = f"--save-every {getattr(args, 'save_every', 'auto')}"
    if getattr(args, "mode", None) == "direct":  # no training, no checkpoint
        return "nothing was kept (direct mode trains nothing); rerun the same command"
    if not ckpt.is_file():
        why = f"{every} saves none" if every.endswith(" 0") else f"no epoch was saved yet ({every})"
        return f"nothing was kept: {why}; rerun the same command to start again"
    if found is not None and checkpoint_found(args) == found:
        return (f"nothing of this run was kept: no epoch of it was saved yet ({every}); {ckpt} is an earlier "
                f"run's, left as it was: rerun to start again (or with --resume to continue that run)")
    return f"{_kept_epoch(args, ckpt)}; rerun the same command with --resume to continue from there"


def _kept_epoch(args: argparse.Namespace, ckpt: os.PathLike) -> str:
    """"kept epoch 3 of 30 (the last one saved) in RUN/checkpoint.pt": what an interrupted `fne
    train` kept, read from its checkpoint (its epochs and arguments only, mapped, not loaded)."""
    from fne.training.checkpoint import read

    try:
        saved = read(ckpt, mmap=True)
        done, of = int(saved["epoch"]), saved["args"].get("epochs", getattr(args, "epochs", None))
    except Exception:  # noqa: BLE001 -- a checkpoint it cannot read: the path alone, `--resume` says why
        return f"kept its last saved epoch in {ckpt}"
    return f"kept epoch {done}{f' of {of}' if of else ''} (the last one saved) in {ckpt}"


def ran_out(args: argparse.Namespace, e: Exception, found: tuple | None) -> str | None:
    """One line for what the machine ran out of (disk, quota, file-size limit, shared memory, device
    memory, a worker's memory) or refused (a read-only folder): what, where, what to do, and what
    was kept (`how_to_resume`); None for any other error (a traceback: a bug)."""
    from fne.errors import DENIED, RAN_OUT

    torch = sys.modules.get("torch")
    shm = _SHM.search(str(e)) if isinstance(e, RuntimeError) else None
    if isinstance(e, OSError) and e.errno in (*RAN_OUT, *DENIED):
        line = _unwritable(args, e)
    elif shm is not None:  # the last of torch's lines (a worker's traceback comes before it)
        why, code = shm.groups()
        ran_out, more = _SHM_LIMITS.get(int(code), _SHM_LIMITS[errno.ENOSPC])
        line = (f"{ran_out} for a loader worker's batch in shared memory ({why}): rerun with fewer --workers or a "
                f"smaller --batch-size (--workers 0 uses none), or {more}")
    elif isinstance(e, RuntimeError) and "DataLoader worker (pid" in str(e):  # killed from outside
        line = (f"a loader worker was killed ({str(e).strip().splitlines()[0]}), most likely by the system for "
                f"want of memory (an image too large to decode, or too many --workers for this machine's memory)")
    elif (limit := _machine_limit(e)) is not None:
        line = limit + ("" if limit.endswith("raise it") or "thread" in limit else _smaller(args))
    elif torch is not None and isinstance(e, torch.OutOfMemoryError):
        smaller = " with a smaller --batch-size" if getattr(args, "batch_size", None) is not None else ""
        return (f"the device ran out of memory ({str(e).splitlines()[0]}); committed work is kept, rerun{smaller} "
                f"to resume")
    else:
        return None
    return line if args.command == "cache" else f"{line}; {how_to_resume(args, found)}"


def _machine_limit(e: Exception) -> str | None:
    """What of the machine's memory, open files or threads ran out (a process limit, `ulimit -v`,
    `-n`, `-u`, or the memory itself), and what gives more; None for another error."""
    text = str(e)
    if isinstance(e, MemoryError) or isinstance(e, OSError) and e.errno == errno.ENOMEM or \
            isinstance(e, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in text:
        tried = re.search(r"you tried to allocate (\d+) bytes", text)
        what = f"could not allocate {int(tried[1]) / 2 ** 20:.1f} MiB" if tried else text.strip().splitlines()[0] \
            if text.strip() else type(e).__name__
        return f"the machine ran out of memory ({what}): free memory or raise the limit (ulimit -v)"
    if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE):
        try:
            import resource

            soft = f" {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"
        except ImportError:  # Windows
            soft = ""
        where = f" opening {e.filename}" if e.filename else ""
        return f"the open-file limit (ulimit -n{soft}) was reached{where}: raise it (ulimit -n 65536)"
    if isinstance(e, ImportError) and "failed to map segment" in text:  # a library's code did not fit
        return f"the memory limit (ulimit -v) is too low to load {text.split(':')[0]}: raise it"
    if isinstance(e, RuntimeError) and "can't start new thread" in text:
        return "the system refused a new thread (can't start new thread): raise the limits (ulimit -v, ulimit -u)"
    return None


def _smaller(args: argparse.Namespace) -> str:
    """", or rerun with fewer --workers or a smaller --batch-size": the verb's options that use less."""
    uses = (("a smaller", "--stream-chunk"),) if hasattr(args, "stream_chunk") else \
        (("fewer", "--workers"), ("a smaller", "--batch-size"))  # rows read from the cache, or images
    less = [f"{what} {flag}" for what, flag in uses if hasattr(args, flag[2:].replace("-", "_"))]
    return f", or rerun with {' or '.join(less)}" if less else ""


def _unwritable(args: argparse.Namespace, e: OSError) -> str:
    """`fne.errors.refused_write`'s line, naming --out or --cache where the file lies under it;
    for `fne cache` (rm, verify --clean), that the cache must be writable."""
    from fne.errors import DENIED, refused_write

    if e.errno in DENIED and args.command == "cache":  # this cache is the one to change
        return f"cannot write{f' {e.filename}' if e.filename else ''} ({e.strerror}): removing from a cache needs one " \
               f"you can write to"
    return refused_write(e, {"--out": getattr(args, "out", None), "--cache": _cache_folder(args)})


def _cache_folder(args: argparse.Namespace) -> str | None:
    """The local cache root the verb uses (--cache, $FNE_CACHE, the default), or None."""
    try:
        from fne.cache.store import cache_root

        return str(cache_root(getattr(args, "cache", None)))
    except Exception:  # noqa: BLE001 -- a cache it cannot name: no flag to suggest
        return None
