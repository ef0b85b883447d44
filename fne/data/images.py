"""Image files: which files of a folder are images (`image_files`), and any image as 8-bit RGB
(`read_image`, `to_rgb`), the one decoding rule of every DATA form."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, TiffImagePlugin

from fne.data.formats import IMAGE_EXTENSIONS
from fne.progress import say_skipped

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not come back half grey


# A 16-bit image whose values all lie below this (14 bits or fewer: a 10-, 12- or 14-bit camera's)
# comes out at most 64 of 255 once scaled from 0-65535: dark, and nothing in the rows says why.
LOW_BITS_TOP = 1 << 14
LOW_BITS = ("its values use 14 bits or fewer (a 10-, 12- or 14-bit camera's?) but are scaled from 0-65535, so it "
            "comes out dark; rescale them to the full 16 bits or to 8 bits first")

# A 32-bit or float image whose values all lie below LOW_BITS_TOP >> 8 (a label mask, a count
# image) is scaled from 0-255 as it is: it comes out at most 64 of 255, dark, as LOW_BITS's do.
FEW_VALUES = ("a 32-bit or float image with values all below 64 (a label mask or a count image?) is read as 0-255, "
              "so it comes out dark; rescale its values to 0-255 first")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB (16-bit and float scaled, palette/alpha/CMYK converted); a
    16-bit, 32-bit or float image that comes out dark, clipped or with NaN is warned of (`_say_depth`)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        high = float(arr.max())  # NaN where it holds one (as min is), inf where it holds one
        low = 0.0 if img.mode.startswith("I;16") else float(arr.min())
        top = 65535.0 if img.mode.startswith("I;16") or high > 255 else 255.0  # NaN: 255, inf: 65535
        _say_depth(img.mode, top, low, high)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255)
        if np.isnan(high):  # 0, what the cast made of NaN on x86 and Arm, said once, not numpy's "invalid value"
            arr[np.isnan(arr)] = 0
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _say_depth(mode: str, top: float, low: float, high: float) -> None:
    """Warn (one message per kind, no numbers of its own, so that `say_skipped` says a run's
    images of a kind in one line) where an I;16, I or F image of values `low`-`high` (its min and
    max), scaled from 0-`top`, comes out wrong though its rows stay as they were: values in 0-1
    (black), in 14 bits or fewer (dark), an I or F image's all below 64 (dark), over 65535
    (white), negative (black), NaN or infinite (which also set the scale)."""
    if not (np.isfinite(low) and np.isfinite(high)):  # float only: its scale came from them
        warnings.warn("a float image with NaN or infinite values: NaN comes out 0, inf 255 and -inf 0, and "
                      "its other values are scaled from 0-255 where it holds NaN, from 0-65535 where inf; "
                      "replace them first (numpy.nan_to_num)", stacklevel=3)
        return
    if mode == "F" and 0 < high <= 1:  # rows unchanged (as torchvision reads it), but said
        warnings.warn("a float image with values in 0-1 is read as 0-255, so it comes out black; "
                      "save it as an 8- or 16-bit image", stacklevel=3)
    elif top > 255 and 0 < high < LOW_BITS_TOP:
        warnings.warn(LOW_BITS, stacklevel=3)
    elif top == 255 and 0 < high < LOW_BITS_TOP >> 8:  # I or F scaled from 0-255 (was silent)
        warnings.warn(FEW_VALUES, stacklevel=3)
    if high > 65535:
        warnings.warn("its values exceed 65535, the most a 32-bit or float image is scaled from, so they come "
                      "out white; rescale them to 0-65535 or 0-255 first", stacklevel=3)
    if low < 0:
        warnings.warn("its negative values come out 0 (black); shift them to 0 or more first", stacklevel=3)


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
        wide = img.mode in ("RGB", "RGBA") and any(";16" in _rawmode(t) for t in img.tile)  # Pillow keeps the high byte
        if img.format == "TIFF":
            # its EXIF read now: Pillow 10.0 closes a multi-page TIFF's file once a page is loaded, and
            # `exif_transpose` then failed (AttributeError: 'NoneType' object has no attribute 'seek')
            img.getexif()
            if getattr(img, "is_animated", False):
                warnings.warn("a multi-page TIFF: only its first page is read (channels or planes stored as pages "
                              "are left out); save them as one image's channels, or as images of their own",
                              stacklevel=1)
        img.load()  # decode now so truncation raises here, inside the reader
        rgb = upright_rgb(img, in_place=True)
    if wide and 0 < max(hi for _, hi in rgb.getextrema()) < LOW_BITS_TOP >> 8:
        warnings.warn(LOW_BITS, stacklevel=1)  # here, in fne.data: a decoding note (`named_decode`)
    return rgb


def _rawmode(tile) -> str:
    """The raw mode a tile of an image not yet loaded decodes from ("RGB;16B": 16-bit RGB)."""
    args = tile.args if hasattr(tile, "args") else tile[3]  # Pillow 11.1+: a named tuple
    return str(args[0] if isinstance(args, tuple) else args)


def upright_rgb(img: Image.Image, in_place: bool = False) -> Image.Image:
    """A decoded image as `read_image` makes a file's: EXIF orientation applied, then 8-bit RGB
    (`to_rgb`); `in_place`: the orientation applied to `img` itself (no copy of an upright image),
    else to a copy where it has one (`img` left as it was)."""
    if in_place:
        ImageOps.exif_transpose(img, in_place=True)
    else:
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # little- and big-endian, classic and BigTIFF
_SAMPLE_FORMATS = {1: "unsigned", 2: "signed", 3: "float"}


def unreadable_tiff(data: bytes) -> str | None:
    """Why Pillow cannot read the TIFF `data` (its samples per pixel, bits and format, as its first
    page's tags give them: 2 samples, or float colour, which Pillow has no mode for); None for
    anything not a TIFF, or one whose tags cannot be read either."""
    if bytes(data[:4]) not in TIFF_MAGIC:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data" of a damaged file: not news here
            ifd = TiffImagePlugin.ImageFileDirectory_v2(bytes(data[:8]))
            fp = io.BytesIO(data)
            fp.seek(ifd.next)
            ifd.load(fp)
        samples, bits = int(ifd[277]), tuple(ifd[258])
        kind = _SAMPLE_FORMATS.get(int(tuple(ifd.get(339, (1,)))[0]), "unknown")
    except Exception:  # tags as damaged as the image: Pillow's "not an image file" stands
        return None
    return (f"a TIFF Pillow cannot decode ({samples} sample(s) per pixel of {bits[0]}-bit {kind} values); "
            f"save it as 8- or 16-bit grey or RGB")


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
