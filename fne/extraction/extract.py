"""`fne extract`: reader -> tap model -> writer, each stage small and timed on its own.

The reader (`fne.extraction.reader`) reads each file once in DataLoader workers, hashing its bytes for the
content key and decoding them to uint8 views; the tap model (`fne.extraction.taps`) normalises on the
device and returns the pooled output of every tap; the writer (`fne.extraction.writer`) commits rows in
parts on a thread of its own, so an interrupted run keeps everything committed before it.
Sharding (`fne.data.shards`) and the data root's manifest (`fne.data.manifest`) decide which images this
process reads at all.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fne import options as opts
from fne import verb_module
from fne.cache.spec import StoreSpec
from fne.cache.store import Store
from fne.data import shards
from fne.data.datasets import Dataset, load_dataset
from fne.data.lanes import container_batches
from fne.data.manifest import Manifest, known_keys, manifest_for
from fne.devices import (
    default_workers,
    resolve_batch_size,
    resolve_compile,
    resolve_device,
    tune_allocator,
)
from fne.errors import FneError
from fne.extraction import reader, taps
from fne.extraction.writer import Writer
from fne.options import ExtractOptions
from fne.progress import progress as progress_bar

# Images that went through a forward pass in this process: tests count reuse with it.
FORWARD_IMAGES = 0


@dataclass
class ExtractResult:
    store: str
    n_images: int  # images this process was given (its shard's, when sharded)
    n_unique: int  # distinct contents among them
    n_cached: int  # of those, rows already in the store
    n_computed: int  # forward passes this run
    n_skipped: int
    skipped: dict[str, str] = field(default_factory=dict)  # image id -> reason
    seconds: float = 0.0
    images_per_s: float = 0.0
    steady_images_per_s: float = 0.0  # after the first batch (set-up, compilation)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    shard: str | None = None
    shard_marker: str | None = None  # written once every image of the shard is committed
    compiled: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Plan:
    """Which images this process reads: those of its shard without a known, stored row."""

    todo: list[int]
    members: list[int]
    known: list[str | None]
    manifest: Manifest | None


def _plan(dataset: Dataset, store: Store, shard: tuple[int, int] | None, cache, retry_bad: bool) -> _Plan:
    members = shards.members(dataset, shard)
    manifest = manifest_for(dataset, cache)
    if dataset._keys is not None or dataset.array_source is not None:
        known: list[str | None] = list(dataset.keys())
    else:
        known = known_keys(dataset, manifest)
    if retry_bad:
        n = store.forget_bad(known[i] for i in members if known[i] is not None)
        print(f"fne extract: {n} image(s) recorded as unreadable will be read again", file=sys.stderr)
    index, bad = store.index(), store.bad()
    todo, taken = [], set()
    for i in members:
        k = known[i]
        if k is None:
            todo.append(i)  # unknown content: the reader hashes it
        elif k not in index and k not in bad and k not in taken:
            taken.add(k)
            todo.append(i)
    return _Plan(todo, members, known, manifest)


def extract(data: str | Path | Dataset, store: StoreSpec | None = None, **options) -> ExtractResult:
    """Compute and store the rows of DATA's images that the store does not hold yet.

    Memory is flat in the number of images: the reader prefetches a few batches, the writer
    commits every `chunk` rows, and nothing else holds pixels or rows. With a shard (I/N; the
    CLI also reads torchrun's RANK/WORLD_SIZE) only that shard's images are read and computed,
    and once they are all committed a marker `shards/<listing>-<I>of<N>.json` records it; a
    rerun reuses every committed row, so a killed shard is simply run again. A file that could
    not be read at all is never recorded, so it is tried again on every run.

    Parameters
    ----------
    data : str, Path or Dataset
        Any DATA form (see `fne.data.datasets.load_dataset`).
    store : StoreSpec, optional
        Which store receives the rows (backbone, weights, preprocessing, precision, ...).
    **options
        Fields of `StoreSpec` (overriding `store`'s: ``arch="resnet50"``) and of
        `fne.options.ExtractOptions` (``batch_size``, ``workers``, ``compile``, ``shard``,
        ``retry_bad``, ``progress``, ``chunk``, ``threads``), as on the command line.

    Returns
    -------
    ExtractResult
        Counts (computed, cached, skipped with reasons), rates and per-stage seconds.
    """
    spec, o = opts.resolve(options, StoreSpec, ExtractOptions, given={StoreSpec: store})
    batch_size, workers, progress, chunk, threads = o.batch_size, o.workers, o.progress, o.chunk, o.threads
    compile = {"on": True, "off": False}.get(o.compile, "auto")
    cache, device, retry_bad, shard = spec.cache, spec.device, o.retry_bad, o.shard
    t0 = time.perf_counter()
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    if len(dataset) == 0:
        raise FneError(f"DATA {getattr(dataset, 'name', data)}: has no images")
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_allocator()
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)  # events, streams and nvjpeg on this rank's GPU
    store = spec.open()
    batch_size = resolve_batch_size(batch_size, dev, spec.preprocess().size, store.meta["precision"])
    shard_t = shards.parse_shard(shard)
    plan = _plan(dataset, store, shard_t, cache, retry_bad)
    result = ExtractResult(store=str(store.path), n_images=len(plan.members), n_unique=0, n_cached=0,
                           n_computed=0, n_skipped=0,
                           shard=None if shard_t is None else f"{shard_t[0]}/{shard_t[1]}")
    fp = shards.listing_fingerprint(dataset) if shard_t is not None else None
    if fp is not None and store.exists(shards.marker_rel(fp, shard_t)) and plan.todo:
        # A marker never hides work: the index has the last word.
        warnings.warn(f"shard marker {shards.marker_rel(fp, shard_t)} exists but {len(plan.todo)} "
                      f"images of the shard have no known row; reading them", stacklevel=2)
    settings = None
    if plan.todo:
        settings = _Run(spec, store, dataset, plan, dev, result).go(batch_size, workers, compile, chunk,
                                                                    progress)
    _count(result, plan, store)
    if fp is not None:
        if plan.todo or not store.exists(shards.marker_rel(fp, shard_t)):
            shards.finish_shard(store, fp, shard_t, dataset, result.n_unique, result.n_computed,
                                result.n_skipped)
        result.shard_marker = str(shards.shard_marker(store, fp, shard_t))
    result.seconds = time.perf_counter() - t0
    if settings is not None and (result.n_computed or result.skipped):  # a no-op run records nothing
        store.record({"kind": "extract", "dataset": dataset.name, **settings,
                      **{k: v for k, v in result.to_dict().items() if k != "store"}})
    return result


def _count(result: ExtractResult, plan: _Plan, store: Store) -> None:
    """n_unique / n_cached over this process's images, now that every key read is known."""
    keys = {plan.known[i] for i in plan.members if plan.known[i] is not None}
    result.n_unique = len(keys)
    bad = store.bad()
    result.n_cached = max(0, len(keys) - result.n_computed - len(keys & bad.keys()))
    result.n_skipped = len(result.skipped)


class _Run:
    """One pass of the reader -> tap model -> writer loop over `plan.todo`, timed by stage."""

    def __init__(self, spec: StoreSpec, store: Store, dataset: Dataset, plan: _Plan, dev: torch.device,
                 result: ExtractResult):
        self.spec, self.store, self.dataset, self.plan, self.dev, self.result = \
            spec, store, dataset, plan, dev, result
        self.prec = store.meta["precision"]
        self.prep = spec.preprocess()
        self.present = set(store.index())  # snapshot: the writer thread commits meanwhile
        self.seen: set[str] = set()  # keys queued for writing in this run
        self.t = dict(read_wait=0.0, forward=0.0, first_forward=0.0, model_load=0.0)

    def go(self, batch_size: int, workers: int | None, compile, chunk: int, progress: bool) -> dict:
        """Run the loop; -> the settings it ran with (for the store's record)."""
        plan, dev, result = self.plan, self.dev, self.result
        use_compile = resolve_compile(compile, len(plan.todo), dev)
        workers = default_workers(dev) if workers is None else workers
        lanes = container_batches(self.dataset, plan.todo, batch_size, workers)  # a worker per tar
        loader = torch.utils.data.DataLoader(
            reader.ImageItems(self.dataset, plan.todo, self.prep, self.spec.decode == "device"),
            **({"batch_sampler": lanes} if lanes else {"batch_size": batch_size}), num_workers=workers,
            collate_fn=reader.collate,
            pin_memory=dev.type == "cuda", persistent_workers=False, prefetch_factor=4 if workers else None)
        # Start the workers first: they fork before the model exists (small children) and keep
        # decoding while the weights load. The model is built on the first batch that needs it:
        # images whose content turns out to be stored already never cost a network.
        batches = iter(loader)
        self.model, self.use_compile = None, use_compile
        writer = Writer(self.store, chunk, [(tp.name, tp.channels) for tp in self.spec.backbone().taps])
        writer.start()
        self.pad_to = batch_size if use_compile else 0
        cpu0, t_run = _cpu_seconds(), time.perf_counter()
        bar = progress_bar(len(plan.todo), f"extract {self.spec.arch}", progress)
        self.first = (0, 0.0)
        try:
            t = time.perf_counter()
            for batch in batches:
                self.t["read_wait"] += time.perf_counter() - t
                t = time.perf_counter()
                n_done = self._batch(batch, writer, t_run)
                self.t["forward"] += time.perf_counter() - t
                bar.update(n_done)
                bar.set_postfix(img_s=f"{result.n_computed / max(time.perf_counter() - t_run, 1e-9):.1f}")
                t = time.perf_counter()
        finally:
            bar.close()
            writer.close()  # commits what is buffered, also on Ctrl-C
            if plan.manifest is not None:
                plan.manifest.save()
        del batches  # joins the workers, so that their CPU time is counted below
        return self._finish(writer, time.perf_counter() - t_run, _cpu_seconds() - cpu0, batch_size, workers)

    def _batch(self, batch: dict, writer: Writer, t_run: float) -> int:
        """Forward the batch's new images, queue their rows; -> images handled."""
        global FORWARD_IMAGES
        self._note_reads(batch)
        bad = list(batch["bad"])
        x, idx, keys = reader.assemble(batch, self.dev, self.prep, bad)
        keep = []
        for p, k in enumerate(keys):  # drop what is stored already, or a duplicate of this run
            if k not in self.seen and k not in self.present:
                self.seen.add(k)
                keep.append(p)
        if x is not None and len(keep) < len(keys):
            x = x[keep] if keep else None
        idx, keys = [idx[p] for p in keep], [keys[p] for p in keep]
        rows, event = None, None
        if x is not None:
            rows, event = self._forward(x, t_run)
            FORWARD_IMAGES += len(idx)
        bad_keys = {}
        for i, key, err in bad:
            self.result.skipped[self.dataset.ids[i]] = err
            warnings.warn(f"skipped {self.dataset.ids[i]}: {err}", stacklevel=2)
            if key is not None:
                bad_keys[key] = err
        writer.put(keys, rows, bad_keys, event)
        self.result.n_computed += len(idx)
        return len(batch["idx"]) + len(batch["bad"])

    def _note_reads(self, batch: dict) -> None:
        """Keys the reader computed: into the plan (counts) and the manifest (next runs)."""
        for i, key, stat in batch["stats"]:
            self.plan.known[i] = key
            if self.plan.manifest is not None and key is not None:
                self.plan.manifest.add(self.dataset.sources[i], stat[0], stat[1], key, stat[2])

    def _forward(self, x: torch.Tensor, t_run: float):
        """uint8 (B, V, 3, S, S) -> (B, V, D) rows in the storage dtype (async copy on CUDA)."""
        b, views = x.shape[:2]
        x = x.reshape(b * views, *x.shape[2:])
        n = x.shape[0]
        if self.pad_to and n < self.pad_to * views:  # one shape: no recompilation
            x = torch.cat([x, x.new_zeros((self.pad_to * views - n, *x.shape[1:]))])
        if self.model is None:
            t = time.perf_counter()
            self.model = taps.build_tap_model(self.spec, self.dev, self.use_compile)
            self.t["model_load"] = time.perf_counter() - t
        t = time.perf_counter()
        self.model, pooled = taps.forward(self.model, x, self.dev, self.prec)
        if not self.t["first_forward"]:  # includes compilation and oneDNN's first-call setup
            self.t["first_forward"] = time.perf_counter() - t
            self.first = (b, time.perf_counter() - t_run)
        out_dtype = torch.float16 if self.store.meta["dtype"] == "float16" else torch.float32
        flat = torch.cat(pooled, dim=1)[:n].to(out_dtype).reshape(b, views, -1)
        if self.dev.type != "cuda":
            return flat, None
        rows = flat.to("cpu", non_blocking=True)  # into pinned memory; the writer waits on the event
        event = torch.cuda.Event()
        event.record()
        return rows, event

    def _finish(self, writer: Writer, run_s: float, cpu_run: float, batch_size: int, workers: int) -> dict:
        r = self.result
        r.compiled = bool(getattr(self.model, "_orig_mod", None) is not None)
        r.images_per_s = r.n_computed / run_s if run_s > 0 else 0.0
        r.stage_seconds = {**self.t, "write": writer.seconds, "run": run_s, "cpu_run": cpu_run}
        # Steady state: the run after its first batch (pipeline fill, compilation, oneDNN set-up).
        if r.n_computed > self.first[0] and run_s > self.first[1]:
            r.steady_images_per_s = (r.n_computed - self.first[0]) / (run_s - self.first[1])
        return {"device": str(self.dev), "precision": self.prec, "batch_size": batch_size,
                "workers": workers, "compile": r.compiled, "threads": torch.get_num_threads(),
                "decode": self.spec.decode}


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (the workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


verb_module(__name__)
