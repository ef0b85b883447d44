"""Store identity: which store holds (or will hold) a dataset's rows, and how a reader finds it.

A store is named by (arch, weights fingerprint, preprocessing, decode, precision, storage
dtype). Extraction resolves `precision="auto"` on the machine that computes. Reading with
`auto` (the default) takes rows wherever they were computed: among the stores of the same
(arch, weights fingerprint, preprocessing), the one holding most of the requested rows, then
rows of the default PIL decoder over device-decoded ones (when `decode="auto"`), then the
highest precision (fp32 > bf16 > fp16), then the wider storage (float32 > float16). An explicit
precision, storage dtype or decoder pins that field. Opening a store writes nothing: its first
write makes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fne import option_handling as opts
from fne.backbones import registry as backbones
from fne.backbones.preprocess import Preprocess
from fne.cache.store import Store, StoreKey, cache_root, list_stores
from fne.errors import CacheError
from fne.options import StoreOptions
from fne.progress import progress_line

PRECISION_RANK = {"fp32": 3, "bf16": 2, "fp16": 1}
DTYPE_RANK = {"float32": 2, "float16": 1}
DEFAULT_DTYPE = "float16"
# Of the preprocessing key of device-decoded rows, by the library that decoded them
# (`fne.devices.device_decoder`: their nvJPEG calls may not give the same pixels). "8": resized
# with Pillow's 8-bit arithmetic (`resample`); the earlier "-devjpeg" rows (float resizing, a
# level off on ~16 % of the values) are not mixed with these.
DEVICE_SUFFIXES = {"torchvision": "-devjpeg8", "torchcodec": "-devjpeg8-torchcodec"}


def device_decoded(prep_key: str) -> bool:
    """Whether a store's preprocessing key is of device-decoded rows (of either library)."""
    return prep_key.endswith(tuple(DEVICE_SUFFIXES.values()))


@dataclass(kw_only=True)
class StoreSpec(StoreOptions):
    """Everything that decides which store holds a dataset's rows: the fields of
    `fne.options.StoreOptions` (declared there once, with the CLI's and the pipeline's), plus how
    to open the store this machine writes and find the one that holds given rows."""

    def __post_init__(self) -> None:
        backbones.check_weights_seed(self.weights, self.weights_seed)

    def backbone(self) -> backbones.Backbone:
        return backbones.get(self.arch, self.weights)

    def preprocess(self) -> Preprocess:
        return self.backbone().preprocess(self.crop, self.image_size)  # the key names the size

    def _check(self) -> None:
        opts.check(self)

    def prep_key(self) -> str:
        # Device-decoded pixels may differ from PIL's (the decoder): their rows get a store of their
        # own, by the library that decodes (torchvision's where none does: rows are read, not made)
        key, decode = self.preprocess().key, self.decode
        if decode == "pil":
            return key
        from fne.handoff import imported

        devices = imported("fne.devices")  # torch's import, a Ctrl-C held over it (`fne.handoff.imported`)
        if devices.resolve_decode(decode, devices.resolve_device(self.device)) == "pil":  # auto: device on CUDA
            return key
        return key + DEVICE_SUFFIXES[devices.device_decoder() or "torchvision"]

    def fingerprint(self) -> str:
        drawn = "cpu"
        if self.weights == "random" and self.device != "cpu":  # drawn on the device (load_backbone)
            from fne.handoff import imported

            devices = imported("fne.devices")  # imports torch (a Ctrl-C held over it): a named CPU needs none

            drawn = devices.random_draw(devices.resolve_device(self.device))
        # a weights file's hash is remembered in the manifests of the cache its rows go to
        return backbones.fingerprint(self.arch, self.weights, self.weights_seed, drawn, str(cache_root(self.cache)))

    def open(self) -> Store:
        """The store this machine writes to: `auto` resolved here. Nothing is written: an absent
        store holds no rows, and its first write makes it (`Store.open`)."""
        self._check()
        b = self.backbone()
        precision = self.precision
        if precision == "auto":  # the device's (importing torch: a pinned store's reader needs none)
            from fne.devices import resolve_device, resolve_precision

            precision = resolve_precision(precision, resolve_device(self.device))
        dtype = DEFAULT_DTYPE if self.storage_dtype == "auto" else self.storage_dtype
        key = StoreKey(b.name, self.fingerprint(), self.prep_key(), precision, dtype)
        return Store.open(self.cache, key, [(t.name, t.channels) for t in b.taps], self.preprocess().views)

    def pinned(self, store: Store) -> StoreSpec:
        """This spec pinned to `store`'s precision, storage dtype and decoder."""
        decode = "device" if device_decoded(store.meta["preprocess"]) else "pil"
        return StoreSpec(**{**asdict(self), "precision": store.meta["precision"],
                            "storage_dtype": store.meta["dtype"], "decode": decode})

    def find(self, keys: list[str], verb: str = "fne", progress: bool = True) -> Store:
        """The store to read `keys`' rows from (see the module's rule); this machine's own store
        (not created: reading writes nothing) when no store holds any of them. Which one, where
        there was a choice, is a progress line (`fne.progress.progress_line`'s `enabled`: `progress`)."""
        self._check()
        if "auto" not in (self.precision, self.storage_dtype) and self.decode == "pil":
            return self.open()  # one store (device-decoded rows: either library's, found below)
        b = self.backbone()
        fp, prep = self.fingerprint(), self.preprocess().key
        device = [prep + suffix for suffix in DEVICE_SUFFIXES.values()]
        preps = {"pil": [prep], "device": device}.get(self.decode, [prep, *device])
        unreadable: dict[str, CacheError] = {}
        candidates = [s for s in list_stores(self.cache, unreadable)
                      if s.meta["arch"] == b.name and s.meta["weights"] == fp and s.meta["preprocess"] in preps
                      and self.precision in ("auto", s.meta["precision"])
                      and self.storage_dtype in ("auto", s.meta["dtype"])]
        wanted = set(keys)
        held = {id(s): sum(1 for k in s.index() if k in wanted) for s in candidates}
        candidates = [s for s in candidates if held[id(s)]]
        if not candidates:
            try:
                store = self.open()
            except CacheError as e:  # this machine's own store is the damaged one: its error says it, once
                _left_out(unreadable, but=str(e))
                raise
            _left_out(unreadable)
            return store
        _left_out(unreadable)
        best = max(candidates, key=lambda s: (held[id(s)], s.meta["preprocess"] == prep,
                                              PRECISION_RANK.get(s.meta["precision"], 0),
                                              DTYPE_RANK.get(s.meta["dtype"], 0)))
        if len(candidates) > 1:
            others = ", ".join(f"{_describe(s)} ({held[id(s)]} rows)" for s in candidates if s is not best)
            progress_line(f"fne {verb}: reading {held[id(best)]} rows from store {best.path.name} "
                          f"({_describe(best)}); also held: {others}", progress, stderr=True)
        return best


def _left_out(unreadable: dict[str, CacheError], but: str = "") -> None:
    """A warning for each store `list_stores` could not read, but the one whose error (`but`) the
    caller raises: `fne fit` said a damaged store.json twice, as a warning and as its error."""
    import warnings

    for name, e in unreadable.items():
        if str(e) != but:
            warnings.warn(f"store {name} left out: {e}", stacklevel=3)


def recorded_image_size(store: dict) -> int | None:
    """The --image-size of the rows a model was fitted on, from the store its metrics.json records
    (``crop`` and ``preprocess``, the preprocessing key: `center64-tv`): what `fne predict` passes
    on, so that its rows are made at that size again; None where no key is recorded. The
    backbone's own size is returned too: it names the same store as None."""
    import re

    found = re.match(rf"{re.escape(str(store.get('crop', 'center')))}(\d+)", str(store.get("preprocess") or ""))
    return int(found.group(1)) if found else None


def _describe(s: Store) -> str:
    dev = ("/device-decoded" + ("/torchcodec" if s.meta["preprocess"].endswith(DEVICE_SUFFIXES["torchcodec"]) else "")
           if device_decoded(s.meta["preprocess"]) else "")
    return f"{s.meta['precision']}/{s.meta['dtype']}{dev}"


# `-tv` ends the preprocessing key of rows whose pixels are torchvision's (`Preprocess.key`); an
# earlier fne's keys lack it (`center224`): other pixels, whose rows are never mixed with these.
TV = "-tv"


def earlier_fne_pixels(prep_key: str) -> bool:
    """Whether a store's preprocessing key is of pixels this fne no longer makes: without `-tv`
    (`center224`), or with a device decoder's suffix it no longer writes (`-tv-devjpeg`). No
    command reads such rows; `fne cache info` says so."""
    return not prep_key.endswith((TV, *(TV + suffix for suffix in DEVICE_SUFFIXES.values())))


def earlier_pixels(store: Store, keys: list[str], cache: str | None) -> str:
    """'; store NAME holds N of them, made by an earlier fne ...' where the store of `cache` of an
    earlier fne's pixels (the same backbone, weights, precision and storage dtype as `store`, its
    preprocessing without `-tv`) holds some of `keys`, whose rows are computed again, not read;
    else ''. A store that cannot be read is passed over here (the commands that read it say so)."""
    m, root = store.meta, cache_root(cache)
    if not m["preprocess"].endswith(TV) or not keys:
        return ""
    key = StoreKey(m["arch"], m["weights"], m["preprocess"].removesuffix(TV), m["precision"], m["dtype"])
    wanted, said = set(keys), []
    for name in dict.fromkeys((key.dirname, key.posix_dirname)):  # a timm: store by either name
        try:
            n = sum(1 for k in Store.at(root / name).index() if k in wanted) if Store(root / name, {}).exists(
                "store.json") else 0
        except CacheError:  # damaged: fne cache verify names it
            continue
        if n:
            said.append(f"store {name} holds {n} of them, made by an earlier fne whose resize and crop rounded "
                        f"otherwise (preprocessing {key.preprocess}, now {m['preprocess']}: other pixels), so they "
                        f"are not read for these (`fne cache rm {name}` frees it)")
    return "".join(f"; {s}" for s in said)
