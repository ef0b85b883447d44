from __future__ import annotations

import io

import fne.progress as fp


def test_a_log_line_says_elapsed_and_time_left_at_the_recent_rate(monkeypatch, capsys):
    """A log (Slurm, `2> file`) has no live bar: each line says how long the run has taken and,
    from its second line while work remains, how long it has left at the last interval's rate (a
    slow start such as torch.compile does not stretch it)."""
    clock = [100.0]
    monkeypatch.setattr(fp.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(fp.sys.stderr, "isatty", lambda: False, raising=False)
    bar = fp.progress(20_000, "extract efficientnet_lite0")
    clock[0] += 40
    bar.update(32)  # compiling: 32 images in the first 40 s
    clock[0] += 30
    bar.update(3_000)  # then 100 img/s
    clock[0] += 5
    bar.update(100)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "extract efficientnet_lite0: 32/20000 img (1.2 s/img, 40s elapsed)"
    # 16,968 images left at the last 30 s's 100 img/s
    assert lines[1] == "extract efficientnet_lite0: 3032/20000 img (43.3 img/s, 1m10s elapsed, 2m50s left)"
    assert lines[2] == "extract efficientnet_lite0: 3132/20000 img (41.8 img/s, 1m15s elapsed)"


def test_the_last_line_is_not_written_twice(monkeypatch, capsys):
    """A line an update wrote at the last item is not repeated at close (`fne fit`'s one split
    printed `1/1 splits` twice)."""
    clock = [0.0]
    monkeypatch.setattr(fp.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(fp.sys.stderr, "isatty", lambda: False, raising=False)
    bar = fp.progress(1, "fit fne+svm", unit="splits")
    clock[0] += 123
    bar.update(1)
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["fit fne+svm: 1/1 splits (2m03s/split, 2m03s elapsed)"]
    quick = fp.progress(1, "fit fne+svm", unit="splits")
    clock[0] += 2
    quick.update(1)
    quick.close()  # no line yet: the closing one is written
    assert capsys.readouterr().err.splitlines() == ["fit fne+svm: 1/1 splits (2.0 s/split, 2s elapsed)"]


def test_a_slow_rate_says_the_time_each_takes(monkeypatch, capsys):
    """Below one a second, a log line says how long each takes (a fit whose splits take 45 s each
    said ``0.0 splits/s``, which tells a reader of the log nothing), and a rate at or above one
    per second stays a rate; nothing done yet is ``0.0``."""
    clock = [0.0]
    monkeypatch.setattr(fp.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(fp.sys.stderr, "isatty", lambda: False, raising=False)
    bar = fp.progress(10, "fit fne+svm", unit="splits")
    clock[0] += 31
    bar.set_postfix(C=1.0)  # a cross-validation that has not finished a split yet
    clock[0] += 59
    bar.update(2)
    clock[0] += 45
    bar.update(1)  # 3 splits in 135 s
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["fit fne+svm: 0/10 splits (0.0 splits/s, 31s elapsed, C=1.0)",
                     "fit fne+svm: 2/10 splits (45.0 s/split, 1m30s elapsed, C=1.0)",
                     "fit fne+svm: 3/10 splits (45.0 s/split, 2m15s elapsed, 5m15s left, C=1.0)"]
    assert fp._rate(3, 2.0, "img") == "1.5 img/s" and fp._rate(1, 1.0, "img") == "1.0 img/s"
    assert fp._rate(1, 2.5, "img") == "2.5 s/img"  # per one: "s/split" of "splits", not "s/splits"


def test_a_progress_line_reaches_a_log_file_at_once(monkeypatch):
    """stdout into a file or a pipe (Slurm, nohup, ``> log 2>&1``) is block-buffered: an epoch's
    line waited there until the process ended, after every bar line of stderr, and `tail -f`
    showed none; it is written as it is said."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", line_buffering=False)
    monkeypatch.setattr(fp.sys, "stdout", out)
    fp.progress_line("epoch 1/30: loss 1.2", enabled=True)
    assert raw.getvalue() == b"epoch 1/30: loss 1.2\n"
    fp.progress_line("epoch 2/30: loss 1.1", enabled=False)  # progress=False: silent
    assert raw.getvalue() == b"epoch 1/30: loss 1.2\n"


class _Terminal(io.StringIO):
    """stderr as a terminal (of the width `get_terminal_size` is made to say)."""

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return 2


def test_a_terminal_without_width_or_dumb_gets_the_lines_of_a_log(monkeypatch):
    """A terminal of 0 columns (``docker run -t`` from CI, `script` under no terminal) drew tqdm's
    bar 0 characters wide, which showed nothing the whole run; ``TERM=dumb`` (an editor's
    compilation buffer) cannot redraw one. Both get a log's lines; a terminal with a width, a bar."""
    import os

    from tqdm.auto import tqdm

    monkeypatch.setattr(fp.sys, "stderr", _Terminal())
    size = [os.terminal_size((0, 0))]
    monkeypatch.setattr(fp.os, "get_terminal_size", lambda fd: size[0])
    monkeypatch.setenv("TERM", "xterm-256color")
    assert isinstance(fp.progress(10, "extract"), fp._LogLines)
    size[0] = os.terminal_size((80, 24))
    bar = fp.progress(10, "extract")
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(fp.progress(10, "extract"), fp._LogLines)


def test_a_warning_under_a_live_bar_is_a_line_of_its_own(monkeypatch):
    """On a terminal a warning printed while a bar was drawn joined the bar's line (``test:
    100%|██| 11/11 [00:02<00:00, 3.07img/s]fne: warning: skipped 0/bad.png: …``): the bar is
    cleared, the line written from the line's start, and the bar drawn again."""
    import os
    import re

    from fne.cli import _one_line

    term = _Terminal()
    monkeypatch.setattr(fp.sys, "stderr", term)
    monkeypatch.setattr(fp.os, "get_terminal_size", lambda fd: os.terminal_size((80, 24)))
    monkeypatch.setenv("TERM", "xterm-256color")
    bar = fp.progress(11, "test")
    bar.update(8)
    bar.refresh()
    _one_line(UserWarning("skipped 0/bad.png: not an image file"), UserWarning, "f.py", 1, file=term)
    fp.progress_line("epoch 1/1: loss 1.5", enabled=True, stderr=True)
    bar.update(3)
    bar.close()
    out = term.getvalue()
    assert "8/11" in out and "11/11" in out
    assert "\rfne: warning: skipped 0/bad.png: not an image file\n" in out
    assert "\repoch 1/1: loss 1.5\n" in out
    assert not re.search(r"[^\r\n](fne: warning|epoch 1/1)", out), out


def test_a_python_caller_s_warning_under_a_live_bar_is_a_line_of_its_own_and_their_hook_stays(monkeypatch):
    """From Python (fne.fit, fne.extract, fne.train...), a warning given while a bar was drawn on
    a terminal was printed by Python after the bar's text, on its line; only the command line
    kept it apart. While a bar is live the caller's own `warnings.showwarning` (a notebook's) is
    called with the bar cleared, and is theirs again once the last bar is closed."""
    import os
    import re
    import warnings

    term = _Terminal()
    monkeypatch.setattr(fp.sys, "stderr", term)
    monkeypatch.setattr(fp.os, "get_terminal_size", lambda fd: os.terminal_size((80, 24)))
    monkeypatch.setenv("TERM", "xterm-256color")
    seen = []

    def theirs(message, category, filename, lineno, file=None, line=None):
        seen.append(str(message))
        term.write(f"theirs: {message}\n")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = theirs
        outer = fp.progress(5, "fit fne+svm", unit="splits")
        outer.update(2)
        inner = fp.progress(11, "extract")  # a bar within a bar (fit --extract): still theirs after both
        inner.update(8)
        inner.refresh()
        warnings.warn("skipped 0/bad.png: not an image file", stacklevel=1)
        inner.close()
        warnings.warn("C=1 is the edge of the grid", stacklevel=1)
        outer.close()
        assert warnings.showwarning is theirs
        out = term.getvalue()
        assert seen == ["skipped 0/bad.png: not an image file", "C=1 is the edge of the grid"]
        assert "8/11" in out and "\rtheirs: C=1 is the edge of the grid\n" in out
        assert re.search(r"split/s|s/split\]", out) and "splits" not in out  # tqdm's rate, per one split
        # each from a line's start: after a carriage return (tqdm moves up to the outer bar's line: \x1b[A)
        assert len(re.findall(r"\r(?:\x1b\[A)?theirs: ", out)) == 2 and out.count("theirs: ") == 2, out
        token = fp.COMMAND_LINE.set(True)  # the command line's printer keeps bars apart itself
        try:
            bar = fp.progress(3, "test")
            assert warnings.showwarning is theirs
            bar.close()
        finally:
            fp.COMMAND_LINE.reset(token)
