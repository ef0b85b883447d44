"""The tap model: the frozen backbone with a hook on every tap, returning pooled rows.

Pooling happens inside each hook, on the device and in the forward pass, so no full
activation map outlives its layer.
"""

from __future__ import annotations

import contextvars
import threading
import time
import warnings
from concurrent.futures import Future

import torch
from torch import nn

from fne.backbones import registry as backbones
from fne.backbones.normalize import Normalize
from fne.backbones.pooling import POOLS
from fne.devices import autocast
from fne.handoff import wait_future


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


class TapRunner:
    """The tap model as the extraction loop sees it: uint8 views in, rows in the storage dtype out.

    Behind one call: building the model (on first use, or on a thread of its own from `prepare`
    on, while the reader reads the first batches), padding to one batch shape when compiled,
    precision (autocast), the compile fallback to eager, and the copy of the rows to the host
    (asynchronous on CUDA, with an event the writer waits on). On CUDA the built model also runs
    once on a batch of zeros on that thread (not when compiled), so that the first forward's
    one-time set-up (kernels loaded, cuBLAS and cuDNN handles and choices) is done beside the
    reads too. `model_load` (the build: imports, weights, device set-up), `warm_up` (that
    forward), `model_wait` (how long the first call waited for both) and `first_forward`
    (compilation and first-call set-up included) are its timings.

    Parameters
    ----------
    spec : StoreSpec
        Which backbone, weights and taps.
    device : torch.device
        Where the network runs.
    precision : str
        Resolved precision ("fp32", "bf16", "fp16").
    out_dtype : torch.dtype
        The rows' storage dtype.
    compile : bool
        Compile the model (padding every batch to `batch_size` images).
    batch_size : int
        Images per batch: what every compiled call is padded to, and the size of the warm-up
        batch on CUDA (0: no warm-up).
    """

    def __init__(self, spec, device: torch.device, precision: str, out_dtype: torch.dtype,
                 compile: bool = False, batch_size: int = 0):
        self.spec, self.device, self.precision, self.out_dtype = spec, device, precision, out_dtype
        self.compile, self.batch_size = compile, batch_size
        self.pad_to = batch_size if compile else 0
        self.model = None
        self.model_load = self.warm_up = self.model_wait = self.first_forward = 0.0
        self._building: Future | None = None

    def prepare(self) -> None:
        """Start building the model on a thread of its own (`fne-model`): its imports (torchvision's
        alone took 4.8 s on a GPU machine), weights and the device's set-up overlap the reader's
        first batches, and the first call waits only for what is left. An error in the build is
        raised by that call. Start it after the loader's workers have forked: a fork while
        another thread imports could leave a worker holding an import lock that nobody frees.
        The thread is a daemon: an interrupted run does not wait at exit for a build that may
        be stuck (a download from a network that drops its packets)."""
        if self.model is None and self._building is None:
            self._building = Future()
            # in the caller's context: what a weights download that fails says (`fne.backbones.fetch.loading`)
            threading.Thread(target=contextvars.copy_context().run, args=(self._build_into, self._building),
                             name="fne-model", daemon=True).start()

    def close(self) -> None:
        """Wait for a build still running (a run whose images all turned out stored needed no
        network), so that no thread outlives a finished run; its error, if any, is not raised."""
        if self._building is not None:
            self._building.exception()

    def _build_into(self, future: Future) -> None:
        try:
            future.set_result(self._build(warm=True))
        except BaseException as e:  # raised by the call that needs the model
            future.set_exception(e)

    def _build(self, warm: bool = False) -> nn.Module:
        t = time.perf_counter()
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # the current device is per thread
        model = build_tap_model(self.spec, self.device, self.compile)
        self.model_load = time.perf_counter() - t
        if warm and self.device.type == "cuda" and not self.compile and self.batch_size:
            t = time.perf_counter()
            prep = self.spec.preprocess()
            zeros = torch.zeros(self.batch_size * prep.views, 3, prep.size, prep.size, dtype=torch.uint8,
                                device=self.device)
            forward(model, zeros, self.device, self.precision)
            torch.cuda.current_stream(self.device).synchronize()
            self.warm_up = time.perf_counter() - t
        return model

    @property
    def compiled(self) -> bool:
        return getattr(self.model, "_orig_mod", None) is not None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """uint8 (B, V, 3, S, S) -> ((B, V, D) rows on the host, CUDA event or None)."""
        b, views = x.shape[:2]
        x = x.reshape(b * views, *x.shape[2:])
        n = x.shape[0]
        if self.pad_to and n < self.pad_to * views:  # one shape: no recompilation
            x = torch.cat([x, x.new_zeros((self.pad_to * views - n, *x.shape[1:]))])
        if self.model is None:
            t = time.perf_counter()
            self.model = wait_future(self._building) if self._building is not None else self._build()
            self.model_wait = time.perf_counter() - t
        t = time.perf_counter()
        self.model, pooled = forward(self.model, x, self.device, self.precision)
        if not self.first_forward:
            self.first_forward = time.perf_counter() - t
        flat = torch.cat(pooled, dim=1)[:n].to(self.out_dtype).reshape(b, views, -1)
        if self.device.type != "cuda":  # MPS: copied to the host here (the writer reads host rows)
            return flat.cpu(), None
        rows = flat.to("cpu", non_blocking=True)  # into pinned memory; the writer waits on the event
        event = torch.cuda.Event()
        event.record()
        return rows, event
