from __future__ import annotations

import re
import socket
import urllib.error

import pytest
import torch
import torch.nn.functional as F

from fne.backbones import registry as backbones
from fne.errors import WeightsError
from fne.extraction.taps import TapModel


def test_registry_declares_taps():
    vgg = backbones.get("vgg16")
    names = [t.name for t in vgg.taps]
    assert names[:3] == ["conv1_1", "conv1_2", "conv2_1"] and names[-3:] == ["conv5_3", "fc6", "fc7"]
    assert len(vgg.taps) == 15 and vgg.dim == 12416
    assert len(backbones.get("vgg19").taps) == 18
    assert backbones.get("efficientnet_lite0").dim == sum(backbones._LITE0_BLOCKS) + 1280
    with pytest.raises(Exception, match=r"registry \(efficientnet_lite0, vgg16, vgg19\)"):
        backbones.get("resnet9000")


def _vgg_plain_forward(model, x):
    """Post-ReLU activations computed without hooks and without in-place ops."""
    acts = []
    for m in model.features:
        if isinstance(m, torch.nn.ReLU):
            x = F.relu(x)
            acts.append(x.mean(dim=(2, 3)))
        else:
            x = m(x)
    x = torch.flatten(model.avgpool(x), 1)
    c = model.classifier
    fc6 = F.relu(c[0](x))
    fc7 = F.relu(c[3](fc6))
    return acts + [fc6, fc7]


def test_vgg16_taps_equal_plain_forward_after_relu():
    b = backbones.get("vgg16")
    model = backbones.load_backbone("vgg16", "random", seed=3)
    tap = TapModel(model, b).eval()
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        got = tap(x)
        # same memory layout as TapModel, so only the tapping can make a difference
        want = _vgg_plain_forward(model, tap.norm(x).contiguous(memory_format=torch.channels_last))
    assert len(got) == len(want) == 15
    for t, g, w in zip(b.taps, got, want):
        assert g.shape == (2, t.channels)
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=t.name)
    assert all((g >= 0).all() for g in got)  # after ReLU, never pre-activation values
    assert any((w < 0).any() for w in [model.features[0](tap.norm(x)).mean((2, 3))])


def test_efficientnet_taps_equal_block_outputs():
    b = backbones.get("efficientnet_lite0")
    model = backbones.load_backbone("efficientnet_lite0", "random")
    tap = TapModel(model, b).eval()
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        got = tap(x)
        h = tap.norm(x).contiguous(memory_format=torch.channels_last)
        h = model._swish(model._bn0(model._conv_stem(h)))
        want = []
        for block in model._blocks:
            h = block(h)
            want.append(h.mean((2, 3)))
        want.append(model._swish(model._bn1(model._conv_head(h))).mean((2, 3)))
    for t, g, w in zip(b.taps, got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=t.name)


def test_random_weights_are_seeded():
    a = backbones.load_backbone("efficientnet_lite0", "random", seed=1).state_dict()
    b = backbones.load_backbone("efficientnet_lite0", "random", seed=1).state_dict()
    c = backbones.load_backbone("efficientnet_lite0", "random", seed=2).state_dict()
    k = "_conv_stem.weight"
    assert torch.equal(a[k], b[k]) and not torch.equal(a[k], c[k])
    assert backbones.fingerprint("vgg16", "random", 1) != backbones.fingerprint("vgg16", "random", 2)


def test_efficientnet_lite0_imagenet_weights_are_the_packaged_ones():
    """The one pretrained backbone with no download (its weights ship in a package): every tensor
    of the file is the model's."""
    model = backbones.load_backbone("efficientnet_lite0", "imagenet")
    shipped = torch.load(backbones._effnet_weights_file(), map_location="cpu", weights_only=True)
    state = model.state_dict()
    assert set(shipped) <= set(state) and all(torch.equal(state[k], v) for k, v in shipped.items())
    assert not torch.equal(state["_fc.weight"], backbones.load_backbone("efficientnet_lite0", "random").state_dict()["_fc.weight"])


def test_weights_path_roundtrip_and_wrong_arch(tmp_path):
    model = backbones.load_backbone("efficientnet_lite0", "random", seed=5)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")  # fne train style
    again = backbones.load_backbone("efficientnet_lite0", str(tmp_path / "ckpt.pt"))
    assert torch.equal(again.state_dict()["_fc.weight"], model.state_dict()["_fc.weight"])
    fp = backbones.fingerprint("efficientnet_lite0", str(tmp_path / "ckpt.pt"))
    assert fp.startswith("file-")
    with pytest.raises(WeightsError, match="does not fit arch='vgg16'"):
        backbones.load_backbone("vgg16", str(tmp_path / "ckpt.pt"))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk.pt': torch.load cannot read it: it is a text file; .*torch.save\(model.state_dict"):
        backbones.load_backbone("vgg16", str(tmp_path / "junk.pt"))
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "numbers.pt")  # readable, but no tensors
    with pytest.raises(WeightsError, match=r"numbers\.pt'?:? .*does not hold a state dict of tensors"):
        backbones.load_backbone("vgg16", str(tmp_path / "numbers.pt"))
    with pytest.raises(WeightsError, match="no such file"):
        backbones.fingerprint("vgg16", str(tmp_path / "absent.pt"))


def test_weights_torch_cannot_read_say_what_the_file_is(tmp_path, capsys):
    """A pickled list, a zip archive, a whole pickled model said "torch.load cannot read it
    (UnpicklingError: Weights only load failed. In PyTorch 2.6, ...)" or "(RuntimeError: [enforce
    fail at inline_container.cc:180] ...)": now what the file is, then what is expected."""
    import pickle
    import zipfile

    import numpy as np

    from fne.cli import main

    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("notes.txt", "hello")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pt")
    whole = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[:len(whole) // 2])
    np.save(tmp_path / "arr.npy", np.zeros(3))
    (tmp_path / "empty.pt").write_bytes(b"")
    for name, kind in (("list.pkl", "a Python pickle, not written by torch.save"),
                       ("a.zip", "a zip archive of 1 file(s) (notes.txt), not written by torch.save"),
                       ("model.pt", "a torch.save file of Python objects besides tensors (a whole model, "
                                    "torch.save(model), say), which fne does not unpickle"),
                       ("cut.pt", "a damaged or truncated zip archive"), ("arr.npy", "a NumPy .npy array"),
                       ("empty.pt", "an empty file")):
        with pytest.raises(WeightsError, match=rf"{name}': torch.load cannot read it: it is {re.escape(kind)}.*; give "
                                               rf"a file written by torch\.save\(model\.state_dict\(\), PATH\)"):
            backbones.load_backbone("efficientnet_lite0", str(tmp_path / name))
    assert main(["extract", "digits", "--arch", "efficientnet_lite0", "--weights", str(tmp_path / "list.pkl"),
                 "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "pickle protocol" not in err  # torch's warning ("please file an issue") before fne's error
    assert err.splitlines()[-1] == (
        f"fne extract: error: --weights '{tmp_path / 'list.pkl'}': torch.load cannot read it: it is a Python pickle, "
        f"not written by torch.save; give a file written by torch.save(model.state_dict(), PATH), a .safetensors file "
        f"or a `fne train` checkpoint")


def test_weights_that_are_a_run_folder_or_a_fit_model_say_what_to_give(tmp_path):
    """`--weights RUN` of a `fne train` run names its model.pt; a `fne fit` run (or its
    model.joblib, which torch.load cannot read) is a head, not a network; another folder or an
    empty value is named as such, not as 'no such file'."""
    train, fit, other = tmp_path / "train", tmp_path / "fit", tmp_path / "other"
    for d, f in ((train, "model.pt"), (fit, "model.joblib")):
        d.mkdir()
        (d / f).write_bytes(b"\x80\x04K\x01.")
    other.mkdir()
    cases = [(train, f"is a `fne train` run folder; give its network, {train / 'model.pt'}"),
             (fit, "is a `fne fit` run folder, a linear head on a network's rows, not a network"),
             (fit / "model.joblib", "is a `fne fit` model, a linear head"),
             (other, "is a folder; give a state dict file"), ("", "bad weights=''")]
    for weights, said in cases:
        for arch in ("efficientnet_lite0", "resnet18"):  # fne's registry, torchvision's names
            with pytest.raises(WeightsError, match=re.escape(f"{weights}': {said}" if weights else said)) as e:
                backbones.fingerprint(arch, str(weights))
            assert e.value.cli.startswith(f"--weights '{weights}': " if weights else "bad --weights ''")
    with pytest.raises(WeightsError, match="is a `fne fit` model"):  # torch.load is not reached
        backbones.read_state_dict(fit / "model.joblib")


def test_imagenet_download_failure_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(socket, "create_connection", offline)  # no network tried: the host does not answer
    with pytest.raises(WeightsError) as e:
        backbones.load_backbone("vgg16", "imagenet")
    msg = str(e.value)
    assert "vgg16-397923af.pth" in msg and "weights=PATH" in msg and "checkpoints" in msg
    assert "--weights PATH" in e.value.cli  # what `fne extract` prints


def test_import_matching_reports_shape_mismatch():
    src = backbones.get("vgg16").build(1000).state_dict()
    target = backbones.get("vgg16").build(7)
    report = backbones.import_matching(target, src)
    assert "classifier.6.weight" not in report.imported
    why = dict(report.skipped)["classifier.6.weight"]
    assert "(1000, 4096)" in why and "(7, 4096)" in why
    assert "features.0.weight" in report.imported


def test_cache_keys_and_vgg_need_no_torchvision_import():
    """A cached rerun reads rows, and VGG is built, without importing torchvision (4.8 s on the
    H200 machine): VGG's ImageNet weights are declared by torchvision's addresses, and whether this
    torchvision decodes on a device is asked of its compiled operators (`devices.jpeg_ops`)."""
    import subprocess
    import sys

    import torchvision.models as tvm

    for arch in backbones.VGG_IMAGENET_FILES:
        assert backbones.vgg_imagenet_url(arch) == tvm.get_model_weights(arch).IMAGENET1K_V1.url
    code = ("import sys; from fne.backbones import registry; "
            "print(registry.fingerprint('vgg16'), registry.fingerprint('vgg19'), 'torch' in sys.modules, end=' '); "
            "from fne.devices import device_decoder; print(device_decoder(), "
            "'torchvision' in sys.modules, end=' '); registry.load_backbone('vgg16', 'random'); "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    # the keys need no torch either (`fne fit` on cached rows imports none)
    assert out[:3] == ["imagenet-vgg16-397923af", "imagenet-vgg19-dcbb9e9d", "False"]
    assert out[3] in ("torchcodec", "torchvision") and out[4:] == ["False", "False"]


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_vgg_is_torchvisions_vgg(arch):
    """fne's VGG has torchvision's modules, names and shapes; from one seed it draws the same
    random weights; with the same weights it computes the same outputs."""
    import torchvision.models as tvm

    def drawn(build):
        torch.manual_seed(3)
        return build()

    ours = drawn(lambda: backbones.get(arch).build(10)).eval()
    theirs = drawn(lambda: tvm.get_model(arch, weights=None, num_classes=10)).eval()
    assert [(n, type(m)) for n, m in ours.named_modules() if n] == [
        (n, type(m)) for n, m in theirs.named_modules() if n]
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_a_weights_files_hash_is_remembered_in_the_cache(tmp_path, monkeypatch):
    """A weights file is hashed for the store key once per cache, then only stat'ed (VGG-16's
    528 MB take 0.46 s to hash); a changed file is hashed again."""
    import os
    import time

    from fne.cache.spec import StoreSpec

    def age(path, seconds):  # a file last written a while ago (the manifest's racy rule)
        os.utime(path, (time.time() - seconds,) * 2)

    w = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(3)}, w)
    age(w, 3600)
    hashed, real = [], backbones._file_fingerprint.__wrapped__
    monkeypatch.setattr(backbones, "_file_fingerprint", lambda *a: (hashed.append(a[0]), real(*a))[1])
    cache = tmp_path / "cache"
    first = StoreSpec(arch="vgg16", weights=str(w), cache=str(cache)).fingerprint()
    assert first == "file-" + real(str(w), *[getattr(w.stat(), k) for k in ("st_size", "st_mtime_ns")])
    assert backbones.fingerprint("vgg16", str(w), cache=cache) == first and len(hashed) == 1
    assert [p.name.startswith("weights-") for p in (cache / "manifests").glob("*.json")] == [True]
    torch.save({"a": torch.ones(3)}, w)  # same size, other bytes, another mtime
    age(w, 1800)
    second = backbones.fingerprint("vgg16", str(w), cache=cache)
    assert second != first and len(hashed) == 2
    assert backbones.fingerprint("vgg16", str(w)) == second and len(hashed) == 3  # no cache: hashed here

    def read_only(*a, **k):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr("fne.data.manifest.merge_json", read_only)  # a cache fit may only read
    assert backbones.fingerprint("vgg16", str(w), cache=tmp_path / "other") == second and len(hashed) == 4


def test_token_and_vector_pools_keep_no_view_of_the_activation():
    """A pooled row is its own (B, C) tensor: not a view that keeps a block's whole (B, N, C)
    output alive for the rest of the forward, nor one that an in-place op after the layer changes."""
    from fne.backbones.pooling import pool

    tokens, vec = torch.randn(2, 197, 64), torch.randn(2, 4096)
    for name, x in (("cls", tokens), ("mean_tokens", tokens), ("mean_nchw", vec)):
        row = pool(name, x, 1)
        want = row.clone()
        assert row.untyped_storage().nbytes() == row.numel() * 4, name
        x.relu_()  # what an in-place activation after the tapped layer does
        assert torch.equal(row, want), name


def test_weights_checkpoints_of_other_trainers_and_half_precision(tmp_path):
    """A checkpoint of torchvision's reference scripts or timm's train.py (its `args` an
    argparse.Namespace) was refused as "a whole model"; a half-precision state dict was adopted
    as fp16 and the forward stopped with torch's "mixed dtype" traceback; a checkpoint whose
    weights sit under another key said only "does not hold a state dict of tensors"."""
    import argparse

    state = backbones.load_backbone("efficientnet_lite0", "random", seed=3).state_dict()
    args = argparse.Namespace(lr=0.5, model="efficientnet_lite0")
    torch.save({"model": state, "epoch": 7, "args": args}, tmp_path / "tv.pth")  # torchvision references
    torch.save({"state_dict": state, "epoch": 7, "args": args, "arch": "x"}, tmp_path / "timm.pth.tar")  # timm
    torch.save({"model": {"name": "efficientnet_lite0"}, "state_dict": state}, tmp_path / "config.pt")  # `model`: a config
    for name in ("tv.pth", "timm.pth.tar", "config.pt"):
        got = backbones.load_backbone("efficientnet_lite0", str(tmp_path / name)).state_dict()
        assert all(torch.equal(got[k], v) for k, v in state.items())
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "half.pt")
    model = backbones.load_backbone("efficientnet_lite0", str(tmp_path / "half.pt"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.allclose(model.state_dict()["_conv_stem.weight"], state["_conv_stem.weight"].half().float())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
    torch.save({"model_ema": state, "epoch": 7}, tmp_path / "ema.pt")
    with pytest.raises(WeightsError, match=re.escape(
            "ema.pt': does not hold a state dict of tensors (a dict of model_ema, epoch; fne takes the state dict "
            "under 'model' or 'state_dict' only: save the one under 'model_ema' alone, "
            "torch.save(checkpoint['model_ema'], PATH))")):
        backbones.load_backbone("efficientnet_lite0", str(tmp_path / "ema.pt"))
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "whole.pt")
    with pytest.raises(WeightsError, match=re.escape("(it holds torch.nn.modules.linear.Linear); give a file")):
        backbones.load_backbone("efficientnet_lite0", str(tmp_path / "whole.pt"))


def test_weights_under_a_prefix_are_named_with_how_to_keep_them(tmp_path):
    """A Lightning checkpoint (the network under `model.`) or a MoCo one (two encoders) was
    refused as 'does not fit' with 294 names missing and no word of why: the refusal, of
    `fne extract` and of `fne train`, now names the prefix(es) the network sits under."""
    from fne.training.transfer import build_model

    state = backbones.load_backbone("efficientnet_lite0", "random", seed=3).state_dict()
    body = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    torch.save({"state_dict": {"model." + k: v for k, v in state.items()}, "epoch": 2}, tmp_path / "light.ckpt")
    torch.save({"state_dict": {p + k: v for p in ("encoder_q.", "encoder_k.") for k, v in body.items()}},
               tmp_path / "moco.pth")
    with pytest.raises(WeightsError, match=re.escape(
            "; its tensors under 'model.' are the network's: give a file of one network's alone, without the prefix "
            "(with `state` the file's state dict: torch.save({k.removeprefix('model.'): v for k, v in state.items() "
            "if k.startswith('model.')}, PATH))")):
        backbones.load_backbone("efficientnet_lite0", str(tmp_path / "light.ckpt"))
    with pytest.raises(WeightsError, match=r"only 0 of \d+ tensors match .*; its tensors under 'encoder_q\.' and "
                                           r"'encoder_k\.' are the network's"):
        build_model("efficientnet_lite0", "frozen", 3, weights=str(tmp_path / "moco.pth"))
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "other.pt")  # another network: no hint
    with pytest.raises(WeightsError, match=r"not in efficientnet_lite0\)$"):
        backbones.load_backbone("efficientnet_lite0", str(tmp_path / "other.pt"))


def test_weights_without_batchnorm_counters_and_with_another_head(tmp_path):
    """A state dict without BatchNorm's `num_batches_tracked` (torch before 0.4.1, converted
    checkpoints) whose head has another class count was refused, `fne extract` naming 20
    'bn1.num_batches_tracked: not in source', and `fne train` listed each as not imported: a
    counter load_state_dict sets to 0, no weight."""
    from fne.training.transfer import build_model

    state = backbones.load_backbone("resnet18", "random", seed=4).state_dict()
    kept = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(kept) < len(state)
    torch.save({**kept, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}, tmp_path / "ft.pt")
    got = backbones.load_backbone("resnet18", str(tmp_path / "ft.pt")).state_dict()
    assert all(torch.equal(got[k], v) for k, v in kept.items() if not k.startswith("fc."))
    assert int(got["bn1.num_batches_tracked"]) == 0
    model, report, _ = build_model("resnet18", "finetune", 3, weights=str(tmp_path / "ft.pt"))
    assert [n for n, why in report.skipped if why != "renewed layer"] == []
    assert not any(b.is_meta for b in model.buffers())


def test_a_safetensors_file_safetensors_cannot_read_is_named_as_such(tmp_path):
    """A .safetensors file that is not one was refused as 'torch.load cannot read it', though
    torch.load never read it; a torch.save file under that name was 'a whole model'."""
    from safetensors.torch import save_file

    state = {"w": torch.ones(2)}
    torch.save(state, tmp_path / "torch.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    save_file(state, tmp_path / "ok.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "ok.safetensors").read_bytes()[:-4])
    for name, said in (("torch", ": it is a torch.save file, not a safetensors one (name it .pt)"),
                       ("text", ": it is a text file"), ("cut", " (SafetensorError: ")):
        with pytest.raises(WeightsError, match=re.escape(f"{name}.safetensors': safetensors cannot read it{said}")):
            backbones.read_state_dict(tmp_path / f"{name}.safetensors")
    assert torch.equal(backbones.read_state_dict(tmp_path / "ok.safetensors")["w"], state["w"])


def test_a_tuple_output_is_pooled_by_its_first_element_and_pools_are_the_plain_means():
    """A tapped module returning a tuple (hidden states, attention) is pooled by its hidden states;
    each pool's figure by hand on a small tensor."""
    from fne.backbones.pooling import pool

    tokens = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # 2 images, class token + 2 patches
    assert torch.equal(pool("mean_tokens", (tokens, torch.zeros(2, 5)), 1), (tokens[:, 1] + tokens[:, 2]) / 2)
    assert torch.equal(pool("cls", [tokens], 1), tokens[:, 0])
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, 8.0]]]])  # (1, 2, 2, 2)
    assert torch.equal(pool("mean_nchw", maps), torch.tensor([[3.0, 2.0]]))
    assert torch.equal(pool("mean_nhwc", maps.permute(0, 2, 3, 1)), torch.tensor([[3.0, 2.0]]))
