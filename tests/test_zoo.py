"""Backbones by name (fne.zoo): torchvision and timm models with taps found from their structure.

Every tap is checked against an independent forward hook on the module it names, pooled here
with its own code; `last` against the classifier's actual input. Seeded random weights, small
inputs where the model allows, one thread: the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import socket
import urllib.error

import h5py
import numpy as np
import pytest
import torch
import torchvision.models as tvm

from fne.backbones import registry as backbones
from fne.backbones.normalize import Normalize
from fne.cli import main
from fne.errors import FneError, WeightsError
from fne.extraction.taps import TapModel

timm = pytest.importorskip("timm")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference(model: torch.nn.Module, b: backbones.Backbone, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each tap's value from plain hooks (pooling written out here), plus the classifier's input."""
    want, handles = {}, []

    def pooled(t, tensor):
        tensor = tensor[0] if isinstance(tensor, (tuple, list)) else tensor
        tensor = tensor.detach().float()
        if t.pool == "cls":
            return tensor[:, 0].clone()
        if t.pool == "mean_tokens":
            return tensor[:, t.prefix_tokens:].mean(1)
        if t.pool == "mean_nhwc":
            return tensor.permute(0, 3, 1, 2).mean((2, 3))
        return tensor.mean((2, 3)) if tensor.dim() == 4 else tensor.clone()

    for t in b.taps:
        m = model.get_submodule(t.module)
        if t.on_input:
            handles.append(m.register_forward_pre_hook(lambda mod, i, t=t: want.__setitem__(t.name, pooled(t, i[0]))))
        else:
            handles.append(m.register_forward_hook(lambda mod, i, o, t=t: want.__setitem__(t.name, pooled(t, o))))
    clf = model.get_submodule(b.classifier)
    handles.append(clf.register_forward_pre_hook(
        lambda mod, i: want.__setitem__("<classifier input>", i[0].detach().float().flatten(1).clone())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return want


CASES = [  # (arch, model built for the test or None: load_backbone's, input size)
    ("resnet18", None, 64),
    ("timm:convnext_atto", None, 64),
    ("mobilenet_v3_small", None, 64),
    ("regnet_y_400mf", None, 64),
    ("densenet121", None, 64),
    ("vit_b_16", lambda: tvm.vit_b_16(image_size=32), 32),
    ("swin_t", None, 64),
    ("timm:vit_tiny_patch16_224", lambda: timm.create_model("vit_tiny_patch16_224", img_size=32), 32),
    ("maxvit_t", None, 224),  # its partitions need 224
    ("inception_v3", None, 96),
    # blocks inside stages with a forward of their own: tokens in a stage that returns a map (PiT),
    # a cross-stage-partial stage (cs3), downsample + blocks (FasterNet)
    ("timm:pit_ti_224", lambda: timm.create_model("pit_ti_224", img_size=64), 64),
    ("timm:cs3darknet_focus_s", None, 64),
    ("timm:fasternet_t0", None, 64),
]


def _in_timm(arch: str) -> bool:
    """Whether the installed timm has `arch` (a torchvision name: always)."""
    return not arch.startswith("timm:") or arch[5:] in timm.list_models()


def _installed(arch: str) -> None:
    """Skip a timm model that the installed timm does not have (FasterNet and SHViT are newer than
    the lowest supported timm, 1.0.3)."""
    if not _in_timm(arch):
        pytest.skip(f"{arch} is not in timm {timm.__version__}")


@pytest.mark.parametrize("arch,make,size", CASES, ids=[c[0] for c in CASES])
def test_taps_equal_independent_hooks(arch, make, size):
    _installed(arch)
    b = backbones.get(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = (make() if make else backbones.load_backbone(arch, "random", seed=0)).eval()
    tap = TapModel(model, b).eval()
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        got = tap(x)
    # TapModel's hooks stay on `model` and fire too; the reference's are separate and pool on their own
    want = _reference(model, b, tap.norm(x).contiguous(memory_format=torch.channels_last))
    assert len(got) == len(b.taps) and sum(g.shape[1] for g in got) == b.dim
    for t, g in zip(b.taps, got):
        w = want[t.name]
        assert g.dtype == torch.float32 and g.shape == (2, t.channels), t.name
        assert ((g - w).norm() / w.norm().clamp_min(1e-12)).item() < 1e-3, t.name
    # `last` is what the source classifier reads
    last = got[[t.name for t in b.taps].index(b.last)]
    w = want["<classifier input>"]
    assert ((last - w).norm() / w.norm()).item() < 1e-3


def test_families_tap_what_the_rules_say():
    r = backbones.get("resnet50")
    assert [t.module for t in r.taps][:2] == ["relu", "layer1.0"] and r.last == "layer4.2"
    assert sum(t.module.startswith("layer") for t in r.taps) == 16 and r.classifier == "fc"
    v = backbones.get("vit_b_16")
    blocks = [t for t in v.taps if t.module.startswith("encoder.layers.")]
    assert len(blocks) == 24 and {t.pool for t in blocks} == {"cls", "mean_tokens"}
    assert all(t.prefix_tokens == 1 for t in blocks) and v.last == "pre_logits" and v.classifier == "heads.head"
    s = backbones.get("swin_t")
    assert {t.pool for t in s.taps if t.name != "pre_logits"} == {"mean_nhwc"}
    m = backbones.get("mobilenet_v3_large")
    assert m.last == "classifier.1" and m.fc_layers == ("classifier.0", "classifier.3")  # hidden fc after Hardswish
    e = backbones.get("efficientnet_b0")
    assert e.last == "features.8.2" and e.preprocess().interpolation == "bicubic"
    # the same rules applied to torchvision's VGG-16 find the registry's hand-named taps
    from fne.backbones import zoo

    found = zoo.tv_discover("vgg16")
    assert [t.module for t in found.taps] == [t.module for t in backbones.get("vgg16").taps]
    assert found.fc_layers == backbones.get("vgg16").fc_layers


def test_preprocessing_comes_from_the_weights_and_keys_the_store():
    assert backbones.get("vgg16").preprocess().key == "center224-tv"  # torchvision pixels (issue 18): a key of their own
    assert backbones.get("efficientnet_lite0").preprocess().key == "center224-tv"
    r = backbones.get("resnet50")  # DEFAULT = IMAGENET1K_V2: resize 232
    assert r.preprocess().to_dict()["resize"] == 232 and r.preprocess().key == "center224-r232-tv"
    v1 = backbones.get("resnet50", "IMAGENET1K_V1")
    assert v1.preprocess().resize == 256 and v1.preprocess().key == "center224-tv"
    assert backbones.fingerprint("resnet50", "IMAGENET1K_V2") == backbones.fingerprint("resnet50")
    assert backbones.fingerprint("resnet50", "IMAGENET1K_V1") != backbones.fingerprint("resnet50")
    t = backbones.get("timm:vit_tiny_patch16_224").preprocess()
    assert t.interpolation == "bicubic" and t.mean == (0.5, 0.5, 0.5) and t.key != "center224-r248-bicubic"
    with pytest.raises(WeightsError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        backbones.fingerprint("resnet50", "IMAGENET1K_V9")


def test_bad_names_say_how_to_name_models(capsys):
    with pytest.raises(FneError) as e:
        backbones.get("resnet5")
    msg = str(e.value)
    assert "Did you mean: resnet50" in msg and "timm:NAME" in msg and "vgg16" in msg
    with pytest.raises(FneError, match=r"Did you mean: vgg19, vgg16, vgg13, vgg11\?"):  # each name once
        backbones.get("vgg61")
    with pytest.raises(FneError, match=r"fne's registry \(efficientnet_lite0, vgg16, vgg19\)"):
        backbones.get("timm:resnet1888")
    with pytest.raises(FneError, match="Did you mean: timm:vit_tiny_patch16_224"):
        backbones.get("timm:vit_tiny_patch16_22")
    with pytest.raises(FneError, match="no pretrained tag 'nope'.*resnet18.a1_in1k"):
        backbones.get("timm:resnet18.nope")
    with pytest.raises(FneError) as e:  # no name: every timm name begins with it (it offered timm:dla34, ...)
        backbones.get("timm:")
    assert "Did you mean" not in str(e.value) and "timm:NAME" in str(e.value)
    assert main(["backbones", "convnxt_tiny"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean: convnext_tiny" in err and "Traceback" not in err


def test_cli_backbones_json_and_list(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "vgg16" in out and "timm:NAME" in out and "torchvision" in out
    assert main(["backbones", "timm:vit_tiny_patch16_224"]) == 0  # as text: a header, then a line per tap
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "timm:vit_tiny_patch16_224 (timm): 25 taps, 4800 features, last pre_logits, classifier head"
    assert lines[1].startswith("preprocess: resize 248, crop_size 224, crop center, mean [0.5, 0.5, 0.5]")
    assert lines[2].split() == ["blocks.0.cls", "blocks.0", "192", "cls", "(prefix", "tokens", "1)"]
    assert len(lines) == 2 + 25 and lines[-1].split() == ["pre_logits", "head", "192", "mean_nchw"]
    assert main(["backbones", "timm:vit_tiny_patch16_224", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["arch"] == "timm:vit_tiny_patch16_224"
    assert set(d["preprocess"]) >= {"resize", "crop_size", "mean", "std", "interpolation"}
    tap = d["taps"][0]
    assert {"name", "module", "channels", "pool", "prefix_tokens"} <= set(tap)
    assert tap == {"name": "blocks.0.cls", "module": "blocks.0", "channels": 192, "pool": "cls",
                   "prefix_tokens": 1, "on_input": False}
    model = timm.create_model("vit_tiny_patch16_224")  # `module` names the model timm builds
    for t in d["taps"]:
        model.get_submodule(t["module"])


def test_offline_imagenet_says_where_to_put_the_file(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(socket, "create_connection", offline)  # no network tried: the host does not answer
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as e:
        backbones.load_backbone("resnet18", "imagenet")
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "weights=PATH" in msg and "--weights PATH" in e.value.cli
    # timm: the Hugging Face cache or torch hub's, named in one line, no traceback
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["extract", "digits", "--arch", "timm:resnet18", "--cache", str(tmp_path / "c"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "timm:resnet18" in err and "--weights PATH" in err and "Traceback" not in err
    assert "huggingface" in err.lower() and "`hf download timm/resnet18.a1_in1k`" in err


def test_weights_files_and_meta_build(tmp_path):
    model = backbones.load_backbone("timm:vit_tiny_patch16_224", "random", seed=4)
    from safetensors.torch import save_file

    save_file(model.state_dict(), tmp_path / "w.safetensors")
    again = backbones.load_backbone("timm:vit_tiny_patch16_224", str(tmp_path / "w.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not any(p.is_meta for p in again.parameters())
    torch.save(model.state_dict(), tmp_path / "w.pt")
    assert backbones.fingerprint("timm:vit_tiny_patch16_224", str(tmp_path / "w.pt")).startswith("file-")
    with pytest.raises(WeightsError, match="does not fit arch='resnet18'"):
        backbones.load_backbone("resnet18", str(tmp_path / "w.pt"))


def test_extract_fit_export_with_a_timm_vit(tmp_path):
    from fne.linear.export import export
    from fne.linear.fit import fit

    from .conftest import write_digits

    digits_folder = write_digits(tmp_path / "data", per_class=4, classes=2)
    kw = dict(arch="timm:vit_tiny_patch16_224", weights="random", precision="fp32", storage_dtype="float32",
              cache=str(tmp_path / "cache"), device="cpu", workers=0, batch_size=8)
    m = fit(digits_folder, features="fne", head="logreg", splits=1, out=str(tmp_path / "run"),
            extract_missing=True, **kw)
    assert m["n_train"] > 0 and 0 <= m["accuracy"] <= 1
    r = export(digits_folder, features="fne", out=tmp_path / "x.h5", **kw)
    b = backbones.get("timm:vit_tiny_patch16_224")
    with h5py.File(tmp_path / "x.h5") as f:
        assert f["embedding"].shape == (8, b.dim)
        assert [f"layers/{t.name}" for t in b.taps] == r["datasets"][:-1]
        assert f["layers/blocks.0.cls"].shape == (8, 192)
        a = f.attrs
        assert a["crop_size"] == 224 and a["resize"] == 248 and a["interpolation"] == "bicubic"
        assert np.allclose(a["mean"], 0.5) and np.allclose(a["std"], 0.5)
        assert a["root"] == str(digits_folder.resolve())


@pytest.mark.parametrize("arch,size", [("resnet18", 32), ("timm:vit_tiny_patch16_224", None), ("squeezenet1_1", 32)])
def test_train_frozen_one_epoch(arch, size, digits_split, tmp_path):
    from fne.training.train import train

    m = train(str(digits_split), "frozen", tmp_path / "run", arch=arch, weights="random", epochs=1,
              image_size=size, batch_size=16, workers=0, progress=False, precision="fp32", lr=0.01,
              val_fraction=0.0)
    assert m["mode"] == "frozen" and 0 <= m["accuracy"] <= 1
    b = backbones.get(arch)
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert state[b.classifier + ".weight"].shape[0] == 3  # the new head replaced the classifier


def test_pipelines_accept_any_backbone_name():
    from fne.pipeline.plan import checks

    archs = checks().archs
    assert "vgg16" in archs and "resnet18" in archs and "timm:resnet18" in archs
    assert "resnet5" not in archs and "timm:nope" not in archs


def test_structures_beyond_plain_stages():
    """Blocks in ModuleLists, one-of-a-kind blocks, conv classifiers and distilled heads."""
    m = backbones.get("maxvit_t")  # stages (MaxVitBlock) in a ModuleList, which is never called
    blocks = [t.module for t in m.taps][1:-1]  # itself, each holding its blocks in another
    assert len(blocks) == 11 and blocks[:3] == ["blocks.0.layers.0", "blocks.0.layers.1", "blocks.1.layers.0"]
    assert m.dim == backbones.get("timm:maxvit_tiny_tf_224").dim  # the same network in timm
    i = backbones.get("inception_v3")  # Mixed_6a / Mixed_7a: each the only one of its type
    mods = [t.module for t in i.taps]
    assert "Mixed_6a" in mods and "Mixed_7a" in mods and not any(".branch" in n for n in mods)
    assert i.tap("Mixed_7a").channels == 1280 and i.last == "Mixed_7c"
    s = backbones.get("squeezenet1_1")  # a 1x1 conv classifier, then a ReLU on the class scores
    assert s.taps[-1].module == "features.12" and s.last == "features.12"
    assert s.fc_layers == ("classifier.1",)
    d = backbones.get("timm:deit_tiny_distilled_patch16_224")  # get_classifier(): (head, head_dist)
    assert d.classifier == "head" and d.taps[0].prefix_tokens == 2 and d.last == "pre_logits"


def test_googlenet_and_inception_take_the_input_their_weights_do():
    # torchvision builds both with transform_input=True when it loads their weights: ImageNet-
    # normalised input mapped to (x - 0.5) / 0.5. fne normalises that way itself.
    from fne.backbones import zoo

    x = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    for arch in ("googlenet", "inception_v3"):
        b = backbones.get(arch)
        assert b.mean == b.std == (0.5, 0.5, 0.5), arch
        assert b.preprocess().key != backbones.get("resnet18").preprocess().key  # a store of its own
        model = zoo.meta_model(lambda arch=arch: backbones.get(arch).build(1000))
        assert model.transform_input is False
        theirs = tvm.get_model(arch, weights=None, init_weights=False, transform_input=True)
        imagenet = backbones.get("resnet18")
        ref = theirs._transform_input(Normalize(imagenet.mean, imagenet.std)(x))
        assert torch.allclose(Normalize(b.mean, b.std)(x), ref, atol=1e-5), arch
    assert backbones.get("resnet18").mean != (0.5, 0.5, 0.5)


def test_weights_of_another_depth_are_refused(tmp_path, capsys):
    torch.save(tvm.resnet34().state_dict(), tmp_path / "r34.pt")
    with pytest.raises(WeightsError, match=r"r34.pt': does not fit arch='resnet18' .*96 in the file"):
        backbones.load_backbone("resnet18", str(tmp_path / "r34.pt"))
    torch.save(tvm.resnet18(num_classes=3).state_dict(), tmp_path / "r18.pt")  # a new head: fine
    assert backbones.load_backbone("resnet18", str(tmp_path / "r18.pt")).fc.out_features == 1000


def test_other_tasks_and_prefixes_are_named(capsys):
    with pytest.raises(FneError, match=r"torchvision detection model; .* classifier: resnet50\."):
        backbones.get("fasterrcnn_resnet50_fpn")
    with pytest.raises(FneError, match="torchvision video model"):
        backbones.get("r3d_18")
    with pytest.raises(FneError, match=r"Did you mean: timm:vit_tiny_patch16_224, "):
        backbones.get("timm:vit_tiny")
    assert main(["backbones", "deeplabv3_resnet50"]) == 2
    err = capsys.readouterr().err
    assert "segmentation" in err and "Traceback" not in err


def test_a_store_of_layers_an_earlier_fne_tapped_says_what_to_do(tmp_path):
    from fne.cache.store import Store, StoreKey
    from fne.errors import CacheError

    key = StoreKey("squeezenet1_1", "random-seed0", "center224-tv", "fp32", "float16")
    old = Store.open(str(tmp_path), key, [("features.12", 512), ("classifier.2", 1000)], 1)
    old.commit([], {}, bad={"k": "cannot read"})  # store.json written
    with pytest.raises(CacheError, match=r"earlier fne tapped in squeezenet1_1 \(this one drops "
                                         r"classifier.2\); move that folder aside"):
        Store.open(str(tmp_path), key, [("features.12", 512)], 1)
    with pytest.raises(CacheError, match="describes other rows"):  # anything else: as before
        Store.open(str(tmp_path), key, [("features.12", 512), ("classifier.2", 1000)], 2)


def _timm_taps(name: str, size: int, hooked) -> tuple:
    """timm:`name`'s Backbone, each tap's rows (name -> tensor) of two random images at `size` px
    (seeded weights), and the raw outputs of the modules `hooked(model)` names (key -> module),
    from plain forward hooks."""
    b = backbones.get(f"timm:{name}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(name, img_size=size).eval()
    tap, out = TapModel(model, b).eval(), {}
    for key, module in hooked(model).items():
        module.register_forward_hook(lambda m, i, o, key=key: out.__setitem__(key, o.detach().clone()))
    with torch.no_grad():
        got = dict(zip([t.name for t in b.taps], tap(torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8))))
    return b, got, out


def test_cait_taps_count_the_class_token_only_where_it_is():
    """CaiT's self-attention blocks hold the patch tokens alone; its class-attention blocks
    (blocks_token_only) return the class token alone. Before: every block `prefix_tokens=1`, so
    blocks.N.cls was patch token 0 and blocks_token_only.N.mean the mean of no tokens (NaN)."""
    b, got, out = _timm_taps("cait_xxs24_224", 32, lambda m: {"blocks.0": m.blocks[0], "cls": m.blocks_token_only[1]})
    assert "blocks.0.cls" not in got and "blocks_token_only.0.mean" not in got
    assert b.tap("blocks.0.mean").prefix_tokens == 0 and b.tap("blocks_token_only.1.cls").prefix_tokens == 1
    assert out["blocks.0"].shape[1] == 4 and out["cls"].shape[1] == 1  # 2x2 patches; the class token
    assert torch.allclose(got["blocks.0.mean"], out["blocks.0"].mean(1), atol=1e-5)
    assert torch.allclose(got["blocks_token_only.1.cls"], out["cls"][:, 0], atol=1e-6)
    assert all(torch.isfinite(g).all() for g in got.values())


def test_a_vit_whose_weights_take_another_size_is_built_at_it():
    """vit_h_14's DEFAULT weights (SWAG) take 518 pixels, which 14 divides and 256 does not:
    whether the builder takes `image_size` was asked at 256, and the AssertionError escaped."""
    b = backbones.get("vit_h_14")
    assert b.input_size == 518 and b.last == "pre_logits"
    assert b.tap("encoder.layers.encoder_layer_0.mean").channels == 1280
    from fne.backbones import zoo

    model = zoo.meta_model(lambda: b.build(1000))
    assert model.image_size == 518


def test_coat_class_tokens_and_models_of_several_heads():
    """CoaT declares no num_prefix_tokens but carries a class token (cls_token1..4) ahead of each
    stage's patch tokens: before, its mean took that token in, and no `cls` tap was made."""
    b, got, out = _timm_taps("coat_tiny", 64, lambda m: {"b": m.serial_blocks1[0]})
    assert b.tap("serial_blocks1.0.mean").prefix_tokens == 1 and b.tap("serial_blocks4.1.cls").channels == 152
    assert out["b"].shape[1] == 16 * 16 + 1
    assert torch.allclose(got["serial_blocks1.0.mean"], out["b"][:, 1:].mean(1), atol=1e-5)
    assert torch.allclose(got["serial_blocks1.0.cls"], out["b"][:, 0], atol=1e-6)
    # CrossViT (two branches), EfficientViM (a head per stage): class scores of several heads combined
    for arch in ("timm:crossvit_tiny_240", "timm:efficientvim_m1"):
        if not _in_timm(arch):  # efficientvim: newer than the lowest supported timm, 1.0.3
            continue
        with pytest.raises(FneError, match=r"combines the class scores of \d heads .*one classifier"):
            backbones.get(arch)


def test_a_head_that_pools_inside_is_not_the_classifier():
    """get_classifier() of timm's SAM ViT and Sequencer is the whole ClassifierHead, whose input is
    the unpooled map: before, pre_logits was that map flattened (150528 and 98304 wide, and of
    another width at any other input size). The classifier is the head's Linear."""
    for arch, width in (("timm:samvit_base_patch16_224", 768), ("timm:sequencer2d_s", 384)):
        b = backbones.get(arch)
        assert b.classifier == "head.fc" and b.fc_layers == ("head.fc",), arch
        assert b.last == "pre_logits" and b.tap("pre_logits").channels == width, arch
    # a 1x1 conv classifier on the pooled map (DLA, DPN, ResNetV2) is a layer itself, not a head to look into
    assert backbones.get("timm:dla46x_c").classifier == "fc" and backbones.get("timm:resnetv2_50").classifier == "head.fc"
    # a model with no classes (SAM's encoder): `last` is what its Identity head reads, pooled
    s = backbones.get("timm:samvit_base_patch16")
    assert s.num_classes == 0 and s.tap("pre_logits").channels == 256  # before: 256 x 64 x 64 declared
    # TNT's blocks return (pixel tokens of every patch, patch tokens): the first is not per image
    with pytest.raises(FneError, match="no layers to tap in TNT: .* per image"):  # before: rows of 196 x B
        backbones.get("timm:tnt_s_patch16_224")  # in the lowest supported timm too (newer ones add tnt_s_legacy_*)
    v = backbones.get("timm:volo_d1_224")  # its class-attention post_network: 197 tokens, a class token
    assert v.tap("post_network.1.mean").prefix_tokens == 1 and v.tap("post_network.1.cls").channels == 384



STAGE_CASES = [  # (arch, taps' modules from `start` on): before, each stage was one tap
    ("timm:pit_ti_224", 0, ["transformers.0.blocks.0", "transformers.0.blocks.0", "transformers.0.blocks.1"]),
    ("timm:fasternet_t0", 0, ["stages.0", "stages.1.blocks.0", "stages.1.blocks.1"]),  # one block: one tap
    ("timm:cs3darknet_focus_s", 2, ["stages.1.conv_down", "stages.1.conv_exp", "stages.1.blocks.0",
                                    "stages.1.blocks.1", "stages.1.blocks.2", "stages.1.conv_transition"]),
    ("timm:shvit_s1", 3, ["stages.0.blocks.0", "stages.0.blocks.1", "stages.1.downsample.0"]),
    ("timm:tiny_vit_5m_224", 1, ["stages.0.blocks.0", "stages.0.blocks.1", "stages.1.downsample.act1"]),
]


@pytest.mark.parametrize("arch,start,want", STAGE_CASES, ids=[c[0] for c in STAGE_CASES])
def test_blocks_inside_stages_with_a_forward_of_their_own(arch, start, want):
    """PiT's, FasterNet's, cs3 CSPDarknet's, SHViT's and TinyViT's stages are modules with a forward
    of their own (not named *Stage) holding a Sequential of blocks: their blocks are tapped."""
    _installed(arch)
    assert [t.module for t in backbones.get(arch).taps][start:start + len(want)] == want


def test_composite_blocks_and_pit_distilled_tokens():
    p = backbones.get("timm:pit_ti_224")  # before: 4 taps, transformers.0..2 (maps) and pre_logits
    assert len(p.taps) == 25 and p.tap("transformers.2.blocks.3.mean").channels == 256
    # PiT distilled's cls_token parameter holds the class and distillation tokens
    assert backbones.get("timm:pit_ti_distilled_224").tap("transformers.1.blocks.0.cls").prefix_tokens == 2
    # composite blocks stay one tap each: Inception branches and HGNet's layers (conv-norm-act
    # units, a ModuleList whose outputs are concatenated), Xception's separable convolutions
    g = [t.module for t in backbones.get("googlenet").taps]
    assert "inception3a" in g and not any(".branch" in n for n in g)
    assert "stages.2.blocks.0" in {t.module for t in backbones.get("timm:hgnetv2_b0").taps}
    assert "blocks.0" in {t.module for t in backbones.get("timm:xception41p").taps}
