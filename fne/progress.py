"""Progress on long work: a live bar on a terminal, a plain line at most every 30 s in a log; the
lines that say how the work goes (`progress_line`); and the lines verbs print, in the words of the
API called (`said`); and how a problem met many times is said once (`first_few`, `say_skipped`).

``progress=False`` (a verb's keyword) promises a Python caller silence: no bar and no progress line,
only notes, warnings and errors. On the command line (`COMMAND_LINE`) --no-progress drops the bars,
and the progress lines stay (a log's record of the run).

A log (stderr not a terminal: CI, Slurm, `2> file`; nor a terminal of no width, or ``TERM=dumb``)
gets whole newline-terminated lines, so warnings printed meanwhile stay on lines of their own.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

LOG_INTERVAL_S = 30.0
FEW = 5  # the names a line that counts many shows (`first_few`)


def _clock(seconds: float) -> str:
    """Seconds as a log reads them: 45s, 6m05s, 2h03m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _rate(n: int, seconds: float, unit: str) -> str:
    """How fast `n` `unit` in `seconds` went, readable however slow: ``43.3 img/s``, and below one
    a second the time each takes, per one (``2.5 s/img``, ``2m03s/split`` of unit "splits", where
    ``0.0 splits/s`` said nothing of a fit whose splits take minutes); ``0.0 img/s`` before the first."""
    rate = n / max(seconds, 1e-9)
    if rate >= 1 or n == 0:
        return f"{rate:.1f} {unit}/s"
    each = 1 / rate
    return f"{each:.1f} s/{_one(unit)}" if each < 60 else f"{_clock(each)}/{_one(unit)}"


def _one(unit: str) -> str:
    """A unit counted in the plural ("splits") as it reads per one: "s/split"."""
    return unit.removesuffix("s")


class _LogLines:
    """tqdm's update / set_postfix / close, written as one line per interval and one at the end:
    done/total, the rate since the start, the time elapsed and, from the second line while work
    remains, the time left at the rate of the last interval (the first interval's start-up, such
    as compilation, does not inflate it)."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.postfix = ""
        self.t0 = self.last = time.monotonic()
        self.n_last = 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= LOG_INTERVAL_S:
            self._line()

    def set_postfix(self, refresh: bool = True, **kw) -> None:
        """As tqdm's, which shows it at once (`refresh`): a line when the interval has passed
        (work between updates, such as a long cross-validation inside one split, is seen
        meanwhile)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())
        if refresh and time.monotonic() - self.last >= LOG_INTERVAL_S:
            self._line()

    def _line(self, end: bool = False) -> None:
        now = time.monotonic()
        recent = (self.n - self.n_last) / max(now - self.last, 1e-9)
        eta = "" if end or not self.n_last or self.n >= self.total or recent <= 0 else f", {_clock((self.total - self.n) / recent)} left"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} ({_rate(self.n, now - self.t0, self.unit)}, "
              f"{_clock(now - self.t0)} elapsed{eta}{extra})", file=sys.stderr, flush=True)
        self.last, self.n_last = now, self.n

    def close(self) -> None:
        if self.n != self.n_last or self.last == self.t0:  # not a repeat of the line just written
            self._line(end=True)


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def _live_terminal() -> bool:
    """Whether stderr can show a live bar: a terminal, with a width, and not ``TERM=dumb`` (Emacs'
    compilation buffers, editors' consoles: no redrawing). A terminal of 0 columns (``docker run
    -t`` from CI, `script` under no terminal) drew tqdm's bar 0 characters wide: nothing, the
    whole run long. Where not, the lines of a log (`_LogLines`)."""
    if not sys.stderr.isatty() or os.environ.get("TERM") == "dumb":
        return False
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError):  # no descriptor (a stream standing in for stderr): tqdm's own guess
        return True


def progress(total: int, desc: str, enabled: bool = True, unit: str = "img", leave: bool = True):
    """A bar with tqdm's `update`, `set_postfix` and `close`: live on a terminal, else a line at
    most every `LOG_INTERVAL_S` (`_live_terminal`)."""
    if not enabled:
        return _Off()
    if not _live_terminal():
        return _LogLines(total, desc, unit)
    return _bar_class()(total=total, unit=_one(unit), desc=desc, file=sys.stderr, leave=leave, mininterval=0.1)


@functools.cache
def _bar_class() -> type:
    """tqdm's bar which, from its start to its `close` (or its collection, after an exception),
    keeps warnings off its line (`_hold`)."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.held = _hold()

        def close(self) -> None:
            try:
                super().close()
            finally:
                if getattr(self, "held", False):
                    self.held = False
                    _release()

    return Bar


# While a live bar is drawn from Python: how many are, and the warnings.showwarning they replaced.
_LIVE: dict = {"bars": 0, "before": None, "hook": None}
_LIVE_LOCK = threading.Lock()


def _hold() -> bool:
    """Count a live bar; the first one of a Python caller wraps `warnings.showwarning`, theirs
    (a notebook's, `logging.captureWarnings`'), so that a warning is written on a line of its own
    (`print_line`): Python's printer wrote it after the bar's text, on its line (``fit fne+svm:
    40%|███▌ | 2/5 [00:03<00:04, 1.5s/split]/…/fit.py:212: UserWarning: …``). The command line
    has its own printer, which does so (`fne.cli`): nothing is wrapped there. -> whether it counted."""
    if COMMAND_LINE.get():
        return False
    with _LIVE_LOCK:
        _LIVE["bars"] += 1
        if _LIVE["bars"] == 1:
            before = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None) -> None:
                with _bars_cleared(file or sys.stderr):
                    before(message, category, filename, lineno, file, line)

            _LIVE.update(before=before, hook=show)
            warnings.showwarning = show
    return True


def _release() -> None:
    """A live bar closed: after the last, the caller's `warnings.showwarning` is theirs again
    (unless they set another meanwhile, which stays)."""
    with _LIVE_LOCK:
        _LIVE["bars"] -= 1
        if _LIVE["bars"] == 0:
            if warnings.showwarning is _LIVE["hook"]:
                warnings.showwarning = _LIVE["before"]
            _LIVE.update(before=None, hook=None)


def progress_line(text: str, enabled: bool, stderr: bool = False) -> None:
    """Print `text`, a line that says how the work goes (an epoch's scores, what a network
    imported, "extracting N images missing from the cache"), on stdout (`stderr`: on stderr):
    always on the command line, from Python unless the caller gave ``progress=False`` (`enabled`
    False). A note, a warning or an error is printed whatever `enabled` is, not with this.

    Flushed at once: stdout into a file or a pipe (Slurm, nohup, `| tee`, `python -c` under a
    notebook's capture) is block-buffered, and held back an epoch's scores until the process
    ended, after every bar line on stderr, so `tail -f` showed none of them."""
    if enabled or COMMAND_LINE.get():
        print_line(text, sys.stderr if stderr else sys.stdout)


def print_line(text: str, file) -> None:
    """Print `text` to `file` on a line of its own, flushed, where a live bar may be drawn: on a
    terminal a line written under a bar joined the bar's own (``test: 100%|██| 11/11 [00:02<00:00,
    3.07img/s]fne: warning: skipped 0/bad.png: …``); tqdm's bars on that terminal are cleared,
    the line written, and they are drawn again below it."""
    with _bars_cleared(file):
        print(text, file=file, flush=True)


def _bars_cleared(file) -> contextlib.AbstractContextManager:
    """tqdm's bars on `file`'s terminal cleared within it, drawn again after it."""
    bars = sys.modules.get("tqdm")  # no bar was ever drawn where tqdm is not imported
    return bars.tqdm.external_write_mode(file=file) if bars else contextlib.nullcontext()


# True while `fne.cli.main` runs a verb: the lines it prints then name flags, not keywords (`said`).
COMMAND_LINE: contextvars.ContextVar[bool] = contextvars.ContextVar("fne_command_line", default=False)


# Set while `fne run` reruns a training step under --force (`fne.pipeline.runner.run_step`): why
# the step does not take up its run folder's checkpoint, in the caller's words (``text(python)`` as
# `said` takes it). fne train's note over that checkpoint says it in place of "(--resume continues
# it)": fne run has no --resume (it resumes by itself).
STARTS_OVER: contextvars.ContextVar[Callable[[bool], str] | None] = contextvars.ContextVar("fne_starts_over",
                                                                                        default=None)


# Set while `fne run` runs a step (`fne.pipeline.runner.run_step`): the step's options come from the
# pipeline file, whose keys are their keywords, so its lines name them so (``splits=1``), as the
# file's refused values are (`fne.pipeline.config_errors.in_the_files_words`), not by flags no one typed.
IN_A_FILE: contextvars.ContextVar[bool] = contextvars.ContextVar("fne_in_a_file", default=False)


def said(text: Callable[[bool], str]) -> str:
    """A line a verb prints (a note, a step's progress) in the words of the API called, as
    `fne.option_handling.refusal` words an error: `text(python)`, which names options with
    `fne.option_handling.named(..., python)`, for a Python caller their keywords (``force=True``), on the
    command line (`COMMAND_LINE`) their flags (``--force``), in a step of `fne run` (`IN_A_FILE`) the
    file's keys (``splits=1``)."""
    return text(not COMMAND_LINE.get() or IN_A_FILE.get())


def first_few(names: Sequence[str], n: int = FEW) -> str:
    """The first `n` of `names` and a count of the rest: ``a, b, c, d, e and 7 more``.

    Parameters
    ----------
    names : sequence of str
        What a line names (images, classes, layers), in the order it names them.
    n : int
        How many are shown.

    Returns
    -------
    str
        The names shown, comma-separated, and `` and N more`` where there are more.
    """
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def say_skipped(items: Iterable[tuple[str, str]], where: str = "", stacklevel: int = 2,
                skipped: bool = True, noun: str = "images") -> None:
    """Warn of the images skipped, one line per distinct reason however many there are (a CSV
    with 10,000 empty label cells is one line, not 10,000): ``skipped ID: WHY`` for one image,
    ``skipped N images (WHY): `first_few` of them`` for more. Reasons that differ only in their
    numbers ("truncated (44 bytes not processed)", a decompression bomb's pixels) are one line,
    said as the first met ", and alike", each image shown with its own.

    Parameters
    ----------
    items : iterable of (str, str)
        Each image's id and why, in the order met.
    where : str
        Where each is named, appended to a line that shows only some (``; each named in F``);
        "" where nowhere is (the line's count says how many it does not show).
    stacklevel : int
        As `warnings.warn`'s, from the caller.
    skipped : bool
        False: the images were read, and WHY is a note on them (a float image read black, a
        very large one): ``ID: WHY`` for one, ``WHY (N images: `first_few` of them)`` for more.
    noun : str
        What the items are, in the line that counts them ("files": `fne report`'s).
    """
    by_kind: dict[str, list[tuple[str, str]]] = {}  # reasons alike but for their numbers: one line
    for name, why in items:
        by_kind.setdefault(re.sub(r"\d+", "#", why), []).append((name, why))
    for met in by_kind.values():
        names, why = [n for n, _ in met], met[0][1]
        if len({w for _, w in met}) > 1:  # each shown with its own numbers, the line with the first's
            names, why = [f"{n} ({w})" for n, w in met], f"{why}, and alike"
        shown = f"{first_few(names)}{where if len(names) > FEW else ''}"
        line = (f"{'skipped ' * skipped}{met[0][0]}: {met[0][1]}" if len(met) == 1 else
                f"skipped {len(met)} {noun} ({why}): {shown}" if skipped else f"{why} ({len(met)} {noun}: {shown})")
        warnings.warn(line, stacklevel=stacklevel + 1)


# The notes (`note`) printed within the innermost `said_once`; None outside any.
_NOTES_SAID: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("fne_notes_said", default=None)


def note(text: str) -> None:
    """Print `text`, a ``note: ...`` line, on stdout at once; within `said_once`, not again where
    it was printed before (each step of `fne run` reading the same rows would say it again)."""
    notes = _NOTES_SAID.get()
    if notes is not None:
        if text in notes:
            return
        notes.add(text)
    print_line(text, sys.stdout)


@contextlib.contextmanager
def said_once() -> Iterator[None]:
    """Within it, each warning shown once: a repeat of one shown before (the same category and
    text, from anywhere) is dropped; so is a repeat of a `note`. Around every verb of the command
    line (`fne.cli.main`) and `fne.run`, whose steps each read the same DATA and rows, so each
    would say its skipped rows and faint layers again, step after step; Python's own filters drop
    a repeat only from the same line of code, and forget it when a filter changes. Nothing is
    hidden: what is dropped was said."""
    shown: set[tuple[type, str]] = set()
    before = warnings.showwarning
    notes = _NOTES_SAID.set(set())

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if (category, str(message)) not in shown:
            shown.add((category, str(message)))
            before(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = before
        _NOTES_SAID.reset(notes)
