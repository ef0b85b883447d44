"""Whether a download can happen here, found out in seconds: a machine without internet (a
cluster's compute node) otherwise waits for huggingface_hub's retries (about a minute) or for a
firewall that drops packets (minutes) before it learns that it cannot download."""

from __future__ import annotations

import os
import re
import socket
import threading
import urllib.parse
import urllib.request

PROBE_SECONDS = 5.0  # how long a download's host has to answer before fne says it is offline


def unreachable(url: str, timeout: float = PROBE_SECONDS) -> str | None:
    """None when a TCP connection to `url`'s host opens within `timeout` seconds (to the proxy
    that the environment's `https_proxy`/`http_proxy` names for it, unless `no_proxy` exempts
    the host), else why not, in a few words. Name resolution counts in the time."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(parts.scheme)
    if proxy:
        p = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        host, port = p.hostname or "", p.port or (443 if p.scheme == "https" else 80)
    said: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            said.append(None)
        except OSError as e:
            said.append(f"{host}:{port} unreachable: {e}")

    probe = threading.Thread(target=connect, name="fne-probe", daemon=True)  # DNS has no timeout of its own
    probe.start()
    probe.join(timeout)
    return said[0] if said else f"{host}:{port} did not answer within {timeout:g} s"


def hf_offline(datasets: bool = False) -> bool:
    """Whether Hugging Face downloads are switched off: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE
    (and HF_DATASETS_OFFLINE, for `datasets`), as huggingface_hub read them at import or as the
    environment says now."""
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    now = any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
              for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *(("HF_DATASETS_OFFLINE",) if datasets else ())))
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or now


def hub_cli() -> str:
    """The Hugging Face Hub's command line as the installed `huggingface_hub` names it: `hf`
    from 0.34 (the only one in 1.x and later), `huggingface-cli` before."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(x) for x in re.findall(r"\d+", version("huggingface_hub"))[:2])
    except (PackageNotFoundError, ValueError):
        return "hf"
    return "hf" if (major, minor) >= (0, 34) else "huggingface-cli"
