"""`fne advise`'s rule: the thresholds, the recommendation of each (size, similarity) and the
decision on measured quantities (`decide`, pure), with how sure it is (`confidence`).

`fne.reporting.advise` measures the quantities and explains the rule; `fne.reporting.verdict`
tells by `method_family` whether a measured winner follows the advice.
"""

from __future__ import annotations

LARGE_PER_CLASS = 200  # median training images per class at or above which a set is "large"
SIMILAR_MSP = 0.30  # mean max-softmax probability at or above which the target is "similar"
MSP_BORDER = 0.10  # |MSP - SIMILAR_MSP| below this: borderline
FEW_PER_CLASS = 10  # median training images per class below which the advice warns that differences can be noise

# Method families, so that a report can tell whether a measured winner follows the advice.
FEATURE_EXTRACTION = "feature-extraction"
FINE_TUNING = "fine-tuning"
SCRATCH = "scratch"
DIRECT = "direct"

RECOMMENDATIONS = {
    ("small", "similar"): dict(
        code="features-linear",
        text="Use the frozen pretrained network as a feature extractor and train the simplest "
             "classifier on its features (fne fit --features last, fc7 on VGG, or the full-network embedding --features fne; + SVM). "
             "Do not fine-tune.",
        families=[FEATURE_EXTRACTION],
        commands=["fne fit {data} --features fne --head svm", "fne fit {data} --features last --head svm"],
    ),
    ("large", "similar"): dict(
        code="finetune",
        text="Fine-tune the pretrained network on the target task (fne train --mode finetune); "
             "expect it to beat a linear head on frozen features.",
        families=[FINE_TUNING],
        commands=["fne train {data} --mode finetune"],
    ),
    ("small", "different"): dict(
        code="early-features-linear",
        text="Train a simple classifier on features that include the early layers of the network: "
             "the full-network embedding (fne fit --features fne --head svm). Last-layer features "
             "are specific to the source task; fine-tuning would overfit the small set.",
        families=[FEATURE_EXTRACTION],
        commands=["fne fit {data} --features fne --head svm"],
    ),
    ("large", "different"): dict(
        code="train-all-from-pretrained",
        text="Train the whole network on the target task, initialised from the pretrained weights "
             "(fne train --mode finetune); compare with training from scratch (--mode scratch).",
        families=[FINE_TUNING, SCRATCH],
        commands=["fne train {data} --mode finetune", "fne train {data} --mode scratch"],
    ),
}
RANDOM_UNJUDGED = ("the weights are random, so the network's classifier knows no source task (the numbers say "
                   "nothing about transfer)")
# Similarity unknown (random weights, a weights file without the source classifier): size decides what is safe.
UNJUDGED = {
    "small": dict(
        code="features-linear",
        text="The set is small: a linear classifier on frozen features (fne fit --features fne) is "
             "the safe choice whatever the similarity; with random weights, though, no experiment "
             "measures transfer.",
        families=[FEATURE_EXTRACTION],
        commands=["fne fit {data} --features fne --head svm"],
    ),
    "large": dict(
        code="finetune",
        text="The set is large: train the whole network, initialised from pretrained weights where "
             "they exist (fne train --mode finetune); with random weights this is training from "
             "scratch.",
        families=[FINE_TUNING, SCRATCH],
        commands=["fne train {data} --mode finetune"],
    ),
}


def method_family(method: str) -> str:
    """`fne+svm` -> feature-extraction, `train:finetune` -> fine-tuning, ..."""
    m = str(method)
    if m.startswith("train:"):
        mode = m.split(":", 1)[1]
        return {"finetune": FINE_TUNING, "frozen": FEATURE_EXTRACTION, "scratch": SCRATCH,
                "direct": DIRECT}.get(mode, mode)
    return FEATURE_EXTRACTION


def decide(images_per_class: float, msp: float | None, *, entropy: float | None = None,
           large_per_class: int = LARGE_PER_CLASS, similar_msp: float = SIMILAR_MSP,
           msp_sem: float | None = None, sample: int | None = None, unjudged: str = RANDOM_UNJUDGED,
           spread: tuple[int, int] | None = None) -> dict:
    """The course's two-factor rule on measured quantities; pure (tests call it directly).

    unjudged: why `msp` is None (random weights, or a weights file whose classifier is not the
    source task's), as the reasons say it.

    msp_sem / sample: the standard error of the mean MSP over the `sample` images it was
    measured on; a threshold within two of them makes the similarity verdict uncertain.

    spread: the fewest and most training images of a class; said where a class has under half or
    over twice the median, which then describes few of them.

    The result's ``doubts``: what makes the advice less sure (`confidence`), one phrase each."""
    size = "large" if images_per_class >= large_per_class else "small"
    reasons = []
    border = large_per_class / 2 <= images_per_class < large_per_class * 2
    doubts = [f"the size is borderline ({images_per_class:g} a class against {large_per_class})"] if border else []
    reasons.append(
        f"{images_per_class:g} training image{'s' * (images_per_class != 1)} per class (median) is {size}: the threshold is "
        f"{large_per_class} per class" + (" (borderline: within a factor of 2)" if border else "")
        + (f"; the classes are unbalanced: {spread[0]} to {spread[1]} training images a class" if spread and (
            spread[0] < images_per_class / 2 or spread[1] > images_per_class * 2) else "")
    )
    if msp is None:
        rec = UNJUDGED[size]
        similar = None
        reasons.append(f"similarity to the source task cannot be judged: {unjudged}")
        doubts.append("the similarity was not judged: the size alone decides")
    else:
        similar = "similar" if msp >= similar_msp else "different"
        ent = f", normalised entropy {entropy:.2f}" if entropy is not None else ""
        reasons.append(
            f"the source classifier's mean max-softmax confidence on the target images is {msp:.2f}{ent}: "
            f"{'at or above' if similar == 'similar' else 'below'} the threshold {similar_msp:.2f}, so the "
            f"target looks {'similar to' if similar == 'similar' else 'different from'} the source task"
            + (" (borderline)" if abs(msp - similar_msp) < MSP_BORDER else "")
            + (f"; uncertain: on a sample of {sample} images the mean's standard error is {msp_sem:.2f}, so the "
               f"sample cannot tell similar from different" if msp_sem is not None and abs(msp - similar_msp)
               < 2 * msp_sem else "")
        )
        rec = RECOMMENDATIONS[(size, similar)]
        doubts += [f"the similarity is borderline ({msp:.2f} against {similar_msp:.2f})"] * (abs(msp - similar_msp) < MSP_BORDER)
        doubts += [f"the similarity is uncertain on {sample} images"] * (msp_sem is not None and abs(msp - similar_msp)
                                                                           < 2 * msp_sem)
    if size == "small":
        reasons.append("course: with a small target set, fine-tuning risks overfitting; train the simplest "
                       "classifier on extracted features")
    elif similar == "similar":
        reasons.append("course: a large target set similar to the source: fine-tuning is expected to improve "
                       "performance on the target task")
    elif similar == "different":
        reasons.append("course: a large target set different from the source: train the whole network; "
                       "initialising from the source weights usually trains better than random")
    if images_per_class < FEW_PER_CLASS:
        reasons.append(f"with {images_per_class:g} training image{'s' * (images_per_class != 1)} per class each method "
                       f"learns a class from a "
                       f"handful of images (a random split tests it on fewer still, a third as many at the default "
                       f"--test-size): differences of a few points between methods can be noise; compare them over "
                       f"several splits or seeds, and let `fne report`'s paired test judge them")
        doubts.append(f"{images_per_class:g} training images a class, few to tell methods apart")
    if similar == "different" and size == "small":
        reasons.append("course: early layers describe generic image characteristics; the full-network "
                       "embedding includes them and is the most robust when source and target differ "
                       "(FNE paper, table 2)")
    return {"recommendation": rec["code"], "text": rec["text"], "families": list(rec["families"]),
            "commands": list(rec["commands"]), "size": size, "similar": similar, "reasons": reasons, "doubts": doubts}


def confidence(doubts: list[str]) -> dict:
    """How sure the advice is, for its one line (`format_advice`).

    Parameters
    ----------
    doubts : list of str
        What weakens it, as `decide` lists them (a factor borderline, uncertain or not judged, few
        images a class) and `advise` adds (no split to score a method on).

    Returns
    -------
    dict
        ``level``: "moderate" where there is no doubt (never more: the rule is a rule of thumb that
        no run of the methods has checked on DATA), "low" with one, "very low" with more;
        ``doubts`` as given.
    """
    return {"level": "moderate" if not doubts else "low" if len(doubts) == 1 else "very low", "doubts": list(doubts)}
