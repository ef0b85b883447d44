"""fne.held: a setting held within a ``with`` comes back as the caller had it, nested, from
threads at once and on error, and conflicting requests settle as documented; torch's thread count
(each OS thread's own) and matmul precision (the process's) through it."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from fne.held import Held, first, torch_threads


class Setting:
    """A setting of the process, with every write logged."""

    def __init__(self, value):
        self.value, self.writes = value, []

    def read(self):
        return self.value

    def write(self, v):
        self.writes.append(v)
        self.value = v


def test_nested_blocks_share_one_change_and_the_caller_gets_its_value_back_on_error():
    s = Setting(2)
    held = Held(s.read, s.write)
    with held(1):
        assert s.value == 1
        with pytest.raises(RuntimeError), held(1):
            assert s.value == 1
            raise RuntimeError
        assert s.value == 1  # the outer block is still inside
    assert s.value == 2 and s.writes == [1, 2]


def test_min_the_fewest_threads_asked_hold_while_inside():
    s = Setting(2)
    held = Held(s.read, s.write, min)
    with held(4):
        assert s.value == 4
        with held(1):  # a small fit inside an extraction's four threads
            assert s.value == 1
            with held(8):
                assert s.value == 1
        assert s.value == 4
    assert s.value == 2 and s.writes == [4, 1, 4, 2]


def test_first_the_earliest_request_still_inside_holds_across_threads():
    s = Setting("caller")
    held = Held(s.read, s.write, first)
    a_in, b_in, a_out = (threading.Event() for _ in range(3))
    seen = {}

    def a():
        with held("a"):
            a_in.set()
            b_in.wait()
        a_out.set()

    def b():
        a_in.wait()
        with held("b"):
            seen["with a"] = s.value
            b_in.set()
            a_out.wait()
            seen["a gone"] = s.value

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert seen == {"with a": "a", "a gone": "b"}
    assert s.value == "caller" and s.writes == ["a", "b", "caller"]


def test_threads_inside_at_once_restore_the_callers_value_exactly():
    """Many threads enter and leave in every order, some raising: inside, the value is the fewest
    asked by a block inside (never above a block's own request); after, the caller's."""
    s = Setting(16)
    held = Held(s.read, s.write, min)
    start = threading.Barrier(8)
    wrong = []

    def run(i):
        start.wait()
        for j in range(200):
            want = 1 + (i + j) % 5
            try:
                with held(want):
                    if s.value > want:
                        wrong.append((want, s.value))
                    if j % 7 == 0:
                        raise KeyError
            except KeyError:
                pass

    ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert wrong == [] and s.value == 16 and s.writes[-1] == 16


def test_a_per_thread_setting_is_counted_and_given_back_in_each_thread():
    local = threading.local()
    held = Held(lambda: getattr(local, "v", 3), lambda v: setattr(local, "v", v), min, per_thread=True)
    a_in, b_out = threading.Event(), threading.Event()
    seen = {}

    def a():
        local.v = 5
        with held(1):
            a_in.set()
            b_out.wait()  # b enters and leaves while a is inside: a's count is a's
            seen["a inside"] = local.v
        seen["a after"] = local.v

    def b():
        local.v = 2
        a_in.wait()
        with held(4):
            seen["b inside"] = local.v  # a's request is not b's
        seen["b after"] = local.v
        b_out.set()

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert seen == {"a inside": 1, "a after": 5, "b inside": 4, "b after": 2}


def test_a_refused_value_leaves_nothing_held():
    s = Setting(2)

    def write(v):
        if v < 1:
            raise ValueError("must be positive")
        s.write(v)

    held = Held(s.read, write)
    with pytest.raises(ValueError), held(0):
        pass
    s.value = 3  # the caller changes it: the next block gives back this one
    with held(1):
        assert s.value == 1
    assert s.value == 3


def test_importing_fne_held_loads_no_torch():
    code = "import sys, fne.held; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_torch_threads_a_fit_in_another_thread_leaves_the_callers_count_alone():
    """torch's count is each thread's own: a worker's small fit inside at once with the caller's
    neither runs on the caller's count nor leaves the caller on one thread, whoever leaves first."""
    import torch

    from fne.linear import solver

    n = torch.get_num_threads()
    ready, go, inside, leave = (threading.Event() for _ in range(4))
    seen = {}

    def worker():
        # the worker's own count, before the caller's block (a thread's first get_num_threads
        # takes the latest count set by any thread: torch's lazy start of each thread's OpenMP)
        torch.set_num_threads(2)
        torch.get_num_threads()
        ready.set()
        go.wait()
        with solver.one_torch_thread():
            seen["worker inside"] = torch.get_num_threads()
            inside.set()
            leave.wait()
        seen["worker after"] = torch.get_num_threads()

    try:
        torch.set_num_threads(2)
        w = threading.Thread(target=worker)
        w.start()
        ready.wait()
        with solver.one_torch_thread():
            go.set()
            inside.wait()
            seen["caller inside"] = torch.get_num_threads()
        leave.set()  # the caller leaves first, the worker last
        w.join()
        seen["caller after"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(n)
    assert seen == {"worker inside": 1, "caller inside": 1, "worker after": 2, "caller after": 2}


def test_torch_threads_a_small_fit_inside_an_extractions_threads_runs_on_one():
    import torch

    from fne.extraction.extract import _threads
    from fne.linear import solver

    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with _threads(2):
            assert torch.get_num_threads() == 2
            with pytest.raises(RuntimeError), solver.one_torch_thread():
                assert torch.get_num_threads() == 1
                raise RuntimeError
            assert torch.get_num_threads() == 2
        with solver.one_torch_thread(), _threads(2):
            assert torch.get_num_threads() == 1  # the fewest asked
        assert torch.get_num_threads() == 1 and torch_threads is solver.torch_threads
        with _threads(None):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)


def test_full_precision_from_threads_at_once_gives_the_processs_settings_back():
    from fne.backbones import resample

    before = [b.fp32_precision for b in resample._MATMUL]
    start, wrong = threading.Barrier(4), []

    def run():
        start.wait()
        for _ in range(200):
            with resample.full_precision():
                if any(b.fp32_precision != "ieee" for b in resample._MATMUL):
                    wrong.append([b.fp32_precision for b in resample._MATMUL])

    try:
        resample._MATMUL[1].fp32_precision = "bf16"
        asked = [b.fp32_precision for b in resample._MATMUL]
        ts = [threading.Thread(target=run) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert wrong == [] and [b.fp32_precision for b in resample._MATMUL] == asked
    finally:
        for b, was in zip(resample._MATMUL, before, strict=True):
            b.fp32_precision = was
