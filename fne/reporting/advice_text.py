"""`fne advise`'s words: the commands it advises, as they run from any folder (`runnable`), and
the advice as `fne advise` prints it (`format_advice`)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from fne.options import AdviseOptions


def runnable(template: str, data: str, name: str, spec, label_key: str | None = None,
             o: AdviseOptions | None = None) -> str:
    """A recommended command as it runs: DATA (and its --label-key), the backbone advised on (its
    arch, weights (not for `--mode scratch`, which takes none), and the store settings other than the default that the verb takes: `fne train`
    has no --crop nor --storage-dtype; --seed-weights of random weights), the random split the advice counted training
    images of (`o`'s --train-per-class, else its --test-size where not the default; `o` None: DATA's
    predefined split, which takes neither), and a run folder named after the data and the method;
    a fit's `--extract` (and the `--cache` advised from), as the advice extracted a sample of DATA
    at most. `fne fit` and `fne train` draw the same training images from these options."""
    from fne.names import data_slug

    what = "-".join(template.split("{data}", 1)[1].split()[1::2])  # its flags' values: fne-svm, finetune
    weights = _anywhere(spec.weights) if Path(spec.weights).is_file() else spec.weights  # not imagenet, random
    # `--mode scratch` trains from a random initialisation drawn from --seed: fne train refuses --weights
    # other than random, and --seed-weights, with it (the scratch run advised beside a fine-tuning stopped)
    scratch = "--mode scratch" in template
    words = [template.format(data=shlex.quote(_anywhere(data))), "--arch", spec.arch,
             *([] if scratch else ["--weights", shlex.quote(weights)])]
    fit = template.startswith("fne fit ")
    seed = getattr(spec, "weights_seed", 0) if spec.weights == "random" and not scratch else 0
    store = {"--crop": (spec.crop, "center"), "--storage-dtype": (getattr(spec, "storage_dtype", "auto"), "auto"),
             "--precision": (getattr(spec, "precision", "auto"), "auto"), "--seed-weights": (seed, 0),
             "--image-size": (getattr(spec, "image_size", None), None)}
    words += [w for flag, (value, default) in store.items() if value != default and (fit or flag in (
        "--precision", "--seed-weights", "--image-size")) for w in (flag, str(value))]  # fne train takes neither crop nor storage
    if label_key is not None:
        words += ["--label-key", shlex.quote(label_key)]
    if fit:  # the rows the advice's sample left out of the cache: computed first
        words += ["--extract"] + (["--cache", shlex.quote(_anywhere(spec.cache, here=False))] if getattr(spec, "cache", None) else [])
    if o is not None and o.train_per_class is not None:  # the split's training images: --test-size has no say
        words += ["--train-per-class", str(o.train_per_class)]
    elif o is not None and o.test_size != AdviseOptions().test_size:
        words += ["--test-size", str(o.test_size)]
    return " ".join([*words, "--out", shlex.quote(f"runs/{data_slug(data, name)}-{what}")])


def _anywhere(path: object, here: bool = True) -> str:
    """A local path of a command advised (DATA, a pattern of its shards, the cache, a weights file) made
    absolute (a pattern `shards/a-{0..3}.tar` too), so that the command runs as printed from any folder;
    a name (digits, hf:NAME, a Dataset's name: with `here`, what is neither here nor a pattern) or a URL as given."""
    from fne.cache.fs import is_url

    text = str(path)
    if is_url(text) or text.startswith("hf:") or text == "digits" or here and not (
            os.path.lexists(os.path.expanduser(text)) or any(c in text for c in "*?[{")):
        return text
    return os.path.abspath(os.path.expanduser(text))


def confidence_line(a: dict) -> str | None:
    """The advice's confidence as `fne advise` prints it and `fne report` shows it beside the advice:
    "confidence: low (…); a rule of thumb: …"; None for an advice.json written before fne advise
    recorded it (30 Nov 2026)."""
    c = a.get("confidence")
    if not c:
        return None
    return (f"confidence: {c['level']}" + (f" ({'; '.join(c['doubts'])})" if c["doubts"] else
                                           " (size and similarity measured, clear of their thresholds)")
            + "; a rule of thumb: only the runs advised, compared by fne report, measure the methods")


def format_advice(a: dict) -> str:
    sim = a.get("similarity", {})
    n = (f"{a['n_images']} readable of {a['n_images'] + a['unreadable']} images" if a.get("unreadable") else
         f"{a.get('n_images')} images")
    lines = [f"{a.get('dataset')} ({n}, {a.get('classes')} classes; "
             f"{a.get('arch')} {a.get('weights')} weights)",
             f"recommendation: {a['recommendation']}: {a['text']}"]
    lines += [line for line in [confidence_line(a)] if line]
    lines.append("reasons:")
    lines += [f"  - {r}" for r in a.get("reasons", [])]
    if sim.get("judged"):
        tops = ", ".join(f"{t['class']} {t['share']:.0%}" for t in sim.get("top_source_classes", []))
        lines.append(f"most frequent source classes on the sample of {sim.get('sample')}: {tops}")
    lines.append("try: " + "; ".join(a.get("commands", [])))
    return "\n".join(lines)
