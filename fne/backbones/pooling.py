"""How a tap's output becomes one float32 (B, C) row: the pooling each `tap.Tap` declares.

Every function reduces on the tensor's own device without first copying it to float32
(`mean(..., dtype=float32)` accumulates in float32 directly; token pools slice a view first),
so pooling inside a forward hook costs one pass over the activation and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def mean_nchw(x: torch.Tensor, prefix_tokens: int = 0) -> torch.Tensor:
    """(B, C, H, W) -> spatial mean; (B, C) fc outputs as a float32 copy (not a view, which an
    in-place op after the layer would change)."""
    return x.mean(dim=(2, 3), dtype=torch.float32) if x.dim() == 4 else x.to(torch.float32, copy=True).flatten(1)


def mean_nhwc(x: torch.Tensor, prefix_tokens: int = 0) -> torch.Tensor:
    """(B, H, W, C) channels-last maps (torchvision / timm Swin) -> spatial mean."""
    return x.mean(dim=(1, 2), dtype=torch.float32)


def cls(x: torch.Tensor, prefix_tokens: int = 1) -> torch.Tensor:
    """(B, N, C) tokens -> the class token (token 0), a copy: a float32 view would keep the
    block's whole (B, N, C) output alive until the forward ends, and see later in-place ops."""
    return x[:, 0].to(torch.float32, copy=True)


def mean_tokens(x: torch.Tensor, prefix_tokens: int = 0) -> torch.Tensor:
    """(B, N, C) tokens -> mean of the patch tokens (class/register tokens left out)."""
    return x[:, prefix_tokens:].mean(dim=1, dtype=torch.float32)


POOLS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "mean_nchw": mean_nchw,
    "mean_nhwc": mean_nhwc,
    "cls": cls,
    "mean_tokens": mean_tokens,
}


def pool(name: str, x, prefix_tokens: int = 0) -> torch.Tensor:
    """Apply the named pooling to a hook's tensor (a tuple output: its first element)."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    return POOLS[name](x, prefix_tokens)
