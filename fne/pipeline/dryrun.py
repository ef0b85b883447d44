"""`fne run --dry-run`: what a run would compute, step by step, and what is already done.

Reads no image and writes nothing: a step's state comes from its folder (fne.pipeline.steps) and,
for a train step an interrupted run left a checkpoint of, the checkpoint's epoch and settings,
the images' content keys from the data root's manifest, and which of them are cached from the
stores' indexes. Each (dataset, backbone) whose fits need rows gets a line saying how many
images its first fit extracts (or that they are not known yet: images never read, weights not
resolved, a subset not written yet).
"""

from __future__ import annotations

from collections.abc import Callable

from fne.cache.fs import read_json
from fne.errors import FneError, WeightsError
from fne.pipeline.config import BackboneCfg, Pipeline
from fne.pipeline.steps import Step, forced, known_keys, needs_rows, train_arguments

__all__ = ["describe", "extraction_line", "plan_either"]


def extraction_line(step: Step, data: str | None, p: Pipeline, cache: str | None) -> str:
    """What the run extracts for the step's (dataset, backbone) before its first fit, in words."""
    b: BackboneCfg = step.backbone
    head = f"extract {step.dataset.key} with {b.label}: "
    first = "before the first fit" if p.fit else "for the advice"
    if data is None:
        return (head + f"its subset ({step.dataset.max_per_class} per class) is not written yet: the run writes "
                f"it, then computes the rows not in the cache {first}")
    found = known_keys(data, cache, read=False, partial=True)
    if found is None:
        return head + f"DATA cannot be read: {data}"
    keys = [k for k in found if k is not None]
    unread = len(found) - len(keys)
    new = (f"{unread} of {len(found)} images not read yet: the run hashes them and computes those not in the "
           f"cache {first}")
    misfit = _misfit(b)
    if misfit:
        return head + misfit
    if not keys:
        return head + new
    if b.weights not in ("imagenet", "random"):  # a file (hashed on use) or imagenet-or-random
        return (head + (new + "; " if unread else f"{len(found)} images; ")
                + f"which are cached is known once the weights {b.weights!r} are resolved")
    n = len(set(keys))
    from fne.cache.spec import StoreSpec

    try:
        spec = StoreSpec(arch=b.arch, weights=b.weights, crop=b.crop, precision=b.precision,
                         storage_dtype=b.storage_dtype, weights_seed=b.seed_for(b.weights), cache=cache,
                         device=p.device, image_size=b.image_size)
        missing = len(spec.find(keys, "run").missing(keys))
    except (FneError, WeightsError) as e:
        return head + f"{n} images; the cache cannot be read: {e}"
    if unread:
        return head + new + (f"; of the {n} read before, {missing} not in the cache" if missing
                             else f"; the {n} read before are cached")
    if not missing:
        return head + f"all {n} images cached: no forward pass"
    return head + f"{missing} of {n} images not in the cache: computed {first}"


def _misfit(b: BackboneCfg) -> str:
    """Where the backbone's weights are a file that does not fit its arch (names and shapes, read
    without the data: `fne.backbones.fits`), or that cannot be read: the refusal the run would stop
    at, as its extraction's line; else ''."""
    from pathlib import Path

    if b.weights in ("imagenet", "random", "imagenet-or-random") or not Path(b.weights).is_file():
        return ""
    from fne.backbones.fits import fit_of

    try:
        error = fit_of(b.arch, b.weights)
    except FneError as e:  # WeightsError: unreadable
        error = e
    return "" if error is None else f"the run stops here: {error}"


def plan_either(p: Pipeline, make: Callable[[], list[Step]]) -> list[Step]:
    """The steps `make()` plans, where a backbone's weights `imagenet-or-random` are resolved only
    when a run starts (imagenet when its weights load, else random): a step that an earlier run
    finished (or last ran) under either resolution is taken as planned under it, so it shows as
    done, or with the settings that changed since, rather than as changed weights (the run itself
    resolves the weights and skips it the same way)."""
    either = [b for b in p.backbones if b.weights == "imagenet-or-random" and b.resolved_weights is None]
    steps = make()
    for weights in ("random", "imagenet") if either else ():
        for b in either:
            b.resolved_weights = weights
        try:
            alt = make()
        except (FneError, WeightsError):  # no fingerprint for these weights here: nothing was done with them
            continue
        finally:
            for b in either:
                b.resolved_weights = None
        steps = [a if not s.done() and (a.done() or _ran_with(a) == weights) else s
                 for s, a in zip(steps, alt, strict=True)]
    return steps


def _ran_with(step: Step) -> str | None:
    """The weights an earlier run of the step resolved (its step.json), if it left one."""
    try:
        return (read_json(step.dir / "step.json") or {})["config"]["backbone"]["weights"]
    except (KeyError, TypeError):
        return None


def describe(steps: list[Step], p: Pipeline, data_for: dict[str, str | None], cache: str | None,
             force: bool, say: Callable[[str], None]) -> int:
    """One line per step (done, or to run and why), preceded by the extraction each (dataset,
    backbone) needs before its first step that reads rows; returns how many steps would run."""
    announced, to_run = set(), 0
    for s in steps:
        done, why = s.status()
        if done and not force:
            say(f"  {s.label}  ->  {s.dir}  ({why}{s.code_note()})")
            continue
        to_run += 1
        pair = (s.dataset.key, s.backbone.label)
        if needs_rows(s, bool(p.fit)) and pair not in announced:
            announced.add(pair)
            say("  " + extraction_line(s, data_for.get(s.dataset.key, s.dataset.data), p, cache))
        say(f"  {s.label}  ->  {s.dir}  (to run: {forced() if done else why}{checkpoint_note(s, p, force, cache)})")
    return to_run


def checkpoint_note(step: Step, p: Pipeline, force: bool, cache: str | None) -> str:
    """A train step an interrupted run left a checkpoint of: whether the rerun resumes from it
    (fne.training.rerun.rerun_note; a direct step removes it), after "; "; else ""."""
    if step.kind != "train" or not step.dir.is_dir():
        return ""
    from fne.training import rerun
    from fne.training.checkpoint import CHECKPOINT

    if force and step.kwargs["mode"] != "direct":  # a direct run takes up none, --force or not
        return f"; {forced()} starts it over, leaving its checkpoint unused" if (step.dir / CHECKPOINT).is_file() else ""
    kwargs, note = train_arguments(step, p), None
    either = kwargs["weights"] == "imagenet-or-random"  # resolved when the run starts: either may be the checkpoint's
    for w in ("imagenet", "random") if either else (kwargs["weights"],):
        note = rerun.rerun_note(step.kwargs["data"], step.kwargs["mode"], step.dir, cache=cache,
                                **{**kwargs, "weights": w})
        if note is not None and note.startswith("the rerun resumes"):
            note += f" if the weights resolve to {w} again" if either else ""
            break
    return "" if note is None else f"; {note}"
