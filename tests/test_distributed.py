"""Scale-out: shards are the unit of work, of output and of retry.

Two ranks under torchrun (CPU) must store exactly what one process stores; a rank killed
mid-shard is rerun and completes the store with nothing lost and nothing duplicated; finished
shards are recorded by a marker and skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fne.extraction.extract as fx
import fne.extraction.plan as turns
from fne.cache.cost import rows_cost
from fne.cache.store import list_stores
from fne.cache.upkeep import clean, verify
from fne.data import shards
from fne.data.datasets import load_dataset

from .conftest import FAST, says_it_waits, write_digits

pytest.importorskip("efficientnet_lite_pytorch")

CLI_FAST = ["--arch", "efficientnet_lite0", "--weights", "random", "--precision", "fp32",
            "--storage-dtype", "float32", "--batch-size", "4", "--workers", "0"]

# One rank of a 2-way split, slowed down (a sleep per batch, no CPU) so that it can be killed
# after its first committed part and before it finishes.
SLOW_SHARD = """
import sys, time, fne.extraction.extract as fx, fne.extraction.taps as taps
forward = taps.forward
def slow(*a, **k):
    time.sleep(0.4)
    return forward(*a, **k)
taps.forward = slow
fx.extract(sys.argv[1], cache=sys.argv[2], shard="0/2", batch_size=2, chunk=2, workers=0,
           progress=False, arch="efficientnet_lite0", weights="random", precision="fp32",
           storage_dtype="float32")
"""


def _torchrun(data: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fne.cli", "extract", str(data), "--cache", str(cache), *CLI_FAST]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def _store(cache: Path):
    (store,) = list_stores(cache)
    return store


def _all_rows(store) -> dict[str, dict[str, np.ndarray]]:
    keys = sorted(store.index())
    rows = store.read(keys, [t for t, _ in store.taps])
    return {k: {t: rows[t][i] for t in rows} for i, k in enumerate(keys)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = write_digits(tmp_path_factory.mktemp("dist") / "data", per_class=7, classes=4)
    # The same image twice under two names: one content key, one row, one shard.
    shutil.copy(next((root / "0").glob("*.png")), root / "1" / "copy_of_a_zero.png")
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """Rows of a single, unsharded, in-process run."""
    cache = tmp_path_factory.mktemp("single")
    r = fx.extract(data, cache=str(cache), batch_size=8, progress=False, **FAST)
    assert r.n_images == 29 and r.n_unique == 28 and r.n_computed == 28
    return _all_rows(_store(cache))


def _assert_same_rows(store, reference):
    got = _all_rows(store)
    assert set(got) == set(reference)  # same keys: nothing lost, nothing extra
    for k, taps in reference.items():
        for t, v in taps.items():
            np.testing.assert_allclose(got[k][t], v, rtol=1e-4, atol=1e-5, err_msg=f"{k} {t}")


def _markers(store) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in (store.path / "shards").glob("*.json")}


def test_torchrun_shards_equal_one_process(data, reference, tmp_path):
    cache = tmp_path / "cache"
    proc = _torchrun(data, cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = _store(cache)
    assert verify(store).problems == [] and verify(store).duplicates == 0
    assert len(store) == 28
    _assert_same_rows(store, reference)

    # Each rank computed its own shard only, and marked it finished.
    done = {r["shard"]: r["n_computed"] for r in store.records() if r.get("kind") == "extract"}
    assert set(done) == {"0/2", "1/2"} and sum(done.values()) == 28
    assert min(done.values()) > 0
    # each rank's record names the parts it committed: together every part, each once
    named = [p for r in store.records() if r.get("kind") == "extract" for p in r["parts"]]
    assert sorted(named) == sorted(p.name for p in store.parts())
    assert rows_cost(store, list(reference))["measured_images"] == 28
    by_part: dict[str, set[int]] = {}
    for k, (part, _) in store.index().items():
        by_part.setdefault(part, set()).add(_shard_of_key(data)[k])
    assert all(len(s) == 1 for s in by_part.values())  # no part mixes the two shards
    markers = _markers(store)
    fp = shards.listing_fingerprint(load_dataset(data))
    assert set(markers) == {f"{fp}-0of2.json", f"{fp}-1of2.json"}
    assert sum(m["n_images_in_shard"] for m in markers.values()) == 28


def test_killed_rank_is_rerun_to_a_complete_store(data, reference, tmp_path, forward_images):
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SHARD, str(data), str(cache)])
    deadline, committed = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None:
        committed = [p for d in cache.glob("*/parts") for p in d.iterdir() if not p.name.startswith(".")]
        if committed:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "shard 0/2 finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    store = _store(cache)
    before = len(store)
    assert 0 < before < 28
    assert all(_shard_of_key(data)[k] == 0 for k in store.index())
    status = shards.shard_status(data, 2, cache=str(cache), **_spec())
    assert status == {0: None, 1: None}  # the killed shard is not marked finished

    proc2 = _torchrun(data, cache)  # the whole job again: rank 0 resumes, rank 1 runs
    assert proc2.returncode == 0, proc2.stdout + proc2.stderr
    store.refresh()
    clean(store)  # the killed rank may have left a half-written .tmp part; reads ignore it
    assert verify(store).problems == [] and verify(store).duplicates == 0
    assert len(store) == 28  # every unique image once
    _assert_same_rows(store, reference)
    runs = [r for r in store.records() if r.get("kind") == "extract"]
    resumed = [r for r in runs if r["shard"] == "0/2"]
    assert len(resumed) == 1  # the killed run wrote no record
    in_shard0 = sum(1 for k in reference if _shard_of_key(data)[k] == 0)
    assert resumed[0]["n_computed"] == in_shard0 - before  # committed rows were reused
    # the killed run's rows have no record: charged at the store's rate, and said to be
    cost = rows_cost(store, list(reference))
    assert (cost["measured_images"], cost["estimated_images"], cost["basis"]) == (28 - before, before,
                                                                                  "runs and store rate")

    status = shards.shard_status(data, 2, cache=str(cache), **_spec())
    assert all(status[i] is not None for i in (0, 1))

    # A finished shard is skipped: no forward pass, marker kept as it was.
    marker = Path(shards.shard_marker(store, shards.listing_fingerprint(load_dataset(data)), (1, 2)))
    stamp = marker.read_text()
    n0 = forward_images.n
    again = fx.extract(data, cache=str(cache), shard="1/2", progress=False, **FAST)
    assert again.n_computed == 0 and forward_images.n == n0
    assert again.shard_marker == str(marker) and marker.read_text() == stamp
    # Another split of the same complete store finishes at once and is marked too.
    other = fx.extract(data, cache=str(cache), shard="2/3", progress=False, **FAST)
    assert other.n_computed == 0 and Path(other.shard_marker).name.endswith("-2of3.json")


def _shard_of_key(data: Path) -> dict[str, int]:
    """Content key -> its shard of 2 (membership is decided per file, by size or path)."""
    d = load_dataset(data)
    return dict(zip(d.keys(), shards.shard_of(d, 2), strict=True))


def _spec() -> dict:
    return dict(arch="efficientnet_lite0", weights="random", precision="fp32", storage_dtype="float32")


HOLD = """
import sys
from pathlib import Path
from fne.data.sidecar import locked
with locked(Path(sys.argv[1]), process=True):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize("held, runs", [((1, 2), None), (None, (0, 2))], ids=["fit-extract-while-a-shard-runs",
                                                                               "shard-while-the-whole-runs"])
def test_whole_data_and_its_shards_take_turns(held, runs, tmp_path, capsys, forward_images):
    """`fne fit --extract` (the whole DATA) started while a shard of a job array computes (or a
    shard started while the whole DATA is computed) waits for it, then computes only what it
    left: here the test holds the other's lock while it puts that run's rows in place, so the
    waiting run has nothing left to compute. Before, the two ran side by side and computed the
    shard's rows twice."""
    import threading

    from fne.cache.spec import StoreSpec

    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    first = tmp_path / "first"
    fx.extract(data, cache=str(first), progress=False, **FAST)  # what the other run leaves
    n_first, cache, results = forward_images.n, tmp_path / "cache", []
    lock = turns.lock_file(StoreSpec(**FAST, cache=str(cache)).open(), load_dataset(data), held)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # the other process, at work
    assert holder.stdout.readline() == "held\n"
    worker = threading.Thread(target=lambda: results.append(
        fx.extract(data, cache=str(cache), shard=runs and f"{runs[0]}/{runs[1]}", **{**FAST, "progress": True})))
    worker.start()
    says_it_waits(capsys, "the extraction")
    assert worker.is_alive() and forward_images.n == n_first == 6
    shutil.copytree(first, cache, dirs_exist_ok=True)
    holder.communicate("done\n", timeout=60)
    worker.join(timeout=120)
    assert results[0].n_computed == 0 and forward_images.n == n_first
    assert verify(_store(cache)).duplicates == 0


def test_data_reached_through_a_link_takes_the_same_turns(tmp_path):
    """Two users extracting one folder, one through a symbolic link (`/scratch/lab` to
    `/gpfs/lab`), took two locks and computed every row twice: the lock names the folder itself."""
    from fne.cache.spec import StoreSpec

    data = write_digits(tmp_path / "data", per_class=2, classes=2)
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    store = StoreSpec(**FAST, cache=str(tmp_path / "cache")).open()
    for shard in (None, (1, 2)):
        assert turns.lock_file(store, load_dataset(tmp_path / "link"), shard) == turns.lock_file(store, load_dataset(data), shard)
    assert turns.lock_file(store, load_dataset(data), None) != turns.lock_file(store, load_dataset(data), (1, 2))


def test_fit_while_shards_run_names_the_command_that_fills_the_store_it_read(tmp_path, capsys):
    """`fne fit` (precision auto) started while a job array's fp32 shards run refused with
    `add them with: fne extract DATA --arch … --weights random`: run as printed, that command
    extracted at this machine's auto precision (bf16 on a CPU) into another store, every row
    again. It names the store's precision and storage dtype, as `--extract` fills that store."""
    from fne.cli import main

    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    cache = tmp_path / "cache"
    fx.extract(data, cache=str(cache), shard="0/2", progress=False, **FAST)  # one shard finished
    assert main(["fit", str(data), "--arch", "efficientnet_lite0", "--weights", "random", "--cache", str(cache),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    command = err.split("add them with:\n  ")[1].splitlines()[0]
    assert command == (f"fne extract {data} --arch efficientnet_lite0 --weights random --precision fp32 "
                       f"--storage-dtype float32 --cache {cache}")
    assert main(command.split()[1:] + ["--no-progress"]) == 0
    assert len(list_stores(cache)) == 1 and len(_store(cache)) == 6
