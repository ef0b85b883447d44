from __future__ import annotations

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
    assert lines[0] == "extract efficientnet_lite0: 32/20000 img (0.8 img/s, 40s elapsed)"
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
    assert capsys.readouterr().err.splitlines() == ["fit fne+svm: 1/1 splits (0.0 splits/s, 2m03s elapsed)"]
    quick = fp.progress(1, "fit fne+svm", unit="splits")
    clock[0] += 2
    quick.update(1)
    quick.close()  # no line yet: the closing one is written
    assert capsys.readouterr().err.splitlines() == ["fit fne+svm: 1/1 splits (0.5 splits/s, 2s elapsed)"]
