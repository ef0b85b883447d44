"""Store identity: which store holds (or will hold) a dataset's rows, and how a reader finds it.

A store is named by (arch, weights fingerprint, preprocessing, decode, precision, storage
dtype). Extraction resolves `precision="auto"` on the machine that computes. Reading with
`auto` (the default) takes rows wherever they were computed: among the stores of the same
(arch, weights fingerprint, preprocessing, decode), the one holding most of the requested rows,
then the highest precision (fp32 > bf16 > fp16), then the wider storage (float32 > float16).
An explicit precision or storage dtype pins the store.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

from fne.backbones import registry as backbones
from fne.backbones.registry import Preprocess
from fne.cache.store import Store, StoreKey, list_stores
from fne.errors import FneError
from fne.names import DECODERS, PRECISIONS, STORAGE_DTYPES

PRECISION_RANK = {"fp32": 3, "bf16": 2, "fp16": 1}
DTYPE_RANK = {"float32": 2, "float16": 1}
DEFAULT_DTYPE = "float16"


@dataclass
class StoreSpec:
    """Everything that decides which store holds a dataset's rows."""

    arch: str = "vgg16"
    weights: str = "imagenet"
    crop: str = "center"
    precision: str = "auto"
    dtype: str = DEFAULT_DTYPE  # or "auto": any when reading, float16 when writing
    cache: str | None = None
    device: str = "auto"
    weights_seed: int = 0
    decode: str = "auto"  # "device": JPEGs decoded where the network runs (nvjpeg on CUDA);
    # "auto": writing, "device" on CUDA and "pil" elsewhere; reading, rows of either

    def backbone(self) -> backbones.Backbone:
        return backbones.get(self.arch, self.weights)

    def preprocess(self) -> Preprocess:
        return self.backbone().preprocess(self.crop)

    def _check(self) -> None:
        if self.dtype not in (*STORAGE_DTYPES, "auto"):
            raise FneError(f"bad --storage-dtype {self.dtype!r}; choose from auto, {', '.join(STORAGE_DTYPES)}")
        if self.precision not in PRECISIONS:
            raise FneError(f"bad --precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.decode not in DECODERS:
            raise FneError(f"bad decode {self.decode!r}; choose from {', '.join(DECODERS)}")

    def prep_key(self) -> str:
        # Device-decoded pixels differ from PIL's by rounding: their rows get a store of their own.
        from fne.devices import resolve_decode, resolve_device

        key = self.preprocess().key
        decode = resolve_decode(self.decode, resolve_device(self.device))  # auto: pil on CPU
        return key if decode == "pil" else f"{key}-devjpeg"

    def fingerprint(self) -> str:
        return backbones.fingerprint(self.arch, self.weights, self.weights_seed)

    def open(self) -> Store:
        """The store this machine writes to (created if absent): `auto` resolved here."""
        from fne.devices import resolve_device, resolve_precision

        self._check()
        b = self.backbone()
        precision = resolve_precision(self.precision, resolve_device(self.device))
        dtype = DEFAULT_DTYPE if self.dtype == "auto" else self.dtype
        key = StoreKey(b.name, self.fingerprint(), self.prep_key(), precision, dtype)
        return Store.open(self.cache, key, [(t.name, t.channels) for t in b.taps], self.preprocess().views)

    def pinned(self, store: Store) -> StoreSpec:
        """This spec pinned to `store`'s precision, storage dtype and decoder."""
        decode = "device" if store.meta["preprocess"].endswith("-devjpeg") else "pil"
        return StoreSpec(**{**asdict(self), "precision": store.meta["precision"], "dtype": store.meta["dtype"],
                            "decode": decode})

    def find(self, keys: list[str], verb: str = "fne") -> Store:
        """The store to read `keys`' rows from (see the module's rule); this machine's own store
        when no store holds any of them."""
        self._check()
        if self.precision != "auto" and self.dtype != "auto":
            return self.open()
        b = self.backbone()
        fp, prep = self.fingerprint(), self.prep_key()
        # decode "auto" reads rows of either decoder, as `auto` precision reads any precision
        preps = {self.preprocess().key, f"{self.preprocess().key}-devjpeg"} if self.decode == "auto" else {prep}
        candidates = [s for s in list_stores(self.cache)
                      if (s.meta["arch"], s.meta["weights"]) == (b.name, fp) and s.meta["preprocess"] in preps
                      and self.precision in ("auto", s.meta["precision"])
                      and self.dtype in ("auto", s.meta["dtype"])]
        wanted = set(keys)
        held = {id(s): sum(1 for k in s.index() if k in wanted) for s in candidates}
        candidates = [s for s in candidates if held[id(s)]]
        if not candidates:
            return self.open()
        best = max(candidates, key=lambda s: (held[id(s)], PRECISION_RANK.get(s.meta["precision"], 0),
                                              DTYPE_RANK.get(s.meta["dtype"], 0)))
        if len(candidates) > 1:
            others = ", ".join(f"{s.meta['precision']}/{s.meta['dtype']} ({held[id(s)]} rows)"
                               for s in candidates if s is not best)
            print(f"fne {verb}: reading {held[id(best)]} rows from store {best.path.name} "
                  f"({best.meta['precision']}/{best.meta['dtype']}); also held: {others}", file=sys.stderr)
        return best
