"""What computing a store's rows cost reaches a fit on cached rows and the report (`fne.cache.cost`).

A fit on rows an earlier `fne extract` computed recorded "rows": "cached" and nothing else, so
the report's extraction column said "cached" and FNE's one forward pass never reached it, while a
`fne train` row showed its whole training time.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fne.cache.cost import rows_cost
from fne.cache.store import Store, StoreKey, list_stores

from .conftest import FAST


def _store(tmp_path) -> Store:
    return Store.open(str(tmp_path / "c"), StoreKey("a", "w", "p", "fp32", "float32"), [("t", 3)], 1)


def _keys(prefix: int, n: int) -> list[str]:
    return [f"{prefix:02x}{i:030x}" for i in range(n)]


def _commit(store: Store, keys: list[str]) -> str:
    return store.commit(keys, {"t": np.ones((len(keys), 1, 3), np.float32)})


def _record(store: Store, n: int, run: float, parts: list[str] | None, device: str = "cpu") -> None:
    rec = {"kind": "extract", "n_computed": n, "seconds": run + 5.0, "stage_seconds": {"run": run},
           "device": device, "batch_size": 8, "precision": "fp32",
           "provenance": {"date": "2026-11-29T10:00:00+00:00"}}
    store.record(rec if parts is None else {**rec, "parts": parts})


def test_each_row_is_charged_to_the_run_that_committed_it(tmp_path):
    """Two runs, 10 images in 20 s and 30 images in 15 s: a fit on 4 of the first and 6 of the
    second charges 4 x 2 s + 6 x 0.5 s, the run phase (not the whole wall time) of each."""
    store = _store(tmp_path)
    a, b = _keys(1, 10), _keys(2, 30)
    pa = [_commit(store, a[:5]), _commit(store, a[5:])]
    _record(store, 10, 20.0, pa)
    _record(store, 30, 15.0, [_commit(store, b)], device="cuda:0")
    c = rows_cost(store, a[3:7] + b[:6] + a[3:5])  # repeats count once
    assert c["seconds"] == pytest.approx(4 * 2.0 + 6 * 0.5)
    assert (c["images"], c["measured_images"], c["estimated_images"], c["runs"], c["basis"]) == (10, 10, 0, 2, "runs")
    assert c["devices"] == ["cpu", "cuda:0"] and c["batch_sizes"] == [8] and c["precisions"] == ["fp32"]
    assert c["note"].startswith("extract_seconds from the store: 11.0 s for 10 images computed on cpu, cuda:0 on 2026-11-29")
    assert rows_cost(store, a)["seconds"] == pytest.approx(20.0)  # one run's images: that run's whole run phase


def test_rows_no_record_names_are_charged_at_the_store_rate(tmp_path):
    """A run recorded before records named their parts, or rows of a run killed before its record:
    charged at the store's mean seconds per image, and the record says so."""
    store = _store(tmp_path)
    a, b, killed = _keys(1, 10), _keys(2, 10), _keys(3, 4)
    _record(store, 10, 10.0, None, device="cpu")  # an old record: no parts
    _commit(store, a)
    _record(store, 10, 30.0, [_commit(store, b)])
    _commit(store, killed)  # no record at all
    rate = 40.0 / 20
    c = rows_cost(store, a + killed)
    assert (c["basis"], c["measured_images"], c["estimated_images"]) == ("store rate", 0, 14)
    assert c["seconds"] == pytest.approx(14 * rate)
    c = rows_cost(store, a[:2] + b[:3])
    assert (c["basis"], c["measured_images"], c["estimated_images"], c["runs"]) == ("runs and store rate", 3, 2, 1)
    assert c["seconds"] == pytest.approx(3 * 3.0 + 2 * rate)


def test_a_store_without_records_records_no_cost(tmp_path):
    """A store written before records were kept (or whose runs computed nothing): None, as before."""
    store = _store(tmp_path)
    keys = _keys(1, 5)
    _commit(store, keys)
    assert rows_cost(store, keys) is None
    store.record({"kind": "extract", "n_computed": 0, "stage_seconds": {"run": 0.1}})
    assert rows_cost(store, keys) is None
    _record(store, 5, 1.0, [])
    assert rows_cost(store, _keys(9, 3)) is None  # none of these keys has a row


def test_a_fit_on_cached_rows_records_the_extraction_that_computed_them(digits_folder, warm_cache, tmp_path):
    """`fne extract` then `fne fit`: metrics.json's extract_cost is the extraction's run phase (it
    computed every row), and the report shows it as "(earlier)" beside the fit's own seconds."""
    from fne.linear.fit import fit
    from fne.reporting.render import secs
    from fne.reporting.report import report

    m = fit(digits_folder, out=tmp_path / "runs" / "fne", features="last", head="logreg", cache=str(warm_cache),
            splits=1, progress=False, **FAST)
    (rec,) = [r for r in list_stores(str(warm_cache))[0].records() if r.get("kind") == "extract"]
    assert m["rows"] == "cached" and m["extract_seconds"] is None
    c = m["extract_cost"]
    assert c["seconds"] == pytest.approx(rec["stage_seconds"]["run"]) and c["images"] == 24 == rec["n_computed"]
    assert c["basis"] == "runs" and c["devices"] == [rec["device"]] and c["batch_sizes"] == [8]
    assert json.loads((tmp_path / "runs" / "fne" / "metrics.json").read_text())["extract_cost"] == c
    r = report([tmp_path / "runs"], tmp_path / "rep", figures=False)
    (row,) = r["datasets"][0]["rows"]
    assert row["extract_seconds"] is None and row["extract_cached"]
    assert row["extract_earlier_seconds"] == pytest.approx(c["seconds"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"| {secs(row['seconds'])} | {secs(c['seconds'])} (earlier) |" in md
    assert 'Extraction s "(earlier)": the rows were read cached' in md


def test_the_report_shows_an_earlier_extraction_beside_measured_and_old_runs(tmp_path, monkeypatch):
    """A fit on cached rows whose metrics.json records extract_cost: "N s (earlier)", pooled over
    seeds by the mean, in report.csv's extract_earlier_seconds and in the time figure (as a diamond
    at fit + extraction); `fne run`'s step that computed nothing likewise. A fit that extracted
    keeps its measured seconds; one written before extract_cost, or with a damaged one, says cached."""
    from matplotlib.axes import Axes

    from fne.reporting.figures import fig_time
    from fne.reporting.report import report

    from .test_report import fake_metrics, md_rows, write_run

    root = tmp_path / "runs"

    def cached(method, seed, cost, **kw):
        return fake_metrics(method, 0.8, 0.01, 0.8, 0.01, extract=None, rows="cached", seed=seed,
                            extract_cost=cost, **kw)

    write_run(root, "s0", cached("fne+svm", 0, {"seconds": 12.0, "images": 40}))
    write_run(root, "s1", cached("fne+svm", 1, {"seconds": 14.0, "images": 40}))
    d = write_run(root, "step", cached("fc7+svm", 0, {"seconds": 30.0}))
    (d / "step.json").write_text(json.dumps({"dataset_key": "pets", "extract": {"seconds": 0.2, "n_computed": 0}}))
    write_run(root, "ran", fake_metrics("fc6+svm", 0.7, 0.01, 0.7, 0.01, extract=33.0, rows="extracted",
                                        extract_cost={"seconds": 31.0}))
    write_run(root, "old", fake_metrics("last+svm", 0.6, 0.01, 0.6, 0.01, extract=None, rows="cached"))
    write_run(root, "bad", cached("block5+svm", 0, "12 s"))
    r = report([root], tmp_path / "rep", figures=False)
    ext = {name: cells[6].strip("*") for name, cells in md_rows((tmp_path / "rep" / "report.md").read_text(),
                                                                "pets").items()}
    assert ext == {"fne+svm (2 runs)": "13.0 (earlier)", "fc7+svm": "30.0 (earlier)", "fc6+svm": "33.0",
                   "last+svm": "cached", "block5+svm": "cached"}
    by = {row["method"]: row for row in r["datasets"][0]["rows"]}
    assert by["fne+svm"]["extract_seconds"] is None and "extract_seconds" not in by["fne+svm"]["best"]
    assert [by[k]["extract_earlier_seconds"] for k in ("fne+svm", "fc6+svm", "last+svm")] == [13.0, None, None]
    with open(tmp_path / "rep" / "report.csv", newline="") as f:
        assert {x["method"]: x["extract_earlier_seconds"] for x in csv.DictReader(f)}["fne+svm"] == "13.0"
    drawn = []
    real = Axes.scatter
    monkeypatch.setattr(Axes, "scatter", lambda ax, x, y, **kw: drawn.append((kw["label"], sorted(x))) or real(ax, x, y, **kw))
    assert fig_time(r["datasets"][0])
    assert ("linear head, with its rows' earlier extraction", [14.0, 31.0]) in drawn


def test_a_damaged_record_is_left_out_with_a_warning(tmp_path):
    """A record cut short or edited by hand (not JSON, not an object, parts that are not names)
    raised a traceback out of every fit on the store's rows; now it is left out, named in a
    warning, and the rows are charged from the records that can be read."""
    store = _store(tmp_path)
    a = _keys(1, 10)
    _record(store, 10, 20.0, [_commit(store, a)])
    (store.path / "records" / "00000000000000000001-1.json").write_text('{"kind": "extr')
    (store.path / "records" / "00000000000000000002-1.json").write_text("[1, 2]")
    _record(store, 5, 99.0, [{"not": "a name"}])
    with pytest.warns(UserWarning) as w:
        c = rows_cost(store, a)
    (said,) = [str(x.message) for x in w if "records" in str(x.message)]  # one line for both (was a line each)
    assert said.startswith(f"2 records of store {store.path} left out (no JSON object in them") and said.endswith(
        "): records/00000000000000000001-1.json (Unterminated string starting at: line 1 column 10 (char 9)), "
        "records/00000000000000000002-1.json (holds a list, not a JSON object)")
    assert (c["measured_images"], c["estimated_images"]) == (10, 0) and c["seconds"] == pytest.approx(20.0)
    (store.path / "records" / "00000000000000000002-1.json").unlink()
    with pytest.warns(UserWarning, match=r"^record .*/records/00000000000000000001-1\.json left out: Unterminated"):
        rows_cost(store, a)


def test_a_fit_that_extracts_its_rows_does_not_call_them_an_earlier_extraction(digits_folder, tmp_path):
    """`fne fit --extract` on a new cache: its own extraction's record named the parts, so
    extract_cost charged the fit's own rows with a note saying "by an earlier extraction, not by
    this run"; the fit's extraction is its extract_seconds, and extract_cost is None."""
    from fne.linear.fit import fit

    m = fit(digits_folder, out=tmp_path / "run", features="last", head="logreg", cache=str(tmp_path / "c"),
            extract_missing=True, splits=1, progress=False, **FAST)
    assert m["rows"] == "extracted" and m["extract_seconds"] is not None and m["extract_cost"] is None
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["extract_cost"] is None
