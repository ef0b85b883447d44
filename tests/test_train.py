"""`fne train`: frozen/finetune/scratch/direct on a tiny digits subset with EfficientNet-Lite0.

Random weights at 32x32 keep the file fast; what is checked is the mechanics (what learns,
what is imported, resume, outputs, errors), not accuracy.
"""

from __future__ import annotations

import csv
import errno
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from fne.backbones import registry as backbones
from fne.cli import main
from fne.data.datasets import load_dataset
from fne.errors import FneError, OptionError, WeightsError

pytest.importorskip("efficientnet_lite_pytorch")

ARCH = "efficientnet_lite0"
FAST = dict(arch=ARCH, image_size=32, batch_size=32, workers=0, progress=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    """16 images per class: 120 train (12 of them val) and 40 test after the stratified split."""
    d = load_dataset("digits")
    y = d.label_indices()
    return d.subset(np.concatenate([np.flatnonzero(y == c)[:16] for c in range(10)]))


@pytest.fixture(scope="module")
def digits_jpegs(tmp_path_factory):
    """Handwritten digits as RGB JPEG files (4 classes x 12): what the device decoder reads."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root, d = tmp_path_factory.mktemp("digits_jpeg") / "data", load_digits()
    for c in range(4):
        (root / str(c)).mkdir(parents=True)
        for i in np.flatnonzero(d.target == c)[:12]:
            img = Image.fromarray(np.clip(d.images[i] * 16, 0, 255).astype(np.uint8)).resize((40, 40))
            img.convert("RGB").save(root / str(c) / f"d{i:04d}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A seeded random EfficientNet-Lite0 state dict on disk: the 'pretrained' source."""
    path = tmp_path_factory.mktemp("src") / "source.pt"
    torch.save(backbones.load_backbone(ARCH, "random", seed=7).state_dict(), path)
    return path


def _csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rel_change(a: dict, b: dict, names) -> float:
    """Mean relative change ||a - b|| / ||b|| over tensors that do not start at zero."""
    return float(np.mean([((a[n] - b[n]).norm() / b[n].norm()).item() for n in names if b[n].norm() > 0]))


def test_frozen_keeps_every_imported_tensor_bit_identical(digits, source, tmp_path):
    from fne.training.train import train
    from fne.training.transfer import build_model

    out = tmp_path / "run"
    m = train(digits, "frozen", out, weights=str(source), epochs=2, lr=0.01, save_every=1, **FAST)
    final = torch.load(out / "model.pt", weights_only=True)
    src = torch.load(source, weights_only=True)
    imported = [n for n in final if not n.startswith("_fc.")]
    assert len(imported) > 250
    changed = [n for n in imported if not torch.equal(final[n], src[n])]
    assert changed == []  # parameters and BatchNorm statistics alike
    init, _, _ = build_model(ARCH, "frozen", 10, str(source), seed=0)
    assert not torch.equal(final["_fc.weight"], init.state_dict()["_fc.weight"])  # the head learnt
    assert final["_fc.weight"].shape == (10, 1280)

    # outputs: metrics, predictions, and model.pt usable as --weights (classifier mismatch tolerated)
    assert m["kind"] == "train" and m["method"] == "train:frozen" and m["n_splits"] == 1
    assert m["imported_lr"] == 0.0 and m["best_epoch"] in (1, 2) and m["n_test"] == 40
    assert np.array(m["confusion"]).sum() == m["n_test"] and len(m["confusion"]) == 10
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    rows = _csv(out / "predictions.csv")
    assert len(rows) == 40 and list(rows[0])[:2] == ["path", "predicted"] and list(rows[0])[-1] == "true"
    assert np.mean([r["predicted"] == r["true"] for r in rows]) == pytest.approx(m["accuracy"])
    backbones.load_backbone(ARCH, str(out / "model.pt"))
    # the files fne.train's docstring and README's "Outputs" list; checkpoint.pt where one was saved
    # (save_every=1: each epoch; direct mode's files: test_a_direct_run_keeps_no_copy_...)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json", "model.pt", "predictions.csv"]


def test_finetune_moves_imported_parameters_far_less_than_new(digits, source, tmp_path):
    from fne.training.train import train
    from fne.training.transfer import build_model

    m = train(digits, "finetune", tmp_path, weights=str(source), epochs=2, lr=0.01,
              imported_lr_mult=1e-3, **FAST)
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    init_model, report, _ = build_model(ARCH, "finetune", 10, str(source), seed=0)
    init = init_model.state_dict()
    params = {n for n, _ in init_model.named_parameters()}
    old = [n for n in report.imported if n in params]
    new = ["_fc.weight"]
    d_old, d_new = _rel_change(final, init, old), _rel_change(final, init, new)
    assert d_old > 0  # imported layers do train in finetune ...
    assert d_old < d_new / 50  # ... at a thousandth of the lr
    assert m["imported_lr"] == pytest.approx(0.01 * 1e-3)
    # imported BatchNorm keeps the source's statistics unless --train-bn
    src = torch.load(source, weights_only=True)
    assert torch.equal(final["_bn1.running_mean"], src["_bn1.running_mean"]) and not m["train_bn"]


def test_full_import_builds_on_meta_and_draws_only_the_new_layers(source, monkeypatch):
    """A source covering every kept tensor: the network is built on the meta device (no
    architecture init to throw away), takes copies of the source's tensors (training them leaves
    the source alone), and only its new layers are drawn, from the seed."""
    from fne.training import transfer

    def no_real_build(*a, **k):
        raise AssertionError("a full import built the architecture on real memory")

    monkeypatch.setattr(backbones, "seeded_build", no_real_build)
    state = torch.load(source, weights_only=True)
    monkeypatch.setattr(transfer, "source_state", lambda *a, **k: state)
    a, report, renew = transfer.build_model(ARCH, "finetune", 10, str(source), seed=0)
    b, _, _ = transfer.build_model(ARCH, "finetune", 10, str(source), seed=0)
    c, _, _ = transfer.build_model(ARCH, "finetune", 10, str(source), seed=1)
    got = a.state_dict()
    assert not any(t.is_meta for t in got.values()) and renew == ("_fc",)
    assert all(torch.equal(got[n], state[n]) for n in report.imported) and len(report.imported) > 250
    assert got["_conv_stem.weight"].data_ptr() != state["_conv_stem.weight"].data_ptr()
    with torch.no_grad():
        a._conv_stem.weight.add_(1.0)
    assert not torch.equal(a._conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(a._fc.weight, b._fc.weight) and not torch.equal(a._fc.weight, c._fc.weight)
    assert a._fc.weight.shape == (10, 1280) and a.training


def test_an_architecture_that_cannot_be_built_on_meta_is_built_for_real(tmp_path):
    """torchvision's regnets run init code that needs real tensors: build_model falls back to
    an ordinary seeded build and imports into it."""
    arch = "regnet_y_400mf"
    with pytest.raises(NotImplementedError), torch.device("meta"):
        backbones.get(arch).build(1000)
    state = backbones.load_backbone(arch, "random", seed=2).state_dict()
    torch.save(state, tmp_path / "w.pth")
    from fne.training.transfer import build_model

    model, report, renew = build_model(arch, "frozen", 7, str(tmp_path / "w.pth"))
    got = model.state_dict()
    assert renew == ("fc",) and got["fc.weight"].shape == (7, 440) and len(report.imported) > 300
    assert all(torch.equal(got[n], state[n]) for n in report.imported)
    assert not any(t.is_meta for t in got.values())


def test_train_bn_decides_which_batchnorm_layers_keep_imported_statistics(source):
    from fne.training.transfer import build_model, kept_statistics, train_mode

    model, report, _ = build_model(ARCH, "finetune", 10, str(source))
    imported = set(report.imported)
    keep = kept_statistics(model, "finetune", imported)
    assert "_bn0" in keep and "_blocks.3._bn1" in keep and len(keep) == 49
    train_mode(model, keep)
    assert not model._bn0.training and model._blocks[3]._bn1.training is False
    assert model._blocks[3].training and model._dropout.training  # the rest trains
    assert kept_statistics(model, "finetune", imported, train_bn=True) == []
    assert kept_statistics(model, "frozen", imported, train_bn=True) == keep
    assert kept_statistics(model, "scratch", set()) == []


def test_import_by_name_reports_mismatched_and_missing_tensors(source, tmp_path):
    from fne.training.transfer import build_model, describe_import

    state = torch.load(source, weights_only=True)
    bad = torch.randn(640, 320, 1, 1)  # the source's head conv is 1280x320x1x1
    state["_conv_head.weight"] = bad
    del state["_bn1.running_var"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    model, report, renew = build_model(ARCH, "finetune", 10, str(path))
    why = dict(report.skipped)
    assert why["_conv_head.weight"] == "shape (640, 320, 1, 1) in source, (1280, 320, 1, 1) here"
    assert why["_bn1.running_var"] == "not in source"
    assert why["_fc.weight"] == "renewed layer" and renew == ("_fc",)
    got = model.state_dict()
    assert got["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert torch.equal(got["_conv_stem.weight"], state["_conv_stem.weight"])
    lines = describe_import(report, renew)
    assert "not imported _conv_head.weight: shape (640, 320, 1, 1) in source, (1280, 320, 1, 1) here" in lines
    assert not any("_fc.weight" in line for line in lines if line.startswith("not imported"))
    # 98 layers: the first and last four named, not a line of 2,000 characters
    first = lines[0]
    assert first.startswith(f"imported {len(report.imported)} tensors of {len(report.layers())} layers: ")
    assert f"… {len(report.layers()) - 8} more …" in first and len(first) < 300
    assert report.layers()[0] in first and report.layers()[-1] in first


def test_vgg_new_layers_replace_fc6_fc7_output_under_torchvision_names():
    from fne.training.transfer import build_model, new_layer_names

    vgg = backbones.get("vgg16")
    assert new_layer_names(vgg, "frozen", "last") == ("classifier.6",)
    model, report, renew = build_model("vgg16", "frozen", 5, "random", new_layers="fc")
    assert renew == ("classifier.0", "classifier.3", "classifier.6")
    why = dict(report.skipped)
    assert all(why[f"classifier.{i}.weight"] == "renewed layer" for i in (0, 3, 6))
    assert "features.28.weight" in report.imported and "classifier.0.weight" not in report.imported
    assert model.classifier[6].out_features == 5 and model.classifier[0].in_features == 25088
    assert model.classifier[0].bias.abs().sum() == 0  # Xavier layers start with zero biases


def test_resume_from_mid_run_checkpoint_is_bit_identical(digits, source, tmp_path, monkeypatch):
    import fne.training.epochs
    import fne.training.train as tr

    kw = dict(weights=str(source), epochs=3, lr=0.02, scheduler="cosine", save_every=1, **FAST)
    tr.train(digits, "finetune", tmp_path / "a", **kw)

    real, calls = fne.training.epochs.train_one_epoch, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during epoch 2
        return real(*a, **k)

    monkeypatch.setattr(fne.training.epochs, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tr.train(digits, "finetune", tmp_path / "b", **kw)
    monkeypatch.setattr(fne.training.epochs, "train_one_epoch", real)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["scheduler"] is not None and set(ckpt["rng"]) >= {"torch", "numpy", "python"}
    assert not (tmp_path / "b" / "model.pt").exists()
    assert set(backbones.read_state_dict(tmp_path / "b" / "checkpoint.pt")) == set(ckpt["model"])

    mb = tr.train(digits, "finetune", tmp_path / "b", resume=True, **kw)
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert [n for n in a if not torch.equal(a[n], b[n])] == []
    # the same bytes too: the archive in model.pt was named after its temporary file (.tmp-…-model)
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert [h["train_loss"] for h in ma["history"]] == [h["train_loss"] for h in mb["history"]]
    assert ma["best_epoch"] == mb["best_epoch"]

    with pytest.raises(FneError, match="belongs to another run: lr=0.02 there, 0.1 now"):
        tr.train(digits, "finetune", tmp_path / "b", resume=True, **{**kw, "lr": 0.1})


def test_direct_mode_scores_are_summed_source_probabilities(tmp_path, capsys):
    cmap = {"0": [i for i in range(1000) if i != 985], "1": ["daisy"]}  # 985 is "daisy"
    (tmp_path / "map.json").write_text(json.dumps(cmap))
    out = tmp_path / "run"
    rc = main(["train", "digits", "--mode", "direct", "--arch", ARCH, "--weights", "random",
               "--class-map", str(tmp_path / "map.json"), "--image-size", "32", "--workers", "0",
               "--no-progress", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    rows = _csv(out / "predictions.csv")
    assert m["classes"] == ["0", "1"] and m["mode"] == "direct" and m["epochs"] == 0
    assert m["class_map"]["1"] == ["daisy"] and m["n_excluded"] > 0
    assert len(rows) == m["n_test"] > 0 and {r["true"] for r in rows} == {"0", "1"}
    s0, s1 = (np.array([float(r[f"score_{c}"]) for r in rows]) for c in "01")
    assert np.allclose(s0 + s1, 1.0, atol=1e-4)  # together the two targets cover all 1000 classes
    assert all(r["predicted"] == ("0" if a > b else "1") for r, a, b in zip(rows, s0, s1, strict=True))
    assert np.mean([r["predicted"] == r["true"] for r in rows]) == pytest.approx(m["accuracy"])
    ci = m["accuracy_ci"]  # the Wilson interval over its test images, printed beside the accuracy
    assert ci["method"] == f"Wilson score interval over {m['n_test']} test images" and ci["low"] < m["accuracy"] < ci["high"]
    mci = m["mean_class_accuracy_ci"]
    assert (f"train:direct on digits: accuracy {m['accuracy']:.4f} (95% CI {ci['low']:.4f}-{ci['high']:.4f}), mean "
            f"class accuracy {m['mean_class_accuracy']:.4f} (95% CI {mci['low']:.4f}-{mci['high']:.4f})") in (
        capsys.readouterr().out)


def test_a_direct_run_keeps_no_copy_of_the_source_network_and_says_so(tmp_path, capsys):
    """A direct run trains nothing: it wrote model.pt, a copy of the source network (528 MB for
    VGG-16) that `fne predict` then refused. Now no model.pt (an earlier run's in the folder is
    not left beside this run's metrics.json), metrics.json's `network` names the source network,
    the summary says so, and `fne predict`, `fne.load` and `fne fit --out` on the folder each say
    in one line what it is. An earlier run's checkpoint.pt was left too (a later --resume could
    take it up over this run): it is removed as the run ends, as the run's first line says, as a
    run of another mode removes one it did not replace. The "imported N tensors" line, about
    weights imported into a new network, is not said: direct uses the source network as it is."""
    import fne

    (tmp_path / "map.json").write_text(json.dumps({"0": ["tench"], "1": ["daisy"]}))
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.pt").write_bytes(b"an earlier run's network")
    (out / "checkpoint.pt").write_bytes(b"an earlier run's checkpoint")
    assert main(["train", "digits", "--mode", "direct", "--arch", ARCH, "--weights", "random", "--class-map",
                 str(tmp_path / "map.json"), "--image-size", "32", "--workers", "0", "--no-progress",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["class_map.json", "metrics.json", "predictions.csv"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["network"] == {"arch": ARCH, "weights": "random", "weights_fingerprint": m["weights_fingerprint"],
                            "note": "the source network as it is: a direct run trains nothing, and keeps no copy "
                                    "of it (no model.pt)"}
    assert m["imported"] is None and m["not_imported"] is None  # nothing imported into a new network
    printed = capsys.readouterr().out
    assert printed.startswith(f"note: starting a new run; {out / 'checkpoint.pt'} is removed at the run's end "
                              f"(another run's: --mode direct trains nothing and saves none)\n")
    assert "imported" not in printed and "new layers" not in printed
    assert printed.endswith(f"wrote {out}/metrics.json, predictions.csv and class_map.json (no model.pt: its "
                            f"network is the source one, {ARCH} with weights 'random')\n")
    said = ("a --mode direct run trains nothing and keeps no model.pt (its network is the source one, "
            "metrics.json's arch and weights); score new images with `fne train DATA --mode direct --class-map "
            f"MAP` (the run's class map: {out / 'class_map.json'})")
    assert main(["predict", str(out), "digits", "--out", str(tmp_path / "p.csv")]) == 2
    assert capsys.readouterr().err == f"fne predict: error: {out}: {said}\n"
    with pytest.raises(FneError, match=re.escape(f"{out}: a mode='direct' run trains nothing and keeps no model.pt")):
        fne.load(out)
    (out / "class_map.json").rename(tmp_path / "kept.json")  # a run written before it was kept from a file
    assert main(["predict", str(out), "digits", "--out", str(tmp_path / "p.csv")]) == 2
    assert capsys.readouterr().err.endswith("(the run's class map: metrics.json's options)\n")
    (tmp_path / "kept.json").rename(out / "class_map.json")
    assert main(["fit", "digits", "--arch", ARCH, "--weights", "random", "--out", str(out)]) == 2
    assert "holds a `fne train --mode direct` run (its metrics.json)" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == m


def test_direct_mode_takes_the_class_map_as_a_dict_and_records_it_in_the_run_folder(digits, tmp_path):
    """fne.train(class_map={...}) was "TypeError: class_map must be a string, not dict", though a
    pipeline file takes a table: the dict scores as its JSON file does, and the run folder keeps it
    as class_map.json, which metrics.json's options name (a rerun from it scores the same). A map
    given as a file was not kept (README said a direct run writes class_map.json): the run folder
    now holds the map as read, whatever becomes of the file; the options name the file given."""
    from fne.training.train import train

    cmap = {"0": [i for i in range(1000) if i != 985], "1": ["daisy"]}
    kw = dict(weights="random", **FAST)
    m = train(digits, "direct", tmp_path / "inline", class_map=cmap, **kw)
    recorded = tmp_path / "inline" / "class_map.json"
    assert json.loads(recorded.read_text()) == cmap
    assert m["options"]["class_map"] == str(recorded) and m["class_map"]["1"] == ["daisy"]
    given = tmp_path / "given.json"
    given.write_text(recorded.read_text())
    again = train(digits, "direct", tmp_path / "from_file", class_map=str(given), **kw)
    given.unlink()  # the run folder holds the map it was scored with
    assert json.loads((tmp_path / "from_file" / "class_map.json").read_text()) == cmap
    assert again["options"]["class_map"] == str(given)  # the path as given
    assert _csv(tmp_path / "inline" / "predictions.csv") == _csv(tmp_path / "from_file" / "predictions.csv")
    assert again["accuracy"] == m["accuracy"] and again["class_map"] == m["class_map"]


@pytest.mark.parametrize("text, words", [
    ("not json{", "not readable JSON (Expecting value: line 1 column 1 (char 0))"),
    ("[]", "expected a JSON object {target class: [source classes]}"),
    ('{"0": []}', "target class '0' maps to no source class"),
    ('{"0": ["tench"], "1": [0]}', "source class 'tench' (0) is mapped to both '0' and '1'"),
    ('{"0": [3.5]}', "source class 3.5 is neither a name nor an index"),
    ('{"0": [1000]}', "source index 1000 out of range 0..999"),
    # JSON keeps the last of a repeated key: the run scored {"0": [2]}, the file's "0": [1] dropped unsaid
    ('{"0": [1], "1": [3], "0": [2]}', "target class '0' is written twice: give each class once, its source "
                                       "classes in one list"),
])
def test_a_class_map_file_that_does_not_fit_is_one_line_naming_it(tmp_path, text, words):
    from fne.training.class_map import read_class_map

    path = tmp_path / "map.json"
    path.write_text(text)
    categories = [f"class {k}" for k in range(1000)]
    categories[0] = "tench"
    with pytest.raises(OptionError) as e:
        read_class_map(str(path), ["0", "1", "2"], categories)
    assert str(e.value) == f"class_map='{path}': {words}"


def test_a_class_map_file_with_a_byte_order_mark_is_read(tmp_path):
    """A map saved by a Windows editor (UTF-8 with a byte-order mark, as Excel's CSVs, which fne
    reads) was "not readable JSON (Unexpected UTF-8 BOM ...)"."""
    from fne.training.class_map import read_class_map

    path = tmp_path / "map.json"
    path.write_bytes('\ufeff{"0": ["tench"], "1": [2]}'.encode())
    categories = [f"class {k}" for k in range(1000)]
    categories[0] = "tench"
    assert read_class_map(str(path), ["0", "1", "2"], categories) == {"0": [0], "1": [2]}


@pytest.mark.parametrize("cmap, expected", [
    ({"0": [{"name": "tench"}]}, r"^class_map=\{'0': \[\{'name': 'tench'\}\]\}: values must be ImageNet class names/indices: \['0'\]$"),
    ({0: ["tench"]}, r"^class_map=\{0: \['tench'\]\}: target classes must be strings \(DATA's class names\): \[0\]$"),
])
def test_a_class_map_dict_of_the_wrong_shape_is_one_line_before_any_work(cmap, expected, tmp_path):
    from fne.training.train import train

    with pytest.raises(OptionError, match=expected):
        train("digits", "direct", tmp_path / "run", class_map=cmap, weights="random", **FAST)
    assert not (tmp_path / "run").exists()
    with pytest.raises(OptionError, match=r"^class_map=\{'cat': \[1\]\}: unknown target class\(es\) 'cat'"):
        train("digits", "direct", tmp_path / "run", class_map={"cat": [1]}, weights="random", **FAST)
    assert not (tmp_path / "run" / "class_map.json").exists()


@pytest.mark.parametrize("extra, cmap, expected", [
    (["--mode", "bogus"], None, "unknown --mode 'bogus'; choose from direct, scratch, frozen, finetune"),
    (["--mode", "direct"], None, "--mode direct needs --class-map"),
    (["--mode", "direct"], {"cat": [1]}, "unknown target class(es) 'cat'"),
    (["--mode", "direct"], {"0": ["daisies"]}, "unknown source class 'daisies'; did you mean 'daisy'"),
    (["--mode", "direct"], {"0": [5000]}, "source index 5000 out of range"),
    (["--mode", "direct"], {"0": [1, "goldfish"]}, "target class '0' lists source class 'goldfish' (1) twice"),
    (["--mode", "direct"], {"0": [1], "1": ["goldfish"]}, "source class 'goldfish' (1) is mapped to both '0' and '1'"),
    (["--mode", "frozen", "--arch", "vgg16", "--weights", "SOURCE"], None,
     "does not fit --arch vgg16: only 0 of 26 tensors match by name and shape"),
    (["--mode", "scratch", "--weights", "imagenet"], None, "--mode scratch trains from a random"),
    (["--mode", "finetune", "--weights", "missing.pt"], None, "--weights 'missing.pt': no such file"),
    (["--mode", "finetune", "--resume"], None, "--resume: no checkpoint"),
    (["--mode", "frozen", "--val-fraction", "1.5"], None, "bad --val-fraction 1.5"),
    (["--mode", "frozen", "--train-bn"], None, "--train-bn applies to --mode finetune only"),
    (["--mode", "frozen", "--direct-score", "max"], None, "--direct-score applies to --mode direct only, not frozen"),
    (["--mode", "frozen", "--direct-score", "sum"], None, "--direct-score applies to --mode direct only"),  # the default
    (["--mode", "scratch", "--new-layers", "last"], None, "--new-layers applies to --mode frozen or finetune only"),
    (["--mode", "frozen", "--imported-lr-mult", "0.1"], None, "--imported-lr-mult applies to --mode finetune only"),
    (["--mode", "frozen"], {"0": [1]}, "--class-map applies to --mode direct only, not frozen"),
    (["--mode", "frozen", "--no-augment", "--augment-on", "cpu"], None,
     "--augment-on 'cpu' places the augmentation, and --no-augment trains without it: give one of the two"),
    (["--mode", "direct", "--augment-on", "cpu"], {"0": [1]},
     "--augment-on applies to --mode scratch, frozen or finetune only, not direct"),
])
def test_bad_arguments_fail_with_one_clear_line(extra, cmap, expected, source, tmp_path, capsys):
    args = ["train", "digits", "--arch", ARCH, "--weights", "random", "--out", str(tmp_path / "run"),
            "--no-progress", *[str(source) if a == "SOURCE" else a for a in extra]]
    if cmap is not None:
        (tmp_path / "map.json").write_text(json.dumps(cmap))
        args += ["--class-map", str(tmp_path / "map.json")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fne train: error:") and "\n" not in err and "Traceback" not in err
    assert expected in err


def test_an_option_the_mode_ignores_is_refused_through_the_api_too(tmp_path):
    """fne.train(mode="frozen", direct_score="max") trained and ignored it; an option left None is
    not given (the API's way to say "not set")."""
    from fne.training.train import train

    with pytest.raises(OptionError, match=r"^direct_score applies to mode 'direct' only, not 'frozen'$"):
        train("digits", "frozen", tmp_path / "run", direct_score="max", **FAST)
    with pytest.raises(OptionError, match=r"^epochs applies to mode 'scratch', 'frozen' or 'finetune' only, not 'direct'$"):
        train("digits", "direct", tmp_path / "run", epochs=3, class_map=None, **FAST)
    assert not (tmp_path / "run").exists()


def test_a_keyword_left_none_takes_its_default(digits_folder, tmp_path):
    """One call for every mode, `imported_lr_mult=0.1 if mode == "finetune" else None`: None is not
    given, whatever the option's default (it was "imported_lr_mult must be a number, not NoneType")."""
    from fne.training.train import train

    m = train(digits_folder, "frozen", tmp_path / "run", weights="random", epochs=1, imported_lr_mult=None,
              lr=None, direct_score=None, train_bn=None, val_fraction=0.0, **FAST)
    assert m["lr"] == 0.001 and m["epochs"] == 1 and m["mode"] == "frozen"


def test_rerun_note_tells_a_checkpoint_taken_up_from_one_of_other_images(digits_folder, tmp_path, image_opens):
    """`fne run --dry-run`'s word on a train step's checkpoint: resumed where the settings and the
    images of each part (DATA's listing, split as the run splits it) are the checkpoint's, else
    started over, naming what differs; no checkpoint, nothing to say. It opens no image: files
    the cache's manifest has no content key of (the split needs them) are not hashed, and the
    note says it would check the images."""
    import shutil

    from fne.data.manifest import attach_keys
    from fne.training.rerun import rerun_note
    from fne.training.train import train

    from .conftest import age

    data, out = tmp_path / "data", tmp_path / "run"
    age(shutil.copytree(digits_folder, data))  # files the manifest vouches for once hashed
    opts = dict(weights="random", save_every=1, val_fraction=0.0, cache=str(tmp_path / "cache"), **FAST)
    assert rerun_note(str(data), "frozen", out, epochs=1, **opts) is None
    train(str(data), "frozen", out, epochs=1, **opts)  # reads its manifest, writes none
    image_opens.clear()
    assert rerun_note(str(data), "frozen", out, epochs=3, **opts) == (
        "the rerun resumes from its checkpoint after epoch 1 of 3 if DATA's images are its own (would check "
        "images: 24 of 24 files not hashed yet)")
    assert rerun_note(str(data), "frozen", out, epochs=3, lr=0.01, **opts) == (
        "its checkpoint after epoch 1 is of another run (lr = 0.001 there, 0.01 now): the rerun starts over")
    assert not image_opens
    import fne.training.rerun as tr

    with pytest.MonkeyPatch.context() as m:  # hf: DATA not downloaded: not fetched
        m.setattr(tr, "load_dataset", lambda *a, **k: pytest.fail("a dry run fetched hf: DATA"))
        assert rerun_note("hf:someone/pets", "frozen", out, epochs=3, **opts) == (
            "the rerun resumes from its checkpoint after epoch 1 of 3 if DATA's images are its own (would check "
            "images: hf:someone/pets is not downloaded)")
    attach_keys(load_dataset(str(data)), opts["cache"])  # hashed and kept, as fne fit and fne extract do
    image_opens.clear()
    assert rerun_note(str(data), "frozen", out, epochs=3, **opts) == (
        "the rerun resumes from its checkpoint after epoch 1 of 3")
    assert not image_opens
    assert rerun_note(str(data), "frozen", out, epochs=3, lr=0.01, **opts) == (
        "its checkpoint after epoch 1 is of another run (lr = 0.001 there, 0.01 now): the rerun starts over")
    next((data / "3").iterdir()).unlink()
    assert rerun_note(str(data), "frozen", out, epochs=3, **opts) == (
        f"its checkpoint after epoch 1 is of another run (DATA {data} gives other images (train 18 there, 17 now, "
        f"val 0 there, 0 now, test 6 there, 6 now)): the rerun starts over")
    gone = tmp_path / "gone"  # DATA not listed: the run fails; it said "the rerun resumes ... if DATA is unchanged"
    missing = f"DATA cannot be listed (DATA '{gone}' does not exist ("
    note = rerun_note(str(gone), "frozen", out, epochs=3, **opts)
    assert note.startswith(missing) and note.endswith(
        "): the step fails before it trains, leaving its checkpoint after epoch 1 (of these settings; its images not "
        "compared)") and "resumes" not in note
    assert rerun_note(str(gone), "frozen", out, epochs=3, lr=0.01, **opts).endswith(
        "the step fails before it trains, leaving its checkpoint after epoch 1 (of another run: lr = 0.001 there, "
        "0.01 now)")


def test_an_interrupted_fne_train_keeps_its_last_epoch_and_says_how_to_go_on(source, tmp_path, monkeypatch,
                                                                            capsys):
    """`--save-every auto` (the default) writes a checkpoint after each epoch that ends 5 minutes
    after the last one (here after every epoch); Ctrl-C then says to rerun with --resume, which
    trains the epochs left. A short run saves none: interrupted in its first epoch it says that
    nothing was kept; in a later one it keeps the last epoch that ended (it lost every epoch)."""
    import fne.training.checkpoint as ck
    import fne.training.epochs as ep

    real, calls = ep.train_one_epoch, []

    def second_epoch_interrupted(*a, **k):
        calls.append(1)
        if len(calls) % 2 == 0:
            raise KeyboardInterrupt
        return real(*a, **k)

    out = tmp_path / "run"
    args = ["train", "digits", "--mode", "frozen", "--arch", ARCH, "--weights", str(source), "--epochs", "2",
            "--image-size", "32", "--workers", "0", "--test-size", "0.9", "--no-progress", "--out", str(out)]
    monkeypatch.setattr(ep, "train_one_epoch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(args) == 130  # checkpoints 5 minutes apart: none in a run this short, and no epoch ended
    assert ("nothing was kept: no epoch was saved yet (--save-every auto); rerun the same command to start again"
            in capsys.readouterr().err)
    assert not out.exists()
    monkeypatch.setattr(ep, "train_one_epoch", second_epoch_interrupted)
    assert main(args) == 130  # epoch 1 ended: kept as the run stops
    assert (f"kept epoch 1 of 2 (the last one saved) in {out / 'checkpoint.pt'}; rerun the same command with "
            f"--resume to continue from there") in capsys.readouterr().err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    (out / "checkpoint.pt").unlink()
    monkeypatch.setattr(ck, "AUTO_EVERY_S", 0)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert (f"kept epoch 1 of 2 (the last one saved) in {out / 'checkpoint.pt'}; rerun the same command with "
            f"--resume to continue from there") in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    ran = []
    monkeypatch.setattr(ep, "train_one_epoch", lambda *a, **k: (ran.append(1), real(*a, **k))[1])
    assert main([*args, "--resume"]) == 0 and len(ran) == 1  # only the epoch left
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2
    # a new run in that folder (no --resume), interrupted before its first save: the checkpoint
    # there is the earlier run's, and the line says so instead of offering it as this run's
    monkeypatch.setattr(ck, "AUTO_EVERY_S", 3600)
    monkeypatch.setattr(ep, "train_one_epoch", second_epoch_interrupted)
    saved = (out / "checkpoint.pt").read_bytes()
    assert main([*args, "--lr", "0.01"]) == 130
    assert (f"nothing of this run was kept: no epoch of it was saved yet (--save-every auto); {out / 'checkpoint.pt'} "
            "is an earlier run's, left as it was") in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == saved


def test_train_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    args = ["train", "digits", "--mode", "frozen", "--arch", ARCH, "--weights", "random", "--epochs", "1",
            "--image-size", "32", "--workers", "0", "--no-progress", "--out", str(afile)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--out '{afile}': is a file" in err and "Traceback" not in err and afile.read_text() == "mine"


def test_train_out_inside_data_is_refused_before_any_work(tmp_path, capsys):
    """A run folder inside an image folder would become a class of the next run's DATA."""
    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    args = ["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", "random", "--epochs", "1",
            "--image-size", "32", "--workers", "0", "--no-progress", "--out", str(data / "runs")]
    assert main(args) == 2
    assert f"--out '{data / 'runs'}': is inside DATA {data}" in capsys.readouterr().err
    assert not (data / "runs").exists()


def test_train_writes_the_out_folder_it_checked(digits, tmp_path, monkeypatch):
    """out='~/run' was checked as $HOME/run (`check_target` expands it, as fit's, export's and
    predict's) and written as ./~/run, a folder named '~' in the current one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    from fne.training.train import train

    m = train(digits, "frozen", "~/run", weights="random", epochs=1, new_layers="last", **FAST)
    assert (tmp_path / "home" / "run" / "metrics.json").is_file() and not (tmp_path / "~").exists()
    assert m["options"]["out"] == str(tmp_path / "home" / "run")


def test_training_on_one_class_is_one_clear_line(tmp_path, capsys):
    from .conftest import write_digits

    data = write_digits(tmp_path / "one", per_class=6, classes=1)
    args = ["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", "random",
            "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--mode frozen needs images of at least 2 classes, found 1 (0)" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_data_with_a_validation_part_validates_on_it(tmp_path):
    """train/ + val/ + test/: `fne fit` trains on train + val (the FNE paper's protocol), and `fne
    train` validated on a random tenth of those, as if DATA had no validation part. It now trains
    on train/, validates on val/ and tests on test/; --val-fraction 0 trains on both."""
    from fne.training.train import train

    from .conftest import write_digits

    data = write_digits(tmp_path / "d", per_class=9, classes=3, split=True)  # 6 train + 3 test per class
    for c in range(3):  # two of each class's training images become its validation part
        (data / "val" / str(c)).mkdir(parents=True)
        for f in sorted((data / "train" / str(c)).iterdir())[:2]:
            f.rename(data / "val" / str(c) / f.name)
    kw = dict(weights="random", epochs=1, **FAST)
    m = train(str(data), "frozen", tmp_path / "run", **kw)
    assert (m["n_train"], m["n_val"], m["n_test"]) == (12, 6, 9)
    assert m["validation"] == "DATA's validation part" and m["split_protocol"] == "predefined"
    m0 = train(str(data), "frozen", tmp_path / "run0", val_fraction=0, **kw)
    assert (m0["n_train"], m0["n_val"], m0["n_test"], m0["validation"]) == (18, 0, 9, None)
    m2 = train(str(data / "train"), "frozen", tmp_path / "run2", val_fraction=0.5, **kw)  # no split: drawn
    assert m2["validation"] == "0.5 of the training images" and m2["n_val"] > 0


# ------------------------------------------------------- augmentation on the device (issue 19)


def test_device_crop_boxes_follow_random_resized_crop_on_the_original_image():
    from fne.training.augment import crop_boxes

    torch.manual_seed(0)
    n = 4000
    for a in (0.3, 0.75, 1.0, 1.6, 3.0):  # width / height of the original images
        b = crop_boxes(torch.full((n,), a)).double()  # fractions of the width and height
        assert (b >= -1e-6).all() and (b <= 1 + 1e-6).all()
        w, h = (b[:, 2] - b[:, 0]) * a, b[:, 3] - b[:, 1]  # in the original's units (a x 1)
        ratio = w / h
        assert (ratio >= 3 / 4 - 1e-4).all() and (ratio <= 4 / 3 + 1e-4).all()
        frac = w * h / a
        if 0.75 <= a <= 4 / 3:  # every try fits sometimes: area fractions fill the scale range
            assert (frac >= 0.25 - 1e-4).all() and (frac <= 1 + 1e-4).all()
            assert frac.min() < 0.3 and frac.max() > 0.9
            assert b[:, 0].std() > 0.05  # positions spread over the image, not always centred
    assert torch.equal(crop_boxes(torch.ones(8), generator=torch.Generator().manual_seed(3)),
                       crop_boxes(torch.ones(8), generator=torch.Generator().manual_seed(3)))


def _batch(pixels=None, raw=(), aspect=None):
    from fne.extraction import reader

    n = (0 if pixels is None else len(pixels)) + len(raw)
    npix = n - len(raw)
    packed, ends = reader.pack_raw([r.numpy().tobytes() for r in raw])
    return {"idx": list(range(n)), "keys": [f"k{i}" for i in range(n)], "pixels": pixels,
            "pix_pos": list(range(npix)), "raw": packed, "raw_ends": ends, "raw_pos": list(range(npix, n)), "bad": [],
            "aspect": aspect if aspect is not None else torch.ones(n)}


def test_device_augment_cuts_each_box_and_flips_about_half():
    from fne.training.augment import DeviceAugment

    torch.manual_seed(1)
    side, size, n = 48, 16, 64
    ramp = torch.arange(side, dtype=torch.float32).mul(255 / (side - 1)).round().to(torch.uint8)
    x = ramp.view(1, 1, 1, side).expand(n, 3, side, side).contiguous()
    out, idx = DeviceAugment(size, side)(_batch(x), torch.device("cpu"), [])
    assert out.shape == (n, 3, size, size) and out.dtype == torch.float32 and idx == list(range(n))
    d = out[:, 0, size // 2].diff(dim=-1)  # one row of each crop: a ramp up (kept) or down (flipped)
    up, down = (d >= 0).all(1), (d <= 0).all(1)
    assert (up | down).all()
    assert 16 <= int(down.sum()) <= 48
    assert out.min() >= 0 and out.max() <= 255


def test_device_decoded_and_squashed_images_get_the_same_crop():
    """A JPEG decoded on the device and the same picture squashed in a worker: same box, same
    flip (same seed) -> nearly the same pixels; a file no decoder reads is named in `bad`."""
    import io

    from PIL import Image

    from fne.data.datasets import read_image
    from fne.training.augment import DeviceAugment, Squash

    yy, xx = np.mgrid[0:60, 0:90]
    img = Image.fromarray(np.stack([xx * 2.8, yy * 4.2, (xx + yy) * 1.6], -1).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    raw = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    junk = torch.frombuffer(bytearray(b"\xff\xd8not a jpeg"), dtype=torch.uint8)
    sq = Squash(48)(read_image(io.BytesIO(buf.getvalue())))
    aug, cpu = DeviceAugment(24, 48), torch.device("cpu")
    torch.manual_seed(5)
    a, ia = aug(_batch(raw=[raw, junk], aspect=torch.tensor([1.5, 1.0])), cpu, bad := [])
    torch.manual_seed(5)
    b, ib = aug(_batch(sq[None], raw=[junk], aspect=torch.tensor([1.5, 1.0])), cpu, [])
    assert ia == ib == [0] and a.shape == b.shape == (1, 3, 24, 24)
    assert float((a - b).abs().mean()) < 6.0  # the squash resamples once more
    assert len(bad) == 1 and bad[0][:2] == (1, "k1")


def test_device_augment_crops_a_batch_of_any_sizes_in_one_call_as_pil_resizes_each_box(monkeypatch):
    """Device-decoded JPEGs of several sizes are cropped in one call, each crop what PIL's
    antialiased bilinear resize of its box gives (torchvision's RandomResizedCrop on a PIL
    image), mirrored where flipped, within a rounding step."""
    import io

    from PIL import Image

    from fne.backbones import resample
    from fne.devices import decode_jpegs_rgb
    from fne.training import augment

    sizes = [(90, 60), (60, 90), (90, 60), (90, 60), (70, 50)]
    raw = []
    for j, (w, h) in enumerate(sizes):
        rng = np.random.default_rng(j)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        raw.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    calls, real = [], resample._resize
    monkeypatch.setattr(resample, "_resize", lambda plans, *a: calls.append(len(plans)) or real(plans, *a))
    aspect = torch.tensor([w / h for w, h in sizes])
    torch.manual_seed(3)
    boxes = augment.crop_boxes(aspect)
    flip = torch.rand(len(sizes)) < 0.5
    torch.manual_seed(3)
    out, idx = augment.DeviceAugment(24, 48)(_batch(raw=raw, aspect=aspect), torch.device("cpu"), [])
    assert calls == [5] and idx == list(range(5)) and out.shape == (5, 3, 24, 24)
    assert 0 < int(flip.sum()) < 5
    for p, (w, h) in enumerate(sizes):
        # decoded as DeviceAugment decodes (TorchCodec where installed: torchvision 0.29 deprecates its own)
        img = Image.fromarray(decode_jpegs_rgb([raw[p]], torch.device("cpu"))[0].permute(1, 2, 0).numpy())
        box = tuple(float(v) for v in boxes[p].double() * torch.tensor([w, h, w, h], dtype=torch.float64))
        want = np.array(img.resize((24, 24), Image.BILINEAR, box=box)).transpose(2, 0, 1)
        want = torch.from_numpy(want[..., ::-1].copy() if flip[p] else want).float()
        diff = (out[p] - want).abs()  # PIL holds the box in float32, and sums in integers
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.05


def test_train_with_device_augmentation_runs_and_repeats_itself(digits, source, tmp_path):
    from fne.training.train import train

    kw = dict(weights=str(source), epochs=1, lr=0.01, **FAST)
    m1 = train(digits, "frozen", tmp_path / "a", augment_on="device", **kw)
    train(digits, "frozen", tmp_path / "b", augment_on="device", **kw)
    m3 = train(digits, "frozen", tmp_path / "c", augment_on="cpu", **kw)
    assert m1["augment_on"] == "device" and m3["augment_on"] == "cpu"
    a, b, c = (torch.load(tmp_path / r / "model.pt", weights_only=True)["_fc.weight"] for r in "abc")
    assert torch.equal(a, b)  # crops drawn from the seeded CPU generator
    assert not torch.equal(a, c)  # the other path drew other crops
    assert m1["history"][0]["img_s"] > 0


def test_decoding_ahead_on_a_thread_changes_no_weight(digits_jpegs, source, tmp_path, monkeypatch):
    """On CUDA `--augment-on device` decodes on a thread, crops and flips on another, ahead of
    the steps, the crops and flips drawn in batch order from a generator of their own: the same weights as
    in line (the thread forced here on the CPU)."""
    from fne.extraction import ahead, reader
    from fne.training import epochs
    from fne.training.train import train

    kw = dict(weights=str(source), epochs=1, lr=0.01, augment_on="device", **FAST)
    train(digits_jpegs, "frozen", tmp_path / "inline", **kw)
    threads = []

    class Threaded(ahead.Ahead):
        def __init__(self, items, fn, ahead=0, device=None, name="fne-ahead"):
            super().__init__(items, lambda b: threads.append(threading.current_thread().name) or fn(b), 2, device,
                             name)

    monkeypatch.setattr(reader, "Ahead", Threaded)
    monkeypatch.setattr(epochs, "Ahead", Threaded)
    train(digits_jpegs, "frozen", tmp_path / "ahead", **kw)
    a, b = (torch.load(tmp_path / r / "model.pt", weights_only=True)["_fc.weight"] for r in ("inline", "ahead"))
    assert threads and set(threads) == {"fne-decode", "fne-ahead"}  # decoded on one, cropped on the other
    assert torch.equal(a, b)


def test_train_workers_default_like_extract_on_cuda():
    from fne.devices import default_workers
    from fne.training.train import TrainConfig, _workers

    cfg = TrainConfig(data="digits", mode="frozen", out="x")
    assert _workers(cfg, torch.device("cuda")) == default_workers(torch.device("cuda"))
    assert _workers(cfg, torch.device("cpu")) <= 4
    cfg.workers = 3
    assert _workers(cfg, torch.device("cuda")) == 3


def test_bad_augment_on_is_one_clear_error(digits, tmp_path):
    from fne.training.train import train

    with pytest.raises(FneError, match=r"unknown augment_on='gpu'; choose from auto, cpu, device"):
        train(digits, "frozen", tmp_path / "run", augment_on="gpu", **FAST)


def test_device_augmentation_reads_jpegs_as_bytes_others_in_workers_and_names_the_unreadable(tmp_path, monkeypatch):
    """A folder of JPEGs, PNGs and one broken JPEG through `--augment-on device` with a worker:
    the run trains, evaluation decodes its JPEGs on the device too (center crops, as `fne
    extract --decode device`), and the broken file is named in `skipped`."""
    from PIL import Image

    from fne.extraction import reader
    from fne.training.train import train

    evaluated, real = [], reader.resized

    def resized(raw, imgs, dev, prep, dtype=None):
        out = real(raw, imgs, dev, prep, dtype=dtype)
        evaluated.extend(tuple(x.shape) for x in out if not isinstance(x, str))
        return out

    monkeypatch.setattr(reader, "resized", resized)

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for k in range(10):
            img = Image.fromarray(rng.integers(0, 255, (30 + k, 40, 3), dtype=np.uint8))
            img.save(tmp_path / "data" / c / f"{k}.{'png' if k % 3 == 0 else 'jpg'}")
    (tmp_path / "data" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    m = train(str(tmp_path / "data"), "frozen", tmp_path / "run", augment_on="device", epochs=1,
              test_size=0.2, **{**FAST, "workers": 1, "weights": "random"})
    assert m["augment_on"] == "device"
    assert len(m["skipped"]) == 1 and "broken.jpg" in next(iter(m["skipped"]))
    assert m["n_train"] + m["n_test"] + m["n_val"] == 20  # the images it read: as fit, the broken one not counted
    # the validation and test splits' JPEGs were decoded on the device, as center crops
    assert evaluated and set(evaluated) == {(1, 3, 32, 32)}


def test_training_with_device_augmentation_imports_no_torchvision(tmp_path):
    """Importing torchvision costs 1.0 s here and 4.8 s on the H200 machine: with the crops and
    flips on the device (the default on CUDA) and JPEG files, `fne train` decodes them through
    torchvision's operators (`devices.jpeg_ops`) and needs no torchvision import."""
    import subprocess
    import sys

    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for k in range(10):
            Image.fromarray(rng.integers(0, 255, (30 + k, 40, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{k}.jpg")
    code = ("import json, sys; from fne.training.train import train; "
            "m = train(sys.argv[1], 'frozen', sys.argv[2], augment_on='device', epochs=1, test_size=0.25, "
            f"device='cpu', weights='random', **{FAST!r}); "
            "print(json.dumps([m['augment_on'], m['n_train'] + m['n_val'] + m['n_test'], 'torchvision' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data"), str(tmp_path / "run")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["device", 20, False]


# ------------------------------------------------------- resume as a researcher meets it


def _weights_differ(a, b) -> list[str]:
    sa, sb = (torch.load(p / "model.pt", weights_only=True) for p in (a, b))
    return [n for n in sa if not torch.equal(sa[n], sb[n])]


def test_sigterm_mid_epoch_then_resume_with_a_worker_repeats_a_run_without_one(tmp_path, monkeypatch, capsys):
    """A real SIGTERM (a scheduler's preemption) in the middle of epoch 2 of a run reading with a
    loader worker, then `--resume`: the same weights, history and predictions as a run never
    interrupted and reading in the main process (the random crops are drawn per image, from the
    epoch's seed and the image, not from whichever process decodes it)."""
    import os
    import signal

    import fne.training.epochs as ep
    from fne.training.train import train

    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=12, classes=4)
    opts = dict(epochs=3, lr=0.05, scheduler="cosine", batch_size=8, image_size=32, save_every=1, seed=3)
    train(str(data), "finetune", tmp_path / "a", arch=ARCH, weights="random", workers=0, progress=False, **opts)

    real_ready, real_epoch, epochs_begun, armed = ep._ready, ep.train_one_epoch, [], []

    def ready(*a, **k):
        for n, batch in enumerate(real_ready(*a, **k)):
            if n == 1 and armed:  # the second batch of the armed epoch
                armed.clear()
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    def train_one_epoch(*a, **k):
        epochs_begun.append(1)
        if len(epochs_begun) == 2:
            armed.append(1)
        return real_epoch(*a, **k)

    monkeypatch.setattr(ep, "_ready", ready)
    monkeypatch.setattr(ep, "train_one_epoch", train_one_epoch)
    args = ["train", str(data), "--mode", "finetune", "--arch", ARCH, "--weights", "random", "--workers", "1",
            "--no-progress", "--out", str(tmp_path / "b"), *[f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]]
    assert main(args) == 128 + signal.SIGTERM
    assert f"terminated; kept epoch 1 of 3 (the last one saved) in {tmp_path / 'b' / 'checkpoint.pt'}; rerun" in (
        capsys.readouterr().err)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert main([*args, "--resume"]) == 0 and len(epochs_begun) == 4  # 2 before the signal, then 2 and 3

    assert _weights_differ(tmp_path / "a", tmp_path / "b") == []
    ma, mb = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in "ab")
    for k in ("accuracy", "mean_class_accuracy", "best_epoch", "val_accuracy"):
        assert ma[k] == mb[k], k
    assert [h["train_loss"] for h in ma["history"]] == [h["train_loss"] for h in mb["history"]]
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()


@pytest.fixture(scope="module")
def resumable_run(source, tmp_path_factory):
    """A 2-epoch run from `source` that kept a checkpoint after each epoch, on a folder of 4 x 12 digits."""
    from fne.training.train import train

    from .conftest import write_digits

    root = tmp_path_factory.mktemp("resumable")
    data = write_digits(root / "data", per_class=12, classes=4)
    train(str(data), "frozen", root / "run", arch=ARCH, weights=str(source), epochs=2, save_every=1,
          image_size=32, workers=0, progress=False)
    return data, root / "run"


def test_a_train_runs_network_given_to_another_arch_names_the_arch_it_was_trained_as(resumable_run, capsys):
    """`fne export DATA --weights RUN/model.pt` (or extract, train) without the run's --arch said only
    that the file does not fit vgg16, the default: it now names the arch the run's metrics.json gives."""
    data, run = resumable_run
    model = run / "model.pt"
    with pytest.raises(WeightsError, match=rf"does not fit arch='vgg16' .*; {re.escape(str(run / 'metrics.json'))}: "
                                           rf"trained as arch='{ARCH}'$"):
        backbones.load_backbone("vgg16", str(model))
    assert main(["train", str(data), "--mode", "frozen", "--weights", str(model), "--out", str(run.parent / "x"),
                 "--image-size", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fne train: error: --weights") and err.endswith(f"metrics.json: trained as --arch {ARCH}")
    assert "another architecture" not in err and "\n" not in err
    assert not (run.parent / "x").exists()


def test_extract_with_a_train_runs_network_at_another_size_notes_the_size_it_trained_at(resumable_run, tmp_path,
                                                                                       capsys):
    """`fne extract --weights RUN/model.pt` at a size other than the run's (32, metrics.json): one
    note naming that size and --image-size; the rows are extracted all the same."""
    from fne.extraction.extract import extract

    data, run = resumable_run
    model, cache = run / "model.pt", str(tmp_path / "cache")
    args = ["extract", str(data), "--arch", ARCH, "--weights", str(model), "--cache", cache, "--precision", "fp32",
            "--device", "cpu", "--workers", "0", "--no-progress"]
    assert main(args) == 0  # its default size, 224
    notes = [x for x in capsys.readouterr().out.splitlines() if x.startswith("note:")]
    assert notes == [f"note: {model} is the network of a `fne train` run that trained at 32 x 32 "
                     f"({run / 'metrics.json'}); these rows are at 224 x 224: give --image-size 32 to match"]
    assert main([*args, "--image-size", "32"]) == 0
    assert "note:" not in capsys.readouterr().out
    r = extract(data, arch=ARCH, weights=str(model), cache=cache, image_size=48, precision="fp32", device="cpu",
                workers=0, progress=False)
    assert r.n_computed == 48 and capsys.readouterr().out.splitlines() == [
        f"note: {model} is the network of a `fne train` run that trained at 32 x 32 ({run / 'metrics.json'}); these "
        f"rows are at 48 x 48: give image_size=32 to match"]
    other = tmp_path / "other" / "model.pt"  # a model.pt of no fne train run (no metrics.json): no note
    other.parent.mkdir()
    other.write_bytes(model.read_bytes())
    extract(data, arch=ARCH, weights=str(other), cache=cache, image_size=48, precision="fp32", device="cpu",
            workers=0, progress=False)
    assert "note:" not in capsys.readouterr().out


def test_the_trained_size_note_is_said_by_each_call_that_chooses_the_size_stored_rows_or_not(resumable_run,
                                                                                             tmp_path, capsys):
    """The note on rows at another size than a `fne train` network trained at was said only where
    rows were computed: `fne extract` and `fne fit` on stored rows said nothing, and `fne predict`
    said it (with "give --image-size 32", which predict does not take) for new images only. Now
    extract and fit say it once a call, rows computed or stored (`fit --extract` once, not once
    for fit and once for its extraction); predict, whose rows are at the fitted model's size (fit
    said it), says it for no image."""
    from PIL import Image, ImageOps

    data, run = resumable_run
    model = run / "model.pt"
    said = (f"note: {model} is the network of a `fne train` run that trained at 32 x 32 ({run / 'metrics.json'}); "
            f"these rows are at 48 x 48: give --image-size 32 to match")

    def opts(cache):
        return ["--arch", ARCH, "--weights", str(model), "--image-size", "48", "--cache", str(tmp_path / cache),
                "--precision", "fp32", "--device", "cpu", "--workers", "0", "--no-progress"]

    def notes():
        return [x for x in capsys.readouterr().out.splitlines() if x.startswith("note:")]

    fit = ["fit", str(data), "--features", "fne", "--splits", "1"]
    assert main(["extract", str(data), *opts("c")]) == 0 and notes() == [said]
    assert main(["extract", str(data), *opts("c")]) == 0 and notes() == [said]  # every row stored
    assert main([*fit, *opts("c"), "--out", str(tmp_path / "fit")]) == 0 and notes() == [said]
    assert main([*fit, *opts("fresh"), "--extract", "--out", str(tmp_path / "fit2")]) == 0 and notes() == [said]
    new = tmp_path / "new" / "0"
    new.mkdir(parents=True)
    for f in sorted((data / "0").iterdir())[:3]:  # images the cache holds no row of
        ImageOps.mirror(Image.open(f)).save(new / f.name)
    for images in (new.parent, new.parent, data):  # rows computed, then stored; DATA's rows stored
        assert main(["predict", str(tmp_path / "fit"), str(images), "--out", str(tmp_path / "p.csv"),
                     "--workers", "0", "--no-progress"]) == 0
        assert notes() == []


@pytest.mark.parametrize("case, expected", [
    ("truncated", "cannot read {ckpt}: truncated, damaged or not a torch file; start anew without --resume"),
    ("state dict", "{ckpt} is not a checkpoint of fne train (it lacks args, best, epoch"),
    ("fewer epochs", "--epochs 1 now, but it has trained 2 epochs"),
    ("other images", "DATA {data} gives other images (train 32 there, 34 now"),
    ("other lr", "belongs to another run: --lr 0.001 there, 0.01 now"),
    # a switch as typed: it said `--augment True there, False now`, a flag no one can type
    ("no augment", "belongs to another run: without --no-augment there, --no-augment now"),
    ("older checkpoint", "belongs to another run: DATA '{was}' there, '{data}' now"),  # no images recorded
    # the same names and labels, other bytes: `fne run` took such a finished run's checkpoint up as
    # the rerun of a step whose images changed, and only tested its old network on them
    ("changed image", "DATA {data}: its images changed since (the same names and labels, other contents)"),
    ("changed weights", "belongs to another run: --weights '{weights}': the file changed since (fingerprint file-"),
])
def test_resume_refuses_another_run_or_a_bad_file_in_one_line_before_any_work(case, expected, resumable_run, source,
                                                                              tmp_path, monkeypatch, capsys):
    import shutil

    import fne.training.train as tr

    was, run = resumable_run
    work, data = tmp_path / "run", was
    shutil.copytree(run, work)
    ckpt, epochs = work / "checkpoint.pt", "2"
    if case == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif case == "state dict":
        shutil.copy(work / "model.pt", ckpt)
    elif case == "fewer epochs":
        epochs = "1"
    elif case == "other images":
        data = shutil.copytree(data, tmp_path / "data")
        from PIL import Image

        for k in range(3):  # new images of class 0
            Image.new("L", (8, 8), 60 * k).save(data / "0" / f"new{k}.png")
    elif case == "older checkpoint":
        data = shutil.copytree(data, tmp_path / "data")
        old = torch.load(ckpt, weights_only=True)
        torch.save({k: v for k, v in old.items() if k not in ("images", "ran_on")}, ckpt)
    elif case == "changed image":
        data = shutil.copytree(data, tmp_path / "data")
        from PIL import Image, ImageOps

        first = sorted(data.rglob("*.png"))[0]
        ImageOps.invert(Image.open(first).convert("L")).save(first)  # another image under its name
    elif case == "changed weights":  # the file the run imported, replaced by other weights under its name
        source = shutil.copy(source, tmp_path / "w.pt")
        old = torch.load(ckpt, weights_only=True)
        torch.save({**old, "weights_file": str(source), "args": {**old["args"], "weights": str(source)}}, ckpt)
        state = torch.load(source, weights_only=True)
        torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, source)
    monkeypatch.setattr(tr, "_model", lambda *a: pytest.fail("the model was built before the checkpoint was read"))
    args = ["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", str(source), "--epochs", epochs,
            "--image-size", "32", "--workers", "0", "--no-progress", "--out", str(work), "--resume",
            *(["--lr", "0.01"] if case == "other lr" else []), *(["--no-augment"] if case == "no augment" else [])]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert expected.format(ckpt=ckpt, data=data, was=was, weights=source) in err


def test_resume_takes_data_spelt_otherwise_and_more_epochs_trains_only_those(resumable_run, source, tmp_path,
                                                                            monkeypatch, capsys):
    """DATA by another path to the same images (moved, or relative instead of absolute), and
    --weights by another path to the same file, resume;
    --epochs above the checkpoint's extends the run (without an lr schedule, as torchvision's
    references allow), training only the new epochs. Where --precision auto now means another
    precision (another machine), it goes on and says so."""
    import os
    import shutil

    import fne.training.epochs as ep
    import fne.training.train as tr

    data, run = resumable_run
    moved = shutil.copytree(data, tmp_path / "moved")
    work = shutil.copytree(run, tmp_path / "run")
    real, ran = ep.train_one_epoch, []
    monkeypatch.setattr(ep, "train_one_epoch", lambda *a, **k: (ran.append(1), real(*a, **k))[1])
    monkeypatch.chdir(tmp_path)
    before = torch.load(run / "checkpoint.pt", weights_only=True)["ran_on"]
    other = {"bf16": "fp32"}.get(before["precision"], "bf16")
    monkeypatch.setattr(tr, "resolve_precision", lambda *a: other)
    args = ["train", os.path.relpath(moved), "--mode", "frozen", "--arch", ARCH, "--weights", os.path.relpath(source),
            "--epochs", "3", "--image-size", "32", "--workers", "0", "--no-progress", "--out", str(work), "--resume"]
    assert main(args) == 0 and len(ran) == 1
    m = json.loads((work / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3] and m["epochs"] == 3
    assert m["epoch_choice"].startswith("highest val_accuracy") and m["precision"] == other
    out = capsys.readouterr().out
    assert (f"note: epochs 1-2 ran on cpu in {before['precision']}, augmenting on cpu, the rest runs on cpu in "
            f"{other}, augmenting on cpu: not bit-identical") in out
    assert "(give --device, --precision, --augment-on to match)" in out
    # the new layer's weights are the checkpoint's, not drawn anew (it said "randomly initialised")
    assert f"new layers (weights from {work / 'checkpoint.pt'}, as every layer's): _fc" in out
    assert "randomly initialised" not in out
    # from Python, the note names the keywords
    tr.train(str(moved), "frozen", work, arch=ARCH, weights=str(source), epochs=4, image_size=32, workers=0,
             progress=False, resume=True)
    assert "not bit-identical to an uninterrupted run (give device, precision, augment_on to match)" in \
        capsys.readouterr().out


def test_a_resumed_scratch_run_says_its_weights_come_from_the_checkpoint():
    from fne.training.transfer import describe_import

    assert describe_import(None, ()) == ["scratch: every layer randomly initialised (Xavier-uniform, zero biases)"]
    assert describe_import(None, (), "run/checkpoint.pt") == ["scratch: every layer's weights from run/checkpoint.pt"]


def test_resume_takes_a_default_given_as_a_default_left_out():
    """`fne train --mode frozen` resumed with `--weights imagenet`, `--image-size 224` or the
    precision `--precision auto` ran at (the defaults it ran with) is the same run: it was refused
    as "--weights None there, 'imagenet' now"; another value is still refused, in the words of the
    values the runs took."""
    from dataclasses import asdict

    from fne.devices import resolve_precision
    from fne.options import TrainConfig
    from fne.training.checkpoint import mismatch

    def cfg(**k):
        return TrainConfig(data="d", mode=k.pop("mode", "frozen"), out="r", arch=ARCH, **k)

    ckpt = {"args": asdict(cfg()), "epoch": 1}
    assert mismatch(ckpt, cfg(weights="imagenet", image_size=224)) == []
    assert mismatch(ckpt, cfg(weights="random", image_size=64)) == ["--weights 'imagenet' there, 'random' now",
                                                                     "--image-size 224 there, 64 now"]
    scratch = {"args": asdict(cfg(mode="scratch")), "epoch": 1}
    assert mismatch(scratch, cfg(mode="scratch", weights="random")) == []
    # --precision auto, and the precision it ran at given by name, are one run; another is not
    here = resolve_precision("auto", torch.device("cpu"))
    ran = {**ckpt, "ran_on": {"device": "cpu", "precision": here, "augment_on": "cpu"}}
    assert mismatch(ran, cfg(precision=here, device="cpu")) == []
    other = {"bf16": "fp32"}.get(here, "bf16")
    assert mismatch(ran, cfg(precision=other, device="cpu")) == [f"--precision 'auto' there, {other!r} now"]


def test_resume_says_an_option_left_unset_as_its_absence():
    """A checkpoint of a run without --train-per-class, resumed with it (or the other way round),
    is refused saying the unset option as a person writes it: the flag's absence on the command
    line, "not set" in Python and in a pipeline file's words (it read `--train-per-class None
    there`, `train_per_class=None there`, `train_per_class = (unset) there`)."""
    from dataclasses import asdict

    from fne.options import TrainConfig
    from fne.training.checkpoint import mismatch

    def cfg(**k):
        return TrainConfig(data="d", mode="frozen", out="r", arch=ARCH, **k)

    unset, five = {"args": asdict(cfg()), "epoch": 1}, {"args": asdict(cfg(train_per_class=5)), "epoch": 1}
    assert mismatch(unset, cfg(train_per_class=5)) == ["without --train-per-class there, --train-per-class 5 now"]
    assert mismatch(five, cfg()) == ["--train-per-class 5 there, without --train-per-class now"]
    assert mismatch(unset, cfg(train_per_class=5), python=True) == ["train_per_class not set there, 5 now"]
    assert mismatch(five, cfg(), python=True) == ["train_per_class=5 there, not set now"]
    assert mismatch(unset, cfg(train_per_class=5), python=True, in_file=True) == ["train_per_class not set there, 5 now"]
    assert mismatch(five, cfg(), python=True, in_file=True) == ["train_per_class = 5 there, not set now"]


def test_a_new_run_over_a_checkpoint_says_how_to_resume_in_the_callers_words(resumable_run, source, tmp_path,
                                                                             capsys):
    """The note of a run that starts anew where a checkpoint is: --resume on the command line,
    resume=True from Python (`fne.progress.said`). A run that saves none (--save-every 0) removes
    it as it ends, as the note says: it was left beside the new run's outputs, for a later --resume
    (or `fne run`) to take for this run's."""
    import shutil

    from fne.training.train import train

    data, run = resumable_run
    cli, py = shutil.copytree(run, tmp_path / "cli"), shutil.copytree(run, tmp_path / "py")
    assert main(["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", str(source), "--epochs", "2",
                 "--image-size", "32", "--workers", "0", "--no-progress", "--save-every", "0", "--out", str(cli)]) == 0
    out = capsys.readouterr().out
    assert (f"note: starting a new run; {cli / 'checkpoint.pt'} is replaced at the next save, or removed at the "
            f"run's end if none comes (--resume continues it)") in out
    assert (cli / "model.pt").is_file() and not (cli / "checkpoint.pt").exists()
    assert out.endswith(f"wrote {cli}/metrics.json, predictions.csv and model.pt\n")  # the files it left
    # --epochs 1 where it trained 2: --resume would refuse it, so it is not advised
    train(str(data), "frozen", py, arch=ARCH, weights=str(source), epochs=1, image_size=32, workers=0,
          progress=False, save_every=0)
    assert (f"note: starting a new run; {py / 'checkpoint.pt'} is replaced at the next save, or removed at the "
            f"run's end if none comes (another run's: resume=True would refuse it)") in capsys.readouterr().out
    assert not (py / "checkpoint.pt").exists()
    # resume="auto" (`fne run`'s) over another run's checkpoint: resume=True would refuse it, so not advised
    auto = shutil.copytree(run, tmp_path / "auto")
    train(str(data), "frozen", auto, arch=ARCH, weights=str(source), epochs=1, image_size=32, workers=0,
          progress=False, save_every=0, resume="auto", lr=0.5)
    out = capsys.readouterr().out
    assert (f"note: starting a new run; {auto / 'checkpoint.pt'} (another run's settings or images, another fne "
            f"release's, or unreadable) is replaced at the next save, or removed at the run's end if none comes\n") \
        in out and "continues it" not in out
    assert not (auto / "checkpoint.pt").exists()
    # a run that saves one replaces it: the folder's checkpoint is the new run's
    again = shutil.copytree(run, tmp_path / "again")
    before = (again / "checkpoint.pt").read_bytes()
    train(str(data), "frozen", again, arch=ARCH, weights=str(source), epochs=1, image_size=32, workers=0,
          progress=False, save_every=1, lr=0.5)
    assert (again / "checkpoint.pt").read_bytes() != before


def test_fne_run_takes_up_no_checkpoint_of_another_fne_release(resumable_run, source, tmp_path, monkeypatch, capsys):
    """A pipeline step reruns after a new fne release (its identity holds the version); its
    finished checkpoint matched every setting, so `resume="auto"` took it up at its last epoch
    and only tested the old release's network. It now trains anew; `fne run --dry-run` says so;
    an explicit --resume still continues it (the user's choice)."""
    import shutil

    import fne
    from fne.training import checkpoint
    from fne.training.rerun import rerun_note
    from fne.training.train import train

    data, run = resumable_run
    assert checkpoint.read(run / "checkpoint.pt")["fne"] == fne.__version__
    kw = dict(arch=ARCH, weights=str(source), epochs=2, save_every=1, image_size=32, workers=0)
    same = shutil.copytree(run, tmp_path / "same")
    train(str(data), "frozen", same, resume="auto", **kw)  # progress: its "resumed" line
    assert "resumed" in capsys.readouterr().out
    monkeypatch.setattr(fne, "__version__", "9.9")
    note = rerun_note(str(data), "frozen", run, **kw)
    assert f"written by fne {checkpoint.read(run / 'checkpoint.pt')['fne']}, this is fne 9.9): the rerun starts over" in note
    newer = shutil.copytree(run, tmp_path / "newer")
    train(str(data), "frozen", newer, resume="auto", **kw)
    out = capsys.readouterr().out
    assert "another fne release's" in out and "resumed" not in out
    assert checkpoint.read(newer / "checkpoint.pt")["fne"] == "9.9"
    explicit = shutil.copytree(run, tmp_path / "explicit")
    train(str(data), "frozen", explicit, resume=True, **kw)
    assert "resumed" in capsys.readouterr().out


def test_resume_warns_of_a_checkpoint_written_by_other_fne_code(resumable_run, source, tmp_path, monkeypatch):
    """fne's version is 0.1.0 whatever its code: --resume continued a checkpoint written by other
    fne code in silence. The checkpoint and metrics.json record a hash of fne's sources; --resume
    over another one continues (the user may have upgraded on purpose) and says so, naming both."""
    import json
    import shutil
    import warnings

    from fne.metrics import code_hash
    from fne.training import checkpoint
    from fne.training.train import train

    data, run = resumable_run
    here = code_hash()
    assert here and checkpoint.read(run / "checkpoint.pt")["fne_code"] == here
    assert json.loads((run / "metrics.json").read_text())["versions"]["fne_code"] == here
    kw = dict(arch=ARCH, weights=str(source), epochs=2, save_every=1, image_size=32, workers=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same code: no word
        train(str(data), "frozen", shutil.copytree(run, tmp_path / "same"), resume=True, **kw)
    monkeypatch.setattr(checkpoint, "code_hash", lambda: "0123456789abcdef")  # fne's code edited since
    other = shutil.copytree(run, tmp_path / "other")
    with pytest.warns(UserWarning, match=re.escape(
            f"{other / 'checkpoint.pt'} was written by other fne code (source hash {here} there, 0123456789abcdef "
            f"now): continuing it, its epochs so far trained by that code")):
        train(str(data), "frozen", other, resume=True, **kw)
    assert (other / "model.pt").is_file()


def test_a_class_with_one_training_image_is_named_and_val_fraction_0_trains_it(tmp_path, capsys):
    """fne fit trains on a class with a single training image; fne train's validation part cannot
    hold it out, so it says which class, and --val-fraction 0 (the last epoch kept) trains."""
    import shutil

    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=6, classes=3, split=True)
    (data / "train" / "lonely").mkdir()
    shutil.copy(next((data / "train" / "0").iterdir()), data / "train" / "lonely" / "only.png")
    args = ["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", "random", "--epochs", "1",
            "--image-size", "32", "--workers", "0", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--val-fraction 0.1: 1 class(es) have a single training image (lonely)" in err and "\n" not in err
    assert main([*args, "--val-fraction", "0"]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_train"] == 13 and m["n_val"] == 0 and m["epoch_choice"] == "last (no validation part)"


def test_fne_predict_applies_a_train_runs_network_as_its_test_pass_did(resumable_run, tmp_path, capsys):
    """`fne predict RUN DATA` with a `fne train` run: the network of model.pt, the run's test view;
    on the run's own test images, the scores of its predictions.csv."""
    data, run = resumable_run
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(data), "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr()
    assert f"wrote 48 predictions to {out}, accuracy " in said.out
    # its own DATA: the 36 images that are not its test images are named, as no test accuracy
    assert "36 of 48 images of DATA are not among the test images of" in said.err
    new = {r["path"]: r for r in _csv(out)}
    ran = _csv(run / "predictions.csv")
    assert len(new) == 48 and len(ran) == 12
    for r in ran:  # the same images, as the run's pass scored them
        n = new[r["path"]]
        assert n["predicted"] == r["predicted"] and n["true"] == r["true"]
        assert np.allclose([float(n[k]) for k in r if k.startswith("score_")],
                           [float(r[k]) for k in r if k.startswith("score_")], atol=1e-5)


def test_fne_predict_top_k_with_a_train_run_names_its_best_classes_by_softmax(resumable_run, tmp_path, capsys):
    """`--top 2` with a train run's network: predicted and predicted_2 are the two highest softmax
    scores' classes; `--top` above its classes is refused in one line before any image is read."""
    data, run = resumable_run
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(data), "--out", str(out), "--no-progress", "--top", "2"]) == 0
    rows = _csv(out)
    assert len(rows) == 48 and list(rows[0])[:3] == ["path", "predicted", "predicted_2"]
    for r in rows:
        scores = {k.removeprefix("score_"): float(v) for k, v in r.items() if k.startswith("score_")}
        assert [r["predicted"], r["predicted_2"]] == sorted(scores, key=lambda c: -scores[c])[:2]
    classes = len(json.loads((run / "metrics.json").read_text())["classes"])
    capsys.readouterr()
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "q.csv"), "--top", str(classes + 1)]) == 2
    assert capsys.readouterr().err.strip() == f"fne predict: error: --top {classes + 1}: the model has {classes} classes"


def test_fne_predict_out_over_a_train_runs_own_file_is_refused_the_run_kept(resumable_run, tmp_path, capsys):
    """--out RUN/metrics.json (or predictions.csv, model.pt, checkpoint.pt) would have replaced the
    run's own file with predictions (its metrics.json: the run unreadable after); `fne export --out
    RUN/model.pt` its network with HDF5."""
    data, run = resumable_run
    before = {f.name: f.stat().st_mtime_ns for f in run.iterdir()}
    for name in ("metrics.json", "predictions.csv", "model.pt", "checkpoint.pt"):
        assert main(["predict", str(run), str(data), "--out", str(run / name), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"--out '{run / name}': is the {name} of the run in {run}" in err and "\n" not in err
    assert main(["export", str(data), "--out", str(run / "model.pt"), "--arch", ARCH, "--weights", "random",
                 "--cache", str(tmp_path / "cache"), "--no-progress"]) == 2
    assert "fne export writes HDF5, not .pt" in capsys.readouterr().err
    assert {f.name: f.stat().st_mtime_ns for f in run.iterdir()} == before


def test_fne_predict_with_a_train_run_it_cannot_apply_is_one_line(resumable_run, tmp_path, capsys):
    import shutil

    data, run = resumable_run
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "model.pt").write_bytes(b"not a torch file")
    assert main(["predict", str(broken), str(data), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fne predict: error: {broken / 'model.pt'}: torch.load cannot read it: it is a text file; rerun " \
                  f"`fne train` to write it again"
    assert not (tmp_path / "p.csv").exists()
    whole = (run / "model.pt").read_bytes()  # cut short (a copy that stopped): was miniz's 300-character line
    (broken / "model.pt").write_bytes(whole[:len(whole) // 2])
    assert main(["predict", str(broken), str(data), "--out", str(tmp_path / "p.csv")]) == 2
    assert "it is a damaged or truncated zip archive" in capsys.readouterr().err
    (broken / "model.pt").write_bytes(whole)  # the tensors of a network of other classes
    (broken / "metrics.json").write_text(json.dumps({**json.loads((run / "metrics.json").read_text()),
                                                     "classes": ["a", "b", "c"]}))
    assert main(["predict", str(broken), str(data), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fne predict: error: {broken / 'model.pt'}: cannot be loaded into {ARCH} with 3 classes")
    assert "\n" not in err and not (tmp_path / "p.csv").exists()
    m = json.loads((broken / "metrics.json").read_text())
    (broken / "metrics.json").write_text(json.dumps({**m, "mode": "direct"}))
    assert main(["predict", str(broken), str(data), "--out", str(tmp_path / "p.csv")]) == 2
    assert "a --mode direct run trains nothing" in capsys.readouterr().err
    # metrics.json of another tool (or hand-edited) lacking what the network is rebuilt from: was a
    # KeyError traceback
    (broken / "metrics.json").write_text(json.dumps({"kind": "train", "mode": "frozen"}))
    (broken / "model.pt").write_bytes(b"")
    assert main(["predict", str(broken), str(data), "--out", str(tmp_path / "p.csv")]) == 2
    assert capsys.readouterr().err.strip() == (f"fne predict: error: {broken}/metrics.json: lacks arch, weights, "
                                               f"classes, image_size, precision, which the network is rebuilt from; "
                                               f"is it a `fne train` run's own metrics.json?")
    (broken / "metrics.json").write_text(json.dumps([1]))
    assert main(["predict", str(broken), str(data), "--out", str(tmp_path / "p.csv")]) == 2
    assert "metrics.json: not a `fne train` run" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("field, value", [("classes", "abc"), ("classes", [1, 2, 3, 4]), ("image_size", "32"),
                                          ("image_size", 0), ("device", "tpu"), ("batch_size", -3), ("options", "x"),
                                          ("precision", "bogus"), ("weights", None)])
def test_fne_predict_and_load_refuse_a_train_runs_retyped_metrics_json_in_one_line(resumable_run, tmp_path, capsys,
                                                                                 field, value):
    """A metrics.json edited by hand (or damaged) with a value `fne train` never writes: classes
    "abc" were scored as classes a, b, c and image_size 0 at another size, said as right; "32",
    "tpu", -3, "x" ended in a traceback (int(), torch.device, the DataLoader's, .get). Each is one
    line naming the file and the field, before any network is built or CSV written."""
    import shutil

    import fne

    data, run = resumable_run
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    m = json.loads((run / "metrics.json").read_text())
    (broken / "metrics.json").write_text(json.dumps({**m, field: value}))
    said = (f"{broken}/metrics.json: its {field} not as `fne train` writes them (a damaged or hand-edited file); "
            f"put the run's own metrics.json back, or rerun `fne train`")
    assert main(["predict", str(broken), str(data), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"fne predict: error: {said}"
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(FneError) as e:
        fne.load(broken)
    assert str(e.value) == said


def test_fne_predict_of_a_train_run_refuses_an_empty_device_as_a_fit_run_does(resumable_run, tmp_path):
    """device="" ran a train run's network on the auto device (`"" or "auto"`), where a fit run's
    predict, and fne.load, refuse it as no device: the same refusal for both kinds of run."""
    import fne

    data, run = resumable_run
    with pytest.raises(OptionError, match=r"^bad device='': device must be auto, cpu, cuda\[:i\] or mps"):
        fne.predict(run, data, out=tmp_path / "p.csv", device="", progress=False)
    assert not (tmp_path / "p.csv").exists()


def test_fne_predict_of_a_train_run_on_unreadable_images_names_data_as_fit_does(resumable_run, tmp_path, capsys):
    """A folder of unreadable images: `DATA: no readable images`, as a fit run's predict says it
    (it said `predict efficientnet_lite0 frozen: no readable images`)."""
    from .conftest import write_digits

    _, run = resumable_run
    bad = write_digits(tmp_path / "bad", per_class=2, classes=2)
    for f in bad.rglob("*.png"):
        f.write_bytes(b"not an image")
    assert main(["predict", str(run), str(bad), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"fne predict: error: {bad}: no readable images"
    assert not (tmp_path / "p.csv").exists()


def test_a_resumed_run_keeps_the_unreadable_images_it_met_before(tmp_path, capsys):
    """Interrupted after its last epoch (in the test pass, say), a resumed run trains nothing
    more: the unreadable training image it met before is still named and not counted."""
    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=9, classes=3, split=True)
    (data / "train" / "0" / "broken.png").write_bytes(b"not an image")
    args = ["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", "random", "--epochs", "1",
            "--save-every", "1", "--val-fraction", "0", "--image-size", "32", "--workers", "0", "--no-progress",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert main([*args, "--resume"]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(m["skipped"]) == list(first["skipped"]) == ["train/0/broken.png"]
    assert m["n_train"] == first["n_train"] == 18


def test_a_folder_of_unreadable_images_stops_after_reading_them_before_any_epoch(tmp_path, capsys):
    """Every image unreadable: one line naming DATA, the part and how many (each was named in a
    warning), before any step, validation pass or checkpoint; the run folder is not made. It
    used to train an epoch on nothing, then stop with "val: no readable images"."""
    from fne.errors import DataError
    from fne.training.train import train

    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(6):
            (data / c / f"{i}.jpg").write_bytes(f"not a jpeg {c}{i}".encode())
    args = ["train", str(data), "--mode", "scratch", "--arch", ARCH, "--epochs", "2", "--val-fraction", "0",
            "--image-size", "32", "--workers", "0", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert "epoch 1/" not in out and err.count("fne: warning: skipped ") == 1  # one line, not one per image
    assert "fne: warning: skipped 9 images (not an image file): " in err and "and 4 more" in err
    assert err.splitlines()[-1] == (f"fne train: error: {data}: no readable images in the training part "
                                    f"(9 of 9 unreadable, named above)")
    assert not (tmp_path / "run").exists()
    with pytest.warns(UserWarning, match="skipped"), pytest.raises(
            DataError, match=r"^.*data: no readable images in the training part \(9 of 9 unreadable"):
        train(str(data), "frozen", tmp_path / "run", weights="random", epochs=1, val_fraction=0, **FAST)
    assert not (tmp_path / "run").exists()


def test_a_last_training_batch_of_one_image_is_left_out_not_a_batchnorm_traceback(tmp_path):
    """18 training images in batches of 17: the one image left over (a different one each
    epoch) is not a batch of its own, on which scratch's BatchNorm at 1 x 1 raised ValueError."""
    from fne.training.train import train

    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=6, classes=4)
    m = train(str(data), "scratch", tmp_path / "run", epochs=1, val_fraction=0, **{**FAST, "batch_size": 17})
    assert m["n_train"] == 18 and len(m["history"]) == 1


def test_batch_size_1_with_a_batchnorm_that_learns_at_1x1_is_one_line(tmp_path, capsys):
    """scratch at --batch-size 1 and a small --image-size: every batch is one image, which a
    BatchNorm layer sees at 1 x 1; it was torch's ValueError traceback. Also from Python."""
    from fne.errors import OptionError
    from fne.training.train import train

    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    args = ["train", str(data), "--mode", "scratch", "--arch", ARCH, "--epochs", "1", "--batch-size", "1",
            "--val-fraction", "0",
            "--image-size", "32", "--workers", "0", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("fne train: error: --batch-size 1: a BatchNorm layer that learns (scratch, --train-bn) cannot "
                   "train on one image it sees at 1 x 1 (at --image-size 32); give a --batch-size of 2 or more, or "
                   "a larger --image-size")
    assert not (tmp_path / "run").exists()
    with pytest.raises(OptionError, match=r"^batch_size=1: .*train_bn=True.*image_size=32\); give a batch_size of 2"):
        train(str(data), "scratch", tmp_path / "run", epochs=1, val_fraction=0, **{**FAST, "batch_size": 1})


def test_an_image_size_too_small_for_the_network_is_one_line(tmp_path, capsys):
    """SqueezeNet (as VGG-16) at --image-size 16: its last pooling has nothing left to pool; it was
    torch's RuntimeError traceback."""
    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    args = ["train", str(data), "--mode", "scratch", "--arch", "squeezenet1_0", "--epochs", "1", "--image-size",
            "16", "--val-fraction", "0", "--workers", "0", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fne train: error: --image-size 16 is too small for this network (Given input size: ")
    assert err.endswith("Output size is too small); give a larger --image-size") and "\n" not in err


def _full_disk_save(full):
    """torch.save as it fails on a full disk where `full(f)`: Python's write, then torch's own
    error ('unexpected pos') over the OSError; otherwise the real torch.save."""
    real = torch.save

    def save(obj, f, *a, **k):
        if full(f):
            f.write(b"PK\x03\x04")
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None
        return real(obj, f, *a, **k)

    return save


def test_a_full_disk_while_writing_model_pt_leaves_the_earlier_run_whole(resumable_run, source, tmp_path,
                                                                         monkeypatch):
    """predictions.csv, model.pt and metrics.json are replaced together or not at all; the full disk
    is the OSError, not the RuntimeError torch.save wraps it in (`fne.cache.fs.through_file`)."""
    import shutil

    import fne.training.train as ft

    data, run = resumable_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "checkpoint.pt"}
    monkeypatch.setattr(ft.torch, "save", _full_disk_save(lambda f: getattr(f, "name", str(f)).endswith("model.pt")))
    with pytest.raises(OSError, match="No space left") as e:
        ft.train(str(data), "frozen", out, arch=ARCH, weights=str(source), epochs=1, seed=3, image_size=32,
                 workers=0, progress=False)
    assert e.value.filename == str(out / "model.pt")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "checkpoint.pt"}
    assert after == before  # no temporary file left, the earlier run's three files unchanged


def test_train_names_a_test_image_it_trains_on_a_copy_of(tmp_path, capsys):
    """DATA's own split is kept; a test image with a byte-identical training image is named, as fit names it."""
    import shutil

    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=6, classes=2, split=True)
    src = sorted((data / "train" / "1").iterdir())[0]
    shutil.copy(src, data / "test" / "1" / "again.png")
    args = ["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", "random", "--epochs", "1",
            "--image-size", "32", "--workers", "0", "--val-fraction", "0.25", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "fne: warning: 1 test image(s) of 1 of 1 split(s) have a byte-identical copy among that split's " \
           "training images: test/1/again.png" in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_test"] == 5


def test_the_training_loader_keeps_its_workers_and_still_draws_each_epochs_crops(tmp_path):
    """Workers kept across epochs (spawn starts each in seconds): the epoch's seed travels with
    each index (`EpochOrder`), so the crops change with the epoch and match a loader without workers."""
    import os

    import fne.training.epochs as ep
    from fne.data.datasets import load_dataset

    from .conftest import write_digits

    ds = load_dataset(write_digits(tmp_path / "d", per_class=4, classes=2))
    ctx = ep.Ctx(ds, ds.label_indices(), torch.device("cpu"), "fp32", torch.nn.Identity(), None, False, {})
    train_tf, _ = ep.transforms(24, True, None)
    pids, log = [], tmp_path / "pids"

    class Seen(ep.SeededItems):
        def __getitem__(self, j):
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            return super().__getitem__(j)

    def epochs(workers: int) -> list[torch.Tensor]:
        loader = ep.loader(ctx, np.arange(len(ds)), train_tf, 8, workers, torch.Generator().manual_seed(5))
        loader.dataset.__class__ = Seen
        assert loader.persistent_workers == (workers > 0)
        out = []
        for seed in (11, 12):
            loader.dataset.seed = seed  # as fne train sets it before each epoch
            log.write_text("")
            out.append(torch.cat([b["pixels"] for b in loader]))
            pids.append(set(log.read_text().split()))
        return out

    kept, plain = epochs(1), epochs(0)
    assert all(torch.equal(a, b) for a, b in zip(kept, plain, strict=True))
    assert not torch.equal(kept[0], kept[1])  # each epoch its own crops
    assert len(pids[0] | pids[1]) == 1 and str(os.getpid()) not in pids[0]  # one worker, kept


def test_progress_false_keeps_a_python_caller_quiet_and_the_command_line_keeps_its_lines(tmp_path, capsys):
    """``progress=False`` from Python: no bar and no progress line (what was imported, each epoch,
    "resumed ..."); `fne train --no-progress` drops the bars only, its lines stay."""
    from fne.training.train import train

    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=6, classes=3)
    kw = dict(arch=ARCH, weights="random", image_size=32, workers=0, val_fraction=0, save_every=1)
    capsys.readouterr()
    train(str(data), "frozen", tmp_path / "py", epochs=1, progress=False, **kw)
    train(str(data), "frozen", tmp_path / "py", epochs=2, progress=False, resume=True, **kw)  # resumed after 1
    assert capsys.readouterr() == ("", "")
    assert len(json.loads((tmp_path / "py" / "metrics.json").read_text())["history"]) == 2
    args = ["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", "random", "--image-size", "32",
            "--workers", "0", "--val-fraction", "0", "--save-every", "1", "--no-progress", "--out", str(tmp_path / "cli")]
    assert main([*args, "--epochs", "1"]) == 0 and main([*args, "--epochs", "2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("imported ") == 2 and "epoch 1/1: loss" in out and "epoch 2/2: loss" in out
    assert f"resumed {tmp_path / 'cli' / 'checkpoint.pt'} after epoch 1" in out
    # from Python without progress=False the lines are there as well
    train(str(data), "frozen", tmp_path / "chatty", epochs=1, **kw)
    assert "epoch 1/1: loss" in capsys.readouterr().out


def test_train_per_class_trains_on_fits_images(tmp_path, capsys):
    """`fne advise --train-per-class 3` recommended `fne train` commands that trained on 75 % of each
    class (train had no such option): now `fne train --train-per-class 3` trains and validates on
    the 3 images a class of fit's first split, tests on the rest, and records the protocol."""
    from fne.data.splits import make_splits
    from fne.training.train import train

    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=8, classes=3)
    m = train(str(data), "frozen", tmp_path / "run", weights="random", epochs=1, val_fraction=0,
              train_per_class=3, **FAST)
    d = load_dataset(str(data))
    fit_train, fit_test = make_splits(d, d.label_indices(), 1, 0.25, 3, 0)[0]
    assert m["n_train"] == 9 and m["n_test"] == len(fit_test) == 15
    assert m["split_protocol"] == "1x 3 per class"
    with open(tmp_path / "run" / "predictions.csv") as f:
        tested = sorted(r["path"] for r in csv.DictReader(f))
    assert tested == sorted(d.ids[i] for i in fit_test)
    assert main([*f"train {data} --mode frozen --weights random --arch {ARCH} --image-size 32 --workers 0 "
                  f"--no-progress --epochs 1 --val-fraction 0 --train-per-class 3".split(),
                 "--out", str(tmp_path / "cli")]) == 0
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["n_train"] == 9


def test_resuming_on_a_machine_with_fewer_gpus_restores_those_it_has(monkeypatch):
    """A checkpoint saved where more GPUs were visible (a node of 8, resumed on one, or with
    CUDA_VISIBLE_DEVICES narrowed): the CUDA generators of the GPUs there are restored, not an
    IndexError from torch.cuda.set_rng_state_all (the CUDA calls are faked: runs on a CPU)."""
    import torch.cuda.random as cuda_random

    from fne.training import checkpoint

    state = checkpoint.rng_state()
    state["cuda"] = [torch.full((16,), 7, dtype=torch.uint8), torch.full((16,), 9, dtype=torch.uint8)]
    restored = {}

    def set_rng_state(new_state, device="cuda"):
        i = device if isinstance(device, int) else torch.device(device).index or 0
        if i >= 1:  # as torch's: torch.cuda.default_generators[i] of a machine with one GPU
            raise IndexError("tuple index out of range")
        restored[i] = new_state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(cuda_random, "set_rng_state", set_rng_state)  # what set_rng_state_all calls
    checkpoint.set_rng_state(state)
    assert list(restored) == [0] and int(restored[0][0]) == 7


def test_direct_mode_refuses_weights_whose_classifier_does_not_fit_naming_the_tensors(tmp_path):
    from fne.training.train import train

    sd = backbones.load_backbone("efficientnet_lite0", "random", seed=1).state_dict()
    sd["_fc.weight"], sd["_fc.bias"] = torch.zeros(10, sd["_fc.weight"].shape[1]), torch.zeros(10)
    torch.save(sd, tmp_path / "w10.pt")
    with pytest.raises(FneError, match=r"^weights='\S+w10\.pt': mode='direct' applies the source network unchanged, "
                                       r"but 2 tensors do not fit arch='efficientnet_lite0': _fc\.weight: shape "
                                       r"\(10, 1280\) in source, \(1000, 1280\) here; _fc\.bias"):
        train("digits", "direct", tmp_path / "run", weights=str(tmp_path / "w10.pt"),
              class_map={"0": ["tench"]}, **FAST)


def test_train_test_size_on_a_predefined_split_is_named_in_one_warning_line(digits_split, tmp_path, capsys):
    """`fne train DATA --test-size 0.3` on train/ and test/ folders trained on DATA's own split and
    said nothing of the option: one line now names it and where the split comes from."""
    args = ["train", str(digits_split), "--mode", "frozen", "--arch", ARCH, "--weights", "random", "--epochs", "1",
            "--image-size", "32", "--workers", "0", "--val-fraction", "0.2", "--no-progress", "--out",
            str(tmp_path / "run"), "--test-size", "0.3"]
    assert main(args) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "not applied" in line]
    assert said == [f"fne: warning: DATA {digits_split}: --test-size 0.3 is not applied: DATA has its own split "
                    "(its train/ and test/ folders), which is used as it is: all its training images train, its test "
                    "images test (the option draws random splits, for DATA without one)"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_test"] == 9


def _train_process(data, out, *extra):
    """`fne train` (frozen, long) as its own process, its output unbuffered."""
    import os
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "fne.cli", "train", str(data), "--mode", "frozen", "--arch", ARCH,
                             "--weights", "random", "--epochs", "500", "--image-size", "32", "--workers", "0",
                             "--val-fraction", "0.2", "--no-progress", "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_a_signalled_fne_train_says_which_epoch_it_kept_and_how_to_go_on(digits_split, tmp_path):
    """A SIGTERM'd `fne train` (a scheduler's preemption) said "rerun with --resume to continue
    after the epoch saved in PATH": not which epoch. Its last line now names the epoch kept, of
    how many, and the checkpoint. Ctrl-C before any epoch was saved lost the epochs that had ended
    ("nothing was kept"); now the last of them is kept, and said in the same words."""
    import signal
    import time

    out = tmp_path / "run"
    p = _train_process(digits_split, out, "--save-every", "1")
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 143, err
    done = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert err.splitlines()[-1] == (f"fne train: terminated; kept epoch {done} of 500 (the last one saved) in "
                                    f"{out / 'checkpoint.pt'}; rerun the same command with --resume to continue "
                                    f"from there")

    other = tmp_path / "other"
    p = _train_process(digits_split, other)  # --save-every auto: no save in its first 5 minutes
    try:
        while not p.stdout.readline().startswith("epoch 3/500:"):  # epoch 2 ended and is held, none saved
            assert p.poll() is None, p.stderr.read()
        assert not (other / "checkpoint.pt").exists()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, err
    kept = torch.load(other / "checkpoint.pt", weights_only=True)  # the last epoch that ended, not a half one
    assert kept["epoch"] >= 2 and [r["epoch"] for r in kept["history"]] == list(range(1, kept["epoch"] + 1))
    assert err.splitlines()[-1] == (f"fne train: interrupted; kept epoch {kept['epoch']} of 500 (the last one saved) "
                                    f"in {other / 'checkpoint.pt'}; rerun the same command with --resume to continue "
                                    f"from there")


def test_an_interrupted_train_that_saves_no_checkpoint_says_why_nothing_was_kept(tmp_path):
    """`--save-every 0` saves none (not "yet"); direct mode trains nothing."""
    from argparse import Namespace

    from fne.stopped import how_to_resume

    run = dict(command="train", out=str(tmp_path), resume=False)
    assert how_to_resume(Namespace(**run, mode="frozen", save_every=0)) == (
        "nothing was kept: --save-every 0 saves none; rerun the same command to start again")
    assert how_to_resume(Namespace(**run, mode="frozen", save_every=2)) == (
        "nothing was kept: no epoch was saved yet (--save-every 2); rerun the same command to start again")
    assert how_to_resume(Namespace(**run, mode="direct")) == (
        "nothing was kept (direct mode trains nothing); rerun the same command")


def test_fne_predict_with_a_train_run_does_not_read_its_source_weights_path(tmp_path, capsys):
    """A resnet18 run trained from `--weights w/src.pt` (relative, as given) could not be
    applied from another folder, nor once that file moved: `fne predict RUN DATA` stopped with
    "--weights 'w/src.pt': no such file or resnet18 weights name", an option predict has not.
    The run's network is model.pt; the source file only chose its initial tensors."""
    from fne.training.transfer import build_model

    from .conftest import write_digits

    run = tmp_path / "run"
    run.mkdir()
    model, _, _ = build_model("resnet18", "frozen", 2, weights="random", seed=1)
    torch.save(model.state_dict(), run / "model.pt")
    (run / "metrics.json").write_text(json.dumps({
        "kind": "train", "mode": "frozen", "arch": "resnet18", "weights": "w/src.pt",
        "weights_fingerprint": "file-0123456789abcdef", "classes": ["0", "1"], "image_size": 32,
        "precision": "fp32", "device": "cpu", "batch_size": 8}))
    data = write_digits(tmp_path / "data", per_class=2, classes=2)
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "p.csv"), "--no-progress",
                 "--workers", "0"]) == 0
    assert len(_csv(tmp_path / "p.csv")) == 4


def test_a_full_disk_at_a_checkpoint_is_one_line_and_resume_goes_on_from_the_one_before(source, tmp_path,
                                                                                       monkeypatch, capsys):
    """torch.save's RuntimeError ('unexpected pos') on a full disk was a traceback; now one line
    names the checkpoint, what ran out, what to do and the epoch kept, and --resume goes on from it."""
    import fne.training.checkpoint as fc

    from .conftest import write_digits

    data = write_digits(tmp_path / "data", per_class=12, classes=2)
    out = tmp_path / "run"
    real, saves = torch.save, []
    monkeypatch.setattr(fc.torch, "save", _full_disk_save(lambda f: saves.append(1) or len(saves) == 2))  # the second
    args = ["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", str(source), "--epochs", "3",
            "--save-every", "1", "--image-size", "32", "--workers", "0", "--no-progress", "--out", str(out)]
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"fne train: error: no space left on device writing {out / 'checkpoint.pt'}: free space there or pass --out a "
        f"folder on another disk; kept epoch 1 of 3 (the last one saved) in {out / 'checkpoint.pt'}; rerun the same "
        f"command with --resume to continue from there")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # no temporary file, epoch 1's whole
    monkeypatch.setattr(fc.torch, "save", real)
    assert main([*args, "--resume"]) == 0
    assert f"resumed {out / 'checkpoint.pt'} after epoch 1" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3


def test_metrics_json_is_strict_json_when_a_loss_is_not_a_number(digits, source, tmp_path, monkeypatch):
    """A diverged run's NaN validation loss was written as `NaN`, which is not JSON: jq,
    JavaScript's JSON.parse and R's readers refused the run's metrics.json. It is null now."""
    from fne.training import epochs
    from fne.training.train import train

    monkeypatch.setattr(epochs, "mean_loss", lambda *a: float("nan"))
    m = train(digits, "frozen", tmp_path / "run", weights=str(source), epochs=1, **FAST)
    text = (tmp_path / "run" / "metrics.json").read_text()

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    saved = json.loads(text, parse_constant=refuse)
    assert np.isnan(m["history"][0]["val_loss"]) and saved["history"][0]["val_loss"] is None
    assert saved["history"][0]["val_accuracy"] == m["history"][0]["val_accuracy"] and saved["accuracy"] == m["accuracy"]


def test_a_diverged_network_stops_the_run_in_one_line(digits, source, tmp_path, capsys):
    """A learning rate far too high left NaN weights: the run went on to its last epoch, scored
    every test image NaN (argmax: the first class) and reported that accuracy with no word. The
    epoch that leaves weights that are not numbers stops the run, naming the --lr to lower; no
    metrics.json is written."""
    from fne.cli import main

    args = ["train", str(digits), "--mode", "frozen", "--weights", str(source), "--out", str(tmp_path / "run"),
            "--epochs", "3", "--lr", "1e30", "--arch", FAST["arch"], "--image-size", "32", "--workers", "0",
            "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fne train: error: training diverged in epoch 1/3: the network's weights")
    assert err[0].endswith("start again with a lower --lr than 1e+30")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_the_closing_line_names_the_checkpoint_a_run_kept(resumable_run, source, tmp_path, capsys):
    """`fne train`'s last line names every file it left in the run folder: checkpoint.pt too
    where one was saved (README: about three times model.pt, kept for --resume)."""
    data, _ = resumable_run
    out = tmp_path / "r"
    assert main(["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", str(source), "--epochs", "1",
                 "--image-size", "32", "--workers", "0", "--no-progress", "--save-every", "1", "--out", str(out)]) == 0
    assert (out / "checkpoint.pt").is_file()
    assert capsys.readouterr().out.endswith(
        f"wrote {out}/metrics.json, predictions.csv, model.pt and checkpoint.pt\n")


def test_the_closing_line_of_a_resumed_run_that_saved_none_does_not_say_it_wrote_the_checkpoint(
        resumable_run, source, tmp_path, capsys):
    """A run resumed from epoch 1 that trained its last epoch without a save (--save-every auto)
    left the checkpoint of epoch 1 as it was, yet its last line said it wrote checkpoint.pt, as if
    the file held the run's last epoch: it names the files it wrote, and the checkpoint as left."""
    data, _ = resumable_run
    out = tmp_path / "r"
    common = ["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", str(source), "--image-size", "32",
              "--workers", "0", "--no-progress", "--out", str(out)]
    assert main([*common, "--epochs", "1", "--save-every", "1"]) == 0
    kept = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main([*common, "--epochs", "2", "--resume"]) == 0
    assert (out / "checkpoint.pt").read_bytes() == kept  # epoch 1's, as saved by the first run
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2
    assert capsys.readouterr().out.endswith(
        f"wrote {out}/metrics.json, predictions.csv and model.pt ({out}/checkpoint.pt, saved before, left as it was)\n")


def test_fne_predict_refuses_a_model_pt_of_another_run_of_the_same_network(resumable_run, source, tmp_path, capsys):
    """A train run's model.pt and metrics.json were not tied together: model.pt copied from another
    run of the same network and classes (another seed) loaded, and its scores were given this
    run's class names and image size without a word. metrics.json records model.pt's fingerprint
    (as a weights file's, `file-…`) and predict refuses other bytes in one line; a run written
    before it was recorded is applied as before."""
    import shutil

    from fne.backbones.registry import file_fingerprint

    data, _ = resumable_run
    common = ["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", str(source), "--epochs", "1",
              "--image-size", "32", "--workers", "0", "--no-progress"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*common, "--out", str(a)]) == 0
    assert main([*common, "--seed", "1", "--out", str(b)]) == 0
    m = json.loads((a / "metrics.json").read_text())
    assert m["model_fingerprint"] == "file-" + file_fingerprint(a / "model.pt")
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    shutil.copy(b / "model.pt", mixed / "model.pt")
    capsys.readouterr()
    assert main(["predict", str(mixed), str(data), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fne predict: error: {mixed / 'model.pt'}: not the network its metrics.json describes "
                   f"(fingerprint file-{file_fingerprint(b / 'model.pt')}, metrics.json's {m['model_fingerprint']}): "
                   f"a model.pt or metrics.json copied from another run? Put the run's own file back, or rerun "
                   f"`fne train`")
    assert not (tmp_path / "p.csv").exists()
    assert main(["predict", str(a), str(data), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    del m["model_fingerprint"]  # a run written before metrics.json recorded it: not checked
    (mixed / "metrics.json").write_text(json.dumps(m))
    assert main(["predict", str(mixed), str(data), "--out", str(tmp_path / "q.csv"), "--no-progress"]) == 0


@pytest.mark.parametrize("val_fraction, part", [(0.1, "val"), (0.0, "test")])
def test_a_network_whose_scores_are_not_numbers_stops_the_run_in_one_line(digits, tmp_path, val_fraction, part):
    """A learning rate too high left a ResNet-18's weights numbers but so large that it scored
    every image NaN: the run reported the accuracy of argmax over NaN (the first class) and wrote
    NaN scores to predictions.csv with no word. The pass that meets such scores stops the run,
    naming the lr to lower; no metrics.json is written."""
    from fne.training.train import train

    with pytest.raises(OptionError) as e:
        train(digits, "scratch", tmp_path / "run", arch="resnet18", image_size=32, batch_size=32, workers=0,
              progress=False, epochs=1, lr=1e4, val_fraction=val_fraction)
    said = str(e.value)
    assert "\n" not in said and said.startswith("training diverged"), said
    assert re.search(rf"the network scores \d+ of \d+ {part} images with values that are not numbers; "
                     r"start again with a lower lr than 10000$", said), said
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_resume_refuses_a_checkpoint_whose_tensor_bytes_were_damaged(resumable_run, source, tmp_path, capsys):
    """torch.load does not check the CRC-32 of the zip members torch.save writes: a checkpoint
    whose tensor bytes were damaged (a disk's or a copy's fault), its size and layout kept,
    resumed and trained on from weights no run left. It is refused in one line, as a truncated
    one is, and `fne run` does not take it up."""
    import shutil

    from fne.training import checkpoint

    data, run = resumable_run
    work = tmp_path / "run"
    shutil.copytree(run, work)
    ckpt = work / "checkpoint.pt"
    _damage_tensor_bytes(ckpt)
    torch.load(ckpt, weights_only=True)  # what torch itself takes without a word
    args = ["train", str(data), "--mode", "frozen", "--arch", ARCH, "--weights", str(source), "--epochs", "3",
            "--image-size", "32", "--workers", "0", "--no-progress", "--out", str(work), "--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fne train: error: --resume: cannot read {ckpt}: truncated, damaged or not a torch file; " \
                  "start anew without --resume"
    cfg = checkpoint.read(run / "checkpoint.pt")["args"]  # the run's own, undamaged: its settings
    assert checkpoint.resumable(ckpt, type("Cfg", (), cfg), None) is None
    assert checkpoint.resumable(run / "checkpoint.pt", type("Cfg", (), cfg), None) is not None



def _damage_tensor_bytes(ckpt: Path) -> None:
    """Flip 64 bytes inside the largest zip member (a tensor's, stored uncompressed) of `ckpt`,
    its size and layout kept: a disk's or a copy's fault that torch.load does not see."""
    import zipfile

    with zipfile.ZipFile(ckpt) as z:
        member = max(z.infolist(), key=lambda i: i.file_size)
    raw = bytearray(ckpt.read_bytes())
    start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)  # past its local header
    raw[start + 100:start + 164] = bytes(b ^ 0xFF for b in raw[start + 100:start + 164])
    ckpt.write_bytes(bytes(raw))


def test_the_dry_run_says_a_checkpoint_with_damaged_bytes_is_not_resumed(resumable_run, source, tmp_path, capsys):
    """`fne run --dry-run` reads a train step's checkpoint memory-mapped (its arguments only) and
    said the step resumes from one whose tensor bytes were damaged, while the run (which checks
    their CRC) trained it anew. Where the note would say it resumes, the CRC is checked too."""
    import shutil

    from fne.training.rerun import rerun_note
    from fne.training.train import train

    data, run = resumable_run
    kw = dict(arch=ARCH, weights=str(source), epochs=3, save_every=1, image_size=32, workers=0)
    work = shutil.copytree(run, tmp_path / "run")
    assert rerun_note(str(data), "frozen", work, **kw).startswith(  # DATA not hashed: "if DATA's images are its own"
        "the rerun resumes from its checkpoint after epoch 2 of 3")
    _damage_tensor_bytes(work / "checkpoint.pt")
    assert rerun_note(str(data), "frozen", work, **kw) == (
        "its checkpoint cannot be read (truncated, damaged or not a torch file): the rerun starts over")
    train(str(data), "frozen", work, resume="auto", **kw)  # what the run does with it
    out = capsys.readouterr().out
    assert "resumed" not in out and "epoch 1" in out, out

@pytest.mark.parametrize("momentum", ["1", "2"])
def test_a_momentum_of_1_or_more_is_one_line_before_any_work(momentum, tmp_path, capsys):
    """SGD's velocity never decays at a momentum of 1 or more: --momentum 2 trained, its steps
    growing each batch, and reported the accuracy of what it left. Momentum is in [0, 1)."""
    from fne.training.train import train

    args = ["train", "digits", "--mode", "scratch", "--arch", "resnet18", "--out", str(tmp_path / "run"),
            "--image-size", "32", "--workers", "0", "--no-progress", "--momentum", momentum]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == \
        f"fne train: error: bad --momentum {float(momentum)}: --momentum must be in [0, 1)"
    with pytest.raises(OptionError, match=r"^bad momentum=1\.0: momentum must be in \[0, 1\)$"):
        train("digits", "scratch", tmp_path / "run", arch="resnet18", momentum=1.0)
    assert not (tmp_path / "run").exists()


def test_augment_on_auto_takes_the_device_on_cuda_only_where_the_workers_are_few(monkeypatch):
    """`--augment-on auto` on CUDA: the device below `AUGMENT_DEVICE_BELOW_WORKERS` loader workers,
    the workers' PIL augmentation from there (on the H200 with 15 workers the workers trained at
    2,569 img/s, the device at 1,519); an explicit choice is kept whatever the workers; on a CPU,
    or where nothing decodes JPEGs on the device, auto is the workers'."""
    from fne import devices
    from fne.options import AUGMENT_DEVICE_BELOW_WORKERS as below
    from fne.training.augment import on_device

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr(devices, "device_decoder", lambda: "torchcodec")
    assert [on_device("auto", cuda, w) for w in (0, 1, below - 1, below, 15, 63)] == [True] * 3 + [False] * 3
    assert on_device("device", cuda, 15) and on_device("device", cpu, 15) and not on_device("cpu", cuda, 1)
    assert not on_device("auto", cpu, 1)
    monkeypatch.setattr(devices, "device_decoder", lambda: None)
    assert not on_device("auto", cuda, 1)


def test_train_workers_on_a_cpu_count_the_cores_this_process_may_use(monkeypatch):
    """A Slurm or container share of a large machine: `fne train`'s CPU default counted the
    machine's cores (os.cpu_count: 4 workers on 1 allowed core of 128), where extract counts the
    process's (its CPU affinity); both now count those."""
    import os

    from fne.training.train import TrainConfig, _workers

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    cfg = TrainConfig(data="digits", mode="frozen", out="x")
    for allowed, workers in (({0}, 1), ({0, 1}, 1), (set(range(6)), 3), (set(range(64)), 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, allowed=allowed: allowed)
        assert _workers(cfg, torch.device("cpu")) == workers


def test_a_resume_into_a_folder_another_process_trains_into_waits_and_resumes_from_what_it_leaves(
        resumable_run, source, tmp_path, capsys):
    """Two `fne train --resume` into one folder read its checkpoint at once and trained side by
    side, each overwriting the other's checkpoints. The second now waits for the first (a process
    holding the folder's lock, which leaves a finished run there as it ends), then reads the
    checkpoint: where it read before, resume=True found none in the empty folder."""
    import shutil
    import subprocess
    import sys

    from fne.training.train import train

    from .conftest import says_it_waits

    data, first = resumable_run
    run, results, errors = tmp_path / "run", [], []
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys\nfrom pathlib import Path\nfrom fne.data.sidecar import locked\n"
        "with locked(Path(sys.argv[1]), process=True, remove=True):\n"
        "    print('held', flush=True)\n    sys.stdin.readline()\n"), str(tmp_path / ".run.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def second() -> None:
        try:
            results.append(train(str(data), "frozen", run, resume=True, arch=ARCH, weights=str(source), epochs=2,
                                 save_every=1, image_size=32, workers=0, progress=True))
        except BaseException as e:  # noqa: BLE001 -- the test names it
            errors.append(e)

    worker = threading.Thread(target=second)
    try:
        assert holder.stdout.readline() == "held\n"
        worker.start()
        says_it_waits(capsys, "the second train", line=f"fne train: another process is writing a run into {run}; "
                                                       "waiting for it to end, then resuming from its checkpoint")
        assert worker.is_alive() and not run.exists()
        shutil.copytree(first, run)  # what the first process leaves: its finished run
    finally:
        holder.communicate("done\n", timeout=60)
    worker.join(timeout=300)
    assert errors == [] and f"resumed {run / 'checkpoint.pt'} after epoch 2\n" in capsys.readouterr().out
    assert results[0]["epochs"] == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock file left
