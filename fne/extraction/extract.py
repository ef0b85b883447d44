"""`fne extract`: reader -> tap model -> writer, each stage small and timed on its own.

The reader (`fne.extraction.reader`) reads each file once in DataLoader workers, hashing its bytes for the
content key and decoding them to uint8 views; the tap model (`fne.extraction.taps`) normalises on the
device and returns the pooled output of every tap; the writer (`fne.extraction.writer`) commits rows in
parts on a thread of its own, so an interrupted run keeps everything committed before it.
Sharding (`fne.data.shards`) and the data root's manifest (`fne.data.manifest`) decide which images this
process reads at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from fne import option_handling as opts
from fne import verb_module
from fne.backbones import fits
from fne.backbones.catalog import refuse_unobtainable
from fne.backbones.fetch import loading
from fne.backbones.registry import weights_file
from fne.cache.fs import unwritable
from fne.cache.spec import StoreSpec, earlier_pixels
from fne.cache.store import Store, cache_root, removed
from fne.cache.upkeep import new_cache_removed_on_failure
from fne.data import shards
from fne.data.dataset import Dataset
from fne.data.datasets import load_dataset
from fne.data.lanes import container_batches
from fne.devices import (
    Loader,
    default_workers,
    end_workers,
    forks_workers,
    loader_context,
    require_device_decoder,
    require_main_script,
    resize_on_device,
    resolve_batch_size,
    resolve_compile,
    resolve_decode,
    resolve_device,
    tune_allocator,
    worker_init,
)
from fne.errors import CacheError, FneError
from fne.extraction import reader, slots, taps
from fne.extraction.plan import Plan, make_plan, one_at_a_time
from fne.extraction.writer import Writer
from fne.held import torch_threads
from fne.metrics import provenance
from fne.options import DataOptions, ExtractOptions
from fne.progress import progress as progress_bar
from fne.progress import progress_line, say_skipped


@dataclass
class ExtractResult:
    """What one `fne extract` did (`extract`'s result): counts of images, rows cached, computed
    and skipped (each skipped image with its reason), and its speed.

    Attributes
    ----------
    store : str
        The store folder the rows are in.
    n_images, n_unique : int
        Images this process was given (its shard's, when sharded); distinct contents among them.
    n_cached, n_computed : int
        Of those, rows already in the store; forward passes this run.
    n_skipped : int
        Unreadable, found so by this run; `skipped` names each (image id -> reason).
    n_unreadable : int
        Distinct contents an earlier run recorded unreadable: not read again (``retry_bad``).
    n_left_out : int
        Entries of DATA skipped when it was listed (no label, a dangling link), each warned.
    seconds, images_per_s, steady_images_per_s : float
        Wall time, and the rate over it and after the first batch (set-up, compilation).
    stage_seconds : dict
        Seconds per stage: read_wait, forward, first_forward, model_load, warm_up, model_wait,
        write, run; finish (the run's part after its last batch: the workers ended, the last
        rows committed); cpu_run (CPU of this process and its finished workers meanwhile).
        Before the run: list (DATA listed), open (the device found, the store opened), plan
        (keys known, the store's index read), device (the batch sized and the device set: on
        CUDA, its context made), workers_start (the loader's workers started), model_start (the
        model's build started), writer_start.
    shard, shard_marker : str or None
        The shard (I/N) and its marker, written once every image of the shard is committed.
    compiled : bool
        Whether the network ran under torch.compile.
    """

    store: str
    n_images: int
    n_unique: int
    n_cached: int
    n_computed: int
    n_skipped: int
    skipped: dict[str, str] = field(default_factory=dict)
    n_unreadable: int = 0
    n_left_out: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    steady_images_per_s: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    shard: str | None = None
    shard_marker: str | None = None
    compiled: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# The keywords of `extract`, declared in fne.options (the command line's options are the same fields).
OPTIONS = (StoreSpec, DataOptions, ExtractOptions)

# Set by `fne.linear.features.open_rows` while it extracts the rows a verb misses: it names every
# image left out itself (with those an earlier run found unreadable), so they are not said twice.
SKIPS_SAID_BY_CALLER: contextvars.ContextVar[bool] = contextvars.ContextVar("fne_skips_said_by_caller", default=False)
# Set by `open_rows` too: its line saying that it extracts them, said once the weights are known
# to be obtainable (its refusal, in the caller's words: `fne.backbones.fetch.loading`).
CALLER_SAYS: contextvars.ContextVar[str | None] = contextvars.ContextVar("fne_caller_says", default=None)
# Set by `open_rows` too: whether the rows' size is the one a `fne train` network trained at is the
# verb's to say (`fits.note_trained_size`), whether or not rows are extracted; not said here.
SIZE_SAID_BY_CALLER: contextvars.ContextVar[bool] = contextvars.ContextVar("fne_size_said_by_caller", default=False)


@opts.keywords(*OPTIONS)
def extract(data: str | Path | Dataset, store: StoreSpec | None = None, **options) -> ExtractResult:
    """Compute and store the rows of DATA's images that the store does not hold yet.

    Memory is flat in the number of images: the reader prefetches a few batches, the writer
    commits every `chunk` rows, and nothing else holds pixels or rows. With a shard (I/N; the
    CLI also reads torchrun's RANK/WORLD_SIZE) only that shard's images are read and computed,
    and once they are all committed a marker `shards/<listing>-<I>of<N>.json` records it; a
    rerun reuses every committed row, so a killed shard is simply run again. A file that could
    not be read at all is never recorded, so it is tried again on every run. A call that fails
    before its first row into a cache folder it made removes that folder again, where nothing of
    worth is in it (`fne.cache.upkeep.remove_failed_new_cache`).

    Parameters
    ----------
    data : str, Path or Dataset
        Any DATA form (see `fne.data.datasets.load_dataset`).
    store : StoreSpec, optional
        Which store receives the rows (backbone, weights, preprocessing, precision, ...).
        ``decode="auto"`` decodes JPEGs in batches on the GPU on CUDA, with PIL elsewhere.
    **options
        The options of `fne extract`, under the same names with the same defaults (the
        signature lists them): the fields of `StoreSpec` (overriding `store`'s:
        ``arch="resnet50"``), of `fne.options.DataOptions` (``label_key``) and of
        `fne.options.ExtractOptions` (``batch_size``, ``workers``, ``compile``, ``shard``,
        ``retry_bad``, ``progress``; ``chunk`` and ``threads``, which the CLI does not offer).

    Returns
    -------
    ExtractResult
        Counts (computed, cached, skipped with reasons), rates and per-stage seconds.

    Raises
    ------
    DataError
        DATA is missing, empty or cannot be read.
    WeightsError
        ``weights`` cannot be loaded or do not fit ``arch``.
    CacheError
        A store of the cache is damaged, of another fne, or describes other rows than asked for.
    FneError
        DATA has no images. A cache folder the call made is removed again (see above).
    """
    require_main_script("fne.extract")
    spec, d, o = opts.resolve(options, *OPTIONS, given={StoreSpec: store})
    shard_t = shards.parse_shard(o.shard)  # before DATA is listed, as the command line's
    with new_cache_removed_on_failure(cache_root(spec.cache)), loading():  # a cache it made and left no row in goes
        return _extract(data, spec, d, o, shard_t)


def _extract(data: str | Path | Dataset, spec: StoreSpec, d: DataOptions, o: ExtractOptions,
             shard_t: tuple[int, int] | None) -> ExtractResult:
    """`extract`'s work, on its resolved options."""
    t0 = time.perf_counter()
    laps = Laps()
    dataset = load_dataset(data, label_key=d.label_key, cache=spec.cache)
    laps.lap("list")
    if len(dataset) == 0:
        raise FneError(f"DATA {getattr(dataset, 'name', data)}: has no images")
    dev = _device(spec.device)
    spec = replace(spec, decode=resolve_decode(spec.decode, dev))
    store = spec.open()
    # A number is checked now; auto is sized when there is work (on CUDA from free memory: a
    # rerun that finds every row stored never starts the GPU).
    batch_size = None if o.batch_size in (None, "auto") else resolve_batch_size(o.batch_size, dev)
    laps.lap("open")
    plan = make_plan(dataset, store, shard_t, spec.cache, o.retry_bad, o.progress)
    laps.lap("plan")
    result = ExtractResult(store=str(store.path), n_images=len(plan.members), n_unique=0, n_cached=0,
                           n_computed=0, n_skipped=0, n_left_out=len(getattr(dataset, "left_out", [])),
                           shard=None if shard_t is None else f"{shard_t[0]}/{shard_t[1]}")
    fp = shards.listing_fingerprint(dataset) if shard_t is not None else None
    if fp is not None and store.exists(shards.marker_rel(fp, shard_t)) and plan.todo:
        # A marker never hides work: the index has the last word.
        warnings.warn(f"shard marker {shards.marker_rel(fp, shard_t)} exists but {len(plan.todo)} "
                      f"images of the shard have no known row; reading them", stacklevel=2)
    if plan.todo and store.url is None and unwritable(store.path / "parts") is not None:
        raise opts.refusal(lambda py: f"cannot write to the cache {store.path} (not writable): pass "
                                      f"{'cache=' if py else '--cache '}a folder you can write to",
                           CacheError)  # before any image is read; its rows are still read by fit
    if plan.todo and (not store.index() or any(plan.known[i] is not None for i in plan.todo)):
        # rows surely to compute (an empty store, or known contents it lacks): offline without the
        # weights, one line now, not after the workers and progress line start. Files the manifest
        # cannot vouch for yet may all be stored: the reader's hash decides, and the model loads then.
        refuse_unobtainable(spec.arch, spec.weights)  # in the words of the caller's `fetch.loading`
    if CALLER_SAYS.get() is not None:  # its line after that refusal, the only line then
        progress_line(CALLER_SAYS.get(), o.progress, stderr=True)
    if plan.todo:  # a weights file that does not fit, a size the network cannot take: cheap, before the workers
        fits.refuse_unfit(spec.arch, spec.weights)  # its names and shapes only (VGG-16's 528 MB: 0.02 s)
        fits.refuse_size(spec.arch, spec.weights, spec.image_size)
    if not SIZE_SAID_BY_CALLER.get():  # another size may be meant: said, not refused; each call, rows computed or not
        fits.note_trained_size(spec.arch, spec.weights, spec.image_size)
    done = _Pass(stats=Stats(setup=laps.seconds))
    if plan.todo:
        try:
            plan = _compute(spec, store, dataset, plan, shard_t, dev, batch_size, o, done)
        except BaseException:  # stopped (Ctrl-C, an error): the images it met are named all the same
            say_skipped(done.skipped.items())
            say_skipped(done.notes, skipped=False)
            raise
        if done.settings:  # computed (not all done meanwhile by another process)
            _fill(result, done)
        earlier = earlier_pixels(store, [k for k in map(plan.known.__getitem__, plan.todo) if k], spec.cache)
        if earlier:  # rows an earlier fne made of other pixels: why they were computed again
            warnings.warn(f"{len(plan.todo)} images of {dataset.name} had no row in store {store.path.name}{earlier}",
                          stacklevel=3)
    _count(result, plan, store)
    if fp is not None:
        if plan.todo or not store.exists(shards.marker_rel(fp, shard_t)):
            shards.finish_shard(store, fp, shard_t, dataset, result.n_unique, result.n_computed,
                                result.n_skipped)
        result.shard_marker = str(shards.shard_marker(store, fp, shard_t))
    result.seconds = time.perf_counter() - t0
    if done.settings and (result.n_computed or result.skipped):  # a no-op run records nothing
        settings = {k: v for k, v in done.settings.items() if k != "stage_seconds"}
        rel = store.record({"kind": "extract", "dataset": dataset.name, **settings,
                            "weights_file": weights_file(spec.weights),  # fne cache info names it
                            **{k: v for k, v in result.to_dict().items() if k != "store"}, "parts": done.parts,
                            "provenance": provenance(spec, o, device=dev)})  # the machine and libraries behind these rows
        if not SKIPS_SAID_BY_CALLER.get():
            say_skipped(result.skipped.items(), f"; each named in {store.path / rel} (skipped)")
    say_skipped(done.notes, skipped=False)  # a float image read black: one line for all such images
    return result


def _compute(spec: StoreSpec, store: Store, dataset: Dataset, plan: Plan, shard: tuple[int, int] | None,
             dev: torch.device, batch_size: int | None, o: ExtractOptions, done: _Pass) -> Plan:
    """Compute the plan's missing rows into `done`; -> the plan carried out. One process at a
    time computes a DATA's shard into a store: another that finds it at work waits, then
    computes only what is still missing (two `fne fit --extract` on the same images compute
    them once). Returns at once, with the rows committed so far, on an error or an interrupt."""
    with one_at_a_time(store, dataset, shard, o.progress) as waited:
        if waited or removed(store):  # rows another process computed, or removed, since the plan
            store.refresh()
            plan = make_plan(dataset, store, shard, spec.cache, retry_bad=False)
        if not plan.todo:
            return plan
        try:
            laps = Laps(done.stats.setup)
            if dev.type == "cuda" and dev.index is not None:
                torch.cuda.set_device(dev)  # events, streams and nvjpeg on this rank's GPU
            prep = spec.preprocess()
            batch_size = batch_size or resolve_batch_size("auto", dev, prep.size, store.meta["precision"], prep.views)
            laps.lap("device")
            with _threads(o.threads):
                _run(spec, store, dataset, plan.todo, dev, done, batch_size, o.workers, o.compile, o.chunk, o.progress)
        finally:
            _remember(done.reads, plan, dataset)
    return plan


def _device(device: str) -> torch.device:
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_allocator()
    return dev


def _threads(n: int | None) -> contextlib.AbstractContextManager[None]:
    """torch's CPU threads set to `n` within (None: left as they are), the caller's count put back
    after: a notebook's later cells run with their own (`fne.held.torch_threads`: a block inside
    that asks for fewer, a small solver fit's one thread, gets them)."""
    return contextlib.nullcontext() if n is None else torch_threads(max(1, n))


def _fill(result: ExtractResult, done: _Pass) -> None:
    st = done.stats
    result.n_computed, result.skipped = done.computed, done.skipped
    result.compiled = done.settings["compile"]
    result.stage_seconds = done.settings["stage_seconds"]
    result.images_per_s = done.computed / st.run if st.run > 0 else 0.0
    # Steady state: the run after its first batch (pipeline fill, compilation, oneDNN set-up).
    n0, t0 = st.first_batch
    if done.computed > n0 and st.run > t0:
        result.steady_images_per_s = (done.computed - n0) / (st.run - t0)


def _count(result: ExtractResult, plan: Plan, store: Store) -> None:
    """n_unique / n_cached over this process's images, now that every key read is known."""
    keys = {plan.known[i] for i in plan.members if plan.known[i] is not None}
    result.n_unique = len(keys)
    bad = store.bad()
    result.n_cached = max(0, len(keys) - result.n_computed - len(keys & bad.keys()))
    result.n_skipped = len(result.skipped)
    result.n_unreadable = plan.unreadable


@dataclass
class Stats:
    """Timings of one pass of the loop, in seconds (the store's record keeps them)."""

    read_wait: float = 0.0  # waiting on the reader
    forward: float = 0.0  # tap model and queueing the rows
    run: float = 0.0  # first batch request to the last commit
    cpu_run: float = 0.0  # CPU of this process and its finished workers meanwhile
    first_batch: tuple[int, float] = (0, 0.0)  # images in the first forward, seconds to its end
    finish: float = 0.0  # the loop's end to the run's: workers ended, pools freed, last commit
    setup: dict[str, float] = field(default_factory=dict)  # before the run, by step (`Laps`)

    def seconds(self, model: taps.TapRunner, write: float) -> dict[str, float]:
        return {**self.setup, "read_wait": self.read_wait, "forward": self.forward, "first_forward": model.first_forward,
                "model_load": model.model_load, "warm_up": model.warm_up, "model_wait": model.model_wait,
                "write": write, "run": self.run, "finish": self.finish, "cpu_run": self.cpu_run}


class Laps:
    """Seconds of consecutive steps, each from the end of the one before, into `seconds`."""

    def __init__(self, seconds: dict[str, float] | None = None):
        self.seconds = {} if seconds is None else seconds
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        t = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + t - self.t
        self.t = t


@dataclass
class _Pass:
    """What one pass of the loop produced; `reads` are the (index, key, stat) the reader hashed."""

    computed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (image id, what decoding it warned of)
    reads: list[tuple] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    settings: dict = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)  # committed by this pass (`fne.cache.cost` reads them)


def _loader(spec: StoreSpec, dataset: Dataset, todo: list[int], dev: torch.device, batch_size: int,
            workers: int, rgb: bool) -> torch.utils.data.DataLoader:
    if spec.decode == "device":  # images to decode (cached rows are read without a decoder)
        require_device_decoder()
    items = reader.ImageItems(dataset, todo, spec.preprocess(), spec.decode == "device", rgb=rgb)
    forked = forks_workers(workers)  # the pools' pages then made where the workers write them
    if dev.type != "cuda":  # batches in reused shared memory, given back by `_run` (CUDA: pinned copies)
        items.share_slots(batch_size, workers, in_flight=4 + 2, forked=forked)
    items.share_raw(batch_size, workers, in_flight=2 + 1, forked=forked)  # where /dev/shm lacks room: rgb off
    prefetch = 2 if items.rgb else 4  # decoded images are large: fewer batches ahead (15 workers keep 30)
    lanes = container_batches(dataset, todo, batch_size, workers)  # tar shards: a worker reads whole tars
    return Loader(
        items, **({"batch_sampler": lanes} if lanes else {"batch_size": batch_size}), num_workers=workers,
        collate_fn=reader.collate, worker_init_fn=worker_init, multiprocessing_context=loader_context(workers),
        generator=torch.Generator(),  # its workers' seeds (nothing draws) from its own: torch's global RNG left as it was
        pin_memory=dev.type == "cuda", persistent_workers=False, prefetch_factor=prefetch if workers else None)


def _run(spec: StoreSpec, store: Store, dataset: Dataset, todo: list[int], dev: torch.device, out: _Pass,
         batch_size: int, workers: int | None, compile: str, chunk: int, progress: bool) -> None:
    """The loop: reader -> tap model -> writer over `todo`; what it learns goes into `out`."""
    use_compile = resolve_compile(compile, len(todo), dev)
    workers = default_workers(dev) if workers is None else workers
    # Start the workers first: they fork before the model exists (small children, and no other
    # thread importing). Then the model is built on a thread of its own while they read the
    # first batches (`TapRunner.prepare`).
    rgb = spec.decode == "pil" and resize_on_device(dev)  # the workers decode, the GPU resizes (the same pixels)
    laps = Laps(out.stats.setup)
    loader = _loader(spec, dataset, todo, dev, batch_size, workers, rgb)
    # From here every exit ends the workers and what else was started: a Ctrl-C as the model is
    # set up (before the loop) left them to the traceback a notebook keeps, until it was cleared.
    batches = assembled = writer = bar = raising = None  # raising: not `sys.exception()` (a caller's handled Ctrl-C)
    try:
        batches = iter(loader)
        laps.lap("workers_start")
        dtype = torch.float16 if store.meta["dtype"] == "float16" else torch.float32
        # no batch holds more than `todo`: what is sized by the batch (a compiled run's padding, CUDA's
        # warm-up batch) at most that (--batch-size 1000000000 on 12 images asked for 2.9 TB)
        model = taps.TapRunner(spec, dev, store.meta["precision"], dtype, use_compile, min(batch_size, len(todo)))
        model.prepare()
        laps.lap("model_start")
        fresh = _Fresh(store.index())
        writer = Writer(store, chunk, [(tp.name, tp.channels) for tp in spec.backbone().taps])
        writer.start()
        laps.lap("writer_start")
        st, prep = out.stats, spec.preprocess()
        cpu0, t_run = _cpu_seconds(), time.perf_counter()
        bar = progress_bar(len(todo), f"extract {spec.arch}", progress)
        # Device decoding blocks its thread until a batch is decoded: on a thread of its own, and the
        # resize on another, each two ahead, they overlap each other and this loop's work.
        assembled = reader.assembled(batches, dev, prep, jpegs=spec.decode == "device",
                                     ahead=2 if spec.decode == "device" or loader.dataset.rgb else 0)
        t = time.perf_counter()
        for batch, (x, idx, keys), bad in assembled:
            st.read_wait += time.perf_counter() - t
            t = time.perf_counter()
            out.reads += batch["stats"]
            out.notes += batch["notes"]
            x, idx, keys = fresh.select(x, idx, keys)
            rows, event = model(x) if x is not None else (None, None)
            slots.release(batch)  # its pixels are read: their slots go back to the workers
            if x is not None and not st.first_batch[0]:
                st.first_batch = (len(idx), time.perf_counter() - t_run)
            writer.put(keys, rows, _skip(bad, dataset, out.skipped), event)
            out.computed += len(idx)
            st.forward += time.perf_counter() - t
            bar.update(len(batch["idx"]) + len(batch["bad"]))
            t = time.perf_counter()
    except BaseException as e:
        raising = e
        raise
    finally:
        t_end = time.perf_counter()
        _end(loader, batches, assembled, bar, writer, raising)
    model.close()  # after a finished run only: an interrupted one does not wait for the build
    st.run, st.cpu_run = time.perf_counter() - t_run, _cpu_seconds() - cpu0
    st.finish = t_run + st.run - t_end
    out.settings = {"device": str(dev), "precision": store.meta["precision"], "batch_size": batch_size,
                    "workers": workers, "compile": model.compiled, "threads": torch.get_num_threads(),
                    "decode": spec.decode, "stage_seconds": st.seconds(model, writer.seconds)}
    out.parts = writer.parts


def _end(loader, batches, assembled, bar, writer: Writer | None, raising: BaseException | None) -> None:
    """End what `_run` started (None: not started yet), also on Ctrl-C (a notebook keeps the
    traceback, and with it what its frames hold); CPU time is counted after this."""
    late = None  # a Ctrl-C as the workers stop
    try:
        if assembled is not None:
            assembled.close()
        end_workers(batches)  # None: no iterator, no workers (the loader starts them whole or stops them)
        loader.dataset.unshare()  # nor its shared memory
        if bar is not None:
            bar.close()
    except KeyboardInterrupt as e:  # raised at once where it is a second one: no worker that does not end
        late = e  # is waited for; the rows the writer holds are computed, and committing them is quick
    if writer is not None and writer.ident is not None:  # started (a Writer never started has nothing)
        writer.close(late or raising)  # commits what is buffered, also on Ctrl-C (which stays the one raised)
    if late is not None:
        raise late


class _Fresh:
    """Keeps the images whose rows are neither stored (a snapshot: the writer commits meanwhile)
    nor queued earlier in this run."""

    def __init__(self, present):
        self.present, self.seen = set(present), set()

    def select(self, x: torch.Tensor | None, idx: list[int], keys: list[str]):
        keep = []
        for p, k in enumerate(keys):
            if k not in self.seen and k not in self.present:
                self.seen.add(k)
                keep.append(p)
        if len(keep) == len(keys):
            return x, idx, keys
        x = x[keep] if x is not None and keep else None
        return x, [idx[p] for p in keep], [keys[p] for p in keep]


def _skip(bad: list, dataset: Dataset, skipped: dict[str, str]) -> dict[str, str]:
    """Each unreadable image into `skipped` (said once the run ends, `say_skipped`); -> {key: why}
    of those with a key."""
    bad_keys = {}
    for i, key, err in bad:
        skipped[dataset.ids[i]] = err
        if key is not None:
            bad_keys[key] = err
    return bad_keys


def _remember(reads: list[tuple], plan: Plan, dataset: Dataset) -> None:
    """Keys the reader computed: into the plan (counts) and the manifest (next runs)."""
    for i, key, stat in reads:
        plan.known[i] = key
        if plan.manifest is not None and key is not None:
            plan.manifest.add(dataset.sources[i], stat[0], stat[1], key, stat[2])
    if plan.manifest is not None:
        plan.manifest.save()


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (the workers)."""
    try:
        import resource
    except ImportError:  # Windows: this process's only
        return time.process_time()
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


verb_module(__name__)
