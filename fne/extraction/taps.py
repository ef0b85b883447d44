"""The tap model: the frozen backbone with a hook on every tap, returning pooled rows.

Pooling happens inside each hook, on the device and in the forward pass, so no full
activation map outlives its layer.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from fne.backbones import registry as backbones
from fne.backbones.pooling import POOLS
from fne.backbones.registry import Normalize
from fne.devices import autocast


class TapModel(nn.Module):
    """Runs the backbone and returns the pooled output of every tap (as each `Tap.pool` says).

    Each hook reduces its tensor at once: torchvision's ReLUs are in-place, so a kept
    reference to a conv output would later be overwritten, and full maps would cost memory.
    """

    def __init__(self, model: nn.Module, backbone: backbones.Backbone):
        super().__init__()
        self.model = model
        self.norm = Normalize(backbone.mean, backbone.std)
        self.names = [t.name for t in backbone.taps]
        self._out: dict[str, torch.Tensor] = {}
        for t in backbone.taps:
            module = model.get_submodule(t.module)
            if t.on_input:
                module.register_forward_pre_hook(self._pre_hook(t))
            else:
                module.register_forward_hook(self._hook(t))

    # Each tap's pooling (fne.backbones.pooling: mean_nchw, mean_nhwc, cls, mean_tokens) accumulates in
    # float32 without first materialising a float32 copy of a bf16/fp16 map (for VGG-16's conv1
    # that copy alone is B x 64 x 224 x 224 x 4 bytes); token pools slice a view first.
    def _hook(self, tap: backbones.Tap):
        pool, k = POOLS[tap.pool], tap.prefix_tokens

        def hook(module, inputs, output):
            self._out[tap.name] = pool(output[0] if isinstance(output, (tuple, list)) else output, k)

        return hook

    def _pre_hook(self, tap: backbones.Tap):
        pool, k = POOLS[tap.pool], tap.prefix_tokens

        def hook(module, inputs):
            self._out[tap.name] = pool(inputs[0], k)

        return hook

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: uint8 (B, 3, H, W) -> one float32 (B, C) tensor per tap, in tap order."""
        self._out = {}
        self.model(self.norm(x).contiguous(memory_format=torch.channels_last))
        out, self._out = self._out, {}
        return [out[n] for n in self.names]


def build_tap_model(spec, device: torch.device, compile: bool = False) -> TapModel:
    b = spec.backbone()
    model = backbones.load_backbone(spec.arch, spec.weights, spec.weights_seed, device)
    for p in model.parameters():
        p.requires_grad_(False)
    tap = TapModel(model, b).eval().to(device)
    tap.model.to(memory_format=torch.channels_last)
    if compile:
        # dynamic=False: batches are padded to one shape, so one graph serves the whole run.
        tap = torch.compile(tap, dynamic=False)
    return tap


def forward(model, x: torch.Tensor, dev: torch.device, prec: str):
    """-> (model to use from now on, pooled taps). A compiled model that fails to build (no C++
    compiler, unsupported platform) falls back to eager once, with a warning."""
    try:
        with torch.inference_mode(), autocast(dev, prec):
            return model, model(x)
    except Exception as e:
        eager = getattr(model, "_orig_mod", None)
        if eager is None:
            raise
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); running eager",
                      stacklevel=3)
        with torch.inference_mode(), autocast(dev, prec):
            return eager, eager(x)
