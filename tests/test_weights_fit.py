"""A --weights file that does not fit --arch is refused before any image is read: `fne extract`
before its loader workers and progress line, `fne backbones ARCH --weights FILE` and
`fne run --dry-run` in a line; from the file's tensor names and shapes alone (`fne.backbones.fits`),
with the words loading it gives (`registry.load_backbone`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fne.extraction.extract as fx
from fne.backbones import fits
from fne.backbones import registry as backbones
from fne.backbones.catalog import describe_backbone
from fne.cli import main
from fne.errors import WeightsError

CLI_FAST = ["--precision", "fp32", "--storage-dtype", "float32", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def r18(tmp_path_factory) -> Path:
    """A resnet18 state dict (random weights)."""
    from torchvision.models import resnet18

    path = tmp_path_factory.mktemp("w") / "r18.pt"
    torch.save(resnet18().state_dict(), path)
    return path


def test_a_file_of_another_arch_is_refused_before_the_loader_with_loadings_words(r18, digits_folder, tmp_path,
                                                                                 monkeypatch, capsys):
    with pytest.raises(WeightsError) as loading:
        backbones.load_backbone("efficientnet_lite0", str(r18))
    monkeypatch.setattr(fx, "_loader", lambda *a, **k: pytest.fail("started the loader"))
    assert main(["extract", str(digits_folder), "--arch", "efficientnet_lite0", "--weights", str(r18),
                 "--cache", str(tmp_path / "c"), "--workers", "1", *CLI_FAST]) == 2
    err = capsys.readouterr().err
    assert err == f"fne extract: error: {loading.value.cli}\n"
    assert "does not fit --arch efficientnet_lite0 (" in err and "conv1.weight: not in efficientnet_lite0" in err
    assert not (tmp_path / "c").exists()  # nothing of the run left behind


def test_the_check_reads_names_and_shapes_only_and_names_a_mismatched_shape(r18, tmp_path, monkeypatch):
    assert fits.fit_of("resnet18", r18) is None
    state = torch.load(r18, weights_only=True)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    state["fc.weight"], state["fc.bias"] = torch.zeros(5, 512), torch.zeros(5)  # another head: fits
    bent = tmp_path / "bent.pt"
    torch.save(state, bent)
    reads = []
    real = backbones.read_state_dict
    monkeypatch.setattr(backbones, "read_state_dict", lambda p, d="cpu": reads.append(str(d)) or real(p, d))
    error = fits.fit_of("resnet18", bent)
    assert reads == ["meta"]  # no tensor data read
    assert "(1 of its tensors missing or mismatched, 0 in the file" in str(error)
    assert "layer1.0.conv1.weight: shape (64, 64, 1, 1) in source, (64, 64, 3, 3) here" in str(error)


def test_backbones_says_whether_a_file_fits(r18, capsys):
    d = describe_backbone("resnet18", weights=str(r18))
    assert d["weights_fit"] == {"file": str(r18.resolve()), "fits": True, "why": None}
    d = describe_backbone("efficientnet_lite0", weights=str(r18))
    assert d["weights_fit"]["fits"] is False and "does not fit arch='efficientnet_lite0'" in d["weights_fit"]["why"]
    assert "weights_fit" not in describe_backbone("resnet18", weights="random")
    assert main(["backbones", "efficientnet_lite0", "--weights", str(r18)]) == 1  # a script's `&&` stops there
    lines = [s for s in capsys.readouterr().out.splitlines() if "does not fit" in s]
    assert len(lines) == 1 and lines[0].startswith(f"--weights '{r18}': does not fit --arch efficientnet_lite0 (")
    assert main(["backbones", "resnet18", "--weights", str(r18)]) == 0
    assert f"weights {r18.resolve()}: fits resnet18 (" in capsys.readouterr().out
    assert main(["backbones", "efficientnet_lite0", "--weights", str(r18), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["weights_fit"]["fits"] is False


def test_a_dry_run_says_the_file_does_not_fit(r18, digits_folder, tmp_path):
    from fne.pipeline.runner import run

    toml = tmp_path / "p.toml"
    toml.write_text(f'[pipeline]\nname = "w"\nadvise = false\n\n[datasets.d]\ndata = "{digits_folder}"\n\n'
                    f'[[backbones]]\narch = "efficientnet_lite0"\nweights = "{r18}"\n\n'
                    '[fit]\nfeatures = ["last"]\nheads = ["logreg"]\n')
    said: list[str] = []
    run(toml, tmp_path / "out", str(tmp_path / "c"), dry_run=True, log=said.append)
    stops = [s for s in said if "the run stops here" in s]
    assert len(stops) == 1 and f"weights={str(r18)!r}: does not fit arch='efficientnet_lite0'" in stops[0]
