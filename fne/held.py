"""Settings held within a ``with``: a value set for the block, the caller's put back after.

fne changes a few settings that outlive a call for the duration of a block: torch's float32 matmul
precision (`fne.backbones.resample.full_precision`) and its number of CPU threads
(`fne.linear.solver.one_torch_thread`, the extraction's ``threads``). `Held` is the one way it
does so: blocks inside at once, nested or in other threads, share one change, conflicting
requests are settled by a stated rule, and the caller's value comes back exactly once the last
block is out, also when a block raised. Torch-free: the settings come as functions.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any


def first(asked: list) -> Any:
    """`Held`'s `pick` where the earliest request still inside holds (the others wait their turn)."""
    return asked[0]


class _State:
    """The requests of the blocks inside (in the order they came), the caller's value they give
    back, and the value written now (None: nothing held)."""

    __slots__ = ("asked", "caller", "now")

    def __init__(self) -> None:
        self.asked: list = []
        self.caller: Any = None
        self.now: Any = None


class Held:
    """A setting held at a value within ``with held(value):``, the caller's value put back after.

    The first block in reads the caller's value and each block's entry and exit writes the value
    `pick` chooses from the requests of the blocks still inside (written again only when that
    choice changes); the last one out writes the caller's value back, also when a block raised.
    A value changed by hand inside a block is not kept: the caller's, read as the first block
    entered, is what comes back.

    Parameters
    ----------
    read : callable
        ``read()``: the setting's value now.
    write : callable
        ``write(value)``: sets it.
    pick : callable, default min
        ``pick(asked)``: the value that holds, from the requests of the blocks inside, in the order
        they entered. ``min`` (torch's threads: the fewest threads asked, so a block that needs one
        thread gets one whoever else asks for more); `first` (the earliest block's request).
    per_thread : bool, default False
        True for a setting each OS thread has its own of: each thread's blocks are counted apart and
        give back that thread's value (torch's CPU thread count under OpenMP, the backend of its
        wheels, is the calling thread's: another thread's ``torch.set_num_threads`` leaves it as it
        is). False: one value for the process (torch's matmul precision), the blocks of every
        thread counted together.
    """

    def __init__(self, read: Callable[[], Any], write: Callable[[Any], None],
                 pick: Callable[[list], Any] = min, per_thread: bool = False) -> None:
        self._read, self._write, self._pick = read, write, pick
        self._lock = threading.Lock()
        self._shared = _State()
        self._local = threading.local() if per_thread else None

    def _state(self) -> _State:
        if self._local is None:
            return self._shared
        if not hasattr(self._local, "state"):
            self._local.state = _State()
        return self._local.state

    @contextlib.contextmanager
    def __call__(self, value: Any) -> Iterator[None]:
        """Hold the setting at `value` (or at what `pick` chooses among the requests inside)."""
        with self._lock:
            st = self._state()
            if not st.asked:
                st.caller = st.now = self._read()
            st.asked.append(value)
            try:
                self._settle(st, force=len(st.asked) == 1)
            except BaseException:  # a value the setting refused: nothing changed, nothing held
                st.asked.pop()
                raise
        try:
            yield
        finally:
            with self._lock:
                st.asked.remove(value)  # equal requests are interchangeable: any one of them leaves
                if st.asked:
                    self._settle(st)
                else:
                    self._write(st.caller)
                    st.caller = st.now = None

    def _settle(self, st: _State, force: bool = False) -> None:
        want = self._pick(st.asked)
        if force or want != st.now:
            self._write(want)
            st.now = want


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# torch's CPU threads of the calling thread (the solver's small fits, `fne extract --threads`): the
# fewest asked hold, so a fit that asked for one thread runs on one inside an extraction's N.
# torch.set_num_threads also sets the count a thread takes on its first use of torch's threads
# (its get_num_threads included): a thread that starts using them while another holds one
# thread starts on one, and that is the count its own blocks read and give back.
torch_threads = Held(_torch_threads, _set_torch_threads, min, per_thread=True)
