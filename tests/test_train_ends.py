"""`fne train`'s loose ends: numpy numbers as options, a full disk as the run's files are written.

Random EfficientNet-Lite0 weights at 32x32 on a few digits: the mechanics, not accuracy.
"""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch

from fne.cli import main
from fne.errors import FneError
from fne.training import checkpoint, epochs
from fne.training.train import train

from .conftest import write_digits

pytest.importorskip("efficientnet_lite_pytorch")

ARCH = "efficientnet_lite0"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    """10 digits of each of 2 classes as PNG files."""
    return write_digits(tmp_path_factory.mktemp("ends") / "data", per_class=10, classes=2)


def test_train_takes_numpy_numbers_and_records_python_ones(two_classes, tmp_path):
    """Every numeric option as a numpy number (as `fne.fit` takes them): random.seed refused
    np.int64 and torch's DataLoader np.int64 batch sizes; metrics.json and the checkpoint's
    arguments hold Python numbers (a checkpoint of numpy scalars would not load weights-only)."""
    given = dict(seed=np.int64(4), batch_size=np.int64(8), epochs=np.int64(1), lr=np.float32(0.01),
                 momentum=np.float32(0.5), image_size=np.int32(32), workers=np.int64(0), save_every=np.int64(1),
                 val_fraction=np.float32(0.25))
    m = train(str(two_classes), "scratch", tmp_path / "run", arch=ARCH, progress=False, **given)
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())
    args = checkpoint.read(tmp_path / "run" / checkpoint.CHECKPOINT)["args"]
    for k, v in given.items():
        kind = int if isinstance(v, np.integer) else float
        assert type(args[k]) is kind and args[k] == pytest.approx(float(v)), k
        if k != "save_every":  # the others are in metrics.json, as fit records its options
            assert type(m[k]) is kind and type(recorded[k]) is kind and recorded[k] == pytest.approx(float(v)), k
    assert m["seed"] == 4 and m["batch_size"] == 8 and m["image_size"] == 32 and m["epochs"] == 1


def test_a_class_maps_numpy_indices_are_taken_and_recorded_as_json(two_classes, tmp_path):
    """Direct mode's dict with numpy source indices (np.argsort's, say) was refused as not
    "ImageNet class names/indices"; now they are Python's in the check and in class_map.json."""
    m = train(str(two_classes), "direct", tmp_path / "run", arch=ARCH, weights="random", image_size=32, workers=0,
              progress=False, class_map={"0": [np.int64(1), np.int32(3)], "1": np.int64(2)})
    assert json.loads((tmp_path / "run" / "class_map.json").read_text()) == {"0": [1, 3], "1": 2}
    assert m["class_map"] == {"0": ["goldfish", "tiger shark"], "1": ["great white shark"]}


def _no_space_for(name: str, monkeypatch) -> None:
    """torch.save refuses `name` as a full disk does: Python's write, with no file named."""
    real = torch.save

    def save(obj, f, *a, **k):
        if str(getattr(f, "name", f)).endswith(name):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_at_a_short_runs_end_keeps_the_training_and_resume_writes_it(two_classes, tmp_path,
                                                                                 monkeypatch, capsys):
    """`--save-every auto` in a short run saves no checkpoint; model.pt refused by a full disk lost
    the whole run ("nothing was kept"). Now its last epoch is written to checkpoint.pt, the error
    says so in one line, and --resume writes the run's files without training again: those an
    uninterrupted run writes, and the checkpoint holds the last epoch's weights, as a save would."""
    real, passes = epochs.evaluate, []

    def evaluate(model, loader, ctx, what):  # each run's first validation right, its second wrong: best epoch 1
        ids, y, p = real(model, loader, ctx, what)
        if what == "val":
            passes.append(1)
            p = np.eye(2, dtype=p.dtype)[y if len(passes) % 2 else 1 - y]
        return ids, y, p

    monkeypatch.setattr(epochs, "evaluate", evaluate)
    args = ["train", str(two_classes), "--mode", "scratch", "--arch", ARCH, "--epochs", "2", "--val-fraction", "0.25",
            "--image-size", "32", "--workers", "0", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "whole"), "--save-every", "1"]) == 0  # its checkpoint: epoch 2's
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _no_space_for("model.pt", m)
        assert main([*args, "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"fne train: error: no space left on device writing {out / 'model.pt'}: free space there or pass --out a "
        f"folder on another disk; kept epoch 2 of 2 (the last one saved) in {out / 'checkpoint.pt'}; rerun the same "
        f"command with --resume to continue from there")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # no model.pt that looks complete
    assert json.loads((tmp_path / "whole" / "metrics.json").read_text())["best_epoch"] == 1  # not the last
    kept, last = (checkpoint.read(p / checkpoint.CHECKPOINT) for p in (out, tmp_path / "whole"))
    assert kept["epoch"] == last["epoch"] == 2  # the last epoch's weights (not the best's): more epochs go on alike
    assert all(torch.equal(kept["model"][k], last["model"][k]) for k in last["model"])
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert f"resumed {out / 'checkpoint.pt'} after epoch 2" in capsys.readouterr().out
    assert len(passes) == 4  # nothing trained nor validated again
    whole, resumed = (torch.load(p / "model.pt", weights_only=True) for p in (tmp_path / "whole", out))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole) and whole.keys() == resumed.keys()
    assert (out / "predictions.csv").read_text() == (tmp_path / "whole" / "predictions.csv").read_text()
    keep = ("accuracy", "history", "best_epoch", "n_train", "confusion")
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (tmp_path / "whole", out))
    assert [a[k] if k != "history" else [r["train_loss"] for r in a[k]] for k in keep] == \
           [b[k] if k != "history" else [r["train_loss"] for r in b[k]] for k in keep]


def test_the_python_caller_of_a_run_whose_files_did_not_fit_is_told_what_was_kept(two_classes, tmp_path,
                                                                                   monkeypatch):
    out = tmp_path / "run"
    _no_space_for("model.pt", monkeypatch)
    with pytest.raises(OSError, match="No space left") as e:
        train(str(two_classes), "scratch", out, arch=ARCH, epochs=1, val_fraction=0.25, image_size=32, workers=0,
              progress=False)
    assert e.value.filename == str(out / "model.pt")
    assert e.value.__notes__ == [f"kept epoch 1 of 1 in {out / 'checkpoint.pt'}: resume=True writes the run's "
                                 f"files without training again"]
    assert checkpoint.read(out / checkpoint.CHECKPOINT)["epoch"] == 1


def test_a_full_disk_for_the_checkpoint_too_is_said_as_nothing_kept(two_classes, tmp_path, monkeypatch, capsys):
    """No room for the checkpoint either: the same one line, saying nothing was kept, and no
    file left behind (a half checkpoint would be taken up by --resume)."""
    out = tmp_path / "run"
    _no_space_for(".pt", monkeypatch)
    assert main(["train", str(two_classes), "--mode", "scratch", "--arch", ARCH, "--epochs", "1", "--val-fraction",
                 "0.25", "--image-size", "32", "--workers", "0", "--no-progress", "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"fne train: error: no space left on device writing {out / 'model.pt'}: free space there or pass --out a "
        f"folder on another disk; nothing was kept: no epoch was saved yet (--save-every auto); rerun the same "
        f"command to start again")
    assert list(out.iterdir()) == []


def test_each_unreadable_image_is_named_once_per_run_not_once_per_epoch(two_classes, tmp_path, capsys):
    """Unreadable images among those trained and validated on, over 3 epochs with loader workers:
    each is named once in the run's warnings (as the pass that met it ends), all of them in
    metrics.json's skipped."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(two_classes, data)
    bad = [f"{c}/bad{i}.png" for c in (0, 1) for i in range(2)]  # a warning names 5, then "and N more"
    for name in bad:
        (data / name).write_bytes(f"not an image {name}".encode())
    assert main(["train", str(data), "--mode", "scratch", "--arch", ARCH, "--epochs", "3", "--val-fraction", "0.25",
                 "--image-size", "32", "--workers", "1", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sorted(m["skipped"]) == bad
    assert [err.count(name) for name in bad] == [1] * len(bad), err


def _args(data, out, *extra) -> list[str]:
    return ["train", str(data), "--mode", "scratch", "--arch", ARCH, "--epochs", "2", "--val-fraction", "0.25",
            "--image-size", "32", "--workers", "0", "--no-progress", "--out", str(out), *extra]


@pytest.mark.parametrize("when", ["test pass", "model.pt"])
def test_a_short_run_stopped_after_its_last_epoch_keeps_it_and_resume_writes_its_files(when, two_classes, tmp_path,
                                                                                      monkeypatch, capsys):
    """Ctrl-C during the test pass, or SIGTERM while the run's files are written, after the last
    epoch of a run that saved no checkpoint (`--save-every auto`, a short run): the whole training
    was lost ("nothing was kept"). Now the last epoch is written to checkpoint.pt, the line says
    so, and --resume writes the files an uninterrupted run writes, training nothing again."""
    from fne.cli import Terminated

    assert main(_args(two_classes, tmp_path / "whole", "--save-every", "1")) == 0
    out, real_eval, real_save, trained = tmp_path / "run", epochs.evaluate, torch.save, []

    def evaluate(model, loader, ctx, what):
        if what == "test" and when == "test pass":
            raise KeyboardInterrupt
        return real_eval(model, loader, ctx, what)

    def save(obj, f, *a, **k):
        if str(getattr(f, "name", f)).endswith("model.pt"):
            raise Terminated
        return real_save(obj, f, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(epochs, "evaluate", evaluate)
        m.setattr(torch, "save", save if when == "model.pt" else real_save)
        assert main(_args(two_classes, out)) == (130 if when == "test pass" else 143)
    how = "interrupted" if when == "test pass" else "terminated"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"fne train: {how}; kept epoch 2 of 2 (the last one saved) in {out / 'checkpoint.pt'}; rerun the same "
        f"command with --resume to continue from there")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]
    real_train = epochs.train_one_epoch
    monkeypatch.setattr(epochs, "train_one_epoch", lambda *a, **k: (trained.append(1), real_train(*a, **k))[1])
    assert main(_args(two_classes, out, "--resume")) == 0
    assert trained == []  # nothing trained again
    for name in ("model.pt", "predictions.csv"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (tmp_path / "whole", out))
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert (a["best_epoch"], a["accuracy"]) == (b["best_epoch"], b["accuracy"])


def test_a_short_run_stopped_mid_epoch_keeps_the_last_epoch_that_ended(two_classes, tmp_path, monkeypatch):
    """Ctrl-C during epoch 3's validation (its training done, the schedule stepped) of a run that
    saved no checkpoint yet: epoch 2's end is kept, not the half epoch's weights, optimizer or
    schedule; the Python caller's KeyboardInterrupt says so, and resume=True trains on to the
    weights an uninterrupted run ends with."""
    kw = dict(arch=ARCH, epochs=4, val_fraction=0.25, image_size=32, workers=0, progress=False, lr=0.05,
              scheduler="cosine")
    train(str(two_classes), "scratch", tmp_path / "whole", **kw)
    out, real, passes = tmp_path / "run", epochs.evaluate, []

    def evaluate(model, loader, ctx, what):
        passes.append(what)
        if passes.count("val") == 3:
            raise KeyboardInterrupt
        return real(model, loader, ctx, what)

    with monkeypatch.context() as m:
        m.setattr(epochs, "evaluate", evaluate)
        with pytest.raises(KeyboardInterrupt) as e:
            train(str(two_classes), "scratch", out, **kw)
    assert e.value.__notes__ == [f"kept epoch 2 of 4 in {out / 'checkpoint.pt'}: resume=True continues from there"]
    kept = checkpoint.read(out / checkpoint.CHECKPOINT)
    assert kept["epoch"] == 2 and [r["epoch"] for r in kept["history"]] == [1, 2]
    assert kept["scheduler"]["last_epoch"] == 2
    train(str(two_classes), "scratch", out, resume=True, **kw)
    assert (out / "model.pt").read_bytes() == (tmp_path / "whole" / "model.pt").read_bytes()
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (tmp_path / "whole", out))
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_save_every_0_keeps_nothing_when_stopped(two_classes, tmp_path, monkeypatch):
    """`--save-every 0` wants no checkpoint: a run stopped after its epochs writes none."""
    monkeypatch.setattr(epochs, "evaluate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt) as e:
        train(str(two_classes), "scratch", tmp_path / "run", arch=ARCH, epochs=1, val_fraction=0, image_size=32,
              workers=0, progress=False, save_every=0)
    assert not hasattr(e.value, "__notes__") and not (tmp_path / "run" / checkpoint.CHECKPOINT).exists()


def test_no_epoch_is_copied_in_memory_while_another_runs_checkpoint_is_there(two_classes, tmp_path, monkeypatch):
    """The per-epoch copy `Unsaved` holds until a run's first save is only written where no
    checkpoint is there: over another run's it would never be written, so it is not taken (a
    copy of every tensor each epoch, for nothing). Without one, the same run takes it."""
    from fne.training import unsaved

    kw = dict(arch=ARCH, epochs=3, val_fraction=0.25, image_size=32, workers=0, progress=False)
    foreign = tmp_path / "foreign"
    train(str(two_classes), "scratch", foreign, save_every=1, **{**kw, "epochs": 1})
    assert (foreign / checkpoint.CHECKPOINT).is_file()
    calls, real = [], unsaved.copied

    def counted(state):
        calls.append(1)
        return real(state)

    monkeypatch.setattr(unsaved, "copied", counted)
    train(str(two_classes), "scratch", tmp_path / "fresh", **kw)  # --save-every auto: no save in 3 quick epochs
    assert calls, "a run with no checkpoint in its folder holds each epoch's end"
    calls.clear()
    train(str(two_classes), "scratch", foreign, **kw)
    assert calls == []


def _edited(key: str, value):
    """A change to a checkpoint dict no fne save makes: `key` set to `value` (a callable: applied)."""
    def edit(ckpt: dict) -> None:
        ckpt[key] = value(ckpt[key]) if callable(value) else value
    return edit


@pytest.mark.parametrize("edit, said", [
    (_edited("epoch", "two"), "is not a checkpoint of fne train (its epoch is 'two', not a count of epochs)"),
    (_edited("epoch", -1), "is not a checkpoint of fne train (its epoch is -1, not a count of epochs)"),
    (_edited("history", None), "is not a checkpoint of fne train (its history is not a list of its 1 epochs)"),
    (_edited("best", {}), "is not a checkpoint of fne train (its best is not a dict of the best epoch"),
    (_edited("model", lambda m: {k: v.reshape(-1)[:1] for k, v in m.items()}), ": its model state does not fit this run's "
                                                                 "(RuntimeError: Error(s) in loading state_dict"),
    (_edited("optimizer", {"state": {}}), ": its optimizer state does not fit this run's (KeyError: 'param_groups')"),
    (_edited("rng", {}), ": its rng state does not fit this run's (KeyError: 'torch')"),
])
def test_a_checkpoint_no_save_wrote_is_one_line_and_a_new_run_replaces_it(edit, said, two_classes, tmp_path, capsys):
    """A checkpoint.pt of this run's settings whose contents no fne save writes (whole CRCs: edited,
    or put together by another tool) resumed into a TypeError, a ValueError, a KeyError at the run's
    end or torch's many-line state-dict error; a TypeError also stopped a new run over it (without
    resume). Now resume=True stops in one line naming the file and what does not fit, before any
    epoch, and a new run starts, as over any checkpoint resume would refuse."""
    kw = dict(arch=ARCH, epochs=1, val_fraction=0.25, image_size=32, workers=0, progress=False, save_every=1)
    out = tmp_path / "run"
    train(str(two_classes), "scratch", out, **kw)
    path = out / checkpoint.CHECKPOINT
    ckpt = checkpoint.read(path)
    edit(ckpt)
    torch.save(ckpt, path)
    trained = []
    real = epochs.train_one_epoch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(epochs, "train_one_epoch", lambda *a, **k: (trained.append(1), real(*a, **k))[1])
        with pytest.raises(FneError) as e:
            train(str(two_classes), "scratch", out, resume=True, **kw)
    assert str(e.value).startswith(f"resume=True: {path}") and said in str(e.value), str(e.value)
    assert "\n" not in str(e.value) and str(e.value).endswith("start anew without resume=True") == (": its" in said)
    assert trained == []
    capsys.readouterr()
    m = train(str(two_classes), "scratch", out, **kw)
    assert "note: starting a new run" in capsys.readouterr().out and m["epochs"] == 1
    assert checkpoint.read(path)["epoch"] == 1  # the new run's save replaced it


def test_a_resumed_run_stopped_again_keeps_its_last_epoch_and_ends_as_an_uninterrupted_run(two_classes, tmp_path,
                                                                                         monkeypatch):
    """A run resumed from its checkpoint held no epoch in memory (the file there counted as a save,
    and as another run's): stopped again after further epochs, it kept only the epoch it resumed
    from, and the epochs since were lost. Now it keeps its last one, as a run not resumed does, and
    resuming from it ends with an uninterrupted run's weights."""
    from fne.training import train as train_module

    kw = dict(arch=ARCH, epochs=5, val_fraction=0.25, image_size=32, workers=0, progress=False)
    train(str(two_classes), "scratch", tmp_path / "whole", **kw)
    real = train_module._epoch

    def stop_at(n: int):  # Ctrl-C as epoch n (0-based) starts
        return lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()) if a[7] == n else real(*a, **k)

    out = tmp_path / "run"
    path = out / checkpoint.CHECKPOINT
    for stop, resume in ((1, False), (3, True)):
        monkeypatch.setattr(train_module, "_epoch", stop_at(stop))
        with pytest.raises(KeyboardInterrupt) as e:
            train(str(two_classes), "scratch", out, resume=resume, **kw)
        assert checkpoint.read(path)["epoch"] == stop
        assert e.value.__notes__ == [f"kept epoch {stop} of 5 in {path}: resume=True continues from there"]
    monkeypatch.setattr(train_module, "_epoch", real)
    m = train(str(two_classes), "scratch", out, resume=True, **kw)
    assert len(m["history"]) == 5
    whole, resumed = (torch.load(d / "model.pt", weights_only=True) for d in (tmp_path / "whole", out))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_checkpoint_file_that_is_no_dict_is_said_as_what_it_is(tmp_path):
    """A torch file holding a list where checkpoint.pt lies was "(it lacks list, not a dict)"."""
    path = tmp_path / checkpoint.CHECKPOINT
    torch.save([1, 2], path)
    with pytest.raises(FneError, match=r"is not a checkpoint of fne train \(it is a list, not a dict\)$"):
        checkpoint.read(path)
