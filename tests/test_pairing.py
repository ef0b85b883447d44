"""`fne report` pairs fit and train runs scored on the same test images: both verbs record a
split's test images in DATA's order (metrics.json's `test_order`), runs pair on the splits they
share (a 5-split fit with a 1-split train, a 5-split with a 3-split fit), and records written
before, in the order fit's splitter drew them, pair only among themselves."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import warnings

import numpy as np
import pytest

from fne.linear import compare
from fne.metrics import TEST_ORDER

from .conftest import FAST
from .test_report import _splits, _verdict_report, fake_metrics


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_folder, warm_cache):
    """A 5-split and a 3-split fit and a frozen train (one split) of one DATA without a split, seed 0."""
    pytest.importorskip("efficientnet_lite_pytorch")
    import fne

    root = tmp_path_factory.mktemp("pairing") / "runs"
    kw = dict(cache=str(warm_cache), features="last", progress=False, **FAST)
    return root, {
        "fit5": fne.fit(digits_folder, out=root / "fit5", head="logreg", splits=5, **kw),
        "fit3": fne.fit(digits_folder, out=root / "fit3", head="svm", splits=3, **kw),
        "train": fne.train(digits_folder, out=root / "train", mode="frozen", arch="efficientnet_lite0",
                           weights="random", epochs=1, image_size=32, batch_size=32, workers=0, val_fraction=0,
                           progress=False),
    }


def _right(run_dir, split: int | None = None) -> dict[str, str]:
    """predictions.csv's "1"/"0" per test image (of one split of a fit run), by path."""
    with open(run_dir / "predictions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if split is None or r["split"] == str(split)]
    return {r["path"]: "1" if r["true"] == r["predicted"] else "0" for r in rows}


def _old_way(data, run_dir, m: dict) -> dict:
    """A fit's metrics.json as fne wrote it before `test_order`: each split's record in the order
    the splitter (`make_splits`) drew its test images."""
    from fne.data.datasets import load_dataset
    from fne.data.splits import make_splits

    dataset = load_dataset(data)
    drawn = make_splits(dataset, dataset.label_indices(), len(m["splits"]), 0.25, None, m["seed"])
    splits = []
    for i, (s, (_, te)) in enumerate(zip(m["splits"], drawn, strict=True)):
        right, ids = _right(run_dir, split=i), [dataset.ids[j] for j in te]
        assert sorted(right) == sorted(ids)
        splits.append({**s, "correct": "".join(right[p] for p in ids),
                       "test_hash": hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]})
    return {**{k: v for k, v in m.items() if k != "test_order"}, "splits": splits}


def test_fit_and_train_record_one_test_set_alike_in_datas_order(runs):
    """Train's split is fit's first (for one seed and test size, whatever fit's number of splits):
    the same hash, and "1"/"0" strings aligned image by image (before, fit hashed its test images
    in the splitter's order, train in DATA's: one test set, two hashes)."""
    root, m = runs
    h5, h3 = ([s["test_hash"] for s in m[k]["splits"]] for k in ("fit5", "fit3"))
    assert m["train"]["splits"][0]["test_hash"] == h5[0] and h3 == h5[:3] and len(set(h5)) == 5
    assert all(m[k]["test_order"] == TEST_ORDER == "dataset" for k in m)
    order = list(_right(root / "train"))  # train's predictions.csv: its test images in DATA's order
    assert "".join(_right(root / "train")[p] for p in order) == m["train"]["splits"][0]["correct"]
    fit_right = _right(root / "fit5", split=0)  # fit's predictions.csv: each split's, likewise
    assert list(fit_right) == order and "".join(fit_right.values()) == m["fit5"]["splits"][0]["correct"]
    for name in m:  # as written
        assert json.loads((root / name / "metrics.json").read_text())["splits"] == m[name]["splits"]


def test_a_5_split_fit_and_a_1_split_train_get_mcnemar_on_the_split_they_share(runs, tmp_path):
    root, m = runs
    r = compare.compare_runs(m["fit5"], m["train"])
    assert r is not None and r["test"] == "McNemar exact" and r["n"] == m["train"]["n_test"]
    c1, c2 = m["fit5"]["splits"][0]["correct"], m["train"]["splits"][0]["correct"]
    assert (r["only_a"], r["only_b"]) == (sum(a > b for a, b in zip(c1, c2)), sum(a < b for a, b in zip(c1, c2)))
    assert r["splits"] == [[1], [1], [5, 1]] and compare.compare_runs(m["train"], m["fit5"])["splits"] == [[1], [1], [1, 5]]
    assert ("over 6 test images (only the split both runs were scored on: split 1 of fit's 5, split 1 of train's 1), "
            in compare.describe(r, "fit", "train"))
    for name in ("fit5", "train"):  # the report of the two: McNemar's test, not Fisher's unpaired one
        shutil.copytree(root / name, tmp_path / "runs" / name)
    from fne.reporting.report import report

    ds = report([tmp_path / "runs"], tmp_path / "rep", figures=False)["datasets"][0]
    assert "McNemar exact test" in ds["winner_test"] and "only the split both runs were scored on" in ds["winner_test"]
    assert "unpaired" not in ds["winner_test"]


def test_a_5_split_and_a_3_split_fit_get_the_corrected_t_over_their_3_shared_splits(runs):
    _, m = runs
    r = compare.compare_runs(m["fit5"], m["fit3"])
    a, b = ([s["accuracy"] for s in m[k]["splits"]] for k in ("fit5", "fit3"))
    assert r["n"] == 3 and r["splits"] == [[1, 2, 3], [1, 2, 3], [5, 3]]
    assert np.isclose(r["mean_diff"], np.mean(np.subtract(a[:3], b)))
    assert "over 3 splits (only the splits both runs were scored on: splits 1, 2, 3 of x's 5, splits 1, 2, 3 of " \
           "y's 3)" in compare.describe(r, "x", "y")
    assert "splits" not in compare.compare_runs(m["fit5"], m["fit5"])  # all of both runs' splits: nothing to say
    other_seed = {**m["fit3"], "seed": 1}
    assert compare.compare_runs(m["fit5"], other_seed) is None


def test_rows_pooled_over_seeds_pair_each_seed_on_the_split_it_shares(tmp_path):
    """fit of 5 splits and train of one, each of seeds 0-2: each seed's pair shares one split, and
    the corrected t runs over those 3 (one per seed), saying so."""
    def run(method, kind, seed, accs):
        splits = [{**s, "test_hash": f"h{seed}{i}", "correct": "1" * round(10 * a) + "0" * (10 - round(10 * a))}
                  for i, (s, a) in enumerate(zip(_splits(accs), accs))]
        return fake_metrics(method, float(np.mean(accs)), 0.0, float(np.mean(accs)), 0.0, kind=kind, seed=seed,
                            splits=splits, split_protocol=f"{len(accs)}x stratified test_size=0.25",
                            test_order="dataset")
    runs = {f"f{s}": run("fne+svm", "fit", s, [0.9, 0.8, 0.9, 0.8, 0.9]) for s in range(3)}
    runs |= {f"t{s}": run("train:finetune", "train", s, [0.5 + s / 10]) for s in range(3)}
    ds, md, _ = _verdict_report(tmp_path, runs)
    assert "corrected paired t-test" in ds["winner_test"] and "over 3 splits" in ds["winner_test"]
    assert "only the splits both runs of each pair were scored on" in ds["winner_test"]


def test_records_written_before_test_order_pair_only_among_themselves(runs, tmp_path, digits_folder):
    """A fit written the old way (the splitter's order) never pairs with today's records (their
    "1"/"0" strings do not align), pairs with old fits of its seed as before, and beside today's fit
    of its seed the report does not claim that DATA changed: it says the two cannot be compared."""
    root, m = runs
    old5, old3 = (_old_way(digits_folder, root / k, m[k]) for k in ("fit5", "fit3"))
    assert old5["splits"][0]["test_hash"] != m["train"]["splits"][0]["test_hash"]  # the order the hash was of
    assert compare.record_order(old5) == "drawn" and compare.record_order(m["fit5"]) == "dataset"
    assert compare.compare_runs(old5, m["train"]) is None and compare.compare_runs(old3, m["fit5"]) is None
    r = compare.compare_runs(old5, old3)
    assert r["n"] == 3 and r["splits"] == [[1, 2, 3], [1, 2, 3], [5, 3]]
    old_train = {k: v for k, v in m["train"].items() if k != "test_order"}  # train always wrote DATA's order
    assert compare.compare_runs(m["fit5"], old_train)["test"] == "McNemar exact"
    shutil.copytree(root / "fit5", tmp_path / "runs" / "new")
    shutil.copytree(root / "fit5", tmp_path / "runs" / "new2")  # a repeat of new: one warning still
    shutil.copytree(root / "fit5", tmp_path / "runs" / "old")
    (tmp_path / "runs" / "old" / "metrics.json").write_text(json.dumps(old5))
    from fne.reporting.report import report

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        report([tmp_path / "runs"], tmp_path / "rep", figures=False)
    text = [str(w.message) for w in said]
    assert not any("DATA's images or labels changed" in t for t in text)
    older = [t for t in text if "was written before fne listed each split's test images in DATA's order" in t]
    assert len(older) == 1 and "runs/old and " in older[0] and "(run " in older[0]


def test_fit_and_train_record_the_format_of_their_metrics_json(runs):
    """Both verbs write metrics.json's format (`fne.metrics.METRICS_FORMAT`), by which an earlier
    fne leaves out of its report, and refuses to apply, a run a newer fne wrote."""
    from fne.metrics import METRICS_FORMAT

    root, m = runs
    assert all(m[k]["format"] == json.loads((root / k / "metrics.json").read_text())["format"] == METRICS_FORMAT
               for k in ("fit5", "fit3", "train"))
