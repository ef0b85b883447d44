"""`fne train`: the epochs no checkpoint holds yet, kept where --resume finds them as a run stops.

`--save-every auto` writes its first checkpoint once `checkpoint.AUTO_EVERY_S` seconds have passed,
`--save-every N` after N epochs: before then a Ctrl-C, a SIGTERM (`fne.cli.Terminated`) or a full
disk lost every epoch trained, and so did one during the test pass or while the run's files were
written, after the last epoch. `Unsaved` holds a copy of the state at the end of each completed
epoch (what a save writes: the model, optimizer, scheduler and scaler, and the run's progress)
until the run's first save (a resumed run's too: the checkpoint it resumed from is its own, which a
Ctrl-C after further epochs replaced by none, losing them), and the last epoch's as the epochs end; `keep` writes it to the run's
checkpoint as the run stops, and `--resume` goes on from that epoch as from a save (every epoch
reseeds every generator, `checkpoint.seed_epoch`: the same weights as an uninterrupted run), or,
after the last epoch, writes the run's files without training again.

Not kept: a half epoch (its weights are neither one epoch's nor the next's), and, while the run is
still training, over a checkpoint the run folder held as the run began (another run's, which the
run would replace at its first save: `fne train` said so as it started, and a Ctrl-C then means
to leave it). `--save-every 0` wants no checkpoint: none is written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from fne.training import checkpoint
from fne.training.checkpoint import PROGRESS


def copied(state):
    """`state` (a state dict, nested dicts and lists of tensors and numbers) with every tensor
    copied to the CPU: as it is now, whatever later steps do to the tensors it came from."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: copied(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(copied(v) for v in state)
    return state  # numbers, strings, None: not changed in place


class Unsaved:
    """The run's last completed epoch where no checkpoint holds it (see the module's docstring).

    Parameters
    ----------
    path : Path
        The run's checkpoint file.
    save_every : int or "auto"
        `--save-every`: 0 keeps nothing.
    epochs : int
        The run's epochs, for the note that says what was kept.
    own : tuple, optional
        `checkpoint.identity` of the checkpoint the run resumed from: its own, which an epoch held
        may replace (any other file there is left as it was).
    """

    def __init__(self, path: Path, save_every: int | str, epochs: int, own: tuple | None = None) -> None:
        self.path, self.wanted, self.epochs, self.own = path, save_every != 0, epochs, own
        self.held: tuple[Callable[[], None], int, bool] | None = None  # (its write, epoch, done)

    def hold_epoch(self, save: Callable[[dict, dict], None], model: torch.nn.Module, parts: dict, run: dict,
                   done: bool = False) -> None:
        """Hold the state at the end of the epoch just ended, and `run`'s progress, for
        `save(states, progress)` to write should the run stop: a copy of the parts' state dicts
        (the parts themselves once no epoch is left: `done`); the model's weights are the best so
        far where it is the best epoch (a copy already), else copied. Nothing is copied while
        another run's checkpoint is there: `keep` would not write over it (the run's own first
        save drops what is held, so a checkpoint there before the last epoch is not the run's)."""
        if not self.wanted or (not done and self._foreign()):
            self.held = None
            return
        best = run["best"]
        states = dict(parts) if done else {k: copied(v.state_dict()) if v is not None else None
                                           for k, v in parts.items() if k != "model"}
        states["model"] = best["state"] if best["epoch"] == run["epoch"] else copied(model.state_dict())
        progress = {**{k: run[k] for k in PROGRESS}, "history": list(run["history"]), "best": dict(best)}
        self.held = (lambda: save(states, progress)), run["epoch"], done  # one store: a Ctrl-C comes before or after

    def _foreign(self) -> bool:
        """Whether the run folder holds a checkpoint that is not the one this run resumed from."""
        return self.path.exists() and (self.own is None or checkpoint.identity(self.path) != self.own)

    def drop(self) -> None:
        """A checkpoint holds the run's last epoch: nothing to keep."""
        self.held = None

    def keep(self, e: BaseException) -> None:
        """The run stopped (`e`: a Ctrl-C, a SIGTERM, a full disk): write the epoch held, where
        there is one and, before the last epoch ended, no checkpoint is there (an earlier run's is
        left as it was), and add a note to `e` saying what was kept (the command line says it from
        the checkpoint, `fne.stopped.how_to_resume`). A checkpoint the disk has no room for either
        is left unwritten, as the run's files are; a second Ctrl-C stops the write, leaving no half
        file (`checkpoint.save`)."""
        if self.held is None:
            return
        write, epoch, done = self.held
        if not done and self._foreign():
            return
        try:
            write()
        except OSError:
            return
        then = "writes the run's files without training again" if done else "continues from there"
        e.add_note(f"kept epoch {epoch} of {self.epochs} in {self.path}: resume=True {then}")
