"""What a tap is: a layer of a backbone whose pooled output is cached, as a registry entry or
`fne.backbones.zoo` declares it (no torch: store keys and reading cached rows need only these)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tap:
    """A layer whose pooled output is cached. `on_input` taps the module's input.

    `pool` names a function of `fne.backbones.pooling` (mean_nchw, mean_nhwc, cls, mean_tokens);
    `prefix_tokens` is the number of class/register tokens ahead of the patch tokens.
    """

    name: str
    module: str
    channels: int
    on_input: bool = False
    pool: str = "mean_nchw"
    prefix_tokens: int = 0

    def to_dict(self) -> dict:
        return {"name": self.name, "module": self.module, "channels": self.channels, "pool": self.pool,
                "prefix_tokens": self.prefix_tokens, "on_input": self.on_input}
