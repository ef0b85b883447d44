"""Pretrained weights on a machine that may have no network (a cluster's compute node).

The libraries' own loading is used throughout: torch hub's `load_state_dict_from_url` for
torchvision's files (and fne's VGG), `timm.create_model(pretrained=True)` for timm's. Before it
runs, the file is looked for where that library keeps it (torch hub's `checkpoints/`, the Hugging
Face hub cache); a file found there is loaded without touching the network. A file that is not
there is downloaded only when the host it comes from (or the HTTPS proxy the environment names)
answers within `fne.network.PROBE_SECONDS`, and never when `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is
set for a Hugging Face file: otherwise huggingface_hub retries for about a minute, and a firewall
that drops packets holds urllib for minutes. A load that cannot happen is one line (a
`WeightsError`) naming the backbone, the file, the folder to put it in and how to get it, then
what else the user can do, in the words of the verb at hand (`loading`).
"""

from __future__ import annotations

import contextlib
import contextvars
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fne import network
from fne.backbones import zoo
from fne.errors import WeightsError
from fne.network import hf_offline, hub_cli
from fne.option_handling import refusal


def other_weights(python: bool) -> str:
    """The advice that ends a failed download: other weights, as the caller names them."""
    path, random = ("weights=PATH", "weights='random'") if python else ("--weights PATH", "--weights random")
    return f"or pass {path} to a state dict (.pth/.pt/.safetensors), or {random} for a test run."


@dataclass
class _Loading:
    """What the loads of one verb's weights share: what else its user can do where they cannot
    be had (`instead(python)`), and the hosts that answered its probe (asked once, not again
    when the download follows: two probes cost up to twice `PROBE_SECONDS`)."""

    instead: Callable[[bool], str] = other_weights
    answered: set[str] = field(default_factory=set)


_LOADING: contextvars.ContextVar[_Loading | None] = contextvars.ContextVar("fne_weights_loading", default=None)


@contextlib.contextmanager
def loading(instead: Callable[[bool], str] | None = None) -> Iterator[None]:
    """The loads of pretrained weights within: refused naming `instead(python)` (what else the
    user can do: `fne predict` and `fne.load` take no other weights, `catalog.fitted_weights_only`),
    each host probed once. Without `instead`, within another `loading`: that one's (`fne extract`
    run by `fne predict`); else `other_weights`. Threads see it where they are started in a
    copy of the context (`fne.extraction.taps.TapRunner`)."""
    outer = _LOADING.get()
    if instead is None and outer is not None:
        yield
        return
    token = _LOADING.set(_Loading(instead or other_weights))
    try:
        yield
    finally:
        _LOADING.reset(token)


def _instead(python: bool) -> str:
    """What else the user can do, as the verb at hand says it (`loading`)."""
    return (_LOADING.get() or _Loading()).instead(python)


def probe(url: str) -> str | None:
    """`fne.network.unreachable(url)`; within a `loading`, None without asking again where the
    host answered already."""
    now = _LOADING.get()
    host = urllib.parse.urlsplit(url).netloc
    if now is not None and host in now.answered:
        return None
    why = network.unreachable(url)
    if why is None and now is not None:
        now.answered.add(host)
    return why


# ------------------------------------------------------------------ torch hub (torchvision, VGG)


def hub_file(url: str) -> Path:
    """Where torch hub keeps the file downloaded from `url` (TORCH_HOME moves it)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlsplit(url).path).name


def hub_state(name: str, url: str) -> dict:
    """ImageNet weights of backbone `name` from torch hub's cache, downloaded from `url` (the
    hash in the file's name checked) where they are not there yet and its host answers."""
    file = hub_file(url)
    why = None if file.is_file() else probe(url)
    if why is None:
        try:
            return torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True)
        except Exception as e:  # URLError, OSError, SSL errors, a damaged file
            why = f"{'loading' if file.is_file() else 'downloading'} {url} failed: {e}"
    raise hub_refusal(name, url, why) from None


def hub_refusal(name: str, url: str, why: str) -> WeightsError:
    """The one line for ImageNet weights of backbone `name` (from `url`) that could not be loaded:
    why, where to put the file and how to get it, then what else the user can do (`loading`:
    other weights, for a verb that takes them)."""
    return refusal(lambda py: f"cannot load ImageNet weights for {name} ({why}). {hub_where(url)}, "
                              f"{_instead(py)}", WeightsError)


def hub_where(url: str, get: str | None = None) -> str:
    """Where to put the file downloaded from `url`, and how to get it: by hand, or by the command
    `get` (torch hub's own download by default)."""
    file = hub_file(url)
    get = get or f"python -c \"import torch; torch.hub.load_state_dict_from_url('{url}')\""
    return (f"Put {file.name} in {file.parent} (torch hub's cache; TORCH_HOME moves it): download {url} on a "
            f"machine with internet (or run `{get}` there) and copy the file here")


def tv_state(name: str, w) -> dict:
    """The state dict of torchvision's weights enum member `w` for model `name`."""
    return hub_state(name, w.url)


# ------------------------------------------------------------------ timm (Hugging Face hub)


def hf_cached(hub_id: str, filename: str | None) -> str | None:
    """The local path of the weights file of Hugging Face repo `hub_id` (`repo@revision`) that
    timm would download (its safetensors twin first), where the hub cache holds it; else None."""
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = hub_id.partition("@")
    filename = filename or "pytorch_model.bin"
    safe = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
    for name in (safe[filename], filename) if filename in safe else (filename,):
        found = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


def timm_pretrained(model_name: str) -> nn.Module:
    """timm's `model_name` with its pretrained weights: from the local cache where they are there,
    else downloaded by timm where the host answers; else a WeightsError saying where to put them."""
    timm = zoo.need_timm()
    cfg = zoo.timm_pretrained_cfg(model_name)
    hub, url = cfg.get("hf_hub_id"), cfg.get("url")
    # TIMM_USE_OLD_CACHE=1: timm loads the file torch hub's cache holds, where it is there
    old_cache = getattr(getattr(timm.models, "_builder", None), "_USE_OLD_CACHE", False) and url and hub_file(url).is_file()
    why = None
    if hub and not old_cache:
        local = hf_cached(hub, cfg.get("hf_hub_filename"))
        if local is not None:  # timm loads the file itself (its filters, class-count changes): no network
            # as from the hub: a `custom_load=True` model's hub file is a state dict, an 'hf' one's its own format
            file = {"file": local, "source": None, "custom_load": cfg.get("custom_load") == "hf"}
            return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=file)
        why = hf_unreachable()
    elif url and not hub_file(url).is_file():
        why = probe(url)
    if why is None:
        try:
            return timm.create_model(model_name, pretrained=True)
        except Exception as e:  # a download that failed after all
            why = f"{type(e).__name__}: {e}"
    raise timm_refusal(model_name, cfg, why)


def hf_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be downloaded from here (its offline mode, or its host not
    answering within `PROBE_SECONDS`); None where it can."""
    from huggingface_hub.constants import ENDPOINT

    return ("Hugging Face's offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE) and the file is not in "
            "the cache") if hf_offline() else probe(ENDPOINT)


def timm_refusal(model_name: str, cfg: dict, why: str) -> WeightsError:
    """The one line for timm weights that could not be loaded: why, where to put which file and
    how to get it, then what else the user can do (as `hub_refusal`'s)."""
    return refusal(lambda py: f"cannot load pretrained weights for timm:{model_name} ({why}). "
                              f"{timm_where(model_name, cfg)}, {_instead(py)}", WeightsError)


def timm_where(model_name: str, cfg: dict) -> str:
    """Where timm's pretrained weights of `model_name` (pretrained config `cfg`) go, and how to
    get them."""
    full = f"{cfg.get('architecture', model_name)}.{cfg['tag']}" if cfg.get("tag") else model_name
    get = f"python -c \"import timm; timm.create_model('{full}', pretrained=True)\""
    hub, url = cfg.get("hf_hub_id"), cfg.get("url")
    if hub:
        from huggingface_hub.constants import HF_HUB_CACHE

        repo = hub.partition("@")[0]
        return (f"Put the folder {Path(HF_HUB_CACHE) / ('models--' + repo.replace('/', '--'))} in place (the "
                f"Hugging Face hub cache; HF_HOME or HF_HUB_CACHE moves it): run `{get}` (or `{hub_cli()} "
                f"download {repo}`) on a machine with internet and copy that folder from its cache to here")
    if url:
        return hub_where(url, get)
    return f"Run `{get}` on a machine with internet to see where timm keeps it"
