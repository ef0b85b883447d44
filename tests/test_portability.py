"""fne off Linux: the spawn start method (macOS, Windows), Apple's GPU (MPS), and the calls
Linux has and other platforms lack.

Spawn is forced on Linux in a subprocess; MPS is absent here, so its resolution is tested with
torch's availability monkeypatched (the MPS paths themselves are not run); a missing Linux-only
call is deleted with monkeypatch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fne import devices
from fne.errors import FneError

from .conftest import FAST, write_digits

ROOT = Path(__file__).resolve().parents[1]
SPAWN_ARGS = ["--arch", "efficientnet_lite0", "--weights", "random", "--precision", "fp32", "--workers", "1",
              "--batch-size", "4"]


def _python(code: str, tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """`code` run as a script file (what spawn re-runs in each worker) with this checkout's fne."""
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=tmp_path)


def test_fit_extract_under_spawn(tmp_path):
    """`fne fit --extract` over a folder and `fne.extract` over an HDF5 file (its handle reopened
    per process), each with a loader worker started by spawn (macOS's and Windows' start method,
    forced here): the worker gets the dataset and the slot pool pickled, and the runs end as
    under fork."""
    import h5py
    import numpy as np
    from PIL import Image

    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    files = sorted(data.rglob("*.png"))
    with h5py.File(tmp_path / "digits.h5", "w") as h:
        h["images"] = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        h["labels"] = np.array([f.parent.name for f in files], dtype="S")
    out, cache = tmp_path / "run", str(tmp_path / "cache")
    r = _python(f"""
        import multiprocessing, sys
        if __name__ == "__main__":
            multiprocessing.set_start_method("spawn", force=True)
            import fne
            from fne.cli import main
            r = fne.extract({str(tmp_path / 'digits.h5')!r}, cache={cache!r}, arch="efficientnet_lite0",
                            weights="random", precision="fp32", workers=1, progress=False)
            print("h5 computed", r.n_computed, r.n_skipped)
            sys.exit(main(["fit", {str(data)!r}, "--extract", "--cache", {cache!r},
                           "--splits", "1", "--test-size", "0.5", "--out", {str(out)!r}, *{SPAWN_ARGS!r}]))
        """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "h5 computed 6 0" in r.stdout
    assert "accuracy" in json.loads((out / "metrics.json").read_text())
    assert (out / "model.joblib").is_file()
    assert "extract efficientnet_lite0: 6/6 img" in r.stderr


def test_unguarded_script_under_spawn_stops_with_one_line(tmp_path):
    """A script calling `fne.extract` with no `if __name__ == "__main__":` guard: each spawned
    worker re-runs it. Before, the worker's own `fne.extract` waited for its parent's lock and the
    parent for the worker, for ever; now the worker stops, saying what to write."""
    data = write_digits(tmp_path / "data", per_class=2, classes=2)
    r = _python(f"""
        import multiprocessing
        multiprocessing.set_start_method("spawn", force=True)
        import fne
        fne.extract({str(data)!r}, cache={str(tmp_path / 'cache')!r}, arch="efficientnet_lite0",
                    weights="random", precision="fp32", workers=1, progress=False)
        """, tmp_path, timeout=120)
    assert r.returncode != 0
    assert ("fne.extract was called while a worker process (started by spawn, as on macOS and Windows) "
            "re-ran this script: put the script's code under `if __name__ == \"__main__\":`") in r.stderr


def test_loaders_fork_on_linux_unless_the_user_chose(monkeypatch):
    """Linux: fork (also where Python's default is forkserver, 3.14+); a start method the user
    set is theirs; other platforms keep Python's default (spawn on macOS and Windows)."""
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: None)
    monkeypatch.setattr(sys, "platform", "linux")
    assert devices.loader_context(2) == "fork"
    assert devices.loader_context(0) is None  # no workers: no context (DataLoader refuses one)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert devices.loader_context(2) is None
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "spawn")
    assert devices.loader_context(2) is None


# ----------------------------------------------------------------- MPS (monkeypatched)


def _mps(monkeypatch, available: bool, built: bool = True, macos14: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: available)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: built)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos14)


@pytest.mark.parametrize("built", [True, False])
def test_mps_absent_is_one_line(monkeypatch, built):
    _mps(monkeypatch, available=False, built=built)
    with pytest.raises(FneError, match=r"^device='mps': MPS \(Apple's GPU\) is not available on this machine"):
        devices.resolve_device("mps")
    assert devices.resolve_device("auto") == torch.device("cpu")


def test_mps_is_taken_by_auto_where_available(monkeypatch):
    _mps(monkeypatch, available=True)
    assert devices.resolve_device("auto") == torch.device("mps")
    assert devices.resolve_device("mps:0") == torch.device("mps:0")
    with pytest.raises(FneError, match="one MPS device"):
        devices.resolve_device("mps:1")
    with pytest.raises(FneError, match=r"must be auto, cpu, cuda\[:i\] or mps"):
        devices.resolve_device("gpu")


def test_mps_precision_and_batch(monkeypatch):
    """auto: fp16 on MPS (bf16 only from macOS 14, and asked for); the batch is sized like a
    GPU's from Metal's memory figures; decoding workers as on a GPU."""
    _mps(monkeypatch, available=True, macos14=False)
    mps = torch.device("mps")
    assert devices.resolve_precision("auto", mps) == "fp16"
    with pytest.raises(FneError, match="precision='bf16' on MPS needs macOS 14"):
        devices.resolve_precision("bf16", mps)
    _mps(monkeypatch, available=True, macos14=True)
    assert devices.resolve_precision("bf16", mps) == "bf16"
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 16 << 30)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 12 << 30)
    assert devices.default_batch_size(mps, precision="fp16") == 64  # 4 GiB free: 2 GiB for 24 MiB images
    assert devices.default_batch_size(torch.device("cpu")) == devices.CPU_BATCH
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert devices.default_workers(mps) == 7
    assert devices.default_workers(torch.device("cpu")) == 1


# ----------------------------------------------------------------- calls only Linux has


def test_no_sched_getaffinity_counts_cpus(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.default_workers(torch.device("cuda")) == 3


def test_no_resource_module_still_times_the_run(monkeypatch):
    """Windows has no `resource`: the extraction's CPU seconds are this process's."""
    from fne.extraction import extract

    monkeypatch.setitem(sys.modules, "resource", None)  # import resource -> ImportError
    assert extract._cpu_seconds() >= 0.0


def test_tar_members_read_without_pread(tmp_path, monkeypatch):
    """Windows has no `os.pread`: a member is read by seek and read, in binary mode."""
    from fne.data import containers

    f = tmp_path / "blob"
    f.write_bytes(b"head\r\nbody\r\n\x00tail")
    monkeypatch.delattr(os, "pread")
    fd = os.open(f, os.O_RDONLY)
    try:
        assert containers._read_at(fd, 7, 4) == b"\r\nbody\r"
    finally:
        os.close(fd)


def test_no_fcntl_runs_unlocked(tmp_path, monkeypatch):
    from fne.data import sidecar

    monkeypatch.setattr(sidecar, "fcntl", None)
    with sidecar.locked(tmp_path / "x.lock", process=True) as waited:
        assert waited is False
    assert sidecar.held(tmp_path / "x.lock") is False


def test_no_glibc_no_allocator_tuning(monkeypatch):
    monkeypatch.setattr(devices, "_ALLOCATOR_TUNED", False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert devices.tune_allocator() is False


def test_torch_solver_runs_on_the_cpu_beside_mps(monkeypatch):
    """`fne fit --device mps --solver torch`: MPS has no float64 (the solver's parameters and
    sums), so the head is fitted on the CPU; without MPS, `--device mps` is one line."""
    from fne.linear.solver import torch_device

    _mps(monkeypatch, available=True)
    assert torch_device("mps") == torch.device("cpu")
    _mps(monkeypatch, available=False)
    with pytest.raises(FneError, match="MPS"):
        torch_device("mps")


# ----------------------------------------------------------------- CUDA absent (monkeypatched)


@pytest.mark.parametrize("built", [True, False])
def test_cuda_absent_is_one_line_saying_why_and_what_to_use_in_every_verb(monkeypatch, built, digits_folder,
                                                                            warm_cache, tmp_path, capsys):
    """`--device cuda` on a machine without CUDA: every verb that takes --device stops in one
    line before any work, naming the argument, why (no GPU, or a torch built without CUDA) and
    what to give instead; it said only "CUDA is not available on this machine"."""
    from fne.cli import main
    from fne.linear.fit import fit

    run = tmp_path / "fit"
    fit(digits_folder, out=run, features="last", head="logreg", cache=str(warm_cache), progress=False, **FAST)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: built)
    why = "no CUDA GPU found" if built else "this torch was built without CUDA"
    line = f"--device 'cuda': CUDA is not available on this machine ({why}); use --device cpu or auto"
    new, cache = tmp_path / "new", str(tmp_path / "cache")  # rows not cached: the network must run
    arch = ["--arch", "efficientnet_lite0", "--weights", "random"]
    for verb, args in {"extract": [str(digits_folder), *arch, "--cache", cache],
                       "fit": [str(digits_folder), *arch, "--cache", cache, "--extract", "--out", str(tmp_path / "f")],
                       "advise": [str(digits_folder), "--arch", "efficientnet_lite0", "--cache", cache],  # random: no network
                       "train": [str(digits_folder), "--mode", "frozen", *arch, "--out", str(new), "--epochs", "1"],
                       "predict": [str(run), str(digits_folder), "--cache", cache, "--out", str(tmp_path / "p.csv")],
                       }.items():
        assert main([verb, *args, "--device", "cuda"]) == 2, verb
        assert capsys.readouterr().err.strip() == f"fne {verb}: error: {line}"
    assert not (tmp_path / "cache").exists() and not new.exists() and not (tmp_path / "p.csv").exists()
    with pytest.raises(FneError, match=rf"^device='cuda': CUDA is not available on this machine \({why}\); "
                                       rf"use device='cpu' or 'auto'$"):
        devices.resolve_device("cuda")
