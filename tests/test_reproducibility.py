"""The same experiment run in ways that should not change its numbers does not change them, and
metrics.json and the store's records say what a reader needs to reproduce or explain a result
(README, "Reproducibility")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import FAST, write_digits

PACKAGES = {"fne", "numpy", "scipy", "scikit-learn", "torch", "torchvision", "pillow"}


def _rows(data, cache) -> dict[str, np.ndarray]:
    import fne

    r = fne.load_rows(data, cache=str(cache), **FAST)
    return dict(zip(r.keys, r.X))


def _check_provenance(p: dict) -> None:
    assert PACKAGES <= set(p["versions"]) and p["versions"]["fne"] and p["versions"]["numpy"]
    assert p["python"] and p["platform"] and p["cpu"]["model"]
    assert isinstance(p["cpu"]["flags"], (list, type(None)))
    assert "torch" in p["threads"]


def _documented(m: dict) -> None:
    """Every top-level field of a run's metrics.json, and of its split records, is listed in
    README's "metrics.json, field by field" (as `field`)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("### metrics.json, field by field")[1].split("\n## ")[0]
    fields = set(m) | {k for s in m["splits"] for k in s}
    assert sorted(k for k in fields if f"`{k}`" not in table) == []


def _tar(folder, out):
    """folder's images as one WebDataset tar (train split), each with its label."""
    import io
    import tarfile

    with tarfile.open(out, "w") as tf:
        for k, f in enumerate(sorted(folder.rglob("*.png"))):
            for name, payload in ((f"{k:04d}.png", f.read_bytes()), (f"{k:04d}.txt", f.parent.name.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return out


def test_rows_are_bit_identical_across_workers_a_fresh_cache_and_a_tar(digits_folder, tmp_path, one_torch_thread):
    """At one batch size and thread count, neither the reader's processes nor the container
    changes a bit of any row."""
    from fne.extraction.extract import extract

    tar = _tar(digits_folder, tmp_path / "train-000000.tar")
    extract(digits_folder, cache=str(tmp_path / "a"), workers=0, progress=False, **FAST)
    extract(digits_folder, cache=str(tmp_path / "b"), workers=2, progress=False, **FAST)
    extract(tar, cache=str(tmp_path / "c"), workers=1, progress=False, **FAST)
    a, b, c = _rows(digits_folder, tmp_path / "a"), _rows(digits_folder, tmp_path / "b"), _rows(tar, tmp_path / "c")
    assert sorted(a) == sorted(b) == sorted(c) and len(a) == 24
    assert all(np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k]) for k in a)


def test_rows_across_batch_sizes_shards_and_threads_are_within_the_stated_tolerance(tmp_path):
    """oneDNN picks convolution kernels by batch size and thread count (a shard's last batch is
    smaller): rows may differ in the last bits, within 1e-5 of the largest value (README,
    "Reproducibility"), and never in the discretised FNE values."""
    import torch

    from fne.extraction.extract import extract
    from fne.linear.embedding import FullNetworkEmbedding

    digits_folder, n = write_digits(tmp_path / "data", per_class=3, classes=3), torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        extract(digits_folder, cache=str(tmp_path / "a"), progress=False, **FAST)
        extract(digits_folder, cache=str(tmp_path / "b"), batch_size=1, progress=False, **FAST)
        torch.set_num_threads(1)
        for i in range(2):
            extract(digits_folder, cache=str(tmp_path / "c"), shard=f"{i}/2", progress=False, **FAST)
    finally:
        torch.set_num_threads(n)
    a = _rows(digits_folder, tmp_path / "a")
    A = np.stack([a[k] for k in sorted(a)])
    emb = FullNetworkEmbedding().fit(A)
    for other in "bc":
        b = _rows(digits_folder, tmp_path / other)
        B = np.stack([b[k] for k in sorted(a)])
        assert np.abs(A - B).max() <= 1e-5 * np.abs(A).max()
        assert np.array_equal(emb.transform(A), emb.transform(B))


def test_fit_twice_writes_the_same_run_but_for_its_date_and_time(digits_folder, warm_cache, tmp_path):
    from fne.linear.fit import fit

    kw = dict(cache=str(warm_cache), features="fne", head="svm", splits=2, progress=False, **FAST)
    m1, m2 = fit(digits_folder, tmp_path / "a", **kw), fit(digits_folder, tmp_path / "b", **kw)
    assert {k for k in m1 if m1[k] != m2[k]} <= {"date", "fit_seconds", "command"}
    assert m1["command"].replace(str(tmp_path / "a"), str(tmp_path / "b")) == m2["command"]  # but for its --out
    assert (tmp_path / "a/predictions.csv").read_bytes() == (tmp_path / "b/predictions.csv").read_bytes()
    import joblib

    h1, h2 = (joblib.load(tmp_path / r / "model.joblib")["pipeline"].named_steps["head"] for r in "ab")
    assert np.array_equal(h1.coef_, h2.coef_) and np.array_equal(h1.intercept_, h2.intercept_)


@pytest.mark.parametrize("solver", ["sklearn", "torch"])
def test_fit_with_one_or_two_threads(digits_folder, warm_cache, tmp_path, solver):
    """scikit-learn's heads: the same predictions, weights within 2e-16 (README, "Reproducibility";
    equal bits with some BLAS builds, not with the lowest supported set's). The torch
    solver's matmuls split their sums by thread, so its weights differ in the last digits
    (README, "Reproducibility": 1.1e-3 of the largest weight measured on digits; 1e-2 here)."""
    import joblib
    import torch
    from threadpoolctl import threadpool_limits

    from fne.linear.fit import fit

    kw = dict(cache=str(warm_cache), features="fne" if solver == "sklearn" else "last", head="logreg", splits=1,
              solver=solver, progress=False, **FAST)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with threadpool_limits(1):
            one = fit(digits_folder, tmp_path / "one", **kw)
        torch.set_num_threads(2)
        with threadpool_limits(2):
            two = fit(digits_folder, tmp_path / "two", **kw)
    finally:
        torch.set_num_threads(n)
    assert one["threads"]["torch"] == 1 and two["threads"]["torch"] == 2
    a, b = (joblib.load(tmp_path / r / "model.joblib")["pipeline"].named_steps["head"].coef_ for r in ("one", "two"))
    if solver == "sklearn":
        # within 2e-16 with CI's set, equal bits depend on the BLAS (not with the lowest set's)
        assert np.abs(a - b).max() <= 1e-12 * np.abs(a).max() and one["splits"] == two["splits"]
        assert (tmp_path / "one/predictions.csv").read_bytes() == (tmp_path / "two/predictions.csv").read_bytes()
    else:  # float32 on `last` rows (FNE rows: int8 on CPUs with VNNI/AMX, float32 elsewhere)
        assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max()
        assert one["solver_precision"] == two["solver_precision"] == "float32"


def test_fit_metrics_say_with_what_and_where_they_were_measured(digits_folder, warm_cache, tmp_path):
    """Versions, CPU features, threads, every option (as resolved), and the precision the rows
    were computed in: two machines' numbers can be told apart and explained from metrics.json."""
    from fne.linear.fit import fit

    fit(digits_folder, tmp_path / "run", cache=str(warm_cache), splits=2, test_size=0.3, stream_chunk=5,
        progress=False, **FAST)
    m = json.loads((tmp_path / "run/metrics.json").read_text())
    _check_provenance(m)
    o = m["options"]
    assert (o["test_size"], o["stream_chunk"], o["splits"], o["seed"], o["C"]) == (0.3, 5, 2, 0, "1.0")
    assert (o["arch"], o["weights"], o["precision"], o["storage_dtype"]) == ("efficientnet_lite0", "random", "fp32",
                                                                            "float32")
    assert m["precision"] == "fp32" and m["solver"] == "sklearn" and m["solver_precision"] is None
    _documented(m)


def test_each_extraction_record_says_with_what_and_where_its_rows_were_computed(tmp_path):
    from fne.cache.spec import StoreSpec
    from fne.extraction.extract import extract

    extract(write_digits(tmp_path / "data", per_class=2, classes=2), cache=str(tmp_path), batch_size=5, progress=False, **FAST)
    (record,) = StoreSpec(cache=str(tmp_path), **FAST).open().records()
    p = record["provenance"]
    _check_provenance(p)
    assert p["versions"]["libjpeg-turbo"] is not None  # Pillow was loaded to decode: its JPEG decoder
    assert p["options"]["batch_size"] == 5 and p["options"]["precision"] == "fp32"


def test_fit_says_who_computed_the_rows_it_read(tmp_path):
    """metrics.json's `provenance` is the fit's own machine; the rows may come from another
    (a GPU node, an older torch). `store_extractions` groups the store's extraction records."""
    from fne.cache.spec import StoreSpec
    from fne.extraction.extract import extract
    from fne.linear.fit import fit

    data = write_digits(tmp_path / "data", per_class=4, classes=2)
    r = extract(data, cache=str(tmp_path / "c"), progress=False, **FAST)
    store = StoreSpec(cache=str(tmp_path / "c"), **FAST).open()
    (mine,) = store.records()
    # a store filled elsewhere too: a GPU node's run, and a run recorded before records had a provenance
    gpu = {**mine["provenance"], "cuda": {"device": "NVIDIA H200"}, "date": "2026-11-01T00:00:00+00:00"}
    gpu["versions"] = {**gpu["versions"], "torch": "2.11.0+cu126"}
    store.record({**mine, "device": "cuda:0", "n_computed": 40, "provenance": gpu})
    store.record({"kind": "extract", "device": "cpu", "n_computed": 7})
    store.record({**mine, "n_computed": 0})  # a run that computed nothing computed no row
    m = fit(data, tmp_path / "run", cache=str(tmp_path / "c"), progress=False, **FAST)
    got = m["store_extractions"]
    assert [(g["device"], g["gpu"], g["images"]) for g in got] == [
        ("cpu", None, 7), ("cuda:0", "NVIDIA H200", 40), ("cpu", None, r.n_computed)]
    assert got[0]["versions"]["torch"] is None and got[1]["versions"]["torch"] == "2.11.0+cu126"
    assert got[2]["versions"] == {k: mine["provenance"]["versions"].get(k) for k in got[2]["versions"]}
    assert got[2]["first"] == got[2]["last"] == mine["provenance"]["date"]
    assert json.loads((tmp_path / "run/metrics.json").read_text())["store_extractions"] == got


def test_train_metrics_hold_the_same_provenance(digits_split, tmp_path):
    from fne.training.train import train

    m = train(digits_split, "scratch", tmp_path / "run", epochs=1, batch_size=8, val_fraction=0.0, image_size=32,
              progress=False,
              **{k: v for k, v in FAST.items() if k in ("arch", "precision")})
    _check_provenance(m)
    assert m["options"]["seed"] == 0 and m["options"]["epochs"] == 1 and m["options"]["deterministic"] is False
    assert m["threads"]["torch"] >= 1
    assert m["command"].startswith(f"fne train {digits_split} --mode scratch --out {tmp_path / 'run'} ")
    _documented(m)


def test_the_recorded_command_reruns_a_fit_to_the_same_metrics(digits_folder, warm_cache, tmp_path):
    """metrics.json's `command` is the `fne fit` command line of the run (the Python API's keywords
    as their flags, the defaults left out): run as printed, but for its --out, it gives the same
    metrics."""
    import shlex

    from fne.cli import main
    from fne.linear.fit import fit

    m = fit(digits_folder, tmp_path / "a", cache=str(warm_cache), features="last", head="logreg", C="0.5",
            splits=2, seed=3, progress=False, **FAST)
    args = shlex.split(m["command"])
    assert args[:3] == ["fne", "fit", str(digits_folder)] and args[-2:] == ["--out", str(tmp_path / "a")]
    for flag, value in (("--head", "logreg"), ("--C", "0.5"), ("--splits", "2"), ("--seed", "3"),
                        ("--cache", str(warm_cache)), ("--arch", FAST["arch"]), ("--precision", "fp32")):
        assert args[args.index(flag) + 1] == value
    assert "--no-progress" in args and "--test-size" not in args  # a default is not repeated
    assert main([*args[1:-1], str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b/metrics.json").read_text())
    assert {k for k in m if m[k] != again[k]} <= {"date", "fit_seconds", "command"}


def test_the_recorded_command_of_a_train_run_parses_to_its_options(tmp_path):
    """`fne train`'s command: the mode, the run folder and each option not at its default; the
    Python API's inline class map, which the command line takes as a file, follows as a comment."""
    import shlex

    from fne.cli import build_parser
    from fne.option_handling import command_line
    from fne.options import DataOptions, TrainConfig

    cfg = TrainConfig(data="my data", mode="finetune", out=str(tmp_path / "run"), epochs=3, augment=False,
                      lr=0.01, class_map={"cat": [281]})
    cmd = command_line("train", cfg.data, cfg, DataOptions(label_key="cls"))
    line, comment = cmd.split("  # ")
    args = shlex.split(line)
    parsed = vars(build_parser(args[1:]).parse_args(args[1:]))
    assert args[:3] == ["fne", "train", "my data"] and comment == "and, in Python only: class_map={'cat': [281]}"
    assert {k: parsed[k] for k in ("mode", "out", "epochs", "augment", "lr", "label_key")} == {
        "mode": "finetune", "out": str(tmp_path / "run"), "epochs": 3, "augment": False, "lr": 0.01,
        "label_key": "cls"}
    assert "scheduler" not in parsed  # at its default: not given
    assert command_line("train", object(), cfg) is None  # DATA given as a Dataset: no command line names it


def test_provenance_names_the_commit_fne_runs_from(tmp_path):
    """fne's version (0.1.0) names no state of its code: a run from a git checkout records the
    commit and whether tracked files were modified since; an installed fne (no .git) records None."""
    import shutil
    import subprocess

    from fne.metrics import _source, provenance

    assert "fne_source" in provenance()
    if shutil.which("git") is None:
        pytest.skip("no git on this machine")
    repo = tmp_path / "checkout"
    (repo / "fne").mkdir(parents=True)
    (repo / "fne" / "__init__.py").write_text("")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "one")
    assert _source.__wrapped__(repo) == {"commit": git("rev-parse", "HEAD"), "modified": False}
    (repo / "fne" / "__init__.py").write_text("x = 1\n")
    assert _source.__wrapped__(repo) == {"commit": git("rev-parse", "HEAD"), "modified": True}
    assert _source.__wrapped__(tmp_path / "installed") is None


def test_versions_name_the_build_whether_or_not_the_run_loaded_torch():
    """A fit on cached rows never imports torch; its metrics.json recorded torch's distribution
    version (`2.14.1`) where every run that loaded torch recorded its build (`2.14.1+cu130`), so one
    environment's runs named two torches. Both now name what the loaded modules say."""
    import subprocess
    import sys

    import torch
    import torchvision

    probe = ("import json, sys; from fne.metrics import provenance; v = provenance()['versions']; "
             "print(json.dumps([v['torch'], v['torchvision'], 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [torch.__version__, torchvision.__version__, False]


def test_provenance_names_the_runs_gpu_not_the_current_one(monkeypatch):
    """A run on cuda:1 recorded the name of torch's current device (cuda:0, another model on a
    mixed machine); a CPU run on a GPU machine recorded a GPU it never used."""
    import torch

    from fne.metrics import provenance

    names = {0: "NVIDIA A100", 1: "NVIDIA H200"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name",
                        lambda d=None: names[0 if d is None or d.index is None else d.index])
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    assert provenance(device="cuda:1")["cuda"]["device"] == "NVIDIA H200"
    assert provenance(device=torch.device("cuda", 1))["cuda"]["device"] == "NVIDIA H200"
    assert provenance(device="cuda")["cuda"]["device"] == "NVIDIA A100"  # the current one, where it ran
    assert "cuda" not in provenance(device="cpu")
    assert provenance()["cuda"]["device"] == "NVIDIA A100"  # a caller that does not know: the current one


def test_train_and_extract_record_the_device_they_ran_on(digits_folder, tmp_path, monkeypatch):
    """Both callers hand provenance the run's device (they passed none: the current GPU's name)."""
    from fne import metrics
    from fne.extraction import extract as ex
    from fne.training import train as tr

    seen = []

    def spy(*options, device=None, **kw):
        seen.append(str(device))
        return metrics.provenance(*options, device=device, **kw)

    monkeypatch.setattr(ex, "provenance", spy)
    monkeypatch.setattr(tr, "provenance", spy)
    ex.extract(digits_folder, cache=str(tmp_path / "c"), device="cpu", progress=False, **FAST)
    tr.train(str(digits_folder), "frozen", tmp_path / "run", arch=FAST["arch"], weights="random", epochs=1,
             image_size=32, workers=0, device="cpu", progress=False, val_fraction=0.25)
    assert seen == ["cpu", "cpu"]
