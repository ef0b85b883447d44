"""Ctrl-C and SIGTERM held off the main thread's handoffs to the extraction's other threads.

Python runs a signal's handler in the main thread between two bytecodes, and one of those is
the return from the lock acquisition inside `threading.Condition.__enter__`: the
`KeyboardInterrupt` (or `fne.cli.Terminated`) is then raised with the lock taken and never
released (the ``with`` block it guards has not begun). `queue.Queue`, `threading.Event`,
`concurrent.futures.Future` and torch's DataLoader (its index queues) all take such locks. The
writer's queue left locked so would stop the run it was meant to end: the writer waiting for
ever on its next ``get``, `Writer.close` on its own ``put`` (a hang once seen so: both threads
blocked on locks), and a SIGTERM sent then taken as the first interrupt and waited out again.
The signal lands there when the kernel hands it to another thread while the main one waits for
such a lock (tests/test_handoff.py sends it at that moment).

`held` defers the two signals over such a handoff, which is bounded (a wait with a timeout, in
a loop that raises between waits), and raises the one that came once it is done.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import threading
from collections.abc import Iterator

TYPE_CHECKING = False  # typing's own: 4 ms of the window before `fne.cli.main` holds Ctrl-C
if TYPE_CHECKING:  # `fne.cli` imports this module before its Ctrl-C is held: kept light (no logging, re)
    from concurrent.futures import Future

SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL = 0.2  # seconds: how late a held signal is raised at most, beyond the handoff's own work


@contextlib.contextmanager
def held() -> Iterator[None]:
    """SIGINT and SIGTERM deferred until the block ends, then handled as their handlers say
    (`signal.default_int_handler`: KeyboardInterrupt; `fne.cli`'s: Terminated). A second one
    within the block is handled at once: a handoff that does not end (the loader's next batch
    read from a mount that stopped answering) must not leave Ctrl-C unheard; the user who presses
    it again takes that risk. Two SIGTERMs end the process as SIGTERM's default does. In a thread other than the main one (where no handler runs),
    nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if any(signal.getsignal(s) is None for s in SIGNALS):  # a handler set outside Python: not ours to swap
        yield
        return
    came: list[int] = []
    before: dict[int, object] = {}

    def hold(signum: int, frame) -> None:
        came.append(signum)
        if len(came) > 1:  # again: now
            twice = came == [signal.SIGTERM, signal.SIGTERM]
            came.clear()
            _restore(list(before.items()))
            # a second SIGTERM ends the process as SIGTERM's default does (`fne.cli._terminate`
            # has the second one do so), not by an exception raised inside the held work (torch's
            # import, whose C++ initialisation aborts on it: exit 134 and a dump of modules)
            if twice:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _deliver(signum, signal.SIG_DFL if twice else before.get(signum, signal.SIG_DFL))

    try:
        for s in SIGNALS:
            before[s] = signal.signal(s, hold)
        yield
    finally:
        _restore(list(before.items()))
        if came:
            _deliver(came[0], before.get(came[0], signal.SIG_DFL))


def _restore(handlers: list) -> None:
    """Each `(signal, handler)` set again, the later ones too where a signal that comes after an
    earlier one's is set raises (a SIGINT then would leave SIGTERM held for good)."""
    if handlers:
        (s, handler), rest = handlers[0], handlers[1:]
        try:
            signal.signal(s, handler)
        finally:
            _restore(rest)


def _deliver(signum: int, handler) -> None:
    """Handle `signum` as `handler` would have, had it not been held."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)  # the default: the process ends of it
    # SIG_IGN (a shell's background job, nohup): ignored, as it would have been


def wait_event(event: threading.Event) -> None:
    """Wait for `event`, a signal raised between waits, never inside one."""
    while not event.is_set():  # is_set takes no lock
        with held():
            event.wait(POLL)


def wait_future(future: Future):
    """`future`'s result (its error raised), a signal raised between waits, never inside one."""
    while True:
        with held():
            try:
                return future.result(POLL)
            except TimeoutError:  # concurrent.futures' own since Python 3.11
                pass


def imported(name: str):
    """Module `name` imported with SIGINT and SIGTERM held: torch's import (3 s on a GPU host) runs
    C++ initialisation that a KeyboardInterrupt raised inside it aborts (pybind11's
    ``error_already_set`` thrown where nothing catches it: exit 134, no line; `fne.cli._parsed`,
    and the API's verbs: `fne.__getattr__`); held, the signal is raised once the import is done
    (through the caller's own handler: a notebook's, a KeyboardInterrupt), a second one at once."""
    with held():
        return importlib.import_module(name)
