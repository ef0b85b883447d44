"""Image files: which files of a folder are images (`image_files`), and any image as 8-bit RGB
(`read_image`, `to_rgb`), the one decoding rule of every DATA form."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from fne.data.formats import IMAGE_EXTENSIONS
from fne.progress import say_skipped

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not come back half grey


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB (16-bit and float scaled, palette/alpha/CMYK converted)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and 0 < arr.max() <= 1:  # rows unchanged (as torchvision reads it), but said
            warnings.warn("a float image with values in 0-1 is read as 0-255, so it comes out black; "
                          "save it as an 8- or 16-bit image", stacklevel=2)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def read_image(path: str | Path) -> Image.Image:
    """Decode an image file (a path or a file object) as 8-bit RGB, EXIF orientation applied.

    Parameters
    ----------
    path : str, Path or file object
        The image.

    Returns
    -------
    PIL.Image.Image
        Its first frame, upright, in mode RGB (`to_rgb`).

    Raises
    ------
    OSError, ValueError, PIL.Image.DecompressionBombError
        When Pillow cannot read it whole (not an image, truncated, a decompression bomb).
    """
    with Image.open(path) as img:
        img.load()  # decode now so truncation raises here, inside the reader
        return upright_rgb(img, in_place=True)


def upright_rgb(img: Image.Image, in_place: bool = False) -> Image.Image:
    """A decoded image as `read_image` makes a file's: EXIF orientation applied, then 8-bit RGB
    (`to_rgb`); `in_place`: the orientation applied to `img` itself (no copy of an upright image),
    else to a copy where it has one (`img` left as it was)."""
    if in_place:
        ImageOps.exif_transpose(img, in_place=True)
    else:
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def image_files(folder: str, left_out: list[str] | None = None,
                skipped: list[tuple[str, str]] | None = None) -> list[str]:
    """Paths of the image files anywhere under `folder`, in `Path` order (component by
    component). Hidden files and folders (`.DS_Store`, macOS's `._x.jpg`, `.ipynb_checkpoints/`)
    are left out, as hidden class folders are; symlinked folders are followed (as torchvision's
    `ImageFolder` does), each real folder once; a symlink to nothing, or a named pipe, socket or
    device named like an image (reading one would wait for ever), is skipped, named in a warning
    (one per reason, `say_skipped`; given `skipped`, added to it for the caller to say) and
    added to `left_out`. Directory entries only (a stat per folder and per
    symlink, none per regular file), which matters on a shared filesystem with a million
    images; strings, not `Path` objects: a listing of 32,768 files took 0.6 s through pathlib."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    todo, said = [folder], skipped is None  # skipped: (path, why), said once listed (`say_skipped`) or by the caller
    skipped = [] if skipped is None else skipped
    while todo:
        top = todo.pop()
        try:
            st = os.stat(top)
            entries = list(os.scandir(top))
        except OSError as e:
            skipped.append((top, e.strerror or str(e)))
            continue
        if (st.st_dev, st.st_ino) in seen:  # a symlink back to a folder already listed
            continue
        seen.add((st.st_dev, st.st_ino))
        folders = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()  # follows a symlink
            except OSError as err:  # a link to itself, or a chain of links too long: ELOOP
                skipped.append((e.path, err.strerror or str(err)))
                if left_out is not None:
                    left_out.append(e.path)
                continue
            if is_dir:
                folders.append(e.path)
            elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                if not e.is_file():  # a named pipe would be waited on for ever; d_type: no stat for a file
                    skipped.append((e.path, "a symbolic link to nothing" if not os.path.exists(e.path) else
                                    "not a regular file (a named pipe, a socket or a device)"))
                    if left_out is not None:
                        left_out.append(e.path)
                    continue
                out.append(e.path)
        todo += sorted(folders, reverse=True)  # the first by name is listed first: a folder seen twice is named by it
    skipped.sort(key=lambda s: s[0].split(os.sep))  # in listing order
    if said:
        say_skipped(skipped, stacklevel=4)
    return sorted(out, key=lambda f: f.split(os.sep))


def no_image_files(folder: str) -> str:
    """What a folder without image files holds instead, for the line that stops on it.

    Parameters
    ----------
    folder : str
        The folder, listed at any depth (hidden files and folders left out, as `image_files` does).

    Returns
    -------
    str
        "it holds no files", or how many other files and their extensions (`.heic` photos,
        `.txt` notes, ...) and which extensions are images.
    """
    exts: dict[str, int] = {}
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith("."):
                ext = os.path.splitext(f)[1].lower() or "no extension"
                exts[ext] = exts.get(ext, 0) + 1
    if not exts:
        return "it holds no files"
    kinds = ", ".join(f"{e} ×{n}" for e, n in sorted(exts.items(), key=lambda t: -t[1])[:4])
    return (f"it holds {sum(exts.values())} other file(s) ({kinds}{', …' if len(exts) > 4 else ''}); image files "
            f"end in {' '.join(sorted(IMAGE_EXTENSIONS))}, any case")
