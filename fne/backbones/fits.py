"""Whether a network takes what a command gives it, asked before any image is read: a --weights
file's tensors against the architecture's (`misfit`: the comparison `registry.load_backbone` makes
on the loaded tensors, and `refuse_unfit` on their names and shapes alone, no data read), and an
--image-size against the architecture's forward (`refuse_size`, run on the meta device)."""

from __future__ import annotations

from pathlib import Path

from fne.backbones.filekind import Shapes, misfit, train_run, weights_refusal
from fne.errors import FneError, WeightsError
from fne.option_handling import named, refusal


def file_shapes(path: str | Path) -> Shapes:
    """A weights file's tensor names and shapes, its data not read: a .pth/.pt file loaded onto
    the meta device (memory-mapped), a .safetensors file's header. Errors as `read_state_dict`'s."""
    from fne.backbones.registry import read_state_dict

    if Path(path).suffix == ".safetensors" and Path(path).is_file():
        try:
            from safetensors import safe_open
        except ImportError as e:
            raise weights_refusal(path, "reading .safetensors needs `pip install safetensors`") from e
        try:
            with safe_open(str(path), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
        except Exception:  # unreadable: read_state_dict says why
            return {k: tuple(v.shape) for k, v in read_state_dict(path, "cpu").items()}
        return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in shapes.items()}
    return {k: tuple(v.shape) for k, v in read_state_dict(path, "meta").items()}


def model_shapes(arch: str, weights: str | None = None) -> tuple[Shapes, str]:
    """`arch`'s tensor names and shapes (its model built on the meta device) and its source
    classifier's module path."""
    from fne.backbones import registry, zoo

    b = registry.get(arch, weights)
    own = zoo.meta_model(lambda: b.build(b.num_classes)).state_dict()
    return {k: tuple(v.shape) for k, v in own.items()}, b.classifier


def refuse_unfit(arch: str, weights: str) -> None:
    """Raise now the WeightsError that loading the weights file `weights` into `arch` would raise
    later (`registry.load_backbone`): before a command starts its loader workers and progress
    line. Weights that are no file pass (`catalog.refuse_unobtainable` asks about those)."""
    if weights in (None, "imagenet", "random") or not Path(weights).is_file():
        return
    error = fit_of(arch, weights)
    if error is not None:
        raise error


def fit_of(arch: str, weights: str | Path) -> WeightsError | None:
    """`misfit` of the weights file `weights` for `arch`, from names and shapes alone; an
    unreadable file raises (`read_state_dict`'s refusal)."""
    own, classifier = model_shapes(arch, str(weights))
    return misfit(arch, weights, file_shapes(weights), own, classifier)


# What torch and timm say when a forward's shapes do not fit its input size (found by running
# torchvision's and timm's CNNs and ViTs at 8, 16, 31, 33 and 225 on the meta device): only these
# mean "not at this size"; any other error is of the check itself (a half-done import, a model's bug).
SIZE_MISFITS = (
    "Output size is too small",  # pooling below 1 x 1 (VGG-16 below 32)
    "Kernel size can't be greater than actual input size",  # a convolution (EfficientNet, ConvNeXt)
    "Wrong image height", "Wrong image width",  # torchvision's ViTs
    "doesn't match model",  # timm's patch embedding ("Input height (160) doesn't match model (224).")
    "is invalid for input of size",  # a view into windows or patches (MaxViT)
    "Expected size for first two dimensions of batch",  # attention's bmm (LeViT, EfficientFormer)
    "Attempting to broadcast a dimension",  # position biases on the meta device (PiT, LeViT)
    "must match the size of tensor",  # the same off the meta device
    "must have same reduction dim",  # a matmul or linear layer on flattened features
    "Sizes of tensors must match",  # a concatenation of branches
    "don't multiply up to the size",  # an unflatten
)


def refuse_size(arch: str, weights: str, size: int | None) -> None:
    """OptionError where `arch` cannot run at `size` x `size` (--image-size): a model built for one
    input size (torchvision's and timm's ViTs), or a size its downsampling reduces to nothing
    (VGG-16 below 32). Found by a forward on the meta device (no memory, no arithmetic). An error
    of that forward that is no shape misfit (`SIZE_MISFITS`) raises FneError saying the check
    failed, with its first line: shrinking or growing the size would not help."""
    from fne.backbones import registry, zoo

    b = registry.get(arch, weights)
    if size is None or size == b.input_size:
        return
    import torch

    model, x = zoo.meta_model(lambda: b.build(b.num_classes)), zoo.meta_image(size)
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:
        said, kind = (str(e).splitlines() or [""])[0][:200], type(e).__name__
        if isinstance(e, (RuntimeError, AssertionError, ValueError)) and any(m in said for m in SIZE_MISFITS):
            raise refusal(lambda py: f"{named('image_size', py, size, plain=True)}: {arch} cannot run at {size} x "
                                     f"{size} ({said}); its own size is {b.input_size}") from None
        raise refusal(lambda py: f"{named('image_size', py, size, plain=True)}: the check that {arch} runs at {size} "
                                 f"x {size} failed ({kind}: {said or 'no message'}), which no other "
                                 f"size mends", FneError) from None


def note_trained_size(arch: str, weights: str, size: int | None) -> None:
    """Print a note where `weights` is a `fne train` run's model.pt (its metrics.json read) that
    trained at another image size than `size` (--image-size; None: `arch`'s own): its network
    learnt that size's pixels, and rows at another one may be meant (a study of sizes), or not."""
    from fne.backbones import registry
    from fne.progress import note, said

    run = train_run(weights)
    trained = run[1].get("image_size") if run is not None else None
    if not isinstance(trained, int):
        return
    size = size or registry.get(arch, weights).input_size
    if size != trained:
        note(said(lambda py: f"note: {weights} is the network of a `fne train` run that trained at {trained} x "
                             f"{trained} ({run[0]}); these rows are at {size} x {size}: give "
                             f"{named('image_size', py, trained, plain=True)} to match"))  # once a run of steps
